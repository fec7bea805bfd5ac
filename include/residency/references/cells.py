"""Finding references in one cell, whatever the column holds.

A configured column is of one kind (policy ``references.columns[].kind``):

``url``
    one URL per cell (the whole cell, verbatim; an ``s3://`` key may hold spaces).
    A cell that is not one URL is read as text, so nothing in it goes unseen.
``text``
    free text with URLs in it: message bodies, HTML, Markdown.
``json``
    a JSON document (text, or the value of a JSON column) with URLs at any depth,
    in values and in keys; every string is read as a URL cell.

Besides URLs, every *mention* of an overseas bucket name or a CDN hostname that
no recognised URL explains is returned, so that a URL in a style the parser does
not know is reported (``unrecognised``) rather than silently passed over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from ..jsonpaths import decode, encode_like, literals, parse_path, path_matches
from ..uris import CdnHost, ParsedUrl, find_mentions, find_urls, parse_url, redact_text

EXCERPT = 60  # characters kept either side of an unexplained mention


@dataclass(frozen=True)
class CellScan:
    """What one cell holds: object URLs (``parsed``, with the URL as written) and
    excerpts of mentions no recognised URL explains."""

    urls: list[tuple[str, ParsedUrl]]
    unexplained: list[str]


def shown(text: str) -> str:
    """A cell for a log line: signatures and tokens redacted, long text cut."""
    out = redact_text(text)
    return out if len(out) <= 300 else out[:300] + f"... ({len(text)} characters)"


def as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return None


def scan_cell(value: Any, kind: str, hosts: Sequence[CdnHost], names: Sequence[str]) -> CellScan:
    """The object URLs and unexplained mentions in one cell of a column of ``kind``."""
    urls: list[tuple[str, ParsedUrl]] = []
    unexplained: list[str] = []
    if value is None:
        return CellScan(urls, unexplained)
    if kind == "json":
        document = value if not isinstance(value, (str, bytes, bytearray, memoryview)) else _loads(as_text(value))
        strings: Iterable[str] = _strings(document) if document is not _NOT_JSON else [as_text(value) or ""]
    else:
        text = as_text(value)
        strings = [text] if text is not None else []
    for text in strings:
        _scan_string(text, hosts, names, urls, unexplained)
    return CellScan(urls, unexplained)


def _scan_string(
    text: str, hosts: Sequence[CdnHost], names: Sequence[str],
    urls: list[tuple[str, ParsedUrl]], unexplained: list[str],
) -> None:
    whole = parse_url(text, hosts) if text else None
    if whole is not None:
        urls.append((text, whole))
        spans = [(0, len(text))]
    else:
        spans = []
        for found in find_urls(text, hosts):
            if found.parsed is not None:
                urls.append((found.url, found.parsed))
                spans.append((found.start, found.end))
    if not names:
        return
    for start, end, _name in find_mentions(text, names):
        if any(s <= start and end <= e for s, e in spans):
            continue
        excerpt = text[max(0, start - EXCERPT): end + EXCERPT]
        unexplained.append(redact_text(excerpt))


_NOT_JSON = object()


def _loads(text: str | None) -> Any:
    if text is None:
        return _NOT_JSON
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON  # read as text: nothing in it goes unseen


def _strings(document: Any) -> Iterator[str]:
    """Every string of a JSON document, keys included, depth first."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str):
                    yield k
                stack.append(v)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


# -- where the URLs are, to rewrite them in place ----------------------------


@dataclass(frozen=True)
class Spot:
    """One URL in a cell's text: ``text[start:end]`` is written as ``url`` reads
    (for JSON, the literal's escapes of it); :meth:`write` gives the text that
    replaces it, escaped the same way."""

    start: int
    end: int
    url: str
    parsed: ParsedUrl
    raw: str
    in_json: bool = False

    def write(self, new_url: str) -> str:
        return encode_like(new_url, self.raw) if self.in_json else new_url


def locate(text: str, kind: str, hosts: Sequence[CdnHost], paths: Sequence[str] = ()) -> list[Spot]:
    """The object URLs of one cell of a column of ``kind``, with their places in ``text``.

    ``url``: the whole cell if it is one URL, else as ``text``. ``text``: every
    URL :func:`residency.uris.find_urls` finds. ``json``: every string of the
    document (keys too, unless ``paths`` names where the URLs are), read as a URL
    cell; a cell that is not JSON is read as text.
    """
    if kind == "json":
        try:
            return _json_spots(text, hosts, [parse_path(p) for p in paths])
        except ValueError:
            pass  # not JSON: read as text, so nothing in it goes unseen
    return _string_spots(text, 0, None, hosts, whole=kind == "url")


def rewrite(text: str, changes: Sequence[tuple[Spot, str]]) -> str:
    """``text`` with each spot replaced by its new URL; everything else byte-identical."""
    out: list[str] = []
    pos = 0
    for spot, new_url in sorted(changes, key=lambda c: c[0].start):
        out.append(text[pos : spot.start])
        out.append(spot.write(new_url))
        pos = spot.end
    out.append(text[pos:])
    return "".join(out)


def _string_spots(
    text: str, offset: int, where: list[int] | None, hosts: Sequence[CdnHost], *, whole: bool = True,
    raw: str | None = None,
) -> list[Spot]:
    def spot(start: int, end: int, url: str, parsed: ParsedUrl) -> Spot:
        if where is None:
            return Spot(offset + start, offset + end, url, parsed, url)
        a, b = offset + where[start], offset + where[end]
        return Spot(a, b, url, parsed, (raw or "")[where[start] : where[end]], in_json=True)

    parsed = parse_url(text, hosts) if whole and text else None
    if parsed is not None:
        return [spot(0, len(text), text, parsed)]
    return [spot(f.start, f.end, f.url, f.parsed) for f in find_urls(text, hosts) if f.parsed is not None]


def _json_spots(text: str, hosts: Sequence[CdnHost], paths: list[tuple[object, ...]]) -> list[Spot]:
    spots: list[Spot] = []
    for lit in literals(text):
        if paths and (lit.is_key or not any(path_matches(p, lit.path) for p in paths)):
            continue
        raw = text[lit.start : lit.end]
        if raw.find("/", 1, -1) < 0:
            continue  # no URL without a '/' (escaped or not): skip the decode
        value, where = decode(raw)
        spots.extend(_string_spots(value, lit.start, where, hosts, raw=raw))
    return spots
