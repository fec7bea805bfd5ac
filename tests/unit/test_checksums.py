from __future__ import annotations

import base64
import hashlib

import pytest

from residency import checksums


@pytest.mark.parametrize(
    "etag, encryption, expected",
    [
        pytest.param('"5d41402abc4b2a76b9719d911017c592"', None, "5d41402abc4b2a76b9719d911017c592", id="quoted md5"),
        pytest.param("5D41402ABC4B2A76B9719D911017C592", "AES256", "5d41402abc4b2a76b9719d911017c592", id="sse-s3 ok"),
        pytest.param('"5d41402abc4b2a76b9719d911017c592"', "aws:kms", None, id="sse-kms is not md5"),
        pytest.param('"5d41402abc4b2a76b9719d911017c592"', "sse-c", None, id="sse-c is not md5"),
        pytest.param('"73d783af7856e979572f826f3564e68a-3"', None, None, id="multipart etag is never md5"),
        pytest.param("", None, None, id="empty"),
        pytest.param('"abc"', None, None, id="short"),
    ],
)
def test_md5_from_etag(etag, encryption, expected):
    assert checksums.md5_from_etag(etag, encryption) == expected


@pytest.mark.parametrize(
    "data, crc",
    [(b"", "00000000"), (b"123456789", "e3069283"), (bytes(32), "8a9136aa"), (b"\xff" * 32, "62a8ab43")],
)
def test_crc32c_known_values(data, crc):
    assert checksums.crc32c_hex(data) == crc


def test_base64_hex_round_trip_and_errors():
    digest = hashlib.md5(b"x").digest()
    b64 = base64.b64encode(digest).decode()
    assert checksums.b64_to_hex(b64) == digest.hex()
    assert checksums.hex_to_b64(digest.hex()) == b64
    assert checksums.hex_to_b64("e3069283") == "4waSgw=="
    with pytest.raises(ValueError):
        checksums.b64_to_hex("not base64!")
    with pytest.raises(ValueError):
        checksums.hex_to_b64("zz")


def test_streaming_hasher_matches_one_shot():
    chunks = [b"abc", b"", b"def" * 1000]
    digests, size = checksums.hash_stream(chunks, ["md5", "crc32c", "sha256"])
    whole = b"".join(chunks)
    assert size == len(whole)
    assert digests == {
        "md5": hashlib.md5(whole).hexdigest(),
        "sha256": hashlib.sha256(whole).hexdigest(),
        "crc32c": checksums.crc32c_hex(whole),
    }


def test_common_algorithm_prefers_strongest_and_never_size():
    assert checksums.common_algorithm({"md5": "a", "crc32c": "b"}, {"crc32c": "c", "md5": "d"}) == "crc32c"
    assert checksums.common_algorithm({"sha256": "a", "md5": "b"}, {"sha256": "c", "md5": "d"}) == "sha256"
    assert checksums.common_algorithm({"md5": "a"}, {"crc32c": "b"}) is None
    assert checksums.common_algorithm({}, {}) is None
