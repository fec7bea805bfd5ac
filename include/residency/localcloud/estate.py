"""The overseas estate: Seoul buckets, a foreign affiliate, and an application database.

:func:`seed_estate` builds, on a running :class:`~.servers.MotoServer` with IAM
enforcement on, everything a migration run needs to find, deterministically from
one integer seed:

- ``seoul-line-photos`` (ap-northeast-2, versioning enabled; one object has an
  older version), ``seoul-line-media`` (ap-northeast-2, unversioned, so the copy
  engine must pin by ETag), and the domestic ``tokyo-line-media`` (ap-northeast-1)
  already holding one unrelated object.
- Media objects whose bytes start with real magic numbers (JPEG, PNG, WebP, GIF,
  MP4, M4A, MP3), with awkward keys (spaces, Japanese, Korean, ``+``, a literal
  ``%``, deep prefixes), legacy ``application/octet-stream`` uploads selected by
  extension, content headers and user metadata, about half with a full-object
  CRC32C (modern uploads) and the rest with nothing but an ETag (legacy uploads),
  one real multipart upload (multipart ETag) and one large single-part object.
  Non-media objects (logs, JSON, text, a ``.jpg`` key whose content type is JSON)
  stay out of scope.
- IAM users ``residency-migrator`` (S3 on the three buckets, key management on the
  affiliate) and ``line-affiliate-cn`` (read-only on the Seoul buckets), each with
  an access key.
- ``app.db``: SQLite tables whose URL columns reference the media in every style
  (``s3://``, virtual-hosted, path-style), plus NULLs, foreign hosts, references
  to non-media objects and one dangling reference.
- ``policy.yaml``: the migration policy for all of the above.

With a :class:`~.servers.FakeGcsServer` (``gcs=...``) the estate also covers the
two cross-provider routes, so that one run exercises all four of ``s3->s3``,
``s3->gs``, ``gs->gs`` and ``gs->s3``:

- ``seoul-line-gcs-photos`` (images) and ``seoul-line-gcs-video`` (video and
  audio, including one object above the 16 MiB multipart threshold, which becomes
  a streamed multipart copy to S3), and the domestic ``tokyo-line-gcs-media``
  already holding one unrelated object; same realism as the S3 side (magic
  numbers, awkward keys, legacy generic content types, content headers and custom
  metadata, non-media objects out of scope).
- The policy routes ``s3://seoul-line-media`` to GCS and ``gs://seoul-line-gcs-video``
  to S3, and *declares* the GCS locations (the emulator reports one fixed location
  for every bucket).
- ``app.db`` gains a ``videos`` table whose ``gcs_url`` / ``poster_url`` columns
  reference every GCS media object (``gs://``, path-style and virtual-hosted
  ``storage.googleapis.com`` URLs).

Without ``gcs`` the estate, the policy and the database are exactly the S3-only ones.

The servers must be fresh (no such buckets or users yet): call
:meth:`~.servers.MotoServer.reset` between estates, and start a new
:class:`~.servers.FakeGcsServer` (it has no reset).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import google_crc32c
import sqlalchemy as sa

from ..clients import AwsCredentials, GcsCredentials
from ..policy import Selection
from ..references.cells import locate
from ..uris import ObjectRef, UrlStyle, format_url
from .servers import FakeGcsServer, MotoServer

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * 1024

SEOUL = "ap-northeast-2"
TOKYO = "ap-northeast-1"
PHOTOS_BUCKET = "seoul-line-photos"
MEDIA_BUCKET = "seoul-line-media"
DESTINATION_BUCKET = "tokyo-line-media"
SOURCE_BUCKETS = (PHOTOS_BUCKET, MEDIA_BUCKET)
GCS_PHOTOS_BUCKET = "seoul-line-gcs-photos"
GCS_VIDEO_BUCKET = "seoul-line-gcs-video"
GCS_DESTINATION_BUCKET = "tokyo-line-gcs-media"
GCS_SOURCE_BUCKETS = (GCS_PHOTOS_BUCKET, GCS_VIDEO_BUCKET)
GCS_SEOUL = "asia-northeast3"
GCS_TOKYO = "asia-northeast1"
GCS_PROJECT = "residency-local"
ROUTES = ("s3->s3", "s3->gs", "gs->gs", "gs->s3")
MIGRATOR_USER = "residency-migrator"
AFFILIATE_USER = "line-affiliate-cn"
#: The role the affiliate may assume to read the Seoul buckets (a second way in besides its keys).
AFFILIATE_ROLE = "seoul-media-reader"
#: The affiliate's own AWS account, granted in a bucket policy and an ACL of the Seoul buckets.
AFFILIATE_ACCOUNT = "999988887777"
AFFILIATE_CANONICAL_ID = "a1f0" * 16
#: The affiliate's Google service account: an HMAC key, a key file and a binding on the Seoul photos.
AFFILIATE_SA = "line-affiliate-cn@affiliate-cn-media.iam.gserviceaccount.com"
PART_SIZE = 8 * MiB

SCALES = ("small", "demo")

# Magic numbers so that content sniffers (and people with `xxd`) see real formats.
_MAGIC = {
    "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "gif": b"GIF89a",
    "mp4": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",
    "m4a": b"\x00\x00\x00\x18ftypM4A \x00\x00\x02\x00M4A isom",
    "mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x64",
}
_CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "m4a": "audio/mp4",
    "mp3": "audio/mpeg",
}


@dataclass(frozen=True)
class Estate:
    """What :func:`seed_estate` built; the counts are what a correct inventory finds.

    ``migrator`` and ``affiliate`` carry the endpoint and a default region
    (ap-northeast-2); ask ``.client(service, region)`` for other regions.
    """

    endpoint_url: str
    workdir: Path
    policy_path: Path
    app_db_url: str
    migrator: AwsCredentials
    affiliate: AwsCredentials
    affiliate_user: str
    source_buckets: tuple[str, ...]
    destination_bucket: str
    media_objects: int
    media_bytes: int
    other_objects: int
    references: int
    """URL cells in the app db that point into a Seoul bucket (media, non-media or dangling)."""
    media_references: int = 0
    """Of ``references``, those naming an existing in-scope media object (what a cutover rewrites)."""
    gcs_endpoint: str | None = None
    """The fake-gcs-server the GCS buckets live on; ``None`` for an S3-only estate."""
    gcs_source_buckets: tuple[str, ...] = ()
    gcs_destination_bucket: str | None = None
    gcs_access_url: str | None = None
    """The named fake of the GCS access APIs (HMAC keys, bucket IAM, service-account keys)."""
    gcs_affiliate: dict[str, Any] | None = field(default=None, repr=False, hash=False)
    """The affiliate's HMAC key (``access_id``, ``secret``) and key file (``keyfile``): secrets."""
    routes: dict[str, dict[str, int]] = field(default_factory=dict, hash=False)
    """In-scope media per copy route, ``{"s3->gs": {"objects": n, "bytes": b}, ...}``, as the policy routes them."""

    def connection_env(self) -> dict[str, str]:
        """Airflow connections as ``AIRFLOW_CONN_<ID>`` environment variables (JSON form).

        The values contain secret keys: put them in a child process environment,
        never in a log.
        """
        conns = {
            "aws_seoul": (self.migrator, SEOUL),
            "aws_tokyo": (self.migrator, TOKYO),
            "aws_iam": (self.migrator, "us-east-1"),
            "affiliate_probe": (self.affiliate, SEOUL),
        }
        env = {
            f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps({
                "conn_type": "aws",
                "login": creds.access_key_id,
                "password": creds.secret_access_key,
                # moto stores the checksum a client sends without checking it.
                "extra": {"region_name": region, "endpoint_url": self.endpoint_url,
                          "validates_upload_checksums": False},
            })
            for conn_id, (creds, region) in conns.items()
        }
        if self.gcs_endpoint:
            for conn_id in ("gcs_seoul", "gcs_tokyo"):
                env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps({
                    "conn_type": "google_cloud_platform",
                    "extra": {"project": GCS_PROJECT, "emulator_host": self.gcs_endpoint},
                })
        if self.gcs_access_url and self.gcs_affiliate:
            env["AIRFLOW_CONN_GCS_IAM"] = json.dumps({"conn_type": "google_cloud_platform", "extra": {
                "project": GCS_PROJECT, "emulator_host": self.gcs_access_url, "iam_endpoint": self.gcs_access_url}})
            env["AIRFLOW_CONN_AFFILIATE_HMAC"] = json.dumps({
                "conn_type": "aws", "login": self.gcs_affiliate["access_id"], "password": self.gcs_affiliate["secret"],
                "extra": {"region_name": "auto", "endpoint_url": self.gcs_access_url}})
            env["AIRFLOW_CONN_AFFILIATE_GCS"] = json.dumps({"conn_type": "google_cloud_platform", "extra": {
                "keyfile_dict": self.gcs_affiliate["keyfile"], "api_endpoint": self.gcs_access_url}})
        return env


