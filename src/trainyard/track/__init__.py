"""Trackers: TensorBoard, metrics.jsonl, W&B behind one interface. Only the primary process builds them."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from trainyard.config import RunConfig, suggest
from trainyard.errors import ConfigError

# backend name -> "module:class"
BACKENDS: dict[str, str] = {
    "tensorboard": "trainyard.track.tensorboard:TensorBoardTracker",
    "wandb": "trainyard.track.wandb:WandbTracker",
}


class Tracker:
    """Every method is a no-op here; backends override what they support."""

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        """Scalars at one point, e.g. ``{"train/loss": 0.3, "lr": 1e-3}``."""

    def log_groups(self, groups: Mapping[str, Mapping[str, float]], step: int) -> None:
        """Grouped scalars (``add_scalars``): ``{"loss": {"train": 0.3, "val": 0.4}}``."""

    def log_histograms(self, model: nn.Module, step: int) -> None:
        """Weight and gradient histograms."""

    def watch(self, model: nn.Module) -> None:
        """Called once before the first step: a backend may hook the model (e.g. sparse gradient logging)."""

    def log_graph(self, model: nn.Module, example: Any) -> None:
        """The model graph; never raises."""

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """One CHW float image in [0, 1] (e.g. a grid)."""

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        """A matplotlib figure."""

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Hyperparameters with the run's final metrics."""

    def close(self, status: str) -> None:
        """``status``: finished, failed or interrupted."""


class Trackers(Tracker):
    """Fans every call out to several trackers."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def _each(self, method: str, *args: Any) -> None:
        for t in self.trackers:
            getattr(t, method)(*args)

    def log_metrics(self, metrics, step, epoch):
        self._each("log_metrics", metrics, step, epoch)

    def log_groups(self, groups, step):
        self._each("log_groups", groups, step)

    def log_histograms(self, model, step):
        self._each("log_histograms", model, step)

    def watch(self, model):
        self._each("watch", model)

    def log_graph(self, model, example):
        self._each("log_graph", model, example)

    def log_image(self, tag, image, step):
        self._each("log_image", tag, image, step)

    def log_figure(self, tag, figure, step):
        self._each("log_figure", tag, figure, step)
        import matplotlib.pyplot as plt

        plt.close(figure)  # every backend has rendered it

    def log_hparams(self, hparams, metrics):
        self._each("log_hparams", hparams, metrics)

    def close(self, status):
        self._each("close", status)


def check_backends(names: list) -> None:
    for name in names:
        if name not in BACKENDS:
            raise ConfigError(f"track.backends: unknown backend {name!r}; allowed: {', '.join(BACKENDS)}{suggest(str(name), BACKENDS)}")
    if "wandb" in names:
        from trainyard.track.wandb import import_wandb

        import_wandb()  # an optional extra: fail before anything runs, with the install command


def build_trackers(cfg: RunConfig, run_dir: Path, *, resume_step: int | None = None) -> Tracker:
    """The trackers of the primary process. metrics.jsonl and media/*.png (for reports) are always written."""
    from trainyard.track.jsonl import JsonlTracker
    from trainyard.track.media import MediaTracker

    check_backends(cfg.track.backends)
    trackers: list[Tracker] = [JsonlTracker(run_dir), MediaTracker(run_dir)]
    for name in cfg.track.backends:
        module, cls = BACKENDS[name].split(":")
        trackers.append(getattr(importlib.import_module(module), cls)(cfg, run_dir, resume_step=resume_step))
    return Trackers(trackers)
