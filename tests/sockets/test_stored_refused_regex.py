"""`peel db upgrade` and `peel serve` on a store written by an older Peel with a regex RE2 refuses.

The upgrade names the route, the field and the fix; the gateway starts ready, serves every other
route, answers the broken route's requests 503 without running the pattern (nothing reaches the
upstream for them) and logs the route and the field.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from routes.schema import config_versions
from tests.sockets.conftest import ROOT
from tests.sockets.serve_harness import PeelServe
from tests.sockets.upstreams import ScriptedUpstream

LOOKAHEAD = r"^/orders/(?=\d)"


@pytest.fixture(scope="module")
def echo() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()


def old_document(echo_url: str) -> dict[str, Any]:
    return {"services": [{"name": "echo", "endpoints": [echo_url]}],
            "routes": [{"name": "main", "match": {"path_prefix": "/"}, "service": "echo"},
                       {"name": "orders-by-id", "match": {"path_regex": LOOKAHEAD}, "service": "echo"}]}


def store_as_older_peel(peel: PeelServe, document: dict[str, Any]) -> None:
    store = peel.store()
    try:
        store.upgrade()
        with store._engine.begin() as conn:
            conn.execute(insert(config_versions).values(
                version=1, created_at=datetime.now(UTC), actor="old-peel", reason="before RE2",
                summary="", document=json.dumps(document, sort_keys=True)))
    finally:
        store.close()


def peel_cli(peel: PeelServe, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--config", str(peel.config)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_db_upgrade_names_the_route_the_field_and_the_fix(tmp_path: Path, echo: ScriptedUpstream) -> None:
    peel = PeelServe(tmp_path)
    store_as_older_peel(peel, old_document(echo.url))
    done = peel_cli(peel, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert "route orders-by-id cannot be served: routes[orders-by-id].match.path_regex" in done.stderr
    assert "peel routes set orders-by-id -f route.yaml" in done.stderr


def test_serve_answers_the_broken_route_503_and_serves_the_rest(tmp_path: Path,
                                                                 echo: ScriptedUpstream) -> None:
    peel = PeelServe(tmp_path)
    store_as_older_peel(peel, old_document(echo.url))
    peel.start()  # waits for /readyz 200: the rest of the table serves
    try:
        status, _, body = peel.get("/orders/4242")
        assert status == 503, body
        assert json.loads(body)["code"] == "no-endpoint", body
        status, _, _ = peel.get("/users/4242")
        assert status == 200
        targets = [s.target for s in echo.seen]
        assert "/users/4242" in targets
        assert "/orders/4242" not in targets  # nothing was forwarded for the broken route
        log = peel.log.read_text()
        assert "route orders-by-id cannot be served: routes[orders-by-id].match.path_regex" in log
    finally:
        peel.stop()
