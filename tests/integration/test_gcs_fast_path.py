"""GCS to GCS in one request per object: listing pages carry what a copy needs, the copy's answer carries the proof.

Requests are counted where they cross the wire: a :class:`FaultProxy` (no faults)
stands between the store's client and fake-gcs-server, and a recording transport
adapter on the client's session says which requests they were. What the
emulator does not implement is shown, not assumed:

- fake-gcs-server (1.54) ignores every precondition of a rewrite
  (``ifGenerationMatch``, ``ifSourceGenerationMatch``) and overwrites, so
  :class:`GcsStore` declares ``create_only_copies`` False for an emulator. The
  store's handling of GCS's 412 answers is tested through
  :class:`GcsRewritePreconditions`, a small fake that checks those two
  preconditions as the JSON API reference specifies, in front of the emulator.
- it honours ``sourceGeneration``: a pinned generation that is gone is a 404.
- it builds a rewritten object from the source's resource and applies only the
  body's non-empty fields: an empty metadata map keeps the source's metadata,
  which costs the one declared extra request (objects.update).
- it ignores the ``fields`` mask of objects.list and answers every field.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from requests.adapters import HTTPAdapter

from jsonapi_fake import LoopbackJsonApiFake
from residency import checksums
from residency.clients import GcsCredentials
from residency.errors import ObjectNotFound, PreconditionFailed, SourceChanged
from residency.localcloud.faultproxy import FaultProxy, FaultRules
from residency.localcloud.servers import FakeGcsServer
from residency.stores.base import CONTENT_HEADERS, Listed, ObjectInfo
from residency.stores.gcs import LIST_FIELDS, GcsStore
from residency.transfer import provenance_metadata
from residency.uris import ObjectRef

#: google-cloud-storage's switch for its background bucket-metadata fetch (one
#: buckets.get per bucket and client, see test_store_listing.py): off, so that
#: counts do not race it.
BUCKET_METADATA_SWITCH = "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"
HEADERS = {
    "cache-control": "public, max-age=3600",
    "content-disposition": 'inline; filename="photo.jpg"',
    "content-encoding": "identity",
    "content-language": "ja",
}


def _body(size: int, seed: int) -> bytes:
    return (bytes(range(seed % 251, 256)) * (size // 200 + 2))[:size]


def _field(header: str) -> str:
    """The JSON API object-resource field of a content header: cache-control -> cacheControl."""
    first, *rest = header.split("-")
    return first + "".join(word.capitalize() for word in rest)


def _info(entry: Listed) -> ObjectInfo:
    """What the copy engine builds from a GCS listing entry: everything known, no HEAD."""
    assert entry.metadata is not None and entry.headers is not None
    return ObjectInfo(
        ref=entry.ref, size=entry.size, etag=entry.etag, version=entry.version,
        content_type=entry.content_type, checksums=dict(entry.checksums), metadata=dict(entry.metadata),
        headers=dict(entry.headers), last_modified=entry.last_modified, multipart=entry.multipart,
        metadata_known=True,
    )


class Recorder(HTTPAdapter):
    """Records (method, path, query, JSON body) of every request a client sends."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, dict[str, list[str]], Any]] = []

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        split = urlsplit(request.url)
        body = request.body
        try:
            body = json.loads(body) if body else None
        except (TypeError, ValueError, UnicodeDecodeError):
            body = "<bytes>"
        self.requests.append((request.method, split.path, parse_qs(split.query), body))
        return super().send(request, *args, **kwargs)


class Counted:
    """A GcsStore whose every request crosses ``proxy`` and ``recorder``."""

    def __init__(self, endpoint: FaultProxy, service: str, **kwargs: Any) -> None:
        self.proxy = endpoint
        client = GcsCredentials("via-proxy", emulator_host=endpoint.endpoint_url).client()
        self.recorder = Recorder()
        client._http.mount("http://", self.recorder)
        self.store = GcsStore(client, service=service, **kwargs)

    def reset(self) -> None:
        self.proxy.reset_stats()
        self.recorder.requests.clear()

    @property
    def count(self) -> int:
        """Requests that reached the proxy; the recorder must have seen exactly those."""
        forwarded = self.proxy.stats["requests"]
        assert forwarded == len(self.recorder.requests), (forwarded, self.recorder.requests)
        return forwarded


@pytest.fixture(autouse=True)
def _no_background_bucket_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUCKET_METADATA_SWITCH, "true")


