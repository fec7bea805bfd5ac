"""Inventory from an S3 Inventory report: the report says what the listing says, or it is refused.

moto never delivers inventory reports, so :mod:`residency.localcloud.s3inventory_report`
writes them in AWS's documented layout into a moto bucket over HTTP; the reader
then sees exactly what it would see on AWS. Every comparison is against
``S3Store.list_entries`` on the same bucket, the engine's other source of truth.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tracemalloc
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from residency.clients import AwsCredentials
from residency.errors import ChecksumMismatch, PolicyError
from residency.localcloud.s3inventory_report import InventoryRow, write_report, write_report_rows
from residency.localcloud.servers import MotoServer
from residency.s3inventory import ReportError, iter_report, read_manifest
from residency.stores.base import Listed
from residency.stores.s3 import S3Store, S3TransferConfig
from residency.uris import ObjectRef, parse_uri

MiB = 1024 * 1024
REGION = "ap-northeast-2"
FORMATS = [pytest.param("CSV", id="csv"), pytest.param("Parquet", id="parquet")]

#: Keys that URL encoding, CSV quoting and prefix matching could each get wrong.
AWKWARD_KEYS = [
    "users/1001/アルバム/夏 休み.jpg",
    "사진/2021/03/가족 사진.png",
    "img/a+b%20c.webp",
    "img/100% real.gif",
    "img/plus+and space.png",
    "img/comma,quote\"semicolon;.jpg",
    "odd/  leading and trailing spaces  .gif",
    "deep/a/b/c/d/e/f/g/h/i/j/clip.mp4",
    "emoji/😀.png",
    "top.png",
    "a", "/a", "//a", "a/", "a//b", "a/b", "/",
]


@pytest.fixture
def s3(admin: AwsCredentials) -> Any:
    return admin.client("s3", REGION)


@pytest.fixture
def store(admin: AwsCredentials, moto_server: MotoServer) -> S3Store:
    return S3Store(
        admin.s3_client_factory(),
        transfer=S3TransferConfig(multipart_threshold=6 * MiB, part_size=5 * MiB, read_chunk=5 * MiB),
        service=moto_server.endpoint_url,
        list_page_size=7,
    )


@pytest.fixture
def reports(make_bucket: Callable[..., str]) -> str:
    """The destination bucket of the reports."""
    return make_bucket(REGION, prefix="inv")


def _fill(s3: Any, bucket: str, keys: list[str]) -> None:
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=f"body {i} of {key}".encode())


def _by_key(entries: Iterator[Listed]) -> list[Listed]:
    return sorted(entries, key=lambda e: (e.ref.key, e.version or ""))


def _rewrite_manifest(s3: Any, manifest_uri: str, **changes: Any) -> None:
    """Change fields of a written manifest and keep its manifest.checksum consistent."""
    ref = parse_uri(manifest_uri)
    manifest = json.loads(s3.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read())
    manifest.update(changes)
    body = json.dumps(manifest).encode()
    s3.put_object(Bucket=ref.bucket, Key=ref.key, Body=body)
    s3.put_object(Bucket=ref.bucket, Key=ref.key.replace("manifest.json", "manifest.checksum"),
                  Body=hashlib.md5(body).hexdigest().encode())


def _manifest(s3: Any, manifest_uri: str) -> dict[str, Any]:
    ref = parse_uri(manifest_uri)
    return json.loads(s3.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read())


# --- the report says what the listing says ---------------------------------------------------------------------


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("destination_prefix", [pytest.param("", id="no destination prefix"),
                                                pytest.param("inventory/daily", id="destination prefix")])
def test_report_lists_what_the_bucket_lists(
    s3: Any, store: S3Store, make_bucket, reports: str, file_format: str, destination_prefix: str
) -> None:
    bucket = make_bucket(REGION)
    _fill(s3, bucket, AWKWARD_KEYS)
    big = bytes(range(256)) * (7 * MiB // 256)  # above the 6 MiB threshold: a multipart upload, ETag "...-N"
    store.write(ObjectRef("s3", bucket, "video/big clip.mp4"), [big], size=len(big))

    uri = write_report(s3, source_bucket=bucket, destination_bucket=reports, prefix_in_destination=destination_prefix,
                       file_format=file_format, rows_per_file=4)

    listed = list(store.list_entries(bucket))
    from_report = _by_key(iter_report(store, uri, bucket=bucket))
    assert from_report == listed
    assert {e.ref.key for e in from_report} == set(AWKWARD_KEYS) | {"video/big clip.mp4"}
    big_entry = next(e for e in from_report if e.ref.key == "video/big clip.mp4")
    assert big_entry.multipart and re.fullmatch(r'"[0-9a-f]{32}-[0-9]+"', big_entry.etag)
    assert all(e.etag.startswith('"') and e.version is None and e.checksums == {} for e in from_report)
    assert all(datetime.fromisoformat(e.last_modified).utcoffset() == timedelta(0) for e in from_report)


@pytest.mark.parametrize("file_format", FORMATS)
def test_versioned_bucket_yields_only_latest_versions_and_no_delete_markers(
    s3: Any, store: S3Store, make_bucket, reports: str, file_format: str
) -> None:
    bucket = make_bucket(REGION, versioned=True)
    _fill(s3, bucket, ["keep.jpg", "rewritten.jpg", "deleted.jpg", "revived.jpg"])
    for i in range(3):
        s3.put_object(Bucket=bucket, Key="rewritten.jpg", Body=f"version {i}".encode())
    s3.delete_object(Bucket=bucket, Key="deleted.jpg")  # latest entry: a delete marker
    s3.delete_object(Bucket=bucket, Key="revived.jpg")
    s3.put_object(Bucket=bucket, Key="revived.jpg", Body=b"back again")  # a version above a delete marker

    all_versions = write_report(s3, source_bucket=bucket, destination_bucket=reports, file_format=file_format,
                                rows_per_file=3, include_versions=True)
    current_only = write_report(s3, source_bucket=bucket, destination_bucket=reports, file_format=file_format,
                                include_versions=False, config_id="current")

    schema = _manifest(s3, all_versions)["fileSchema"]
    assert "IsDeleteMarker" in schema or "is_delete_marker" in schema  # the report does carry the markers
    entries = _by_key(iter_report(store, all_versions, bucket=bucket))
    assert entries == list(store.list_entries(bucket, with_version=True))
    assert [e.ref.key for e in entries] == ["keep.jpg", "revived.jpg", "rewritten.jpg"]
    latest = s3.head_object(Bucket=bucket, Key="rewritten.jpg")["VersionId"]
    assert next(e for e in entries if e.ref.key == "rewritten.jpg").version == latest
    assert _by_key(iter_report(store, current_only, bucket=bucket)) == list(store.list_entries(bucket))


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("img/", id="folder"),
        pytest.param("img/a+b", id="plus inside"),
        pytest.param("사진/", id="korean"),
        pytest.param("/", id="leading slash"),
        pytest.param("a", id="bare letter"),
        pytest.param("a/", id="trailing slash"),
        pytest.param("nothing/here/", id="no match"),
        pytest.param("", id="empty prefix"),
    ],
)
def test_prefix_filtering_matches_a_prefixed_listing(
    s3: Any, store: S3Store, make_bucket, reports: str, prefix: str
) -> None:
    bucket = make_bucket(REGION)
    _fill(s3, bucket, AWKWARD_KEYS)
    for file_format in ("CSV", "Parquet"):
        uri = write_report(s3, source_bucket=bucket, destination_bucket=reports, file_format=file_format,
                           config_id=file_format.lower())
        from_report = _by_key(iter_report(store, uri, bucket=bucket, prefix=prefix))
        assert from_report == list(store.list_entries(bucket, prefix))


_XML_SAFE = st.characters(
    exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff"
)  # S3 lists keys in XML 1.0, which cannot carry most control characters
_KEY_PARTS = ["/", "//", " ", "+", "%", "%2F", "%25", "%20", "?", "#", "&", "=", "~", ";", ",", '"', "*",
              "夏", "사진", "😀", "\u3000", "é"]
KEYS = (
    st.lists(st.one_of(st.sampled_from(_KEY_PARTS), st.text(_XML_SAFE, min_size=1, max_size=6)), min_size=1, max_size=8)
    .map("".join)
    .filter(lambda k: len(k.encode()) <= 1024)
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(KEYS, min_size=1, max_size=8, unique=True))
def test_any_keys_survive_both_formats(s3: Any, store: S3Store, make_bucket, reports: str, keys: list[str]) -> None:
    bucket = make_bucket(REGION)
    _fill(s3, bucket, keys)
    listed = list(store.list_entries(bucket))
    for file_format in ("CSV", "Parquet"):
        uri = write_report(s3, source_bucket=bucket, destination_bucket=reports, file_format=file_format,
                           rows_per_file=3, config_id=f"{bucket}-{file_format}")
        assert _by_key(iter_report(store, uri, bucket=bucket)) == listed


@pytest.mark.parametrize("file_format", FORMATS)
def test_keys_with_control_characters_are_decoded(s3: Any, store: S3Store, reports: str, file_format: str) -> None:
    """S3 accepts any UTF-8 key; moto's HTTP layer refuses a newline, so these rows are written directly."""
    keys = ["line\nbreak.jpg", "tab\there.jpg", "cr\rlf\r\n.jpg", "nul\x00byte.jpg", "quote\"comma,.jpg"]
    rows = [InventoryRow(k, i, etag=f'"{hashlib.md5(k.encode()).hexdigest()}"') for i, k in enumerate(keys)]
    uri = write_report_rows(s3, rows, source_bucket="seoul-line-photos", destination_bucket=reports,
                            file_format=file_format, rows_per_file=2)
    entries = list(iter_report(store, uri, bucket="seoul-line-photos"))
    assert [(e.ref.key, e.size) for e in entries] == [(k, i) for i, k in enumerate(keys)]


