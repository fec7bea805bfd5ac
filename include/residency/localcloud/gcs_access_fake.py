"""A FAKE of Google Cloud's access APIs, in front of fake-gcs-server, for the demo and the tests.

No emulator implements HMAC keys, bucket IAM or service-account keys (fake-gcs-server
has no such API and checks no credential), so :class:`GcsAccessFake` answers them
itself, following the public reference of each endpoint, and forwards every other
request to the emulator (``upstream``) unchanged. It is a fake, not an emulator:
a test that uses it proves what the fake enforces, listed here, and nothing more.

Answered here (paths as in the references):

- Cloud Storage JSON API, HMAC keys: ``POST|GET /storage/v1/projects/{p}/hmacKeys``
  (``serviceAccountEmail``, ``showDeletedKeys``), ``GET|PUT|DELETE .../hmacKeys/{accessId}``.
- Cloud Storage JSON API, bucket IAM: ``GET|PUT /storage/v1/b/{bucket}/iam`` and
  ``GET .../iam/testPermissions``; a bucket never set holds the project-owner binding.
- IAM API v1: service accounts (create, list, get) and their keys (create, list with
  ``keyTypes``, get, ``:disable``, ``:enable``, delete); ``projects/-`` is accepted.
- OAuth 2.0 token endpoint ``POST /token`` (JWT bearer grant, as google-auth sends it).
- XML API listing with HMAC (``GET /{bucket}?list-type=2``, SigV4 as boto3 signs it).

Enforced:

- a token is issued only for a JWT whose RS256 signature verifies with the public key
  of an existing, enabled key named by the JWT header's ``kid``, whose ``iss`` is that
  key's service account, whose ``aud`` is this endpoint's ``/token`` or Google's own
  token endpoint (google-auth always writes the latter) and whose ``exp``
  has not passed; otherwise 400 ``invalid_grant``;
- a request bearing a token this fake issued is made by ``serviceAccount:<email>``:
  object listing (``storage.objects.list``) and object reads / downloads
  (``storage.objects.get``) are allowed only when a binding of the bucket grants the
  permission (:data:`ROLE_PERMISSIONS`) to that member, ``allUsers``,
  ``allAuthenticatedUsers`` or ``domain:<the email's domain>``; else a 403 like GCS's;
- an XML API listing signed with an HMAC key: unknown or DELETED access id ->
  403 ``InvalidAccessKeyId``; INACTIVE -> 403 ``AccessDenied`` (GCS documents only
  "requests signed with this key will be denied", without a code; ``AccessDenied`` is
  the generic refusal of its XML status reference); a SigV4 signature that does not
  verify with the key's secret -> 403 ``SignatureDoesNotMatch``; then the same IAM
  check (``storage.objects.list``) for the key's service account;
- HMAC keys: DELETE of a key that is not INACTIVE -> 400; an ``etag`` that does not
  match on update -> 412; bucket IAM: an ``etag`` that does not match on set -> 412.

NOT enforced (a real server does these; nothing here may claim them):

- the callers of the admin endpoints (HMAC, IAM, bucket IAM) are not authenticated
  nor authorized; a request without an ``Authorization`` header (the anonymous admin
  client) is forwarded as the project owner, unchecked. A bearer token this fake did
  not issue is refused (401) on every request it would forward, so a client that signs its own
  JWTs can never pass for the owner;
- a token keeps working until it expires (1 hour) whatever happens to its key: the
  proof that a key is closed here is the token exchange, not the use of a token;
- only object list / get are checked for a token's member; uploads, deletes, rewrites
  and metadata updates it makes are forwarded unchecked; ``group:``, ``user:`` and the
  ``projectOwner:``-style convenience members never match a service account;
  conditional bindings are kept but never grant;
- the SigV4 request time and the region of the credential scope are not checked;
  only ``GET /{bucket}`` listings are answered on the XML API (anything else: 501);
- the key files it hands out name Google's universe (``googleapis.com``): google-auth
  uses self-signed JWTs instead of the token endpoint for any other universe. So
  google-auth also starts its background regional-access-boundary lookup at
  ``iamcredentials.googleapis.com`` with a token of this fake; offline it fails and
  urllib3 logs retries (harmless, nothing depends on it);
- deleted HMAC keys and service-account keys stay listed / gone forever (GCS purges
  DELETED HMAC keys after a while); no quotas, no eventual consistency.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit
from xml.sax.saxutils import escape

#: Role -> the permissions of it this fake knows (a subset of the predefined roles of
#: https://cloud.google.com/storage/docs/access-control/iam-roles; only object list and
#: get are ever enforced).
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "roles/storage.admin": frozenset({
        "storage.buckets.get", "storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy",
        "storage.objects.list", "storage.objects.get", "storage.objects.create", "storage.objects.delete",
    }),
    "roles/storage.objectAdmin": frozenset({
        "storage.objects.list", "storage.objects.get", "storage.objects.create", "storage.objects.delete",
    }),
    "roles/storage.objectViewer": frozenset({"storage.objects.list", "storage.objects.get"}),
    "roles/storage.objectCreator": frozenset({"storage.objects.create"}),
    "roles/storage.objectUser": frozenset({
        "storage.objects.list", "storage.objects.get", "storage.objects.create", "storage.objects.delete",
    }),
    "roles/storage.legacyBucketOwner": frozenset({
        "storage.buckets.get", "storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy",
        "storage.objects.list", "storage.objects.create", "storage.objects.delete",
    }),
    "roles/storage.legacyBucketWriter": frozenset({
        "storage.buckets.get", "storage.objects.list", "storage.objects.create", "storage.objects.delete",
    }),
    "roles/storage.legacyBucketReader": frozenset({"storage.buckets.get", "storage.objects.list"}),
    "roles/storage.legacyObjectOwner": frozenset({"storage.objects.get"}),
    "roles/storage.legacyObjectReader": frozenset({"storage.objects.get"}),
}

TOKEN_LIFETIME = 3600
#: The audience google-auth writes into every assertion, whatever the key file's ``token_uri``.
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
_HOP_HEADERS = ("host", "connection", "content-length", "authorization", "transfer-encoding")
_JSON = [("Content-Type", "application/json; charset=UTF-8")]
_XML = [("Content-Type", "application/xml; charset=UTF-8")]

Reply = tuple[int, list[tuple[str, str]], bytes]


def _rfc3339(at: float | None = None) -> str:
    return datetime.fromtimestamp(at if at is not None else time.time(), timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(status: int, body: Any) -> Reply:
    return status, list(_JSON), json.dumps(body).encode()


def _error(status: int, message: str, reason: str) -> Reply:
    """A JSON API error, in the shape GCS answers."""
    return _json(status, {"error": {"code": status, "message": message, "errors": [
        {"message": message, "domain": "global", "reason": reason}]}})


def _xml_error(status: int, code: str, message: str) -> Reply:
    body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>{escape(message)}</Message></Error>")
    return status, list(_XML), body.encode()


def _etag(counter: int) -> str:
    return base64.b64encode(f"fake-etag-{counter}".encode()).decode()


@dataclass
class _HmacKey:
    metadata: dict[str, Any]
    secret: str = field(repr=False)


@dataclass
class _SaKey:
    email: str
    key_id: str
    resource: dict[str, Any]
    public_pem: bytes | None  # None for a SYSTEM_MANAGED key (no private half handed out)


class GcsAccessFake:
    """A FAKE of the HMAC-key, bucket-IAM, IAM service-account-key and token endpoints (see the module docstring).

    Args:
        upstream: fake-gcs-server's base URL; every request not answered here goes there.
        project: the project that owns the buckets (their default owner binding).
    """

    def __init__(self, upstream: str, *, project: str = "residency-local") -> None:
        self.upstream = urlsplit(upstream)
        self.project = project
        self._lock = threading.RLock()
        self._counter = 0
        self._hmac: dict[str, _HmacKey] = {}
        self._policies: dict[str, dict[str, Any]] = {}
        self._accounts: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, _SaKey] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (member, expiry)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), answering_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="gcs-access-fake")
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- python-level helpers for seeding (the same state as the HTTP API) ---------
    def create_service_account(self, email: str, project: str | None = None) -> dict[str, Any]:
        """Create a service account (idempotent), with one SYSTEM_MANAGED key as GCP gives every account."""
        project = project or email.split("@", 1)[1].split(".", 1)[0]
        with self._lock:
            if email in self._accounts:
                return dict(self._accounts[email])
            self._accounts[email] = {
                "name": f"projects/{project}/serviceAccounts/{email}", "projectId": project,
                "uniqueId": str(10**20 + len(self._accounts)), "email": email, "displayName": email.split("@")[0],
                "etag": _etag(self._next()), "oauth2ClientId": str(10**20 + len(self._accounts)), "disabled": False,
            }
            self._add_key(email, project, system=True)
            return dict(self._accounts[email])

    def create_hmac_key(self, project: str, email: str) -> tuple[dict[str, Any], str]:
        """Create an ACTIVE HMAC key for ``email``: (metadata, secret)."""
        with self._lock:
            access_id = "GOOG1E" + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(55))
            now = _rfc3339()
            meta = {
                "kind": "storage#hmacKeyMetadata", "id": f"{project}/{access_id}", "accessId": access_id,
                "projectId": project, "serviceAccountEmail": email, "state": "ACTIVE", "timeCreated": now,
                "updated": now, "etag": _etag(self._next()),
                "selfLink": f"{self.url}/storage/v1/projects/{project}/hmacKeys/{access_id}",
            }
            secret = base64.b64encode(secrets.token_bytes(30)).decode()
            self._hmac[access_id] = _HmacKey(meta, secret)
            return dict(meta), secret

    def create_key(self, email: str) -> dict[str, Any]:
        """Create a USER_MANAGED key; returns the key resource with ``privateKeyData`` (base64 JSON key file)."""
        with self._lock:
            account = self._accounts[email]
            return self._add_key(email, account["projectId"], system=False)

    def policy(self, bucket: str) -> dict[str, Any]:
        """The bucket's IAM policy as the fake holds it (a deep copy)."""
        with self._lock:
            return json.loads(json.dumps(self._policy(bucket)))

    # -- internals -----------------------------------------------------------------
    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _policy(self, bucket: str) -> dict[str, Any]:
        if bucket not in self._policies:
            self._policies[bucket] = {
                "kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", "version": 1,
                "etag": _etag(self._next()),
                "bindings": [{"role": "roles/storage.legacyBucketOwner", "members": [f"projectOwner:{self.project}"]}],
            }
        return self._policies[bucket]

    def _add_key(self, email: str, project: str, *, system: bool) -> dict[str, Any]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key_id = secrets.token_hex(20)
        now = time.time()
        resource = {
            "name": f"projects/{project}/serviceAccounts/{email}/keys/{key_id}",
            "validAfterTime": _rfc3339(now).split(".")[0] + "Z",
            "validBeforeTime": "9999-12-31T23:59:59Z",
            "keyAlgorithm": "KEY_ALG_RSA_2048", "keyOrigin": "GOOGLE_PROVIDED",
            "keyType": "SYSTEM_MANAGED" if system else "USER_MANAGED", "disabled": False,
        }
        if system:
            self._keys[key_id] = _SaKey(email, key_id, resource, None)
            return dict(resource)
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        private_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        keyfile = {
            "type": "service_account", "project_id": project, "private_key_id": key_id,
            "private_key": private_pem, "client_email": email, "client_id": self._accounts[email]["uniqueId"],
            "auth_uri": f"{self.url}/auth", "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": f"{self.url}/certs",
            "client_x509_cert_url": f"{self.url}/certs/{quote(email)}", "universe_domain": "googleapis.com",
        }
        self._keys[key_id] = _SaKey(email, key_id, resource, public_pem)
        return dict(resource, privateKeyType="TYPE_GOOGLE_CREDENTIALS_FILE",
                    privateKeyData=base64.b64encode(json.dumps(keyfile).encode()).decode())

    # -- dispatch ------------------------------------------------------------------
    def answer(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Reply:
        """The fake's answer to one request (called from the server's threads)."""
        parts = urlsplit(raw_path)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        auth = _header(headers, "authorization") or ""
        try:
            if auth.startswith("AWS4-HMAC-SHA256"):
                return self._xml_api(method, raw_path, headers, body, auth)
            if path == "/token" and method == "POST":
                return self._token(body)
            if path.startswith("/v1/projects/"):
                return self._iam_api(method, path, query, body)
            m = re.fullmatch(r"/storage/v1/projects/([^/]+)/hmacKeys(?:/([^/]+))?", path)
            if m:
                return self._hmac_api(method, unquote(m.group(1)), m.group(2) and unquote(m.group(2)), query, body)
            m = re.fullmatch(r"/storage/v1/b/([^/]+)/iam(/testPermissions)?", path)
            if m:
                return self._bucket_iam(method, unquote(m.group(1)), bool(m.group(2)), raw_path, headers, body)
            member = self._member(auth)
            if member is not None:
                refused = self._check_object_access(method, path, member)
                if refused is not None:
                    return refused
            return self._forward(method, raw_path, headers, body)
        except _Refusal as refusal:
            return refusal.reply

    def _member(self, auth: str) -> str | None:
        """The member a bearer token issued here stands for; None for any other caller (the owner)."""
        if not auth.lower().startswith("bearer "):
            return None
        with self._lock:
            found = self._tokens.get(auth.split(" ", 1)[1].strip())
        if found is None:  # a token from elsewhere (a self-signed JWT, Google's): not silently the owner
            raise _Refusal(_error(401, "Invalid Credentials: a bearer token this fake did not issue", "authError"))
        member, expiry = found
        if expiry < time.time():
            raise _Refusal(_error(401, "Invalid Credentials", "authError"))
        return member

    def _check_object_access(self, method: str, path: str, member: str) -> Reply | None:
        if method != "GET":
            return None
        m = re.fullmatch(r"/(?:download/)?storage/v1/b/([^/]+)/o(?:/(.+))?", path)
        if not m:
            return None
        bucket = unquote(m.group(1))
        permission = "storage.objects.get" if m.group(2) else "storage.objects.list"
        if self.allows(bucket, member, permission):
            return None
        what = "bucket" if permission == "storage.objects.list" else "object"
        return _error(403, f"{member.split(':', 1)[1]} does not have {permission} access to the Google Cloud "
                           f"Storage {what}. Permission '{permission}' denied on resource (or it may not exist).",
                      "forbidden")

    def allows(self, bucket: str, member: str, permission: str) -> bool:
        """Whether the bucket's bindings grant ``permission`` to ``member`` (``serviceAccount:<email>``)."""
        email = member.split(":", 1)[1] if ":" in member else member
        who = {member, "allUsers", "allAuthenticatedUsers"}
        if "@" in email:
            who.add(f"domain:{email.rsplit('@', 1)[1]}")
        with self._lock:
            bindings = self._policy(bucket)["bindings"]
            return any(
                permission in ROLE_PERMISSIONS.get(b.get("role", ""), ()) and not b.get("condition")
                and who & set(b.get("members", ()))
                for b in bindings
            )

    # -- HMAC keys (JSON API) -------------------------------------------------------
    def _hmac_api(self, method: str, project: str, access_id: str | None, query: dict[str, str],
                  body: bytes) -> Reply:
        if access_id is None:
            if method == "POST":
                email = query.get("serviceAccountEmail")
                if not email:
                    return _error(400, "Required parameter: serviceAccountEmail", "required")
                meta, secret = self.create_hmac_key(project, email)
                return _json(200, {"kind": "storage#hmacKey", "metadata": meta, "secret": secret})
            if method == "GET":
                return self._hmac_list(project, query)
            return _error(405, "method not allowed", "methodNotAllowed")
        with self._lock:
            key = self._hmac.get(access_id)
            if key is None or key.metadata["projectId"] != project:
                return _error(404, f"Access ID not found in project {project}: {access_id}", "notFound")
            meta = key.metadata
            if method == "GET":
                return _json(200, meta)
            if method == "PUT":
                return self._hmac_update(meta, json.loads(body or b"{}"))
            if method == "DELETE":
                if meta["state"] == "DELETED":
                    return _error(404, f"Access ID not found: {access_id}", "notFound")
                if meta["state"] != "INACTIVE":
                    return _error(400, "Cannot delete keys in 'ACTIVE' state: the key must be INACTIVE "
                                       "before it can be deleted.", "invalid")
                meta.update(state="DELETED", updated=_rfc3339(), etag=_etag(self._next()))
                return 204, [], b""
        return _error(405, "method not allowed", "methodNotAllowed")

    def _hmac_list(self, project: str, query: dict[str, str]) -> Reply:
        email = query.get("serviceAccountEmail")
        deleted = query.get("showDeletedKeys", "false").lower() == "true"
        with self._lock:
            items = [
                dict(k.metadata) for k in self._hmac.values()
                if k.metadata["projectId"] == project and (not email or k.metadata["serviceAccountEmail"] == email)
                and (deleted or k.metadata["state"] != "DELETED")
            ]
        return _json(200, {"kind": "storage#hmacKeysMetadata", "items": items})

    def _hmac_update(self, meta: dict[str, Any], change: dict[str, Any]) -> Reply:
        if change.get("etag") and change["etag"] != meta["etag"]:
            return _error(412, "Precondition Failed: the etag does not match", "conditionNotMet")
        state = change.get("state")
        if state not in ("ACTIVE", "INACTIVE"):
            return _error(400, f"Invalid state {state!r}: an update sets ACTIVE or INACTIVE", "invalid")
        if meta["state"] == "DELETED":
            return _error(400, "Cannot update a DELETED key", "invalid")
        if state != meta["state"]:
            meta.update(state=state, updated=_rfc3339(), etag=_etag(self._next()))
        return _json(200, meta)

    # -- bucket IAM (JSON API) ------------------------------------------------------
    def _bucket_iam(self, method: str, bucket: str, test: bool, raw_path: str, headers: dict[str, str],
                    body: bytes) -> Reply:
        status, _, payload = self._forward("GET", f"/storage/v1/b/{quote(bucket, safe='')}", headers, b"")
        if status != 200:
            return _error(status, f"The specified bucket does not exist: {bucket}", "notFound")
        if test and method == "GET":
            wanted = parse_qs(urlsplit(raw_path).query).get("permissions", [])
            member = self._member(_header(headers, "authorization") or "")
            granted = wanted if member is None else [p for p in wanted if self.allows(bucket, member, p)]
            return _json(200, {"kind": "storage#testIamPermissionsResponse", "permissions": granted})
        with self._lock:
            current = self._policy(bucket)
            if method == "GET" and not test:
                return _json(200, current)
            if method == "PUT" and not test:
                new = json.loads(body or b"{}")
                if new.get("etag") and new["etag"] != current["etag"]:
                    return _error(412, "Precondition Failed: the policy's etag does not match", "conditionNotMet")
                bindings = [
                    {k: v for k, v in b.items() if k in ("role", "members", "condition")}
                    for b in new.get("bindings", []) if b.get("members")
                ]
                self._policies[bucket] = dict(
                    current, bindings=bindings, etag=_etag(self._next()),
                    version=3 if any(b.get("condition") for b in bindings) else int(new.get("version") or 1),
                )
                return _json(200, self._policies[bucket])
        return _error(405, "method not allowed", "methodNotAllowed")

    # -- IAM API v1: service accounts and keys --------------------------------------
    def _iam_api(self, method: str, path: str, query: dict[str, str], body: bytes) -> Reply:
        m = re.fullmatch(r"/v1/projects/([^/]+)/serviceAccounts(?:/([^/]+))?(/keys)?(?:/([^/:]+))?(:\w+)?", path)
        if not m or (m.group(4) and not m.group(3)):
            return _error(404, f"unknown IAM path {path}", "notFound")
        project, email, has_keys, key_id, verb = m.group(1), m.group(2), bool(m.group(3)), m.group(4), m.group(5)
        email = unquote(email) if email else None
        if email is None:
            return self._accounts_api(method, project, body)
        with self._lock:
            account = self._accounts.get(email)
            if account is None or project not in ("-", account["projectId"]):
                return _error(404, f"Service account projects/{project}/serviceAccounts/{email} does not exist.",
                              "notFound")
            if not has_keys:
                return _json(200, account) if method == "GET" else _error(405, "method not allowed", "badRequest")
            if key_id is None:
                if method == "POST":
                    return _json(200, self._add_key(email, account["projectId"], system=False))
                types = set(query.get("keyTypes", "").split(",")) - {""}
                listed = [dict(k.resource) for k in self._keys.values()
                          if k.email == email and (not types or k.resource["keyType"] in types)]
                return _json(200, {"keys": listed})
            key = self._keys.get(key_id)
            if key is None or key.email != email:
                return _error(404, f"Service account key {key_id} does not exist.", "notFound")
            return self._key_api(method, key, verb)

    def _accounts_api(self, method: str, project: str, body: bytes) -> Reply:
        if method == "POST":
            req = json.loads(body or b"{}")
            account_id = req.get("accountId")
            if not account_id:
                return _error(400, "accountId is required", "badRequest")
            return _json(200, self.create_service_account(f"{account_id}@{project}.iam.gserviceaccount.com", project))
        with self._lock:
            accounts = [dict(a) for a in self._accounts.values() if project in ("-", a["projectId"])]
        return _json(200, {"accounts": accounts})

    def _key_api(self, method: str, key: _SaKey, verb: str | None) -> Reply:
        if method == "GET" and verb is None:
            return _json(200, key.resource)
        if method == "DELETE" and verb is None:
            del self._keys[key.key_id]
            return _json(200, {})
        if method == "POST" and verb in (":disable", ":enable"):
            if key.resource["keyType"] != "USER_MANAGED":
                return _error(400, "Only user-managed keys can be disabled or enabled.", "badRequest")
            key.resource["disabled"] = verb == ":disable"
            return _json(200, {})
        return _error(405, "method not allowed", "badRequest")

    # -- OAuth 2.0 token endpoint ---------------------------------------------------
    def _token(self, body: bytes) -> Reply:
        form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _json(400, {"error": "unsupported_grant_type", "error_description": "only the JWT bearer grant"})
        try:
            email = self._verify_assertion(form.get("assertion", ""))
        except ValueError as exc:
            return _json(400, {"error": "invalid_grant", "error_description": str(exc)})
        token = "fake-token." + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (f"serviceAccount:{email}", time.time() + TOKEN_LIFETIME)
        return _json(200, {"access_token": token, "expires_in": TOKEN_LIFETIME, "token_type": "Bearer"})

    def _verify_assertion(self, assertion: str) -> str:
        """The service account a JWT assertion is signed for; ValueError (the description) otherwise."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            head64, claims64, sig64 = assertion.split(".")
            header, claims = json.loads(_b64url_decode(head64)), json.loads(_b64url_decode(claims64))
        except ValueError:
            raise ValueError("Invalid JWT: malformed assertion") from None
        with self._lock:
            key = self._keys.get(str(header.get("kid")))
            if key is None or key.public_pem is None:
                raise ValueError("Invalid JWT Signature.")  # what Google answers for a deleted key
            if key.resource["disabled"]:
                raise ValueError("Invalid grant: account not found")
            public_pem, email = key.public_pem, key.email
        public = serialization.load_pem_public_key(public_pem)
        try:
            public.verify(_b64url_decode(sig64), f"{head64}.{claims64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise ValueError("Invalid JWT Signature.") from None
        if claims.get("iss") != email:
            raise ValueError("Invalid JWT: iss is not the key's service account")
        if claims.get("aud") not in (self.token_uri, GOOGLE_TOKEN_URI):
            raise ValueError("Invalid JWT: aud is not a token endpoint")
        if float(claims.get("exp", 0)) < time.time():
            raise ValueError("Invalid JWT: Token must be a short-lived token and in a reasonable timeframe.")
        return email

    # -- XML API with HMAC (S3-compatible interoperability) -------------------------
    def _xml_api(self, method: str, raw_path: str, headers: dict[str, str], body: bytes, auth: str) -> Reply:
        m = re.search(r"Credential=([^/,\s]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request", auth)
        if not m:
            return _xml_error(400, "InvalidArgument", "malformed Authorization header")
        access_id, region, service = m.group(1), m.group(3), m.group(4)
        with self._lock:
            key = self._hmac.get(access_id)
            state = key.metadata["state"] if key else None
            email, secret = (key.metadata["serviceAccountEmail"], key.secret) if key else (None, None)
        if key is None or state == "DELETED":
            return _xml_error(403, "InvalidAccessKeyId", "The GCS access key ID you provided does not exist.")
        if state != "ACTIVE":
            return _xml_error(403, "AccessDenied", "The HMAC key used to sign this request is inactive.")
        if not _sigv4_matches(method, raw_path, headers, body, auth, access_id, secret, region, service):
            return _xml_error(403, "SignatureDoesNotMatch",
                              "The request signature we calculated does not match the signature you provided.")
        parts = urlsplit(raw_path)
        bucket = unquote(parts.path.strip("/"))
        if method != "GET" or not bucket or "/" in bucket:
            return _xml_error(501, "NotImplemented", "this fake answers only GET /{bucket} listings")
        if not self.allows(bucket, f"serviceAccount:{email}", "storage.objects.list"):
            return _xml_error(403, "AccessDenied",
                              f"{email} does not have storage.objects.list access to the Google Cloud Storage bucket.")
        return self._xml_listing(bucket, {k: v[-1] for k, v in parse_qs(parts.query).items()})

    def _xml_listing(self, bucket: str, query: dict[str, str]) -> Reply:
        max_keys = int(query.get("max-keys") or 1000)
        params = {"maxResults": str(max_keys)}
        if query.get("prefix"):
            params["prefix"] = query["prefix"]
        status, _, payload = self._forward("GET", f"/storage/v1/b/{quote(bucket, safe='')}/o?{urlencode(params)}",
                                           {}, b"")
        if status == 404:
            return _xml_error(404, "NoSuchBucket", "The specified bucket does not exist.")
        if status != 200:
            return _xml_error(status, "InternalError", "upstream listing failed")
        items = json.loads(payload).get("items", [])[:max_keys]
        contents = "".join(
            f"<Contents><Key>{escape(o['name'])}</Key><LastModified>{o.get('updated', '')}</LastModified>"
            f"<ETag>\"{base64.b64decode(o['md5Hash']).hex() if o.get('md5Hash') else ''}\"</ETag>"
            f"<Size>{o.get('size', 0)}</Size><StorageClass>STANDARD</StorageClass></Contents>"
            for o in items
        )
        body = (
            "<?xml version='1.0' encoding='UTF-8'?>"
            "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(query.get('prefix', ''))}</Prefix>"
            f"<KeyCount>{len(items)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>"
            f"<IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
        )
        return 200, list(_XML) + [("Date", formatdate(usegmt=True))], body.encode()

    # -- forwarding ----------------------------------------------------------------
    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        """The emulator's answer, without the caller's credentials (it checks none)."""
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
            conn.request(method, path, body=body or None, headers=sent)
            resp = conn.getresponse()
            payload = resp.read()
            keep = [
                (k, v.replace(f"http://{self.upstream.netloc}", self.url))
                for k, v in resp.getheaders()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
            return resp.status, keep, payload
        finally:
            conn.close()


class _Refusal(Exception):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply


def _header(headers: dict[str, str], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return None


def _sigv4_matches(method: str, raw_path: str, headers: dict[str, str], body: bytes, auth: str,
                   access_id: str, secret: str, region: str, service: str) -> bool:
    """Recompute the SigV4 signature over the received request with botocore's signer (request time not checked)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signed = re.search(r"SignedHeaders=([^,\s]+)", auth)
    given = re.search(r"Signature=([0-9a-f]+)", auth)
    amz_date = _header(headers, "x-amz-date")
    if not (signed and given and amz_date):
        return False
    names = signed.group(1).split(";")
    kept = {n: _header(headers, n) or "" for n in names}
    request = AWSRequest(method=method, url=f"http://{kept.get('host') or 'localhost'}{raw_path}",
                         headers=kept, data=body)
    request.context["timestamp"] = amz_date
    signer = S3SigV4Auth(Credentials(access_id, secret), service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    return secrets.compare_digest(expected, given.group(1))


def answering_handler(fake: Any) -> type[BaseHTTPRequestHandler]:
    """An HTTP/1.1 request handler that answers every method with ``fake.answer(method, path, headers, body)``
    (``-> (status, [(header, value)], payload)``); the tests' own JSON API fakes use it too."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, payload = fake.answer(self.command, self.path, dict(self.headers), body)
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler
