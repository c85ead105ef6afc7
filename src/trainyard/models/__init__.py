"""Models by name: the built-ins, text models, and any torchvision.models name."""

from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

from trainyard.config import ModelConfig, suggest
from trainyard.data import DataInfo
from trainyard.errors import ConfigError

Builder = Callable[[ModelConfig, DataInfo], nn.Module]

# name -> "module:function"; a module is imported only when one of its models is built.
MODELS: dict[str, str] = {
    "cnn": "trainyard.models.small:cnn",
    "mlp": "trainyard.models.small:mlp",
    "embedding_bag": "trainyard.models.text:embedding_bag",
    "gru": "trainyard.models.text:gru",
    "lstm": "trainyard.models.text:lstm",
    "transformer": "trainyard.models.text:transformer",
}


def build_model(cfg: ModelConfig, info: DataInfo) -> nn.Module:
    if cfg.name in MODELS:
        module, func = MODELS[cfg.name].split(":")
        return getattr(importlib.import_module(module), func)(cfg, info)
    try:
        from trainyard.models import vision
    except ImportError:
        vision = None
    if vision is not None and vision.is_torchvision_model(cfg.name):
        return vision.torchvision_model(cfg, info)
    known = list(MODELS) + (vision.torchvision_names() if vision is not None else [])
    raise ConfigError(f"model.name={cfg.name}: unknown model; built-ins: {', '.join(MODELS)}, or a torchvision.models name{suggest(cfg.name, known)}")
