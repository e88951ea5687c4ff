"""Authorization by identity (issue 12 item 10) and a service's expected identity (item 9): the
policies parse, print themselves back, and the resolve step applies them to the peer."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.asgi import Peer
from gateway.core.settings import DeadlineSettings
from gateway.dataplane.resolve import Incoming, Refusal, Resolution, Resolver
from gateway.policy.deadline import DeadlineRules
from routes.compiler import compile_document
from routes.errors import RuleError
from routes.model import Document
from routes.policies import Authorization

TD = "spiffe://peel.internal/svc"


@pytest.mark.parametrize(("policy", "identity", "allowed"), [
    ({"allow_from": ["billing"]}, f"{TD}/billing", True),
    ({"allow_from": ["billing"]}, "spiffe://other.domain/svc/billing", True),  # a service name: any domain
    ({"allow_from": [f"{TD}/billing"]}, "spiffe://other.domain/svc/billing", False),
    ({"allow_from": ["billing"]}, f"{TD}/payments", False),
    ({"allow_from": ["billing"]}, None, False),
    ({"allow_from": ["billing"]}, f"{TD}/x/svc/billing", False),  # /svc/ must be the whole path head
    ({"deny_from": ["billing"]}, f"{TD}/billing", False),
    ({"deny_from": ["billing"]}, f"{TD}/payments", True),
    ({"deny_from": ["billing"]}, None, True),
    ({"allow_from": ["billing", "payments"], "deny_from": [f"{TD}/billing"]}, f"{TD}/billing", False),
])
def test_allow_and_deny(policy: dict[str, Any], identity: str | None, allowed: bool) -> None:
    assert Authorization.parse(policy, "authorization").allows(identity) is allowed


@pytest.mark.parametrize(("policy", "field"), [
    ({}, "authorization"),
    ({"allow_from": "billing"}, "authorization.allow_from"),
    ({"allow_from": ["Billing"]}, "authorization.allow_from[0]"),
    ({"deny_from": ["spiffe://peel.internal/svc/"]}, "authorization.deny_from[0]"),
    ({"allow_from": ["billing"], "mode": "audit"}, "authorization.mode"),
    ({"allow_from": ["billing"], "allow": ["x"]}, "authorization.allow"),
])
def test_bad_policies_are_refused_naming_the_field(policy: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as caught:
        Authorization.parse(policy, "authorization")
    assert caught.value.field == field


DOCUMENT = {
    "services": [{"name": "echo", "endpoints": ["http://10.0.0.5:8080"]},
                 {"name": "orders", "endpoints": ["https://10.0.0.7:15443"], "identity": f"{TD}/orders",
                  "tls": {"min_version": "1.3"}},
                 {"name": "peer", "endpoints": ["https://10.0.0.8:15443"], "identity": f"{TD}/peer"}],
    "routes": [{"name": "open", "match": {"path_prefix": "/open"}, "service": "echo"},
               {"name": "billing-only", "match": {"path_prefix": "/b"}, "service": "echo",
                "authorization": {"allow_from": ["billing"]}},
               {"name": "dry", "match": {"path_prefix": "/dry"}, "service": "echo",
                "authorization": {"deny_from": ["billing"], "mode": "dry_run"}}],
}


def test_the_document_round_trips_with_both_fields() -> None:
    document = Document.parse(DOCUMENT)
    printed = document.to_dict()
    assert Document.parse(printed) == document
    services = {s["name"]: s for s in printed["services"]}
    assert services["orders"]["identity"] == f"{TD}/orders"
    assert services["orders"]["tls"] == {"min_version": "1.3"}
    assert "tls" not in services["peer"]
    routes = {r["name"]: r for r in printed["routes"]}
    assert routes["dry"]["authorization"] == {"deny_from": ["billing"], "mode": "dry_run"}
    assert "mode" not in routes["billing-only"]["authorization"]


@pytest.mark.parametrize(("service", "field"), [
    ({"name": "s", "endpoints": ["http://10.0.0.1:80"], "identity": f"{TD}/s"}, "services[s].identity"),
    ({"name": "s", "endpoints": ["https://10.0.0.1:80"], "identity": "orders"}, "services[s].identity"),
    ({"name": "s", "endpoints": ["https://10.0.0.1:80"], "identity": "spiffe://peel.internal/orders"},
     "services[s].identity"),
])
def test_a_bad_expected_identity_is_refused(service: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as caught:
        Document.parse({"services": [service]})
    assert caught.value.field == field


TABLE = compile_document(Document.parse(DOCUMENT), 1)
RESOLVER = Resolver(deadlines=DeadlineRules(DeadlineSettings()))


def resolve(path: bytes, peer: Peer | None) -> Resolution | Refusal:
    incoming = Incoming("GET", path, b"", [(b"host", b"gw")], "192.0.2.1", peer=peer)
    return RESOLVER.resolve(TABLE, incoming, 0.0)


def billing(*, strict: bool) -> Peer:
    return Peer(f"{TD}/billing", mtls=True, strict=strict, address="192.0.2.1")


def test_the_resolve_step_applies_the_policy_to_the_peer() -> None:
    assert isinstance(resolve(b"/b", billing(strict=False)), Resolution)
    refused = resolve(b"/b", Peer(None, mtls=False, strict=False, address="192.0.2.1"))
    assert isinstance(refused, Refusal) and refused.status == 403 and refused.code == "forbidden-identity"
    assert "billing-only" in refused.detail and refused.route is not None
    # no peer at all (the public listener): no identity, so an allow list refuses
    assert isinstance(resolve(b"/b", None), Refusal)
    assert isinstance(resolve(b"/open", None), Resolution)


def test_dry_run_passes_and_says_it_would_have_refused() -> None:
    resolved = resolve(b"/dry", billing(strict=True))
    assert isinstance(resolved, Resolution) and resolved.dry_run_denied
    other = resolve(b"/dry", Peer(f"{TD}/payments", mtls=True, strict=True, address="192.0.2.1"))
    assert isinstance(other, Resolution) and not other.dry_run_denied


def test_strict_mode_refuses_a_route_without_a_policy() -> None:
    assert isinstance(resolve(b"/open", billing(strict=False)), Resolution)
    refused = resolve(b"/open", billing(strict=True))
    assert isinstance(refused, Refusal) and refused.code == "forbidden-identity"
