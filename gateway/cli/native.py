"""`peel native build` and `peel native status`: the data path compiled to C by mypyc.

`build` compiles `gateway.core.native.NATIVE_MODULES` with mypyc (part of the mypy distribution)
and a C compiler into `<venv>/lib/peel-native/`, in a temporary directory first, then swapped in
whole, the manifest last: a process starting meanwhile sees the old build or the new one, never half
of one. Needs mypy (the `dev` extra, or `pip install mypy`), a C compiler and Python's headers; where
one is missing it says which and exits 0 (Peel then runs as pure Python) unless `--require` asks
for exit 1. Exit 1 when the compiler fails.

Two builds at once into one virtualenv (two `make test` in one checkout) take turns on a lock
file beside the build: the second waits, then finds the first's build up to date.

`status` prints whether this Python would run the build, and why not (a source edited since the
build, no build, `PEEL_NATIVE=off`); `--json` for scripts. Exit 0 either way.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gateway.cli.args import Commands, actions, add_command
from gateway.cli.output import print_json
from gateway.core import native


def missing_tools() -> str | None:
    """What this machine lacks to build, in one line, or None."""
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed (it comes with mypy: pip install mypy)"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}; on Debian: apt-get install gcc)"
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").exists():
        return f"Python's headers are not in {include} (on Debian: apt-get install python3-dev)"
    return None


def build(target: Path, jobs: int, quiet: bool = True) -> native.Manifest:
    """Compile the modules into `target` (replaced whole); the manifest of what was compiled."""
    import mypy.version  # heavy, and only needed here
    from mypyc.build import mypycify
    from setuptools import Distribution

    root = native.SOURCE_ROOT
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="peel-native-", dir=target.parent))
    try:
        hashes = native.source_hashes()
        paths = [str(native.source_path(name).relative_to(root)) for name in native.NATIVE_MODULES]
        output = work / "lib"
        cwd = os.getcwd()
        os.chdir(root)  # mypy reads pyproject.toml's [tool.mypy] and finds the packages from here
        try:
            extensions = mypycify(paths, opt_level="3", target_dir=str(work / "c"), verbose=not quiet)
            # A Distribution of our own: setuptools' setup() would read pyproject.toml as a project
            distribution = Distribution({"name": "peel-native", "ext_modules": extensions})
            command = distribution.get_command_obj("build_ext")
            command.build_lib = str(output)
            command.build_temp = str(work / "tmp")
            command.parallel = jobs
            command.ensure_finalized()
            command.run()
        finally:
            os.chdir(cwd)
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        files = {name: str(Path(*name.split(".")).with_suffix("")) + suffix for name in native.NATIVE_MODULES}
        shared = list(output.glob(f"*__mypyc{suffix}"))
        if len(shared) != 1 or not all((output / f).exists() for f in files.values()):
            raise RuntimeError(f"mypyc did not produce the expected files in {output}")
        manifest = native.Manifest(
            modules={name: (hashes[name], files[name]) for name in native.NATIVE_MODULES},
            shared=(shared[0].name.removesuffix(suffix), shared[0].name),
            python=sys.implementation.cache_tag, compiler=f"mypyc {mypy.version.__version__}",
            built=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        # the sources must not have changed while they compiled
        changed = [name for name, digest in native.source_hashes().items() if hashes[name] != digest]
        if changed:
            raise RuntimeError(f"{native.source_path(changed[0])} changed during the build")
        (output / native.MANIFEST).write_text(manifest.to_json() + "\n", "utf-8")
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        output.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cmd_build(args: argparse.Namespace) -> int:
    target = native.native_dir()
    missing = missing_tools()
    if missing is not None:
        print(f"peel native build: not built: {missing}; Peel runs as pure Python", file=sys.stderr)
        return 1 if args.require else 0
    with building(target):
        # up to date whatever PEEL_NATIVE says (it chooses what runs, not what is built)
        state, _ = native.check(target, environ={})
        if state.active and not args.force:
            print(f"peel native build: up to date in {target}: {state.reason}")
            return 0
        print(f"peel native build: compiling {len(native.NATIVE_MODULES)} modules into {target} "
              f"(a minute or two)", flush=True)
        try:
            manifest = build(target, args.jobs, quiet=not args.verbose)
        except Exception as exc:  # the compiler's own output is above
            print(f"peel native build: failed: {exc}; Peel runs as pure Python", file=sys.stderr)
            return 1
    print(f"peel native build: built {len(manifest.modules)} modules with {manifest.compiler}")
    return 0


@contextlib.contextmanager
def building(target: Path) -> Iterator[None]:
    """Hold the build lock of `target` (`<target>.lock`, beside it), waiting for another build."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"peel native build: waiting for another build into {target}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cmd_status(args: argparse.Namespace) -> int:
    state = native.state()  # this process's own check: the next process makes the same
    answer = {"usable": state.active, "reason": state.reason, "directory": str(native.native_dir()),
              "modules": list(native.NATIVE_MODULES)}
    if args.json:
        print_json(answer)
    else:
        print(f"native: {'usable' if state.active else 'not used'}: {state.reason}")
    return 0


def register(commands: Commands) -> None:
    """native build, native status."""
    group = actions(add_command(commands, "native", None,
                                "the data path compiled to C (mypyc): build, status"))
    p = add_command(group, "build", cmd_build, "compile the request path's modules into this "
                    "virtualenv (used when every source matches the build)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="C compilations at once (default: the number of cores)")
    p.add_argument("--force", action="store_true", help="build even when the build is up to date")
    p.add_argument("--require", action="store_true",
                   help="exit 1 when this machine cannot build (default: say why and exit 0)")
    p.add_argument("--verbose", action="store_true", help="show mypyc's own output")
    add_command(group, "status", cmd_status, "whether the compiled data path is used, and why not")
