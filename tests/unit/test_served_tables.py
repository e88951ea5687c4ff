"""The workers' table versions for the master's admin API (gateway/server/served_tables.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.server.served_tables import TableVersionFile, served_version, table_file, workers_serve
from routes.compiler import compile_document
from routes.model import Document

DOC = {"services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}],
       "routes": [{"name": "all", "match": {"path_prefix": "/"}, "service": "legacy"}]}


def test_a_worker_writes_each_table_s_version_and_removes_the_file_when_it_ends(tmp_path: Path) -> None:
    run = tmp_path / "run"  # made when missing
    file = TableVersionFile(run, 41)
    assert served_version(run, 41) is None
    file.table(compile_document(Document.parse(DOC), 7))
    assert served_version(run, 41) == 7
    file.table(compile_document(Document.parse(DOC), 8))
    assert served_version(run, 41) == 8
    assert [p.name for p in run.iterdir()] == ["table-41"]  # no temporary file left
    assert os.stat(run).st_mode & 0o777 == 0o700
    file.remove()
    assert not table_file(run, 41).exists()


def test_a_file_that_cannot_be_written_is_said_once_and_never_raises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "run").write_text("not a directory")
    file = TableVersionFile(tmp_path / "run", 1)
    for version in (1, 2):
        file.table(compile_document(Document.parse(DOC), version))
    assert caplog.text.count("cannot write") == 1


def test_the_master_waits_for_every_live_worker(tmp_path: Path) -> None:
    async def main() -> None:
        files = {pid: TableVersionFile(tmp_path, pid) for pid in (11, 12)}
        files[11].table(compile_document(Document.parse(DOC), 5))
        live = [11, 12]
        # 12 has said nothing yet (starting): waited for, not skipped
        assert not await workers_serve(tmp_path, lambda: live, 5, 0.02)
        waiting = asyncio.create_task(workers_serve(tmp_path, lambda: live, 5, 5.0))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        files[12].table(compile_document(Document.parse(DOC), 6))  # a later version serves too
        assert await waiting
        # a worker that died is no longer asked
        live.remove(11)
        assert await workers_serve(tmp_path, lambda: live, 6, 0.0)
        assert await workers_serve(tmp_path, lambda: [], 99, 0.0)

    asyncio.run(main())
