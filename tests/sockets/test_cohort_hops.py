"""Cohorts across hops and the dependency graph between two real `peel serve` processes with mTLS
(docs/east-west.md): the edge gateway sends a beta user to `to` and says so in `baggage`; the next
gateway honours that from its mTLS peer, and ignores the same member from its public listener and
from plaintext on its inbound listener; each gateway's graph shows the edge it served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.identity.ca import CertificateAuthority
from tests.access_log import records
from tests.sockets.conftest import wait_for
from tests.sockets.serve_harness import PeelServe, free_port
from tests.sockets.test_mtls import TD, write_identity
from tests.sockets.upstreams import ScriptedUpstream


@dataclass
class Hops:
    edge: PeelServe
    edge_token: str
    second: PeelServe
    second_token: str
    inbound_port: int
    legacy: ScriptedUpstream   # the edge's `from`
    old: ScriptedUpstream      # the second hop's `from`
    new: ScriptedUpstream      # the second hop's `to`


def canary(name: str, from_service: str, to_service: str, beta: bool = False) -> dict[str, object]:
    migration: dict[str, object] = {"to": to_service, "stage": "canary", "percent": 0}
    if beta:
        migration["beta"] = {"header": "X-Beta-User", "allow": ["ada"]}
    return {"name": name, "match": {"path_prefix": "/pay"}, "service": from_service,
            "migration": migration}


@pytest.fixture(scope="module")
def hops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hops]:
    tmp: Path = tmp_path_factory.mktemp("hops")
    ca, _ = CertificateAuthority.init(tmp / "ca", TD, now=datetime.now(UTC))
    upstreams = [ScriptedUpstream(), ScriptedUpstream(), ScriptedUpstream()]
    for upstream in upstreams:
        upstream.start()
    legacy, old, new = upstreams
    started: list[PeelServe] = []
    try:
        # the second hop: payments' gateway, inbound listener permissive, a 0 % canary old -> new
        (tmp / "second").mkdir()
        second_id = write_identity(ca, tmp / "second" / "identity", "payments")
        port = free_port()
        second = PeelServe(tmp / "second", extra_settings=(
            f'[listeners.inbound]\nbind = "127.0.0.1:{port}"\nmtls = "permissive"\n'
            f'[identity]\nstate_dir = "{second_id.directory}"\ntrust_domain = "{TD}"\n'))
        second_token = second.upgrade_with_token()
        second.commit({"services": [{"name": "payments", "endpoints": [old.url]},
                                    {"name": "payments-v2", "endpoints": [new.url]}],
                       "routes": [canary("pay", "payments", "payments-v2")]})
        started.append(second.start())
        # the edge: a 0 % canary whose `to` is the second gateway's inbound listener (mTLS), beta
        # users by header from loopback
        (tmp / "edge").mkdir()
        edge_id = write_identity(ca, tmp / "edge" / "identity", "edge")
        edge = PeelServe(tmp / "edge", extra_settings=(
            f'[identity]\nstate_dir = "{edge_id.directory}"\ntrust_domain = "{TD}"\n'
            '[facade]\ntrusted_networks = ["127.0.0.1/32"]\n'))
        edge_token = edge.upgrade_with_token()
        edge.commit({"services": [{"name": "legacy", "endpoints": [legacy.url]},
                                  {"name": "payments", "endpoints": [f"https://127.0.0.1:{port}"],
                                   "identity": f"spiffe://{TD}/svc/payments"}],
                     "routes": [canary("pay", "legacy", "payments", beta=True)]})
        started.append(edge.start())
        yield Hops(edge, edge_token, second, second_token, port, legacy, old, new)
    finally:
        for peel in started:
            peel.stop()
        for upstream in upstreams:
            upstream.stop()


def reached(hops: Hops, send: object) -> tuple[str, str | None]:
    """Which upstream got the request `send()` makes, and the baggage it got."""
    before = {name: len(u.seen) for name, u in (("legacy", hops.legacy), ("old", hops.old),
                                                 ("new", hops.new))}
    status = send()  # type: ignore[operator]
    assert status == 200, status
    for name, upstream in (("legacy", hops.legacy), ("old", hops.old), ("new", hops.new)):
        if len(upstream.seen) > before[name]:
            return name, upstream.seen[-1].header("baggage")
    raise AssertionError("no upstream got the request")


def test_a_beta_user_stays_on_the_new_side_across_both_hops(hops: Hops) -> None:
    def beta() -> int:
        return hops.edge.get("/pay/1", headers={"X-Beta-User": "ada", "baggage": "userId=ada"})[0]
    # the edge chose `to` for ada; the second hop's 0 % canary would say `from` but honours the peer
    assert reached(hops, beta) == ("new", "userId=ada,peel-side=to")

    def other() -> int:
        return hops.edge.get("/pay/2", headers={"baggage": "userId=bob"})[0]
    assert reached(hops, other) == ("legacy", "userId=bob,peel-side=from")


def test_the_second_hop_ignores_a_cohort_from_its_public_listener_and_from_plaintext(hops: Hops) -> None:
    def public() -> int:
        return hops.second.get("/pay/3", headers={"baggage": "peel-side=to,userId=eve"})[0]
    assert reached(hops, public) == ("old", "userId=eve,peel-side=from")

    def plaintext() -> int:
        return hops.second.get("/pay/4", port=hops.inbound_port, headers={"baggage": "peel-side=to"})[0]
    assert reached(hops, plaintext) == ("old", "peel-side=from")


def test_each_gateway_graphs_the_edges_it_served(hops: Hops) -> None:
    hops.edge.get("/pay/5", headers={"X-Beta-User": "ada"})

    def edges(peel: PeelServe, token: str) -> dict[tuple[str, str], dict[str, object]]:
        status, body = peel.admin_get("/api/v1/graph?window=5m", token)
        assert status == 200, body
        return {(e["source"], e["destination"]): e for e in json.loads(body)["edges"]}

    wait_for(lambda: ("external", "payments") in edges(hops.edge, hops.edge_token), 20,
             "the edge's public edge flushed")
    wait_for(lambda: ("edge", "payments-v2") in edges(hops.second, hops.second_token), 20,
             "the second hop's inbound edge flushed")
    seen = edges(hops.second, hops.second_token)[("edge", "payments-v2")]
    assert seen["identity"] == f"spiffe://{TD}/svc/edge"
    assert seen["observed_by"] == ["inbound"]
    assert seen["expected"] is False  # no allow_from names the edge gateway: unexpected
    assert edges(hops.edge, hops.edge_token)[("external", "payments")]["expected"] is None
    # `peel graph` says so, and exits 1 while an edge is unexpected
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    env.update(PEEL_ADMIN_URL=f"http://127.0.0.1:{hops.second.admin_port}",
               PEEL_ADMIN_TOKEN=hops.second_token)
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "graph", "--window", "5m"], env=env,
                          text=True, capture_output=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert any(line.split()[:2] == ["edge", "payments-v2"] and line.endswith("UNEXPECTED")
               for line in done.stdout.splitlines()), done.stdout
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "graph", "--format", "dot"], env=env,
                          text=True, capture_output=True, timeout=60)
    assert done.stdout.startswith("digraph peel {") and '"edge" -> "payments-v2"' in done.stdout


def test_the_hop_between_the_gateways_is_mtls_with_the_edges_identity(hops: Hops) -> None:
    assert hops.edge.get("/pay/6", headers={"X-Beta-User": "ada"})[0] == 200

    def peers() -> set[str | None]:
        log = records(hops.second.tmp / "access.log")
        return {line.get("peer") for line in log if line["path"] == "/pay/6"}
    wait_for(lambda: peers() == {f"spiffe://{TD}/svc/edge"}, 10, "the access log line of /pay/6")
