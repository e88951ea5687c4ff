"""A sidecar's counts go to its control plane: the store its flushers write to, when it has none.

    report = ControlReport(follower.call, instance=instance_id())
    flusher = CountsFlusher(report, counts, ...)      # and GraphFlusher, SamplesFlusher, ShadowFlusher

A sidecar (`server.source = "control"`) has no database. `ControlReport` has the methods the
flushers call on the store (`add_traffic`, `add_edges`, `prune_edges`, `add_guard_samples`,
`add_shadow`); each sends its deltas to `POST /api/v1/control/counts`, signed by the sidecar's
certificate (`gateway.identity.caller`, through the follower's `call`), and the control plane adds
them to its store under the sidecar's identity (`gateway.admin.control_counts`).

A send that fails (the control plane unreachable, or refusing) keeps the deltas here, merged by key,
and the next flush of the same kind sends them with its own: late, never lost while the process
lives, as with a store that is down. Bounded: at most `MAX_ROWS` keys per kind are kept (past that,
new keys are dropped and counted in `dropped`), so a body never exceeds what the control plane
accepts. A body the control plane refuses as such (400, 413, 422: it would be refused again) is
dropped and logged. Nothing is raised to the flushers: the report keeps what it could not send.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from facade.shadow_counts import KEEP_EXAMPLES, ShadowTotals
from gateway.admin import control_counts as wire
from routes.guard_records import GuardDeltas
from routes.migration_records import CountDeltas

log = logging.getLogger("peel.facade")

MAX_ROWS = wire.MAX_ROWS
TIMEOUT = 10.0
# answers that refuse the body itself (out of bounds, too large): not sent again, dropped
REFUSED = frozenset({400, 413, 422})
Call = Callable[[str, str, dict[str, Any] | None, float], tuple[int, dict[str, Any] | None]]


class ControlReport:
    """The flushers' store on a sidecar (module docstring). Called from the flushers' threads."""

    def __init__(self, call: Call, *, max_rows: int = MAX_ROWS) -> None:
        self._send = call
        self.max_rows = max_rows
        self.sent = 0
        self.failures = 0
        self.dropped = 0  # rows dropped because the kept ones were at `max_rows`
        self.refused = 0  # bodies the control plane refused (`REFUSED`), dropped
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._traffic: dict[tuple[str, int], list[int]] = {}
        self._edges: dict[tuple[str, str, str, int], list[int]] = {}
        self._samples: dict[tuple[str, str, int], tuple[list[int], dict[int, int]]] = {}
        self._shadow: dict[tuple[str, int, int], ShadowTotals] = {}
        self._examples: dict[str, list[dict[str, Any]]] = {}

    def pending(self) -> int:
        """Rows kept for the next send."""
        with self._lock:
            return len(self._traffic) + len(self._edges) + len(self._samples) + len(self._shadow)

    # -- what the flushers call ---------------------------------------------------------------------

    def add_traffic(self, instance: str, deltas: CountDeltas) -> None:
        with self._lock:
            for key, values in deltas.items():
                _add(self._slot(self._traffic, key, list), values)
            taken, self._traffic = self._traffic, {}
        body = {"instance": instance, "traffic": wire.encode_traffic(
            {k: (v[0], v[1], v[2], v[3]) for k, v in taken.items()})}
        if not self._post(body, "traffic counts"):
            self._traffic_back(taken)

    def add_edges(self, instance: str, minute: int, deltas: Mapping[tuple[str, str, str], Sequence[int]]
                  ) -> None:
        with self._lock:
            for (listener, source, destination), values in deltas.items():
                slot = self._slot(self._edges, (listener, source, destination, minute),
                                  list)
                _add(slot, values)
            taken, self._edges = self._edges, {}
        if not self._post({"instance": instance, "edges": wire.encode_edges(taken)}, "graph edges"):
            with self._lock:
                for key, values in taken.items():
                    _add(self._slot(self._edges, key, list), values)

    def prune_edges(self, before: int) -> int:
        """Nothing here: the control plane's gateways prune the rows."""
        return 0

    def add_guard_samples(self, instance: str, deltas: GuardDeltas) -> None:
        with self._lock:
            self._merge_samples(deltas.items())
            taken, self._samples = self._samples, {}
        body = {"instance": instance, "samples": wire.encode_samples(
            {k: (n[0], n[1], hist) for k, (n, hist) in taken.items()})}
        if not self._post(body, "guard samples"):
            with self._lock:
                self._merge_samples((k, (n[0], n[1], hist)) for k, (n, hist) in taken.items())

    def add_shadow(self, instance: str, deltas: Mapping[tuple[str, int, int], ShadowTotals],
                   examples: Mapping[str, list[dict[str, Any]]]) -> None:
        with self._lock:
            self._merge_shadow(deltas)
            for route, items in examples.items():
                if route in self._examples or len(self._examples) < wire.MAX_EXAMPLE_ROUTES:
                    kept = self._examples.setdefault(route, [])
                    kept.extend(items)
                    del kept[:-KEEP_EXAMPLES]
            taken, self._shadow = self._shadow, {}
            samples, self._examples = self._examples, {}
        body = {"instance": instance, "shadow": wire.encode_shadow(taken), "examples": samples}
        if not self._post(body, "shadow counts"):
            with self._lock:  # examples are samples: not kept (as `ShadowStats.put_back`)
                self._merge_shadow(taken)

    def _traffic_back(self, taken: Mapping[tuple[str, int], Sequence[int]]) -> None:
        with self._lock:
            for key, values in taken.items():
                _add(self._slot(self._traffic, key, list), values)

    # -- keeping and sending ------------------------------------------------------------------------

    def _slot(self, kept: dict[Any, Any], key: Any, new: Callable[[], Any]) -> Any:
        """`kept[key]`, made with `new()` while there is room; else a scratch value (dropped)."""
        slot = kept.get(key)
        if slot is None:
            if len(kept) >= self.max_rows:
                self.dropped += 1
                return new()
            slot = kept[key] = new()
        return slot

    def _merge_samples(self, items: Any) -> None:
        for key, (requests, errors, hist) in items:
            counts, kept = self._slot(self._samples, key, lambda: ([0, 0], {}))
            counts[0] += requests
            counts[1] += errors
            for bucket, n in hist.items():
                kept[bucket] = kept.get(bucket, 0) + n

    def _merge_shadow(self, deltas: Mapping[tuple[str, int, int], ShadowTotals]) -> None:
        for key, totals in deltas.items():
            self._slot(self._shadow, key, ShadowTotals).add(totals)

    def _post(self, body: dict[str, Any], what: str) -> bool:
        """Send `body`; False (logged at the first failure and every 30th) when it did not go."""
        from gateway.identity.errors import IdentityError
        from gateway.identity.join import ControlError

        if not any(body.get(kind) for kind in wire.KINDS):
            return True
        try:
            self._send("POST", wire.COUNTS_PATH, body, TIMEOUT)
        except ControlError as exc:
            if exc.status not in REFUSED:
                return self._failed(exc, what)
            # the body itself is refused: sent again, it would be refused again
            self.refused += 1
            log.error("%s refused by the control plane, dropped: %s", what, exc)
            return True
        except IdentityError as exc:
            return self._failed(exc, what)
        if self.failures:
            log.info("counts sent to the control plane again")
        self.failures, self.last_error = 0, None
        self.sent += 1
        return True

    def _failed(self, exc: Exception, what: str) -> bool:
        """Keep the deltas (the caller does): logged at the first failure and every 30th."""
        self.failures += 1
        self.last_error = str(exc)
        if self.failures == 1 or self.failures % 30 == 0:
            log.warning("%s not sent to the control plane (kept for the next try): %s", what, exc)
        return False


def _add(row: list[int], values: Sequence[int]) -> None:
    if len(row) < len(values):
        row.extend([0] * (len(values) - len(row)))
    for i, value in enumerate(values):
        row[i] += value
