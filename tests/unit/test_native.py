"""The compiled data path is used only when its build matches the sources (gateway/core/native.py)."""

from __future__ import annotations

import argparse
import ast
import importlib.machinery
import os
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import gateway.edge.protocol
import gateway.http.framing
from gateway.cli import native as native_cli
from gateway.core import native

SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
TAG = sys.implementation.cache_tag


def fake_build(tmp_path: Path) -> tuple[Path, Path]:
    """A source tree holding every native module, and a build of it (empty extension files)."""
    root, build = tmp_path / "src", tmp_path / "build"
    modules = {}
    for name in native.NATIVE_MODULES:
        source = native.source_path(name, root)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"# {name}\n")
        file = name.replace(".", "/") + SUFFIX
        (build / file).parent.mkdir(parents=True, exist_ok=True)
        (build / file).write_bytes(b"")
        modules[name] = (native.source_hash(source), file)
    (build / f"abc__mypyc{SUFFIX}").write_bytes(b"")
    manifest = native.Manifest(modules=modules, shared=("abc__mypyc", f"abc__mypyc{SUFFIX}"), python=TAG,
                               compiler="mypyc 0", built="2026-12-04T00:00:00Z")
    (build / native.MANIFEST).write_text(manifest.to_json())
    return root, build


def test_a_build_that_matches_its_sources_is_used(tmp_path: Path) -> None:
    root, build = fake_build(tmp_path)
    state, finder = native.check(build, root, environ={})
    assert state.active, state.reason
    assert finder is not None
    spec = finder.find_spec("gateway.edge.protocol")
    assert spec is not None and spec.origin == str(build / ("gateway/edge/protocol" + SUFFIX))
    assert isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
    shared = finder.find_spec("abc__mypyc")
    assert shared is not None and shared.origin == str(build / f"abc__mypyc{SUFFIX}")
    # anything else is left to the other finders
    assert finder.find_spec("gateway.admin.app") is None
    assert finder.find_spec("json") is None


def test_one_edited_source_turns_the_whole_build_off_and_names_it(tmp_path: Path) -> None:
    root, build = fake_build(tmp_path)
    native.source_path("gateway.http.framing", root).write_text("# edited\n")
    state, finder = native.check(build, root, environ={})
    assert finder is None and not state.active
    assert state.reason == "gateway/http/framing.py changed since the build: build again"
    assert state.manifest is not None  # a build is there: serve warns (gateway.server.serve.log_native)


def test_a_deleted_source_turns_it_off(tmp_path: Path) -> None:
    root, build = fake_build(tmp_path)
    native.source_path("gateway.edge.cycle", root).unlink()
    state, finder = native.check(build, root, environ={})
    assert finder is None and "gateway/edge/cycle.py changed" in state.reason


@pytest.mark.parametrize("value", ["off", "0", "false", "OFF"])
def test_the_environment_turns_it_off(tmp_path: Path, value: str) -> None:
    root, build = fake_build(tmp_path)
    state, finder = native.check(build, root, environ={"PEEL_NATIVE": value})
    assert finder is None and state.reason == f"turned off by PEEL_NATIVE={value}"


def test_no_build_is_pure_python_without_a_warning(tmp_path: Path) -> None:
    state, finder = native.check(tmp_path / "none", tmp_path, environ={})
    assert finder is None and state.manifest is None
    assert state.reason.startswith("no build in ")


def test_a_missing_extension_file_turns_it_off(tmp_path: Path) -> None:
    root, build = fake_build(tmp_path)
    (build / ("gateway/upstream/pool" + SUFFIX)).unlink()
    state, finder = native.check(build, root, environ={})
    assert finder is None and state.reason.startswith("gateway/upstream/pool" + SUFFIX + " is missing")
    (build / ("gateway/upstream/pool" + SUFFIX)).write_bytes(b"")
    (build / f"abc__mypyc{SUFFIX}").unlink()
    state, finder = native.check(build, root, environ={})
    assert finder is None and "abc__mypyc" in state.reason


