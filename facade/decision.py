"""The facade decision: which side of a migration answers a request. Pure.

    decide(migration, facts, salt, rand, now) -> Decision
    decide_request(compiled, headers, client, method, beta_users, rand, now) -> Decision

`facts` are what the proxy read from the request (the cohort key, the trusted beta user, the
method and whether a body was buffered). The stage's behaviour comes from its `StagePolicy`, so a
new stage is a new row in `routes.migration.STAGES`, not a branch in the proxy. `rand` and `now` are
injected for the stages that sample or expire (a shadow percentage, timed rules); the stages of
today are deterministic, which is what makes the canary sticky.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from facade.bucketing import in_share
from routes.migration import FULL_SHARE, CompiledMigration, Headers, Migration

Side = Literal["to", "from"]
# Why a request went where it went: for tests, `peel match` and the access log.
Reason = Literal["stage", "percent", "beta-allow", "beta-deny", "carried"]
# Trusted beta users of one request, by source: ("header", b"x-beta-user") or ("cookie", "beta").
BetaUsers = Mapping[tuple[str, bytes | str], str]
NO_USERS: BetaUsers = {}


@dataclass(frozen=True, slots=True)
class Facts:
    """What the decision needs from one request.

    `key` is the cohort key (header or cookie value, else the client address); `beta_user` is the
    beta user id only when the value was trusted (`facade.beta`), else None; `carried` the side an
    earlier hop chose for this request, from a trusted source only (`facade.cohort`), else None.
    """

    key: str
    beta_user: str | None = None
    method: str = "GET"
    carried: Side | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Which side answers, and whether `from` may answer when `to` fails.

    `fallback`: a failure of `to` may be answered by `from` (the method is checked by the proxy,
    which also knows whether the body fitted). `count_misses`: a failure of `to` that `from` would
    have answered is counted as a retired miss. `shadow`: a copy goes to `to` to be compared
    (stage shadow: sampled by its percentage, always for a beta user on the allow-list).
    """

    side: Side
    reason: Reason
    fallback: bool = False
    count_misses: bool = False
    shadow: bool = False


def decide(migration: Migration, facts: Facts, salt: str,
           rand: Callable[[], float] | None = None, now: float = 0.0) -> Decision:
    """Decide for one request. `salt` is the migration's salt (the route name by default)."""
    policy = migration.policy
    beta = migration.beta
    user = facts.beta_user
    if user is not None and beta is not None:
        if policy.deny and user in beta.deny:
            return Decision("from", "beta-deny")
        if policy.split != "none" and user in beta.allow:
            return Decision("to", "beta-allow", policy.fallback, policy.counts_misses)
    if policy.shadow:
        # `from` answers; the beta allow-list is shadowed always, the others per the percentage
        # (per request, not sticky: a sample of the traffic, not of the users).
        if user is not None and beta is not None and user in beta.allow:
            return Decision("from", "beta-allow", shadow=True)
        share = migration.shadow_spec.share
        draw = (rand or random.random)()
        return Decision("from", "percent", shadow=draw * FULL_SHARE < share)
    if policy.split == "none":
        return Decision("from", "stage")
    if policy.split == "all":
        return Decision("to", "stage", policy.fallback, policy.counts_misses)
    # The side an earlier hop chose stands in for this hop's percentage bucket (beta lists and the
    # stage came first), so a request stays on one side across the services it crosses.
    if facts.carried == "to":
        return Decision("to", "carried", policy.fallback, policy.counts_misses)
    if facts.carried == "from":
        return Decision("from", "carried")
    if in_share(salt, facts.key, migration.share):
        return Decision("to", "percent", policy.fallback, policy.counts_misses)
    return Decision("from", "percent")


def decide_request(migration: CompiledMigration, headers: Headers, client: str | None, method: str,
                   beta_users: BetaUsers = NO_USERS, rand: Callable[[], float] | None = None,
                   now: float = 0.0, carried: Side | None = None) -> Decision:
    """Which side of a compiled migration answers this request (`beta_users`: trusted values only;
    `carried`: the side a trusted earlier hop chose)."""
    source = migration.beta_source
    user = beta_users.get(source) if source is not None else None
    return decide(migration.spec, Facts(migration.cohort_key(headers, client), user, method, carried),
                  migration.salt, rand, now)
