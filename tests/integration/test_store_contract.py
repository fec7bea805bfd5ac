"""The store contract: every store implementation runs these tests (fsspec's mix-in habit).

A provider joins by subclassing :class:`StoreContract` and providing the fixtures
``store`` (a Store), ``bucket`` (a fresh empty bucket name) and ``other_bucket``.
S3 runs over moto server, GCS over fake-gcs-server; the GCS-specific tests at the
end also use :class:`GcsJsonApiProxy`, a small fake in front of the emulator for
the parts of the JSON API the emulator does not implement (multi-round rewrites,
resumable-upload status checks), and the S3 conditional-write tests use
:class:`S3ConflictStub` in front of moto to answer S3's ``409
ConditionalRequestConflict``, which moto never sends. The listing contract
(``list_entries``) is in ``test_store_listing.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
from botocore.exceptions import ClientError
from google.api_core import exceptions as gexc
from google.auth.exceptions import RefreshError
from google.cloud import storage

from jsonapi_fake import LoopbackJsonApiFake
from residency import checksums, transfer
from residency.clients import GcsCredentials
from residency.errors import (
    BucketNotFound,
    ChecksumMismatch,
    ObjectNotFound,
    PermissionDenied,
    PreconditionFailed,
    SourceChanged,
    StoreError,
    TransientError,
)
from residency.localcloud.servers import FakeGcsServer
from residency.retry import RetryPolicy
from residency.stores import gcs as gcs_module
from residency.stores.base import ObjectInfo, Store
from residency.stores.gcs import GcsStore, GcsTransferConfig, placement_from_bucket, translate
from residency.stores.s3 import S3Store, S3TransferConfig
from residency.stores.s3 import translate as s3_translate
from residency.uris import ObjectRef

MiB = 1024 * 1024
UNICODE_KEYS = [
    "users/1001/アルバム/夏 休み.jpg",
    "사진/2021/03/가족 사진.png",
    "img/a+b%20c.webp",
    "deep/a/b/c/d/e/f/g/h/i/j/clip.mp4",
    "odd/  leading and trailing spaces  .gif",
]
#: Keys that differ only in slashes: seven distinct objects, never normalised into one.
SLASH_KEYS = ["a", "/a", "//a", "a/", "a//b", "a/b", "/"]


def _body(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


class StoreContract:
    provider: str

    def ref(self, bucket: str, key: str) -> ObjectRef:
        return ObjectRef(self.provider, bucket, key)

    def test_implements_protocol(self, store: Store) -> None:
        assert isinstance(store, Store)
        assert store.provider == self.provider

    @pytest.mark.parametrize("key", UNICODE_KEYS)
    def test_write_stat_read_round_trip_keeps_key_bytes_and_metadata(self, store: Store, bucket: str, key: str) -> None:
        body = _body(70_000, seed=len(key))
        info = store.write(
            self.ref(bucket, key), [body[:1000], body[1000:]], content_type="image/jpeg",
            metadata={"uploader-id": "42"}, headers={"cache-control": "max-age=60", "content-language": "ja"},
        )
        assert info.ref.key == key
        assert info.size == len(body)
        again = store.stat(self.ref(bucket, key))
        assert again.content_type == "image/jpeg"
        assert again.metadata["uploader-id"] == "42"
        assert again.headers["cache-control"] == "max-age=60"
        assert again.headers["content-language"] == "ja"
        assert again.checksums.get("crc32c") == checksums.crc32c_hex(body)
        assert b"".join(store.read(self.ref(bucket, key))) == body
        assert [r.key for r in store.list_objects(bucket)] == [key]

    @pytest.mark.parametrize("deleted", SLASH_KEYS)
    def test_keys_that_differ_only_in_slashes_are_different_objects(
        self, store: Store, bucket: str, deleted: str
    ) -> None:
        bodies = {key: f"body {i} of {key!r}".encode() * (i + 1) for i, key in enumerate(SLASH_KEYS)}
        for key, body in bodies.items():
            store.write(self.ref(bucket, key), [body], content_type="text/plain")
        assert [r.key for r in store.list_objects(bucket)] == sorted(SLASH_KEYS)
        assert {e.ref.key: e.size for e in store.list_entries(bucket)} == {k: len(b) for k, b in bodies.items()}
        for key, body in bodies.items():
            assert store.stat(self.ref(bucket, key)).size == len(body), key
            assert b"".join(store.read(self.ref(bucket, key))) == body, key
        store.delete(self.ref(bucket, deleted))
        left = sorted(k for k in SLASH_KEYS if k != deleted)
        assert [r.key for r in store.list_objects(bucket)] == left
        assert [e.ref.key for e in store.list_entries(bucket, with_version=True)] == left
        with pytest.raises(ObjectNotFound):
            store.stat(self.ref(bucket, deleted))
        for key in left:
            assert b"".join(store.read(self.ref(bucket, key))) == bodies[key], key

    def test_listing_pages_through_every_key_under_a_prefix(self, store: Store, bucket: str) -> None:
        keys = [f"p/{i:03d}.png" for i in range(23)] + ["q/outside.png"]
        for key in keys:
            store.write(self.ref(bucket, key), [b"x"], content_type="image/png")
        listed = [r.key for r in store.list_objects(bucket, "p/")]
        assert listed == sorted(k for k in keys if k.startswith("p/"))

    def test_large_write_is_multipart_and_reads_back_across_chunks(self, store: Store, bucket: str) -> None:
        body = _body(13 * MiB + 123, seed=7)
        info = store.write(self.ref(bucket, "big.mp4"), (body[i : i + MiB] for i in range(0, len(body), MiB)),
                           content_type="video/mp4")
        assert info.size == len(body)
        # The write's answer may carry the CRC32C (S3, GCS); moto's CompleteMultipartUpload
        # answer does not, and its HEAD does: either way it is the server's, never ours.
        assert info.checksums.get("crc32c") in (None, checksums.crc32c_hex(body))
        assert store.stat(info.ref).checksums.get("crc32c") == checksums.crc32c_hex(body)
        assert "md5" not in info.checksums  # a multipart ETag is never taken as an MD5
        assert hashlib.md5(b"".join(store.read(info.ref, chunk_size=300_000))).hexdigest() == hashlib.md5(body).hexdigest()

    def test_create_only_write_refuses_an_existing_key(self, store: Store, bucket: str) -> None:
        ref = self.ref(bucket, "a.jpg")
        store.write(ref, [b"first"], content_type="image/jpeg")
        with pytest.raises(PreconditionFailed):
            store.write(ref, [b"second"], content_type="image/jpeg", create_only=True)
        assert b"".join(store.read(ref)) == b"first"
        store.write(ref, [b"second"], content_type="image/jpeg", create_only=False)
        assert b"".join(store.read(ref)) == b"second"

    def test_missing_object_and_bucket_raise_project_errors(self, store: Store, bucket: str) -> None:
        with pytest.raises(ObjectNotFound):
            store.stat(self.ref(bucket, "nope.jpg"))
        with pytest.raises((BucketNotFound, ObjectNotFound)):
            store.stat(self.ref(bucket + "-missing", "nope.jpg"))

    def test_empty_object_round_trip(self, store: Store, bucket: str) -> None:
        store.write(self.ref(bucket, "empty.gif"), [], content_type="image/gif")
        assert store.stat(self.ref(bucket, "empty.gif")).size == 0
        assert b"".join(store.read(self.ref(bucket, "empty.gif"))) == b""

    def test_server_side_copy_preserves_content_type_headers_and_sets_metadata(
        self, store: Store, bucket: str, other_bucket: str
    ) -> None:
        if not store.capabilities.server_side_copy:
            pytest.skip("store declares no server-side copy")
        body = _body(50_000, seed=3)
        src = store.write(self.ref(bucket, "写真.jpg"), [body], content_type="image/jpeg",
                          headers={"content-disposition": 'inline; filename="a.jpg"'})
        copied = store.copy(src, self.ref(other_bucket, "copied/写真.jpg"), metadata={"residency-source-uri": "x"})
        # The copy's own answer carries the proof: the server's checksum of the new object.
        assert copied.checksums["crc32c"] == checksums.crc32c_hex(body)
        dst = store.stat(copied.ref)
        assert dst.etag == copied.etag and dst.version == copied.version
        assert dst.content_type == "image/jpeg"
        assert dst.headers["content-disposition"] == 'inline; filename="a.jpg"'
        assert dst.metadata == {"residency-source-uri": "x"}
        assert b"".join(store.read(dst.ref)) == body

    def test_copy_of_a_listed_object_keeps_the_source_metadata(self, store: Store, bucket: str,
                                                                other_bucket: str) -> None:
        """A listing is all the copy knows (one request per object): the source's content
        type, headers and user metadata still arrive, with the provenance beside them."""
        if not store.capabilities.server_side_copy:
            pytest.skip("store declares no server-side copy")
        body = _body(30_000, seed=4)
        store.write(self.ref(bucket, "listed/夏.jpg"), [body], content_type="image/jpeg", metadata={"uploader-id": "7"},
                    headers={"cache-control": "max-age=9"})
        entry = next(iter(store.list_entries(bucket, "listed/")))
        src = ObjectInfo(ref=entry.ref, size=entry.size, etag=entry.etag, version=entry.version,
                         content_type=entry.content_type, checksums=dict(entry.checksums),
                         metadata=dict(entry.metadata or {}), headers=dict(entry.headers or {}),
                         metadata_known=entry.metadata is not None)
        provenance = {"residency-migration": "m-1", "residency-source-uri": quote(entry.ref.uri, safe=":/")}
        copied = store.copy(src, self.ref(other_bucket, "listed/夏.jpg"),
                            metadata={**(entry.metadata or {}), **provenance})
        dst = store.stat(copied.ref)
        assert dst.content_type == "image/jpeg" and dst.headers["cache-control"] == "max-age=9"
        assert dst.metadata["uploader-id"] == "7"
        assert transfer.written_by_us(dst, "m-1", entry.ref.uri, store)
        assert b"".join(store.read(dst.ref)) == body

    def test_delete_is_idempotent(self, store: Store, bucket: str) -> None:
        ref = self.ref(bucket, "gone.png")
        store.write(ref, [b"x"], content_type="image/png")
        store.delete(ref)
        store.delete(ref)
        with pytest.raises(ObjectNotFound):
            store.stat(ref)


class TestS3Store(StoreContract):
    provider = "s3"

    @pytest.fixture
    def store(self, admin, moto_server) -> S3Store:
        return S3Store(
            admin.s3_client_factory(),
            transfer=S3TransferConfig(multipart_threshold=6 * MiB, part_size=5 * MiB, read_chunk=5 * MiB),
            service=moto_server.endpoint_url,
            list_page_size=7,  # several pages even for small test listings
        )

    @pytest.fixture
    def bucket(self, make_bucket) -> str:
        return make_bucket("ap-northeast-2", versioned=True)

    @pytest.fixture
    def other_bucket(self, make_bucket) -> str:
        return make_bucket("ap-northeast-1")

    def test_placement_is_discovered_from_the_bucket_region(self, store: S3Store, bucket: str, other_bucket: str) -> None:
        seoul, tokyo = store.placement(bucket), store.placement(other_bucket)
        assert (seoul.location, seoul.jurisdiction, seoul.source) == ("ap-northeast-2", "KR", "discovered")
        assert (tokyo.location, tokyo.jurisdiction) == ("ap-northeast-1", "JP")

    def test_single_part_etag_counts_as_md5_only_when_it_is_one(self, store: S3Store, bucket: str) -> None:
        body = b"hello residency"
        info = store.write(self.ref(bucket, "k.png"), [body], content_type="image/png")
        assert info.checksums["md5"] == hashlib.md5(body).hexdigest()
        assert not info.multipart

    def test_multipart_server_side_copy_above_threshold(self, store: S3Store, bucket: str, other_bucket: str) -> None:
        body = _body(12 * MiB + 5, seed=11)
        src = store.write(self.ref(bucket, "long video.mp4"), [body], content_type="video/mp4")
        copied = store.copy(src, self.ref(other_bucket, "v/long video.mp4"), metadata={})
        assert copied.multipart  # UploadPartCopy was used: the ETag has a part count
        dst = store.stat(copied.ref)
        assert dst.size == len(body) and dst.etag == copied.etag
        assert dst.checksums["crc32c"] == checksums.crc32c_hex(body)
        assert b"".join(store.read(dst.ref)) == body

    def test_copy_of_a_version_that_no_longer_exists_is_source_changed(
        self, store: S3Store, bucket: str, other_bucket: str
    ) -> None:
        src = store.write(self.ref(bucket, "v.jpg"), [b"one"], content_type="image/jpeg")
        store.delete(src.ref, version=src.version)
        with pytest.raises(SourceChanged):
            store.copy(src, self.ref(other_bucket, "v.jpg"), metadata={})

    def test_pinned_version_is_read_even_after_overwrite(self, store: S3Store, bucket: str) -> None:
        first = store.write(self.ref(bucket, "p.jpg"), [b"one"], content_type="image/jpeg")
        store.write(self.ref(bucket, "p.jpg"), [b"two"], content_type="image/jpeg", create_only=False)
        assert b"".join(store.read(first.ref, version=first.version)) == b"one"
        assert b"".join(store.read(first.ref)) == b"two"

    def test_unknown_key_is_permission_denied(self, moto_server, bucket: str) -> None:
        stranger = moto_server.credentials("x", "AKIASTRANGER00000000", "wrong", "ap-northeast-2")
        with pytest.raises(PermissionDenied):
            S3Store(stranger.s3_client_factory()).stat(self.ref(bucket, "a.jpg"))


# -- S3 conditional-write conflicts, over HTTP ------------------------------------------


#: S3's answer when a conditional write races another write of the same key.
CONFLICT_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>ConditionalRequestConflict</Code>"
    b"<Message>A conflicting operation occurred. If using PutObject you can retry the request. "
    b"If using multipart upload you should initiate another CreateMultipartUpload request and "
    b"re-upload each part.</Message><RequestId>stub</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "expect"}


def s3_operation(method: str, path: str, headers: dict[str, str]) -> str:
    """The S3 operation of a path-style request, for the few this stub needs to tell apart."""
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    copy = "x-amz-copy-source" in {k.lower() for k in headers}
    if method == "PUT" and "uploadId" in query:
        return "UploadPartCopy" if copy else "UploadPart"
    if method == "PUT":
        return "CopyObject" if copy else "PutObject"
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload"
    if method == "POST" and "uploadId" in query:
        return "CompleteMultipartUpload"
    if method == "DELETE" and "uploadId" in query:
        return "AbortMultipartUpload"
    return f"{method} {urlsplit(path).path}"


class S3ConflictStub:
    """Forwards S3 requests to moto and answers chosen ones 409 ConditionalRequestConflict itself.

    The fault proxy draws its error bodies from a fixed table (a 409 would say
    ``Conflict``), so this stub answers the exact code S3 sends. Everything else
    is forwarded verbatim, ``Host`` included (SigV4 signs it and moto checks the
    signature). ``conflicts`` maps an S3 operation to how many of its first
    requests get the 409 without reaching moto; ``operations`` records every
    request's operation in order.
    """

    def __init__(self, upstream: str, conflicts: dict[str, int]) -> None:
        self.upstream = urlsplit(upstream)
        self.conflicts = dict(conflicts)
        self.operations: list[str] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                assert "chunked" not in (self.headers.get("Transfer-Encoding") or ""), "stub reads Content-Length bodies"
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = stub.answer(self.command, self.path, list(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                if not any(name.lower() == "content-length" for name, _ in headers):
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> S3ConflictStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, list, bytes]:
        operation = s3_operation(method, path, dict(headers))
        with self._lock:
            self.operations.append(operation)
            conflict = self.conflicts.get(operation, 0) > 0
            if conflict:
                self.conflicts[operation] -= 1
        if conflict:
            return 409, [("Content-Type", "application/xml"), ("x-amz-request-id", "stub")], CONFLICT_BODY
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            conn.endheaders(body or None)
            resp = conn.getresponse()
            payload = resp.read()
            keep = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]  # a HEAD's length too
            return resp.status, keep, payload
        finally:
            conn.close()


class TestS3ConditionalConflicts:
    """409 ConditionalRequestConflict is retried (PutObject, CopyObject); 412 is not; a
    multipart complete that gets it is not repeated alone but aborted, as S3 asks."""

    @pytest.fixture
    def sleeps(self) -> list[float]:
        return []

    @pytest.fixture
    def via_stub(self, admin, moto_server, sleeps: list[float]):
        """S3Store through an S3ConflictStub with the given conflicts; yields (store, stub)."""
        stubs: list[S3ConflictStub] = []

        def make(**conflicts: int) -> tuple[S3Store, S3ConflictStub]:
            stub = S3ConflictStub(moto_server.endpoint_url, conflicts).__enter__()
            stubs.append(stub)
            store = S3Store(
                dataclasses.replace(admin, endpoint_url=stub.url).s3_client_factory(),
                transfer=S3TransferConfig(multipart_threshold=6 * MiB, part_size=5 * MiB, stream_part_size=5 * MiB),
                retry=RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.01, sleep=sleeps.append),
                service=moto_server.endpoint_url,
            )
            return store, stub

        yield make
        for stub in stubs:
            stub.__exit__()

    @pytest.fixture
    def direct(self, admin, moto_server) -> S3Store:
        return S3Store(admin.s3_client_factory(), service=moto_server.endpoint_url)

    @pytest.fixture
    def bucket(self, make_bucket) -> str:
        return make_bucket("ap-northeast-2")

    def test_conflicting_put_is_retried_once_and_succeeds(self, via_stub, direct: S3Store, bucket: str,
                                                          sleeps: list[float]) -> None:
        store, stub = via_stub(PutObject=1)
        ref = ObjectRef("s3", bucket, "race/a.jpg")
        info = store.write(ref, [b"the one that won"], content_type="image/jpeg", create_only=True)
        assert stub.operations.count("PutObject") == 2  # the 409, then the retry that moto stored
        assert len(sleeps) == 1
        assert info.size == len(b"the one that won")
        assert b"".join(direct.read(ref)) == b"the one that won"

    def test_conflicting_server_side_copy_is_retried_once(self, via_stub, direct: S3Store, bucket: str,
                                                          make_bucket, sleeps: list[float]) -> None:
        src = direct.write(ObjectRef("s3", bucket, "src.jpg"), [b"copied"], content_type="image/jpeg")
        store, stub = via_stub(CopyObject=1)
        dst = store.copy(src, ObjectRef("s3", make_bucket("ap-northeast-2"), "dst.jpg"), metadata={})
        assert stub.operations.count("CopyObject") == 2
        assert len(sleeps) == 1
        assert b"".join(direct.read(dst.ref)) == b"copied"

    def test_precondition_failed_is_not_retried(self, via_stub, direct: S3Store, bucket: str,
                                                sleeps: list[float]) -> None:
        ref = ObjectRef("s3", bucket, "taken.jpg")
        direct.write(ref, [b"first"], content_type="image/jpeg")
        store, stub = via_stub()  # the 412 is moto's own answer to If-None-Match: *
        with pytest.raises(PreconditionFailed):
            store.write(ref, [b"second"], content_type="image/jpeg", create_only=True)
        assert stub.operations.count("PutObject") == 1
        assert sleeps == []
        assert b"".join(direct.read(ref)) == b"first"

    def test_conflicting_multipart_complete_aborts_instead_of_repeating(
        self, via_stub, direct: S3Store, bucket: str, sleeps: list[float], admin
    ) -> None:
        store, stub = via_stub(CompleteMultipartUpload=1)
        ref = ObjectRef("s3", bucket, "race/big.mp4")
        with pytest.raises(TransientError, match="ConditionalRequestConflict.*must start over"):
            body = _body(7 * MiB, seed=2)
            store.write(ref, (body[i : i + MiB] for i in range(0, len(body), MiB)), content_type="video/mp4")
        uploads = [op for op in stub.operations if "Multipart" in op or op.startswith("UploadPart")]
        assert uploads == [
            "CreateMultipartUpload", "UploadPart", "UploadPart", "CompleteMultipartUpload", "AbortMultipartUpload"
        ]
        assert sleeps == []
        with pytest.raises(ObjectNotFound):
            direct.stat(ref)
        pending = admin.client("s3", "ap-northeast-2").list_multipart_uploads(Bucket=bucket)
        assert pending.get("Uploads", []) == []


def _client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(_client_error(409, "ConditionalRequestConflict"), TransientError, id="409 conflict is transient"),
        pytest.param(_client_error(412, "PreconditionFailed"), PreconditionFailed, id="412 precondition"),
        pytest.param(_client_error(409, "BucketAlreadyOwnedByYou"), StoreError, id="other 409 is permanent"),
        pytest.param(_client_error(503, "SlowDown"), TransientError, id="503 slow down"),
        pytest.param(_client_error(404, "NoSuchKey"), ObjectNotFound, id="404 key"),
        pytest.param(_client_error(404, "NoSuchBucket"), BucketNotFound, id="404 bucket"),
        pytest.param(_client_error(403, "AccessDenied"), PermissionDenied, id="403"),
    ],
)
def test_translate_s3_errors(exc: ClientError, expected: type) -> None:
    translated = s3_translate(exc, "s3://b/k")
    assert type(translated) is expected
    assert translated.uri == "s3://b/k"


# -- Google Cloud Storage over fake-gcs-server ------------------------------------------


def _gcs_store(credentials, service: str, **kwargs: Any) -> GcsStore:
    return GcsStore(
        credentials.client(),
        # Small sizes so that the multi-chunk upload and multi-range read paths run.
        transfer=GcsTransferConfig(chunk_size=256 * 1024, read_chunk=MiB),
        service=service,
        **kwargs,
    )


class TestGcsStore(StoreContract):
    provider = "gs"

    @pytest.fixture
    def store(self, gcs_admin, fake_gcs: FakeGcsServer) -> GcsStore:
        return _gcs_store(gcs_admin, fake_gcs.endpoint_url, list_page_size=7)

    @pytest.fixture
    def bucket(self, make_gcs_bucket) -> str:
        return make_gcs_bucket("asia-northeast3")

    @pytest.fixture
    def other_bucket(self, make_gcs_bucket) -> str:
        return make_gcs_bucket("asia-northeast1")

    def test_large_write_is_multipart_and_reads_back_across_chunks(self, store: GcsStore, bucket: str) -> None:
        """GCS version of the contract test: a resumable upload is one object, not a composite.

        Unlike an S3 multipart ETag, the MD5 GCS reports for a resumable upload is
        the whole object's, so it is kept; ``multipart`` means *composite* on GCS.
        """
        body = _body(13 * MiB + 123, seed=7)
        info = store.write(self.ref(bucket, "big.mp4"), (body[i : i + MiB] for i in range(0, len(body), MiB)),
                           content_type="video/mp4")
        assert info.size == len(body)
        assert info.checksums["crc32c"] == checksums.crc32c_hex(body)
        assert info.checksums["md5"] == hashlib.md5(body).hexdigest()
        assert not info.multipart
        assert hashlib.md5(b"".join(store.read(info.ref, chunk_size=300_000))).hexdigest() == hashlib.md5(body).hexdigest()

    def test_placement_reports_what_the_emulator_says(self, store: GcsStore, bucket: str, other_bucket: str) -> None:
        # fake-gcs-server reports its -location for every bucket, whatever was asked:
        # the Tokyo bucket too. Reported as discovered: the store says what the API says.
        seoul, tokyo = store.placement(bucket), store.placement(other_bucket)
        assert (seoul.location, seoul.jurisdiction, seoul.source) == ("asia-northeast3", "KR", "discovered")
        assert (tokyo.location, tokyo.jurisdiction) == ("asia-northeast3", "KR")

    def test_placement_of_a_missing_bucket_is_bucket_not_found(self, store: GcsStore, bucket: str) -> None:
        with pytest.raises(BucketNotFound):
            store.placement(bucket + "-missing")
        with pytest.raises(BucketNotFound):
            list(store.list_objects(bucket + "-missing"))

    def test_create_only_is_generation_zero(self, store: GcsStore, bucket: str) -> None:
        ref = self.ref(bucket, "a.jpg")
        first = store.write(ref, [b"first"], content_type="image/jpeg")
        with pytest.raises(PreconditionFailed):
            store.write(ref, [b"second"], content_type="image/jpeg")
        assert store.stat(ref).version == first.version
        second = store.write(ref, [b"second"], content_type="image/jpeg", create_only=False)
        assert int(second.version) > int(first.version)
        assert b"".join(store.read(ref)) == b"second"

    def test_reading_a_generation_that_was_overwritten_is_source_changed(self, store: GcsStore, bucket: str) -> None:
        ref = self.ref(bucket, "p.jpg")
        first = store.write(ref, [b"one"], content_type="image/jpeg")
        store.write(ref, [b"two"], content_type="image/jpeg", create_only=False)
        with pytest.raises(SourceChanged):  # no versioning: the overwrite deleted generation `first`
            b"".join(store.read(ref, version=first.version))
        with pytest.raises(ObjectNotFound):  # stat of a pinned generation just reports it missing
            store.stat(ref, version=first.version)
        assert b"".join(store.read(ref)) == b"two"

    def test_overwrite_during_a_read_is_source_changed_not_mixed(self, store: GcsStore, bucket: str) -> None:
        ref = self.ref(bucket, "clip.mp4")
        old = _body(3 * MiB + 5, seed=1)
        store.write(ref, [old], content_type="video/mp4")
        stream = store.read(ref)  # pinned to the generation live when the read starts
        assert next(stream) == old[:MiB]
        store.write(ref, [_body(3 * MiB + 5, seed=2)], content_type="video/mp4", create_only=False)
        with pytest.raises(SourceChanged):
            list(stream)

    def test_pinned_generation_is_read_after_overwrite_in_a_versioned_bucket(
        self, store: GcsStore, make_gcs_bucket
    ) -> None:
        ref = self.ref(make_gcs_bucket(versioned=True), "p.jpg")
        first = store.write(ref, [b"one"], content_type="image/jpeg")
        store.write(ref, [b"two"], content_type="image/jpeg", create_only=False)
        assert b"".join(store.read(ref, version=first.version)) == b"one"
        assert store.stat(ref, version=first.version).checksums["crc32c"] == checksums.crc32c_hex(b"one")
        assert b"".join(store.read(ref)) == b"two"

    def test_copy_of_an_overwritten_generation_is_source_changed(
        self, store: GcsStore, bucket: str, other_bucket: str
    ) -> None:
        src = store.write(self.ref(bucket, "v.jpg"), [b"one"], content_type="image/jpeg")
        store.write(src.ref, [b"two"], content_type="image/jpeg", create_only=False)
        with pytest.raises(SourceChanged):
            store.copy(src, self.ref(other_bucket, "v.jpg"), metadata={})
        with pytest.raises(ObjectNotFound):
            store.stat(self.ref(other_bucket, "v.jpg"))

    def test_copy_replaces_custom_metadata_even_with_an_empty_map(
        self, store: GcsStore, bucket: str, other_bucket: str
    ) -> None:
        # fake-gcs-server keeps the source's metadata when the rewrite body's map is
        # empty; the store notices and replaces it on the new generation.
        src = store.write(self.ref(bucket, "m.jpg"), [b"x" * 100], content_type="image/jpeg",
                          metadata={"uploader-id": "42"}, headers={"cache-control": "max-age=60"})
        dst = store.copy(src, self.ref(other_bucket, "m.jpg"), metadata={})
        assert dst.metadata == {}
        assert (dst.content_type, dst.headers) == ("image/jpeg", {"cache-control": "max-age=60"})
        assert dst.checksums["crc32c"] == src.checksums["crc32c"]

    def test_composed_object_has_a_crc32c_of_the_whole(self, store: GcsStore, gcs_admin, bucket: str) -> None:
        client = gcs_admin.client()
        b = client.bucket(bucket)
        b.blob("part-1").upload_from_string(b"hello ", retry=None)
        b.blob("part-2").upload_from_string(b"world", retry=None)
        whole = b.blob("whole.txt")
        whole.content_type = "text/plain"
        whole.compose([b.blob("part-1"), b.blob("part-2")], retry=None)
        info = store.stat(self.ref(bucket, "whole.txt"))
        assert info.checksums["crc32c"] == checksums.crc32c_hex(b"hello world")
        assert b"".join(store.read(info.ref)) == b"hello world"
        # fake-gcs-server sets no componentCount and computes an MD5 for composed
        # objects, unlike GCS; the real response shape is checked in
        # test_composite_object_reports_no_md5 below.

    def test_corrupted_resumable_upload_is_deleted_and_raises(
        self, store: GcsStore, bucket: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Bytes altered after we hashed them (in transit) are caught by our CRC32C."""
        original = gcs_module._ChunkReader.readinto

        def corrupting_readinto(reader, buffer):
            n = original(reader, buffer)
            if n:
                buffer[0] ^= 0xFF  # after the hasher saw it, before the wire
            return n

        monkeypatch.setattr(gcs_module._ChunkReader, "readinto", corrupting_readinto)
        ref = self.ref(bucket, "corrupt.mp4")
        with pytest.raises(ChecksumMismatch, match="crc32c"):
            store.write(ref, [_body(600_000, seed=5)], content_type="video/mp4")
        with pytest.raises(ObjectNotFound):  # never left behind
            store.stat(ref)

    def test_streamed_write_and_read_hold_a_few_chunks_not_the_object(
        self, gcs_admin, fake_gcs: FakeGcsServer, bucket: str
    ) -> None:
        import tracemalloc

        store = GcsStore(gcs_admin.client(), transfer=GcsTransferConfig(chunk_size=MiB, read_chunk=MiB),
                         service=fake_gcs.endpoint_url)
        piece = _body(64 * 1024, seed=8)
        count = 24 * 16  # 24 MiB, produced lazily
        expected = checksums.MultiHasher(("crc32c",))
        for _ in range(count):
            expected.update(piece)
        tracemalloc.start()
        try:
            info = store.write(self.ref(bucket, "long.mp4"), (piece for _ in range(count)), content_type="video/mp4")
            _, write_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            got = checksums.MultiHasher(("crc32c",))
            for chunk in store.read(info.ref, chunk_size=256 * 1024):
                got.update(chunk)
            _, read_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert info.size == 24 * MiB
        assert info.checksums["crc32c"] == expected.hexdigests()["crc32c"] == got.hexdigests()["crc32c"]
        assert write_peak < 5 * MiB, f"write held {write_peak / MiB:.1f} MiB"
        assert read_peak < 4 * MiB, f"read held {read_peak / MiB:.1f} MiB"

    @pytest.mark.parametrize("size", [pytest.param(100_000, id="single request"), pytest.param(900_000, id="resumable")])
    def test_a_failing_source_is_never_retried_into_a_truncated_object(
        self, store: GcsStore, bucket: str, size: int
    ) -> None:
        failure = TransientError("gs://src/x.mp4", "source read failed after its own retries")
        pulled: list[int] = []

        def source() -> Iterator[bytes]:
            for i in range(0, size, 50_000):
                pulled.append(i)
                yield _body(50_000, seed=i)
            raise failure

        ref = self.ref(bucket, "truncated.mp4")
        with pytest.raises(TransientError) as caught:
            store.write(ref, source(), content_type="video/mp4")
        assert caught.value is failure  # the source's own error, as it was
        assert len(pulled) == len(range(0, size, 50_000))
        with pytest.raises(ObjectNotFound):
            store.stat(ref)

    def test_chunk_size_must_be_a_multiple_of_256_kib(self) -> None:
        with pytest.raises(ValueError, match="256 KiB"):
            GcsTransferConfig(chunk_size=300 * 1024)
        with pytest.raises(ValueError, match="read_chunk"):
            GcsTransferConfig(read_chunk=0)
        assert GcsTransferConfig().chunk_size == 8 * MiB

    def test_capabilities_are_declared(self, store: GcsStore) -> None:
        caps = store.capabilities
        assert (caps.server_side_copy, caps.create_only_writes, caps.versioned_reads) == (True, True, True)
        assert caps.max_single_copy == 5 * 1024**4


