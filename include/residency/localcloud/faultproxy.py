"""A fault-injecting HTTP/1.1 reverse proxy for the emulators, on loopback.

The tests put a :class:`FaultProxy` between an SDK client and moto (or
fake-gcs-server) to show that the migration survives transient faults and never
verifies corrupted data. It is written on the standard library only
(``socketserver`` + ``http.server`` for the client side, a raw socket parsed by
``http.client.HTTPResponse`` for the upstream side) so that it forwards exactly
what the client sent:

- the request line is forwarded verbatim (percent-encoded unicode, ``+`` and
  ``%25`` in keys are never decoded or re-encoded);
- every header except the hop-by-hop ones, in order, with the ``Host`` header as
  the client sent it: S3 SigV4 signs ``Host``, the client signed for the proxy's
  ``host:port``, and moto verifies the signature against the header it receives;
- request bodies framed by ``Content-Length`` are streamed; ``Transfer-Encoding:
  chunked`` bodies are de-chunked (HTTP trailers are dropped) and forwarded with a
  ``Content-Length``. ``Content-Encoding: aws-chunked`` is just body bytes here;
- response bodies are streamed in bounded pieces: re-framed with the upstream's
  ``Content-Length`` when it has one, re-chunked when the upstream used chunked
  encoding, read fully only when the upstream delimits the body by closing.

Faults (:class:`FaultRules`) are drawn per eligible request from
``random.Random(seed)`` under a lock, so a sequential request sequence gets the
same faults at the same positions on every run. The kinds are mutually
exclusive: one uniform draw per eligible request picks ``error``, ``reset``,
``truncate``, ``flip_request`` or ``flip_response`` by stacking the rates in
that order. A drawn fault that cannot apply to the request (a request flip on a
body-less request, a truncation or response flip of an empty response body) is
not injected, not counted and does not use up ``max_faults``.

Each injected fault logs one INFO line, ``fault <kind> <METHOD> <path>``.
Headers are never logged (they carry signatures); signature-like query
parameters of presigned URLs are redacted.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import re
import select
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterator
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

PIECE = 256 * 1024  # streaming unit: memory per connection stays bounded
MAX_CHUNKED_REQUEST = 1024 * 1024 * 1024  # de-chunked request bodies are buffered; refuse absurd ones

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Expect: 100-continue is answered by the proxy itself (http.server does it);
# SigV4 never signs it, so dropping it upstream is safe.
REQUEST_ONLY_DROP = frozenset({"expect"})

FAULT_KINDS = ("error", "reset", "truncate", "flip_request", "flip_response")
RESET_POINTS = ("before", "mid_response", "either")

_S3_ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    429: ("TooManyRequests", "Too many requests, please slow down."),
}
_GCS_ERRORS = {
    503: ("backendError", "Backend Error"),
    500: ("internalError", "Internal Error"),
    429: ("rateLimitExceeded", "The rate of requests exceeds the rate limit."),
}
_GCS_PREFIXES = ("/storage/", "/upload/", "/download/")
_SECRET_QUERY = re.compile(
    r"(?i)((?:^|[?&;])[^=&;]*(?:signature|credential|token|key)[^=&;]*=)[^&;]*"
)


@dataclass(frozen=True)
class FaultRules:
    """What to inject, and where.

    Rates are probabilities per eligible request; they are mutually exclusive
    and must add up to at most 1.

    Attributes:
        error_rate: answer without forwarding, with a status drawn from
            ``error_statuses`` and an S3 XML or GCS JSON error body.
        error_statuses: statuses for ``error_rate`` (400-599).
        reset_rate: close the client socket abruptly (``SO_LINGER`` 0, so an RST),
            at ``reset_point``.
        reset_point: ``"before"`` forwarding (the upstream never sees the
            request); ``"mid_response"``: after forwarding, once the response
            headers and part of the body were sent (the upstream did act on the
            request; with an empty response body the reset comes before the
            status line); ``"either"``: a fair coin from the seeded RNG.
        truncate_rate: forward, send the full response headers (original
            ``Content-Length``) but only part of the body, then close normally.
        flip_request_rate: flip one bit of a non-empty PUT/POST request body
            before forwarding.
        flip_response_rate: flip one bit of a non-empty response body;
            ``Content-Length`` unchanged.
        methods: only requests with these methods are eligible (None: all).
        path_pattern: regex searched (``re.search``) in the raw request target
            (path and query, percent-encoded as sent); only matches are eligible.
        seed: seed of the ``random.Random`` that draws the faults.
        max_faults: stop injecting after this many faults (None: no limit).
    """

    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (503, 429, 500)
    reset_rate: float = 0.0
    reset_point: str = "either"
    truncate_rate: float = 0.0
    flip_request_rate: float = 0.0
    flip_response_rate: float = 0.0
    methods: tuple[str, ...] | None = None
    path_pattern: str | None = None
    seed: int = 0
    max_faults: int | None = None
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        total = 0.0
        for kind in FAULT_KINDS:
            rate = getattr(self, f"{kind}_rate")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"FaultRules.{kind}_rate must be within [0, 1], got {rate!r}")
            total += rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"FaultRules rates are mutually exclusive and must add up to <= 1, got {total!r}")
        statuses = tuple(int(s) for s in self.error_statuses)
        if not statuses or any(not 400 <= s <= 599 for s in statuses):
            raise ValueError(f"FaultRules.error_statuses must be non-empty 4xx/5xx codes, got {self.error_statuses!r}")
        object.__setattr__(self, "error_statuses", statuses)
        if self.methods is not None:
            if isinstance(self.methods, str):
                raise ValueError(f"FaultRules.methods must be a tuple of methods, got {self.methods!r}")
            object.__setattr__(self, "methods", tuple(m.upper() for m in self.methods))
        if self.path_pattern is not None:
            try:
                object.__setattr__(self, "_pattern", re.compile(self.path_pattern))
            except re.error as exc:
                raise ValueError(f"FaultRules.path_pattern is not a valid regex: {self.path_pattern!r} ({exc})") from None
        if self.reset_point not in RESET_POINTS:
            raise ValueError(f"FaultRules.reset_point must be one of {RESET_POINTS}, got {self.reset_point!r}")
        if self.max_faults is not None and self.max_faults < 0:
            raise ValueError(f"FaultRules.max_faults must be >= 0, got {self.max_faults!r}")

    def eligible(self, method: str, target: str) -> bool:
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return self._pattern is None or self._pattern.search(target) is not None


@dataclass(frozen=True)
class _Plan:
    """One drawn fault. ``position`` in [0, 1) places it within the body."""

    kind: str
    status: int
    position: float
    bit: int
    reset_before: bool


class FaultProxy:
    """A reverse proxy to ``upstream`` (``http://host:port``) that injects faults.

    Use as a context manager or with :meth:`start` / :meth:`stop`. The rules can
    be replaced while it runs (:meth:`set_rules`); that restarts the random
    sequence from the new seed and the ``max_faults`` budget.
    """

    def __init__(
        self,
        upstream: str,
        rules: FaultRules | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_timeout: float = 60.0,
        client_timeout: float = 300.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http://host:port URL, got {upstream!r}")
        if parts.path not in ("", "/"):
            raise ValueError(f"upstream must have no path (requests are forwarded verbatim), got {upstream!r}")
        self.upstream = upstream
        self.upstream_addr = (parts.hostname, parts.port or 80)
        self.host = host
        self.port = port
        self.upstream_timeout = upstream_timeout
        self.client_timeout = client_timeout
        self._lock = threading.Lock()
        self._rules = FaultRules()
        self._rng = random.Random(0)
        self._faults = 0
        self._stats: dict[str, int] = {}
        self.reset_stats()
        self.set_rules(rules or FaultRules())
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # -- configuration and counters ------------------------------------------------

    @property
    def rules(self) -> FaultRules:
        with self._lock:
            return self._rules

    @rules.setter
    def rules(self, rules: FaultRules) -> None:
        self.set_rules(rules)

    def set_rules(self, rules: FaultRules) -> None:
        """Replace the rules atomically; the RNG restarts from ``rules.seed``."""
        if not isinstance(rules, FaultRules):
            raise ValueError(f"rules must be a FaultRules, got {type(rules).__name__}")
        with self._lock:
            self._rules = rules
            self._rng = random.Random(rules.seed)
            self._faults = 0
            for status in rules.error_statuses:
                self._stats.setdefault(f"error_{status}", 0)

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters: requests, forwarded, error_<status>, reset, ..."""
        with self._lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = dict.fromkeys(
                ("requests", "forwarded", "reset", "truncate", "flip_request", "flip_response"), 0
            )
            for status in getattr(self, "_rules", FaultRules()).error_statuses:
                self._stats[f"error_{status}"] = 0

    def _count(self, name: str) -> None:
        with self._lock:
            self._stats[name] = self._stats.get(name, 0) + 1

    def _draw(self, method: str, target: str) -> _Plan | None:
        """Draw the fault for one request; reserves one unit of ``max_faults``."""
        with self._lock:
            rules = self._rules
            if not rules.eligible(method, target):
                return None
            if rules.max_faults is not None and self._faults >= rules.max_faults:
                return None
            rng = self._rng
            # Always the same number of draws per eligible request: reproducible.
            roll, position, bit = rng.random(), rng.random(), rng.randrange(8)
            status, coin = rng.choice(rules.error_statuses), rng.random() < 0.5
            reset_before = rules.reset_point == "before" or (rules.reset_point == "either" and coin)
            edge = 0.0
            for kind in FAULT_KINDS:
                edge += getattr(rules, f"{kind}_rate")
                if roll < edge:
                    self._faults += 1
                    return _Plan(kind, status, position, bit, reset_before)
            return None

    def _injected(self, plan: _Plan, method: str, target: str, detail: str = "") -> None:
        name = f"error_{plan.status}" if plan.kind == "error" else plan.kind
        label = str(plan.status) if plan.kind == "error" else plan.kind
        with self._lock:
            self._stats[name] = self._stats.get(name, 0) + 1
        log.info("fault %s %s %s%s", label, method, _redact(target), f" ({detail})" if detail else "")

    def _not_injected(self) -> None:
        with self._lock:
            self._faults = max(0, self._faults - 1)

    # -- lifecycle ---------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.proxy = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"faultproxy-{self.port}", daemon=True,
        )
        self._thread.start()
        log.info("fault proxy listening on %s -> %s", self.endpoint_url, self.upstream)
        return self

    def stop(self) -> None:
        """Stop accepting, close the listening socket and every client connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    proxy: FaultProxy


class _ClientGone(Exception):
    """The client closed or broke its connection; nothing more can be sent."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    # -- plumbing ----------------------------------------------------------------

    def setup(self) -> None:
        self.proxy = self.server.proxy
        self.timeout = self.proxy.client_timeout
        super().setup()
        self._up: socket.socket | None = None
        with self.proxy._lock:
            self.proxy._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self._close_upstream()
            with self.proxy._lock:
                self.proxy._conns.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("%s %s", self.address_string(), _redact(format % args))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the request line may carry presigned signatures; faults log themselves

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():  # sends 100 Continue when asked to
                return
            self._proxy_one()
        except (TimeoutError, _ClientGone, ConnectionError):
            self.close_connection = True

    # -- one request ---------------------------------------------------------------

    def _proxy_one(self) -> None:
        proxy, method, target = self.proxy, self.command, self.path
        proxy._count("requests")
        te = ",".join(self.headers.get_all("Transfer-Encoding") or []).lower()
        chunked_body: bytes | None = None
        length = 0
        if "chunked" in te:
            chunked_body = self._read_chunked()
            length = len(chunked_body)
        elif self.headers.get("Content-Length"):
            try:
                length = int(self.headers["Content-Length"])
                if length < 0:
                    raise ValueError
            except ValueError:
                self.send_error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
                self.close_connection = True
                return
        plan = proxy._draw(method, target)
        if plan is not None and plan.kind == "flip_request" and not (method in ("PUT", "POST") and length > 0):
            proxy._not_injected()
            plan = None

        if plan is not None and plan.kind == "error":
            if chunked_body is None:
                self._discard(length)
            proxy._injected(plan, method, target)
            self._send_error_answer(plan.status, method, target)
            return
        if plan is not None and plan.kind == "reset" and plan.reset_before:
            proxy._injected(plan, method, target, "before forwarding")
            self._reset()
            return

        flip_at = int(plan.position * length) if plan is not None and plan.kind == "flip_request" else None
        try:
            resp = self._forward(method, target, length, chunked_body, flip_at, plan)
        except _ClientGone:
            raise
        except (OSError, http.client.HTTPException) as exc:
            log.warning("upstream %s failed for %s %s: %s", proxy.upstream, method, _redact(target), exc)
            if plan is not None:
                proxy._not_injected()
            self._close_upstream()
            self._send_plain(502, b"fault proxy: upstream failed\n", close=True)
            return
        if flip_at is not None:
            assert plan is not None
            proxy._injected(plan, method, target, f"byte {flip_at} bit {plan.bit} of {length}")
            plan = None
        try:
            self._relay(resp, method, target, plan)
        except (OSError, http.client.HTTPException) as exc:
            # The upstream broke mid-response: the client cannot get a whole answer.
            log.warning("upstream %s broke while answering %s %s: %s", proxy.upstream, method, _redact(target), exc)
            self._reset()

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise _ClientGone("client closed inside a chunked body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _ClientGone(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                break
            total += size
            if total > MAX_CHUNKED_REQUEST:
                raise _ClientGone("chunked request body too large to buffer")
            data = self.rfile.read(size)
            if len(data) != size:
                raise _ClientGone("client closed inside a chunk")
            parts.append(data)
            self.rfile.readline(65537)  # CRLF after the chunk data
        while True:  # trailers, up to the empty line
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
        return b"".join(parts)

    def _read_body(self, length: int) -> Iterator[bytes]:
        left = length
        while left > 0:
            data = self.rfile.read(min(PIECE, left))
            if not data:
                raise _ClientGone(f"client closed with {left} request body bytes unread")
            left -= len(data)
            yield data

    def _discard(self, length: int) -> None:
        for _ in self._read_body(length):
            pass

    # -- upstream side -------------------------------------------------------------

    def _upstream_sock(self) -> tuple[socket.socket, bool]:
        sock = self._up
        if sock is not None:
            # A kept-alive connection that is readable now was closed by the upstream.
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return sock, True
            self._close_upstream()
        sock = socket.create_connection(self.proxy.upstream_addr, timeout=self.proxy.upstream_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._up = sock
        return sock, False

    def _close_upstream(self) -> None:
        sock, self._up = getattr(self, "_up", None), None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _request_head(self, method: str, target: str, length: int, chunked: bool) -> bytes:
        drop = set(HOP_BY_HOP | REQUEST_ONLY_DROP)
        for value in self.headers.get_all("Connection") or []:
            drop.update(token.strip().lower() for token in value.split(","))
        if chunked:
            drop.add("content-length")
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in self.headers.items() if name.lower() not in drop]
        if chunked or (length == 0 and method in ("PUT", "POST", "PATCH") and "Content-Length" not in self.headers):
            lines.append(f"Content-Length: {length}")
        # http.server decoded the head as latin-1: encoding back gives the exact bytes.
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _forward(
        self, method: str, target: str, length: int, chunked_body: bytes | None,
        flip_at: int | None, plan: _Plan | None,
    ) -> http.client.HTTPResponse:
        head = self._request_head(method, target, length, chunked_body is not None)
        sock, reused = self._upstream_sock()
        try:
            sock.sendall(head)
        except OSError:
            if not reused:
                raise
            self._close_upstream()  # stale keep-alive connection: one fresh try
            sock, _ = self._upstream_sock()
            sock.sendall(head)
        self.proxy._count("forwarded")
        body: Iterator[bytes] = iter((chunked_body,)) if chunked_body else self._read_body(length)
        offset = 0
        upstream_broken = False
        for piece in body:
            if flip_at is not None and offset <= flip_at < offset + len(piece):
                assert plan is not None
                piece = _flip(piece, flip_at - offset, plan.bit)
            offset += len(piece)
            if upstream_broken:
                continue  # keep the client connection in sync; the answer is coming
            try:
                sock.sendall(piece)
            except OSError:
                upstream_broken = True  # e.g. the upstream answered early and closed
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()  # skips 100 Continue
        return resp

    # -- client side ---------------------------------------------------------------

    def _relay(self, resp: http.client.HTTPResponse, method: str, target: str, plan: _Plan | None) -> None:
        proxy = self.proxy
        status = resp.status
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        for value in resp.headers.get_all("Connection") or []:
            tokens = {t.strip().lower() for t in value.split(",")}
            headers = [(k, v) for k, v in headers if k.lower() not in tokens]
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200

        if no_body:
            resp.read()
            self._after_upstream(resp)
            if plan is not None and plan.kind == "reset":
                proxy._injected(plan, method, target, "after forwarding, before the response")
                self._reset()
                return
            if plan is not None:
                proxy._not_injected()
            self._send_head(status, resp.reason, headers)
            return

        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        pieces = _pieces(resp)
        if resp.chunked and self.request_version == "HTTP/1.1":
            total: int | None = None
            headers.append(("Transfer-Encoding", "chunked"))
        elif resp.length is not None:
            total = resp.length
            headers.append(("Content-Length", str(total)))
        else:  # chunked to an HTTP/1.0 client, or delimited by close: buffer
            data = resp.read()
            total = len(data)
            pieces = iter((data,)) if data else iter(())
            headers.append(("Content-Length", str(total)))
        chunked = total is None

        if plan is not None and plan.kind in ("reset", "truncate", "flip_response"):
            first = next(pieces, b"")
            if not first:
                self._after_upstream(resp)
                if plan.kind == "reset":  # nothing to cut: reset with no answer at all
                    proxy._injected(plan, method, target, "after forwarding, before the response")
                    self._reset()
                    return
                proxy._not_injected()
                self._send_head(status, resp.reason, headers)
                if chunked:
                    self._write(b"0\r\n\r\n")
                return
            pieces = _chain(first, pieces)
            span = total if total is not None else len(first)
            at = int(plan.position * span)
        else:
            plan, at, span = None, 0, 0

        self._send_head(status, resp.reason, headers)
        sent = 0
        for piece in pieces:
            if plan is not None and sent <= at < sent + len(piece):
                if plan.kind == "flip_response":
                    piece = _flip(piece, at - sent, plan.bit)
                    proxy._injected(plan, method, target, f"byte {at} bit {plan.bit} of {span}")
                    plan = None
                else:
                    self._write_body(piece[: at - sent], chunked)
                    self._close_upstream()  # the rest of the upstream body is abandoned
                    if plan.kind == "truncate":
                        proxy._injected(plan, method, target, f"after {at} of {span} body bytes")
                        self.close_connection = True
                    else:
                        proxy._injected(plan, method, target, f"mid-response, after {at} of {span} body bytes")
                        self._reset()
                    return
            self._write_body(piece, chunked)
            sent += len(piece)
        if chunked:
            self._write(b"0\r\n\r\n")
        self._after_upstream(resp)

    def _after_upstream(self, resp: http.client.HTTPResponse) -> None:
        if resp.will_close or not resp.isclosed():
            self._close_upstream()
        resp.close()

    def _send_head(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        lines = [f"HTTP/1.1 {status} {reason or _phrase(status)}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if self.close_connection:
            lines.append("Connection: close")
        self._write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _write_body(self, data: bytes, chunked: bool) -> None:
        if not data:
            return
        if chunked:
            self._write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError as exc:
            raise _ClientGone(str(exc)) from None

    def _send_plain(self, status: int, body: bytes, close: bool = False) -> None:
        if close:
            self.close_connection = True
        self._send_head(status, "", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        self._write(body)

    def _send_error_answer(self, status: int, method: str, target: str) -> None:
        path = target.split("?", 1)[0]
        if path.startswith(_GCS_PREFIXES):
            reason, message = _GCS_ERRORS.get(status, ("backendError", _phrase(status)))
            body = json.dumps(
                {"error": {"code": status, "message": message,
                           "errors": [{"reason": reason, "message": message, "domain": "global"}]}}
            ).encode()
            ctype = "application/json; charset=UTF-8"
        else:
            code, message = _S3_ERRORS.get(status, (_phrase(status).replace(" ", ""), _phrase(status)))
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
                "<RequestId>faultproxy</RequestId></Error>"
            ).encode()
            ctype = "application/xml"
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Retry-After", "0")]
        if not path.startswith(_GCS_PREFIXES):
            headers.append(("x-amz-request-id", "faultproxy"))
        self._send_head(status, _phrase(status), headers)
        if method != "HEAD":
            self._write(body)

    def _reset(self) -> None:
        """Abort the client connection: SO_LINGER 0 makes close() send an RST."""
        self.close_connection = True
        self._close_upstream()
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # The fd closes only when rfile (a makefile reference) is closed too; no
        # shutdown() first, which would send a FIN before the RST.
        self.rfile.close()
        sock.close()


def _pieces(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    while True:
        data = resp.read(PIECE)
        if not data:
            return
        yield data


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _flip(data: bytes, index: int, bit: int) -> bytes:
    buf = bytearray(data)
    buf[index] ^= 1 << bit
    return bytes(buf)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _redact(target: str) -> str:
    return _SECRET_QUERY.sub(r"\1REDACTED", target)