# --- the report's own facts --------------------------------------------------------------------------------------


def test_layout_and_manifest_follow_the_documented_format(s3: Any, store: S3Store, make_bucket, reports: str) -> None:
    bucket = make_bucket(REGION)
    _fill(s3, bucket, ["a.jpg", "b.jpg", "c.jpg"])
    created = datetime(2021, 3, 15, 12, 34, tzinfo=timezone.utc)
    uri = write_report(s3, source_bucket=bucket, destination_bucket=reports, prefix_in_destination="inv",
                       rows_per_file=2, config_id="daily", created_at=created)

    base = f"inv/{bucket}/daily"
    assert uri == f"s3://{reports}/{base}/2021-03-15T12-34Z/manifest.json"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=reports)["Contents"]]
    data = [k for k in keys if k.startswith(f"{base}/data/")]
    assert len(data) == 2 and all(re.fullmatch(rf"{base}/data/[0-9a-f-]{{36}}\.csv\.gz", k) for k in data)
    assert sorted(set(keys) - set(data)) == [
        f"{base}/2021-03-15T12-34Z/manifest.checksum",
        f"{base}/2021-03-15T12-34Z/manifest.json",
        f"{base}/hive/dt=2021-03-15-12-34/symlink.txt",
    ]
    manifest = _manifest(s3, uri)
    assert set(manifest) == {"sourceBucket", "destinationBucket", "version", "creationTimestamp", "fileFormat",
                             "fileSchema", "files"}
    assert manifest["destinationBucket"] == f"arn:aws:s3:::{reports}"
    assert manifest["creationTimestamp"] == str(int(created.timestamp() * 1000))
    assert manifest["fileSchema"] == "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass, IsMultipartUploaded"
    first = gzip.decompress(s3.get_object(Bucket=reports, Key=data[0])["Body"].read()).decode()
    assert first.startswith(f'"{bucket}","') and not first.startswith('"Bucket"')  # no header row

    info = read_manifest(store, uri)
    assert (info.source_bucket, info.destination_bucket, info.file_format) == (bucket, reports, "CSV")
    assert info.created_at == "2021-03-15T12:34:00+00:00"
    assert info.file_count == 2 and info.total_size == sum(f["size"] for f in manifest["files"])
    assert info.checksum_verified
    assert info.describe() == f"inventory from S3 Inventory report {uri} created at 2021-03-15T12:34:00+00:00"


