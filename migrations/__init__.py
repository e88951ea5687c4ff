"""Alembic environment and versions of the store's schema.

`alembic_config(url)` is how Peel runs alembic: the script location is this installed package
directory, so no alembic.ini is needed on the operator's side, and the database URL travels as a
config attribute (never through ConfigParser, which would choke on a `%` in a password).
"""

from __future__ import annotations

import hashlib
import re
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
    """The database's revision against this code's, read without importing alembic.

    Every serving process checks its store on start; alembic (with mako) would stay in its memory
    for nothing, so the revisions are read from the version files' `revision`/`down_revision`
    lines, and the database's from alembic's own `alembic_version` table.
    """
    from sqlalchemy import inspect, text

    revisions = script_revisions()
    head = script_head(revisions)
    current: list[str] = []
    if inspect(connection).has_table(VERSION_TABLE):
        current = [row[0] for row in connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]
    return SchemaState(",".join(sorted(current)) or None, head,
                       any(rev not in revisions for rev in current))


VERSION_TABLE = "alembic_version"
_ASSIGNMENT = re.compile(r'^(revision|down_revision)\s*(?::[^=]*)?=\s*(?:"([^"]*)"|\'([^\']*)\'|None)\s*$',
                         re.MULTILINE)


def script_revisions(directory: Path = SCRIPT_LOCATION / "versions") -> dict[str, str | None]:
    """Each migration's revision and the one it follows (None for the first), from its file."""
    found: dict[str, str | None] = {}
    for path in sorted(directory.glob("*.py")):
        values: dict[str, str | None] = {}
        for match in _ASSIGNMENT.finditer(path.read_text(encoding="utf-8")):
            values[match.group(1)] = match.group(2) or match.group(3)
        revision = values.get("revision")
        if revision is None or "down_revision" not in values:
            raise RuntimeError(f"{path} does not declare `revision` and `down_revision` on their own lines")
        found[revision] = values["down_revision"]
    return found


def script_head(revisions: dict[str, str | None]) -> str:
    """The one revision no other follows."""
    heads = set(revisions) - {down for down in revisions.values() if down is not None}
    if len(heads) != 1:
        raise RuntimeError(f"migrations in {SCRIPT_LOCATION} have {len(heads)} heads ({sorted(heads)}); "
                           "expected one")
    return heads.pop()
