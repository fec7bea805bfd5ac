"""The migration policy: load a YAML file, validate every field before any work.

A bad field fails with :class:`~residency.errors.PolicyError` naming the field
(dotted path, e.g. ``sources[1].conn_id``) and the value. The policy hash (SHA-256
of the file's bytes) goes into every task log and the evidence, so an auditor can
tell which policy a run obeyed. See README.md, "The policy file", for the format.
"""

from __future__ import annotations

import hashlib
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

    @property
    def bucket_uri(self) -> str:
        return self.ref.bucket_uri

    @property
    def prefix(self) -> str:
        return self.ref.key


@dataclass(frozen=True)
class Destination:
    ref: ObjectRef
    conn_id: str
    key_template: str = "{src_bucket}/{key}"
    location: str | None = None

    def dst_ref(self, src: ObjectRef) -> ObjectRef:
        key = self.key_template.format(src_bucket=src.bucket, key=src.key, src_provider=src.provider)
        return ObjectRef(self.ref.provider, self.ref.bucket, (self.ref.key + key) if self.ref.key else key)


@dataclass(frozen=True)
class Selection:
    media_types: tuple[str, ...] = ("image", "video", "audio")
    extensions: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_EXTENSIONS))
    exclude_prefixes: tuple[str, ...] = ()

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


@dataclass(frozen=True)
class Transfer:
    multipart_threshold: int = 64 * MiB
    part_size: int = 64 * MiB
    shard_size: int = 200
    workers: int = 8
    sha256: bool = False  # also prove every object with SHA-256 (reads back what no server reports)


@dataclass(frozen=True)
class ReferenceColumn:
    table: str
    key: str
    column: str


@dataclass(frozen=True)
class References:
    database_url: str
    columns: tuple[ReferenceColumn, ...]
    batch_size: int = 500


@dataclass(frozen=True)
class Principal:
    provider: str  # aws
    conn_id: str  # credentials allowed to manage the principal's keys
    user: str
    access_keys: tuple[str, ...] | None  # None: every key of the user
    probe_conn_id: str | None  # the foreign party's own credentials, for the denial proof
    probe_uri: str | None  # what the probe tries to read


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
    revocations: tuple[Principal, ...]
    control_dir: str
    ledger_url: str

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
        "transfer", "references", "revoke", "control_dir", "ledger_url",
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
    principals = _principals(doc.get("revoke") or [])

    control_dir = doc.get("control_dir", ".residency")
    if not isinstance(control_dir, str) or not control_dir:
        raise PolicyError("control_dir", control_dir, "expected a folder path")
    control = Path(control_dir) if Path(control_dir).is_absolute() else base / control_dir
    ledger_url = doc.get("ledger_url") or os.environ.get("RESIDENCY_LEDGER_URL") or f"sqlite:///{control / 'ledger.db'}"
    if not isinstance(ledger_url, str) or "://" not in ledger_url:
        raise PolicyError("ledger_url", ledger_url, "expected an SQLAlchemy URL such as sqlite:///ledger.db")

    return Policy(
        path=path, sha256=sha256, migration_id=migration_id, home_jurisdiction=home,
        sources=sources, destinations=destinations, selection=selection, transfer=transfer,
        references=references, revocations=principals, control_dir=str(control), ledger_url=ledger_url,
    )


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
        _no_unknown(item, prefix, {"uri", "conn_id", "to", "location"})
        ref = parse_uri(_req(item, "uri", str, prefix), f"{prefix}uri")
        to = item.get("to", ref.provider)
        if to not in destinations:
            raise PolicyError(f"{prefix}to", to, f"no destination for provider {to!r}; have {sorted(destinations)}")
        if ref.uri in seen:
            raise PolicyError(f"{prefix}uri", item["uri"], "listed twice")
        dst = destinations[to].ref
        if dst.bucket == ref.bucket and dst.provider == ref.provider:
            raise PolicyError(f"{prefix}uri", item["uri"], "source and destination are the same bucket")
        seen.add(ref.uri)
        out.append(Source(ref, _conn_id(item, "conn_id", prefix), to, _location(item, prefix)))
    return tuple(out)


