"""The runtime's own exception types: every refusal names the thing that was wrong and what was expected."""


class ZooRuntimeError(Exception):
    """Base of every error the runtime raises on purpose."""


class InvalidModel(ZooRuntimeError, ValueError):
    """The ONNX file cannot be loaded or is not a well-formed graph."""


class UnsupportedOp(InvalidModel):
    """The graph uses an operator (or an attribute of one) that this runtime does not implement."""


class InvalidFeed(ZooRuntimeError, ValueError):
    """An input given to InferenceSession.run does not match the graph's declared inputs."""


class BackendUnavailable(ZooRuntimeError):
    """The requested backend cannot run on this machine."""
