"""Inventory from an AWS S3 Inventory report instead of listing the bucket.

For buckets of hundreds of millions of objects a listing takes a request per
1,000 keys and hours; S3 Inventory writes the same facts (key, size, ETag,
version, last modified) as CSV, ORC or Parquet files once a day, described by a
``manifest.json`` (AWS's documented format, version ``2016-11-30``)::

    <destination-prefix>/<source-bucket>/<config-ID>/<YYYY-MM-DDTHH-MMZ>/manifest.json
    <destination-prefix>/<source-bucket>/<config-ID>/<YYYY-MM-DDTHH-MMZ>/manifest.checksum
    <destination-prefix>/<source-bucket>/<config-ID>/data/<uuid>.csv.gz | .parquet | .orc

:func:`read_manifest` reads and checks the manifest (and its ``manifest.checksum``
sibling, the MD5 of ``manifest.json``, when it exists); :func:`iter_report` yields
the report's live objects as the :class:`~residency.stores.base.Listed` entries
that :meth:`S3Store.list_entries <residency.stores.s3.S3Store.list_entries>`
yields for the same bucket.

The report is evidence, so a doubtful one is refused, never half-used:

- ``sourceBucket`` must be the bucket being inventoried, and every row's bucket too;
- every data file's MD5 and size must be what the manifest says (computed while
  the file streams);
- ORC reports and unknown manifest versions are refused (:class:`ReportError`).

Memory stays bounded whatever the report's size: data files are read one at a
time; a CSV file (gzip, no header row, columns named by ``fileSchema``) is
decompressed and parsed as its bytes arrive; a Parquet file, whose footer comes
last, is spooled to a temporary file on disk and read one batch of
:data:`PARQUET_BATCH_ROWS` rows at a time.

What a report cannot prove (say so in the evidence): it is a snapshot taken at
``creationTimestamp`` and eventually consistent, so objects written or deleted
around that time may be missing or stale; and the manifest does not record the
inventory configuration's prefix filter, so a report configured for a narrower
prefix than the one asked for silently covers less.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import json
import logging
import re
import tempfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import unquote_plus

from .errors import ChecksumMismatch, ObjectNotFound, PolicyError, StoreError
from .stores.base import Listed, Store
from .uris import ObjectRef, parse_uri

log = logging.getLogger(__name__)

#: The only ``version`` of ``manifest.json`` AWS has published.
MANIFEST_VERSION = "2016-11-30"
#: Report formats this module reads, as the manifest's ``fileFormat`` spells them.
READABLE_FORMATS = ("CSV", "Parquet")
#: Rows per Parquet batch: bounds the Python objects alive at once.
PARQUET_BATCH_ROWS = 4096
#: Bytes per read request of a report file.
READ_CHUNK = 1024 * 1024

_MANIFEST_NAME = "manifest.json"
_CHECKSUM_NAME = "manifest.checksum"
_ARN = re.compile(r"^arn:aws[a-z-]*:s3:::(?P<bucket>[^/]+)$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")

# Report column -> our field name, per format. CSV columns are the names of
# ``fileSchema``; Parquet columns are the snake_case names AWS writes.
_CSV_FIELDS = {
    "Bucket": "bucket",
    "Key": "key",
    "VersionId": "version",
    "IsLatest": "is_latest",
    "IsDeleteMarker": "is_delete_marker",
    "Size": "size",
    "LastModifiedDate": "last_modified",
    "ETag": "etag",
    "IsMultipartUploaded": "multipart",
}
_PARQUET_FIELDS = {
    "bucket": "bucket",
    "key": "key",
    "version_id": "version",
    "is_latest": "is_latest",
    "is_delete_marker": "is_delete_marker",
    "size": "size",
    "last_modified_date": "last_modified",
    "e_tag": "etag",
    "is_multipart_uploaded": "multipart",
}
_REQUIRED = ("bucket", "key", "size")


class ReportError(StoreError):
    """An S3 Inventory report that cannot serve as evidence: another bucket, an
    unsupported format, a malformed manifest, data file or row.

    ``uri`` is the manifest's or the data file's; ``field`` and ``value`` name
    what is wrong. Permanent: reading the same report again gives the same answer.
    """

    permanent = True

    def __init__(self, uri: str, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        super().__init__(uri, f"{field} = {value!r}: {reason}")


@dataclass(frozen=True)
class ReportFile:
    """One data file the manifest lists (``files[]``)."""

    ref: ObjectRef
    size: int
    md5: str
    """Lowercase hex, the manifest's ``MD5checksum``."""


