"""The stored text of a document: canonical JSON with one line per service and per route.

    {"mesh":{...},"revocations":[...],"routes":[
    {"match":{"path_prefix":"/r0"},"name":"r0","service":"origin"},
    {"match":{"path_prefix":"/r1"},"name":"r1","service":"origin"}
    ],"services":[
    {"endpoints":["http://127.0.0.1:9000"],"name":"origin"}
    ]}

It is one JSON object (the newlines are whitespace between values), keys sorted, no other
whitespace, so equal documents give equal text, and any JSON reader reads it. The layout is what
makes a change to a large table cost what changed: `DocumentCodec` keeps each item of the last
document it wrote or read with its line, and the last text, so encoding the next one joins the lines
of the unchanged items, and decoding the next one, when only route lines changed, compares the two
texts from each end (`memcmp` in C) and parses only the lines between: what a serving process does
for every change committed elsewhere. Any other text is cut into its lines and only the lines not
seen before are parsed (a dict lookup each, in C). Neither the 5 MB `json.dumps` nor the
`json.loads` of a 10,000-route document runs on a one-route change; both held the GIL of a serving
process for tens of milliseconds, and the passes over every line that replaced them still held a
serving process's event loop for 4-8 ms a change (bench/README.md, "A change to a large table").

Text in any other layout (a version stored by an earlier Peel, a document written by hand) is read
whole with `json.loads`, through a `ParseMemo` that still keeps unchanged items the same objects.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import compress, repeat
from operator import attrgetter, not_
from typing import Any, NamedTuple, TypeVar, cast

from routes.errors import RuleError, StoreError
from routes.model import KEEP, Delta, Document, ParseMemo, Route, Service, edit_by_name
from routes.revocations import Mesh, parse_revocations
from routes.steps import Steps, ids_steps, map_steps, missing, run, split_steps

ROUTES_OPEN = '"routes":['
SERVICES_LINE = '],"services":['
CLOSE_LINE = "]}"
# Items parsed between two steps of `DocumentCodec.decode_steps` (about 5 ms of parsing here)
PARSED_PER_STEP = 100

Item = TypeVar("Item", Route, Service)


class Splice(NamedTuple):
    """A text made by `apply_delta`: from `base`, keeping its first `head` and last `tail`
    characters. Handed to `DocumentCodec.decode_steps`, it spares comparing the two texts."""

    text: str
    base: str
    head: int
    tail: int


# `json.dumps` with these arguments builds an encoder at every call: a third of the time of a
# route's line, 10,000 of them at each `peel apply` of a large table.
_ITEM_LINE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def item_line(data: object) -> str:
    """The line of an item's data (its `to_dict()`) in the stored text."""
    return _ITEM_LINE(data)


def document_head(document: Document) -> dict[str, Any]:
    """The fields of `document` on the stored text's first line: its mesh and revocations, when
    it has them (`TextLines.head_fields` reads them back)."""
    head: dict[str, Any] = {}
    if document.mesh is not None:
        head["mesh"] = document.mesh.to_dict()
    if document.revocations:
        head["revocations"] = [r.to_dict() for r in document.revocations]
    return head


