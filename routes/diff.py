"""The difference between two documents: what a dry run shows and what history summarises.

Pure: services and routes are compared by name on their canonical dicts (`to_dict()`), so two
documents that print the same are equal here too, whatever order they were written in. An item that
is the same object in both documents is equal without being printed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import not_
from typing import Any, Literal, Protocol

from routes.model import Document

Kind = Literal["service", "route"]

# Values a field has when `to_dict()` leaves it out, so "priority 0 -> 10" reads naturally.
_DEFAULTS: dict[Kind, dict[str, Any]] = {
    "service": {"balancer": {}, "health_check": None, "outlier": {}, "circuit_breaker": {},
                "retries": {}, "timeouts": {}, "buffering": {}},
    "route": {"priority": 0, "match": {}, "rewrite": {}, "migration": None,
              "max_body": None, "retries": None, "timeouts": None, "rate_limit": None,
              "websocket": False, "authorization": None, "buffering": None},
}


@dataclass(frozen=True, slots=True)
class Changed:
    """A service or route present on both sides with different contents.

    `fields` names the top-level fields that differ; `old` and `new` hold just those fields.
    """

    kind: Kind
    name: str
    fields: tuple[str, ...]
    old: dict[str, Any]
    new: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fields": list(self.fields), "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class KindDiff:
    """Added, removed and changed items of one kind; added and removed are canonical dicts."""

    kind: Kind
    added: tuple[dict[str, Any], ...] = ()
    removed: tuple[dict[str, Any], ...] = ()
    changed: tuple[Changed, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, Any]:
        return {"added": list(self.added), "removed": list(self.removed),
                "changed": [c.to_dict() for c in self.changed]}


@dataclass(frozen=True, slots=True)
class DocumentDiff:
    """What changes from one document to another. False when nothing does."""

    services: KindDiff
    routes: KindDiff
    # the fleet-wide parts (routes.revocations): revocations added and removed, and the mesh
    # block's (old, new) when it changed
    revocations_added: tuple[dict[str, Any], ...] = ()
    revocations_removed: tuple[dict[str, Any], ...] = ()
    mesh: tuple[dict[str, Any], dict[str, Any]] | None = None

    def __bool__(self) -> bool:
        return bool(self.services or self.routes or self.revocations_added
                    or self.revocations_removed or self.mesh)

    def summary(self) -> str:
        """A short line such as `+1 route, ~1 service`, or `no change`."""
        parts: list[str] = []
        for sign, attr in (("+", "added"), ("~", "changed"), ("-", "removed")):
            for kinds in (self.services, self.routes):
                count = len(getattr(kinds, attr))
                if count:
                    parts.append(f"{sign}{count} {kinds.kind}{'' if count == 1 else 's'}")
        for sign, items in (("+", self.revocations_added), ("-", self.revocations_removed)):
            if items:
                parts.append(f"{sign}{len(items)} revocation{'' if len(items) == 1 else 's'}")
        if self.mesh is not None:
            parts.append("~mesh")
        return ", ".join(parts) or "no change"

    def to_dict(self) -> dict[str, Any]:
        out = {"summary": self.summary(), "services": self.services.to_dict(),
               "routes": self.routes.to_dict()}
        if self.revocations_added or self.revocations_removed:
            out["revocations"] = {"added": list(self.revocations_added),
                                  "removed": list(self.revocations_removed)}
        if self.mesh is not None:
            out["mesh"] = {"old": self.mesh[0], "new": self.mesh[1]}
        return out

    def to_text(self) -> str:
        """A readable listing, one line per item: `+` added, `~` changed, `-` removed.

        Services are added before the routes that use them and removed after them, the order in
        which an operator reads a change.
        """
        lines: list[str] = []
        for kinds in (self.services, self.routes):
            lines += [f"+ {kinds.kind} {item['name']}" for item in kinds.added]
        for kinds in (self.services, self.routes):
            for c in kinds.changed:
                fields = "; ".join(f"{f} {_show(c.old[f])} -> {_show(c.new[f])}" for f in c.fields)
                lines.append(f"~ {kinds.kind} {c.name}: {fields}")
        for kinds in (self.routes, self.services):
            lines += [f"- {kinds.kind} {item['name']}" for item in kinds.removed]
        for sign, items in (("+", self.revocations_added), ("-", self.revocations_removed)):
            lines += [f"{sign} revocation {_show(item)}" for item in items]
        if self.mesh is not None:
            lines.append(f"~ mesh: {_show(self.mesh[0])} -> {_show(self.mesh[1])}")
        return "\n".join(lines) if lines else "no change"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "), sort_keys=False)


class _Item(Protocol):
    """A service or a route: what `_compare` needs of one."""

    @property
    def name(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def _compare(kind: Kind, old: Sequence[_Item], new: Sequence[_Item]) -> KindDiff:
    """Items paired by name; one that is the same object on both sides is unchanged without being
    printed (documents read and edited by one process share their unchanged services and routes,
    so a one-route change to a large table prints two routes, not all of them)."""
    # only the items that are not the same object on both sides are paired by name: sets of ids
    # and `compress` in C, not 10,000 names in bytecode
    old_ids, new_ids = set(map(id, old)), set(map(id, new))
    return _paired(kind, {item.name: item for item in _not_in(old, new_ids)},
                   {item.name: item for item in _not_in(new, old_ids)})


def _named(kind: Kind, names: Iterable[str], old: Callable[[str], _Item | None],
           new: Callable[[str], _Item | None]) -> KindDiff:
    """`_compare` of the items of these names alone (a `Delta`: the others are the same objects)."""
    pairs = [(name, old(name), new(name)) for name in names]
    return _paired(kind, {name: a for name, a, _ in pairs if a is not None},
                   {name: b for name, _, b in pairs if b is not None})


def _paired(kind: Kind, before: dict[str, _Item], after: dict[str, _Item]) -> KindDiff:
    """The diff of the items that may differ, by name: `before` the old side's, `after` the new's."""
    defaults = _DEFAULTS[kind]
    changed: list[Changed] = []
    for name in sorted(before.keys() & after.keys()):
        a, b = before[name].to_dict(), after[name].to_dict()
        if a == b:
            continue
        keys = [k for k in b if k != "name"] + [k for k in a if k not in b]
        fields = tuple(k for k in keys if a.get(k, defaults.get(k)) != b.get(k, defaults.get(k)))
        changed.append(Changed(kind, name, fields,
                               {f: a.get(f, defaults.get(f)) for f in fields},
                               {f: b.get(f, defaults.get(f)) for f in fields}))
    return KindDiff(kind,
                    tuple(after[n].to_dict() for n in sorted(after.keys() - before.keys())),
                    tuple(before[n].to_dict() for n in sorted(before.keys() - after.keys())),
                    tuple(changed))


def _not_in(items: Sequence[_Item], ids: set[int]) -> Iterator[_Item]:
    """The items whose id is not in `ids`."""
    return compress(items, map(not_, map(ids.__contains__, map(id, items))))


def diff(old: Document, new: Document) -> DocumentDiff:
    """What changes when `new` replaces `old`."""
    before = [r.to_dict() for r in old.revocations]
    after = [r.to_dict() for r in new.revocations]
    old_mesh = old.mesh.to_dict() if old.mesh is not None else {}
    new_mesh = new.mesh.to_dict() if new.mesh is not None else {}
    delta = new.delta
    if delta is not None and delta.base is old:
        services = _named("service", delta.services, old.service, new.service)
        routes = _named("route", delta.routes, old.route, new.route)
    else:
        services = _compare("service", old.services, new.services)
        routes = _compare("route", old.routes, new.routes)
    return DocumentDiff(
        services, routes,
        tuple(r for r in after if r not in before), tuple(r for r in before if r not in after),
        (old_mesh, new_mesh) if old_mesh != new_mesh else None,
    )
