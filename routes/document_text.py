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
document it wrote or read with its line, so encoding the next one joins the lines of the unchanged
items, and decoding the next one splits the text on newlines and parses only the lines it has not
seen (a dict lookup each, in C). Neither the 5 MB `json.dumps` nor the `json.loads` of a 10,000-route
document runs on a one-route change; both held the GIL of a serving process for tens of milliseconds.

Text in any other layout (a version stored by an earlier Peel, a document written by hand) is read
whole with `json.loads`, through a `ParseMemo` that still keeps unchanged items the same objects.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from itertools import compress
from operator import attrgetter, itemgetter, not_
from typing import Any, NamedTuple, TypeVar, cast

from routes.errors import RuleError, StoreError
from routes.model import KEEP, Delta, Document, ParseMemo, Route, Service, edit_by_name
from routes.revocations import Mesh, parse_revocations
from routes.steps import Steps, missing, run

ROUTES_OPEN = '"routes":['
SERVICES_LINE = '],"services":['
CLOSE_LINE = "]}"
# Items parsed between two steps of `DocumentCodec.decode_steps` (about 5 ms of parsing here)
PARSED_PER_STEP = 100

Item = TypeVar("Item", Route, Service)


def _dumps(data: object) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class _Lines:
    """The items of one kind of the last document: object by line, and line by object identity.

    `items` keeps the objects alive, so that no other object can take the id of one in `by_id`
    while it is kept. No tuple per item: a burst of 10,000 new tuples made the cyclic collector
    run ten times in one encode, each pass walking every young container (bench/README.md).
    """

    __slots__ = ("by_id", "by_line", "items", "lines", "owner")

    def __init__(self, items: Sequence[Any], by_line: dict[str, Any], by_id: dict[int, str],
                 lines: list[str], owner: Document | None) -> None:
        self.items = items
        self.by_line = by_line
        self.by_id = by_id
        self.lines = lines  # the line of each of `items`, in their order
        self.owner = owner  # the document whose routes or services `items` are

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
            text = _dumps(item.to_dict())
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
        """The lines of `items`: this one's maps copied (two copies in C), without the lines of the
        items `gone` and with the `new` items' lines."""
        by_id = dict(self.by_id)
        by_line = dict(self.by_line)
        for old in gone:
            del by_line[by_id.pop(id(old))]
        for item, line in new:
            by_id[id(item)] = line
            by_line[line] = item
        return _Lines(items, by_line, by_id, lines, owner)


_NONE = _Lines((), {}, {}, [], None)
_NAME = attrgetter("name")
_CUT_COMMA = itemgetter(slice(None, -1))  # a line but its last character (in C, over every line)


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
            route_lines = self._encode(document.routes, known)
        service_lines = self._encode(document.services, self._services)
        head: dict[str, Any] = {}
        if document.mesh is not None:
            head["mesh"] = document.mesh.to_dict()
        if document.revocations:
            head["revocations"] = [r.to_dict() for r in document.revocations]
        opening = _dumps(head)[:-1] + ("," if head else "") + ROUTES_OPEN
        parts = [opening]
        if route_lines:
            parts.append(",\n".join(route_lines))
        parts.append(SERVICES_LINE)
        if service_lines:
            parts.append(",\n".join(service_lines))
        parts.append(CLOSE_LINE)
        if document is not self.document:  # the same one again (the snapshot of a commit): known
            self._routes = changed if changed is not None else _lines(document.routes, route_lines,
                                                                      document)
            self._services = _lines(document.services, service_lines, document)
            self.document = document
        text = "\n".join(parts)
        self._encoded = (document, text)
        return text

    def decode(self, text: str, *, stored: bool = True) -> Document:
        """The document of `text`; raises `RuleError` or `ValueError` for one it cannot read."""
        return run(self.decode_steps(text, stored=stored))

    def decode_steps(self, text: str, *, stored: bool = True) -> Steps[Document]:
        """`decode` in steps of a few milliseconds on a 10,000-route document (`routes.steps`)."""
        layout = text_lines(text)
        if layout is None:
            document = Document.parse(json.loads(text), stored=stored, memo=self._memo)
            self.document = document
            return document
        head = layout.head_fields()
        route_lines, service_lines = layout.routes, layout.services
        old_routes, old_services = self._routes, self._services
        yield
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
            edited = _edited(base, routes, [routes[i] for i in fresh_at], (mesh, revocations), stored)
        document = edited if edited is not None else Document.build(
            services, routes, stored=stored, revocations=revocations, mesh=mesh, base=self.document)
        yield
        if edited is not None and edited.delta is not None and base is not None:
            route_memo = old_routes.read(routes, route_lines, fresh_at, base, edited.delta.routes, edited)
        else:
            route_memo = _lines(routes, route_lines, document)
        yield
        self._services = _lines(services, service_lines, document)
        self._routes = route_memo
        self.document = document
        return document

    def _encode(self, items: tuple[Item, ...], known: _Lines) -> list[str]:
        out: list[str | None] = list(map(known.by_id.get, map(id, items)))
        for i in missing(out):
            out[i] = _dumps(items[i].to_dict())
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
    lines = text.split("\n")
    try:
        split = lines.index(SERVICES_LINE)
    except ValueError:
        return None
    if split < 1 or lines[-1] != CLOSE_LINE or not lines[0].endswith(ROUTES_OPEN) \
            or not lines[0].startswith("{"):
        return None
    return TextLines(lines[0], _items(lines[1:split]), _items(lines[split + 1:-1]))


def _lines(items: Sequence[Any], lines: list[str], owner: Document) -> _Lines:
    # zip and map: 10,000 routes are paired in C, not in bytecode
    return _Lines(items, dict(zip(lines, items, strict=True)),
                  dict(zip(map(id, items), lines, strict=True)), lines, owner)


def _items(lines: list[str]) -> list[str]:
    """The item lines without the comma that ends every one but the last."""
    if not lines:
        return lines
    out = list(map(_CUT_COMMA, lines[:-1]))
    out.append(lines[-1])
    return out


def _decode(lines: list[str], known: _Lines,
            parse: Callable[[Any, int], Any]) -> Steps[tuple[list[Any], list[int]]]:
    """The items of `lines`, and the places of those that were parsed: the known ones as they are,
    the others parsed (a step every `PARSED_PER_STEP` parsed, so a whole new document does not
    hold the loop in one piece)."""
    out: list[Any] = list(map(known.by_line.get, lines))
    fresh: list[int] = []
    for parsed, i in enumerate(missing(out), 1):
        out[i] = parse(json.loads(lines[i]), i)
        fresh.append(i)
        if parsed % PARSED_PER_STEP == 0:
            yield
    return out, fresh


def _edited(base: Document, routes: list[Route], fresh: list[Route],
            head: tuple[Mesh | None, tuple[Any, ...]], stored: bool) -> Document | None:
    """The document of `routes` as an edit of `base` (the same services), whose routes are the
    known ones of `routes`: `fresh` (the others) put, and the routes of `base` that no line holds
    any more removed; None when the text is not such an edit, a name or a line on two lines (the
    caller builds it whole, which names what is wrong)."""
    held = set(map(id, routes))  # (in C)
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


def decode_stored_steps(text: str, version: int, codec: DocumentCodec = CODEC) -> Steps[Document]:
    """`decode_stored` in steps (`routes.steps`)."""
    try:
        # stored: a route with a regex RE2 refuses (written by an older Peel) is kept, unservable
        return (yield from codec.decode_steps(text, stored=True))
    except (ValueError, RuleError) as exc:
        raise StoreError(f"config version {version} holds a document this Peel cannot read: {exc}") \
            from exc