@dataclass(frozen=True)
class ReportInfo:
    """A parsed, checked ``manifest.json``."""

    uri: str
    source_bucket: str
    destination_bucket: str
    """The bucket name of the manifest's ``destinationBucket`` ARN: where the data files are."""
    version: str
    created_at: str
    """``creationTimestamp`` (when S3 began scanning the bucket), ISO 8601 UTC."""
    file_format: str
    """``"CSV"`` or ``"Parquet"``."""
    file_schema: str
    files: tuple[ReportFile, ...]
    manifest_md5: str
    """MD5 (hex) of the ``manifest.json`` bytes read: identifies the report in the evidence."""
    checksum_verified: bool
    """``manifest.checksum`` existed and matched; False when there was none to check."""

    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def total_size(self) -> int:
        """Bytes of all data files, as the manifest states them."""
        return sum(f.size for f in self.files)

    @property
    def columns(self) -> tuple[str, ...]:
        """The CSV columns ``fileSchema`` names, in order (empty for Parquet)."""
        if self.file_format != "CSV":
            return ()
        return tuple(c.strip() for c in self.file_schema.split(","))

    def describe(self) -> str:
        """One line for the evidence and the task log."""
        return f"inventory from S3 Inventory report {self.uri} created at {self.created_at}"


# --- manifest ------------------------------------------------------------------------------------------------


def read_manifest(store: Store, manifest_uri: str) -> ReportInfo:
    """Read and check the report's ``manifest.json`` (and ``manifest.checksum`` when present).

    Args:
        store: an S3 store that can read the report's destination bucket.
        manifest_uri: ``s3://bucket/.../manifest.json``.

    Raises:
        PolicyError: ``manifest_uri`` is not an ``s3://`` URI of a ``manifest.json``.
        ReportError: the manifest is not JSON, misses a field, has an unknown
            ``version``, an ORC or unknown ``fileFormat``, or a malformed ``files`` entry.
        ChecksumMismatch: ``manifest.checksum`` exists and is not the MD5 of ``manifest.json``.
        StoreError: the manifest could not be read (``ObjectNotFound``, ``PermissionDenied``, ...).
    """
    ref = parse_uri(manifest_uri, field="manifest_uri")
    if ref.provider != "s3" or not ref.key.endswith(_MANIFEST_NAME):
        raise PolicyError(
            "manifest_uri", manifest_uri, f"expected s3://bucket/.../{_MANIFEST_NAME} of an S3 Inventory report"
        )
    body = b"".join(store.read(ref, chunk_size=READ_CHUNK))
    manifest_md5 = hashlib.md5(body).hexdigest()
    checksum_verified = _check_manifest_checksum(store, ref, manifest_md5)
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(ref.uri, _MANIFEST_NAME, f"{len(body)} bytes", f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ReportError(ref.uri, _MANIFEST_NAME, type(doc).__name__, "expected a JSON object")

    def text(name: str) -> str:
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            raise ReportError(ref.uri, name, value, "missing or not a non-empty string")
        return value

    version = text("version")
    if version != MANIFEST_VERSION:
        raise ReportError(
            ref.uri, "version", version, f"unknown manifest version; this reader knows {MANIFEST_VERSION!r}"
        )
    file_format = _file_format(ref.uri, text("fileFormat"))
    destination = text("destinationBucket")
    match = _ARN.match(destination)
    destination_bucket = match.group("bucket") if match else destination
    if "/" in destination_bucket or ":" in destination_bucket:
        raise ReportError(ref.uri, "destinationBucket", destination, "expected arn:aws:s3:::BUCKET")
    info = ReportInfo(
        uri=ref.uri,
        source_bucket=text("sourceBucket"),
        destination_bucket=destination_bucket,
        version=version,
        created_at=_creation_time(ref.uri, doc.get("creationTimestamp")),
        file_format=file_format,
        file_schema=text("fileSchema"),
        files=_files(ref.uri, destination_bucket, doc.get("files")),
        manifest_md5=manifest_md5,
        checksum_verified=checksum_verified,
    )
    log.info(
        "S3 Inventory report %s of s3://%s created at %s: %s, %d data files, %d bytes, manifest MD5 %s (%s)",
        info.uri, info.source_bucket, info.created_at, info.file_format, info.file_count, info.total_size,
        info.manifest_md5, "matches manifest.checksum" if checksum_verified else "no manifest.checksum to check",
    )
    return info


def _check_manifest_checksum(store: Store, ref: ObjectRef, manifest_md5: str) -> bool:
    """Whether ``manifest.checksum`` exists (and then it must match)."""
    checksum_ref = ref.with_key(ref.key[: -len(_MANIFEST_NAME)] + _CHECKSUM_NAME)
    try:
        stated = b"".join(store.read(checksum_ref, chunk_size=READ_CHUNK)).decode("ascii", errors="replace").strip()
    except ObjectNotFound:
        log.warning("%s has no %s: the manifest's own MD5 cannot be checked", ref.uri, _CHECKSUM_NAME)
        return False
    if stated.lower() != manifest_md5:
        raise ChecksumMismatch(
            ref.uri,
            f"MD5 of {_MANIFEST_NAME} is {manifest_md5}, {checksum_ref.uri} says {stated!r}; the report is refused",
        )
    return True


def _file_format(uri: str, value: str) -> str:
    for known in READABLE_FORMATS:
        if value.lower() == known.lower():
            return known
    if value.upper() == "ORC":
        raise ReportError(
            uri, "fileFormat", value, "ORC reports are not supported; configure the inventory as CSV or Parquet"
        )
    raise ReportError(uri, "fileFormat", value, f"unknown format; expected one of {READABLE_FORMATS}")


def _creation_time(uri: str, value: Any) -> str:
    """``creationTimestamp`` (milliseconds since the epoch, as a string) as ISO 8601 UTC."""
    if not (isinstance(value, (str, int)) and str(value).isdigit()):
        raise ReportError(uri, "creationTimestamp", value, "expected milliseconds since the epoch")
    return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc).isoformat()


