"""CUDA Conv and ConvTranspose (https://onnx.ai/onnx/operators/onnx__Conv.html,
https://onnx.ai/onnx/operators/onnx__ConvTranspose.html): each thread gathers the sums of CHANNEL_BLOCK
output channels of one group at one output position, so there are no atomics and no col buffer.

The threads walk the flattened (N, group, channel block, D_out, H_out, W_out) index in a grid-stride loop, W
fastest: a warp writes consecutive addresses. 1-D and 2-D convolutions run as 3-D ones with leading spatial axes
of size 1; the output shape and pads come from ``runtime.ops.conv.conv_geometry``, shared with the CPU.
FusedConv and FusedConvTranspose (a convolution and its activation, fused at load) apply the activation before
the single store.

Indexing is what a GPU compiler can keep cheap (``tests/test_sass.py`` counts the SASS of the inner loop):
the kernels take flat 1-D views and 32-bit geometry, the offsets of a tap are computed once outside the loop
over input channels and stepped by a constant inside it, divisions are unsigned 32-bit, and every array index
is a ``uint32`` (Numba wraps a signed index around the array's end, a compare and select per access). Each
output is still ``B[c]`` followed by the taps in (kd, kh, kw) order and the group's input channels innermost,
one FMA at a time: the same sum in the same order as the plain kernels below, whatever the block or thread.

Tensors too large for 32-bit offsets (``INDEX32_LIMIT``) take those plain kernels: one thread per output,
5-D arrays, Numba's 64-bit indexing.

A Conv with at least IMPLICIT_GEMM_MIN_CHANNELS output channels per group runs as an implicit GEMM
(``_conv_implicit_gemm_kernel``): 64 × 64 tiles of the output, the weights and the patches staged in shared memory
8 values of K at a time, 4 × 4 outputs per thread, each summed in the direct kernel's order (the same bits).

Two convolutions are GEMMs and run as such (``gemm_form``, decided by the geometry, never by the batch): a kernel
that covers the whole input, as VGG's fc6 (7×7×512 → 4096 at one position: the direct kernel would give a batch-1
image 1,024 threads each summing 25,088 products; the skinny GEMM splits K over 392 blocks), and a 1×1 convolution
of stride 1 (one GEMM per image). The bias and the activation go in the GEMM's epilogue.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float32, int32, uint32

from runtime.ops import OPS
from runtime.ops._cpu_kernels import ACTIVATIONS, LEAKY_RELU_ALPHA
from runtime.ops._cuda_launch import (
    THREADS_PER_BLOCK,
    activate_alpha,
    as_float32,
    current_stream,
    device_array,
    grid_1d,
    kernel,
)
from runtime.ops.conv import ConvGeometry, cached_conv_geometry, is_full_window
from runtime.ops.gemm import FUSED_DOMAIN
from runtime.ops.gemm_cuda import fused_gemm

# Output channels per thread: the input value loaded for a tap and channel feeds this many FMAs.
CHANNEL_BLOCK = 4
# The largest element count (of X, W, Y, and of the threads' flat index plus the grid stride) that the 32-bit
# kernels take; tests lower it to run the 64-bit path on small shapes.
INDEX32_LIMIT = 2**31 - 1

# X, W, B, Y as flat arrays; N, C_in, D, H, W; C_out, D_out, H_out, W_out; kD, kH, kW; strides, dilations and
# begin pads along (D, H, W); the group count, has_bias, the fused activation's code (all int32) and its
# LeakyRelu alpha. Scalars are kernel parameters: no copy to the device, no global-memory loads.
_SIG = "void(float32[::1], float32[::1], float32[::1], float32[::1], " + ", ".join(["int32"] * 24) + ", float32)"


@cuda.jit(device=True, inline=True)
def _div(a, b):
    # a // b for non-negative int32 operands as one unsigned 32-bit division (Numba's signed // is 64-bit
    # with a floor correction)
    return int32(uint32(a) // uint32(b))


@cuda.jit(device=True, inline=True)
def _mod(a, b):
    return int32(uint32(a) % uint32(b))


@cuda.jit(device=True, inline=True)
def _store_block(Y, y, S_out, c, last, acc0, acc1, acc2, acc3, activation, alpha):
    # Y[y + r·S_out] = act(acc_r) for the block's channels c + r that exist (r ≤ last − c)
    Y[uint32(y)] = activate_alpha(acc0, activation, alpha)
    if c + 1 <= last:
        Y[uint32(y + S_out)] = activate_alpha(acc1, activation, alpha)
    if c + 2 <= last:
        Y[uint32(y + 2 * S_out)] = activate_alpha(acc2, activation, alpha)
    if c + 3 <= last:
        Y[uint32(y + 3 * S_out)] = activate_alpha(acc3, activation, alpha)


@kernel(_SIG)
def _conv_kernel(X, W, B, Y, N, C_in, ID, IH, IW, C_out, OD, OH, OW, KD, KH, KW, sD, sH, sW, dD, dH, dW, pD, pH, pW,
                 group, has_bias, activation, alpha):  # fmt: skip
    # X: (N, C_in, D, H, W); W: (C_out, C_in/group, kD, kH, kW); B: (C_out,) or a dummy (1,);
    # Y: (N, C_out, D_out, H_out, W_out), all flat. Y[n, c, o] = B[c] + sum over the taps k inside X and the
    # group's input channels ci of X[n, ci, o·s − pad + k·d] · W[c, ci, k].
    C_in_g = _div(C_in, group)
    C_out_g = _div(C_out, group)
    blocks = _div(C_out_g + (CHANNEL_BLOCK - 1), CHANNEL_BLOCK)  # channel blocks per group
    group_blocks = int32(group * blocks)
    S_in = int32(ID * IH * IW)
    S_out = int32(OD * OH * OW)
    K = int32(KD * KH * KW)
    w_step = int32(C_in_g * K)  # from one output channel's weights to the next
    total = int32(int32(N * group_blocks) * S_out)
    idx = int32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
    stride = int32(cuda.gridDim.x * cuda.blockDim.x)
    while idx < total:
        s = _mod(idx, S_out)  # the output position
        q = _div(idx, S_out)
        ow = _mod(s, OW)
        t = _div(s, OW)
        oh = _mod(t, OH)
        od = _div(t, OH)
        n = _div(q, group_blocks)
        gb = int32(q - n * group_blocks)
        g = _div(gb, blocks)
        c = int32(g * C_out_g + int32(gb - g * blocks) * CHANNEL_BLOCK)  # the block's first output channel
        last = int32(int32(g * C_out_g + C_out_g) - 1)  # the group's last; a block's channels past it are
        c1 = min(int32(c + 1), last)  # computed as copies of it and never stored
        c2 = min(int32(c + 2), last)
        c3 = min(int32(c + 3), last)
        if has_bias:
            acc0, acc1, acc2, acc3 = B[uint32(c)], B[uint32(c1)], B[uint32(c2)], B[uint32(c3)]
        else:
            acc0 = acc1 = acc2 = acc3 = float32(0.0)
        x_n = int32(int32(n * C_in + g * C_in_g) * S_in)  # X[n, the group's first input channel]
        w0, w1, w2, w3 = int32(c * w_step), int32(c1 * w_step), int32(c2 * w_step), int32(c3 * w_step)
        for kd in range(KD):
            id_ = int32(int32(od * sD - pD) + kd * dD)
            if id_ < 0 or id_ >= ID:
                continue
            for kh in range(KH):
                ih = int32(int32(oh * sH - pH) + kh * dH)
                if ih < 0 or ih >= IH:
                    continue
                for kw in range(KW):
                    iw = int32(int32(ow * sW - pW) + kw * dW)
                    if iw < 0 or iw >= IW:
                        continue
                    xo = int32(x_n + int32(int32(id_ * IH + ih) * IW + iw))  # X[n, c_in, id, ih, iw]
                    wo = int32(int32(kd * KH + kh) * KW + kw)  # W[c, c_in, kd, kh, kw] − W[c, 0, 0, 0, 0]
                    ci = int32(0)
                    while ci < C_in_g:  # the hot loop: one load of X, four of W, four FMAs
                        xv = X[uint32(xo)]
                        acc0 += xv * W[uint32(w0 + wo)]
                        acc1 += xv * W[uint32(w1 + wo)]
                        acc2 += xv * W[uint32(w2 + wo)]
                        acc3 += xv * W[uint32(w3 + wo)]
                        xo = int32(xo + S_in)
                        wo = int32(wo + K)
                        ci = int32(ci + 1)
        y = int32(int32(n * C_out + c) * S_out + s)
        _store_block(Y, y, S_out, c, last, acc0, acc1, acc2, acc3, activation, alpha)
        idx = int32(idx + stride)


# The implicit-GEMM convolution's tiles: a block of (16, 16) threads computes a (IG_BM, IG_BN) tile of
# Y_g (C_out/group, N·S_out) = W_g (C_out/group, taps·C_in/group) @ patches, staging IG_BK values of K at a time
# from W and from X (the patches are never formed) in shared memory; each thread keeps 4 × 4 outputs in registers.
IG_BM = 64
IG_BN = 64
IG_BK = 8
IG_TILE = IG_BK * IG_BM  # floats in each shared tile (IG_BM == IG_BN)
# Conv takes the implicit GEMM from this many output channels per group (by geometry, never by batch: both
# kernels sum an output in the same order, so the choice does not change its bits).
IMPLICIT_GEMM_MIN_CHANNELS = 32


@kernel(_SIG)
def _conv_implicit_gemm_kernel(X, W, B, Y, N, C_in, ID, IH, IW, C_out, OD, OH, OW, KD, KH, KW, sD, sH, sW, dD, dH,
                               dW, pD, pH, pW, group, has_bias, activation, alpha):  # fmt: skip
    # Shapes as _conv_kernel's. Grid: (N·S_out / IG_BN, C_out_g / IG_BM, group); block (16, 16). K is ordered
    # tap-major, channel-minor (k = tap · C_in_g + ci, tap = (kd · KH + kh) · KW + kw): each output is B[c] followed
    # by its taps in (kd, kh, kw) order with the group's input channels innermost, one FMA each, as in
    # _conv_kernel. A tap outside X adds its weight times zero, where _conv_kernel skips it: the same bits for
    # finite weights (but for the sign of an exact zero sum); an infinite or NaN weight there gives NaN, as in
    # onnxruntime's im2col GEMM and the CPU backend.
    a_tile = cuda.shared.array(IG_TILE, dtype=float32)  # [kk · IG_BM + mm]: W_g[m0 + mm, k0 + kk]
    b_tile = cuda.shared.array(IG_TILE, dtype=float32)  # [kk · IG_BN + nn]: patches[k0 + kk, n0 + nn]
    tx = int32(cuda.threadIdx.x)
    ty = int32(cuda.threadIdx.y)
    tid = int32(ty * 16 + tx)
    g = int32(cuda.blockIdx.z)
    m0 = int32(cuda.blockIdx.y * IG_BM)
    n0 = int32(cuda.blockIdx.x * IG_BN)
    C_in_g = _div(C_in, group)
    C_out_g = _div(C_out, group)
    S_in = int32(ID * IH * IW)
    S_out = int32(OD * OH * OW)
    T = int32(KD * KH * KW)
    Kt = int32(T * C_in_g)  # the GEMM's K
    w_step = int32(C_in_g * T)
    n_pos = int32(N * S_out)
    # the column this thread stages in b_tile: its image and window origin, fixed over K
    ln = int32(n0 + _mod(tid, IG_BN))
    l_valid = ln < n_pos
    ls = _mod(ln, S_out) if l_valid else int32(0)
    l_img = _div(ln, S_out) if l_valid else int32(0)
    l_w = int32(int32(_mod(ls, OW) * sW) - pW)
    l_t = _div(ls, OW)
    l_h = int32(int32(_mod(l_t, OH) * sH) - pH)
    l_d = int32(int32(_div(l_t, OH) * sD) - pD)
    l_x = int32(int32(l_img * C_in + g * C_in_g) * S_in)  # X[img, the group's first channel]
    # the row this thread stages in a_tile
    lm = int32(m0 + _mod(tid, IG_BM))
    lm_valid = lm < C_out_g
    l_wrow = int32(int32(g * C_out_g + lm) * w_step) if lm_valid else int32(0)
    lk = _div(tid, IG_BM)  # 0..3: the tile rows this thread stages, lk and lk + 4
    acc = cuda.local.array(16, dtype=float32)  # acc[i * 4 + j]: row ty + 16 i, column tx + 16 j
    for i in range(4):
        m = int32(m0 + ty + 16 * i)
        bias = B[uint32(g * C_out_g + m)] if has_bias and m < C_out_g else float32(0.0)
        for j in range(4):
            acc[i * 4 + j] = bias
    k0 = int32(0)
    while k0 < Kt:  # the hot loop over K, IG_BK at a time
        for r in range(2):
            kk = int32(lk + 4 * r)
            k = int32(k0 + kk)
            tap = _div(k, C_in_g)
            ci = int32(k - tap * C_in_g)
            a = float32(-0.0)  # past K: −0 · 0 = −0 leaves every sum as it is, a zero's sign included
            b = float32(0.0)
            if k < Kt:
                if lm_valid:
                    a = W[uint32(l_wrow + ci * T + tap)]
                if l_valid:
                    kw = _mod(tap, KW)
                    t2 = _div(tap, KW)
                    kh = _mod(t2, KH)
                    kd = _div(t2, KH)
                    id_ = int32(l_d + kd * dD)
                    ih = int32(l_h + kh * dH)
                    iw = int32(l_w + kw * dW)
                    if 0 <= id_ < ID and 0 <= ih < IH and 0 <= iw < IW:
                        b = X[uint32(l_x + int32(ci * S_in) + int32(int32(id_ * IH + ih) * IW) + iw)]
            a_tile[uint32(kk * IG_BM + _mod(tid, IG_BM))] = a
            b_tile[uint32(kk * IG_BN + _mod(tid, IG_BN))] = b
        cuda.syncthreads()
        for kk in range(IG_BK):
            ao = uint32(kk * IG_BM + ty)
            bo = uint32(kk * IG_BN + tx)
            a0 = a_tile[ao]
            a1 = a_tile[ao + 16]
            a2 = a_tile[ao + 32]
            a3 = a_tile[ao + 48]
            for j in range(4):
                bv = b_tile[bo + 16 * j]
                acc[j] = cuda.fma(a0, bv, acc[j])
                acc[4 + j] = cuda.fma(a1, bv, acc[4 + j])
                acc[8 + j] = cuda.fma(a2, bv, acc[8 + j])
                acc[12 + j] = cuda.fma(a3, bv, acc[12 + j])
        cuda.syncthreads()
        k0 = int32(k0 + IG_BK)
    for j in range(4):
        n = int32(n0 + tx + 16 * j)
        if n < n_pos:
            s = _mod(n, S_out)
            y_n = int32(int32(_div(n, S_out) * C_out + g * C_out_g) * S_out + s)  # Y[img, the group's first, s]
            for i in range(4):
                m = int32(m0 + ty + 16 * i)
                if m < C_out_g:
                    Y[uint32(y_n + m * S_out)] = activate_alpha(acc[i * 4 + j], activation, alpha)


@kernel(_SIG)
def _conv_transpose_kernel(X, W, B, Y, N, C_in, ID, IH, IW, C_out, OD, OH, OW, KD, KH, KW, sD, sH, sW, dD, dH, dW,
                           pD, pH, pW, group, has_bias, activation, alpha):  # fmt: skip
    # X: (N, C_in, D, H, W); W: (C_in, C_out/group, kD, kH, kW); B: (C_out,) or a dummy (1,);
    # Y: (N, C_out, D_out, H_out, W_out), all flat. Output o receives input i through tap k when
    # o = i·s − pad + k·d: only the taps with (o + pad − k·d) divisible by s and i inside X contribute.
    C_in_g = _div(C_in, group)
    C_out_g = _div(C_out, group)
    blocks = _div(C_out_g + (CHANNEL_BLOCK - 1), CHANNEL_BLOCK)
    group_blocks = int32(group * blocks)
    S_in = int32(ID * IH * IW)
    S_out = int32(OD * OH * OW)
    K = int32(KD * KH * KW)
    w_step = int32(C_out_g * K)  # from one input channel's weights to the next
    total = int32(int32(N * group_blocks) * S_out)
    idx = int32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
    stride = int32(cuda.gridDim.x * cuda.blockDim.x)
    while idx < total:
        s = _mod(idx, S_out)
        q = _div(idx, S_out)
        ow = _mod(s, OW)
        t = _div(s, OW)
        oh = _mod(t, OH)
        od = _div(t, OH)
        n = _div(q, group_blocks)
        gb = int32(q - n * group_blocks)
        g = _div(gb, blocks)
        co = int32(int32(gb - g * blocks) * CHANNEL_BLOCK)  # the block's first output channel within its group
        c = int32(g * C_out_g + co)
        last = int32(int32(g * C_out_g + C_out_g) - 1)
        c1 = min(int32(c + 1), last)
        c2 = min(int32(c + 2), last)
        c3 = min(int32(c + 3), last)
        if has_bias:
            acc0, acc1, acc2, acc3 = B[uint32(c)], B[uint32(c1)], B[uint32(c2)], B[uint32(c3)]
        else:
            acc0 = acc1 = acc2 = acc3 = float32(0.0)
        x_n = int32(int32(n * C_in + g * C_in_g) * S_in)  # X[n, the group's first input channel]
        w_g = int32(int32(g * C_in_g) * w_step - int32(g * C_out_g) * K)  # W[c_in, c − g·C_out_g] = W[w_g + c·K]
        w0, w1, w2, w3 = int32(w_g + c * K), int32(w_g + c1 * K), int32(w_g + c2 * K), int32(w_g + c3 * K)
        for kd in range(KD):
            td = int32(int32(od + pD) - kd * dD)
            if td < 0 or _mod(td, sD) != 0:
                continue
            id_ = _div(td, sD)
            if id_ >= ID:
                continue
            for kh in range(KH):
                th = int32(int32(oh + pH) - kh * dH)
                if th < 0 or _mod(th, sH) != 0:
                    continue
                ih = _div(th, sH)
                if ih >= IH:
                    continue
                for kw in range(KW):
                    tw = int32(int32(ow + pW) - kw * dW)
                    if tw < 0 or _mod(tw, sW) != 0:
                        continue
                    iw = _div(tw, sW)
                    if iw >= IW:
                        continue
                    xo = int32(x_n + int32(int32(id_ * IH + ih) * IW + iw))  # X[n, c_in, id, ih, iw]
                    wo = int32(int32(kd * KH + kh) * KW + kw)  # the tap within W[c_in, c, :, :, :]
                    ci = int32(0)
                    while ci < C_in_g:  # the hot loop: one load of X, four of W, four FMAs
                        xv = X[uint32(xo)]
                        acc0 += xv * W[uint32(w0 + wo)]
                        acc1 += xv * W[uint32(w1 + wo)]
                        acc2 += xv * W[uint32(w2 + wo)]
                        acc3 += xv * W[uint32(w3 + wo)]
                        xo = int32(xo + S_in)
                        wo = int32(wo + w_step)
                        ci = int32(ci + 1)
        y = int32(int32(n * C_out + c) * S_out + s)
        _store_block(Y, y, S_out, c, last, acc0, acc1, acc2, acc3, activation, alpha)
        idx = int32(idx + stride)


# --- the 64-bit path: one thread per output, Numba's 5-D indexing ----------------------------------------------

_ARRAY5 = "float32[:, :, :, :, ::1]"
# X, W, B, Y, then strides, dilations and begin pads along (D, H, W) as nine scalars, the group count, has_bias,
# and the fused activation (code, LeakyRelu alpha)
_SIG_WIDE = f"void({_ARRAY5}, {_ARRAY5}, float32[::1], {_ARRAY5}, {', '.join(['int64'] * 10)}, int32, int32, float32)"


@kernel(_SIG_WIDE)
def _conv_kernel_wide(X, W, B, Y, sD, sH, sW, dD, dH, dW, pD, pH, pW, group, has_bias, activation, alpha):
    # X: (N, C_in, D, H, W); W: (C_out, C_in/group, kD, kH, kW); B: (C_out,) or a dummy (1,);
    # Y: (N, C_out, D_out, H_out, W_out). Y[n, c, o] = B[c] + sum over the taps k inside X and the group's
    # input channels ci of X[n, ci, o·s − pad + k·d] · W[c, ci, k].
    N, C_out, OD, OH, OW = Y.shape
    ID, IH, IW = X.shape[2], X.shape[3], X.shape[4]
    C_in_g, KD, KH, KW = W.shape[1], W.shape[2], W.shape[3], W.shape[4]
    C_out_g = C_out // group
    total = N * C_out * OD * OH * OW
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        ow = idx % OW
        oh = (idx // OW) % OH
        od = (idx // (OW * OH)) % OD
        c = (idx // (OW * OH * OD)) % C_out
        n = idx // (OW * OH * OD * C_out)
        c0 = (c // C_out_g) * C_in_g  # the group's first input channel
        acc = B[c] if has_bias else float32(0.0)
        for kd in range(KD):
            id_ = od * sD - pD + kd * dD
            if id_ < 0 or id_ >= ID:
                continue
            for kh in range(KH):
                ih = oh * sH - pH + kh * dH
                if ih < 0 or ih >= IH:
                    continue
                for kw in range(KW):
                    iw = ow * sW - pW + kw * dW
                    if iw < 0 or iw >= IW:
                        continue
                    for ci in range(C_in_g):
                        acc += X[n, c0 + ci, id_, ih, iw] * W[c, ci, kd, kh, kw]
        Y[n, c, od, oh, ow] = activate_alpha(acc, activation, alpha)


@kernel(_SIG_WIDE)
def _conv_transpose_kernel_wide(X, W, B, Y, sD, sH, sW, dD, dH, dW, pD, pH, pW, group, has_bias, activation, alpha):
    # X: (N, C_in, D, H, W); W: (C_in, C_out/group, kD, kH, kW); B: (C_out,) or a dummy (1,);
    # Y: (N, C_out, D_out, H_out, W_out). Output o receives input i through tap k when o = i·s − pad + k·d:
    # only the taps with (o + pad − k·d) divisible by s and i inside X contribute.
    N, C_out, OD, OH, OW = Y.shape
    ID, IH, IW = X.shape[2], X.shape[3], X.shape[4]
    C_in = X.shape[1]
    C_out_g, KD, KH, KW = W.shape[1], W.shape[2], W.shape[3], W.shape[4]
    C_in_g = C_in // group
    total = N * C_out * OD * OH * OW
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        ow = idx % OW
        oh = (idx // OW) % OH
        od = (idx // (OW * OH)) % OD
        c = (idx // (OW * OH * OD)) % C_out
        n = idx // (OW * OH * OD * C_out)
        g = c // C_out_g
        co = c - g * C_out_g  # the output channel within its group
        c0 = g * C_in_g  # the group's first input channel
        acc = B[c] if has_bias else float32(0.0)
        for kd in range(KD):
            td = od + pD - kd * dD
            if td < 0 or td % sD != 0 or td // sD >= ID:
                continue
            id_ = td // sD
            for kh in range(KH):
                th = oh + pH - kh * dH
                if th < 0 or th % sH != 0 or th // sH >= IH:
                    continue
                ih = th // sH
                for kw in range(KW):
                    tw = ow + pW - kw * dW
                    if tw < 0 or tw % sW != 0 or tw // sW >= IW:
                        continue
                    iw = tw // sW
                    for ci in range(C_in_g):
                        acc += X[n, c0 + ci, id_, ih, iw] * W[c0 + ci, co, kd, kh, kw]
        Y[n, c, od, oh, ow] = activate_alpha(acc, activation, alpha)


_no_bias = None


def _dummy_bias():
    """The 1-element array passed as B when there is none (kernels cannot take None); allocated once, since a
    device allocation (and its free) per call would synchronise the device."""
    global _no_bias
    if _no_bias is None:
        _no_bias = cuda.to_device(np.zeros(1, np.float32))
    return _no_bias


def gemm_form(op_type: str, geom: ConvGeometry) -> str | None:
    """Which GEMM a convolution is, by its geometry alone (never by its batch): "window" when the kernel covers
    the whole input (a fully connected layer written as a Conv, as VGG's fc6: one output position per image),
    "pointwise" for a 1×1 convolution of stride 1 that keeps the spatial size; else None."""
    if op_type != "Conv":
        return None
    if is_full_window(geom):  # the CPU backend's test for the same GEMM
        return "window"
    pointwise = all(k == 1 for k in geom.kernel) and all(s == 1 for s in geom.strides)
    if pointwise and geom.group == 1 and not any(geom.pads_begin) and geom.out_size == geom.in_size:
        return "pointwise"
    return None


def _as_gemm(form: str, X, W, B, geom: ConvGeometry, Y, activation: str, alpha: float) -> None:
    # Y = act(W ⊛ X + B) through the GEMM kernels, with the bias and activation in their epilogue
    N, C_out = geom.N, geom.C_out
    code = ACTIVATIONS[activation]
    if form == "window":
        taps = W.size // C_out  # C_in · kD · kH · kW
        X2 = X.reshape(N, taps)  # (N, taps): one row per image
        W2 = W.reshape(C_out, taps)  # (C_out, taps), read transposed
        C = None if B is None else B.reshape(1, C_out)  # (1, C_out)
        fused_gemm(X2, W2, C, transB=1, activation=code, out=Y.reshape(N, C_out), slope=alpha)
        return
    S = Y.size // (N * C_out)  # output positions per image, as many as input ones
    X3 = X.reshape(N, geom.C_in, S)  # (N, C_in, S)
    Y3 = Y.reshape(N, C_out, S)  # (N, C_out, S)
    W2 = W.reshape(C_out, geom.C_in)  # (C_out, C_in)
    C = None if B is None else B.reshape(C_out, 1)  # (C_out, 1): one bias per row
    for n in range(N):  # one GEMM per image: Y[n] = W2 @ X[n]
        fused_gemm(W2, X3[n], C, activation=code, out=Y3[n], slope=alpha)


def _launch(op_type: str, X, W, B, geom: ConvGeometry, activation: str = "", alpha: float = LEAKY_RELU_ALPHA):
    """Allocate Y, launch the op's kernel over every output element (or the GEMM the convolution is), and return Y
    in the op's rank."""
    Y = device_array(geom.y5_shape, dtype=np.float32)  # (N, C_out, D_out, H_out, W_out)
    if Y.size == 0:  # no output, no launch (a grid of zero blocks is an error on a GPU)
        return Y.reshape(geom.y_shape)
    form = gemm_form(op_type, geom)
    if form is not None:
        _as_gemm(form, X, W, B, geom, Y, activation, alpha)
        return Y.reshape(geom.y_shape)
    bias = B if B is not None else _dummy_bias()
    fused = (np.int32(B is not None), np.int32(ACTIVATIONS[activation]), np.float32(alpha))
    N, C_out, OD, OH, OW = geom.y5_shape
    blocks = -(-(C_out // geom.group) // CHANNEL_BLOCK)  # channel blocks per group
    threads = N * geom.group * blocks * OD * OH * OW
    blocks_per_grid = grid_1d(threads)
    if max(X.size, W.size, Y.size, threads + blocks_per_grid * THREADS_PER_BLOCK) <= INDEX32_LIMIT:
        geometry = [np.int32(v) for v in (*geom.x5_shape[1:], *geom.y5_shape[1:], *geom.w5_shape(W.shape)[2:])]
        geometry += [np.int32(v) for a in geom.kernel_arguments() for v in a]  # strides, dilations, begin pads
        flat = (X.reshape(X.size), W.reshape(W.size), bias, Y.reshape(Y.size), np.int32(N), *geometry,
                np.int32(geom.group), *fused)  # fmt: skip
        C_out_g = C_out // geom.group
        grid = (-(-N * OD * OH * OW // IG_BN), -(-C_out_g // IG_BM), geom.group)  # the implicit GEMM's
        if op_type == "Conv" and C_out_g >= IMPLICIT_GEMM_MIN_CHANNELS and max(grid[1:]) <= 65535:
            _conv_implicit_gemm_kernel[grid, (16, 16), current_stream()](*flat)
        else:
            conv_kernel = _conv_kernel if op_type == "Conv" else _conv_transpose_kernel
            conv_kernel[blocks_per_grid, THREADS_PER_BLOCK, current_stream()](*flat)
    else:
        geometry = [np.int64(v) for a in geom.kernel_arguments() for v in a]
        conv_kernel = _conv_kernel_wide if op_type == "Conv" else _conv_transpose_kernel_wide
        conv_kernel[grid_1d(Y.size), THREADS_PER_BLOCK, current_stream()](
            X.reshape(geom.x5_shape),  # (N, C_in, D, H, W)
            W.reshape(geom.w5_shape(W.shape)),  # (W0, W1, kD, kH, kW)
            bias,
            Y,
            *geometry,
            np.int64(geom.group),
            *fused,
        )
    return Y.reshape(geom.y_shape)  # (N, C_out, *out_size)


def _check_float32(op_type: str, X, W, B) -> None:
    for t in (X, W) if B is None else (X, W, B):
        as_float32(t, op_type)


def _run(op_type: str, X, W, B, attrs: dict, activation: str = "", alpha: float = LEAKY_RELU_ALPHA):
    _check_float32(op_type, X, W, B)
    geom = cached_conv_geometry(op_type, X.shape, W.shape, None if B is None else B.shape, **attrs)
    return _launch(op_type, X, W, B, geom, activation, alpha)


@OPS[("", "Conv")].cuda
def Conv(X, W, B=None, **attrs):  # attributes: conv.CONV_SPECS
    return _run("Conv", X, W, B, attrs)


@OPS[("", "ConvTranspose")].cuda
def ConvTranspose(X, W, B=None, **attrs):
    return _run("ConvTranspose", X, W, B, attrs)


@OPS[(FUSED_DOMAIN, "FusedConv")].cuda
def FusedConv(X, W, B=None, *, activation="", activation_alpha=LEAKY_RELU_ALPHA, **attrs):
    return _run("Conv", X, W, B, attrs, activation, activation_alpha)


@OPS[(FUSED_DOMAIN, "FusedConvTranspose")].cuda
def FusedConvTranspose(X, W, B=None, *, activation="", activation_alpha=LEAKY_RELU_ALPHA, **attrs):
    return _run("ConvTranspose", X, W, B, attrs, activation, activation_alpha)
