"""Resilience policies of services and routes, as values (pure).

A service declares how its endpoints are balanced, health-checked, ejected and protected
(`balancer`, `health_check`, `outlier`, `circuit_breaker`) and the default `retries` and `timeouts`
of its routes, and whether request bodies are buffered (`buffering`); a route may override
`retries`, `timeouts` and `buffering` (the whole block) and adds its own `rate_limit`. Durations
are seconds (floats) here; the document also takes "250ms", "5s", "2m".

Every policy has defaults that an operator would expect from a production gateway, chosen so that a
route that declares nothing pays nothing it does not use on the request path.

Each policy reads itself from the document with `Policy.parse(data, where)`, refusing with the
field's path (`services[orders].health_check.interval`) and the value, and prints itself with
`to_dict()`: fields at their default are left out and durations print canonically ("250ms", "5s",
"2m"), so `export` then `apply` changes nothing. `docs/resilience.md` is the reference.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from routes.errors import RuleError
from routes.fields import (
    HOST_RE,
    NAME_RE,
    boolean,
    duration,
    format_duration,
    header_name,
    host_port,
    integer,
    mapping,
    number,
    plain_path,
    sequence,
    string,
)
from routes.grammar import TOKEN_RE

BALANCER_POLICIES = ("ewma", "round_robin", "hash")
# Conditions under which an attempt may be retried (see RetryPolicy).
RETRY_ON = ("connect-failure", "reset", "timeout", "502", "503", "504")
# Upper bounds that catch typos (an extra zero or three) rather than encode a real limit.
MAX_THRESHOLD = 1000
MAX_CONCURRENCY = 1_000_000
MAX_RETRY_BODY = 16 * 1024 * 1024
MAX_RATE = 1_000_000_000
MAX_BUFFER_MEMORY = 16 * 1024 * 1024
MAX_BUFFER_BODY = 16 * 1024 * 1024 * 1024
MAX_RESPONSE_BUFFER = 256 * 1024 * 1024
# Seconds at the start of a request body that `Buffering.min_rate` does not count (a client's first
# bytes, TCP slow start, a radio waking up): by then + n / min_rate, n bytes must be in.
RATE_GRACE = 10.0


def _print(policy: Any, durations: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of a policy that differ from their defaults, as the document writes them."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(policy):
        value = getattr(policy, f.name)
        if value is None or value == f.default:
            continue
        if isinstance(value, HashOn):
            out[f.name] = value.to_dict()
        elif f.name in durations:
            out[f.name] = format_duration(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def _statuses(value: object, where: str, *, empty: bool) -> tuple[int, ...]:
    items = sequence(value, where)
    if not items and not empty:
        raise RuleError(where, "needs at least one status", value)
    out: list[int] = []
    for i, item in enumerate(items):
        status = integer(item, f"{where}[{i}]", 100, 599, "an HTTP status")
        if status in out:
            raise RuleError(f"{where}[{i}]", "is listed twice", item)
        out.append(status)
    return tuple(out)


def _limit(m: Mapping[str, Any], key: str, where: str, default: int, low: int, high: int) -> int:
    return integer(m[key], f"{where}.{key}", low, high) if key in m else default


def _time(m: Mapping[str, Any], key: str, where: str, default: float, *, zero: bool = False) -> float:
    return duration(m[key], f"{where}.{key}", zero=zero) if key in m else default


@dataclass(frozen=True, slots=True)
class HashOn:
    """The key of consistent hashing: exactly one of a header, a cookie or the client address."""

    header: str | None = None
    cookie: str | None = None
    client: bool = False

    @classmethod
    def parse(cls, data: object, where: str) -> HashOn:
        m = mapping(data, where, ("header", "cookie", "client"))
        if len(m) != 1:
            raise RuleError(where, "needs exactly one of header, cookie or client", dict(m))
        if "header" in m:
            return cls(header=header_name(m["header"], f"{where}.header"))
        if "cookie" in m:
            cookie = string(m["cookie"], f"{where}.cookie")
            if not TOKEN_RE.match(cookie):
                raise RuleError(f"{where}.cookie", "is not a valid cookie name", cookie)
            return cls(cookie=cookie)
        if not boolean(m["client"], f"{where}.client"):
            raise RuleError(f"{where}.client", "must be true (give header or cookie instead)", False)
        return cls(client=True)

    def to_dict(self) -> dict[str, Any]:
        if self.header is not None:
            return {"header": self.header}
        if self.cookie is not None:
            return {"cookie": self.cookie}
        return {"client": True}


@dataclass(frozen=True, slots=True)
class Balancer:
    """How a service picks an endpoint.

    `ewma` (default): power of two choices over peak-EWMA latency * (in-flight + 1);
    `round_robin`: smooth weighted round-robin over the endpoints' weights;
    `hash`: consistent hashing (a ring) on `hash_on`, so a key sticks to one endpoint while it lives.
    `slow_start`: seconds over which a new or recovered endpoint's share ramps up (0: off).
    `decay`: the time constant of the latency average, seconds.
    """

    policy: str = "ewma"
    hash_on: HashOn | None = None
    slow_start: float = 0.0
    decay: float = 10.0

    @classmethod
    def parse(cls, data: object, where: str) -> Balancer:
        m = mapping(data, where, ("policy", "hash_on", "slow_start", "decay"))
        policy = string(m.get("policy", "ewma"), f"{where}.policy")
        if policy not in BALANCER_POLICIES:
            raise RuleError(f"{where}.policy", f"must be one of {', '.join(BALANCER_POLICIES)}", policy)
        hash_on = None
        if "hash_on" in m:
            if policy != "hash":
                raise RuleError(f"{where}.hash_on", "is only for policy hash", m["hash_on"])
            hash_on = HashOn.parse(m["hash_on"], f"{where}.hash_on")
        elif policy == "hash":
            raise RuleError(f"{where}.hash_on", "is required by policy hash: give header, cookie "
                            "or client")
        return cls(policy, hash_on, _time(m, "slow_start", where, 0.0, zero=True),
                   _time(m, "decay", where, 10.0))

    def to_dict(self) -> dict[str, Any]:
        return _print(self, ("slow_start", "decay"))


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active HTTP checks of every endpoint of a service (absent: no active checks)."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    statuses: tuple[int, ...] = (200,)
    # the Host header of a check; None: the endpoint's host:port
    host: str | None = None

    @classmethod
    def parse(cls, data: object, where: str) -> HealthCheck:
        m = mapping(data, where, ("path", "interval", "timeout", "healthy_threshold",
                                   "unhealthy_threshold", "statuses", "host"))
        return cls(plain_path(m["path"], f"{where}.path") if "path" in m else "/healthz",
                   _time(m, "interval", where, 5.0), _time(m, "timeout", where, 1.0),
                   _limit(m, "healthy_threshold", where, 2, 1, MAX_THRESHOLD),
                   _limit(m, "unhealthy_threshold", where, 3, 1, MAX_THRESHOLD),
                   _statuses(m["statuses"], f"{where}.statuses", empty=False) if "statuses" in m
                   else (200,),
                   host_port(m["host"], f"{where}.host") if "host" in m else None)

    def to_dict(self) -> dict[str, Any]:
        return _print(self, ("interval", "timeout"))


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive ejection: an endpoint that fails in a row is left out for a while.

    `consecutive_5xx` 5xx answers or `consecutive_failures` connect failures, resets or timeouts in a
    row eject it for `base_ejection` * its ejection count, at most `max_ejection`; at most
    `max_ejected_percent` of a service's endpoints are ejected at once (rounded down), so outlier
    detection alone never empties a service.
    """

    consecutive_5xx: int = 5
    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejected_percent: int = 50

    @classmethod
    def parse(cls, data: object, where: str) -> OutlierDetection | None:
        """The document's `outlier`: a mapping, `true` (the defaults) or `false` (None: off)."""
        if isinstance(data, bool):
            return cls() if data else None
        m = mapping(data, where, ("consecutive_5xx", "consecutive_failures", "base_ejection",
                                   "max_ejection", "max_ejected_percent"))
        base = _time(m, "base_ejection", where, 30.0)
        longest = _time(m, "max_ejection", where, 300.0)
        if base > longest:
            raise RuleError(f"{where}.base_ejection" if "base_ejection" in m else f"{where}.max_ejection",
                            f"base_ejection ({format_duration(base)}) must not exceed max_ejection "
                            f"({format_duration(longest)})", m.get("base_ejection", m.get("max_ejection")))
        return cls(_limit(m, "consecutive_5xx", where, 5, 1, MAX_THRESHOLD),
                   _limit(m, "consecutive_failures", where, 5, 1, MAX_THRESHOLD), base, longest,
                   _limit(m, "max_ejected_percent", where, 50, 0, 100))

    def to_dict(self) -> dict[str, Any]:
        return _print(self, ("base_ejection", "max_ejection"))


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Per service and per gateway process: beyond these, an immediate 503 with `Retry-After`.

    `max_requests`: requests in flight to the service; `max_pending`: requests waiting for an
    upstream connection to open.
    """

    max_requests: int = 1024
    max_pending: int = 1024

    @classmethod
    def parse(cls, data: object, where: str) -> CircuitBreaker:
        m = mapping(data, where, ("max_requests", "max_pending"))
        return cls(_limit(m, "max_requests", where, 1024, 1, MAX_CONCURRENCY),
                   _limit(m, "max_pending", where, 1024, 1, MAX_CONCURRENCY))

    def to_dict(self) -> dict[str, Any]:
        return _print(self)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed attempt is tried again (on another endpoint when there is one).

    `attempts` counts the first try. Only idempotent methods, or requests carrying
    `idempotency_header` (empty: none), are retried; never after a response byte went downstream,
    never with a body larger than `max_body`. Backoff is exponential with full jitter between
    `backoff_base` and `backoff_max`; a `Retry-After` is honoured within the deadline. The budget:
    retries are at most `budget_percent` of the requests of the last 10 s, plus `budget_min`
    retries per second.
    """

    attempts: int = 2
    retry_on: tuple[str, ...] = ("connect-failure", "reset")
    statuses: tuple[int, ...] = ()
    idempotency_header: str = "Idempotency-Key"
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    max_body: int = 64 * 1024
    budget_percent: float = 20.0
    budget_min: float = 3.0

    @classmethod
    def parse(cls, data: object, where: str) -> RetryPolicy:
        m = mapping(data, where, ("attempts", "retry_on", "statuses", "idempotency_header",
                                   "backoff_base", "backoff_max", "max_body", "budget_percent",
                                   "budget_min"))
        retry_on: tuple[str, ...] = ("connect-failure", "reset")
        if "retry_on" in m:
            items: list[str] = []
            for i, item in enumerate(sequence(m["retry_on"], f"{where}.retry_on")):
                # YAML reads `[502]` as a number; the condition is the same
                condition = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
                if condition not in RETRY_ON:
                    raise RuleError(f"{where}.retry_on[{i}]", f"must be one of {', '.join(RETRY_ON)} "
                                    "(other statuses go in statuses)", item)
                if condition in items:
                    raise RuleError(f"{where}.retry_on[{i}]", "is listed twice", item)
                items.append(condition)
            retry_on = tuple(items)
        header = m.get("idempotency_header", "Idempotency-Key")
        if header != "":  # "": no header makes a request retryable, only its method
            header = header_name(header, f"{where}.idempotency_header")
        base = _time(m, "backoff_base", where, 0.025, zero=True)
        cap = _time(m, "backoff_max", where, 0.25, zero=True)
        if base > cap:
            raise RuleError(f"{where}.backoff_base" if "backoff_base" in m else f"{where}.backoff_max",
                            f"backoff_base ({format_duration(base)}) must not exceed backoff_max "
                            f"({format_duration(cap)})", m.get("backoff_base", m.get("backoff_max")))
        return cls(_limit(m, "attempts", where, 2, 1, 10), retry_on,
                   _statuses(m["statuses"], f"{where}.statuses", empty=True) if "statuses" in m else (),
                   header, base, cap, _limit(m, "max_body", where, 64 * 1024, 0, MAX_RETRY_BODY),
                   number(m["budget_percent"], f"{where}.budget_percent", 0, 100)
                   if "budget_percent" in m else 20.0,
                   number(m["budget_min"], f"{where}.budget_min", 0, MAX_CONCURRENCY)
                   if "budget_min" in m else 3.0)

    def to_dict(self) -> dict[str, Any]:
        return _print(self, ("backoff_base", "backoff_max"))


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-attempt and total limits, seconds; None: the `[proxy]` setting (total: none)."""

    connect: float | None = None
    response: float | None = None
    idle: float | None = None
    total: float | None = None

    @classmethod
    def parse(cls, data: object, where: str) -> Timeouts:
        m = mapping(data, where, ("connect", "response", "idle", "total"))
        given = {k: duration(v, f"{where}.{k}") for k, v in m.items()}
        total = given.get("total")
        if total is not None:
            for key in ("connect", "response", "idle"):
                if key in given and given[key] > total:
                    raise RuleError(f"{where}.total", f"must be at least {key} "
                                    f"({format_duration(given[key])})", m["total"])
        return cls(given.get("connect"), given.get("response"), given.get("idle"), total)

    def to_dict(self) -> dict[str, Any]:
        return _print(self, ("connect", "response", "idle", "total"))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket per key: `requests` per `per` seconds, bursts of up to `burst`.

    The key is the client address, or the value of `header` (requests without it share one bucket).
    """

    requests: int
    per: float = 1.0
    burst: int | None = None  # None: `requests`
    header: str | None = None

    @classmethod
    def parse(cls, data: object, where: str) -> RateLimit:
        m = mapping(data, where, ("requests", "per", "burst", "header"))
        if "requests" not in m:
            raise RuleError(f"{where}.requests", "is required")
        return cls(integer(m["requests"], f"{where}.requests", 1, MAX_RATE), _time(m, "per", where, 1.0),
                   integer(m["burst"], f"{where}.burst", 1, MAX_RATE) if "burst" in m else None,
                   header_name(m["header"], f"{where}.header") if "header" in m else None)

    def to_dict(self) -> dict[str, Any]:
        return _print(self, ("per",))