@pytest.fixture
def direct(gcs_admin: GcsCredentials, fake_gcs: FakeGcsServer) -> GcsStore:
    """Straight to the emulator, uncounted: for setting up and checking."""
    return GcsStore(gcs_admin.client(), service=fake_gcs.endpoint_url)


@pytest.fixture
def proxy(fake_gcs: FakeGcsServer) -> Iterator[FaultProxy]:
    with FaultProxy(fake_gcs.endpoint_url, FaultRules()) as p:
        yield p


@pytest.fixture
def counted(proxy: FaultProxy, fake_gcs: FakeGcsServer) -> Counted:
    return Counted(proxy, fake_gcs.endpoint_url)


def _seed(direct: GcsStore, bucket: str, n: int) -> dict[str, tuple[bytes, str, dict[str, str], dict[str, str]]]:
    """``n`` objects with assorted content types, metadata and headers (some with none)."""
    made = {}
    for i in range(n):
        key = f"media/{i:03d} 写真.jpg" if i % 3 else f"media/{i:03d}.bin"
        body = _body(500 + 97 * i, seed=i)
        content_type = ["image/jpeg", "video/mp4", "application/octet-stream"][i % 3]
        metadata = {"uploader-id": str(1000 + i), "album": f"夏 {i}"} if i % 2 else {}
        headers = {h: v for j, (h, v) in enumerate(HEADERS.items()) if (i + j) % 4 != 0}
        direct.write(ObjectRef("gs", bucket, key), [body], content_type=content_type, metadata=metadata,
                     headers=headers)
        made[key] = (body, content_type, metadata, headers)
    return made


@pytest.mark.parametrize(("page_size", "pages"), [(1000, 1), (10, 3)])
def test_a_listing_page_is_one_request_and_carries_content_type_metadata_and_headers(
    direct: GcsStore, proxy: FaultProxy, fake_gcs: FakeGcsServer, make_gcs_bucket, page_size: int, pages: int
) -> None:
    bucket = make_gcs_bucket()
    made = _seed(direct, bucket, 25)
    counted = Counted(proxy, fake_gcs.endpoint_url, list_page_size=page_size)
    counted.reset()
    entries = list(counted.store.list_entries(bucket))
    assert counted.count == pages
    assert all(query["fields"] == [LIST_FIELDS] for _, _, query, _ in counted.recorder.requests)
    assert [e.ref.key for e in entries] == sorted(made)
    for entry in entries:
        body, content_type, metadata, headers = made[entry.ref.key]
        assert (entry.content_type, dict(entry.metadata), dict(entry.headers)) == (content_type, metadata, headers)
        assert entry.checksums == {"crc32c": checksums.crc32c_hex(body), "md5": hashlib.md5(body).hexdigest()}
        info = direct.stat(entry.ref)  # the listing says what a HEAD would
        assert (entry.content_type, dict(entry.metadata), dict(entry.headers), entry.version) == (
            info.content_type, dict(info.metadata), dict(info.headers), info.version
        )


def test_a_copy_of_a_listed_object_is_one_request_and_its_answer_is_the_proof(
    direct: GcsStore, counted: Counted, make_gcs_bucket
) -> None:
    src_bucket, dst_bucket = make_gcs_bucket(), make_gcs_bucket("asia-northeast1")
    body = _body(300_000, seed=3)
    direct.write(ObjectRef("gs", src_bucket, "users/1/アルバム/a b.jpg"), [body], content_type="image/jpeg",
                 metadata={"uploader-id": "42"}, headers=HEADERS)
    (entry,) = counted.store.list_entries(src_bucket)
    src = _info(entry)
    metadata = {**src.metadata, **provenance_metadata("m-fast", src)}
    dst_ref = ObjectRef("gs", dst_bucket, "home/users/1/アルバム/a b.jpg")

    counted.reset()
    dst = counted.store.copy(src, dst_ref, metadata=metadata)
    assert counted.count == 1
    ((method, path, query, sent),) = counted.recorder.requests
    assert method == "POST" and "/rewriteTo/" in path
    assert query["sourceGeneration"] == query["ifSourceGenerationMatch"] == [src.version]
    assert query["ifGenerationMatch"] == ["0"]
    assert "rewriteToken" not in query
    # The body is the destination resource: content type, every header, the given metadata.
    assert sent["contentType"] == "image/jpeg" and sent["metadata"] == metadata
    assert {h: sent[_field(h)] for h in HEADERS} == HEADERS

    # The proof came with the answer: the source's listed checksums, a new generation.
    assert dst.checksums == src.checksums == {"crc32c": checksums.crc32c_hex(body), "md5": hashlib.md5(body).hexdigest()}
    assert (dst.ref, dst.size, dst.content_type) == (dst_ref, len(body), "image/jpeg")
    assert dst.version and dst.version != src.version and dst.etag
    assert (dict(dst.metadata), dict(dst.headers)) == (metadata, HEADERS)
    # ... and it is what the server holds.
    again = direct.stat(dst_ref)
    assert (again.version, again.checksums, dict(again.metadata), dict(again.headers), again.content_type) == (
        dst.version, dst.checksums, dict(dst.metadata), dict(dst.headers), dst.content_type
    )
    assert b"".join(direct.read(dst_ref)) == body


