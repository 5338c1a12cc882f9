"""onnxruntime's session-level Python API for this runtime: ``SessionOptions``, ``RunOptions``, the
``GraphOptimizationLevel`` and ``ExecutionMode`` enums, ``get_available_providers()``, ``get_device()``, and the
reading of ``providers=`` / ``provider_options=`` as onnxruntime's ``check_and_normalize_provider_args``
(onnxruntime/capi/onnxruntime_inference_collection.py) reads them. The names, defaults and type checks follow
onnxruntime 1.31; what this runtime cannot honour is accepted and documented where it is read.
"""

from __future__ import annotations

import collections.abc
import ctypes
import ctypes.util
import enum
import functools
import numbers
import warnings

from runtime.errors import InvalidOption, MissingConfigEntry

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
PROVIDER_OF_BACKEND = {"cpu": CPU_PROVIDER, "cuda": CUDA_PROVIDER}
BACKEND_OF_PROVIDER = {v: k for k, v in PROVIDER_OF_BACKEND.items()}

# onnxruntime's CUDA provider options (cuda_execution_provider_info.cc): accepted, and ignored with a warning
# since the Numba-CUDA backend has no arena, cuDNN or CUDA graphs to tune. Any other key is not a CUDA option.
CUDA_OPTIONS_IGNORED = frozenset(
    {
        "has_user_compute_stream", "user_compute_stream", "gpu_mem_limit", "arena_extend_strategy",
        "cudnn_conv_algo_search", "do_copy_in_default_stream", "gpu_external_alloc", "gpu_external_free",
        "gpu_external_empty_cache", "cudnn_conv_use_max_workspace", "enable_cuda_graph", "cudnn_conv1d_pad_to_nc1d",
        "tunable_op_enable", "tunable_op_tuning_enable", "tunable_op_max_tuning_duration_ms",
        "enable_skip_layer_norm_strict_mode", "prefer_nhwc", "use_ep_level_unified_stream", "use_tf32",
        "sdpa_kernel", "fuse_conv_bias",
    }
)  # fmt: skip


class GraphOptimizationLevel(enum.IntEnum):
    """onnxruntime's levels and values. Every level but ORT_DISABLE_ALL runs this runtime's one set of graph
    rewrites (runtime/fusion.py); ORT_DISABLE_ALL runs the graph as stored (``optimize_graph=False``)."""

    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_LAYOUT = 3
    ORT_ENABLE_ALL = 99


class ExecutionMode(enum.IntEnum):
    """onnxruntime's modes. Accepted; this runtime always runs the nodes one after another."""

    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1


def _as_int(owner: str, name: str, value) -> int:
    if isinstance(value, numbers.Integral):  # int, bool, numpy integers
        return int(value)
    raise TypeError(f"{owner}.{name} must be an int, got {type(value).__name__}")


def _as_bool(owner: str, name: str, value) -> bool:
    if isinstance(value, numbers.Integral) or type(value).__name__ == "bool_":  # onnxruntime accepts 1 and 0 too
        return bool(value)
    raise TypeError(f"{owner}.{name} must be a bool, got {type(value).__name__}")


def _as_str(owner: str, name: str, value) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"{owner}.{name} must be a str, got {type(value).__name__}")


def _as_enum(kind: type[enum.IntEnum]):
    def check(owner: str, name: str, value):
        if isinstance(value, kind):
            return value
        if type(value).__name__ == kind.__name__:  # onnxruntime's own enum member: the same names and values
            return kind(int(value))
        # As onnxruntime: a plain int is refused, so that a level is always spelled by its name.
        raise TypeError(f"{owner}.{name} must be a runtime.{kind.__name__} member, got {value!r}")

    return check


class _Option:
    """One typed attribute of SessionOptions or RunOptions, with onnxruntime's default."""

    def __init__(self, check, default):
        self.check, self.default = check, default

    def __set_name__(self, owner, name):
        self.name, self.slot = name, "_" + name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj, self.slot, self.default)

    def __set__(self, obj, value):
        setattr(obj, self.slot, self.check(type(obj).__name__, self.name, value))


class _ConfigEntries:
    """``add_*_config_entry`` / ``get_*_config_entry``: string keys and values, as onnxruntime keeps them."""

    __slots__ = ()
    _what = ""

    def _add_entry(self, key, value) -> None:
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"config entries are (str, str) pairs, got ({type(key).__name__}, {type(value).__name__})")
        self._config[key] = value

    def _get_entry(self, key) -> str:
        if not isinstance(key, str):
            raise TypeError(f"a config key is a str, got {type(key).__name__}")
        try:
            return self._config[key]
        except KeyError:
            raise MissingConfigEntry(f"{self._what} does not have configuration with key: {key}") from None


