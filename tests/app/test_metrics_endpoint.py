"""`/metrics` on the admin listener: behind the bearer token unless open, absent when disabled."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin.app import build_admin_app
from gateway.core.settings import MetricsSettings, Settings
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.procstats import LiveView, ProcessState
from routes.store import Store

pytestmark = pytest.mark.anyio


def live_view(tmp_path: Path) -> tuple[LiveView, Metrics]:
    metrics = Metrics()
    metrics.config_loaded(3, True)
    state = ProcessState(metrics, role="single")
    return LiveView(tmp_path / "run", interval=1.0, local=state), metrics


def client(store: Store, settings: Settings, live: LiveView | None,
           token: str | None = None) -> httpx.AsyncClient:
    app = build_admin_app(store, ready=lambda: True, settings=settings, live=live)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test",
                             headers=headers)


async def test_metrics_need_the_token_and_show_the_live_counts(store: Store, tmp_path: Path) -> None:
    live, metrics = live_view(tmp_path)
    token = store.create_token("prometheus")
    async with client(store, Settings(), live) as anonymous:
        r = await anonymous.get("/metrics")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    metrics.request("orders", "orders", None, 200, 0.004)
    metrics.request("orders", "orders", None, 502, 0.03)
    async with client(store, Settings(), live, token) as scraper:
        r = await scraper.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        requests = {s.labels["status_class"]: s.value for s in families["peel_requests"].samples}
        assert requests == {"2xx": 1, "5xx": 1}
        assert [s.value for s in families["peel_config_version"].samples] == [3]
        assert "process_resident_memory_bytes" in families  # the admin process itself
        metrics.request("orders", "orders", None, 200, 0.004)
        again = {f.name: f for f in text_string_to_metric_families((await scraper.get("/metrics")).text)}
        assert {s.labels["status_class"]: s.value for s in again["peel_requests"].samples}["2xx"] == 2


async def test_open_metrics_need_no_token_but_the_api_still_does(store: Store, tmp_path: Path) -> None:
    live, _ = live_view(tmp_path)
    settings = Settings(metrics=MetricsSettings(open=True))
    async with client(store, settings, live) as anonymous:
        assert (await anonymous.get("/metrics")).status_code == 200
        assert (await anonymous.get("/api/v1/services")).status_code == 401


async def test_disabled_metrics_are_not_found(store: Store, tmp_path: Path) -> None:
    live, _ = live_view(tmp_path)
    token = store.create_token("prometheus")
    settings = Settings(metrics=MetricsSettings(enabled=False, open=True))
    async with client(store, settings, live, token) as scraper:
        r = await scraper.get("/metrics")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"


async def test_without_live_state_only_the_admin_process_is_shown(store: Store) -> None:
    token = store.create_token("prometheus")
    async with client(store, Settings(), None, token) as scraper:
        r = await scraper.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        assert [s.value for s in families["peel_serving_processes"].samples] == [0]
        assert "python_info" in families


async def test_the_live_view_is_on_the_app_state(store: Store, tmp_path: Path) -> None:
    live, _ = live_view(tmp_path)
    app = build_admin_app(store, ready=lambda: True, settings=Settings(), live=live)
    assert app.state.live is live
    assert build_admin_app(store, ready=lambda: True, settings=Settings()).state.live is None