def test_metadata_and_headers_arrive_identical_plus_provenance(
    direct: GcsStore, counted: Counted, make_gcs_bucket
) -> None:
    src_bucket, dst_bucket = make_gcs_bucket(), make_gcs_bucket("asia-northeast1")
    made = _seed(direct, src_bucket, 8)
    counted.reset()
    entries = list(counted.store.list_entries(src_bucket))
    for entry in entries:
        src = _info(entry)
        counted.store.copy(src, ObjectRef("gs", dst_bucket, entry.ref.key),
                           metadata={**src.metadata, **provenance_metadata("m-fast", src)})
    assert counted.count == 1 + len(entries)  # one page, one rewrite per object
    assert sum(1 for _, path, _, _ in counted.recorder.requests if "/rewriteTo/" in path) == len(entries)
    copied = {e.ref.key: e for e in direct.list_entries(dst_bucket)}
    assert sorted(copied) == sorted(made)
    for entry in entries:
        out = copied[entry.ref.key]
        _, content_type, metadata, headers = made[entry.ref.key]
        assert (out.content_type, dict(out.headers)) == (content_type, headers)
        assert {k: v for k, v in out.metadata.items() if not k.startswith("residency-")} == metadata
        assert out.metadata["residency-source-uri"] == quote(entry.ref.uri, safe=":/")
        assert out.metadata["residency-source-version"] == entry.version
        assert out.checksums == entry.checksums


def test_a_source_overwritten_after_listing_is_source_changed_in_one_request(
    direct: GcsStore, counted: Counted, make_gcs_bucket
) -> None:
    """fake-gcs-server honours ``sourceGeneration``: the listed generation is gone, a 404."""
    src_bucket, dst_bucket = make_gcs_bucket(), make_gcs_bucket("asia-northeast1")
    ref = ObjectRef("gs", src_bucket, "v.jpg")
    direct.write(ref, [b"one"], content_type="image/jpeg")
    (entry,) = counted.store.list_entries(src_bucket)
    direct.write(ref, [b"two"], content_type="image/jpeg", create_only=False)
    counted.reset()
    with pytest.raises(SourceChanged, match=f"generation {entry.version}"):
        counted.store.copy(_info(entry), ObjectRef("gs", dst_bucket, "v.jpg"), metadata={})
    assert counted.count == 1
    with pytest.raises(ObjectNotFound):
        direct.stat(ObjectRef("gs", dst_bucket, "v.jpg"))


def test_an_empty_metadata_map_costs_the_declared_extra_request_on_the_emulator(
    direct: GcsStore, counted: Counted, make_gcs_bucket
) -> None:
    """fake-gcs-server keeps the source's metadata when the body's map is empty: the
    answer shows it, and one objects.update (only then) removes it."""
    src_bucket, dst_bucket = make_gcs_bucket(), make_gcs_bucket("asia-northeast1")
    direct.write(ObjectRef("gs", src_bucket, "with.jpg"), [b"x" * 100], content_type="image/jpeg",
                 metadata={"uploader-id": "42"}, headers={"cache-control": "max-age=60"})
    direct.write(ObjectRef("gs", src_bucket, "without.jpg"), [b"y" * 100], content_type="image/jpeg")
    entries = {e.ref.key: _info(e) for e in counted.store.list_entries(src_bucket)}

    counted.reset()
    plain = counted.store.copy(entries["without.jpg"], ObjectRef("gs", dst_bucket, "without.jpg"), metadata={})
    assert counted.count == 1 and dict(plain.metadata) == {}

    counted.reset()
    dst = counted.store.copy(entries["with.jpg"], ObjectRef("gs", dst_bucket, "with.jpg"), metadata={})
    assert counted.count == 2
    assert [(m, "/rewriteTo/" in p) for m, p, _, _ in counted.recorder.requests] == [("POST", True), ("PUT", False)]
    assert dict(dst.metadata) == {} and dict(dst.headers) == {"cache-control": "max-age=60"}
    assert dst.checksums == entries["with.jpg"].checksums
    again = direct.stat(dst.ref)
    assert (dict(again.metadata), dict(again.headers), again.version) == ({}, {"cache-control": "max-age=60"}, dst.version)


