"""Plumbing of the small HTTP fakes that stand in front of fake-gcs-server in the tests.

Named as fakes, per the design: each subclass answers a part of the public JSON API
that the emulator does not implement (or implements wrongly) and forwards
everything else to it unchanged. This base serves ``answer()`` on a loopback port
and forwards a request to the emulator.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


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
        fake = self

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
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
