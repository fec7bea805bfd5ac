"""The listing contract: ``list_entries`` says, from listing pages alone, what ``stat`` says.

The attest phase re-proves that migrated objects are still there from listing
pages (1,000 keys per request) instead of a HEAD per object, so every store runs
these tests (S3 over moto server, GCS over fake-gcs-server). Requests are counted
at the HTTP layer: a botocore ``before-send`` hook on every S3 client, a counting
transport adapter mounted on the GCS client's session.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from datetime import datetime, timedelta
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from google.cloud import storage
from requests.adapters import HTTPAdapter

from residency import checksums
from residency.clients import AwsCredentials, GcsCredentials
from residency.errors import BucketNotFound
from residency.localcloud.faultproxy import FaultProxy, FaultRules
from residency.localcloud.servers import FakeGcsServer, MotoServer
from residency.retry import RetryPolicy
from residency.stores.base import Listed, Store
from residency.stores.gcs import GcsStore, GcsTransferConfig
from residency.stores.gcs import _listed as gcs_listed
from residency.stores.s3 import S3Store, S3TransferConfig
from residency.uris import ObjectRef

MiB = 1024 * 1024
PAGE = 2  # several pages even for a handful of keys
#: google-cloud-storage's switch for its background bucket-metadata fetch.
BUCKET_METADATA_SWITCH = "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"


def _body(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


class RequestLog:
    """(method, label) of every HTTP request a store sent; label is the S3 operation or the GCS URL path."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def clear(self) -> None:
        self.requests.clear()

    @property
    def methods(self) -> list[str]:
        return [method for method, _ in self.requests]

    @property
    def labels(self) -> list[str]:
        return [label for _, label in self.requests]