# -- Preconditions: what the emulator ignores, and GCS's answers through a small fake -----------


def test_fake_gcs_server_ignores_if_generation_match_on_rewrite_so_the_emulator_declares_no_create_only_copies(
    direct: GcsStore, counted: Counted, make_gcs_bucket, fake_gcs: FakeGcsServer
) -> None:
    """If this starts failing, the emulator checks the precondition: declare it (and drop the fake below)."""
    src_bucket, dst_bucket = make_gcs_bucket(), make_gcs_bucket("asia-northeast1")
    direct.write(ObjectRef("gs", src_bucket, "a.jpg"), [b"new"], content_type="image/jpeg")
    existing = direct.write(ObjectRef("gs", dst_bucket, "a.jpg"), [b"old"], content_type="image/jpeg")
    (entry,) = counted.store.list_entries(src_bucket)
    counted.reset()
    dst = counted.store.copy(_info(entry), existing.ref, metadata={"k": "v"}, create_only=True)
    assert counted.count == 1
    assert counted.recorder.requests[0][2]["ifGenerationMatch"] == ["0"]  # asked, and ignored:
    assert dst.version != existing.version and b"".join(direct.read(existing.ref)) == b"new"
    assert counted.store.capabilities.create_only_copies is False
    assert direct.capabilities.create_only_copies is False
    assert GcsStore(None).capabilities.create_only_copies is True  # service "google"
    assert GcsStore(None, service=fake_gcs.endpoint_url, create_only_copies=True).capabilities.create_only_copies
    assert GcsStore.capabilities.create_only_copies is False  # the class default is untouched


class GcsRewritePreconditions(LoopbackJsonApiFake):
    """A fake of the two rewrite preconditions fake-gcs-server ignores, in front of it.

    Named as a fake, per the design. For ``POST .../rewriteTo/...`` it answers as
    the JSON API reference specifies: ``412 conditionNotMet`` when
    ``ifGenerationMatch`` differs from the destination's live generation (0 when
    there is none) or ``ifSourceGenerationMatch`` from the source's; otherwise,
    and for every other request, it forwards to the emulator unchanged. Its own
    look-ups go straight to the emulator, so a proxy in front counts only the
    client's requests.
    """

    PRECONDITION_FAILED = {
        "error": {
            "code": 412,
            "message": "At least one of the pre-conditions you specified did not hold.",
            "errors": [{"domain": "global", "reason": "conditionNotMet", "locationType": "header",
                        "location": "If-Match",
                        "message": "At least one of the pre-conditions you specified did not hold."}],
        }
    }

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.refused = 0

    def _live_generation(self, object_path: str) -> int:
        status, _, payload = self._forward("GET", object_path, {}, b"")
        if status == 404:
            return 0
        assert status == 200, payload
        return int(json.loads(payload)["generation"])

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        split = urlsplit(path)
        if method == "POST" and "/rewriteTo/" in split.path:
            query = parse_qs(split.query)
            source, destination = split.path.split("/rewriteTo/")
            checks = [("ifGenerationMatch", "/storage/v1/" + destination), ("ifSourceGenerationMatch", source)]
            for name, object_path in checks:
                wanted = query.get(name, [None])[0]
                if wanted is not None and int(wanted) != self._live_generation(object_path):
                    self.refused += 1
                    return 412, [("Content-Type", "application/json")], json.dumps(self.PRECONDITION_FAILED).encode()
        return self._forward(method, path, headers, body)


@pytest.fixture
def checked(fake_gcs: FakeGcsServer) -> Iterator[Counted]:
    """A store that declares create-only copies, counted by a FaultProxy in front of the fake preconditions."""
    with GcsRewritePreconditions(fake_gcs.endpoint_url) as fake, FaultProxy(fake.url, FaultRules()) as proxy:
        yield Counted(proxy, fake_gcs.endpoint_url, create_only_copies=True)


