"""Amazon S3 (and S3-compatible servers) behind the store protocol.

The client factory is injected (s3transfer's habit): :mod:`residency.connections`
builds clients from Airflow connections, the tests build them for moto server.
Each bucket is addressed through a client of its own region, as S3 expects.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, replace
from datetime import timezone
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlencode

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from .. import checksums
from ..errors import (
    BucketNotFound,
    ChecksumMismatch,
    ObjectNotFound,
    PermissionDenied,
    PreconditionFailed,
    ResidencyError,
    SourceChanged,
    StoreError,
    TransientError,
)
from ..jurisdictions import Placement, placement_of
from ..retry import DEFAULT_RETRY, RetryPolicy
from ..uris import ObjectRef
from .base import PROVENANCE_PREFIX, Capabilities, Listed, ObjectInfo

log = logging.getLogger(__name__)

MiB = 1024 * 1024
S3_MIN_PART = 5 * MiB
S3_MAX_PARTS = 10_000
#: Most keys one ListObjectsV2 / ListObjectVersions request returns.
S3_MAX_LIST_PAGE = 1000

_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
    "AllAccessDisabled",
}
_PRECONDITION = {"PreconditionFailed", "412"}
#: 409: a conditional write raced another write to the same key. S3 asks for the
#: request to be retried (PutObject, CopyObject); a CompleteMultipartUpload that
#: gets it must start over with a new upload (see ``_complete``).
_CONFLICT = "ConditionalRequestConflict"
_TRANSIENT = {
    _CONFLICT,
    "SlowDown",
    "503",
    "500",
    "502",
    "504",
    "429",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "RequestLimitExceeded",
}

# header name -> boto3 parameter / response field
_HEADER_PARAMS = {
    "cache-control": "CacheControl",
    "content-disposition": "ContentDisposition",
    "content-encoding": "ContentEncoding",
    "content-language": "ContentLanguage",
}
_CHECKSUM_FIELDS = {
    "ChecksumCRC32C": "crc32c",
    "ChecksumSHA256": "sha256",
    "ChecksumCRC64NVME": "crc64nvme",
}


@dataclass(frozen=True)
class S3TransferConfig:
    """Sizes that decide single-call vs multipart operations. Validates itself."""

    multipart_threshold: int = 64 * MiB
    part_size: int = 64 * MiB  # server-side UploadPartCopy: no bytes pass through us
    read_chunk: int = 8 * MiB
    stream_part_size: int = 8 * MiB  # streamed uploads: bounds the memory of a copy

    def __post_init__(self) -> None:
        if min(self.part_size, self.stream_part_size) < S3_MIN_PART:
            raise ValueError(f"part_size must be >= 5 MiB (S3 minimum), got {self.part_size}")
        if self.multipart_threshold < self.part_size:
            raise ValueError(
                f"multipart_threshold ({self.multipart_threshold}) must be >= part_size ({self.part_size})"
            )
        if self.multipart_threshold > 5 * 1024**3:
            raise ValueError("multipart_threshold must be <= 5 GiB (S3's single-copy limit)")

    def part_size_for(self, size: int, part: int | None = None) -> int:
        """Part size for an object of ``size`` bytes within S3's 10,000-part limit."""
        part = part or self.part_size
        while size / part > S3_MAX_PARTS:
            part *= 2
        return part


def _check_expected(ref: ObjectRef, hasher: checksums.MultiHasher, expected: Mapping[str, str] | None) -> None:
    """Refuse to create an object whose bytes differ from the source's checksum."""
    if not expected:
        return
    got = hasher.hexdigests()
    algorithm = checksums.common_algorithm(dict(expected), got)
    if algorithm and expected[algorithm] != got[algorithm]:
        raise ChecksumMismatch(
            ref.uri, f"bytes received from the source have {algorithm} {got[algorithm]}, source says {expected[algorithm]}"
        )


