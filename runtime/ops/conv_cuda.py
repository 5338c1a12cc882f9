"""CUDA Conv and ConvTranspose (https://onnx.ai/onnx/operators/onnx__Conv.html,
https://onnx.ai/onnx/operators/onnx__ConvTranspose.html): one thread per output element, each gathering its own
sum, so there are no atomics and no col buffer.

The threads walk the flattened (N, C_out, D_out, H_out, W_out) index in a grid-stride loop, W fastest: a warp
writes consecutive addresses. 1-D and 2-D convolutions run as 3-D ones with leading spatial axes of size 1; the
output shape and pads come from ``runtime.ops.conv.conv_geometry``, shared with the CPU. FusedConv and
FusedConvTranspose (a convolution and its activation, fused at load) apply the activation before the single store.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float32

from runtime.ops import OPS
from runtime.ops._cpu_kernels import ACTIVATIONS, LEAKY_RELU_ALPHA
from runtime.ops._cuda_launch import THREADS_PER_BLOCK, activate_alpha, as_float32, grid_1d, kernel
from runtime.ops.conv import ConvGeometry, cached_conv_geometry
from runtime.ops.gemm import FUSED_DOMAIN

_ARRAY5 = "float32[:, :, :, :, ::1]"
# X, W, B, Y, then strides, dilations and begin pads along (D, H, W) as nine scalars (kernel parameters: no copy
# to the device, no global-memory loads), the group count, has_bias, and the fused activation (code, LeakyRelu alpha)
_SIG = f"void({_ARRAY5}, {_ARRAY5}, float32[::1], {_ARRAY5}, {', '.join(['int64'] * 10)}, int32, int32, float32)"


@kernel(_SIG)
def _conv_kernel(X, W, B, Y, sD, sH, sW, dD, dH, dW, pD, pH, pW, group, has_bias, activation, alpha):
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


@kernel(_SIG)
def _conv_transpose_kernel(X, W, B, Y, sD, sH, sW, dD, dH, dW, pD, pH, pW, group, has_bias, activation, alpha):
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


def _launch(conv_kernel, X, W, B, geom: ConvGeometry, activation: str = "", alpha: float = LEAKY_RELU_ALPHA):
    """Allocate Y, launch ``conv_kernel`` over every output element, and return Y in the op's rank."""
    Y = cuda.device_array(geom.y5_shape, dtype=np.float32)  # (N, C_out, D_out, H_out, W_out)
    if Y.size:
        bias = B if B is not None else _dummy_bias()
        geometry = [np.int64(v) for a in geom.kernel_arguments() for v in a]  # strides, dilations, pads along D, H, W
        conv_kernel[grid_1d(Y.size), THREADS_PER_BLOCK](
            X.reshape(geom.x5_shape),  # (N, C_in, D, H, W)
            W.reshape(geom.w5_shape(W.shape)),  # (W0, W1, kD, kH, kW)
            bias,
            Y,
            *geometry,
            np.int64(geom.group),
            np.int32(B is not None),
            np.int32(ACTIVATIONS[activation]),
            np.float32(alpha),
        )
    return Y.reshape(geom.y_shape)  # (N, C_out, *out_size)


def _check_float32(op_type: str, X, W, B) -> None:
    for t in (X, W) if B is None else (X, W, B):
        as_float32(t, op_type)


def _run(op_type: str, conv_kernel, X, W, B, attrs: dict, activation: str = "", alpha: float = LEAKY_RELU_ALPHA):
    _check_float32(op_type, X, W, B)
    geom = cached_conv_geometry(op_type, X.shape, W.shape, None if B is None else B.shape, **attrs)
    return _launch(conv_kernel, X, W, B, geom, activation, alpha)


@OPS[("", "Conv")].cuda
def Conv(X, W, B=None, **attrs):  # attributes: conv.CONV_SPECS
    return _run("Conv", _conv_kernel, X, W, B, attrs)


@OPS[("", "ConvTranspose")].cuda
def ConvTranspose(X, W, B=None, **attrs):
    return _run("ConvTranspose", _conv_transpose_kernel, X, W, B, attrs)


@OPS[(FUSED_DOMAIN, "FusedConv")].cuda
def FusedConv(X, W, B=None, *, activation="", activation_alpha=LEAKY_RELU_ALPHA, **attrs):
    return _run("Conv", _conv_kernel, X, W, B, attrs, activation, activation_alpha)


@OPS[(FUSED_DOMAIN, "FusedConvTranspose")].cuda
def FusedConvTranspose(X, W, B=None, *, activation="", activation_alpha=LEAKY_RELU_ALPHA, **attrs):
    return _run("ConvTranspose", _conv_transpose_kernel, X, W, B, attrs, activation, activation_alpha)
