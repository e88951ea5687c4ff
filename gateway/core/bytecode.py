"""The bytecode the systemd service runs, compiled ahead of time into a directory of its own.

`deploy/vm/peel.service` runs Peel with `PYTHONOPTIMIZE=2`: code without docstrings and asserts,
about 3 MiB less in every process (bench/README.md "Memory, stop 13"; Peel's own asserts only
narrow types for mypy). The service may not write the code it runs (`ProtectSystem=strict`,
`PYTHONDONTWRITEBYTECODE=1`), and Python's installation and pip write only plain bytecode
(optimization level 0), so without this step every start would compile the standard library and
every dependency from source: a second more, and a heap left larger by the compiler's garbage.
The unit points `PYTHONPYCACHEPREFIX` at `/opt/peel/current/pycache`; `install.sh` runs

    /opt/peel/releases/<time>/bin/python -m gateway.core.bytecode /opt/peel/releases/<time>/pycache

for each new release (a rollback switches to the older release with its own cache), and the bench
(`bench/run.py`) runs the same into `build/bytecode` to measure Peel as the unit runs it.

What it compiles: the standard library without its tests and GUI parts (`SKIP`), this Python's
site-packages (the release's virtualenv), Peel's own packages where they live elsewhere (an editable
install in a checkout), and any directory named on the command line. Compiling is incremental: an
unchanged file whose bytecode is there is skipped. A file that does not compile (a dependency's
template with a `.py` name, say) is named on stdout and makes the exit status 1; the service then
compiles that one module at start, when it imports it.
"""

from __future__ import annotations

import compileall
import importlib.metadata
import importlib.util
import os
import re
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

# Optimization level 2: `python -OO`, what PYTHONOPTIMIZE=2 loads.
LEVEL = 2
# Parts of the standard library a gateway never imports (and test files that do not compile on
# purpose), matched against the full path.
SKIP = re.compile(r"[/\\](test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip|__phello__)[/\\]")


def peel_packages() -> list[Path]:
    """The directories of Peel's top-level packages (from its distribution's metadata)."""
    try:
        names = (importlib.metadata.distribution("peel").read_text("top_level.txt") or "").split()
    except importlib.metadata.PackageNotFoundError:
        names = []
    found: list[Path] = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found.extend(Path(location) for location in spec.submodule_search_locations)
    return found


def directories() -> list[Path]:
    """What the service imports from: the standard library, site-packages, Peel's packages."""
    paths = sysconfig.get_paths()
    candidates = [Path(paths["stdlib"]), Path(paths["purelib"]), Path(paths["platlib"]),
                  *peel_packages()]
    unique: list[Path] = []
    for path in candidates:
        # not resolved: the cache is keyed by the path the import system sees (a virtualenv's
        # through the symlink it was run by, `/opt/peel/current/...`, is another entry)
        path = path.absolute()
        if path.is_dir() and not any(path == seen or path.is_relative_to(seen) for seen in unique):
            unique = [seen for seen in unique if not seen.is_relative_to(path)] + [path]
    return unique


def skip_pattern() -> re.Pattern[str]:
    """`SKIP`, and the packages installed beside the standard library when they are not this
    Python's site-packages (a virtualenv's base Python has its own, which the service never sees)."""
    paths = sysconfig.get_paths()
    stdlib, purelib = Path(paths["stdlib"]).absolute(), Path(paths["purelib"]).absolute()
    if purelib.is_relative_to(stdlib):
        return SKIP
    return re.compile(rf"{SKIP.pattern}|^{re.escape(str(stdlib))}[/\\](site|dist)-packages[/\\]")


def compile_into(prefix: Path, dirs: Sequence[Path], *, workers: int = 0) -> bool:
    """Compile every `.py` under `dirs` at `LEVEL` into `prefix` (as `PYTHONPYCACHEPREFIX` lays it
    out); True when every file compiled. `workers=0`: one process per core."""
    prefix.mkdir(parents=True, exist_ok=True)
    if workers != 1:
        try:
            # compileall's pool needs POSIX semaphores, absent in some containers
            import multiprocessing.synchronize  # noqa: F401
        except ImportError:
            workers = 1
    ok, skip = True, skip_pattern()
    before, before_env = sys.pycache_prefix, os.environ.get("PYTHONPYCACHEPREFIX")
    # what importlib.util.cache_from_source reads, here and in compileall's workers (forked, or
    # started anew where that is the default)
    sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"] = str(prefix.resolve())
    try:
        for directory in dirs:
            ok = compileall.compile_dir(str(directory), quiet=1, rx=skip, optimize=LEVEL,
                                        workers=workers) and ok
    finally:
        sys.pycache_prefix = before
        if before_env is None:
            del os.environ["PYTHONPYCACHEPREFIX"]
        else:
            os.environ["PYTHONPYCACHEPREFIX"] = before_env
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print("usage: python -m gateway.core.bytecode PREFIX [DIRECTORY...]\n"
              "compiles, at optimization level 2 into PREFIX, the bytecode PYTHONOPTIMIZE=2 "
              "PYTHONPYCACHEPREFIX=PREFIX loads", file=sys.stderr)
        return 2
    prefix = Path(args[0])
    dirs = directories() + [Path(extra).absolute() for extra in args[1:]]
    if not compile_into(prefix, dirs, workers=0 if (os.cpu_count() or 1) > 1 else 1):
        print(f"gateway.core.bytecode: some files did not compile (above); the service compiles "
              f"them when it imports them. The rest is in {prefix}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
