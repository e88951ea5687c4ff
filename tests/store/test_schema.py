"""Schema lifecycle: an un-migrated or too-new store is refused, upgrade is idempotent and safe to
run from two nodes at once, and the models never drift from the migrations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from migrations import alembic_config, script_head, script_revisions
from routes.errors import StoreError
from routes.model import Document
from routes.schema import metadata
from routes.store import Store


def test_unmigrated_store_is_refused_naming_the_upgrade_command(blank_store: Store) -> None:
    with pytest.raises(StoreError, match="peel db upgrade"):
        blank_store.check_schema()


def test_upgrade_from_empty_creates_the_tables_and_passes_the_check(blank_store: Store) -> None:
    blank_store.upgrade()
    blank_store.check_schema()
    tables = set(inspect(blank_store.engine).get_table_names())
    assert {"config_versions", "admin_tokens", "alembic_version"} <= tables


def test_upgrade_twice_keeps_the_data(store: Store) -> None:
    store.commit(Document(), actor="ops", reason="first")
    store.upgrade()
    store.check_schema()
    assert store.latest_version() == 1


def test_store_migrated_by_a_newer_peel_is_refused(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
    with pytest.raises(StoreError, match="newer Peel") as info:
        store.check_schema()
    assert "ffff_from_the_future" in str(info.value)


def test_store_behind_the_code_is_refused_naming_the_upgrade_command(store: Store) -> None:
    # Downgrading to nothing leaves an empty version table: the state of a store behind the code.
    command.downgrade(alembic_config(store.engine.url.render_as_string(hide_password=False)), "base")
    with pytest.raises(StoreError, match="peel db upgrade"):
        store.check_schema()
    store.upgrade()
    store.check_schema()


def test_the_schema_check_reads_the_same_revisions_as_alembic(store: Store, tmp_path: Path) -> None:
    # the check runs without alembic (it would stay in every serving process's memory); what it
    # reads from the version files must be what alembic reads
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    revisions = script_revisions()
    assert revisions == {rev.revision: rev.down_revision for rev in script.walk_revisions()}
    assert script_head(revisions) == script.get_current_head()
    with store.engine.connect() as conn:
        assert store.schema_state().current == ",".join(MigrationContext.configure(conn).get_current_heads())
    # a branch (two heads) or a file without its revision line is refused, not guessed
    with pytest.raises(RuntimeError, match="2 heads"):
        script_head({"a": None, "b": "a", "c": "a"})
    (tmp_path / "0001_x.py").write_text('"""x"""\nrevision = get()\n')
    with pytest.raises(RuntimeError, match="does not declare"):
        script_revisions(tmp_path)


def test_two_nodes_upgrading_at_once_both_succeed(store_url: str, tmp_path: Path) -> None:
    # Separate processes, as gateways on several VMs would be; they wait on a file to start together.
    go = tmp_path / "go"
    script = (
        "import sys, time, pathlib\n"
        "from routes.store import Store\n"
        "deadline = time.monotonic() + 30\n"
        "while not pathlib.Path(sys.argv[2]).exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.001)\n"
        "Store(sys.argv[1]).upgrade()\n"
    )
    nodes = [subprocess.Popen([sys.executable, "-c", script, store_url, str(go)],
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    go.touch()
    for node in nodes:
        _, stderr = node.communicate(timeout=120)
        assert node.returncode == 0, stderr
    with Store(store_url) as store:
        store.check_schema()


def test_models_and_migrations_do_not_drift(store: Store) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
    # and the same through the command an operator would run (`alembic check`)
    command.check(alembic_config(store.engine.url.render_as_string(hide_password=False)))


def test_in_memory_store_works_on_its_one_connection() -> None:
    with Store("sqlite://") as store:
        store.upgrade()
        store.check_schema()
        assert store.commit(Document(), actor="t", reason="r").version == 1


def test_unreachable_database_names_the_url_without_the_password() -> None:
    store = Store("postgresql+psycopg://peel:s3cret-pw@127.0.0.1:1/peel")
    with pytest.raises(StoreError) as info:
        store.latest_version()
    message = str(info.value)
    assert "127.0.0.1:1/peel" in message
    assert "s3cret-pw" not in message


def test_plain_postgresql_url_uses_the_psycopg_driver() -> None:
    store = Store("postgresql://peel@db.internal/peel")
    assert store.engine.dialect.driver == "psycopg"


def test_unsupported_database_is_refused() -> None:
    with pytest.raises(StoreError, match="SQLite or PostgreSQL"):
        Store("mysql://root@localhost/peel")


def test_sqlite_store_creates_its_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "peel.db"
    with Store(f"sqlite:///{path}") as store:
        store.upgrade()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert path.exists()


def test_every_sqlite_connection_keeps_a_small_page_cache(tmp_path: Path) -> None:
    # SQLite's default is 2,000 KiB a connection; a pooled connection kept that much of document pages
    # that nothing reads twice (versions are kept decoded)
    from routes.store import SQLITE_CACHE_KIB

    with Store(f"sqlite:///{tmp_path}/peel.db") as store:
        store.upgrade()
        with store.engine.connect() as first, store.engine.connect() as second:
            for conn in (first, second):
                assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -SQLITE_CACHE_KIB
    assert SQLITE_CACHE_KIB < 2000


def test_the_sqlite_file_and_its_wal_are_private_whatever_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0)
    try:
        store = Store(f"sqlite:///{tmp_path}/new/dir/peel.db")
        store.upgrade()
        store.commit(Document(), actor="ops", reason="first")
        with store.engine.connect() as conn:  # a reader keeps the WAL and shm files open
            conn.execute(text("SELECT 1"))
            files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "new" / "dir").iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert files["peel.db"] == 0o600
    assert files.get("peel.db-wal") == 0o600, files
    assert all(m == 0o600 for m in files.values()), files
    assert stat.S_IMODE((tmp_path / "new" / "dir").stat().st_mode) == 0o700


def test_every_unix_time_column_holds_times_past_2038(store: Store) -> None:
    """Columns of Unix seconds are 64-bit: a 32-bit one overflows on 2038-01-19 (PostgreSQL refuses
    the value; the store test runs on both backends)."""
    from sqlalchemy import BigInteger

    from routes.schema import metadata

    times = {("shadow_counts", "bucket"), ("graph_edges", "minute"), ("guard_samples", "slice")}
    for table, column in times:
        assert isinstance(metadata.tables[table].c[column].type, BigInteger), (table, column)