class ListingContract:
    """Run by every store. Fixtures: ``make_store(page_size)`` -> a Store whose requests
    go to ``requests``, ``bucket`` (fresh, empty), ``requests`` (a :class:`RequestLog`).

    Tests that count requests call ``store.placement(bucket)`` first (the warm-up):
    S3Store discovers and caches a bucket's region with one GetBucketLocation, once
    per bucket. (The GCS fixtures switch off the library's background bucket fetch,
    see ``test_the_library_fetches_bucket_metadata_once_in_the_background``.)
    """

    provider: str
    #: Whether the listing carries checksums that prove content (GCS yes, S3 never).
    lists_checksums: bool

    def ref(self, bucket: str, key: str) -> ObjectRef:
        return ObjectRef(self.provider, bucket, key)

    def list_request(self, bucket: str) -> tuple[str, str]:
        """What one listing request of ``bucket`` looks like in the RequestLog."""
        raise NotImplementedError

    @pytest.fixture
    def store(self, make_store: Callable[[int], Store]) -> Store:
        return make_store(PAGE)

    def _fill(self, store: Store, bucket: str, keys: list[str]) -> dict[str, bytes]:
        bodies = {key: _body(100 + 37 * i, seed=i) for i, key in enumerate(keys)}
        for key, body in bodies.items():
            store.write(self.ref(bucket, key), [body], content_type="image/png")
        return bodies

    def test_entries_say_what_stat_says(self, store: Store, bucket: str) -> None:
        bodies = self._fill(store, bucket, ["img/1.png", "img/2.png", "img/3.png", "top.png", "z/empty.png"])
        entries = list(store.list_entries(bucket, with_version=True))
        assert [e.ref.key for e in entries] == sorted(bodies)
        for entry in entries:
            assert isinstance(entry, Listed)
            info = store.stat(entry.ref)
            assert entry.ref == info.ref
            assert (entry.size, entry.etag, entry.version, entry.multipart) == (
                info.size, info.etag, info.version, info.multipart
            )
            assert entry.size == len(bodies[entry.ref.key])
            assert entry.version is not None  # S3: a versioned bucket; GCS: always the generation
            if self.lists_checksums:
                assert entry.checksums == info.checksums
                assert entry.checksums == {
                    "crc32c": checksums.crc32c_hex(bodies[entry.ref.key]),
                    "md5": hashlib.md5(bodies[entry.ref.key]).hexdigest(),
                }
            else:
                assert entry.checksums == {}
                assert info.checksums.get("md5")  # stat knows more than the listing proves

    def test_last_modified_is_an_aware_utc_timestamp(self, store: Store, bucket: str) -> None:
        self._fill(store, bucket, ["a.png"])
        (entry,) = store.list_entries(bucket)
        assert entry.last_modified is not None
        when = datetime.fromisoformat(entry.last_modified)
        assert when.utcoffset() == timedelta(0)
        stat_when = datetime.fromisoformat(store.stat(entry.ref).last_modified or "")
        # S3 lists milliseconds, HEAD says whole seconds: the same instant within a second.
        assert abs(when - stat_when) < timedelta(seconds=1)

    @pytest.mark.parametrize(
        ("prefix", "expected"),
        [
            pytest.param("", ["p", "p/1", "p/2", "p2", "q/1"], id="everything"),
            pytest.param("p/", ["p/1", "p/2"], id="a folder-like prefix"),
            pytest.param("p", ["p", "p/1", "p/2", "p2"], id="a bare prefix matches by bytes, not by folder"),
            pytest.param("p/2", ["p/2"], id="a whole key"),
            pytest.param("r", [], id="nothing under it"),
        ],
    )
    def test_prefix_filters_by_key_bytes(self, store: Store, bucket: str, prefix: str, expected: list[str]) -> None:
        self._fill(store, bucket, ["q/1", "p2", "p/2", "p", "p/1"])
        assert [e.ref.key for e in store.list_entries(bucket, prefix)] == expected
        assert [r.key for r in store.list_objects(bucket, prefix)] == expected

    def test_small_pages_give_what_one_page_gives(
        self, make_store: Callable[[int], Store], bucket: str
    ) -> None:
        self._fill(make_store(1000), bucket, [f"k/{i:02d}" for i in range(9)])
        one_page = list(make_store(1000).list_entries(bucket, with_version=True))
        assert len(one_page) == 9
        for size in (1, 2, 4, 9, 10):
            assert list(make_store(size).list_entries(bucket, with_version=True)) == one_page

    @pytest.mark.parametrize("count", [0, 1, 6, 7])
    def test_one_request_per_page_and_no_head(
        self, store: Store, bucket: str, requests: RequestLog, count: int
    ) -> None:
        self._fill(store, bucket, [f"n/{i}" for i in range(count)])
        store.placement(bucket)  # see the warm-up in ListingContract
        requests.clear()
        entries = list(store.list_entries(bucket))
        assert len(entries) == count
        pages = max(1, math.ceil(count / PAGE))
        assert requests.requests == [self.list_request(bucket)] * pages
        assert "HEAD" not in requests.methods

    def test_listing_is_lazy_page_by_page(self, store: Store, bucket: str, requests: RequestLog) -> None:
        self._fill(store, bucket, [f"n/{i}" for i in range(5)])
        store.placement(bucket)  # see the warm-up in ListingContract
        requests.clear()
        entries = store.list_entries(bucket)
        assert requests.requests == []  # a generator: nothing is asked before the first entry
        next(entries), next(entries)
        assert len(requests.requests) == 1
        next(entries)
        assert len(requests.requests) == 2

    def test_missing_bucket_is_bucket_not_found(self, store: Store, bucket: str) -> None:
        with pytest.raises(BucketNotFound):
            list(store.list_entries(bucket + "-missing"))
        with pytest.raises(BucketNotFound):
            list(store.list_entries(bucket + "-missing", with_version=True))


# -- S3 over moto server -----------------------------------------------------------------


def _counting_s3_factory(credentials: AwsCredentials, log: RequestLog) -> Callable[[str], Any]:
    """Region -> S3 client, each recording its requests (botocore's before-send event)."""

    def make(region: str) -> Any:
        client = credentials.client("s3", region)

        def record(request: Any, event_name: str, **kwargs: Any) -> None:
            log.requests.append((request.method, event_name.rsplit(".", 1)[-1]))

        client.meta.events.register("before-send.s3", record)
        return client

    return make