def test_manifest_without_checksum_file_is_read_and_says_so(s3: Any, store: S3Store, make_bucket, reports: str) -> None:
    bucket = make_bucket(REGION)
    _fill(s3, bucket, ["a.jpg"])
    uri = write_report(s3, source_bucket=bucket, destination_bucket=reports)
    ref = parse_uri(uri)
    s3.delete_object(Bucket=reports, Key=ref.key.replace("manifest.json", "manifest.checksum"))
    assert read_manifest(store, uri).checksum_verified is False
    assert [e.ref.key for e in iter_report(store, uri, bucket=bucket)] == ["a.jpg"]


# --- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file_format", FORMATS)
def test_data_file_with_other_bytes_than_its_md5_is_refused(
    s3: Any, store: S3Store, make_bucket, reports: str, file_format: str
) -> None:
    bucket = make_bucket(REGION)
    _fill(s3, bucket, [f"k{i}.jpg" for i in range(6)])
    uri = write_report(s3, source_bucket=bucket, destination_bucket=reports, file_format=file_format, rows_per_file=2)
    victim = _manifest(s3, uri)["files"][1]["key"]
    body = s3.get_object(Bucket=reports, Key=victim)["Body"].read()
    if file_format == "CSV":  # still a perfectly valid gzip CSV: only the MD5 can tell
        text = gzip.decompress(body).decode()
        body = gzip.compress(text.replace('"STANDARD"', '"GLACIER"').encode())
    else:
        body = body[:-9] + bytes([body[-9] ^ 0xFF]) + body[-8:]
    s3.put_object(Bucket=reports, Key=victim, Body=body)

    with pytest.raises(ChecksumMismatch) as caught:
        list(iter_report(store, uri, bucket=bucket))
    assert caught.value.uri == f"s3://{reports}/{victim}"
    assert "MD5" in str(caught.value) and "files[1]" in str(caught.value)


