"""The demo's sample apps in-process: routes, JSON shapes, `X-Served-By`, 404s, and the sample rules."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp

from gateway.demo import monolith, orders
from gateway.demo.sample import sample_document, sample_yaml
from gateway.demo.shop import BadOrder, parse_new_order
from routes.model import Document


def call(app: ASGIApp, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


@pytest.fixture
def legacy() -> ASGIApp:
    return monolith.build_app()


@pytest.fixture
def new() -> ASGIApp:
    return orders.build_app()


@pytest.mark.parametrize("path", ["/", "/orders", "/orders/1", "/users", "/users/2", "/health",
                                  "/download?mb=0", "/orders/999", "/nowhere"])
def test_every_monolith_answer_says_who_served_it(legacy: ASGIApp, path: str) -> None:
    assert call(legacy, "GET", path).headers["x-served-by"] == "legacy-monolith"


def test_monolith_home_lists_the_routes(legacy: ASGIApp) -> None:
    r = call(legacy, "GET", "/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    for path in ("/orders", "/users", "/download", "/health"):
        assert path in r.text


def test_monolith_orders_and_users(legacy: ASGIApp) -> None:
    listing = call(legacy, "GET", "/orders").json()
    assert listing["count"] == len(listing["orders"]) == 3
    assert [o["id"] for o in listing["orders"]] == [1, 2, 3]
    assert "served_by" not in listing
    one = call(legacy, "GET", "/orders/2").json()
    assert one["id"] == 2 and one["customer"] == "grace"
    assert call(legacy, "GET", "/users").json()["count"] == 3
    assert call(legacy, "GET", "/users/1").json()["name"] == "Ada Lovelace"


@pytest.mark.parametrize("path", ["/orders/999", "/orders/abc", "/orders/99999999999999999999999",
                                  "/users/42", "/nowhere"])
def test_unknown_things_are_404(legacy: ASGIApp, path: str) -> None:
    assert call(legacy, "GET", path).status_code == 404


def test_monolith_creates_orders(legacy: ASGIApp) -> None:
    r = call(legacy, "POST", "/orders", json={"customer": "joan", "items": [{"sku": "tea", "qty": 3}]})
    assert r.status_code == 201
    created = r.json()
    assert created == {"id": 4, "customer": "joan", "items": [{"sku": "tea", "qty": 3}], "status": "new"}
    assert r.headers["location"] == "/orders/4"
    assert call(legacy, "GET", "/orders/4").json() == created
    assert call(legacy, "GET", "/orders").json()["count"] == 4


def test_a_bad_order_is_refused_with_the_reason(legacy: ASGIApp) -> None:
    r = call(legacy, "POST", "/orders", json={"customer": "joan", "items": []})
    assert r.status_code == 422
    assert "items" in r.json()["detail"]
    assert call(legacy, "GET", "/orders").json()["count"] == 3


@pytest.mark.parametrize(("body", "field"), [
    (b"not json", "JSON"),
    (b"[1]", "object"),
    (b'{"items": [{"sku": "a"}]}', "customer"),
    (b'{"customer": "a", "items": "x"}', "items"),
    (b'{"customer": "a", "items": [{"qty": 1}]}', "items[0].sku"),
    (b'{"customer": "a", "items": [{"sku": "a", "qty": 0}]}', "items[0].qty"),
    (b'{"customer": "a", "items": [{"sku": "a", "qty": true}]}', "items[0].qty"),
])
def test_parse_new_order_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(BadOrder, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_new_order(body)


def test_download_is_the_requested_size(legacy: ASGIApp) -> None:
    r = call(legacy, "GET", "/download?mb=2")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(2 * 1024 * 1024)
    assert len(r.content) == 2 * 1024 * 1024
    assert r.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize("mb", ["-1", "x", "1.5", "999999999"])
def test_download_refuses_a_bad_size(legacy: ASGIApp, mb: str) -> None:
    assert call(legacy, "GET", f"/download?mb={mb}").status_code == 400


def test_download_chunks_add_up_without_buffering() -> None:
    async def collect() -> list[int]:
        return [len(c) async for c in monolith.zeros(3 * monolith.CHUNK + 5)]

    sizes = asyncio.run(collect())
    assert sizes == [monolith.CHUNK] * 3 + [5]


def test_orders_service_has_the_same_shapes_plus_served_by(legacy: ASGIApp, new: ASGIApp) -> None:
    old_list, new_list = call(legacy, "GET", "/orders").json(), call(new, "GET", "/orders").json()
    assert new_list.pop("served_by") == "orders-service"
    assert new_list == old_list
    one = call(new, "GET", "/orders/1")
    assert one.headers["x-served-by"] == "orders-service"
    body = one.json()
    assert body.pop("served_by") == "orders-service"
    assert body == call(legacy, "GET", "/orders/1").json()


def test_orders_service_creates_and_404s(new: ASGIApp) -> None:
    r = call(new, "POST", "/orders", json={"customer": "joan", "items": [{"sku": "mug"}]})
    assert r.status_code == 201
    assert r.json()["served_by"] == "orders-service"
    assert r.json()["items"] == [{"sku": "mug", "qty": 1}]
    missing = call(new, "GET", "/orders/77")
    assert missing.status_code == 404
    assert missing.headers["x-served-by"] == "orders-service"


def test_orders_service_serves_only_orders_and_health(new: ASGIApp) -> None:
    assert call(new, "GET", "/health").json() == {"status": "ok"}
    assert call(new, "GET", "/users").status_code == 404
    assert call(new, "GET", "/").status_code == 404


def test_sample_document_starts_with_everything_on_the_monolith() -> None:
    data = sample_document("http://127.0.0.1:8081", "http://127.0.0.1:8082")
    doc = Document.parse(data)
    assert {s.name: s.endpoints[0].port for s in doc.services} == {"legacy": 8081, "orders": 8082}
    assert {r.name: r.service for r in doc.routes} == {"legacy-default": "legacy", "orders": "legacy"}
    assert doc.route("orders") is not None
    assert doc.route("orders").match.path_prefix == "/orders"  # type: ignore[union-attr]


def test_sample_yaml_round_trips() -> None:
    import yaml

    text = sample_yaml("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert Document.parse(yaml.safe_load(text)).to_dict() == \
        sample_document("http://127.0.0.1:1", "http://127.0.0.1:2")


def test_demo_settings_are_accepted_by_peel(tmp_path: Path) -> None:
    from gateway.core.settings import load_settings
    from gateway.demo.run import Ports, write_settings

    directory = tmp_path / "with space \"and quote\""
    directory.mkdir()
    settings = load_settings(write_settings(directory, Ports(18080, 19901, 18081, 18082)), {})
    assert settings.listeners.public.bind == "127.0.0.1:18080"
    assert settings.listeners.admin.bind == "127.0.0.1:19901"
    assert settings.database.url == f"sqlite:///{directory / 'peel.db'}"
    assert settings.access_log.target == str(directory / "access.log")
    assert settings.server.snapshot_path == str(directory / "snapshot.json")
    assert settings.server.grace_period < 10  # Ctrl-C must not wait the production drain


def test_demo_refuses_a_port_given_twice() -> None:
    from gateway.demo.run import DemoFailed, Ports, check_ports

    with pytest.raises(DemoFailed, match="--orders-port"):
        check_ports(Ports(18080, 19901, 18081, 18081))


def test_demo_children_ignore_peel_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.demo.run import child_environment

    monkeypatch.setenv("PEEL_LISTENERS_PUBLIC_BIND", "0.0.0.0:1")
    monkeypatch.setenv("PEEL_ADMIN_TOKEN", "x")
    env = child_environment()
    assert not [k for k in env if k.startswith("PEEL_")]
    assert env["PYTHONUNBUFFERED"] == "1"
