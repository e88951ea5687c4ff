"""Services of the rule model: a named pool of endpoints with its resilience policies (pure).

`Service.parse(data, where)` reads one `services[]` item of the declarative document, refusing with
the field's path (`services[orders].endpoints[1].weight`) and the value; `to_dict()` prints it with
defaults left out. The policies themselves parse and print in `routes.policies`. Re-exported by
`routes.model`, where the rest of the document lives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from routes.errors import RuleError
from routes.fields import integer, mapping, rule_name, sequence, string
from routes.policies import (
    Balancer,
    Buffering,
    CircuitBreaker,
    HealthCheck,
    OutlierDetection,
    RetryPolicy,
    ServiceTls,
    Timeouts,
)

MAX_WEIGHT = 1000

#: a service identity `spiffe://<trust-domain>/svc/<service>` (gateway.identity.spiffe is the full
#: check; routes/ imports nothing from gateway/)
_SERVICE_ID = re.compile(r"spiffe://[a-z0-9._-]{1,255}/svc/[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?\Z")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One `scheme://host:port` of a service, with its balancing weight.

    The weight is left out of equality and hashing: an endpoint is the same upstream (the same
    connection pool, the same health and latency state) whatever its weight. `tls` is its
    service's `tls` policy (set by `Service`, never printed with the endpoint): the dialer reads it,
    and because it is part of equality, connections made under one policy are never pooled for an
    endpoint of the same URL under another (a different client certificate, CA or name).
    """

    scheme: str
    host: str
    port: int
    weight: int = field(default=1, compare=False)
    tls: ServiceTls | None = field(default=None, repr=False)
    # `scheme://host:port`, made once: the data plane reads it on every attempt (metrics, traces)
    url: str = field(init=False, compare=False, repr=False)
    # the hash of the fields compared, made once: the upstream pool looks an endpoint up by it on
    # every attempt, and the generated `__hash__` hashed a new tuple each time, `tls`'s fields too
    _hash: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "url", f"{self.scheme}://{host}:{self.port}")
        object.__setattr__(self, "_hash", hash((self.scheme, self.host, self.port, self.tls)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def parse(cls, value: object, where: str) -> Endpoint:
        """A URL string, or `{url: ..., weight: N}` with N from 1 to 1000."""
        weight = 1
        if isinstance(value, Mapping):
            m = mapping(value, where, ("url", "weight"))
            if "url" not in m:
                raise RuleError(f"{where}.url", "is required")
            weight = integer(m.get("weight", 1), f"{where}.weight", 1, MAX_WEIGHT)
            where, value = f"{where}.url", m["url"]
        text = string(value, where)
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise RuleError(where, f"is not a valid endpoint URL: {exc}", value) from exc
        if parts.scheme not in ("http", "https"):
            raise RuleError(where, "must be an http:// or https:// URL", value)
        if not parts.hostname:
            raise RuleError(where, "must name a host", value)
        if parts.username or parts.password or parts.query or parts.fragment or \
                parts.path not in ("", "/"):
            raise RuleError(where, "must be scheme://host:port only: no user, path, query or "
                            "fragment", value)
        default_port = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname.lower(), port if port is not None else default_port,
                   weight)

    def to_doc(self) -> str | dict[str, Any]:
        """The document's form: the URL, or `{url, weight}` when the weight is not 1."""
        return self.url if self.weight == 1 else {"url": self.url, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Service:
    """A named upstream: a pool of endpoints and its resilience policies (`routes.policies`).

    `outlier` None: passive outlier detection is off (`outlier: false`); `retries`, `timeouts` and
    `buffering` apply to the service's routes that do not declare their own. `tls` (https endpoints
    only) is carried by each endpoint too (`Endpoint.tls`), set here whatever the caller passed.
    """

    name: str
    endpoints: tuple[Endpoint, ...]
    balancer: Balancer = field(default_factory=Balancer)
    health_check: HealthCheck | None = None
    outlier: OutlierDetection | None = field(default_factory=OutlierDetection)
    circuit_breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    buffering: Buffering = field(default_factory=Buffering)
    tls: ServiceTls | None = None
    # its line in the stored text, once written or read (`routes.document_text`); not a field of
    # the service: not compared, not printed
    _line: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if any(e.tls != self.tls for e in self.endpoints):
            object.__setattr__(self, "endpoints",
                               tuple(replace(e, tls=self.tls) for e in self.endpoints))

    @classmethod
    def parse(cls, data: object, where: str) -> Service:
        m = mapping(data, where, ("name", "endpoints", "balancer", "health_check", "outlier",
                                   "circuit_breaker", "retries", "timeouts", "buffering", "tls",
                                   "identity"))
        if "name" not in m:
            raise RuleError(f"{where}.name", "is required")
        name = rule_name(m["name"], f"{where}.name")
        where = f"services[{name}]"
        raw = sequence(m.get("endpoints", []), f"{where}.endpoints")
        if not raw and m.get("identity") is None:
            # a service of sidecars (`identity`) may list none: the registry fills it (east-west.md)
            raise RuleError(f"{where}.endpoints", "needs at least one endpoint (or an `identity`: a "
                            "service of sidecars, whose endpoints the registry fills)", m.get("endpoints"))
        endpoints = tuple(Endpoint.parse(e, f"{where}.endpoints[{i}]") for i, e in enumerate(raw))
        seen: set[Endpoint] = set()
        for i, e in enumerate(endpoints):
            if e in seen:
                raise RuleError(f"{where}.endpoints[{i}]", "is listed twice", e.url)
            seen.add(e)
        tls = None
        if m.get("tls") is not None:
            tls = ServiceTls.parse(m["tls"], f"{where}.tls")
            plain = [e.url for e in endpoints if e.scheme != "https"]
            if plain:
                raise RuleError(f"{where}.tls", "applies to https:// endpoints only; these are "
                                "plain http: " + ", ".join(plain), m["tls"])
        if m.get("identity") is not None:
            # upstream mTLS to peer gateways' inbound listeners (docs/mtls.md)
            expected = m["identity"]
            if not isinstance(expected, str) or not _SERVICE_ID.match(expected):
                raise RuleError(f"{where}.identity", "must be a service identity "
                                "spiffe://<trust-domain>/svc/<service>", expected)
            plain = [e.url for e in endpoints if e.scheme != "https"]
            if plain:
                raise RuleError(f"{where}.identity", "peer gateways are dialled with mTLS: the "
                                "endpoints must be https://; these are plain http: " + ", ".join(plain),
                                expected)
            tls = replace(tls or ServiceTls(), identity=expected)
        return cls(name, endpoints,
                   Balancer.parse(m.get("balancer", {}), f"{where}.balancer"),
                   HealthCheck.parse(m["health_check"], f"{where}.health_check")
                   if m.get("health_check") is not None else None,
                   OutlierDetection.parse(m.get("outlier", True), f"{where}.outlier"),
                   CircuitBreaker.parse(m.get("circuit_breaker", {}), f"{where}.circuit_breaker"),
                   RetryPolicy.parse(m.get("retries", {}), f"{where}.retries"),
                   Timeouts.parse(m.get("timeouts", {}), f"{where}.timeouts"),
                   Buffering.parse(m.get("buffering", True), f"{where}.buffering"), tls)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "endpoints": [e.to_doc() for e in self.endpoints]}
        if self.balancer != Balancer():
            out["balancer"] = self.balancer.to_dict()
        if self.health_check is not None:
            out["health_check"] = self.health_check.to_dict()
        if self.outlier is None:
            out["outlier"] = False
        elif self.outlier != OutlierDetection():
            out["outlier"] = self.outlier.to_dict()
        for key in ("circuit_breaker", "retries", "timeouts"):
            printed = getattr(self, key).to_dict()
            if printed:
                out[key] = printed
        if self.buffering != Buffering():
            out["buffering"] = self.buffering.to_dict()
        if self.tls is not None:
            printed = self.tls.to_dict()
            if printed or self.tls.identity is None:
                out["tls"] = printed
            if self.tls.identity is not None:
                out["identity"] = self.tls.identity
        return out
