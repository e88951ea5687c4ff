"""Cohorts across hops: the side a request took, carried in W3C `baggage` between trusted gateways. Pure.

    side, seen = carried_side(headers)          # the `peel-side` member a request came with
    headers = strip_members(headers)            # Peel's members gone, every other member kept
    headers = with_side(headers, "to")          # the one `baggage` header sent upstream

The member is `peel-side=to` or `peel-side=from` (https://www.w3.org/TR/baggage/): the side of a
migration that a cohort decision chose for this request at an earlier hop (a beta user's allow or
deny, the sticky percentage bucket). On the next hop's migrated route it stands in for the
percentage bucket (`facade.decision.decide`, reason `carried`), so a user sent to the new `orders`
also reaches the new `payments` when `orders` calls it; the hop's own beta allow/deny lists and its
stage still win (a `legacy` stage never sends anyone to `to`, a `migrated` one sends everyone).

Only Peel's own members are Peel's business: every key that starts with `peel-` in any case
(`PEEL-Side` too: a reader that folds case must not see a forged one). Other members pass
untouched, in order, properties and all. A member is honoured only from a trusted source
(`trusted_source`): an mTLS peer whose identity is in this gateway's trust domain, or a local app on
the outbound listener. From anyone else (the public listener, plaintext or certificate-less
inbound) Peel's members are removed before the request is routed or forwarded.

Hostile input is never an error: a `baggage` header that is not printable ASCII, longer than
`MAX_BAGGAGE` or with more than `MAX_MEMBERS` members carries no side (its Peel members are still
removed); two `peel-side` members that disagree carry none; a value other than `to`/`from` carries
none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from facade.decision import Side

if TYPE_CHECKING:
    from facade.decision import Decision

Headers = list[tuple[bytes, bytes]]

BAGGAGE = b"baggage"
MEMBER = "peel-side"
# every member key with this prefix (any case) is Peel's: honoured when trusted, stripped otherwise
PREFIX = b"peel-"
# W3C baggage limits: 8192 bytes and 180 members per header set (Peel reads at most these)
MAX_BAGGAGE = 8192
MAX_MEMBERS = 180
SIDES: dict[bytes, Side] = {b"to": "to", b"from": "from"}
_MEMBER_BYTES = MEMBER.encode("ascii")


_PRINTABLE = re.compile(rb"[\t\x20-\x7e]*\Z")


def _printable(value: bytes) -> bool:
    return _PRINTABLE.match(value) is not None


def _key(member: bytes) -> bytes:
    """The key of one list member, trimmed (empty when there is none)."""
    return member.split(b"=", 1)[0].split(b";", 1)[0].strip(b" \t")


def _is_peel(member: bytes) -> bool:
    return _key(member).lower().startswith(PREFIX)


def carried_side(headers: Sequence[tuple[bytes, bytes]]) -> tuple[Side | None, bool]:
    """(the side the `peel-side` member names, whether any Peel member is present).

    The side is None when there is no member, when it is malformed, ambiguous (two that differ),
    or when the baggage is past the limits; the flag says whether stripping has work to do.
    """
    values = [value for name, value in headers if name == BAGGAGE]
    if not values or all(PREFIX not in value.lower() for value in values):
        return None, False  # the common case: no member of Peel's at all
    found: Side | None = None
    seen = False
    refused = False  # malformed, ambiguous or past the limits: no side at all
    total = 0
    members = 0
    for value in values:
        total += len(value)
        if not _printable(value):
            refused = True
        for part in value.split(b","):
            if not part.strip(b" \t"):
                continue
            members += 1
            key = _key(part)
            if not key.lower().startswith(PREFIX):
                continue
            seen = True
            if key != _MEMBER_BYTES:  # keys are case-sensitive: `PEEL-Side` is only stripped
                continue
            raw = part.split(b"=", 1)
            side = SIDES.get(raw[1].split(b";", 1)[0].strip(b" \t")) if len(raw) == 2 else None
            if side is None or (found is not None and found != side):
                refused = True
            found = side
    if refused or total > MAX_BAGGAGE or members > MAX_MEMBERS:
        return None, seen
    return found, seen


def strip_members(headers: Headers) -> Headers:
    """`headers` without Peel's baggage members; other members and headers untouched, in order.

    A `baggage` header left empty is dropped. The same list comes back when there was none.
    """
    out: Headers = []
    changed = False
    for name, value in headers:
        if name == BAGGAGE:
            members = value.split(b",")
            kept = [m for m in members if not _is_peel(m)]
            if len(kept) != len(members):
                changed = True
                joined = b",".join(kept).strip(b" \t")
                if not joined.strip(b" \t,"):
                    continue
                value = joined
        out.append((name, value))
    return out if changed else headers


def with_side(headers: Headers, side: Side | None) -> Headers:
    """`headers` with Peel's members replaced by `peel-side=<side>` (None: only removed).

    Every `baggage` header is folded into one (RFC 9110 §5.3: a list header's fields join with
    commas), other members first and in order, Peel's member last.
    """
    others: list[bytes] = []
    out: Headers = []
    for name, value in headers:
        if name == BAGGAGE:
            others.extend(m.strip(b" \t") for m in value.split(b",") if m.strip(b" \t") and not _is_peel(m))
        else:
            out.append((name, value))
    if side is not None:
        others.append(member(side))
    if others:
        out.append((BAGGAGE, b",".join(others)))
    return out


def member(side: Side) -> bytes:
    """The baggage member for `side`: `peel-side=to`."""
    return _MEMBER_BYTES + b"=" + side.encode("ascii")


def trusted_source(listener: str, identity: str | None, mtls: bool, trust_domain: str | None) -> bool:
    """Whether a request's `peel-*` baggage is honoured: from a local app on the outbound listener,
    or from an mTLS peer on the inbound listener whose identity is in `trust_domain`."""
    if listener == "outbound":
        return True
    if listener != "inbound" or not mtls or identity is None or not trust_domain:
        return False
    return identity.startswith(f"spiffe://{trust_domain}/")


# The decisions about this user (a cohort) that the next hop may carry on; "stage" sends everyone
# the same way and says nothing about the user.
COHORT_REASONS = frozenset({"percent", "beta-allow", "beta-deny", "carried"})


def to_carry(decision: Decision | None, split: str, carried: Side | None) -> Side | None:
    """The side to send upstream in `peel-side`: this hop's cohort decision (on a migration whose
    stage splits users: `split` is not "none"), else the trusted side it came with."""
    if decision is not None and split != "none" and decision.reason in COHORT_REASONS:
        return decision.side
    return carried
