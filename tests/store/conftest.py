"""Store tests run against both backends: a SQLite file per test and a fresh PostgreSQL database
per test on one throwaway server for the session (skipped, with the reason, without binaries or
driver; in CI, where `.ci/run` installs both, that is a failure instead: see `tests.pg`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from routes.store import Store
from tests.pg import pg_server  # noqa: F401  (the session fixture used below)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        # a directory that does not exist yet: the store creates it
        return f"sqlite:///{tmp_path}/var/lib/peel/peel.db"
    server = request.getfixturevalue("pg_server")
    return str(server.create_database())


@pytest.fixture
def blank_store(store_url: str) -> Iterator[Store]:
    """A store on an empty, un-migrated database."""
    store = Store(store_url)
    yield store
    store.close()


@pytest.fixture
def store(blank_store: Store) -> Store:
    """A migrated, empty store."""
    blank_store.upgrade()
    return blank_store
