"""The one module of the engine that imports Airflow: connections to credentials.

DAG tasks call :func:`credentials` (or :func:`aws_credentials` / :func:`gcs_credentials`) with a connection
id from the policy and pass the result to the engine, which never sees Airflow.
"""

from __future__ import annotations

from .clients import (
    DATABASE_DRIVERS,
    AwsCredentials,
    DatabaseCredentials,
    GcsCredentials,
    aws_from_fields,
    database_from_fields,
    gcs_from_fields,
)

#: The google provider's connection type; read here without installing the provider.
GCP_CONN_TYPE = "google_cloud_platform"


def aws_credentials(conn_id: str) -> AwsCredentials:
    """Read an Airflow connection of type ``aws`` (amazon provider format)."""
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    return aws_from_fields(conn_id, conn.login, conn.password, conn.extra_dejson)


def credentials(conn_id: str) -> AwsCredentials | GcsCredentials | DatabaseCredentials:
    """Read a connection of type ``aws``, ``google_cloud_platform`` or a database
    (``postgres``, ``sqlite``, or any type with an extra ``sqlalchemy_url``), whichever it is."""
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    extra = conn.extra_dejson
    if conn.conn_type == GCP_CONN_TYPE:
        return gcs_from_fields(conn_id, extra)
    if (conn.conn_type or "").lower() in DATABASE_DRIVERS or extra.get("sqlalchemy_url"):
        return database_from_fields(
            conn_id, conn.conn_type, host=conn.host, login=conn.login, password=conn.password,
            schema=conn.schema, port=conn.port, extra=extra,
        )
    return aws_from_fields(conn_id, conn.login, conn.password, extra)


def gcs_credentials(conn_id: str) -> GcsCredentials:
    """Read an Airflow connection of type ``google_cloud_platform`` (google provider format).

    Only the connection's extras are read, through ``airflow.sdk.Connection``: the
    google provider need not be installed. A connection of another type is a
    configuration mistake and raises ``ValueError``.
    """
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    if conn.conn_type and conn.conn_type != GCP_CONN_TYPE:
        raise ValueError(
            f"connection {conn_id!r} has conn_type {conn.conn_type!r}; expected {GCP_CONN_TYPE!r}"
        )
    return gcs_from_fields(conn_id, conn.extra_dejson)
