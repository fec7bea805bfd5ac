"""SDK clients from plain credentials: no Airflow here.

:mod:`residency.connections` reads Airflow connections into :class:`AwsCredentials`
and :class:`GcsCredentials`; the tests and the local cloud build them directly.
SDK retries are turned off (one attempt) because :mod:`residency.retry` owns
retrying: two layers would multiply attempts and hide throttling from the logs.
For boto3 that is the client config; google-cloud-storage takes ``retry=`` per
call, so :class:`residency.stores.gcs.GcsStore` passes ``retry=None`` on every call.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import boto3
from botocore.config import Config

if TYPE_CHECKING:  # google-cloud-storage is imported when a GCS client is built
    from google.cloud import storage


#: Sessions and clients shared in this process, by credentials (and service, region, options).
_SESSIONS: dict[Any, boto3.session.Session] = {}
_CLIENTS: dict[tuple[Any, ...], Any] = {}
_SHARED_LOCK = threading.RLock()


@dataclass(frozen=True)
class AwsCredentials:
    """What an ``aws`` connection holds. ``secret_access_key`` never appears in repr."""

    conn_id: str
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region_name: str = "us-east-1"
    endpoint_url: str | None = None  # S3-compatible server (moto in the demo and tests)
    #: False for S3-compatible servers that store a client's checksum without
    #: checking it (moto): streamed copies there are verified by reading back.
    validates_upload_checksums: bool = True

    def session(self) -> boto3.session.Session:
        """One boto3 session per credentials in this process (building one loads the
        service models again: tens of MiB each)."""
        with _SHARED_LOCK:
            session = _SESSIONS.get(self)
            if session is None:
                session = _SESSIONS[self] = boto3.session.Session(
                    aws_access_key_id=self.access_key_id,
                    aws_secret_access_key=self.secret_access_key,
                    aws_session_token=self.session_token,
                    region_name=self.region_name,
                )
        return session

    def client(self, service: str, region: str | None = None, **config: Any) -> Any:
        """A client with SDK retries off and bounded timeouts, shared in this process by
        every caller with the same credentials, region and options: boto3 clients are
        thread-safe, and a client per worker thread (or per store) multiplies memory
        by the threads without making anything faster."""
        key = (self, service, region or self.region_name, repr(sorted(config.items())))
        with _SHARED_LOCK:
            client = _CLIENTS.get(key)
        if client is None:
            client = self._new_client(service, region, **config)
            with _SHARED_LOCK:
                client = _CLIENTS.setdefault(key, client)
        return client

    def _new_client(self, service: str, region: str | None = None, **config: Any) -> Any:
        session = self.session()
        cfg = Config(
            region_name=region or self.region_name,
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=32,
            s3={"addressing_style": "path"} if self.endpoint_url else {},
            **config,
        )
        with _SHARED_LOCK:  # creating clients from one session is not thread-safe
            return session.client(service, endpoint_url=self.endpoint_url, config=cfg)

    def s3_client_factory(self) -> Callable[[str], Any]:
        """For :class:`residency.stores.s3.S3Store`: region -> S3 client."""
        return lambda region: self.client("s3", region)


def aws_from_fields(
    conn_id: str, login: str | None, password: str | None, extra: dict[str, Any] | None
) -> AwsCredentials:
    """Credentials from the fields of an Airflow ``aws`` connection.

    Follows the amazon provider's format: ``login``/``password`` are the key pair;
    extras ``region_name``, ``endpoint_url``, ``aws_session_token``, and
    ``service_config.s3.endpoint_url`` (which wins for S3, as in the provider);
    and this project's ``validates_upload_checksums`` (default true; false for a
    server that does not check the checksum sent with an upload).
    """
    extra = dict(extra or {})
    validates = extra.get("validates_upload_checksums", True)
    if isinstance(validates, str):
        if validates.strip().lower() not in ("true", "false"):
            raise ValueError(f"connection {conn_id!r}: extra validates_upload_checksums={validates!r} is not true/false")
        validates = validates.strip().lower() == "true"
    endpoint = extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url")
    return AwsCredentials(
        conn_id=conn_id,
        access_key_id=login or extra.get("aws_access_key_id"),
        secret_access_key=password or extra.get("aws_secret_access_key"),
        session_token=extra.get("aws_session_token"),
        region_name=extra.get("region_name") or "us-east-1",
        endpoint_url=endpoint,
        validates_upload_checksums=bool(validates),
    )


#: Prefix the google provider's connection form gives its extras (older providers
#: always wrote it; newer ones accept the bare name too).
GCP_EXTRA_PREFIX = "extra__google_cloud_platform__"

#: Connections kept per GCS client, as ``max_pool_connections`` for boto3 clients.
GCS_MAX_POOL_CONNECTIONS = 32

#: OAuth scope for the Cloud Storage JSON API (read, write, delete, rewrite).
GCS_SCOPES = ("https://www.googleapis.com/auth/devstorage.full_control",)
#: OAuth scope for the IAM API (service accounts and their keys).
CLOUD_PLATFORM_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


@dataclass(frozen=True)
class GcsCredentials:
    """What a ``google_cloud_platform`` connection holds, for Cloud Storage.

    At most one of ``key_path`` / ``keyfile_dict``; with neither, Application
    Default Credentials are used. ``keyfile_dict`` (a service-account key with its
    private key) never appears in repr. ``emulator_host`` points the client at
    fake-gcs-server or another emulator, with anonymous credentials.
    """

    conn_id: str
    project: str | None = None
    key_path: str | None = None
    keyfile_dict: dict[str, Any] | None = field(default=None, repr=False)
    emulator_host: str | None = None
    #: The JSON API endpoint for real (non-anonymous) credentials, when not Google's
    #: (the local cloud's access fake; the key file's ``token_uri`` says where tokens come from).
    api_endpoint: str | None = None
    #: The IAM API (service accounts and their keys).
    iam_endpoint: str = "https://iam.googleapis.com"

    def client(self) -> storage.Client:
        """A ``google.cloud.storage.Client``; retries are disabled per call by the store."""
        from google.cloud import storage

        if self.emulator_host:
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(
                project=self.project or "local",
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.emulator_host},
            )
        else:
            credentials, project = self._google_credentials()
            options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
            client = storage.Client(project=self.project or project, credentials=credentials, client_options=options)
        _size_connection_pool(client, GCS_MAX_POOL_CONNECTIONS)
        return client

    def google_credentials(self, scopes: tuple[str, ...] = GCS_SCOPES) -> Any:
        """New google-auth credentials (no token yet), or None for an emulator (anonymous)."""
        if self.emulator_host:
            return None
        return self._google_credentials(scopes)[0]

    def http_session(self, scopes: tuple[str, ...] = CLOUD_PLATFORM_SCOPES) -> Any:
        """A ``requests`` session for other Google APIs (IAM): authorized, or plain for an emulator."""
        import requests

        creds = self.google_credentials(scopes)
        if creds is None:
            return requests.Session()
        from google.auth.transport.requests import AuthorizedSession

        return AuthorizedSession(creds)

    def _google_credentials(self, scopes: tuple[str, ...] = GCS_SCOPES) -> tuple[Any, str | None]:
        from google.oauth2 import service_account

        if self.keyfile_dict is not None:
            creds = service_account.Credentials.from_service_account_info(self.keyfile_dict, scopes=scopes)
            return creds, self.keyfile_dict.get("project_id")
        if self.key_path:
            creds = service_account.Credentials.from_service_account_file(self.key_path, scopes=scopes)
            return creds, getattr(creds, "project_id", None)
        import google.auth

        return google.auth.default(scopes=scopes)

    @property
    def identity(self) -> str:
        """Who these credentials are, for logs: a service-account email, never a secret."""
        if self.emulator_host:
            return f"anonymous@{self.emulator_host}"
        if self.keyfile_dict is not None:
            return str(self.keyfile_dict.get("client_email") or "service account (no client_email)")
        if self.key_path:
            return f"key file {self.key_path}"
        return "application default credentials"


def _size_connection_pool(client: Any, size: int) -> None:
    """Let ``size`` threads share the client (the transfer's workers) without
    urllib3 discarding connections; transport-level retries stay off (requests' default)."""
    from requests.adapters import HTTPAdapter

    adapter = HTTPAdapter(pool_connections=size, pool_maxsize=size)
    client._http.mount("https://", adapter)
    client._http.mount("http://", adapter)


def _gcp_extra(extra: Mapping[str, Any], name: str) -> Any:
    """One field of the google provider's extras: the bare name wins over the prefixed one.

    Empty strings count as absent: the connection form saves blank fields as "".
    """
    for key in (name, GCP_EXTRA_PREFIX + name):
        value = extra.get(key)
        if value not in (None, ""):
            return value
    return None


def gcs_from_fields(conn_id: str, extra: Mapping[str, Any] | None) -> GcsCredentials:
    """Credentials from the extras of an Airflow ``google_cloud_platform`` connection.

    Reads the google provider's own format: ``project``, ``key_path`` and
    ``keyfile_dict`` (a dict, or the JSON text of one), each with or without the
    ``extra__google_cloud_platform__`` prefix. The emulator endpoint comes from the
    extra ``emulator_host``, else from the ``STORAGE_EMULATOR_HOST`` environment
    variable (the variable google-cloud-storage itself honours). This project's extras
    ``api_endpoint`` (JSON API for key-file credentials, e.g. the local cloud's access
    fake) and ``iam_endpoint`` (IAM API, default ``https://iam.googleapis.com``).

    Raises:
        ValueError: both ``key_path`` and ``keyfile_dict`` are set, ``keyfile_dict``
            is not a JSON object, or ``key_path`` names a legacy P12 key. The
            message names the field and the connection, never the key material.
    """
    extra = dict(extra or {})
    project = _gcp_extra(extra, "project")
    key_path = _gcp_extra(extra, "key_path")
    raw_keyfile = _gcp_extra(extra, "keyfile_dict")
    if key_path and raw_keyfile:
        raise ValueError(
            f"connection {conn_id!r}: extras 'key_path' and 'keyfile_dict' are mutually exclusive; set only one"
        )
    keyfile: dict[str, Any] | None = None
    if isinstance(raw_keyfile, str):
        try:
            keyfile = json.loads(raw_keyfile)
        except ValueError:
            # The text is a secret: name the field, never echo the content.
            raise ValueError(
                f"connection {conn_id!r}: extra 'keyfile_dict' is not valid JSON "
                f"({len(raw_keyfile)} characters; content not shown)"
            ) from None
    elif raw_keyfile is not None:
        keyfile = raw_keyfile
    if keyfile is not None and not isinstance(keyfile, dict):
        raise ValueError(
            f"connection {conn_id!r}: extra 'keyfile_dict' must be a JSON object, got {type(keyfile).__name__}"
        )
    if key_path and str(key_path).lower().endswith(".p12"):
        raise ValueError(
            f"connection {conn_id!r}: extra 'key_path' = {key_path!r} is a legacy P12 key; use a JSON key file"
        )
    emulator = _gcp_extra(extra, "emulator_host") or os.environ.get("STORAGE_EMULATOR_HOST") or None
    if emulator and "://" not in emulator:
        emulator = f"http://{emulator}"  # STORAGE_EMULATOR_HOST is often host:port
    api_endpoint = _gcp_extra(extra, "api_endpoint")
    iam_endpoint = _gcp_extra(extra, "iam_endpoint")
    return GcsCredentials(
        conn_id=conn_id,
        project=str(project) if project else None,
        key_path=str(key_path) if key_path else None,
        keyfile_dict=keyfile,
        emulator_host=emulator.rstrip("/") if emulator else None,
        api_endpoint=str(api_endpoint).rstrip("/") if api_endpoint else None,
        iam_endpoint=str(iam_endpoint).rstrip("/") if iam_endpoint else "https://iam.googleapis.com",
    )


#: Airflow connection types this project reads as SQL databases, with their SQLAlchemy driver.
DATABASE_DRIVERS = {
    "postgres": "postgresql+psycopg2",
    "postgresql": "postgresql+psycopg2",
    "sqlite": "sqlite",
}


@dataclass(frozen=True)
class DatabaseCredentials:
    """An SQL database (the application's, or the ledger's) from an Airflow connection.

    ``url`` carries the password and never appears in repr; :attr:`safe_url` is for logs.
    """

    conn_id: str
    url: str = field(repr=False)

    @property
    def safe_url(self) -> str:
        import sqlalchemy as sa

        return sa.engine.make_url(self.url).render_as_string(hide_password=True)


def database_from_fields(
    conn_id: str,
    conn_type: str | None,
    *,
    host: str | None = None,
    login: str | None = None,
    password: str | None = None,
    schema: str | None = None,
    port: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> DatabaseCredentials:
    """An SQLAlchemy URL from the fields of an Airflow connection.

    ``postgres``: host, port, login, password, schema (the database name) and the
    extra ``sslmode``; ``sqlite``: host is the file path (Airflow's own convention).
    An extra ``sqlalchemy_url`` (without a password; the connection's password is
    put in) serves any other dialect whose driver is installed.

    Raises:
        ValueError: an unknown connection type, naming the connection and the type.
    """
    import sqlalchemy as sa

    extra = dict(extra or {})
    if extra.get("sqlalchemy_url"):
        url = sa.engine.make_url(str(extra["sqlalchemy_url"]))
        if password:
            url = url.set(password=password)
        return DatabaseCredentials(conn_id, url.render_as_string(hide_password=False))
    driver = DATABASE_DRIVERS.get((conn_type or "").lower())
    if driver is None:
        raise ValueError(
            f"connection {conn_id!r} has conn_type {conn_type!r}; expected one of {sorted(DATABASE_DRIVERS)} "
            "or an extra 'sqlalchemy_url'"
        )
    if driver == "sqlite":
        path = host or schema or ""
        if not path:
            raise ValueError(f"connection {conn_id!r}: a sqlite connection names the database file in 'host'")
        return DatabaseCredentials(conn_id, f"sqlite:///{path}")
    query = {"sslmode": str(extra["sslmode"])} if extra.get("sslmode") else {}
    url = sa.engine.URL.create(
        driver, username=login or None, password=password or None, host=host or None,
        port=int(port) if port else None, database=schema or None, query=query,
    )
    return DatabaseCredentials(conn_id, url.render_as_string(hide_password=False))
