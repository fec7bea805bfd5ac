"""Shared fixtures: one moto server (S3, IAM, STS) and one fake-gcs-server over HTTP for the whole session."""

from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from residency.clients import AwsCredentials, GcsCredentials
from residency.ledger import Ledger
from residency.localcloud.servers import FakeGcsServer, MotoServer

ROOT = Path(__file__).resolve().parents[1]
_counter = itertools.count()

#: The machine's PostgreSQL (trust auth); the ledger and application-DB tests also run on it.
PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL URL; the test is skipped, with the reason, only when the server does not answer."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
        pytest.skip(f"PostgreSQL at {PG_URL} unreachable: {type(exc).__name__}: {exc}")
    return PG_URL


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A fresh SQLite ledger (modules that also run on PostgreSQL define their own)."""
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.create_schema()
    yield led
    led.dispose()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with MotoServer(log_path=log_path) as server:
        yield server


@pytest.fixture(scope="session")
def admin(moto_server: MotoServer) -> AwsCredentials:
    """Administrator credentials; IAM enforcement is on from here on."""
    return moto_server.enforce_auth()


@pytest.fixture
def make_bucket(admin: AwsCredentials):
    """Create a uniquely named bucket in a region; returns its name."""

    def make(region: str = "ap-northeast-2", versioned: bool = False, prefix: str = "b") -> str:
        name = f"{prefix}-{os.getpid()}-{next(_counter)}"
        client = admin.client("s3", region)
        client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    return make


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    """fake-gcs-server; every bucket reports ASIA-NORTHEAST3 (Seoul), whatever it was created with."""
    log_path = tmp_path_factory.mktemp("fake-gcs") / "fake-gcs.log"
    with FakeGcsServer(log_path=log_path) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_admin(fake_gcs: FakeGcsServer) -> GcsCredentials:
    """Credentials for the emulator (anonymous: it checks none)."""
    return fake_gcs.credentials("gcs-admin")


@pytest.fixture
def make_gcs_bucket(gcs_admin: GcsCredentials):
    """Create a uniquely named GCS bucket; returns its name."""
    client = gcs_admin.client()

    def make(location: str = "asia-northeast3", versioned: bool = False, prefix: str = "g") -> str:
        name = f"{prefix}-{os.getpid()}-{next(_counter)}"
        bucket = client.bucket(name)
        bucket.versioning_enabled = versioned
        client.create_bucket(bucket, location=location, retry=None)
        return name

    return make


# -- an application database, on SQLite and PostgreSQL -------------------------------


class AppDb:
    """An application database with uniquely named tables (the PostgreSQL one is shared)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.suffix = uuid.uuid4().hex[:8]
        self.engine = sa.create_engine(url)
        self.tables: list[str] = []

    def name(self, base: str) -> str:
        return f"{base}_{self.suffix}"

    def create(self, base: str, columns: str, rows: list[dict[str, Any]]) -> str:
        table = self.name(base)
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE {table} ({columns})")
            if rows:
                cols = list(rows[0])
                conn.execute(sa.text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                                     f"({', '.join(':' + c for c in cols)})"), rows)
        self.tables.append(table)
        return table

    def rows(self, table: str, key: str, column: str) -> dict[Any, Any]:
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.text(f"SELECT {key}, {column} FROM {table}")).all())

    def set(self, table: str, key: str, column: str, k: Any, value: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {table} SET {column} = :v WHERE {key} = :k"), {"v": value, "k": k})

    def drop(self) -> None:
        with self.engine.begin() as conn:
            for table in self.tables:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        self.engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppDb]:
    if request.param == "postgresql":
        db = AppDb(request.getfixturevalue("pg_url"))
    else:
        db = AppDb(f"sqlite:///{tmp_path / 'app.db'}")
    yield db
    db.drop()
