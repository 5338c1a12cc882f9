"""Where the CPU kernels' compiled code is kept between processes: Numba's on-disk cache (``cache=True``), moved
from ``__pycache__`` beside the sources to one directory per version of the kernels' sources in the user's cache,
``$XDG_CACHE_HOME/deconv-zoo/numba/<tag>`` (``~/.cache/...``), unless the user set ``NUMBA_CACHE_DIR``, which
wins as in Numba. Imported before any kernel is defined (Numba picks a function's cache location when it is
decorated).

Why not Numba's own locations. Numba keys a cached function on its own file's contents only, while the code it
caches includes the kernels it calls from other files (``_conv_tiles`` in conv.py carries ``gemm_panels`` from
_gemm_cpu.py): after an edit of _gemm_cpu.py, conv.py's cache would serve the old GEMM. The tag here hashes every
CPU kernel source of this package (and Numba's version), so a cached kernel is reused only with exactly the sources
that made it — which also makes it safe to share between checkouts, virtual environments and installs of the same
sources, where Numba's locations (keyed on the source's path) start empty in every fresh environment.

Concurrent processes: Numba writes each file through a rename, but a save reads the function's index, picks the
next free data file and writes both back without a lock, so two processes saving two signatures of one kernel
at once can lose one or pair a signature with the other's code. Saves into these directories take a file lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

import numba
from numba.core import caching, config

_SOURCES = os.path.dirname(os.path.abspath(__file__))  # runtime/ops: every Numba kernel of the runtime


def user_cache_root() -> str:
    """``$XDG_CACHE_HOME/deconv-zoo/numba`` (``~/.cache/deconv-zoo/numba`` when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "deconv-zoo", "numba")


def sources_tag() -> str:
    """A hash of the CPU kernels' sources (every module of this package but the CUDA ones, which no CPU kernel
    calls and whose kernels Numba-CUDA does not cache) and Numba's version."""
    h = hashlib.sha256(f"numba {numba.__version__}\n".encode())
    for name in sorted(os.listdir(_SOURCES)):
        if name.endswith(".py") and "cuda" not in name:
            with open(os.path.join(_SOURCES, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()[:16]


TAG = sources_tag()


class _SourcesLocator(caching._CacheLocator):
    """The runtime's kernels, cached in ``user_cache_root()/TAG``; fresh as long as the tag matches."""

    path = os.path.join(user_cache_root(), TAG)

    def __init__(self, py_func, py_file):
        self._lineno = py_func.__code__.co_firstlineno

    def get_cache_path(self):
        return self.path

    def get_source_stamp(self):
        return TAG

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        if config.CACHE_DIR or os.path.dirname(os.path.abspath(py_file)) != _SOURCES:
            return None  # the user's NUMBA_CACHE_DIR, or another package's function: Numba's own locations
        self = cls(py_func, py_file)
        try:
            self.ensure_cache_path()
        except OSError:  # no writable user cache: Numba's own locations (__pycache__, ...)
            return None
        return self


@contextlib.contextmanager
def _locked(directory: str):
    try:
        import fcntl
    except ImportError:  # not POSIX: Numba's unlocked saves
        yield
        return
    with open(os.path.join(directory, ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _install() -> str | None:
    """Put ``_SourcesLocator`` before Numba's in-tree one and lock the saves into its directories; returns the
    directory the kernels are cached in (None: Numba's own locations, as for an unknown Numba layout)."""
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    index = getattr(caching, "IndexDataCacheFile", None)
    locators = getattr(impl, "_locator_classes", None)
    needed = ("_load_index", "_save_index", "_save_data", "_data_name")
    if not isinstance(locators, list) or index is None or not all(hasattr(index, n) for n in needed):
        return None
    if _SourcesLocator not in locators:
        in_tree = [i for i, c in enumerate(locators) if "InTree" in c.__name__]
        locators.insert(in_tree[0] if in_tree else len(locators), _SourcesLocator)
        unlocked_save = index.save
        root = user_cache_root()

        def save(self, key, data):
            if not os.path.abspath(self._cache_path).startswith(root + os.sep):
                return unlocked_save(self, key, data)
            with _locked(self._cache_path):  # the index read, extended and written by one process at a time
                overloads = self._load_index()
                name = overloads.get(key)
                if name is None:
                    taken = set(overloads.values())
                    name = next(self._data_name(i) for i in range(1, len(taken) + 2) if self._data_name(i) not in taken)
                self._save_data(name, data)  # the code first: the index never names a file not yet written
                if overloads.get(key) != name:
                    overloads[key] = name
                    self._save_index(overloads)

        index.save = save
    if config.CACHE_DIR:
        return config.CACHE_DIR
    try:
        os.makedirs(_SourcesLocator.path, exist_ok=True)
        return _SourcesLocator.path
    except OSError:
        return None


# The directory the CPU kernels are cached in: NUMBA_CACHE_DIR when set, else the user's cache; None where neither
# is usable (Numba's own locations then: __pycache__ beside the sources, or its user-wide one).
KERNEL_CACHE_DIR = _install()
