"""Checksums: what each side really has, conversions, and streaming hashers.

Values are kept in one canonical form, lowercase hex, keyed by algorithm name
(``md5``, ``crc32c``, ``sha256``, ``crc64nvme``). S3 and GCS report base64; the
conversions live here so that no other module touches encodings.

What a value proves:
- ``md5`` from an S3 ETag only when the ETag is 32 hex characters and the object is
  not SSE-KMS / SSE-C encrypted. A multipart ETag (``<hex>-<parts>``) is an MD5 of
  part MD5s: it is never compared as a content MD5.
- S3 additional checksums count only when their type is ``FULL_OBJECT``; a
  ``COMPOSITE`` value depends on the part layout and is not comparable across copies.
- GCS ``crc32c`` always; ``md5Hash`` is absent for composite objects.
- A size match proves nothing and is never a verdict.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Iterable

import google_crc32c

ALGORITHMS = ("sha256", "crc64nvme", "crc32c", "md5")
"""Preference order when several common algorithms exist: strongest first."""

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def b64_to_hex(value: str) -> str:
    """Convert a base64 digest (as S3 and GCS report) to lowercase hex."""
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a base64 digest: {value!r}") from exc


def hex_to_b64(value: str) -> str:
    """Convert a hex digest to base64 (for request headers such as Content-MD5)."""
    try:
        return base64.b64encode(bytes.fromhex(value)).decode("ascii")
    except ValueError as exc:
        raise ValueError(f"not a hex digest: {value!r}") from exc


def md5_from_etag(etag: str | None, encryption: str | None = None) -> str | None:
    """The content MD5 an S3 ETag proves, or ``None`` when it proves none.

    Args:
        etag: the ETag as returned, with or without quotes.
        encryption: the object's ``ServerSideEncryption`` (``aws:kms`` voids the rule),
            or ``"sse-c"`` when a customer key was used.
    """
    if not etag:
        return None
    value = etag.strip().strip('"').lower()
    if encryption and encryption.lower() in ("aws:kms", "aws:kms:dsse", "sse-c"):
        return None
    return value if _HEX32.match(value) else None


def crc32c_hex(data: bytes) -> str:
    """CRC32C of ``data`` as 8 hex digits (big-endian, as S3 and GCS encode it)."""
    return f"{google_crc32c.value(data):08x}"


class MultiHasher:
    """Feed bytes once, get several digests: one streaming pass over an object."""

    def __init__(self, algorithms: Iterable[str] = ("md5", "crc32c")) -> None:
        self.algorithms = tuple(algorithms)
        unknown = set(self.algorithms) - {"md5", "crc32c", "sha256"}
        if unknown:
            raise ValueError(f"cannot compute {sorted(unknown)} while streaming")
        self._md5 = hashlib.md5() if "md5" in self.algorithms else None
        self._sha256 = hashlib.sha256() if "sha256" in self.algorithms else None
        self._crc = google_crc32c.Checksum() if "crc32c" in self.algorithms else None
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._md5 is not None:
            self._md5.update(chunk)
        if self._sha256 is not None:
            self._sha256.update(chunk)
        if self._crc is not None:
            self._crc.update(chunk)

    def hexdigests(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self._md5 is not None:
            out["md5"] = self._md5.hexdigest()
        if self._sha256 is not None:
            out["sha256"] = self._sha256.hexdigest()
        if self._crc is not None:
            out["crc32c"] = self._crc.digest().hex()
        return out


def hash_stream(chunks: Iterable[bytes], algorithms: Iterable[str]) -> tuple[dict[str, str], int]:
    """Hash an iterable of byte chunks; return (hex digests, byte count)."""
    hasher = MultiHasher(algorithms)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigests(), hasher.size


def common_algorithm(a: dict[str, str], b: dict[str, str]) -> str | None:
    """The strongest algorithm both sides report, or ``None``."""
    for algorithm in ALGORITHMS:
        if a.get(algorithm) and b.get(algorithm):
            return algorithm
    return None
