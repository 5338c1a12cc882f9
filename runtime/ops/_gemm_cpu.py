"""The CPU backend's one matrix product: packed panels and a register-tiled micro-kernel (the BLIS / MLAS
scheme: Van Zee & van de Geijn, "BLIS: A Framework for Rapidly Instantiating BLAS Functionality", 2015, §3),
written here so that its rounding is the runtime's own and not the BLAS build's.

The contract: every output element is ``c[i, j] = fma(a[i, K−1], b[K−1, j], … fma(a[i, 0], b[0, j], 0))``, one
fused multiply-add per k in the order k = 0, 1, …, K−1, whatever the shapes, the tile the element falls in, the
batch it belongs to, the thread count or the machine's BLAS. Two outputs whose rows of ``a`` and columns of ``b``
are equal are therefore bit-identical (a constant image convolves to a constant; a sample alone equals its row
in a batch), which keeps MaxPool's ties exact and MaxUnpool's switches where torch and onnxruntime put them.

Layout. ``a`` (M, K) is packed into panels of MR rows, each (K, h) with h the panel's height (MR, or 4, 2, 1 for
the last rows); ``b`` (K, N) into panels of NR columns, each (K, NR), zero-padded. The micro-kernel keeps an
h × NR block of ``c`` in vector registers (8 × 32 float32: 16 zmm accumulators; 8 × 16 float64) over the whole
of K — no K blocking, so nothing is rounded to memory between partial sums, and a K-long panel of ``b`` streams
from L2. It is an LLVM intrinsic (``_microkernel``): vector loads of the ``b`` row, a broadcast of each ``a``
element, ``llvm.fma`` on <16 x float> (or <8 x double>) accumulators kept in SSA registers. No fast-math flag is
involved: NaN and inf propagate exactly as IEEE fma gives them.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.ops._cpu_kernels import (
    JIT,
    LEAKY_RELU_ALPHA,
    activate_alpha,
    bias_operand,
    kernel_operand,
    serial_and_parallel,
)

MR = 8  # rows of a panel of a (the micro-kernel's height); the last panel may be 4, 2 or 1 high
VECTORS = 2  # vectors per row of the micro-kernel: NR = VECTORS · (64 bytes / itemsize)
VECTOR_BYTES = 64
HEIGHTS = (8, 4, 2, 1)


def nr_of(dtype) -> int:
    """Columns of a panel of b for ``dtype``: 32 for float32, 16 for float64."""
    return VECTORS * VECTOR_BYTES // np.dtype(dtype).itemsize


def _make_microkernel(height: int, panels: int, indirect: bool = False):
    """The micro-kernel for ``height`` rows and ``panels`` consecutive panels of b (panel u at b_off + u·bs):
    c[c_off + i·ldc + u·NR + j] = Σ_k a[a_off + k·height + i]·b[b_off + u·bs + k·NR + j] for i < height,
    j < NR, fused multiply-adds in order k = 0…K−1 from 0. Short panels take several panels of b at once, so that
    there are always 16 independent accumulators (two FMA pipes times four cycles of latency, twice over).
    ``indirect``: row k of b is not at k·NR but at ``offs[k]`` (an int64 array, an extra argument after bs): b is
    then any array whose rows are NR contiguous elements somewhere, such as the input of a direct convolution
    (``direct_panels``)."""

    def codegen(context, builder, signature, args):
        dtype = signature.args[0].dtype
        if indirect:
            a_v, a_off_v, b_v, b_off_v, bs_v, offs_v, K_v, c_v, c_off_v, ldc_v = args
            offs_ptr = context.make_array(signature.args[5])(context, builder, offs_v).data
        else:
            a_v, a_off_v, b_v, b_off_v, bs_v, K_v, c_v, c_off_v, ldc_v = args
        c_arg = signature.args[7 if indirect else 6]
        i64 = ir.IntType(64)
        width = VECTOR_BYTES // (dtype.bitwidth // 8)
        nr = VECTORS * width
        fty = context.get_value_type(dtype)
        vty = ir.VectorType(fty, width)
        A = builder.gep(context.make_array(signature.args[0])(context, builder, a_v).data, [a_off_v])
        B = builder.gep(context.make_array(signature.args[2])(context, builder, b_v).data, [b_off_v])
        C = builder.gep(context.make_array(c_arg)(context, builder, c_v).data, [c_off_v])
        n_vec = VECTORS * panels  # vectors per row of the block
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fma.v{width}f{dtype.bitwidth}"
        )
        zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * width)
        # accumulators as allocas in the entry block: LLVM's mem2reg turns them into registers
        acc = [[cgutils.alloca_once(builder, vty) for _ in range(n_vec)] for _ in range(height)]
        for row in acc:
            for slot in row:
                builder.store(zero, slot)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
        undef = ir.Constant(vty, ir.Undefined)
        with cgutils.for_range(builder, K_v) as loop:
            k = loop.index
            if indirect:
                b_row = builder.gep(B, [builder.load(builder.gep(offs_ptr, [k]))])
            else:
                b_row = builder.gep(B, [builder.mul(k, ir.Constant(i64, nr))])
            b_vecs = []
            for u in range(panels):
                b_panel = builder.gep(b_row, [builder.mul(bs_v, ir.Constant(i64, u))])
                for v in range(VECTORS):
                    p = builder.bitcast(builder.gep(b_panel, [ir.Constant(i64, v * width)]), vty.as_pointer())
                    b_vecs.append(builder.load(p, align=dtype.bitwidth // 8))
            a_col = builder.gep(A, [builder.mul(k, ir.Constant(i64, height))])
            for i in range(height):
                x = builder.load(builder.gep(a_col, [ir.Constant(i64, i)]))
                x = builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0)),
                                           undef, splat_mask)  # fmt: skip
                for v in range(n_vec):
                    builder.store(builder.call(fma, [x, b_vecs[v], builder.load(acc[i][v])]), acc[i][v])
        for i in range(height):
            c_row = builder.gep(C, [builder.mul(ldc_v, ir.Constant(i64, i))])
            for v in range(n_vec):
                p = builder.bitcast(builder.gep(c_row, [ir.Constant(i64, v * width)]), vty.as_pointer())
                builder.store(builder.load(acc[i][v]), p, align=dtype.bitwidth // 8)
        return context.get_dummy_value()

    def typing(a, b, c, offs=None):
        offs_t = (offs,) if indirect else ()
        return types.void(a, types.intp, b, types.intp, types.intp, *offs_t, types.intp, c, types.intp, types.intp)

    if indirect:

        @intrinsic
        def microkernel(typingctx, a, a_off, b, b_off, bs, offs, K, c, c_off, ldc):
            return typing(a, b, c, offs), codegen

    else:

        @intrinsic
        def microkernel(typingctx, a, a_off, b, b_off, bs, K, c, c_off, ldc):
            return typing(a, b, c), codegen

    return microkernel


# (height, panels): 16 accumulators each, but for the 8-high one (MR x NR, 16 too)
_mk8 = _make_microkernel(8, 1)
_mk4x2, _mk4 = _make_microkernel(4, 2), _make_microkernel(4, 1)
_mk2x4, _mk2x2, _mk2 = _make_microkernel(2, 4), _make_microkernel(2, 2), _make_microkernel(2, 1)
_mk1x8, _mk1x4, _mk1x2, _mk1 = (_make_microkernel(1, u) for u in (8, 4, 2, 1))
GROUP = 8  # panels of b a row panel of a meets in one pass (the most the 1-high micro-kernel takes)


# the same micro-kernels reading b's rows through a table of offsets (``direct_panels``)
_ik8 = _make_microkernel(8, 1, True)
_ik4x2, _ik4 = _make_microkernel(4, 2, True), _make_microkernel(4, 1, True)
_ik2x4, _ik2x2, _ik2 = _make_microkernel(2, 4, True), _make_microkernel(2, 2, True), _make_microkernel(2, 1, True)
_ik1x8, _ik1x4, _ik1x2, _ik1 = (_make_microkernel(1, u, True) for u in (8, 4, 2, 1))


@numba.njit(inline="always")
def _panels_for(h, available):
    """How many panels of b the micro-kernel of height h takes at once, with ``available`` full panels left."""
    u = 8 // h
    while u > 1 and u > available:
        u //= 2
    return u


@numba.njit(inline="always")
def _microkernel(h, u, a, a_off, b, b_off, bs, K, c, c_off, ldc):
    if h == 8:
        _mk8(a, a_off, b, b_off, bs, K, c, c_off, ldc)
    elif h == 4:
        if u == 2:
            _mk4x2(a, a_off, b, b_off, bs, K, c, c_off, ldc)
        else:
            _mk4(a, a_off, b, b_off, bs, K, c, c_off, ldc)
    elif h == 2:
        if u == 4:
            _mk2x4(a, a_off, b, b_off, bs, K, c, c_off, ldc)
        elif u == 2:
            _mk2x2(a, a_off, b, b_off, bs, K, c, c_off, ldc)
        else:
            _mk2(a, a_off, b, b_off, bs, K, c, c_off, ldc)
    elif u == 8:
        _mk1x8(a, a_off, b, b_off, bs, K, c, c_off, ldc)
    elif u == 4:
        _mk1x4(a, a_off, b, b_off, bs, K, c, c_off, ldc)
    elif u == 2:
        _mk1x2(a, a_off, b, b_off, bs, K, c, c_off, ldc)
    else:
        _mk1(a, a_off, b, b_off, bs, K, c, c_off, ldc)


@numba.njit(inline="always")
def _microkernel_indirect(h, u, a, a_off, b, b_off, bs, offs, K, c, c_off, ldc):
    if h == 8:
        _ik8(a, a_off, b, b_off, bs, offs, K, c, c_off, ldc)
    elif h == 4:
        if u == 2:
            _ik4x2(a, a_off, b, b_off, bs, offs, K, c, c_off, ldc)
        else:
            _ik4(a, a_off, b, b_off, bs, offs, K, c, c_off, ldc)
    elif h == 2:
        if u == 4:
            _ik2x4(a, a_off, b, b_off, bs, offs, K, c, c_off, ldc)
        elif u == 2:
            _ik2x2(a, a_off, b, b_off, bs, offs, K, c, c_off, ldc)
        else:
            _ik2(a, a_off, b, b_off, bs, offs, K, c, c_off, ldc)
    elif u == 8:
        _ik1x8(a, a_off, b, b_off, bs, offs, K, c, c_off, ldc)
    elif u == 4:
        _ik1x4(a, a_off, b, b_off, bs, offs, K, c, c_off, ldc)
    elif u == 2:
        _ik1x2(a, a_off, b, b_off, bs, offs, K, c, c_off, ldc)
    else:
        _ik1(a, a_off, b, b_off, bs, offs, K, c, c_off, ldc)


@intrinsic
def at(typingctx, arr, offset):
    """``arr``'s element at ``offset`` elements from its data pointer, unchecked (any layout: the caller computes
    the offset from the strides). Numba's own indexing checks for negative indices on every access, which keeps
    LLVM from vectorising the packing loops (a (576, 1024) float32 panel packing: 1.9 ms with it, 0.12 without)."""
    sig = arr.dtype(arr, types.intp)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load(builder.gep(data, [args[1]]))

    return sig, codegen


@intrinsic
def put(typingctx, arr, offset, value):
    """``arr``'s element at ``offset`` elements from its data pointer set to ``value`` (cast to its dtype),
    unchecked (see ``at``)."""
    sig = types.void(arr, types.intp, value)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        v = context.cast(builder, args[2], signature.args[2], signature.args[0].dtype)
        builder.store(v, builder.gep(data, [args[1]]))
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(inline="always")
def panel_height(rows):
    """The height of a panel holding ``rows`` (≤ MR) rows: the smallest of 8, 4, 2, 1 that holds them."""
    if rows > 4:
        return 8
    if rows > 2:
        return 4
    return rows


@numba.njit(**JIT)
def pack_a_panels(a, ap, p0, p1):
    # Panels [p0, p1) of a (M, K), any strides -> ap: panel p (rows p·MR …) at p·MR·K, laid out (K, h),
    # h = panel_height(its rows), zero rows below M
    M, K = a.shape
    s0, s1 = a.strides[0] // a.itemsize, a.strides[1] // a.itemsize
    for p in range(p0, p1):
        r0 = p * MR
        rows = min(MR, M - r0)
        h = panel_height(rows)
        base = p * MR * K
        for k in range(K):
            for i in range(rows):
                put(ap, base + k * h + i, at(a, (r0 + i) * s0 + k * s1))
            for i in range(rows, h):
                put(ap, base + k * h + i, 0.0)


def packed_a_size(M: int, K: int) -> int:
    return -(-M // MR) * MR * K


def packed_a(a: np.ndarray) -> np.ndarray:
    """``a`` (M, K) packed into panels of MR rows for ``gemm`` (a weight: made once at load)."""
    ap = np.empty(packed_a_size(*a.shape), a.dtype)
    if ap.size:
        pack_a_panels(a, ap, 0, -(-a.shape[0] // MR))
    return ap


@numba.njit(**JIT)
def pack_b_panels(b, bp, q0, q1, nr):
    # Panels [q0, q1) of b (K, N), any strides -> bp: panel q (columns q·nr …) at q·nr·K, laid out (K, nr)
    K, N = b.shape
    s0, s1 = b.strides[0] // b.itemsize, b.strides[1] // b.itemsize
    for q in range(q0, q1):
        j0 = q * nr
        cols = min(nr, N - j0)
        base = q * nr * K
        for k in range(K):
            dst = base + k * nr
            src = k * s0 + j0 * s1
            if s1 == 1:  # contiguous rows: a copy LLVM vectorises
                for j in range(cols):
                    put(bp, dst + j, at(b, src + j))
            else:
                for j in range(cols):
                    put(bp, dst + j, at(b, src + j * s1))
            for j in range(cols, nr):
                put(bp, dst + j, 0.0)


@numba.njit(inline="always")
def _epilogue(c, ldc, r0, rows, j0, cols, bias, has_bias, beta, activation, alpha):
    # c[r0:r0+rows, j0:j0+cols] = act(c + beta · bias) in place, bias (Mb, Nb) C-contiguous, Mb in {1, M},
    # Nb in {1, N} (ONNX's unidirectional broadcast)
    Mb, Nb = bias.shape
    for i in range(r0, r0 + rows):
        row = i * ldc
        if has_bias:
            brow = (i if Mb > 1 else 0) * Nb
            if Nb > 1:
                for j in range(j0, j0 + cols):
                    put(c, row + j, activate_alpha(at(c, row + j) + beta * at(bias, brow + j), activation, alpha))
            else:
                b = beta * at(bias, brow)
                for j in range(j0, j0 + cols):
                    put(c, row + j, activate_alpha(at(c, row + j) + b, activation, alpha))
        else:
            for j in range(j0, j0 + cols):
                put(c, row + j, activate_alpha(at(c, row + j), activation, alpha))


@numba.njit(**JIT)
def gemm_panels(ap, M, bp, N, K, c, nr, q0, q1, p0, p1, tile, bias, has_bias, beta, activation, alpha):
    # c's block (panels of rows [p0, p1), of columns [q0, q1)) of c (M, N) = act(a @ b + beta · bias) from the
    # packed panels; c's rows contiguous (c.strides[1] one element); tile: a scratch (MR·nr,) for the blocks past
    # c's edges. The epilogue runs on each block while it is in L1.
    ldc = c.strides[0] // c.itemsize
    bs = K * nr  # one panel of b
    full_end = N // nr  # panels of b wholly inside c
    epilogue = has_bias or activation != 0
    for g0 in range(q0, q1, GROUP):  # GROUP panels of b (in L2) meet every row panel of a
        g1 = min(q1, g0 + GROUP)
        for p in range(p0, p1):
            r0 = p * MR
            rows = min(MR, M - r0)
            h = panel_height(rows)
            q = g0
            while q < g1:
                u = _panels_for(h, min(g1, full_end) - q)
                if q + u <= full_end and rows == h:
                    _microkernel(h, u, ap, p * MR * K, bp, q * bs, bs, K, c, r0 * ldc + q * nr, ldc)
                    cols = u * nr
                else:  # one panel past an edge of c, through the tile
                    u = 1
                    cols = min(nr, N - q * nr)
                    _microkernel(h, 1, ap, p * MR * K, bp, q * bs, bs, K, tile, 0, nr)
                    for i in range(rows):
                        for j in range(cols):
                            put(c, (r0 + i) * ldc + q * nr + j, at(tile, i * nr + j))
                if epilogue:
                    _epilogue(c, ldc, r0, rows, q * nr, cols, bias, has_bias, beta, activation, alpha)
                q += u


@numba.njit(**JIT)
def direct_panels(ap, M, b, b_off, offs, K, c, nr, nq, p0, p1):
    # c[:, 0 : nq·nr] = a (rows of its panels [p0, p1), K) @ B (K, nq·nr), B never formed: its element (k, j) is
    # b[b_off + offs[k] + j], so each row of a panel of B is nr contiguous elements of b (a direct convolution's
    # input, ``conv``). a (M, K) packed (``packed_a``); c (≥ (p1 − p0) · MR rows, its rows contiguous): every
    # block is whole, the rows below M and the columns the caller does not want are written too. The same fused
    # multiply-adds, in the same order, as ``gemm_panels`` with B packed.
    ldc = c.strides[0] // c.itemsize
    for g0 in range(0, nq, GROUP):  # GROUP panels of B (their rows of b in L1 / L2) meet every row panel of a
        g1 = min(nq, g0 + GROUP)
        for p in range(p0, p1):
            h = panel_height(min(MR, M - p * MR))
            q = g0
            while q < g1:
                u = _panels_for(h, g1 - q)
                _microkernel_indirect(h, u, ap, p * MR * K, b, b_off + q * nr, nr, offs, K, c,
                                      (p - p0) * MR * ldc + q * nr, ldc)  # fmt: skip
                q += u


@intrinsic
def fma(typingctx, x, y, z):
    """x·y + z with one rounding (``llvm.fma``), for float32 or float64 scalars of one type."""
    sig = x(x, y, z)

    def codegen(context, builder, signature, args):
        fty = context.get_value_type(signature.return_type)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fty, [fty] * 3), f"llvm.fma.f{x.bitwidth}")
        return builder.call(fn, args)

    return sig, codegen


CHAIN_MAX_ROWS = 8  # ``gemm_chains`` for products of at most this many rows
CHAIN_MAX_COLUMNS = 16  # and columns (see there)


@numba.njit(**JIT)
def gemm_chains(a, bt, c, bias, has_bias, beta, activation, alpha):
    # c (M, N) = act(a (M, K) @ btᵀ + beta · bias), bt (N, K) with contiguous rows, a any strides: each output
    # the contract's fma chain over k = 0…K−1 from 0, then the epilogue's c + beta · bias and activation, as
    # gemm_panels computes it. For few rows and columns (a batch-1 classifier's head, a DCGAN discriminator's
    # last layer), where a panel of b, NR columns wide, would carry NR / N times the weights' bytes (N = 1,
    # K = 6272: 800 KB read for 25 KB of weights, 50 us instead of 6). Eight chains side by side (two FMA pipes
    # times four cycles of latency), in registers; past the last column they repeat it, and are dropped.
    M, K = a.shape
    N = bt.shape[0]
    s0, s1 = a.strides[0] // a.itemsize, a.strides[1] // a.itemsize
    Mb, Nb = bias.shape
    zero = c.dtype.type(0.0)
    for i in range(M):
        for j0 in range(0, N, 8):
            last = N - 1  # the rows of bt of the eight chains, the last one repeated past N
            r0, r1, r2, r3 = min(j0, last) * K, min(j0 + 1, last) * K, min(j0 + 2, last) * K, min(j0 + 3, last) * K
            r4, r5, r6, r7 = min(j0 + 4, last) * K, min(j0 + 5, last) * K, min(j0 + 6, last) * K, min(j0 + 7, last) * K
            c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = zero
            for k in range(K):
                x = at(a, i * s0 + k * s1)
                c0 = fma(x, at(bt, r0 + k), c0)
                c1 = fma(x, at(bt, r1 + k), c1)
                c2 = fma(x, at(bt, r2 + k), c2)
                c3 = fma(x, at(bt, r3 + k), c3)
                c4 = fma(x, at(bt, r4 + k), c4)
                c5 = fma(x, at(bt, r5 + k), c5)
                c6 = fma(x, at(bt, r6 + k), c6)
                c7 = fma(x, at(bt, r7 + k), c7)
            sums = (c0, c1, c2, c3, c4, c5, c6, c7)
            for u in range(min(8, N - j0)):
                j = j0 + u
                v = sums[u]
                if has_bias:
                    v = v + beta * bias[i if Mb > 1 else 0, j if Nb > 1 else 0]
                c[i, j] = activate_alpha(v, activation, alpha)


def packed_b_size(K: int, N: int, dtype) -> int:
    nr = nr_of(dtype)
    return -(-N // nr) * nr * K


def packed_b(b: np.ndarray) -> np.ndarray:
    """``b`` (K, N) packed into panels of NR columns for ``gemm`` (a weight: made once at load)."""
    K, N = b.shape
    nr = nr_of(b.dtype)
    bp = np.empty(packed_b_size(K, N, b.dtype), b.dtype)
    if bp.size:
        pack_b_panels(b, bp, 0, -(-N // nr), nr)
    return bp


# Parallel products: the packing in parallel over panels, then one task per block of (row panels × column
# panels) of at least BLOCK_FLOPS (a task's start-up small beside it). The split, whatever it is, changes
# nothing in the result (the module docstring).
BLOCK_FLOPS = 1 << 21


def _gemm(a, ap, a_packed, b, bp, b_packed, K, c, bias, has_bias, beta, activation, alpha, block_flops):
    # c (M, N) = act(a (M, K) @ b (K, N) + beta · bias); ap / bp: a / b already packed (``packed_a``,
    # ``packed_b``) where a_packed / b_packed, else scratch is made here and a / b are read (any strides); c's rows
    # contiguous; block_flops: a task's least work (BLOCK_FLOPS, an argument so that it is never frozen into the
    # cached kernel). Serial, or parallel (``serial_and_parallel``).
    M, N = c.shape
    if M == 0 or N == 0:
        return
    nr = VECTORS * VECTOR_BYTES // c.itemsize
    nq = (N + nr - 1) // nr
    npan = (M + MR - 1) // MR
    if not a_packed:
        ap = np.empty(npan * MR * K, c.dtype)
        for p in numba.prange(npan):
            i = np.int64(p)  # (prange's index is unsigned: pack_a_panels would be compiled for it apart)
            pack_a_panels(a, ap, i, i + 1)
    if not b_packed:
        bp = np.empty(nq * nr * K, c.dtype)
        for q in numba.prange(nq):
            j = np.int64(q)
            pack_b_panels(b, bp, j, j + 1, nr)
    per_block = max(1, block_flops // (2 * MR * nr * max(K, 1)))  # micro-kernel calls per task
    rows_per = min(npan, per_block)
    cols_per = max(1, per_block // rows_per)
    tr = (npan + rows_per - 1) // rows_per
    tc = (nq + cols_per - 1) // cols_per
    for t in numba.prange(tr * tc):
        pr, qc = t % tr, t // tr
        tile = np.empty(MR * nr, c.dtype)
        gemm_panels(ap, M, bp, N, K, c, nr, qc * cols_per, min(nq, (qc + 1) * cols_per), pr * rows_per,
                    min(npan, (pr + 1) * rows_per), tile, bias, has_bias, beta, activation, alpha)  # fmt: skip


GEMM_KERNELS = serial_and_parallel(_gemm)  # (serial, parallel), called as GEMM_KERNELS[parallel](...)
PARALLEL_FLOPS = 1 << 21  # from here a product is split over Numba's threads (~10 us of work on one core)
UNUSED = {np.dtype(np.float32): np.zeros(0, np.float32), np.dtype(np.float64): np.zeros(0, np.float64)}
UNUSED_2D = {d: np.zeros((0, 0), d) for d in UNUSED}  # the operands a call does not read


def gemm(
    c: np.ndarray,
    a: np.ndarray | None = None,
    b: np.ndarray | None = None,
    *,
    a_packed: np.ndarray | None = None,
    b_packed: np.ndarray | None = None,
    K: int | None = None,
    bias: np.ndarray | None = None,
    beta: float = 1.0,
    activation: int = 0,
    alpha: float = LEAKY_RELU_ALPHA,
) -> np.ndarray:
    """``c`` (M, N) = act(a (M, K) @ b (K, N) + beta · bias), in place, and returned. Either operand may be given
    packed instead (``a_packed`` from ``packed_a``, ``b_packed`` from ``packed_b``; ``K`` then, if both are).
    ``bias``: 2-D, broadcastable to (M, N). float32 or float64, one dtype throughout; c's rows contiguous."""
    dtype = c.dtype
    M, N = c.shape
    if c.ndim != 2 or (c.size and ((c.strides[1] != c.itemsize and N > 1) or c.strides[0] < 0)):
        raise ValueError(f"gemm: c of shape {c.shape} and strides {c.strides} needs contiguous rows, in order")
    if K is None:
        K = a.shape[1] if a is not None else b.shape[0]
    a = None if a is None else kernel_operand(a)  # a read-only feed: see kernel_operand
    b = None if b is None else kernel_operand(b)
    unused = UNUSED[dtype]
    bias2, has_bias = bias_operand(bias, dtype)
    if has_bias:
        bias2 = np.ascontiguousarray(bias2)
    parallel = 2 * M * N * K >= PARALLEL_FLOPS
    GEMM_KERNELS[parallel](
        UNUSED_2D[dtype] if a is None else a,
        unused if a_packed is None else a_packed,
        a_packed is not None,
        UNUSED_2D[dtype] if b is None else b,
        unused if b_packed is None else b_packed,
        b_packed is not None,
        K,
        c,
        bias2,
        has_bias,
        dtype.type(beta),
        activation,
        dtype.type(alpha),
        BLOCK_FLOPS,
    )
    return c


