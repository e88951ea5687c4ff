"""Static settings: one TOML file, every key overridable from the environment.

A key's environment name is `PEEL_` + its dotted path upper-cased with `_` for `.`:
`[listeners.public] bind` is `PEEL_LISTENERS_PUBLIC_BIND`. Unknown keys and bad values are refused
with the key's name (`ConfigError`). Settings are read once at start (and on SIGHUP); the rules that
change at run time live in the store, not here.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.core.errors import ConfigError
from gateway.core.native import ENV as NATIVE_ENV
from routes.grammar import TOKEN_RE

# Environment variables that steer the CLI (and PEEL_NATIVE, the compiled request path), not settings.
NOT_SETTINGS = frozenset({"PEEL_CONFIG", "PEEL_ADMIN_URL", "PEEL_ADMIN_TOKEN", "PEEL_ADMIN_CA", NATIVE_ENV})
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
TLS_VERSIONS = ("1.2", "1.3")


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str = "sqlite:///./peel.db"


@dataclass(frozen=True, slots=True)
class TlsCertificateSettings:
    """One certificate of a TLS listener (`docs/tls.md`): PEM files, read at start and on reload."""

    # the certificate, optionally followed by its intermediates (leaf first)
    cert: str = ""
    # its private key, unencrypted
    key: str = ""


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    bind: str = ""
    # the listener speaks TLS when set; chosen by SNI (exact names and wildcards of each
    # certificate's SANs), the first one is the default (`docs/tls.md`)
    tls_certificates: tuple[TlsCertificateSettings, ...] = ()
    # "1.2" or "1.3"; nothing older is ever offered
    tls_min_version: str = "1.2"
    # public listener with TLS only: Strict-Transport-Security max-age in seconds; 0: no header
    hsts_max_age: int = 0
    # inbound listener only (`docs/mtls.md`): "off" (no inbound listener), "permissive" (mTLS and
    # plaintext on one port) or "strict" (mTLS only); SIGHUP switches between the last two
    mtls: str = "off"
    # inbound listener of a sidecar only (`docs/east-west.md`): the local app every request goes
    # to, `http://127.0.0.1:9000`; "": none (the gateway role serves the route table)
    app: str = ""
    # inbound listener only: the `https://host:port` peers reach it at, registered (with heartbeats)
    # in the control plane's service registry by a sidecar following it; "": not registered
    advertise: str = ""

    @property
    def host(self) -> str:
        return split_bind(self.bind)[0]

    @property
    def port(self) -> int:
        return split_bind(self.bind)[1]

    @property
    def tls(self) -> bool:
        return bool(self.tls_certificates)


@dataclass(frozen=True, slots=True)
class OutboundListenerSettings(ListenerSettings):
    """The outbound listener (east-west, `docs/east-west.md`): local apps calling out through Peel."""

    # None: on in the sidecar role, off in the gateway role; true/false: as said
    enabled: bool | None = None
    # the outbound listener is an HTTP proxy for registered services only, yet it must never be
    # reachable from other machines: a bind beyond loopback is refused unless this is true
    allow_non_loopback: bool = False
    # `CONNECT host:port` is tunnelled only to these (`host:port` or `*.suffix:port`); empty: none
    connect_allow: tuple[str, ...] = ()
    # a local port per service on the outbound listener's address: {orders = 15101}
    service_ports: Mapping[str, int] = field(default_factory=lambda: types.MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class ListenersSettings:
    public: ListenerSettings = ListenerSettings("0.0.0.0:8080")
    admin: ListenerSettings = ListenerSettings("127.0.0.1:9901")
    # optional plain listener answering 308 to https on the public listener; bind "": none
    redirect: ListenerSettings = ListenerSettings("")
    # mTLS from peer gateways (east-west), with this gateway's identity (`[identity] state_dir`);
    # on when `mtls` is "permissive" or "strict"
    inbound: ListenerSettings = ListenerSettings("0.0.0.0:15443")
    # local apps calling out (east-west): on by default in the sidecar role (`docs/east-west.md`)
    outbound: OutboundListenerSettings = OutboundListenerSettings("127.0.0.1:15001")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    # "gateway" (public, admin and optional inbound/outbound listeners) or "sidecar" (beside an
    # app: only the outbound and inbound listeners; `docs/east-west.md`)
    role: str = "gateway"
    # where the route table comes from: "database" (the store, `[database] url`) or, for a
    # sidecar, "control" (the control plane it joined, over its admin API, as its identity)
    source: str = "database"
    workers: int = 1
    # seconds that in-flight requests get to finish after SIGTERM
    grace_period: float = 30.0
    log_level: str = "info"
    # the last good route table's document, loaded at start when the store is unreachable
    snapshot_path: str = "./.peel/snapshot.json"
    # how often each worker asks the store for a newer config version
    poll_interval: float = 0.25
    # downstream keep-alive: an idle client connection is closed after this many seconds
    keepalive_timeout: float = 15.0
    # after SIGTERM, seconds that readiness is false while the listeners still accept and serve, so
    # a load balancer polling /readyz takes the gateway out before its sockets close
    prestop_delay: float = 0.0
    # where each serving process publishes its live state (metrics, endpoint health) for the admin
    # API of the same gateway to read; one file per process
    run_dir: str = "./.peel/run"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    # networks whose X-Forwarded-* / Forwarded headers are kept (and appended to); from anyone
    # else they are replaced
    trusted_proxies: tuple[str, ...] = ()
    connect_timeout: float = 5.0
    # from the end of the request until the response head arrives
    response_timeout: float = 60.0
    # between two reads of an upstream response body
    idle_timeout: float = 60.0
    # idle keep-alive connections kept per endpoint
    max_idle_per_endpoint: int = 64
    # an idle upstream connection older than this is closed rather than reused
    upstream_keepalive: float = 30.0
    request_id_header: str = "X-Request-Id"


@dataclass(frozen=True, slots=True)
class AccessLogSettings:
    # "stdout", "off", or a file path
    target: str = "stdout"


@dataclass(frozen=True, slots=True)
class FacadeSettings:
    # networks whose beta header/cookie values are honoured as plain user ids; from anyone else
    # only a value signed with `beta_secret` is (and an unsigned one is stripped)
    trusted_networks: tuple[str, ...] = ()
    # HMAC key of signed beta values (`peel beta sign`); empty: no signed values; else >= 32 chars
    beta_secret: str = ""
    # how often each serving process writes its per-route traffic counts to the store
    counts_interval: float = 2.0


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """Edge limits of the data-plane listeners, enforced before routing (`docs/edge.md`)."""

    # bytes of the request line (method, target, version) -> 414
    max_request_line: int = 8 * 1024
    # bytes of the header section, and its number of fields -> 431
    max_header_bytes: int = 60 * 1024
    max_headers: int = 100
    # bytes of a request body, declared or chunked; 0 = no limit -> 413
    max_body: int = 0
    # seconds from a connection's opening (or the end of the last response, once a byte of the
    # next head arrived) to a complete request head -> 408; 0: server.keepalive_timeout
    header_timeout: float = 0.0
    # seconds a request body may go without a byte arriving -> 408 (or a reset once answering)
    body_idle_timeout: float = 30.0
    # open downstream connections per listener per process; 0 = no limit; beyond it -> 503
    max_connections: int = 0
    # seconds a response may wait for a client that stopped reading; then the connection is cut
    write_timeout: float = 60.0
    # header names with "_" that would read as a trusted header ("X_Forwarded_For") are refused
    allow_underscore_headers: bool = False


@dataclass(frozen=True, slots=True)
class PathSettings:
    """How the data plane normalises request paths before routing and forwarding (`docs/edge.md`)."""

    # `%2F` in a path -> 400 `bad-path`; false: kept encoded, never read as a separator
    reject_encoded_slash: bool = True
    # a backslash (literal or `%5C`) in a path -> 400 `bad-path`; false: forwarded as `%5C`
    reject_backslash: bool = True
    # runs of "/" become one ("//admin" is "/admin"); false: empty segments are kept (RFC 3986)
    merge_slashes: bool = True


@dataclass(frozen=True, slots=True)
class DeadlineSettings:
    """The incoming deadline header (`docs/resilience.md`): remaining milliseconds, an integer."""

    header: str = "Peel-Timeout-Ms"
    # networks whose deadline header (and `grpc-timeout`) is honoured; from others it is dropped
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # also read gRPC's `grpc-timeout` (and propagate it as such)
    grpc_timeout: bool = True


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """OpenTelemetry traces (`docs/observability.md`)."""

    # false: no spans and no context made by Peel; trace headers pass as ordinary headers
    enabled: bool = True
    # parent-based: a sampled parent is followed; a new trace is sampled with this probability
    sample_ratio: float = 0.01
    # "otlp" (OTLP/HTTP protobuf to `endpoint`) or "console" (stdout, for debugging)
    exporter: str = "otlp"
    # the collector's traces URL, e.g. http://127.0.0.1:4318/v1/traces; empty: nothing exported
    # (context is still continued and propagated)
    endpoint: str = ""
    service_name: str = "peel"
    # spans queued for export; beyond it new spans are dropped (and counted), never waited for
    max_queue: int = 2048
    export_timeout: float = 5.0
    # networks whose trace context (and so its sampled flag) is continued; from anyone else the
    # request starts a new trace, sampled by `sample_ratio` only. Empty: nobody's
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Prometheus `/metrics` on the admin listener (`docs/observability.md`)."""

    enabled: bool = True
    # true: `/metrics` answers without a bearer token (like /healthz)
    open: bool = False
    # how often each serving process publishes its counters for the admin listener to merge
    publish_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """Workload identity and Peel's CA (`docs/identity.md`)."""

    # identities are spiffe://<trust_domain>/svc/<service>; lower-case letters, digits, . - _
    trust_domain: str = "peel.internal"
    # this gateway's key, certificate and trust bundle
    state_dir: str = "./.peel/identity"
    # the certificate authority's directory (`peel ca`): its keys live here, mode 0700
    ca_dir: str = "./.peel/ca"
    # seconds a workload certificate issued by this control plane's CA lives (joins and renewals);
    # gateways renew at half of it
    certificate_lifetime: float = 86400.0
    # the CA certificate(s) (PEM) that signed the control plane's admin listener certificate, for
    # renewals; "": the system's trust store
    control_cacert: str = ""


