"""The migration of a route as a value: stage, share, cohort, beta users and fallback policy.

A migration lives inside its route in the declarative document:

    routes:
      - name: orders
        match: {path_prefix: /orders}
        service: legacy                 # the `from` service
        migration:
          to: orders
          stage: canary                 # legacy | shadow | canary | migrated | retired
          percent: 10                   # 0-100, to 0.01
          cohort: {header: X-User-Id}   # or {cookie: session}; absent key -> client address
          salt: orders                  # default: the route name
          beta: {header: X-Beta-User, allow: [alice], deny: [bob]}
          fallback: {statuses: [404, 501, 502, 503], on_error: true, max_body: 65536,
                     unsafe_methods: false}
          shadow: {percent: 20, baseline_percent: 5, unsafe_methods: false,
                   sandbox: "http://10.0.0.9:8080", max_body: 1048576, timeout: 5s,
                   concurrency: 8, queue: 128, compare: {headers: [etag], ignore: {...}}}

`Migration.parse` validates everything that needs only the migration itself and raises `RuleError`
naming the field; the route checks the cross-references (`to` names a service other than the
route's own). `to_dict()` prints the canonical form, defaults left out, so export then apply
changes nothing. What each stage does is data (`STAGES`), read by `facade.decision`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from routes.compare_rules import CompareRules
from routes.errors import RuleError
from routes.fields import duration, format_duration, integer, mapping, type_name
from routes.grammar import IDEMPOTENT_METHODS, TOKEN_RE, cookie_value, header_value
from routes.services import Endpoint

if TYPE_CHECKING:
    from routes.guard_spec import GuardPolicy
    from routes.table import CompiledService

Split = Literal["none", "percent", "all"]
# The share of users is kept in basis points (1/100 of a percent): percentages to 0.01 are exact.
FULL_SHARE = 10_000
# Cookie names are tokens too (RFC 6265); user ids are visible ASCII without spaces or commas.
USER_RE = re.compile(r"^[\x21-\x2b\x2d-\x7e]{1,200}$")
DEFAULT_STATUSES = (404, 501, 502, 503)
DEFAULT_MAX_BODY = 65_536
MAX_BODY_LIMIT = 16 * 1024 * 1024
# The methods a shadow copies by default: they change nothing on `to` (RFC 9110 9.2.1).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class StagePolicy:
    """What a stage does with a request; `facade.decision` reads only this, never the stage name.

    `split`: who gets `to` — nobody, the percentage of users (and the beta allow-list), or all.
    `deny`: the deny list keeps users on `from`. `fallback`: a failing `to` is answered by `from`.
    `counts_misses`: a request that would have needed `from` is counted (retired).
    `shadow`: `from` answers and a sampled copy goes to `to` to be compared (`ShadowSpec`).
    """

    name: str
    split: Split
    deny: bool
    fallback: bool
    counts_misses: bool = False
    shadow: bool = False


# The stages in lifecycle order.
STAGES: Mapping[str, StagePolicy] = {
    "legacy": StagePolicy("legacy", "none", deny=True, fallback=False),
    "shadow": StagePolicy("shadow", "none", deny=True, fallback=False, shadow=True),
    "canary": StagePolicy("canary", "percent", deny=True, fallback=True),
    "migrated": StagePolicy("migrated", "all", deny=True, fallback=True),
    "retired": StagePolicy("retired", "all", deny=False, fallback=False, counts_misses=True),
}


def _token(value: object, where: str, what: str) -> str:
    if not isinstance(value, str) or not TOKEN_RE.match(value):
        raise RuleError(where, f"must be a {what} name", value)
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise RuleError(where, "must be true or false", value)
    return value


def _key_source(m: Mapping[str, Any], where: str) -> tuple[str | None, str | None]:
    """`{header: H}` or `{cookie: C}` (at most one); header names are kept as written."""
    if "header" in m and "cookie" in m:
        raise RuleError(f"{where}.cookie", "only one of header or cookie may be given")
    header = _token(m["header"], f"{where}.header", "header") if "header" in m else None
    cookie = _token(m["cookie"], f"{where}.cookie", "cookie") if "cookie" in m else None
    return header, cookie


def parse_percent(value: object, where: str) -> int:
    """A percentage 0-100 with at most two decimals, as basis points."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(where, f"must be a number from 0 to 100, not {type_name(value)}", value)
    if not 0 <= value <= 100:
        raise RuleError(where, "must be from 0 to 100", value)
    share = round(value * 100)
    if abs(share - value * 100) > 1e-6:
        raise RuleError(where, "may have at most two decimals", value)
    return share


