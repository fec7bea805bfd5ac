"""``evidence.html``: the evidence as one self-contained page (no scripts, no external assets).

Rendered from ``templates/evidence.html.j2`` with Jinja2 (installed with Airflow),
autoescaping every value, so that a key or a URL from a bucket can never inject
markup into the page an auditor opens.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Mapping

import jinja2

from .report import COUNT_LABELS, METHOD_LABELS, OBJECTS_FILE, ROUTE_COUNTS, human_bytes


def yes(value: Any) -> str:
    """How a value reads on a page: yes/no for booleans, a dash for nothing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def num(value: Any) -> str:
    """A count with thousands separators (anything else as :func:`yes` shows it)."""
    return f"{int(value):,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else yes(value)


def size(value: Any) -> str:
    """``1.2 MiB (1,258,291 bytes)``: readable and exact (anything else as :func:`yes` shows it)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return yes(value)
    return human_bytes(int(value))


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


PLACEMENT_WORDS = {"discovered": "asked the provider's API", "declared": "declared in the policy (not verifiable by API)"}


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The templates of the evidence pages (evidence, plan, rollback), with their filters."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("residency.evidence", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(yes=yes, num=num, bytes=size, pretty=_pretty,
                       placement=lambda s: PLACEMENT_WORDS.get(s or "", s or "—"))
    return env


def render_plan(plan: Mapping[str, Any]) -> str:
    """The page of a dry run's plan (see :mod:`.plan`)."""
    return environment().get_template("plan.html.j2").render(plan=plan)


def render_html(evidence: Mapping[str, Any]) -> str:
    """The page for one evidence document (as :func:`~.report.build_evidence` returns it)."""
    return environment().get_template("evidence.html.j2").render(
        ev=evidence, count_labels=COUNT_LABELS, route_counts=ROUTE_COUNTS, method_labels=METHOD_LABELS,
        objects_file_name=OBJECTS_FILE,
    )
