"""Writing files so that nothing a user had is lost: write to a temporary file beside the target, fsync, then
rename over it (atomic on POSIX), and refuse to replace an existing file unless asked to. No torch here."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from zoo.errors import ZooError


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise ZooError(f"'{path}' already exists; pass --force to overwrite it")
    if path.exists() and path.is_dir():
        raise ZooError(f"'{path}' is a directory; expected a file path")
    return path


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[str], None], overwrite: bool = True) -> Path:
    """Write ``data`` (bytes, or a function that writes to the temporary path it is given) to ``path``."""
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would make shipped files private to their writer
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
        if callable(data):
            data(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
