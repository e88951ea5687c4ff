"""The stored text of a document (`routes.document_text`): one JSON object with a line per item,
read back equal; a one-route change re-encodes and re-parses one line; text in any other layout
still reads."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routes import document_text
from routes.changes import put_route
from routes.document_text import DocumentCodec, apply_delta, decode_stored, text_delta
from routes.errors import RuleError, StoreError
from routes.model import Document, Route
from routes.steps import run

ORDERS = "spiffe://peel.internal/svc/orders"


def data(routes: int = 20, **extra: Any) -> dict[str, Any]:
    return {"services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                         {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
            "routes": [{"name": f"r{i:02d}", "match": {"path_prefix": f"/r{i}"}, "service": "legacy"}
                       for i in range(routes)], **extra}


FULL = data(revocations=[{"identity": ORDERS, "at": "2026-12-03T18:00:00Z"}],
            mesh={"inbound_mtls": "strict"})


@pytest.mark.parametrize("raw", [data(), data(0), FULL, {}], ids=["routes", "no-routes", "full", "empty"])
def test_the_text_is_the_canonical_json_and_reads_back_equal(raw: dict[str, Any]) -> None:
    document = Document.parse(raw)
    text = DocumentCodec().encode(document)
    assert json.loads(text) == json.loads(json.dumps(document.to_dict(), sort_keys=True))
    assert text == DocumentCodec().encode(Document.parse(raw))  # equal documents, equal text
    assert DocumentCodec().decode(text) == document
    lines = text.split("\n")
    assert len(lines) == 3 + len(document.routes) + len(document.services)
    assert lines[1 + len(document.routes)] == '],"services":['


def test_a_one_route_change_parses_one_line_and_keeps_the_other_objects() -> None:
    writer, reader = DocumentCodec(), DocumentCodec()
    first = reader.decode(writer.encode(Document.parse(data())))
    moved = Route.parse({"name": "r07", "match": {"path_prefix": "/seven"}, "service": "legacy"}, "r")
    text = writer.encode(put_route(Document.parse(data()), moved))
    second = reader.decode(text)
    assert second == DocumentCodec().decode(text)  # what a fresh decode gives
    same = [r.name for r in second.routes if r is first.route(r.name)]
    assert len(same) == 19 and "r07" not in same
    assert second.services[0] is first.services[0]


def test_encoding_reuses_the_lines_of_unchanged_items() -> None:
    codec = DocumentCodec()
    document = Document.parse(data())
    codec.encode(document)
    line = document.routes[3]._line
    assert line is codec._routes.lines[3] and '"r03"' in line  # kept on the route
    again = codec.encode(put_route(document, Route.parse(
        {"name": "r07", "match": {"path_prefix": "/seven"}, "service": "legacy"}, "r")))
    assert codec._routes.lines[3] is line  # the same string: not encoded again
    # a route that was never in the codec's last document, but was encoded before: its own line
    other = DocumentCodec()
    other.encode(document)
    assert other._routes.lines[3] is line
    assert '"/seven"' in again and '"/r7"' not in again


def test_text_in_another_layout_still_reads() -> None:
    document = Document.parse(FULL)
    for text in (json.dumps(document.to_dict()), json.dumps(document.to_dict(), indent=2)):
        assert DocumentCodec().decode(text) == document


def test_a_document_that_cannot_be_read_names_the_version() -> None:
    text = DocumentCodec().encode(Document.parse(data(3)))
    broken = text.replace('"service":"legacy"', '"service":"nowhere"', 1)
    with pytest.raises(StoreError, match="config version 7"):
        decode_stored(broken, 7, DocumentCodec())
    with pytest.raises(StoreError, match="config version 8"):
        decode_stored(text.replace("/r1", "/r1\\", 1), 8, DocumentCodec())


def test_a_changed_line_is_checked_against_the_rest() -> None:
    codec = DocumentCodec()
    text = codec.encode(Document.parse(data()))
    clash = text.replace('"/r7"', '"/r3"', 1)  # r07 now has r03's match
    with pytest.raises(RuleError, match="same match and priority"):
        codec.decode(clash, stored=False)


def test_the_same_document_again_is_encoded_from_what_the_codec_holds() -> None:
    codec = DocumentCodec()
    document = Document.parse(FULL)
    text = codec.encode(document)
    held = codec._routes
    assert codec.encode(document) == text and codec._routes is held  # the snapshot of a commit
    read = codec.decode(text)
    assert codec.encode(read) == text
    changed = put_route(read, Route.parse({"name": "r03", "match": {"path_prefix": "/three"},
                                           "service": "orders"}, "route"))
    assert DocumentCodec().decode(codec.encode(changed)) == changed and codec._routes is not held


def test_the_snapshot_of_a_document_just_read_is_the_text_read() -> None:
    # a serving process reads its version, then writes its snapshot: one copy of the text, not two
    stored = DocumentCodec().encode(Document.parse(data(50)))
    codec = DocumentCodec()
    read = codec.decode("".join(list(stored)))  # a text object of its own, as a database gives
    snapshot = codec.encode(read)
    assert snapshot == stored and snapshot is codec._routes.text


def _route(name: str, path: str, service: str = "legacy") -> dict[str, Any]:
    return {"name": name, "match": {"path_prefix": path}, "service": service}


def _outcome(codec: DocumentCodec, text: str) -> Document | tuple[type, str]:
    try:
        return codec.decode(text)
    except (RuleError, ValueError) as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize("spliced", [False, True], ids=["compared", "spliced"])
@pytest.mark.parametrize("seed", range(30))
def test_an_edit_read_from_both_ends_is_what_a_whole_read_gives(seed: int, spliced: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The next version of the last document read, with routes put, changed and removed anywhere
    (first, last, none left but one, several at once): the reader compares the texts from both ends
    (or, `spliced`, is told where they differ: the text made from the last one by `apply_delta`,
    as a store reads `config_versions.delta`) and parses only the changed lines; what it gives is
    what a fresh codec's whole read gives, the unchanged routes are the last version's objects, and
    it encodes back to the same text."""
    rng = random.Random(seed)
    routes = {f"r{i:03d}": _route(f"r{i:03d}", f"/r{i}") for i in range(rng.randint(1, 25))}
    writer, reader = DocumentCodec(), DocumentCodec()
    last = reader.decode(writer.encode(Document.parse({**data(0), "routes": list(routes.values())})))
    whole, compare = document_text.text_lines_steps, document_text._common_prefix
    spliced_reads = 0

    def not_whole(text: str) -> Any:
        raise AssertionError("read whole")

    for _ in range(12):
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(("put", "change", "remove"))
            if kind == "put" or not routes:
                name = rng.choice((f"a{rng.randint(0, 999):03d}", f"r{rng.randint(0, 99):03d}x",
                                   f"z{rng.randint(0, 999):03d}"))
                routes[name] = _route(name, f"/{name}", rng.choice(("legacy", "orders")))
            elif kind == "change":
                name = rng.choice(sorted(routes))
                routes[name] = _route(name, f"/{name}/v{rng.randint(0, 9)}")
            elif len(routes) > 1:
                del routes[rng.choice(sorted(routes))]
        text = writer.encode(Document.parse({**data(0), "routes": list(routes.values())}))
        splice = None
        if spliced:
            old = reader._routes.text
            assert old is not None
            delta = text_delta(old, text, "7")  # None: a change of most of the text, compared
            splice = None if delta is None else apply_delta(old, delta, "7")
            if splice is not None:
                spliced_reads += 1
                assert splice.text == text
                text = splice.text
                monkeypatch.setattr(document_text, "_common_prefix", not_whole)
        monkeypatch.setattr(document_text, "text_lines_steps", not_whole)
        read = run(reader.decode_steps(text, splice=splice))
        monkeypatch.setattr(document_text, "text_lines_steps", whole)
        monkeypatch.setattr(document_text, "_common_prefix", compare)
        assert read == DocumentCodec().decode(text)
        assert read.delta is not None and read.delta.base is last
        unchanged = [r for r in read.routes if last.route(r.name) == r]
        assert all(last.route(r.name) is r for r in unchanged)
        assert reader._routes.text is text
        assert reader.encode(read) == text
        last = read
    assert spliced_reads >= 3 or not spliced, spliced_reads  # of 12: the rest changed most of the text


