"""Small built-in models. Both are ``nn.Sequential`` so model and pipeline parallelism can split them in order."""

from __future__ import annotations

import math

from torch import nn

from trainyard.config import ModelConfig
from trainyard.data import DataInfo
from trainyard.errors import ConfigError


def cnn(cfg: ModelConfig, info: DataInfo) -> nn.Sequential:
    """``depth`` blocks of conv3x3-BatchNorm-ReLU (with 2x2 max-pooling while the map is >= 4 pixels),
    then a small pooled map flattened into a linear classifier."""
    if info.kind != "image" or info.in_channels is None or info.image_size is None:
        raise ConfigError(f"model.name=cnn: needs image data, data.dataset gives {info.kind}")
    layers: list[nn.Module] = []
    channels, size = info.in_channels, min(info.image_size)
    for i in range(cfg.depth):
        out = cfg.width * 2**i
        block = [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if size >= 4:
            block.append(nn.MaxPool2d(2))
            size //= 2
        layers.append(nn.Sequential(*block))
        channels = out
    pooled = min(size, 4)
    head = [nn.AdaptiveAvgPool2d(pooled), nn.Flatten()]
    if cfg.dropout:
        head.append(nn.Dropout(cfg.dropout))
    head.append(nn.Linear(channels * pooled * pooled, info.outputs))
    layers.append(nn.Sequential(*head))
    return nn.Sequential(*layers)


def mlp(cfg: ModelConfig, info: DataInfo) -> nn.Sequential:
    """Flatten (images or feature vectors), ``depth`` hidden layers of ``width`` units with ReLU, a linear classifier."""
    if info.in_features is not None:
        features = info.in_features
    elif info.kind == "image" and info.in_channels is not None and info.image_size is not None:
        features = info.in_channels * math.prod(info.image_size)
    else:
        raise ConfigError(f"model.name=mlp: needs fixed-size inputs (images or feature vectors), data.dataset gives {info.kind}")
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(cfg.depth):
        layers += [nn.Linear(features, cfg.width), nn.ReLU(inplace=True)]
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        features = cfg.width
    layers.append(nn.Linear(features, info.outputs))
    return nn.Sequential(*layers)