class _Lines:
    """The items of one kind of the last document: object by line (an object's own line is its
    `_line`, set when its line is first written or read: `_set_lines`).

    No tuple per item: a burst of 10,000 new tuples made the cyclic collector run ten times in one
    encode, each pass walking every young container (bench/README.md). No map from the objects'
    ids to their lines either: with its ints it was 0.6 MiB for 10,000 routes, and a copy of it at
    every change.
    """

    __slots__ = ("by_line", "items", "lines", "owner", "text")

    def __init__(self, items: Sequence[Any], by_line: dict[str, Any], lines: list[str],
                 owner: Document | None) -> None:
        self.items = items
        self.by_line = by_line
        self.lines = lines  # the line of each of `items`, in their order
        self.owner = owner  # the document whose routes or services `items` are
        # the routes' memo: the whole text these lines are of (written or read), when known
        self.text: str | None = None

    def changed(self, document: Document, base: Document, delta: Delta) -> _Lines:
        """The lines of `document`'s routes, these being the lines of `base`'s (its delta's base):
        this one's with the routes the delta names replaced in place (no pass over every route in
        bytecode)."""
        lines = list(self.lines)
        gone: list[Route] = []
        new: list[tuple[Route, str]] = []

        def line(name: str, old: Route | None) -> str | None:
            item = document.route(name)
            if old is item:
                return KEEP  # type: ignore[no-any-return]
            if old is not None:
                gone.append(old)
            if item is None:
                return None
            text = item_line(item.to_dict())
            new.append((item, text))
            return text

        edit_by_name(base.routes, delta.routes, lines, line)
        return self._after(document.routes, lines, document, gone, new)

    def read(self, items: list[Any], lines: list[str], fresh_at: list[int], base: Document,
             names: frozenset[str], owner: Document) -> _Lines:
        """The lines of the next version read back as an edit of `base` (these being `base`'s
        routes' lines): `items` and `lines` as read, less the routes of `base` the edit names, plus
        the lines parsed (at `fresh_at`)."""
        gone = [old for old in map(base.route, names) if old is not None]
        return self._after(items, lines, owner, gone, ((items[i], lines[i]) for i in fresh_at))

    def _after(self, items: Sequence[Any], lines: list[str], owner: Document, gone: Iterable[Any],
               new: Iterable[tuple[Any, str]]) -> _Lines:
        """The lines of `items`: this one's map copied (in C), without the lines of the items `gone`
        and with the `new` items' lines."""
        by_line = self.by_line.copy()
        for old in gone:
            del by_line[old._line]
        for item, line in new:
            object.__setattr__(item, "_line", line)
            by_line[line] = item
        return _Lines(items, by_line, lines, owner)


_NONE = _Lines((), {}, [], None)
_NAME = attrgetter("name")
_BETWEEN = ",\n"  # between two items
_BLOCK = 1 << 15  # characters compared at once when two texts are compared
_SERVICES = f"\n{SERVICES_LINE}\n"
_CLOSING = f"\n{CLOSE_LINE}"


