"""Google Cloud Storage behind the store protocol.

The client is injected (s3transfer's habit): :mod:`residency.connections` builds
it from an Airflow connection, the tests from :class:`~residency.localcloud.servers.FakeGcsServer`.

Retrying belongs to :class:`~residency.retry.RetryPolicy`: every library call is
made with ``retry=None`` so that attempts never multiply, and every exception is
translated at this boundary by :func:`translate`.

What the checksums prove (see :mod:`residency.checksums`): ``crc32c`` is always
present and always a whole-object hash; ``md5Hash`` is absent for composite
objects (``componentCount`` set) and is then never reported. Uploads carry a
CRC32C to the server (``x-goog-hash`` on the last chunk of a resumable upload,
``crc32c`` in the metadata of a single-request upload), so GCS refuses bytes
damaged on the wire; and the CRC32C we computed while reading the caller's
chunks is compared with what the server reports afterwards: a mismatch deletes
exactly the generation just written and raises :class:`~residency.errors.ChecksumMismatch`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, replace
from datetime import timezone
from typing import Any, Callable, Iterable, Iterator, Mapping

import requests
import urllib3.exceptions
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

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
from .base import CONTENT_HEADERS, Capabilities, Listed, ObjectInfo

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
#: Resumable upload chunks must be multiples of this (GCS JSON API).
GCS_CHUNK_QUANTUM = 256 * KiB
#: Largest GCS object, so the largest rewrite.
GCS_MAX_OBJECT = 5 * 1024**4
#: Bodies up to this size go in one multipart request (the library's own limit for that).
SINGLE_REQUEST_MAX = 8 * MiB
#: Most objects one objects.list request returns.
GCS_MAX_LIST_PAGE = 1000
#: What a listing page asks for (objects.list ``fields``): all that :class:`Listed` holds,
#: content type, user metadata and content headers included, so that a copy needs no HEAD.
LIST_FIELDS = (
    "items(name,size,etag,generation,updated,crc32c,md5Hash,componentCount,"
    "contentType,metadata,cacheControl,contentDisposition,contentEncoding,contentLanguage),nextPageToken"
)

# header name -> Blob attribute
_HEADER_ATTRS = {
    "cache-control": "cache_control",
    "content-disposition": "content_disposition",
    "content-encoding": "content_encoding",
    "content-language": "content_language",
}
# header name -> field of the JSON API object resource
_HEADER_FIELDS = {
    "cache-control": "cacheControl",
    "content-disposition": "contentDisposition",
    "content-encoding": "contentEncoding",
    "content-language": "contentLanguage",
}
_TRANSIENT = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
)
_CONNECTION_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    auth_exceptions.TransportError,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True)
class GcsTransferConfig:
    """Sizes of uploads and ranged reads. Validates itself.

    Args:
        chunk_size: bytes per resumable-upload request; a multiple of 256 KiB.
            Bodies that end within one chunk (and 8 MiB) go in a single request.
            Memory per write is a small multiple of this.
        read_chunk: bytes per ranged download; each range is retried on its own.
        timeout: seconds per HTTP request.
    """

    chunk_size: int = 8 * MiB
    read_chunk: int = 8 * MiB
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.chunk_size <= 0 or self.chunk_size % GCS_CHUNK_QUANTUM:
            raise ValueError(f"chunk_size must be a positive multiple of 256 KiB, got {self.chunk_size}")
        if self.read_chunk <= 0:
            raise ValueError(f"read_chunk must be positive, got {self.read_chunk}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")

    @property
    def single_request_max(self) -> int:
        return min(self.chunk_size, SINGLE_REQUEST_MAX)


def _is_bucket_uri(uri: str) -> bool:
    return "/" not in uri.split("://", 1)[-1]


def _response_reason(response: Any) -> str:
    try:
        body = response.json()
        return str(body.get("error", {}).get("message") or body)
    except ValueError:
        return (response.text or "").strip()[:200]


def translate(exc: Exception, uri: str) -> StoreError:
    """Turn a google-cloud-storage / google-auth / requests exception into the project's own.

    A 404 is ``BucketNotFound`` when ``uri`` names a bucket or the server says the
    bucket does not exist, else ``ObjectNotFound``. Exceptions of no known kind
    (programming errors) are re-raised unchanged.
    """
    if isinstance(exc, DataCorruption):
        return ChecksumMismatch(uri, f"the server's checksum differs from the bytes sent: {exc}")
    if isinstance(exc, InvalidResponse) and getattr(exc, "response", None) is not None:
        # The media layer (resumable uploads driven here) raises its own type.
        status = exc.response.status_code
        exc = gexc.from_http_status(status, f"{_response_reason(exc.response)} ({exc})", response=exc.response)
    if isinstance(exc, gexc.GoogleAPICallError):
        reason = f"{exc.code}: {exc.message}"
        if isinstance(exc, gexc.NotFound):
            if _is_bucket_uri(uri) or "bucket does not exist" in str(exc.message).lower():
                return BucketNotFound(uri, reason)
            return ObjectNotFound(uri, reason)
        if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized)):
            return PermissionDenied(uri, reason)
        if isinstance(exc, gexc.PreconditionFailed):
            return PreconditionFailed(uri, reason)
        if isinstance(exc, _TRANSIENT) or exc.code == 408:
            return TransientError(uri, reason)
        return StoreError(uri, reason)
    if isinstance(exc, auth_exceptions.RefreshError):
        # A key that was deleted or disabled cannot mint a token: that is a denial.
        if getattr(exc, "retryable", False):
            return TransientError(uri, f"{type(exc).__name__}: {exc}")
        return PermissionDenied(uri, f"credentials refused: {exc}")
    if isinstance(exc, _CONNECTION_ERRORS):
        return TransientError(uri, f"{type(exc).__name__}: {exc}")
    raise exc


def placement_from_bucket(
    location: str | None, location_type: str | None = None, data_locations: Iterable[str] | None = None
) -> Placement:
    """Where a bucket is, from what the Buckets API reports.

    A custom dual-region reports its multi-region code as ``location`` and its two
    regions in ``customPlacementConfig.dataLocations``: it is in one country only
    when both regions are. Everything else maps through
    :func:`~residency.jurisdictions.placement_of` (``ASIA1`` is Japan, ``ASIA`` is
    several countries).
    """
    regions = sorted({r.strip().lower() for r in (data_locations or []) if r and r.strip()})
    if (location_type or "").lower() == "dual-region" and regions:
        parts = [placement_of("gs", region) for region in regions]
        countries = {p.jurisdiction for p in parts}
        name = "+".join(regions)
        described = " + ".join(f"{p.location} ({p.jurisdiction or 'unknown'})" for p in parts)
        if len(countries) == 1 and None not in countries:
            country = next(iter(countries))
            return Placement("gs", name, country, f"custom dual-region {described}")
        return Placement("gs", name, None, f"custom dual-region {described}: not within one country")
    return placement_of("gs", location or "")


class _SourceFailed(ResidencyError):
    """The iterator being uploaded raised. Not a TransientError, so never retried
    here: a retried request would find the generator finished and upload a
    truncated object. :meth:`GcsStore.write` re-raises ``error`` as it was."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"source of the upload failed: {error}")
        self.error = error


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks, for a resumable upload.

    The upload library reads one chunk per request with ``read(chunk_size)`` and,
    after a failed request, seeks back to the last byte the server confirmed; that
    is never before the start of the chunk being sent. So only the bytes from the
    start of the latest read are kept: memory stays about one chunk. Every byte
    pulled from the iterator is hashed once, in order, by ``hasher``.
    """

    def __init__(self, chunks: Iterator[bytes], hasher: checksums.MultiHasher, prefix: bytes = b"") -> None:
        super().__init__()
        self._chunks = chunks
        self._hasher = hasher
        self._window = bytearray(prefix)  # bytes [self._start, self._start + len(self._window))
        self._start = 0
        self._pos = 0
        self.exhausted = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # within the retained window only

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("the end of a stream being uploaded is not known")
        if not self._start <= offset <= self._start + len(self._window):
            raise io.UnsupportedOperation(
                f"cannot seek to {offset}: only bytes {self._start}-{self._start + len(self._window)} are kept"
            )
        self._pos = offset
        return offset

    def readinto(self, buffer: Any) -> int:
        # Bytes before the read position were confirmed by the server: drop them.
        confirmed = self._pos - self._start
        if confirmed:
            del self._window[:confirmed]
            self._start = self._pos
        want = len(buffer)
        while len(self._window) < want and not self.exhausted:
            try:
                chunk = next(self._chunks, None)
            except Exception as exc:
                raise _SourceFailed(exc) from exc
            if chunk is None:
                self.exhausted = True
            elif chunk:
                self._hasher.update(chunk)
                self._window.extend(chunk)
        n = min(want, len(self._window))
        buffer[:n] = self._window[:n]
        self._pos += n
        return n


class GcsStore:
    """GCS buckets through google-cloud-storage.

    Args:
        client: a ``google.cloud.storage.Client`` (see :meth:`GcsCredentials.client`).
        transfer: upload chunk and ranged-read sizes.
        retry: retry policy for transient errors.
        service: which GCS service this is ("google", or an emulator's endpoint URL):
            server-side copy is only attempted between stores of the same service.
        list_page_size: objects per listing request, 1-1000 (the JSON API's limit).
        create_only_copies: the server refuses a rewrite onto an existing object
            when asked (``ifGenerationMatch=0``); default: only Google itself.
            fake-gcs-server (1.54) ignores every precondition of a rewrite and
            overwrites, so the copy engine lists the destination first there.

    Raises:
        ValueError: ``list_page_size`` is outside 1-1000.
    """

    provider = "gs"
    capabilities = Capabilities(
        server_side_copy=True, create_only_writes=True, versioned_reads=True, max_single_copy=GCS_MAX_OBJECT
    )

    def __init__(
        self,
        client: Any,
        *,
        transfer: GcsTransferConfig | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        service: str = "google",
        list_page_size: int = GCS_MAX_LIST_PAGE,
        create_only_copies: bool | None = None,
    ) -> None:
        if not 1 <= list_page_size <= GCS_MAX_LIST_PAGE:
            raise ValueError(
                f"list_page_size must be within 1-{GCS_MAX_LIST_PAGE} (GCS's page limit), got {list_page_size}"
            )
        if create_only_copies if create_only_copies is not None else service == "google":
            self.capabilities = replace(self.capabilities, create_only_copies=True)
        self.client = client
        self.transfer = transfer or GcsTransferConfig()
        self.retry = retry
        self.service = service
        self.list_page_size = list_page_size

    # -- plumbing ---------------------------------------------------------
    def _call(self, what: str, uri: str, fn: Callable[[], Any]) -> Any:
        return self.retry.call_translated(what, uri, fn, translate)

    def _blob(self, ref: ObjectRef, version: str | None = None) -> Any:
        return self.client.bucket(ref.bucket).blob(ref.key, generation=_generation(version))

    # -- protocol ---------------------------------------------------------
    def placement(self, bucket: str) -> Placement:
        b = self._call(
            "get bucket", f"gs://{bucket}",
            lambda: self.client.get_bucket(bucket, retry=None, timeout=self.transfer.timeout),
        )
        return placement_from_bucket(b.location, b.location_type, b.data_locations)

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectRef]:
        """Every key under ``prefix``, in key order (the refs of :meth:`list_entries`)."""
        for entry in self.list_entries(bucket, prefix):
            yield entry.ref

    def list_entries(
        self, bucket: str, prefix: str = "", *, with_version: bool = False, start_at: str | None = None
    ) -> Iterator[Listed]:
        """The live object of every key under ``prefix``: objects.list, one request per page.

        With ``start_at``, keys before it are not listed (objects.list
        ``startOffset``, which includes ``start_at`` itself; keys before it are
        also skipped here, should a server ignore the parameter). A caller that
        stops iterating stops the requests.

        Each page asks for ``list_page_size`` objects and only the fields of
        :data:`LIST_FIELDS`, and is retried alone. Every entry carries its
        generation and ``crc32c``; ``md5`` too unless the object is composite
        (``componentCount`` set), exactly as :meth:`stat` reports them; and its
        content type, user metadata (``{}`` when it has none) and the
        :data:`~.base.CONTENT_HEADERS` it has, all that :meth:`copy` needs.
        ``with_version`` changes nothing: without ``versions=true`` GCS lists
        live objects only, each with its generation. (google-cloud-storage 3.17
        also fetches a bucket's metadata once per client, on a background thread,
        the first time a call names the bucket, unless
        ``DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA`` is true: once per
        bucket, not per page.)

        Raises:
            BucketNotFound: the bucket does not exist.
            PermissionDenied, TransientError: as the listing request answers.
        """
        token: str | None = None
        while True:
            def fetch(token: str | None = token) -> tuple[list[Listed], str | None]:
                blobs = self.client.list_blobs(
                    bucket, prefix=prefix or None, page_size=self.list_page_size, page_token=token,
                    start_offset=start_at or None, fields=LIST_FIELDS, retry=None, timeout=self.transfer.timeout,
                )
                page = next(blobs.pages, None)  # one request: this page only
                entries = [_listed(bucket, blob) for blob in page] if page is not None else []
                if start_at:
                    entries = [e for e in entries if e.ref.key >= start_at]
                return entries, blobs.next_page_token

            # The bucket URI: a 404 from a listing always means the bucket is missing.
            entries, token = self._call("list objects", f"gs://{bucket}", fetch)
            yield from entries
            if not token:
                return

    def stat(self, ref: ObjectRef, version: str | None = None) -> ObjectInfo:
        blob = self._blob(ref, version)
        self._call(
            "get object", ref.uri,
            lambda: blob.reload(projection="noAcl", retry=None, timeout=self.transfer.timeout),
        )
        return self._info(ref, blob)

    @staticmethod
    def _info(ref: ObjectRef, blob: Any) -> ObjectInfo:
        props: Mapping[str, Any] = blob._properties
        composite = blob.component_count is not None
        found = _proven_checksums(blob)
        headers = _headers(blob)
        encryption = None
        if props.get("customerEncryption"):
            encryption = "customer-supplied"
        elif blob.kms_key_name:
            encryption = "cloud-kms"
        updated = blob.updated
        return ObjectInfo(
            ref=ref,
            size=int(blob.size or 0),
            etag=blob.etag,
            version=str(blob.generation) if blob.generation is not None else None,
            content_type=blob.content_type,
            checksums=found,
            metadata=dict(blob.metadata or {}),
            headers=headers,
            last_modified=updated.isoformat() if updated else None,
            multipart=composite,
            encryption=encryption,
        )

    def read(
        self, ref: ObjectRef, version: str | None = None, chunk_size: int = 1024 * 1024
    ) -> Iterator[bytes]:
        """Ranged reads of ``transfer.read_chunk`` bytes, each retried alone, all of one generation.

        The generation is ``version`` when given, else the live one at the start;
        every range names it, so a body never mixes two generations. If that
        generation disappears during the read (overwritten or deleted; without
        object versioning an overwrite deletes it) this raises ``SourceChanged``.
        A ``version`` that is already gone when the read starts raises
        ``SourceChanged`` too; a missing object without ``version``, ``ObjectNotFound``.
        Library checksum validation is off: a range has no whole-object hash, and
        the caller hashes the stream.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        try:
            info = self.stat(ref, version)
        except ObjectNotFound as exc:
            if version is None:
                raise
            raise SourceChanged(ref.uri, f"generation {version} no longer exists: {exc.reason}") from exc
        generation = int(info.version) if info.version else None
        offset = 0
        while offset < info.size:
            end = min(offset + self.transfer.read_chunk, info.size) - 1

            def fetch(start: int = offset, end: int = end) -> tuple[bytes, Any]:
                # A fresh Blob per attempt: a download overwrites the Blob's generation
                # with the response header, and a missing header would unpin the next request.
                blob = self._blob(ref, info.version)
                body = blob.download_as_bytes(
                    start=start, end=end, raw_download=True, checksum=None,
                    retry=None, timeout=self.transfer.timeout,
                )
                return body, blob.generation

            try:
                body, served = self._call("download range", ref.uri, fetch)
            except ObjectNotFound as exc:
                raise SourceChanged(
                    ref.uri, f"generation {generation} disappeared after {offset} of {info.size} bytes: {exc.reason}"
                ) from exc
            if served is not None and generation is not None and int(served) != generation:
                raise SourceChanged(ref.uri, f"range {offset}-{end} came from generation {served}, not {generation}")
            if len(body) != end - offset + 1:
                raise StoreError(
                    ref.uri, f"range {offset}-{end} returned {len(body)} bytes; the server ignored the range"
                )
            for i in range(0, len(body), chunk_size):
                yield body[i : i + chunk_size]
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
        """Stream ``chunks`` to ``ref``: one request up to a chunk, else a resumable upload.

        A resumable upload sends ``transfer.chunk_size`` bytes per request, each
        request retried alone (after asking the server how much it kept), so
        memory stays a small multiple of one chunk. ``create_only`` sends
        ``ifGenerationMatch=0``: an existing object raises ``PreconditionFailed``.
        CRC32C is computed while streaming and compared with the server's; on a
        mismatch the generation just written is deleted and ``ChecksumMismatch`` raised,
        and likewise when the bytes do not match ``expected`` (the source's checksums):
        a corrupted read never stays behind as an object. ``size`` is not needed:
        the upload mode follows from the stream.
        """
        hasher = checksums.MultiHasher(("crc32c", "md5"))
        iterator = iter(chunks)
        head = bytearray()
        for chunk in iterator:
            hasher.update(chunk)
            head.extend(chunk)
            if len(head) > self.transfer.single_request_max:
                break
        else:
            resource = self._single_request_upload(ref, bytes(head), content_type, metadata, headers, create_only)
            return self._verified(ref, resource, hasher, expected)
        reader = _ChunkReader(iterator, hasher, bytes(head))
        del head
        try:
            resource = self._resumable_upload(ref, reader, content_type, metadata, headers, create_only)
        except _SourceFailed as exc:
            raise exc.error  # e.g. SourceChanged from the source store's read()
        return self._verified(ref, resource, hasher, expected)

    def _blob_for_write(
        self,
        ref: ObjectRef,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> Any:
        blob = self._blob(ref)
        if content_type:
            blob.content_type = content_type
        if metadata:
            blob.metadata = dict(metadata)
        for header, value in (headers or {}).items():
            attr = _HEADER_ATTRS.get(header.lower())
            if attr and value:
                setattr(blob, attr, value)
        return blob

    def _single_request_upload(
        self,
        ref: ObjectRef,
        body: bytes,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        create_only: bool,
    ) -> Mapping[str, Any]:
        blob = self._blob_for_write(ref, content_type, metadata, headers)

        def put() -> Mapping[str, Any]:
            # A multipart upload: the library puts our CRC32C in the object
            # metadata and GCS refuses the object if the bytes do not match it.
            blob.upload_from_file(
                io.BytesIO(body), size=len(body), content_type=content_type,
                if_generation_match=0 if create_only else None, checksum="crc32c",
                retry=None, timeout=self.transfer.timeout,
            )
            return dict(blob._properties)

        return self._call("upload", ref.uri, put)

    def _resumable_upload(
        self,
        ref: ObjectRef,
        reader: _ChunkReader,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        create_only: bool,
    ) -> Mapping[str, Any]:
        blob = self._blob_for_write(ref, content_type, metadata, headers)
        upload, transport = self._call(
            "start resumable upload", ref.uri,
            lambda: blob._initiate_resumable_upload(
                self.client, reader, content_type, None,
                chunk_size=self.transfer.chunk_size,
                if_generation_match=0 if create_only else None,
                # The library sends its CRC32C of the whole stream with the last chunk
                # (x-goog-hash): GCS then refuses to finalize a corrupted object.
                checksum="crc32c",
                retry=None, timeout=self.transfer.timeout,
            ),
        )
        state: dict[str, Any] = {"failed": False, "final": None, "chunks": 0}

        def send() -> None:
            if state["failed"]:
                # A request failed: ask the server how much it kept; the reader seeks back there.
                try:
                    upload.recover(transport)
                except InvalidResponse as exc:
                    body = _json_or_empty(exc.response)
                    if exc.response is None or exc.response.status_code not in (200, 201) or not body.get("generation"):
                        raise
                    if reader.exhausted and int(body.get("size", -1)) == reader.tell():
                        # The last chunk had landed; only its answer was lost.
                        state["final"] = body
                        return
                    # A server that finalizes on a status check (fake-gcs-server
                    # does) has published a truncated object: remove exactly that one.
                    self._discard(
                        ref, body["generation"],
                        f"the server finalized the upload at {body.get('size')} bytes on a status check, "
                        f"{reader.tell()} bytes read so far",
                    )
                state["failed"] = False
            try:
                resp = upload.transmit_next_chunk(transport, timeout=self.transfer.timeout)
            except DataCorruption as exc:
                generation = _json_or_empty(exc.response).get("generation")
                self._discard(ref, generation, f"upload corrupted in transit: {exc}")
            except Exception:
                state["failed"] = True
                raise
            state["chunks"] += 1
            if upload.finished:
                state["final"] = resp.json()

        try:
            while state["final"] is None:
                self._call("upload chunk", ref.uri, send)
                log.debug("upload %s: %d bytes sent in %d chunks", ref.uri, upload.bytes_uploaded, state["chunks"])
        except BaseException:
            if state["final"] is None:
                self._cancel(ref, upload, transport)
            raise
        return state["final"]

    def _cancel(self, ref: ObjectRef, upload: Any, transport: Any) -> None:
        """Cancel an unfinished resumable session (DELETE on its URI), best effort."""
        try:
            resp = transport.request("DELETE", upload.resumable_url, timeout=self.transfer.timeout)
            log.info("upload %s: cancelled the resumable session after %d bytes (HTTP %s)",
                     ref.uri, upload.bytes_uploaded, resp.status_code)
        except Exception as exc:  # the original error matters more
            log.warning("upload %s: could not cancel the resumable session: %s", ref.uri, exc)

    def _verified(
        self,
        ref: ObjectRef,
        resource: Mapping[str, Any],
        hasher: checksums.MultiHasher,
        expected: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Compare the server's CRC32C and size with ours, and ours with the source's;
        never leave a mismatch behind."""
        generation = resource.get("generation")
        sent = hasher.hexdigests()
        algorithm = checksums.common_algorithm(dict(expected or {}), sent)
        if algorithm and expected and expected[algorithm] != sent[algorithm]:
            self._discard(
                ref, generation,
                f"bytes received from the source have {algorithm} {sent[algorithm]}, source says {expected[algorithm]}",
            )
        ours = sent["crc32c"]
        theirs = checksums.b64_to_hex(resource["crc32c"]) if resource.get("crc32c") else None
        size = int(resource.get("size", -1))
        if theirs != ours or size != hasher.size:
            self._discard(
                ref, generation,
                f"server has crc32c {theirs} and {size} bytes, we sent crc32c {ours} and {hasher.size} bytes",
            )
        return self.stat(ref, version=str(generation) if generation else None)

    def _discard(self, ref: ObjectRef, generation: Any, reason: str) -> None:
        """Delete exactly the generation we wrote (never a newer one), then raise ChecksumMismatch.

        ``ifGenerationMatch`` makes GCS refuse if someone replaced it meanwhile
        (fake-gcs-server ignores the condition on deletes and removes the live object).
        """
        if generation:
            try:
                self._call(
                    "delete corrupted upload", ref.uri,
                    lambda: self._blob(ref).delete(
                        if_generation_match=int(generation), retry=None, timeout=self.transfer.timeout
                    ),
                )
                log.error("upload %s: deleted generation %s because %s", ref.uri, generation, reason)
            except StoreError as exc:
                log.error(
                    "upload %s: could NOT delete corrupted generation %s (%s): %s",
                    ref.uri, generation, exc.reason, reason,
                )
        raise ChecksumMismatch(ref.uri, reason)

    def copy(
        self,
        src: ObjectInfo,
        dst: ObjectRef,
        *,
        metadata: Mapping[str, str],
        create_only: bool = True,
    ) -> ObjectInfo:
        """Server-side rewrite of generation ``src.version``: one request, whose answer is the proof.

        The request body is the destination resource: ``src``'s content type and
        content headers (as a listing reports them) and ``metadata`` as the whole
        user metadata. The request names the source generation
        (``sourceGeneration`` and ``ifSourceGenerationMatch``) and, with
        ``create_only``, ``ifGenerationMatch=0``. GCS finishes a rewrite within one
        location and storage class in that one call; otherwise it answers "not
        done" with a token, and each further round (logged, retried alone)
        resumes from it. The result is built from the resource of the final
        answer (size, generation, etag, ``crc32c``, ``md5`` unless composite,
        metadata, headers), never from a stat; its checksums must equal ``src``'s,
        else the new generation is deleted and ``ChecksumMismatch`` raised.

        A request more only where something is missing: a ``src`` that does not
        know its content type and headers (``metadata_known`` False) is stat'ed
        first; an answer without ``crc32c`` is completed by a stat; an answer
        showing that the server did not apply the body (fake-gcs-server keeps the
        source's metadata when the body's map is empty) is repaired by one
        objects.update, see :meth:`_fix_up_copy`.

        Raises:
            ValueError: ``src`` is not a GCS object.
            SourceChanged: generation ``src.version`` is gone or no longer live.
            PreconditionFailed: ``create_only`` and ``dst`` exists; only where the
                server checks it (``capabilities.create_only_copies``).
            ChecksumMismatch: the copy's checksums differ from ``src``'s (deleted).
        """
        if src.ref.provider != "gs":
            raise ValueError(f"cannot rewrite {src.ref.uri} into GCS: not a GCS object")
        if not src.metadata_known:
            try:
                src = self.stat(src.ref, src.version)
            except ObjectNotFound as exc:
                raise SourceChanged(src.ref.uri, f"generation {src.version} is gone: {exc.reason}") from exc
        src_blob = self._blob(src.ref, src.version)
        # The destination's properties are the rewrite request body.
        dst_blob = self._blob_for_write(dst, src.content_type, None, src.headers)
        dst_blob.metadata = dict(metadata)  # {} too: the body then asks for no custom metadata
        wanted = self._wanted_fields(src, metadata)
        source_generation = _generation(src.version)
        token: str | None = None
        rounds = 0
        try:
            while True:
                token, done, total = self._call(
                    "rewrite", dst.uri,
                    lambda token=token: dst_blob.rewrite(
                        src_blob, token=token,
                        if_source_generation_match=source_generation,
                        if_generation_match=0 if create_only else None,
                        retry=None, timeout=self.transfer.timeout,
                    ),
                )
                rounds += 1
                log.info(
                    "rewrite %s -> %s: round %d, %d of %d bytes rewritten%s",
                    src.ref.uri, dst.uri, rounds, done, total, "" if token else " (done)",
                )
                if not token:
                    break
        except ObjectNotFound as exc:
            raise SourceChanged(src.ref.uri, f"generation {src.version} is gone: {exc.reason}") from exc
        except PreconditionFailed as exc:
            raise self._copy_precondition_failure(src, exc) from exc
        # The library has replaced the Blob's properties by the answer's resource.
        self._fix_up_copy(dst, dst_blob, wanted)
        if dst_blob.crc32c:
            info = self._info(dst, dst_blob)
        else:  # no server of the JSON API omits it; without it the answer proves nothing
            log.warning("rewrite %s: the answer carries no crc32c; reading the object's metadata", dst.uri)
            info = self.stat(dst, version=str(dst_blob.generation) if dst_blob.generation else None)
        self._check_copy(src, info)
        return info

    def _check_copy(self, src: ObjectInfo, info: ObjectInfo) -> None:
        """The copy must have ``src``'s size and checksums; only possible otherwise if
        the server copied another generation than the pinned one. Deletes it then."""
        differ = [
            f"{algorithm} {info.checksums[algorithm]}, source generation {src.version} has {value}"
            for algorithm, value in sorted(src.checksums.items())
            if algorithm in info.checksums and info.checksums[algorithm] != value
        ]
        if info.size != src.size:
            differ.append(f"{info.size} bytes, source generation {src.version} has {src.size}")
        if "crc32c" not in info.checksums:
            differ.append("no crc32c")
        if differ:
            self._discard(info.ref, info.version, "copy has " + "; ".join(differ))
        log.debug("rewrite %s: generation %s proven by %s", info.ref.uri, info.version, ", ".join(sorted(info.checksums)))

    @staticmethod
    def _wanted_fields(src: ObjectInfo, metadata: Mapping[str, str]) -> dict[str, Any]:
        """The destination's object-resource fields a copy promises, None meaning absent."""
        fields: dict[str, Any] = {"contentType": src.content_type or None, "metadata": dict(metadata)}
        for header in CONTENT_HEADERS:
            fields[_HEADER_FIELDS[header]] = src.headers.get(header) or None
        return fields

    def _fix_up_copy(self, dst: ObjectRef, dst_blob: Any, wanted: Mapping[str, Any]) -> None:
        """Make the copy's resource what the rewrite body asked for, when the answer shows it is not.

        Free when the answer matches: the normal case, since GCS takes the
        destination resource from the body. fake-gcs-server (1.54, checked over
        HTTP) builds the new object from the *source's* resource and applies only
        the body's non-empty fields, so an empty ``metadata`` map keeps the
        source's custom metadata (an empty or null header likewise, which the
        body never carries: headers come from the source). Then, and only then,
        one objects.update replaces the resource of the new generation
        (``ifGenerationMatch``/``ifMetagenerationMatch``, which the emulator
        ignores as well); its answer becomes the Blob's properties. Seen on
        Google, the same repair is made and logged as a warning.
        """
        props = dst_blob._properties

        def has(name: str) -> Any:
            value = props.get(name)
            return dict(value or {}) if name == "metadata" else (value or None)

        wrong = sorted(name for name, value in wanted.items() if has(name) != value)
        if not wrong:
            return
        log.log(
            logging.WARNING if self.service == "google" else logging.INFO,
            "rewrite %s: the server did not apply %s from the request; updating the new generation",
            dst.uri, ", ".join(wrong),
        )
        for name, value in wanted.items():
            if value is None:
                props.pop(name, None)  # objects.update replaces the resource: omitted means absent
            else:
                props[name] = value
        generation, metageneration = dst_blob.generation, dst_blob.metageneration
        self._call(
            "update copied object", dst.uri,
            lambda: dst_blob.update(
                if_generation_match=generation, if_metageneration_match=metageneration,
                retry=None, timeout=self.transfer.timeout,
            ),
        )

    def _copy_precondition_failure(self, src: ObjectInfo, exc: PreconditionFailed) -> StoreError:
        """A 412 on rewrite names no side: it is the source if that is no longer live."""
        try:
            live = self.stat(src.ref)
        except ObjectNotFound:
            return SourceChanged(src.ref.uri, f"source is gone: {exc.reason}")
        if src.version is not None and live.version != src.version:
            return SourceChanged(
                src.ref.uri, f"source generation is now {live.version}, not {src.version}: {exc.reason}"
            )
        return exc  # the destination exists and create_only was asked

    def delete(self, ref: ObjectRef, version: str | None = None) -> None:
        """Delete the live object, or generation ``version``; a missing one is not an error."""
        blob = self._blob(ref, version)
        try:
            self._call("delete", ref.uri, lambda: blob.delete(retry=None, timeout=self.transfer.timeout))
        except ObjectNotFound:
            log.debug("delete %s: already absent", ref.uri)


def _proven_checksums(blob: Any) -> dict[str, str]:
    """The hex checksums of a Blob resource that prove its content: crc32c, and md5 unless composite."""
    found: dict[str, str] = {}
    if blob.crc32c:
        found["crc32c"] = checksums.b64_to_hex(blob.crc32c)
    if blob.md5_hash and blob.component_count is None:  # a composite object has no whole-object MD5
        found["md5"] = checksums.b64_to_hex(blob.md5_hash)
    return found


def _headers(blob: Any) -> dict[str, str]:
    """The content headers a Blob resource has (empty values count as absent), by canonical name."""
    return {header: getattr(blob, attr) for header, attr in _HEADER_ATTRS.items() if getattr(blob, attr)}


def _listed(bucket: str, blob: Any) -> Listed:
    """An objects.list item (as the library's Blob) as a :class:`Listed`.

    The listing was asked for content type, metadata and content headers
    (:data:`LIST_FIELDS`): a field absent from the item is absent from the object.
    """
    updated = blob.updated
    return Listed(
        ref=ObjectRef("gs", bucket, blob.name),
        size=int(blob.size or 0),
        etag=blob.etag,
        version=str(blob.generation) if blob.generation is not None else None,
        last_modified=updated.astimezone(timezone.utc).isoformat() if updated else None,
        checksums=_proven_checksums(blob),
        multipart=blob.component_count is not None,
        content_type=blob.content_type or None,
        metadata=dict(blob.metadata or {}),
        headers=_headers(blob),
    )


def _json_or_empty(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except (AttributeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _generation(version: str | None) -> int | None:
    """A GCS generation from an ``ObjectInfo.version``; a non-number is a caller mistake."""
    if version is None or version == "":
        return None
    try:
        return int(version)
    except (TypeError, ValueError):
        raise ValueError(f"GCS version must be a generation number, got {version!r}") from None
