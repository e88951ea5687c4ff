"""Alembic environment and versions of the store's schema.

`alembic_config(url)` is how Peel runs alembic: the script location is this installed package
directory, so no alembic.ini is needed on the operator's side, and the database URL travels as a
config attribute (never through ConfigParser, which would choke on a `%` in a password).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

SCRIPT_LOCATION = Path(__file__).resolve().parent

# Key of the PostgreSQL advisory lock held while migrating (two nodes never migrate at once): the
# first eight bytes of sha256(b"peel-migrations"), as the signed bigint PostgreSQL expects.
MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"peel-migrations").digest()[:8], "big", signed=True)


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Config:
    """An alembic `Config` for Peel's migrations against `url` (or an open `connection`)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.attributes["url"] = url
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database stands against this code's migrations.

    `current` is the database's revision (None: never migrated), `head` this code's newest one;
    `unknown` is true when the database names a revision this code does not have (a newer Peel
    migrated it).
    """

    current: str | None
    head: str
    unknown: bool


def read_schema_state(connection: Connection) -> SchemaState:
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {SCRIPT_LOCATION}")
    known = {rev.revision for rev in script.walk_revisions()}
    current = MigrationContext.configure(connection).get_current_heads()
    return SchemaState(",".join(current) or None, head, any(rev not in known for rev in current))