class DocumentCodec:
    """Encodes and decodes stored documents, reusing the lines and objects of the last one.

    Safe to share between threads: each call reads the last state and replaces it whole. It keeps
    the last document's lines (about 0.1 KiB per route beyond the text itself).
    """

    __slots__ = ("_encoded", "_memo", "_routes", "_services", "document")

    def __init__(self) -> None:
        self._routes = _NONE
        self._services = _NONE
        self._memo = ParseMemo()  # for text in another layout
        self.document: Document | None = None  # the last one, the base of the next one's checks
        # the last document encoded and its text (one reference: threads replace it whole)
        self._encoded: tuple[Document, str] | None = None

    def encode(self, document: Document) -> str:
        """The canonical text of `document` (no check: `routes.store.encode_document` refuses a
        document that still holds a refused regex). The same document again (the snapshot of the
        version just committed) is the same text, at no cost."""
        encoded = self._encoded
        if encoded is not None and encoded[0] is document:
            return encoded[1]
        known, delta = self._routes, document.delta
        base = delta.base if delta is not None else None
        changed: _Lines | None = None
        if delta is not None and base is not None and known.items is base.routes:
            # an edit of the document whose lines are known: the lines of what changed
            changed = known.changed(document, base, delta)
            route_lines = changed.lines
        else:
            route_lines = self._encode(document.routes)
        service_lines = self._encode(document.services)
        head = document_head(document)
        opening = item_line(head)[:-1] + ("," if head else "") + ROUTES_OPEN
        parts = [opening]
        if route_lines:
            parts.append(",\n".join(route_lines))
        parts.append(SERVICES_LINE)
        if service_lines:
            parts.append(",\n".join(service_lines))
        parts.append(CLOSE_LINE)
        text = "\n".join(parts)
        if document is not self.document:  # the same one again (the snapshot of a commit): known
            routes = changed if changed is not None else _lines(document.routes, route_lines, document)
            routes.text = text
            self._routes = routes
            self._services = _lines(document.services, service_lines, document)
            self.document = document
        elif text == self._routes.text:
            # the document just read (a serving process's snapshot of the version it loaded): the
            # text read is this one, kept once (a 10,000-route text is 0.7 MB)
            text = self._routes.text
        self._encoded = (document, text)
        return text

    def decode(self, text: str, *, stored: bool = True) -> Document:
        """The document of `text`; raises `RuleError` or `ValueError` for one it cannot read."""
        return run(self.decode_steps(text, stored=stored))

    def decode_steps(self, text: str, *, stored: bool = True, splice: Splice | None = None
                     ) -> Steps[Document]:
        """`decode` in steps (`routes.steps`), each about a millisecond at most on a 10,000-route
        document. The next version of the last document, changed in its routes alone, costs what changed
        (`_edit_steps`); `splice`, when `text` was made from the last text by `apply_delta`, says
        where they differ without comparing them."""
        document = yield from self._edit_steps(text, stored, splice)
        if document is not None:
            return document
        layout = yield from text_lines_steps(text)
        if layout is None:
            document = Document.parse(json.loads(text), stored=stored, memo=self._memo)
            self.document = document
            return document
        head = layout.head_fields()
        route_lines, service_lines = layout.routes, layout.services
        old_routes, old_services = self._routes, self._services
        routes: list[Route]
        services: list[Service]
        routes, fresh_at = yield from _decode(
            route_lines, old_routes, lambda d, i: Route.parse(d, f"routes[{i}]", stored=stored))
        services, fresh_services = yield from _decode(
            service_lines, old_services, lambda d, i: Service.parse(d, f"services[{i}]"))
        yield
        revocations = parse_revocations(head.get("revocations"))
        mesh = Mesh.parse(head.get("mesh"))
        base = old_routes.owner
        edited: Document | None = None
        if base is not None and old_services.owner is base and not fresh_services \
                and len(services) == len(base.services):
            # the next version of the document whose lines are known, with the same services: an
            # edit of it, by the routes that are new in the text
            held = yield from ids_steps(routes)
            yield
            edited = _edited(base, routes, held, [routes[i] for i in fresh_at], (mesh, revocations),
                             stored)
        document = edited if edited is not None else Document.build(
            services, routes, stored=stored, revocations=revocations, mesh=mesh, base=self.document)
        yield
        if edited is not None and edited.delta is not None and base is not None:
            route_memo = old_routes.read(routes, route_lines, fresh_at, base, edited.delta.routes, edited)
        else:
            route_memo = _lines(routes, route_lines, document)
        yield
        route_memo.text = text
        self._services = _lines(services, service_lines, document)
        self._routes = route_memo
        self.document = document
        return document

    def _edit_steps(self, text: str, stored: bool, splice: Splice | None = None) -> Steps[Document | None]:
        """The document of `text` when it is the text of the last document with some route lines
        changed, put or removed (what a one-route change stores): found by comparing the two texts
        from each end (a `memcmp` in C: no line is cut, looked up or parsed but the changed ones;
        with a `splice` of the last text, as `apply_delta` made it, not even that),
        and made by `Document.replace_items` of the last document, as an edit of it. None, having
        changed nothing, for anything else (the head or the services changed, no known text, a
        line that repeats another): `decode_steps` then reads the text whole."""
        known, services = self._routes, self._services
        old, base = known.text, known.owner
        if old is None or base is None or base is not self.document or services.owner is not base:
            return None
        hint = splice if splice is not None and splice.base is old and splice.text is text else None
        unchanged = hint.head == len(old) == len(text) if hint is not None else text == old
        if unchanged:  # a version that changed nothing: as an edit of nothing
            document = base.replace_items(stored=stored)
            routes = _Lines(known.items, known.by_line, known.lines, document)
            routes.text = text
            self._adopt(routes, services, document)
            return document
        head_end = old.find("\n")
        # the newline before SERVICES_LINE: only there is a newline followed by a "]" (an item's
        # line is JSON, a newline in it is escaped), found from the end, where the services are
        services_at = old.rfind(_SERVICES)
        same = hint.head if hint is not None else _common_prefix(text, old)
        if head_end < 0 or services_at <= head_end or same <= head_end:
            return None  # no route in the last text, or its head changed
        tail = hint.tail if hint is not None else _common_suffix(text, old, min(len(text), len(old)) - same)
        if len(old) - tail > services_at:
            return None  # the services or the closing line changed
        # the changed lines, whole: from the start of the first changed line to the newline that
        # ends the last (its comma, if any, taken off)
        start = old.rfind("\n", 0, same) + 1
        old_end = old.find("\n", len(old) - tail)
        new_end = text.find("\n", len(text) - tail)
        first = old.count("\n", head_end + 1, start)
        stop = first + old.count("\n", start, old_end) + 1
        segment = text[start:new_end]
        if not segment:
            return None
        yield
        lines = segment[:-1].split(_BETWEEN) if segment.endswith(",") else segment.split(_BETWEEN)
        replaced = known.items[first:stop]
        among = set(map(id, replaced))
        items: list[Any] = list(map(known.by_line.get, lines))
        reused: set[int] = set()
        fresh: list[tuple[Route, str]] = []
        for i, (item, line) in enumerate(zip(items, lines, strict=True)):
            if item is None:
                items[i] = route = Route.parse(json.loads(line), f"routes[{first + i}]", stored=stored)
                fresh.append((route, line))
            elif id(item) not in among or id(item) in reused:
                return None  # a line that another one repeats: the whole read names it
            else:
                reused.add(id(item))
        gone = [old_item for old_item in replaced if id(old_item) not in reused]
        put = [route for route, _ in fresh]
        document = base.replace_items(routes=put, delete_routes={r.name for r in gone} -
                                      {r.name for r in put}, stored=stored)
        count = len(known.items) - len(replaced) + len(items)
        if len(document.routes) != count:
            return None  # a name on two lines: the whole read names it
        yield
        all_items = [*known.items[:first], *items, *known.items[stop:]]
        all_lines = [*known.lines[:first], *lines, *known.lines[stop:]]
        yield
        routes = known._after(all_items, all_lines, document, gone, fresh)
        routes.text = text
        self._adopt(routes, services, document)
        return document

    def _adopt(self, routes: _Lines, services: _Lines, document: Document) -> None:
        """Hold `routes`, and `services` (the last document's: they are unchanged), as the lines of
        `document`, an edit of the last document. (The maps are shared: a `_Lines` is never changed
        once the codec holds it.)"""
        self._services = _Lines(services.items, services.by_line, services.lines, document)
        self._routes = routes
        self.document = document

    @staticmethod
    def _encode(items: tuple[Item, ...]) -> list[str]:
        """The lines of `items`: each one's own when it has one (written or read before), else
        made and kept on it."""
        out: list[str | None] = list(map(_LINE, items))
        for i in missing(out):
            item = items[i]
            out[i] = line = item_line(item.to_dict())
            object.__setattr__(item, "_line", line)
        return cast(list[str], out)


