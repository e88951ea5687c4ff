"""One turn of the guard for one migration: read the window from the store, judge it, say why.

    assessment = assess(store, route, step_since, now, lag)   # blocking: run in a thread
    assessment.verdict.action                                  # hold | advance | rollback
    describe(assessment)                                       # the config version's reason
    edit_for(assessment, route.name)                           # the document edit, or None

The window is the last `policy.window` seconds that every gateway has written by now: it ends
`lag` seconds ago (the samples' flush interval and a margin), in whole seconds, so the leader reads
the same sums whichever gateway measured the requests. `facade.guard.evaluate` decides; this
module only measures and turns a verdict into an edit and a message. In the shadow step `to` is
measured by the shadow copies' answers and the mismatch gate reads the shadow counts
(`facade.shadow_counts`), which are kept per minute: the minutes from the window's first on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.engine import Connection

from facade import transitions
from facade.guard import ShadowStats, SideStats, Verdict, WindowStats, evaluate
from facade.noise import report
from facade.shadow_counts import shadow_window
from facade.window import SideWindow, bucket_bound
from routes.errors import ConflictError, NotFoundError
from routes.guard_records import GuardRow
from routes.guard_spec import GuardPolicy
from routes.migration import Migration
from routes.model import Document, Route
from routes.store import ConfigVersion, Transition, TransitionInfo, VersionInfo

# who the guard's config versions name
ACTOR = "guard"
# config versions `unchanged_since` reads back at most
HISTORY_DEPTH = 50


class VersionHistory(Protocol):
    """The store's config history (`routes.store.Store` is one)."""

    def history(self, limit: int = 50) -> list[VersionInfo]: ...

    def get(self, version: int) -> ConfigVersion: ...


class WindowStore(Protocol):
    """The store's slice a window needs (`routes.store.Store` is one): the guard's samples, and
    its connection for the shadow counts (`facade.shadow_counts.shadow_window`)."""

    def guard_window(self, route: str, start: int, end: int) -> list[GuardRow]: ...

    def _connect(self, *, write: bool = False) -> AbstractContextManager[Connection]: ...


@dataclass(frozen=True, slots=True)
class Assessment:
    """A migration's guard judged over one window: the policy, what was measured, the verdict."""

    route: str
    policy: GuardPolicy
    window: WindowStats
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        """What `GET /api/v1/migrations/{route}` shows under `guard`."""
        v, w = self.verdict, self.window
        return {"policy": self.policy.to_dict(), "frozen": self.policy.freeze,
                "window": {"start": _iso(w.start), "end": _iso(w.end), "seconds": w.end - w.start},
                "action": v.action, "rule": v.rule, "reason": v.reason,
                "next_stage": v.next_stage, "next_percent": v.next_percent,
                "evidence": dict(v.evidence)}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def window_bounds(policy: GuardPolicy, now: float, lag: float) -> tuple[int, int]:
    """[start, end) in whole Unix seconds: `policy.window` long, ending `lag` seconds ago."""
    end = math.floor(now - lag)
    return end - math.ceil(policy.window), end


def side_stats(side: SideWindow) -> SideStats:
    buckets = tuple((bucket_bound(i - 1) if i else 0.0, bucket_bound(i), n)
                    for i, n in sorted(side.histogram.items()))
    return SideStats(side.requests, side.errors, side.p99_ms(), buckets)


def measure(store: WindowStore, route: Route, step_since: float, now: float, lag: float) -> WindowStats:
    """The window of a guarded migration, summed over every process that wrote samples."""
    migration = route.migration
    assert migration is not None and migration.guard is not None
    start, end = window_bounds(migration.guard, now, lag)
    sides = {"to": SideWindow(), "from": SideWindow()}
    for side, requests, errors, hist in store.guard_window(route.name, start, end):
        if side in sides:
            sides[side].add(requests, errors, hist)
    shadow = None
    if migration.stage == "shadow":
        # the shadow counts are kept per minute: the minutes from the window's first on
        totals = shadow_window(store, route.name, float(start))
        shadow = ShadowStats.of(report(totals.counts, z=migration.guard.z)) if totals.pairs else \
            ShadowStats(0, 0.0, 0.0)
    return WindowStats(migration.stage, migration.share, step_since, float(start), float(end),
                       side_stats(sides["to"]), side_stats(sides["from"]), shadow)


