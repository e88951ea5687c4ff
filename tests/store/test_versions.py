"""Config versions on both backends: commit, read, history, If-Match, concurrent writers, rollback."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import func, select

from routes.changes import commit_change, delete_route, put_route, put_service, rollback_to
from routes.errors import ConflictError, NotFoundError, PreconditionFailed
from routes.model import Document, Route, Service
from routes.schema import config_versions
from routes.store import Store, VersionInfo


def service(name: str, endpoint: str = "http://10.0.0.5:8080") -> Service:
    return Service.parse({"name": name, "endpoints": [endpoint]}, "services[0]")


def route(name: str, service_name: str, prefix: str) -> Route:
    return Route.parse({"name": name, "service": service_name, "match": {"path_prefix": prefix}},
                       "routes[0]")


def document(**extra: Any) -> Document:
    data: dict[str, Any] = {"services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}],
                            "routes": [{"name": "default", "match": {"path_prefix": "/"},
                                        "service": "legacy"}]}
    data.update(extra)
    return Document.parse(data)


def adding(svc: Service, doc: Document) -> Document:
    return put_service(doc, svc)


def stored_rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(config_versions)) or 0)


def test_empty_store_reads_as_version_zero_with_an_empty_document(store: Store) -> None:
    assert store.latest_version() == 0
    latest = store.latest()
    assert latest.version == 0
    assert latest.document == Document()
    assert store.history() == []


def test_commit_then_read_back_the_same_document(store: Store) -> None:
    doc = document()
    before = datetime.now(UTC) - timedelta(seconds=5)
    info = store.commit(doc, actor="alice", reason="first rules")
    assert info.version == 1
    assert info.created_at.tzinfo is not None and info.created_at >= before
    assert info.summary == "+1 service, +1 route"
    latest = store.latest()
    assert (latest.version, latest.actor, latest.reason) == (1, "alice", "first rules")
    assert latest.document == doc
    assert latest.created_at.utcoffset() == timedelta(0)
    assert store.get(1).document == doc


def test_versions_count_up_and_history_is_newest_first(store: Store) -> None:
    doc = document()
    for i in range(1, 5):
        doc = put_service(doc, service(f"svc{i}"))
        assert store.commit(doc, actor="bob", reason=f"change {i}").version == i
    history = store.history()
    assert [h.version for h in history] == [4, 3, 2, 1]
    assert [h.reason for h in history] == ["change 4", "change 3", "change 2", "change 1"]
    assert [h.version for h in store.history(limit=2)] == [4, 3]
    assert store.latest_version() == 4
    assert store.get(2).document.service("svc2") is not None
    assert store.get(2).document.service("svc3") is None


def test_unknown_version_is_not_found(store: Store) -> None:
    store.commit(document(), actor="a", reason="r")
    with pytest.raises(NotFoundError) as info:
        store.get(7)
    assert info.value.field == "version"


def test_stale_expected_version_is_refused_and_nothing_is_written(store: Store) -> None:
    store.commit(document(), actor="a", reason="one")
    store.commit(put_service(document(), service("orders")), actor="a", reason="two")
    with pytest.raises(PreconditionFailed) as info:
        store.commit(Document(), actor="a", reason="stale", expected=1)
    assert info.value.field == "If-Match"
    assert info.value.status == 412
    assert store.latest_version() == 2
    assert stored_rows(store) == 2
    assert store.commit(Document(), actor="a", reason="fresh", expected=2).version == 3


def test_observers_hear_of_each_committed_version_in_the_committing_thread(store: Store) -> None:
    heard: list[tuple[str, int, str]] = []
    store.on_commit(lambda v: heard.append(("a", v, threading.current_thread().name)))
    store.on_commit(lambda v: heard.append(("b", v, threading.current_thread().name)))
    store.commit(document(), actor="a", reason="one")
    worker = threading.Thread(target=lambda: commit_change(
        store, lambda d: put_service(d, service("orders")), actor="a", reason="two"), name="writer")
    worker.start()
    worker.join()
    main = threading.current_thread().name
    assert heard == [("a", 1, main), ("b", 1, main), ("a", 2, "writer"), ("b", 2, "writer")]
    # a refused commit and a change of nothing are not commits
    with pytest.raises(PreconditionFailed):
        store.commit(Document(), actor="a", reason="stale", expected=1)
    commit_change(store, lambda d: put_service(d, service("orders")), actor="a", reason="same")
    assert len(heard) == 4


def test_commit_change_with_stale_if_match_writes_nothing(store: Store) -> None:
    commit_change(store, lambda d: document(), actor="a", reason="one")
    commit_change(store, lambda d: put_service(d, service("orders")), actor="a", reason="two")
    with pytest.raises(PreconditionFailed):
        commit_change(store, lambda d: put_service(d, service("billing")), actor="a", reason="stale",
                      if_match=1)
    assert store.latest_version() == 2
    assert store.latest().document.service("billing") is None


def test_a_change_that_changes_nothing_creates_no_version(store: Store) -> None:
    info, _ = commit_change(store, lambda d: document(), actor="a", reason="one")
    assert info is not None
    again, change = commit_change(store, lambda d: document(), actor="a", reason="same again")
    assert again is None
    assert not change
    assert store.latest_version() == 1


def test_refused_check_writes_nothing(store: Store) -> None:
    class Refused(Exception):
        pass

    def check(doc: Document) -> None:
        raise Refused("does not compile")

    with pytest.raises(Refused):
        commit_change(store, lambda d: document(), actor="a", reason="r", check=check)
    assert store.latest_version() == 0


def test_concurrent_direct_commits_never_share_a_version(store: Store) -> None:
    threads, per_thread = 4, 5
    results: list[VersionInfo] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def writer(n: int) -> None:
        barrier.wait(timeout=30)
        for i in range(per_thread):
            try:
                results.append(store.commit(put_service(Document(), service(f"w{n}-{i}")),
                                            actor=f"writer{n}", reason=f"{n}/{i}"))
            except BaseException as exc:
                errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors
    assert sorted(r.version for r in results) == list(range(1, threads * per_thread + 1))
    assert stored_rows(store) == threads * per_thread


def test_concurrent_edits_never_lose_an_update(store: Store) -> None:
    store.commit(document(), actor="setup", reason="base")
    threads, per_thread = 4, 4
    done: dict[str, VersionInfo] = {}
    refused: list[str] = []
    unexpected: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def writer(n: int) -> None:
        barrier.wait(timeout=30)
        for i in range(per_thread):
            name = f"w{n}-{i}"
            try:
                info, _ = commit_change(store, partial(adding, service(name)), actor=f"writer{n}",
                                        reason=name)
            except PreconditionFailed:
                refused.append(name)  # lost the race more often than the retries allow: fine
            except BaseException as exc:
                unexpected.append(exc)
            else:
                assert info is not None
                done[name] = info

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not unexpected
    assert len(done) + len(refused) == threads * per_thread
    assert len(done) >= per_thread  # retries let most edits through
    final = {s.name for s in store.latest().document.services}
    # every committed edit is still there: nothing was written over with an older document
    assert final == {"legacy", *done}
    versions = sorted(info.version for info in done.values())
    assert versions == list(range(2, 2 + len(done)))
    for name, info in done.items():
        assert store.get(info.version).document.service(name) is not None


def test_rollback_commits_a_new_version_with_the_old_document(store: Store) -> None:
    v1, _ = commit_change(store, lambda d: document(), actor="a", reason="base")
    commit_change(store, lambda d: put_route(put_service(d, service("orders")),
                                             route("orders", "orders", "/orders")),
                  actor="a", reason="peel orders off")
    assert v1 is not None
    info, change = rollback_to(store, 1, "oncall", "orders is down")
    assert info is not None and info.version == 3
    assert (info.actor, info.reason) == ("oncall", "orders is down")
    assert store.latest().document == store.get(1).document
    assert change.summary() == "-1 service, -1 route"
    assert store.get(2).document.route("orders") is not None  # history is kept
    again, _ = rollback_to(store, 1, "oncall", "twice")
    assert again is None
    assert store.latest_version() == 3


def test_rollback_to_an_unknown_version_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        rollback_to(store, 9, "a", "r")


def test_edit_errors_from_the_document_reach_the_caller_and_write_nothing(store: Store) -> None:
    commit_change(store, lambda d: document(), actor="a", reason="base")
    with pytest.raises(NotFoundError):
        commit_change(store, lambda d: delete_route(d, "nope"), actor="a", reason="r")
    assert store.latest_version() == 1


def test_conflict_is_a_rule_error_subclass_for_the_api() -> None:
    # the admin API maps ConflictError to 409 and PreconditionFailed to 412 through RuleError
    assert issubclass(PreconditionFailed, ConflictError)
