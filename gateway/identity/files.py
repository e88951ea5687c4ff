"""Writing secrets to disk: private directories (0700) and atomic files with an exact mode.

The mode is set on the open file descriptor (`fchmod`), so it does not depend on the process's
umask; a umask of 077 is also in force while a file is created, so no moment exists in which a key
is readable by others. A file is written to a temporary name in its directory, synced, then renamed
over the old one and the directory synced: a reader (or a crash) sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from gateway.identity.errors import CaError

KEY_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def private_dir(path: Path) -> Path:
    """`path` (and missing parents) as a directory of mode 0700; an existing one is tightened."""
    with private_umask():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if not path.is_dir():
        raise CaError(f"{path} is not a directory")
    os.chmod(path, DIR_MODE)
    return path


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`, of exactly `mode`, atomically (see the module docstring)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with private_umask():
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    sync_dir(path.parent)


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private(path: Path) -> bytes:
    """A key file's bytes; refused when others may read it (as ssh refuses such a key)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise CaError(f"{path} is readable by others (mode {mode:04o}); run: chmod 600 {path}")
        return path.read_bytes()
    except FileNotFoundError:
        raise CaError(f"{path} does not exist") from None
