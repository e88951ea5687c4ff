"""Relative paths in the settings resolve against a state directory, not the current directory
(which is `/` under systemd): `$STATE_DIRECTORY`, else the settings file's directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.settings import load_settings

RELATIVE = """
[database]
url = "sqlite:///./data/peel.db?timeout=5"
[server]
snapshot_path = "snap.json"
run_dir = "./.peel/run"
[access_log]
target = "logs/access.log"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "peel.toml"
    path.parent.mkdir()
    path.write_text(RELATIVE)
    return path


def test_relative_paths_resolve_against_the_settings_files_directory(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # what systemd gives a service
    s = load_settings(config, environ={})
    etc = config.parent
    assert s.database.url == f"sqlite:///{etc}/data/peel.db?timeout=5"
    assert s.server.snapshot_path == str(etc / "snap.json")
    assert s.server.run_dir == str(etc / ".peel" / "run")
    assert s.access_log.target == str(etc / "logs" / "access.log")


def test_systemds_state_directory_wins(config: Path, tmp_path: Path) -> None:
    state = tmp_path / "var" / "lib" / "peel"
    s = load_settings(config, environ={"STATE_DIRECTORY": f"{state}:/var/lib/other"})
    assert s.database.url == f"sqlite:///{state}/data/peel.db?timeout=5"
    assert s.server.run_dir == str(state / ".peel" / "run")
    # and without a settings file, the defaults land there too, not in /
    s = load_settings(None, environ={"STATE_DIRECTORY": str(state)})
    assert s.database.url == f"sqlite:///{state}/peel.db"
    assert s.server.snapshot_path == str(state / ".peel" / "snapshot.json")


def test_absolute_paths_memory_databases_and_stdout_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "peel.toml"
    path.write_text('[database]\nurl = "sqlite:////var/lib/peel/peel.db"\n'
                    '[server]\nrun_dir = "/run/peel"\n[access_log]\ntarget = "stdout"\n')
    s = load_settings(path, environ={})
    assert (s.database.url, s.server.run_dir, s.access_log.target) == (
        "sqlite:////var/lib/peel/peel.db", "/run/peel", "stdout")
    for url in ("sqlite://", "sqlite:///:memory:", "postgresql://peel@db/peel"):
        assert load_settings(path, environ={"PEEL_DATABASE_URL": url}).database.url == url


def test_without_a_file_or_systemd_the_current_directory_is_kept() -> None:
    s = load_settings(None, environ={})
    assert s.database.url == "sqlite:///./peel.db" and s.server.run_dir == "./.peel/run"