def test_a_read_that_is_no_plain_edit_gives_what_a_whole_read_gives() -> None:
    """Texts that change the services or the head, repeat a line, or put a name on two lines are
    read whole, with the same result or error as a fresh codec's."""
    base_text = DocumentCodec().encode(Document.parse(data(6)))
    lines = base_text.split("\n")
    repeated = "\n".join([*lines[:3], lines[2], *lines[3:]])
    same_name = base_text.replace('{"match":{"path_prefix":"/r4"},"name":"r04"',
                                  '{"match":{"path_prefix":"/four"},"name":"r03"')
    variants = {
        "services": base_text.replace("http://10.0.0.7:9000", "http://10.0.0.8:9000"),
        "head": DocumentCodec().encode(Document.parse({**data(6), "mesh": {"inbound_mtls": "strict"}})),
        "repeated line": repeated,
        "a name on two lines": same_name,
        "the same text": base_text,
        "an unknown service": base_text.replace('"/r2"},"name":"r02","service":"legacy"',
                                                '"/r2"},"name":"r02","service":"nowhere"'),
    }
    for name, text in variants.items():
        reader = DocumentCodec()
        reader.decode(base_text)
        assert _outcome(reader, text) == _outcome(DocumentCodec(), text), name


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab:\n{}", max_size=40), st.text(alphabet="ab:\n{}", max_size=40))
def test_a_splice_reads_back_only_onto_its_own_text(old: str, new: str) -> None:
    delta = text_delta(old, new, "42")
    if delta is None:  # a change of more than half of the new text is not worth a splice
        return
    made = apply_delta(old, delta, "42")
    assert made is not None and made.text == new and made.base is old
    assert new[:made.head] == old[:made.head] and new[len(new) - made.tail:] == old[len(old) - made.tail:]
    assert apply_delta(old, delta, "43") is None  # another text of the same number
    assert apply_delta(old + "x", delta, "42") is None  # another text
