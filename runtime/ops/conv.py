"""Conv and ConvTranspose on the CPU (https://onnx.ai/onnx/operators/onnx__Conv.html,
https://onnx.ai/onnx/operators/onnx__ConvTranspose.html): the runtime's GEMM (``_gemm_cpu``, one summation
order per output element) plus Numba kernels that rearrange the data around it. Where onnx shape inference
and onnxruntime disagree on ConvTranspose's padding, this follows onnxruntime (see ``conv_geometry``).

1-D and 2-D convolutions run as 3-D ones whose leading spatial axes have size 1, so one set of kernels serves
every rank. With K = kD·kH·kW taps, P_in / P_out spatial positions, g groups and a chunk of n samples:

- Conv, where at least half the columns it computes are outputs (``_direct_plan``): a direct convolution,
  ``_conv_direct``. The GEMM W_g @ col_g with col never formed: the input is copied once into its stride
  phases with its pads (C_in·D·H·W elements, not im2col's C_in·K·P), output positions become columns of a
  plane as wide as a window row reaches, and the GEMM's micro-kernel reads each row of a panel of col straight
  from those planes through a table of per-tap offsets (``direct_panels``; MLAS's and oneDNN's direct
  convolutions work so, on NCHWc). The same fused multiply-adds in the same order as the im2col paths below,
  so the choice changes no bit. On one core it took 0.45–0.9 of the im2col paths' time (LeNet, the DCGAN
  discriminator, VGG16's 3x3 layers, depthwise 3x3), 1.03–1.08 on a one-channel input.
- Otherwise, Conv of a sample large enough for several cores that makes one tile (see ``conv_rows_per_tile``):
  ``_im2col_sample`` writes col (C_in·K, P_out) in parallel over its rows, zeros where a window leaves the
  input; the GEMM W (g, C_out/g, C_in/g·K) @ col (g, C_in/g·K, P_out) (W's panels packed once per session
  weight; blocks on Numba's threads when large) writes the output (C_out, P_out) in place, bias and activation
  in its epilogue. A Conv whose window is the whole input is one GEMM (``_full_window``).
- Conv of a batch, of a large sample, or of one too small for several cores (then one tile, one kernel call):
  ``_conv_tiles`` runs one task per tile of the batch's output rows in ``prange``: the tile's im2col, its
  packing into the GEMM's panels and the GEMM per group on the task's core (``gemm_panels``), bias and
  activation written into the output. col stays in the core's cache and the
  output is written once, in NCHW; the batch's GEMMs run side by side on the cores.
- ConvTranspose: the GEMM Wᵀ (g, C_out/g·K, C_in/g) @ X (g, C_in/g, n·P_in) gives every tap's contribution,
  col (C_out, K, n, P_in); ``_col2im`` is a gather: each output row sums the contributions that land on it
  (the taps k with o + pad − k·d divisible by the stride), so rows are independent and run in ``prange``
  without races. This is onnxruntime's GEMM + col2im. A batch whose samples have at least MIN_SAMPLE_COLUMNS
  input positions runs one task per sample (``_conv_transpose_samples``: its GEMM and its col2im, on one
  core); otherwise the samples sit side by side in the GEMM's columns, chunk by chunk, the chunks sized so
  that col stays in cache between the GEMM (Wᵀ's panels packed once per session weight) and the col2im
  (``COL_CHUNK_BYTES``). With unit strides a ConvTranspose is a Conv over the flipped window
  (``_transpose_as_conv``), at every batch size.

Each path sums an output in an order fixed by the geometry alone (the GEMM's k order, then col2im's taps), so
a sample's bits do not depend on its batch, the thread count or the machine's BLAS. No fastmath anywhere, so
NaN propagates as in onnxruntime.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np

from runtime.errors import InvalidFeed, InvalidModel
from runtime.ops import ABSENT, FLOATS, attribute_key, onnx_op
from runtime.ops._cpu_kernels import (
    ACTIVATIONS,
    JIT,
    LEAKY_RELU_ALPHA,
    PARALLEL_MIN_ELEMENTS,
    activate_alpha,
    bias_operand,
    kernel_operand,
    packed,
    packed_weight,
    serial_and_parallel,
)
from runtime.ops._gemm_cpu import (
    CHAIN_MAX_COLUMNS,
    CHAIN_MAX_ROWS,
    MR,
    PARALLEL_FLOPS,
    direct_panels,
    gemm,
    gemm_chains,
    gemm_panels,
    pack_b_panels,
    packed_a,
    packed_b,
)
from runtime.ops.gemm import FUSED_DOMAIN

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
DTYPES = (np.float32, np.float64)
MAX_SPATIAL_RANK = 3


# --- geometry: shared with the CUDA variants ---------------------------------------------------------------


@dataclass(frozen=True)
class ConvGeometry:
    """The resolved shape of one Conv or ConvTranspose: one entry per spatial axis in the tuples."""

    N: int
    C_in: int
    C_out: int
    group: int
    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    out_size: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.in_size)

    def as_3d(self, values: tuple[int, ...], fill: int) -> tuple[int, int, int]:
        """``values`` with leading axes added: a 1-D or 2-D convolution as a 3-D one."""
        return (fill,) * (MAX_SPATIAL_RANK - self.rank) + tuple(values)

    @property
    def x5_shape(self) -> tuple[int, ...]:
        return (self.N, self.C_in, *self.as_3d(self.in_size, 1))  # (N, C_in, D, H, W)

    @property
    def y5_shape(self) -> tuple[int, ...]:
        return (self.N, self.C_out, *self.as_3d(self.out_size, 1))  # (N, C_out, D_out, H_out, W_out)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.N, self.C_out, *self.out_size)

    def w5_shape(self, w_shape) -> tuple[int, ...]:
        return (w_shape[0], w_shape[1], *self.as_3d(self.kernel, 1))  # (W0, W1, kD, kH, kW)

    @functools.cached_property
    def kernel_arguments_cached(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``kernel_arguments()`` made once per geometry (read-only: the kernels never write them)."""
        arrays = self.kernel_arguments()
        for a in arrays:
            a.flags.writeable = False
        return arrays

    def kernel_arguments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """strides, dilations and begin pads as int64 arrays of length 3 (the kernels' calling convention)."""
        return tuple(np.array(self.as_3d(v, f), np.int64) for v, f in
                     ((self.strides, 1), (self.dilations, 1), (self.pads_begin, 0)))  # fmt: skip


def _per_axis(op_type: str, name: str, value, default: int, length: int, minimum: int) -> tuple[int, ...]:
    if value is None or len(value) == 0:
        return (default,) * length
    value = tuple(int(v) for v in value)
    if len(value) != length:
        raise InvalidModel(f"{op_type}: attribute {name}={list(value)} has {len(value)} values; expected {length}")
    if min(value) < minimum:
        raise InvalidModel(f"{op_type}: attribute {name}={list(value)} must hold values >= {minimum}")
    return value


def _split(total: int, odd_at_end: bool) -> int:
    """The begin pad of a total padding split in two, the odd unit at the end or at the beginning."""
    return total // 2 if odd_at_end else total - total // 2


