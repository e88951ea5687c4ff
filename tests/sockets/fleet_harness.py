"""Several real `peel serve` gateways on one PostgreSQL store, and the time a change takes to reach
them all (used by tests/sockets/test_fleet.py and bench/propagation.py)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

from tests.sockets.serve_harness import PeelServe

P = TypeVar("P", bound=PeelServe)


def document(echo_url: str, stamp: int) -> dict[str, Any]:
    """Everything to the echo upstream; responses carry `X-Stamp: <stamp>`."""
    return {"services": [{"name": "echo", "endpoints": [echo_url]}],
            "routes": [{"name": "main", "match": {"path_prefix": "/"}, "service": "echo",
                        "rewrite": {"response_headers": {"set": {"X-Stamp": str(stamp)}}}}]}


def fleet(root: Path, url: str, size: int, *, poll_interval: float = 30.0,
          extra: str = "") -> list[PeelServe]:
    """`size` gateways (not started) on the store at `url`, each in its own directory. A long
    `poll_interval` leaves LISTEN/NOTIFY as what carries changes (polling is the fallback)."""
    out = []
    for i in range(size):
        tmp = root / f"gw{i}"
        tmp.mkdir()
        out.append(polling(PeelServe(tmp, url=url, extra_settings=extra), poll_interval))
    return out


def polling(peel: P, interval: float) -> P:
    """`peel` (not started) with `server.poll_interval` set to `interval` seconds."""
    text = peel.config.read_text()
    peel.config.write_text(text.replace("[server]\n", f"[server]\npoll_interval = {interval}\n", 1))
    return peel


def stamp(peel: PeelServe) -> str | None:
    """The stamp the gateway serves now (None: no answer or no table)."""
    try:
        status, headers, _ = peel.get("/p", timeout=5)
    except OSError:
        return None
    return headers.get("x-stamp") if status == 200 else None


def apply(peel: PeelServe, token: str, doc: dict[str, Any], reason: str = "fleet") -> int:
    """POST /api/v1/config/apply on `peel`'s admin API; the new config version."""
    # a gateway in a network namespace (tests/e2e/test_fleet_netns.py) is reached at its own address
    host = str(getattr(peel, "host", "127.0.0.1"))
    conn = http.client.HTTPConnection(host, peel.admin_port, timeout=30)
    try:
        conn.request("POST", "/api/v1/config/apply", body=json.dumps({"document": doc, "reason": reason}),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise AssertionError(f"apply answered {response.status}: {body!r}")
    return int(json.loads(body)["version"])


def propagate(gateways: list[PeelServe], through: PeelServe, token: str, echo_url: str, value: int,
              timeout: float = 5.0) -> float:
    """Apply a document stamped `value` through `through`'s admin API; the seconds from sending the
    change until every gateway serves it (the apply's own time included). AssertionError when one
    does not within `timeout`."""
    served: list[float | None] = [None] * len(gateways)
    start = time.monotonic()
    want = str(value)

    def watch(i: int, peel: PeelServe) -> None:
        while time.monotonic() - start < timeout:
            if stamp(peel) == want:
                served[i] = time.monotonic()
                return
            time.sleep(0.002)  # a client polling what is served, not synchronisation

    threads = [threading.Thread(target=watch, args=(i, g), daemon=True) for i, g in enumerate(gateways)]
    for thread in threads:
        thread.start()
    apply(through, token, document(echo_url, value), reason=f"stamp {value}")
    for thread in threads:
        thread.join(timeout + 5)
    missing = [g.public_port for g, t in zip(gateways, served, strict=True) if t is None]
    if missing:
        raise AssertionError(f"stamp {value} not served within {timeout} s by gateways on {missing}")
    return max(t for t in served if t is not None) - start


def leader_gauge(peel: PeelServe, token: str) -> float | None:
    """`peel_leader` from the gateway's /metrics (None: not there or no answer)."""
    try:
        status, body = peel.admin_get("/metrics", token, timeout=5)
    except OSError:
        return None
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith("peel_leader{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
