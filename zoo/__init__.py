"""Deconv Zoo, the PyTorch side: the lecture's models, registered by name, with their data, training,
evaluation and ONNX export.

    import zoo
    zoo.list_models()                      # ['cgen-mnist', 'dcgan-64', ...]
    zoo.list_models("dcgan*")              # ['dcgan-64', 'dcgan-mnist', 'dcgan-mnist-no-phases']
    model = zoo.create_model("sparse-ae", hidden=100)   # random weights, a config of your own
    model = zoo.create_model("dcgan-mnist", pretrained=True)   # the shipped weights (weights/)

Importing ``zoo`` does not import torch; the model files are imported on first use of the factory.
"""

from zoo.builder import get_model_entry
from zoo.config import TrainConfig
from zoo.errors import ZooError
from zoo.factory import Weights, create_model, list_models, pretrained_weights
from zoo.registry import register_model

__all__ = [
    "TrainConfig",
    "Weights",
    "ZooError",
    "create_model",
    "get_model_entry",
    "list_models",
    "pretrained_weights",
    "register_model",
]
