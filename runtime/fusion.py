"""Graph rewrites applied at load time. Each keeps the graph's values and names; it only lets one kernel do
the work of several nodes.

- A BatchNormalization (inference form, constant parameters) reading a Conv or ConvTranspose with constant
  weights, and read by nothing else, is folded into the convolution's weights and bias (as onnxruntime's
  ``ConvBNFusion``): ``W' = W·scale_c`` per output channel, ``B' = B·scale_c + bias_c``, with ``scale_c`` and
  ``bias_c`` the per-channel statistics folded as ``runtime/ops/normalization.py`` does.
- On CUDA, a ConvTranspose of unit strides with constant weights becomes the Conv of its flipped, transposed
  weights (the same output), so that it takes the Conv kernels.
- Gemm followed by Sigmoid, Relu or Tanh becomes one FusedGemm; Conv or ConvTranspose followed by Sigmoid,
  Relu, Tanh or LeakyRelu becomes FusedConv or FusedConvTranspose (the names of onnxruntime's contrib ops of the
  same meaning): the bias and the activation are applied in the epilogue of the GEMM or of col2im. The sparse
  autoencoder's forward pass, Gemm→Sigmoid→Gemm→Sigmoid, becomes two FusedGemm nodes.

A rewrite fires only where the intermediate value is read by the one node it absorbs and is no graph output,
and only on constants: an initialiser a feed may override (``Graph.defaults``) is none. A fused op must take
the node's input types (an int64 Gemm followed by Relu stays two nodes: FusedGemm's epilogue is float-only).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from runtime.graph import Graph, Node, kernel_takes
from runtime.ops import OPS
from runtime.ops.conv import flipped_transposed
from runtime.ops.gemm import FUSED_DOMAIN
from runtime.ops.normalization import fold_statistics

DEFAULT_DOMAINS = ("", "ai.onnx")
FUSABLE_ACTIVATIONS = ("Sigmoid", "Relu", "Tanh")  # Gemm's epilogue
CONV_ACTIVATIONS = ("Sigmoid", "Relu", "Tanh", "LeakyRelu")  # Conv's and ConvTranspose's epilogues
# producer op_type -> (fused op_type, the activations its epilogue applies)
FUSIONS = {
    "Gemm": ("FusedGemm", FUSABLE_ACTIVATIONS),
    "Conv": ("FusedConv", CONV_ACTIVATIONS),
    "ConvTranspose": ("FusedConvTranspose", CONV_ACTIVATIONS),
}


def _readers(graph: Graph) -> Counter:
    """How many node inputs read each value; a graph output counts as one more reader."""
    readers = Counter(i for n in graph.nodes for i in n.inputs if i)
    readers.update(v.name for v in graph.outputs)
    return readers


def _single_reader(graph: Graph, readers: Counter, name: str) -> bool:
    return readers[name] == 1


def _takes_inputs(op, node: Node, types: dict) -> bool:
    """Whether ``op``'s kernels take the element types ``node``'s inputs are known to have."""
    return all(name not in types or kernel_takes(op, k, types[name]) for k, name in enumerate(node.inputs))


def fuse_activations(graph: Graph, backend: str) -> Graph:
    readers = _readers(graph)
    by_input = {}
    for n in graph.nodes:
        if n.domain in DEFAULT_DOMAINS and n.op_type in CONV_ACTIVATIONS:
            by_input[n.inputs[0]] = n
    nodes, absorbed = [], set()
    for n in graph.nodes:
        if id(n) in absorbed:
            continue
        fused_type, activations = FUSIONS.get(n.op_type, (None, ())) if n.domain in DEFAULT_DOMAINS else (None, ())
        act = by_input.get(n.outputs[0]) if fused_type and len(n.outputs) == 1 else None
        fused_op = OPS.get((FUSED_DOMAIN, fused_type))
        if (
            act is None
            or act.op_type not in activations
            or not _single_reader(graph, readers, n.outputs[0])
            or fused_op is None
            or backend not in fused_op.impl
            or not _takes_inputs(fused_op, n, graph.value_types)
        ):
            nodes.append(n)
            continue
        absorbed.add(id(act))
        attrs = {**n.attrs, "activation": act.op_type}
        if act.op_type == "LeakyRelu":
            attrs["activation_alpha"] = act.attrs.get("alpha", 0.01)
        nodes.append(
            Node(
                name=f"{n.name}+{act.name}",
                op_type=fused_type,
                domain=FUSED_DOMAIN,
                inputs=n.inputs,
                outputs=act.outputs,
                attrs=attrs,
                op=fused_op,
            )
        )
    graph.nodes = nodes
    return graph


def fold_batch_norm(graph: Graph, backend: str) -> Graph:
    """Conv/ConvTranspose → BatchNormalization with constant weights and statistics: one convolution."""
    readers = _readers(graph)
    producers = {n.outputs[0]: n for n in graph.nodes if n.outputs}
    inits = graph.initializers
    nodes, removed = [], set()
    for bn in graph.nodes:
        conv = producers.get(bn.inputs[0]) if bn.op_type == "BatchNormalization" and bn.inputs[:1] != [""] else None
        folded = _fold_one(graph, readers, conv, bn) if conv is not None and bn.domain in DEFAULT_DOMAINS else None
        if folded is None:
            nodes.append(bn)
            continue
        W_name, B_name = folded
        conv.inputs = [conv.inputs[0], W_name, B_name]
        conv.outputs = list(bn.outputs[:1])
        removed.add(id(bn))
    if removed:
        graph.nodes = [n for n in nodes if id(n) not in removed]
        still_read = {i for n in graph.nodes for i in n.inputs} | {v.name for v in graph.outputs}
        for name in [k for k in inits if readers[k] and k not in still_read]:
            del inits[name]  # weights and statistics now read by no node
    return graph


def _fold_one(graph: Graph, readers: Counter, conv: Node, bn: Node):
    """The names of the folded (W, B) initialisers, added to the graph; None where the fold must not fire."""
    inits = graph.initializers
    if conv.op_type not in ("Conv", "ConvTranspose") or conv.domain not in DEFAULT_DOMAINS:
        return None
    if len(conv.outputs) != 1 or not _single_reader(graph, readers, conv.outputs[0]):
        return None
    if bn.attrs.get("training_mode", 0) or len([o for o in bn.outputs if o]) != 1 or len(bn.inputs) != 5:
        return None
    params = bn.inputs[1:]
    W_name = conv.inputs[1]
    B_name = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2] else None
    if not all(p in inits for p in params) or W_name not in inits or (B_name and B_name not in inits):
        return None
    W = inits[W_name]
    if W.dtype.kind != "f" or W.ndim < 3:
        return None
    group = int(conv.attrs.get("group", 1))
    C_out = W.shape[0] if conv.op_type == "Conv" else W.shape[1] * group
    scale, B_bn, mean, var = (inits[p] for p in params)
    if any(tuple(p.shape) != (C_out,) for p in (scale, B_bn, mean, var)):
        return None
    if B_name and tuple(inits[B_name].shape) != (C_out,):
        return None
    scale_c, bias_c = fold_statistics(scale, B_bn, mean, var, bn.attrs.get("epsilon", 1e-5), W.dtype)
    if conv.op_type == "Conv":  # W: (C_out, C_in/g, *k)
        W_folded = W * scale_c.reshape((C_out,) + (1,) * (W.ndim - 1))
    else:  # W: (C_in, C_out/g, *k); output channel of (input channel i, column j): (i // (C_in/g))·C_out/g + j
        C_in = W.shape[0]
        if C_in % group:
            return None
        grouped = W.reshape(group, C_in // group, W.shape[1], -1)  # (g, C_in/g, C_out/g, K)
        W_folded = (grouped * scale_c.reshape(group, 1, W.shape[1], 1)).reshape(W.shape)
    B = inits[B_name] if B_name else np.zeros(C_out, W.dtype)
    with np.errstate(all="ignore"):  # inf/NaN statistics give inf/NaN outputs, as unfolded
        B_folded = B.astype(W.dtype) * scale_c + bias_c
    W_new, B_new = f"{bn.outputs[0]}__folded_W", f"{bn.outputs[0]}__folded_B"  # output names are unique
    if W_new in inits or B_new in inits:
        return None
    inits[W_new] = np.ascontiguousarray(W_folded, dtype=W.dtype)
    inits[B_new] = np.ascontiguousarray(B_folded, dtype=W.dtype)
    return W_new, B_new


def pretranspose_constant_weights(graph: Graph, backend: str) -> Graph:
    """On CUDA, store a constant Gemm weight read with transB=1 as its (K, N) transpose once at load, so the
    kernels read it with consecutive threads on consecutive addresses. (The CPU's GEMM packs either layout.)"""
    if backend != "cuda":
        return graph
    readers = _readers(graph)
    for n in graph.nodes:
        if n.op_type not in ("Gemm", "FusedGemm") or not n.attrs.get("transB", 0):
            continue
        B = n.inputs[1]
        if B not in graph.initializers or graph.initializers[B].ndim != 2:
            continue
        name = f"{B}__transposed"
        graph.initializers[name] = np.ascontiguousarray(graph.initializers[B].T)  # (K, N)
        if readers[B] == 1:
            del graph.initializers[B]
        n.inputs = [n.inputs[0], name, *n.inputs[2:]]
        n.attrs = {**n.attrs, "transB": 0}
    return graph


def unit_stride_conv_transpose_as_conv(graph: Graph, backend: str) -> Graph:
    """On CUDA, a ConvTranspose of unit strides with constant weights and explicit pads is the Conv of its flipped,
    transposed weights (``runtime.ops.conv.flipped_transposed``, made once here) with pads (K−1)·d − pad at the
    beginning and (K−1)·d − pad + output_padding at the end (both ≥ 0, else no rewrite), and the same output: it
    then takes the Conv kernels (the implicit GEMM from 32 output channels per group), as DeconvNet's 3×3
    deconvolution layers do. The CPU backend makes the same choice at run time (``_transpose_as_conv``)."""
    if backend != "cuda":
        return graph
    readers = _readers(graph)
    inits = graph.initializers
    made: dict[str, np.ndarray] = {}  # the flipped weights this pass added, by name
    for n in graph.nodes:
        if n.op_type != "ConvTranspose" or n.domain not in DEFAULT_DOMAINS or len(n.inputs) < 2:
            continue
        W = inits.get(n.inputs[1])
        if W is None or W.dtype != np.float32 or W.ndim < 3 or not W.shape[0]:
            continue
        a, rank, kernel = n.attrs, W.ndim - 2, list(W.shape[2:])
        if (
            a.get("auto_pad", "NOTSET") != "NOTSET"
            or a.get("output_shape")
            or list(a.get("kernel_shape") or kernel) != kernel
        ):
            continue
        group = int(a.get("group", 1))
        strides, dilations = list(a.get("strides") or [1] * rank), list(a.get("dilations") or [1] * rank)
        pads, extra = list(a.get("pads") or [0] * 2 * rank), list(a.get("output_padding") or [0] * rank)
        if any(s != 1 for s in strides) or W.shape[0] % group or len(pads) != 2 * rank or len(extra) != rank:
            continue
        reach = [(k - 1) * d for k, d in zip(kernel, dilations)]  # (K−1)·d per axis
        conv_pads = [r - p for r, p in zip(reach, pads[:rank])] + [
            r - p + e for r, p, e in zip(reach, pads[rank:], extra)
        ]
        if min(conv_pads) < 0:
            continue
        name = f"{n.inputs[1]}__as_conv_{group}"
        if name in inits and name not in made:  # a name of the model's own: leave the node as it is
            continue
        if name not in made:
            inits[name] = made[name] = flipped_transposed(W, group)  # (C_out, C_in/g, *kernel)
        if readers[n.inputs[1]] == 1:
            del inits[n.inputs[1]]
        n.op_type, n.op = "Conv", OPS[("", "Conv")]
        n.inputs = [n.inputs[0], name, *n.inputs[2:]]
        n.attrs = {
            "dilations": dilations,
            "group": group,
            "kernel_shape": kernel,
            "pads": conv_pads,
            "strides": strides,
        }
    return graph


PASSES = (fold_batch_norm, unit_stride_conv_transpose_as_conv, fuse_activations, pretranspose_constant_weights)


def optimize(graph: Graph, backend: str) -> Graph:
    for rewrite in PASSES:
        graph = rewrite(graph, backend)
    return graph
