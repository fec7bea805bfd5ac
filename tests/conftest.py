"""Shared fixtures: one moto server (S3, IAM, STS) and one fake-gcs-server over HTTP for the whole session."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterator

import pytest

from residency.clients import AwsCredentials, GcsCredentials
from residency.localcloud.servers import FakeGcsServer, MotoServer

ROOT = Path(__file__).resolve().parents[1]
_counter = itertools.count()


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
