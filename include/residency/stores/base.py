"""The store protocol every provider implements, and the data it speaks.

Modelled on rclone's ``fs.Fs``: one small interface, optional abilities declared
in :class:`Capabilities` (server-side copy is a declared feature, never an
``isinstance`` guess), and algorithms written only against the interface. Every
implementation passes the same contract tests (``tests/integration/test_store_contract.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Protocol, runtime_checkable

from ..jurisdictions import Placement
from ..uris import ObjectRef

#: Standard HTTP content headers a copy preserves, by their canonical lower-case names.
CONTENT_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language")

#: Prefix of the user-metadata keys that record where a copy came from.
PROVENANCE_PREFIX = "residency-"


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object version.

    ``checksums`` holds only values that *prove* content (see
    :mod:`residency.checksums`): hex digests keyed by algorithm. ``etag`` is kept
    verbatim for preconditions, never compared as a hash by callers.
    """

    ref: ObjectRef
    size: int
    etag: str | None = None
    version: str | None = None  # S3 VersionId or GCS generation
    content_type: str | None = None
    checksums: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)  # user metadata
    headers: Mapping[str, str] = field(default_factory=dict)  # CONTENT_HEADERS present
    last_modified: str | None = None
    multipart: bool = False
    encryption: str | None = None
    metadata_known: bool = True
    """False when built from a listing that does not carry user metadata and content
    headers (S3): a server-side copy then keeps the source's own (S3
    ``MetadataDirective=COPY``) instead of replacing them with ``metadata``/``headers``."""

    @property
    def provenance(self) -> dict[str, str]:
        """The provenance metadata this orchestrator wrote, without the prefix."""
        return {
            k[len(PROVENANCE_PREFIX):]: v
            for k, v in self.metadata.items()
            if k.startswith(PROVENANCE_PREFIX)
        }


@dataclass(frozen=True)
class Listed:
    """One entry of a listing page: what the listing itself says, at no extra request.

    A listing is how a store re-proves cheaply that objects are still there (1,000
    keys per request instead of a HEAD per object). ``checksums`` follows the rule
    of :class:`ObjectInfo`: only values that *prove* content, lowercase hex keyed
    by algorithm. GCS lists ``crc32c`` always and ``md5`` unless the object is
    composite; S3 lists none, because a listed ETag of an SSE-KMS or SSE-C object
    is not its MD5 and the listing does not say how an object is encrypted.
    """

    ref: ObjectRef
    size: int
    etag: str | None = None
    """Verbatim as the server lists it (S3 keeps the quotes); for preconditions, never a hash."""
    version: str | None = None
    """S3 VersionId (only when listed with versions; ``"null"`` becomes None) or GCS generation (always)."""
    last_modified: str | None = None
    """ISO 8601, timezone-aware UTC."""
    checksums: Mapping[str, str] = field(default_factory=dict)
    multipart: bool = False
    """S3: the ETag has a part count (``-N``); GCS: the object is composite (``componentCount``)."""
    content_type: str | None = None
    """Where the listing reports it (GCS); ``None`` where it does not (S3)."""
    metadata: Mapping[str, str] | None = None
    """User metadata where the listing reports it (GCS); ``None`` where it does not (S3)."""
    headers: Mapping[str, str] | None = None
    """The :data:`CONTENT_HEADERS` present, where the listing reports them (GCS); else ``None``."""