def _listed(bucket: str, item: Mapping[str, Any]) -> Listed:
    """A ListObjectsV2 ``Contents`` or ListObjectVersions ``Versions`` item as a :class:`Listed`."""
    etag = item.get("ETag")
    version = item.get("VersionId")
    last_modified = item.get("LastModified")
    return Listed(
        ref=ObjectRef("s3", bucket, item["Key"]),
        size=int(item.get("Size", 0)),
        etag=etag,
        version=None if version in (None, "null") else version,
        # botocore gives tzlocal() for a "Z" timestamp when the machine runs on UTC.
        last_modified=last_modified.astimezone(timezone.utc).isoformat() if last_modified else None,
        multipart=bool(etag and "-" in etag.strip('"')),
    )


#: Provenance written as object tags where a copy keeps the source's own metadata
#: (``MetadataDirective=COPY``): tag values allow letters, digits, spaces and
#: ``+ - = . _ : / @`` only, so the source URI is recorded by its SHA-256.
_TAG_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 +-=._:/@")
MAX_TAGS = 10


def provenance_tags(metadata: Mapping[str, str]) -> dict[str, str]:
    """The provenance metadata as S3 object tags (at most 10, values of allowed characters).

    ``residency-source-uri`` (percent-encoded, up to 1 KiB) becomes
    ``residency-source-uri-sha256``; values with other characters are dropped.
    """
    tags: dict[str, str] = {}
    for key, value in sorted(metadata.items()):
        if not key.startswith(PROVENANCE_PREFIX):
            continue
        if key == PROVENANCE_PREFIX + "source-uri":
            key, value = key + "-sha256", hashlib.sha256(value.encode("utf-8")).hexdigest()
        if len(value) <= 256 and set(value) <= _TAG_ALLOWED and len(tags) < MAX_TAGS:
            tags[key] = value
    return tags


def _encryption_and_md5(resp: Mapping[str, Any], etag: str | None) -> tuple[str | None, dict[str, str]]:
    """The object's encryption as a response reports it, and ``{"md5": ...}`` where its
    ETag is an MD5 (never for SSE-KMS / SSE-C or multipart)."""
    encryption = resp.get("ServerSideEncryption")
    if resp.get("SSECustomerAlgorithm"):
        encryption = "sse-c"
    md5 = checksums.md5_from_etag(etag, encryption)
    return encryption, ({"md5": md5} if md5 else {})


def _crc32c_b64(body: bytes) -> str:
    return checksums.hex_to_b64(checksums.crc32c_hex(body))


class _UploadConflict(ResidencyError):
    """A CompleteMultipartUpload was answered 409 ConditionalRequestConflict.

    Not a TransientError, so the retry policy does not repeat the complete call
    alone: S3 wants a new multipart upload then. Raised as ``TransientError`` by
    the caller once the upload has been aborted.
    """

    def __init__(self, error: StoreError) -> None:
        super().__init__(str(error))
        self.error = error

    def restart(self, ref: ObjectRef) -> TransientError:
        """What the caller raises after aborting: the whole upload is worth retrying."""
        return TransientError(
            ref.uri, f"{self.error.reason}; the multipart upload was aborted and must start over"
        )


