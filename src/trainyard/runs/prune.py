"""Pruning a sweep's trials: a callback that reports the monitored validation metric to the study after each
validation and stops a trial the study's pruner (median, hyperband) finds behind, by raising
:class:`trainyard.errors.Pruned` (the run's status then says ``pruned``, and ``trainyard train`` exits 4)."""

from __future__ import annotations

import math
from typing import Any

from trainyard.engine.callbacks import Callback
from trainyard.errors import ConfigError, Pruned

PRUNERS = ("median", "hyperband")


def build_pruner(name: str | None, epochs: int) -> Any:
    """The Optuna pruner ``--prune NAME`` means; None: no pruning."""
    import optuna

    if name is None:
        return optuna.pruners.NopPruner()
    if name == "median":  # compared from the 2nd epoch on (steps below n_warmup_steps are not), once 4 trials have reported
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    raise ConfigError(f"--prune {name}: not a pruner; pruners: {', '.join(PRUNERS)}")


class PruneSetupError(ConfigError):
    """``--prune`` on a run that has nothing to compare by: the sweep stops (exit 2) rather than fail every trial."""


class PruneCallback(Callback):
    """Reports ``trainer.monitor`` at each epoch's validation as the trial's intermediate value (step = the
    epoch, from 1) and raises :class:`Pruned` when the pruner says so. Only the primary process reports."""

    def __init__(self, trial: Any):
        self.trial = trial  # an optuna.Trial

    def on_run_start(self, trainer: Any) -> None:
        if trainer.val_loader is None or not str(trainer.monitor).startswith("val/"):
            raise PruneSetupError(
                f"--prune: needs a validation split and a val/ metric to compare trials by; this run monitors {trainer.monitor} "
                "(set data.val_fraction above 0, or trainer.monitor to a val/ metric)"
            )

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if not trainer.is_primary:
            return
        value = metrics.get(trainer.monitor)
        if value is None or not math.isfinite(value):
            return  # a non-finite value is the divergence check's to handle
        epoch = trainer.epoch + 1
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            raise Pruned(f"pruned after epoch {epoch}: {trainer.monitor} {value:.4g} is behind the sweep's other trials at that epoch")