def test_create_only_onto_an_existing_destination_is_precondition_failed_and_writes_nothing(
    direct: GcsStore, checked: Counted, make_gcs_bucket
) -> None:
    src_bucket, dst_bucket = make_gcs_bucket(), make_gcs_bucket("asia-northeast1")
    direct.write(ObjectRef("gs", src_bucket, "a.jpg"), [b"new bytes"], content_type="image/jpeg",
                 metadata={"uploader-id": "1"})
    existing = direct.write(ObjectRef("gs", dst_bucket, "a.jpg"), [b"someone else's"], content_type="image/png",
                            metadata={"owner": "other"})
    (entry,) = checked.store.list_entries(src_bucket)
    assert checked.store.capabilities.create_only_copies
    checked.reset()
    with pytest.raises(PreconditionFailed):
        checked.store.copy(_info(entry), existing.ref, metadata={"residency-migration": "m"}, create_only=True)
    # The refused rewrite, then one look at the source to tell which side failed (it is live: the destination).
    assert checked.count == 2
    assert [(m, "rewrite" if "/rewriteTo/" in p else "get") for m, p, _, _ in checked.recorder.requests] == [
        ("POST", "rewrite"), ("GET", "get")
    ]
    after = direct.stat(existing.ref)
    assert (after.version, dict(after.metadata), after.content_type) == (existing.version, {"owner": "other"}, "image/png")
    assert b"".join(direct.read(existing.ref)) == b"someone else's"
    assert [e.ref.key for e in direct.list_entries(dst_bucket)] == ["a.jpg"]

    # Not create-only: the same copy replaces it, still in one request.
    checked.reset()
    dst = checked.store.copy(_info(entry), existing.ref, metadata={"residency-migration": "m"}, create_only=False)
    assert checked.count == 1 and "ifGenerationMatch" not in checked.recorder.requests[0][2]
    assert dst.checksums == entry.checksums and b"".join(direct.read(existing.ref)) == b"new bytes"


def test_a_source_overwritten_in_a_versioned_bucket_is_source_changed(
    direct: GcsStore, checked: Counted, counted: Counted, make_gcs_bucket
) -> None:
    """The listed generation still exists, so only ``ifSourceGenerationMatch`` catches the change."""
    src_bucket, dst_bucket = make_gcs_bucket(versioned=True), make_gcs_bucket("asia-northeast1")
    ref = ObjectRef("gs", src_bucket, "v.jpg")
    direct.write(ref, [b"one"], content_type="image/jpeg")
    (entry,) = checked.store.list_entries(src_bucket)
    newer = direct.write(ref, [b"two"], content_type="image/jpeg", create_only=False)
    checked.reset()
    with pytest.raises(SourceChanged, match=f"now {newer.version}, not {entry.version}"):
        checked.store.copy(_info(entry), ObjectRef("gs", dst_bucket, "v.jpg"), metadata={})
    assert checked.count == 2  # the refused rewrite, the look at the source
    with pytest.raises(ObjectNotFound):
        direct.stat(ObjectRef("gs", dst_bucket, "v.jpg"))

    # The emulator alone ignores the precondition and copies the pinned (older) generation:
    # its bytes, proven by the listed checksums; never a mix of the two.
    dst = counted.store.copy(_info(entry), ObjectRef("gs", dst_bucket, "v.jpg"), metadata={})
    assert dst.checksums == entry.checksums and b"".join(direct.read(dst.ref)) == b"one"


def test_the_listing_asks_for_content_type_metadata_and_every_content_header() -> None:
    fields = LIST_FIELDS.split("(")[1].split(")")[0].split(",")
    assert {"contentType", "metadata"} <= set(fields)
    assert all(_field(header) in fields for header in CONTENT_HEADERS)


def test_a_listing_from_start_at_skips_earlier_keys_in_the_same_request(
    direct: GcsStore, counted: Counted, make_gcs_bucket
) -> None:
    """The copy engine lists just the key range of a batch of destinations (``startOffset``)."""
    bucket = make_gcs_bucket()
    keys = ["a/1", "a/2", "a/3", "a/3/x", "a/4", "b/1"]
    for key in keys:
        direct.write(ObjectRef("gs", bucket, key), [key.encode()], content_type="text/plain")
    counted.reset()
    listed = [e.ref.key for e in counted.store.list_entries(bucket, "a/", start_at="a/3")]
    assert listed == ["a/3", "a/3/x", "a/4"]
    assert counted.count == 1 and counted.recorder.requests[0][2]["startOffset"] == ["a/3"]