# -- A small fake of what fake-gcs-server lacks, in front of it -------------------------


class GcsJsonApiProxy(LoopbackJsonApiFake):
    """Forwards to fake-gcs-server and records requests; fakes two parts of the JSON API.

    Named as a fake, per the design: fake-gcs-server finishes every rewrite in one
    call and answers resumable-upload status checks wrongly (200, off by one), so:

    - rewrite: the first ``rewrite_rounds - 1`` calls are answered "not done" with
      a rewrite token, as GCS answers large or cross-location rewrites; the last
      call is forwarded and does the copy;
    - ``fail_chunk=n``: the n-th resumable chunk PUT is answered 503 without being
      forwarded; a status check (``Content-Range: bytes */*``) is answered 308 with
      the range the emulator confirmed, as the JSON API reference specifies;
    - ``fail_range=n``: the n-th media download is answered 503 without being forwarded.

    With ``fake_status_checks=False`` status checks reach the emulator, which
    answers 200 and *finalizes the partial upload* as the object.
    """

    def __init__(
        self,
        upstream: str,
        rewrite_rounds: int = 1,
        fail_chunk: int | None = None,
        fail_range: int | None = None,
        fake_status_checks: bool = True,
    ) -> None:
        super().__init__(upstream, rewrite_urls=True)
        self.fake_status_checks = fake_status_checks
        self.rewrite_rounds = rewrite_rounds
        self.fail_chunk = fail_chunk
        self.fail_range = fail_range
        self.ranges: list[str] = []
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.rewrite_tokens: list[str | None] = []
        self.status_checks = 0
        self._chunks = 0
        self._persisted: dict[str, str] = {}
        self._lock = threading.Lock()

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        split = urlsplit(path)
        query = parse_qs(split.query)
        with self._lock:
            self.requests.append((method, split.path, query))
        content_range = {k.lower(): v for k, v in headers.items()}.get("content-range", "")
        if method == "POST" and "/rewriteTo/" in split.path:
            return self._rewrite(method, path, split, query, headers, body)
        if method == "GET" and query.get("alt") == ["media"]:
            with self._lock:
                self.ranges.append({k.lower(): v for k, v in headers.items()}.get("range", ""))
                fail = len(self.ranges) == self.fail_range
            if fail:
                return 503, [("Content-Type", "application/json")], b'{"error": {"code": 503, "message": "injected"}}'
        upload_id = query.get("upload_id", [None])[0]
        if method == "PUT" and upload_id and content_range == "bytes */*" and self.fake_status_checks:
            with self._lock:
                self.status_checks += 1
                persisted = self._persisted.get(upload_id)
            return 308, ([("Range", persisted)] if persisted else []), b""
        if method == "PUT" and upload_id and body:
            with self._lock:
                self._chunks += 1
                fail = self._chunks == self.fail_chunk
            if fail:
                return 503, [("Content-Type", "application/json")], b'{"error": {"code": 503, "message": "injected"}}'
        status, out_headers, payload = self._forward(method, path, headers, body)
        if method == "PUT" and upload_id and status == 308:
            for name, value in out_headers:
                if name.lower() == "range":
                    with self._lock:
                        self._persisted[upload_id] = value
        return status, out_headers, payload

    def _rewrite(self, method, path, split, query, headers, body) -> tuple[int, list, bytes]:
        token = query.get("rewriteToken", [None])[0]
        with self._lock:
            self.rewrite_tokens.append(token)
            done_rounds = len(self.rewrite_tokens) - 1
        if done_rounds < self.rewrite_rounds - 1:
            source = split.path.split("/rewriteTo/")[0]
            generation = query.get("sourceGeneration", [None])[0]
            status, _, meta = self._forward("GET", source + (f"?generation={generation}" if generation else ""), {}, b"")
            assert status == 200, meta
            size = int(json.loads(meta)["size"])
            reply = {
                "kind": "storage#rewriteResponse",
                "totalBytesRewritten": str(size * (done_rounds + 1) // self.rewrite_rounds),
                "objectSize": str(size),
                "done": False,
                "rewriteToken": f"token-{done_rounds + 1}",
            }
            return 200, [("Content-Type", "application/json")], json.dumps(reply).encode()
        return self._forward(method, path, headers, body)


@pytest.fixture
def no_sleep_retry() -> RetryPolicy:
    return RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.01, sleep=lambda seconds: None)