# --- the machine's ceiling, as the micro-kernel sees it ---------------------------------------------------------


@intrinsic
def _fma_chains(typingctx, iterations):
    """16 independent chains of float32 vector fmas, ``iterations`` steps each, no memory traffic: the FMA
    throughput the micro-kernel's accumulators could reach. Returns a lane of the sum (so nothing is dead code)."""
    sig = types.float32(types.intp)

    def codegen(context, builder, signature, args):
        width = VECTOR_BYTES // 4
        fty = ir.FloatType()
        vty = ir.VectorType(fty, width)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fma.v{width}f32"
        )
        scale = ir.Constant(vty, [ir.Constant(fty, 0.999999)] * width)
        step = ir.Constant(vty, [ir.Constant(fty, 1e-7)] * width)
        slots = [cgutils.alloca_once(builder, vty) for _ in range(16)]
        for i, slot in enumerate(slots):
            builder.store(ir.Constant(vty, [ir.Constant(fty, float(i))] * width), slot)
        with cgutils.for_range(builder, args[0]):
            for slot in slots:
                builder.store(builder.call(fma, [builder.load(slot), scale, step]), slot)
        total = builder.load(slots[0])
        for slot in slots[1:]:
            total = builder.fadd(total, builder.load(slot))
        return builder.extract_element(total, ir.Constant(ir.IntType(32), 0))

    return sig, codegen


@numba.njit(parallel=True, cache=True)
def _fma_peak_kernel(tasks, iterations, out):
    for t in numba.prange(tasks):
        out[t] = _fma_chains(iterations)


def fma_peak_gflops(threads: int, seconds: float = 0.3) -> float:
    """Float32 GFLOP/s of ``threads`` tasks of pure vector fmas on Numba's threads (one per core): the measured
    peak that the benchmark's percentages refer to."""
    import time

    out = np.zeros(threads, np.float32)
    _fma_peak_kernel(threads, 1000, out)  # compile and wake the workers
    iterations = 1 << 20
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        _fma_peak_kernel(threads, iterations, out)
        dt = time.perf_counter() - t
        best = max(best, threads * iterations * 16 * (VECTOR_BYTES // 4) * 2 / dt / 1e9)
        if time.perf_counter() > deadline:
            return best
