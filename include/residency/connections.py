"""The one module of the engine that imports Airflow: connections to credentials.

DAG tasks call :func:`aws_credentials` with a connection id from the policy and
pass the result to the engine, which never sees Airflow.
"""

from __future__ import annotations

from .clients import AwsCredentials, aws_from_fields


def aws_credentials(conn_id: str) -> AwsCredentials:
    """Read an Airflow connection of type ``aws`` (amazon provider format)."""
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    return aws_from_fields(conn_id, conn.login, conn.password, conn.extra_dejson)
