"""Debian's headless Chromium, driven over the Chrome DevTools Protocol, for the browser tests.

No browser library is installed: the tests start ``/usr/bin/chromium`` with a
fresh profile and a DevTools port, and speak the protocol's JSON over the
``websockets`` package Airflow already brings. A :class:`Browser` is one tab:
navigate and learn the document's HTTP status, type into a page, read the
rendered DOM, read cookies, save a full-page screenshot.

:func:`ensure_chromium` installs Debian's ``chromium`` package when it is
missing, or says why it cannot.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from websockets.sync.client import connect

CHROMIUM = "/usr/bin/chromium"
#: As root, with no network beyond loopback: without the background-networking
#: flags Chromium keeps trying Google's hosts (the machine refuses them).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1")


class BrowserError(RuntimeError):
    """Chromium did not start, or did not do what it was asked in time."""


def ensure_chromium(path: str = CHROMIUM) -> str | None:
    """Install Debian's ``chromium`` when ``path`` is missing; ``None`` when it is there, else why not."""
    if os.access(path, os.X_OK):
        return None
    if shutil.which("apt-get") is None:
        return f"{path} is missing and this machine has no apt-get to install Debian's chromium"
    if os.geteuid() != 0:
        return f"{path} is missing and only root may `apt-get install chromium` (run it once as root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = ""
    for steps in ((["apt-get", "install", "-y", "chromium"],),
                  (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"])):
        for cmd in steps:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
            out = (done.stdout + done.stderr)[-1500:]
            if done.returncode:
                break
        if os.access(path, os.X_OK):
            return None
    return f"{path} is missing and `apt-get install -y chromium` failed (no network to Debian's packages?):\n{out}"


class Browser:
    """One headless Chromium tab (a context manager); a fresh profile under ``profile``.

    Args:
        profile: an empty folder for ``--user-data-dir`` (cookies live there).
        width, height: the window; screenshots take the whole page whatever its height.
        timeout: seconds any one step may take.
    """

    def __init__(self, profile: Path, *, width: int = 1400, height: int = 1000, timeout: float = 30.0) -> None:
        self.profile, self.width, self.height, self.timeout = Path(profile), width, height, timeout
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: Any = None

    # ------------------------------------------------------------------ life

    def __enter__(self) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        log = open(self.profile.parent / f"{self.profile.name}.log", "wb")  # noqa: SIM115 - closed with the process
        self._proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}",
             "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            port = self._devtools_port()
            pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            page = next(p for p in pages if p.get("type") == "page")
            # No keepalive pings: a loaded 2-core machine can starve Chromium past the
            # default 20 s ping timeout (seen in CI); every command has its own timeout.
            self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10, proxy=None,
                               ping_interval=None)
            for domain in ("Page", "Network", "Runtime"):
                self.send(f"{domain}.enable")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop Chromium (its whole process group: it started it)."""
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        self._proc = None

    def _devtools_port(self) -> int:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self._proc.returncode}; see {self.profile}.log")
            lines = port_file.read_text().split() if port_file.exists() else []
            if lines and lines[0].isdigit():
                return int(lines[0])
            time.sleep(0.1)
        raise BrowserError(f"chromium wrote no DevToolsActivePort in {self.timeout}s; see {self.profile}.log")

    # ------------------------------------------------------------------ protocol

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result. Events that arrive meanwhile are kept for :meth:`wait_for`."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            msg = json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self._events.append(msg)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float | None = None,
                 what: str = "an event") -> dict[str, Any]:
        """The first event (kept or new) that ``predicate`` accepts; the events before it are dropped."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            while self._events:
                event = self._events.pop(0)
                if predicate(event):
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no {what} within {timeout or self.timeout}s")
            try:
                msg = json.loads(self._ws.recv(timeout=left))
            except TimeoutError:
                continue
            if "method" in msg:
                self._events.append(msg)

    def wait_for_document(self, url_prefix: str, timeout: float | None = None) -> int:
        """Wait until a page whose URL starts with ``url_prefix`` has loaded; its HTTP status."""
        response = self.wait_for(
            lambda e: e["method"] == "Network.responseReceived" and e["params"]["type"] == "Document"
            and e["params"]["response"]["url"].startswith(url_prefix), timeout, f"document {url_prefix}")
        self.wait_for(lambda e: e["method"] == "Page.loadEventFired", timeout, f"load of {url_prefix}")
        return int(response["params"]["response"]["status"])

    # ------------------------------------------------------------------ what a test does

    def goto(self, url: str) -> int:
        """Open ``url`` in the tab and wait for it to load; the document's HTTP status."""
        self._events.clear()
        nav = self.send("Page.navigate", url=url)
        if nav.get("errorText"):
            raise BrowserError(f"cannot open {url}: {nav['errorText']}")
        return self.wait_for_document(url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (DevTools, not the page's own scripts)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise BrowserError(f"never true within {timeout or self.timeout}s: {expression}")

    def type_into(self, selector: str, text: str) -> None:
        """Focus the element and type ``text`` as keyboard input (so the page's own handlers see it)."""
        self.wait_until(f"document.querySelector({json.dumps(selector)}) !== null")
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def html(self) -> str:
        """The rendered DOM, serialised."""
        return self.evaluate("document.documentElement.outerHTML")

    def text(self) -> str:
        """The page's text as it is rendered (``innerText``)."""
        return self.evaluate("document.body ? document.body.innerText : ''")

    def cookies(self) -> dict[str, dict[str, Any]]:
        """The browser's cookies for the current page, by name."""
        return {c["name"]: c for c in self.send("Network.getCookies")["cookies"]}

    def screenshot(self, path: Path) -> Path:
        """Save the whole page (not just the window) as PNG at ``path``."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": max(size["width"], self.width),
                               "height": size["height"], "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