@dataclass(frozen=True, slots=True)
class Settings:
    database: DatabaseSettings = DatabaseSettings()
    listeners: ListenersSettings = ListenersSettings()
    server: ServerSettings = ServerSettings()
    proxy: ProxySettings = ProxySettings()
    access_log: AccessLogSettings = AccessLogSettings()
    facade: FacadeSettings = FacadeSettings()
    limits: LimitsSettings = LimitsSettings()
    paths: PathSettings = PathSettings()
    deadlines: DeadlineSettings = DeadlineSettings()
    tracing: TracingSettings = TracingSettings()
    metrics: MetricsSettings = MetricsSettings()
    identity: IdentitySettings = IdentitySettings()

    @property
    def outbound_enabled(self) -> bool:
        """Whether the outbound listener runs: `listeners.outbound.enabled`, else the role's default."""
        enabled = self.listeners.outbound.enabled
        return enabled if enabled is not None else self.server.role == "sidecar"


ROLES = ("gateway", "sidecar")
SOURCES = ("database", "control")


def split_bind(bind: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port)."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{bind!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is out of range")
    return host, number


T = TypeVar("T")


def _check(key: str, obj: Any) -> None:
    """Value checks that types alone do not express."""
    try:
        if isinstance(obj, ListenerSettings):
            _check_listener(key, obj)
        elif isinstance(obj, TlsCertificateSettings):
            if not obj.cert:
                raise ConfigError(f"{key}.cert", "the certificate file is missing")
            if not obj.key:
                raise ConfigError(f"{key}.key", "the key file is missing")
        elif isinstance(obj, ListenersSettings):
            if obj.redirect.bind and not obj.public.tls:
                raise ConfigError("listeners.redirect.bind", "the redirect listener sends clients "
                                  "to https: it needs listeners.public.tls_certificates")
        elif isinstance(obj, Settings):
            _check_roles(obj)
        elif isinstance(obj, ServerSettings):
            if obj.role not in ROLES:
                raise ConfigError(f"{key}.role", f"must be one of {', '.join(ROLES)}, not {obj.role!r}")
            if obj.source not in SOURCES:
                raise ConfigError(f"{key}.source", f"must be one of {', '.join(SOURCES)}, not "
                                  f"{obj.source!r}")
            if obj.workers < 1:
                raise ValueError("workers must be at least 1")
            if obj.log_level not in LOG_LEVELS:
                raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
            for name in ("grace_period", "poll_interval", "keepalive_timeout"):
                if getattr(obj, name) <= 0:
                    raise ValueError(f"{name} must be positive")
            if obj.prestop_delay < 0:
                raise ValueError("prestop_delay must not be negative")
        elif isinstance(obj, ProxySettings):
            for net in obj.trusted_proxies:
                ipaddress.ip_network(net, strict=False)
            for name in ("connect_timeout", "response_timeout", "idle_timeout",
                         "upstream_keepalive"):
                if getattr(obj, name) <= 0:
                    raise ValueError(f"{name} must be positive")
            if obj.max_idle_per_endpoint < 0:
                raise ValueError("max_idle_per_endpoint must not be negative")
        elif isinstance(obj, FacadeSettings):
            for net in obj.trusted_networks:
                ipaddress.ip_network(net, strict=False)
            if obj.beta_secret and len(obj.beta_secret) < 32:
                raise ValueError("beta_secret must be at least 32 characters (or empty for none)")
            if obj.counts_interval <= 0:
                raise ValueError("counts_interval must be positive")
        elif isinstance(obj, LimitsSettings):
            for name in ("max_request_line", "max_header_bytes", "max_headers"):
                if getattr(obj, name) < 1:
                    raise ValueError(f"{name} must be at least 1")
            for name in ("max_body", "max_connections"):
                if getattr(obj, name) < 0:
                    raise ValueError(f"{name} must not be negative (0: no limit)")
            if obj.header_timeout < 0:
                raise ValueError("header_timeout must not be negative (0: server.keepalive_timeout)")
            for name in ("body_idle_timeout", "write_timeout"):
                if getattr(obj, name) <= 0:
                    raise ValueError(f"{name} must be positive")
        elif isinstance(obj, DeadlineSettings):
            for net in obj.trusted_networks:
                ipaddress.ip_network(net, strict=False)
            if not obj.header or not TOKEN_RE.match(obj.header):
                raise ValueError(f"header {obj.header!r} is not a header name")
        elif isinstance(obj, TracingSettings):
            for net in obj.trusted_networks:
                ipaddress.ip_network(net, strict=False)
            if not 0.0 <= obj.sample_ratio <= 1.0:
                raise ValueError("sample_ratio must be between 0 and 1")
            if obj.exporter not in ("otlp", "console"):
                raise ValueError("exporter must be otlp or console")
            if obj.endpoint:
                try:
                    url = urlsplit(obj.endpoint)
                    url.port  # noqa: B018 - raises on a port that is not a number
                except ValueError as exc:
                    raise ValueError(f"endpoint {obj.endpoint!r} is not a valid URL: {exc}") from None
                if url.scheme not in ("http", "https") or not url.hostname:
                    raise ValueError(f"endpoint {obj.endpoint!r} is not an http(s) URL with a host")
            if obj.max_queue < 1:
                raise ValueError("max_queue must be at least 1")
            if obj.export_timeout <= 0:
                raise ValueError("export_timeout must be positive")
        elif isinstance(obj, MetricsSettings):
            if obj.publish_interval <= 0:
                raise ValueError("publish_interval must be positive")
        elif isinstance(obj, IdentitySettings):
            if not re.fullmatch(r"[a-z0-9._-]{1,255}", obj.trust_domain):
                raise ValueError(f"trust_domain {obj.trust_domain!r} must be 1-255 lower-case letters, "
                                 "digits, '.', '-' or '_' (a SPIFFE trust domain)")
            if not 60 <= obj.certificate_lifetime <= 366 * 86400:
                raise ValueError("certificate_lifetime must be between 60 seconds and 366 days")
        elif isinstance(obj, DatabaseSettings) and "://" not in obj.url:
            raise ValueError(f"url {obj.url!r} is not a SQLAlchemy URL such as sqlite:///./peel.db")
    except ValueError as exc:
        raise ConfigError(key or "settings", str(exc)) from exc


