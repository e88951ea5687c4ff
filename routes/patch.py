"""A whole document applied as the items that differ from a stored version: `peel apply` on a large table.

Sent whole, a 10,000-route document is parsed, checked and diffed by the process that owns the admin
listener, which in a single-process gateway also serves traffic: hundreds of milliseconds of CPU
that the data plane's requests waited behind (bench/README.md, "A change to a large table"). So the
CLI does that work itself. It reads the stored text of the latest config version (`GET
/api/v1/config/stored`, no parsing on the server), encodes its own document the same way
(`routes.document_text`: equal items give equal lines) and sends, with `If-Match` on the version it
compared against, only the services and routes whose lines differ, the names of the ones that
left, and the mesh and revocations when they changed (`changes_between`; `changes_from_data`
parses only the file's routes that are not as stored). The server parses and checks only those
(`DocumentPatch`) and commits the document the whole file would have given.

The wire form (`{"changes": ...}` in `POST /api/v1/config/apply`):

    {"services": [<service>...], "routes": [<route>...],      # added or replaced, whole
     "delete_services": [<name>...], "delete_routes": [<name>...],
     "head": {"mesh": {...}, "revocations": [...]}}           # present only when they changed
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from routes.document_text import DocumentCodec, TextLines, document_head, item_line, text_lines
from routes.errors import RuleError
from routes.fields import mapping, sequence
from routes.model import Document, Route, Service
from routes.revocations import Mesh, Revocation, parse_revocations

CHANGE_FIELDS = ("services", "routes", "delete_services", "delete_routes", "head")
_NAME = itemgetter("name")


def changes_between(stored_text: str, document: Document) -> dict[str, Any] | None:
    """The changes that turn the document of `stored_text` into `document`, in the wire form;
    None when the stored text is not in the line-per-item layout (send the whole document)."""
    theirs = text_lines(stored_text)
    mine = text_lines(DocumentCodec().encode(document))
    if theirs is None or mine is None:
        return None
    return _changes(theirs, mine.services, mine.routes, mine.head_fields())


def changes_from_data(stored_text: str, data: Any) -> dict[str, Any] | None:
    """`changes_between` the stored text and the document of `data` (a file's), without parsing
    the routes that are as stored: a route whose data is its stored line's (what `peel export`
    wrote, or any route in canonical form) is that route, and only the others are parsed, each
    checked for the services it names. For a 10,000-route file with one route changed that is a
    tenth of a second (a `json.dumps` of each route, in C) instead of half a second of parsing, in
    a CLI that may share the gateway's cores.

    None when the changes cannot be told this way and the whole document must go (the stored text
    in another layout, a route name twice, a service that is not in the document: the gateway's
    whole check then names the field); `RuleError` for what does not parse, naming it as the
    whole document's parse does."""
    theirs = text_lines(stored_text)
    if theirs is None or not isinstance(data, dict):
        return None
    route_data = data.get("routes") or []
    if not isinstance(route_data, list):
        return None
    rest = Document.parse({key: value for key, value in data.items() if key != "routes"})
    services = {service.name for service in rest.services}
    stored = set(theirs.routes)
    lines: list[str] = []
    names: set[str] = set()
    for i, raw in enumerate(route_data):
        line = _line(raw)
        if line in stored:
            name = raw["name"]
        else:
            route = Route.parse(raw, f"routes[{i}]")
            if route.service not in services or \
                    (route.migration is not None and route.migration.to not in services):
                return None
            name, line = route.name, item_line(route.to_dict())
        if name in names:
            return None
        names.add(name)
        lines.append(line)
    return _changes(theirs, [item_line(s.to_dict()) for s in rest.services], lines, document_head(rest))


def _line(raw: Any) -> str | None:
    """The line of `raw` as stored, if it were a route in canonical form (None: it cannot be)."""
    if not isinstance(raw, dict):
        return None
    try:
        return item_line(raw)
    except (TypeError, ValueError):  # a value JSON has no form for (a YAML date): parsed instead
        return None


def _changes(theirs: TextLines, services: list[str], routes: list[str],
             head: dict[str, Any]) -> dict[str, Any]:
    """The changes from the stored lines `theirs` to these lines and head fields."""
    changes: dict[str, Any] = {}
    for kind, own, stored in (("services", services, theirs.services), ("routes", routes, theirs.routes)):
        kept = set(stored)
        put = sorted((json.loads(line) for line in own if line not in kept), key=_NAME)
        mine_lines = set(own)
        put_names = {item["name"] for item in put}
        gone = sorted({json.loads(line)["name"] for line in stored if line not in mine_lines} - put_names)
        if put:
            changes[kind] = put
        if gone:
            changes[f"delete_{kind}"] = gone
    if head != theirs.head_fields():
        changes["head"] = head
    return changes


@dataclass(frozen=True)
class DocumentPatch:
    """Changes to a document, parsed and checked item by item (`parse`), applied by `apply`."""

    services: tuple[Service, ...] = ()
    routes: tuple[Route, ...] = ()
    delete_services: tuple[str, ...] = ()
    delete_routes: tuple[str, ...] = ()
    # the document's mesh and revocations, when they change
    head: tuple[Mesh | None, tuple[Revocation, ...]] | None = None

    @classmethod
    def parse(cls, data: Any, where: str = "changes") -> DocumentPatch:
        """The changes of the wire form; `RuleError` naming the field for anything wrong."""
        m = mapping(data, where, CHANGE_FIELDS)
        services = tuple(Service.parse(s, f"{where}.services[{i}]")
                         for i, s in enumerate(sequence(m.get("services") or [], f"{where}.services")))
        routes = tuple(Route.parse(r, f"{where}.routes[{i}]")
                       for i, r in enumerate(sequence(m.get("routes") or [], f"{where}.routes")))
        deletes: dict[str, tuple[str, ...]] = {}
        for kind in ("delete_services", "delete_routes"):
            names = sequence(m.get(kind) or [], f"{where}.{kind}")
            for i, name in enumerate(names):
                if not isinstance(name, str):
                    raise RuleError(f"{where}.{kind}[{i}]", "must be a name", name)
            deletes[kind] = tuple(names)
        head = None
        if "head" in m:
            fields = mapping(m["head"], f"{where}.head", ("mesh", "revocations"))
            head = (Mesh.parse(fields.get("mesh")), parse_revocations(fields.get("revocations")))
        return cls(services, routes, deletes["delete_services"], deletes["delete_routes"], head)

    def apply(self, document: Document) -> Document:
        """`document` with these changes: what the whole document they were computed from gives.

        A name to delete that `document` does not hold is refused: the changes were computed
        against another version (the admin API takes them only with `If-Match`)."""
        for kind, names, present in (("delete_services", self.delete_services, document.service),
                                     ("delete_routes", self.delete_routes, document.route)):
            for i, name in enumerate(names):
                if present(name) is None:
                    raise RuleError(f"changes.{kind}[{i}]", "is not in the document the changes "
                                    "apply to", name)
        return document.replace_items(services=self.services, routes=self.routes,
                                      delete_services=self.delete_services,
                                      delete_routes=self.delete_routes, head=self.head)

    def __bool__(self) -> bool:
        return bool(self.services or self.routes or self.delete_services or self.delete_routes
                    or self.head is not None)
