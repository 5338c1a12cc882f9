"""Writing files so that nothing a user had is lost: write to a temporary file beside the target, fsync, then
rename over it (atomic on POSIX), refuse to replace an existing file unless asked to, and never replace what is
not a regular file (a device, a FIFO, a socket, a directory, a symbolic link). A set of files that belong
together (a published model) is committed through a journal, so that a crash leaves the old set or the new one.
No torch here."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from zoo.errors import ZooError

try:
    import fcntl
except ImportError:  # not POSIX: no locks between processes, the journal still makes a crash recoverable
    fcntl = None

_KINDS = {
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFSOCK: "socket",
}


def _check_parents(path: Path) -> None:
    for parent in path.parents:  # the first ancestor that exists must be a folder to create the path in
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise ZooError(f"cannot write '{path}': '{parent}' is not a directory")
            return


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path`` if a file may be written there: absent, or a regular file and ``overwrite``. Anything else is
    refused before a byte is written; a symbolic link is refused, never followed or replaced."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None
    if st is None:
        _check_parents(path)
        return path
    if stat.S_ISLNK(st.st_mode):
        raise ZooError(
            f"'{path}' is a symbolic link; refused (--force replaces only regular files, never a link or its target)"
        )
    if stat.S_ISDIR(st.st_mode):
        raise ZooError(f"'{path}' is a directory; expected a file path")
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "special file")
        raise ZooError(f"'{path}' is a {kind}, not a regular file; refused (--force replaces only regular files)")
    if not overwrite:
        raise ZooError(f"'{path}' already exists; pass --force to overwrite it")
    return path


def check_folder_replaceable(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path`` if a folder may be put there as a whole: absent, an empty folder, or a folder and ``overwrite``;
    its parent must be a folder or absent. A file, link or device in the way is refused."""
    path = Path(path)
    if os.path.lexists(path.parent) and not path.parent.is_dir():
        raise ZooError(f"'{path.parent}' exists and is not a directory; expected a folder to hold '{path.name}'")
    if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
        raise ZooError(f"'{path}' exists and is not a directory; expected a folder (or nothing) there")
    _check_parents(path)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ZooError(f"'{path}' already holds files; pass --force to replace the folder")
    return path


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


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
        _fsync(tmp)
        check_writable(path, overwrite)  # again: something may have appeared there while we wrote
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


# A set of files committed together. Every file (or folder) of the set is staged under
# ``folder/.zoo-staging-<label>.<random>/new/<relative path>`` and fsynced; then, holding the folder's lock,
# ``JOURNAL.json`` (the list of paths to install, the last one the manifest, and the old ones to remove) is
# written atomically: that rename is the commit point. The commit then moves each old path into ``old/`` and
# each staged path into place, every step idempotent, and deletes the staging folder. A crash before the
# journal leaves the old set untouched and a staging folder that the next commit or reader deletes; a crash
# after it is rolled forward by the next commit or reader (``recover``). A staging folder whose owner is alive
# holds a lock (flock) on itself and is left alone.
STAGING_PREFIX = ".zoo-staging-"
JOURNAL = "JOURNAL.json"
_held: dict[str, int] = {}  # folder -> depth of this process's lock on it (flock does not nest within a process)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on ``folder`` between processes (a flock on the directory itself: no lock file)."""
    key = os.path.realpath(folder)
    if fcntl is None or _held.get(key):
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held[key] = 1
        yield
    finally:
        _held.pop(key, None)
        os.close(fd)  # releases the flock


def _owner_alive(staging: Path) -> bool:
    if fcntl is None:
        return False
    try:
        fd = os.open(staging, os.O_RDONLY)
    except FileNotFoundError:
        return True  # gone: nothing to do
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _move_aside(target: Path, old: Path) -> None:
    if os.path.lexists(old):  # only after a user re-created the path mid-recovery: keep the newer one aside too
        old = old.with_name(old.name + f".{os.getpid()}")
    old.parent.mkdir(parents=True, exist_ok=True)
    os.replace(target, old)


def _roll_forward(folder: Path, staging: Path) -> None:
    journal = json.loads((staging / JOURNAL).read_text())
    for rel in journal["remove"]:
        if os.path.lexists(folder / rel):
            _move_aside(folder / rel, staging / "old" / rel)
    for rel in journal["install"]:
        src, target = staging / "new" / rel, folder / rel
        if not os.path.lexists(src):
            continue  # installed before the crash
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir() and os.path.lexists(target):
            _move_aside(target, staging / "old" / rel)  # a folder is replaced as a whole: no stale files stay
        os.replace(src, target)
    for parent in {(folder / rel).parent for rel in journal["install"]}:
        _fsync(parent)
    (staging / JOURNAL).unlink()  # finished: what is left of the staging folder is garbage
    _fsync(staging)


def recover(folder: str | os.PathLike) -> None:
    """Finish or undo the commits in ``folder`` that a crash interrupted, and delete their staging folders."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.glob(f"{STAGING_PREFIX}*")):
        return
    try:
        with folder_lock(folder):
            for staging in sorted(folder.glob(f"{STAGING_PREFIX}*")):
                if not staging.is_dir() or staging.is_symlink() or _owner_alive(staging):
                    continue
                if (staging / JOURNAL).is_file():
                    _roll_forward(folder, staging)
                    shutil.rmtree(staging)
                else:  # crashed before its commit point: the old set is untouched, the staged files are garbage
                    shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        raise ZooError(f"an interrupted publish in '{folder}' could not be completed: {e}") from None


class StagedSet:
    """The staging folder of one set of files; see ``staged_set``."""

    def __init__(self, folder: Path, root: Path):
        self.folder, self.root, self.new = folder, root, root / "new"
        self.committed = False

    def path(self, rel: str) -> Path:
        """Where to write the staged file or folder that will become ``folder/rel``."""
        p = self.new / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self, install: list[str], remove: list[str]) -> None:
        """Replace ``remove`` + the current ``install`` paths with the staged ``install`` paths (in that order:
        put the manifest last). Call with ``folder_lock(self.folder)`` held."""
        for rel in install:
            if not os.path.lexists(self.new / rel):
                raise ZooError(f"internal: '{rel}' was not staged")
        for dirpath, _, files in os.walk(self.new):
            for f in files:
                _fsync(os.path.join(dirpath, f))
            _fsync(dirpath)
        atomic_write(self.root / JOURNAL, json.dumps({"install": install, "remove": remove}).encode())
        _fsync(self.root)
        self.committed = True  # from here on a failure is rolled forward, never back
        _roll_forward(self.folder, self.root)


@contextlib.contextmanager
def staged_set(folder: str | os.PathLike, label: str) -> Iterator[StagedSet]:
    """A staging folder inside ``folder`` for a set of files to commit together. Earlier crashed commits in
    ``folder`` are recovered first. On an error before ``commit`` the staging folder is deleted and ``folder``
    is as it was; a crash leaves it to the next ``recover``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):
        recover(folder)
        root = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{label}.", dir=folder))
        fd = os.open(root, os.O_RDONLY)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # alive: recover() leaves this folder alone
    staged = StagedSet(folder, root)
    try:
        yield staged
        if staged.committed:
            shutil.rmtree(root)
    except BaseException:
        if not staged.committed:
            shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        os.close(fd)
