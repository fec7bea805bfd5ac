"""JSON text as written: literals, their paths, decoding with offsets (property-based)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from residency.jsonpaths import decode, encode_like, literals, parse_path, path_matches

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                         max_leaves=20)
styles = st.sampled_from([{}, {"indent": 2}, {"ensure_ascii": False}, {"separators": (",", ":")}])


def strings_in_order(doc, path=()):
    """(path, is_key, string) of every string of ``doc`` in document order."""
    if isinstance(doc, str):
        yield path, False, doc
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield path + (k,), True, k
            yield from strings_in_order(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from strings_in_order(v, path + (i,))


@settings(max_examples=300)
@given(documents, styles)
def test_literals_are_every_string_with_its_path_and_decode_maps_back(doc, style):
    text = json.dumps(doc, **style)
    found = list(literals(text))
    assert [(lit.path, lit.is_key, decode(text[lit.start:lit.end])[0]) for lit in found] == list(strings_in_order(doc))
    for lit in found:
        raw = text[lit.start:lit.end]
        value, where = decode(raw)
        assert len(where) == len(value) + 1
        assert json.loads(raw[where[0] - 1 : where[-1] + 1] if value else raw) == value


@settings(max_examples=200)
@given(documents, st.text(min_size=1), st.sampled_from(["plain", "slashes", "ascii"]))
def test_replacing_a_whole_literal_keeps_the_rest_byte_identical(doc, new, escape):
    text = json.dumps({"doc": doc, "url": "https://host/a/b.jpg"}, ensure_ascii=escape == "ascii")
    if escape == "slashes":
        text = text.replace("https://host/a/b.jpg", "https:\\/\\/host\\/a\\/b.jpg")
    lit = [lit for lit in literals(text) if lit.path == ("url",) and not lit.is_key][0]
    raw = text[lit.start + 1 : lit.end - 1]
    out = text[: lit.start + 1] + encode_like(new, raw) + text[lit.end - 1 :]
    assert json.loads(out)["url"] == new and json.loads(out)["doc"] == doc
    assert out[: lit.start] == text[: lit.start] and out.endswith(text[lit.end :])


@pytest.mark.parametrize("bad", ["{", "[1,]", '{"a" 1}', "1 2", "", "[1 2]", '{"a":1,}', "'a'", '"\\x"', "[01]"])
def test_not_json_is_refused(bad):
    with pytest.raises(ValueError):
        list(literals(bad))


@pytest.mark.parametrize("path, location, matches", [
    ("$.avatar.url", ("avatar", "url"), True),
    ("$.avatar.url", ("avatar", "url", 0), False),
    ("$.images[*].src", ("images", 3, "src"), True),
    ("$.images[*].src", ("images", "x", "src"), True),
    ("$.images[0]", ("images", 1), False),
    ("$['a b'].c", ("a b", "c"), True),
    ("$..href", ("a", 0, "b", "href"), True),
    ("$..href", ("href",), True),
    ("$.*.url", ("x", "url"), True),
    ("$", (), True),
])
def test_paths(path, location, matches):
    assert path_matches(parse_path(path), location) is matches


@pytest.mark.parametrize("bad", ["a.b", "$.", "$..", "$[x]", "$.a..", "$.a b"])
def test_bad_paths_are_refused(bad):
    with pytest.raises(ValueError):
        parse_path(bad)
