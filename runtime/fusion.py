"""Graph rewrites applied at load time. Each keeps the graph's values and names; it only lets one kernel do
the work of several nodes.

- Gemm followed by Sigmoid, Relu or Tanh becomes one FusedGemm (the name of onnxruntime's contrib op of the
  same meaning): the bias and the activation are applied in the GEMM's epilogue. The sparse autoencoder's
  forward pass, Gemm→Sigmoid→Gemm→Sigmoid, becomes two FusedGemm nodes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from runtime.graph import Graph, Node
from runtime.ops import OPS
from runtime.ops.gemm import FUSED_DOMAIN

FUSABLE_ACTIVATIONS = ("Sigmoid", "Relu", "Tanh")


def fuse_gemm_activation(graph: Graph, backend: str) -> Graph:
    fused_op = OPS[(FUSED_DOMAIN, "FusedGemm")]
    if backend not in fused_op.impl:
        return graph
    readers = Counter(i for n in graph.nodes for i in n.inputs if i)
    graph_outputs = {v.name for v in graph.outputs}
    by_input = {}
    for n in graph.nodes:
        if n.op_type in FUSABLE_ACTIVATIONS and n.domain in ("", "ai.onnx"):
            by_input[n.inputs[0]] = n
    nodes, absorbed = [], set()
    for n in graph.nodes:
        if id(n) in absorbed:
            continue
        act = by_input.get(n.outputs[0]) if n.op_type == "Gemm" and n.domain in ("", "ai.onnx") else None
        if act is None or readers[n.outputs[0]] != 1 or n.outputs[0] in graph_outputs:
            nodes.append(n)
            continue
        absorbed.add(id(act))
        nodes.append(
            Node(
                name=f"{n.name}+{act.name}",
                op_type="FusedGemm",
                domain=FUSED_DOMAIN,
                inputs=n.inputs,
                outputs=act.outputs,
                attrs={**n.attrs, "activation": act.op_type},
                op=fused_op,
            )
        )
    graph.nodes = nodes
    return graph


def pretranspose_constant_weights(graph: Graph, backend: str) -> Graph:
    """On CUDA, store a constant Gemm weight read with transB=1 as its (K, N) transpose once at load, so the
    kernels read it with consecutive threads on consecutive addresses. (BLAS takes either layout: CPU unchanged.)"""
    if backend != "cuda":
        return graph
    readers = Counter(i for n in graph.nodes for i in n.inputs if i)
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


PASSES = (fuse_gemm_activation, pretranspose_constant_weights)


def optimize(graph: Graph, backend: str) -> Graph:
    for rewrite in PASSES:
        graph = rewrite(graph, backend)
    return graph
