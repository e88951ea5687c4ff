"""Admin token scopes: what a token may do, as data.

    metrics  <  read  <  write

The scopes form a chain: `write` (change rules) implies `read` (every GET of the admin API), and
`read` implies `metrics` (`GET /metrics` only). A token holds the closure of the scopes it was
given, so `write` alone is a token that can do everything, and a Prometheus scraper's `metrics`
token can read neither the rules nor the config history. The store keeps the closure, sorted and
comma-joined (`metrics,read,write`), so a future scope outside the chain needs no schema change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from routes.errors import RuleError

SCOPES = ("metrics", "read", "write")
# scope -> the scopes it implies directly
IMPLIES: dict[str, frozenset[str]] = {"write": frozenset({"read"}), "read": frozenset({"metrics"}),
                                      "metrics": frozenset()}
# what `peel token create NAME` gives without --scope: everything, as tokens did before scopes
DEFAULT_SCOPES = frozenset(SCOPES)


def closure(scopes: Iterable[str], field: str = "scope") -> frozenset[str]:
    """`scopes` with every scope they imply; RuleError naming `field` for an unknown scope."""
    out: set[str] = set()
    todo = list(scopes)
    if not todo:
        raise RuleError(field, f"at least one scope is required ({', '.join(SCOPES)})")
    while todo:
        scope = todo.pop()
        if scope not in IMPLIES:
            raise RuleError(field, f"unknown scope; the scopes are {', '.join(SCOPES)}", scope)
        if scope not in out:
            out.add(scope)
            todo.extend(IMPLIES[scope])
    return frozenset(out)


def encode(scopes: frozenset[str]) -> str:
    return ",".join(sorted(scopes))


def decode(text: str) -> frozenset[str]:
    """The scopes of a stored row; unknown names (written by a newer Peel) are dropped, not granted."""
    return frozenset(s for s in text.split(",") if s in IMPLIES)


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a verified token may do: its name (the actor), scopes, and when it stops working."""

    name: str
    scopes: frozenset[str]
    expires_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes
