"""Per-process live state: what a serving process publishes, and how the admin side merges it.

Other processes are real (`sleep` children) so that `os.kill(pid, 0)` sees them alive; their state
files are written with `Publisher.write` as a worker would.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.metrics import Metrics
from gateway.telemetry.procstats import LiveView, ProcessState, Publisher, merge_service, process_stats


@dataclass
class FakeUrl:
    url: str


@dataclass
class FakeEndpoint:
    endpoint: FakeUrl
    in_flight: int = 0
    healthy: bool = True
    ejected_until: float = 0.0

    def snapshot(self, now: float) -> dict[str, object]:
        ejected = self.ejected_until > now
        return {"url": self.endpoint.url, "healthy": self.healthy, "ejected": ejected,
                "state": "ejected" if ejected else "up" if self.healthy else "unhealthy",
                "in_flight": self.in_flight, "ejections": 1 if ejected else 0,
                "latency_ewma_ms": 2.0 + self.in_flight}


@dataclass
class FakeService:
    name: str
    endpoints: list[FakeEndpoint]
    in_flight: int = 0
    pending: int = 0
    ejections_total: int = 0
    circuit_open_total: int = 0

    def snapshot(self, now: float) -> dict[str, object]:
        return {"name": self.name, "in_flight": self.in_flight, "pending": self.pending,
                "ejections_total": self.ejections_total, "circuit_open_total": self.circuit_open_total,
                "max_requests": 100, "endpoints": [e.snapshot(now) for e in self.endpoints]}


@dataclass
class FakeUpstreams:
    """The `Upstreams` registry's read side (gateway/upstream/endpoints.py), as `ProcessState` uses it."""

    by_name: dict[str, FakeService] = field(default_factory=dict)

    def services(self) -> list[FakeService]:
        return list(self.by_name.values())


def service(in_flight: int, *, healthy: bool = True, ejected: bool = False) -> FakeService:
    endpoint = FakeEndpoint(FakeUrl("http://10.0.0.7:9000"), in_flight=in_flight, healthy=healthy,
                            ejected_until=1e12 if ejected else 0.0)
    return FakeService("orders", [endpoint], in_flight=in_flight, ejections_total=1 if ejected else 0)


@pytest.fixture
def other_pids() -> Iterator[Callable[[], int]]:
    """Pids of live processes that are not this one (stopped after the test)."""
    children: list[subprocess.Popen[bytes]] = []

    def spawn() -> int:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        children.append(child)
        return child.pid

    yield spawn
    for child in children:
        child.kill()
        child.wait()


def publish_as(pid: int, state: ProcessState, run_dir: Path, interval: float = 1.0) -> Path:
    """Write `state` as the file of process `pid`."""
    state.pid = pid
    publisher = Publisher(state, run_dir, interval)
    publisher.publish()
    return publisher.path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_process_publishes_its_metrics_upstreams_and_process_stats(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.request("orders", "orders", None, 200, 0.01)
    upstreams = FakeUpstreams({"orders": service(2, ejected=True)})
    state = ProcessState(metrics, upstreams=upstreams, gateway="0.0.0.0:8080")
    publisher = Publisher(state, tmp_path / "run", 1.0)
    publisher.publish()
    data = json.loads(publisher.path.read_text())
    assert publisher.path.name == f"proc-{os.getpid()}.json"
    assert data["pid"] == os.getpid() and data["gateway"] == "0.0.0.0:8080"
    assert data["metrics"]["requests"][0][:4] == ["orders", "orders", "", "2xx"]
    assert data["metrics"]["ejections"] == {"orders": 1}
    assert data["upstreams"] == [{"service": "orders", "in_flight": 2, "pending": 0, "endpoints": [
        {"url": "http://10.0.0.7:9000", "in_flight": 2, "healthy": True, "ejected": True}]}]
    assert data["services"]["orders"]["in_flight"] == 2
    assert data["process"]["resident_memory_bytes"] > 0 and data["process"]["cpu_seconds"] > 0
    assert not list((tmp_path / "run").glob(".*"))  # no temp file left behind
    publisher.remove()
    assert not publisher.path.exists()


def test_ejection_counts_stay_monotonic_when_a_service_is_dropped_and_comes_back() -> None:
    upstreams = FakeUpstreams({"orders": service(0)})
    state = ProcessState(Metrics(), upstreams=upstreams)
    upstreams.by_name["orders"].ejections_total = 3
    assert state.snapshot()["metrics"]["ejections"] == {"orders": 3}
    del upstreams.by_name["orders"]  # a table without the service
    assert state.snapshot()["metrics"]["ejections"] == {"orders": 3}
    upstreams.by_name["orders"] = service(0)  # back, with fresh state
    upstreams.by_name["orders"].ejections_total = 2
    assert state.snapshot()["metrics"]["ejections"] == {"orders": 5}


def test_live_view_sums_two_processes_and_shows_each(tmp_path: Path,
                                                     other_pids: Callable[[], int]) -> None:
    run = tmp_path / "run"
    a, b = Metrics(), Metrics()
    a.request("orders", "orders", None, 200, 0.01)
    b.request("orders", "orders", None, 200, 0.01)
    b.request("orders", "orders", None, 200, 0.01)
    publish_as(other_pids(), ProcessState(a, upstreams=FakeUpstreams({"orders": service(1)})), run)
    publish_as(other_pids(), ProcessState(b, upstreams=FakeUpstreams(
        {"orders": service(3, healthy=False, ejected=True)})), run)
    view = LiveView(run, interval=1.0)
    families = {f.name: f.samples for f in text_string_to_metric_families(view.render().decode())}
    assert [s.value for s in families["peel_requests"]] == [3]
    assert [s.value for s in families["peel_serving_processes"]] == [2]
    assert len(families["peel_worker_resident_memory_bytes"]) == 2

    live = view.service("orders")
    assert live is not None
    assert live["in_flight"] == 4 and live["ejections_total"] == 1
    endpoint = live["endpoints"]["http://10.0.0.7:9000"]
    assert endpoint["in_flight"] == 4
    assert endpoint["healthy"] is False  # unhealthy in one process
    assert endpoint["ejected"] is True and endpoint["state"] == "ejected"
    assert endpoint["latency_ewma_ms"] == 5.0  # the worst
    assert sorted(p["in_flight"] for p in live["processes"]) == [1, 3]
    assert view.service("payments") is None


def test_the_own_process_is_read_from_memory_not_from_its_file(tmp_path: Path,
                                                               other_pids: Callable[[], int]) -> None:
    run = tmp_path / "run"
    own = Metrics()
    local = ProcessState(own, upstreams=FakeUpstreams({"orders": service(1)}), role="single")
    Publisher(local, run, 1.0).publish()  # a stale copy of our own: must not be counted twice
    worker = Metrics()
    worker.request("r", "s", None, 200, 0.01)
    publish_as(other_pids(), ProcessState(worker), run)
    own.request("r", "s", None, 200, 0.01)
    own.request("r", "s", None, 200, 0.01)  # after the file was written: only memory has it
    view = LiveView(run, interval=1.0, local=local)
    processes = view.processes(view.local_snapshot())
    assert [p["pid"] == os.getpid() for p in processes] == [True, False]
    families = {f.name: f.samples for f in text_string_to_metric_families(
        view.render(view.local_snapshot()).decode())}
    assert [s.value for s in families["peel_requests"]] == [3]
    assert view.service("orders") is not None  # from memory alone


def test_files_of_dead_pids_are_ignored_and_removed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = publish_as(dead_pid(), ProcessState(Metrics()), run)
    view = LiveView(run, interval=1.0)
    assert view.processes() == []
    assert not path.exists()


def test_stale_files_and_other_gateways_files_are_ignored(tmp_path: Path,
                                                          other_pids: Callable[[], int]) -> None:
    run = tmp_path / "run"
    stale = publish_as(other_pids(), ProcessState(Metrics(), gateway="g"), run)
    data = json.loads(stale.read_text())
    data["time"] = time.time() - 11.0  # more than ten 1-second intervals ago
    stale.write_text(json.dumps(data))
    publish_as(other_pids(), ProcessState(Metrics(), gateway="another"), run)
    (run / "proc-notes.json").write_text("{}")
    fresh_pid = other_pids()
    publish_as(fresh_pid, ProcessState(Metrics(), gateway="g"), run)
    (run / f"proc-{other_pids()}.json").write_text("{not json")
    assert [p["pid"] for p in LiveView(run, interval=1.0, gateway="g").processes()] == [fresh_pid]
    assert stale.exists()  # alive: its writer may still catch up


def test_a_short_interval_still_allows_five_seconds_before_a_file_is_stale(
        tmp_path: Path, other_pids: Callable[[], int]) -> None:
    run = tmp_path / "run"
    late, gone = other_pids(), other_pids()
    for pid, age in ((late, 4.0), (gone, 6.0)):  # twenty and thirty 0.2-second intervals ago
        path = publish_as(pid, ProcessState(Metrics()), run, interval=0.2)
        data = json.loads(path.read_text())
        data["time"] = time.time() - age
        path.write_text(json.dumps(data))
    assert [p["pid"] for p in LiveView(run, interval=0.2).processes()] == [late]


def test_a_write_finishing_after_remove_does_not_bring_the_file_back(tmp_path: Path) -> None:
    # the publisher task is cancelled while its thread is still writing: the write must not land
    publisher = Publisher(ProcessState(Metrics()), tmp_path, 1.0)
    snapshot = publisher.state.snapshot()
    publisher.publish()
    assert publisher.path.exists()
    publisher.remove()
    assert publisher.write(snapshot) is False
    assert list(tmp_path.iterdir()) == []


def test_a_missing_run_dir_is_no_processes(tmp_path: Path) -> None:
    assert LiveView(tmp_path / "nothing", interval=1.0).processes() == []


def test_a_failed_write_is_reported_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("a file where the directory should be")
    publisher = Publisher(ProcessState(Metrics()), blocker, 1.0)
    assert publisher.write(publisher.state.snapshot()) is False
    assert publisher.write(publisher.state.snapshot()) is False
    assert len([r for r in caplog.records if "cannot publish" in r.message]) == 1  # once a minute


def test_the_publisher_task_writes_every_interval_and_removes_its_file(tmp_path: Path) -> None:
    asyncio.run(publish_until_seen(tmp_path))


async def publish_until_seen(tmp_path: Path) -> None:
    metrics = Metrics()
    publisher = Publisher(ProcessState(metrics), tmp_path / "run", 0.01)
    task = asyncio.create_task(publisher.run())
    metrics.request("r", "s", None, 200, 0.01)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the count recorded after the start shows up
        if publisher.path.exists():
            data = json.loads(publisher.path.read_text())
            if data["metrics"]["requests"]:
                break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the state was not published")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not publisher.path.exists()


def test_merge_service_combines_lists_or_maps_of_endpoints() -> None:
    per_process: list[tuple[int, dict[str, Any]]] = [
        (1, {"name": "s", "in_flight": 1, "balancer": "ewma",
             "endpoints": {"http://a:1": {"healthy": True, "in_flight": 1, "ejected_for": None}}}),
        (2, {"name": "s", "in_flight": 2, "balancer": "ewma",
             "endpoints": [{"url": "http://a:1", "healthy": True, "in_flight": 2, "ejected_for": 3.5}]}),
    ]
    merged = merge_service("s", per_process)
    assert merged["in_flight"] == 3 and merged["balancer"] == "ewma"
    assert merged["endpoints"] == {"http://a:1": {"healthy": True, "in_flight": 3, "ejected_for": 3.5}}
    assert [p["pid"] for p in merged["processes"]] == [1, 2]


def test_process_stats_reads_this_process() -> None:
    stats = process_stats()
    assert stats["resident_memory_bytes"] is not None and stats["resident_memory_bytes"] > 1_000_000
    assert stats["open_fds"] is not None and stats["open_fds"] > 0
    start = stats["start_time_seconds"]
    assert start is not None and time.time() - 3600 * 24 * 365 < start <= time.time()


def test_the_real_upstreams_registry_is_published_and_merged(tmp_path: Path) -> None:
    endpoints = pytest.importorskip("gateway.upstream.endpoints")
    from routes.compiler import compile_document
    from routes.model import Document

    document = Document.parse({
        "services": [{"name": "orders", "endpoints": ["http://10.0.0.7:9000", "http://10.0.0.8:9000"]}],
        "routes": [{"name": "orders", "match": {"path_prefix": "/"}, "service": "orders"}]})
    upstreams = endpoints.Upstreams()
    upstreams.update(compile_document(document, 1))
    state = ProcessState(Metrics(), upstreams=upstreams)
    snapshot = state.snapshot()
    assert [e["url"] for e in snapshot["upstreams"][0]["endpoints"]] == ["http://10.0.0.7:9000",
                                                                         "http://10.0.0.8:9000"]
    live = LiveView(tmp_path, interval=1.0, local=state).service("orders")
    assert live is not None and set(live["endpoints"]) == {"http://10.0.0.7:9000", "http://10.0.0.8:9000"}
    assert live["in_flight"] == 0 and live["endpoints"]["http://10.0.0.7:9000"]["healthy"] is True
