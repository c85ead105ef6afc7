"""Datasets by name. Each builder turns the run config into a :class:`DataBundle`."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
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
    save_artifacts: Callable[[Path], None] | None = None  # writes what evaluation needs (tokenizer, label map) into the run folder


# name -> "module:function"; modules are imported only when their dataset is used.
DATASETS: dict[str, str] = {
    "digits": "trainyard.data.vision:digits",
    "mnist": "trainyard.data.vision:mnist",
    "fashion_mnist": "trainyard.data.vision:fashion_mnist",
    "cifar10": "trainyard.data.vision:cifar10",
    "cifar100": "trainyard.data.vision:cifar100",
    "image_folder": "trainyard.data.vision:image_folder",
    "text": "trainyard.data.text:text",
}


def build_data(cfg: RunConfig, run_dir: Path | None = None) -> DataBundle:
    """``run_dir``: the folder of a run being resumed. A builder that takes a ``run_dir`` argument reuses what its
    ``save_artifacts`` wrote there (a trained tokenizer, a label map), so ids match the checkpoint."""
    name = cfg.data.dataset
    if name not in DATASETS:
        raise ConfigError(f"data.dataset={name}: unknown dataset; allowed: {', '.join(sorted(DATASETS))}{suggest(name, DATASETS)}")
    module, func = DATASETS[name].split(":")
    builder = getattr(importlib.import_module(module), func)
    if run_dir is not None and "run_dir" in inspect.signature(builder).parameters:
        return builder(cfg, run_dir=Path(run_dir))
    return builder(cfg)
