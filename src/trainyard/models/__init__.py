"""Models by name or import path: the built-ins, text models, any torchvision.models name, or the user's
own ``package.module:Class`` (an ``nn.Module`` class or a function returning one) with ``model.args``.

A constructor gets ``model.args`` plus the data's facts its signature names (``num_classes``,
``num_outputs``, ``in_channels``, ``in_features``, ``image_size``, ``vocab_size``, ``pad_id``; ``cfg`` is
the model config and ``info`` the whole :class:`~trainyard.data.DataInfo`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainyard.config import ModelConfig
from trainyard.data import DataInfo
from trainyard.errors import ConfigError
from trainyard.registry import Registry, call_with


def _torchvision(name: str) -> Any:
    try:
        from trainyard.models import vision
    except ImportError:
        return None
    return vision.torchvision_model if vision.is_torchvision_model(name) else None


def _torchvision_names() -> list[str]:
    try:
        from trainyard.models import vision
    except ImportError:
        return []
    return vision.torchvision_names()


MODELS = Registry("model", "model.name", fallback=_torchvision, fallback_names=_torchvision_names)
MODELS.fallback_help = "or a torchvision.models name"
MODELS.register("cnn", "trainyard.models.small:cnn", "conv blocks and a linear head (images)")
MODELS.register("mlp", "trainyard.models.small:mlp", "hidden layers of model.width (images or feature vectors)")
MODELS.register("embedding_bag", "trainyard.models.text:embedding_bag", "fastText-like mean of token embeddings")
MODELS.register("gru", "trainyard.models.text:gru", "a GRU over packed token sequences")
MODELS.register("lstm", "trainyard.models.text:lstm", "an LSTM over packed token sequences")
MODELS.register("transformer", "trainyard.models.text:transformer", "a transformer encoder with a padding mask")


def build_model(cfg: ModelConfig, info: DataInfo) -> nn.Module:
    factory = MODELS.get(cfg.name)
    if isinstance(factory, nn.Module):
        return factory  # an instance, from Python
    if not callable(factory):
        raise ConfigError(f"model.name={cfg.name}: {type(factory).__name__} is not a class or function")
    key = "model.args" if cfg.args else f"model.name={cfg.name}"
    model = call_with(factory, key, cfg.args, {"cfg": cfg, "info": info, **info.facts()})
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name={cfg.name}: returned {type(model).__name__}, expected a torch.nn.Module")
    return model
