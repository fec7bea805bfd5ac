"""The migration dashboard in a real browser, during and after a demo migration on a real deployment.

Debian's headless Chromium (installed here when missing) opens the pages the
API server of the module's deployment serves at ``/residency``: refused (401)
before the login; then logged in as ``manager`` through Airflow's own login page
(which leaves the JWT in the ``_token`` cookie), it shows the run's page while the
cutover approval waits, and the migration's page once the run succeeded. Every
assertion reads the DOM the browser rendered; the screenshots go to the test's
output folder and to ``test-output/browser/`` at the repository's root.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import pytest

from browser import Browser, ensure_chromium
from conftest import DAG_ID, ROOT, drive_run, failure_report
from residency.localcloud.deployment import AirflowDeployment
from residency.localcloud.estate import Estate
from residency.policy import load_policy

pytestmark = pytest.mark.e2e
SHOTS = ROOT / "test-output" / "browser"
PHASES = ("preflight", "inventory", "copy", "verify", "recheck", "cutover", "revoke", "attest", "evidence")

#: Each table of the page under the heading before it: heading -> rows -> cell texts as rendered.
TABLES_JS = """(() => {
  const out = {};
  for (const h of document.querySelectorAll('h2, h3')) {
    let el = h.nextElementSibling;
    while (el && el.tagName !== 'TABLE' && !/^H[1-3]$/.test(el.tagName)) el = el.nextElementSibling;
    if (el && el.tagName === 'TABLE')
      out[h.textContent.trim()] = [...el.rows].map(r => [...r.cells].map(c => c.innerText.trim()));
  }
  return out;
})()"""
LINKS_JS = "[...document.querySelectorAll('a')].map(a => ({text: a.textContent.trim(), href: a.href}))"


@pytest.fixture(scope="session")
def chromium() -> None:
    """Debian's chromium, installed when missing; the tests skip only where it cannot be."""
    why_not = ensure_chromium()
    if why_not:
        pytest.skip(why_not)


@pytest.fixture
def browser(chromium, tmp_path) -> Browser:
    with Browser(tmp_path / "chromium-profile") as tab:
        yield tab


def count(cell: str) -> tuple[int, int] | None:
    """``(objects, bytes)`` of a counts cell as rendered: "12 objects / 1.2 KiB (1,234 bytes) / ...";
    ``None`` for "—" (no count: a route has no listing)."""
    if cell == "—":
        return None
    objects = re.match(r"([\d,]+) objects", cell)
    size = re.search(r"\(([\d,]+) bytes\)", cell) or re.search(r"^([\d,]+) bytes", cell, re.M)
    assert objects and size, f"not a counts cell: {cell!r}"
    return int(objects[1].replace(",", "")), int(size[1].replace(",", ""))


def counts_table(rows: list[list[str]]) -> dict[str, dict[str, tuple[int, int]]]:
    """A counts table (first column the label) as label -> column -> (objects, bytes)."""
    head, *body = rows
    numeric = [i for i, name in enumerate(head) if name in ("Listed", "In scope", "Verified", "Failed", "Pending")]
    return {row[0]: {head[i]: count(row[i]) for i in numeric} for row in body}


def add_up(rows: dict[str, dict[str, tuple[int, int]]], column: str) -> tuple[int, int]:
    return (sum(r[column][0] for r in rows.values()), sum(r[column][1] for r in rows.values()))


def capture(tab: Browser, out: Path, name: str) -> dict[str, Any]:
    """The rendered page (text, tables, links, DOM) and its screenshot ``<name>.png`` under ``out``."""
    page = {"text": tab.text(), "tables": tab.evaluate(TABLES_JS), "links": tab.evaluate(LINKS_JS),
            "url": tab.evaluate("location.href"), "html": tab.html(),
            "refresh": tab.evaluate("document.querySelector('meta[http-equiv=refresh]')?.content ?? null")}
    (out / f"{name}.html").write_text(page["html"])
    tab.screenshot(out / f"{name}.png")
    return page