def test_rewrite_loops_on_the_token_until_done(
    fake_gcs: FakeGcsServer, gcs_admin, make_gcs_bucket, caplog: pytest.LogCaptureFixture
) -> None:
    src_bucket, dst_bucket = make_gcs_bucket(), make_gcs_bucket("asia-northeast1")
    body = _body(3 * MiB + 17, seed=9)
    direct = _gcs_store(gcs_admin, fake_gcs.endpoint_url)
    src = direct.write(ObjectRef("gs", src_bucket, "動画/long clip.mp4"), [body], content_type="video/mp4",
                       headers={"content-disposition": "inline"})
    with GcsJsonApiProxy(fake_gcs.endpoint_url, rewrite_rounds=3) as proxy:
        store = _gcs_store(GcsCredentials("via-proxy", emulator_host=proxy.url), fake_gcs.endpoint_url)
        with caplog.at_level(logging.INFO, logger="residency.stores.gcs"):
            dst = store.copy(src, ObjectRef("gs", dst_bucket, "動画/long clip.mp4"),
                             metadata={"residency-source-uri": src.ref.uri})
    assert proxy.rewrite_tokens == [None, "token-1", "token-2"]  # each round resumed with the last token
    rewrites = [q for m, p, q in proxy.requests if "/rewriteTo/" in p]
    assert all(q["sourceGeneration"] == [src.version] for q in rewrites)
    assert all(q["ifSourceGenerationMatch"] == [src.version] for q in rewrites)
    assert all(q["ifGenerationMatch"] == ["0"] for q in rewrites)  # create_only
    rounds = [r.getMessage() for r in caplog.records if "rewrite" in r.getMessage() and "round" in r.getMessage()]
    assert len(rounds) == 3 and rounds[-1].endswith("(done)")
    assert f"of {len(body)} bytes" in rounds[0]
    assert dst.checksums["crc32c"] == checksums.crc32c_hex(body)
    assert (dst.content_type, dst.headers, dst.metadata) == (
        "video/mp4", {"content-disposition": "inline"}, {"residency-source-uri": src.ref.uri}
    )
    assert b"".join(direct.read(dst.ref)) == body


