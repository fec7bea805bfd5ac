"""What a server-side copy's response proves (pure logic; the servers are in the integration tests)."""

from __future__ import annotations

from residency.stores.base import ObjectInfo
from residency.transfer import COPY_RESPONSE, response_proof
from residency.uris import ObjectRef

SRC = ObjectRef("s3", "seoul", "a.jpg")
DST = ObjectRef("s3", "tokyo", "seoul/a.jpg")
MD5 = "5d41402abc4b2a76b9719d911017c592"


def src(etag: str = f'"{MD5}"', **kw) -> ObjectInfo:
    return ObjectInfo(ref=SRC, size=5, etag=etag, version="v1", metadata_known=False, **kw)


def copied(**sums: str) -> ObjectInfo:
    return ObjectInfo(ref=DST, size=5, etag=f'"{sums.get("md5", "0" * 32)}"', version="d1", checksums=sums)


def test_the_new_objects_md5_equal_to_the_listed_etag_is_the_proof():
    proof = response_proof(src(), copied(md5=MD5, crc32c="9a71bb4c"))
    assert proof is not None and proof["verify_algorithm"] == "md5" and proof["verify_method"] == COPY_RESPONSE
    assert (proof["dst_etag"], proof["dst_version"]) == (f'"{MD5}"', "d1")
    assert "inventoried ETag" in proof["proof"] and MD5 in proof["proof"]


def test_no_equal_checksum_is_no_proof():
    assert response_proof(src(), copied(md5="f" * 32)) is None  # another version was copied
    assert response_proof(src(), copied(crc32c="9a71bb4c")) is None  # SSE-KMS destination: no MD5 reported
    # A multipart source's ETag is no MD5, even when it happens to look like hex digits.
    assert response_proof(src(etag=f'"{MD5}-2"', multipart=True), copied(md5=MD5)) is None


def test_a_listed_checksum_proves_where_the_listing_reports_one():
    listed = ObjectInfo(ref=SRC, size=5, version="7", checksums={"crc32c": "9a71bb4c"})
    assert response_proof(listed, copied(crc32c="9a71bb4c"))["verify_algorithm"] == "crc32c"
    assert response_proof(listed, copied(crc32c="00000000")) is None
