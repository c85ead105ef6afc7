"""Datasets by name. Each builder turns the run config into a :class:`DataBundle`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch.utils.data import Dataset

from trainyard.config import RunConfig, suggest
from trainyard.errors import ConfigError


@dataclass
class DataInfo:
    """What the model and the trackers need to know about the data."""

    kind: str  # "image" or "text"
    num_classes: int
    classes: list[str]
    in_channels: int | None = None
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None  # per channel, after scaling to [0, 1]
    std: tuple[float, ...] | None = None
    vocab_size: int | None = None
    pad_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataBundle:
    """The splits of one dataset. val and test may be None when the dataset has none and no split was asked for."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    info: DataInfo
    collate_fn: Callable | None = None  # a dataset-required collate (text); loader.collate overrides
    train_labels: Any = None  # labels of the training split, for samplers and checks (optional)


# name -> "module:function"; modules are imported only when their dataset is used.
DATASETS: dict[str, str] = {
    "digits": "trainyard.data.vision:digits",
    "mnist": "trainyard.data.vision:mnist",
    "fashion_mnist": "trainyard.data.vision:fashion_mnist",
    "cifar10": "trainyard.data.vision:cifar10",
    "cifar100": "trainyard.data.vision:cifar100",
    "image_folder": "trainyard.data.vision:image_folder",
}


def build_data(cfg: RunConfig) -> DataBundle:
    name = cfg.data.dataset
    if name not in DATASETS:
        raise ConfigError(f"data.dataset={name}: unknown dataset; allowed: {', '.join(sorted(DATASETS))}{suggest(name, DATASETS)}")
    module, func = DATASETS[name].split(":")
    builder = getattr(importlib.import_module(module), func)
    return builder(cfg)