def publish(out: Path) -> None:
    """Copy the screenshots and DOMs to ``test-output/browser/`` for people to look at."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        if path.suffix in (".png", ".html"):
            shutil.copy2(path, SHOTS / path.name)


def test_dashboard_in_a_browser_during_and_after_a_migration(
    deployment: AirflowDeployment, estate: Estate, browser: Browser, tmp_path: Path
) -> None:
    base = deployment.base_url
    migration_id = load_policy(estate.policy_path).migration_id
    out = tmp_path / "browser"
    out.mkdir()
    media = (estate.media_objects, estate.media_bytes)
    source_buckets = {f"s3://{b}" for b in estate.source_buckets} | {f"gs://{b}" for b in estate.gcs_source_buckets}
    seen: dict[str, Any] = {}

    def look_while_cutover_waits(api: Any, run_id: str, request: dict[str, Any]) -> None:
        if request["task_instance"]["task_id"] != "approve_cutover":
            return
        run_page = f"{base}/residency/runs/{DAG_ID}/{quote(run_id, safe='')}"

        # Not logged in: the API server's own auth refuses the browser.
        assert browser.goto(run_page) == 401
        refused = capture(browser, out, "anonymous")
        assert "Not authenticated" in refused["text"] and migration_id not in refused["text"]

        # Airflow's login page, as a person would: it posts to /auth/token, keeps the JWT in the
        # _token cookie and sends the browser on to `next`.
        assert browser.goto(f"{base}/auth/login?next={quote(run_page, safe='')}") == 200
        browser.type_into("input[name=username]", "manager")
        browser.type_into("input[name=password]", deployment.users["manager"])
        browser.wait_until("!document.querySelector('button[type=submit]').disabled")
        browser.evaluate("document.querySelector('button[type=submit]').click()")
        assert browser.wait_for_document(run_page) == 200
        assert "_token" in browser.cookies()
        seen["during"] = page = capture(browser, out, "during")

        text, tables = page["text"], page["tables"]
        assert f"Migration {migration_id}" in text and run_id in text
        assert "Live" in text and page["refresh"] == "5"
        phases = {row[0]: row[1] for row in tables["Phases of this run"][1:]}
        assert phases == {**dict.fromkeys(PHASES[:5], "done"), "cutover": "waiting for approval",
                          **dict.fromkeys(PHASES[6:], "not yet")}
        (waiting,) = tables["Approvals"][1:]
        assert "approve_cutover" in waiting[1] and waiting[4] == "Answer in Airflow"
        answer = next(a["href"] for a in page["links"] if a["text"] == "Answer in Airflow")
        assert answer.startswith(f"{base}/dags/{DAG_ID}/runs/")
        assert answer.endswith("/tasks/approve_cutover/required_actions")
        # Copy and verify are done before the cutover is proposed: every in-scope object verified so far.
        buckets = counts_table(tables["Source buckets"])
        total = buckets.pop("all source buckets")
        assert set(buckets) == source_buckets
        assert add_up(buckets, "Verified") == total["Verified"] == media
        assert total["Failed"] == (0, 0)
        assert f"{estate.media_objects:,} objects (100.0%)" in text  # the Progress table's "Verified" line

        # Live: the page reloads itself in the browser (<meta http-equiv="refresh">) and still answers.
        assert browser.wait_for_document(run_page, timeout=15) == 200

    started = time.monotonic()
    outcome = drive_run(deployment, {"policy_path": str(estate.policy_path), "evidence_dir": str(tmp_path / "evidence"),
                                     "dry_run": False}, timeout=150, while_waiting=look_while_cutover_waits)
    run_seconds = time.monotonic() - started
    publish(out)
    assert outcome.state == "success", failure_report(deployment, outcome)
    assert "during" in seen, f"the cutover approval was never seen waiting: {outcome.answered}"

    # After: the migration's page (its latest run by default), no longer live.
    assert browser.goto(f"{base}/residency/migrations/{migration_id}") == 200
    page = capture(browser, out, "after")
    publish(out)
    text, tables = page["text"], page["tables"]
    assert outcome.run_id in text and "Not refreshing" in text and page["refresh"] is None
    phases = {row[0]: row[1] for row in tables["Phases of this run"][1:]}
    assert phases == dict.fromkeys(PHASES, "done")

    buckets = counts_table(tables["Source buckets"])
    total = buckets.pop("all source buckets")
    assert set(buckets) == source_buckets
    for column in ("In scope", "Verified", "Failed", "Pending"):
        assert add_up(buckets, column) == total[column], column
    assert total["In scope"] == total["Verified"] == media
    assert total["Failed"] == total["Pending"] == (0, 0)
    assert add_up(counts_table(tables["By jurisdiction"]), "Verified") == media
    routes = counts_table(tables["By copy route"])
    assert {route: row["Verified"] for route, row in routes.items()} == {
        route: (c["objects"], c["bytes"]) for route, c in estate.routes.items()}
    decisions = {row[0]: (row[1], row[2]) for row in tables["Approvals"][1:]}
    assert decisions == {"cutover": ("approved", "demo-approver"), "revoke": ("approved", "demo-approver")}
    assert "COMPLETE" in text and "INCOMPLETE" not in text

    # The evidence links open in the same logged-in browser.
    evidence = {a["text"]: a["href"] for a in page["links"] if "/evidence/" in a["href"]}
    assert set(evidence) == {"evidence.html", "evidence.json"}
    assert all(href.startswith(urljoin(base, f"/residency/migrations/{migration_id}/evidence/"))
               for href in evidence.values())
    assert browser.goto(evidence["evidence.json"]) == 200
    report = json.loads(browser.text())
    assert report["complete"] is True and report["reconciliation"]["verified"]["objects"] == estate.media_objects
    assert browser.goto(evidence["evidence.html"]) == 200
    assert f"{estate.media_objects:,}" in browser.text()
    print(f"run {outcome.run_id}: {run_seconds:.0f}s; screenshots in {out} and {SHOTS}")
