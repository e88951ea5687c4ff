"""Revocations and the mesh switch in the document (routes.revocations), and the check the inbound
listener, the dialer and renewal make (gateway.identity.revocation)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from gateway.identity import certs
from gateway.identity.revocation import BACKDATE, leaf_facts, peer_facts, revoked_peer
from routes import changes
from routes.compiler import compile_document
from routes.diff import diff
from routes.errors import RuleError
from routes.model import Document, Route
from routes.revocations import Revocation, Revocations, serial_key
from routes.services import Service

AT = datetime(2026, 12, 3, 18, 0, 0, tzinfo=UTC)
ORDERS = "spiffe://peel.internal/svc/orders"
BASE: dict[str, Any] = {"services": [{"name": "a", "endpoints": ["http://127.0.0.1:1"]}],
                        "routes": [{"name": "r", "match": {"path_prefix": "/a"}, "service": "a"}]}


def doc(**extra: Any) -> Document:
    return Document.parse({**BASE, **extra})


def test_the_document_round_trips_revocations_and_mesh_through_yaml() -> None:
    text = """
services: [{name: a, endpoints: ["http://127.0.0.1:1"]}]
routes: [{name: r, match: {path_prefix: /a}, service: a}]
revocations:
  - {serial: "0A:BC", at: 2026-12-03T19:00:00+01:00, reason: key leaked}
  - {identity: spiffe://peel.internal/svc/orders, at: "2026-12-03T17:00:00Z"}
mesh: {inbound_mtls: strict}
"""
    first = Document.parse(yaml.safe_load(text))
    printed = yaml.safe_dump(first.to_dict())
    again = Document.parse(yaml.safe_load(printed))
    assert again == first and again.to_dict() == first.to_dict()
    assert first.to_dict()["revocations"] == [
        {"identity": ORDERS, "at": "2026-12-03T17:00:00Z"},
        {"serial": "abc", "at": "2026-12-03T18:00:00Z", "reason": "key leaked"}]
    assert first.to_dict()["mesh"] == {"inbound_mtls": "strict"}
    # without them the canonical form is what it was before
    assert set(doc().to_dict()) == {"services", "routes"}
    assert doc(mesh={}).mesh is None and "mesh" not in doc(mesh={}).to_dict()


@pytest.mark.parametrize(("extra", "field"), [
    ({"revocations": [{"at": "2026-12-03T18:00:00Z"}]}, "revocations[0]"),
    ({"revocations": [{"serial": "ab", "identity": ORDERS, "at": "2026-12-03T18:00:00Z"}]}, "revocations[0]"),
    ({"revocations": [{"serial": "xyz", "at": "2026-12-03T18:00:00Z"}]}, "revocations[0].serial"),
    ({"revocations": [{"serial": "ab"}]}, "revocations[0].at"),
    ({"revocations": [{"serial": "ab", "at": "2026-12-03T18:00:00"}]}, "revocations[0].at"),
    ({"revocations": [{"serial": "ab", "at": "yesterday"}]}, "revocations[0].at"),
    ({"revocations": [{"identity": "spiffe://peel.internal/svc/../x", "at": "2026-12-03T18:00:00Z"}]},
     "revocations[0].identity"),
    ({"revocations": [{"identity": "orders", "at": "2026-12-03T18:00:00Z"}]}, "revocations[0].identity"),
    ({"revocations": [{"serial": "ab", "at": "2026-12-03T18:00:00Z", "reason": "a\nb"}]},
     "revocations[0].reason"),
    ({"revocations": [{"serial": "ab", "at": "2026-12-03T18:00:00Z", "who": "me"}]}, "revocations[0].who"),
    ({"revocations": [{"serial": "ab", "at": "2026-12-03T18:00:00Z"},
                      {"serial": "00:AB", "at": "2026-12-03T19:00:00Z"}]}, "revocations[ab].serial"),
    ({"revocations": {"serial": "ab"}}, "revocations"),
    ({"mesh": {"inbound_mtls": "off"}}, "mesh.inbound_mtls"),
    ({"mesh": {"outbound": "strict"}}, "mesh.outbound"),
])
def test_a_wrong_revocation_or_mesh_is_refused_naming_the_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as caught:
        doc(**extra)
    assert caught.value.field == field


def test_edits_of_services_routes_and_migrations_keep_revocations_and_mesh() -> None:
    from facade import transitions

    start = doc(revocations=[{"serial": "ab", "at": "2026-12-03T18:00:00Z"}],
                mesh={"inbound_mtls": "strict"})
    edited = changes.put_service(start, Service.parse({"name": "b", "endpoints": ["http://127.0.0.1:2"]},
                                                      "s"))
    edited = changes.put_route(edited, Route.parse({"name": "r2", "match": {"path": "/b"}, "service": "b"},
                                                   "r"))
    edited = changes.delete_route(edited, "r2")
    edited = transitions.start(edited, "r", "b")
    assert edited.revocations == start.revocations and edited.mesh == start.mesh


def test_the_diff_shows_revocations_and_mesh_so_a_revocation_is_a_change() -> None:
    before = doc()
    after = doc(revocations=[{"identity": ORDERS, "at": "2026-12-03T18:00:00Z", "reason": "gone"}],
                mesh={"inbound_mtls": "permissive"})
    change = diff(before, after)
    assert change and change.summary() == "+1 revocation, ~mesh"
    assert f"+ revocation {{\"identity\": \"{ORDERS}\"" in change.to_text()
    assert change.to_dict()["mesh"] == {"old": {}, "new": {"inbound_mtls": "permissive"}}
    back = diff(after, before)
    assert back.summary() == "-1 revocation, ~mesh"
    assert not diff(after, after)


def test_the_compiled_table_carries_the_revocations_and_the_mode() -> None:
    table = compile_document(doc(revocations=[{"serial": "ab", "at": "2026-12-03T18:00:00Z"}],
                                 mesh={"inbound_mtls": "strict"}), 7)
    assert table.inbound_mtls == "strict"
    assert table.revocations.refuses("AB", None, None) is not None
    plain = compile_document(doc(), 8)
    assert plain.inbound_mtls is None and not plain.revocations


def test_serials_are_compared_in_one_form() -> None:
    assert serial_key("00:0A:bC") == serial_key("0xabc") == serial_key("ABC") == "abc"
    revs = Revocations([Revocation(AT, serial="abc")])
    assert revs.refuses("0ABC", None, None) is not None
    assert revs.refuses("abd", ORDERS, AT) is None


def test_an_identity_is_refused_for_certificates_issued_up_to_the_revocation_only() -> None:
    revs = Revocations([Revocation(AT - timedelta(hours=1), identity=ORDERS),
                        Revocation(AT, identity=ORDERS, reason="again")])
    assert revs.refuses(None, ORDERS, AT - timedelta(days=1)) is not None
    found = revs.refuses(None, ORDERS, AT - timedelta(minutes=30))
    assert found is not None and found.reason == "again"  # the latest revocation of the identity
    assert revs.refuses(None, ORDERS, AT) is not None  # the same second: refused
    assert revs.refuses(None, ORDERS, AT + timedelta(seconds=1)) is None  # joined again afterwards
    assert revs.refuses(None, ORDERS, None) is not None  # issue time unknown: refused
    assert revs.refuses(None, "spiffe://peel.internal/svc/billing", AT - timedelta(days=1)) is None


class FakeTls:
    def __init__(self, cert: dict[str, Any]) -> None:
        self.cert = cert

    def getpeercert(self) -> dict[str, Any]:
        return self.cert


def test_the_peer_check_reads_serial_identity_and_issue_time_of_the_verified_certificate() -> None:
    # getpeercert()'s parsed form, as OpenSSL fills it for a verified certificate
    cert = {"serialNumber": "0ABC", "notBefore": "Dec  3 17:55:00 2026 GMT",
            "subjectAltName": (("URI", ORDERS),)}
    facts = peer_facts(FakeTls(cert))  # type: ignore[arg-type]
    assert facts is not None
    assert (facts.serial, facts.identity, facts.issued) == ("0ABC", ORDERS, AT)
    assert revoked_peer(Revocations([Revocation(AT, identity=ORDERS)]), FakeTls(cert)) is not None  # type: ignore[arg-type]
    assert revoked_peer(Revocations([Revocation(AT - timedelta(seconds=1), identity=ORDERS)]),
                        FakeTls(cert)) is None  # type: ignore[arg-type]
    assert revoked_peer(Revocations([Revocation(AT, serial="abc")]), FakeTls(cert)) is not None  # type: ignore[arg-type]
    # no verified certificate (plaintext, or TLS without one): nothing to refuse
    assert revoked_peer(Revocations([Revocation(AT, serial="abc")]), None) is None
    assert revoked_peer(Revocations([Revocation(AT, serial="abc")]), FakeTls({})) is None  # type: ignore[arg-type]


def test_leaf_facts_match_what_the_ca_issued() -> None:
    from gateway.identity.ca import CertificateAuthority
    from gateway.identity.spiffe import service_id

    assert BACKDATE == certs.BACKDATE
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        ca, _ = CertificateAuthority.init(Path(tmp) / "ca", "peel.internal", now=AT)
        leaf = ca.issue(certs.build_csr(certs.new_key(), service_id("peel.internal", "orders")),
                        "orders", now=AT)
    facts = leaf_facts(leaf)
    assert facts == type(facts)(format(leaf.serial_number, "x"), ORDERS, AT)
