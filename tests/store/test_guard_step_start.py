"""When a migration set without a transition (by `peel apply`) got its stage and share, read from
the config history: changes to other routes do not restart its step (`unchanged_since`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facade.guard_run import step_start, unchanged_since
from routes.model import Document
from routes.store import Store


def document(idle_percent: int, other_prefix: str) -> Document:
    def migrated(name: str, prefix: str, percent: int) -> dict[str, Any]:
        return {"name": name, "match": {"path_prefix": prefix}, "service": "legacy",
                "migration": {"to": "new", "stage": "canary", "percent": percent}}
    return Document.parse({
        "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                     {"name": "new", "endpoints": ["http://10.0.0.6:8080"]}],
        "routes": [migrated("idle", "/idle", idle_percent), migrated("busy", other_prefix, 10)]})


def since(store: Store) -> float:
    latest = store.latest()
    route = latest.document.route("idle")
    assert route is not None and route.migration is not None
    return step_start(None, route.migration, lambda: unchanged_since(
        store, "idle", route.migration, latest.version, latest.created_at.timestamp()))


def test_other_routes_changing_do_not_restart_the_step(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/peel.db")
    try:
        store.upgrade()
        first = store.commit(document(50, "/a"), actor="t", reason="start")
        for prefix in ("/b", "/c", "/d"):
            store.commit(document(50, prefix), actor="t", reason="other route")
        assert since(store) == first.created_at.timestamp()
        moved = store.commit(document(25, "/d"), actor="t", reason="idle moves")
        store.commit(document(25, "/e"), actor="t", reason="other route")
        assert since(store) == moved.created_at.timestamp()
        # looking back no further than `depth` versions
        latest = store.latest()
        route = latest.document.route("idle")
        assert route is not None and route.migration is not None
        assert unchanged_since(store, "idle", route.migration, latest.version,
                               latest.created_at.timestamp(), depth=1) == latest.created_at.timestamp()
    finally:
        store.close()