@dataclass(frozen=True)
class Capabilities:
    """Optional abilities of a store (rclone's ``fs.Features``)."""

    server_side_copy: bool = False
    """Can copy an object of the same provider without the bytes passing through us."""
    create_only_writes: bool = False
    """Can refuse a write when the destination key already exists (If-None-Match / generation 0)."""
    versioned_reads: bool = False
    """Can read a pinned version (VersionId / generation)."""
    create_only_copies: bool = False
    """The server refuses a server-side copy onto an existing key (S3 ``If-None-Match: *``
    on CopyObject, GCS ``ifGenerationMatch=0``). Where False (moto ignores the header),
    the copy engine lists the destination range just before copying, rclone's way,
    and only keys found there are examined before they are written."""
    max_single_copy: int = 5 * 1024**3
    """Largest object one server-side copy call may handle."""
    validates_upload_checksums: bool = True
    """The checksums the server reports for an uploaded object were computed or
    checked by the server from the bytes it received (AWS S3 rejects a mismatch;
    GCS and fake-gcs-server compute their own). False where a server may store a
    client's claimed value unchecked (moto, some S3-compatible stores): then a
    streamed copy, or an object found already at the destination, is verified by
    reading it back. Server-side copies are unaffected: the server hashes those."""


@runtime_checkable
class Store(Protocol):
    """One provider's buckets, as the engine sees them.

    All methods raise the exceptions of :mod:`residency.errors`, never SDK ones:
    ``ObjectNotFound``, ``BucketNotFound``, ``PermissionDenied``,
    ``PreconditionFailed``, ``TransientError`` (after retries are exhausted).
    """

    provider: str
    capabilities: Capabilities

    def placement(self, bucket: str) -> Placement:
        """Where the bucket is; raises ``BucketNotFound`` / ``PermissionDenied``."""

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectRef]:
        """Every key under ``prefix``, in key order: the refs of :meth:`list_entries`."""

    def list_entries(
        self, bucket: str, prefix: str = "", *, with_version: bool = False, start_at: str | None = None
    ) -> Iterator[Listed]:
        """The live object of every key under ``prefix``, in key order, page by page.

        With ``start_at``, the listing begins at that key (inclusive; S3
        ``StartAfter``, GCS ``startOffset``), so that a key range costs about one
        request per 1,000 keys in it; a caller stops the requests by no longer iterating.

        One request per page of the store's page size (at most 1,000 keys), each page
        retried alone; never the whole listing in memory, never a request per
        object. Keys are exact byte strings: ``"a"``, ``"/a"``, ``"a/"`` and
        ``"a//b"`` are different objects, and no delimiter is applied.

        S3 lists with ListObjectsV2 (``version`` None); with ``with_version``,
        ListObjectVersions, yielding only the latest version of each key and
        skipping keys whose latest entry is a delete marker (the key is not live).
        GCS lists live objects with objects.list and a fields mask, and always
        reports the generation; ``with_version`` changes nothing there.

        Raises:
            BucketNotFound: the bucket does not exist (when the first page is fetched).
            PermissionDenied: the credentials may not list the bucket.
            TransientError: a page still failed after the retry policy gave up.
        """

    def stat(self, ref: ObjectRef, version: str | None = None) -> ObjectInfo:
        """Metadata and checksums of the object (of ``version`` when given)."""

    def read(
        self, ref: ObjectRef, version: str | None = None, chunk_size: int = 1024 * 1024
    ) -> Iterator[bytes]:
        """Stream the object's bytes in chunks of at most ``chunk_size``."""

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
        """Store the bytes from ``chunks`` (streamed, multipart above the threshold).

        With ``create_only`` the write fails with ``PreconditionFailed`` if the key exists.
        ``size`` (when known) lets the store choose multipart at once; ``expected``
        (the source's checksums) lets it refuse bytes that do not match
        (``ChecksumMismatch``) instead of creating a corrupted object. Memory stays
        bounded by the store's part or chunk size, whatever the object's size.
        """

    def copy(
        self,
        src: ObjectInfo,
        dst: ObjectRef,
        *,
        metadata: Mapping[str, str],
        create_only: bool = True,
    ) -> ObjectInfo:
        """Server-side copy of the pinned ``src`` version to ``dst``.

        Only when ``capabilities.server_side_copy``. Content type and content
        headers are carried over; user metadata is replaced by ``metadata``.
        Raises ``SourceChanged`` if ``src`` is no longer that version.
        """

    def delete(self, ref: ObjectRef, version: str | None = None) -> None:
        """Delete the object (or one version of it). Missing objects are not an error."""