class TestS3Listing(ListingContract):
    provider = "s3"
    lists_checksums = False

    def list_request(self, bucket: str) -> tuple[str, str]:
        return ("GET", "ListObjectsV2")

    @pytest.fixture
    def requests(self) -> RequestLog:
        return RequestLog()

    @pytest.fixture
    def make_store(self, admin: AwsCredentials, moto_server: MotoServer, requests: RequestLog):
        def make(page_size: int) -> S3Store:
            return S3Store(
                _counting_s3_factory(admin, requests),
                transfer=S3TransferConfig(multipart_threshold=6 * MiB, part_size=5 * MiB, read_chunk=5 * MiB),
                service=moto_server.endpoint_url,
                list_page_size=page_size,
            )

        return make

    @pytest.fixture
    def bucket(self, make_bucket) -> str:
        return make_bucket("ap-northeast-2", versioned=True)

    def test_plain_listing_names_no_version(self, store: S3Store, bucket: str) -> None:
        self._fill(store, bucket, ["a", "b"])
        assert [e.version for e in store.list_entries(bucket)] == [None, None]

    def test_overwrite_lists_one_entry_with_the_new_version(
        self, store: S3Store, bucket: str, requests: RequestLog
    ) -> None:
        """Key "b" has six versions: with pages of two entries they span three pages."""
        self._fill(store, bucket, ["a", "b", "c"])
        latest = None
        for i in range(5):
            latest = store.write(self.ref(bucket, "b"), [f"version {i}".encode()], create_only=False)
        assert latest is not None
        store.placement(bucket)
        requests.clear()
        entries = list(store.list_entries(bucket, with_version=True))
        assert [e.ref.key for e in entries] == ["a", "b", "c"]
        b = entries[1]
        assert (b.version, b.size, b.etag) == (latest.version, len(b"version 4"), latest.etag)
        # 8 versions in pages of 2: every page asked once, with the version markers
        assert requests.requests == [("GET", "ListObjectVersions")] * 4

    def test_version_marker_pages_resume_inside_a_key(
        self, store: S3Store, make_store: Callable[[int], S3Store], bucket: str
    ) -> None:
        """Every page boundary of a long version history: no key lost, none repeated."""
        self._fill(store, bucket, ["a", "b", "c"])
        latest = [store.write(self.ref(bucket, "b"), [f"v{i}".encode()], create_only=False) for i in range(4)][-1]
        for size in range(1, 8):  # 7 versions in all
            entries = list(make_store(size).list_entries(bucket, with_version=True))
            assert [(e.ref.key, e.version) for e in entries][1] == ("b", latest.version), size
            assert [e.ref.key for e in entries] == ["a", "b", "c"], size

    def test_a_key_whose_latest_entry_is_a_delete_marker_is_not_listed(self, store: S3Store, bucket: str) -> None:
        self._fill(store, bucket, ["a", "b", "c", "d"])
        store.delete(self.ref(bucket, "b"))  # versioned bucket: a delete marker on top
        store.delete(self.ref(bucket, "d"))
        assert [e.ref.key for e in store.list_entries(bucket, with_version=True)] == ["a", "c"]
        assert [e.ref.key for e in store.list_entries(bucket)] == ["a", "c"]
        again = store.write(self.ref(bucket, "b"), [b"back"], create_only=False)  # a version above the marker
        entries = list(store.list_entries(bucket, with_version=True))
        assert [(e.ref.key, e.version) for e in entries][1] == ("b", again.version)

    def test_unversioned_bucket_lists_version_none_with_versions(
        self, make_store: Callable[[int], S3Store], make_bucket
    ) -> None:
        store = make_store(PAGE)
        bucket = make_bucket("ap-northeast-2")
        self._fill(store, bucket, ["a", "b", "c"])
        store.write(self.ref(bucket, "b"), [b"again"], create_only=False)
        entries = list(store.list_entries(bucket, with_version=True))
        assert [(e.ref.key, e.version) for e in entries] == [("a", None), ("b", None), ("c", None)]
        assert entries[1].size == len(b"again")
        assert entries == list(store.list_entries(bucket))  # S3 says VersionId "null": nothing more

    def test_multipart_object_is_listed_as_multipart_without_checksums(self, store: S3Store, bucket: str) -> None:
        body = _body(7 * MiB, seed=1)
        info = store.write(self.ref(bucket, "big.mp4"), [body], content_type="video/mp4")
        (entry,) = store.list_entries(bucket)
        assert info.multipart and entry.multipart
        assert entry.etag == info.etag
        assert re.fullmatch(r'"[0-9a-f]{32}-[0-9]+"', entry.etag or "")  # an ETag with a part count
        assert entry.checksums == {}

    def test_each_page_is_retried_alone(
        self, admin: AwsCredentials, moto_server: MotoServer, bucket: str, requests: RequestLog
    ) -> None:
        sleeps: list[float] = []
        with FaultProxy(moto_server.endpoint_url) as proxy:
            via = dataclasses.replace(admin, endpoint_url=proxy.endpoint_url)
            store = S3Store(
                _counting_s3_factory(via, requests), list_page_size=PAGE, service=moto_server.endpoint_url,
                retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01, sleep=sleeps.append),
            )
            self._fill(store, bucket, [f"k{i}" for i in range(5)])
            store.placement(bucket)  # see the warm-up in ListingContract
            requests.clear()
            # The first request for a second page is answered 503 SlowDown.
            proxy.set_rules(FaultRules(error_rate=1.0, error_statuses=(503,), path_pattern="continuation-token=",
                                       max_faults=1))
            keys = [e.ref.key for e in store.list_entries(bucket)]
        assert keys == [f"k{i}" for i in range(5)]
        assert proxy.stats["error_503"] == 1 and len(sleeps) == 1
        assert requests.requests == [("GET", "ListObjectsV2")] * 4  # 3 pages, the second one twice


