"""The seeded overseas estate, checked against a real moto server over HTTP with IAM enforced."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import google_crc32c
import pytest
from botocore.exceptions import ClientError

from residency.clients import aws_from_fields
from residency.localcloud.estate import Estate, seed_estate
from residency.localcloud.servers import MotoServer
from residency.policy import load_policy
from residency.uris import UrlStyle, parse_url

SEOUL, TOKYO = "ap-northeast-2", "ap-northeast-1"
URL_COLUMNS = {"users": ("avatar_url",), "photos": ("url", "thumbnail_url"), "messages": ("attachment_url",)}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def server() -> Iterator[MotoServer]:
    with MotoServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def seeded(server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Estate, list[logging.LogRecord]]:
    admin = server.enforce_auth()
    handler = _Records()
    logger = logging.getLogger("residency.localcloud.estate")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        estate = seed_estate(server, admin, tmp_path_factory.mktemp("estate"), scale="small")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return estate, handler.records


@pytest.fixture(scope="module")
def estate(seeded: tuple[Estate, list[logging.LogRecord]]) -> Estate:
    return seeded[0]


def _objects(client: Any, bucket: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.extend(page.get("Contents", []))
    return out


def _crc32c_b64(data: bytes) -> str:
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


def _error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


def _url_cells(db_url: str) -> list[str | None]:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as db:
        return [v for table, cols in URL_COLUMNS.items() for col in cols
                for (v,) in db.execute(f"SELECT {col} FROM {table}")]


def test_buckets_are_in_their_regions(estate: Estate) -> None:
    s3 = estate.migrator.client("s3", SEOUL)
    expected = {"seoul-line-photos": SEOUL, "seoul-line-media": SEOUL, "tokyo-line-media": TOKYO}
    assert set(estate.source_buckets) | {estate.destination_bucket} == set(expected)
    for bucket, region in expected.items():
        assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == region
    assert s3.get_bucket_versioning(Bucket="seoul-line-photos").get("Status") == "Enabled"
    assert s3.get_bucket_versioning(Bucket="seoul-line-media").get("Status") is None


def test_counts_and_bytes_match_the_listing(estate: Estate) -> None:
    selection = load_policy(estate.policy_path).selection
    s3 = estate.migrator.client("s3", SEOUL)
    media = media_bytes = other = 0
    for bucket in estate.source_buckets:
        for item in _objects(s3, bucket):
            head = s3.head_object(Bucket=bucket, Key=item["Key"])
            if selection.media_type(item["Key"], head["ContentType"]):
                media += 1
                media_bytes += item["Size"]
            else:
                other += 1
    assert (media, media_bytes, other) == (estate.media_objects, estate.media_bytes, estate.other_objects)
    assert 25 <= estate.media_objects <= 45 and estate.media_bytes < 40_000_000
    dst = _objects(estate.migrator.client("s3", TOKYO), estate.destination_bucket)
    assert [o["Key"] for o in dst] == ["ops/README.txt"]


def test_out_of_scope_objects_are_decided_by_content_type(estate: Estate) -> None:
    selection = load_policy(estate.policy_path).selection
    s3 = estate.migrator.client("s3", SEOUL)
    cases = {
        ("seoul-line-media", "logs/2021/03/15/app.log"): None,
        ("seoul-line-media", "meta/album-1001.json"): None,
        ("seoul-line-photos", "meta/export-1001.jpg"): None,  # .jpg, but application/json
        ("seoul-line-photos", "사진/2021/03/가족 사진.png"): "image",  # octet-stream, by extension
    }
    for (bucket, key), media_type in cases.items():
        head = s3.head_object(Bucket=bucket, Key=key)
        assert selection.media_type(key, head["ContentType"]) == media_type, key
    legacy = s3.head_object(Bucket="seoul-line-photos", Key="사진/2021/03/가족 사진.png")
    assert legacy["ContentType"] == "application/octet-stream"


def test_sources_mix_multipart_modern_and_legacy_uploads(estate: Estate) -> None:
    s3 = estate.migrator.client("s3", SEOUL)
    multipart, with_crc, without = [], 0, 0
    for bucket in estate.source_buckets:
        for item in _objects(s3, bucket):
            if "-" in item["ETag"]:
                multipart.append((bucket, item["Key"], item["Size"]))
            head = s3.head_object(Bucket=bucket, Key=item["Key"], ChecksumMode="ENABLED")
            if head.get("ChecksumCRC32C"):
                with_crc += 1
            else:
                without += 1
    assert multipart, "no source object has a multipart ETag"
    bucket, key, size = multipart[0]
    assert size > 16 * 1024 * 1024
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body[4:12] == b"ftypisom"
    assert head["ChecksumCRC32C"] == _crc32c_b64(body) and head["ChecksumType"] == "FULL_OBJECT"
    assert head["Metadata"] == {"uploader-id": "12345"}
    assert with_crc >= 5 and without >= 5
    big_single = [o for o in _objects(s3, "seoul-line-photos") if o["Size"] > 16 * 1024 * 1024]
    assert big_single and "-" not in big_single[0]["ETag"]


def test_media_bytes_start_with_magic_numbers(estate: Estate) -> None:
    s3 = estate.migrator.client("s3", SEOUL)
    magic = {
        ".jpg": lambda b: b[:3] == b"\xff\xd8\xff",
        ".png": lambda b: b[:8] == b"\x89PNG\r\n\x1a\n",
        ".webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
        ".gif": lambda b: b[:6] == b"GIF89a",
        ".mp4": lambda b: b[4:12] == b"ftypisom",
        ".m4a": lambda b: b[4:8] == b"ftyp",
        ".mp3": lambda b: b[:3] == b"ID3",
    }
    seen = set()
    for bucket in estate.source_buckets:
        for item in _objects(s3, bucket):
            ext = "." + item["Key"].rsplit(".", 1)[-1]
            if ext not in magic or item["Size"] == 0 or item["Key"].startswith("meta/"):
                continue
            head = s3.get_object(Bucket=bucket, Key=item["Key"], Range="bytes=0-15")["Body"].read()
            assert magic[ext](head), (item["Key"], head)
            seen.add(ext)
    assert {".jpg", ".png", ".webp", ".gif", ".mp4"} <= seen and seen & {".m4a", ".mp3"}


@pytest.mark.parametrize(
    ("bucket", "key"),
    [
        pytest.param("seoul-line-photos", "users/1001/アルバム/夏 休み.jpg", id="japanese and space"),
        pytest.param("seoul-line-photos", "사진/2021/03/가족 사진.png", id="korean"),
        pytest.param("seoul-line-media", "img/a+b%20c.webp", id="plus and literal percent"),
        pytest.param("seoul-line-media", "stickers/Summer Sale 2021/banner final (1).gif", id="spaces and parentheses"),
        pytest.param("seoul-line-media", "media/u/7/7a/7a3/2021/03/15/VID_20210315_120000.mp4", id="deep prefix"),
    ],
)
def test_awkward_keys_round_trip(estate: Estate, bucket: str, key: str) -> None:
    s3 = estate.migrator.client("s3", SEOUL)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=key.split("/")[0])["Contents"]]
    assert key in listed
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0


def test_photos_bucket_holds_an_older_version(estate: Estate) -> None:
    s3 = estate.migrator.client("s3", SEOUL)
    versions = s3.list_object_versions(Bucket="seoul-line-photos", Prefix="users/1001/avatar.jpg")["Versions"]
    assert len(versions) == 2 and sum(v["IsLatest"] for v in versions) == 1


def test_policy_loads_and_names_the_affiliate_key(estate: Estate) -> None:
    policy = load_policy(estate.policy_path)
    assert policy.migration_id == "line-media-jp" and policy.home_jurisdiction == "JP"
    assert [s.bucket_uri for s in policy.sources] == ["s3://seoul-line-photos", "s3://seoul-line-media"]
    assert policy.destinations["s3"].ref.bucket == "tokyo-line-media"
    assert policy.transfer.multipart_threshold == 16 * 1024 * 1024 and policy.transfer.shard_size == 10
    assert policy.references is not None and policy.references.database_url == estate.app_db_url
    assert policy.control_dir == str(estate.workdir.resolve() / "control")
    (principal,) = policy.revocations
    assert principal.user == estate.affiliate_user == "line-affiliate-cn"
    assert principal.access_keys == (estate.affiliate.access_key_id,)
    assert principal.probe_conn_id == "affiliate_probe" and principal.probe_uri == "s3://seoul-line-photos"


def test_app_db_references_every_media_object(estate: Estate) -> None:
    with sqlite3.connect(estate.app_db_url.removeprefix("sqlite:///")) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"users", "photos", "messages"}
    cells = _url_cells(estate.app_db_url)
    parsed = [p for p in map(parse_url, filter(None, cells)) if p]
    seoul = [p for p in parsed if p.ref.bucket in estate.source_buckets]
    assert len(seoul) == estate.references
    assert {p.style for p in seoul} == {UrlStyle.S3_URI, UrlStyle.S3_VIRTUAL, UrlStyle.S3_PATH}
    assert None in cells and "https://cdn.example.jp/x.png" in cells

    selection = load_policy(estate.policy_path).selection
    s3 = estate.migrator.client("s3", SEOUL)
    existing = {
        (bucket, o["Key"]): s3.head_object(Bucket=bucket, Key=o["Key"])["ContentType"]
        for bucket in estate.source_buckets for o in _objects(s3, bucket)
    }
    media = {bk for bk, ctype in existing.items() if selection.media_type(bk[1], ctype)}
    referenced = [(p.ref.bucket, p.ref.key) for p in seoul]
    assert media <= set(referenced), sorted(media - set(referenced))
    assert sum(r in media for r in referenced) == estate.media_references
    non_media = [r for r in referenced if r in existing and r not in media]
    dangling = [r for r in referenced if r not in existing]
    assert len(non_media) >= 2 and len(dangling) == 1
    assert estate.references == estate.media_references + len(non_media) + len(dangling)
    assert len(referenced) > len(set(referenced)), "no object is referenced twice"


def test_affiliate_reads_seoul_but_cannot_write_tokyo(estate: Estate) -> None:
    seoul = estate.affiliate.client("s3", SEOUL)
    assert seoul.list_objects_v2(Bucket="seoul-line-photos", MaxKeys=1)["KeyCount"] == 1
    assert seoul.get_object(Bucket="seoul-line-media", Key="img/a+b%20c.webp")["Body"].read(4) == b"RIFF"
    tokyo = estate.affiliate.client("s3", TOKYO)
    with pytest.raises(ClientError) as denied:
        tokyo.put_object(Bucket="tokyo-line-media", Key="exfil.txt", Body=b"x")
    assert _error_code(denied) == "AccessDenied"
    with pytest.raises(ClientError) as denied:
        seoul.put_object(Bucket="seoul-line-photos", Key="exfil.txt", Body=b"x")
    assert _error_code(denied) == "AccessDenied"


def test_migrator_reads_seoul_and_writes_tokyo(estate: Estate) -> None:
    seoul = estate.migrator.client("s3", SEOUL)
    body = seoul.get_object(Bucket="seoul-line-photos", Key="users/1001/アルバム/夏 休み.jpg")["Body"].read()
    tokyo = estate.migrator.client("s3", TOKYO)
    tokyo.put_object(Bucket="tokyo-line-media", Key="probe/migrator.jpg", Body=body)
    try:
        assert tokyo.get_object(Bucket="tokyo-line-media", Key="probe/migrator.jpg")["Body"].read() == body
    finally:
        tokyo.delete_object(Bucket="tokyo-line-media", Key="probe/migrator.jpg")
    iam = estate.migrator.client("iam", "us-east-1")
    keys = iam.list_access_keys(UserName=estate.affiliate_user)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [estate.affiliate.access_key_id]
    # The migrator may retire keys, never mint them. (moto cannot scope IAM actions to
    # one user: it authorizes them against resource "*", so that scope is not tested.)
    with pytest.raises(ClientError) as denied:
        iam.create_access_key(UserName=estate.affiliate_user)
    assert _error_code(denied) == "AccessDenied"


def test_connection_env_builds_working_credentials(estate: Estate) -> None:
    env = estate.connection_env()
    assert set(env) == {
        "AIRFLOW_CONN_AWS_SEOUL", "AIRFLOW_CONN_AWS_TOKYO", "AIRFLOW_CONN_AWS_IAM", "AIRFLOW_CONN_AFFILIATE_PROBE"
    }
    regions = {}
    for name, value in env.items():
        conn = json.loads(value)
        assert conn["conn_type"] == "aws"
        conn_id = name.removeprefix("AIRFLOW_CONN_").lower()
        creds = aws_from_fields(conn_id, conn["login"], conn["password"], conn["extra"])
        assert creds.endpoint_url == estate.endpoint_url
        regions[creds.conn_id] = creds.region_name
        user = "line-affiliate-cn" if conn_id == "affiliate_probe" else "residency-migrator"
        assert creds.client("sts").get_caller_identity()["Arn"].endswith(f":user/{user}")
    assert regions == {"aws_seoul": SEOUL, "aws_tokyo": TOKYO, "aws_iam": "us-east-1", "affiliate_probe": SEOUL}
    probe = json.loads(env["AIRFLOW_CONN_AFFILIATE_PROBE"])
    assert probe["login"] == estate.affiliate.access_key_id


def test_secrets_stay_out_of_logs_and_repr(seeded: tuple[Estate, list[logging.LogRecord]]) -> None:
    estate, records = seeded
    text = "\n".join(r.getMessage() for r in records) + repr(estate)
    for secret in (estate.migrator.secret_access_key, estate.affiliate.secret_access_key):
        assert secret and secret not in text
    assert estate.affiliate.access_key_id in text  # key ids are fine, and auditors need them
    for bucket in (*estate.source_buckets, estate.destination_bucket):
        assert sum(f"s3://{bucket} " in r.getMessage() for r in records if r.levelno == logging.INFO) == 1


def test_seeding_is_deterministic(estate: Estate, tmp_path: Path) -> None:
    def fingerprint(client: Any) -> list[tuple[str, str, int]]:
        return [(b, o["Key"], o["ETag"]) for b in estate.source_buckets for o in _objects(client, b)]

    first = fingerprint(estate.migrator.client("s3", SEOUL))
    with MotoServer() as other:
        again = seed_estate(other, other.enforce_auth(), tmp_path, scale="small")
        assert fingerprint(again.migrator.client("s3", SEOUL)) == first
        assert _url_cells(again.app_db_url) == _url_cells(estate.app_db_url)
        assert (again.media_objects, again.media_bytes, again.references) == (
            estate.media_objects, estate.media_bytes, estate.references)


def test_unknown_scale_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale"):
        seed_estate(MotoServer(), None, tmp_path, scale="huge")  # type: ignore[arg-type]