@dataclass(frozen=True, slots=True)
class Buffering:
    """Request and response buffering, on by default: the upstream is asked only once the request
    body is in, and a slow client reads the answer from Peel, not from the upstream.

    `memory`: bytes of a request body held in memory; beyond them, in an unnamed temporary file.
    `max_body`: bytes held at most; the rest of a larger body then streams (the upstream is asked
    at that point). `min_rate`: bytes per second a body must keep up on average once its first
    `RATE_GRACE` seconds are over (0: no minimum), else 408 `body-too-slow`; `timeout`: the whole
    body (or the held part) must be in by then, else 408 `body-timeout`. `response`: bytes of an
    answer read ahead of a slow client; an answer that fits is read whole and its upstream
    connection goes back to the pool while the client is still reading.
    `buffering: false` (`enabled` False) streams both ways, as a proxy without buffering does.
    """

    memory: int = 64 * 1024
    max_body: int = 64 * 1024 * 1024
    min_rate: int = 1024
    timeout: float = 300.0
    response: int = 1024 * 1024
    enabled: bool = True

    @classmethod
    def parse(cls, data: object, where: str) -> Buffering:
        """The document's `buffering`: a mapping, `true` (the defaults) or `false` (streaming)."""
        if isinstance(data, bool):
            return cls() if data else cls(enabled=False)
        m = mapping(data, where, ("memory", "max_body", "min_rate", "timeout", "response"))
        memory = _limit(m, "memory", where, 64 * 1024, 0, MAX_BUFFER_MEMORY)
        held = _limit(m, "max_body", where, 64 * 1024 * 1024, 1, MAX_BUFFER_BODY)
        if memory > held:
            raise RuleError(f"{where}.memory", f"must not exceed max_body ({held})", memory)
        return cls(memory, held, _limit(m, "min_rate", where, 1024, 0, MAX_RATE),
                   _time(m, "timeout", where, 300.0),
                   _limit(m, "response", where, 1024 * 1024, 64 * 1024, MAX_RESPONSE_BUFFER))

    def to_dict(self) -> dict[str, Any] | bool:
        """`false` when off, else the fields that differ from the defaults."""
        if not self.enabled:
            return False
        return _print(self, ("timeout",))


# How an upstream's TLS is trusted and presented (`ServiceTls`); see docs/upstream-tls.md.
TLS_VERSIONS = ("1.2", "1.3")
MAX_TLS_PATH = 4096
# Keys that would turn verification off in other proxies: refused with the way to do it right.
_NO_VERIFY_KEYS = frozenset({"insecure", "insecure_skip_verify", "verify", "skip_verify",
                             "verify_peer", "check_hostname"})


def _tls_file(m: Mapping[str, Any], key: str, where: str) -> str | None:
    """An absolute path of a PEM file; only its shape is checked here (the admin API may run on
    another machine than the gateways: the file is read where the table is served)."""
    if key not in m:
        return None
    path = string(m[key], f"{where}.{key}")
    if (not path.startswith("/") or path.endswith("/") or len(path) > MAX_TLS_PATH
            or any(c < " " or c == "\x7f" for c in path)
            or any(part in (".", "..") for part in path.split("/"))):
        raise RuleError(f"{where}.{key}", "must be the absolute path of a PEM file (no . or .. "
                        "segments, no control characters)", path)
    return path


def _server_name(value: object, where: str) -> str:
    text = string(value, where).lower()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if len(text) > 253 or not HOST_RE.match(text) or text.startswith("*"):
        raise RuleError(where, "must be a DNS name (no wildcard, no port) or an IP address", value)
    return text


