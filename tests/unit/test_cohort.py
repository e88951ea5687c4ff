"""Cohorts across hops (facade.cohort): the `peel-side` baggage member read, stripped and written, who
may carry one, and the decision that honours it (facade.decision)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facade.cohort import (
    MAX_BAGGAGE,
    carried_side,
    member,
    strip_members,
    to_carry,
    trusted_source,
    with_side,
)
from facade.decision import Decision, Facts, decide
from routes.migration import Beta, Migration

TD = "peel.internal"


def bag(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"orders")] + [(b"baggage", v.encode("latin-1")) for v in values]


# -- reading --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "side", "seen"), [
    ((), None, False),
    (("userId=alice",), None, False),
    (("peel-side=to",), "to", True),
    (("peel-side=from",), "from", True),
    (("userId=alice, peel-side=to;prop=1 , x=y",), "to", True),
    (("a=1", "peel-side=to"), "to", True),                      # across header fields
    (("peel-side = to",), "to", True),                           # OWS around '=' (W3C)
    (("PEEL-Side=to",), None, True),                             # another spelling: stripped, not read
    (("peel-side=TO",), None, True),                             # values are exact
    (("peel-side=maybe",), None, True),
    (("peel-side",), None, True),                                # no value
    (("peel-side=to,peel-side=from",), None, True),              # ambiguous
    (("peel-side=to", "peel-side=from"), None, True),
    (("peel-side=to,peel-side=to",), "to", True),                # repeated, not ambiguous
    (("peel-cohort=beta",), None, True),                         # Peel's prefix, unknown member
    (("peel-side=to,caf\xe9=1",), None, True),                   # not ASCII: no side from it
    (("peel-side=to\x7f",), None, True),
])
def test_the_carried_side_is_read_only_when_unambiguous(values: tuple[str, ...], side: str | None,
                                                        seen: bool) -> None:
    assert carried_side(bag(*values)) == (side, seen)


def test_baggage_past_the_limits_carries_no_side() -> None:
    big = "k=" + "v" * MAX_BAGGAGE
    assert carried_side(bag(big + ",peel-side=to")) == (None, True)
    many = ",".join(f"k{i}=v" for i in range(200))
    assert carried_side(bag(many + ",peel-side=to")) == (None, True)


# -- stripping and writing --------------------------------------------------------------------------


def test_stripping_removes_only_peels_members_and_keeps_the_rest_in_order() -> None:
    headers = bag("userId=alice,peel-side=to;p, PEEL-x=1,tenant=t%201;ttl=5", "peel-side=from")
    assert strip_members(headers) == [(b"host", b"orders"),
                                      (b"baggage", b"userId=alice,tenant=t%201;ttl=5")]


def test_stripping_without_peel_members_returns_the_same_list() -> None:
    headers = bag("userId=alice")
    assert strip_members(headers) is headers


def test_writing_folds_baggage_into_one_header_with_peels_member_last() -> None:
    headers = bag("userId=alice, peel-side=from", "tenant=acme")
    assert with_side(headers, "to") == [(b"host", b"orders"),
                                        (b"baggage", b"userId=alice,tenant=acme,peel-side=to")]
    assert with_side(bag("peel-side=to"), None) == [(b"host", b"orders")]
    assert with_side([(b"host", b"x")], "from") == [(b"host", b"x"), (b"baggage", b"peel-side=from")]
    assert member("to") == b"peel-side=to"


_members = st.lists(st.tuples(st.sampled_from(["a", "userId", "peel-side", "PEEL-side", "peel-x", "z"]),
                              st.sampled_from(["to", "from", "1", "x%20y", ""])), max_size=8)


@given(_members, st.sampled_from([None, "to", "from"]))
def test_what_goes_upstream_carries_exactly_the_side_peel_chose(members: list[tuple[str, str]],
                                                                side: str | None) -> None:
    value = ",".join(f"{k}={v}" for k, v in members)
    out = with_side(bag(value) if value else bag(), side)  # type: ignore[arg-type]
    assert carried_side(out) == (side, side is not None)
    others = [f"{k}={v}" for k, v in members if not k.lower().startswith("peel-")]
    sent = [v for n, v in out if n == b"baggage"]
    expected = ",".join(others + ([f"peel-side={side}"] if side else []))
    assert sent == ([expected.encode()] if expected else [])


# -- trust --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("listener", "identity", "mtls", "trusted"), [
    ("outbound", None, False, True),                                   # a local app on this VM
    ("inbound", f"spiffe://{TD}/svc/orders", True, True),              # an mTLS peer of ours
    ("inbound", "spiffe://other.domain/svc/orders", True, False),      # another trust domain
    ("inbound", f"spiffe://{TD}.evil/svc/orders", True, False),        # a prefix is not the domain
    ("inbound", None, True, False),                                    # TLS without a certificate
    ("inbound", None, False, False),                                   # plaintext
    ("inbound", f"spiffe://{TD}/svc/orders", False, False),
    ("public", None, False, False),
])
def test_only_local_apps_and_mtls_peers_of_the_trust_domain_may_carry_a_cohort(
        listener: str, identity: str | None, mtls: bool, trusted: bool) -> None:
    assert trusted_source(listener, identity, mtls, TD) is trusted
    assert trusted_source("inbound", identity, mtls, None) is False


# -- the decision ---------------------------------------------------------------------------------


def migration(stage: str, percent: float = 0, **beta: list[str]) -> Migration:
    return Migration(to="payments-v2", stage=stage, share=round(percent * 100),
                     beta=Beta(header="X-Beta-User", **beta) if beta else None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("stage", "percent", "carried", "user", "side", "reason"), [
    ("canary", 0, "to", None, "to", "carried"),        # the edge's choice wins over this bucket
    ("canary", 100, "from", None, "from", "carried"),
    ("canary", 0, None, None, "from", "percent"),
    ("canary", 0, "from", "ada", "to", "beta-allow"),  # this hop's own lists come first
    ("canary", 100, "to", "bob", "from", "beta-deny"),
    ("legacy", 0, "to", None, "from", "stage"),        # `to` is not open yet
    ("migrated", 0, "from", None, "to", "stage"),      # everyone goes to `to`
])
def test_a_carried_side_stands_in_for_the_percentage_bucket(stage: str, percent: float, carried: str | None,
                                                            user: str | None, side: str, reason: str) -> None:
    m = migration(stage, percent, allow=["ada"], deny=["bob"])
    decision = decide(m, Facts("key", user, "GET", carried), "salt")  # type: ignore[arg-type]
    assert (decision.side, decision.reason) == (side, reason)


@pytest.mark.parametrize(("decision", "split", "carried", "out"), [
    (Decision("to", "beta-allow"), "percent", None, "to"),
    (Decision("from", "percent"), "percent", None, "from"),
    (Decision("to", "carried"), "percent", "to", "to"),
    (Decision("to", "stage"), "all", "from", "from"),     # a stage says nothing of the user: pass on
    (Decision("to", "stage"), "all", None, None),
    (Decision("from", "beta-deny"), "none", None, None),  # legacy: no cohort to speak of
    (None, "none", "to", "to"),                           # no migration here: pass on
])
def test_the_side_sent_upstream(decision: Decision | None, split: str, carried: str | None,
                                out: str | None) -> None:
    assert to_carry(decision, split, carried) == out  # type: ignore[arg-type]
