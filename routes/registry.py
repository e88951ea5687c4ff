"""The service registry: endpoints that sidecars register for their service, and how they join a table.

A sidecar (`peel serve --role sidecar`) beside an app registers its inbound listener's advertised
address (`https://10.0.2.15:15443`) under its service, with the identity its certificate carries
(`spiffe://<td>/svc/<service>`), when it joins and again on every heartbeat; a row that is not
refreshed before its `expires_at` stops counting (the TTL), so a VM that went away leaves every
gateway's table within one TTL without anyone deleting it.

`RegistryRecords` is mixed into `routes.store.Store` (which provides the transactions). Gateways
notice a change with `registry_stamp()`, one aggregate over the live rows: a heartbeat moves only
`refreshed_at`/`expires_at`, never the stamp; a new endpoint, another identity, a row brought back
after it expired (each sets `changed_at`), a deletion or an expiry (the count and the id sum) do.

`compiled_services` (pure) is how the registry reaches a route table: a registered endpoint is
added to the document's service of that name (after its own endpoints, once per URL), or makes a
service of its own when the document has none; either way it is dialled with mTLS and must present
its identity (`Endpoint.tls.identity`, docs/mtls.md). A document's routes can name only the
document's services, so registered-only services serve east-west calls by name (the outbound
listener), not routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from routes.errors import RuleError
from routes.fields import NAME_RE
from routes.policies import ServiceTls
from routes.schema import config_versions, service_endpoints
from routes.services import Endpoint, Service
from routes.table import CompiledService

DEFAULT_TTL = timedelta(seconds=30)
MIN_TTL = timedelta(seconds=5)
MAX_TTL = timedelta(hours=1)
# rows expired this long ago are deleted by the next registration (kept a while so `peel services
# list` can still say an endpoint expired)
PRUNE_AFTER = timedelta(hours=1)

_IDENTITY = re.compile(r"spiffe://([a-z0-9._-]{1,255})/svc/([a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?)\Z")

# (live rows, sum of their ids, newest changed_at): equal stamps, equal live registry
Stamp = tuple[int, int, str]


def _watch_poll() -> Select[Any]:
    c = service_endpoints.c
    latest = select(func.coalesce(func.max(config_versions.c.version), 0)).scalar_subquery()
    return select(func.count(c.id), func.coalesce(func.sum(c.id), 0), func.max(c.changed_at),
                  func.min(c.expires_at), latest).where(c.expires_at > bindparam("now"))


# `watch_poll`'s statement, built once: building it took more of SQLAlchemy's time than running it.
_WATCH_POLL = _watch_poll()


@dataclass(frozen=True, slots=True)
class Registration:
    """One registered endpoint of a service, as the store keeps it."""

    service: str
    url: str
    identity: str
    registered_at: datetime
    refreshed_at: datetime
    expires_at: datetime

    def live(self, now: datetime) -> bool:
        return self.expires_at > now

    def endpoint(self) -> Endpoint:
        """The endpoint a table dials: mTLS, the peer must present `identity`."""
        parsed = Endpoint.parse(self.url, "endpoint")
        return Endpoint(parsed.scheme, parsed.host, parsed.port, tls=ServiceTls(identity=self.identity))

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"service": self.service, "endpoint": self.url, "identity": self.identity,
                               "registered_at": self.registered_at.isoformat(),
                               "refreshed_at": self.refreshed_at.isoformat(),
                               "expires_at": self.expires_at.isoformat()}
        if now is not None:
            out["live"] = self.live(now)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Registration:
        """What `to_dict` printed (a snapshot, the control plane's answer); `RuleError` otherwise."""
        try:
            return check(cls(str(data["service"]), str(data["endpoint"]), str(data["identity"]),
                             datetime.fromisoformat(data["registered_at"]),
                             datetime.fromisoformat(data["refreshed_at"]),
                             datetime.fromisoformat(data["expires_at"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise RuleError("registered", f"is not a registered endpoint: {exc}") from None


def check(registration: Registration) -> Registration:
    """`registration` when its service, URL and identity agree; `RuleError` naming the field."""
    if not NAME_RE.match(registration.service):
        raise RuleError("service", "must be 1-63 lower-case letters, digits, '.', '_' or '-', starting "
                        "and ending with a letter or digit", registration.service)
    endpoint = Endpoint.parse(registration.url, "endpoint")
    if endpoint.scheme != "https":
        raise RuleError("endpoint", "a registered endpoint is a sidecar's inbound listener, dialled "
                        "with mTLS: it must be https://", registration.url)
    found = _IDENTITY.match(registration.identity)
    if found is None or found.group(2) != registration.service:
        raise RuleError("identity", f"must be spiffe://<trust-domain>/svc/{registration.service}",
                        registration.identity)
    return registration


def _now() -> datetime:
    return datetime.now(UTC)


class RegistryRecords:
    """Registering, refreshing, listing and removing registered endpoints."""

    def _connect(self, *, write: bool = False) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # pragma: no cover - Store provides it

    def register_endpoint(self, service: str, url: str, identity: str, *, ttl: timedelta = DEFAULT_TTL,
                          now: datetime | None = None) -> Registration:
        """Register (or refresh) `url` under `service` for `ttl`; the row as stored.

        The URL is kept in its canonical form (`Endpoint.url`: lower-case host, explicit port), so
        the same endpoint spelt twice is one row.
        """
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise RuleError("ttl", f"must be from {int(MIN_TTL.total_seconds())} s to "
                            f"{int(MAX_TTL.total_seconds())} s", str(ttl.total_seconds()))
        when = now or _now()
        canonical = Endpoint.parse(url, "endpoint").url
        check(Registration(service, canonical, identity, when, when, when))
        expires = when + ttl
        c = service_endpoints.c
        for attempt in (1, 2):
            try:
                with self._connect(write=True) as conn:
                    # rows expired long ago go with any registration: no clean-up job is needed
                    conn.execute(delete(service_endpoints).where(c.expires_at <= when - PRUNE_AFTER))
                    row = conn.execute(select(c.id, c.identity, c.expires_at, c.registered_at)
                                       .where(c.service == service, c.url == canonical)).first()
                    if row is None:
                        conn.execute(insert(service_endpoints).values(
                            service=service, url=canonical, identity=identity, registered_at=when,
                            changed_at=when, refreshed_at=when, expires_at=expires))
                        registered_at = when
                    else:
                        values: dict[str, Any] = {"refreshed_at": when, "expires_at": expires}
                        if row.identity != identity or row.expires_at <= when:
                            values.update(identity=identity, changed_at=when)
                        conn.execute(update(service_endpoints).where(c.id == row.id).values(**values))
                        registered_at = row.registered_at
                return Registration(service, canonical, identity, registered_at, when, expires)
            except IntegrityError:
                if attempt == 2:  # pragma: no cover - two inserts raced twice
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def deregister_endpoint(self, service: str, url: str) -> bool:
        """Remove `url` from `service`'s registered endpoints; False when it was not there."""
        canonical = Endpoint.parse(url, "endpoint").url
        c = service_endpoints.c
        with self._connect(write=True) as conn:
            done = conn.execute(delete(service_endpoints)
                                .where(c.service == service, c.url == canonical)).rowcount
        return bool(done)

    def registrations(self, *, now: datetime | None = None, expired: bool = False) -> list[Registration]:
        """The live registered endpoints (and with `expired`, the expired rows not yet pruned), by
        service and URL."""
        c = service_endpoints.c
        query = select(c.service, c.url, c.identity, c.registered_at, c.refreshed_at, c.expires_at)
        if not expired:
            query = query.where(c.expires_at > (now or _now()))
        with self._connect() as conn:
            rows = conn.execute(query.order_by(c.service, c.url)).all()
        return [Registration(r.service, r.url, r.identity, r.registered_at, r.refreshed_at, r.expires_at)
                for r in rows]

    def registry_stamp(self, *, now: datetime | None = None) -> Stamp:
        """One aggregate that changes whenever the set of live registrations does (module docstring)."""
        return self.registry_poll(now=now)[0]

    def registry_poll(self, *, now: datetime | None = None) -> tuple[Stamp, datetime | None]:
        """`registry_stamp`, and when the first live registration expires (None: none is live).
        Until then the stamp changes only with a write (a watcher's `CommitProbe` sees those)."""
        return self.watch_poll(now=now)[1:]

    def watch_poll(self, *, now: datetime | None = None) -> tuple[int, Stamp, datetime | None]:
        """The newest config version number (`Store.latest_version`) and `registry_poll`, in one
        statement: what a watcher's read asks first, every few polls and at every change, in each
        serving process. As two, each on its own pooled connection and transaction, they cost
        twice the round trips on PostgreSQL and twice SQLAlchemy's own work, in a thread whose
        GIL the event loop waits for."""
        now = now or _now()
        with self._connect() as conn:
            row = conn.execute(_WATCH_POLL, {"now": now}).one()
        newest, first_expiry = row[2], row[3]
        stamp = int(row[0]), int(row[1]), newest.isoformat() if isinstance(newest, datetime) else str(newest)
        if first_expiry is not None and not isinstance(first_expiry, datetime):
            first_expiry = now  # not a time this code can compare: due at once, so nothing is skipped
        return int(row[4] or 0), stamp, first_expiry

    def prune_registry(self, *, now: datetime | None = None, after: timedelta = PRUNE_AFTER) -> int:
        """Delete the rows expired more than `after` ago; how many."""
        c = service_endpoints.c
        with self._connect(write=True) as conn:
            return int(conn.execute(delete(service_endpoints)
                                    .where(and_(c.expires_at <= (now or _now()) - after))).rowcount)


def by_service(registered: Iterable[Registration]) -> dict[str, tuple[Endpoint, ...]]:
    """The registered endpoints of each service, as table endpoints (by URL)."""
    out: dict[str, list[Endpoint]] = {}
    for r in sorted(registered, key=lambda r: (r.service, r.url)):
        out.setdefault(r.service, []).append(r.endpoint())
    return {name: tuple(endpoints) for name, endpoints in out.items()}


def compiled_services(services: Sequence[Service],
                      registered: Iterable[Registration] = ()) -> dict[str, CompiledService]:
    """The table's services: the document's, with the registered endpoints added (module docstring)."""
    extra = by_service(registered)
    out: dict[str, CompiledService] = {}
    for spec in services:
        endpoints = spec.endpoints
        added = extra.pop(spec.name, ())
        if added:
            listed = {e.url for e in endpoints}
            endpoints = endpoints + tuple(e for e in added if e.url not in listed)
        out[spec.name] = CompiledService(spec.name, endpoints, spec)
    for name, endpoints in extra.items():
        # the table dials `endpoints`, each with its own registration's identity
        out[name] = CompiledService(name, endpoints, Service(name, endpoints, tls=endpoints[0].tls))
    return out


def sources(table_services: Mapping[str, CompiledService], document_services: Sequence[Service],
            ) -> dict[str, dict[str, str]]:
    """Per service, per endpoint URL: `document` or `registered` (what `peel services list` shows)."""
    declared = {s.name: {e.url for e in s.endpoints} for s in document_services}
    return {name: {e.url: "document" if e.url in declared.get(name, set()) else "registered"
                   for e in service.endpoints}
            for name, service in table_services.items()}
