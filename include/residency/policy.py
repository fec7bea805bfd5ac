"""The migration policy: load a YAML file, validate every field before any work.

A bad field fails with :class:`~residency.errors.PolicyError` naming the field
(dotted path, e.g. ``sources[1].conn_id``) and the value. The policy hash (SHA-256
of the file's bytes) goes into every task log and the evidence, so an auditor can
tell which policy a run obeyed. See README.md, "The policy file", for the format.
"""

from __future__ import annotations

import fnmatch
import hashlib
import mimetypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import PolicyError
from .uris import ObjectRef, parse_uri

MiB = 1024 * 1024

DEFAULT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image": (".jpg", ".jpeg", ".png", ".gif", ".webp", ".heic", ".heif", ".avif", ".bmp", ".tif", ".tiff"),
    "video": (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".3gp", ".ts"),
    "audio": (".mp3", ".m4a", ".aac", ".wav", ".ogg", ".oga", ".opus", ".flac", ".amr"),
}
GENERIC_CONTENT_TYPES = ("", "application/octet-stream", "binary/octet-stream")

_MIGRATION_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{2,63}$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_ACCESS_KEY = re.compile(r"^[A-Z0-9]{16,128}$")
_IAM_NAME = re.compile(r"^[\w+=,.@-]{1,64}$")


@dataclass(frozen=True)
class Source:
    ref: ObjectRef  # bucket and optional key prefix
    conn_id: str
    to: str  # destination provider
    location: str | None = None  # declared location, when the server cannot tell
    decide_by: str | None = None  # overrides selection.decide_by for this source
    inventory_report: str | None = None  # s3:// URI of an S3 Inventory report's manifest.json, read instead of listing

    @property
    def bucket_uri(self) -> str:
        return self.ref.bucket_uri

    @property
    def prefix(self) -> str:
        return self.ref.key


@dataclass(frozen=True)
class Destination:
    """Where one provider's copies go. ``ref.key`` is the destination prefix: always
    empty or ending in ``/`` (a prefix written without one is taken as a folder)."""

    ref: ObjectRef
    conn_id: str
    key_template: str = "{src_bucket}/{key}"
    location: str | None = None

    def dst_ref(self, src: ObjectRef) -> ObjectRef:
        key = self.key_template.format(src_bucket=src.bucket, key=src.key, src_provider=src.provider)
        return ObjectRef(self.ref.provider, self.ref.bucket, self.ref.key + key)

    def key_prefix(self, source: Source) -> str:
        """The literal start of every destination key of ``source``: what a listing
        of this source's copies is narrowed to (the template up to ``{key}``, then
        the source's own prefix)."""
        head = self.key_template.split("{key}", 1)[0]
        return self.ref.key + head.format(src_bucket=source.ref.bucket, src_provider=source.ref.provider) + source.prefix


@dataclass(frozen=True)
class Selection:
    media_types: tuple[str, ...] = ("image", "video", "audio")
    extensions: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_EXTENSIONS))
    exclude_prefixes: tuple[str, ...] = ()
    #: How an object whose listing carries no content type (S3) is selected:
    #: ``extension`` decides by the name where it can (a HEAD only for a missing or
    #: unknown extension), ``content_type`` HEADs every object and lets the stored
    #: content type decide. Where the listing reports content types (GCS), they decide.
    decide_by: str = "extension"

    def by_name(self, key: str) -> tuple[bool, str | None]:
        """``(decided, media type or None)`` from the key alone, for ``decide_by: extension``.

        A media extension of the policy selects; an extension the standard MIME
        table maps to a type that is not a selected media type (``.json``, ``.log``)
        leaves the object out; no extension, an unknown one, or one of a selected
        media type that the policy does not list (``.tiff`` with a narrowed list)
        is not decided (the caller asks the server for the content type).
        """
        if any(key.startswith(p) for p in self.exclude_prefixes):
            return True, None
        lower = key.lower()
        for media in self.media_types:
            if lower.endswith(tuple(self.extensions.get(media, ()))):
                return True, media
        name = lower.rsplit("/", 1)[-1]
        if name.endswith(NON_MEDIA_EXTENSIONS):
            return True, None
        guessed, _ = mimetypes.guess_type(name, strict=False)
        if guessed is None or guessed in GENERIC_CONTENT_TYPES:
            return False, None
        if guessed.split("/")[0] in self.media_types:
            return False, None
        return True, None

    def media_type(self, key: str, content_type: str | None) -> str | None:
        """The media type of an object, or ``None`` when it is out of scope.

        A specific content type decides; the extension decides only when the
        content type is missing or generic (``application/octet-stream``).
        """
        if any(key.startswith(p) for p in self.exclude_prefixes):
            return None
        ctype = (content_type or "").split(";")[0].strip().lower()
        if ctype not in GENERIC_CONTENT_TYPES:
            major = ctype.split("/")[0]
            return major if major in self.media_types else None
        lower = key.lower()
        for media in self.media_types:
            if lower.endswith(tuple(self.extensions.get(media, ()))):
                return media
        return None


#: Extensions of what object stores commonly hold beside media that the standard
#: MIME table does not know (it knows .json, .txt, .csv, .html, .zip, ...).
NON_MEDIA_EXTENSIONS = (".log", ".jsonl", ".ndjson", ".parquet", ".orc", ".avro", ".tsv", ".yaml", ".yml", ".md")

#: How objects without a listed content type are selected (see :attr:`Selection.decide_by`).
DECIDE_BY = ("extension", "content_type")


