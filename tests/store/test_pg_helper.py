"""The throwaway PostgreSQL helper skips cleanly where PostgreSQL cannot run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests import pg


def test_missing_binaries_raise_unavailable_with_the_places_searched(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "find_bindir", lambda: None)
    with pytest.raises(pg.PostgresUnavailable, match="pg_config"), pg.running_postgres():
        pass


def test_missing_binaries_skip_instead_of_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(pg, "find_bindir", lambda: None)
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL tests need a server"), \
            pg.postgres_or_skip():
        pass


def outcome() -> BaseException | None:
    """What entering `postgres_or_skip()` raised (pytest's skip and fail are BaseExceptions)."""
    try:
        with pg.postgres_or_skip():
            return None
    except BaseException as exc:
        return exc


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_missing_driver_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(pg, "find_bindir", lambda: tmp_path)  # binaries "found": the driver is next
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    raised = outcome()
    # caught here: a skip escaping the test would report it skipped, not failed
    assert isinstance(raised, pytest.fail.Exception), repr(raised)
    assert "cannot run in CI: psycopg is not installed" in str(raised)


def test_in_ci_missing_binaries_fail_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(pg, "find_bindir", lambda: None)
    raised = outcome()
    assert isinstance(raised, pytest.fail.Exception), repr(raised)
    assert "cannot run in CI" in str(raised)


def test_outside_ci_a_missing_driver_skips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CI", "false")
    monkeypatch.setattr(pg, "find_bindir", lambda: tmp_path)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(pytest.skip.Exception, match="psycopg is not installed"), pg.postgres_or_skip():
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