@dataclass(frozen=True, slots=True)
class ServiceTls:
    """How Peel trusts and presents itself to a service's https endpoints.

    `ca`: a PEM bundle; the endpoints' certificates must chain to it (instead of the system's CAs,
    the default). `client_cert`/`client_key`: the certificate Peel presents (mTLS to an upstream
    that asks for one); the key may sit in the certificate's file. `server_name`: the SNI sent and
    the name the certificate must carry (default: the endpoint's host). `min_version`: "1.2" or
    "1.3". Verification is always on: there is no switch to turn it off (give `ca` instead).
    Paths are absolute; the files are loaded by each serving process (gateway.upstream.dial).
    """

    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None
    min_version: str = "1.2"
    # the SPIFFE ID the endpoints must present (upstream mTLS with this gateway's identity); set
    # from the service's top-level `identity`, never printed inside `tls`
    identity: str | None = None

    @classmethod
    def parse(cls, data: object, where: str) -> ServiceTls:
        if isinstance(data, Mapping):
            for key in data:
                if key in _NO_VERIFY_KEYS:
                    raise RuleError(f"{where}.{key}", "verification of an upstream cannot be turned "
                                    "off: give the CA that signed its certificate in `ca` (and "
                                    "`server_name` when the certificate names another host)",
                                    data[key])
        m = mapping(data, where, ("ca", "client_cert", "client_key", "server_name", "min_version"))
        cert, key = _tls_file(m, "client_cert", where), _tls_file(m, "client_key", where)
        if key is not None and cert is None:
            raise RuleError(f"{where}.client_key", "needs client_cert (the certificate it belongs "
                            "to)", key)
        version = m.get("min_version", "1.2")
        if isinstance(version, float):
            version = f"{version:g}"  # YAML reads an unquoted 1.2 as a number
        if version not in TLS_VERSIONS:
            raise RuleError(f"{where}.min_version", f"must be one of {', '.join(TLS_VERSIONS)}",
                            m.get("min_version"))
        return cls(_tls_file(m, "ca", where), cert, key,
                   _server_name(m["server_name"], f"{where}.server_name")
                   if "server_name" in m else None, version)

    def files(self) -> tuple[str, ...]:
        """The files this policy reads, in a fixed order (ca, client certificate, client key)."""
        return tuple(p for p in (self.ca, self.client_cert, self.client_key) if p is not None)

    def to_dict(self) -> dict[str, Any]:
        out = _print(self)
        out.pop("identity", None)  # printed by the service, at its top level
        return out


