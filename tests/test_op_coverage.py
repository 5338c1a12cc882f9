"""Every op the runtime registers is run against onnxruntime by some test case, on each backend: adding an op
without its test cases fails here. The cases live in test_ops.py and test_ops_nn.py (one-node graphs, the
op_types the loaded graph runs), test_unpool.py (MaxUnpool), test_fusion.py (fused ops) and test_conv.py
(convolutions)."""

from __future__ import annotations

import pytest

import runtime
from tests import test_conv, test_fusion, test_ops, test_ops_nn, test_unpool

CASE_LISTS = (test_ops.CASES, test_ops_nn.CASES, test_unpool.CASES, test_fusion.CASES)


def _op_names(backend: str) -> set[str]:
    return {op.rsplit(".", 1)[-1] for op in runtime.supported_ops(backend)}  # "ai.deconvzoo.FusedGemm" too


def _covered(cuda: bool) -> set[str]:
    ran = {
        t
        for cases in CASE_LISTS
        for c in cases
        if not (cuda and (c.cpu_only or getattr(c, "large", False)))
        for t in c.nodes
    }
    conv = test_conv.CUDA_CASES if cuda else test_conv.OFFICIAL
    return ran | {case[0] if cuda else case[1] for case in conv}


def test_every_registered_op_runs_in_a_case():
    assert _op_names("cpu") - _covered(cuda=False) == set(), "registered ops that no test case runs"


@pytest.mark.cuda
def test_every_cuda_op_runs_in_a_cuda_case():
    assert _op_names("cuda") == _op_names("cpu"), "the cuda backend implements a different set of ops"
    assert _op_names("cuda") - _covered(cuda=True) == set(), "cuda ops that no simulator-sized cuda case runs"
