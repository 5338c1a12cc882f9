"""onnx's official node tests (``onnx.backend.test.BackendTest``, built in memory) for every op this runtime
claims, on the CPU backend and, under the CUDA marker, on the CUDA backend (the simulator in ``make test``).

Every excluded test is listed below with the reason. The pass counts per backend are in the README."""

from __future__ import annotations

import re

import onnx.backend.test
import pytest

import runtime
from runtime.onnx_backend import ZooBackend

# test name (without the _cpu / _cuda suffix) -> why this runtime does not run it
EXCLUDED = {
    "test_identity_opt": "optional-typed inputs: the runtime takes tensors only",
    "test_identity_sequence": "sequence-typed inputs: the runtime takes tensors only",
    "test_log_softmax_dim3": "a PyTorch-converted model at opset 6, below the supported 7",
    "test_log_softmax_lastdim": "a PyTorch-converted model at opset 6, below the supported 7",
    "test_softmax_functional_dim3": "a PyTorch-converted model at opset 6, below the supported 7",
    "test_softmax_lastdim": "a PyTorch-converted model at opset 6, below the supported 7",
    "test_maxunpool_export_with_output_shape": (
        "the spec's own expected output places the block top-left; onnxruntime scatters the global indices "
        "into the flattened output, and this runtime follows onnxruntime"
    ),
}
# patterns of tests outside what the runtime claims, with the reason
EXCLUDED_PATTERNS = {
    r"^test_(max|average)pool_3d": "3-D pooling is not supported (2-D and 1-D are)",
    r"^test_batchnorm_.*training_mode": "BatchNormalization in training mode is refused (inference runtime)",
    r"^test_squeezenet": "a whole model with ops this runtime does not claim",
}


def _prefixes(op: str) -> set[str]:
    """The official tests name an op in snake case (log_softmax) or in one lower-case word (maxpool)."""
    names = {re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower(), op.lower()}
    return names | ({"batchnorm"} if op == "BatchNormalization" else set())


def _claimed_ops() -> list[str]:
    return [op for op in runtime.supported_ops("cpu") if "." not in op]


def _excluded_reason(name: str) -> str | None:
    base = re.sub(r"_(cpu|cuda)$", "", name)
    if base in EXCLUDED:
        return EXCLUDED[base]
    for pattern, reason in EXCLUDED_PATTERNS.items():
        if re.search(pattern, base):
            return reason
    return None


# official test-name prefixes that belong to another op than the one they start like
OTHER_OPS = r"^test_(gather_elements|gather_nd|softmax_cross_entropy|reshape_like|shape_start|shape_end)"


def _collect():
    patterns = [re.compile(rf"^test_{name}(_.*)?_(cpu|cuda)$") for op in _claimed_ops() for name in _prefixes(op)]
    suite = onnx.backend.test.BackendTest(ZooBackend, __name__)
    for p in patterns:
        suite.include(p.pattern)
    cases = []
    for case_class in suite.test_cases.values():
        for name in dir(case_class):
            if any(p.match(name) for p in patterns) and not re.match(OTHER_OPS, name):
                cases.append((case_class, name))
    return sorted(cases, key=lambda c: c[1])


CASES = _collect()


def _param(case_class, name):
    marks = [pytest.mark.cuda] if name.endswith("_cuda") else []
    reason = _excluded_reason(name)
    if reason:
        marks.append(pytest.mark.skip(reason=f"excluded: {reason}"))
    return pytest.param(case_class, name, id=name, marks=marks)


@pytest.mark.parametrize("case_class, name", [_param(*c) for c in CASES])
def test_onnx_node_test(case_class, name):
    case = case_class(name)
    result = case.defaultTestResult()
    case.run(result)
    if result.skipped:
        pytest.skip(result.skipped[0][1])
    problems = result.failures + result.errors
    last_line = problems[0][1].strip().splitlines()[-1] if problems else ""
    if re.search(r"_expanded(_ver\d+)?_(cpu|cuda)$", name) and "is not implemented by the" in last_line:
        # a function-expanded variant: it runs when every op of the expansion is one this runtime claims
        missing = last_line.split(": op ")[-1].split(" is not implemented")[0]
        pytest.skip(f"excluded: the expansion uses {missing}, an op this runtime does not claim")
    assert not problems, last_line


def test_every_claimed_op_has_official_tests():
    names = {n for _, n in CASES}
    untested = [
        op for op in _claimed_ops() if not any(n.startswith(f"test_{p}_") for n in names for p in _prefixes(op))
    ]
    assert untested == [], f"claimed ops with no official node test run here: {untested}"