class SessionOptions(_ConfigEntries):
    """onnxruntime's ``SessionOptions``, read by ``InferenceSession`` when the session is created:

    - ``intra_op_num_threads``: 0 (or less) keeps Numba's thread count; n > 0 runs this session's kernels on
      n threads (``numba.set_num_threads`` for the duration of each run, at most NUMBA_NUM_THREADS).
    - ``graph_optimization_level``: ``ORT_DISABLE_ALL`` runs the graph unrewritten; the others rewrite it.
    - ``enable_profiling``: per-node timings, written as onnxruntime's JSON trace by ``end_profiling()``.
    - accepted without effect: ``inter_op_num_threads``, ``execution_mode`` (always sequential),
      ``log_severity_level``, ``log_verbosity_level``, ``logid``, the memory-arena switches,
      ``use_deterministic_compute`` (the CPU kernels are deterministic anyway), ``use_per_session_threads``
      and config entries (kept and returned, not interpreted).
    """

    __slots__ = (
        "_config", "_intra_op_num_threads", "_inter_op_num_threads", "_graph_optimization_level",
        "_execution_mode", "_log_severity_level", "_log_verbosity_level", "_logid", "_enable_profiling",
        "_profile_file_prefix", "_optimized_model_filepath", "_enable_cpu_mem_arena", "_enable_mem_pattern",
        "_enable_mem_reuse", "_use_deterministic_compute", "_use_per_session_threads",
    )  # fmt: skip
    _what = "SessionOptions"

    intra_op_num_threads = _Option(_as_int, 0)
    inter_op_num_threads = _Option(_as_int, 0)
    graph_optimization_level = _Option(_as_enum(GraphOptimizationLevel), GraphOptimizationLevel.ORT_ENABLE_ALL)
    execution_mode = _Option(_as_enum(ExecutionMode), ExecutionMode.ORT_SEQUENTIAL)
    log_severity_level = _Option(_as_int, -1)
    log_verbosity_level = _Option(_as_int, 0)
    logid = _Option(_as_str, "")
    enable_profiling = _Option(_as_bool, False)
    profile_file_prefix = _Option(_as_str, "onnxruntime_profile_")
    optimized_model_filepath = _Option(_as_str, "")
    enable_cpu_mem_arena = _Option(_as_bool, True)
    enable_mem_pattern = _Option(_as_bool, True)
    enable_mem_reuse = _Option(_as_bool, True)
    use_deterministic_compute = _Option(_as_bool, False)
    use_per_session_threads = _Option(_as_bool, True)

    def __init__(self):
        self._config: dict[str, str] = {}

    def add_session_config_entry(self, key: str, value: str) -> None:
        self._add_entry(key, value)

    def get_session_config_entry(self, key: str) -> str:
        return self._get_entry(key)

    def has_providers(self) -> bool:
        return False  # providers are given to InferenceSession, never through the options here

    def copy(self) -> SessionOptions:
        other = SessionOptions()
        for name in _option_names(SessionOptions):
            setattr(other, name, getattr(self, name))
        other._config = dict(self._config)
        return other

    def __repr__(self) -> str:
        changed = [f"{n}={getattr(self, n)!r}" for n in _option_names(SessionOptions) if hasattr(self, "_" + n)]
        return f"SessionOptions({', '.join(changed)})"

    @classmethod
    def from_any(cls, options) -> SessionOptions:
        """A copy of ``options``: this runtime's SessionOptions, or onnxruntime's (read attribute by attribute;
        its config entries cannot be listed, so they are not carried over)."""
        if isinstance(options, SessionOptions):
            return options.copy()
        names = _option_names(cls)
        if type(options).__name__ != "SessionOptions" or not all(hasattr(options, n) for n in names):
            raise TypeError(
                f"sess_options must be a runtime.SessionOptions (or None), got {type(options).__name__}; "
                "this runtime's own backend is chosen with backend='cpu' or backend='cuda'"
            )
        copy = cls()
        for name in names:
            setattr(copy, name, getattr(options, name))
        return copy


class RunOptions(_ConfigEntries):
    """onnxruntime's ``RunOptions``. ``terminate`` set before a run refuses the run; the rest is accepted and kept."""

    __slots__ = (
        "_config", "_log_severity_level", "_log_verbosity_level", "_logid", "_only_execute_path_to_fetches",
        "_terminate",
    )  # fmt: skip
    _what = "RunOptions"

    log_severity_level = _Option(_as_int, -1)
    log_verbosity_level = _Option(_as_int, 0)
    logid = _Option(_as_str, "")
    only_execute_path_to_fetches = _Option(_as_bool, False)
    terminate = _Option(_as_bool, False)

    def __init__(self):
        self._config: dict[str, str] = {}

    def add_run_config_entry(self, key: str, value: str) -> None:
        self._add_entry(key, value)

    def get_run_config_entry(self, key: str) -> str:
        return self._get_entry(key)