def test_truncated_csv_is_refused_as_a_checksum_mismatch(s3: Any, store: S3Store, make_bucket, reports: str) -> None:
    bucket = make_bucket(REGION)
    _fill(s3, bucket, [f"k{i}.jpg" for i in range(50)])
    uri = write_report(s3, source_bucket=bucket, destination_bucket=reports)
    victim = _manifest(s3, uri)["files"][0]["key"]
    body = s3.get_object(Bucket=reports, Key=victim)["Body"].read()
    s3.put_object(Bucket=reports, Key=victim, Body=body[: len(body) // 2])
    with pytest.raises(ChecksumMismatch, match=re.escape(victim)):
        list(iter_report(store, uri, bucket=bucket))


def test_manifest_that_is_not_its_checksum_is_refused(s3: Any, store: S3Store, make_bucket, reports: str) -> None:
    bucket = make_bucket(REGION)
    _fill(s3, bucket, ["a.jpg"])
    uri = write_report(s3, source_bucket=bucket, destination_bucket=reports)
    ref = parse_uri(uri)
    s3.put_object(Bucket=reports, Key=ref.key, Body=json.dumps(_manifest(s3, uri)).encode())  # checksum not updated
    with pytest.raises(ChecksumMismatch, match="manifest.checksum"):
        read_manifest(store, uri)


def test_manifest_of_another_bucket_is_refused_naming_the_field(
    s3: Any, store: S3Store, make_bucket, reports: str
) -> None:
    bucket, other = make_bucket(REGION), make_bucket(REGION)
    _fill(s3, other, ["a.jpg"])
    uri = write_report(s3, source_bucket=other, destination_bucket=reports)
    with pytest.raises(ReportError) as caught:
        list(iter_report(store, uri, bucket=bucket))
    assert caught.value.field == "sourceBucket" and caught.value.value == other
    assert "sourceBucket" in str(caught.value) and other in str(caught.value) and bucket in str(caught.value)
    assert caught.value.permanent


@pytest.mark.parametrize("file_format", FORMATS)
def test_rows_of_another_bucket_are_refused(
    s3: Any, store: S3Store, make_bucket, reports: str, file_format: str
) -> None:
    bucket = make_bucket(REGION)
    uri = write_report_rows(s3, [InventoryRow("a.jpg", 1, etag='"0cc175b9c0f1b6a831c399e269772661"')],
                            source_bucket="someone-elses-bucket", destination_bucket=reports, file_format=file_format)
    _rewrite_manifest(s3, uri, sourceBucket=bucket)
    with pytest.raises(ReportError) as caught:
        list(iter_report(store, uri, bucket=bucket))
    assert caught.value.field == "row 1 bucket" and caught.value.value == "someone-elses-bucket"


def test_orc_report_is_refused(s3: Any, store: S3Store, make_bucket, reports: str) -> None:
    bucket = make_bucket(REGION)
    _fill(s3, bucket, ["a.jpg"])
    uri = write_report(s3, source_bucket=bucket, destination_bucket=reports)
    _rewrite_manifest(s3, uri, fileFormat="ORC", fileSchema="struct<bucket:string,key:string,size:bigint>")
    with pytest.raises(ReportError, match="ORC") as caught:
        list(iter_report(store, uri, bucket=bucket))
    assert caught.value.field == "fileFormat"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"version": "2099-01-01"}, "version", id="unknown version"),
        pytest.param({"fileSchema": "Bucket, Key, ETag"}, "fileSchema", id="csv without Size"),
        pytest.param({"creationTimestamp": "yesterday"}, "creationTimestamp", id="creation time not epoch ms"),
        pytest.param({"files": [{"key": "x.csv.gz", "size": 1, "MD5checksum": "nope"}]}, "files[0].MD5checksum",
                     id="bad md5"),
    ],
)
def test_malformed_manifest_is_refused_naming_the_field(
    s3: Any, store: S3Store, make_bucket, reports: str, changes: dict[str, Any], field: str
) -> None:
    bucket = make_bucket(REGION)
    _fill(s3, bucket, ["a.jpg"])
    uri = write_report(s3, source_bucket=bucket, destination_bucket=reports)
    _rewrite_manifest(s3, uri, **changes)
    with pytest.raises(ReportError) as caught:
        list(iter_report(store, uri, bucket=bucket))
    assert caught.value.field == field