def _selection(raw: Any) -> Selection:
    if not isinstance(raw, dict):
        raise PolicyError("selection", raw, "expected a mapping")
    _no_unknown(raw, "selection.", {"media_types", "extensions", "exclude_prefixes"})
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
    return Selection(tuple(media), extensions, tuple(excludes))


def _positive_int(raw: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise PolicyError(f"transfer.{name}", value, f"expected an integer from {low} to {high}")
    return value


def _transfer(raw: Any) -> Transfer:
    if not isinstance(raw, dict):
        raise PolicyError("transfer", raw, "expected a mapping")
    _no_unknown(raw, "transfer.", {"multipart_threshold_mb", "part_size_mb", "shard_size", "workers", "sha256"})
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
        workers=_positive_int(raw, "workers", 8, 1, 64),
        sha256=sha256,
    )


def _references(raw: Any, base: Path) -> References | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise PolicyError("references", raw, "expected a mapping")
    _no_unknown(raw, "references.", {"database_url", "columns", "batch_size"})
    url = _req(raw, "database_url", str, "references.")
    if "://" not in url:
        raise PolicyError("references.database_url", url, "expected an SQLAlchemy URL such as sqlite:///app.db")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///"):]
        url = f"sqlite:///{(base / rel).resolve()}"
    columns_raw = raw.get("columns")
    if not isinstance(columns_raw, list) or not columns_raw:
        raise PolicyError("references.columns", columns_raw, "expected a non-empty list of {table, key, column}")
    columns = []
    for i, item in enumerate(columns_raw):
        prefix = f"references.columns[{i}]."
        if not isinstance(item, dict):
            raise PolicyError(f"references.columns[{i}]", item, "expected a mapping")
        _no_unknown(item, prefix, {"table", "key", "column"})
        values = {}
        for name in ("table", "key", "column"):
            value = _req(item, name, str, prefix)
            if not _IDENT.match(value):
                raise PolicyError(f"{prefix}{name}", value, "not a plain SQL identifier")
            values[name] = value
        columns.append(ReferenceColumn(**values))
    batch = raw.get("batch_size", 500)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 100_000:
        raise PolicyError("references.batch_size", batch, "expected an integer from 1 to 100000")
    return References(url, tuple(columns), batch)


def _principals(raw: Any) -> tuple[Principal, ...]:
    if not isinstance(raw, list):
        raise PolicyError("revoke", raw, "expected a list of principals")
    out = []
    for i, item in enumerate(raw):
        prefix = f"revoke[{i}]."
        if not isinstance(item, dict):
            raise PolicyError(f"revoke[{i}]", item, "expected a mapping")
        _no_unknown(item, prefix, {"provider", "conn_id", "user", "access_keys", "probe_conn_id", "probe_uri"})
        provider = item.get("provider", "aws")
        if provider != "aws":
            raise PolicyError(f"{prefix}provider", provider, "only 'aws' IAM users are supported")
        user = _req(item, "user", str, prefix)
        if not _IAM_NAME.match(user):
            raise PolicyError(f"{prefix}user", user, "not a valid IAM user name")
        keys = item.get("access_keys", "all")
        if keys == "all":
            key_ids = None
        elif isinstance(keys, list) and keys and all(isinstance(k, str) and _ACCESS_KEY.match(k) for k in keys):
            key_ids = tuple(keys)
        else:
            raise PolicyError(f"{prefix}access_keys", keys, "expected 'all' or a list of access key ids")
        probe_uri = item.get("probe_uri")
        if probe_uri is not None:
            parse_uri(probe_uri, f"{prefix}probe_uri")
        probe_conn = _conn_id(item, "probe_conn_id", prefix, required=False)
        if probe_conn and not probe_uri:
            raise PolicyError(f"{prefix}probe_uri", None, "required when probe_conn_id is given")
        out.append(Principal(provider, _conn_id(item, "conn_id", prefix), user, key_ids, probe_conn, probe_uri))
    return tuple(out)
