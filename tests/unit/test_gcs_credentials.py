"""GCS credentials from the google provider's connection extras (no provider installed)."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from residency.clients import GcsCredentials, gcs_from_fields

PREFIX = "extra__google_cloud_platform__"
SECRET_MARKER = "do-not-print-this-private-key"


@pytest.fixture(autouse=True)
def no_emulator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)


@pytest.fixture(scope="module")
def keyfile() -> dict[str, str]:
    """A service-account key in Google's JSON key format, with a real RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "tokyo-media",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "residency@tokyo-media.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"project": "p1", "key_path": "/keys/sa.json"}, id="bare names"),
        pytest.param({PREFIX + "project": "p1", PREFIX + "key_path": "/keys/sa.json"}, id="prefixed names"),
        pytest.param({"project": "p1", PREFIX + "key_path": "/keys/sa.json"}, id="mixed"),
        pytest.param(
            {"project": "p1", PREFIX + "project": "other", "key_path": "/keys/sa.json"},
            id="bare name wins over prefixed",
        ),
        pytest.param(
            {"project": "", PREFIX + "project": "p1", "key_path": "/keys/sa.json", "keyfile_dict": ""},
            id="blank form fields count as absent",
        ),
    ],
)
def test_project_and_key_path_with_or_without_prefix(extra: dict) -> None:
    creds = gcs_from_fields("gcp_tokyo", extra)
    assert (creds.conn_id, creds.project, creds.key_path, creds.keyfile_dict) == ("gcp_tokyo", "p1", "/keys/sa.json", None)
    assert creds.emulator_host is None


@pytest.mark.parametrize("as_text", [pytest.param(True, id="JSON string"), pytest.param(False, id="dict")])
@pytest.mark.parametrize("prefixed", [pytest.param(True, id="prefixed"), pytest.param(False, id="bare")])
def test_keyfile_dict_as_json_text_or_dict(keyfile: dict, as_text: bool, prefixed: bool) -> None:
    value = json.dumps(keyfile) if as_text else keyfile
    creds = gcs_from_fields("gcp_tokyo", {(PREFIX if prefixed else "") + "keyfile_dict": value})
    assert creds.keyfile_dict == keyfile
    assert creds.key_path is None


def test_keyfile_dict_builds_service_account_credentials_and_project(keyfile: dict) -> None:
    client = gcs_from_fields("gcp_tokyo", {"keyfile_dict": json.dumps(keyfile)}).client()
    assert client.project == "tokyo-media"  # from the key when the connection names none
    assert client._credentials.service_account_email == keyfile["client_email"]
    explicit = gcs_from_fields("gcp_tokyo", {"keyfile_dict": keyfile, "project": "billing-project"}).client()
    assert explicit.project == "billing-project"


def test_key_path_builds_service_account_credentials(keyfile: dict, tmp_path) -> None:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(keyfile))
    client = gcs_from_fields("gcp_tokyo", {PREFIX + "key_path": str(path)}).client()
    assert client._credentials.service_account_email == keyfile["client_email"]
    assert client.project == "tokyo-media"


def test_secrets_never_appear_in_repr(keyfile: dict) -> None:
    creds = gcs_from_fields("gcp_tokyo", {"keyfile_dict": dict(keyfile, private_key=SECRET_MARKER)})
    assert SECRET_MARKER not in repr(creds)
    assert "residency@tokyo-media" in creds.identity


def test_key_path_and_keyfile_dict_together_is_a_value_error(keyfile: dict) -> None:
    with pytest.raises(ValueError, match="key_path.*keyfile_dict") as caught:
        gcs_from_fields("gcp_tokyo", {PREFIX + "key_path": "/keys/sa.json", "keyfile_dict": json.dumps(keyfile)})
    assert "gcp_tokyo" in str(caught.value)
    assert "PRIVATE KEY" not in str(caught.value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('{"private_key": "' + SECRET_MARKER, id="truncated JSON"),
        pytest.param(SECRET_MARKER, id="not JSON at all"),
    ],
)
def test_keyfile_dict_that_is_not_json_names_the_field_not_the_content(value: str) -> None:
    with pytest.raises(ValueError, match="keyfile_dict") as caught:
        gcs_from_fields("gcp_tokyo", {PREFIX + "keyfile_dict": value})
    assert SECRET_MARKER not in str(caught.value)
    assert caught.value.__cause__ is None  # the JSON decoder's message would quote the text
    assert caught.value.__suppress_context__


