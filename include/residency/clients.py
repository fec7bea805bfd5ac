"""SDK clients from plain credentials: no Airflow here.

:mod:`residency.connections` reads Airflow connections into :class:`AwsCredentials`;
the tests and the local cloud build them directly. SDK retries are turned off
(one attempt) because :mod:`residency.retry` owns retrying: two layers would
multiply attempts and hide throttling from the logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import boto3
from botocore.config import Config


@dataclass(frozen=True)
class AwsCredentials:
    """What an ``aws`` connection holds. ``secret_access_key`` never appears in repr."""

    conn_id: str
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region_name: str = "us-east-1"
    endpoint_url: str | None = None  # S3-compatible server (moto in the demo and tests)

    def session(self) -> boto3.session.Session:
        return boto3.session.Session(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            aws_session_token=self.session_token,
            region_name=self.region_name,
        )

    def client(self, service: str, region: str | None = None, **config: Any) -> Any:
        """A client with SDK retries off and bounded timeouts."""
        cfg = Config(
            region_name=region or self.region_name,
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=32,
            s3={"addressing_style": "path"} if self.endpoint_url else {},
            **config,
        )
        return self.session().client(service, endpoint_url=self.endpoint_url, config=cfg)

    def s3_client_factory(self) -> Callable[[str], Any]:
        """For :class:`residency.stores.s3.S3Store`: region -> S3 client."""
        return lambda region: self.client("s3", region)


def aws_from_fields(
    conn_id: str, login: str | None, password: str | None, extra: dict[str, Any] | None
) -> AwsCredentials:
    """Credentials from the fields of an Airflow ``aws`` connection.

    Follows the amazon provider's format: ``login``/``password`` are the key pair;
    extras ``region_name``, ``endpoint_url``, ``aws_session_token``, and
    ``service_config.s3.endpoint_url`` (which wins for S3, as in the provider).
    """
    extra = dict(extra or {})
    endpoint = extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url")
    return AwsCredentials(
        conn_id=conn_id,
        access_key_id=login or extra.get("aws_access_key_id"),
        secret_access_key=password or extra.get("aws_secret_access_key"),
        session_token=extra.get("aws_session_token"),
        region_name=extra.get("region_name") or "us-east-1",
        endpoint_url=endpoint,
    )