class TextLines(NamedTuple):
    """A text in the line-per-item layout, cut into its lines."""

    head: str  # `{`, the mesh and revocations fields, `"routes":[`
    routes: list[str]  # one route each, without the comma between items
    services: list[str]

    def head_fields(self) -> dict[str, Any]:
        """The document's fields but for its routes and services (mesh, revocations)."""
        head: dict[str, Any] = json.loads(self.head + CLOSE_LINE)
        if set(head) - {"mesh", "revocations", "routes"}:
            raise RuleError("document", "has unknown fields", sorted(set(head)))
        del head["routes"]
        return head


def text_lines(text: str) -> TextLines | None:
    """The lines of `text`, or None when it is not in the line-per-item layout."""
    return run(text_lines_steps(text))


def text_lines_steps(text: str) -> Steps[TextLines | None]:
    """`text_lines` in steps (`routes.steps`). The items are cut on the comma and newline between
    them: one pass in C that leaves no comma to take off each line."""
    head_end = text.find("\n")
    if head_end < 1 or not text.startswith("{") or not text.endswith(_CLOSING) \
            or not text.endswith(ROUTES_OPEN, 0, head_end):
        return None
    # the first line that is SERVICES_LINE, between the head and the closing line
    close = len(text) - len(CLOSE_LINE)
    at = text.find(_SERVICES, head_end, close)
    if at < 0:
        return None
    routes = (yield from split_steps(text, _BETWEEN, head_end + 1, at)) if at > head_end else []
    start = at + len(_SERVICES)
    services = (yield from split_steps(text, _BETWEEN, start, close - 1)) if start < close else []
    return TextLines(text[:head_end], routes, services)


