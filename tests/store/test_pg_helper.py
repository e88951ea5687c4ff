"""The throwaway PostgreSQL helper skips cleanly where PostgreSQL cannot run."""

from __future__ import annotations

import pytest

from tests import pg


def test_missing_binaries_raise_unavailable_with_the_places_searched(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "find_bindir", lambda: None)
    with pytest.raises(pg.PostgresUnavailable, match="pg_config"), pg.running_postgres():
        pass


def test_missing_binaries_skip_instead_of_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "find_bindir", lambda: None)
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL tests need a server"), \
            pg.postgres_or_skip():
        pass


@pytest.mark.postgres
def test_server_gives_separate_empty_databases(pg_server: pg.PostgresServer) -> None:
    from sqlalchemy import create_engine, inspect

    first, second = pg_server.create_database(), pg_server.create_database()
    assert first != second
    assert first.startswith(f"postgresql+psycopg://{pg_server.user}@127.0.0.1:{pg_server.port}/")
    engine = create_engine(first)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
