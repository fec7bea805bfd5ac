"""Object references and every URL form the application database may hold.

An :class:`ObjectRef` names one object: provider, bucket and the raw key (never
percent-encoded). ``uri`` is the canonical ``s3://bucket/key`` / ``gs://bucket/key``
form, with the key verbatim. The application stores *URLs*, which come in several
styles; :func:`parse_url` recognises them and :func:`format_url` writes one back in
the same style, host family, scheme spelling, query and fragment, so that a cutover
changes only what it must. :func:`find_urls` finds them in free text,
:func:`find_mentions` finds bare bucket and host names, and :func:`redact_url` /
:func:`redact_text` make them safe to log.

Styles (:class:`UrlStyle`) and host families (``ParsedUrl.endpoint``):

- ``s3://bucket/key`` and ``gs://bucket/key``: the key verbatim (that is how the
  AWS CLI and gsutil print them), trailing whitespace, ``?`` and ``#`` included.
- S3 virtual-hosted ``https://bucket.HOST/key`` and path style
  ``https://HOST/bucket/key`` on ``global`` (s3), ``regional`` (s3.REGION),
  ``legacy-dash`` (s3-REGION, s3-external-1), ``dualstack`` (s3.dualstack.REGION),
  ``fips`` (s3-fips.REGION), ``fips-dualstack``; ``accelerate`` and
  ``accelerate-dualstack`` are virtual-hosted only. Hosts end in
  ``.amazonaws.com``, or ``.amazonaws.com.cn`` for ``cn-`` regions.
- S3 website ``http://bucket.s3-website-REGION...`` (``website-dash``) and
  ``http://bucket.s3-website.REGION...`` (``website-dot``).
- GCS path style on ``storage`` (storage.googleapis.com), ``commondatastorage`` and
  ``cloud-console`` (storage.cloud.google.com); virtual-hosted
  ``https://bucket.storage.googleapis.com/key`` (``storage``, ``commondatastorage``).
- GCS JSON API ``.../b/BUCKET/o/OBJECT`` with the object percent-encoded, ``/`` as
  ``%2F``: ``api-download`` (storage.googleapis.com/download/storage/v1), ``api``
  (storage.googleapis.com/storage/v1), ``www-api-download`` and ``www-api`` (the
  same on www.googleapis.com).
- ``CDN``: a hostname the policy maps to a bucket (:class:`CdnHost`).

Keys: keys that differ only in slashes are different objects, so the path is never
stripped or normalised: a virtual-hosted key is the path after exactly one ``/``, a
path-style key the path after ``/BUCKET/``. ``+`` in a URL *path* is a literal plus,
not a space, so paths are decoded with ``unquote``, never ``unquote_plus``; keys are
encoded with ``quote(key, safe="/~")``.

Limits:

- WHATWG URL parsers (browsers, ``fetch``) normalise ``.`` and ``..`` path segments,
  ``%2e`` included, so an object whose key has such a segment (``a/../b``) cannot be
  fetched over https by a browser, although we parse and format it exactly.
- Not buckets, so ``parse_url`` returns ``None``: access points (``*.s3-accesspoint.*``
  and ``-s3alias`` aliases), S3 Object Lambda, Multi-Region Access Points, Outposts.
  Also not recognised: S3 Express One Zone (``*.s3express-*``) hosts, GCS regional
  and mTLS endpoints, the AWS ISO partitions, and S3 hosts whose region and
  partition disagree (``s3.amazonaws.com.cn``), which do not exist.
- On storage.googleapis.com a path starting ``/storage/v1/`` or
  ``/download/storage/v1/`` is the JSON API, so bucket ``storage`` with a key
  starting ``v1/`` (or ``download`` with ``storage/v1/``) has no path-style URL there.
- Userinfo and an explicit port are accepted and not kept.
- An invalid UTF-8 percent-escape decodes to U+FFFD (``unquote``'s default).
- In free text a key ends at whitespace and cannot end in ``. , ; : ! ?``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, unquote_plus

from .errors import PolicyError

PROVIDERS = ("s3", "gs")

_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_GS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$")


class UrlStyle(str, enum.Enum):
    """How a URL names an object; a rewrite keeps the style it found."""

    S3_URI = "s3-uri"  # s3://bucket/key (key verbatim)
    S3_VIRTUAL = "s3-virtual-hosted"  # https://bucket.<s3 host>/key
    S3_PATH = "s3-path-style"  # https://<s3 host>/bucket/key
    S3_WEBSITE = "s3-website"  # http://bucket.s3-website-region.amazonaws.com/key (or s3-website.region)
    GS_URI = "gs-uri"  # gs://bucket/key (key verbatim)
    GS_PATH = "gs-path-style"  # https://storage.googleapis.com/bucket/key
    GS_VIRTUAL = "gs-virtual-hosted"  # https://bucket.storage.googleapis.com/key
    GS_API = "gs-json-api"  # https://storage.googleapis.com/download/storage/v1/b/bucket/o/obj%2Fname?alt=media
    CDN = "cdn"  # https://host/<path_prefix>key, a hostname the policy maps to a bucket


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
class CdnHost:
    """A hostname (a CDN) in front of a bucket.

    ``https://HOST/<path_prefix><key>`` names ``ObjectRef(provider, bucket, key)``;
    ``path_prefix`` is the CDN's origin path, compared with the percent-decoded URL
    path after its first ``/``. ``host`` is stored lower-cased.

    Raises:
        ValueError: unknown provider, empty bucket, or a host that is not a hostname.
    """

    host: str
    provider: str
    bucket: str
    path_prefix: str = ""

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"CdnHost {self.host!r}: unknown provider {self.provider!r}; expected one of {PROVIDERS}")
        if not self.bucket:
            raise ValueError(f"CdnHost {self.host!r}: bucket must not be empty")
        if not self.host or any(c in self.host for c in "/?#@: \t\r\n"):
            raise ValueError(f"CdnHost host {self.host!r} is not a hostname")
        object.__setattr__(self, "host", self.host.lower())


@dataclass(frozen=True)
class ParsedUrl:
    """A URL found in the application database, resolved to an object.

    Everything :func:`format_url` needs to write the URL back is kept: ``scheme`` as
    written, ``endpoint`` (the host family, ``""`` for URIs and CDN hosts), ``query``
    and ``fragment`` verbatim (without ``?`` / ``#``). ``host`` is the hostname
    lower-cased, ``""`` for ``s3://`` and ``gs://``.
    """

    ref: ObjectRef
    style: UrlStyle
    region: str | None = None  # region named in an S3 hostname, if any
    query: str = ""  # kept verbatim on rewrite (e.g. cache busters)
    scheme: str = ""
    endpoint: str = ""
    fragment: str = ""
    host: str = ""
    raw_key: str = field(default="", compare=False)  # the key as written (its percent-encoding); "" unknown

    @property
    def version(self) -> str | None:
        """The ``versionId`` (S3) or ``generation`` (GCS) query parameter, if present.

        The name is matched exactly, as the servers do; the value is form-decoded.
        """
        return _query_value(self.query, "generation" if self.ref.provider == "gs" else "versionId")

    @property
    def presigned(self) -> bool:
        """Whether the query carries a signature (see :func:`is_presigned`)."""
        return is_presigned(self.query)


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


# --- host families --------------------------------------------------------------------------------------------

_REGION = r"(?P<region>[a-z]{2,4}-(?:[a-z]+-)+\d{1,2})"
_REGION_RE = re.compile(_REGION)
_VH, _PS, _WEB = UrlStyle.S3_VIRTUAL, UrlStyle.S3_PATH, UrlStyle.S3_WEBSITE


@dataclass(frozen=True)
class _S3Family:
    name: str
    service: str  # regex for the hostname labels between the bucket and ".amazonaws.com[.cn]"
    template: str  # the same labels to format, with {region}
    styles: frozenset[UrlStyle]
    regional: bool = True
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", re.compile(r"(?:(?P<bucket>.+)\.)?" + self.service))

    def labels(self, region: str | None) -> str:
        if self.name == "legacy-dash" and region == "us-east-1":
            return "s3-external-1"  # the only legacy dash host of us-east-1
        return self.template.format(region=region)


# Order matters: "s3-fips-us-gov-west-1" would also read as legacy-dash region "fips-us-gov-west-1".
_S3_FAMILIES = (
    _S3Family("fips-dualstack", r"s3-fips\.dualstack\." + _REGION, "s3-fips.dualstack.{region}", frozenset({_VH, _PS})),
    _S3Family("fips", r"s3-fips[.-]" + _REGION, "s3-fips.{region}", frozenset({_VH, _PS})),
    _S3Family("dualstack", r"s3\.dualstack\." + _REGION, "s3.dualstack.{region}", frozenset({_VH, _PS})),
    _S3Family("accelerate-dualstack", r"s3-accelerate\.dualstack", "s3-accelerate.dualstack", frozenset({_VH}), False),
    _S3Family("accelerate", r"s3-accelerate", "s3-accelerate", frozenset({_VH}), False),
    _S3Family("website-dash", r"s3-website-" + _REGION, "s3-website-{region}", frozenset({_WEB})),
    _S3Family("website-dot", r"s3-website\." + _REGION, "s3-website.{region}", frozenset({_WEB})),
    _S3Family("legacy-dash", r"s3-(?:external-1|" + _REGION + ")", "s3-{region}", frozenset({_VH, _PS})),
    _S3Family("regional", r"s3\." + _REGION, "s3.{region}", frozenset({_VH, _PS})),
    _S3Family("global", r"s3", "s3", frozenset({_VH, _PS}), False),
)
_S3_BY_NAME = {f.name: f for f in _S3_FAMILIES}
# Website hosts of the regions that predate the dot form (AWS General Reference, "Website endpoints").
_WEBSITE_DASH_REGIONS = frozenset({
    "us-east-1", "us-west-1", "us-west-2", "ap-southeast-1", "ap-southeast-2", "ap-northeast-1", "eu-west-1",
    "sa-east-1", "us-gov-west-1",
})

# GCS: endpoint -> host of the path style, host suffix of the virtual-hosted style, JSON API base.
_GS_PATH_HOSTS = {
    "storage": "storage.googleapis.com",
    "commondatastorage": "commondatastorage.googleapis.com",
    "cloud-console": "storage.cloud.google.com",
}
_GS_VIRTUAL_SUFFIXES = {"storage": ".storage.googleapis.com", "commondatastorage": ".commondatastorage.googleapis.com"}
_GS_API_BASES = {
    "api-download": "storage.googleapis.com/download/storage/v1",
    "api": "storage.googleapis.com/storage/v1",
    "www-api-download": "www.googleapis.com/download/storage/v1",
    "www-api": "www.googleapis.com/storage/v1",
}
_GS_API_BY_HOST_PATH = {tuple(base.split("/", 1)): name for name, base in _GS_API_BASES.items()}
_GS_API_PREFIXES = ("/storage/v1/", "/download/storage/v1/")
_GS_API_PATH = re.compile(r"/((?:download/)?storage/v1)/b/([^/]+)/o/(.+)", re.DOTALL)

# parse_url takes bucket names as written: legacy us-east-1 buckets may hold upper case and '_'.
_ANY_BUCKET = re.compile(r"[A-Za-z0-9._-]+")
# Only DNS-compatible names can be part of a hostname.
_DNS_BUCKET = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")
# Access point and Object Lambda aliases look like bucket names but are not buckets.
_ALIAS_SUFFIXES = ("-s3alias", "--ol-s3")

_HTTP_URL = re.compile(
    r"(?P<scheme>https?)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?",
    re.IGNORECASE | re.DOTALL,
)
_URI = re.compile(r"(?P<scheme>s3|gs)://(?P<bucket>[^/]*)/(?P<key>.*)", re.IGNORECASE | re.DOTALL)
_C0_AND_SPACE = "".join(map(chr, range(0x21)))

_HostMap = Mapping[str, CdnHost]


def parse_url(
    url: str | None, hosts: Mapping[str, CdnHost] | Iterable[CdnHost] | None = None
) -> ParsedUrl | None:
    """Resolve a URL of any supported style to the object it names.

    ``s3://`` and ``gs://`` URIs keep the key verbatim, trailing whitespace included
    (only leading whitespace is dropped); http(s) URLs are stripped of surrounding
    ASCII whitespace and control characters, their path is percent-decoded with
    ``unquote`` and never normalised. Schemes and hostnames are case-insensitive.

    Args:
        url: the text of one cell.
        hosts: CDN hostnames in front of buckets, as :class:`CdnHost` objects or a
            mapping from hostname to one; checked before the S3 and GCS hosts.

    Returns:
        ``None`` for anything that is not an object URL of S3, GCS or a mapped host:
        other hosts, bucket-only URLs (empty key), access points and Object Lambda,
        host families that cannot serve the style (path style on an accelerate
        host), and S3 hosts whose region and partition disagree.
    """
    if not url or not isinstance(url, str):
        return None
    return _parse(url, _host_map(hosts))


def _host_map(hosts: Mapping[str, CdnHost] | Iterable[CdnHost] | None) -> _HostMap:
    if not hosts:
        return {}
    if isinstance(hosts, Mapping):
        return {str(name).lower(): cdn for name, cdn in hosts.items()}
    return {cdn.host: cdn for cdn in hosts}


def _parse(url: str, hosts: _HostMap) -> ParsedUrl | None:
    url = url.lstrip(_C0_AND_SPACE)
    uri = _URI.match(url)
    if uri:
        return _parse_uri(uri)
    match = _HTTP_URL.fullmatch(url.rstrip(_C0_AND_SPACE))
    if not match:
        return None
    host = _hostname(match.group("authority"))
    if not host:
        return None
    path = match.group("path")
    base = dict(query=match.group("query") or "", scheme=match.group("scheme"), fragment=match.group("fragment") or "")
    if host in hosts:
        return _parse_cdn(hosts[host], path, base)
    if host.endswith((".googleapis.com", ".google.com")):
        return _parse_gs(host, path, base)
    if host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return _parse_s3(host, path, base)
    return None


def _parse_uri(match: re.Match[str]) -> ParsedUrl | None:
    scheme, bucket, key = match.group("scheme", "bucket", "key")
    provider = scheme.lower()
    if not key or not _ANY_BUCKET.fullmatch(bucket) or (provider == "s3" and bucket.endswith(_ALIAS_SUFFIXES)):
        return None
    style = UrlStyle.S3_URI if provider == "s3" else UrlStyle.GS_URI
    return ParsedUrl(ObjectRef(provider, bucket, key), style, scheme=scheme, raw_key=key)


def _hostname(authority: str) -> str | None:
    """The lower-cased hostname of ``[userinfo@]host[:port]``; userinfo and port are not kept."""
    host = authority.rpartition("@")[2]
    host, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return host.lower() or None


def _split_path_style(path: str) -> tuple[str, str, str] | None:
    """``/BUCKET/rest`` -> (BUCKET, unquoted rest, rest); the key keeps every further slash."""
    bucket, sep, raw_key = path[1:].partition("/")
    if not sep or not raw_key or not _ANY_BUCKET.fullmatch(bucket):
        return None
    return bucket, unquote(raw_key), raw_key


def _virtual_key(path: str) -> str | None:
    """The key of a virtual-hosted URL: the path after exactly one ``/``."""
    return unquote(path[1:]) or None


def _parse_cdn(cdn: CdnHost, path: str, base: dict[str, str]) -> ParsedUrl | None:
    decoded = unquote(path[1:])
    if not decoded.startswith(cdn.path_prefix):
        return None
    key = decoded[len(cdn.path_prefix):]
    if not key:
        return None
    raw = path[1 + len(cdn.path_prefix):] if path[1:].startswith(cdn.path_prefix) else ""
    return ParsedUrl(ObjectRef(cdn.provider, cdn.bucket, key), UrlStyle.CDN, host=cdn.host, raw_key=raw, **base)


def _parse_gs(host: str, path: str, base: dict[str, str]) -> ParsedUrl | None:
    if host in ("storage.googleapis.com", "www.googleapis.com"):
        api = _GS_API_PATH.fullmatch(path)
        if api:
            endpoint = _GS_API_BY_HOST_PATH[(host, api.group(1))]
            bucket, key = api.group(2), unquote(api.group(3))
            if not _ANY_BUCKET.fullmatch(bucket) or not key:
                return None
            return ParsedUrl(ObjectRef("gs", bucket, key), UrlStyle.GS_API, endpoint=endpoint, host=host,
                             raw_key=api.group(3), **base)
        if host == "www.googleapis.com" or path.startswith(_GS_API_PREFIXES):
            return None  # other JSON API resources (listings, metadata of buckets, uploads)
    for endpoint, path_host in _GS_PATH_HOSTS.items():
        if host == path_host:
            split = _split_path_style(path)
            if split is None:
                return None
            ref = ObjectRef("gs", split[0], split[1])
            return ParsedUrl(ref, UrlStyle.GS_PATH, endpoint=endpoint, host=host, raw_key=split[2], **base)
    for endpoint, suffix in _GS_VIRTUAL_SUFFIXES.items():
        if host.endswith(suffix):
            bucket, key = host[: -len(suffix)], _virtual_key(path)
            if not key or not _ANY_BUCKET.fullmatch(bucket):
                return None
            return ParsedUrl(ObjectRef("gs", bucket, key), UrlStyle.GS_VIRTUAL, endpoint=endpoint, host=host,
                             raw_key=path[1:], **base)
    return None


def _parse_s3(host: str, path: str, base: dict[str, str]) -> ParsedUrl | None:
    china = host.endswith(".amazonaws.com.cn")
    labels = host[: -len(".amazonaws.com.cn" if china else ".amazonaws.com")]
    for family in _S3_FAMILIES:
        match = family.pattern.fullmatch(labels)
        if match:
            break
    else:
        return None  # access points, Object Lambda, S3 Express, S3 Control, ...
    region = match.groupdict().get("region") or ("us-east-1" if family.name == "legacy-dash" else None)
    if china != bool(region and region.startswith("cn-")):
        return None  # no such host: the partition follows the region
    bucket_label = match.group("bucket")
    if bucket_label is not None:
        style = UrlStyle.S3_WEBSITE if UrlStyle.S3_WEBSITE in family.styles else UrlStyle.S3_VIRTUAL
        bucket, key, raw_key = bucket_label, _virtual_key(path), path[1:]
        if not key or not _ANY_BUCKET.fullmatch(bucket):
            return None
    else:
        style = UrlStyle.S3_PATH
        split = _split_path_style(path)
        if style not in family.styles or split is None:
            return None
        bucket, key, raw_key = split
    if bucket.endswith(_ALIAS_SUFFIXES):
        return None
    return ParsedUrl(ObjectRef("s3", bucket, key), style, region, endpoint=family.name, host=host, raw_key=raw_key,
                     **base)


def _query_value(query: str, name: str) -> str | None:
    """The form-decoded value of the first parameter called exactly ``name``."""
    for _piece, raw_name, value in _query_params(query):
        if raw_name == name:
            return unquote_plus(value)
    return None


def _query_params(query: str) -> list[tuple[str, str, str]]:
    """(piece, decoded name, raw value) for each ``&``-separated piece, in order.

    An HTML-escaped separator (``&amp;``) leaves ``amp;`` in front of a name; it is
    dropped, so that URLs copied out of HTML are read like the browser reads them.
    """
    out = []
    for piece in query.split("&"):
        raw_name, _, value = piece.partition("=")
        name = unquote_plus(raw_name)
        if name[:4].lower() == "amp;":
            name = name[4:]
        out.append((piece, name, value))
    return out


def is_presigned(query: str) -> bool:
    """Whether ``query`` carries a signature that grants access until it expires.

    True for SigV4 (``X-Amz-Signature``, ``X-Amz-Algorithm`` or ``X-Amz-Credential``),
    SigV2 (``Signature`` with ``Expires`` or ``AWSAccessKeyId``), GCS V4
    (``X-Goog-Signature`` / ``-Algorithm`` / ``-Credential``) and GCS V2
    (``GoogleAccessId`` with ``Signature``). Names are case-insensitive.
    """
    if not query:
        return False
    names = {name.lower() for _piece, name, _value in _query_params(query)}
    if names & {"x-amz-signature", "x-amz-algorithm", "x-amz-credential"}:
        return True
    if names & {"x-goog-signature", "x-goog-algorithm", "x-goog-credential"}:
        return True
    return "signature" in names and bool(names & {"expires", "awsaccesskeyid", "googleaccessid"})


def _quote_key(key: str) -> str:
    return quote(key, safe="/~")


def format_url(
    ref: ObjectRef,
    style: UrlStyle,
    region: str | None = None,
    query: str = "",
    *,
    endpoint: str = "",
    scheme: str | None = None,
    fragment: str = "",
    cdn: CdnHost | None = None,
) -> str:
    """Write ``ref`` as a URL of ``style``; :func:`parse_url` reads it back exactly.

    ``endpoint`` picks the host family (see :attr:`ParsedUrl.endpoint`). With ``""``
    S3 styles get the regional host, or the global one when ``region`` is ``None``
    or ``us-east-1``; the website style gets the dash or dot host the region has;
    GCS styles get ``storage.googleapis.com``. A ``cn-`` region gets the
    ``amazonaws.com.cn`` host. ``query`` and ``fragment`` are written verbatim
    (without ``?`` / ``#``); ``scheme`` defaults to ``https`` (``http`` for the
    website style, ``s3`` / ``gs`` for URIs) and is written as given.

    A style of the other provider is mapped to the equivalent one of ``ref``'s
    provider (S3 virtual-hosted to GCS virtual-hosted, the S3 website style to GCS
    path style, the JSON API to S3 path style, ...) and an endpoint that provider
    does not have falls back to the default, so that a cross-provider cutover keeps
    the application's URL shape.

    Raises:
        ValueError: a combination that cannot exist, naming style and endpoint: an
            endpoint the style does not have (path style on an accelerate host), a
            missing or malformed region for a regional host, a query or fragment on
            an ``s3://`` / ``gs://`` URI, a bucket name a hostname cannot carry, a
            scheme of the wrong kind, or the CDN style without a matching ``cdn``.
    """
    style = UrlStyle(style)
    mapped = _equivalent_style(style, ref.provider)
    if mapped is not style:
        if endpoint not in _endpoints(mapped):
            endpoint = ""
        if scheme and scheme.lower() in PROVIDERS:
            scheme = ref.provider.upper() if scheme.isupper() else ref.provider
        style = mapped
    if not _ANY_BUCKET.fullmatch(ref.bucket):
        raise ValueError(f"{style.value}: {ref.bucket!r} is not a bucket name a URL can carry")
    if ref.provider == "s3" and ref.bucket.endswith(_ALIAS_SUFFIXES):
        raise ValueError(f"{style.value}: {ref.bucket!r} is an access point alias, not a bucket")
    suffix = (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")
    if style in (UrlStyle.S3_URI, UrlStyle.GS_URI):
        return _format_uri(ref, style, endpoint, scheme, suffix)
    scheme = _http_scheme(style, scheme)
    if style is UrlStyle.CDN:
        if cdn is None or (cdn.provider, cdn.bucket) != (ref.provider, ref.bucket) or endpoint:
            raise ValueError(f"{style.value}: needs cdn= a CdnHost of {ref.bucket_uri} and no endpoint "
                             f"(got cdn={cdn!r}, endpoint={endpoint!r})")
        return f"{scheme}://{cdn.host}/{_quote_key(cdn.path_prefix + ref.key)}{suffix}"
    if ref.provider == "gs":
        return f"{scheme}://{_gs_location(ref, style, endpoint)}{suffix}"
    return f"{scheme}://{_s3_location(ref, style, region, endpoint)}{suffix}"


def _format_uri(ref: ObjectRef, style: UrlStyle, endpoint: str, scheme: str | None, suffix: str) -> str:
    if endpoint or suffix:
        raise ValueError(f"{style.value}: a URI carries the key verbatim and has no endpoint, query or fragment "
                         f"(got endpoint={endpoint!r}, query/fragment={suffix!r})")
    scheme = scheme or ref.provider
    if scheme.lower() != ref.provider:
        raise ValueError(f"{style.value}: scheme {scheme!r} is not {ref.provider!r}")
    return f"{scheme}://{ref.bucket}/{ref.key}"


def _http_scheme(style: UrlStyle, scheme: str | None) -> str:
    if scheme is None or scheme == "":
        return "http" if style is UrlStyle.S3_WEBSITE else "https"
    if scheme.lower() not in ("http", "https"):
        raise ValueError(f"{style.value}: scheme {scheme!r} is not http or https")
    return scheme


def _host_bucket(ref: ObjectRef, style: UrlStyle, endpoint: str) -> str:
    if not _DNS_BUCKET.fullmatch(ref.bucket):
        raise ValueError(f"{style.value} (endpoint {endpoint!r}): bucket {ref.bucket!r} cannot be part of a "
                         "hostname (upper case or '_'); use the path style")
    return ref.bucket


def _gs_location(ref: ObjectRef, style: UrlStyle, endpoint: str) -> str:
    if style is UrlStyle.GS_API:
        base = _GS_API_BASES.get(endpoint or "api-download")
        if base is None:
            raise _no_endpoint(style, endpoint)
        return f"{base}/b/{ref.bucket}/o/{quote(ref.key, safe='')}"
    if style is UrlStyle.GS_PATH:
        host = _GS_PATH_HOSTS.get(endpoint or "storage")
        if host is None:
            raise _no_endpoint(style, endpoint)
        path = f"/{ref.bucket}/{_quote_key(ref.key)}"
        if host == "storage.googleapis.com" and path.startswith(_GS_API_PREFIXES):
            raise ValueError(f"{style.value} (endpoint {endpoint!r}): {path!r} would read as the JSON API")
        return host + path
    suffix = _GS_VIRTUAL_SUFFIXES.get(endpoint or "storage")
    if style is not UrlStyle.GS_VIRTUAL or suffix is None:
        raise _no_endpoint(style, endpoint)
    return f"{_host_bucket(ref, style, endpoint)}{suffix}/{_quote_key(ref.key)}"


def _s3_location(ref: ObjectRef, style: UrlStyle, region: str | None, endpoint: str) -> str:
    if not endpoint:
        if style is UrlStyle.S3_WEBSITE:
            endpoint = "website-dash" if region in _WEBSITE_DASH_REGIONS else "website-dot"
        else:
            endpoint = "global" if region is None or region == "us-east-1" else "regional"
    family = _S3_BY_NAME.get(endpoint)
    if family is None or style not in family.styles:
        raise _no_endpoint(style, endpoint)
    if family.regional and (region is None or not _REGION_RE.fullmatch(region)):
        raise ValueError(f"{style.value} (endpoint {endpoint!r}): needs a region like 'ap-northeast-2', got {region!r}")
    china = family.regional and region is not None and region.startswith("cn-")
    host = f"{family.labels(region)}.amazonaws.com{'.cn' if china else ''}"
    if style is UrlStyle.S3_PATH:
        return f"{host}/{ref.bucket}/{_quote_key(ref.key)}"
    return f"{_host_bucket(ref, style, endpoint)}.{host}/{_quote_key(ref.key)}"


def _no_endpoint(style: UrlStyle, endpoint: str) -> ValueError:
    names = ", ".join(repr(e) for e in _endpoints(style)) or "none"
    return ValueError(f"{style.value} has no endpoint {endpoint!r}; it has {names}")


def _endpoints(style: UrlStyle) -> tuple[str, ...]:
    """The endpoint families ``style`` can be written with (``""`` is always the default)."""
    if style is UrlStyle.GS_API:
        return tuple(_GS_API_BASES)
    if style is UrlStyle.GS_PATH:
        return tuple(_GS_PATH_HOSTS)
    if style is UrlStyle.GS_VIRTUAL:
        return tuple(_GS_VIRTUAL_SUFFIXES)
    return tuple(f.name for f in _S3_FAMILIES if style in f.styles)


_EQUIVALENT = {
    ("gs", UrlStyle.S3_URI): UrlStyle.GS_URI,
    ("gs", UrlStyle.S3_PATH): UrlStyle.GS_PATH,
    ("gs", UrlStyle.S3_VIRTUAL): UrlStyle.GS_VIRTUAL,
    ("gs", UrlStyle.S3_WEBSITE): UrlStyle.GS_PATH,
    ("s3", UrlStyle.GS_URI): UrlStyle.S3_URI,
    ("s3", UrlStyle.GS_PATH): UrlStyle.S3_PATH,
    ("s3", UrlStyle.GS_VIRTUAL): UrlStyle.S3_VIRTUAL,
    ("s3", UrlStyle.GS_API): UrlStyle.S3_PATH,
}


def _equivalent_style(style: UrlStyle, provider: str) -> UrlStyle:
    return _EQUIVALENT.get((provider, style), style)


# --- free text ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundUrl:
    """A URL candidate in free text: ``text[start:end] == url``.

    ``parsed`` is :func:`parse_url` of ``url``; ``None`` when it names no object of
    S3, GCS or a mapped CDN host.
    """

    start: int
    end: int
    url: str
    parsed: ParsedUrl | None


_URL_START = re.compile(r"(?<![A-Za-z0-9+.\-])(?:s3|gs|https?)://", re.IGNORECASE)
_URI_BODY = re.compile(r"[^\s\"'<>`\\^|{}]*")
_HTTP_BODY = re.compile(r"[^\s\"'<>`\\^|{}()\[\]]*")
# A list written "url1,url2" holds two URLs; a scheme right after ',' or ';' starts the next one. An HTML
# entity of a character that ends a candidate (space, no-break space, quotes, < >) ends it too.
_NEXT_URL = re.compile(
    r"[,;](?=(?:s3|gs|https?)://)"
    r"|&(?:nbsp|lt|gt|quot|apos|#0*(?:9|10|13|32|34|39|60|62|160)|#x0*(?:9|a|d|20|22|27|3c|3e|a0));",
    re.IGNORECASE,
)
_TRAILING_ENTITY = re.compile(r"&(?:[A-Za-z]+|#[0-9]+|#[xX][0-9A-Fa-f]+);\Z")
_TRAILING_PUNCTUATION = ".,;:!?"


def find_urls(text: str, hosts: Mapping[str, CdnHost] | Iterable[CdnHost] | None = None) -> list[FoundUrl]:
    """Every URL candidate with scheme ``s3``, ``gs``, ``http`` or ``https`` (any case) in ``text``.

    Works on message bodies, HTML attributes, Markdown (``[t](url)``, ``<url>``) and
    JSON-ish text. A candidate ends at whitespace or one of ``" ' < > ` \\ ^ | { }``,
    an http(s) one also at ``( ) [ ]``; trailing ``. , ; : ! ?``, a trailing HTML
    entity and, in ``s3://`` / ``gs://``, an unbalanced closing ``)`` or ``]`` are
    left out; the entity of a delimiter (``&nbsp;``, ``&quot;``, ``&lt;``) ends a
    candidate, and a scheme right after ``,`` or ``;`` starts a new one. So in free
    text a key cannot contain whitespace (a verbatim URI ends there) nor end with
    those punctuation marks, and a URL nested inside another one's query string is
    reported only as part of the outer one.

    Returns:
        The candidates in order, not overlapping, each with its parse (``None`` for
        other hosts and bucket-only URLs).
    """
    if not text:
        return []
    host_map = _host_map(hosts)
    found: list[FoundUrl] = []
    pos = 0
    while True:
        start_match = _URL_START.search(text, pos)
        if start_match is None:
            return found
        start, body_start = start_match.start(), start_match.end()
        http = start_match.group().lower().startswith("http")
        end = (_HTTP_BODY if http else _URI_BODY).match(text, body_start).end()
        cut = _NEXT_URL.search(text, body_start, end)
        if cut:
            end = cut.start()
        end = _trim(text, body_start, end, http)
        if end > body_start:
            url = text[start:end]
            found.append(FoundUrl(start, end, url, _parse(url, host_map)))
            pos = end
        else:
            pos = body_start


def _trim(text: str, body_start: int, end: int, http: bool) -> int:
    """The end of a candidate without what is more likely the sentence's than the URL's."""
    while end > body_start:
        last = text[end - 1]
        if last in _TRAILING_PUNCTUATION:
            entity = _TRAILING_ENTITY.search(text, body_start, end) if last == ";" else None
            end = entity.start() if entity else end - 1
        elif not http and last in ")]":
            body = text[body_start:end]
            if body.count(last) <= body.count("(" if last == ")" else "["):
                return end
            end -= 1
        else:
            return end
    return end


def find_mentions(text: str, names: Iterable[str]) -> list[tuple[int, int, str]]:
    """Where bucket names or hostnames occur in ``text`` as whole tokens.

    Case-insensitive. A token boundary is the start or end of the text or any
    character not in ``[A-Za-z0-9.-]``; after the name a ``.`` ends the token too, so
    that a sentence's full stop and a hostname built on a bucket name
    (``seoul-photos.objects.example.net``, a URL style nobody told us about) count.
    ``seoul-photos`` is not mentioned in ``seoul-photos-2``, ``xseoul-photos`` or
    ``cdn.seoul-photos``.

    Returns:
        ``(start, end, name)`` in text order, ``name`` as given in ``names``; where
        names overlap the longest wins.
    """
    by_lower: dict[str, str] = {}
    for name in names:
        if name:
            by_lower.setdefault(name.lower(), name)
    if not text or not by_lower:
        return []
    alternatives = "|".join(re.escape(n) for n in sorted(by_lower, key=len, reverse=True))
    pattern = re.compile(rf"(?<![A-Za-z0-9.\-])(?:{alternatives})(?![A-Za-z0-9\-])", re.IGNORECASE)
    return [(m.start(), m.end(), by_lower[m.group().lower()]) for m in pattern.finditer(text)]


# --- query strings and secrets --------------------------------------------------------------------------------


def drop_query_params(query: str, names: Iterable[str]) -> str:
    """``query`` without the parameters called any of ``names`` (case-insensitive).

    Names are compared form-decoded; every other ``&``-separated piece is kept
    byte-identical and in order. ``query`` is without the leading ``?``.
    """
    drop = {n.lower() for n in names}
    if not query or not drop:
        return query
    return "&".join(piece for piece, name, _value in _query_params(query) if name.lower() not in drop)


REDACTED = "REDACTED"
_SECRET_NAMES = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature", "x-goog-credential",
    "signature", "sig", "key", "apikey", "api_key", "authorization", "auth",
})
_SECRET_PARTS = ("token", "signature", "secret", "password", "passwd", "credential")
# A parameter starts after ? & ; or # (";" also ends "&amp;" in HTML). Lookahead, so that matches may overlap:
# "a=1;token=x" must reveal "token" even though "a"'s value runs over it.
_URL_PARAM = re.compile(r"(?=[?&;#](?P<name>[^=&;#?]+)=(?P<value>[^&#]*))")
_TEXT_PARAM = re.compile(
    r"(?=(?:^|[?&;#\s\"'(,])(?P<name>[^=&;#?\s\"'<>()]+)=(?P<value>[^&#\s\"'<>`()\[\]{}|\\^]*))"
)
_URL_AUTHORITY = re.compile(r"[ \t\r\n]*[A-Za-z][A-Za-z0-9+.\-]*://(?P<authority>[^/?#]*)")
# The password runs to the last '@' of the authority, as in redact_url.
_TEXT_USERINFO = re.compile(
    r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:\"'<>]*:(?P<password>[^\s/?#\"'<>]+)@"
)


def _is_secret(raw_name: str) -> bool:
    name = unquote_plus(raw_name).strip().lower()
    return name in _SECRET_NAMES or any(part in name for part in _SECRET_PARTS)


def _redact_spans(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """``text`` with each span replaced by REDACTED; overlapping spans become one."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, pos = [], 0
    for start, end in merged:
        out.append(text[pos:start])
        out.append(REDACTED)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _secret_values(text: str, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    return [m.span("value") for m in pattern.finditer(text) if m.group("value") and _is_secret(m.group("name"))]


def redact_url(url: str) -> str:
    """``url`` with secrets replaced by ``REDACTED``; safe to log.

    Redacts the values of ``X-Amz-Signature``, ``X-Amz-Credential``,
    ``X-Amz-Security-Token``, ``X-Goog-Signature``, ``X-Goog-Credential``,
    ``Signature``, ``sig``, ``key`` and of any parameter (in the query or the
    fragment) whose name contains ``token``, ``signature``, ``secret``,
    ``password`` or ``credential`` (case-insensitive), and the password of a
    userinfo. ``AWSAccessKeyId`` and ``GoogleAccessId`` stay. Never raises: input
    that is not a URL comes back with whatever these patterns find redacted.
    """
    if not isinstance(url, str) or not url:
        return url
    spans = _secret_values(url, _URL_PARAM)
    authority = _URL_AUTHORITY.match(url)
    if authority and "@" in authority.group("authority"):
        userinfo = authority.group("authority").rpartition("@")[0]
        if ":" in userinfo:
            start = authority.start("authority") + userinfo.index(":") + 1
            spans.append((start, authority.start("authority") + len(userinfo)))
    return _redact_spans(url, spans)


def redact_text(text: str) -> str:
    """``text`` with :func:`redact_url` applied to every URL :func:`find_urls` finds.

    Then, for what is not a URL with a scheme (protocol-relative ``//host/...``,
    other schemes, ``password=...`` in prose), secret-named ``name=value`` pairs and
    ``scheme://user:password@`` are redacted wherever they occur. Never raises.
    """
    if not isinstance(text, str) or not text:
        return text
    out, pos = [], 0
    for found in find_urls(text):
        out.append(text[pos:found.start])
        out.append(redact_url(found.url))
        pos = found.end
    out.append(text[pos:])
    text = "".join(out)
    spans = _secret_values(text, _TEXT_PARAM)
    spans.extend(m.span("password") for m in _TEXT_USERINFO.finditer(text))
    return _redact_spans(text, spans)