@dataclass(frozen=True)
class Transfer:
    multipart_threshold: int = 64 * MiB
    part_size: int = 64 * MiB
    shard_size: int = 200
    shard_bytes: int = 1024 * MiB  # a shard closes at shard_size objects or this many bytes
    workers: int = 8
    sha256: bool = False  # also prove every object with SHA-256 (reads back what no server reports)


#: What a reference column holds: one URL per cell, free text with URLs in it
#: (message bodies, HTML, Markdown), or a JSON document with URLs at any depth.
COLUMN_KINDS = ("url", "text", "json")


@dataclass(frozen=True)
class ReferenceColumn:
    table: str
    key: str
    column: str
    kind: str = "url"
    #: JSON kind only: where the URLs are (``$.avatar.url``, ``$.images[*].src``,
    #: ``$..href``); empty: every string of the document, at any depth.
    paths: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass(frozen=True)
class HostMapping:
    """A hostname (a CDN) in front of a source bucket: ``https://host/<path_prefix><key>``.

    ``to_host`` (optional) is the domestic hostname in front of the destination
    bucket, serving ``https://to_host/<to_path_prefix><destination key>``; without
    it such URLs cannot be rewritten and stay residual."""

    host: str
    bucket_uri: str
    path_prefix: str = ""
    to_host: str | None = None
    to_path_prefix: str = ""


@dataclass(frozen=True)
class AcceptedResidual:
    """References the policy accepts to keep pointing overseas, and why.

    ``uri`` is a glob (``fnmatch``, case-sensitive) on the overseas object URI the
    reference names; ``column`` (``table.column``) and ``key`` narrow it to cells.
    At least one of ``uri`` and ``column`` is set; ``reason`` is always stated.
    """

    reason: str
    uri: str | None = None
    column: str | None = None
    key: str | None = None

    def matches(self, object_uri: str | None, column: str, key: str) -> bool:
        if self.uri is not None and (object_uri is None or not fnmatch.fnmatchcase(object_uri, self.uri)):
            return False
        if self.column is not None and self.column != column:
            return False
        return self.key is None or self.key == key

    def describe(self) -> str:
        parts = [f"uri {self.uri}"] if self.uri else []
        if self.column:
            parts.append(f"column {self.column}" + (f" key {self.key}" if self.key is not None else ""))
        return ", ".join(parts)


@dataclass(frozen=True)
class References:
    """The application database and the columns that hold object URLs.

    The database is named by an Airflow connection (``conn_id``) or by a URL that
    carries no password (``database_url``): a policy file never holds a secret.
    """

    database_url: str | None
    columns: tuple[ReferenceColumn, ...]
    batch_size: int = 500
    conn_id: str | None = None
    hosts: tuple[HostMapping, ...] = ()
    accepted_residual: tuple[AcceptedResidual, ...] = ()
    discover: Discover | None = None


@dataclass(frozen=True)
class Discover:
    """Discovery: scan every text and JSON column of the application database (the
    schemas named, or the default one) for references the policy's columns miss."""

    schemas: tuple[str | None, ...] = (None,)  # None: the connection's default schema
    exclude: tuple[str, ...] = ()  # table or table.column names not to scan


@dataclass(frozen=True)
class Cutover:
    """How the cutover meets a live application.

    ``catch_up_passes``: listings of the sources after the copy, each copying and
    verifying what arrived or changed since, repeated while the delta shrinks (0:
    none). ``freeze``: during the final pass and the cutover, source buckets refuse
    writes (an S3 bucket-policy deny statement), removed afterwards.
    """

    catch_up_passes: int = 3
    freeze: bool = False


@dataclass(frozen=True)
class Principal:
    """A foreign AWS party, selected by IAM user name, by user tag, or by account (at least one).

    ``user``/``tag`` select IAM users of our account: their access keys, console
    login profile and sessions are revoked, and trust entries naming them are
    removed from our roles. ``account`` (a 12-digit id) selects grants to that
    account: trust entries, bucket-policy statements and ACL grants
    (``canonical_ids``) on the policy's S3 buckets.
    """

    provider: str  # aws
    conn_id: str  # credentials allowed to manage the principal's keys, roles and bucket policies
    user: str | None
    access_keys: tuple[str, ...] | None  # None: every key of the user
    probe_conn_id: str | None  # the foreign party's own credentials, for the denial proof
    probe_uri: str | None  # what the probe tries to read
    tag: tuple[str, str] | None = None  # (key, value): every IAM user carrying this tag
    account: str | None = None  # a foreign AWS account id
    canonical_ids: tuple[str, ...] = ()  # the foreign account's canonical user ids (ACL grantees)
    delete_after_hours: float = 0.0  # soak between deactivating a key and deleting it
    index: int = 0  # its place in the policy's ``revoke`` list (for field names in errors)

    @property
    def label(self) -> str:
        parts = [f"user {self.user}" if self.user else "", f"tag {self.tag[0]}={self.tag[1]}" if self.tag else "",
                 f"account {self.account}" if self.account else ""]
        return "aws " + ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class GcsPrincipal:
    """A foreign Google Cloud party: service accounts by email, or every member of a domain.

    Its HMAC keys and service-account keys are deactivated, then deleted, and its
    members are removed from the IAM bindings of the policy's GCS buckets.
    """

    conn_id: str  # admin credentials: manage HMAC keys, bucket IAM, service-account keys
    project: str  # the project holding the HMAC keys and service accounts
    service_accounts: tuple[str, ...]  # selected by name (emails); may be empty when domain is given
    domain: str | None  # selected by domain: emails ending with @<domain>, and ``domain:<domain>`` members
    hmac_keys: tuple[str, ...] | None  # None: every HMAC key of the selected service accounts
    hmac_probe_conn_id: str | None  # an aws-type connection holding a foreign HMAC key (the XML API)
    member_probe_conn_id: str | None  # a google_cloud_platform connection holding a foreign SA key file
    probe_uri: str | None  # gs://bucket[/prefix] both probes try to list
    provider: str = "gcs"
    index: int = 0

    @property
    def label(self) -> str:
        who = list(self.service_accounts) + ([f"*@{self.domain}"] if self.domain else [])
        return "gcs " + ", ".join(who)


