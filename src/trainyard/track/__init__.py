"""Trackers: TensorBoard, metrics.jsonl, W&B behind one interface. Only the primary process builds them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from trainyard.config import RunConfig, suggest
from trainyard.errors import ConfigError
from trainyard.registry import Registry, is_import_path

FLUSH_SECS = 10  # at most this long between a logged value and its appearance on disk (SummaryWriter's default: 120)

# track.backends: these names, or the import path of a Tracker subclass of the user's, built as cls(cfg, run_dir, resume_step=...)
BACKENDS = Registry("tracker", "track.backends")
BACKENDS.register("tensorboard", "trainyard.track.tensorboard:TensorBoardTracker", "event files for TensorBoard")
BACKENDS.register("wandb", "trainyard.track.wandb:WandbTracker", "Weights & Biases (extra: pip install 'trainyard[wandb]')")


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

    def flush(self) -> None:
        """Put everything logged so far on disk (the trainer calls it at each epoch end)."""

    def close(self, status: str) -> None:
        """``status``: finished, failed or interrupted."""


class Trackers(Tracker):
    """Fans every call out to several trackers.

    Scalars are held and handed on together (when ``hold_secs`` have passed, before any other call so every
    backend sees the calls in order, at ``flush()`` and ``close()``): backend code run in a batch stays in cache,
    one point at a time between the model's steps does not. A held point is the caller's dict itself: callers
    pass a fresh one each time (the trainer does)."""

    def __init__(self, trackers: list[Tracker], hold_secs: float = FLUSH_SECS):
        self.trackers = trackers
        self.hold_secs = hold_secs
        self._held: list[tuple[Mapping[str, float], int, int]] = []
        self._hand_on_at = time.monotonic() + hold_secs

    def _hand_on(self) -> None:
        held, self._held = self._held, []
        for t in self.trackers:
            for metrics, step, epoch in held:
                t.log_metrics(metrics, step, epoch)
        self._hand_on_at = time.monotonic() + self.hold_secs

    def _each(self, method: str, *args: Any) -> None:
        if self._held:
            self._hand_on()
        for t in self.trackers:
            getattr(t, method)(*args)

    def log_metrics(self, metrics, step, epoch):
        self._held.append((metrics, step, epoch))
        if time.monotonic() >= self._hand_on_at:
            self.flush()  # hands the held points on, then each backend flushes

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

    def flush(self):
        self._each("flush")

    def close(self, status):
        self._each("close", status)


def check_backends(names: list) -> None:
    for name in names:
        if name not in BACKENDS and not is_import_path(name):
            raise ConfigError(
                f"track.backends: unknown backend {name!r}; allowed: {', '.join(BACKENDS)}, or the import path of a Tracker "
                f"subclass{suggest(str(name), BACKENDS)}"
            )
        if name not in BACKENDS:
            cls = BACKENDS.resolve(name, key=f"track.backends: {name}")
            if not (isinstance(cls, type) and issubclass(cls, Tracker)):
                raise ConfigError(f"track.backends: {name} is not a trainyard.track.Tracker subclass")
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
        trackers.append(BACKENDS.resolve(name, key=f"track.backends: {name}")(cfg, run_dir, resume_step=resume_step))
    return Trackers(trackers)