MTLS_MODES = ("off", "permissive", "strict")
_CONNECT_ENTRY = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?:[0-9]{1,5}")
_SERVICE_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_roles(obj: Settings) -> None:
    """What the role and the east-west listeners require of each other."""
    outbound, inbound = obj.listeners.outbound, obj.listeners.inbound
    if obj.outbound_enabled:
        if not outbound.allow_non_loopback and not is_loopback(outbound.host):
            raise ConfigError("listeners.outbound.bind", f"{outbound.bind} is beyond loopback: the "
                              "outbound listener forwards for whoever reaches it, so it binds "
                              "127.0.0.1 (or set listeners.outbound.allow_non_loopback = true)")
        if obj.server.workers > 1:
            raise ConfigError("listeners.outbound.enabled", "the outbound listener runs with "
                              "server.workers = 1 only, for now")
    if inbound.app:
        if obj.server.role != "sidecar":
            raise ConfigError("listeners.inbound.app", "only the sidecar role forwards the inbound "
                              "listener to a local app (server.role = \"sidecar\"); a gateway's "
                              "inbound listener serves the route table")
        if inbound.mtls == "off":
            raise ConfigError("listeners.inbound.app", "the inbound listener is off: set "
                              "listeners.inbound.mtls to \"permissive\" or \"strict\"")
    elif obj.server.role == "sidecar" and inbound.mtls != "off":
        raise ConfigError("listeners.inbound.app", "a sidecar's inbound listener forwards to the local "
                          "app: set it, such as \"http://127.0.0.1:9000\"")


