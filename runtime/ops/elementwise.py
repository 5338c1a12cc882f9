"""Element-wise ops: activations (Sigmoid, Relu, Tanh, LeakyRelu) as Numba kernels, and the broadcasting
arithmetic ops (Add, Sub, Mul, Div) with NumPy's multidirectional broadcasting, which is ONNX's.
https://onnx.ai/onnx/operators/ (one page per op_type).
"""

from __future__ import annotations

import numpy as np

from runtime.errors import InvalidFeed
from runtime.ops import FLOATS, INTEGERS, onnx_op
from runtime.ops._cpu_kernels import ACTIVATIONS, LEAKY_RELU_ALPHA, unary_


@onnx_op(dtypes={"X": FLOATS})
def Sigmoid(X):
    return unary_(X, ACTIVATIONS["Sigmoid"])


@onnx_op(dtypes={"X": FLOATS + INTEGERS})
def Relu(X):
    return unary_(X, ACTIVATIONS["Relu"])


@onnx_op(dtypes={"X": FLOATS})
def Tanh(X):
    return unary_(X, ACTIVATIONS["Tanh"])


@onnx_op(dtypes={"X": FLOATS})
def LeakyRelu(X, *, alpha=LEAKY_RELU_ALPHA):
    return unary_(X, ACTIVATIONS["LeakyRelu"], alpha)


@onnx_op
def Add(A, B):
    return np.add(A, B)


@onnx_op
def Sub(A, B):
    return np.subtract(A, B)


@onnx_op
def Mul(A, B):
    return np.multiply(A, B)


@onnx_op
def Div(A, B):
    with np.errstate(all="ignore"):  # x/0 gives inf or NaN silently, as in onnxruntime
        if np.issubdtype(A.dtype, np.integer):
            if not np.all(B):  # onnxruntime refuses it too ("Integer division by zero"); NumPy would give 0
                raise InvalidFeed(f"Div: integer division by zero (the divisor B, {B.dtype}, holds a 0)")
            # ONNX integer Div truncates toward zero; floor division corrected where the signs differ, exact
            # beyond 2**53 where a float64 quotient would not be.
            q = A // B
            return (q + ((A % B != 0) & ((A < 0) != (B < 0)))).astype(A.dtype)
        return np.divide(A, B)
