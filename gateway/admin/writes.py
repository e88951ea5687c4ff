"""The one way the admin API changes rules: edit the latest document, check it compiles, commit.

Every write runs `routes.changes.commit_change` in a worker thread with the caller's actor, reason
and `If-Match` version, and passes a compile check so a document that cannot become a route table
is refused before anything is stored. A write that changes nothing creates no config version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from gateway.admin.wire import actor, answer, if_match
from routes.changes import commit_change
from routes.compiler import compile_incrementally
from routes.diff import DocumentDiff
from routes.model import Document
from routes.store import Store, VersionInfo


def check_compiles(document: Document) -> None:
    """Refuse (RuleError) a document the compiler cannot turn into a route table."""
    compile_incrementally(document, 0)


def diff_body(diff: DocumentDiff) -> dict[str, Any]:
    """How a diff travels: structured for programs, text and summary for people."""
    return {"diff": diff.to_dict(), "summary": diff.summary(), "diff_text": diff.to_text()}


async def commit_edit(request: Request, store: Store, edit: Callable[[Document], Document],
                      reason: str) -> tuple[VersionInfo | None, DocumentDiff, int]:
    """Apply `edit` to the latest document and commit it; (new version or None, diff, live version)."""
    expected = if_match(request)
    info, diff = await run_in_threadpool(
        lambda: commit_change(store, edit, actor=actor(request), reason=reason, if_match=expected,
                              check=check_compiles))
    if info is not None:
        return info, diff, info.version
    live = await run_in_threadpool(store.latest_version)
    return None, diff, live


async def write_answer(info: VersionInfo | None, diff: DocumentDiff, live: int, *, status: int = 200,
                       extra: dict[str, Any] | None = None) -> Response:
    """The answer to every write: the live config version, whether one was created, the diff.
    Built and encoded on a worker thread: a diff grows with the change (a whole table's, at the
    first apply of 10,000 routes)."""
    def build() -> Response:
        body: dict[str, Any] = {"version": live, "changed": info is not None, **diff_body(diff),
                                **(extra or {})}
        if info is not None:
            body["created"] = info
        return answer(body, version=live, status=status)

    return await run_in_threadpool(build)
