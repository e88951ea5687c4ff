"""Alembic environment for Peel's store (shape after pypi/warehouse `warehouse/migrations/env.py`).

The database URL comes from the caller: the `url` config attribute (what `peel db upgrade` sets),
else `-x url=...` on the alembic command line, else `sqlalchemy.url` in an ini file. A caller may
instead hand over an open connection as the `connection` attribute (an in-memory SQLite store has
no URL another engine could reach).

On PostgreSQL the migration runs under a session advisory lock, so two gateways started at once
cannot migrate the same database together: the second waits, then finds the schema at head. A lock
timeout keeps a migration from queueing forever behind a long transaction while holding up every
query that comes after it.
"""

from __future__ import annotations

import contextlib
import logging.config
from typing import Any

from alembic import context
from sqlalchemy import Engine, create_engine, event, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from migrations import MIGRATION_LOCK_KEY
from routes.schema import metadata

config = context.config

# How long a node waits for another node's migration to finish, and how long one DDL statement
# waits for a table lock once migrating.
WAIT_FOR_OTHER_MIGRATION = "300s"
DDL_LOCK_TIMEOUT = "10s"
SQLITE_BUSY_TIMEOUT_MS = 300_000

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    # Only when run from the alembic command line: Peel's own process keeps its logging setup.
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url") \
        or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set the `url` config attribute")
    return str(url)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        # SQLite does roll DDL back; alembic assumes it cannot, and would then read the current
        # revision outside the transaction that holds the write lock
        transactional_ddl=True,
    )


def _migrate(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def _migrate_locked(connection: Connection) -> None:
    if connection.dialect.name != "postgresql":
        _migrate(connection)
        return
    key = {"key": MIGRATION_LOCK_KEY}
    connection.execute(text(f"SET lock_timeout = '{WAIT_FOR_OTHER_MIGRATION}'"))
    connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
    connection.execute(text(f"SET lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
    connection.commit()
    try:
        _migrate(connection)
    finally:
        # A broken session releases the lock when it closes; do not hide the original error.
        with contextlib.suppress(SQLAlchemyError):
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
            connection.execute(text("SET lock_timeout = DEFAULT"))
            connection.commit()


def _sqlite_immediate_transactions(engine: Engine) -> None:
    """Make a SQLite migration one real transaction that holds the write lock from its start.

    Python's sqlite3 module commits before DDL on its own and begins lazily, so without this a
    failed migration leaves half a schema, and two processes migrating at once both find the
    database empty and then collide.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def run_migrations_offline() -> None:
    url = _url()
    context.configure(url=url, target_metadata=metadata, literal_binds=True, compare_type=True,
                      render_as_batch=url.startswith("sqlite"), dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _migrate_locked(given)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    if engine.dialect.name == "sqlite":
        _sqlite_immediate_transactions(engine)
    try:
        with engine.connect() as connection:
            _migrate_locked(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