def _option_names(cls) -> list[str]:
    return [n for n, v in vars(cls).items() if isinstance(v, _Option)]


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """Why the CUDA backend cannot run here, or None when it can. The simulator (NUMBA_ENABLE_CUDASIM=1, read
    when numba is imported) counts as a usable device: whoever sets it asks for the CUDA kernels to run, in Python.
    Without the simulator and without an NVIDIA driver library, numba.cuda (2 s to import) is not imported."""
    import numba

    if not numba.config.ENABLE_CUDASIM and not _driver_loadable():
        return "no NVIDIA driver (libcuda) found"
    try:
        from numba import cuda
    except ImportError as e:
        return f"numba-cuda is not installed ({e})"
    if not cuda.is_available():
        return "numba.cuda.is_available() is False"
    return None


def _driver_loadable() -> bool:
    for name in ("libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda"), "nvcuda.dll"):
        if name:
            try:
                ctypes.CDLL(name)
                return True
            except OSError:
                continue
    return False


def get_available_providers() -> list[str]:
    """The providers a session can use here, in onnxruntime's names and order of precedence. Unlike
    onnxruntime-gpu, which lists CUDAExecutionProvider whenever it was built with it, CUDA is listed only when
    a device (or the simulator) is usable."""
    return [CUDA_PROVIDER, CPU_PROVIDER] if cuda_unavailable_reason() is None else [CPU_PROVIDER]


def get_device() -> str:
    """ "GPU" when the CUDA backend is usable here, else "CPU" (onnxruntime reports how it was built instead)."""
    return "GPU" if cuda_unavailable_reason() is None else "CPU"


def normalize_providers(providers, provider_options, available: list[str]) -> list[tuple[str, dict[str, str]]]:
    """``providers`` / ``provider_options`` as (name, {str: str}) pairs in order of precedence, with onnxruntime's
    checks, messages and warnings (an unavailable name or a duplicate: a UserWarning, and the entry is skipped).
    onnxruntime catches its own ValueErrors here and falls back to the CPU, printing to stdout; this runtime
    raises them (InvalidOption). A bare string is refused too (onnxruntime reads it letter by letter)."""
    if providers is None:
        return []
    if isinstance(providers, str):
        raise InvalidOption(f"'providers' should be a sequence of names, got the string '{providers}'")
    if not isinstance(providers, collections.abc.Sequence):
        raise InvalidOption("'providers' should be a sequence.")
    if provider_options is not None:
        if not isinstance(provider_options, collections.abc.Sequence):
            raise InvalidOption("'provider_options' should be a sequence.")
        if len(providers) != len(provider_options):
            raise InvalidOption("'providers' and 'provider_options' should be the same length if both are given.")
        if not all(isinstance(p, str) for p in providers):
            raise InvalidOption("Only string values for 'providers' are supported if 'provider_options' is given.")
        if not all(isinstance(o, dict) for o in provider_options):
            raise InvalidOption("'provider_options' values must be dicts.")
        pairs = list(zip(providers, provider_options))
    else:
        pairs = []
        for p in providers:
            if isinstance(p, str):
                pairs.append((p, {}))
            elif isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict):
                pairs.append(p)
            else:
                raise InvalidOption("'providers' values must be either strings or (string, dict) tuples.")
    chosen: dict[str, dict[str, str]] = {}
    for name, options in pairs:
        if name in chosen:
            warnings.warn(f"Duplicate provider '{name}' encountered, ignoring.", stacklevel=5)
            continue
        if name not in available:
            reason = cuda_unavailable_reason() if name == CUDA_PROVIDER else None
            warnings.warn(
                f"Specified provider '{name}' is not in available provider names."
                f"Available providers: '{', '.join(available)}'" + (f" (the CUDA backend: {reason})" if reason else ""),
                stacklevel=5,
            )
            continue
        chosen[name] = {str(k): str(v) for k, v in options.items()}
    return list(chosen.items())


def cuda_provider_options(options: dict[str, str]) -> dict[str, str]:
    """The CUDA options this session honours: ``device_id`` 0 (the device CUDA_VISIBLE_DEVICES puts first).
    onnxruntime's other CUDA options are ignored with a warning; an unknown key too (onnxruntime refuses it,
    then falls back to the CPU)."""
    honoured = {"device_id": "0"}
    for key, value in options.items():
        if key == "device_id":
            try:
                device = int(value)
            except ValueError:
                raise InvalidOption(f'Failed to parse provider option "device_id" with value "{value}".') from None
            if device != 0:
                raise InvalidOption(
                    f"CUDAExecutionProvider device_id {device} is not supported: this runtime runs on device 0; "
                    "choose the GPU with CUDA_VISIBLE_DEVICES"
                )
        elif key in CUDA_OPTIONS_IGNORED:
            warnings.warn(f"{CUDA_PROVIDER} option '{key}' is not supported by this runtime; ignored", stacklevel=5)
        else:
            warnings.warn(f"Unknown {CUDA_PROVIDER} option '{key}'; ignored", stacklevel=5)
    return honoured
