"""The seeded overseas estate, checked against a real moto server over HTTP with IAM enforced."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import google_crc32c
import pytest
from botocore.exceptions import ClientError

from residency.clients import aws_from_fields, gcs_from_fields
from residency.localcloud.estate import Estate, seed_estate
from residency.localcloud.servers import FakeGcsServer, MotoServer
from residency.references.cells import locate
from residency.policy import load_policy
from residency.uris import UrlStyle, parse_url

SEOUL, TOKYO = "ap-northeast-2", "ap-northeast-1"
URL_COLUMNS = {"users": ("avatar_url",), "photos": ("url", "thumbnail_url"), "messages": ("attachment_url",)}
VIDEO_COLUMNS = {"videos": ("gcs_url", "poster_url")}
MiB = 1024 * 1024


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def server() -> Iterator[MotoServer]:
    with MotoServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def seeded(server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Estate, list[logging.LogRecord]]:
    admin = server.enforce_auth()
    handler = _Records()
    logger = logging.getLogger("residency.localcloud.estate")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        estate = seed_estate(server, admin, tmp_path_factory.mktemp("estate"), scale="small")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return estate, handler.records


@pytest.fixture(scope="module")
def estate(seeded: tuple[Estate, list[logging.LogRecord]]) -> Estate:
    return seeded[0]


def _objects(client: Any, bucket: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.extend(page.get("Contents", []))
    return out


def _crc32c_b64(data: bytes) -> str:
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


def _error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


def _url_cells(db_url: str, columns: dict[str, tuple[str, ...]] = URL_COLUMNS) -> list[str | None]:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as db:
        return [v for table, cols in columns.items() for col in cols
                for (v,) in db.execute(f"SELECT {col} FROM {table} ORDER BY id")]


def _embedded(db_url: str) -> list:
    """URLs inside the text and JSON columns (chat text, user settings), parsed."""
    return [spot.parsed for table, column, kind in (("messages", "body", "text"), ("users", "settings", "json"))
            for cell in _url_cells(db_url, {table: (column,)}) for spot in locate(cell or "", kind, ())]


def test_buckets_are_in_their_regions(estate: Estate) -> None:
    s3 = estate.migrator.client("s3", SEOUL)
    expected = {"seoul-line-photos": SEOUL, "seoul-line-media": SEOUL, "tokyo-line-media": TOKYO}
    assert set(estate.source_buckets) | {estate.destination_bucket} == set(expected)
    for bucket, region in expected.items():
        assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == region
    assert s3.get_bucket_versioning(Bucket="seoul-line-photos").get("Status") == "Enabled"
    assert s3.get_bucket_versioning(Bucket="seoul-line-media").get("Status") is None


def test_counts_and_bytes_match_the_listing(estate: Estate) -> None:
    selection = load_policy(estate.policy_path).selection
    s3 = estate.migrator.client("s3", SEOUL)
    media = media_bytes = other = 0
    for bucket in estate.source_buckets:
        for item in _objects(s3, bucket):
            head = s3.head_object(Bucket=bucket, Key=item["Key"])
            if selection.media_type(item["Key"], head["ContentType"]):
                media += 1
                media_bytes += item["Size"]
            else:
                other += 1
    assert (media, media_bytes, other) == (estate.media_objects, estate.media_bytes, estate.other_objects)
    assert 25 <= estate.media_objects <= 45 and estate.media_bytes < 40_000_000
    dst = _objects(estate.migrator.client("s3", TOKYO), estate.destination_bucket)
    assert [o["Key"] for o in dst] == ["ops/README.txt"]


def test_out_of_scope_objects_are_decided_by_content_type(estate: Estate) -> None:
    selection = load_policy(estate.policy_path).selection
    s3 = estate.migrator.client("s3", SEOUL)
    cases = {
        ("seoul-line-media", "logs/2021/03/15/app.log"): None,
        ("seoul-line-media", "meta/album-1001.json"): None,
        ("seoul-line-photos", "meta/export-1001.jpg"): None,  # .jpg, but application/json
        ("seoul-line-photos", "사진/2021/03/가족 사진.png"): "image",  # octet-stream, by extension
    }
    for (bucket, key), media_type in cases.items():
        head = s3.head_object(Bucket=bucket, Key=key)
        assert selection.media_type(key, head["ContentType"]) == media_type, key
    legacy = s3.head_object(Bucket="seoul-line-photos", Key="사진/2021/03/가족 사진.png")
    assert legacy["ContentType"] == "application/octet-stream"


def test_sources_mix_multipart_modern_and_legacy_uploads(estate: Estate) -> None:
    s3 = estate.migrator.client("s3", SEOUL)
    multipart, with_crc, without = [], 0, 0
    for bucket in estate.source_buckets:
        for item in _objects(s3, bucket):
            if "-" in item["ETag"]:
                multipart.append((bucket, item["Key"], item["Size"]))
            head = s3.head_object(Bucket=bucket, Key=item["Key"], ChecksumMode="ENABLED")
            if head.get("ChecksumCRC32C"):
                with_crc += 1
            else:
                without += 1
    assert multipart, "no source object has a multipart ETag"
    bucket, key, size = multipart[0]
    assert size > 16 * 1024 * 1024
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body[4:12] == b"ftypisom"
    assert head["ChecksumCRC32C"] == _crc32c_b64(body) and head["ChecksumType"] == "FULL_OBJECT"
    assert head["Metadata"] == {"uploader-id": "12345"}
    assert with_crc >= 5 and without >= 5
    big_single = [o for o in _objects(s3, "seoul-line-photos") if o["Size"] > 16 * 1024 * 1024]
    assert big_single and "-" not in big_single[0]["ETag"]


def test_media_bytes_start_with_magic_numbers(estate: Estate) -> None:
    s3 = estate.migrator.client("s3", SEOUL)
    magic = {
        ".jpg": lambda b: b[:3] == b"\xff\xd8\xff",
        ".png": lambda b: b[:8] == b"\x89PNG\r\n\x1a\n",
        ".webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
        ".gif": lambda b: b[:6] == b"GIF89a",
        ".mp4": lambda b: b[4:12] == b"ftypisom",
        ".m4a": lambda b: b[4:8] == b"ftyp",
        ".mp3": lambda b: b[:3] == b"ID3",
    }
    seen = set()
    for bucket in estate.source_buckets:
        for item in _objects(s3, bucket):
            ext = "." + item["Key"].rsplit(".", 1)[-1]
            if ext not in magic or item["Size"] == 0 or item["Key"].startswith("meta/"):
                continue
            head = s3.get_object(Bucket=bucket, Key=item["Key"], Range="bytes=0-15")["Body"].read()
            assert magic[ext](head), (item["Key"], head)
            seen.add(ext)
    assert {".jpg", ".png", ".webp", ".gif", ".mp4"} <= seen and seen & {".m4a", ".mp3"}


@pytest.mark.parametrize(
    ("bucket", "key"),
    [
        pytest.param("seoul-line-photos", "users/1001/アルバム/夏 休み.jpg", id="japanese and space"),
        pytest.param("seoul-line-photos", "사진/2021/03/가족 사진.png", id="korean"),
        pytest.param("seoul-line-media", "img/a+b%20c.webp", id="plus and literal percent"),
        pytest.param("seoul-line-media", "stickers/Summer Sale 2021/banner final (1).gif", id="spaces and parentheses"),
        pytest.param("seoul-line-media", "media/u/7/7a/7a3/2021/03/15/VID_20210315_120000.mp4", id="deep prefix"),
    ],
)
def test_awkward_keys_round_trip(estate: Estate, bucket: str, key: str) -> None:
    s3 = estate.migrator.client("s3", SEOUL)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=key.split("/")[0])["Contents"]]
    assert key in listed
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0


def test_photos_bucket_holds_an_older_version(estate: Estate) -> None:
    s3 = estate.migrator.client("s3", SEOUL)
    versions = s3.list_object_versions(Bucket="seoul-line-photos", Prefix="users/1001/avatar.jpg")["Versions"]
    assert len(versions) == 2 and sum(v["IsLatest"] for v in versions) == 1


def test_policy_loads_and_names_the_affiliate_key(estate: Estate) -> None:
    policy = load_policy(estate.policy_path)
    assert policy.migration_id == "line-media-jp" and policy.home_jurisdiction == "JP"
    assert [s.bucket_uri for s in policy.sources] == ["s3://seoul-line-photos", "s3://seoul-line-media"]
    assert policy.destinations["s3"].ref.bucket == "tokyo-line-media"
    assert policy.transfer.multipart_threshold == 16 * 1024 * 1024 and policy.transfer.shard_size == 10
    assert policy.references is not None and policy.references.database_url == estate.app_db_url
    assert policy.control_dir == str(estate.workdir.resolve() / "control")
    (principal,) = policy.revocations
    assert principal.user == estate.affiliate_user == "line-affiliate-cn"
    assert principal.access_keys == (estate.affiliate.access_key_id,)
    assert principal.probe_conn_id == "affiliate_probe" and principal.probe_uri == "s3://seoul-line-photos"


def test_app_db_references_every_media_object(estate: Estate) -> None:
    with sqlite3.connect(estate.app_db_url.removeprefix("sqlite:///")) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"users", "photos", "messages"}
    cells = _url_cells(estate.app_db_url)
    parsed = [p for p in map(parse_url, filter(None, cells)) if p] + _embedded(estate.app_db_url)
    seoul = [p for p in parsed if p.ref.bucket in estate.source_buckets]
    assert len(seoul) == estate.references
    assert len(_embedded(estate.app_db_url)) >= 5  # links inside chat text and JSON settings too
    assert {p.style for p in seoul} == {UrlStyle.S3_URI, UrlStyle.S3_VIRTUAL, UrlStyle.S3_PATH}
    assert None in cells and "https://cdn.example.jp/x.png" in cells

    selection = load_policy(estate.policy_path).selection
    s3 = estate.migrator.client("s3", SEOUL)
    existing = {
        (bucket, o["Key"]): s3.head_object(Bucket=bucket, Key=o["Key"])["ContentType"]
        for bucket in estate.source_buckets for o in _objects(s3, bucket)
    }
    media = {bk for bk, ctype in existing.items() if selection.media_type(bk[1], ctype)}
    referenced = [(p.ref.bucket, p.ref.key) for p in seoul]
    assert media <= set(referenced), sorted(media - set(referenced))
    assert sum(r in media for r in referenced) == estate.media_references
    non_media = [r for r in referenced if r in existing and r not in media]
    dangling = [r for r in referenced if r not in existing]
    assert len(non_media) >= 2 and len(dangling) == 1
    assert estate.references == estate.media_references + len(non_media) + len(dangling)
    assert len(referenced) > len(set(referenced)), "no object is referenced twice"


def test_affiliate_reads_seoul_but_cannot_write_tokyo(estate: Estate) -> None:
    seoul = estate.affiliate.client("s3", SEOUL)
    assert seoul.list_objects_v2(Bucket="seoul-line-photos", MaxKeys=1)["KeyCount"] == 1
    assert seoul.get_object(Bucket="seoul-line-media", Key="img/a+b%20c.webp")["Body"].read(4) == b"RIFF"
    tokyo = estate.affiliate.client("s3", TOKYO)
    with pytest.raises(ClientError) as denied:
        tokyo.put_object(Bucket="tokyo-line-media", Key="exfil.txt", Body=b"x")
    assert _error_code(denied) == "AccessDenied"
    with pytest.raises(ClientError) as denied:
        seoul.put_object(Bucket="seoul-line-photos", Key="exfil.txt", Body=b"x")
    assert _error_code(denied) == "AccessDenied"


def test_migrator_reads_seoul_and_writes_tokyo(estate: Estate) -> None:
    seoul = estate.migrator.client("s3", SEOUL)
    body = seoul.get_object(Bucket="seoul-line-photos", Key="users/1001/アルバム/夏 休み.jpg")["Body"].read()
    tokyo = estate.migrator.client("s3", TOKYO)
    tokyo.put_object(Bucket="tokyo-line-media", Key="probe/migrator.jpg", Body=body)
    try:
        assert tokyo.get_object(Bucket="tokyo-line-media", Key="probe/migrator.jpg")["Body"].read() == body
    finally:
        tokyo.delete_object(Bucket="tokyo-line-media", Key="probe/migrator.jpg")
    iam = estate.migrator.client("iam", "us-east-1")
    keys = iam.list_access_keys(UserName=estate.affiliate_user)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [estate.affiliate.access_key_id]
    # The migrator may retire keys, never mint them. (moto cannot scope IAM actions to
    # one user: it authorizes them against resource "*", so that scope is not tested.)
    with pytest.raises(ClientError) as denied:
        iam.create_access_key(UserName=estate.affiliate_user)
    assert _error_code(denied) == "AccessDenied"


def test_connection_env_builds_working_credentials(estate: Estate) -> None:
    env = estate.connection_env()
    assert set(env) == {
        "AIRFLOW_CONN_AWS_SEOUL", "AIRFLOW_CONN_AWS_TOKYO", "AIRFLOW_CONN_AWS_IAM", "AIRFLOW_CONN_AFFILIATE_PROBE"
    }
    regions = {}
    for name, value in env.items():
        conn = json.loads(value)
        assert conn["conn_type"] == "aws"
        conn_id = name.removeprefix("AIRFLOW_CONN_").lower()
        creds = aws_from_fields(conn_id, conn["login"], conn["password"], conn["extra"])
        assert creds.endpoint_url == estate.endpoint_url
        # moto stores a client's checksum without checking it: streamed copies must read back.
        assert conn["extra"]["validates_upload_checksums"] is False and not creds.validates_upload_checksums
        regions[creds.conn_id] = creds.region_name
        user = "line-affiliate-cn" if conn_id == "affiliate_probe" else "residency-migrator"
        assert creds.client("sts").get_caller_identity()["Arn"].endswith(f":user/{user}")
    assert regions == {"aws_seoul": SEOUL, "aws_tokyo": TOKYO, "aws_iam": "us-east-1", "affiliate_probe": SEOUL}
    probe = json.loads(env["AIRFLOW_CONN_AFFILIATE_PROBE"])
    assert probe["login"] == estate.affiliate.access_key_id


def test_secrets_stay_out_of_logs_and_repr(seeded: tuple[Estate, list[logging.LogRecord]]) -> None:
    estate, records = seeded
    text = "\n".join(r.getMessage() for r in records) + repr(estate)
    for secret in (estate.migrator.secret_access_key, estate.affiliate.secret_access_key):
        assert secret and secret not in text
    assert estate.affiliate.access_key_id in text  # key ids are fine, and auditors need them
    for bucket in (*estate.source_buckets, estate.destination_bucket):
        assert sum(f"s3://{bucket} " in r.getMessage() for r in records if r.levelno == logging.INFO) == 1


def test_seeding_is_deterministic(estate: Estate, tmp_path: Path) -> None:
    def fingerprint(client: Any) -> list[tuple[str, str, int]]:
        return [(b, o["Key"], o["ETag"]) for b in estate.source_buckets for o in _objects(client, b)]

    first = fingerprint(estate.migrator.client("s3", SEOUL))
    with MotoServer() as other:
        again = seed_estate(other, other.enforce_auth(), tmp_path, scale="small")
        assert fingerprint(again.migrator.client("s3", SEOUL)) == first
        assert _url_cells(again.app_db_url) == _url_cells(estate.app_db_url)
        assert (again.media_objects, again.media_bytes, again.references) == (
            estate.media_objects, estate.media_bytes, estate.references)


def test_s3_only_estate_has_one_route_and_no_gcs(estate: Estate) -> None:
    assert estate.routes == {"s3->s3": {"objects": estate.media_objects, "bytes": estate.media_bytes}}
    assert estate.gcs_endpoint is None and estate.gcs_source_buckets == () and estate.gcs_destination_bucket is None
    policy = load_policy(estate.policy_path)
    assert {policy.route(s) for s in policy.sources} == {"s3->s3"} and set(policy.destinations) == {"s3"}
    assert policy.references is not None and "videos" not in {c.table for c in policy.references.columns}


def test_unknown_scale_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale"):
        seed_estate(MotoServer(), None, tmp_path, scale="huge")  # type: ignore[arg-type]


# -- with a GCS side: all four copy routes ------------------------------------------

GCS_SOURCES = ("seoul-line-gcs-photos", "seoul-line-gcs-video")
ROUTE_OF = {
    "s3://seoul-line-photos": "s3->s3",
    "s3://seoul-line-media": "s3->gs",
    "gs://seoul-line-gcs-photos": "gs->gs",
    "gs://seoul-line-gcs-video": "gs->s3",
}


@pytest.fixture(scope="module")
def gcs_servers() -> Iterator[tuple[MotoServer, FakeGcsServer]]:
    """A moto server and a fake-gcs-server of this module's own: the estate's bucket
    names are fixed and fake-gcs-server has no reset, so the session emulators stay clean."""
    with MotoServer() as moto, FakeGcsServer() as gcs:
        yield moto, gcs


@pytest.fixture(scope="module")
def gcs_seeded(
    gcs_servers: tuple[MotoServer, FakeGcsServer], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Estate, list[logging.LogRecord]]:
    moto, gcs = gcs_servers
    admin = moto.enforce_auth()
    handler = _Records()
    logger = logging.getLogger("residency.localcloud.estate")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        estate = seed_estate(moto, admin, tmp_path_factory.mktemp("gcs-estate"), gcs=gcs, scale="small")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return estate, handler.records


@pytest.fixture(scope="module")
def gcs_estate(gcs_seeded: tuple[Estate, list[logging.LogRecord]]) -> Estate:
    return gcs_seeded[0]


@pytest.fixture(scope="module")
def gcs_client(gcs_estate: Estate) -> Any:
    assert gcs_estate.gcs_endpoint
    return gcs_from_fields("test", {"project": "residency-local", "emulator_host": gcs_estate.gcs_endpoint}).client()


def _blobs(client: Any, bucket: str, prefix: str | None = None) -> list[Any]:
    return list(client.list_blobs(bucket, prefix=prefix))


def test_gcs_buckets_exist_beside_the_s3_ones(gcs_estate: Estate, gcs_client: Any) -> None:
    assert gcs_estate.gcs_source_buckets == GCS_SOURCES
    assert gcs_estate.gcs_destination_bucket == "tokyo-line-gcs-media"
    assert {b.name for b in gcs_client.list_buckets()} == {*GCS_SOURCES, "tokyo-line-gcs-media"}
    assert [b.name for b in _blobs(gcs_client, "tokyo-line-gcs-media")] == ["ops/README.txt"]
    # The S3 side is the S3-only estate's, unchanged.
    s3 = gcs_estate.migrator.client("s3", SEOUL)
    assert gcs_estate.source_buckets == ("seoul-line-photos", "seoul-line-media")
    tokyo = gcs_estate.migrator.client("s3", TOKYO)
    assert [o["Key"] for o in _objects(tokyo, "tokyo-line-media")] == ["ops/README.txt"]
    assert s3.get_bucket_location(Bucket="seoul-line-media")["LocationConstraint"] == SEOUL


def test_gcs_s3_side_is_the_s3_only_estate(gcs_estate: Estate, estate: Estate) -> None:
    def fingerprint(e: Estate) -> list[tuple[str, str, str]]:
        s3 = e.migrator.client("s3", SEOUL)
        return [(b, o["Key"], o["ETag"]) for b in e.source_buckets for o in _objects(s3, b)]

    assert fingerprint(gcs_estate) == fingerprint(estate)
    assert _url_cells(gcs_estate.app_db_url) == _url_cells(estate.app_db_url)


def test_objects_and_bytes_per_route_match_the_listings(gcs_estate: Estate, gcs_client: Any) -> None:
    policy = load_policy(gcs_estate.policy_path)
    selection = policy.selection
    s3 = gcs_estate.migrator.client("s3", SEOUL)
    routes = {r: {"objects": 0, "bytes": 0} for r in ("s3->s3", "s3->gs", "gs->gs", "gs->s3")}
    other = 0
    sizes: dict[str, list[int]] = {}
    for source in policy.sources:
        bucket = source.ref.bucket
        if source.ref.provider == "s3":
            listed = [(o["Key"], o["Size"], s3.head_object(Bucket=bucket, Key=o["Key"])["ContentType"])
                      for o in _objects(s3, bucket)]
        else:
            listed = [(b.name, b.size, b.content_type) for b in _blobs(gcs_client, bucket)]
        sizes[bucket] = [size for _, size, _ in listed]
        for key, size, ctype in listed:
            if selection.media_type(key, ctype):
                routes[policy.route(source)]["objects"] += 1
                routes[policy.route(source)]["bytes"] += size
            else:
                other += 1
    assert routes == gcs_estate.routes
    assert gcs_estate.media_objects == sum(r["objects"] for r in routes.values())
    assert gcs_estate.media_bytes == sum(r["bytes"] for r in routes.values())
    assert gcs_estate.other_objects == other == 8
    assert all(r["objects"] > 0 for r in routes.values())
    # scale small: about ten objects per GCS bucket, < 25 MB in all, one > 16 MiB (a streamed multipart copy to S3).
    for bucket in GCS_SOURCES:
        assert 8 <= len(sizes[bucket]) <= 15, (bucket, len(sizes[bucket]))
    assert sum(sizes["seoul-line-gcs-photos"]) + sum(sizes["seoul-line-gcs-video"]) < 25_000_000
    assert max(sizes["seoul-line-gcs-video"]) > 16 * MiB
    assert max(sizes["seoul-line-gcs-photos"]) < 16 * MiB


def test_gcs_objects_look_like_real_media(gcs_estate: Estate, gcs_client: Any) -> None:
    magic = {
        ".jpg": lambda b: b[:3] == b"\xff\xd8\xff",
        ".png": lambda b: b[:8] == b"\x89PNG\r\n\x1a\n",
        ".webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
        ".gif": lambda b: b[:6] == b"GIF89a",
        ".mp4": lambda b: b[4:12] == b"ftypisom",
        ".m4a": lambda b: b[4:8] == b"ftyp",
        ".mp3": lambda b: b[:3] == b"ID3",
    }
    selection = load_policy(gcs_estate.policy_path).selection
    kinds: dict[str, set[str]] = {}
    for bucket in GCS_SOURCES:
        for blob in _blobs(gcs_client, bucket):
            media = selection.media_type(blob.name, blob.content_type)
            if not media:
                continue
            ext = "." + blob.name.rsplit(".", 1)[-1]
            head = blob.download_as_bytes(start=0, end=15)
            assert magic[ext](head), (bucket, blob.name, head)
            kinds.setdefault(bucket, set()).add(media)
            assert blob.crc32c and blob.md5_hash  # what the copy verifies against
    assert kinds == {"seoul-line-gcs-photos": {"image"}, "seoul-line-gcs-video": {"video", "audio"}}

    photos = gcs_client.bucket("seoul-line-gcs-photos")
    fireworks = photos.get_blob("albums/1003/アルバム/花火 大会.jpg")
    assert fireworks.content_type == "image/jpeg" and fireworks.metadata == {"uploader-id": "23456"}
    assert fireworks.cache_control == "private, max-age=600" and fireworks.content_language == "ja"
    assert fireworks.content_disposition.startswith("inline; filename*=UTF-8''")
    legacy = photos.get_blob("사진/2021/07/바다 풍경.webp")
    assert legacy.content_type == "application/octet-stream"
    assert selection.media_type(legacy.name, legacy.content_type) == "image"  # by extension
    fake_jpg = photos.get_blob("exports/export-2001.jpg")
    assert selection.media_type(fake_jpg.name, fake_jpg.content_type) is None  # .jpg, but application/json
    video = gcs_client.bucket("seoul-line-gcs-video")
    big = video.get_blob("video/2021/07/VID_20210701_183000.mp4")
    assert big.size > 16 * MiB and big.metadata == {"uploader-id": "12345"}
    assert big.cache_control == "public, max-age=86400"
    summer = video.get_blob("동영상/2021/08/여름 휴가 (1).mp4")
    assert summer.content_language == "ko" and summer.content_disposition.startswith("attachment;")
    for name in ("logs/2021/07/transcode.log", "manifests/2021/07/playlist.json"):
        blob = video.get_blob(name)
        assert selection.media_type(name, blob.content_type) is None


@pytest.mark.parametrize(
    ("bucket", "key"),
    [
        pytest.param("seoul-line-gcs-photos", "albums/1003/アルバム/花火 大会.jpg", id="japanese and space"),
        pytest.param("seoul-line-gcs-photos", "사진/2021/07/바다 풍경.webp", id="korean"),
        pytest.param("seoul-line-gcs-photos", "shared/a+b%20c.png", id="plus and literal percent"),
        pytest.param("seoul-line-gcs-photos", "stickers/Summer Sale 2021/sparkle (2).gif", id="spaces and parentheses"),
        pytest.param("seoul-line-gcs-photos", "p/9/9f/9f2/2021/07/01/IMG_20210701_090000.jpg", id="deep prefix"),
        pytest.param("seoul-line-gcs-video", "동영상/2021/08/여름 휴가 (1).mp4", id="korean video"),
        pytest.param("seoul-line-gcs-video", "voice/2021/08/ボイス+メモ 100%.m4a", id="japanese plus and percent"),
    ],
)
def test_gcs_awkward_keys_round_trip(gcs_client: Any, bucket: str, key: str) -> None:
    listed = [b.name for b in _blobs(gcs_client, bucket, prefix=key.split("/")[0])]
    assert key in listed
    blob = gcs_client.bucket(bucket).get_blob(key)
    assert blob is not None and blob.name == key and blob.size > 0
    assert len(blob.download_as_bytes(start=0, end=3)) == 4


def test_gcs_policy_has_four_routes_and_declared_locations(gcs_estate: Estate) -> None:
    policy = load_policy(gcs_estate.policy_path)
    assert {s.bucket_uri: policy.route(s) for s in policy.sources} == ROUTE_OF
    assert {s.bucket_uri: s.conn_id for s in policy.sources} == {
        "s3://seoul-line-photos": "aws_seoul", "s3://seoul-line-media": "aws_seoul",
        "gs://seoul-line-gcs-photos": "gcs_seoul", "gs://seoul-line-gcs-video": "gcs_seoul",
    }
    # The emulator reports one location for every bucket: the GCS ones are declared.
    assert {s.bucket_uri: s.location for s in policy.sources} == {
        "s3://seoul-line-photos": None, "s3://seoul-line-media": None,
        "gs://seoul-line-gcs-photos": "asia-northeast3", "gs://seoul-line-gcs-video": "asia-northeast3",
    }
    s3_dst, gs_dst = policy.destinations["s3"], policy.destinations["gs"]
    assert (s3_dst.ref.uri, s3_dst.conn_id, s3_dst.location) == ("s3://tokyo-line-media/", "aws_tokyo", None)
    assert (gs_dst.ref.uri, gs_dst.conn_id, gs_dst.location) == (
        "gs://tokyo-line-gcs-media/", "gcs_tokyo", "asia-northeast1")
    assert set(gcs_estate.routes) == set(ROUTE_OF.values())
    assert policy.references is not None and policy.references.database_url == gcs_estate.app_db_url
    assert [(c.table, c.column) for c in policy.references.columns][-2:] == [
        ("videos", "gcs_url"), ("videos", "poster_url")]
    (principal,) = policy.revocations
    assert principal.access_keys == (gcs_estate.affiliate.access_key_id,)


def test_gcs_connection_env_parses_and_reaches_the_emulator(gcs_estate: Estate) -> None:
    env = gcs_estate.connection_env()
    assert set(env) == {
        "AIRFLOW_CONN_AWS_SEOUL", "AIRFLOW_CONN_AWS_TOKYO", "AIRFLOW_CONN_AWS_IAM", "AIRFLOW_CONN_AFFILIATE_PROBE",
        "AIRFLOW_CONN_GCS_SEOUL", "AIRFLOW_CONN_GCS_TOKYO",
        # The affiliate's GCS paths, through the named fake of the access APIs (issue 10).
        "AIRFLOW_CONN_GCS_IAM", "AIRFLOW_CONN_AFFILIATE_HMAC", "AIRFLOW_CONN_AFFILIATE_GCS",
    }
    affiliate = {k: json.loads(env.pop(k)) for k in
                 ("AIRFLOW_CONN_GCS_IAM", "AIRFLOW_CONN_AFFILIATE_HMAC", "AIRFLOW_CONN_AFFILIATE_GCS")}
    assert affiliate["AIRFLOW_CONN_GCS_IAM"]["extra"]["emulator_host"] == gcs_estate.gcs_access_url
    assert affiliate["AIRFLOW_CONN_AFFILIATE_HMAC"]["extra"]["endpoint_url"] == gcs_estate.gcs_access_url
    assert gcs_from_fields("affiliate_gcs", affiliate["AIRFLOW_CONN_AFFILIATE_GCS"]["extra"]).api_endpoint == \
        gcs_estate.gcs_access_url
    for name, value in env.items():
        conn = json.loads(value)
        conn_id = name.removeprefix("AIRFLOW_CONN_").lower()
        if conn_id.startswith("gcs_"):
            assert conn["conn_type"] == "google_cloud_platform"
            assert conn["extra"] == {"project": "residency-local", "emulator_host": gcs_estate.gcs_endpoint}
            creds = gcs_from_fields(conn_id, conn["extra"])
            assert creds.emulator_host == gcs_estate.gcs_endpoint and creds.project == "residency-local"
            assert next(iter(creds.client().list_blobs("seoul-line-gcs-photos", max_results=1))).size > 0
        else:
            assert conn["conn_type"] == "aws"
            assert conn["extra"]["validates_upload_checksums"] is False
            creds = aws_from_fields(conn_id, conn["login"], conn["password"], conn["extra"])
            assert creds.validates_upload_checksums is False and creds.endpoint_url == gcs_estate.endpoint_url


def test_videos_table_references_every_gcs_media_object(gcs_estate: Estate, gcs_client: Any) -> None:
    with sqlite3.connect(gcs_estate.app_db_url.removeprefix("sqlite:///")) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = [row[1] for row in db.execute("PRAGMA table_info(videos)")]
    assert tables == {"users", "photos", "messages", "videos"}
    assert columns == ["id", "owner_id", "gcs_url", "poster_url"]

    video_cells = _url_cells(gcs_estate.app_db_url, VIDEO_COLUMNS)
    parsed = [p for p in map(parse_url, filter(None, video_cells)) if p]
    seoul_gs = [p for p in parsed if p.ref.provider == "gs" and p.ref.bucket in GCS_SOURCES]
    assert {p.style for p in seoul_gs} == {UrlStyle.GS_URI, UrlStyle.GS_PATH, UrlStyle.GS_VIRTUAL}
    raw = [c for c in video_cells if c]
    assert any(c.startswith("https://storage.googleapis.com/seoul-line-gcs-photos/shared/a%2Bb%2520c.png") for c in raw)
    assert any(c.startswith("https://seoul-line-gcs-photos.storage.googleapis.com/") for c in raw)
    assert None in video_cells and "https://cdn.example.jp/v/1.mp4" in video_cells

    selection = load_policy(gcs_estate.policy_path).selection
    existing = {(bucket, b.name): b.content_type for bucket in GCS_SOURCES for b in _blobs(gcs_client, bucket)}
    media = {bk for bk, ctype in existing.items() if selection.media_type(bk[1], ctype)}
    referenced = [(p.ref.bucket, p.ref.key) for p in seoul_gs]
    assert media <= set(referenced), sorted(media - set(referenced))
    non_media = [r for r in referenced if r in existing and r not in media]
    dangling = [r for r in referenced if r not in existing]
    assert len(non_media) >= 2 and len(dangling) == 1
    assert len(referenced) > len(set(referenced)), "no GCS object is referenced twice"

    # The totals add the videos table to the S3-side references of the S3-only estate.
    s3_cells = [p for p in map(parse_url, filter(None, _url_cells(gcs_estate.app_db_url))) if p] + _embedded(
        gcs_estate.app_db_url)
    s3_seoul = [p for p in s3_cells if p.ref.provider == "s3" and p.ref.bucket in gcs_estate.source_buckets]
    assert gcs_estate.references == len(s3_seoul) + len(seoul_gs)
    s3 = gcs_estate.migrator.client("s3", SEOUL)
    s3_media = {
        (bucket, o["Key"]) for bucket in gcs_estate.source_buckets for o in _objects(s3, bucket)
        if selection.media_type(o["Key"], s3.head_object(Bucket=bucket, Key=o["Key"])["ContentType"])
    }
    assert gcs_estate.media_references == (
        sum((p.ref.bucket, p.ref.key) in s3_media for p in s3_seoul) + sum(r in media for r in referenced)
    )


def test_gcs_buckets_are_logged_once_and_secrets_never(gcs_seeded: tuple[Estate, list[logging.LogRecord]]) -> None:
    estate, records = gcs_seeded
    info = [r.getMessage() for r in records if r.levelno == logging.INFO]
    for uri in ("gs://seoul-line-gcs-photos ", "gs://seoul-line-gcs-video ", "gs://tokyo-line-gcs-media "):
        assert sum(uri in m for m in info) == 1, uri
    assert any("asia-northeast3, declared" in m for m in info)
    text = "\n".join(r.getMessage() for r in records) + repr(estate)
    for secret in (estate.migrator.secret_access_key, estate.affiliate.secret_access_key):
        assert secret and secret not in text


def test_gcs_seeding_is_deterministic(gcs_estate: Estate, gcs_client: Any, tmp_path: Path) -> None:
    def fingerprint(client: Any) -> list[tuple[str, str, str | None, str | None, dict[str, str] | None]]:
        return [(bucket, b.name, b.md5_hash, b.content_type, b.metadata)
                for bucket in GCS_SOURCES for b in _blobs(client, bucket)]

    with MotoServer() as moto, FakeGcsServer() as gcs:
        again = seed_estate(moto, moto.enforce_auth(), tmp_path, gcs=gcs, scale="small")
        assert fingerprint(gcs.credentials("again").client()) == fingerprint(gcs_client)
    assert _url_cells(again.app_db_url, VIDEO_COLUMNS) == _url_cells(gcs_estate.app_db_url, VIDEO_COLUMNS)
    assert (again.routes, again.references, again.media_references) == (
        gcs_estate.routes, gcs_estate.references, gcs_estate.media_references)