@dataclass
class _Obj:
    """One object to upload. The body is generated at upload time from ``body_seed``."""

    bucket: str
    key: str
    kind: str  # jpg, png, webp, gif, mp4, m4a, mp3, or a non-media kind (text, json)
    size: int
    body_seed: int
    content_type: str | None  # None: let the server default it (binary/octet-stream)
    crc32c: bool = False  # send a full-object CRC32C (a modern upload)
    multipart: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # CacheControl, Metadata, ...
    provider: str = "s3"

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.provider, self.bucket, self.key)

    def body(self) -> bytes:
        if self.size == 0:
            return b""
        rnd = random.Random(self.body_seed)
        if self.kind == "text":
            lines = [f"2021-03-15T00:{i // 60 % 60:02d}:{i % 60:02d}Z INFO request served id={rnd.getrandbits(32):08x}"
                     for i in range(self.size // 60 + 1)]
            return "\n".join(lines).encode()[: self.size]
        if self.kind == "json":
            doc = {"album": 1001, "photos": [rnd.getrandbits(24) for _ in range(self.size // 10 + 1)]}
            return json.dumps(doc).encode()[: self.size]
        if self.kind == "webp":
            head = b"RIFF" + struct.pack("<I", max(self.size - 8, 0)) + b"WEBPVP8 "
        else:
            head = _MAGIC[self.kind]
        head = head[: self.size]
        return head + rnd.randbytes(self.size - len(head))


class _Plan:
    """The deterministic catalogue of objects and database rows, before any upload."""

    provider = "s3"

    def __init__(self, scale: str, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.small = scale == "small"
        self.objects: list[_Obj] = []
        self.overwritten: list[_Obj] = []  # earlier versions, uploaded first
        self.users: list[dict[str, Any]] = []
        self.photos: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self._media_refs: dict[str, int] = {}  # uri -> times referenced

    # -- objects ------------------------------------------------------------

    def _size(self, lo: int, hi: int) -> int:
        return int(math.exp(self.rnd.uniform(math.log(lo), math.log(hi))))

    def _image_size(self) -> int:
        if self.small:
            return self._size(3 * KiB, 200 * KiB)
        if self.rnd.random() < 0.85:
            return self._size(4 * KiB, 600 * KiB)
        return self._size(600 * KiB, 3 * MiB)

    def add(self, bucket: str, key: str, kind: str, size: int, *, content_type: str | None = "",
            crc32c: bool | None = None, multipart: bool = False, **extra: Any) -> _Obj:
        """Add an object; ``content_type=""`` means the precise type of ``kind``."""
        if content_type == "":
            content_type = _CONTENT_TYPES.get(kind)
            # Legacy uploads: a generic type, so only the extension tells it is media.
            if content_type and self.rnd.random() < 0.10:
                content_type = "application/octet-stream"
        if crc32c is None:
            crc32c = self.rnd.random() < 0.5
        if kind in _CONTENT_TYPES and not extra and self.rnd.random() < 0.06:
            uploader = str(self.rnd.randint(10000, 99999))
            extra = {"CacheControl": "public, max-age=31536000", "Metadata": {"uploader-id": uploader}}
        obj = _Obj(bucket, key, kind, size, self.rnd.getrandbits(64), content_type, crc32c, multipart, dict(extra),
                   self.provider)
        self.objects.append(obj)
        return obj

    def _image(self, bucket: str, key_stem: str) -> _Obj:
        kind = self.rnd.choice(("jpg", "jpg", "jpg", "png", "webp", "gif"))
        return self.add(bucket, f"{key_stem}.{kind}", kind, self._image_size())

    def build(self) -> None:
        small, rnd = self.small, self.rnd
        n_users, n_photos, n_attach, n_audio, n_video, n_stickers = (
            (5, 6, 4, 3, 0, 1) if small else (40, 110, 40, 20, 8, 8)
        )

        # seoul-line-photos: avatars, photos with thumbnails, one user video.
        user_ids = [1001 + i for i in range(n_users)]
        for uid in user_ids:
            avatar = self.add(PHOTOS_BUCKET, f"users/{uid}/avatar.jpg", "jpg", self._size(8 * KiB, 120 * KiB))
            self.users.append({"id": uid, "name": f"user-{uid}", "avatar": avatar})
        # One avatar was replaced: the bucket holds an older version under the same key.
        first = self.users[0]["avatar"]
        self.overwritten.append(
            _Obj(first.bucket, first.key, "jpg", first.size // 2 + 1, rnd.getrandbits(64), "image/jpeg")
        )
        self.users.append({"id": user_ids[-1] + 1, "name": "user-without-avatar", "avatar": None})

        photo_objs: list[tuple[int, _Obj]] = []
        for i in range(n_photos):
            uid = rnd.choice(user_ids)
            month = rnd.randint(1, 12)
            photo_objs.append((uid, self._image(PHOTOS_BUCKET, f"users/{uid}/photos/2021/{month:02d}/IMG_{i + 1:04d}")))
        photo_objs.append((1001, self.add(
            PHOTOS_BUCKET, "users/1001/アルバム/夏 休み.jpg", "jpg", self._image_size(),
            CacheControl="private, max-age=600", ContentLanguage="ja",
            ContentDisposition="inline; filename*=UTF-8''%E5%A4%8F%20%E4%BC%91%E3%81%BF.jpg",
            Metadata={"uploader-id": "12345"},
        )))
        photo_objs.append((1002, self.add(
            PHOTOS_BUCKET, "사진/2021/03/가족 사진.png", "png", self._image_size(), content_type="application/octet-stream",
        )))
        photo_objs.append((1001, self.add(
            PHOTOS_BUCKET, "users/1001/photos/no-type.jpg", "jpg", self._image_size(), content_type=None,
        )))
        # The large single-part object: crosses the multipart threshold, ETag is a plain MD5.
        big_single = 16 * MiB + rnd.randint(64 * KiB, 300 * KiB) if small else 22 * MiB + rnd.randint(0, MiB)
        photo_objs.append((1002, self.add(
            PHOTOS_BUCKET, "users/1002/videos/2021/05/VID 0001.mp4", "mp4", big_single, crc32c=False,
        )))
        for i, (uid, photo) in enumerate(photo_objs):
            stem = photo.key.rsplit(".", 1)[0]
            thumb = self.add(PHOTOS_BUCKET, f"thumbs/{stem}.jpg", "jpg", self._size(3 * KiB, 40 * KiB))
            self.photos.append({"id": i + 1, "user_id": uid, "photo": photo, "thumb": thumb})

        # seoul-line-media: message attachments, voice, music, video, stickers.
        media_objs: list[_Obj] = []
        for i in range(n_attach):
            day = rnd.randint(1, 28)
            media_objs.append(self._image(MEDIA_BUCKET, f"attachments/2021/03/{day:02d}/{5000 + i}/image"))
        for i in range(n_audio):
            kind = rnd.choice(("m4a", "mp3"))
            prefix = "voice" if kind == "m4a" else "music"
            hi = 400 * KiB if small else 5 * MiB
            key = f"{prefix}/2021/04/{7000 + i}.{kind}"
            media_objs.append(self.add(MEDIA_BUCKET, key, kind, self._size(100 * KiB, hi)))
        for i in range(n_video):
            key = f"video/2021/06/{8000 + i}.mp4"
            media_objs.append(self.add(MEDIA_BUCKET, key, "mp4", self._size(2 * MiB, 8 * MiB)))
        for i in range(n_stickers):
            key = f"stickers/pack-{i}/{i}.gif"
            media_objs.append(self.add(MEDIA_BUCKET, key, "gif", self._size(2 * KiB, 60 * KiB)))
        media_objs += [
            self.add(MEDIA_BUCKET, "stickers/Summer Sale 2021/banner final (1).gif", "gif", 48 * KiB,
                     content_type="image/gif"),
            self.add(MEDIA_BUCKET, "img/a+b%20c.webp", "webp", self._image_size(), content_type="image/webp",
                     crc32c=True),
            self.add(MEDIA_BUCKET, "img/placeholder-0.png", "png", 0, content_type="image/png", crc32c=True),
        ]
        big_multi = 17 * MiB + rnd.randint(0, 64 * KiB) if small else 34 * MiB + rnd.randint(0, MiB)
        media_objs.append(self.add(
            MEDIA_BUCKET, "media/u/7/7a/7a3/2021/03/15/VID_20210315_120000.mp4", "mp4", big_multi,
            content_type="video/mp4", crc32c=True, multipart=True, Metadata={"uploader-id": "12345"},
        ))

        # Out of scope: not media by content type, or media extension with a specific non-media type.
        log_obj = self.add(MEDIA_BUCKET, "logs/2021/03/15/app.log", "text", 6 * KiB, content_type="text/plain")
        json_obj = self.add(MEDIA_BUCKET, "meta/album-1001.json", "json", 2 * KiB, content_type="application/json")
        self.add(PHOTOS_BUCKET, "docs/terms.txt", "text", 3 * KiB, content_type="text/plain; charset=utf-8")
        fake_jpg = self.add(PHOTOS_BUCKET, "meta/export-1001.jpg", "json", 1 * KiB, content_type="application/json")

        # -- messages ----------------------------------------------------------
        styles = (UrlStyle.S3_URI, UrlStyle.S3_VIRTUAL, UrlStyle.S3_PATH)
        cells: list[str | None] = []
        for i, obj in enumerate(media_objs):
            cells.append(self.url(obj, styles[i % 3]))
            if rnd.random() < 0.2:  # forwarded: the same attachment in another message
                cells.append(self.url(obj, styles[(i + 1) % 3]))
        special = next(o for o in media_objs if o.key == "img/a+b%20c.webp")
        cells += [self.url(special, s) for s in styles]  # every style of the awkward key
        cells.append(self.url(special, UrlStyle.S3_VIRTUAL, query="v=2"))  # cache buster
        for _, photo in photo_objs[:: 7 if not small else 3]:  # photos shared in chats
            cells.append(self.url(photo, UrlStyle.S3_VIRTUAL))
        cells += [
            self.url(log_obj, UrlStyle.S3_URI),
            self.url(json_obj, UrlStyle.S3_VIRTUAL),
            self.url(fake_jpg, UrlStyle.S3_PATH),
            # Dangling: the object was deleted long ago.
            format_url(ObjectRef("s3", MEDIA_BUCKET, "attachments/2021/03/15/deleted/lost.jpg"),
                       UrlStyle.S3_VIRTUAL, SEOUL),
            "https://cdn.example.jp/x.png",
            "https://example.com/images/banner.jpg",
            "https://s3.ap-northeast-1.amazonaws.com/someone-else-bucket/x.jpg",
            "",
            None, None, None,
        ]
        rnd.shuffle(cells)
        self.messages = [
            {"id": i + 1, "body": f"message {i + 1}", "attachment_url": url} for i, url in enumerate(cells)
        ]
        # Chat text with photo links in it (Markdown and HTML, as the apps write them).
        shared = [photo for _, photo in photo_objs[1 :: 5 if not small else 2]]
        for n, photo in enumerate(shared):
            message = self.messages[(n * 3) % len(self.messages)]
            style = styles[n % 3]
            if style is UrlStyle.S3_URI and any(c.isspace() for c in photo.key):
                style = UrlStyle.S3_VIRTUAL  # in text a verbatim URI ends at a space; apps link these encoded
            link = self.url(photo, style)
            message["body"] = (f"{message['body']}: look [this photo]({link}) 📷" if n % 2 else
                               f"{message['body']}: <p>from our trip <img src=\"{link}\" alt=\"trip\"></p>")

    def url(self, obj: _Obj, style: UrlStyle, query: str = "") -> str:
        self._media_refs[obj.ref.uri] = self._media_refs.get(obj.ref.uri, 0) + 1
        return format_url(obj.ref, style, SEOUL, query)

    def unreferenced(self) -> list[str]:
        """Keys of media objects that no cell references (must be none)."""
        referenced = set(self._media_refs)
        for u in self.users:
            if u["avatar"]:
                referenced.add(u["avatar"].ref.uri)
        for p in self.photos:
            referenced.update((p["photo"].ref.uri, p["thumb"].ref.uri))
        return [o.ref.uri for o in self.objects if o.kind in _CONTENT_TYPES and o.ref.uri not in referenced]

    # -- database rows -------------------------------------------------------

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "users": [
                {"id": u["id"], "name": u["name"],
                 "avatar_url": format_url(u["avatar"].ref, UrlStyle.S3_VIRTUAL, SEOUL) if u["avatar"] else None,
                 "settings": _settings(u)}
                for u in self.users
            ],
            "photos": [
                {"id": p["id"], "user_id": p["user_id"],
                 "url": format_url(p["photo"].ref, UrlStyle.S3_URI),
                 "thumbnail_url": format_url(p["thumb"].ref, UrlStyle.S3_PATH, SEOUL)}
                for p in self.photos
            ],
            "messages": self.messages,
        }


class _GcsPlan(_Plan):
    """The GCS side of the estate and the ``videos`` table.

    It draws from its own random stream, so that the S3 side (objects, bytes and
    rows) is the same whether or not the estate has a GCS side.
    """

    provider = "gs"

    def __init__(self, scale: str, seed: int) -> None:
        super().__init__(scale, seed)
        self.rnd = random.Random(f"gcs:{seed}")  # str seeds hash with SHA-512: stable across processes
        self.videos: list[dict[str, Any]] = []

    def build(self) -> None:
        small, rnd = self.small, self.rnd
        n_photos, n_clips, n_audio = (4, 2, 2) if small else (75, 22, 36)
        owners = [1001 + i for i in range(5 if small else 40)]

        # seoul-line-gcs-photos: album images, video posters.
        photos = [
            self._image(GCS_PHOTOS_BUCKET, f"albums/{rnd.choice(owners)}/2021/{rnd.randint(1, 12):02d}/PXL_{i + 1:04d}")
            for i in range(n_photos)
        ]
        photos += [
            self.add(GCS_PHOTOS_BUCKET, "albums/1003/アルバム/花火 大会.jpg", "jpg", self._image_size(),
                     CacheControl="private, max-age=600", ContentLanguage="ja",
                     ContentDisposition="inline; filename*=UTF-8''%E8%8A%B1%E7%81%AB%20%E5%A4%A7%E4%BC%9A.jpg",
                     Metadata={"uploader-id": "23456"}),
            self.add(GCS_PHOTOS_BUCKET, "사진/2021/07/바다 풍경.webp", "webp", self._image_size(),
                     content_type="application/octet-stream"),  # legacy upload: media by extension
            self.add(GCS_PHOTOS_BUCKET, "shared/a+b%20c.png", "png", self._image_size(), content_type="image/png"),
            self.add(GCS_PHOTOS_BUCKET, "p/9/9f/9f2/2021/07/01/IMG_20210701_090000.jpg", "jpg", self._image_size(),
                     content_type="image/jpeg", Metadata={"uploader-id": "34567"}),
            self.add(GCS_PHOTOS_BUCKET, "stickers/Summer Sale 2021/sparkle (2).gif", "gif", 36 * KiB,
                     content_type="image/gif", CacheControl="public, max-age=31536000"),
        ]

        # seoul-line-gcs-video: video clips, voice and music, one large video.
        clips: list[_Obj] = []
        big = 16 * MiB + rnd.randint(64 * KiB, 300 * KiB) if small else 20 * MiB + rnd.randint(0, MiB)
        clips.append(self.add(
            GCS_VIDEO_BUCKET, "video/2021/07/VID_20210701_183000.mp4", "mp4", big, content_type="video/mp4",
            CacheControl="public, max-age=86400", Metadata={"uploader-id": "12345"},
        ))
        lo, hi = (256 * KiB, MiB) if small else (512 * KiB, 4 * MiB)
        for i in range(n_clips):
            clips.append(self.add(GCS_VIDEO_BUCKET, f"video/2021/{rnd.randint(7, 12):02d}/{9000 + i}.mp4", "mp4",
                                  self._size(lo, hi)))
        clips.append(self.add(
            GCS_VIDEO_BUCKET, "동영상/2021/08/여름 휴가 (1).mp4", "mp4", self._size(lo, hi), content_type="video/mp4",
            ContentLanguage="ko", ContentDisposition='attachment; filename="summer-vacation.mp4"',
        ))
        hi = 400 * KiB if small else 3 * MiB
        for i in range(n_audio):
            kind = rnd.choice(("m4a", "mp3"))
            prefix = "voice" if kind == "m4a" else "music"
            clips.append(self.add(GCS_VIDEO_BUCKET, f"{prefix}/2021/08/{9500 + i}.{kind}", kind,
                                  self._size(64 * KiB, hi)))
        clips.append(self.add(GCS_VIDEO_BUCKET, "voice/2021/08/ボイス+メモ 100%.m4a", "m4a", self._size(64 * KiB, hi),
                              content_type="audio/mp4", Metadata={"uploader-id": "45678"}))

        # Out of scope: not media by content type (one with a media extension).
        log_obj = self.add(GCS_VIDEO_BUCKET, "logs/2021/07/transcode.log", "text", 5 * KiB, content_type="text/plain")
        playlist = self.add(GCS_VIDEO_BUCKET, "manifests/2021/07/playlist.json", "json", 2 * KiB,
                            content_type="application/json")
        self.add(GCS_PHOTOS_BUCKET, "meta/album-2001.json", "json", 2 * KiB, content_type="application/json")
        fake_jpg = self.add(GCS_PHOTOS_BUCKET, "exports/export-2001.jpg", "json", 1 * KiB,
                            content_type="application/json")

        # -- videos: every GCS media object referenced at least once ------------
        pairs: list[tuple[str | None, str | None]] = []
        for i in range(max(len(clips), len(photos))):
            clip, poster = clips[i % len(clips)], photos[i % len(photos)]
            clip_style = UrlStyle.GS_VIRTUAL if i % 7 == 6 else (UrlStyle.GS_URI if i % 2 == 0 else UrlStyle.GS_PATH)
            poster_style = UrlStyle.GS_VIRTUAL if i % 5 == 4 else UrlStyle.GS_PATH
            pairs.append((self.url(clip, clip_style), self.url(poster, poster_style)))
        special_clip = next(o for o in clips if o.key.startswith("voice/2021/08/ボイス"))
        special_poster = next(o for o in photos if o.key == "shared/a+b%20c.png")
        for style in (UrlStyle.GS_URI, UrlStyle.GS_PATH, UrlStyle.GS_VIRTUAL):  # every style of awkward keys
            pairs.append((self.url(special_clip, style), self.url(special_poster, style)))
        pairs.append((None, self.url(special_poster, UrlStyle.GS_PATH, query="v=3")))  # cache buster
        pairs += [
            # Dangling: the object was deleted long ago.
            (format_url(ObjectRef("gs", GCS_VIDEO_BUCKET, "video/2021/07/deleted/lost.mp4"), UrlStyle.GS_URI), None),
            (format_url(log_obj.ref, UrlStyle.GS_PATH), format_url(fake_jpg.ref, UrlStyle.GS_VIRTUAL)),
            (format_url(playlist.ref, UrlStyle.GS_URI),
             "https://storage.googleapis.com/someone-else-bucket/poster.jpg"),
            ("https://cdn.example.jp/v/1.mp4", ""),
            (None, None),
        ]
        rnd.shuffle(pairs)
        self.videos = [
            {"id": i + 1, "owner_id": rnd.choice(owners), "gcs_url": clip, "poster_url": poster}
            for i, (clip, poster) in enumerate(pairs)
        ]

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        return {"videos": self.videos}


#: The application's columns that hold references, and their kinds (as the policy lists them).
REFERENCE_COLUMNS = {"avatar_url": "url", "settings": "json", "url": "url", "thumbnail_url": "url",
                     "attachment_url": "url", "body": "text", "gcs_url": "url", "poster_url": "url"}


def _settings(user: dict[str, Any]) -> str:
    """A user's settings as the app stores them: JSON text, its own spacing, the avatar URL
    nested (slashes escaped, as some JSON encoders write them)."""
    avatar = user["avatar"]
    if avatar is None:
        return '{"theme": "light", "profile": {"avatar": null}}'
    url = format_url(avatar.ref, UrlStyle.S3_VIRTUAL, SEOUL).replace("/", "\\/")
    return ('{"theme": "dark", "lang": "ja", "profile": {"avatar": "' + url + '", "sizes": [64, 128]},'
            ' "notify": {"mentions": true}}')


def _crc32c_b64(data: bytes) -> str:
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode("ascii")


def _put(client: Any, obj: _Obj) -> None:
    body = obj.body()
    kwargs: dict[str, Any] = {"Bucket": obj.bucket, "Key": obj.key, **obj.extra}
    if obj.content_type:
        kwargs["ContentType"] = obj.content_type
    if obj.multipart:
        _multipart_put(client, obj, body, kwargs)
        return
    if obj.crc32c:
        # moto stores a checksum only when the algorithm header comes with the value.
        kwargs.update(ChecksumAlgorithm="CRC32C", ChecksumCRC32C=_crc32c_b64(body))
    client.put_object(Body=body, **kwargs)


def _multipart_put(client: Any, obj: _Obj, body: bytes, kwargs: dict[str, Any]) -> None:
    upload_id = client.create_multipart_upload(
        ChecksumAlgorithm="CRC32C", ChecksumType="FULL_OBJECT", **kwargs
    )["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, len(body), PART_SIZE), start=1):
            chunk = body[start:start + PART_SIZE]
            crc = _crc32c_b64(chunk)
            resp = client.upload_part(
                Bucket=obj.bucket, Key=obj.key, UploadId=upload_id, PartNumber=number, Body=chunk, ChecksumCRC32C=crc
            )
            parts.append({"PartNumber": number, "ETag": resp["ETag"], "ChecksumCRC32C": crc})
        client.complete_multipart_upload(
            Bucket=obj.bucket, Key=obj.key, UploadId=upload_id, MultipartUpload={"Parts": parts},
            ChecksumCRC32C=_crc32c_b64(body), ChecksumType="FULL_OBJECT",
        )
    except Exception:
        client.abort_multipart_upload(Bucket=obj.bucket, Key=obj.key, UploadId=upload_id)
        raise


def _gcs_put(client: Any, obj: _Obj) -> None:
    """Upload with google-cloud-storage: one request up to 8 MiB, a resumable upload above."""
    blob = client.bucket(obj.bucket).blob(obj.key)
    extra = obj.extra
    if "CacheControl" in extra:
        blob.cache_control = extra["CacheControl"]
    if "ContentDisposition" in extra:
        blob.content_disposition = extra["ContentDisposition"]
    if "ContentLanguage" in extra:
        blob.content_language = extra["ContentLanguage"]
    if "Metadata" in extra:
        blob.metadata = dict(extra["Metadata"])
    # upload_from_string would default the type to text/plain; a legacy upload is octet-stream.
    blob.upload_from_string(obj.body(), content_type=obj.content_type or "application/octet-stream")


def _policy_document(statements: Iterable[dict[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _bucket_arns(buckets: Iterable[str]) -> list[str]:
    return [arn for b in buckets for arn in (f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*")]


def _create_user(iam: Any, user: str, policy: str) -> tuple[str, str]:
    iam.create_user(UserName=user, Tags=[{"Key": "purpose", "Value": "residency-estate"}])
    iam.put_user_policy(UserName=user, PolicyName=f"{user}-inline", PolicyDocument=policy)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    log.info("estate: IAM user %s with access key %s", user, key["AccessKeyId"])
    return key["AccessKeyId"], key["SecretAccessKey"]


def _foreign_paths(admin: AwsCredentials, iam: Any) -> None:
    """The affiliate's other ways in: a console password, a role it may assume, and grants to its
    own account in the policy and the ACL of the Seoul buckets (issue 10: every path is closed)."""
    iam.create_login_profile(UserName=AFFILIATE_USER, Password="Seoul-Affiliate-2021!")
    account = admin.client("sts").get_caller_identity()["Account"]
    trust = _policy_document([{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": [
        f"arn:aws:iam::{account}:user/{AFFILIATE_USER}", f"arn:aws:iam::{account}:user/{MIGRATOR_USER}"]}}])
    iam.create_role(RoleName=AFFILIATE_ROLE, AssumeRolePolicyDocument=trust)
    iam.put_role_policy(RoleName=AFFILIATE_ROLE, PolicyName="read-seoul", PolicyDocument=_policy_document([
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": _bucket_arns(SOURCE_BUCKETS)}]))
    s3 = admin.client("s3", SEOUL)
    s3.put_bucket_policy(Bucket=PHOTOS_BUCKET, Policy=_policy_document([{
        "Sid": "AffiliateRead", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{AFFILIATE_ACCOUNT}:root"},
        "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{PHOTOS_BUCKET}/*"}]))
    acl = s3.get_bucket_acl(Bucket=MEDIA_BUCKET)
    s3.put_bucket_acl(Bucket=MEDIA_BUCKET, AccessControlPolicy={"Owner": acl["Owner"], "Grants": acl["Grants"] + [
        {"Grantee": {"Type": "CanonicalUser", "ID": AFFILIATE_CANONICAL_ID}, "Permission": "READ"}]})
    log.info("estate: affiliate paths: console password, role %s (trusts it), bucket policy of %s granting account "
             "%s, READ ACL grant on %s", AFFILIATE_ROLE, PHOTOS_BUCKET, AFFILIATE_ACCOUNT, MEDIA_BUCKET)


def _foreign_gcs_paths(gcs: FakeGcsServer) -> dict[str, Any]:
    """The affiliate's service account on the GCS side: an HMAC key, a key file, and an objectViewer
    binding on the Seoul photos bucket (next to a domestic member that must stay)."""
    import base64

    import requests

    fake = gcs.access
    fake.create_service_account(AFFILIATE_SA, project=GCS_PROJECT)
    admin = GcsCredentials("gcs_iam", project=GCS_PROJECT, emulator_host=fake.url, iam_endpoint=fake.url)
    client = admin.client()
    meta, secret = client.create_hmac_key(AFFILIATE_SA, project_id=GCS_PROJECT, retry=None)
    created = requests.post(f"{fake.url}/v1/projects/-/serviceAccounts/{AFFILIATE_SA}/keys", json={}, timeout=10)
    created.raise_for_status()
    keyfile = json.loads(base64.b64decode(created.json()["privateKeyData"]))
    bucket = client.bucket(GCS_PHOTOS_BUCKET)
    policy = bucket.get_iam_policy(requested_policy_version=3, retry=None)
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {
        f"serviceAccount:{AFFILIATE_SA}", f"serviceAccount:uploader@{GCS_PROJECT}.iam.gserviceaccount.com"}})
    bucket.set_iam_policy(policy, retry=None)
    log.info("estate: affiliate service account %s: HMAC key %s, key %s, objectViewer on gs://%s", AFFILIATE_SA,
             meta.access_id, keyfile["private_key_id"], GCS_PHOTOS_BUCKET)
    return {"access_id": meta.access_id, "secret": secret, "keyfile": keyfile}


def _write_db(path: Path, rows: dict[str, list[dict[str, Any]]]) -> str:
    if path.exists():
        path.unlink()
    url = f"sqlite:///{path.resolve()}"
    meta = sa.MetaData()
    tables = {
        "users": sa.Table("users", meta, sa.Column("id", sa.Integer, primary_key=True),
                          sa.Column("name", sa.Text, nullable=False), sa.Column("avatar_url", sa.Text),
                          sa.Column("settings", sa.Text)),
        "photos": sa.Table("photos", meta, sa.Column("id", sa.Integer, primary_key=True),
                           sa.Column("user_id", sa.Integer, nullable=False), sa.Column("url", sa.Text),
                           sa.Column("thumbnail_url", sa.Text)),
        "messages": sa.Table("messages", meta, sa.Column("id", sa.Integer, primary_key=True),
                             sa.Column("body", sa.Text), sa.Column("attachment_url", sa.Text)),
    }
    if "videos" in rows:
        tables["videos"] = sa.Table(
            "videos", meta, sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("owner_id", sa.Integer, nullable=False), sa.Column("gcs_url", sa.Text),
            sa.Column("poster_url", sa.Text),
        )
    engine = sa.create_engine(url)
    try:
        meta.create_all(engine)
        with engine.begin() as conn:
            for name, table in tables.items():
                conn.execute(table.insert(), rows[name])
    finally:
        engine.dispose()
    return url


def _policy_yaml(migration_id: str, affiliate_key: str, shard_size: int, gcs: bool = False,
                 ledger_url: str | None = None) -> str:
    if gcs:
        routes = f"""\
sources:
  # Legacy exports were saved with a .jpg name: the stored content type decides here (a HEAD per object).
  - {{uri: s3://{PHOTOS_BUCKET}, conn_id: aws_seoul, decide_by: content_type}}  # s3->s3
  - {{uri: s3://{MEDIA_BUCKET}, conn_id: aws_seoul, to: gs}}               # s3->gs
  # fake-gcs-server reports one location for every bucket: declare where they are.
  - {{uri: gs://{GCS_PHOTOS_BUCKET}, conn_id: gcs_seoul, location: {GCS_SEOUL}}}           # gs->gs
  - {{uri: gs://{GCS_VIDEO_BUCKET}, conn_id: gcs_seoul, to: s3, location: {GCS_SEOUL}}}     # gs->s3
destinations:
  s3: {{uri: s3://{DESTINATION_BUCKET}, conn_id: aws_tokyo, key_template: "{{src_bucket}}/{{key}}"}}
  gs: {{uri: gs://{GCS_DESTINATION_BUCKET}, conn_id: gcs_tokyo, location: {GCS_TOKYO}, key_template: "{{src_bucket}}/{{key}}"}}
"""
        videos = """\
    - {table: videos, key: id, column: gcs_url}
    - {table: videos, key: id, column: poster_url}
"""
        accepted_gcs = f"""\
    - {{uri: "gs://{GCS_VIDEO_BUCKET}/logs/*", reason: "transcoder logs are not media; they stay in Seoul under the log retention policy"}}
    - {{uri: "gs://{GCS_VIDEO_BUCKET}/manifests/*", reason: "playlist manifests (JSON) are not media and are regenerated in Tokyo"}}
    - {{uri: "gs://{GCS_PHOTOS_BUCKET}/exports/*", reason: "album exports (JSON) are not media; out of scope by decision"}}
    - {{uri: "gs://{GCS_VIDEO_BUCKET}/video/2021/07/deleted/*", reason: "dangling link: the video was deleted in 2021; nothing to migrate"}}
"""
    else:
        routes = f"""\
sources:
  # Legacy exports were saved with a .jpg name: the stored content type decides here (a HEAD per object).
  - {{uri: s3://{PHOTOS_BUCKET}, conn_id: aws_seoul, decide_by: content_type}}
  - {{uri: s3://{MEDIA_BUCKET}, conn_id: aws_seoul}}
destinations:
  s3: {{uri: s3://{DESTINATION_BUCKET}, conn_id: aws_tokyo, key_template: "{{src_bucket}}/{{key}}"}}
"""
        videos = ""
        accepted_gcs = ""
    gcs_principal = (f"""\
  # The affiliate's service account: its HMAC key, its key file, and its binding on the Seoul photos.
  - {{provider: gcs, conn_id: gcs_iam, project: {GCS_PROJECT}, service_accounts: [{AFFILIATE_SA}], hmac_probe_conn_id: affiliate_hmac, member_probe_conn_id: affiliate_gcs, probe_uri: gs://{GCS_PHOTOS_BUCKET}}}
""" if gcs else "")
    ledger_line = f"ledger_url: {ledger_url}\n" if ledger_url else ""
    return f"""\
# Written by residency.localcloud.estate.seed_estate: the local demo estate.
migration_id: {migration_id}
home_jurisdiction: JP
control_dir: control              # relative to this file
{ledger_line}{routes}selection:
  media_types: [image, video, audio]
  exclude_prefixes: []
transfer: {{multipart_threshold_mb: 16, part_size_mb: 8, shard_size: {shard_size}, workers: 4}}
purge: {{soak_hours: 0}}          # the demo purges Seoul right after; production keeps a soak (default 24 h)
cutover:                          # the app keeps uploading: list again before the cutover
  catch_up_passes: 3
  freeze: true                    # S3 sources refuse writes from the final pass to the end of the cutover
references:
  database_url: sqlite:///app.db       # relative to this file
  batch_size: 200
  columns:
    - {{table: users, key: id, column: avatar_url}}
    - {{table: users, key: id, column: settings, kind: json}}     # JSON settings, URLs nested
    - {{table: photos, key: id, column: url}}
    - {{table: photos, key: id, column: thumbnail_url}}
    - {{table: messages, key: id, column: attachment_url}}
    - {{table: messages, key: id, column: body, kind: text}}      # chat text with links in it
{videos}  accepted_residual:             # references that may keep pointing at Seoul, each with the reason
    - {{uri: "s3://{MEDIA_BUCKET}/logs/*", reason: "application logs are not media; they stay in Seoul under the log retention policy"}}
    - {{uri: "s3://{MEDIA_BUCKET}/meta/*", reason: "album metadata (JSON) is not media and is rebuilt in Tokyo"}}
    - {{uri: "s3://{PHOTOS_BUCKET}/meta/*", reason: "data exports (JSON) are not media; out of scope by decision"}}
    - {{uri: "s3://{MEDIA_BUCKET}/attachments/2021/03/15/deleted/*", reason: "dangling link: the attachment was deleted in 2021; nothing to migrate"}}
{accepted_gcs}revoke:
  # The affiliate's keys, console password, sessions, the role it may assume, and grants to its account.
  - {{provider: aws, conn_id: aws_iam, user: {AFFILIATE_USER}, access_keys: [{affiliate_key}], account: "{AFFILIATE_ACCOUNT}", canonical_ids: [{AFFILIATE_CANONICAL_ID}], probe_conn_id: affiliate_probe, probe_uri: s3://{PHOTOS_BUCKET}}}
{gcs_principal}"""


def seed_estate(
    server: MotoServer,
    admin: AwsCredentials,
    workdir: Path,
    *,
    gcs: FakeGcsServer | None = None,
    scale: str = "demo",
    seed: int = 2021,
    migration_id: str = "line-media-jp",
    ledger_url: str | None = None,
) -> Estate:
    """Build the overseas estate on ``server`` and write ``policy.yaml`` and ``app.db`` to ``workdir``.

    Args:
        server: a running moto server, normally with :meth:`~.servers.MotoServer.enforce_auth` on.
        admin: credentials allowed to do everything (buckets, objects, IAM).
        workdir: folder for ``policy.yaml`` and ``app.db`` (created if missing; ``app.db`` is replaced).
        gcs: a running fake-gcs-server for the GCS side (all four copy routes);
            ``None`` (the default) builds the S3-only estate.
        scale: ``"demo"`` (~350 S3 media objects, ~180 MB; with ``gcs`` another
            ~150 objects, ~110 MB) or ``"small"`` (~35 S3 objects, < 40 MB; with
            ``gcs`` another ~18 objects, < 25 MB).
        seed: everything (keys, sizes, bytes, rows) is a function of this number.
        migration_id: written into the policy.
        ledger_url: the policy's ``ledger_url`` (an SQLAlchemy URL without a password, e.g.
            PostgreSQL for workers that share no disk); ``None``: the SQLite default in ``control_dir``.

    Raises:
        ValueError: ``scale`` is not one of :data:`SCALES`.
        botocore.exceptions.ClientError: the server already holds these buckets or users.
        google.api_core.exceptions.Conflict: the fake-gcs-server already holds these buckets.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    plan = _Plan(scale, seed)
    plan.build()
    gplan: _GcsPlan | None = None
    if gcs is not None:
        gplan = _GcsPlan(scale, seed)
        gplan.build()
    for p in (plan, gplan):
        missing = p.unreferenced() if p else []
        if missing:  # a bug in the plan, not a caller mistake
            raise AssertionError(f"media objects without a reference: {missing}")

    # Legacy uploads carry no additional checksum: keep botocore from adding CRC32 by itself.
    clients = {
        region: admin.client("s3", region, request_checksum_calculation="when_required")
        for region in (SEOUL, TOKYO)
    }
    seoul, tokyo = clients[SEOUL], clients[TOKYO]
    for bucket, client, region in (
        (PHOTOS_BUCKET, seoul, SEOUL), (MEDIA_BUCKET, seoul, SEOUL), (DESTINATION_BUCKET, tokyo, TOKYO)
    ):
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    seoul.put_bucket_versioning(Bucket=PHOTOS_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    tokyo.put_object(
        Bucket=DESTINATION_BUCKET, Key="ops/README.txt", ContentType="text/plain",
        Body=b"Tokyo media bucket. Owned by the platform team; not part of any migration.\n",
    )

    uploads: list[tuple[Any, Any, _Obj]] = [(_put, seoul, o) for o in plan.objects]
    if gcs is not None and gplan is not None:
        gclient = gcs.credentials("estate-admin", project=GCS_PROJECT).client()
        for bucket, location in (
            (GCS_PHOTOS_BUCKET, GCS_SEOUL), (GCS_VIDEO_BUCKET, GCS_SEOUL), (GCS_DESTINATION_BUCKET, GCS_TOKYO)
        ):
            gclient.create_bucket(gclient.bucket(bucket), location=location)
        gclient.bucket(GCS_DESTINATION_BUCKET).blob("ops/README.txt").upload_from_string(
            b"Tokyo GCS media bucket. Owned by the platform team; not part of any migration.\n",
            content_type="text/plain",
        )
        uploads += [(_gcs_put, gclient, o) for o in gplan.objects]

    for old in plan.overwritten:
        _put(seoul, old)
    # Objects are independent and their bytes are fixed by the plan, so parallel
    # uploads keep the estate deterministic.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda u: u[0](u[1], u[2]), uploads))

    selection = Selection()
    route_of = {
        ("s3", PHOTOS_BUCKET): "s3->s3",
        ("s3", MEDIA_BUCKET): "s3->gs" if gcs is not None else "s3->s3",
        ("gs", GCS_PHOTOS_BUCKET): "gs->gs",
        ("gs", GCS_VIDEO_BUCKET): "gs->s3",
    }
    routes: dict[str, dict[str, int]] = (
        {r: {"objects": 0, "bytes": 0} for r in ROUTES} if gcs is not None else {"s3->s3": {"objects": 0, "bytes": 0}}
    )
    sources = [("s3", b, SEOUL, plan) for b in SOURCE_BUCKETS]
    if gplan is not None:
        sources += [("gs", b, GCS_SEOUL, gplan) for b in GCS_SOURCE_BUCKETS]
    media_objects = media_bytes = other_objects = 0
    for provider, bucket, location, p in sources:
        objs = [o for o in p.objects if o.bucket == bucket]
        media = [o for o in objs if selection.media_type(o.key, o.content_type)]
        size = sum(o.size for o in media)
        media_objects += len(media)
        media_bytes += size
        other_objects += len(objs) - len(media)
        route = routes[route_of[(provider, bucket)]]
        route["objects"] += len(media)
        route["bytes"] += size
        if provider == "s3":
            log.info(
                "estate: s3://%s (%s, versioning %s): %s objects, %s media objects in scope (%s bytes), %s out of scope",
                bucket, location, "enabled" if bucket == PHOTOS_BUCKET else "off", len(objs), len(media),
                size, len(objs) - len(media),
            )
        else:
            log.info(
                "estate: gs://%s (%s, declared in the policy; the emulator reports %s): %s objects, "
                "%s media objects in scope (%s bytes), %s out of scope",
                bucket, location, gcs.location if gcs else "?", len(objs), len(media), size, len(objs) - len(media),
            )
    log.info("estate: s3://%s (%s): 1 unrelated object (ops/README.txt)", DESTINATION_BUCKET, TOKYO)
    if gcs is not None:
        log.info("estate: gs://%s (%s, declared): 1 unrelated object (ops/README.txt)",
                 GCS_DESTINATION_BUCKET, GCS_TOKYO)
    log.info("estate: media in scope per route: %s",
             ", ".join(f"{r} {c['objects']} objects / {c['bytes']} bytes" for r, c in routes.items()))

    # IAM: the migrator and the affiliate whose access must end.
    iam = admin.client("iam", "us-east-1")
    migrator_id, migrator_secret = _create_user(iam, MIGRATOR_USER, _policy_document([
        {"Sid": "MigrateBuckets", "Effect": "Allow", "Action": "s3:*",
         "Resource": _bucket_arns((*SOURCE_BUCKETS, DESTINATION_BUCKET))},
        # In AWS this statement would name arn:aws:iam::<account>:user/line-affiliate-cn.
        # moto authorizes IAM actions against the resource "*" (it does not resolve the
        # target user), so a user-scoped statement is always denied there; the scope
        # to one user is therefore not something this estate can prove.
        {"Sid": "RevokeAffiliate", "Effect": "Allow",
         "Action": ["iam:ListAccessKeys", "iam:UpdateAccessKey", "iam:DeleteAccessKey",
                    "iam:GetAccessKeyLastUsed", "iam:GetUser", "iam:ListUsers", "iam:ListUserTags",
                    "iam:GetLoginProfile", "iam:DeleteLoginProfile", "iam:ListRoles", "iam:GetRole",
                    "iam:UpdateAssumeRolePolicy", "iam:GetRolePolicy", "iam:PutRolePolicy", "iam:GetUserPolicy",
                    "iam:PutUserPolicy"],
         "Resource": "*"},
        {"Sid": "WhoAmI", "Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"},
    ]))
    affiliate_id, affiliate_secret = _create_user(iam, AFFILIATE_USER, _policy_document([
        {"Sid": "ReadSeoul", "Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
         "Resource": _bucket_arns(SOURCE_BUCKETS)},
        {"Sid": "AssumeReader", "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"},
    ]))
    _foreign_paths(admin, iam)
    gcs_affiliate = _foreign_gcs_paths(gcs) if gcs is not None else None

    rows = plan.rows()
    if gplan is not None:
        rows.update(gplan.rows())
    app_db_url = _write_db(workdir / "app.db", rows)
    seoul_cells = media_cells = 0
    source_buckets = {("s3", b) for b in SOURCE_BUCKETS}
    in_scope = {o.ref.uri for o in plan.objects if selection.media_type(o.key, o.content_type)}
    if gplan is not None:
        source_buckets |= {("gs", b) for b in GCS_SOURCE_BUCKETS}
        in_scope |= {o.ref.uri for o in gplan.objects if selection.media_type(o.key, o.content_type)}
    for table_rows in rows.values():
        for row in table_rows:
            for column, kind in REFERENCE_COLUMNS.items():
                for spot in locate(row.get(column) or "", kind, ()):
                    if (spot.parsed.ref.provider, spot.parsed.ref.bucket) in source_buckets:
                        seoul_cells += 1
                        media_cells += spot.parsed.ref.uri in in_scope
    log.info(
        "estate: %s: %s; %s URL cells point into Seoul (%s at media in scope)",
        app_db_url, ", ".join(f"{name} {len(r)}" for name, r in rows.items()) + " rows", seoul_cells, media_cells,
    )

    policy_path = workdir / "policy.yaml"
    policy_path.write_text(
        _policy_yaml(migration_id, affiliate_id, 10 if scale == "small" else 100, gcs=gcs is not None,
                     ledger_url=ledger_url),
        encoding="utf-8",
    )

    return Estate(
        endpoint_url=server.endpoint_url,
        workdir=workdir,
        policy_path=policy_path,
        app_db_url=app_db_url,
        migrator=server.credentials("aws_seoul", migrator_id, migrator_secret, SEOUL),
        affiliate=server.credentials("affiliate_probe", affiliate_id, affiliate_secret, SEOUL),
        affiliate_user=AFFILIATE_USER,
        source_buckets=SOURCE_BUCKETS,
        destination_bucket=DESTINATION_BUCKET,
        media_objects=media_objects,
        media_bytes=media_bytes,
        other_objects=other_objects,
        references=seoul_cells,
        media_references=media_cells,
        gcs_endpoint=gcs.endpoint_url if gcs is not None else None,
        gcs_source_buckets=GCS_SOURCE_BUCKETS if gcs is not None else (),
        gcs_destination_bucket=GCS_DESTINATION_BUCKET if gcs is not None else None,
        gcs_access_url=gcs.access.url if gcs is not None else None,
        gcs_affiliate=gcs_affiliate,
        routes=routes,
    )


@dataclass(frozen=True)
class LateUploads:
    """What :func:`upload_late` wrote: media in scope, and the chat messages linking them."""

    objects: int
    bytes: int
    references: int
    uris: tuple[str, ...]


def upload_late(estate: Estate, admin: AwsCredentials, gcs: FakeGcsServer | None, wave: int,
                count: int = 3) -> LateUploads:
    """The live application at work after the inventory: ``count`` new photos in the Seoul
    photo bucket (and one in the GCS photo bucket when the estate has a GCS side), each
    shared in a new chat message whose text links it. The demo calls this between phases;
    a correct migration still ends COMPLETE with them copied and their links rewritten.

    Raises:
        botocore.exceptions.ClientError: the bucket refused the write (e.g. frozen).
    """
    rnd = random.Random(f"late-{wave}")
    objs = [
        _Obj(PHOTOS_BUCKET, f"users/1002/photos/2021/12/LATE_{wave}_{i + 1:02d}.jpg", "jpg",
             rnd.randint(8 * KiB, 96 * KiB), rnd.getrandbits(64), "image/jpeg")
        for i in range(count)
    ]
    if gcs is not None and estate.gcs_endpoint:
        objs.append(_Obj(GCS_PHOTOS_BUCKET, f"albums/late/{wave}/cover.png", "png", rnd.randint(8 * KiB, 64 * KiB),
                         rnd.getrandbits(64), "image/png", provider="gs"))
    s3 = admin.client("s3", SEOUL, request_checksum_calculation="when_required")
    for obj in objs:
        if obj.provider == "gs":
            _gcs_put(gcs.credentials("estate-admin", project=GCS_PROJECT).client(), obj)
        else:
            _put(s3, obj)
    styles = (UrlStyle.S3_VIRTUAL, UrlStyle.S3_URI, UrlStyle.S3_PATH)
    engine = sa.create_engine(estate.app_db_url)
    try:
        with engine.begin() as conn:
            first = (conn.execute(sa.text("SELECT MAX(id) FROM messages")).scalar() or 0) + 1
            rows = []
            for i, obj in enumerate(objs):
                style = UrlStyle.GS_URI if obj.provider == "gs" else styles[i % 3]
                link = format_url(obj.ref, style, SEOUL)
                rows.append({"id": first + i, "body": f"just uploaded {link} 🎉", "attachment_url": None})
            conn.execute(sa.text("INSERT INTO messages (id, body, attachment_url) VALUES (:id, :body, :attachment_url)"),
                         rows)
    finally:
        engine.dispose()
    log.info("estate: late uploads (wave %d): %s, each linked from a new chat message", wave,
             ", ".join(o.ref.uri for o in objs))
    return LateUploads(len(objs), sum(o.size for o in objs), len(objs), tuple(o.ref.uri for o in objs))