def test_keyfile_dict_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="keyfile_dict.*JSON object"):
        gcs_from_fields("gcp_tokyo", {"keyfile_dict": "[1, 2]"})


def test_legacy_p12_key_path_is_refused() -> None:
    with pytest.raises(ValueError, match="key_path.*P12"):
        gcs_from_fields("gcp_tokyo", {"key_path": "/keys/old.p12"})


@pytest.mark.parametrize(
    ("extra", "env", "expected"),
    [
        pytest.param({"emulator_host": "http://127.0.0.1:4443"}, None, "http://127.0.0.1:4443", id="extra"),
        pytest.param({}, "http://127.0.0.1:9023", "http://127.0.0.1:9023", id="env STORAGE_EMULATOR_HOST"),
        pytest.param({}, "localhost:9023", "http://localhost:9023", id="env without scheme"),
        pytest.param(
            {PREFIX + "emulator_host": "http://127.0.0.1:4443/"}, "http://127.0.0.1:9023", "http://127.0.0.1:4443",
            id="extra wins over env",
        ),
        pytest.param({}, None, None, id="none"),
    ],
)
def test_emulator_endpoint_from_extra_or_env(
    monkeypatch: pytest.MonkeyPatch, extra: dict, env: str | None, expected: str | None
) -> None:
    if env is not None:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", env)
    assert gcs_from_fields("gcp", extra).emulator_host == expected


def test_emulator_client_is_anonymous_and_aimed_at_the_endpoint() -> None:
    from google.auth.credentials import AnonymousCredentials

    client = GcsCredentials("gcp", emulator_host="http://127.0.0.1:4443").client()
    assert isinstance(client._credentials, AnonymousCredentials)
    assert client.project == "local"
    assert client._connection.API_BASE_URL == "http://127.0.0.1:4443"


def test_airflow_connection_is_read_without_the_google_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from residency.connections import gcs_credentials

    monkeypatch.setenv(
        "AIRFLOW_CONN_GCP_SEOUL",
        json.dumps({
            "conn_type": "google_cloud_platform",
            "extra": {PREFIX + "project": "seoul-media", "emulator_host": "http://127.0.0.1:4443"},
        }),
    )
    creds = gcs_credentials("gcp_seoul")
    assert (creds.conn_id, creds.project, creds.emulator_host) == ("gcp_seoul", "seoul-media", "http://127.0.0.1:4443")


def test_airflow_connection_of_another_type_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from residency.connections import gcs_credentials

    monkeypatch.setenv("AIRFLOW_CONN_NOT_GCP", json.dumps({"conn_type": "aws", "extra": {}}))
    with pytest.raises(ValueError, match="not_gcp.*'aws'.*google_cloud_platform"):
        gcs_credentials("not_gcp")


# -- database connections (the application database and the ledger) ---------------------

from residency.clients import database_from_fields  # noqa: E402


@pytest.mark.parametrize(
    "conn_type, fields, url",
    [
        pytest.param("postgres", {"host": "db", "login": "app", "password": "p@ss:w/rd", "schema": "app", "port": 5433},
                     "postgresql+psycopg2://app:p%40ss%3Aw%2Frd@db:5433/app", id="postgres with an awkward password"),
        pytest.param("postgres", {"host": "db", "schema": "app", "extra": {"sslmode": "require"}},
                     "postgresql+psycopg2://db/app?sslmode=require", id="postgres trust auth with sslmode"),
        pytest.param("sqlite", {"host": "/var/lib/app.db"}, "sqlite:////var/lib/app.db", id="sqlite file in host"),
        pytest.param("generic", {"password": "s3cr3t", "extra": {"sqlalchemy_url": "postgresql://app@db/app"}},
                     "postgresql://app:s3cr3t@db/app", id="any type with a sqlalchemy_url extra"),
    ],
)
def test_database_connection_to_url(conn_type, fields, url):
    creds = database_from_fields("app_db", conn_type, **fields)
    assert creds.url == url
    assert "s3cr3t" not in repr(creds) and "p@ss" not in repr(creds)
    assert fields.get("password") is None or fields["password"] not in creds.safe_url


def test_unknown_database_connection_type_names_it():
    with pytest.raises(ValueError, match=r"connection 'app_db' has conn_type 'mssql'"):
        database_from_fields("app_db", "mssql", host="db")