def format_percent(share: int) -> int | float:
    """Basis points back to the percentage as written: 1000 -> 10, 1250 -> 12.5."""
    return share // 100 if share % 100 == 0 else share / 100


@dataclass(frozen=True, slots=True)
class Cohort:
    """Where the sticky bucketing key comes from; neither given: the client address."""

    header: str | None = None
    cookie: str | None = None

    @classmethod
    def parse(cls, data: object, where: str) -> Cohort:
        return cls(*_key_source(mapping(data, where, ("header", "cookie")), where))

    def __bool__(self) -> bool:
        return self.header is not None or self.cookie is not None

    def to_dict(self) -> dict[str, Any]:
        return {"header": self.header} if self.header is not None else \
            {"cookie": self.cookie} if self.cookie is not None else {}


@dataclass(frozen=True, slots=True)
class Beta:
    """Beta users named by a header or cookie (trusted sources only): allow-list and deny-list."""

    header: str | None = None
    cookie: str | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: object, where: str) -> Beta:
        m = mapping(data, where, ("header", "cookie", "allow", "deny"))
        header, cookie = _key_source(m, where)
        if header is None and cookie is None:
            raise RuleError(where, "needs a header or a cookie that carries the user id", dict(m))
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("allow", "deny"):
            raw = m.get(key, [])
            if not isinstance(raw, list | tuple):
                raise RuleError(f"{where}.{key}", f"must be a list, not {type_name(raw)}", raw)
            users: list[str] = []
            for i, user in enumerate(raw):
                if not isinstance(user, str) or not USER_RE.match(user):
                    raise RuleError(f"{where}.{key}[{i}]", "must be a user id: 1-200 visible ASCII "
                                    "characters without spaces or commas", user)
                if user in users:
                    raise RuleError(f"{where}.{key}[{i}]", "is listed twice", user)
                users.append(user)
            lists[key] = tuple(sorted(users))
        both = set(lists["allow"]) & set(lists["deny"])
        if both:
            raise RuleError(f"{where}.deny", "names users that allow names too", sorted(both))
        return cls(header, cookie, lists["allow"], lists["deny"])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"header": self.header} if self.header is not None else \
            {"cookie": self.cookie}
        if self.allow:
            out["allow"] = list(self.allow)
        if self.deny:
            out["deny"] = list(self.deny)
        return out


@dataclass(frozen=True, slots=True)
class Fallback:
    """When `to` fails, answer from `from`: on these statuses, on connect errors and timeouts.

    A request with a body falls back only when the body fitted in `max_body` bytes (it is buffered
    before going to `to`) and the method is idempotent, or `unsafe_methods` allows any method.
    """

    statuses: tuple[int, ...] = DEFAULT_STATUSES
    on_error: bool = True
    max_body: int = DEFAULT_MAX_BODY
    unsafe_methods: bool = False

    @classmethod
    def parse(cls, data: object, where: str) -> Fallback:
        m = mapping(data, where, ("statuses", "on_error", "max_body", "unsafe_methods"))
        statuses = DEFAULT_STATUSES
        if "statuses" in m:
            raw = m["statuses"]
            if not isinstance(raw, list | tuple):
                raise RuleError(f"{where}.statuses", f"must be a list, not {type_name(raw)}", raw)
            for i, status in enumerate(raw):
                if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
                    raise RuleError(f"{where}.statuses[{i}]", "must be an HTTP status from 200 to 599",
                                    status)
            statuses = tuple(sorted(set(raw)))
        max_body = m.get("max_body", DEFAULT_MAX_BODY)
        if isinstance(max_body, bool) or not isinstance(max_body, int) or \
                not 0 <= max_body <= MAX_BODY_LIMIT:
            raise RuleError(f"{where}.max_body", f"must be a byte count from 0 to {MAX_BODY_LIMIT}",
                            max_body)
        return cls(statuses, _bool(m.get("on_error", True), f"{where}.on_error"), max_body,
                   _bool(m.get("unsafe_methods", False), f"{where}.unsafe_methods"))

    def allows_method(self, method: str) -> bool:
        """Whether a request of this method may be replayed on `from` (its body checked apart).

        Safe and idempotent methods may; others (POST, PATCH) only with `unsafe_methods`, because
        `to` may have acted on the request before it failed.
        """
        return method in IDEMPOTENT_METHODS or self.unsafe_methods

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.statuses != DEFAULT_STATUSES:
            out["statuses"] = list(self.statuses)
        if not self.on_error:
            out["on_error"] = False
        if self.max_body != DEFAULT_MAX_BODY:
            out["max_body"] = self.max_body
        if self.unsafe_methods:
            out["unsafe_methods"] = True
        return out


