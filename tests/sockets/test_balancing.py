"""Balancing policies on a real `peel serve`: weighted round-robin, consistent hashing, slow start.

The balancers are proven in detail by unit tests on a simulated clock (`tests/unit/test_balancer.py`,
`tests/unit/test_endpoints.py`); these show the same behaviour through the whole gateway, on real
connections, with config changes applied by hot reload. Each test commits the document it needs and
waits until the gateway serves that config version (`peel_config_version` on `/metrics`).
"""

from __future__ import annotations

import http.client
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.sockets.conftest import wait_for
from tests.sockets.faults import FaultSet, FaultUpstream
from tests.sockets.serve_harness import PeelServe

pytestmark = pytest.mark.timeout(90)

UPSTREAMS = ("wrr_a", "wrr_b", "hash_a", "hash_b", "hash_c", "ramp_a", "ramp_b")
SLOW_START = 10.0  # seconds: long enough that "early" holds on a slow machine


@dataclass
class Gateway:
    peel: PeelServe
    faults: FaultSet
    token: str

    def __getitem__(self, name: str) -> FaultUpstream:
        return self.faults[name]

    def document(self, *, hash_endpoints: tuple[str, ...] = ("hash_a", "hash_b", "hash_c"),
                 ramp_endpoints: tuple[str, ...] = ("ramp_a",)) -> dict[str, Any]:
        url = {name: self.faults[name].url for name in UPSTREAMS}
        return {
            "services": [
                {"name": "wrr", "endpoints": [{"url": url["wrr_a"], "weight": 3}, url["wrr_b"]],
                 "balancer": {"policy": "round_robin"}, "outlier": False},
                {"name": "hash", "endpoints": [url[n] for n in hash_endpoints],
                 "balancer": {"policy": "hash", "hash_on": {"header": "X-User"}}},
                {"name": "ramp", "endpoints": [url[n] for n in ramp_endpoints],
                 "balancer": {"policy": "round_robin", "slow_start": f"{SLOW_START:g}s"},
                 "outlier": False},
            ],
            "routes": [{"name": name, "match": {"path_prefix": f"/{name}"}, "service": name}
                       for name in ("wrr", "hash", "ramp")],
        }

    def apply(self, document: dict[str, Any]) -> None:
        """Commit `document` and wait until the gateway serves that version."""
        version = self.peel.commit(document)
        wait_for(lambda: self.serving() == version, 15, f"the gateway to serve version {version}")

    def serving(self) -> int | None:
        _, body = self.peel.admin_get("/metrics", self.token, timeout=5)
        for line in body.decode().splitlines():
            if line.startswith("peel_config_version"):
                return int(float(line.rsplit(" ", 1)[1]))
        return None

    def send(self, path: str, count: int, headers: dict[str, str] | None = None) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.peel.public_port, timeout=10)
        try:
            for _ in range(count):
                conn.request("GET", path, headers=headers or {})
                response = conn.getresponse()
                response.read()
                assert response.status == 200, response.status
        finally:
            conn.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    faults = FaultSet(UPSTREAMS).start()
    peel = PeelServe(tmp_path_factory.mktemp("balancing"))
    gw = Gateway(peel, faults, peel.upgrade_with_token("ops"))
    peel.commit(gw.document())
    peel.start()
    yield gw
    peel.stop()
    faults.stop()


@pytest.fixture(autouse=True)
def fresh(gateway: Gateway) -> None:
    for name in UPSTREAMS:
        gateway[name].clear()


def test_weighted_round_robin_gives_each_endpoint_its_weight_exactly(gateway: Gateway) -> None:
    gateway.apply(gateway.document())
    gateway.send("/wrr/x", 40)  # ten whole rounds of weights 3 and 1
    assert (gateway["wrr_a"].count(), gateway["wrr_b"].count()) == (30, 10)


def test_hashing_keeps_each_user_on_one_endpoint_and_moves_only_a_removed_endpoints_users(
        gateway: Gateway) -> None:
    gateway.apply(gateway.document())
    names = ("hash_a", "hash_b", "hash_c")

    def placement() -> dict[str, str]:
        where: dict[str, str] = {}
        for name in names:
            for received in gateway[name].received:
                user = received.header("x-user")
                assert user is not None
                assert where.setdefault(user, name) == name, f"{user} answered by two endpoints"
        return where

    users = [f"user-{i}" for i in range(30)]
    for user in users:
        gateway.send("/hash/profile", 3, {"X-User": user})
    before = placement()
    assert set(before) == set(users)
    assert len(set(before.values())) == 3  # 30 users on a ring of three: each endpoint has some
    # hash_c leaves the service: only its users move, the others stay where they were
    gateway.apply(gateway.document(hash_endpoints=("hash_a", "hash_b")))
    for name in names:
        gateway[name].clear()
    for user in users:
        gateway.send("/hash/profile", 2, {"X-User": user})
    after = placement()
    assert gateway["hash_c"].count() == 0
    assert all(after[user] == before[user] for user in users if before[user] != "hash_c")


def test_a_new_endpoint_ramps_up_over_slow_start(gateway: Gateway) -> None:
    gateway.apply(gateway.document(ramp_endpoints=("ramp_a",)))
    gateway.apply(gateway.document(ramp_endpoints=("ramp_a", "ramp_b")))
    added = time.monotonic()
    old, new = gateway["ramp_a"], gateway["ramp_b"]
    # Early in its ramp the new endpoint's weight is 10 % of the old one's, rising linearly: after
    # t seconds at most w = 0.1 + 0.9 t / 10, so its share of requests is at most w / (1 + w)
    # (well under a half while t is small, whatever the machine's speed).
    gateway.send("/ramp/early", 40)
    elapsed = time.monotonic() - added
    weight = 0.1 + 0.9 * min(1.0, elapsed / SLOW_START)
    early = new.count()
    assert 1 <= early <= math.ceil(40 * weight / (1 + weight)) + 1, (old.count(), early, elapsed)
    assert early < 15, f"{early} of 40 after {elapsed:.1f} s: the ramp was not seen"
    # Once the ramp is over, equal weights share equally: 10 of every 20 requests. That cannot
    # happen much before the end of the ramp.
    full: list[float] = []

    def even_batch() -> bool:
        old.clear()
        new.clear()
        gateway.send("/ramp/late", 20)
        if new.count() == 10:
            full.append(time.monotonic() - added)
            return True
        time.sleep(0.2)
        return False

    wait_for(even_batch, SLOW_START + 15, "the new endpoint's share to reach half")
    assert full[0] >= SLOW_START / 2, f"full share after {full[0]:.1f} s of a {SLOW_START:g} s ramp"