@pytest.mark.parametrize("uri", ["s3://bucket-name/reports/other.json", "gs://bucket-name/x/manifest.json", "nope"])
def test_manifest_uri_must_name_a_manifest_in_s3(store: S3Store, uri: str) -> None:
    with pytest.raises(PolicyError, match="manifest_uri"):
        read_manifest(store, uri)


# --- memory -----------------------------------------------------------------------------------------------------

ROWS = 50_000


def _synthetic_rows() -> Iterator[InventoryRow]:
    start = datetime(2021, 3, 15, tzinfo=timezone.utc)
    for i in range(ROWS):
        yield InventoryRow(
            key=f"users/{i % 997:04d}/photos/2021/03/IMG_{i:07d} 写真.jpg",
            size=100_000 + i,
            last_modified=start + timedelta(seconds=i),
            etag=f'"{hashlib.md5(str(i).encode()).hexdigest()}"',
        )


@pytest.mark.parametrize("file_format", FORMATS)
def test_a_large_report_is_read_in_bounded_memory(s3: Any, store: S3Store, reports: str, file_format: str) -> None:
    """50,000 rows in two data files: iterating holds about one batch, holding the entries grows with the rows.

    tracemalloc sees Python's allocations (rows, entries, the bytes read); Arrow's
    buffers are sampled with ``pyarrow.total_allocated_bytes``. What holding every
    entry would take is measured on the first 10,000 and scaled (tracing all of
    them twice would only make the test slow).
    """
    bucket = "seoul-line-photos-huge"  # the rows need not exist: only the report is read
    uri = write_report_rows(s3, _synthetic_rows(), source_bucket=bucket, destination_bucket=reports,
                            file_format=file_format, rows_per_file=ROWS // 2)
    read_manifest(store, uri)  # warm up: the client, its service model and the bucket's region are cached
    sample_arrow: Callable[[], int] = lambda: 0  # noqa: E731
    if file_format == "Parquet":
        import pyarrow as pa

        sample_arrow = pa.total_allocated_bytes

    arrow_peak = count = total = 0
    tracemalloc.start()
    try:
        for entry in iter_report(store, uri, bucket=bucket):
            count += 1
            total += entry.size
            if count % 500 == 0:
                arrow_peak = max(arrow_peak, sample_arrow())
        _, streaming_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        baseline, _ = tracemalloc.get_traced_memory()
        sample = list(islice(iter_report(store, uri, bucket=bucket), 10_000))
        _, sample_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == ROWS and len(sample) == 10_000
    assert total == sum(100_000 + i for i in range(ROWS))  # every row, once
    holding_all = (sample_peak - baseline) * ROWS // len(sample)
    bound = 8 * MiB
    assert holding_all > 2 * bound, f"holding every entry would take only {holding_all} bytes: the bound proves nothing"
    assert streaming_peak < bound, f"iterating peaked at {streaming_peak} bytes (holding all: about {holding_all})"
    assert arrow_peak < bound, f"Arrow held {arrow_peak} bytes at once"


@pytest.mark.parametrize("file_format", ["CSV", "Parquet"])
def test_pipeline_inventory_from_a_report_records_what_a_listing_records(
    tmp_path: Any, admin: AwsCredentials, moto_server: MotoServer, make_bucket: Callable[..., str], s3: Any,
    reports: str, file_format: str,
) -> None:
    """A source with ``inventory_report`` is inventoried from the report, not listed: the
    ledger rows (pins, sizes, shards) equal a listing's, the bucket says where its
    inventory came from, and the copy then migrates and proves every object."""
    import yaml

    from residency import pipeline, transfer
    from residency.ledger import VERIFIED

    src = make_bucket(REGION, versioned=True, prefix="src")
    dst = make_bucket("ap-northeast-1", prefix="dst")
    keys = [f"photos/{i:03d} 写真.jpg" for i in range(12)] + ["photos/notes.txt", "other/x.png"]
    _fill(s3, src, keys)
    manifest = write_report(s3, source_bucket=src, destination_bucket=reports, file_format=file_format,
                            rows_per_file=5, include_versions=True)

    def inventory(name: str, report: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        source: dict[str, Any] = {"uri": f"s3://{src}/photos/", "conn_id": "aws"}
        if report:
            source["inventory_report"] = report
        (tmp_path / name).mkdir()
        path = tmp_path / name / "policy.yaml"
        path.write_text(yaml.safe_dump({
            "migration_id": f"{name}-{src}", "home_jurisdiction": "JP", "control_dir": str(tmp_path / name),
            "ledger_url": f"sqlite:///{tmp_path / name / 'ledger.db'}", "sources": [source],
            "destinations": {"s3": {"uri": f"s3://{dst}/{name}/", "conn_id": "aws"}},
            "transfer": {"shard_size": 5},
        }))
        creds = lambda conn_id: admin  # noqa: E731 - one identity for both sides
        rt = pipeline.Runtime(pipeline.plan_run({"policy_path": str(path)}, {}, creds), creds)
        summary = pipeline.run_inventory(rt, None)
        for shard in summary["shards"]:
            pipeline.copy_shard(rt, shard)
            pipeline.verify_shard(rt, shard)
        rows = sorted(rt.ledger.iter_objects(rt.policy.migration_id), key=lambda r: r["src_uri"])
        (bucket,) = rt.ledger.get_buckets(rt.policy.migration_id)
        assert all(r["state"] == VERIFIED for r in rows), [r["reason"] for r in rows]
        return {"summary": summary, "bucket": bucket}, rows

    listed, listed_rows = inventory("listed", None)
    reported, reported_rows = inventory("reported", f"s3://{reports}/{manifest.split('/', 3)[3]}")
    pins = ("src_uri", "size", "src_version", "src_etag", "shard", "media_type")
    assert [{k: r[k] for k in pins} for r in reported_rows] == [{k: r[k] for k in pins} for r in listed_rows]
    assert len(reported_rows) == 12
    assert listed["bucket"]["inventory_source"] == "listing"
    assert reported["bucket"]["inventory_source"].startswith("inventory from S3 Inventory report s3://")
    assert reported["summary"]["objects_listed"] == listed["summary"]["objects_listed"] == 13
    assert {r["verify_method"] for r in reported_rows} == {transfer.COPY_RESPONSE}