def _lines(items: Sequence[Any], lines: list[str], owner: Document) -> _Lines:
    # zip: 10,000 routes are paired in C, not in bytecode (and as many lines as items, or nothing)
    by_line = dict(zip(lines, items, strict=True))
    _set_lines(items, lines)
    return _Lines(items, by_line, lines, owner)


# an item's own line (None until it is first written or read)
_LINE = attrgetter("_line")


def _set_lines(items: Sequence[Any], lines: Sequence[str]) -> None:
    """Keep each item's line on it (`_line`, a slot outside the item's fields: not compared, not
    printed), in C: the frozen dataclass's own `__setattr__` refuses, `object.__setattr__` does
    not. An item is immutable, so its line never changes. As many lines as items (the caller's
    strict zip has checked)."""
    deque(map(object.__setattr__, items, repeat("_line"), lines), maxlen=0)


def text_delta(old: str, new: str, base: str) -> str | None:
    """`new` as a splice of `old`: how many characters of `old`'s start and end it keeps, `old`'s
    length, `base` (what names `old`, digits: a reader holding another text of the same length
    must not splice it), then the characters between: `"<head>:<tail>:<length>:<base>:<between>"`.
    A one-route change to a 10,000-route text is a line of it. None when the splice would hold
    more than half of `new`. `apply_delta` reads it back."""
    head = _common_prefix(old, new)
    tail = _common_suffix(old, new, min(len(old), len(new)) - head)
    between = new[head:len(new) - tail]
    if 2 * len(between) > len(new):
        return None
    return f"{head}:{tail}:{len(old)}:{base}:{between}"


def splice_base(delta: str) -> str | None:
    """What names the text a stored splice was made from (`text_delta`'s `base`); None when
    `delta` is not a splice."""
    fields = delta.split(":", 4)
    return fields[3] if len(fields) == 5 else None


def apply_delta(old: str, delta: str, base: str) -> Splice | None:
    """The text `text_delta(old, new, base)` was made from, as a `Splice` of `old`; None when
    `delta` is not a splice of this `old` and `base` (another text, or not a delta at all): the
    caller reads the whole text."""
    fields = delta.split(":", 4)
    if len(fields) != 5 or fields[3] != base or \
            not all(f.isascii() and f.isdigit() for f in fields[:3]):
        return None
    head, tail, length = int(fields[0]), int(fields[1]), int(fields[2])
    if length != len(old) or head + tail > length:
        return None
    return Splice(old[:head] + fields[4] + old[length - tail:], old, head, tail)


