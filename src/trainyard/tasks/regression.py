"""Regression: real-valued targets (a number or a vector per sample)."""

from __future__ import annotations

import math
from typing import Any

import torch

from trainyard.tasks import Task

MAX_POINTS = 2000  # test predictions kept for the predicted-against-true plot


class Regression(Task):
    """Real-valued targets; the model outputs one value per target element."""

    name = "regression"
    default_loss = "MSELoss"
    monitor = "val/loss"
    monitor_mode = "min"
    train_metric = "mae"  # the mean absolute error of the training predictions
    figures = True

    def num_outputs(self) -> int | None:
        return math.prod(self.info.target_shape) if self.info.target_shape else 1

    def adapt(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if out.shape != y.shape:
            out = out.reshape(y.shape)  # (batch, 1) predictions for (batch,) targets
        if y.dtype != out.dtype:
            y = y.to(out.dtype)
        return out, y

    def check_output(self, out: torch.Tensor, y: torch.Tensor) -> str | None:
        if out.numel() != y.numel() or out.shape[0] != y.shape[0]:
            return f"output {tuple(out.shape)} for targets {tuple(y.shape)}: task=regression needs one value per target, {tuple(y.shape)}"
        return None

    def check_targets(self, targets: torch.Tensor, where: str) -> None:
        from trainyard.errors import DataError

        t = targets.float()
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise DataError(
                f"{where}: {bad} of {t.numel()} target values are NaN or infinite; drop or impute those samples (one makes the loss NaN)"
            )

    def train_stat(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        targets = targets.to(outputs.device)
        return outputs.reshape(targets.shape).float().sub_(targets).abs_().sum(), targets.numel()

    def default_metrics(self):
        from torchmetrics import MeanAbsoluteError, MeanSquaredError

        return [("mae", MeanAbsoluteError, {}), ("mse", MeanSquaredError, {})]

    def metric_inputs(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return out.float().reshape(y.shape), y.float()

    def collector(self, keep_wrong: int) -> Any:
        return PredictionCollector()


class PredictionCollector:
    """Up to MAX_POINTS (predicted, true) values of the test split, for the plot."""

    def __init__(self):
        self.pred: list[torch.Tensor] = []
        self.true: list[torch.Tensor] = []
        self.count = 0

    def update(self, x: Any, out: torch.Tensor, y: torch.Tensor) -> None:
        if self.count >= MAX_POINTS:
            return
        p, t = out.detach().float().reshape(y.shape).cpu(), y.detach().float().cpu()
        self.pred.append(p.reshape(len(y), -1)[:, 0])
        self.true.append(t.reshape(len(y), -1)[:, 0])
        self.count += len(y)

    def reduce(self, strategy: Any) -> None:
        """The primary's own shard is plot enough: no gather."""

    def pictures(self) -> list[tuple[str, str, dict]]:
        if not self.pred:
            return []
        return [
            ("test/predictions", "predictions", {"predicted": torch.cat(self.pred)[:MAX_POINTS], "true": torch.cat(self.true)[:MAX_POINTS]})
        ]
