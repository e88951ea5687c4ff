"""tests/access_log.py: a test reading a log mid-write sees whole lines only."""

from __future__ import annotations

from pathlib import Path

from tests.access_log import records, whole_lines


def test_a_torn_last_line_is_left_for_the_next_look(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    assert records(log) == []
    log.write_text('{"request_id":"a"}\n{"request_id":"b","pa')
    assert records(log) == [{"request_id": "a"}]
    with log.open("a") as file:
        file.write('th":"/x"}\n')
    assert [record["request_id"] for record in records(log)] == ["a", "b"]
    log.write_text('{"partial')
    assert whole_lines(log) == []
