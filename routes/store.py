"""The store: config versions, admin and join tokens, the service registry, the schema check and upgrade.
The only module with SQL (with its record mixins: `routes.join_tokens`, `routes.registry`, ...).

Synchronous on purpose: the admin API calls it from a thread pool, the watcher from its own thread,
and the CLI directly. Each public method is one short transaction on its own pooled connection.

A commit is one transaction that reads the latest version and inserts latest + 1. Writers are
serialised so two commits never both read the same latest version: SQLite by `BEGIN IMMEDIATE`
(the write lock is taken before the read), PostgreSQL by a transaction-scoped advisory lock. The
primary key on `version` stays as the backstop and turns into `ConflictError`.

The SQLite file defaults to WAL with a busy timeout, so readers (gateways polling the latest
version) never block the writer and a second writer waits instead of failing at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    Select,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from migrations import SchemaState, alembic_config, read_schema_state
from routes.document_text import (
    CODEC,
    DocumentCodec,
    Splice,
    apply_delta,
    decode_stored_steps,
    splice_base,
    text_delta,
)
from routes.errors import ConflictError, NotFoundError, PreconditionFailed, RuleError, StoreError
from routes.graph_records import GraphRecords
from routes.guard_records import GuardRecords
from routes.join_tokens import JoinTokenInfo as JoinTokenInfo
from routes.join_tokens import JoinTokenRecords
from routes.migration_records import CountDeltas as CountDeltas
from routes.migration_records import MigrationRecords
from routes.migration_records import Transition as Transition
from routes.migration_records import TransitionInfo as TransitionInfo
from routes.model import NAME_RE, Document
from routes.probe import CommitProbe
from routes.registry import Registration as Registration
from routes.registry import RegistryRecords
from routes.schema import admin_tokens, config_versions, migration_transitions
from routes.steps import Steps, run
from routes.tokens import DEFAULT_SCOPES, TokenGrant, closure
from routes.tokens import decode as decode_scopes
from routes.tokens import encode as encode_scopes

# PostgreSQL advisory lock key serialising commits: sha256(b"peel-commit")[:8] as a signed bigint.
COMMIT_LOCK_KEY = int.from_bytes(hashlib.sha256(b"peel-commit").digest()[:8], "big", signed=True)
# NOTIFY channel told about every new config version (payload: the version number).
NOTIFY_CHANNEL = "peel_config"
# decoded config versions a Store keeps: the latest (the next commit's summary is its diff against
# it; the watcher of the same process takes it as committed). Each costs its own name and match
# indexes (about 0.6 MiB for 10,000 routes; the route objects are shared). An older one is decoded
# again when asked for (a rollback, a diff), as an edit of the codec's last document: about 2 ms
# for the one before on a 10,000-route table, so keeping it too (until stop 22) bought little.
DECODED_KEPT = 1
# Every this many versions (and the newest), a config version keeps its whole text in the store; the
# others keep their splice of the version before (a few hundred bytes for a one-route change) and
# are rebuilt from the nearest whole text before them when read (`rebuild_text`): at most 31
# splices, each a copy of the text (about 5 ms for a 10,000-route table). Keeping every whole text
# (until stop 23 of wave 2) added 0.7 MB to the store at each one-route change of such a table.
TEXT_KEPT_EVERY = 32
SQLITE_BUSY_TIMEOUT_MS = 10_000
# SQLite's page cache per connection (PRAGMA cache_size, KiB; SQLite's default is 2,000). A version
# is read once and kept decoded, so cached document pages were never read again, yet each pooled
# connection kept up to 2 MiB of them: 1.1 MiB of a one-process gateway's RSS after changes to a
# 10,000-route table (bench/README.md, "A change to a large table", stop 20).
SQLITE_CACHE_KIB = 256
TOKEN_PREFIX = "peel_"
# verify_token writes last_used_at at most this often per token: one write a minute, not per request
LAST_USED_RESOLUTION = timedelta(minutes=1)
_EPOCH = datetime.fromtimestamp(0, UTC)
_MIGRATION_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One config version without its document (what history lists)."""

    version: int
    created_at: datetime
    actor: str
    reason: str
    summary: str = ""


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    """One config version with the whole document it committed."""

    version: int
    created_at: datetime
    actor: str
    reason: str
    document: Document
    summary: str = ""

    @property
    def info(self) -> VersionInfo:
        return VersionInfo(self.version, self.created_at, self.actor, self.reason, self.summary)


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """A config version as read from the database, its document not decoded yet (`text` is None
    when the store holds it decoded already): `Store.fetch`, then `Store.decoded_steps`."""

    version: int
    created_at: datetime
    actor: str
    reason: str
    summary: str
    text: str | None
    splice: Splice | None = None  # `text` made from the version before's (`Store.fetch`)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An admin token as listed: never the token itself."""

    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    scopes: frozenset[str] = DEFAULT_SCOPES
    expires_at: datetime | None = None

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= _now()

    @property
    def active(self) -> bool:
        return self.revoked_at is None and not self.expired