#: what an `allow_from` / `deny_from` entry may be: a SPIFFE ID, or a service name (its workloads)
_SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]+(/[a-zA-Z0-9._-]+)*\Z")
AUTHZ_MODES = ("enforce", "dry_run")
MAX_AUTHZ_ENTRIES = 256


@dataclass(frozen=True, slots=True)
class Authorization:
    """Who may call a route, by the identity of the calling gateway (`docs/mtls.md`).

    Entries are SPIFFE IDs (`spiffe://peel.internal/svc/orders`) or service names (`orders`: the
    identity `spiffe://<any trust domain>/svc/orders`). `deny_from` wins over `allow_from`; an empty
    `allow_from` allows everyone not denied; a caller without an identity (plaintext, no client
    certificate) matches no entry, so any `allow_from` refuses it. `mode: dry_run` only logs and
    counts what `enforce` would refuse.
    """

    allow_from: tuple[str, ...] = ()
    deny_from: tuple[str, ...] = ()
    mode: str = "enforce"

    @classmethod
    def parse(cls, data: object, where: str) -> Authorization:
        m = mapping(data, where, ("allow_from", "deny_from", "mode"))
        lists = {key: cls._entries(m.get(key, []), f"{where}.{key}") for key in ("allow_from", "deny_from")}
        mode = m.get("mode", "enforce")
        if mode not in AUTHZ_MODES:
            raise RuleError(f"{where}.mode", f"must be one of {', '.join(AUTHZ_MODES)}", mode)
        if not lists["allow_from"] and not lists["deny_from"]:
            raise RuleError(where, "needs allow_from or deny_from (a list of identities or service names)",
                            data)
        return cls(lists["allow_from"], lists["deny_from"], mode)

    @staticmethod
    def _entries(data: object, where: str) -> tuple[str, ...]:
        if not isinstance(data, list):
            raise RuleError(where, "must be a list of SPIFFE IDs or service names", data)
        if len(data) > MAX_AUTHZ_ENTRIES:
            raise RuleError(where, f"lists at most {MAX_AUTHZ_ENTRIES} entries", len(data))
        out: list[str] = []
        for i, entry in enumerate(data):
            if not isinstance(entry, str) or not (
                    NAME_RE.match(entry) or (len(entry) <= 2048 and _SPIFFE_ID.match(entry))):
                raise RuleError(f"{where}[{i}]", "must be a SPIFFE ID (spiffe://<trust-domain>/svc/"
                                "<service>) or a service name", entry)
            if entry not in out:
                out.append(entry)
        return tuple(out)

    def allows(self, identity: str | None) -> bool:
        """Whether a caller with `identity` (None: none) passes (`mode` aside)."""
        if identity is not None and self.deny_from and _matches(self.deny_from, identity):
            return False
        if not self.allow_from:
            return True
        return identity is not None and _matches(self.allow_from, identity)

    def to_dict(self) -> dict[str, Any]:
        return _print(self)


def _matches(entries: tuple[str, ...], identity: str) -> bool:
    if identity in entries:
        return True
    head, sep, service = identity.rpartition("/svc/")
    return bool(sep) and "/" not in head[len("spiffe://"):] and service in entries