def test_failed_upload_chunk_is_retried_alone_after_a_status_check(
    fake_gcs: FakeGcsServer, make_gcs_bucket, no_sleep_retry: RetryPolicy
) -> None:
    bucket = make_gcs_bucket()
    body = _body(5 * 256 * 1024 + 99, seed=4)  # six chunks of 256 KiB
    with GcsJsonApiProxy(fake_gcs.endpoint_url, fail_chunk=3) as proxy:
        store = GcsStore(
            GcsCredentials("via-proxy", emulator_host=proxy.url).client(),
            transfer=GcsTransferConfig(chunk_size=256 * 1024, read_chunk=MiB),
            retry=no_sleep_retry, service=fake_gcs.endpoint_url,
        )
        pulled: list[int] = []

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(body), 100_000):
                pulled.append(i)
                yield body[i : i + 100_000]

        info = store.write(ObjectRef("gs", bucket, "retried.mp4"), chunks(), content_type="video/mp4")
    assert proxy.status_checks == 1
    assert len(pulled) == len(range(0, len(body), 100_000))  # the iterator was consumed once
    assert info.checksums["crc32c"] == checksums.crc32c_hex(body)
    direct = _gcs_store(GcsCredentials("direct", emulator_host=fake_gcs.endpoint_url), fake_gcs.endpoint_url)
    assert b"".join(direct.read(info.ref)) == body