EMPTY_VERSION = ConfigVersion(0, _EPOCH, "", "no config version committed yet", Document())


def encode_document(document: Document, codec: DocumentCodec = CODEC) -> str:
    """The canonical text of a document (`routes.document_text`): equal documents give equal text.

    A document that still holds a regex this Peel refuses (read from an older store) is refused
    here, the one write path: a rollback to such a version included.
    """
    document.check_writable()
    return codec.encode(document)


def text_base(created_at: datetime) -> str:
    """What names a stored version's text in the splice of the next one (`text_delta`): when it was
    committed, in microseconds. Only a version of the same number and moment (the same row) is that
    text: after a restore from a backup and other commits, a number can name another one."""
    return str((created_at - _EPOCH) // timedelta(microseconds=1))


def rebuild_text(text: str, created_at: datetime, later: Iterable[tuple[datetime, str | None]]) -> str | None:
    """The text of the last of `later`'s versions: `text` (of the version committed at
    `created_at`) with the splice of each version after it applied in turn (`later`: each one's
    commit time and `delta`, consecutive versions). None when a splice is missing or does not fit
    the text before it."""
    base = text_base(created_at)
    for committed, delta in later:
        splice = apply_delta(text, delta, base) if delta is not None else None
        if splice is None:
            return None
        text, base = splice.text, text_base(committed)
    return text


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _fetch_statement(text_column: str | None) -> Select[Any]:
    c = config_versions.c
    texts = () if text_column is None else (c[text_column],)
    return select(c.version, c.created_at, c.actor, c.reason, c.summary, *texts) \
        .where(c.version == bindparam("version"))


# The statements every serving process runs at each change, built once (building one took
# SQLAlchemy longer than running it): the latest version's number, and `fetch`'s row with no text,
# the whole text or the splice.
_LATEST_VERSION = select(func.coalesce(func.max(config_versions.c.version), 0))
_FETCH = {text: _fetch_statement(text) for text in (None, "document", "delta")}

_c = config_versions.c
# A version's text as stored: from the nearest version at or before it that holds its whole text,
# each version's text or splice, in order (one statement: one snapshot of the rows).
_TEXT_CHAIN = select(_c.version, _c.created_at, _c.document, _c.delta).where(
    _c.version <= bindparam("version"),
    _c.version >= select(func.max(_c.version)).where(
        _c.version <= bindparam("version"), _c.document.is_not(None)).scalar_subquery(),
).order_by(_c.version)
# what a commit reads of the version it supersedes and the one before that, to leave a text out
_THIN_CHECK = select(_c.version, _c.created_at, _c.delta).where(
    _c.version.in_([bindparam("version"), bindparam("before")]))
_THIN = update(config_versions).where(_c.version == bindparam("thinned")).values(document=None)


class Store(MigrationRecords, JoinTokenRecords, GuardRecords, RegistryRecords, GraphRecords):
    """Config versions, admin and join tokens, migration records: one SQL database (SQLite or PostgreSQL).

    `Store("sqlite://")` is an in-memory store on a single shared connection, for tests and
    throw-away tools: it forgets everything when closed, and its threads share one transaction
    scope, so use it from one thread at a time.
    """

    def __init__(self, url: str) -> None:
        try:
            self._url: URL = make_url(url)
        except ArgumentError as exc:
            raise StoreError(f"database.url is not a database URL: {exc}") from exc
        if self._url.drivername == "postgresql":
            # psycopg (3) is the driver Peel ships with; SQLAlchemy's default would be psycopg2
            self._url = self._url.set(drivername="postgresql+psycopg")
        self.safe_url = self._url.render_as_string(hide_password=True)
        self._engine = self._make_engine()
        # Stored versions never change: the last few read or committed are kept decoded, and a new
        # one is encoded and decoded reusing the lines and objects of the one before (the process's
        # `DocumentCodec`), so a change to a large table costs what changed, in the admin API and
        # in every watcher.
        self._decoded: dict[int, Document] = {}
        self._codec = CODEC
        # The newest version this store read or committed whole: its number, `text_base` and
        # text (the codec holds the same string). The next version is written as a splice of it,
        # and read from its splice (`config_versions.delta`), not whole.
        self._last_text: tuple[int, str, str] | None = None
        self._probes: list[CommitProbe] = []  # handed out by `commit_probe`, closed with the store
        # told each version this store committed, in the committing thread (`on_commit`)
        self._committed: list[Callable[[int], None]] = []

    # -- engine set-up ----------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._url.get_backend_name()

    @property
    def engine(self) -> Engine:
        return self._engine

    def _make_engine(self) -> Engine:
        backend = self.dialect
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(f"database.url: Peel stores rules in SQLite or PostgreSQL, not {backend!r} "
                             f"({self.safe_url})")
        kwargs: dict[str, Any] = {}
        file = self._sqlite_file()
        memory = backend == "sqlite" and file is None
        if memory:
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        elif file is not None:
            _create_private(Path(file))
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                      "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            engine = create_engine(self._url, **kwargs)
        except ModuleNotFoundError as exc:
            raise StoreError(f"no driver for {self.safe_url}: {exc.name} is not installed "
                             "(for PostgreSQL install peel[postgres])") from exc
        except ArgumentError as exc:
            raise StoreError(f"database.url: {exc} ({self.safe_url})") from exc
        if backend == "sqlite":
            _sqlite_transactions(engine, wal=not memory)
        return engine

    def close(self) -> None:
        for probe in self._probes:
            probe.close()
        self._engine.dispose()

    def _sqlite_file(self) -> str | None:
        """The path of this store's SQLite file; None for PostgreSQL and an in-memory SQLite store."""
        database = self._url.database
        if self.dialect != "sqlite" or database in (None, "", ":memory:"):
            return None
        return database

    def commit_probe(self) -> CommitProbe | None:
        """A `CommitProbe` of this store's SQLite file, for one thread at a time; None where there is
        no cheap way to tell (PostgreSQL: the watcher is woken by NOTIFY; an in-memory store)."""
        path = self._sqlite_file()
        if path is None:
            return None
        probe = CommitProbe(path)
        self._probes.append(probe)
        return probe

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction; committed when the block ends, rolled back when it raises."""
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(peel_write=True)
                with conn.begin():
                    yield conn
        except (OperationalError, InterfaceError) as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            raise StoreError(f"the store at {self.safe_url} cannot be used: {reason}",
                             unreachable=True) from exc

    # -- schema -------------------------------------------------------------------------------

    def schema_state(self) -> SchemaState:
        with self._connect() as conn:
            return read_schema_state(conn)

    def check_schema(self) -> None:
        """Raise `StoreError` unless the database is migrated to exactly this code's schema."""
        state = self.schema_state()
        if state.current is None:
            raise StoreError(f"the store at {self.safe_url} is not initialised; run `peel db upgrade`")
        if state.unknown:
            raise StoreError(
                f"the store at {self.safe_url} has schema revision {state.current}, which this Peel "
                f"does not know (it knows up to {state.head}): it was migrated by a newer Peel; "
                "upgrade Peel on this machine")
        if state.current != state.head:
            raise StoreError(f"the store at {self.safe_url} has schema revision {state.current}, "
                             f"behind {state.head}; run `peel db upgrade`")

    def upgrade(self) -> None:
        """Migrate the database to this code's schema (alembic upgrade head); a no-op when current."""
        from alembic import command

        # alembic keeps the running migration in module globals, so one migration per process at a
        # time; other processes are held off by the database (advisory lock, BEGIN IMMEDIATE)
        with _MIGRATION_LOCK:
            try:
                if isinstance(self._engine.pool, StaticPool):
                    # in-memory: the schema must land on the one connection this store uses
                    with self._engine.connect() as conn:
                        command.upgrade(alembic_config(connection=conn), "head")
                        conn.commit()
                else:
                    command.upgrade(alembic_config(self._url.render_as_string(hide_password=False)),
                                    "head")
            except (OperationalError, InterfaceError) as exc:
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
                raise StoreError(f"cannot migrate the store at {self.safe_url}: {reason}") from exc

    # -- config versions ------------------------------------------------------------------------

    def latest_version(self) -> int:
        """The newest config version number; 0 when nothing was ever committed."""
        with self._connect() as conn:
            return int(conn.scalar(_LATEST_VERSION) or 0)

    def latest(self) -> ConfigVersion:
        """The newest config version (`EMPTY_VERSION` before the first commit); its document's
        text is read only when this store does not hold it decoded (`fetch`)."""
        latest = self.latest_version()
        return self.get(latest) if latest else EMPTY_VERSION

    def latest_text(self) -> tuple[int, str]:
        """The newest config version's number and its document's stored text, read as stored (the
        empty document's text before the first commit)."""
        latest = self.latest_version()
        return (latest, self._text(latest)) if latest else (0, DocumentCodec().encode(Document()))

    def get(self, version: int) -> ConfigVersion:
        return run(self.decoded_steps(self.fetch(version)))

    def fetch(self, version: int) -> StoredVersion:
        """Config version `version` as stored (blocking I/O), its document's text left out when
        this store holds the document decoded. When it holds the text of the version before, the
        text is made from the stored splice of that one (a few hundred bytes read instead of the
        whole text). `NotFoundError` when there is no such version."""
        known = version in self._decoded
        base = None if known else self._last_text
        if base is not None and base[0] != version - 1:
            base = None
        statement = _FETCH[None if known else "document" if base is None else "delta"]
        with self._connect() as conn:
            row = conn.execute(statement, {"version": version}).first()
        if row is None:
            raise NotFoundError("version", "no such config version", version)
        text: str | None = None
        splice = None
        if base is not None:
            splice = apply_delta(base[2], row.delta, base[1]) if row.delta is not None else None
            text = splice.text if splice is not None else self._text(version)
        elif not known:
            text = str(row.document) if row.document is not None else self._text(version)
        return StoredVersion(int(row.version), row.created_at, row.actor, row.reason, row.summary, text,
                             splice)

    def decoded_steps(self, stored: StoredVersion) -> Steps[ConfigVersion]:
        """The fetched version with its document, decoded in steps (`routes.steps`: no I/O, but
        for a version that left the decoded ones between the fetch and now)."""
        document = yield from self._document_steps(stored.version, stored.text, stored.splice)
        if stored.text is not None:
            self._keep_text(stored.version, stored.created_at, stored.text)
        return ConfigVersion(stored.version, stored.created_at, stored.actor, stored.reason, document,
                             stored.summary)

    def _document_steps(self, version: int, text: str | None, splice: Splice | None = None
                        ) -> Steps[Document]:
        """The document of stored `version` (its text, None: read it), decoded once and kept."""
        document = self._decoded.get(version)
        if document is None:
            if text is None:
                text = self._text(version)
            document = yield from decode_stored_steps(text, version, self._codec, splice)
            self._keep(version, document)
        return document

    def _keep_text(self, version: int, created_at: datetime, text: str) -> None:
        """Hold `text` as the base of the next version's splice, when `version` is the newest yet."""
        last = self._last_text
        if last is None or version > last[0]:
            self._last_text = (version, text_base(created_at), text)

    def _text(self, version: int) -> str:
        with self._connect() as conn:
            return _stored_text(conn, version)

    def history(self, limit: int = 50) -> list[VersionInfo]:
        """The newest `limit` config versions, newest first, without their documents."""
        c = config_versions.c
        with self._connect() as conn:
            rows = conn.execute(select(c.version, c.created_at, c.actor, c.reason, c.summary)
                                .order_by(c.version.desc()).limit(max(limit, 0))).all()
        return [VersionInfo(r.version, r.created_at, r.actor, r.reason, r.summary) for r in rows]

    def commit(self, document: Document, *, actor: str, reason: str, expected: int | None = None,
               summary: str | None = None, transitions: Sequence[Transition] = ()) -> VersionInfo:
        """Store `document` as config version latest + 1, in one transaction.

        When `expected` is given and is not the latest version, raise `PreconditionFailed` (field
        `If-Match`) and write nothing. `summary` defaults to the diff against the latest document.
        `transitions` are recorded in the same transaction, with the new version's number.
        """
        body = encode_document(document, self._codec)
        try:
            with self._connect(write=True) as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": COMMIT_LOCK_KEY})
                latest = int(conn.scalar(select(func.coalesce(func.max(config_versions.c.version), 0)))
                             or 0)
                if expected is not None and expected != latest:
                    raise PreconditionFailed(
                        "If-Match", f"config version {expected} is not the latest ({latest} is); "
                        "read it again and retry", expected)
                if summary is None:
                    summary = self._summary_against(conn, latest, document)
                info = VersionInfo(latest + 1, _now(), actor, reason, summary)
                base = self._last_text
                delta = text_delta(base[2], body, base[1]) if base is not None and base[0] == latest \
                    else None
                # The values as the execution's parameters, not in the statement (`.values(...)`):
                # SQLAlchemy's compiled cache keeps the statement it compiled, and with it the
                # values of the first execution (the first document ever committed, 0.7 MB for
                # 10,000 routes) for the engine's life.
                conn.execute(insert(config_versions), {
                    "version": info.version, "created_at": info.created_at, "actor": actor,
                    "reason": reason, "summary": summary, "document": body, "delta": delta})
                if latest % TEXT_KEPT_EVERY:
                    _thin(conn, latest)
                for t in transitions:
                    conn.execute(insert(migration_transitions), {
                        "route": t.route, "action": t.action, "from_stage": t.from_stage,
                        "to_stage": t.to_stage, "share": t.share, "actor": actor, "reason": reason,
                        "created_at": info.created_at, "config_version": info.version})
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                                 {"channel": NOTIFY_CHANNEL, "payload": str(info.version)})
        except IntegrityError as exc:
            raise ConflictError("version", "another change was committed at the same time; retry") \
                from exc
        self._keep(info.version, document)
        self._keep_text(info.version, info.created_at, body)
        for observer in self._committed:
            observer(info.version)
        return info

    def on_commit(self, observer: Callable[[int], None]) -> None:
        """Call `observer(version)` after each version this store commits, in the thread that
        committed it, in registration order (the serving process wakes its watcher, the admin API
        notes the version its request made: `gateway.admin.served`). An observer must not raise."""
        self._committed.append(observer)

    def _decode(self, body: str, version: int) -> Document:
        """The document of stored `version` (its text `body`), decoded once."""
        return run(self._document_steps(version, body))

    def _keep(self, version: int, document: Document) -> None:
        decoded = dict(self._decoded)  # replaced whole: readers in other threads see one or the other
        decoded[version] = document
        for old in sorted(decoded)[:-DECODED_KEPT]:
            del decoded[old]
        self._decoded = decoded

    def _summary_against(self, conn: Connection, latest: int, document: Document) -> str:
        from routes.diff import diff

        previous = Document()
        if latest:
            previous = self._decoded.get(latest) or self._decode(_stored_text(conn, latest), latest)
        return diff(previous, document).summary()

    # -- admin tokens ---------------------------------------------------------------------------

    def create_token(self, name: str, *, scopes: Sequence[str] = tuple(DEFAULT_SCOPES),
                     expires_at: datetime | None = None) -> str:
        """Create an admin token called `name`; return the token, which is shown only this once.

        The token holds `scopes` and what they imply (`routes.tokens`); by default every scope.
        With `expires_at` it stops working then. A revoked or expired token's name may be reused
        (its row is replaced); an active one's may not.
        """
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise RuleError("name", "must be 1-63 lower-case letters, digits, '.', '_' or '-', "
                            "starting and ending with a letter or digit", name)
        granted = encode_scopes(closure(scopes))
        now = _now()
        if expires_at is not None and (expires_at.tzinfo is None or expires_at <= now):
            raise RuleError("expires", "must be a time in the future (timezone-aware)",
                            expires_at.isoformat())
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        t = admin_tokens.c
        try:
            with self._connect(write=True) as conn:
                old = conn.execute(select(t.revoked_at, t.expires_at).where(t.name == name)).first()
                if old is not None:
                    if old.revoked_at is None and (old.expires_at is None or old.expires_at > now):
                        raise ConflictError("name", "an active token has this name; revoke it first",
                                            name)
                    conn.execute(delete(admin_tokens).where(t.name == name))
                conn.execute(insert(admin_tokens).values(name=name, token_hash=hash_token(token),
                                                         created_at=now, scopes=granted,
                                                         expires_at=expires_at))
        except IntegrityError as exc:
            raise ConflictError("name", "an active token has this name; revoke it first", name) \
                from exc
        return token

    def verify_token(self, token: str) -> str | None:
        """The name of the active token `token`, or None (see `grant`)."""
        grant = self.grant(token)
        return None if grant is None else grant.name

    def grant(self, token: str) -> TokenGrant | None:
        """What the active (not revoked, not expired) token `token` may do, or None.

        One query per call (a malformed token costs none); notes the use at most once a minute.
        """
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = hash_token(token)
        t = admin_tokens.c
        with self._connect() as conn:
            row = conn.execute(select(t.id, t.name, t.token_hash, t.last_used_at, t.scopes, t.expires_at)
                               .where(t.token_hash == digest, t.revoked_at.is_(None))).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        now = _now()
        if row.expires_at is not None and row.expires_at <= now:
            return None
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
            # the WHERE repeats the staleness test, so concurrent requests write once
            with self._connect(write=True) as conn:
                cutoff = now - LAST_USED_RESOLUTION
                conn.execute(update(admin_tokens)
                             .where(t.id == row.id,
                                    t.last_used_at.is_(None) | (t.last_used_at <= cutoff))
                             .values(last_used_at=now))
        return TokenGrant(str(row.name), decode_scopes(row.scopes), row.expires_at)

    def list_tokens(self) -> list[TokenInfo]:
        t = admin_tokens.c
        with self._connect() as conn:
            rows = conn.execute(select(t.name, t.created_at, t.last_used_at, t.revoked_at, t.scopes,
                                       t.expires_at).order_by(t.name)).all()
        return [TokenInfo(r.name, r.created_at, r.last_used_at, r.revoked_at, decode_scopes(r.scopes),
                          r.expires_at) for r in rows]

    def revoke_token(self, name: str) -> None:
        """Revoke the active token `name` (NotFoundError when there is none)."""
        t = admin_tokens.c
        with self._connect(write=True) as conn:
            done = conn.execute(update(admin_tokens).where(t.name == name, t.revoked_at.is_(None))
                                .values(revoked_at=_now())).rowcount
        if not done:
            raise NotFoundError("name", "no active token has this name", name)


