"""The dashboard in a real browser: headless Chromium (Debian's package) loads `/dashboard` from an
admin API on a free port, runs its script, and the DOM it leaves is read back: migrations with their
share on legacy, the guard's verdict, the shadow's comparison, the alerts (a retired route's misses,
a guard rolling back, a shadow finding a regression),
the latest changes, the token taken from the URL's fragment, a refused token sending the page back
to its token form, a hostile reason shown as text."""

from __future__ import annotations

import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.compare import CompareRules, Reply, compare
from facade.shadow_counts import ShadowStats, add_shadow
from routes.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")

DOCUMENT = {
    "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                 {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]},
                 {"name": "billing", "endpoints": ["http://10.0.0.8:9000"]},
                 {"name": "cart", "endpoints": ["http://10.0.0.9:9000"]}],
    "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy"},
               {"name": "billing", "match": {"path_prefix": "/billing"}, "service": "legacy"},
               {"name": "cart", "match": {"path_prefix": "/cart"}, "service": "legacy"},
               {"name": "legacy-default", "match": {"path_prefix": "/"}, "service": "legacy"}],
}
HOSTILE = '<img src=x onerror="document.title=1">'
RULES = CompareRules()


def reply(price: int, nonce: str) -> Reply:
    return Reply(200, ((b"content-type", b"application/json"),),
                 b'{"price": %d, "nonce": "%s"}' % (price, nonce.encode()))


