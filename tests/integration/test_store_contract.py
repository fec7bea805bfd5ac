"""The store contract: every store implementation runs these tests (fsspec's mix-in habit).

A provider joins by subclassing :class:`StoreContract` and providing the fixtures
``store`` (a Store), ``bucket`` (a fresh empty bucket name) and ``other_bucket``.
"""

from __future__ import annotations

import hashlib

import pytest

from residency import checksums
from residency.errors import (
    BucketNotFound,
    ObjectNotFound,
    PermissionDenied,
    PreconditionFailed,
    SourceChanged,
)
from residency.stores.base import Store
from residency.stores.s3 import S3Store, S3TransferConfig
from residency.uris import ObjectRef

MiB = 1024 * 1024
UNICODE_KEYS = [
    "users/1001/アルバム/夏 休み.jpg",
    "사진/2021/03/가족 사진.png",
    "img/a+b%20c.webp",
    "deep/a/b/c/d/e/f/g/h/i/j/clip.mp4",
    "odd/  leading and trailing spaces  .gif",
]


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
        assert info.checksums.get("crc32c") == checksums.crc32c_hex(body)
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
        dst = store.copy(src, self.ref(other_bucket, "copied/写真.jpg"), metadata={"residency-source-uri": "x"})
        assert dst.content_type == "image/jpeg"
        assert dst.headers["content-disposition"] == 'inline; filename="a.jpg"'
        assert dst.metadata == {"residency-source-uri": "x"}
        assert dst.checksums["crc32c"] == checksums.crc32c_hex(body)
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
        dst = store.copy(src, self.ref(other_bucket, "v/long video.mp4"), metadata={})
        assert dst.multipart  # UploadPartCopy was used: the ETag has a part count
        assert dst.size == len(body)
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
