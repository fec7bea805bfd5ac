"""JSON text as written: its string literals, where they are, and at which path.

The cutover rewrites URLs inside JSON *in place*: everything around a URL stays
byte-identical (spacing, key order, escapes, number formats), which a
``json.loads`` / ``json.dumps`` round trip would not keep. :func:`literals`
walks the text once and yields every string literal with its offsets and its
path in the document; :func:`decode` decodes one literal and maps each decoded
character back to its offset in the text, so that a URL found in the decoded
string can be replaced in the raw text; :func:`encode_like` writes the new URL
with the escapes the old one used (``\\/`` stays ``\\/``).

Paths (policy ``references.columns[].paths``) are a small JSONPath subset::

    $.avatar.url   $.images[*].src   $.items[0]   $['a b'].c   $.*.url   $..href
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

PathItem = str | int
ANY = object()  # a wildcard step: * or [*]
DEEP = object()  # .. : any number of steps (zero included)

_STEP = re.compile(
    r"""\.\.(?=[A-Za-z_*\[])|\.(?P<name>[A-Za-z_][\w-]*)|\.\*|\[\*\]|\[(?P<index>\d+)\]"""
    r"""|(?<=\.\.)(?P<bare>[A-Za-z_][\w-]*)|(?<=\.\.)\*"""
    r"""|\[(?P<q>['"])(?P<quoted>(?:(?!(?P=q)).)*)(?P=q)\]"""
)


def parse_path(text: str) -> tuple[object, ...]:
    """``$.a[*].b`` -> ``("a", ANY, "b")``. Raises ValueError on anything else."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise ValueError("a path starts with '$', e.g. $.avatar.url")
    steps: list[object] = []
    pos = 1
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None:
            raise ValueError(f"cannot read the path at {text[pos:]!r}; use .name, [*], [0], ['name'] or ..name")
        token = match.group()
        if token == "..":
            if steps and steps[-1] is DEEP:
                raise ValueError("'..' twice in a row")
            steps.append(DEEP)
        elif match.group("name") is not None or match.group("bare") is not None:
            steps.append(match.group("name") or match.group("bare"))
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
        elif match.group("quoted") is not None:
            steps.append(match.group("quoted"))
        else:
            steps.append(ANY)
        pos = match.end()
    if steps and steps[-1] is DEEP:
        raise ValueError("a path cannot end with '..'")
    return tuple(steps)


def path_matches(steps: Sequence[object], path: Sequence[PathItem]) -> bool:
    """Does the location ``path`` (keys and indexes) match the parsed ``steps``?"""
    if not steps:
        return not path
    head = steps[0]
    if head is DEEP:
        return any(path_matches(steps[1:], path[i:]) for i in range(len(path) + 1))
    if not path:
        return False
    item = path[0]
    if head is ANY:
        ok = True
    elif isinstance(head, int):
        ok = isinstance(item, int) and item == head
    else:
        ok = isinstance(item, str) and item == head
    return ok and path_matches(steps[1:], path[1:])


@dataclass(frozen=True)
class Literal:
    """One string literal of a JSON text: ``text[start:end]`` includes the quotes.

    ``path`` locates it in the document; a key's path is its object's path plus
    the key itself (``is_key`` True).
    """

    start: int
    end: int
    path: tuple[PathItem, ...]
    is_key: bool


_WS = " \t\r\n"
_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')


def literals(text: str) -> Iterator[Literal]:
    """Every string literal of the JSON document ``text``, in order.

    Raises:
        ValueError: ``text`` is not one JSON document (checked as it is walked).
    """
    pos = _skip(text, 0)
    pos = yield from _value(text, pos, ())
    if _skip(text, pos) != len(text):
        raise ValueError(f"extra data at offset {_skip(text, pos)}")


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _string(text: str, pos: int) -> int:
    match = _STRING.match(text, pos)
    if match is None:
        raise ValueError(f"bad string at offset {pos}")
    return match.end()


def _value(text: str, pos: int, path: tuple[PathItem, ...]) -> Iterator[Literal]:
    # Iterative over containers, so deep documents cannot exhaust the stack.
    stack: list[list] = []  # [kind, path, index]
    while True:
        if pos >= len(text):
            raise ValueError("unexpected end of the document")
        char = text[pos]
        if char == "{" or char == "[":
            pos = _skip(text, pos + 1)
            close = "}" if char == "{" else "]"
            if pos < len(text) and text[pos] == close:
                pos += 1
            else:
                frame = ["o" if char == "{" else "a", path, 0]
                stack.append(frame)
                if char == "{":
                    pos, path = yield from _key(text, pos, frame[1])
                else:
                    path = frame[1] + (0,)
                continue
        elif char == '"':
            end = _string(text, pos)
            yield Literal(pos, end, path, False)
            pos = end
        else:
            match = _SCALAR.match(text, pos)
            if match is None:
                raise ValueError(f"unexpected {char!r} at offset {pos}")
            pos = match.end()
        # after a value: close containers or move to the next member
        while True:
            if not stack:
                return pos
            frame = stack[-1]
            pos = _skip(text, pos)
            if pos >= len(text):
                raise ValueError("unexpected end of the document")
            char = text[pos]
            if char == ",":
                pos = _skip(text, pos + 1)
                frame[2] += 1
                if frame[0] == "o":
                    pos, path = yield from _key(text, pos, frame[1])
                else:
                    path = frame[1] + (frame[2],)
                break
            if char == ("}" if frame[0] == "o" else "]"):
                stack.pop()
                pos += 1
                continue
            raise ValueError(f"expected ',' or a closing bracket at offset {pos}")


def _key(text: str, pos: int, base: tuple[PathItem, ...]) -> Iterator[Literal]:
    if pos >= len(text) or text[pos] != '"':
        raise ValueError(f"expected a key at offset {pos}")
    end = _string(text, pos)
    key = json.loads(text[pos:end])
    path = base + (key,)
    yield Literal(pos, end, path, True)
    pos = _skip(text, end)
    if pos >= len(text) or text[pos] != ":":
        raise ValueError(f"expected ':' at offset {pos}")
    return _skip(text, pos + 1), path


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def decode(raw: str) -> tuple[str, list[int]]:
    """Decode one literal (with its quotes). Returns the string and, for each decoded
    character and one past the end, the offset in ``raw`` where it starts."""
    out: list[str] = []
    where: list[int] = []
    i, end = 1, len(raw) - 1
    while i < end:
        char = raw[i]
        if char != "\\":
            out.append(char)
            where.append(i)
            i += 1
            continue
        code = raw[i + 1]
        if code != "u":
            out.append(_ESCAPES[code])
            where.append(i)
            i += 2
            continue
        unit = int(raw[i + 2 : i + 6], 16)
        if 0xD800 <= unit < 0xDC00 and raw[i + 6 : i + 8] == "\\u":
            low = int(raw[i + 8 : i + 12], 16)
            if 0xDC00 <= low < 0xE000:
                out.append(chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)))
                where.append(i)
                i += 12
                continue
        out.append(chr(unit))
        where.append(i)
        i += 6
    where.append(end)
    return "".join(out), where


def encode_like(value: str, old_raw: str) -> str:
    """``value`` as literal content, escaped the way ``old_raw`` (the literal text it
    replaces) was: ``/`` as ``\\/`` if the old text did so, non-ASCII as ``\\uXXXX``
    if the old text held such escapes."""
    ascii_only = "\\u" in old_raw
    text = json.dumps(value, ensure_ascii=ascii_only)[1:-1]
    if "\\/" in old_raw:
        text = text.replace("/", "\\/")
    return text
