"""Plumbing of the small HTTP fakes that stand in front of fake-gcs-server in the tests.

Named as fakes, per the design: each subclass answers a part of the public JSON API
that the emulator does not implement (or implements wrongly) and forwards
everything else to it unchanged. This base serves ``answer()`` on a loopback port
and forwards a request to the emulator.
"""

from __future__ import annotations

import http.client
import threading
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from residency.localcloud.gcs_access_fake import answering_handler


class LoopbackJsonApiFake:
    """Serves :meth:`answer` on ``127.0.0.1``; a context manager that starts and stops it.

    Args:
        upstream: the emulator's base URL.
        rewrite_urls: replace the emulator's address by this fake's in forwarded
            response headers (resumable-upload ``Location``s), so later requests come here too.
    """

    def __init__(self, upstream: str, *, rewrite_urls: bool = False) -> None:
        self.upstream = urlsplit(upstream)
        self.rewrite_urls = rewrite_urls
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), answering_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        """The fake's answer to one request; by default, the emulator's."""
        return self._forward(method, path, headers, body)

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection", "content-length")}
            conn.request(method, path, body=body or None, headers=sent)
            resp = conn.getresponse()
            payload = resp.read()
            keep = [
                (k, v.replace(f"http://{self.upstream.netloc}", self.url) if self.rewrite_urls else v)
                for k, v in resp.getheaders()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
            return resp.status, keep, payload
        finally:
            conn.close()