def _common_prefix(a: str, b: str) -> int:
    """How many characters `a` and `b` share from their start (compared a block at a time, in C)."""
    limit = min(len(a), len(b))
    at = 0
    while at < limit and a[at:at + _BLOCK] == b[at:at + _BLOCK]:
        at += _BLOCK
    if at >= limit:
        return limit
    low, high = at, min(at + _BLOCK, limit)  # the first difference is in [low, high)
    while high - low > 1:
        mid = (low + high) // 2
        if a[low:mid] == b[low:mid]:
            low = mid
        else:
            high = mid
    return low if a[low] != b[low] else high


def _common_suffix(a: str, b: str, limit: int) -> int:
    """How many characters, at most `limit`, `a` and `b` share at their end."""
    la, lb = len(a), len(b)
    at = 0
    while at < limit:
        size = min(_BLOCK, limit - at)
        if a[la - at - size:la - at] != b[lb - at - size:lb - at]:
            break
        at += size
    else:
        return limit
    low, high = at, min(at + _BLOCK, limit)  # the first difference from the end is in [low, high)
    while high - low > 1:
        mid = (low + high) // 2
        if a[la - mid:la - low] == b[lb - mid:lb - low]:
            low = mid
        else:
            high = mid
    return low if a[la - low - 1] != b[lb - low - 1] else high


def _decode(lines: list[str], known: _Lines,
            parse: Callable[[Any, int], Any]) -> Steps[tuple[list[Any], list[int]]]:
    """The items of `lines`, and the places of those that were parsed: the known ones as they are,
    the others parsed (a step every `PARSED_PER_STEP` parsed, so a whole new document does not
    hold the loop in one piece)."""
    out: list[Any] = yield from map_steps(known.by_line.get, lines)
    yield
    fresh: list[int] = []
    for parsed, i in enumerate(missing(out), 1):
        out[i] = parse(json.loads(lines[i]), i)
        fresh.append(i)
        if parsed % PARSED_PER_STEP == 0:
            yield
    return out, fresh


def _edited(base: Document, routes: list[Route], held: set[int], fresh: list[Route],
            head: tuple[Mesh | None, tuple[Any, ...]], stored: bool) -> Document | None:
    """The document of `routes` (`held`: their ids) as an edit of `base` (the same services),
    whose routes are the known ones of `routes`: `fresh` (the others) put, and the routes of `base`
    that no line holds any more removed; None when the text is not such an edit, a name or a line
    on two lines (the caller builds it whole, which names what is wrong)."""
    if len(held) != len(routes):
        return None  # a line twice
    replaced = 0
    for route in fresh:
        old = base.route(route.name)
        if old is not None:
            if id(old) in held:
                return None  # a name on two lines, one as before and one new
            replaced += 1
    gone: set[str] = set()
    if len(base.routes) - (len(routes) - len(fresh)) != replaced:
        # more routes of `base` are on no line than new lines replace: removed (by identity, in C)
        gone = set(map(_NAME, compress(base.routes, map(not_, map(held.__contains__, map(id, base.routes))))))
        gone.difference_update(map(_NAME, fresh))
    document = base.replace_items(routes=fresh, delete_routes=gone, head=head, stored=stored)
    return document if len(document.routes) == len(routes) else None


# The process's one, shared by its stores and the snapshot writer (`routes.watcher`), so that a
# document committed, read back and written to the snapshot in one process is encoded once.
CODEC = DocumentCodec()


def decode_stored(text: str, version: int, codec: DocumentCodec = CODEC) -> Document:
    """The document of stored config version `version`; `StoreError` when it cannot be read."""
    return run(decode_stored_steps(text, version, codec))


def decode_stored_steps(text: str, version: int, codec: DocumentCodec = CODEC,
                        splice: Splice | None = None) -> Steps[Document]:
    """`decode_stored` in steps (`routes.steps`); `splice`: `text` as made by `apply_delta`."""
    try:
        # stored: a route with a regex RE2 refuses (written by an older Peel) is kept, unservable
        return (yield from codec.decode_steps(text, stored=True, splice=splice))
    except (ValueError, RuleError) as exc:
        raise StoreError(f"config version {version} holds a document this Peel cannot read: {exc}") \
            from exc