def conv_geometry(
    op_type: str,
    X_shape,
    W_shape,
    B_shape=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
    output_padding=None,
    output_shape=None,
) -> ConvGeometry:
    """Check the inputs and attributes of a ``Conv`` or ``ConvTranspose`` node and resolve its output shape
    and begin pads (the end pads follow from the output size)."""
    transposed = op_type == "ConvTranspose"
    X_shape, W_shape = tuple(X_shape), tuple(W_shape)
    rank = len(X_shape) - 2
    if not 1 <= rank <= MAX_SPATIAL_RANK:
        raise InvalidFeed(
            f"{op_type}: input X of shape {X_shape} has rank {len(X_shape)}; this runtime takes rank 3, 4 or 5 "
            f"(1-D, 2-D or 3-D {op_type})"
        )
    if len(W_shape) != len(X_shape):
        raise InvalidFeed(f"{op_type}: weight W of shape {W_shape} has not the rank of input X of shape {X_shape}")
    if auto_pad not in AUTO_PADS:
        raise InvalidModel(f"{op_type}: auto_pad='{auto_pad}'; expected one of {', '.join(AUTO_PADS)}")
    if group < 1:
        raise InvalidModel(f"{op_type}: group={group} must be >= 1")
    N, C_in = X_shape[:2]
    in_size, kernel = X_shape[2:], W_shape[2:]
    if transposed:
        if W_shape[0] != C_in:
            raise InvalidFeed(
                f"ConvTranspose: input X of shape {X_shape} has {C_in} channels but weight W of shape {W_shape} "
                f"takes {W_shape[0]} (W.shape[0])"
            )
        C_out = W_shape[1] * group
    else:
        if W_shape[1] * group != C_in:
            raise InvalidFeed(
                f"Conv: input X of shape {X_shape} has {C_in} channels but weight W of shape {W_shape} with "
                f"group={group} takes W.shape[1] * group = {W_shape[1] * group}"
            )
        C_out = W_shape[0]
    grouped = C_in if transposed else C_out
    if grouped % group:
        side = "input" if transposed else "output"
        raise InvalidFeed(
            f"{op_type}: {grouped} {side} channels (W of shape {W_shape}) do not split into {group} groups"
        )
    if kernel_shape is not None and len(kernel_shape) and tuple(kernel_shape) != kernel:
        raise InvalidFeed(f"{op_type}: kernel_shape={list(kernel_shape)} does not match weight W of shape {W_shape}")
    if min(kernel, default=1) < 1:
        raise InvalidFeed(f"{op_type}: weight W of shape {W_shape} has an empty kernel")
    if B_shape is not None and tuple(B_shape) != (C_out,):
        raise InvalidFeed(f"{op_type}: bias B of shape {tuple(B_shape)}; expected ({C_out},), one per output channel")
    strides = _per_axis(op_type, "strides", strides, 1, rank, 1)
    dilations = _per_axis(op_type, "dilations", dilations, 1, rank, 1)
    pads = _per_axis(op_type, "pads", pads, 0, 2 * rank, 0)
    output_padding = _per_axis(op_type, "output_padding", output_padding, 0, rank, 0)
    if output_shape is not None and len(output_shape):
        if len(output_shape) not in (rank, rank + 2):  # onnxruntime also takes (N, C, *spatial)
            raise InvalidModel(f"{op_type}: output_shape={list(output_shape)} has not {rank} values")
        output_shape = tuple(int(v) for v in output_shape[-rank:])
    else:
        output_shape = None

    pads_begin, out_size = [], []
    for i in range(rank):
        n_in, k, s, d = in_size[i], kernel[i], strides[i], dilations[i]
        reach = (k - 1) * d + 1  # the dilated kernel's extent
        if transposed:
            if output_padding[i] >= max(s, d):
                raise InvalidModel(
                    f"ConvTranspose: output_padding={list(output_padding)} must be less than the stride or the "
                    f"dilation along each axis (strides={list(strides)}, dilations={list(dilations)})"
                )
            full = s * (n_in - 1) + output_padding[i] + reach  # the output size before any padding
            if output_shape is not None:
                # onnxruntime: pads are ignored; a shape larger than `full` pads nothing and leaves bias at the end
                total = max(0, full - output_shape[i])
                begin, out = _split(total, auto_pad == "SAME_UPPER"), output_shape[i]
            elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                total = max(0, full - n_in * s)
                begin, out = _split(total, auto_pad == "SAME_UPPER"), full - total
            elif auto_pad == "VALID":
                begin, out = 0, full
            else:
                begin, out = pads[i], full - pads[i] - pads[rank + i]
        else:
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = -(-n_in // s)  # ceil(in / s)
                total = max(0, (out - 1) * s + reach - n_in)
                begin = _split(total, auto_pad == "SAME_UPPER")
            else:
                begin, end = (0, 0) if auto_pad == "VALID" else (pads[i], pads[rank + i])
                out = (n_in + begin + end - reach) // s + 1
        if out <= 0:
            raise InvalidFeed(
                f"{op_type}: input X of shape {X_shape} with weight W of shape {W_shape}, strides={list(strides)}, "
                f"dilations={list(dilations)} and pads={list(pads)} (auto_pad={auto_pad}) gives an empty output "
                f"along spatial axis {i} (size {out})"
            )
        pads_begin.append(begin)
        out_size.append(out)
    return ConvGeometry(N, C_in, C_out, group, in_size, kernel, strides, dilations, tuple(pads_begin), tuple(out_size))


@functools.lru_cache(maxsize=256)
def _cached_geometry(op_type, X_shape, W_shape, B_shape, auto_pad, dilations, group, kernel_shape, pads, strides,
                     output_padding, output_shape) -> ConvGeometry:  # fmt: skip
    return conv_geometry(op_type, X_shape, W_shape, B_shape, auto_pad=auto_pad, dilations=dilations, group=group,
                         kernel_shape=kernel_shape, pads=pads, strides=strides, output_padding=output_padding,
                         output_shape=output_shape)  # fmt: skip


def cached_conv_geometry(op_type: str, X_shape, W_shape, B_shape=None, *, auto_pad="NOTSET", dilations=None,
                         group=1, kernel_shape=None, pads=None, strides=None, output_padding=None,
                         output_shape=None) -> ConvGeometry:  # fmt: skip
    """``conv_geometry`` remembered per shapes and attributes: a node sees the same ones at every run, and the
    checks cost about as much as a batch-1 convolution of LeNet's size."""
    key = attribute_key
    return _cached_geometry(op_type, tuple(X_shape), tuple(W_shape), None if B_shape is None else tuple(B_shape),
                            auto_pad, key(dilations), int(group), key(kernel_shape), key(pads), key(strides),
                            key(output_padding), key(output_shape))  # fmt: skip


def _check_inputs(op_type: str, X, W, B) -> None:
    if X.dtype.type not in DTYPES:
        raise InvalidFeed(f"{op_type} takes float32 or float64 tensors, got X of dtype {X.dtype}")
    for name, t in (("W", W), ("B", B)):
        if t is not None and t.dtype != X.dtype:
            raise InvalidFeed(f"{op_type}: {name} has dtype {t.dtype} but X has dtype {X.dtype}")


# --- Numba kernels --------------------------------------------------------------------------------------------
# The kernels index flattened arrays with unsigned integers: Numba then skips its negative-index wraparound,
# which otherwise costs a compare and a select on every load and store of these short inner loops.

U = numba.uint64

# A kernel called from another is compiled for the argument types at the call: a constant argument (0, False)
# is a literal type there, and the callee (the GEMM's gemm_panels, ~3 s with an empty cache) would be compiled
# for it once more beside the GEMM's own signature. Such arguments are passed as np.int64(0), np.bool_(False).


@numba.njit(**JIT)
def _tap_table(out_size, in_size, k, s, d, pad):
    """Along one axis of a transposed convolution, for each output index o, the taps t (and input indices i)
    with o = i·s − pad + t·d: their count (out,), taps (out, k) and input indices (out, k)."""
    count = np.zeros(out_size, np.int64)
    taps = np.zeros((out_size, k), np.int64)
    sources = np.zeros((out_size, k), np.int64)
    for o in range(out_size):
        for t in range(k):
            q = o + pad - t * d
            if q >= 0 and q % s == 0 and q // s < in_size:
                taps[o, count[o]] = t
                sources[o, count[o]] = q // s
                count[o] += 1
    return count, taps, sources


@numba.njit(inline="always")
def _copy_row(dst, d0, src, s0, n, lo, hi, step):
    # dst[d0 : d0 + n] = 0 before lo and from hi on, src[s0 + e·step] for e in [lo, hi) (flat arrays)
    for e in range(lo):
        dst[U(d0 + e)] = 0.0
    if step == 1:  # a contiguous copy, which LLVM vectorises
        for e in range(lo, hi):
            dst[U(d0 + e)] = src[U(s0 + e)]
    else:
        for e in range(lo, hi):
            dst[U(d0 + e)] = src[U(s0 + e * step)]
    for e in range(hi, n):
        dst[U(d0 + e)] = 0.0


@numba.njit(inline="always")
def _fill_col_row(xf, colf, dst, n, c, kd, kh, kw, od, oh, rows, x_shape, OH, OW, strides, dilations, pads):
    # Row (c, kd, kh, kw) of im2col for ``rows`` output rows of sample n from (od, oh) on, written from colf[dst]
    # on, OW values per output row: x's value under that tap at each output position, or 0 where the window
    # leaves x. No integer division where the stride is 1: per call they cost more than a short row's copy.
    C, D, H, W = x_shape[1], x_shape[2], x_shape[3], x_shape[4]
    sW = strides[2]
    off = kw * dilations[2] - pads[2]  # input column of output column ow: ow·s + off
    if sW == 1:
        lo = min(OW, max(0, -off))
        hi = max(lo, min(OW, W - off))
    else:
        lo = min(OW, max(0, -(off // sW)))
        hi = max(lo, min(OW, (W - 1 - off) // sW + 1))
    for _ in range(rows):
        id_ = od * strides[0] - pads[0] + kd * dilations[0]
        ih = oh * strides[1] - pads[1] + kh * dilations[1]
        oh += 1
        if oh == OH:
            oh = 0
            od += 1
        if id_ < 0 or id_ >= D or ih < 0 or ih >= H:
            for ow in range(OW):
                colf[U(dst + ow)] = 0.0
            dst += OW
            continue
        _copy_row(colf, dst, xf, (((n * C + c) * D + id_) * H + ih) * W + off, OW, lo, hi, sW)
        dst += OW


def _im2col_sample(x, col, strides, dilations, pads, kernel, OH, OW):
    # x: (1, C_in, D, H, W); col: (C_in·K, OD·OH·OW), one prange iteration per row of col
    xf = x.reshape(-1)
    colf = col.reshape(-1)
    CK, P = col.shape
    KD, KH, KW = kernel[0], kernel[1], kernel[2]
    for r in numba.prange(CK):
        kw, kh, kd, c = r % KW, (r // KW) % KH, (r // (KW * KH)) % KD, r // (KW * KH * KD)
        _fill_col_row(xf, colf, r * P, 0, c, kd, kh, kw, 0, 0, P // OW, x.shape, OH, OW, strides, dilations, pads)


@numba.njit(inline="always")
def _conv_tile(x, w_panels, Cg_out, CKg, bias, y, strides, dilations, pads, kernel, u0, u1, activation, alpha):
    # One tile of ``_conv_tiles``: the batch's output rows [u0, u1), u = (n, od, oh).
    G = w_panels.shape[0]
    _, C_out, OD, OH, OW = y.shape
    R = OD * OH  # output rows per sample
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    T = (u1 - u0) * OW  # the tile's output positions
    col = np.empty((G, CKg, T), x.dtype)  # (g, C_in/g·K, T), rows (c, kd, kh, kw)
    colf = col.reshape(-1)
    # The tile's share of each sample it meets, found once (integer divisions): sample seg[i, 0], from output row
    # (od, oh) = seg[i, 1:3] on, seg[i, 3] rows of it
    seg = np.empty(((u1 - u0) // R + 2, 4), np.int64)
    S = 0
    u = u0
    while u < u1:
        q = u % R
        rows = min(R, q + u1 - u) - q
        seg[S, 0], seg[S, 1], seg[S, 2], seg[S, 3] = u // R, q // OH, q % OH, rows
        u += rows
        S += 1
    KD, KH, KW = kernel[0], kernel[1], kernel[2]
    r = 0
    for c in range(x.shape[1]):
        for kd in range(KD):
            for kh in range(KH):
                for kw in range(KW):
                    dst = r * T
                    for i in range(S):
                        _fill_col_row(xf, colf, dst, seg[i, 0], c, kd, kh, kw, seg[i, 1], seg[i, 2], seg[i, 3], x.shape,
                                      OH, OW, strides, dilations, pads)  # fmt: skip
                        dst += seg[i, 3] * OW
                    r += 1
    prod = np.empty((Cg_out, T), x.dtype)  # (C_out/g, T)
    nr = 2 * 64 // x.itemsize  # the GEMM's panel width (``nr_of``)
    nq = (T + nr - 1) // nr
    col_panels = np.empty(nq * nr * CKg, x.dtype)  # col_g packed: (T/nr, C_in/g·K, nr)
    tile = np.empty(MR * nr, x.dtype)
    unused = np.zeros((1, 1), x.dtype)
    zero, no = np.int64(0), np.bool_(False)  # typed, not literals (see above the kernels)
    for g in range(G):
        pack_b_panels(col[g], col_panels, zero, nq, nr)
        gemm_panels(w_panels[g], Cg_out, col_panels, T, CKg, prod, nr, zero, nq, zero, (Cg_out + MR - 1) // MR,
                    tile, unused, no, alpha, zero, alpha)  # fmt: skip
        for o in range(Cg_out):
            co = g * Cg_out + o
            b = bias[co]
            u = u0
            while u < u1:
                n, q = u // R, u % R
                length = (min(R, q + u1 - u) - q) * OW
                base = ((n * C_out + co) * R + q) * OW  # y[n, co] from row q on
                src = (u - u0) * OW
                for p in range(length):
                    yf[U(base + p)] = activate_alpha(prod[o, src + p] + b, activation, alpha)
                u += length // OW


def _conv_tiles(x, w_panels, Cg_out, CKg, bias, y, strides, dilations, pads, kernel, rows_per_tile, activation,
                alpha):  # fmt: skip
    # x: (N, C_in, D, H, W); w_panels: per group W_g (C_out/g, C_in/g·K) packed for the GEMM (``packed_a``);
    # y: (N, C_out, OD, OH, OW) = act(conv + bias).
    # The batch's output rows u = (n, od, oh), N·OD·OH of them, cut into tiles of rows_per_tile (a tile may span
    # samples); one task per tile (``_conv_tile``): its im2col into col (C_in·K, rows·OW); per group one GEMM
    # W_g (C_out/g, C_in/g·K) @ col_g into prod (C_out/g, rows·OW), on the task's core; bias and activation on
    # the way into y, where each sample's share of the tile is contiguous in each channel. col and prod stay in
    # the core's cache.
    rows = x.shape[0] * y.shape[2] * y.shape[3]
    for t in numba.prange((rows + rows_per_tile - 1) // rows_per_tile):
        u0 = t * rows_per_tile
        _conv_tile(x, w_panels, Cg_out, CKg, bias, y, strides, dilations, pads, kernel, u0,
                   min(rows, u0 + rows_per_tile), activation, alpha)  # fmt: skip


@numba.njit(inline="always")
def _split_planes(xf, xph, x_shape, q3, phases, strides, pads, cs, r0, r1):
    # Rows r = (n, c, phase, i) in [r0, r1) of ``_conv_direct``'s phase planes xph (N, C_in, cs): a channel's
    # (S, Dq, Hq, Wq) planes, then zeros up to its channel stride cs (``_channel_stride``), each row Hq rows of Wq,
    # from x (x_shape = (N, C_in, D, H, W), flat in xf)
    D, H, W = x_shape[2], x_shape[3], x_shape[4]
    Dq, Hq, Wq = q3[0], q3[1], q3[2]
    sD, sH, sW = strides[0], strides[1], strides[2]
    S = phases.shape[0]
    for r in range(r0, r1):
        i = r % Dq
        phase = (r // Dq) % S
        nc = r // (Dq * S)
        pd, ph, pw = phases[phase, 0], phases[phase, 1], phases[phase, 2]
        id_ = i * sD + pd - pads[0]
        dst = nc * cs + (r % (Dq * S)) * Hq * Wq
        if r % (Dq * S) == Dq * S - 1:  # the channel's last row: the gap up to the next channel too
            for e in range(nc * cs + Dq * S * Hq * Wq, (nc + 1) * cs):
                xph[U(e)] = 0.0
        if id_ < 0 or id_ >= D:
            for e in range(Hq * Wq):
                xph[U(dst + e)] = 0.0
            continue
        lo = min(Wq, max(0, (pads[2] - pw + sW - 1) // sW))  # first l inside x
        hi = max(lo, min(Wq, (W + pads[2] - pw + sW - 1) // sW))  # past the last
        for j in range(Hq):
            ih = j * sH + ph - pads[1]
            row = dst + j * Wq
            if ih < 0 or ih >= H:
                for e in range(Wq):
                    xph[U(row + e)] = 0.0
                continue
            _copy_row(xph, row, xf, ((nc * D + id_) * H + ih) * W + pw - pads[2], Wq, lo, hi, sW)


@numba.njit(inline="always")
def _direct_task(xph, sample, w_panels, Cg_out, CKg, bias, y, q3, offs, nqs, per_task, row_blocks, t, activation,
                 alpha):  # fmt: skip
    # Task t of ``_conv_direct``: its sample n's panels [q0, q0 + per_task) of virtual columns, one of row_blocks
    # blocks of each group's row panels of W, into y
    G = w_panels.shape[0]
    _, C_out, OD, OH, OW = y.shape
    Hq, Wq = q3[1], q3[2]
    nr = 2 * 64 // xph.itemsize  # the GEMM's panel width (``nr_of``)
    tps = (nqs + per_task - 1) // per_task  # column runs per sample
    n = t // (tps * row_blocks)
    q0 = (t // row_blocks % tps) * per_task
    npan = (Cg_out + MR - 1) // MR
    rb = t % row_blocks
    p0, p1 = rb * npan // row_blocks, (rb + 1) * npan // row_blocks  # the task's row panels
    nq = min(nqs, q0 + per_task) - q0
    v0, v1 = q0 * nr, (q0 + nq) * nr  # the task's virtual columns
    prod = np.empty(((p1 - p0) * MR, nq * nr), xph.dtype)  # (its rows of C_out/g rounded up to MR, columns)
    yf = y.reshape(-1)
    group_planes = sample // G  # a group's input channels' planes
    for g in range(G):
        direct_panels(w_panels[g], Cg_out, xph, n * sample + g * group_planes + v0, offs, CKg, prod, nr, nq, p0, p1)
        r = v0 // Wq  # virtual row: od·Hq + oh
        while r * Wq < v1 and r // Hq < OD:
            od, oh = r // Hq, r % Hq
            a = max(0, v0 - r * Wq)
            b = min(OW, v1 - r * Wq)
            if oh < OH and a < b:
                src = r * Wq - v0
                for o in range(p0 * MR, min(Cg_out, p1 * MR)):
                    co = g * Cg_out + o
                    bc = bias[co]
                    base = (((n * C_out + co) * OD + od) * OH + oh) * OW
                    for ow in range(a, b):
                        yf[U(base + ow)] = activate_alpha(prod[o - p0 * MR, src + ow] + bc, activation, alpha)
            r += 1


def _conv_direct(x, w_panels, Cg_out, CKg, bias, y, strides, pads, q3, phases, cs, offs, nqs, per_task, row_blocks,
                 size, activation, alpha):  # fmt: skip
    # x: (N, C_in, D, H, W); w_panels: per group W_g (C_out/g, C_in/g·K) packed (``packed_a``); y: (N, C_out, OD,
    # OH, OW) = act(conv + bias). The GEMM W_g @ col_g with col never formed (``_direct_plan``):
    # 1. the input's phase planes xph (N, C_in, S, Dq, Hq, Wq), channels cs elements apart, q3 = (Dq, Hq, Wq):
    #    phase s = (pd, ph, pw) =
    #    phases[s] (S ≤ sD·sH·sW, those a tap reads), element (i, j, l) is x[n, c, i·sD + pd − pad, j·sH + ph −
    #    pad, l·sW + pw − pad], 0 outside x, and `size` elements in all, zeros past the last sample;
    # 2. output (od, oh, ow) as the virtual column v = (od·Hq + oh)·Wq + ow of its sample: col's row k at v is
    #    xph[n, g·C_in/g] + offs[k] + v, so a panel of nr columns reads nr contiguous elements per k
    #    (``direct_panels``); one task per run of per_task panels (nqs per sample, ``_direct_task``); the columns
    #    past an output row's end (ow ≥ OW) are computed and dropped on the way into y.
    # A sample that is one task splits its own planes in its task (one parallel region, not two).
    N, C = x.shape[0], x.shape[1]
    rows = C * phases.shape[0] * q3[0]  # a sample's (c, phase, i) rows of planes
    sample = C * cs
    xf = x.reshape(-1)
    xph = np.empty(size, x.dtype)
    for e in range(N * sample, size):
        xph[U(e)] = 0.0
    if per_task >= nqs and row_blocks == 1:
        for n0 in numba.prange(N):
            n = np.int64(n0)  # (prange's index is unsigned: the callees would be compiled for it apart)
            _split_planes(xf, xph, x.shape, q3, phases, strides, pads, cs, n * rows, (n + 1) * rows)
            _direct_task(xph, sample, w_panels, Cg_out, CKg, bias, y, q3, offs, nqs, per_task, row_blocks, n,
                         activation, alpha)  # fmt: skip
        return
    for r0 in numba.prange(N * C):
        r = np.int64(r0)
        _split_planes(xf, xph, x.shape, q3, phases, strides, pads, cs, r * rows // C, (r + 1) * rows // C)
    tps = (nqs + per_task - 1) // per_task
    for t0 in numba.prange(N * tps * row_blocks):
        t = np.int64(t0)
        _direct_task(xph, sample, w_panels, Cg_out, CKg, bias, y, q3, offs, nqs, per_task, row_blocks, t, activation,
                     alpha)  # fmt: skip


@numba.njit(**JIT)
def _col2im_planes(
    col,
    bias,
    y,
    d_count,
    d_taps,
    d_sources,
    h_count,
    h_taps,
    h_sources,
    w_lo,
    w_hi,
    w_phase,
    w_shift,
    sW,
    activation,
    alpha,
    r0,
    r1,
):
    # col: (C_out, kD, kH, kW, n, D, H, W), tap (kd, kh, kw)'s contribution from input position (d, h, w);
    # y: (n, C_out, D_out, H_out, W_out). A gather: each output row y[n, c, od, oh] sums the contributions that
    # land on it, found in the (D, H) tap tables and, along W, through each tap kw's input column range
    # [w_lo, w_hi), which lands on output columns (iw + w_shift)·sW + w_phase. The sums are built per phase in
    # `acc` (contiguous, so the adds vectorise) and interleaved into the row once, through the activation.
    # This function: the rows r = (n, c, od) in [r0, r1), every oh of each.
    N, C, OD, OH, OW = y.shape
    KD, KH, KW, ID, IH, IW = col.shape[1], col.shape[2], col.shape[3], col.shape[5], col.shape[6], col.shape[7]
    colf = col.reshape(-1)
    yf = y.reshape(-1)
    st_n = ID * IH * IW  # element strides of col's axes
    st_kw = N * st_n
    st_kh = KW * st_kw
    st_kd = KH * st_kh
    L = (OW + sW - 1) // sW  # output columns per phase, at most
    for r in range(r0, r1):
        od = r % OD
        c = (r // OD) % C
        n = r // (OD * C)
        acc = np.empty(sW * L, y.dtype)  # (sW, L): the row's sums, phase-major
        base = c * KD * st_kd + n * st_n
        for oh in range(OH):
            acc[:] = bias[c]
            for jd in range(d_count[od]):
                d_base = base + d_taps[od, jd] * st_kd + d_sources[od, jd] * IH * IW
                for jh in range(h_count[oh]):
                    h_base = d_base + h_taps[oh, jh] * st_kh + h_sources[oh, jh] * IW
                    for kw in range(KW):
                        src = h_base + kw * st_kw
                        dst = w_phase[kw] * L + w_shift[kw]
                        for iw in range(w_lo[kw], w_hi[kw]):
                            acc[U(dst + iw)] += colf[U(src + iw)]
            row = (r * OH + oh) * OW  # r = (n·C + c)·OD + od: y's flat offset of this row
            for phase in range(sW):
                for j in range((OW - phase + sW - 1) // sW):
                    yf[U(row + phase + j * sW)] = activate_alpha(acc[U(phase * L + j)], activation, alpha)


def _col2im(col, bias, y, d_count, d_taps, d_sources, h_count, h_taps, h_sources, w_lo, w_hi, w_phase, w_shift, sW,
            activation, alpha):  # fmt: skip
    # ``_col2im_planes`` over all of y's (n, c, od) rows, in bands run in parallel
    rows = y.shape[0] * y.shape[1] * y.shape[2]
    tasks = min(rows, 64)
    for t in numba.prange(tasks):
        i = np.int64(t)  # (prange's index is unsigned: _col2im_planes would be compiled for it apart)
        _col2im_planes(col, bias, y, d_count, d_taps, d_sources, h_count, h_taps, h_sources, w_lo, w_hi, w_phase,
                       w_shift, sW, activation, alpha, i * rows // tasks, (i + 1) * rows // tasks)  # fmt: skip


_IM2COL_SAMPLE = serial_and_parallel(_im2col_sample)
_CONV_TILES = serial_and_parallel(_conv_tiles)
_CONV_DIRECT = serial_and_parallel(_conv_direct)
_COL2IM = serial_and_parallel(_col2im)


def _conv_transpose_samples(x, wt_panels, CK, bias, y, in3, k3, tables, sW, activation, alpha):
    # x: (N, g, C_in/g, P_in); wt_panels: per group W_gᵀ (C_out/g·K, C_in/g) packed for the GEMM (``packed_a``);
    # y: (N, C_out, OD, OH, OW); in3 = (ID, IH, IW), k3 = (kD, kH, kW); tables: ``_col2im_tables``. One task
    # per sample: per group the GEMM W_gᵀ @ x_g (C_in/g, P_in) into the sample's col (C_out·K, P_in), then the
    # sample's col2im gather (``_col2im_planes``) into y.
    N, G, Cg_in, P_in = x.shape
    C_out = y.shape[1]
    nr = 2 * 64 // x.itemsize  # the GEMM's panel width (``nr_of``)
    nq = (P_in + nr - 1) // nr
    for n in numba.prange(N):
        col = np.empty((G, CK, P_in), x.dtype)  # (g, C_out/g·K, P_in)
        x_panels = np.empty(nq * nr * Cg_in, x.dtype)
        tile = np.empty(MR * nr, x.dtype)
        unused = np.zeros((1, 1), x.dtype)
        zero, no = np.int64(0), np.bool_(False)  # typed, not literals (see above the kernels)
        for g in range(G):
            pack_b_panels(x[n, g], x_panels, zero, nq, nr)
            gemm_panels(wt_panels[g], CK, x_panels, P_in, Cg_in, col[g], nr, zero, nq, zero, (CK + MR - 1) // MR,
                        tile, unused, no, alpha, zero, alpha)  # fmt: skip
        col8 = col.reshape(C_out, k3[0], k3[1], k3[2], 1, in3[0], in3[1], in3[2])  # (C_out, kD, kH, kW, 1, D, H, W)
        _col2im_planes(col8, bias, y[n : n + 1], *tables, sW, activation, alpha, 0, y.shape[1] * y.shape[2])


_CONV_TRANSPOSE_SAMPLES = serial_and_parallel(_conv_transpose_samples)

# The batch is cut into chunks so that col stays (mostly) in cache between the GEMM that writes it and the kernel
# that reads it, and its memory stays bounded. Smaller chunks mean more GEMM calls, each a barrier for their
# threads, which costs dearly when another process holds a core. A DCGAN layer (N=64, 128->64 channels,
# 16x16 -> 32x32) on 2 cores: 4 MiB chunks 34 ms idle / 380 ms beside a busy process; 16 MiB 38 / 150 ms;
# the whole batch 44 / 136 ms (onnxruntime 27-31 / 135 ms). 32 MiB keeps the DCGAN discriminator's second layer at
# batch 64 (20 MiB of col) in one chunk, so its im2col runs in parallel.
COL_CHUNK_BYTES = 1 << 25


def _chunks(N: int, bytes_per_sample: int) -> list[tuple[int, int]]:
    step = max(1, min(N, COL_CHUNK_BYTES // max(1, bytes_per_sample)))
    return [(n0, min(N, n0 + step)) for n0 in range(0, N, step)]


def _variant(kernels, chunks: int, work: int):
    """Serial kernels between the GEMMs of several chunks (measured when the GEMM was OpenBLAS's, whose spinning
    workers fought a parallel col2im for the cores: 64 alternations took 520 ms in parallel against 45 ms
    serial; kept, as the chunks' GEMMs are parallel themselves). One chunk: parallel when large enough."""
    return kernels[chunks == 1 and work >= PARALLEL_MIN_ELEMENTS]


def _bias_or_zeros(B, C_out: int, dtype):
    return np.zeros(C_out, dtype) if B is None else kernel_operand(B)


# --- the ops ----------------------------------------------------------------------------------------------


# Conv over a batch: tiles of about TILE_BYTES of col and prod together (a quarter of a core's L2; on the
# 2-core test machine the DeconvNet's 16-channel 48x48 layer at batch 64 took 6.5 ms with 256 KiB tiles, 8.3 ms
# with 64 KiB and 9.8 ms with 1 MiB, when the GEMM was OpenBLAS's), at least MIN_TILE_COLUMNS output positions
# each so that each GEMM is not too thin, and up to MIN_TASKS tiles over the batch so that a small batch still
# keeps several cores busy. The tiling changes no bit of the result (each output's sum is the GEMM's one order).
TILE_BYTES = 1 << 18
MIN_TILE_COLUMNS = 256
MIN_TASKS = 4


def conv_rows_per_tile(geom: ConvGeometry, itemsize: int) -> int:
    """Output rows ((n, od, oh) triples, N·OD·OH in all) per task of ``_conv_tiles``."""
    OD, OH, OW = geom.as_3d(geom.out_size, 1)
    rows = geom.N * OD * OH
    row_bytes = (geom.C_in * math.prod(geom.kernel) + geom.C_out) * OW * itemsize  # col's and prod's, per row
    per_tile = min(TILE_BYTES // max(1, row_bytes), -(-rows // MIN_TASKS))
    return max(1, min(rows, max(per_tile, -(-MIN_TILE_COLUMNS // OW))))


def is_full_window(geom: ConvGeometry) -> bool:
    """A Conv whose one window is the whole unpadded input (DCGAN's last discriminator layer, DeconvNet's fc6
    and fc7): a fully connected layer, whose im2col would copy the input as it is."""
    return (
        geom.group == 1
        and geom.kernel == geom.in_size
        and all(o == 1 for o in geom.out_size)
        and all(p == 0 for p in geom.pads_begin)
        and all(d == 1 for d in geom.dilations)
    )


def _full_window(x, W, B, y, activation: int, alpha: float) -> np.ndarray:
    # x: (N, C_in·K); W: (C_out, C_in, *K); y: (N, C_out) = act(x @ Wᵀ + bias), one GEMM with Wᵀ's panels
    # packed once per session weight, bias and activation in its epilogue
    N, C_out = y.shape
    bias = None if B is None else B.reshape(1, C_out)
    if N <= CHAIN_MAX_ROWS and C_out <= CHAIN_MAX_COLUMNS:  # a few outputs: their fma chains one by one, on W's rows
        bias2, has_bias = bias_operand(bias, y.dtype)
        gemm_chains(x, kernel_operand(W).reshape(C_out, -1), y, bias2, has_bias, y.dtype.type(1.0), activation,
                    y.dtype.type(alpha))  # fmt: skip
        return y
    panels = _weight_panels(W, "full_window", lambda W: packed_b(W.reshape(C_out, -1).T))  # Wᵀ (C_in·K, C_out)
    return gemm(y, x, b_packed=panels, bias=bias, activation=activation, alpha=alpha)


def _weight_panels(W: np.ndarray, kind: str, make) -> np.ndarray:
    """``make(W)``: a weight's GEMM panels, made once per session weight (on every call for a feed)."""
    panels = packed_weight(W, kind, make)
    return make(W) if panels is None else panels


def _group_panels(w_groups: np.ndarray) -> np.ndarray:
    """Per group g, the (rows, K) matrix w_groups[g] packed for the GEMM (``packed_a``): (g, packed size)."""
    return np.stack([packed_a(w) for w in w_groups]) if len(w_groups) else np.zeros((0, 0), w_groups.dtype)


@functools.lru_cache(maxsize=256)
def _conv_plan(geom: ConvGeometry, itemsize: int) -> tuple:
    """Per geometry and item size, once: (path, rows per tile, parallel kernels?, (kD, kH, kW) array, OH, OW, P)
    with path "full-window", "sample" (a sample large enough for several cores that makes one tile: its im2col,
    then the GEMM on Numba's threads) or "tiles". Every path sums each output in the same order (the GEMM's), so
    the choice, which depends on the batch, changes no bit of a sample's output."""
    OD, OH, OW = geom.as_3d(geom.out_size, 1)
    P = OD * OH * OW
    work = geom.N * geom.C_in * math.prod(geom.kernel) * P  # col's elements over the batch
    flops = 2 * geom.C_out * work // geom.group
    parallel = work >= PARALLEL_MIN_ELEMENTS or flops >= PARALLEL_FLOPS  # a small input, many channels
    # Too small for several cores: the whole batch is one tile, im2col, GEMM and epilogue in one kernel call
    # (LeNet's second layer at batch 1: 26 -> 19 us, most of it Python around three calls).
    rows = conv_rows_per_tile(geom, itemsize) if parallel else geom.N * OD * OH
    one_sample_tile = parallel and rows == geom.N * OD * OH == OD * OH
    path = "full-window" if is_full_window(geom) else "sample" if one_sample_tile else "tiles"
    kernel = np.array(geom.as_3d(geom.kernel, 1), np.int64)
    kernel.flags.writeable = False
    return path, rows, parallel, kernel, OH, OW, P


def _channel_stride(elements: int, itemsize: int) -> int:
    """Elements from one channel's planes to the next in a direct convolution's copy of its input: at least
    ``elements``, an odd number of 64-byte lines. The micro-kernel reads one row per input channel, a channel stride
    apart; a power-of-two stride (a 16x16 plane: 1 KiB) puts them all in a few of L1's sets, which evict each
    other (a 64-channel product ran at 72 GFLOP/s instead of ~200)."""
    lines = -(-elements * itemsize // 64)
    return (lines + 1 - lines % 2) * 64 // itemsize


def _takes_direct(geom: ConvGeometry, itemsize: int) -> bool:
    """Whether ``conv`` runs the direct convolution (the same bits as the im2col paths either way, so the choice,
    which depends on the batch, changes no output):
    - at least DIRECT_MIN_LANES of the columns it computes are outputs;
    - and its tasks reuse each weight enough: a task reads all of W's rows for its own columns, so weights larger
      than DIRECT_CACHED_WEIGHTS (which stay in a core's cache from one task to the next) must meet at least
      DIRECT_MIN_COLUMNS columns a task, unless im2col's tiles would have fewer still. (DCGAN-64's 512 -> 1024
      5x5 stride-2 layer, 52 MB of weights, 16 outputs a sample: at batch 64 216 ms direct, 157 ms im2col; at
      batch 1 3.1 ms direct, 4.2 ms im2col.)"""
    lanes, direct = _direct_plan(geom, itemsize)
    if lanes < DIRECT_MIN_LANES:
        return False
    weights = geom.C_out * geom.C_in // geom.group * math.prod(geom.kernel) * itemsize
    columns = direct.per_task * 2 * 64 // itemsize  # per task: panels · nr
    if weights <= DIRECT_CACHED_WEIGHTS or columns >= DIRECT_MIN_COLUMNS:
        return True
    path, rows = _conv_plan(geom, itemsize)[:2]
    return path != "tiles" or rows * geom.as_3d(geom.out_size, 1)[2] <= columns


DIRECT_CACHED_WEIGHTS = 1 << 20  # half of a core's L2 on the machines measured
DIRECT_MIN_COLUMNS = 128

# The direct path computes every column of a panel, those past an output row's end included: it is taken where
# at least DIRECT_MIN_LANES of the columns it computes are outputs (a 3x3 convolution of a 6-wide input: 36 of
# 64), else im2col packs only outputs into the panels.
DIRECT_MIN_LANES = 0.5


class DirectPlan(NamedTuple):
    """``_conv_direct``'s arguments from q3 to size, in its order (the plan is passed as ``*plan``)."""

    q3: np.ndarray  # (Dq, Hq, Wq): the phase planes' extent
    phases: np.ndarray  # (S, 3): the phases some tap reads
    cs: int  # channel stride of the planes (``_channel_stride``)
    offs: np.ndarray  # (C_in/g·K,): col's row k at virtual column v is the planes' element offs[k] + v
    nqs: int  # panels of columns per sample
    per_task: int  # panels per task
    row_blocks: int  # blocks of W's row panels per run of panels
    size: int  # elements of the planes, with the slack past the last sample


@functools.lru_cache(maxsize=256)
def _direct_plan(geom: ConvGeometry, itemsize: int) -> tuple[float, DirectPlan]:
    """(the share of the columns ``_conv_direct`` computes that are outputs, its ``DirectPlan``). Along each
    axis the phase planes hold Oq = O + ⌊(k−1)·d / s⌋ elements, the most that an output row's windows reach; tap
    k = (c, kd, kh, kw) reads phase (kd·dD mod sD, kh·dH mod sH, kw·dW mod sW) at the offset (⌊kd·dD/sD⌋,
    ⌊kh·dH/sH⌋, ⌊kw·dW/sW⌋)."""
    O3, K3 = geom.as_3d(geom.out_size, 1), geom.as_3d(geom.kernel, 1)
    S3, D3 = geom.as_3d(geom.strides, 1), geom.as_3d(geom.dilations, 1)
    Dq, Hq, Wq = (o + (k - 1) * d // s for o, k, d, s in zip(O3, K3, D3, S3))
    (OD, OH, OW), (KD, KH, KW), (sD, sH, sW), (dD, dH, dW) = O3, K3, S3, D3
    nr = 2 * 64 // itemsize
    columns = ((OD - 1) * Hq + OH - 1) * Wq + OW  # a sample's virtual columns, up to its last output
    nqs = -(-columns // nr)
    Pq = Dq * Hq * Wq
    c, kd, kh, kw = np.meshgrid(*(np.arange(n, dtype=np.int64) for n in (geom.C_in // geom.group, KD, KH, KW)),
                                indexing="ij")  # fmt: skip
    phase = ((kd * dD % sD) * sH + kh * dH % sH) * sW + kw * dW % sW
    used, phase = np.unique(phase, return_inverse=True)  # only the phases some tap reads (1x1, stride 2: one)
    S = len(used)
    phases = np.stack([used // (sH * sW), used // sW % sH, used % sW], axis=1).astype(np.int64)  # (S, 3)
    phases.flags.writeable = False
    cs = _channel_stride(S * Pq, itemsize)
    offs = c * cs + phase.reshape(c.shape) * Pq + (kd * dD // sD) * Hq * Wq + (kh * dH // sH) * Wq + kw * dW // sW
    offs = np.ascontiguousarray(offs.reshape(-1))  # (C_in/g·K,) in col's row order (c, kd, kh, kw)
    offs.flags.writeable = False
    npan = -(-(geom.C_out // geom.group) // MR)
    prod_bytes = geom.group * npan * MR * nr * itemsize  # one panel's share of a task's products
    per_task = max(1, min(nqs, TILE_BYTES // prod_bytes, -(-geom.N * nqs // MIN_TASKS)))
    # Fewer runs of columns than MIN_TASKS (a batch-1 layer of a small map: one run): W's rows split too
    row_blocks = max(1, min(npan, -(-MIN_TASKS // (geom.N * -(-nqs // per_task)))))
    q3 = np.array((Dq, Hq, Wq), np.int64)
    q3.flags.writeable = False
    plan = DirectPlan(q3, phases, cs, offs, nqs, per_task, row_blocks, geom.N * geom.C_in * cs + nqs * nr)
    return OD * OH * OW / (nqs * nr), plan


def conv_launcher(W, B, geom: ConvGeometry, activation: int, alpha: float):
    """``lambda X: conv(X, W, B, geom, activation, alpha)`` for a node's constant W and B and one input shape,
    with everything that does not depend on X's values resolved now (paths, panels, bias, kernel arguments): a
    batch-1 LeNet convolution spends ~10 us in ``conv``'s Python around an 8 us kernel call. The direct path
    only; the other paths go through ``conv``."""
    path, _, parallel, _, _, _, _ = _conv_plan(geom, W.itemsize)
    if path == "full-window" or math.prod(geom.y5_shape) == 0:
        return lambda X: conv(X, W, B, geom, activation, alpha)
    g, C_out = geom.group, geom.C_out
    Cg_out, CKg = C_out // g, W[0].size
    # made here once, also for a W that is no session weight (ConvTranspose's flipped one)
    panels = _weight_panels(W, "conv", lambda W: _group_panels(W.reshape(g, Cg_out, CKg)))
    if not _takes_direct(geom, W.itemsize):
        return lambda X: conv(X, W, B, geom, activation, alpha, panels)
    direct = _direct_plan(geom, W.itemsize)[1]
    bias = _bias_or_zeros(None if B is None else kernel_operand(B), C_out, W.dtype)
    strides, _, pads = geom.kernel_arguments_cached
    kernel, dtype, x5_shape, y5_shape, y_shape = (
        _CONV_DIRECT[parallel],
        W.dtype,
        geom.x5_shape,
        geom.y5_shape,
        geom.y_shape,
    )
    alpha = dtype.type(alpha)

    def launch(X):
        y = np.empty(y5_shape, dtype)  # (N, C_out, OD, OH, OW)
        kernel(kernel_operand(X).reshape(x5_shape), panels, Cg_out, CKg, bias, y, strides, pads, *direct, activation,
               alpha)  # fmt: skip
        return y.reshape(y_shape)

    return launch


def conv(X, W, B, geom: ConvGeometry, activation: int = 0, alpha: float = LEAKY_RELU_ALPHA,
         panels: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The three paths of the module docstring, chosen once per geometry (``_conv_plan``). ``panels``: W's
    per-group GEMM panels (``_group_panels``) when the caller has them."""
    N, C_out, g = geom.N, geom.C_out, geom.group
    path, rows, parallel, kernel, OH, OW, P = _conv_plan(geom, X.itemsize)
    X, B = kernel_operand(X), None if B is None else kernel_operand(B)  # writable (see kernel_operand)
    x5 = X.reshape(geom.x5_shape)  # (N, C_in, D, H, W)
    y = np.empty(geom.y5_shape, X.dtype)  # (N, C_out, OD, OH, OW)
    if y.size == 0:
        return y.reshape(geom.y_shape)
    if path == "full-window":
        return _full_window(x5.reshape(N, -1), W, B, y.reshape(N, C_out), activation, alpha).reshape(geom.y_shape)
    Cg_out, CKg = C_out // g, W[0].size if len(W) else 0
    if panels is None:  # (g, packed W_g (C_out/g, C_in/g·K))
        panels = _weight_panels(W, "conv", lambda W: _group_panels(W.reshape(g, Cg_out, CKg)))
    strides, dilations, pads = geom.kernel_arguments_cached
    alpha = X.dtype.type(alpha)
    if _takes_direct(geom, X.itemsize):
        direct = _direct_plan(geom, X.itemsize)[1]
        bias = _bias_or_zeros(B, C_out, X.dtype)
        _CONV_DIRECT[parallel](x5, panels, Cg_out, CKg, bias, y, strides, pads, *direct, activation, alpha)
        return y.reshape(geom.y_shape)
    if path == "sample":
        col = np.empty((g, CKg, P), X.dtype)  # (g, C_in/g·K, P)
        _IM2COL_SAMPLE[parallel](x5, col.reshape(-1, P), strides, dilations, pads, kernel, OH, OW)
        y3 = y.reshape(g, Cg_out, P)  # (g, C_out/g, P): the sample's NCHW output
        for i in range(g):
            bias = None if B is None else B[i * Cg_out : (i + 1) * Cg_out].reshape(Cg_out, 1)
            gemm(y3[i], b=col[i], a_packed=panels[i], K=CKg, bias=bias, activation=activation, alpha=alpha)
        return y.reshape(geom.y_shape)
    bias = _bias_or_zeros(B, C_out, X.dtype)
    _CONV_TILES[parallel](x5, panels, Cg_out, CKg, bias, y, strides, dilations, pads, kernel, rows, activation, alpha)
    return y.reshape(geom.y_shape)  # (N, C_out, *out_size)


@functools.lru_cache(maxsize=256)
def _col2im_tables(geom: ConvGeometry):
    """The gather's index tables: (count, taps, sources) along D and along H, and per W tap its input column
    range, phase and shift (see ``_col2im``)."""
    (ID, IH, IW), (KD, KH, KW) = geom.as_3d(geom.in_size, 1), geom.as_3d(geom.kernel, 1)
    (OD, OH, OW), (sD, sH, sW) = geom.as_3d(geom.out_size, 1), geom.as_3d(geom.strides, 1)
    (dD, dH, dW), (pD, pH, pW) = geom.as_3d(geom.dilations, 1), geom.as_3d(geom.pads_begin, 0)
    offsets = np.arange(KW, dtype=np.int64) * dW - pW  # (kW,): output column of input column iw is iw·sW + offset
    w_lo = np.maximum(0, -(offsets // sW))  # (kW,) first iw with a column >= 0
    w_hi = np.minimum(IW, (OW - 1 - offsets) // sW + 1)  # (kW,) past the last iw with a column < OW
    return (
        *_tap_table(OD, ID, KD, sD, dD, pD),
        *_tap_table(OH, IH, KH, sH, dH, pH),
        w_lo,
        w_hi,
        offsets % sW,  # (kW,) phase
        offsets // sW,  # (kW,) shift
    )


# ConvTranspose runs a batch one sample per task when a sample's GEMM has at least this many columns (input
# positions); below, one GEMM over a chunk of samples keeps the GEMM's panels full (DCGAN-64's 4x4 -> 8x8 layer
# at batch 64, measured with OpenBLAS: 45 ms per sample against 36 ms chunked, onnxruntime 25 ms).
MIN_SAMPLE_COLUMNS = 32


def _is_projection(geom: ConvGeometry) -> bool:
    """A ConvTranspose of a 1x1 input whose output is exactly the kernel (DCGAN's projection of z): each input
    channel's weights are its contribution to the output, so col2im is the identity and X @ W is the output."""
    return (
        geom.group == 1
        and all(i == 1 for i in geom.in_size)
        and geom.out_size == geom.kernel
        and all(p == 0 for p in geom.pads_begin)
        and all(d == 1 for d in geom.dilations)
    )


def _project(x, W, B, y, activation: int, alpha: float) -> np.ndarray:
    # x: (N, C_in); W: (C_in, C_out, *K); y: (N, C_out, *K) = act(x @ W (C_in, C_out·K) + bias per channel), one
    # GEMM with W's panels packed once per session weight, bias (repeated over each channel's K outputs) and
    # activation in its epilogue
    N, C_out = y.shape[0], y.shape[1]
    y2 = y.reshape(N, -1)  # (N, C_out·K)
    panels = _weight_panels(W, "project", lambda W: packed_b(W.reshape(W.shape[0], -1)))
    bias = None if B is None else np.repeat(B, y2.shape[1] // max(1, C_out)).reshape(1, -1)  # (1, C_out·K)
    gemm(y2, x, b_packed=panels, bias=bias, activation=activation, alpha=alpha)
    return y


@functools.lru_cache(maxsize=256)
def _transpose_as_conv(geom: ConvGeometry) -> ConvGeometry | None:
    """The Conv that computes a ConvTranspose of unit strides, or None. With stride 1 the transposed convolution
    y[o] = Σ_k x[o + pad − k·d] w[k] is a convolution over the flipped window: tap t = K−1−k reads
    x[o − ((K−1)·d − pad) + t·d], so the Conv's begin pad is (K−1)·d − pad (required ≥ 0; a larger pad crops,
    and stays on the GEMM + col2im path), its weights ``flipped_transposed``, its output the same. On the
    DeconvNet decoder's 3x3 layers at batch 1: 2x faster than GEMM + col2im; a batch whose samples each run their
    own GEMM and col2im on a core (``_conv_transpose_samples``) runs as fast that way as this one, and stays."""
    if any(s != 1 for s in geom.strides) or geom.C_in == 0:  # no input channel: the bias alone, on the other path
        return None
    begin = tuple((k - 1) * d - p for k, d, p in zip(geom.kernel, geom.dilations, geom.pads_begin))
    if any(b < 0 for b in begin):
        return None
    return ConvGeometry(geom.N, geom.C_in, geom.C_out, geom.group, geom.in_size, geom.kernel, geom.strides,
                        geom.dilations, begin, geom.out_size)  # fmt: skip


def flipped_transposed(W: np.ndarray, group: int) -> np.ndarray:
    """ConvTranspose's weights (C_in, C_out/g, *kernel) as the Conv weights (C_out, C_in/g, *kernel) of
    ``_transpose_as_conv``: input and output channels swapped within each group, the window flipped on every
    axis (reversing the flattened tap index flips them all at once). Also the CUDA loader's (runtime/fusion.py)."""
    C_in, C_out_g, kernel = W.shape[0], W.shape[1], W.shape[2:]
    w = W.reshape(group, C_in // group, C_out_g, math.prod(kernel))  # (g, C_in/g, C_out/g, K)
    w = w[..., ::-1].transpose(0, 2, 1, 3)  # (g, C_out/g, C_in/g, K), taps reversed
    return np.ascontiguousarray(w).reshape(group * C_out_g, C_in // group, *kernel)


def conv_transpose(X, W, B, geom: ConvGeometry, activation: int = 0, alpha: float = LEAKY_RELU_ALPHA) -> np.ndarray:
    N, C_in, C_out, g = geom.N, geom.C_in, geom.C_out, geom.group
    X = kernel_operand(X)  # a read-only feed copied (see kernel_operand)
    x5 = X.reshape(geom.x5_shape)  # (N, C_in, D, H, W)
    w5 = W.reshape(geom.w5_shape(W.shape))  # (C_in, C_out/g, kD, kH, kW)
    _, _, KD, KH, KW = w5.shape
    _, _, ID, IH, IW = x5.shape
    P_in = ID * IH * IW
    y = np.empty(geom.y5_shape, X.dtype)  # (N, C_out, D_out, H_out, W_out)
    if y.size == 0:
        return y.reshape(geom.y_shape)
    CK = C_out // g * KD * KH * KW
    if _is_projection(geom):
        return _project(x5.reshape(N, C_in), W, B, y, activation, alpha).reshape(geom.y_shape)
    # Unit strides: a Conv, whose im2col tiles run faster than a GEMM + col2im. Chosen by the geometry alone,
    # never by the batch: the two paths sum in different orders, and a sample must give the same bits at any N.
    as_conv = _transpose_as_conv(geom)
    if as_conv is not None:
        w_conv = packed(W, f"as_conv/{g}", lambda W: flipped_transposed(W, g))  # (C_out, C_in/g, *kernel)
        panels = _weight_panels(  # (g, packed flipped W_g (C_out/g, C_in/g·K)), kept with the session's W
            W, f"as_conv_panels/{g}", lambda W: _group_panels(w_conv.reshape(g, C_out // g, -1))
        )
        return conv(X, w_conv, B, as_conv, activation, alpha, panels)
    # (g, packed W_gᵀ (C_out/g·K, C_in/g))
    wt_panels = _weight_panels(
        W, "conv_transpose", lambda W: _group_panels(W.reshape(g, C_in // g, CK).transpose(0, 2, 1))
    )
    bias = _bias_or_zeros(B, C_out, X.dtype)
    tables = _col2im_tables(geom)
    sW = geom.as_3d(geom.strides, 1)[2]
    if N > 1 and P_in >= MIN_SAMPLE_COLUMNS:  # the samples side by side on the cores, each its GEMM and col2im
        x4 = x5.reshape(N, g, C_in // g, P_in)  # (N, g, C_in/g, P_in)
        in3, k3 = np.array((ID, IH, IW), np.int64), np.array((KD, KH, KW), np.int64)
        _CONV_TRANSPOSE_SAMPLES[N * C_out * P_in >= PARALLEL_MIN_ELEMENTS](
            x4, wt_panels, CK, bias, y, in3, k3, tables, sW, activation, X.dtype.type(alpha)
        )
        return y.reshape(geom.y_shape)  # (N, C_out, *out_size)
    chunks = _chunks(N, CK * g * P_in * X.itemsize)
    col = np.empty(g * CK * (chunks[0][1] - chunks[0][0]) * P_in, X.dtype)  # one buffer, reused by every chunk
    for n0, n1 in chunks:
        nb = n1 - n0
        # The chunk's samples side by side in the GEMM's columns (a copy, except for one sample)
        x_cols = x5[n0:n1].reshape(nb, C_in, P_in).transpose(1, 0, 2).reshape(g, C_in // g, nb * P_in)
        col_chunk = col[: g * CK * nb * P_in].reshape(g, CK, nb * P_in)  # (g, C_out/g·K, nb·P_in)
        for i in range(g):
            gemm(col_chunk[i], b=x_cols[i], a_packed=wt_panels[i], K=C_in // g)
        col8 = col_chunk.reshape(C_out, KD, KH, KW, nb, ID, IH, IW)  # (C_out, kD, kH, kW, nb, D, H, W)
        _variant(_COL2IM, len(chunks), nb * C_out * P_in)(
            col8, bias, y[n0:n1], *tables, sW, activation, X.dtype.type(alpha)
        )
    return y.reshape(geom.y_shape)  # (N, C_out, *out_size)


def conv_transpose_launcher(W, B, geom: ConvGeometry, activation: int, alpha: float):
    """``conv_launcher``'s counterpart: a unit-stride ConvTranspose (but the projection of a 1x1 input, one GEMM)
    through the launcher of its Conv over the flipped window, as ``conv_transpose`` dispatches it; any other
    through ``conv_transpose``."""
    as_conv = None if _is_projection(geom) else _transpose_as_conv(geom)
    if as_conv is None:
        return lambda X: conv_transpose(X, W, B, geom, activation, alpha)
    w_conv = packed(W, f"as_conv/{geom.group}", lambda W: flipped_transposed(W, geom.group))
    return conv_launcher(w_conv, B, as_conv, activation, alpha)


def run_conv(X, W, B, attrs: dict, activation: str = "", activation_alpha: float = LEAKY_RELU_ALPHA):
    _check_inputs("Conv", X, W, B)
    geom = cached_conv_geometry("Conv", X.shape, W.shape, None if B is None else B.shape, **attrs)
    return conv(np.ascontiguousarray(X), np.ascontiguousarray(W), B, geom, ACTIVATIONS[activation], activation_alpha)


def run_conv_transpose(X, W, B, attrs: dict, activation: str = "", activation_alpha: float = LEAKY_RELU_ALPHA):
    _check_inputs("ConvTranspose", X, W, B)
    geom = cached_conv_geometry("ConvTranspose", X.shape, W.shape, None if B is None else B.shape, **attrs)
    return conv_transpose(
        np.ascontiguousarray(X), np.ascontiguousarray(W), B, geom, ACTIVATIONS[activation], activation_alpha
    )


# One attribute spec per op (ONNX's names and defaults), shared by the CPU functions below, their CUDA variants
# (``conv_cuda.py``) and the fused forms. The functions take ``**attrs``; ``conv_signature`` writes the spec into
# their signatures, which the op registry reads (``OpDef``: the attributes a node may have, their types).
CONV_ATTRIBUTES = {"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None, "pads": None,
                   "strides": None}  # fmt: skip
CONV_TRANSPOSE_ATTRIBUTES = {**CONV_ATTRIBUTES, "output_padding": None, "output_shape": None}
# Conv or ConvTranspose followed by an activation, fused at load (``runtime/fusion.py``); the names and attributes
# of onnxruntime's contrib op FusedConv. The activation runs in the epilogue that adds the bias.
FUSED_ATTRIBUTES = {"activation": "", "activation_alpha": LEAKY_RELU_ALPHA}
CONV_SPECS = {
    "Conv": CONV_ATTRIBUTES,
    "ConvTranspose": CONV_TRANSPOSE_ATTRIBUTES,
    "FusedConv": {**CONV_ATTRIBUTES, **FUSED_ATTRIBUTES},
    "FusedConvTranspose": {**CONV_TRANSPOSE_ATTRIBUTES, **FUSED_ATTRIBUTES},
}

CONV_DTYPES = dict.fromkeys(("X", "W", "B"), FLOATS)  # the kernels: float32 and float64 (DTYPES)


def conv_signature(fn):
    """``fn(X, W, B=None, **attrs)`` with its op's attributes (``CONV_SPECS[fn.__name__]``) as keyword-only
    parameters in its signature."""
    P = inspect.Parameter
    inputs = [
        P("X", P.POSITIONAL_OR_KEYWORD),
        P("W", P.POSITIONAL_OR_KEYWORD),
        P("B", P.POSITIONAL_OR_KEYWORD, default=None),
    ]
    spec = CONV_SPECS[fn.__name__]
    fn.__signature__ = inspect.Signature(inputs + [P(k, P.KEYWORD_ONLY, default=v) for k, v in spec.items()])
    return fn


@onnx_op(dtypes=CONV_DTYPES)
@conv_signature
def Conv(X, W, B=None, **attrs):
    return run_conv(X, W, B, attrs)


@onnx_op(dtypes=CONV_DTYPES)
@conv_signature
def ConvTranspose(X, W, B=None, **attrs):
    return run_conv_transpose(X, W, B, attrs)


@onnx_op(domain=FUSED_DOMAIN, dtypes=CONV_DTYPES)
@conv_signature
def FusedConv(X, W, B=None, *, activation="", activation_alpha=LEAKY_RELU_ALPHA, **attrs):
    return run_conv(X, W, B, attrs, activation, activation_alpha)


@onnx_op(domain=FUSED_DOMAIN, dtypes=CONV_DTYPES)
@conv_signature
def FusedConvTranspose(X, W, B=None, *, activation="", activation_alpha=LEAKY_RELU_ALPHA, **attrs):
    return run_conv_transpose(X, W, B, attrs, activation, activation_alpha)


# --- per-node preparation at load: attribute values checked, weights packed, geometry kept per input shape ----

MAX_KEPT_SHAPES = 64  # input shapes whose geometry a prepared node keeps (a model fed ever-new shapes stays bounded)


def check_attribute_values(op_type: str, rank: int | None, auto_pad="NOTSET", dilations=None, group=1,
                           kernel_shape=None, pads=None, strides=None, output_padding=None,
                           output_shape=None) -> None:  # fmt: skip
    """The checks of ``conv_geometry`` that need no input shape, made at load: a bad auto_pad, group, stride,
    dilation, pad or output_padding is refused before anything runs. ``rank``: the spatial rank, from a constant
    weight (None: the lengths are checked at the first run)."""
    if auto_pad not in AUTO_PADS:
        raise InvalidModel(f"{op_type}: auto_pad='{auto_pad}'; expected one of {', '.join(AUTO_PADS)}")
    if int(group) < 1:
        raise InvalidModel(f"{op_type}: group={group} must be >= 1")
    for name, value, per_rank, minimum in (("strides", strides, 1, 1), ("dilations", dilations, 1, 1),
                                           ("pads", pads, 2, 0), ("output_padding", output_padding, 1, 0),
                                           ("kernel_shape", kernel_shape, 1, 1)):  # fmt: skip
        if value is None or len(value) == 0:
            continue
        length = len(value) if rank is None else per_rank * rank
        _per_axis(op_type, name, value, 0, length, minimum)


def _prepare(op_type: str, launcher, constants, attrs: dict, activation: str, activation_alpha: float):
    X_c, W, B = constants[:3]
    check_attribute_values(op_type, W.ndim - 2 if isinstance(W, np.ndarray) else None, **attrs)
    if X_c is not None or not isinstance(W, np.ndarray) or W.dtype.type not in DTYPES or B is None:
        return None
    if B is not ABSENT and (not isinstance(B, np.ndarray) or B.dtype != W.dtype):
        return None
    bias = None if B is ABSENT else B
    code = ACTIVATIONS[activation]
    launchers: dict[tuple, object] = {}  # input shape -> X -> the output

    def run(X, W_=None, B_=None):
        launch = launchers.get(X.shape)
        if launch is None or X.dtype != W.dtype:
            _check_inputs(op_type, X, W, bias)
            geom = conv_geometry(op_type, X.shape, W.shape, None if bias is None else bias.shape, **attrs)
            launch = launcher(W, bias, geom, code, activation_alpha)
            if len(launchers) >= MAX_KEPT_SHAPES:
                launchers.clear()
            launchers[X.shape] = launch
        return launch(X if X.flags.c_contiguous else np.ascontiguousarray(X))

    return run


@Conv.prepare
def _prepare_conv(constants, **attrs):
    return _prepare("Conv", conv_launcher, constants, attrs, "", LEAKY_RELU_ALPHA)


@ConvTranspose.prepare
def _prepare_conv_transpose(constants, **attrs):
    return _prepare("ConvTranspose", conv_transpose_launcher, constants, attrs, "", LEAKY_RELU_ALPHA)


@FusedConv.prepare
def _prepare_fused_conv(constants, activation="", activation_alpha=LEAKY_RELU_ALPHA, **attrs):
    return _prepare("Conv", conv_launcher, constants, attrs, activation, activation_alpha)


@FusedConvTranspose.prepare
def _prepare_fused_conv_transpose(constants, activation="", activation_alpha=LEAKY_RELU_ALPHA, **attrs):
    return _prepare("ConvTranspose", conv_transpose_launcher, constants, attrs, activation, activation_alpha)
