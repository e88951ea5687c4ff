"""Live-state files in `server.run_dir`: created private whatever the umask, never through a
symlink, refused in another user's directory, and checked before they reach /metrics."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.errors import ConfigError
from gateway.telemetry.accesslog import AccessLog
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.procstats import LiveView, ProcessState, Publisher, check_snapshot, secure_run_dir


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def sleeper() -> Iterator[int]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_run_dir_and_the_files_are_private_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    run = tmp_path / "state" / "run"
    publisher = Publisher(ProcessState(Metrics()), run, 1.0)
    assert publisher.write(publisher.state.snapshot())
    assert mode(run) == 0o700
    assert mode(publisher.path) == 0o600
    assert [p.name for p in run.iterdir()] == [publisher.path.name]  # no temp file left


def test_a_symlink_at_the_old_temp_name_or_the_file_name_is_not_followed(tmp_path: Path) -> None:
    run = secure_run_dir(tmp_path / "run")
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    state = ProcessState(Metrics())
    publisher = Publisher(state, run, 1.0)
    (run / f".{publisher.path.name}.tmp").symlink_to(victim)  # the name used to be predictable
    publisher.path.symlink_to(victim)
    assert publisher.write(state.snapshot())
    assert victim.read_text() == "keep me"
    assert not publisher.path.is_symlink() and json.loads(publisher.path.read_text())["pid"] == state.pid


def test_a_run_dir_of_another_user_is_refused_naming_the_setting(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o777)
        os.chown(foreign, 65534, 65534)
    else:
        foreign = Path("/")  # root's
    with pytest.raises(ConfigError) as info:
        secure_run_dir(foreign)
    assert info.value.key == "server.run_dir" and "owned by uid" in str(info.value)
    if os.geteuid() == 0:
        link = tmp_path / "link"
        link.symlink_to(foreign)
        with pytest.raises(ConfigError, match="owned by uid"):
            secure_run_dir(link)


def test_a_run_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        secure_run_dir(tmp_path / "file")


def test_a_group_writable_run_dir_of_this_user_is_made_private(tmp_path: Path, open_umask: None) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o777)
    secure_run_dir(run)
    assert mode(run) == 0o700


def good(pid: int) -> dict[str, object]:
    state = ProcessState(Metrics(), gateway="g")
    state.pid = pid
    return {**state.snapshot(), "process": {}}


@pytest.mark.parametrize(("change", "why"), [
    ({"pid": "1"}, "wrong type"),
    ({"time": -5.0}, "out of bounds"),
    ({"time": float("nan")}, "out of bounds"),
    ({"metrics": {"in_flight": 10**30}}, "out of bounds"),
    ({"metrics": {"overflow": -7}}, "out of bounds"),
    ({"gateway": "x" * 5000}, "another gateway"),
    ({"services": {"s": {"name": "x" * 5000}}}, "5000 characters"),
    ({"metrics": {"nested": [[[[[[[[[[[[[[0]]]]]]]]]]]]]]}}, "deeper"),
    ({"metrics": "lots"}, "wrong type"),
])
def test_check_snapshot_refuses_bad_types_and_bounds(change: dict[str, object], why: str) -> None:
    assert check_snapshot(good(7), 7, "g") is None
    assert why in (check_snapshot({**good(7), **change}, 7, "g") or "")


def test_bad_files_are_ignored_and_logged_and_metrics_still_render(
        tmp_path: Path, sleeper: int, caplog: pytest.LogCaptureFixture) -> None:
    run = secure_run_dir(tmp_path / "run")
    view = LiveView(run, interval=1.0, gateway="g")
    path = run / f"proc-{sleeper}.json"
    bad = good(sleeper)
    bad["metrics"] = {**bad["metrics"], "in_flight": -1000}  # type: ignore[dict-item]
    path.write_text(json.dumps(bad))
    assert view.processes() == []
    assert "ignored: it holds the number -1000" in caplog.text
    # a shape the renderer cannot read, though every value is in bounds: left out, not a 500
    odd = good(sleeper)
    odd["metrics"] = {**odd["metrics"], "requests": [["orders"]]}  # type: ignore[dict-item]
    path.write_text(json.dumps(odd))
    text = view.render().decode()
    assert "peel_" in text and f'pid="{sleeper}"' not in text
    assert "cannot be rendered" in caplog.text
    # a symlink and a FIFO are not read
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(good(sleeper)))
    path.unlink()
    path.symlink_to(target)
    assert view.processes() == []
    path.unlink()
    os.mkfifo(path)
    assert view.processes() == []  # and did not hang on the FIFO
    assert "not a regular file" in caplog.text or "cannot be opened" in caplog.text
    path.unlink()
    path.write_text(json.dumps(good(sleeper)))
    assert [p["pid"] for p in view.processes()] == [sleeper]


def test_the_admin_view_refuses_a_foreign_run_dir_when_built(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 65534, 65534)
    else:
        foreign = Path("/")
    with pytest.raises(ConfigError, match=r"server\.run_dir"):
        LiveView(foreign, interval=1.0)
    assert mode(LiveView(tmp_path / "fresh", interval=1.0).run_dir) == 0o700


def test_an_access_log_file_is_created_private_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    log = AccessLog(str(tmp_path / "access.log"))
    log.close()
    assert mode(tmp_path / "access.log") == 0o600