SHADOW_MAX_BODY = 1 << 20
SHADOW_TIMEOUT = 5.0
SHADOW_CONCURRENCY = 8
SHADOW_QUEUE = 128
SHADOW_FIELDS = ("percent", "baseline_percent", "unsafe_methods", "sandbox", "max_body", "timeout",
                 "concurrency", "queue", "compare")


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    """The shadow stage of a migration: `from` answers, a sampled copy goes to `to` and is compared.

    `share`: requests copied to `to`, basis points (default all); `baseline_share`: of those, also
    sent a second time to `from` (the noise baseline, safe methods only; default none).
    `unsafe_methods`: copy methods other than GET, HEAD and OPTIONS to `to` itself; a `sandbox`
    endpoint takes the copies of those methods instead (and allows them). `max_body`: request and
    response bodies are copied up to this many bytes (larger: skipped and counted). `timeout`,
    `concurrency` and `queue` bound the copies of each gateway process per route.
    """

    share: int = FULL_SHARE
    baseline_share: int = 0
    unsafe_methods: bool = False
    sandbox: Endpoint | None = None
    max_body: int = SHADOW_MAX_BODY
    timeout: float = SHADOW_TIMEOUT
    concurrency: int = SHADOW_CONCURRENCY
    queue: int = SHADOW_QUEUE
    compare: CompareRules = field(default_factory=CompareRules)

    @classmethod
    def parse(cls, data: object, where: str) -> ShadowSpec:
        m = mapping(data, where, SHADOW_FIELDS)
        sandbox = Endpoint.parse(m["sandbox"], f"{where}.sandbox") if "sandbox" in m else None
        if sandbox is not None and sandbox.weight != 1:
            raise RuleError(f"{where}.sandbox", "takes a URL only (no weight)", m["sandbox"])
        return cls(
            parse_percent(m.get("percent", 100), f"{where}.percent"),
            parse_percent(m.get("baseline_percent", 0), f"{where}.baseline_percent"),
            _bool(m.get("unsafe_methods", False), f"{where}.unsafe_methods"),
            sandbox,
            integer(m.get("max_body", SHADOW_MAX_BODY), f"{where}.max_body", 0, MAX_BODY_LIMIT,
                    "a byte count"),
            duration(m.get("timeout", SHADOW_TIMEOUT), f"{where}.timeout"),
            integer(m.get("concurrency", SHADOW_CONCURRENCY), f"{where}.concurrency", 1, 1000),
            integer(m.get("queue", SHADOW_QUEUE), f"{where}.queue", 1, 100_000),
            CompareRules.parse(m.get("compare", {}), f"{where}.compare"))

    def target(self, method: str) -> str | None:
        """Where a copy of a `method` request goes: "to", "sandbox", or None (not copied)."""
        if method in SAFE_METHODS:
            return "to"
        if self.sandbox is not None:
            return "sandbox"
        return "to" if self.unsafe_methods else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.share != FULL_SHARE:
            out["percent"] = format_percent(self.share)
        if self.baseline_share:
            out["baseline_percent"] = format_percent(self.baseline_share)
        if self.unsafe_methods:
            out["unsafe_methods"] = True
        if self.sandbox is not None:
            out["sandbox"] = self.sandbox.url
        if self.max_body != SHADOW_MAX_BODY:
            out["max_body"] = self.max_body
        if self.timeout != SHADOW_TIMEOUT:
            out["timeout"] = format_duration(self.timeout)
        if self.concurrency != SHADOW_CONCURRENCY:
            out["concurrency"] = self.concurrency
        if self.queue != SHADOW_QUEUE:
            out["queue"] = self.queue
        compare = self.compare.to_dict()
        if compare:
            out["compare"] = compare
        return out