# -- GCS over fake-gcs-server ------------------------------------------------------------


class _CountingAdapter(HTTPAdapter):
    def __init__(self, log: RequestLog, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = log

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self.log.requests.append((request.method, request.path_url.split("?", 1)[0]))
        return super().send(request, *args, **kwargs)


def _counting_gcs_store(credentials: GcsCredentials, log: RequestLog, page_size: int, **kwargs: Any) -> GcsStore:
    client = credentials.client()
    client._http.mount("http://", _CountingAdapter(log))
    return GcsStore(
        client, transfer=GcsTransferConfig(chunk_size=256 * 1024, read_chunk=MiB), list_page_size=page_size, **kwargs
    )


class TestGcsListing(ListingContract):
    provider = "gs"
    lists_checksums = True

    @pytest.fixture
    def requests(self) -> RequestLog:
        return RequestLog()

    @pytest.fixture(autouse=True)
    def _no_background_bucket_fetch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Counts must not race the library's own background request (see the test below)."""
        monkeypatch.setenv(BUCKET_METADATA_SWITCH, "true")

    @pytest.fixture
    def make_store(self, gcs_admin: GcsCredentials, fake_gcs: FakeGcsServer, requests: RequestLog):
        return lambda page_size: _counting_gcs_store(gcs_admin, requests, page_size, service=fake_gcs.endpoint_url)

    def test_the_library_fetches_bucket_metadata_once_in_the_background(
        self, make_store: Callable[[int], GcsStore], bucket: str, requests: RequestLog, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """google-cloud-storage 3.17 adds one buckets.get per bucket and client, whatever we ask.

        The first call that names a bucket queues it on a daemon thread (tracing
        attributes, fetched even with tracing off, with the library's own retry)
        unless ``DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA`` is true. It is
        once per bucket, not per page: a listing stays one request per page.
        """
        self._fill(make_store(1000), bucket, [f"k{i}" for i in range(5)])  # switched off: no fetch
        monkeypatch.delenv(BUCKET_METADATA_SWITCH)
        store = make_store(PAGE)
        requests.clear()
        assert len(list(store.list_entries(bucket))) == 5
        assert len(list(store.list_entries(bucket))) == 5
        deadline = time.monotonic() + 5
        while ("GET", f"/storage/v1/b/{bucket}") not in requests.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(requests.requests) == sorted(
            [("GET", f"/storage/v1/b/{bucket}")] + [self.list_request(bucket)] * 6
        )

    @pytest.fixture
    def bucket(self, make_gcs_bucket) -> str:
        return make_gcs_bucket("asia-northeast3")

    def list_request(self, bucket: str) -> tuple[str, str]:
        return ("GET", f"/storage/v1/b/{bucket}/o")

    def test_pages_ask_for_the_listed_fields_only(self, store: GcsStore, bucket: str, fake_gcs: FakeGcsServer) -> None:
        self._fill(store, bucket, ["a", "b", "c"])
        seen: list[str] = []

        class Recording(HTTPAdapter):
            def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
                seen.append(request.url)
                return super().send(request, *args, **kwargs)

        store.client._http.mount("http://", Recording())
        assert len(list(store.list_entries(bucket))) == 3
        assert len(seen) == 2
        for url in seen:
            query = parse_qs(urlsplit(url).query)
            assert query["fields"] == [
                "items(name,size,etag,generation,updated,crc32c,md5Hash,componentCount,"
                "contentType,metadata,cacheControl,contentDisposition,contentEncoding,contentLanguage),nextPageToken"
            ]  # what a copy needs to keep the object's metadata, at no extra request
            assert query["maxResults"] == [str(PAGE)]

    def test_versioned_bucket_lists_the_live_generation_only(
        self, make_store: Callable[[int], GcsStore], make_gcs_bucket
    ) -> None:
        store = make_store(PAGE)
        bucket = make_gcs_bucket(versioned=True)
        self._fill(store, bucket, ["a", "b", "c"])
        latest = [store.write(self.ref(bucket, "b"), [f"v{i}".encode()], create_only=False) for i in range(3)][-1]
        store.delete(self.ref(bucket, "c"))
        for with_version in (False, True):
            entries = list(store.list_entries(bucket, with_version=with_version))
            assert [e.ref.key for e in entries] == ["a", "b"]
            assert (entries[1].version, entries[1].size) == (latest.version, 2)

    def test_each_page_is_retried_alone(
        self, fake_gcs: FakeGcsServer, gcs_admin: GcsCredentials, bucket: str, requests: RequestLog
    ) -> None:
        self._fill(_counting_gcs_store(gcs_admin, RequestLog(), 1000), bucket, [f"k{i}" for i in range(5)])
        sleeps: list[float] = []
        rules = FaultRules(error_rate=1.0, error_statuses=(503,), path_pattern="pageToken=", max_faults=1)
        with FaultProxy(fake_gcs.endpoint_url, rules) as proxy:
            store = _counting_gcs_store(
                GcsCredentials("via-proxy", emulator_host=proxy.endpoint_url), requests, PAGE,
                retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01, sleep=sleeps.append),
            )
            store.placement(bucket)  # see the warm-up in ListingContract
            requests.clear()
            keys = [e.ref.key for e in store.list_entries(bucket)]
        assert keys == [f"k{i}" for i in range(5)]
        assert proxy.stats["error_503"] == 1 and len(sleeps) == 1
        assert requests.requests == [("GET", f"/storage/v1/b/{bucket}/o")] * 4  # 3 pages, the second one twice


# -- Pieces that need no server ----------------------------------------------------------


def test_a_composite_object_is_listed_without_md5_and_as_multipart() -> None:
    """The real GCS shape of a composed object in objects.list (componentCount set, no md5Hash)."""
    blob = storage.Blob("whole.bin", storage.Bucket(None, "b"))
    blob._set_properties({
        "name": "whole.bin", "size": "11", "generation": "1700000000000001", "etag": "CIGAgICAgICAAhAB",
        "crc32c": checksums.hex_to_b64(checksums.crc32c_hex(b"hello world")), "componentCount": 2,
        "md5Hash": "XrY7u+Ae7tCTyyK7j1rNww==",  # even if one appeared, it is not trusted
        "updated": "2026-01-02T03:04:05.678Z",
    })
    entry = gcs_listed("b", blob)
    assert entry.checksums == {"crc32c": checksums.crc32c_hex(b"hello world")}
    assert entry.multipart and (entry.version, entry.size) == ("1700000000000001", 11)
    assert entry.last_modified == "2026-01-02T03:04:05.678000+00:00"


@pytest.mark.parametrize("size", [0, 1001])
@pytest.mark.parametrize("make", [
    pytest.param(lambda size: S3Store(lambda region: None, list_page_size=size), id="s3"),
    pytest.param(lambda size: GcsStore(None, list_page_size=size), id="gcs"),
])
def test_page_size_outside_1_to_1000_is_refused(make: Callable[[int], Store], size: int) -> None:
    with pytest.raises(ValueError, match=f"list_page_size must be within 1-1000.*got {size}"):
        make(size)