def _create_private(path: Path) -> None:
    """Create the SQLite file 0600 (and missing directories 0700) whatever the umask, so that the
    rules and token hashes are the operator's alone; SQLite gives its WAL and shared-memory files
    the database file's mode. An existing file is left as it is."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"database.url: cannot create {path}: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _sqlite_transactions(engine: Engine, *, wal: bool) -> None:
    """Let SQLAlchemy, not the sqlite3 module, say when transactions begin.

    Python's sqlite3 begins transactions lazily and never with IMMEDIATE, so two writers could both
    read the latest version before either takes the write lock. (SQLAlchemy's documented recipe for
    pysqlite, plus `BEGIN IMMEDIATE` for connections marked `peel_write`.)
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
            # Debian builds SQLite with secure_delete on: every freed page is zeroed. A left-out text
            # (`TEXT_KEPT_EVERY`) frees 0.7 MB of pages for 10,000 routes, which the next commit's
            # text takes again (a commit took 11.5 ms instead of 7.6); FAST zeroes only what costs
            # no extra I/O.
            cursor.execute("PRAGMA secure_delete = FAST")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("peel_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _stored_text(conn: Connection, version: int) -> str:
    """Stored `version`'s whole text: as stored, or rebuilt when it was left out (`TEXT_KEPT_EVERY`)."""
    rows = conn.execute(_TEXT_CHAIN, {"version": version}).all()
    if not rows or rows[-1].version != version:
        raise NotFoundError("version", "no such config version", version)
    first = rows[0]
    text = rebuild_text(str(first.document), first.created_at,
                        [(row.created_at, row.delta) for row in rows[1:]])
    if text is None:
        raise StoreError(f"config version {version}: its text was left out and the splices from "
                         f"version {first.version} do not rebuild it (was the store edited by hand?)")
    return text


def _thin(conn: Connection, version: int) -> None:
    """Leave out the whole text of `version`, which a commit has just superseded, when its splice
    names the text of the version before it in this database (a writer could have made it from a
    text another database held: after a restore from a backup, say); it is then rebuilt from there."""
    rows = {row.version: row for row in conn.execute(_THIN_CHECK, {"version": version,
                                                                   "before": version - 1})}
    row, before = rows.get(version), rows.get(version - 1)
    if row is None or before is None or row.delta is None:
        return
    if splice_base(row.delta) == text_base(before.created_at):
        conn.execute(_THIN, {"thinned": version})
