"""gateway/core/bytecode.py: the optimized bytecode the systemd unit runs, compiled ahead of time."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import gateway
from bench.run import UNIT, service_environment
from gateway.core import bytecode

ROOT = Path(__file__).resolve().parents[2]

MODULE = '''"""A docstring the optimized bytecode drops."""

def answer() -> int:
    """So is this one."""
    assert False, "asserts are dropped too"
    return 42
'''


def run_optimized(prefix: Path, path: Path, code: str) -> subprocess.CompletedProcess[str]:
    """`code` in a child Python set up as peel.service sets up `peel serve`, with `prefix` as its
    bytecode cache and `path` on its import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONOPTIMIZE="2", PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=str(prefix),
               PYTHONPATH=str(path))
    return subprocess.run([sys.executable, "-v", "-c", code], env=env, capture_output=True,
                          text=True, check=True)


def test_a_compiled_module_is_loaded_from_the_prefix_without_docstrings(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "__init__.py").write_text("")
    (source / "pkg" / "mod.py").write_text(MODULE)
    prefix = tmp_path / "pycache"
    assert bytecode.compile_into(prefix, [source], workers=1)
    # PYTHONPYCACHEPREFIX's layout: the source's directory under the prefix, no __pycache__
    compiled = prefix / str((source / "pkg").absolute()).lstrip("/") / \
        f"mod.{sys.implementation.cache_tag}.opt-2.pyc"
    assert compiled.is_file()
    assert not (source / "pkg" / "__pycache__").exists()  # nothing beside the sources
    assert sys.pycache_prefix is None  # set while compiling only
    assert os.environ.get("PYTHONPYCACHEPREFIX") is None

    done = run_optimized(prefix, source, "import pkg.mod as m; print(m.__doc__, m.answer.__doc__, "
                                         "m.answer())")
    assert done.stdout.split() == ["None", "None", "42"]
    # the import read the compiled file; a source compiled at import is "code object from <path>.py"
    assert f"code object from '{compiled}'" in done.stderr
    assert f"code object from {source.resolve()}" not in done.stderr


def test_without_the_compiled_files_the_module_still_imports(tmp_path: Path) -> None:
    """A file that is not in the cache (or did not compile) is compiled at import, not written."""
    (tmp_path / "alone.py").write_text(MODULE)
    done = run_optimized(tmp_path / "empty", tmp_path, "import alone; print(alone.answer())")
    assert done.stdout.strip() == "42"
    assert not (tmp_path / "empty").exists()


def test_the_directories_cover_the_standard_library_site_packages_and_peel() -> None:
    dirs = bytecode.directories()
    paths = sysconfig.get_paths()
    for needed in (paths["stdlib"], paths["purelib"], Path(gateway.__file__).parent):
        assert any(Path(needed).absolute().is_relative_to(d) for d in dirs), needed
    for a in dirs:
        assert not any(a != b and a.is_relative_to(b) for b in dirs), "no directory twice"


def test_tests_gui_and_the_base_pythons_packages_are_skipped() -> None:
    skip = bytecode.skip_pattern()
    stdlib = Path(sysconfig.get_paths()["stdlib"]).absolute()
    assert skip.search(f"{stdlib}/test/test_os.py")
    assert skip.search(f"{stdlib}/tkinter/__init__.py")
    assert not skip.search(f"{stdlib}/asyncio/base_events.py")
    purelib = Path(sysconfig.get_paths()["purelib"]).absolute()
    assert not skip.search(f"{purelib}/sqlalchemy/sql/base.py")
    if not purelib.is_relative_to(stdlib):  # a virtualenv: its base Python's packages are not used
        assert skip.search(f"{stdlib}/site-packages/anything.py")


def test_main_names_what_did_not_compile_and_compiles_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "good.py").write_text(MODULE)
    (tmp_path / "src" / "bad.py").write_text("def broken(:\n")
    monkeypatch.setattr(bytecode, "directories", lambda: [])
    assert bytecode.main([str(tmp_path / "cache"), str(tmp_path / "src")]) == 1
    out = capfd.readouterr()  # compileall's workers print to the file descriptors
    assert "bad.py" in out.out and "did not compile" in out.err
    assert list((tmp_path / "cache").rglob("good.*.opt-2.pyc"))
    assert not list((tmp_path / "cache").rglob("bad.*"))


def test_main_without_a_prefix_says_how_to_use_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert bytecode.main([]) == 2
    assert "usage: python -m gateway.core.bytecode PREFIX" in capsys.readouterr().err


def test_the_unit_the_installer_and_the_bench_agree() -> None:
    """peel.service loads the cache install.sh compiles into each release, and the bench applies
    the unit's settings (with its own cache)."""
    unit = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            unit.update(item.split("=", 1) for item in shlex.split(line.removeprefix("Environment=")))
    assert unit["PYTHONOPTIMIZE"] == str(bytecode.LEVEL)
    assert unit["PYTHONDONTWRITEBYTECODE"] == "1"
    assert unit["PYTHONPYCACHEPREFIX"] == "/opt/peel/current/pycache"
    install = (ROOT / "deploy" / "vm" / "install.sh").read_text()
    assert '"$release/bin/python" -m gateway.core.bytecode "$release/pycache"' in install
    assert 'ln -sfn "$release" "$PREFIX/current.new"' in install  # /opt/peel/current is the release

    bench = service_environment(pycache=Path("/x"))
    assert bench == {**{k: v for k, v in unit.items() if k.startswith("PYTHON")},
                     "PYTHONPYCACHEPREFIX": "/x"}