@dataclass(frozen=True)
class Purge:
    """``purge: {soak_hours}``: how long after the cutover the overseas copies may be deleted."""

    soak_hours: float = 24.0


#: The irreversible steps a human approves in the Airflow UI before they happen.
APPROVAL_STEPS = ("cutover", "revoke", "rollback", "purge")


@dataclass(frozen=True)
class ApprovalRule:
    """Who may approve one step, and how long the step waits before it counts as rejected."""

    approvers: tuple[str, ...] = ()  # Airflow user ids; empty: any user allowed to answer
    timeout_hours: float | None = None  # None: wait as long as it takes


@dataclass(frozen=True)
class Policy:
    path: str
    sha256: str
    migration_id: str
    home_jurisdiction: str
    sources: tuple[Source, ...]
    destinations: Mapping[str, Destination]
    selection: Selection
    transfer: Transfer
    references: References | None
    revocations: tuple[Principal, ...]  # aws principals
    control_dir: str
    ledger_url: str | None
    ledger_conn_id: str | None = None
    approvals: Mapping[str, ApprovalRule] = field(default_factory=lambda: {s: ApprovalRule() for s in APPROVAL_STEPS})
    cutover: Cutover = field(default_factory=Cutover)
    gcs_revocations: tuple[GcsPrincipal, ...] = ()
    purge: Purge = field(default_factory=Purge)

    @property
    def principals(self) -> tuple[Principal | GcsPrincipal, ...]:
        """Every foreign principal, in the order of the policy's ``revoke`` list."""
        return tuple(sorted((*self.revocations, *self.gcs_revocations), key=lambda p: p.index))

    def destination_for(self, source: Source) -> Destination:
        return self.destinations[source.to]

    def route(self, source: Source) -> str:
        return f"{source.ref.provider}->{source.to}"

    def summary(self) -> str:
        """One line for the start of every task log."""
        return (
            f"migration {self.migration_id} policy sha256:{self.sha256[:16]} home {self.home_jurisdiction} "
            f"sources {', '.join(s.bucket_uri + ('/' + s.prefix if s.prefix else '') for s in self.sources)} -> "
            f"{', '.join(d.ref.uri for d in self.destinations.values())}"
        )


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file. Raises PolicyError naming the field and value."""
    p = Path(path)
    if not p.is_file():
        raise PolicyError("policy_path", str(path), "file not found")
    raw = p.read_bytes()
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise PolicyError("policy_path", str(path), f"not valid YAML: {exc}") from exc
    return parse_policy(doc, path=str(p.resolve()), sha256=hashlib.sha256(raw).hexdigest())


def parse_policy(doc: Any, path: str = "<memory>", sha256: str = "") -> Policy:
    """Validate an already-parsed policy document."""
    if not isinstance(doc, dict):
        raise PolicyError("(root)", type(doc).__name__, "the policy must be a mapping")
    _no_unknown(doc, "", {
        "migration_id", "home_jurisdiction", "sources", "destinations", "selection",
        "transfer", "references", "revoke", "control_dir", "ledger_url", "ledger_conn_id", "approvals",
        "cutover", "purge",
    })
    base = Path(path).parent if path != "<memory>" else Path.cwd()

    migration_id = _req(doc, "migration_id", str)
    if not _MIGRATION_ID.match(migration_id):
        raise PolicyError("migration_id", migration_id, "use 3-64 characters: lowercase letters, digits, '.', '_', '-'")
    home = _req(doc, "home_jurisdiction", str)
    if not _COUNTRY.match(home):
        raise PolicyError("home_jurisdiction", home, "expected an ISO 3166-1 alpha-2 code such as 'JP'")

    destinations = _destinations(doc)
    sources = _sources(doc, destinations)
    selection = _selection(doc.get("selection") or {})
    transfer = _transfer(doc.get("transfer") or {})
    references = _references(doc.get("references"), base)
    principals, gcs_principals = _principals(doc.get("revoke") or [])

    control_dir = doc.get("control_dir", ".residency")
    if not isinstance(control_dir, str) or not control_dir:
        raise PolicyError("control_dir", control_dir, "expected a folder path")
    control = Path(control_dir) if Path(control_dir).is_absolute() else base / control_dir
    ledger_conn_id = _conn_id(doc, "ledger_conn_id", "", required=False)
    if ledger_conn_id and doc.get("ledger_url"):
        raise PolicyError("ledger_url", redact_db_url(str(doc["ledger_url"])), "give ledger_url or ledger_conn_id, not both")
    ledger_url: str | None = None
    if not ledger_conn_id:
        if doc.get("ledger_url"):
            ledger_url = _database_url(doc["ledger_url"], "ledger_url", base)
        else:  # the environment may carry a password; a policy file may not
            ledger_url = os.environ.get("RESIDENCY_LEDGER_URL") or f"sqlite:///{control / 'ledger.db'}"

    return Policy(
        path=path, sha256=sha256, migration_id=migration_id, home_jurisdiction=home,
        sources=sources, destinations=destinations, selection=selection, transfer=transfer,
        references=references, revocations=principals, control_dir=str(control), ledger_url=ledger_url,
        ledger_conn_id=ledger_conn_id, approvals=_approvals(doc.get("approvals") or {}),
        cutover=_cutover(doc.get("cutover") or {}), gcs_revocations=gcs_principals,
        purge=_purge(doc.get("purge") or {}),
    )


def _purge(raw: Any) -> Purge:
    if not isinstance(raw, dict):
        raise PolicyError("purge", raw, "expected a mapping")
    _no_unknown(raw, "purge.", {"soak_hours"})
    soak = raw.get("soak_hours", 24)
    if isinstance(soak, bool) or not isinstance(soak, (int, float)) or not 0 <= soak <= 24 * 365:
        raise PolicyError("purge.soak_hours", soak, "expected hours from 0 to 8760 (a year)")
    return Purge(float(soak))


def _cutover(raw: Any) -> Cutover:
    if not isinstance(raw, dict):
        raise PolicyError("cutover", raw, "expected a mapping")
    _no_unknown(raw, "cutover.", {"catch_up_passes", "freeze"})
    passes = raw.get("catch_up_passes", 3)
    if not isinstance(passes, int) or isinstance(passes, bool) or not 0 <= passes <= 20:
        raise PolicyError("cutover.catch_up_passes", passes, "expected an integer from 0 to 20")
    freeze = raw.get("freeze", False)
    if not isinstance(freeze, bool):
        raise PolicyError("cutover.freeze", freeze, "expected true or false")
    return Cutover(passes, freeze)


_USER = re.compile(r"^[\w.@+-]{1,128}$")


def _approval_rule(raw: Mapping[str, Any], prefix: str, base: ApprovalRule) -> ApprovalRule:
    approvers = raw.get("approvers", list(base.approvers))
    if not isinstance(approvers, list) or not all(isinstance(a, str) and _USER.match(a) for a in approvers):
        raise PolicyError(f"{prefix}approvers", approvers, "expected a list of Airflow user ids")
    timeout = raw.get("timeout_hours", base.timeout_hours)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= 24 * 90):
        raise PolicyError(f"{prefix}timeout_hours", timeout, "expected hours, more than 0 and at most 2160 (90 days)")
    return ApprovalRule(tuple(approvers), float(timeout) if timeout is not None else None)


def _approvals(raw: Any) -> dict[str, ApprovalRule]:
    """``approvals: {approvers, timeout_hours, cutover: {...}, revoke: {...}}``: defaults, then per step."""
    if not isinstance(raw, dict):
        raise PolicyError("approvals", raw, "expected a mapping")
    _no_unknown(raw, "approvals.", {"approvers", "timeout_hours", *APPROVAL_STEPS})
    default = _approval_rule(raw, "approvals.", ApprovalRule())
    out = {}
    for step in APPROVAL_STEPS:
        item = raw.get(step) or {}
        if not isinstance(item, dict):
            raise PolicyError(f"approvals.{step}", item, "expected a mapping")
        _no_unknown(item, f"approvals.{step}.", {"approvers", "timeout_hours"})
        out[step] = _approval_rule(item, f"approvals.{step}.", default)
    return out


def redact_db_url(url: str) -> str:
    """A database URL with its password replaced by ``***``, for messages and logs.

    Never raises: text that is not a URL comes back with anything between ``:``
    and ``@`` after the scheme masked.
    """
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a message must never fail, or echo a secret
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _database_url(value: Any, field: str, base: Path) -> str:
    """A database URL from the policy: SQLAlchemy form, no password, SQLite paths
    relative to the policy file. The error never shows a password."""
    import sqlalchemy as sa

    if not isinstance(value, str) or "://" not in value:
        shown = redact_db_url(value) if isinstance(value, str) else value
        raise PolicyError(field, shown, "expected an SQLAlchemy URL such as sqlite:///app.db")
    try:
        url = sa.engine.make_url(value)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several kinds for bad URLs
        raise PolicyError(field, redact_db_url(value), f"not a valid database URL ({type(exc).__name__})") from None
    if url.password:
        raise PolicyError(
            field, redact_db_url(value),
            "a policy file must not hold a password: name an Airflow connection instead "
            f"({'ledger_conn_id' if field == 'ledger_url' else 'references.conn_id'})",
        )
    if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        rel = value[len("sqlite:///"):]
        if rel and rel != ":memory:":
            return f"sqlite:///{(base / rel).resolve()}"
    return value


def _no_unknown(mapping: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
    for key in mapping:
        if key not in allowed:
            raise PolicyError(f"{prefix}{key}", mapping[key], f"unknown field; allowed: {', '.join(sorted(allowed))}")


def _req(mapping: Mapping[str, Any], name: str, kind: type, prefix: str = "") -> Any:
    if name not in mapping or mapping[name] in (None, ""):
        raise PolicyError(f"{prefix}{name}", None, "required")
    value = mapping[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise PolicyError(f"{prefix}{name}", value, f"expected {kind.__name__}")
    return value


def _conn_id(mapping: Mapping[str, Any], name: str, prefix: str, required: bool = True) -> str | None:
    if not required and mapping.get(name) in (None, ""):
        return None
    value = _req(mapping, name, str, prefix)
    if not _CONN_ID.match(value):
        raise PolicyError(f"{prefix}{name}", value, "not a valid Airflow connection id")
    return value


def _destinations(doc: Mapping[str, Any]) -> dict[str, Destination]:
    raw = doc.get("destinations")
    if not isinstance(raw, dict) or not raw:
        raise PolicyError("destinations", raw, "expected a mapping of provider (s3, gs) to destination")
    out: dict[str, Destination] = {}
    for provider, item in raw.items():
        prefix = f"destinations.{provider}."
        if provider not in ("s3", "gs"):
            raise PolicyError(f"destinations.{provider}", item, "provider must be 's3' or 'gs'")
        if not isinstance(item, dict):
            raise PolicyError(f"destinations.{provider}", item, "expected a mapping")
        _no_unknown(item, prefix, {"uri", "conn_id", "key_template", "location"})
        ref = parse_uri(_req(item, "uri", str, prefix), f"{prefix}uri")
        if ref.provider != provider:
            raise PolicyError(f"{prefix}uri", item["uri"], f"must be a {provider}:// bucket")
        if ref.key and not ref.key.endswith("/"):
            ref = ref.with_key(ref.key + "/")  # a destination prefix is a folder
        template = item.get("key_template", "{src_bucket}/{key}")
        if not isinstance(template, str) or "{key}" not in template:
            raise PolicyError(f"{prefix}key_template", template, "must contain {key}")
        try:
            template.format(src_bucket="b", key="k", src_provider="s3")
        except (KeyError, IndexError, ValueError) as exc:
            raise PolicyError(f"{prefix}key_template", template, f"unknown placeholder {exc}; use {{src_bucket}}, {{key}}, {{src_provider}}") from exc
        out[provider] = Destination(ref, _conn_id(item, "conn_id", prefix), template, _location(item, prefix))
    return out


def _location(item: Mapping[str, Any], prefix: str) -> str | None:
    value = item.get("location")
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9-]{2,40}$", value):
        raise PolicyError(f"{prefix}location", value, "expected a region or location name such as ap-northeast-1")
    return value


def _sources(doc: Mapping[str, Any], destinations: Mapping[str, Destination]) -> tuple[Source, ...]:
    raw = doc.get("sources")
    if not isinstance(raw, list) or not raw:
        raise PolicyError("sources", raw, "expected a non-empty list")
    out: list[Source] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        prefix = f"sources[{i}]."
        if not isinstance(item, dict):
            raise PolicyError(f"sources[{i}]", item, "expected a mapping")
        _no_unknown(item, prefix, {"uri", "conn_id", "to", "location", "decide_by", "inventory_report"})
        ref = parse_uri(_req(item, "uri", str, prefix), f"{prefix}uri")
        to = item.get("to", ref.provider)
        if to not in destinations:
            raise PolicyError(f"{prefix}to", to, f"no destination for provider {to!r}; have {sorted(destinations)}")
        if ref.uri in seen:
            raise PolicyError(f"{prefix}uri", item["uri"], "listed twice")
        dst = destinations[to].ref
        if dst.bucket == ref.bucket and dst.provider == ref.provider:
            raise PolicyError(f"{prefix}uri", item["uri"], "source and destination are the same bucket")
        for j, other in enumerate(out):
            if other.ref.bucket_uri == ref.bucket_uri and (
                ref.key.startswith(other.ref.key) or other.ref.key.startswith(ref.key)
            ):
                raise PolicyError(
                    f"{prefix}uri", item["uri"],
                    f"overlaps sources[{j}] ({other.ref.uri}): a key prefix is a plain string prefix, so the same "
                    "objects would be migrated twice; narrow one of them or merge them",
                )
        seen.add(ref.uri)
        decide_by = item.get("decide_by")
        if decide_by is not None and decide_by not in DECIDE_BY:
            raise PolicyError(f"{prefix}decide_by", decide_by, f"expected one of {', '.join(DECIDE_BY)}")
        report = item.get("inventory_report")
        if report is not None:
            if ref.provider != "s3":
                raise PolicyError(f"{prefix}inventory_report", report, "S3 Inventory reports describe S3 buckets only")
            report_ref = parse_uri(report, f"{prefix}inventory_report") if isinstance(report, str) else None
            if report_ref is None or report_ref.provider != "s3" or not report_ref.key.endswith("manifest.json"):
                raise PolicyError(f"{prefix}inventory_report", report,
                                  "expected the s3:// URI of a report's manifest.json")
        out.append(Source(ref, _conn_id(item, "conn_id", prefix), to, _location(item, prefix), decide_by, report))
    for provider, destination in destinations.items():
        routed = {s.ref.bucket_uri for s in out if s.to == provider}
        if len(routed) > 1 and "{src_bucket}" not in destination.key_template:
            raise PolicyError(
                f"destinations.{provider}.key_template", destination.key_template,
                f"{len(routed)} source buckets copy here ({', '.join(sorted(routed))}): without {{src_bucket}} "
                "the same key of two buckets would collide",
            )
    return tuple(out)


def _selection(raw: Any) -> Selection:
    if not isinstance(raw, dict):
        raise PolicyError("selection", raw, "expected a mapping")
    _no_unknown(raw, "selection.", {"media_types", "extensions", "exclude_prefixes", "decide_by"})
    decide_by = raw.get("decide_by", "extension")
    if decide_by not in DECIDE_BY:
        raise PolicyError("selection.decide_by", decide_by, f"expected one of {', '.join(DECIDE_BY)}")
    media = raw.get("media_types", ["image", "video", "audio"])
    if not isinstance(media, list) or not media or any(m not in DEFAULT_EXTENSIONS for m in media):
        raise PolicyError("selection.media_types", media, "expected a non-empty list of image, video, audio")
    extensions = dict(DEFAULT_EXTENSIONS)
    ext_raw = raw.get("extensions", {})
    if not isinstance(ext_raw, dict):
        raise PolicyError("selection.extensions", ext_raw, "expected a mapping of media type to extensions")
    for kind, values in ext_raw.items():
        if kind not in DEFAULT_EXTENSIONS:
            raise PolicyError(f"selection.extensions.{kind}", values, "media type must be image, video or audio")
        if not isinstance(values, list) or not all(isinstance(v, str) and v.startswith(".") for v in values):
            raise PolicyError(f"selection.extensions.{kind}", values, "expected a list like ['.jpg', '.png']")
        extensions[kind] = tuple(v.lower() for v in values)
    excludes = raw.get("exclude_prefixes", [])
    if not isinstance(excludes, list) or not all(isinstance(v, str) for v in excludes):
        raise PolicyError("selection.exclude_prefixes", excludes, "expected a list of key prefixes")
    for i, value in enumerate(excludes):
        if not value:
            raise PolicyError(f"selection.exclude_prefixes[{i}]", value, "an empty prefix excludes every object")
    return Selection(tuple(media), extensions, tuple(excludes), decide_by)


def _positive_int(raw: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise PolicyError(f"transfer.{name}", value, f"expected an integer from {low} to {high}")
    return value


def _transfer(raw: Any) -> Transfer:
    if not isinstance(raw, dict):
        raise PolicyError("transfer", raw, "expected a mapping")
    _no_unknown(raw, "transfer.", {"multipart_threshold_mb", "part_size_mb", "shard_size", "shard_mb", "workers",
                                   "sha256"})
    sha256 = raw.get("sha256", False)
    if not isinstance(sha256, bool):
        raise PolicyError("transfer.sha256", sha256, "expected true or false")
    threshold = _positive_int(raw, "multipart_threshold_mb", 64, 5, 5 * 1024)
    part = _positive_int(raw, "part_size_mb", min(64, threshold), 5, 5 * 1024)
    if part > threshold:
        raise PolicyError("transfer.part_size_mb", part, f"must not exceed multipart_threshold_mb ({threshold})")
    return Transfer(
        multipart_threshold=threshold * MiB,
        part_size=part * MiB,
        shard_size=_positive_int(raw, "shard_size", 200, 1, 100_000),
        shard_bytes=_positive_int(raw, "shard_mb", 1024, 1, 10 * 1024 * 1024) * MiB,
        workers=_positive_int(raw, "workers", 8, 1, 64),
        sha256=sha256,
    )


def _references(raw: Any, base: Path) -> References | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise PolicyError("references", raw, "expected a mapping")
    _no_unknown(raw, "references.", {"database_url", "conn_id", "columns", "batch_size", "hosts", "accepted_residual",
                                     "discover"})
    conn_id = _conn_id(raw, "conn_id", "references.", required=False)
    url: str | None = None
    if raw.get("database_url") not in (None, ""):
        if conn_id:
            raise PolicyError("references.database_url", redact_db_url(str(raw["database_url"])),
                              "give database_url or conn_id, not both")
        url = _database_url(raw["database_url"], "references.database_url", base)
    elif not conn_id:
        raise PolicyError("references.conn_id", None, "required: the Airflow connection of the application database "
                          "(or database_url, without a password)")
    columns_raw = raw.get("columns")
    if not isinstance(columns_raw, list) or not columns_raw:
        raise PolicyError("references.columns", columns_raw, "expected a non-empty list of {table, key, column}")
    columns: list[ReferenceColumn] = []
    for i, item in enumerate(columns_raw):
        prefix = f"references.columns[{i}]."
        if not isinstance(item, dict):
            raise PolicyError(f"references.columns[{i}]", item, "expected a mapping")
        _no_unknown(item, prefix, {"table", "key", "column", "kind", "paths"})
        values = {}
        for name in ("table", "key", "column"):
            value = _req(item, name, str, prefix)
            if not _IDENT.match(value):
                raise PolicyError(f"{prefix}{name}", value, "not a plain SQL identifier")
            values[name] = value
        kind = item.get("kind", "url")
        if kind not in COLUMN_KINDS:
            raise PolicyError(f"{prefix}kind", kind, f"expected one of {', '.join(COLUMN_KINDS)}")
        column = ReferenceColumn(kind=kind, paths=_json_paths(item, prefix, kind), **values)
        if any((c.table, c.column) == (column.table, column.column) for c in columns):
            raise PolicyError(f"{prefix}column", column.column, f"{column.label} is listed twice")
        columns.append(column)
    batch = raw.get("batch_size", 500)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 100_000:
        raise PolicyError("references.batch_size", batch, "expected an integer from 1 to 100000")
    return References(
        url, tuple(columns), batch, conn_id=conn_id,
        hosts=_hosts(raw.get("hosts") or []), accepted_residual=_accepted(raw.get("accepted_residual") or []),
        discover=_discover(raw.get("discover", True)),
    )


def _json_paths(item: Mapping[str, Any], prefix: str, kind: str) -> tuple[str, ...]:
    raw = item.get("paths")
    if raw is None:
        return ()
    if kind != "json":
        raise PolicyError(f"{prefix}paths", raw, "only a column of kind json has paths")
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) for p in raw):
        raise PolicyError(f"{prefix}paths", raw, "expected a list of paths such as ['$.avatar.url', '$.images[*]']")
    from .jsonpaths import parse_path  # noqa: PLC0415 - keeps policy light

    for i, path in enumerate(raw):
        try:
            parse_path(path)
        except ValueError as exc:
            raise PolicyError(f"{prefix}paths[{i}]", path, str(exc)) from None
    return tuple(raw)


def _discover(raw: Any) -> Discover | None:
    if raw is False:
        return None
    if raw is True or raw is None:
        return Discover()
    if not isinstance(raw, dict):
        raise PolicyError("references.discover", raw, "expected true, false or {schemas, exclude}")
    _no_unknown(raw, "references.discover.", {"schemas", "exclude"})
    schemas = raw.get("schemas")
    if schemas is None:
        schema_names: tuple[str | None, ...] = (None,)
    elif isinstance(schemas, list) and schemas and all(isinstance(s, str) and _IDENT.match(s) for s in schemas):
        schema_names = tuple(schemas)
    else:
        raise PolicyError("references.discover.schemas", schemas, "expected a list of schema names")
    exclude = raw.get("exclude", [])
    if not isinstance(exclude, list) or not all(
        isinstance(e, str) and 1 <= e.count(".") + 1 <= 2 and all(_IDENT.match(p) for p in e.split("."))
        for e in exclude
    ):
        raise PolicyError("references.discover.exclude", exclude, "expected a list of table or table.column names")
    return Discover(schema_names, tuple(exclude))


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")


def _hosts(raw: Any) -> tuple[HostMapping, ...]:
    if not isinstance(raw, list):
        raise PolicyError("references.hosts", raw, "expected a list of {host, bucket}")
    out: list[HostMapping] = []
    for i, item in enumerate(raw):
        prefix = f"references.hosts[{i}]."
        if not isinstance(item, dict):
            raise PolicyError(f"references.hosts[{i}]", item, "expected a mapping")
        _no_unknown(item, prefix, {"host", "bucket", "path_prefix", "to_host", "to_path_prefix"})
        host = _req(item, "host", str, prefix)
        if not _HOSTNAME.match(host):
            raise PolicyError(f"{prefix}host", host, "expected a lower-case hostname such as media.example.kr")
        bucket = parse_uri(_req(item, "bucket", str, prefix), f"{prefix}bucket")
        if bucket.key:
            raise PolicyError(f"{prefix}bucket", item["bucket"], "name the bucket only; put a key prefix in path_prefix")
        to_host = item.get("to_host")
        if to_host is not None and (not isinstance(to_host, str) or not _HOSTNAME.match(to_host)):
            raise PolicyError(f"{prefix}to_host", to_host, "expected a lower-case hostname")
        paths = {}
        for name in ("path_prefix", "to_path_prefix"):
            value = item.get(name, "")
            if not isinstance(value, str) or value.startswith("/"):
                raise PolicyError(f"{prefix}{name}", value, "expected a path prefix without a leading '/' (or empty)")
            paths[name] = value
        if any(h.host == host for h in out):
            raise PolicyError(f"{prefix}host", host, "listed twice")
        out.append(HostMapping(host, bucket.bucket_uri, paths["path_prefix"], to_host, paths["to_path_prefix"]))
    return tuple(out)


def _accepted(raw: Any) -> tuple[AcceptedResidual, ...]:
    if not isinstance(raw, list):
        raise PolicyError("references.accepted_residual", raw, "expected a list of {uri or column, reason}")
    out = []
    for i, item in enumerate(raw):
        prefix = f"references.accepted_residual[{i}]."
        if not isinstance(item, dict):
            raise PolicyError(f"references.accepted_residual[{i}]", item, "expected a mapping")
        _no_unknown(item, prefix, {"uri", "column", "key", "reason"})
        reason = _req(item, "reason", str, prefix)
        if len(reason.strip()) < 10:
            raise PolicyError(f"{prefix}reason", reason, "say why these references may keep pointing overseas")
        uri = item.get("uri")
        if uri is not None:
            if not isinstance(uri, str) or not uri.startswith(("s3://", "gs://")):
                raise PolicyError(f"{prefix}uri", uri, "expected a glob on object URIs such as s3://bucket/logs/*")
            parse_uri(uri.split("*", 1)[0].split("?", 1)[0] or uri, f"{prefix}uri")
        column = item.get("column")
        if column is not None and (not isinstance(column, str) or column.count(".") != 1
                                   or not all(_IDENT.match(p) for p in column.split("."))):
            raise PolicyError(f"{prefix}column", column, "expected table.column")
        key = item.get("key")
        if key is not None:
            if column is None:
                raise PolicyError(f"{prefix}key", key, "a key needs a column")
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise PolicyError(f"{prefix}key", key, "expected the key value of one row")
            key = str(key)
        if uri is None and column is None:
            raise PolicyError(f"references.accepted_residual[{i}]", item, "give uri or column (or both)")
        out.append(AcceptedResidual(reason.strip(), uri, column, key))
    return tuple(out)


_ACCOUNT = re.compile(r"^[0-9]{12}$")
_CANONICAL_ID = re.compile(r"^[0-9a-f]{64}$")
_EMAIL = re.compile(r"^[a-z0-9][a-z0-9._%+-]*@[a-z0-9.-]+\.[a-z]{2,}$")
_DOMAIN = re.compile(r"^(?=.{3,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
_HMAC_ID = re.compile(r"^[A-Za-z0-9]{16,128}$")
_GCP_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")


def _principals(raw: Any) -> tuple[tuple[Principal, ...], tuple[GcsPrincipal, ...]]:
    if not isinstance(raw, list):
        raise PolicyError("revoke", raw, "expected a list of principals")
    aws: list[Principal] = []
    gcs: list[GcsPrincipal] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise PolicyError(f"revoke[{i}]", item, "expected a mapping")
        provider = item.get("provider", "aws")
        if provider == "aws":
            aws.append(_aws_principal(i, item))
        elif provider == "gcs":
            gcs.append(_gcs_principal(i, item))
        else:
            raise PolicyError(f"revoke[{i}].provider", provider, "expected 'aws' or 'gcs'")
    return tuple(aws), tuple(gcs)


def _probe_uri(item: Mapping[str, Any], prefix: str, provider: str) -> str | None:
    probe_uri = item.get("probe_uri")
    if probe_uri is None:
        return None
    scheme = "s3" if provider == "aws" else "gs"
    if not isinstance(probe_uri, str):
        raise PolicyError(f"{prefix}probe_uri", probe_uri, f"expected a {scheme}:// URI")
    if parse_uri(probe_uri, f"{prefix}probe_uri").provider != scheme:
        raise PolicyError(f"{prefix}probe_uri", probe_uri,
                          f"an {provider} principal is probed on a {scheme}:// URI: its credentials cannot prove "
                          "anything on the other provider")
    return probe_uri


def _aws_principal(i: int, item: Mapping[str, Any]) -> Principal:
    prefix = f"revoke[{i}]."
    _no_unknown(item, prefix, {"provider", "conn_id", "user", "tag", "account", "canonical_ids", "access_keys",
                               "probe_conn_id", "probe_uri", "delete_after_hours"})
    user = item.get("user")
    if user is not None and (not isinstance(user, str) or not _IAM_NAME.match(user)):
        raise PolicyError(f"{prefix}user", user, "not a valid IAM user name")
    tag = item.get("tag")
    if tag is not None:
        if (not isinstance(tag, dict) or len(tag) != 1
                or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in tag.items())):
            raise PolicyError(f"{prefix}tag", tag, "expected one tag as {key: value}")
        tag = next(iter(tag.items()))
    account = item.get("account")
    if account is not None:
        account = str(account) if isinstance(account, int) and not isinstance(account, bool) else account
        if not isinstance(account, str) or not _ACCOUNT.match(account):
            raise PolicyError(f"{prefix}account", item.get("account"), "expected a 12-digit AWS account id")
    if user is None and tag is None and account is None:
        raise PolicyError(f"revoke[{i}]", dict(item), "select the principal by user, tag or account")
    canonical = item.get("canonical_ids", [])
    if not isinstance(canonical, list) or not all(isinstance(c, str) and _CANONICAL_ID.match(c) for c in canonical):
        raise PolicyError(f"{prefix}canonical_ids", canonical, "expected a list of 64-hex-digit canonical user ids")
    keys = item.get("access_keys", "all")
    if keys == "all":
        key_ids = None
    elif isinstance(keys, list) and keys and all(isinstance(k, str) and _ACCESS_KEY.match(k) for k in keys):
        if user is None:
            raise PolicyError(f"{prefix}access_keys", keys, "naming keys needs a user; with tag or account use 'all'")
        key_ids = tuple(keys)
    else:
        raise PolicyError(f"{prefix}access_keys", keys, "expected 'all' or a list of access key ids")
    soak = item.get("delete_after_hours", 0)
    if isinstance(soak, bool) or not isinstance(soak, (int, float)) or not 0 <= soak <= 24 * 90:
        raise PolicyError(f"{prefix}delete_after_hours", soak, "expected hours from 0 to 2160 (90 days)")
    probe_uri = _probe_uri(item, prefix, "aws")
    probe_conn = _conn_id(item, "probe_conn_id", prefix, required=False)
    if probe_conn and not probe_uri:
        raise PolicyError(f"{prefix}probe_uri", None, "required when probe_conn_id is given")
    return Principal("aws", _conn_id(item, "conn_id", prefix), user, key_ids, probe_conn, probe_uri,
                     tag=tag, account=account, canonical_ids=tuple(canonical), delete_after_hours=float(soak), index=i)


def _gcs_principal(i: int, item: Mapping[str, Any]) -> GcsPrincipal:
    prefix = f"revoke[{i}]."
    _no_unknown(item, prefix, {"provider", "conn_id", "project", "service_accounts", "domain", "hmac_keys",
                               "hmac_probe_conn_id", "member_probe_conn_id", "probe_uri"})
    project = _req(item, "project", str, prefix)
    if not _GCP_PROJECT.match(project):
        raise PolicyError(f"{prefix}project", project, "not a valid Google Cloud project id")
    accounts = item.get("service_accounts", [])
    if not isinstance(accounts, list) or not all(isinstance(a, str) and _EMAIL.match(a) for a in accounts):
        raise PolicyError(f"{prefix}service_accounts", accounts, "expected a list of service-account emails")
    domain = item.get("domain")
    if domain is not None and (not isinstance(domain, str) or not _DOMAIN.match(domain)):
        raise PolicyError(f"{prefix}domain", domain, "expected a domain name such as affiliate.example")
    if not accounts and domain is None:
        raise PolicyError(f"revoke[{i}]", dict(item), "select the principal by service_accounts or domain")
    keys = item.get("hmac_keys", "all")
    if keys == "all":
        hmac = None
    elif isinstance(keys, list) and keys and all(isinstance(k, str) and _HMAC_ID.match(k) for k in keys):
        hmac = tuple(keys)
    else:
        raise PolicyError(f"{prefix}hmac_keys", keys, "expected 'all' or a list of HMAC access ids")
    probe_uri = _probe_uri(item, prefix, "gcs")
    hmac_probe = _conn_id(item, "hmac_probe_conn_id", prefix, required=False)
    member_probe = _conn_id(item, "member_probe_conn_id", prefix, required=False)
    if (hmac_probe or member_probe) and not probe_uri:
        raise PolicyError(f"{prefix}probe_uri", None, "required when a probe connection is given")
    return GcsPrincipal(_conn_id(item, "conn_id", prefix), project, tuple(accounts), domain, hmac, hmac_probe,
                        member_probe, probe_uri, index=i)