def test_a_partial_upload_finalized_by_a_status_check_is_deleted(
    fake_gcs: FakeGcsServer, make_gcs_bucket, no_sleep_retry: RetryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    """fake-gcs-server turns a status check into the final object: caught, removed, raised."""
    bucket = make_gcs_bucket()
    with GcsJsonApiProxy(fake_gcs.endpoint_url, fail_chunk=2, fake_status_checks=False) as proxy:
        store = GcsStore(
            GcsCredentials("via-proxy", emulator_host=proxy.url).client(),
            transfer=GcsTransferConfig(chunk_size=256 * 1024), retry=no_sleep_retry, service=fake_gcs.endpoint_url,
        )
        ref = ObjectRef("gs", bucket, "half.mp4")
        with caplog.at_level(logging.ERROR, logger="residency.stores.gcs"):
            with pytest.raises(ChecksumMismatch, match="finalized the upload at 262144 bytes"):
                store.write(ref, [_body(900_000, seed=3)], content_type="video/mp4")
    assert any("deleted generation" in r.getMessage() for r in caplog.records)
    with pytest.raises(ObjectNotFound):
        _gcs_store(GcsCredentials("direct", emulator_host=fake_gcs.endpoint_url), fake_gcs.endpoint_url).stat(ref)


def test_failed_range_is_retried_alone_and_pinned(
    fake_gcs: FakeGcsServer, gcs_admin, make_gcs_bucket, no_sleep_retry: RetryPolicy
) -> None:
    bucket = make_gcs_bucket()
    body = _body(3 * MiB + 10, seed=6)
    info = _gcs_store(gcs_admin, fake_gcs.endpoint_url).write(ObjectRef("gs", bucket, "r.mp4"), [body])
    with GcsJsonApiProxy(fake_gcs.endpoint_url, fail_range=2) as proxy:
        store = GcsStore(
            GcsCredentials("via-proxy", emulator_host=proxy.url).client(),
            transfer=GcsTransferConfig(read_chunk=MiB), retry=no_sleep_retry, service=fake_gcs.endpoint_url,
        )
        assert b"".join(store.read(info.ref)) == body
    assert proxy.ranges == [
        "bytes=0-1048575", "bytes=1048576-2097151", "bytes=1048576-2097151",  # the failed range, again
        "bytes=2097152-3145727", "bytes=3145728-3145737",
    ]
    downloads = [q for m, p, q in proxy.requests if q.get("alt") == ["media"]]
    assert all(q["generation"] == [info.version] for q in downloads)


def test_large_create_only_write_asks_for_generation_zero(fake_gcs: FakeGcsServer, make_gcs_bucket) -> None:
    # fake-gcs-server ignores ifGenerationMatch on resumable uploads, so what is
    # checked here is that the store asks for it; GCS enforces it.
    bucket = make_gcs_bucket()
    with GcsJsonApiProxy(fake_gcs.endpoint_url) as proxy:
        store = _gcs_store(GcsCredentials("via-proxy", emulator_host=proxy.url), fake_gcs.endpoint_url)
        store.write(ObjectRef("gs", bucket, "big.bin"), [_body(MiB, seed=1)], content_type="video/mp4")
        store.write(ObjectRef("gs", bucket, "big.bin"), [_body(MiB, seed=2)], content_type="video/mp4",
                    create_only=False)
    starts = [q for m, p, q in proxy.requests if m == "POST" and q.get("uploadType") == ["resumable"]]
    assert [q.get("ifGenerationMatch") for q in starts] == [["0"], None]


# -- GCS pieces that need no server ----------------------------------------------------


@pytest.mark.parametrize(
    ("location", "location_type", "data_locations", "expected"),
    [
        pytest.param("ASIA-NORTHEAST3", "region", None, ("asia-northeast3", "KR"), id="Seoul region"),
        pytest.param("ASIA-NORTHEAST1", "region", None, ("asia-northeast1", "JP"), id="Tokyo region"),
        pytest.param("ASIA1", "dual-region", None, ("asia1", "JP"), id="predefined dual-region Tokyo+Osaka"),
        pytest.param("ASIA", "multi-region", None, ("asia", None), id="multi-region spans countries"),
        pytest.param(
            "ASIA", "dual-region", ["ASIA-NORTHEAST2", "ASIA-NORTHEAST1"], ("asia-northeast1+asia-northeast2", "JP"),
            id="custom dual-region in one country",
        ),
        pytest.param(
            "ASIA", "dual-region", ["ASIA-NORTHEAST3", "ASIA-NORTHEAST1"], ("asia-northeast1+asia-northeast3", None),
            id="custom dual-region across two countries",
        ),
        pytest.param("MARS-NORTH1", "region", None, ("mars-north1", None), id="unknown location"),
    ],
)
def test_placement_from_bucket_fields(location, location_type, data_locations, expected) -> None:
    placement = placement_from_bucket(location, location_type, data_locations)
    assert (placement.location, placement.jurisdiction) == expected
    assert placement.provider == "gs"


def test_composite_object_reports_no_md5_and_counts_as_multipart() -> None:
    """The real GCS shape of a composed object (componentCount, no md5Hash)."""
    blob = storage.Blob("whole.bin", storage.Bucket(None, "b"))
    blob._set_properties({
        "name": "whole.bin", "bucket": "b", "size": "11", "generation": "1700000000000001",
        "crc32c": checksums.hex_to_b64(checksums.crc32c_hex(b"hello world")), "componentCount": 2,
        "etag": "CIGAgICAgICAAhAB", "contentType": "text/plain", "metageneration": "1",
    })
    info = GcsStore._info(ObjectRef("gs", "b", "whole.bin"), blob)
    assert info.checksums == {"crc32c": checksums.crc32c_hex(b"hello world")}
    assert info.multipart and info.version == "1700000000000001"
    blob._properties["md5Hash"] = "XrY7u+Ae7tCTyyK7j1rNww=="  # even if one appeared, it is not trusted
    assert "md5" not in GcsStore._info(ObjectRef("gs", "b", "whole.bin"), blob).checksums


@pytest.mark.parametrize(
    ("exc", "uri", "expected"),
    [
        pytest.param(gexc.NotFound("No such object: b/k"), "gs://b/k", ObjectNotFound, id="404 object"),
        pytest.param(gexc.NotFound("The specified bucket does not exist."), "gs://b/k", BucketNotFound,
                     id="404 bucket by message"),
        pytest.param(gexc.NotFound("Not Found"), "gs://b", BucketNotFound, id="404 on a bucket URI"),
        pytest.param(gexc.Forbidden("denied"), "gs://b/k", PermissionDenied, id="403"),
        pytest.param(gexc.Unauthorized("no token"), "gs://b/k", PermissionDenied, id="401"),
        pytest.param(gexc.PreconditionFailed("At least one of the pre-conditions you specified did not hold."),
                     "gs://b/k", PreconditionFailed, id="412"),
        pytest.param(gexc.TooManyRequests("slow down"), "gs://b/k", TransientError, id="429"),
        pytest.param(gexc.InternalServerError("oops"), "gs://b/k", TransientError, id="500"),
        pytest.param(gexc.BadGateway("oops"), "gs://b/k", TransientError, id="502"),
        pytest.param(gexc.ServiceUnavailable("oops"), "gs://b/k", TransientError, id="503"),
        pytest.param(gexc.GatewayTimeout("oops"), "gs://b/k", TransientError, id="504"),
        pytest.param(gexc.BadRequest("bad"), "gs://b/k", StoreError, id="400 is permanent"),
        pytest.param(gexc.MethodNotImplemented("no"), "gs://b/k", StoreError, id="501 is permanent"),
        pytest.param(requests.exceptions.ConnectionError("reset"), "gs://b/k", TransientError, id="connection reset"),
        pytest.param(requests.exceptions.ReadTimeout("slow"), "gs://b/k", TransientError, id="read timeout"),
        pytest.param(requests.exceptions.ChunkedEncodingError("cut"), "gs://b/k", TransientError, id="cut body"),
        pytest.param(RefreshError("invalid_grant: account disabled"), "gs://b/k", PermissionDenied,
                     id="revoked key cannot refresh"),
    ],
)
def test_translate_google_exceptions(exc: Exception, uri: str, expected: type) -> None:
    translated = translate(exc, uri)
    assert type(translated) is expected
    assert translated.uri == uri


def test_translate_reraises_programming_errors() -> None:
    with pytest.raises(KeyError):
        translate(KeyError("generation"), "gs://b/k")