def _files(uri: str, bucket: str, value: Any) -> tuple[ReportFile, ...]:
    if not isinstance(value, list):
        raise ReportError(uri, "files", value, "expected a list")
    files = []
    for i, item in enumerate(value):
        where = f"files[{i}]"
        if not isinstance(item, dict):
            raise ReportError(uri, where, item, "expected an object with key, size and MD5checksum")
        key, size, md5 = item.get("key"), item.get("size"), item.get("MD5checksum")
        if not isinstance(key, str) or not key:
            raise ReportError(uri, f"{where}.key", key, "missing or empty")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ReportError(uri, f"{where}.size", size, "expected a byte count")
        if not isinstance(md5, str) or not _MD5.match(md5.lower()):
            raise ReportError(uri, f"{where}.MD5checksum", md5, "expected 32 hex digits")
        files.append(ReportFile(ObjectRef("s3", bucket, key), size, md5.lower()))
    return tuple(files)


# --- rows ------------------------------------------------------------------------------------------------------


def iter_report(store: Store, manifest_uri: str, *, bucket: str, prefix: str = "") -> Iterator[Listed]:
    """The live objects of ``bucket`` under ``prefix`` that the report lists, as listing entries.

    Yields what :meth:`S3Store.list_entries <residency.stores.s3.S3Store.list_entries>`
    yields for the same bucket at the report's creation time: of a report with
    object versions, the latest version of each key (``IsLatest``) and never a
    delete marker, with ``version`` its VersionId (``"null"`` becomes None), as
    ``list_entries(..., with_version=True)``; of a current-versions report,
    ``version`` None, as ``list_entries(...)``. ``etag`` is quoted as listings
    quote it, ``last_modified`` ISO 8601 UTC, ``checksums`` empty (an ETag does
    not prove content), ``multipart`` from ``IsMultipartUploaded`` or a ``-N``
    ETag. Entries come in report order (data file by data file), not key order.

    Each data file's MD5 and size are computed while it streams. A CSV file's
    rows are yielded as they are parsed, so its mismatch is raised after its
    last row: an iteration that raised is void as a whole, and callers must not
    keep what they already received. A Parquet file is checked before any of its
    rows is yielded.

    Raises:
        PolicyError: ``manifest_uri`` is not an ``s3://`` URI of a ``manifest.json``,
            or ``bucket`` is empty.
        ReportError: as :func:`read_manifest`; ``sourceBucket`` is not ``bucket``;
            a row of another bucket; a data file that is not gzip CSV / Parquet, or
            a row that does not fit the schema (naming the file and the row).
        ChecksumMismatch: a data file (or the manifest) is not what the manifest
            (or ``manifest.checksum``) says; names the file.
        StoreError: a file could not be read.
    """
    if not bucket:
        raise PolicyError("bucket", bucket, "must name the bucket being inventoried")
    info = read_manifest(store, manifest_uri)
    if info.source_bucket != bucket:
        raise ReportError(
            info.uri, "sourceBucket", info.source_bucket,
            f"the report is of another bucket; expected {bucket!r} (the bucket being inventoried)",
        )
    read_file = _csv_entries if info.file_format == "CSV" else _parquet_entries
    yielded = skipped = 0
    for index, file in enumerate(info.files):
        file_yielded = file_skipped = 0
        convert = functools.partial(_entry, file.ref.uri, bucket=bucket, prefix=prefix)
        for entry in read_file(store, info, index, file, convert):
            if entry is None:
                file_skipped += 1
            else:
                file_yielded += 1
                yield entry
        log.info(
            "read %s (%d of %d, MD5 verified): %d entries yielded, %d rows skipped "
            "(older versions, delete markers, outside prefix %r)",
            file.ref.uri, index + 1, info.file_count, file_yielded, file_skipped, prefix,
        )
        yielded, skipped = yielded + file_yielded, skipped + file_skipped
    log.info("%s: %d entries of s3://%s/%s, %d rows skipped", info.describe(), yielded, bucket, prefix, skipped)


