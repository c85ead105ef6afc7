"""Evaluation: loss and accuracy through torchmetrics (reduced across ranks), and what the trackers show."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader

from trainyard.parallel import Strategy


@dataclass
class EvalResult:
    metrics: dict[str, float]
    confusion: torch.Tensor | None = None
    wrong_images: list[torch.Tensor] = field(default_factory=list)
    wrong_titles: list[str] = field(default_factory=list)


def move(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(v, device) for v in batch)
    return batch


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    strategy: Strategy,
    *,
    prefix: str,
    num_classes: int,
    loss_fn: Callable,
    autocast: Callable[[], AbstractContextManager],
    confusion: bool = False,
    classes: list[str] | None = None,
    keep_wrong: int = 0,
) -> EvalResult:
    """Every sample of ``loader`` counts once (each rank sees its own shard); metrics are synced at compute()."""
    device = strategy.device
    loss_metric = torchmetrics.MeanMetric().to(device)
    acc_metric = torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, average="micro").to(device)
    cm_metric = torchmetrics.classification.MulticlassConfusionMatrix(num_classes=num_classes).to(device) if confusion else None
    wrong_images: list[torch.Tensor] = []
    wrong_titles: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for x, y in loader:
            x = move(x, device)
            with autocast():
                logits = strategy.predict(model, x)
            if logits is None:  # a pipeline stage that holds no output
                continue
            y = y.to(logits.device, non_blocking=True)
            logits = logits.float()
            loss_metric.update(loss_fn(logits, y), weight=len(y))
            preds = logits.max(1).indices  # = argmax(1), faster on CPU
            acc_metric.update(preds, y)
            if cm_metric is not None:
                cm_metric.update(preds, y)
            if keep_wrong and len(wrong_images) < keep_wrong and isinstance(x, torch.Tensor) and x.dim() == 4:
                for i in torch.nonzero(preds != y).flatten().tolist()[: keep_wrong - len(wrong_images)]:
                    wrong_images.append(x[i].cpu())
                    p, t = int(preds[i]), int(y[i])
                    names = classes or [str(c) for c in range(num_classes)]
                    wrong_titles.append(f"pred {names[p]} / true {names[t]}")
    finally:
        model.train(was_training)
    metrics = {f"{prefix}/loss": float(loss_metric.compute()), f"{prefix}/accuracy": float(acc_metric.compute())}
    return EvalResult(metrics, cm_metric.compute().cpu() if cm_metric is not None else None, wrong_images, wrong_titles)
