"""Deconv Zoo, the PyTorch side: the lecture's models, registered by name, with their data, training,
evaluation and ONNX export.

    import zoo
    zoo.list_models()                      # ['sparse-ae', 'sparse-ae-digits8', ...]
    model = zoo.create_model("sparse-ae", hidden=100)

Importing ``zoo`` does not import torch; the model files are imported on first use of the registry.
"""

from zoo.errors import ZooError
from zoo.registry import create_model, get_model_entry, list_models, register_model

__all__ = ["ZooError", "create_model", "get_model_entry", "list_models", "register_model"]
