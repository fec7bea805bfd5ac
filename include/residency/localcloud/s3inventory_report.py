"""S3 Inventory reports written the way AWS writes them, for moto (which has none).

moto stores inventory configurations but never delivers a report, so the tests and
the demo write one themselves: :func:`write_report` lists a bucket and writes,
into the destination bucket, AWS's documented layout (S3 User Guide, "Locating
your inventory list")::

    <prefix>/<source-bucket>/<config-ID>/<YYYY-MM-DDTHH-MMZ>/manifest.json
    <prefix>/<source-bucket>/<config-ID>/<YYYY-MM-DDTHH-MMZ>/manifest.checksum
    <prefix>/<source-bucket>/<config-ID>/hive/dt=<YYYY-MM-DD-HH-MM>/symlink.txt
    <prefix>/<source-bucket>/<config-ID>/data/<uuid>.csv.gz | .parquet

- ``manifest.json``: ``sourceBucket``, ``destinationBucket`` (an ARN),
  ``version`` ``2016-11-30``, ``creationTimestamp`` (milliseconds since the
  epoch, as a string), ``fileFormat``, ``fileSchema``, ``files`` (``key``,
  ``size``, ``MD5checksum``); ``manifest.checksum`` is its MD5 in hex.
- CSV: gzip, no header row, every field quoted, columns as ``fileSchema`` names
  them; keys form-encoded as AWS does (space as ``+``, everything but
  ``A-Z a-z 0-9 * - . _ ~`` percent-encoded as UTF-8); ETags unquoted;
  ``LastModifiedDate`` like ``2016-11-06T21:32:00.000Z``; booleans ``true``/``false``.
- Parquet: Snappy, snake_case columns (``bucket``, ``key``, ``version_id``,
  ``is_latest``, ``is_delete_marker``, ``size``, ``last_modified_date`` as a UTC
  millisecond timestamp, ``e_tag``, ``storage_class``, ``is_multipart_uploaded``),
  keys not encoded.

With ``include_versions`` the report has every version and delete marker
(``VersionId``, ``IsLatest``, ``IsDeleteMarker``), as an inventory configured
with ``IncludedObjectVersions=All``; without, the current versions only.
Test and demo machinery: each data file is built in memory (``rows_per_file``
bounds it), which a reader of reports must never do.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from typing import Any, Iterable, Iterator
from urllib.parse import quote_plus

log = logging.getLogger(__name__)

MANIFEST_VERSION = "2016-11-30"
DEFAULT_CONFIG_ID = "residency-inventory"
#: Optional fields every report written here carries, in AWS's column order.
OPTIONAL_FIELDS = ("Size", "LastModifiedDate", "ETag", "StorageClass", "IsMultipartUploaded")
_VERSION_FIELDS = ("VersionId", "IsLatest", "IsDeleteMarker")
_PARQUET_NAMES = {
    "Bucket": "bucket",
    "Key": "key",
    "VersionId": "version_id",
    "IsLatest": "is_latest",
    "IsDeleteMarker": "is_delete_marker",
    "Size": "size",
    "LastModifiedDate": "last_modified_date",
    "ETag": "e_tag",
    "StorageClass": "storage_class",
    "IsMultipartUploaded": "is_multipart_uploaded",
}
_PARQUET_TYPES = {  # fileSchema spelling, as in AWS's documented Parquet manifest
    "Bucket": "required binary bucket (UTF8)",
    "Key": "required binary key (UTF8)",
    "VersionId": "optional binary version_id (UTF8)",
    "IsLatest": "optional boolean is_latest",
    "IsDeleteMarker": "optional boolean is_delete_marker",
    "Size": "optional int64 size",
    "LastModifiedDate": "optional int64 last_modified_date (TIMESTAMP_MILLIS)",
    "ETag": "optional binary e_tag (UTF8)",
    "StorageClass": "optional binary storage_class (UTF8)",
    "IsMultipartUploaded": "optional boolean is_multipart_uploaded",
}
_ROW_GROUP_ROWS = 4096


@dataclass(frozen=True)
class InventoryRow:
    """One object version (or delete marker) as a report lists it."""

    key: str
    size: int | None = None
    last_modified: datetime | None = None
    etag: str | None = None
    """As S3 lists it (quotes or not); written unquoted."""
    storage_class: str | None = "STANDARD"
    version_id: str | None = None
    """``None`` (or ``"null"``) for an object of an unversioned bucket."""
    is_latest: bool = True
    is_delete_marker: bool = False

    @property
    def multipart(self) -> bool:
        return bool(self.etag and "-" in self.etag)


def write_report(
    client: Any,
    *,
    source_bucket: str,
    destination_bucket: str,
    prefix_in_destination: str = "",
    file_format: str = "CSV",
    rows_per_file: int = 100_000,
    include_versions: bool = False,
    config_id: str = DEFAULT_CONFIG_ID,
    created_at: datetime | None = None,
) -> str:
    """List ``source_bucket`` and write its inventory report into ``destination_bucket``.

    Args:
        client: a boto3 S3 client of the buckets' region (AWS requires the
            destination in the source's region). A client, not a store: the
            report lists every version and delete marker, which stores do not.
        source_bucket: the bucket to list.
        destination_bucket: where the report goes (may be the source bucket).
        prefix_in_destination: the configuration's destination prefix, without
            a trailing ``/``.
        file_format: ``"CSV"`` or ``"Parquet"``.
        rows_per_file: rows per data file.
        include_versions: every version and delete marker, not only current versions.
        config_id: the inventory configuration's id.
        created_at: when the "scan" began (default now), to the minute.

    Returns:
        ``s3://destination_bucket/.../manifest.json``.
    """
    rows = _bucket_rows(client, source_bucket, include_versions)
    return write_report_rows(
        client, rows,
        source_bucket=source_bucket, destination_bucket=destination_bucket,
        prefix_in_destination=prefix_in_destination, file_format=file_format,
        rows_per_file=rows_per_file, include_versions=include_versions,
        config_id=config_id, created_at=created_at,
    )


def write_report_rows(
    client: Any,
    rows: Iterable[InventoryRow],
    *,
    source_bucket: str,
    destination_bucket: str,
    prefix_in_destination: str = "",
    file_format: str = "CSV",
    rows_per_file: int = 100_000,
    include_versions: bool = False,
    config_id: str = DEFAULT_CONFIG_ID,
    created_at: datetime | None = None,
) -> str:
    """Write a report of ``rows`` (of ``source_bucket``), as :func:`write_report` does.

    For reports larger than a test wants to upload as objects (memory and
    throughput tests): the rows need not exist in any bucket.

    Raises:
        ValueError: unknown ``file_format``, ``rows_per_file`` < 1, or a
            destination prefix ending in ``/`` (AWS then writes data keys with
            ``//`` but lists them with ``/`` in the manifest: an unusable report).
    """
    if file_format not in ("CSV", "Parquet"):
        raise ValueError(f"file_format must be 'CSV' or 'Parquet', got {file_format!r}")
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    if prefix_in_destination.endswith("/"):
        raise ValueError(f"prefix_in_destination {prefix_in_destination!r} must not end with '/'")
    created = (created_at or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(second=0, microsecond=0)
    base = "/".join(p for p in (prefix_in_destination, source_bucket, config_id) if p)
    fields = ("Bucket", "Key", *(_VERSION_FIELDS if include_versions else ()), *OPTIONAL_FIELDS)
    extension = ".csv.gz" if file_format == "CSV" else ".parquet"
    encode = _csv_file if file_format == "CSV" else _parquet_file

    files = []
    iterator = iter(rows)
    while batch := list(islice(iterator, rows_per_file)):
        body = encode(source_bucket, fields, batch)
        key = f"{base}/data/{uuid.uuid4()}{extension}"
        client.put_object(Bucket=destination_bucket, Key=key, Body=body)
        files.append({"key": key, "size": len(body), "MD5checksum": hashlib.md5(body).hexdigest()})

    manifest = {
        "sourceBucket": source_bucket,
        "destinationBucket": f"arn:aws:s3:::{destination_bucket}",
        "version": MANIFEST_VERSION,
        "creationTimestamp": str(int(created.timestamp() * 1000)),
        "fileFormat": file_format,
        "fileSchema": _file_schema(file_format, fields),
        "files": files,
    }
    # AWS's manifests are Jackson's pretty print: two-space indent, `"name" : value`.
    manifest_body = json.dumps(manifest, indent=2, separators=(",", " : "), ensure_ascii=False).encode()
    manifest_key = f"{base}/{created.strftime('%Y-%m-%dT%H-%MZ')}/manifest.json"
    client.put_object(Bucket=destination_bucket, Key=manifest_key, Body=manifest_body)
    client.put_object(
        Bucket=destination_bucket,
        Key=manifest_key.rsplit("/", 1)[0] + "/manifest.checksum",
        Body=hashlib.md5(manifest_body).hexdigest().encode(),
    )
    symlink = "".join(f"s3://{destination_bucket}/{f['key']}\n" for f in files)
    client.put_object(
        Bucket=destination_bucket,
        Key=f"{base}/hive/dt={created.strftime('%Y-%m-%d-%H-%M')}/symlink.txt",
        Body=symlink.encode(),
    )
    uri = f"s3://{destination_bucket}/{manifest_key}"
    log.info("wrote S3 Inventory report %s of s3://%s: %s, %d data files", uri, source_bucket, file_format, len(files))
    return uri


def _bucket_rows(client: Any, bucket: str, include_versions: bool) -> Iterator[InventoryRow]:
    """Every current object (or every version and delete marker) of ``bucket``, page by page."""
    if not include_versions:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                yield InventoryRow(
                    key=item["Key"], size=item["Size"], last_modified=item["LastModified"],
                    etag=item.get("ETag"), storage_class=item.get("StorageClass", "STANDARD"),
                )
        return
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        items = [(item, False) for item in page.get("Versions", [])]
        items += [(item, True) for item in page.get("DeleteMarkers", [])]
        for item, marker in sorted(items, key=lambda pair: pair[0]["Key"]):  # stable: newest first per key
            yield InventoryRow(
                key=item["Key"],
                size=None if marker else item["Size"],
                last_modified=item["LastModified"],
                etag=None if marker else item.get("ETag"),
                storage_class=None if marker else item.get("StorageClass", "STANDARD"),
                version_id=item.get("VersionId"),
                is_latest=bool(item.get("IsLatest")),
                is_delete_marker=marker,
            )


def _values(bucket: str, row: InventoryRow) -> dict[str, Any]:
    """A row's fields by AWS column name, typed (None where a report leaves the field empty)."""
    return {
        "Bucket": bucket,
        "Key": row.key,
        "VersionId": None if row.version_id in (None, "null") else row.version_id,
        "IsLatest": row.is_latest,
        "IsDeleteMarker": row.is_delete_marker,
        "Size": row.size,
        "LastModifiedDate": row.last_modified.astimezone(timezone.utc) if row.last_modified else None,
        "ETag": row.etag.strip('"') if row.etag else None,
        "StorageClass": row.storage_class,
        "IsMultipartUploaded": None if row.is_delete_marker else row.multipart,
    }


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return str(value)


def _csv_file(bucket: str, fields: tuple[str, ...], rows: list[InventoryRow]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped:
        with io.TextIOWrapper(zipped, encoding="utf-8", newline="") as text:
            writer = csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n")
            for row in rows:
                values = _values(bucket, row)
                # Form encoding, as Java's URLEncoder (AWS) does it; Python also keeps '~'.
                values["Key"] = quote_plus(row.key, safe="*")
                writer.writerow([_csv_text(values[f]) for f in fields])
    return buffer.getvalue()


def _parquet_file(bucket: str, fields: tuple[str, ...], rows: list[InventoryRow]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        "VersionId": pa.string(), "IsLatest": pa.bool_(), "IsDeleteMarker": pa.bool_(), "Size": pa.int64(),
        "LastModifiedDate": pa.timestamp("ms", tz="UTC"), "ETag": pa.string(), "StorageClass": pa.string(),
        "IsMultipartUploaded": pa.bool_(), "Bucket": pa.string(), "Key": pa.string(),
    }
    schema = pa.schema([
        pa.field(_PARQUET_NAMES[f], types[f], nullable=f not in ("Bucket", "Key")) for f in fields
    ])
    values = [_values(bucket, row) for row in rows]
    table = pa.table({_PARQUET_NAMES[f]: [v[f] for v in values] for f in fields}, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy", row_group_size=_ROW_GROUP_ROWS)
    return buffer.getvalue()


def _file_schema(file_format: str, fields: tuple[str, ...]) -> str:
    if file_format == "CSV":
        return ", ".join(fields)
    return "message s3.inventory { " + " ".join(f"{_PARQUET_TYPES[f]};" for f in fields) + " }"
