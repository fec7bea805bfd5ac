"""Object references and every URL form the application database may hold.

An :class:`ObjectRef` names one object: provider, bucket and the raw key (never
percent-encoded). ``uri`` is the canonical ``s3://bucket/key`` / ``gs://bucket/key``
form, with the key verbatim. The application stores *URLs*, which come in several
styles; :func:`parse_url` recognises them and :func:`format_url` writes one back in
the same style so that a cutover changes only what it must.

Percent-encoding rules: ``s3://`` and ``gs://`` URIs carry the key verbatim (that is
how the AWS CLI and gsutil print them). HTTPS URLs percent-encode the key; ``+`` in a
URL *path* is a literal plus, not a space, so paths are decoded with ``unquote``,
never ``unquote_plus``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from .errors import PolicyError

PROVIDERS = ("s3", "gs")

_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_GS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$")


class UrlStyle(str, enum.Enum):
    """How a URL names an object; a rewrite keeps the style it found."""

    S3_URI = "s3-uri"  # s3://bucket/key
    S3_VIRTUAL = "s3-virtual-hosted"  # https://bucket.s3.region.amazonaws.com/key
    S3_PATH = "s3-path-style"  # https://s3.region.amazonaws.com/bucket/key
    GS_URI = "gs-uri"  # gs://bucket/key
    GS_PATH = "gs-path-style"  # https://storage.googleapis.com/bucket/key
    GS_VIRTUAL = "gs-virtual-hosted"  # https://bucket.storage.googleapis.com/key


@dataclass(frozen=True, order=True)
class ObjectRef:
    """One object in one bucket. ``key`` is the raw key, never URL-encoded."""

    provider: str
    bucket: str
    key: str

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"unknown provider {self.provider!r}; expected one of {PROVIDERS}")
        if not self.bucket:
            raise ValueError("bucket must not be empty")

    @property
    def uri(self) -> str:
        return f"{self.provider}://{self.bucket}/{self.key}"

    @property
    def bucket_uri(self) -> str:
        return f"{self.provider}://{self.bucket}"

    def with_key(self, key: str) -> ObjectRef:
        return ObjectRef(self.provider, self.bucket, key)

    def __str__(self) -> str:
        return self.uri


@dataclass(frozen=True)
class ParsedUrl:
    """A URL found in the application database, resolved to an object."""

    ref: ObjectRef
    style: UrlStyle
    region: str | None = None  # region named in an S3 hostname, if any
    query: str = ""  # kept verbatim on rewrite (e.g. cache busters)


def parse_uri(uri: str, field: str = "uri") -> ObjectRef:
    """Parse ``s3://bucket/key`` or ``gs://bucket/key`` (key verbatim, may be empty).

    Raises:
        PolicyError: naming ``field`` when the URI is not of that form.
    """
    match = re.match(r"^(s3|gs)://([^/]+)(?:/(.*))?$", uri or "", re.DOTALL)
    if not match:
        raise PolicyError(field, uri, "expected s3://bucket[/key] or gs://bucket[/key]")
    provider, bucket, key = match.group(1), match.group(2), match.group(3) or ""
    pattern = _S3_BUCKET if provider == "s3" else _GS_BUCKET
    if not pattern.match(bucket):
        raise PolicyError(field, uri, f"{bucket!r} is not a valid {provider} bucket name")
    return ObjectRef(provider, bucket, key)


_S3_HOST = re.compile(
    r"^(?:(?P<bucket>.+)\.)?s3"
    r"(?:[.-](?P<dualstack>dualstack\.)?(?P<region>[a-z]{2}(?:-gov)?-[a-z]+-\d))?"
    r"\.amazonaws\.com(?:\.cn)?$"
)


def parse_url(url: str) -> ParsedUrl | None:
    """Resolve a URL of any supported style to the object it names.

    Returns ``None`` for anything that is not an object URL of S3 or GCS (other
    hosts, empty strings, bucket-only URLs), so that a reference scan can skip it.
    """
    if not url or not isinstance(url, str):
        return None
    url = url.strip()
    if url.startswith(("s3://", "gs://")):
        scheme, rest = url.split("://", 1)
        if "/" not in rest:
            return None
        bucket, key = rest.split("/", 1)
        if not bucket or not key:
            return None
        style = UrlStyle.S3_URI if scheme == "s3" else UrlStyle.GS_URI
        return ParsedUrl(ObjectRef(scheme, bucket, key), style)

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    path = parts.path
    if host in ("storage.googleapis.com", "storage.cloud.google.com"):
        bucket, _, key = path.lstrip("/").partition("/")
        if not bucket or not key:
            return None
        return ParsedUrl(ObjectRef("gs", bucket, unquote(key)), UrlStyle.GS_PATH, None, parts.query)
    if host.endswith(".storage.googleapis.com"):
        bucket = host[: -len(".storage.googleapis.com")]
        key = unquote(path.lstrip("/"))
        if not key:
            return None
        return ParsedUrl(ObjectRef("gs", bucket, key), UrlStyle.GS_VIRTUAL, None, parts.query)
    match = _S3_HOST.match(host)
    if not match:
        return None
    region = match.group("region")
    if match.group("bucket"):
        key = unquote(path.lstrip("/"))
        if not key:
            return None
        return ParsedUrl(
            ObjectRef("s3", match.group("bucket"), key), UrlStyle.S3_VIRTUAL, region, parts.query
        )
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or not key:
        return None
    return ParsedUrl(ObjectRef("s3", bucket, unquote(key)), UrlStyle.S3_PATH, region, parts.query)


def _quote_key(key: str) -> str:
    return quote(key, safe="/~")


def format_url(ref: ObjectRef, style: UrlStyle, region: str | None = None, query: str = "") -> str:
    """Write ``ref`` as a URL of ``style``.

    S3 HTTPS styles need the bucket's region (``us-east-1`` gets the global host).
    A style of the other provider is mapped to the equivalent one of ``ref``'s
    provider (a virtual-hosted S3 URL to a GCS object becomes virtual-hosted GCS),
    so that a cross-provider cutover keeps the application's URL shape.
    """
    style = _equivalent_style(style, ref.provider)
    suffix = f"?{query}" if query else ""
    if style is UrlStyle.S3_URI:
        return f"s3://{ref.bucket}/{ref.key}"
    if style is UrlStyle.GS_URI:
        return f"gs://{ref.bucket}/{ref.key}"
    if style is UrlStyle.GS_PATH:
        return f"https://storage.googleapis.com/{ref.bucket}/{_quote_key(ref.key)}{suffix}"
    if style is UrlStyle.GS_VIRTUAL:
        return f"https://{ref.bucket}.storage.googleapis.com/{_quote_key(ref.key)}{suffix}"
    host = "s3.amazonaws.com" if not region or region == "us-east-1" else f"s3.{region}.amazonaws.com"
    if style is UrlStyle.S3_VIRTUAL:
        return f"https://{ref.bucket}.{host}/{_quote_key(ref.key)}{suffix}"
    return f"https://{host}/{ref.bucket}/{_quote_key(ref.key)}{suffix}"


_EQUIVALENT = {
    ("gs", UrlStyle.S3_URI): UrlStyle.GS_URI,
    ("gs", UrlStyle.S3_PATH): UrlStyle.GS_PATH,
    ("gs", UrlStyle.S3_VIRTUAL): UrlStyle.GS_VIRTUAL,
    ("s3", UrlStyle.GS_URI): UrlStyle.S3_URI,
    ("s3", UrlStyle.GS_PATH): UrlStyle.S3_PATH,
    ("s3", UrlStyle.GS_VIRTUAL): UrlStyle.S3_VIRTUAL,
}


def _equivalent_style(style: UrlStyle, provider: str) -> UrlStyle:
    return _EQUIVALENT.get((provider, style), style)
