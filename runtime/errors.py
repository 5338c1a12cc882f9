"""The runtime's own exception types: every refusal names the thing that was wrong and what was expected."""

# Control characters written as escapes: names read from a hostile file cannot break a message's single line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


class ZooRuntimeError(Exception):
    """Base of every error the runtime raises on purpose; its message is always one line."""

    def __init__(self, message="", *args):
        super().__init__(str(message).translate(_ESCAPES), *args)


class InvalidModel(ZooRuntimeError, ValueError):
    """The ONNX file cannot be loaded or is not a well-formed graph."""


class UnsupportedOp(InvalidModel):
    """The graph uses an operator (or an attribute of one) that this runtime does not implement."""


class InvalidFeed(ZooRuntimeError, ValueError):
    """An input given to InferenceSession.run does not match the graph's declared inputs."""


class BackendUnavailable(ZooRuntimeError):
    """The requested backend cannot run on this machine."""


class InvalidOption(ZooRuntimeError, ValueError):
    """A session or provider option (``providers=``, ``provider_options=``, ``backend=``) that cannot be honoured."""


class MissingConfigEntry(ZooRuntimeError, RuntimeError):
    """``get_session_config_entry`` / ``get_run_config_entry`` of a key never added (RuntimeError, as onnxruntime)."""