def rendered(url: str, tmp_path: Path) -> str:
    """The DOM after the page's script ran (Chromium waits for the page's requests)."""
    assert CHROMIUM is not None
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=3000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Dom(HTMLParser):
    """The elements with an id or a data-route, their attributes and their text; table rows' cells."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, Any]] = {}
        self.rows: list[dict[str, Any]] = []  # <tr> in a <tbody>: {"table", "route", "cells"}
        self.alerts: list[str] = []
        self.tags: list[str] = []
        self._open: list[dict[str, Any]] = []
        self._table: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append(tag)
        element = {"tag": tag, "attrs": attributes, "text": ""}
        if tag == "table":
            self._table = attributes.get("id")
        if tag == "tr" and self._table and "route" not in attributes.get("class", ""):
            element["cells"] = []
        self._open.append(element)
        if "id" in attributes:
            self.by_id[str(attributes["id"])] = element

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            element = self._open.pop()
            text = element["text"]
            for parent in self._open:
                parent["text"] += text
            if element["tag"] == "td":
                row = next((e for e in reversed(self._open) if e["tag"] == "tr"), None)
                if row is not None and "cells" in row:
                    row["cells"].append(text.strip())
            if element["tag"] == "tr" and element.get("cells"):
                self.rows.append({"table": self._table, "route": element["attrs"].get("data-route"),
                                  "cells": element["cells"]})
            if element["tag"] == "p" and "alert" in (element["attrs"].get("class") or "") and text:
                self.alerts.append(text)
            if element["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1]["text"] += data

    def hidden(self, element_id: str) -> bool:
        return "hidden" in self.by_id[element_id]["attrs"]

    def table(self, name: str) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["table"] == name]


def test_the_page_and_its_files_are_open_and_locked_down(served: tuple[str, str, Store]) -> None:
    _, admin, _ = served
    with httpx.Client(base_url=admin) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "<script src=\"/dashboard/app.js\"" in page.text and "<script>" not in page.text
        assert client.get("/dashboard/app.js").headers["content-type"] == "text/javascript; charset=utf-8"
        assert client.get("/dashboard/app.css").headers["content-type"] == "text/css; charset=utf-8"
        # nothing else under it, and the data stays behind the token
        assert client.get("/dashboard/../api/v1/migrations").status_code == 401
        assert client.get("/dashboard/x.js").status_code == 401
        assert client.get("/api/v1/migrations").status_code == 401


def test_migrations_their_share_on_legacy_and_the_retired_route_s_alert(
        served: tuple[str, str, Store], tmp_path: Path) -> None:
    _, admin, store = served
    ops = store.create_token("ops")
    reader = store.create_token("dashboard", scopes=["read"])
    with httpx.Client(base_url=admin, headers={"Authorization": f"Bearer {ops}"}) as client:
        assert client.post("/api/v1/config/apply", json={"document": DOCUMENT}).status_code == 200

        def act(route: str, action: str, body: dict[str, Any] | None = None, reason: str = "") -> None:
            answer = client.post(f"/api/v1/migrations/{route}/{action}", json=body or {},
                                 headers={"Peel-Reason": reason} if reason else {})
            assert answer.status_code == 200, answer.text

        act("orders", "start", {"to": "orders"})
        act("orders", "guard", {"guard": {"steps": [25, 50, "migrated"], "window": "30s"}})
        act("orders", "shift", {"percent": 25}, reason=HOSTILE)
        act("billing", "start", {"to": "billing"})
        act("billing", "promote")
        act("billing", "retire")
        act("cart", "start", {"to": "cart"})
        act("cart", "shadow")
        since = {m["route"]: m["since"]["config_version"]
                 for m in client.get("/api/v1/migrations").json()["migrations"]}
    store.add_traffic("gw-a", {("orders", since["orders"]): (30, 90, 2, 0),
                               ("billing", since["billing"]): (50, 0, 0, 3)})
    store.add_traffic("gw-b", {("orders", since["orders"]): (10, 70, 0, 0)})
    # the cart's shadow: 200 pairs, `$.price` differs old-vs-new only (a regression), `$.nonce` in
    # both (noise)
    shadow = ShadowStats()
    for i in range(200):
        shadow.compared("cart", since["cart"], compare(reply(10, f"a{i}"), reply(11, f"b{i}"), RULES),
                        compare(reply(10, f"a{i}"), reply(10, f"c{i}"), RULES))
    add_shadow(store, "gw-a", *shadow.take())
    # the guard's window (the last 30 s but 3): `to` fails 40 % of its requests, `from` none (per
    # second: requests, errors, latency histogram), from before it to a minute after now, however
    # long the browser takes; the admin API assesses it: the guard would roll back
    now = int(time.time())
    store.add_guard_samples("gw-a", {(("orders", side, second)): (100, 40 if side == "to" else 0, {10: 100})
                                     for side in ("to", "from") for second in range(now - 40, now + 60)})

    dom = Dom(rendered(f"{admin}/dashboard#token={reader}", tmp_path))
    assert dom.hidden("login") and not dom.hidden("board")
    assert dom.by_id["state"]["text"].startswith(f"config version {max(since.values())} ")
    rows = {row["route"]: row["cells"] for row in dom.table("migrations")}
    assert set(rows) == {"orders", "billing", "cart"}
    orders = rows["orders"]
    assert orders[:6] == ["orders", "legacy → orders", "canary 25%", "80.0%", "200", "2"]
    assert orders[6].startswith("rollback: to's error rate 1200/3000 exceeds from's 0/3000")  # 30 s
    assert orders[7] == "-"  # not in the shadow stage
    assert orders[8].endswith(f"by ops ({HOSTILE})")  # the reason as text
    assert rows["billing"][:8] == ["billing", "legacy → billing", "retired", "0.0%", "50", "0", "-", "-"]
    assert rows["cart"][2:4] == ["shadow", "-"]  # every request on legacy; no counts reported
    assert rows["cart"][7].startswith("100.0% differ of 200 pairs (") and \
        rows["cart"][7].endswith("), 1 regression(s)")
    alerts = sorted(dom.alerts)
    assert len(alerts) == 3
    assert alerts[0].startswith("Route billing is retired, yet 3 request(s) failed on billing")
    assert alerts[1].startswith("The guard of orders rolls back: to's error rate")
    assert alerts[2] == ("The shadow of cart finds 1 field(s) where cart answers differently from legacy "
                         "beyond the noise: $.price (peel shadow report cart).")
    assert "img" not in dom.tags  # the hostile reason made no element
    versions = dom.table("versions")
    assert [row["cells"][0] for row in versions] == [str(v) for v in range(max(since.values()), 0, -1)]
    assert versions[0]["cells"][2] == "ops"


def test_a_refused_token_shows_the_token_form_with_the_reason(served: tuple[str, str, Store],
                                                              tmp_path: Path) -> None:
    _, admin, store = served
    dom = Dom(rendered(f"{admin}/dashboard", tmp_path))  # no token yet: the form, no error
    assert not dom.hidden("login") and dom.hidden("board") and dom.hidden("login-error")
    assert dom.by_id["state"]["text"] == "needs an admin token"
    dom = Dom(rendered(f"{admin}/dashboard#token=peel_not-a-token", tmp_path / "b"))
    assert not dom.hidden("login") and dom.hidden("board") and not dom.hidden("login-error")
    assert dom.by_id["login-error"]["text"]
    metrics_only = store.create_token("scraper", scopes=["metrics"])
    dom = Dom(rendered(f"{admin}/dashboard#token={metrics_only}", tmp_path / "c"))
    assert not dom.hidden("login") and dom.hidden("board")
    assert "scope" in dom.by_id["login-error"]["text"]