def _entry(uri: str, number: int, row: Mapping[str, Any], bucket: str, prefix: str) -> Listed | None:
    """One row (our field names, values as the format gives them) as a Listed; None when it is not live."""

    def where(name: str) -> str:
        return f"row {number} {name}"

    if row["bucket"] != bucket:
        raise ReportError(uri, where("bucket"), row["bucket"], f"a row of another bucket; the report is of {bucket!r}")
    key = row["key"]
    if not isinstance(key, str) or not key:
        raise ReportError(uri, where("key"), key, "missing or empty")
    if not key.startswith(prefix):
        return None
    if _flag(uri, where("is_delete_marker"), row.get("is_delete_marker"), False):
        return None
    if not _flag(uri, where("is_latest"), row.get("is_latest"), True):
        return None
    size = row["size"]
    if isinstance(size, str):
        size = int(size) if size.isdigit() else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ReportError(uri, where("size"), row["size"], "expected a byte count")
    etag = row.get("etag") or None
    if etag is not None:
        etag = f'"{etag.strip(chr(34))}"'
    version = row.get("version") or None
    multipart = _flag(uri, where("multipart"), row.get("multipart"), False)
    return Listed(
        ref=ObjectRef("s3", bucket, key),
        size=size,
        etag=etag,
        version=None if version == "null" else version,
        last_modified=_timestamp(uri, where("last_modified"), row.get("last_modified")),
        multipart=multipart or bool(etag and "-" in etag),
    )


def _flag(uri: str, where: str, value: Any, default: bool) -> bool:
    """A boolean column: Parquet gives bool, CSV ``true``/``false`` (AWS also writes ``True``)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ReportError(uri, where, value, "expected true or false")


def _timestamp(uri: str, where: str, value: Any) -> str | None:
    """``LastModifiedDate`` (CSV ``2016-11-06T21:32:00.000Z``, Parquet timestamp) as ISO 8601 UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ReportError(uri, where, value, "expected an ISO 8601 timestamp") from exc
    if not isinstance(value, datetime):
        raise ReportError(uri, where, value, "expected a timestamp")
    if value.tzinfo is None:  # Parquet TIMESTAMP_MILLIS without the UTC flag is UTC by AWS's definition
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat()


# --- data files ------------------------------------------------------------------------------------------------


