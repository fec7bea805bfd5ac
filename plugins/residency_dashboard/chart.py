"""Progress over time as an inline SVG, drawn on the server (the page runs no script).

Input is ``migration_status()["timeline"]``: one point per minute with events,
cumulative counts of copied, verified and failed objects of the run. The x axis
is real time (minutes without events are gaps in the data, not in the axis).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Mapping, Sequence

from markupsafe import Markup, escape
from residency.ledger import parse_time

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 40
SERIES = (
    ("copied_objects", "copied", "#0969da"),
    ("verified_objects", "verified", "#1a7f37"),
    ("failed_objects", "failed", "#cf222e"),
)


def timeline_svg(timeline: Sequence[Mapping[str, Any]], in_scope: int | None = None) -> Markup:
    """An SVG chart of cumulative copied / verified / failed objects per minute.

    Args:
        timeline: ``migration_status()["timeline"]``.
        in_scope: drawn as a dashed target line when it fits the scale.

    Returns:
        Markup safe to put in a Jinja2 template (every text in it is escaped here),
        or an empty Markup when there is no point to draw.
    """
    points = [(t, p) for p in timeline if (t := parse_time(p.get("minute"))) is not None]
    if not points:
        return Markup("")
    t0, t1 = points[0][0], points[-1][0]
    span = max(1.0, (t1 - t0).total_seconds() / 60)
    top = max([int(p.get(key) or 0) for _, p in points for key, _, _ in SERIES] + [1])
    if in_scope and in_scope <= top * 1.5:
        top = max(top, in_scope)
    ymax = _nice(top)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: dt.datetime) -> float:
        return LEFT + plot_w * ((t - t0).total_seconds() / 60) / span if t1 > t0 else LEFT + plot_w / 2

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / ymax)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        f'role="img" aria-label="objects copied, verified and failed over time" class="chart">',
    ]
    for i in range(5):  # grid and y labels
        value = ymax * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                     'stroke="#d0d7de" stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#57606a">{int(value):,}</text>')
    if in_scope and in_scope <= ymax:
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(in_scope):.1f}" y2="{y(in_scope):.1f}" '
                     'stroke="#57606a" stroke-dasharray="6 4" stroke-width="1"/>')
        parts.append(f'<text x="{WIDTH - RIGHT}" y="{y(in_scope) - 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#57606a">in scope {in_scope:,}</text>')
    for label_t, anchor in ((t0, "start"), (t1, "end")) if t1 > t0 else ((t0, "middle"),):
        parts.append(f'<text x="{x(label_t):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="{anchor}" font-size="11" '
                     f'fill="#57606a">{escape(label_t.strftime("%H:%M"))} UTC</text>')
    for key, label, colour in SERIES:
        coords = [(x(t), y(int(p.get(key) or 0)), int(p.get(key) or 0), p.get("minute")) for t, p in points]
        if not any(c[2] for c in coords):
            continue
        path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy, _, _ in coords)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for cx, cy, value, minute in coords:
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{colour}">'
                         f'<title>{escape(label)} {value:,} objects by {escape(str(minute))}</title></circle>')
    legend_x = LEFT
    for key, label, colour in SERIES:
        parts.append(f'<rect x="{legend_x}" y="{HEIGHT - 14}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{legend_x + 14}" y="{HEIGHT - 5}" font-size="11" fill="#1b1f24">{escape(label)}</text>')
        legend_x += 90
    parts.append("</svg>")
    return Markup("".join(parts))




def _nice(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least ``value``."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power
