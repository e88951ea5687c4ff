"""SPIFFE IDs (issue 12, item 4): parse, validate and format as the SPIFFE ID spec and go-spiffe do."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity.errors import BadSpiffeId
from gateway.identity.spiffe import SpiffeId, parse, parse_service_id, service_id, trust_domain_id


@pytest.mark.parametrize(("text", "domain", "path"), [
    ("spiffe://peel.internal/svc/orders", "peel.internal", "/svc/orders"),
    ("spiffe://peel.internal", "peel.internal", ""),
    ("spiffe://example.org/a/B/c-d_e.f", "example.org", "/a/B/c-d_e.f"),
    ("spiffe://td_1-x.y/..a/b..", "td_1-x.y", "/..a/b.."),
])
def test_valid_ids_parse_and_format_back(text: str, domain: str, path: str) -> None:
    found = parse(text)
    assert (found.trust_domain, found.path) == (domain, path)
    assert str(found) == text


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("SPIFFE://peel.internal/svc/a", "scheme"),
    ("https://peel.internal/svc/a", "scheme"),
    ("spiffe:/peel.internal/svc/a", "scheme"),
    ("spiffe://", "trust domain is missing"),
    ("spiffe:///svc/a", "trust domain is missing"),
    ("spiffe://Peel.internal/svc/a", "lowercase"),
    ("spiffe://peel.internal:8443/svc/a", "lowercase"),
    ("spiffe://user@peel.internal/svc/a", "lowercase"),
    ("spiffe://peel.internal/", "trailing slash"),
    ("spiffe://peel.internal/svc/a/", "trailing slash"),
    ("spiffe://peel.internal//a", "empty segments"),
    ("spiffe://peel.internal/svc/./a", "dot segments"),
    ("spiffe://peel.internal/svc/../a", "dot segments"),
    ("spiffe://peel.internal/svc/a%2Fb", "segment"),
    ("spiffe://peel.internal/svc/a?x=1", "segment"),
    ("spiffe://peel.internal/svc/a#frag", "segment"),
    ("spiffe://peel.internal/svc/é", "segment"),
    ("spiffe://" + "a" * 256, "longer than 255"),
    ("spiffe://peel.internal/" + "a" * 2040, "2048 bytes"),
])
def test_invalid_ids_are_refused_with_the_rule(text: str, reason: str) -> None:
    with pytest.raises(BadSpiffeId, match=reason):
        parse(text)


def test_service_ids() -> None:
    assert str(service_id("peel.internal", "orders")) == "spiffe://peel.internal/svc/orders"
    assert parse("spiffe://peel.internal/svc/orders").service == "orders"
    assert parse("spiffe://peel.internal/svc/orders/extra").service is None
    assert parse("spiffe://peel.internal/svc/Orders").service is None  # not a Peel service name
    assert parse("spiffe://peel.internal/ns/orders").service is None
    assert trust_domain_id("peel.internal").service is None
    assert parse_service_id("spiffe://peel.internal/svc/a", "peel.internal").service == "a"
    with pytest.raises(BadSpiffeId, match="not in the trust domain"):
        parse_service_id("spiffe://other.internal/svc/a", "peel.internal")
    with pytest.raises(BadSpiffeId, match="not a service identity"):
        parse_service_id("spiffe://peel.internal/svc")
    for bad in ("", "Orders", "-a", "a/b", "a" * 64):
        with pytest.raises(BadSpiffeId, match="service"):
            service_id("peel.internal", bad)
    with pytest.raises(BadSpiffeId, match="lowercase"):
        service_id("Peel.internal", "orders")


_segment = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@given(st.text(alphabet="abz09._-", min_size=1, max_size=20), st.lists(_segment, max_size=5))
def test_formatting_a_parsed_id_gives_it_back(domain: str, segments: list[str]) -> None:
    text = f"spiffe://{domain}" + "".join(f"/{s}" for s in segments)
    found = parse(text)
    assert str(found) == text
    assert found == SpiffeId(domain, "".join(f"/{s}" for s in segments))


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_is_refused_never_crashes(text: str) -> None:
    try:
        found = parse("spiffe://" + text)
    except BadSpiffeId:
        return
    assert str(found) == "spiffe://" + text
