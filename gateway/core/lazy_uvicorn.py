"""uvicorn's package without its command line: `install()` before anything imports uvicorn.

Importing any module of uvicorn runs the package's `__init__`, which imports `uvicorn.main`: the
`uvicorn` command (click), its reloaders and process supervisors (multiprocessing). Peel runs
uvicorn's `Server` and `Config` and never that command, and those modules were 2.2 MiB of every
serving process (a worker, the master, a one-process gateway: bench/README.md, "Memory").

`install()` puts in `sys.modules` the package module as Python makes it before running its
`__init__` (same spec, same `__path__`, so `uvicorn.config`, `uvicorn.server` and the rest import
as usual), whose names (`Config`, `Server`, `main`, `run`, `__version__`: all the `__init__`
exports) come from their modules on first use. Nothing changes where uvicorn was already imported.
tests/unit/test_uvicorn_internals.py checks that the names are the package's own.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Final

# the names uvicorn's __init__ exports, and the module each comes from
NAMES: Final[dict[str, str]] = {
    "Config": "uvicorn.config",
    "Server": "uvicorn.server",
    "main": "uvicorn.main",
    "run": "uvicorn.main",
    "__version__": "uvicorn._version",
}


def install() -> bool:
    """Make `uvicorn` a package whose `__init__` names load on first use; False when uvicorn was
    imported already (or is not installed)."""
    if "uvicorn" in sys.modules:
        return False
    spec = importlib.util.find_spec("uvicorn")
    if spec is None or spec.submodule_search_locations is None:
        return False
    package = importlib.util.module_from_spec(spec)
    exported = [name for name in NAMES if not name.startswith("__")]
    package.__dict__.update(__getattr__=_loader(package), __all__=exported)
    sys.modules["uvicorn"] = package
    return True


def _loader(package: ModuleType) -> object:
    def __getattr__(name: str) -> object:  # PEP 562: called only for a name not yet set
        source = NAMES.get(name)
        if source is None:
            raise AttributeError(f"module 'uvicorn' has no attribute {name!r}")
        module = importlib.import_module(source)
        # every name of that module, set once; importing `uvicorn.main` bound the submodule to
        # the name `main`: as in uvicorn's own __init__, the function replaces it
        for other, where in NAMES.items():
            if where == source:
                setattr(package, other, getattr(module, other))
        return getattr(package, name)

    return __getattr__