@dataclass(frozen=True, slots=True)
class Migration:
    """The strangling of one route from its `service` (the `from` side) to `to`.

    `share` is the canary percentage in basis points (0-10,000); `salt` None means the route name.
    """

    to: str
    stage: str = "legacy"
    share: int = 0
    cohort: Cohort = field(default_factory=Cohort)
    salt: str | None = None
    beta: Beta | None = None
    fallback: Fallback = field(default_factory=Fallback)
    # None: the defaults when the stage is `shadow`
    shadow: ShadowSpec | None = None
    # the guard's policy (`routes.guard_spec`); None: no guard
    guard: GuardPolicy | None = None

    @property
    def shadow_spec(self) -> ShadowSpec:
        return self.shadow if self.shadow is not None else DEFAULT_SHADOW

    @property
    def policy(self) -> StagePolicy:
        return STAGES[self.stage]

    @property
    def percent(self) -> int | float:
        return format_percent(self.share)

    @classmethod
    def parse(cls, data: object, where: str) -> Migration:
        m = mapping(data, where, ("to", "stage", "percent", "cohort", "salt", "beta", "fallback",
                                  "shadow", "guard"))
        if "to" not in m:
            raise RuleError(f"{where}.to", "is required: the service the route moves to")
        to = m["to"]
        if not isinstance(to, str) or not to:
            raise RuleError(f"{where}.to", "must be a service name", to)
        stage = m.get("stage", "legacy")
        if stage not in STAGES:
            raise RuleError(f"{where}.stage", f"must be one of {', '.join(STAGES)}", stage)
        share = parse_percent(m.get("percent", 0), f"{where}.percent")
        salt = m.get("salt")
        if salt is not None and (not isinstance(salt, str) or not salt or len(salt) > 200):
            raise RuleError(f"{where}.salt", "must be a non-empty string of at most 200 characters",
                            salt)
        beta = Beta.parse(m["beta"], f"{where}.beta") if "beta" in m else None
        shadow = ShadowSpec.parse(m["shadow"], f"{where}.shadow") if "shadow" in m else None
        from routes.guard_spec import GuardPolicy  # here: routes.guard_spec imports this module
        guard = GuardPolicy.parse(m["guard"], f"{where}.guard") if "guard" in m else None
        return cls(to, stage, share, Cohort.parse(m.get("cohort", {}), f"{where}.cohort"), salt, beta,
                   Fallback.parse(m.get("fallback", {}), f"{where}.fallback"), shadow, guard)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"to": self.to, "stage": self.stage}
        if self.share:
            out["percent"] = self.percent
        if self.cohort:
            out["cohort"] = self.cohort.to_dict()
        if self.salt is not None:
            out["salt"] = self.salt
        if self.beta is not None:
            out["beta"] = self.beta.to_dict()
        fallback = self.fallback.to_dict()
        if fallback:
            out["fallback"] = fallback
        if self.shadow is not None:
            out["shadow"] = self.shadow.to_dict()
        if self.guard is not None:
            out["guard"] = self.guard.to_dict()
        return out


DEFAULT_SHADOW = ShadowSpec()

Headers = list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]


class CompiledMigration:
    """The migration of one compiled route, ready for the request path: both services resolved,
    the cohort header lower-cased to bytes, the fallback statuses in a frozenset, the salt chosen.

    Data only: which side answers is `facade.decision.decide_request(...)`, a pure function of this
    and the request's facts.
    """

    __slots__ = ("beta_source", "cohort_cookie", "cohort_header", "fallback", "from_service", "salt",
                 "shadow", "spec", "statuses", "to_service")

    def __init__(self, spec: Migration, route_name: str, from_service: CompiledService,
                 to_service: CompiledService) -> None:
        self.spec = spec
        self.salt = spec.salt if spec.salt is not None else route_name
        self.from_service = from_service
        self.to_service = to_service
        self.cohort_header = spec.cohort.header.lower().encode("ascii") if spec.cohort.header else None
        self.cohort_cookie = spec.cohort.cookie
        beta = spec.beta
        # Where this migration reads its beta user: ("header", b"x-beta-user") or ("cookie", "beta").
        self.beta_source: tuple[str, bytes | str] | None = None
        if beta is not None:
            self.beta_source = ("header", beta.header.lower().encode("ascii")) if beta.header \
                else ("cookie", beta.cookie or "")
        self.fallback: Fallback = spec.fallback
        self.statuses = frozenset(spec.fallback.statuses)
        # the shadow's settings when the stage copies to `to` (None otherwise)
        self.shadow: ShadowSpec | None = spec.shadow_spec if spec.policy.shadow else None

    def cohort_key(self, headers: Headers, client: str | None) -> str:
        """The sticky key: the configured header or cookie, else the downstream address."""
        value: str | None = None
        if self.cohort_header is not None:
            value = header_value(headers, self.cohort_header)
        elif self.cohort_cookie is not None:
            value = cookie_value(headers, self.cohort_cookie)
        return value if value else (client or "")

    def service(self, side: str) -> CompiledService:
        """The service of a side (`"to"` or `"from"`)."""
        return self.to_service if side == "to" else self.from_service