def assess(store: WindowStore, route: Route, step_since: float, now: float, lag: float) -> Assessment:
    """Measure the window and judge it (blocking: the store is read)."""
    migration = route.migration
    assert migration is not None and migration.guard is not None
    window = measure(store, route, step_since, now, lag)
    return Assessment(route.name, migration.guard, window, evaluate(migration.guard, window, now))


def step_start(last: TransitionInfo | None, migration: Migration,
               otherwise: float | Callable[[], float]) -> float:
    """When the migration reached its stage and share: its last transition's time when that
    transition left it there, else `otherwise` (a stage written by `peel apply` records no
    transition: the caller says since when it has seen it, or how to find out)."""
    if last is not None and (last.to_stage, last.share) == (migration.stage, migration.share):
        return last.created_at.timestamp()
    return otherwise() if callable(otherwise) else otherwise


def unchanged_since(store: VersionHistory, route: str, migration: Migration, latest_version: int,
                    latest_time: float, depth: int = HISTORY_DEPTH) -> float:
    """When the route's migration got its stage and share, read from the config history: the time
    of the oldest version in the unbroken run of newest versions that hold it there (looking at most
    `depth` versions back). `step_start`'s `otherwise` for a reader that has not watched it happen
    (the admin API's status), so that changes to other routes do not restart this one's step."""
    since = latest_time
    for info in store.history(limit=depth):
        if info.version >= latest_version:
            continue
        try:
            older = store.get(info.version).document.route(route)
        except NotFoundError:
            break
        m = older.migration if older is not None else None
        if m is None or (m.stage, m.share) != (migration.stage, migration.share):
            break
        since = info.created_at.timestamp()
    return since


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(a: Assessment) -> str:
    """One line for the config version: the action, the rule that fired, the window's numbers."""
    v, w = a.verdict, a.window
    if v.action == "rollback":
        head = f"guard rolled back route {a.route} ({v.rule})"
    elif v.action == "advance":
        head = f"guard advanced route {a.route} to {v.next_stage}" + (
            f" {v.next_percent}%" if v.next_stage == "canary" else "") + f" ({v.rule})"
    else:
        head = f"guard froze route {a.route} ({v.rule})"
    numbers = ", ".join(f"{k}={_number(n)}" for k, n in v.evidence)
    return (f"{head}: {v.reason}; window {_iso(w.start)}..{_iso(w.end)} "
            f"({w.end - w.start:g} s): {numbers}")


Edit = Callable[[Document], Document]
Record = Callable[[Document, Document], list[Transition]]


def edit_for(a: Assessment) -> tuple[str, Edit, Record] | None:
    """The document edit of a verdict that acts: (action, edit, transitions), or None for a hold.

    advance -> shift to the next percentage, or promote; rollback -> rollback; a trigger under
    `on_failure: hold` -> the guard's `freeze` set (a `freeze` transition: the stage stays).
    """
    v, name = a.verdict, a.route
    if v.action == "rollback":
        return "rollback", lambda d: transitions.rollback(d, name), transitions.recorder("rollback", name)
    if v.action == "advance":
        if v.next_stage == "migrated":
            return "promote", lambda d: transitions.promote(d, name), transitions.recorder("promote", name)
        percent = v.next_percent
        return "shift", lambda d: transitions.shift(d, name, percent), transitions.recorder("shift", name)
    if v.freeze and not a.policy.freeze:
        return ("freeze", lambda d: set_guard(d, name, a.policy.with_freeze(True)),
                transitions.recorder("freeze", name))
    return None


def set_guard(doc: Document, name: str, policy: GuardPolicy | None) -> Document:
    """Route `name`'s migration with this guard (None: no guard)."""
    route = doc.route(name)
    if route is None:
        raise NotFoundError(f"routes[{name}]", "no such route", name)
    if route.migration is None:
        raise ConflictError(f"routes[{name}].migration", "the route has no migration; start one "
                            "with `peel migrate start ROUTE --to SERVICE`", name)
    changed = replace(route, migration=replace(route.migration, guard=policy))
    return Document.build(doc.services, [changed if r.name == name else r for r in doc.routes])
