"""Cohorts across hops and the dependency graph, through `ProxyApp` on the fake dial seam: which side
a carried `peel-side` reaches by listener and peer, what baggage goes upstream, and the edge each
request leaves in the graph (docs/east-west.md)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.core.asgi import LISTENER, PEER, Peer
from gateway.core.settings import FacadeSettings, ProxySettings, Settings
from gateway.dataplane.proxy import ProxyApp
from gateway.telemetry.graph import EXTERNAL, EdgeCounts
from gateway.upstream.pool import UpstreamPool
from routes.compiler import compile_document
from routes.holder import TableHolder
from routes.model import Document
from tests.dataplane.conftest import TEST_TIMEOUT
from tests.fakes.asgi import asgi_request
from tests.fakes.upstream import FakeDialer, FakeUpstream, echo, status

OLD, NEW = "http://payments:80", "http://payments-v2:80"
ORDERS = "spiffe://peel.internal/svc/orders"
SELF = "spiffe://peel.internal/svc/checkout"


def document(percent: float = 0, stage: str = "canary") -> dict[str, Any]:
    return {
        "services": [{"name": "payments", "endpoints": [OLD]}, {"name": "payments-v2", "endpoints": [NEW]}],
        "routes": [{"name": "payments", "match": {"path_prefix": "/pay"}, "service": "payments",
                    "migration": {"to": "payments-v2", "stage": stage, "percent": percent,
                                  "beta": {"header": "X-Beta-User", "allow": ["ada"]}}}],
    }


class Hop:
    """One gateway's data plane with a graph, on fake upstreams that echo what they got."""

    def __init__(self, doc: dict[str, Any], new: Any = None) -> None:
        holder = TableHolder()
        holder.swap(compile_document(Document.parse(doc), 1))
        self.dialer = FakeDialer()
        self.old = self.dialer.add(OLD, echo())
        self.new = self.dialer.add(NEW, new or echo())
        settings = Settings(proxy=ProxySettings(connect_timeout=1.0, response_timeout=5.0, idle_timeout=5.0),
                            facade=FacadeSettings(trusted_networks=("127.0.0.1/32",)))
        self.pool = UpstreamPool(settings.proxy, dialer=self.dialer)
        self.graph = EdgeCounts(local=SELF)
        self.app = ProxyApp(holder, self.pool, settings, graph=self.graph)

    async def send(self, headers: dict[str, str], *, listener: str | None = None,
                   peer: Peer | None = None) -> FakeUpstream:
        """One GET /pay; the upstream that got it."""
        app = self.app
        async def with_extensions(scope: Any, receive: Any, send: Any) -> None:
            if listener is not None:
                scope["extensions"][LISTENER] = listener
            if peer is not None:
                scope["extensions"][PEER] = peer
            await app(scope, receive, send)
        before = (self.old.count(), self.new.count())
        r = await asgi_request(with_extensions, "GET", "/pay", headers=headers)
        assert r.status in (200, 500), r.status
        return self.new if self.new.count() > before[1] else self.old

    def run(self, test: Any) -> None:
        async def whole() -> None:
            try:
                await asyncio.wait_for(test(), TEST_TIMEOUT)
            finally:
                await self.pool.close()
        asyncio.run(whole())


def baggage(upstream: FakeUpstream) -> str | None:
    return upstream.requests[-1].header("baggage")


def test_the_edge_writes_the_side_it_chose_for_a_beta_user_into_baggage() -> None:
    hop = Hop(document(percent=0))

    async def go() -> None:
        up = await hop.send({"X-Beta-User": "ada", "baggage": "userId=ada"})
        assert up is hop.new
        assert baggage(up) == "userId=ada,peel-side=to"
        up = await hop.send({"baggage": "userId=bob"})  # outside the 0 % bucket
        assert up is hop.old
        assert baggage(up) == "userId=bob,peel-side=from"
    hop.run(go)


def test_a_client_on_the_public_listener_cannot_pick_its_cohort() -> None:
    hop = Hop(document(percent=0))

    async def go() -> None:
        up = await hop.send({"baggage": "peel-side=to, userId=eve, PEEL-Side=to"})
        assert up is hop.old
        # its own members are gone; the side Peel chose is what travels on
        assert baggage(up) == "userId=eve,peel-side=from"
        assert hop.app.resolver.cohort_stripped == 1
    hop.run(go)


def test_a_local_app_on_the_outbound_listener_carries_the_side_to_the_next_service() -> None:
    hop = Hop(document(percent=0))

    async def go() -> None:
        up = await hop.send({"baggage": "userId=ada,peel-side=to"}, listener="outbound")
        assert up is hop.new
        assert baggage(up) == "userId=ada,peel-side=to"
        # and `from` keeps a user on `from` even where the bucket would say `to`
        hop100 = Hop(document(percent=100))
        up = await hop100.send({"baggage": "peel-side=from"}, listener="outbound")
        assert up is hop100.old
        await hop100.pool.close()
    hop.run(go)


def test_an_inbound_peer_is_trusted_only_with_mtls_and_an_identity_of_the_trust_domain() -> None:
    hop = Hop(document(percent=0))
    cases = [
        (Peer(ORDERS, mtls=True, strict=False, address="10.0.0.7"), True),
        (Peer("spiffe://other.domain/svc/orders", mtls=True, strict=False, address="10.0.0.8"), False),
        (Peer(None, mtls=True, strict=False, address="10.0.0.9"), False),        # no certificate
        (Peer(None, mtls=False, strict=False, address="10.0.0.10"), False),      # plaintext
    ]

    async def go() -> None:
        for peer, honoured in cases:
            up = await hop.send({"baggage": "peel-side=to"}, peer=peer)
            assert (up is hop.new) is honoured, peer.source
            assert baggage(up) == ("peel-side=to" if honoured else "peel-side=from")
    hop.run(go)


def test_a_stage_passes_a_trusted_side_on_without_deciding_about_the_user() -> None:
    hop = Hop(document(stage="migrated"))

    async def go() -> None:
        up = await hop.send({"baggage": "peel-side=from"}, listener="outbound")
        assert up is hop.new  # migrated: everyone on `to` here
        assert baggage(up) == "peel-side=from"  # the user's cohort goes on to the next hop
        up = await hop.send({})
        assert baggage(up) is None  # nothing about the user to carry
    hop.run(go)


def test_every_request_leaves_its_edge_in_the_graph() -> None:
    hop = Hop(document(percent=0), new=status(500))  # not a fallback status: `to` answers it

    async def go() -> None:
        await hop.send({"X-Beta-User": "ada"})                              # public -> payments-v2, 500
        await hop.send({}, listener="outbound")                             # this VM -> payments
        await hop.send({}, peer=Peer(ORDERS, mtls=True, strict=False, address="10.0.0.7"))
        edges = hop.graph.take()
        assert edges[("public", EXTERNAL, "payments-v2")][:2] == [1, 1]
        assert edges[("outbound", SELF, "payments")][:2] == [1, 0]
        assert edges[("inbound", ORDERS, "payments")][:2] == [1, 0]
    hop.run(go)
