"""The data path compiled to C by mypyc, used only when the build matches the sources exactly.

The modules in `NATIVE_MODULES` (the request path: the listener protocol, framing, resolve,
forward, the upstream pool, policies, telemetry) are plain, strictly typed Python. `peel native
build` (gateway/cli/native.py) compiles them with mypyc into `<venv>/lib/peel-native/`, outside
the source tree, and writes a manifest of the sources it compiled (their SHA-256) last.

`install()` runs when the `gateway` package is first imported, before any of those modules is: when
the manifest is there and every module's source still has the hash it was compiled from, a finder
at the front of `sys.meta_path` loads those modules from the build; otherwise nothing changes and
Python imports the sources. All or nothing: mypyc compiles the modules into one shared library whose
modules call each other directly in C, so a build with one module edited since would run old code
beside new; a source that changed since the build turns the whole build off (`state()` names the
file), and Peel runs as pure Python, as it does where no C compiler was found.

Their module-level constants are `Final` (tests/unit/test_native.py checks it): compiled, a `Final`
name is a C static, any other global a lookup in the module's dict each time it is read.

`PEEL_NATIVE=off` in the environment turns a valid build off too (the pure-Python path for a
comparison, or for a suspected difference between the two).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# The request path, leaves first. Only `gateway` modules: `gateway/__init__.py` installs the finder,
# so nothing compiled can be imported before it (a `routes` module could be, by a program that
# imports `routes` first, and would then exist twice).
NATIVE_MODULES: tuple[str, ...] = (
    "gateway.core.asgi",
    "gateway.core.memo",
    "gateway.core.problems",
    "gateway.core.writes",
    "gateway.http.chunked",
    "gateway.http.framing",
    "gateway.http.headers",
    "gateway.http.hosts",
    "gateway.http.http1",
    "gateway.http.paths",
    "gateway.policy.deadline",
    "gateway.policy.ratelimit",
    "gateway.policy.retry",
    "gateway.telemetry.accesslines",
    "gateway.telemetry.accesslog",
    "gateway.telemetry.graph",
    "gateway.telemetry.metrics",
    "gateway.telemetry.otlp",
    "gateway.telemetry.propagation",
    "gateway.telemetry.tracing",
    "gateway.upstream.balancer",
    "gateway.upstream.endpoints",
    "gateway.upstream.pool",
    "gateway.dataplane.buffering",
    "gateway.dataplane.request",
    "gateway.dataplane.resolve",
    "gateway.dataplane.forward",
    "gateway.dataplane.shadow",
    "gateway.dataplane.proxy",
    "gateway.edge.cycle",
    "gateway.edge.protocol",
)

MANIFEST = "manifest.json"
ENV = "PEEL_NATIVE"
# the directory the sources are under (the checkout, or site-packages)
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def native_dir() -> Path:
    """Where `peel native build` puts the build: inside the virtualenv (or prefix) of this Python."""
    return Path(sys.prefix) / "lib" / "peel-native"


def source_path(module: str, root: Path = SOURCE_ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_hashes(root: Path = SOURCE_ROOT) -> dict[str, str]:
    """Each native module's source hash, as a build records it."""
    return {name: source_hash(source_path(name, root)) for name in NATIVE_MODULES}


def turned_off(environ: Mapping[str, str] = os.environ) -> bool:
    """`PEEL_NATIVE` says to run the sources even where a build matches."""
    return environ.get(ENV, "").strip().lower() in ("0", "off", "false", "no")


@dataclass(frozen=True)
class Manifest:
    """What a build compiled: each module's source hash and extension file, and its shared library."""

    modules: dict[str, tuple[str, str]]  # module -> (sha256 of its source, extension file name)
    shared: tuple[str, str]  # (module name, file name) of the shared library
    python: str  # sys.implementation.cache_tag of the interpreter that built it
    compiler: str  # "mypyc <version>"
    built: str  # UTC time of the build

    def to_json(self) -> str:
        return json.dumps({"modules": self.modules, "shared": self.shared, "python": self.python,
                           "compiler": self.compiler, "built": self.built}, indent=2, sort_keys=True)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text("utf-8"))
        return cls(modules={name: (digest, file) for name, (digest, file) in data["modules"].items()},
                   shared=(data["shared"][0], data["shared"][1]), python=data["python"],
                   compiler=data["compiler"], built=data["built"])


@dataclass(frozen=True)
class NativeState:
    """Whether this process runs the compiled data path, and why not when it does not."""

    active: bool
    reason: str  # one line for the log and `peel native status`
    manifest: Manifest | None = field(default=None, repr=False)


_state = NativeState(False, "not checked yet")


def state() -> NativeState:
    """What `install()` decided for this process."""
    return _state


class NativeFinder:
    """Finds the compiled modules of one build (a `sys.meta_path` finder); None for any other."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self._files = {name: directory / file for name, (_, file) in manifest.modules.items()}
        self._files[manifest.shared[0]] = directory / manifest.shared[1]

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        file = self._files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def check(directory: Path | None = None, root: Path = SOURCE_ROOT,
          environ: Mapping[str, str] = os.environ) -> tuple[NativeState, NativeFinder | None]:
    """Whether the build in `directory` may be used with the sources under `root`, and its finder."""
    directory = directory if directory is not None else native_dir()
    if turned_off(environ):
        return NativeState(False, f"turned off by {ENV}={environ[ENV]}"), None
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        return NativeState(False, f"no build in {directory} (`peel native build` makes one)"), None
    try:
        manifest = Manifest.read(manifest_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return NativeState(False, f"unreadable manifest {manifest_path}: {exc}"), None
    if manifest.python != sys.implementation.cache_tag:
        return NativeState(False, f"built for {manifest.python}, this is {sys.implementation.cache_tag}",
                           manifest), None
    if set(manifest.modules) != set(NATIVE_MODULES):
        return NativeState(False, "built for another list of modules: build again", manifest), None
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    for name, (digest, file) in sorted(manifest.modules.items()):
        source = source_path(name, root)
        try:
            changed = source_hash(source) != digest
        except OSError:
            changed = True
        if changed:
            return NativeState(False, f"{source.relative_to(root)} changed since the build: build again",
                               manifest), None
        if not file.endswith(suffix) or not (directory / file).exists():
            return NativeState(False, f"{file} is missing from {directory}: build again", manifest), None
    if not (directory / manifest.shared[1]).exists():
        return NativeState(False, f"{manifest.shared[1]} is missing from {directory}: build again",
                           manifest), None
    return (NativeState(True, f"{len(manifest.modules)} modules compiled by {manifest.compiler} "
                              f"({manifest.built})", manifest),
            NativeFinder(directory, manifest))


def install() -> NativeState:
    """Put the build's finder in front of the import system when it may be used (once a process)."""
    global _state
    if any(isinstance(finder, NativeFinder) for finder in sys.meta_path):
        return _state
    _state, finder = check()
    if finder is not None:
        sys.meta_path.insert(0, finder)
    return _state


def is_compiled(module: ModuleType) -> bool:
    """The module runs from a compiled extension (not its source)."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


__all__ = ["ENV", "NATIVE_MODULES", "Manifest", "NativeFinder", "NativeState", "check", "install",
           "is_compiled", "native_dir", "source_hashes", "source_path", "state", "turned_off"]
