"""Edits of a document, and committing one as a new config version.

The edits are pure functions from a `Document` to a new `Document`; they go through
`Document.build`, so a change that would leave a dangling reference or a duplicate match is refused
with the field that is wrong. `commit_change` is the one way the admin API writes: it reads the
latest version, applies the edit, shows the diff, and commits only when something changes.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from typing import Protocol

from routes.diff import DocumentDiff, diff
from routes.errors import NotFoundError, PreconditionFailed, RuleError
from routes.model import Document, Route, Service
from routes.store import ConfigVersion, Transition, VersionInfo

Edit = Callable[[Document], Document]
Check = Callable[[Document], None]
# The migration transitions an edit makes, from (old document, new document).
Transitions = Callable[[Document, Document], Sequence[Transition]]
# Re-applications of an edit when no If-Match was given and other writers committed in between.
RETRIES = 3
# Format characters that reorder or hide text on a terminal (bidirectional overrides and isolates):
# with them a reason could show another row's text in `peel config history`.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class VersionStore(Protocol):
    """What committing needs from the store (`routes.store.Store` is one)."""

    def latest(self) -> ConfigVersion: ...

    def get(self, version: int) -> ConfigVersion: ...

    def commit(self, document: Document, *, actor: str, reason: str, expected: int | None = None,
               summary: str | None = None, transitions: Sequence[Transition] = ()) -> VersionInfo: ...


def put_service(doc: Document, service: Service) -> Document:
    """Add `service`, or replace the service of the same name."""
    return doc.replace_items(services=[service])


def delete_service(doc: Document, name: str) -> Document:
    """Remove service `name`; refused while a route still sends requests to it."""
    if doc.service(name) is None:
        raise NotFoundError(f"services[{name}]", "no such service", name)
    users = [r.name for r in doc.routes
             if r.service == name or (r.migration is not None and r.migration.to == name)]
    if users:
        raise RuleError(f"services[{name}]", f"is used by route{'s' if len(users) > 1 else ''} "
                        f"{', '.join(users)}; delete them or point them elsewhere first", name)
    return doc.replace_items(delete_services=[name])


def put_route(doc: Document, route: Route) -> Document:
    """Add `route`, or replace the route of the same name."""
    return doc.replace_items(routes=[route])


def delete_route(doc: Document, name: str) -> Document:
    if doc.route(name) is None:
        raise NotFoundError(f"routes[{name}]", "no such route", name)
    return doc.replace_items(delete_routes=[name])


def replace_document(new: Document) -> Edit:
    """The edit that replaces everything with `new` (what `peel apply` does)."""
    return lambda _old: new


def check_reason(reason: str, field: str = "reason") -> str:
    """Refuse a reason that could forge rows in a history listing; return it unchanged.

    Control characters (C0, DEL, C1: newlines, carriage returns, tabs, terminal escape sequences),
    line and paragraph separators and bidirectional controls are refused, whatever the language of
    the rest of the text.
    """
    for char in reason:
        if (unicodedata.category(char) in ("Cc", "Zl", "Zp")) or char in _BIDI_CONTROLS:
            raise RuleError(field, f"may not hold control characters (found U+{ord(char):04X}); "
                            "write the reason on one line", reason)
    return reason


def commit_change(store: VersionStore, edit: Edit, *, actor: str, reason: str,
                  if_match: int | None = None, check: Check | None = None,
                  transitions: Transitions | None = None) -> tuple[VersionInfo | None, DocumentDiff]:
    """Apply `edit` to the latest document and commit the result as a new config version.

    Returns the new version (None when the edit changes nothing, and nothing is written) and the
    diff. With `if_match`, the edit applies only to that version: when it is no longer the latest,
    `PreconditionFailed`. Without it, a change that lost a race with another writer is re-applied
    to the newer document, up to `RETRIES` times. `check` (the admin API compiles the document
    into a route table) runs before anything is written and refuses by raising. `transitions`
    names the migration transitions of the change; they are stored in the same transaction.
    A reason with control characters is refused (`check_reason`) before anything is read.
    """
    check_reason(reason)
    for attempt in range(RETRIES + 1):
        latest = store.latest()
        if if_match is not None and if_match != latest.version:
            raise PreconditionFailed("If-Match", f"config version {if_match} is not the latest "
                                     f"({latest.version} is); read it again and retry", if_match)
        document = edit(latest.document)
        change = diff(latest.document, document)
        if not change:
            return None, change
        if check is not None:
            check(document)
        # Only a change with transitions passes them: fakes of this seam need not know about them.
        try:
            if transitions is not None:
                info = store.commit(document, actor=actor, reason=reason, expected=latest.version,
                                    summary=change.summary(),
                                    transitions=transitions(latest.document, document))
            else:
                info = store.commit(document, actor=actor, reason=reason, expected=latest.version,
                                    summary=change.summary())
        except PreconditionFailed:
            if if_match is not None or attempt == RETRIES:
                raise
            continue
        return info, change
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def rollback_to(store: VersionStore, version: int, actor: str, reason: str, *,
                if_match: int | None = None,
                check: Check | None = None) -> tuple[VersionInfo | None, DocumentDiff]:
    """Commit a new config version whose document equals version `version`'s.

    Nothing is written when the latest document already equals it. NotFoundError when `version`
    does not exist.
    """
    target = store.get(version).document
    return commit_change(store, replace_document(target), actor=actor, reason=reason,
                         if_match=if_match, check=check)