def test_a_build_for_another_python_or_module_list_is_not_used(tmp_path: Path) -> None:
    root, build = fake_build(tmp_path)
    text = (build / native.MANIFEST).read_text()
    (build / native.MANIFEST).write_text(text.replace(f'"{TAG}"', '"cpython-399"'))
    state, _ = native.check(build, root, environ={})
    assert not state.active and state.reason == f"built for cpython-399, this is {TAG}"
    (build / native.MANIFEST).write_text(text.replace('"gateway.edge.cycle"', '"gateway.edge.gone"'))
    state, _ = native.check(build, root, environ={})
    assert not state.active and state.reason == "built for another list of modules: build again"
    (build / native.MANIFEST).write_text("{not json")
    state, _ = native.check(build, root, environ={})
    assert not state.active and state.reason.startswith("unreadable manifest")


def test_every_native_module_is_a_gateway_module_that_exists() -> None:
    # `gateway/__init__.py` installs the finder: only its own modules are sure to come after it
    assert all(name.startswith("gateway.") for name in native.NATIVE_MODULES)
    assert len(set(native.NATIVE_MODULES)) == len(native.NATIVE_MODULES)
    for name in native.NATIVE_MODULES:
        assert native.source_path(name).exists(), name


# Module-level names of the native modules that are not constants: type aliases and type variables
# (no runtime use in annotations), `__all__`, and what a test replaces (`pool._now`: the clock of
# the certificate expiry test). Anything else at module level is `Final`.
NOT_FINAL = {"Scope", "Message", "Receive", "Send", "Respond", "ChunkErrorFactory", "Headers", "Key",
             "Deltas", "Outcome", "__all__", "gateway.upstream.pool._now", "gateway.core.memo.K",
             "gateway.core.memo.V"}


def test_the_native_modules_constants_are_final() -> None:
    """Compiled, a `Final` module-level name is a C static; any other is a dict lookup in the
    module's globals each time it is read (mypyc's `CPyDict_GetItem`), on the request path."""
    plain = []
    for name in native.NATIVE_MODULES:
        tree = ast.parse(native.source_path(name).read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
                annotation = ast.unparse(node.annotation)
                targets = [] if annotation.startswith("Final") else [node.target.id]
            else:
                continue
            plain += [f"{name}.{t}" for t in targets if t not in NOT_FINAL and f"{name}.{t}" not in NOT_FINAL]
    assert plain == []


def test_status_says_what_this_python_would_do() -> None:
    env = {**os.environ, "PEEL_NATIVE": "off"}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "native", "status"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == "native: not used: turned off by PEEL_NATIVE=off\n"


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI builds the native data path (make test); "
                    "a developer's tree may be edited since its build")
def test_ci_runs_the_compiled_data_path() -> None:
    # `make test` builds first: where the machine can compile, the suite runs what production runs
    state = native.state()
    if native.turned_off():
        pytest.skip("PEEL_NATIVE turns the compiled data path off for this run")
    assert state.active, state.reason
    assert native.is_compiled(gateway.edge.protocol) and native.is_compiled(gateway.http.framing)


def test_two_builds_at_once_take_turns_and_the_second_finds_the_first_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "venv" / "lib" / "peel-native"
    built: list[tuple[float, float]] = []

    def slow_build(into: Path, jobs: int, quiet: bool = True) -> native.Manifest:
        start = time.monotonic()
        time.sleep(0.3)
        into.mkdir(parents=True, exist_ok=True)
        built.append((start, time.monotonic()))
        return native.Manifest(modules={}, shared=("x", "x"), python=TAG, compiler="mypyc 0",
                               built="2026-12-04T00:00:00Z")

    def check(into: Path, environ: dict[str, str]) -> tuple[native.NativeState, None]:
        return native.NativeState(into.exists(), "built" if into.exists() else "no build"), None

    monkeypatch.setattr(native_cli, "native", SimpleNamespace(
        check=check, native_dir=lambda: target, NATIVE_MODULES=native.NATIVE_MODULES))
    monkeypatch.setattr(native_cli, "missing_tools", lambda: None)
    monkeypatch.setattr(native_cli, "build", slow_build)
    args = argparse.Namespace(require=False, force=False, jobs=1, verbose=False)
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(native_cli.cmd_build(args))) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    out = capsys.readouterr().out
    assert codes == [0, 0] and len(built) == 1
    assert "waiting for another build" in out and "up to date" in out