def _check_outbound(key: str, obj: OutboundListenerSettings) -> None:
    for entry in obj.connect_allow:
        if not _CONNECT_ENTRY.fullmatch(entry) or not 0 < int(entry.rpartition(":")[2]) <= 65535:
            raise ConfigError(f"{key}.connect_allow", f"{entry!r} is not host:port or *.suffix:port "
                              "(lower-case, a port from 1 to 65535)")
    seen: dict[int, str] = {}
    for name, port in obj.service_ports.items():
        where = f"{key}.service_ports.{name}"
        if not _SERVICE_NAME.fullmatch(name):
            raise ConfigError(where, "is not a service name (lower-case letters, digits, . - _)")
        if not 0 < port <= 65535:
            raise ConfigError(where, f"port {port} is out of range")
        if port == obj.port:
            raise ConfigError(where, f"port {port} is the outbound listener's own (bind)")
        if port in seen:
            raise ConfigError(where, f"port {port} is also service {seen[port]}'s")
        seen[port] = name


def _check_listener(key: str, obj: ListenerSettings) -> None:
    name = key.rpartition(".")[2]
    if obj.bind or name != "redirect":
        split_bind(obj.bind)
    if obj.tls_min_version not in TLS_VERSIONS:
        raise ConfigError(f"{key}.tls_min_version", f"must be one of {', '.join(TLS_VERSIONS)}, "
                          f"not {obj.tls_min_version!r}")
    if name == "redirect" and obj.tls:
        raise ConfigError(f"{key}.tls_certificates", "the redirect listener is plain HTTP")
    if obj.mtls not in MTLS_MODES:
        raise ConfigError(f"{key}.mtls", f"must be one of {', '.join(MTLS_MODES)}, not {obj.mtls!r}")
    if obj.app and name != "inbound":
        raise ConfigError(f"{key}.app", "only the inbound listener forwards to a local app")
    if obj.advertise:
        advertised = urlsplit(obj.advertise)
        try:
            advertised.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            advertised = urlsplit("")
        if name != "inbound" or advertised.scheme != "https" or not advertised.hostname \
                or advertised.path not in ("", "/") or advertised.query:
            raise ConfigError(f"{key}.advertise", f"{obj.advertise!r}: only the inbound listener is "
                              "advertised, as https://host:port (peers dial it with mTLS)")
    if obj.app:
        try:
            url = urlsplit(obj.app)
            url.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ConfigError(f"{key}.app", f"{obj.app!r} is not a URL: {exc}") from None
        if url.scheme != "http" or not url.hostname or url.path not in ("", "/") or url.query:
            raise ConfigError(f"{key}.app", f"{obj.app!r} is not http://host:port (the local app)")
    if isinstance(obj, OutboundListenerSettings):
        _check_outbound(key, obj)
    if obj.mtls != "off" and name != "inbound":
        raise ConfigError(f"{key}.mtls", "only the inbound listener speaks mTLS (listeners.inbound)")
    if name == "inbound" and obj.tls:
        raise ConfigError(f"{key}.tls_certificates", "the inbound listener serves this gateway's "
                          "identity (identity.state_dir), not certificate files")
    if obj.hsts_max_age < 0:
        raise ConfigError(f"{key}.hsts_max_age", "must not be negative (0: no header)")
    if obj.hsts_max_age and (name != "public" or not obj.tls):
        raise ConfigError(f"{key}.hsts_max_age", "only the public listener with "
                          "tls_certificates sends Strict-Transport-Security")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which systemd's `CPUAffinity=` and
    container limits set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