class _Digest:
    """MD5 and byte count of the chunks that pass through :meth:`wrap`."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5()
        self.size = 0

    def wrap(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.md5.update(chunk)
            self.size += len(chunk)
            yield chunk

    def check(self, index: int, file: ReportFile) -> None:
        """Raise ChecksumMismatch unless the bytes read are what ``files[index]`` says."""
        got = self.md5.hexdigest()
        if got != file.md5 or self.size != file.size:
            raise ChecksumMismatch(
                file.ref.uri,
                f"read {self.size} bytes with MD5 {got}; the manifest's files[{index}] says {file.size} bytes "
                f"with MD5checksum {file.md5}; the report is refused",
            )


class _ChunkStream(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks (one chunk held at a time)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._chunk = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._chunk:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._chunk = memoryview(chunk)
        n = min(len(buffer), len(self._chunk))
        buffer[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def drain(self) -> None:
        """Consume what is left, so that a digest over the chunks covers the whole file."""
        self._chunk = memoryview(b"")
        for _ in self._chunks:
            pass


_CSV_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error)


_Convert = Callable[[int, Mapping[str, Any]], Listed | None]


def _csv_entries(
    store: Store, info: ReportInfo, index: int, file: ReportFile, convert: _Convert
) -> Iterator[Listed | None]:
    """``convert`` of each row of a gzip CSV data file, parsed as its bytes arrive; MD5 checked at its end.

    On any error of a row (or of gzip, UTF-8, CSV) the rest of the file is read and
    its MD5 checked first, so that a corrupted file is reported as such rather
    than as a bad row.
    """
    columns = info.columns
    positions = {_CSV_FIELDS[c]: i for i, c in enumerate(columns) if c in _CSV_FIELDS}
    missing = [c for c, name in _CSV_FIELDS.items() if name in _REQUIRED and name not in positions]
    if missing:
        raise ReportError(info.uri, "fileSchema", info.file_schema, f"has no {', '.join(missing)} column")
    digest = _Digest()
    stream = _ChunkStream(digest.wrap(store.read(file.ref, chunk_size=READ_CHUNK)))
    number = 0
    try:
        with io.TextIOWrapper(gzip.GzipFile(fileobj=stream, mode="rb"), encoding="utf-8", newline="") as text:
            for number, values in enumerate(csv.reader(text), start=1):
                if len(values) != len(columns):
                    raise ReportError(
                        file.ref.uri, f"row {number}", f"{len(values)} columns",
                        f"fileSchema names {len(columns)}: {info.file_schema}",
                    )
                row = {name: values[i] for name, i in positions.items()}
                try:  # CSV keys are form-encoded (space as '+'): AWS documents them URL-encoded
                    row["key"] = unquote_plus(row["key"], errors="strict")
                except UnicodeDecodeError as exc:
                    raise ReportError(file.ref.uri, f"row {number} key", values[positions["key"]],
                                      "not URL-encoded UTF-8") from exc
                yield convert(number, row)
    except (*_CSV_ERRORS, ReportError) as exc:
        stream.drain()
        digest.check(index, file)
        if isinstance(exc, ReportError):
            raise
        raise ReportError(
            file.ref.uri, f"files[{index}]", file.ref.key, f"not a gzip-compressed CSV (after row {number}): {exc}"
        ) from exc
    stream.drain()
    digest.check(index, file)


def _parquet_entries(
    store: Store, info: ReportInfo, index: int, file: ReportFile, convert: _Convert
) -> Iterator[Listed | None]:
    """``convert`` of each row of a Parquet data file, checked whole, then read batch by batch.

    Parquet's footer comes last and the store reads front to back, so the file
    is spooled to a temporary file (disk, not memory) and its MD5 checked before
    a row is read.
    """
    import pyarrow as pa  # only Parquet reports need it
    import pyarrow.parquet as pq

    with tempfile.TemporaryFile(prefix="s3inventory-") as spool:
        digest = _Digest()
        for chunk in digest.wrap(store.read(file.ref, chunk_size=READ_CHUNK)):
            spool.write(chunk)
        digest.check(index, file)
        spool.seek(0)
        try:
            parquet = pq.ParquetFile(spool)
            names = set(parquet.schema_arrow.names)
        except (pa.ArrowException, OSError) as exc:
            raise ReportError(file.ref.uri, f"files[{index}]", file.ref.key, f"not a Parquet file: {exc}") from exc
        columns = [c for c in _PARQUET_FIELDS if c in names]
        missing = [c for c, name in _PARQUET_FIELDS.items() if name in _REQUIRED and c not in names]
        if missing:
            raise ReportError(file.ref.uri, f"files[{index}] columns", sorted(names), f"no {', '.join(missing)} column")
        number = 0
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                for record in batch.to_pylist():
                    number += 1
                    yield convert(number, {_PARQUET_FIELDS[c]: v for c, v in record.items()})
        except (pa.ArrowException, OSError) as exc:
            raise ReportError(
                file.ref.uri, f"files[{index}]", file.ref.key, f"unreadable Parquet after row {number}: {exc}"
            ) from exc

