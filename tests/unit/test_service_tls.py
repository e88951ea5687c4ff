"""A service's upstream TLS in the document (`services[].tls`, `routes.policies.ServiceTls`): what
parses, what is refused with the field, how it prints, and that it reaches every endpoint and the
compiled table."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from routes.compiler import compile_document
from routes.errors import RuleError
from routes.model import Document, Endpoint, Service
from routes.policies import ServiceTls

FULL = {"ca": "/etc/peel/upstream/payments-ca.pem", "client_cert": "/etc/peel/upstream/peel.pem",
        "client_key": "/etc/peel/upstream/peel.key", "server_name": "payments.internal",
        "min_version": "1.3"}


def service(tls: object, endpoints: list[Any] | None = None) -> dict[str, Any]:
    return {"name": "payments", "endpoints": endpoints or ["https://10.0.0.9:8443"], "tls": tls}


def refusal(data: dict[str, Any]) -> RuleError:
    with pytest.raises(RuleError) as info:
        Service.parse(data, "services[0]")
    return info.value


def test_the_full_block_parses_and_prints_back() -> None:
    parsed = Service.parse(service(FULL), "services[0]")
    assert parsed.tls == ServiceTls(**FULL)
    assert parsed.to_dict()["tls"] == FULL
    assert Service.parse(parsed.to_dict(), "services[0]") == parsed


def test_defaults_are_left_out_and_an_empty_block_round_trips() -> None:
    parsed = Service.parse(service({"ca": "/ca.pem", "min_version": "1.2"}), "services[0]")
    assert parsed.to_dict()["tls"] == {"ca": "/ca.pem"}
    empty = Service.parse(service({}), "services[0]")
    assert empty.tls == ServiceTls() and empty.to_dict()["tls"] == {}
    assert Service.parse(empty.to_dict(), "services[0]") == empty
    plain = Service.parse({"name": "orders", "endpoints": ["http://10.0.0.1:80"]}, "services[0]")
    assert plain.tls is None and "tls" not in plain.to_dict()


def test_yaml_export_then_apply_changes_nothing() -> None:
    text = """
services:
  - name: payments
    endpoints: [https://10.0.0.9:8443, {url: "https://10.0.0.10:8443", weight: 3}]
    tls:
      ca: /etc/peel/upstream/payments-ca.pem
      client_cert: /etc/peel/upstream/peel.pem
      client_key: /etc/peel/upstream/peel.key
      server_name: Payments.Internal
      min_version: 1.3
routes:
  - {name: pay, match: {path: /pay}, service: payments}
"""
    doc = Document.parse(yaml.safe_load(text))
    tls = doc.services[0].tls
    # An unquoted 1.3 is a YAML number; the name is lower-cased.
    assert tls is not None and tls.min_version == "1.3" and tls.server_name == "payments.internal"
    exported = yaml.safe_dump(doc.to_dict())
    assert Document.parse(yaml.safe_load(exported)) == doc
    assert doc.to_dict()["services"][0]["tls"]["min_version"] == "1.3"


def test_every_endpoint_and_the_compiled_service_carry_the_policy() -> None:
    doc = Document.parse({"services": [service(FULL, ["https://a:443", "https://b:443"])],
                          "routes": [{"name": "pay", "match": {"path": "/pay"}, "service": "payments"}]})
    tls = ServiceTls(**FULL)
    assert all(e.tls == tls for e in doc.services[0].endpoints)
    compiled = compile_document(doc, 1).services["payments"]
    assert compiled.tls == tls and all(e.tls == tls for e in compiled.endpoints)
    # The printed endpoints say nothing of it (it is printed once, as the service's `tls`).
    assert doc.to_dict()["services"][0]["endpoints"] == ["https://a:443", "https://b:443"]


def test_the_policy_is_part_of_an_endpoints_identity() -> None:
    # Connections pooled under one CA or client certificate are never used under another.
    bare = Endpoint.parse("https://a:443", "e")
    one = Service("s", (bare,), tls=ServiceTls(ca="/one.pem")).endpoints[0]
    two = Service("s", (bare,), tls=ServiceTls(ca="/two.pem")).endpoints[0]
    assert one.url == two.url == bare.url
    assert len({bare, one, two}) == 3
    assert Service("s", (one,)).endpoints[0] == bare  # a service without tls drops it


def test_an_endpoints_hash_agrees_with_its_equality() -> None:
    # made once (the pool looks an endpoint up on every attempt): equal endpoints, whatever their
    # weight, hash alike; the policy and the address make them differ
    light = Endpoint.parse({"url": "https://a:443", "weight": 1}, "e")
    heavy = Endpoint.parse({"url": "https://a:443", "weight": 50}, "e")
    assert light == heavy and hash(light) == hash(heavy) and {light: 1}[heavy] == 1
    other = Endpoint.parse("https://a:8443", "e")
    policy = Service("s", (light,), tls=ServiceTls(ca="/one.pem")).endpoints[0]
    assert len({light, heavy, other, policy}) == 3
    assert hash(Service("s", (policy,)).endpoints[0]) == hash(light)  # the policy dropped again


@pytest.mark.parametrize(("tls", "field", "says"), [
    ({"insecure": True}, "services[payments].tls.insecure", "cannot be turned off"),
    ({"verify": False}, "services[payments].tls.verify", "give the CA"),
    ({"insecure_skip_verify": True}, "services[payments].tls.insecure_skip_verify", "`ca`"),
    ({"ca": "etc/ca.pem"}, "services[payments].tls.ca", "absolute path"),
    ({"ca": "/etc/peel/"}, "services[payments].tls.ca", "absolute path"),
    ({"ca": "/etc/../ca.pem"}, "services[payments].tls.ca", "no . or .."),
    ({"ca": "/etc/ca\n.pem"}, "services[payments].tls.ca", "control characters"),
    ({"ca": ""}, "services[payments].tls.ca", "must not be empty"),
    ({"ca": 7}, "services[payments].tls.ca", "must be a string"),
    ({"client_cert": "relative.pem"}, "services[payments].tls.client_cert", "absolute path"),
    ({"client_key": "/k.pem"}, "services[payments].tls.client_key", "needs client_cert"),
    ({"server_name": "*.internal"}, "services[payments].tls.server_name", "no wildcard"),
    ({"server_name": "pay ments"}, "services[payments].tls.server_name", "DNS name"),
    ({"server_name": "payments:443"}, "services[payments].tls.server_name", "no port"),
    ({"min_version": "1.1"}, "services[payments].tls.min_version", "1.2, 1.3"),
    ({"min_version": 1.0}, "services[payments].tls.min_version", "1.2, 1.3"),
    ({"cipher": "x"}, "services[payments].tls.cipher", "unknown field"),
    ("on", "services[payments].tls", "must be a mapping"),
])
def test_refusals_name_the_field(tls: object, field: str, says: str) -> None:
    error = refusal(service(tls))
    assert error.field == field and says in str(error), str(error)


def test_a_tls_block_needs_https_endpoints_only() -> None:
    error = refusal(service({"ca": "/ca.pem"}, ["https://a:443", "http://b:80"]))
    assert error.field == "services[payments].tls"
    assert "https:// endpoints only" in str(error) and "http://b:80" in str(error)


def test_an_ip_server_name_is_canonical() -> None:
    parsed = Service.parse(service({"server_name": "::FFFF:10.0.0.9"}), "services[0]")
    assert parsed.tls is not None and parsed.tls.server_name == "::ffff:a00:9"