# Words a numeric setting also takes, and the number each stands for when the settings are read.
NAMED_VALUES: dict[str, dict[str, Callable[[], int]]] = {
    "server.workers": {"auto": available_cores},  # one worker per core: the production default
}


def _optional(kind: Any) -> Any:
    """`X` of `X | None`; None for any other type."""
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0]
    return None


def _convert(key: str, kind: Any, value: Any, base: Any = None) -> Any:
    origin = typing.get_origin(kind)
    if _optional(kind) is not None:
        return _convert(key, _optional(kind), value, base)
    if origin in (dict, Mapping):
        if isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, int)
                                              and not isinstance(v, bool) for k, v in value.items()):
            return types.MappingProxyType(dict(value))
        raise ConfigError(key, f"must be a table of whole numbers such as {{orders = 15101}}, not {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif origin is tuple and is_dataclass(typing.get_args(kind)[0]):
        if isinstance(value, list | tuple):
            item = typing.get_args(kind)[0]
            return tuple(_build(item, f"{key}[{i}]", v) for i, v in enumerate(value))
        raise ConfigError(key, f"must be a list of tables, not {value!r}")
    elif origin is tuple:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(key, f"must be a list of strings, not {value!r}")
    elif isinstance(kind, type) and is_dataclass(kind):
        return _build(kind, key, value, base)
    raise ConfigError(key, f"must be of type {getattr(kind, '__name__', kind)}, not {value!r}")


def _build(cls: type[T], prefix: str, data: Any, base: T | None = None) -> T:
    """`cls` from the table `data`; keys it does not set keep their value in `base` (the
    enclosing section's default: `[listeners.public]` without `bind` keeps 0.0.0.0:8080)."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, f"must be a table, not {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(where, f"unknown key; known here: {', '.join(sorted(names))}")
    values = {}
    default = cls() if base is None else base
    for f in fields(cls):  # type: ignore[arg-type]
        where = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            value = data[f.name]
            named = NAMED_VALUES.get(where)
            if named is not None and isinstance(value, str):
                if value not in named:
                    raise ConfigError(where, f"must be a whole number or {' or '.join(map(repr, named))}, "
                                      f"not {value!r}")
                value = named[value]()
            values[f.name] = _convert(where, hints[f.name], value, getattr(default, f.name))
    obj = replace(default, **values)  # type: ignore[type-var]
    _check(prefix, obj)
    return obj


def _leaf_keys(cls: type[Any], prefix: str = "") -> dict[str, Any]:
    """Every dotted settings key with its type."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        kind = hints[f.name]
        if isinstance(kind, type) and is_dataclass(kind):
            out.update(_leaf_keys(kind, key))
        else:
            out[key] = kind
    return out


def env_name(key: str) -> str:
    return "PEEL_" + key.upper().replace(".", "_")


def _parse_env(key: str, kind: Any, text: str) -> Any:
    if text in NAMED_VALUES.get(key, {}):
        return text  # resolved with the file's values (_build)
    if _optional(kind) is not None:
        kind = _optional(kind)
    if typing.get_origin(kind) in (dict, Mapping):
        try:
            return tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(key, f"{env_name(key)} is not a TOML table such as "
                              f"{{orders = 15101}}: {exc}") from None
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, f"{env_name(key)}={text!r} is not a boolean")
    if kind is int or kind is float:
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(key, f"{env_name(key)}={text!r} is not a number") from None
    if typing.get_origin(kind) is tuple and is_dataclass(typing.get_args(kind)[0]):
        # a list of tables, written as in the file: [{cert = "a.pem", key = "a.key"}]
        try:
            return tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(key, f"{env_name(key)} is not a TOML list of tables "
                              f"such as [{{cert = \"a.pem\", key = \"a.key\"}}]: {exc}") from None
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return text


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(key, f"{parts[0]} must be a table")
        node = child
    node[parts[-1]] = value


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (when given) and the environment into validated `Settings`."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError("--config", f"{file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{file} is not valid TOML: {exc}") from None
    by_env = {env_name(k): (k, t) for k, t in _leaf_keys(Settings).items()}
    for name, text in env.items():
        if not name.startswith("PEEL_") or name in NOT_SETTINGS:
            continue
        if name not in by_env:
            raise ConfigError(name, "unknown setting in the environment")
        key, kind = by_env[name]
        _set_dotted(data, key, _parse_env(key, kind, text))
    return resolve_paths(_build(Settings, "", data), state_dir(path, env))


_SQLITE_FILE = re.compile(r"^(sqlite(?:\+\w+)?:///)([^?]*)(.*)$")


def state_dir(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    """Where relative paths in the settings point (None: the current directory).

    `$STATE_DIRECTORY` when systemd sets it (`StateDirectory=peel` gives /var/lib/peel, owned by
    the service's user; under systemd the current directory is `/`); else the directory of the
    settings file, so the file means the same from any directory; else the current directory.
    """
    systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    if path is not None:
        return Path(path).resolve().parent
    return None


def resolve_paths(settings: Settings, base: Path | None) -> Settings:
    """`settings` with relative file paths (the SQLite file, `server.snapshot_path`,
    `server.run_dir`, an `access_log.target` file, the listeners' TLS files) made absolute
    against `base`."""
    if base is None:
        return settings

    def absolute(value: str) -> str:
        return value if os.path.isabs(value) else os.path.normpath(base / value)

    identity = settings.identity  # identity.state_dir, ca_dir and control_cacert
    settings = replace(settings, identity=replace(
        identity, state_dir=absolute(identity.state_dir), ca_dir=absolute(identity.ca_dir),
        control_cacert=absolute(identity.control_cacert) if identity.control_cacert else ""))
    url = settings.database.url
    found = _SQLITE_FILE.match(url)
    if found is not None and found[2] not in ("", ":memory:") and not found[2].startswith("file:"):
        url = found[1] + absolute(found[2]) + found[3]
    target = settings.access_log.target
    if target not in ("stdout", "off"):
        target = absolute(target)
    server = settings.server

    def certificates(listener: ListenerSettings) -> ListenerSettings:
        pairs = tuple(replace(pair, cert=absolute(pair.cert), key=absolute(pair.key))
                      for pair in listener.tls_certificates)
        return replace(listener, tls_certificates=pairs)

    listeners = settings.listeners
    return replace(settings, database=replace(settings.database, url=url),
                   server=replace(server, snapshot_path=absolute(server.snapshot_path),
                                  run_dir=absolute(server.run_dir)),
                   access_log=replace(settings.access_log, target=target),
                   listeners=replace(listeners, public=certificates(listeners.public),
                                     admin=certificates(listeners.admin)))


def settings_type_names() -> Mapping[str, str]:
    """Every settings key with its type name, for docs and `--help`."""
    return types.MappingProxyType({k: getattr(t, "__name__", str(t))
                                   for k, t in _leaf_keys(Settings).items()})
