"""MaxPool (with its optional ``Indices`` output) and AveragePool over 2-D (N, C, H, W) tensors, and over 1-D
(N, C, L) ones as 2-D pools of (N, C, 1, L) (https://onnx.ai/onnx/operators/onnx__MaxPool.html,
onnx__AveragePool.html).

Output sizes and padding follow onnxruntime, our oracle, where it is more specific than the spec
(``onnxruntime/core/providers/cpu/nn/pool_attributes.h``): SAME_* padding is computed from the kernel size
without its dilation, the floor-mode division truncates toward zero, and in ceil mode a last window that would
start inside the end padding is dropped (onnx/onnx#5741).

MaxPool follows onnxruntime's kernel that also writes the indices: each window starts from its first in-bounds
element in scan order and takes a later one only if it is strictly greater, so padding never wins, ties keep
the first maximum, a NaN that comes first in its window stays and a later NaN is passed over. (onnxruntime's
values-only MaxPool without dilation runs MLAS instead, whose NaN result depends on the SIMD width, and whose
padding wins over -inf; we give every MaxPool the indexed kernel's values.) ``Indices`` are flattened over the
whole tensor: ``(n·C + c)·H·W + h·W + w``, or ``... + h + w·H`` with storage_order=1.

MaxUnpool (https://onnx.ai/onnx/operators/onnx__MaxUnpool.html), 1-D to 3-D, follows onnxruntime's kernel
(``onnxruntime/core/providers/cpu/nn/unpool.cc``): a zero output of the inferred shape, ``(in − 1)·stride −
pad_begin − pad_end + kernel`` per spatial axis, or of ``output_shape`` when given (at least as many elements as
the inferred shape, same N and C), into whose flattened buffer each X element is written at its global index
from I, in scan order, so that of duplicate indices (overlapping windows) the last wins. An index outside the
output is refused; onnxruntime does not place the inferred block inside a larger ``output_shape`` (the ONNX
spec's own test case does).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np

from runtime.errors import InvalidFeed, InvalidModel, UnsupportedOp
from runtime.ops import FLOATS, attribute_key, onnx_op
from runtime.ops._cpu_kernels import JIT, PARALLEL_MIN_ELEMENTS, serial_and_parallel

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
# The values-only MaxPool goes parallel (over planes) from this many window taps: below, one core does it in
# under ~0.1 ms, less than waking the second one costs when another process holds it (LeNet's pools at batch 64,
# 0.3M and 0.1M taps: 33 and 24 us serial, no faster on 2 threads).
MAX_POOL_PARALLEL_TAPS = 1 << 20
U = numba.uint64  # unsigned flat indices: Numba then skips its negative-index wraparound


@dataclass(frozen=True)
class PoolGeometry:
    """Where each output element's window lies: window (oh, ow) reads rows ``oh·stride_h − pad_top + i·dilation_h``
    (i < kernel_h) and the matching columns, skipping those outside the input. The kernels see the input as
    ``planes`` (N·C, H, W) and write (N·C, out_h, out_w), which the op returns as ``out_shape``."""

    planes: tuple[int, int, int]
    out_shape: tuple[int, ...]
    out_h: int
    out_w: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_top: int
    pad_left: int
    pad_bottom: int
    pad_right: int

    def kernel_args(self) -> tuple[int, ...]:
        """The scalars the kernels take, in their order."""
        return (self.kernel_h, self.kernel_w, self.stride_h, self.stride_w, self.dilation_h, self.dilation_w,
                self.pad_top, self.pad_left, self.pad_bottom, self.pad_right)  # fmt: skip


def _trunc_div(a: int, b: int) -> int:
    """C++ integer division, which truncates toward zero (onnxruntime's)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _ints(op_type: str, name: str, value, length: int, default: int) -> list[int]:
    if value is None or len(value) == 0:
        return [default] * length
    if len(value) != length:
        raise InvalidModel(f"{op_type}: '{name}' has {len(value)} values; expected {length}")
    return [int(v) for v in value]


def _axis_geometry(size, kernel, stride, dilation, pad_begin, pad_end, auto_pad, ceil_mode):
    """(out, pad_begin, pad_end) along one spatial axis, as onnxruntime computes them."""
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # onnxruntime's "legacy" target size: the dilation does not enter the padding
        target = _trunc_div(size + stride - 1, stride)
        needed = (target - 1) * stride + kernel - size
        pad_begin = _trunc_div(needed, 2) if auto_pad == "SAME_UPPER" else _trunc_div(needed + 1, 2)
        pad_end = needed - pad_begin
    elif auto_pad == "VALID":
        pad_begin = pad_end = 0
    numerator = size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    out = _trunc_div(numerator, stride) + 1
    if ceil_mode:
        out = -((-numerator) // stride) + 1
        if (out - 1) * stride >= size + pad_begin:  # the last window would start in the end padding
            out -= 1
    return out, pad_begin, pad_end


def pool_geometry(op_type: str, shape, *, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides) -> PoolGeometry:
    """Check a pool's attributes against the input shape, (N, C, H, W) or (N, C, L), and compute its windows.
    Remembered per shape and attributes: a node sees the same ones at every run (4 us a call otherwise)."""
    key = attribute_key
    return _pool_geometry(op_type, tuple(shape), auto_pad, ceil_mode, key(dilations), key(kernel_shape), key(pads),
                          key(strides))  # fmt: skip


@functools.lru_cache(maxsize=256)
def _pool_geometry(op_type: str, shape, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides) -> PoolGeometry:
    if kernel_shape is None:
        raise InvalidModel(f"{op_type} needs the 'kernel_shape' attribute")
    spatial = len(shape) - 2
    if spatial not in (1, 2) or len(kernel_shape) != spatial:
        raise UnsupportedOp(
            f"this runtime's {op_type} pools 1-D and 2-D inputs, (N, C, L) and (N, C, H, W), only; got input shape "
            f"{tuple(shape)} and kernel_shape {list(kernel_shape)}"
        )
    if auto_pad not in AUTO_PADS:
        raise InvalidModel(f"{op_type}: auto_pad '{auto_pad}' is not one of {', '.join(AUTO_PADS)}")
    kernel = _ints(op_type, "kernel_shape", kernel_shape, spatial, 1)
    stride = _ints(op_type, "strides", strides, spatial, 1)
    dilation = _ints(op_type, "dilations", dilations, spatial, 1)
    pad = _ints(op_type, "pads", pads, 2 * spatial, 0)
    if spatial == 1:  # a unit H axis in front: every 1-D window is a 2-D window one row high
        shape = (*shape[:2], 1, shape[2])
        kernel, stride, dilation, pad = [1, *kernel], [1, *stride], [1, *dilation], [0, pad[0], 0, pad[1]]
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    pt, pl, pb, pr = pad
    if min(kh, kw, sh, sw, dh, dw) < 1:
        raise InvalidModel(
            f"{op_type}: kernel_shape {[kh, kw]}, strides {[sh, sw]} and dilations {[dh, dw]} must be positive"
        )
    if min(pt, pl, pb, pr) < 0 or max(pt, pb) >= kh or max(pl, pr) >= kw:
        raise InvalidModel(f"{op_type}: pads {[pt, pl, pb, pr]} must be >= 0 and smaller than the kernel {[kh, kw]}")
    N, C, H, W = shape
    if (C == 0 or H == 0 or W == 0) and N != 0:
        raise InvalidFeed(f"{op_type}: input shape {tuple(shape)} is empty; only N may be 0")
    oh, pt, pb = _axis_geometry(H, kh, sh, dh, pt, pb, auto_pad, ceil_mode)
    ow, pl, pr = _axis_geometry(W, kw, sw, dw, pl, pr, auto_pad, ceil_mode)
    if oh < 0 or ow < 0:
        raise InvalidFeed(
            f"{op_type}: the dilated kernel {[kh, kw]} (dilations {[dh, dw]}) does not fit the padded input "
            f"{(H, W)}; output size {(oh, ow)}"
        )
    out_shape = (N, C, oh, ow) if spatial == 2 else (N, C, ow)
    return PoolGeometry((N * C, H, W), out_shape, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr)


def lowest(dtype: np.dtype):
    """The value of a window with no element inside the input (onnxruntime's ``numeric_limits::lowest``)."""
    return np.finfo(dtype).min if dtype.kind == "f" else np.iinfo(dtype).min


# --- kernels ------------------------------------------------------------------------------------------------


@numba.njit(inline="always")
def _taps(start, dilation, kernel, size):
    """The taps [lo, hi) of a window whose tap t sits at start + t·dilation: those inside [0, size)."""
    lo = 0 if start >= 0 else (dilation - 1 - start) // dilation
    hi = min(kernel, (size - 1 - start) // dilation + 1)
    return lo, max(lo, hi)


def _max_pool(x, y, indices, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, lowest_value, column_major):
    # x: (P, H, W), the N·C planes; y, indices: (P, OH, OW).
    # Each window starts from its first in-bounds element; a window with none keeps lowest_value and (-1, -1).
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for row in numba.prange(P * OH):
        p = row // OH
        oh = row - p * OH
        h0 = oh * sh - pt
        i_lo, i_hi = _taps(h0, dh, kh, H)
        for ow in range(OW):
            w0 = ow * sw - pl
            j_lo, j_hi = _taps(w0, dw, kw, W)
            best = lowest_value
            best_h = -1
            best_w = -1
            if i_lo < i_hi and j_lo < j_hi:
                best_h = h0 + i_lo * dh
                best_w = w0 + j_lo * dw
                best = x[p, best_h, best_w]
                for i in range(i_lo, i_hi):
                    h = h0 + i * dh
                    for j in range(j_lo, j_hi):
                        v = x[p, h, w0 + j * dw]
                        if v > best:  # strictly greater: ties keep the first, NaN never replaces
                            best = v
                            best_h = h
                            best_w = w0 + j * dw
            y[p, oh, ow] = best
            plane = p * H * W
            indices[p, oh, ow] = plane + (best_h + best_w * H if column_major else best_h * W + best_w)


@numba.njit(inline="always")
def _window_max(x, p, h0, i_lo, i_hi, dh, w0, dw, kw, W, lowest_value):
    # _max_pool's value of one window whose rows [i_lo, i_hi) lie inside the input
    j_lo, j_hi = _taps(w0, dw, kw, W)
    if j_lo >= j_hi:
        return lowest_value
    best = x[p, h0 + i_lo * dh, w0 + j_lo * dw]
    for i in range(i_lo, i_hi):
        h = h0 + i * dh
        for j in range(j_lo, j_hi):
            v = x[p, h, w0 + j * dw]
            if v > best:
                best = v
    return best


def _max_pool_values(x, y, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, lowest_value):
    # _max_pool without Indices, the same values, 4-8x faster: one plane per prange iteration; the windows of a
    # row that lie wholly inside the input's width, columns [ow_lo, ow_hi), skip the per-window bounds and the
    # index bookkeeping. Each window starts from its first tap and keeps a later one only if strictly greater:
    # a select (v > best ? v : best), which never lets a later NaN in.
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    ow_lo = min(OW, (pl + sw - 1) // sw)  # first window with w0 >= 0
    ow_hi = max(ow_lo, min(OW, (W - 1 - (kw - 1) * dw + pl) // sw + 1))  # past the last one ending inside W
    for p in numba.prange(P):
        for oh in range(OH):
            h0 = oh * sh - pt
            i_lo, i_hi = _taps(h0, dh, kh, H)
            yo = (p * OH + oh) * OW  # y's flat offset of this row
            if i_lo >= i_hi:  # windows wholly in the top or bottom padding
                for ow in range(OW):
                    yf[U(yo + ow)] = lowest_value
                continue
            for ow in range(ow_lo):
                yf[U(yo + ow)] = _window_max(x, p, h0, i_lo, i_hi, dh, ow * sw - pl, dw, kw, W, lowest_value)
            for ow in range(ow_hi, OW):
                yf[U(yo + ow)] = _window_max(x, p, h0, i_lo, i_hi, dh, ow * sw - pl, dw, kw, W, lowest_value)
            for ow in range(ow_lo, ow_hi):
                w0 = ow * sw - pl
                best = xf[U((p * H + h0 + i_lo * dh) * W + w0)]
                for i in range(i_lo, i_hi):
                    xo = (p * H + h0 + i * dh) * W + w0
                    for j in range(1 if i == i_lo else 0, kw):
                        v = xf[U(xo + j * dw)]
                        best = v if v > best else best
                yf[U(yo + ow)] = best


def _max_pool_2x2(x, y):
    # _max_pool_values of 2x2 windows, stride 2, that all lie inside x (LeNet's, VGG's pools), unrolled: twice as
    # fast again as the general kernel (LeNet's second pool at batch 64: 24 against 50 us).
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for p in numba.prange(P):
        for oh in range(OH):
            r0 = (p * H + 2 * oh) * W  # x's flat offset of the windows' top row
            r1 = r0 + W
            yo = (p * OH + oh) * OW
            for ow in range(OW):
                best = xf[U(r0 + 2 * ow)]
                v = xf[U(r0 + 2 * ow + 1)]
                best = v if v > best else best
                v = xf[U(r1 + 2 * ow)]
                best = v if v > best else best
                v = xf[U(r1 + 2 * ow + 1)]
                yf[U(yo + ow)] = v if v > best else best


def _average_pool(x, y, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, zero, count_include_pad):
    # x: (P, H, W); y: (P, OH, OW). With count_include_pad the divisor counts the window's taps inside the padded
    # input (not those a ceil-mode window has beyond it); without, only those summed. As in onnxruntime, the taps
    # stop at the padded end even when that is inside the input (a negative end pad from SAME_*), and the sum
    # starts from ``zero``, of x's dtype, so that it runs in x's precision.
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for row in numba.prange(P * OH):
        p = row // OH
        oh = row - p * OH
        h0 = oh * sh - pt
        i_lo, i_hi = _taps(h0, dh, kh, min(H, H + pb))
        padded_rows = min(kh, (H + pb - 1 - h0) // dh + 1)  # taps inside the padded input
        for ow in range(OW):
            w0 = ow * sw - pl
            j_lo, j_hi = _taps(w0, dw, kw, min(W, W + pr))
            acc = zero
            for i in range(i_lo, i_hi):
                h = h0 + i * dh
                for j in range(j_lo, j_hi):
                    acc += x[p, h, w0 + j * dw]
            if count_include_pad:
                count = padded_rows * min(kw, (W + pr - 1 - w0) // dw + 1)
            else:
                count = (i_hi - i_lo) * (j_hi - j_lo)
            y[p, oh, ow] = acc / count if count > 0 else acc


_max_pool_serial, _max_pool_parallel = serial_and_parallel(_max_pool)
_max_pool_values_serial, _max_pool_values_parallel = serial_and_parallel(_max_pool_values)
_max_pool_2x2_serial, _max_pool_2x2_parallel = serial_and_parallel(_max_pool_2x2)
_average_pool_serial, _average_pool_parallel = serial_and_parallel(_average_pool)


def _all_inside_2x2(g: PoolGeometry) -> bool:
    """Whether the windows are 2x2 with stride 2, undilated, and all inside the input (no padding read)."""
    kernel = (g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w, g.pad_top, g.pad_left)
    return kernel == (2, 2, 2, 2, 1, 1, 0, 0) and 2 * g.out_h <= g.planes[1] and 2 * g.out_w <= g.planes[2]


def max_pool(X: np.ndarray, g: PoolGeometry, storage_order: int, with_indices: bool):
    """(Y, Indices) of a MaxPool; Indices is None unless ``with_indices``."""
    y = np.empty((g.planes[0], g.out_h, g.out_w), dtype=X.dtype)
    indices = np.empty(y.shape, dtype=np.int64) if with_indices else None
    if y.size:
        parallel = y.size * g.kernel_h * g.kernel_w >= PARALLEL_MIN_ELEMENTS
        x = np.ascontiguousarray(X).reshape(g.planes)
        lowest_value = X.dtype.type(lowest(X.dtype))
        if with_indices:
            fn = _max_pool_parallel if parallel else _max_pool_serial
            fn(x, y, indices, *g.kernel_args(), lowest_value, storage_order == 1)
        else:
            parallel = y.size * g.kernel_h * g.kernel_w >= MAX_POOL_PARALLEL_TAPS
            if _all_inside_2x2(g):
                (_max_pool_2x2_parallel if parallel else _max_pool_2x2_serial)(x, y)
            else:
                fn = _max_pool_values_parallel if parallel else _max_pool_values_serial
                fn(x, y, *g.kernel_args(), lowest_value)
    return y.reshape(g.out_shape), (indices.reshape(g.out_shape) if with_indices else None)


def average_pool(X: np.ndarray, g: PoolGeometry, count_include_pad: int) -> np.ndarray:
    y = np.empty((g.planes[0], g.out_h, g.out_w), dtype=X.dtype)
    if y.size:
        parallel = y.size * g.kernel_h * g.kernel_w >= PARALLEL_MIN_ELEMENTS
        fn = _average_pool_parallel if parallel else _average_pool_serial
        fn(np.ascontiguousarray(X).reshape(g.planes), y, *g.kernel_args(), X.dtype.type(0), bool(count_include_pad))
    return y.reshape(g.out_shape)


def unpool_shape(X_shape, I_shape, output_shape, *, kernel_shape, pads, strides) -> tuple[int, ...]:
    """MaxUnpool's output shape, with onnxruntime's checks of the attributes, of I and of ``output_shape``."""
    spatial = len(X_shape) - 2
    if kernel_shape is None or len(kernel_shape) == 0:
        raise InvalidModel("MaxUnpool needs the 'kernel_shape' attribute")
    if spatial not in (1, 2, 3) or len(kernel_shape) != spatial:
        raise UnsupportedOp(
            f"this runtime's MaxUnpool takes 1-D to 3-D inputs, (N, C, L) to (N, C, D, H, W), as onnxruntime; got "
            f"input shape {tuple(X_shape)} and kernel_shape {list(kernel_shape)}"
        )
    kernel = _ints("MaxUnpool", "kernel_shape", kernel_shape, spatial, 1)
    stride = _ints("MaxUnpool", "strides", strides, spatial, 1)
    pad = _ints("MaxUnpool", "pads", pads, 2 * spatial, 0)
    if min(kernel) < 1 or min(stride) < 1:
        raise InvalidModel(f"MaxUnpool: kernel_shape {kernel} and strides {stride} must be positive")
    if min(pad) < 0 or any(pad[a] >= kernel[a] or pad[a + spatial] >= kernel[a] for a in range(spatial)):
        raise InvalidModel(f"MaxUnpool: pads {pad} must be >= 0 and smaller than the kernel {kernel}")
    if tuple(I_shape) != tuple(X_shape):
        raise InvalidFeed(f"MaxUnpool: the indices I have shape {tuple(I_shape)}; expected X's {tuple(X_shape)}")
    inferred = tuple(X_shape[:2]) + tuple(
        (X_shape[2 + a] - 1) * stride[a] - pad[a] - pad[a + spatial] + kernel[a] for a in range(spatial)
    )
    if min(inferred[2:]) < 1:
        raise InvalidFeed(
            f"MaxUnpool: the inferred output shape {inferred} of input shape {tuple(X_shape)} is not positive; "
            f"check kernel_shape {kernel}, strides {stride} and pads {pad}"
        )
    if output_shape is None:
        return inferred
    given = np.asarray(output_shape)
    if given.ndim != 1 or given.dtype != np.int64 or given.size != len(X_shape):
        raise InvalidFeed(
            f"MaxUnpool: output_shape must be a 1-D int64 tensor of {len(X_shape)} values (X's rank); got "
            f"{given.dtype} of shape {given.shape}"
        )
    shape = tuple(int(d) for d in given)
    if shape[:2] != tuple(X_shape[:2]) or min(shape) < 0 or math.prod(shape) < math.prod(inferred):
        raise InvalidFeed(
            f"MaxUnpool: output_shape {shape} must keep X's N and C {tuple(X_shape[:2])} and hold at least the "
            f"{math.prod(inferred)} elements of the inferred shape {inferred}"
        )
    return shape


@numba.njit(**JIT)
def _max_unpool(x, indices, y):
    # x, indices: the flat input and its global indices; y: the flat, zeroed output. Serial, in scan order, as
    # onnxruntime: the last of duplicate indices wins. Returns the position of the first index out of range, or -1.
    n = y.size
    for j in range(x.size):
        t = indices[j]
        if t < 0 or t >= n:
            return j
        y[t] = x[j]
    return -1


def out_of_range(index: int, shape) -> InvalidFeed:
    return InvalidFeed(f"MaxUnpool: index {index} in I is out of range [0, {math.prod(shape)}) for output {shape}")


def check_storage_order(storage_order) -> int:
    if storage_order not in (0, 1):
        raise InvalidModel(f"MaxPool: storage_order must be 0 (row-major) or 1 (column-major), got {storage_order}")
    return int(storage_order)


@onnx_op(dtypes={"X": FLOATS + ("int8", "uint8")})
def MaxPool(
    X,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    storage_order=0,
    strides=None,
    _outputs=(True, True),
):
    g = pool_geometry("MaxPool", X.shape, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                      kernel_shape=kernel_shape, pads=pads, strides=strides)  # fmt: skip
    with_indices = len(_outputs) > 1 and _outputs[1]
    result = max_pool(X, g, check_storage_order(storage_order), with_indices=with_indices)
    return result if with_indices else result[0]


@onnx_op(dtypes={"X": FLOATS})
def AveragePool(
    X,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    count_include_pad=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    strides=None,
):
    g = pool_geometry("AveragePool", X.shape, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                      kernel_shape=kernel_shape, pads=pads, strides=strides)  # fmt: skip
    return average_pool(X, g, count_include_pad)


@onnx_op(since=9, dtypes={"X": FLOATS})
def MaxUnpool(X, I, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    shape = unpool_shape(X.shape, I.shape, output_shape, kernel_shape=kernel_shape, pads=pads, strides=strides)
    if X.dtype.kind != "f" or I.dtype != np.int64:
        raise InvalidFeed(f"MaxUnpool takes floating-point X and int64 I; got {X.dtype} and {I.dtype}")
    y = np.zeros(shape, dtype=X.dtype)
    I = np.ascontiguousarray(I)
    bad = _max_unpool(np.ascontiguousarray(X).reshape(-1), I.reshape(-1), y.reshape(-1))
    if bad >= 0:
        raise out_of_range(int(I.flat[bad]), shape)
    return y