def translate(exc: Exception, uri: str) -> StoreError:
    """Turn a botocore exception into the project's own.

    ``409 ConditionalRequestConflict`` (a conditional write raced another one) is
    a ``TransientError``; ``412 PreconditionFailed`` stays ``PreconditionFailed``.
    Exceptions of no known kind (programming errors) are re-raised unchanged.
    """
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        reason = f"{code or status}: {err.get('Message') or exc}"
        if code in _NO_BUCKET:
            return BucketNotFound(uri, reason)
        if code in _NOT_FOUND or (not code and status == "404"):
            return ObjectNotFound(uri, reason)
        if code in _DENIED or status == "403":
            return PermissionDenied(uri, reason)
        if code in _PRECONDITION or status == "412":
            return PreconditionFailed(uri, reason)
        if code in _TRANSIENT or status in _TRANSIENT:
            return TransientError(uri, reason)
        return StoreError(uri, reason)
    if isinstance(
        exc, (BotoConnectionError, HTTPClientError, ReadTimeoutError, ResponseStreamingError)
    ):
        return TransientError(uri, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return TransientError(uri, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, BotoCoreError):
        return StoreError(uri, f"{type(exc).__name__}: {exc}")
    raise exc


class S3Store:
    """S3 buckets through boto3.

    Args:
        client_for_region: returns a boto3 S3 client for a region name.
        default_region: region of the client used to discover bucket regions.
        transfer: multipart sizes.
        retry: retry policy for transient errors.
        service: the endpoint URL of an S3-compatible server, or "aws".
        validates_upload_checksums: False for servers that store a client's
            checksum without checking it (moto, some S3-compatible stores).
        list_page_size: keys per listing request, 1-1000.
        create_only_copies: the server refuses a CopyObject onto an existing key
            when asked (``If-None-Match: *``); default: only AWS itself. moto
            ignores the header, so the copy engine lists the destination first.

    Raises:
        ValueError: ``list_page_size`` is outside 1-1000.
    """

    provider = "s3"
    capabilities = Capabilities(
        server_side_copy=True, create_only_writes=True, versioned_reads=True
    )

    def __init__(
        self,
        client_for_region: Callable[[str], Any],
        default_region: str = "us-east-1",
        transfer: S3TransferConfig | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        service: str = "aws",
        list_page_size: int = S3_MAX_LIST_PAGE,
        validates_upload_checksums: bool = True,
        create_only_copies: bool | None = None,
    ) -> None:
        if not 1 <= list_page_size <= S3_MAX_LIST_PAGE:
            raise ValueError(
                f"list_page_size must be within 1-{S3_MAX_LIST_PAGE} (S3's page limit), got {list_page_size}"
            )
        if not validates_upload_checksums:
            self.capabilities = replace(self.capabilities, validates_upload_checksums=False)
        if create_only_copies if create_only_copies is not None else service == "aws":
            self.capabilities = replace(self.capabilities, create_only_copies=True)
        self.list_page_size = list_page_size
        #: Which S3 service this is (an endpoint URL, or "aws"): server-side copy
        #: is only attempted between stores of the same service.
        self.service = service
        self._client_for_region = client_for_region
        self._clients: dict[str, Any] = {}
        # Worker threads share one client per region (boto3 clients are thread-safe);
        # without the lock, every thread that misses the cache at once builds its own.
        self._clients_lock = threading.Lock()
        self._regions_lock = threading.Lock()
        self._bucket_regions: dict[str, str] = {}
        self.default_region = default_region
        self.transfer = transfer or S3TransferConfig()
        self.retry = retry

    # -- plumbing ---------------------------------------------------------
    def _client(self, region: str | None = None) -> Any:
        region = region or self.default_region
        client = self._clients.get(region)
        if client is None:
            with self._clients_lock:
                client = self._clients.get(region)
                if client is None:
                    client = self._clients[region] = self._client_for_region(region)
        return client

    def _bucket_client(self, bucket: str) -> Any:
        if bucket not in self._bucket_regions:
            with self._regions_lock:  # one GetBucketLocation per bucket, not one per thread that starts at once
                if bucket not in self._bucket_regions:
                    self._bucket_regions[bucket] = self.placement(bucket).location
        return self._client(self._bucket_regions[bucket])

    def _call(self, what: str, uri: str, fn: Callable[[], Any]) -> Any:
        return self.retry.call_translated(what, uri, fn, translate)

    # -- protocol ---------------------------------------------------------
    def placement(self, bucket: str) -> Placement:
        uri = f"s3://{bucket}"
        resp = self._call(
            "get_bucket_location", uri, lambda: self._client().get_bucket_location(Bucket=bucket)
        )
        location = resp.get("LocationConstraint") or "us-east-1"
        self._bucket_regions[bucket] = placement_of("s3", location).location
        return placement_of("s3", location)

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectRef]:
        """Every key under ``prefix``, in key order (the refs of :meth:`list_entries`)."""
        for entry in self.list_entries(bucket, prefix):
            yield entry.ref

    def list_entries(
        self, bucket: str, prefix: str = "", *, with_version: bool = False, start_at: str | None = None
    ) -> Iterator[Listed]:
        """The live object of every key under ``prefix``, one request per page of ``list_page_size``.

        With ``start_at``, keys before it are not listed (ListObjectsV2 ``StartAfter``
        the key minus its last character, so that ``start_at`` itself is included;
        the few keys between are skipped here). A caller that stops iterating stops
        the requests.

        ListObjectsV2 (``version`` None); with ``with_version``, ListObjectVersions,
        yielding the entry S3 marks ``IsLatest`` for each key: older versions (also
        those that continue on a later page) and keys whose latest entry is a
        delete marker are skipped, and VersionId ``"null"`` (an unversioned bucket)
        is None. Checksums are always empty: a listed ETag is not known to be an
        MD5 (SSE-KMS / SSE-C), and listings carry no CRC values. Each page is
        retried alone; the first call also discovers the bucket's region (one
        GetBucketLocation, cached).

        Raises:
            BucketNotFound, PermissionDenied, TransientError: as the listing
                request (or the region discovery) answers.
        """
        client = self._bucket_client(bucket)
        uri = f"s3://{bucket}/{prefix}"
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": self.list_page_size}
        if start_at and start_at[:-1] > prefix:
            kwargs["StartAfter" if not with_version else "KeyMarker"] = start_at[:-1]
        if not with_version:
            while True:
                page = self._call("list_objects_v2", uri, lambda kwargs=dict(kwargs): client.list_objects_v2(**kwargs))
                for item in page.get("Contents", []):
                    if start_at is None or item["Key"] >= start_at:
                        yield _listed(bucket, item)
                if not page.get("IsTruncated"):
                    return
                kwargs["ContinuationToken"] = page["NextContinuationToken"]
        while True:
            page = self._call(
                "list_object_versions", uri, lambda kwargs=dict(kwargs): client.list_object_versions(**kwargs)
            )
            # Versions come in key order, newest first within a key, and exactly one
            # entry per key (a version or a delete marker) is the latest: it is on
            # the first page that has the key. Delete markers are listed apart.
            for item in page.get("Versions", []):
                if item.get("IsLatest") and (start_at is None or item["Key"] >= start_at):
                    yield _listed(bucket, item)
            if not page.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = page["NextKeyMarker"]
            if page.get("NextVersionIdMarker"):
                kwargs["VersionIdMarker"] = page["NextVersionIdMarker"]
            else:
                kwargs.pop("VersionIdMarker", None)

    def versioning_enabled(self, bucket: str) -> bool:
        client = self._bucket_client(bucket)
        resp = self._call("get_bucket_versioning", f"s3://{bucket}", lambda: client.get_bucket_versioning(Bucket=bucket))
        return resp.get("Status") == "Enabled"

    def stat(self, ref: ObjectRef, version: str | None = None) -> ObjectInfo:
        client = self._bucket_client(ref.bucket)
        kwargs: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key, "ChecksumMode": "ENABLED"}
        if version:
            kwargs["VersionId"] = version
        resp = self._call("head_object", ref.uri, lambda: client.head_object(**kwargs))
        return self._info(ref, resp)

    def _info(self, ref: ObjectRef, resp: Mapping[str, Any]) -> ObjectInfo:
        etag = resp.get("ETag")
        encryption, found = _encryption_and_md5(resp, etag)
        composite = resp.get("ChecksumType") == "COMPOSITE"
        for field_name, algorithm in _CHECKSUM_FIELDS.items():
            value = resp.get(field_name)
            if value and not composite and "-" not in value:
                found[algorithm] = checksums.b64_to_hex(value)
        headers = {h: resp[p] for h, p in _HEADER_PARAMS.items() if resp.get(p)}
        last_modified = resp.get("LastModified")
        version = resp.get("VersionId")
        return ObjectInfo(
            ref=ref,
            size=int(resp.get("ContentLength", 0)),
            etag=etag,
            version=None if version in (None, "null") else version,
            content_type=resp.get("ContentType"),
            checksums=found,
            metadata=dict(resp.get("Metadata") or {}),
            headers=headers,
            last_modified=last_modified.isoformat() if last_modified else None,
            multipart=bool(etag and "-" in etag.strip('"')),
            encryption=encryption,
        )

    def read(
        self, ref: ObjectRef, version: str | None = None, chunk_size: int = 1024 * 1024
    ) -> Iterator[bytes]:
        """Ranged reads of ``transfer.read_chunk`` bytes each, every range retried alone.

        A pinned ``version`` is read by VersionId; the ETag of the first range is
        then required of every later range, so a body never mixes two versions.
        """
        client = self._bucket_client(ref.bucket)
        offset, size, etag = 0, None, None
        while size is None or offset < size:
            end = offset + self.transfer.read_chunk - 1
            kwargs: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key, "Range": f"bytes={offset}-{end}"}
            if version:
                kwargs["VersionId"] = version
            if etag:
                kwargs["IfMatch"] = etag

            def fetch(kwargs: dict[str, Any] = kwargs) -> tuple[bytes, Mapping[str, Any]]:
                resp = client.get_object(**kwargs)
                return resp["Body"].read(), resp

            try:
                body, resp = self._call("get_object", ref.uri, fetch)
            except PreconditionFailed as exc:
                raise SourceChanged(ref.uri, f"object changed while being read: {exc.reason}") from exc
            except StoreError as exc:
                if size is None and "InvalidRange" in exc.reason:
                    return  # empty object
                raise
            if size is None:
                content_range = resp.get("ContentRange") or ""
                size = int(content_range.rsplit("/", 1)[-1]) if "/" in content_range else len(body)
                etag = resp.get("ETag")
            for i in range(0, len(body), chunk_size):
                yield body[i : i + chunk_size]
            if not body:
                break
            offset += len(body)

    def write(
        self,
        ref: ObjectRef,
        chunks: Iterable[bytes],
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        create_only: bool = True,
        size: int | None = None,
        expected: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Stream ``chunks`` to S3 holding at most about two parts in memory.

        A single PutObject up to ``stream_part_size`` (buffered; never more than
        ``multipart_threshold``), a multipart upload of such parts above it (at once
        when ``size`` says so), so a copy's memory does not grow with the object.
        The returned info is built from the response (ETag, CRC32C, version) and
        what was sent (size, content type, headers, metadata): no HEAD after it. CRC32C is computed here (google-crc32c)
        and sent with every request so that S3 rejects a body corrupted on the way;
        multipart uploads carry a FULL_OBJECT CRC32C. When ``expected`` (the
        source's checksums) is given, the bytes are checked against it *before*
        the object is created: a corrupted read never becomes an object.

        ``create_only`` sends ``If-None-Match: *``: an existing key raises
        ``PreconditionFailed`` (412). A ``409 ConditionalRequestConflict`` (the
        write raced another write of the key) is retried like any transient
        error; on a multipart complete it aborts the upload and raises
        ``TransientError``, since S3 then wants the whole upload again.
        """
        client = self._bucket_client(ref.bucket)
        common: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key, "Metadata": dict(metadata or {})}
        if content_type:
            common["ContentType"] = content_type
        for header, value in (headers or {}).items():
            if header in _HEADER_PARAMS:
                common[_HEADER_PARAMS[header]] = value
        hasher = checksums.MultiHasher(("md5", "crc32c"))
        iterator = iter(chunks)
        limit = min(self.transfer.multipart_threshold, self.transfer.stream_part_size)
        if size is not None and size > limit:
            return self._multipart_write(ref, client, common, [], iterator, create_only, hasher, expected, size)
        pending: list[bytes] = []
        held = 0
        for chunk in iterator:
            pending.append(chunk)
            held += len(chunk)
            if held > limit:
                return self._multipart_write(ref, client, common, pending, iterator, create_only, hasher, expected, size)
        body = b"".join(pending)
        hasher.update(body)
        _check_expected(ref, hasher, expected)
        # Our own CRC32C (google-crc32c), sent with the body: S3 rejects a body
        # that arrives corrupted, and botocore would need awscrt to compute it.
        kwargs = dict(common, Body=body, ChecksumAlgorithm="CRC32C", ChecksumCRC32C=_crc32c_b64(body))
        if create_only:
            kwargs["IfNoneMatch"] = "*"
        resp = self._call("put_object", ref.uri, lambda: client.put_object(**kwargs))
        return self._uploaded(ref, resp, len(body), common)

    def _multipart_write(
        self,
        ref: ObjectRef,
        client: Any,
        common: dict[str, Any],
        pending: list[bytes],
        rest: Iterator[bytes],
        create_only: bool,
        hasher: checksums.MultiHasher,
        expected: Mapping[str, str] | None,
        size: int | None,
    ) -> ObjectInfo:
        part_size = self.transfer.part_size_for(size or 0, self.transfer.stream_part_size)
        upload = self._call(
            "create_multipart_upload",
            ref.uri,
            lambda: client.create_multipart_upload(**common, ChecksumAlgorithm="CRC32C", ChecksumType="FULL_OBJECT"),
        )
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []

        def send(body: bytes) -> None:
            number = len(parts) + 1
            hasher.update(body)
            resp = self._call(
                "upload_part",
                ref.uri,
                lambda: client.upload_part(
                    Bucket=ref.bucket, Key=ref.key, UploadId=upload_id, PartNumber=number,
                    Body=body, ChecksumAlgorithm="CRC32C", ChecksumCRC32C=_crc32c_b64(body),
                ),
            )
            part = {"PartNumber": number, "ETag": resp["ETag"]}
            if resp.get("ChecksumCRC32C"):
                part["ChecksumCRC32C"] = resp["ChecksumCRC32C"]
            parts.append(part)

        try:
            held = sum(len(c) for c in pending)
            for chunk in rest:
                pending.append(chunk)
                held += len(chunk)
                if held >= part_size:
                    joined = b"".join(pending)
                    pending, held = [], 0
                    for start in range(0, len(joined) - part_size + 1, part_size):
                        send(joined[start : start + part_size])
                    tail = joined[len(joined) - len(joined) % part_size :]
                    del joined
                    if tail:
                        pending, held = [tail], len(tail)
            if pending or not parts:
                send(b"".join(pending))
            _check_expected(ref, hasher, expected)
            kwargs: dict[str, Any] = {
                "Bucket": ref.bucket, "Key": ref.key, "UploadId": upload_id,
                "MultipartUpload": {"Parts": parts},
                "ChecksumCRC32C": checksums.hex_to_b64(hasher.hexdigests()["crc32c"]),
                "ChecksumType": "FULL_OBJECT",
            }
            if create_only:
                kwargs["IfNoneMatch"] = "*"
            resp = self._complete(client, ref, kwargs)
        except BaseException as exc:
            self._abort(client, ref, upload_id)
            if isinstance(exc, _UploadConflict):
                raise exc.restart(ref) from exc
            raise
        return self._uploaded(ref, resp, hasher.size, common)

    def _uploaded(self, ref: ObjectRef, resp: Mapping[str, Any], size: int, sent: Mapping[str, Any]) -> ObjectInfo:
        """The new object as the upload's response and request describe it."""
        info = self._copied(ref, ObjectInfo(ref=ref, size=size, content_type=sent.get("ContentType")), resp,
                            resp.get("ETag"), resp.get("ChecksumCRC32C"))
        headers = {h: sent[p] for h, p in _HEADER_PARAMS.items() if sent.get(p)}
        return replace(info, metadata=dict(sent.get("Metadata") or {}), headers=headers, metadata_known=True)

    def _complete(self, client: Any, ref: ObjectRef, kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        """CompleteMultipartUpload, retried alone on transient errors but never on a 409 conflict.

        S3 answers ``409 ConditionalRequestConflict`` when a conditional complete
        races another write, and then wants a new multipart upload, not the same
        complete again: that raises :class:`_UploadConflict` for the caller to
        abort the upload.
        """

        def complete() -> Any:
            try:
                return client.complete_multipart_upload(**kwargs)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == _CONFLICT:
                    raise _UploadConflict(translate(exc, ref.uri)) from exc
                raise

        return self._call("complete_multipart_upload", ref.uri, complete)

    def _abort(self, client: Any, ref: ObjectRef, upload_id: str) -> None:
        try:
            client.abort_multipart_upload(Bucket=ref.bucket, Key=ref.key, UploadId=upload_id)
            log.info("aborted multipart upload %s of %s", upload_id, ref.uri)
        except Exception as exc:  # the original error matters more
            log.warning("could not abort multipart upload %s of %s: %s", upload_id, ref.uri, exc)

    def copy(
        self,
        src: ObjectInfo,
        dst: ObjectRef,
        *,
        metadata: Mapping[str, str],
        create_only: bool = True,
    ) -> ObjectInfo:
        """One CopyObject (multipart copy above the threshold) whose answer is returned.

        The returned info is built from the response alone, no HEAD: the new
        object's ETag (an MD5 unless the response says SSE-KMS / SSE-C), its
        CRC32C (asked for with ``ChecksumAlgorithm``), version and encryption; its
        size is the pinned source's. Where ``src.metadata_known`` is False (built
        from a listing, which carries no metadata), the server keeps the source's
        own content type, headers and user metadata (``MetadataDirective=COPY``) and
        the provenance goes into object tags (:func:`provenance_tags`).
        """
        client = self._bucket_client(dst.bucket)
        source: dict[str, Any] = {"Bucket": src.ref.bucket, "Key": src.ref.key}
        if src.version:
            source["VersionId"] = src.version
        common: dict[str, Any] = {"Bucket": dst.bucket, "Key": dst.key}
        if src.metadata_known:
            common.update(self._replacing(src, metadata))
        tagging = {} if src.metadata_known else {
            "TaggingDirective": "REPLACE", "Tagging": urlencode(provenance_tags(metadata)),
        }
        try:
            if src.size <= self.transfer.multipart_threshold:
                kwargs = dict(
                    common, CopySource=source, ChecksumAlgorithm="CRC32C", **tagging,
                    MetadataDirective="REPLACE" if src.metadata_known else "COPY",
                )
                if src.etag:
                    kwargs["CopySourceIfMatch"] = src.etag
                if create_only:
                    kwargs["IfNoneMatch"] = "*"
                resp = self._call("copy_object", dst.uri, lambda: client.copy_object(**kwargs))
                result = resp.get("CopyObjectResult") or {}
                return self._copied(dst, src, resp, result.get("ETag"), result.get("ChecksumCRC32C"))
            if not src.metadata_known:
                # CreateMultipartUpload has no metadata directive: it needs what a HEAD says.
                src = self.stat(src.ref, version=src.version)
                kept = {k: v for k, v in src.metadata.items() if not k.startswith(PROVENANCE_PREFIX)}
                common.update(self._replacing(src, {**kept, **metadata}))
            resp = self._multipart_copy(client, src, source, dst, common, create_only)
            return self._copied(dst, src, resp, resp.get("ETag"), resp.get("ChecksumCRC32C"))
        except ObjectNotFound as exc:
            raise SourceChanged(src.ref.uri, f"pinned source version is gone: {exc.reason}") from exc
        except PreconditionFailed as exc:
            # S3 answers the same 412 for the source ETag condition and for
            # If-None-Match on the destination: ask the source which one it was.
            try:
                now = self.stat(src.ref, version=src.version)
            except ObjectNotFound:
                raise SourceChanged(src.ref.uri, f"pinned source version is gone: {exc.reason}") from exc
            if now.etag != src.etag:
                raise SourceChanged(src.ref.uri, f"ETag is now {now.etag}, pinned {src.etag}") from exc
            raise

    @staticmethod
    def _replacing(src: ObjectInfo, metadata: Mapping[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {"Metadata": dict(metadata)}
        if src.content_type:
            out["ContentType"] = src.content_type
        for header, value in src.headers.items():
            if header in _HEADER_PARAMS:
                out[_HEADER_PARAMS[header]] = value
        return out

    def _copied(
        self, dst: ObjectRef, src: ObjectInfo, resp: Mapping[str, Any], etag: str | None, crc32c: str | None
    ) -> ObjectInfo:
        """The new object as a copy's response describes it (see :meth:`copy`)."""
        encryption, found = _encryption_and_md5(resp, etag)
        if crc32c and "-" not in crc32c and resp.get("ChecksumType") != "COMPOSITE":
            found["crc32c"] = checksums.b64_to_hex(crc32c)
        version = resp.get("VersionId")
        return ObjectInfo(
            ref=dst, size=src.size, etag=etag, version=None if version in (None, "null") else version,
            content_type=src.content_type, checksums=found, multipart=bool(etag and "-" in etag.strip('"')),
            encryption=encryption, metadata_known=False,
        )

    def tag_provenance(self, ref: ObjectRef) -> dict[str, str]:
        """The provenance a listed copy recorded as tags (see :func:`provenance_tags`), without the prefix."""
        client = self._bucket_client(ref.bucket)
        resp = self._call("get_object_tagging", ref.uri,
                          lambda: client.get_object_tagging(Bucket=ref.bucket, Key=ref.key))
        return {t["Key"][len(PROVENANCE_PREFIX):]: t["Value"] for t in resp.get("TagSet", [])
                if t["Key"].startswith(PROVENANCE_PREFIX)}

    def _multipart_copy(
        self,
        client: Any,
        src: ObjectInfo,
        source: dict[str, Any],
        dst: ObjectRef,
        common: dict[str, Any],
        create_only: bool,
    ) -> Mapping[str, Any]:
        part_size = self.transfer.part_size_for(src.size)
        upload = self._call(
            "create_multipart_upload",
            dst.uri,
            lambda: client.create_multipart_upload(**common, ChecksumAlgorithm="CRC32C", ChecksumType="FULL_OBJECT"),
        )
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            for number, start in enumerate(range(0, src.size, part_size), start=1):
                end = min(start + part_size, src.size) - 1
                kwargs: dict[str, Any] = {
                    "Bucket": dst.bucket, "Key": dst.key, "UploadId": upload_id,
                    "PartNumber": number, "CopySource": source,
                    "CopySourceRange": f"bytes={start}-{end}",
                }
                if src.etag:
                    kwargs["CopySourceIfMatch"] = src.etag
                resp = self._call(
                    "upload_part_copy", dst.uri, lambda kwargs=kwargs: client.upload_part_copy(**kwargs)
                )
                result = resp["CopyPartResult"]
                part = {"PartNumber": number, "ETag": result["ETag"]}
                if result.get("ChecksumCRC32C"):
                    part["ChecksumCRC32C"] = result["ChecksumCRC32C"]
                parts.append(part)
                log.debug("copied part %d (%d-%d) of %s", number, start, end, src.ref.uri)
            complete: dict[str, Any] = {
                "Bucket": dst.bucket, "Key": dst.key, "UploadId": upload_id,
                "MultipartUpload": {"Parts": parts},
            }
            if create_only:
                complete["IfNoneMatch"] = "*"
            return self._complete(client, dst, complete)
        except BaseException as exc:
            self._abort(client, dst, upload_id)
            if isinstance(exc, _UploadConflict):
                raise exc.restart(dst) from exc
            raise

    def delete(self, ref: ObjectRef, version: str | None = None) -> None:
        client = self._bucket_client(ref.bucket)
        kwargs: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
        if version:
            kwargs["VersionId"] = version
        self._call("delete_object", ref.uri, lambda: client.delete_object(**kwargs))
