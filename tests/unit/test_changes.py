"""Edits of a document and committing them, against an in-memory fake of the store seam."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from routes.changes import (
    RETRIES,
    commit_change,
    delete_route,
    delete_service,
    put_route,
    put_service,
    replace_document,
    rollback_to,
)
from routes.errors import NotFoundError, PreconditionFailed, RuleError
from routes.model import Document, Route, Service
from routes.store import EMPTY_VERSION, ConfigVersion, VersionInfo


def service(name: str, endpoint: str = "http://10.0.0.5:8080") -> Service:
    return Service.parse({"name": name, "endpoints": [endpoint]}, "services[0]")


def route(name: str, service_name: str, prefix: str = "/", **extra: Any) -> Route:
    return Route.parse({"name": name, "service": service_name, "match": {"path_prefix": prefix},
                        **extra}, "routes[0]")


BASE = Document.build([service("legacy")], [route("default", "legacy")])


@dataclass
class FakeStore:
    """The store seam in memory. `interlopers` commits that many extra versions just before each
    of the next commits, as a concurrent writer would."""

    versions: list[ConfigVersion] = field(default_factory=list)
    interlopers: int = 0
    commits: int = 0

    def latest(self) -> ConfigVersion:
        return self.versions[-1] if self.versions else EMPTY_VERSION

    def get(self, version: int) -> ConfigVersion:
        for v in self.versions:
            if v.version == version:
                return v
        raise NotFoundError("version", "no such config version", version)

    def _append(self, document: Document, actor: str, reason: str, summary: str) -> VersionInfo:
        v = ConfigVersion(self.latest().version + 1, datetime.now(UTC), actor, reason, document, summary)
        self.versions.append(v)
        return v.info

    def commit(self, document: Document, *, actor: str, reason: str, expected: int | None = None,
               summary: str | None = None) -> VersionInfo:
        self.commits += 1
        if self.interlopers:
            self.interlopers -= 1
            other = put_service(self.latest().document, service(f"other{len(self.versions)}"))
            self._append(other, "other", "concurrent", "+1 service")
        if expected is not None and expected != self.latest().version:
            raise PreconditionFailed("If-Match", "stale", expected)
        return self._append(document, actor, reason, summary or "")


# -- pure edits -----------------------------------------------------------------------------------


def test_put_service_adds_then_replaces_by_name() -> None:
    doc = put_service(BASE, service("orders"))
    assert [s.name for s in doc.services] == ["legacy", "orders"]
    doc = put_service(doc, service("orders", "http://10.0.0.9:9000"))
    assert doc.service("orders") == service("orders", "http://10.0.0.9:9000")
    assert len(doc.services) == 2
    assert BASE.service("orders") is None  # the input is never changed


def test_delete_service_refuses_while_routes_use_it_and_names_them() -> None:
    doc = put_route(put_service(BASE, service("orders")), route("orders", "orders", "/orders"))
    doc = put_route(doc, route("orders-v2", "orders", "/v2/orders"))
    with pytest.raises(RuleError) as info:
        delete_service(doc, "orders")
    assert info.value.field == "services[orders]"
    assert "orders, orders-v2" in info.value.message


def test_delete_unused_service() -> None:
    doc = delete_service(put_service(BASE, service("spare")), "spare")
    assert doc == BASE


def test_delete_unknown_service_is_not_found() -> None:
    with pytest.raises(NotFoundError) as info:
        delete_service(BASE, "nope")
    assert info.value.field == "services[nope]"


def test_put_route_adds_then_replaces_by_name() -> None:
    doc = put_route(BASE, route("api", "legacy", "/api"))
    assert doc.route("api") is not None
    doc = put_route(doc, route("api", "legacy", "/api", priority=5))
    api = doc.route("api")
    assert api is not None and api.priority == 5
    assert len(doc.routes) == 2


def test_put_route_to_an_unknown_service_is_refused_with_the_field() -> None:
    with pytest.raises(RuleError) as info:
        put_route(BASE, route("api", "ghost", "/api"))
    assert info.value.field == "routes[api].service"


def test_put_route_with_a_duplicate_match_is_refused() -> None:
    with pytest.raises(RuleError) as info:
        put_route(BASE, route("twin", "legacy", "/"))
    assert info.value.field.startswith("routes[")
    assert "same match" in info.value.message


def test_delete_route() -> None:
    assert delete_route(put_route(BASE, route("api", "legacy", "/api")), "api") == BASE
    with pytest.raises(NotFoundError) as info:
        delete_route(BASE, "api")
    assert info.value.field == "routes[api]"


def test_replace_document_ignores_the_old_document() -> None:
    assert replace_document(Document())(BASE) == Document()


# -- committing ------------------------------------------------------------------------------------


def test_commit_change_commits_the_edit_with_its_summary() -> None:
    store = FakeStore()
    info, change = commit_change(store, replace_document(BASE), actor="alice", reason="initial")
    assert info is not None and info.version == 1
    assert change.summary() == "+1 service, +1 route"
    assert store.latest().document == BASE
    assert store.latest().summary == "+1 service, +1 route"
    assert (store.latest().actor, store.latest().reason) == ("alice", "initial")


def test_commit_change_without_a_change_writes_nothing() -> None:
    store = FakeStore()
    commit_change(store, replace_document(BASE), actor="a", reason="r")
    info, change = commit_change(store, lambda d: put_service(d, service("legacy")), actor="a",
                                 reason="same")
    assert info is None and not change
    assert store.commits == 1


def test_check_runs_on_the_new_document_before_anything_is_written() -> None:
    store = FakeStore()
    seen: list[Document] = []

    def check(doc: Document) -> None:
        seen.append(doc)
        raise RuleError("routes[default].match", "does not compile")

    with pytest.raises(RuleError):
        commit_change(store, replace_document(BASE), actor="a", reason="r", check=check)
    assert seen == [BASE]
    assert store.commits == 0


def test_if_match_on_the_latest_version_commits() -> None:
    store = FakeStore()
    commit_change(store, replace_document(BASE), actor="a", reason="r")
    info, _ = commit_change(store, lambda d: put_service(d, service("x")), actor="a", reason="r",
                            if_match=1)
    assert info is not None and info.version == 2


def test_stale_if_match_is_refused_before_the_edit_runs() -> None:
    store = FakeStore()
    commit_change(store, replace_document(BASE), actor="a", reason="r")
    commit_change(store, lambda d: put_service(d, service("x")), actor="a", reason="r")
    calls: list[Document] = []

    def edit(doc: Document) -> Document:
        calls.append(doc)
        return doc

    with pytest.raises(PreconditionFailed) as info:
        commit_change(store, edit, actor="a", reason="r", if_match=1)
    assert info.value.field == "If-Match"
    assert calls == []
    assert store.latest().version == 2


def test_if_match_losing_a_race_is_not_retried() -> None:
    store = FakeStore()
    commit_change(store, replace_document(BASE), actor="a", reason="r")
    store.interlopers = 1
    with pytest.raises(PreconditionFailed):
        commit_change(store, lambda d: put_service(d, service("x")), actor="a", reason="r", if_match=1)
    assert store.latest().document.service("x") is None


def test_lost_race_without_if_match_reapplies_the_edit_to_the_newer_document() -> None:
    store = FakeStore()
    commit_change(store, replace_document(BASE), actor="a", reason="r")
    store.interlopers = 2
    info, change = commit_change(store, lambda d: put_service(d, service("mine")), actor="a",
                                 reason="r")
    assert info is not None and info.version == 4
    names = {s.name for s in store.latest().document.services}
    assert {"mine", "other1", "other2"} <= names  # the concurrent writers' changes survive
    assert change.summary() == "+1 service"


def test_endless_races_give_up_after_the_retries() -> None:
    store = FakeStore()
    store.interlopers = RETRIES + 1
    with pytest.raises(PreconditionFailed):
        commit_change(store, lambda d: put_service(d, service("mine")), actor="a", reason="r")
    assert store.commits == RETRIES + 1
    assert all(v.actor == "other" for v in store.versions)


def test_rollback_commits_the_old_document_as_a_new_version() -> None:
    store = FakeStore()
    commit_change(store, replace_document(BASE), actor="a", reason="one")
    commit_change(store, lambda d: put_service(d, service("x")), actor="a", reason="two")
    info, change = rollback_to(store, 1, "oncall", "x misbehaves")
    assert info is not None and info.version == 3
    assert store.latest().document == BASE
    assert change.summary() == "-1 service"
    assert (store.latest().actor, store.latest().reason) == ("oncall", "x misbehaves")


def test_rollback_to_the_current_document_writes_nothing() -> None:
    store = FakeStore()
    commit_change(store, replace_document(BASE), actor="a", reason="one")
    info, change = rollback_to(store, 1, "a", "r")
    assert info is None and not change


def test_rollback_with_stale_if_match_is_refused() -> None:
    store = FakeStore()
    commit_change(store, replace_document(BASE), actor="a", reason="one")
    commit_change(store, lambda d: put_service(d, service("x")), actor="a", reason="two")
    with pytest.raises(PreconditionFailed):
        rollback_to(store, 1, "a", "r", if_match=1)
    assert store.latest().version == 2
