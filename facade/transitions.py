"""Migration transitions as pure document edits: start, shift, promote, retire, rollback.

Each function takes the latest document and returns the edited one, or raises `RuleError` saying
why the transition is refused (and then nothing is written). `record(old, new)` lists the
transitions between two documents, for the `migration_transitions` rows committed with them.

Which stage each action may leave from is data (`ALLOWED`): a `shadow` stage adds entries here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from routes.errors import ConflictError, NotFoundError, RuleError
from routes.migration import STAGES, Beta, Cohort, Migration, parse_percent
from routes.model import Document, Route
from routes.store import Transition

# action -> (stages it may start from, the stage it leaves the migration in)
ALLOWED: Mapping[str, tuple[frozenset[str], str]] = {
    "shadow": (frozenset({"legacy", "canary"}), "shadow"),
    "shift": (frozenset({"legacy", "shadow", "canary", "migrated"}), "canary"),
    "promote": (frozenset({"legacy", "shadow", "canary"}), "migrated"),
    "retire": (frozenset({"migrated"}), "retired"),
    "rollback": (frozenset(STAGES), "legacy"),
}
ACTIONS = ("start", *ALLOWED)


def _route(doc: Document, name: str) -> Route:
    route = doc.route(name)
    if route is None:
        raise NotFoundError(f"routes[{name}]", "no such route", name)
    return route


def _migration(route: Route) -> Migration:
    if route.migration is None:
        raise ConflictError(f"routes[{route.name}].migration", "the route has no migration; start one "
                            "with `peel migrate start ROUTE --to SERVICE`", route.name)
    return route.migration


def _put(doc: Document, route: Route, migration: Migration) -> Document:
    changed = replace(route, migration=migration)
    return doc.replace_items(routes=[changed])


def start(doc: Document, name: str, to: str, *, cohort: Cohort | None = None,
          beta: Beta | None = None, salt: str | None = None) -> Document:
    """Give route `name` a migration to service `to`, in stage legacy (all traffic still on `from`).

    Allowed on a route without a migration or with one in stage legacy (which it replaces).
    """
    route = _route(doc, name)
    where = f"routes[{name}].migration"
    if route.migration is not None and route.migration.stage != "legacy":
        raise ConflictError(f"{where}.stage", f"a migration to {route.migration.to} is in stage "
                            f"{route.migration.stage}; roll it back first", route.migration.stage)
    if doc.service(to) is None:
        raise RuleError(f"{where}.to", "names no service", to)
    if to == route.service:
        raise RuleError(f"{where}.to", "must differ from the route's service (the service the route "
                        "moves away from)", to)
    return _put(doc, route, Migration(to, "legacy", 0, cohort or Cohort(), salt, beta))


def _move(action: str, doc: Document, name: str, share: int | None = None) -> Document:
    route = _route(doc, name)
    migration = _migration(route)
    sources, target = ALLOWED[action]
    if migration.stage not in sources:
        allowed = ", ".join(s for s in STAGES if s in sources)
        raise ConflictError(f"routes[{name}].migration.stage",
                            f"{action} is not allowed from stage {migration.stage} (only from "
                            f"{allowed})", migration.stage)
    new_share = migration.share if share is None else share
    if target in ("legacy", "shadow"):
        new_share = 0
    return _put(doc, route, replace(migration, stage=target, share=new_share))


def shift(doc: Document, name: str, percent: object) -> Document:
    """Send `percent` of the route's users (sticky) to `to`: stage canary."""
    return _move("shift", doc, name, parse_percent(percent, "percent"))


def shadow(doc: Document, name: str) -> Document:
    """`from` answers everyone; a sampled copy goes to `to` and is compared: stage shadow."""
    return _move("shadow", doc, name)


def promote(doc: Document, name: str) -> Document:
    """All users to `to`, `from` kept as fallback: stage migrated."""
    return _move("promote", doc, name)


def retire(doc: Document, name: str) -> Document:
    """No more fallback to `from` (only from stage migrated): stage retired."""
    return _move("retire", doc, name)


def rollback(doc: Document, name: str) -> Document:
    """All traffic back to `from`, from any stage: stage legacy, share 0."""
    return _move("rollback", doc, name)


def recorder(action: str, name: str) -> Callable[[Document, Document], list[Transition]]:
    """The transitions function for `routes.changes.commit_change`: one row for route `name`."""

    def record(old: Document, new: Document) -> list[Transition]:
        before = old.route(name)
        after = new.route(name)
        assert after is not None and after.migration is not None
        from_stage = before.migration.stage if before is not None and before.migration else None
        return [Transition(name, action, from_stage, after.migration.stage, after.migration.share)]

    return record
