"""Evaluation: the task's loss and metrics through torchmetrics (reduced across ranks at compute()), and
what the test split collects for pictures."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torchmetrics
from torch import nn

from trainyard.devices import move
from trainyard.parallel import Strategy
from trainyard.tasks import Task, interval_entries, output_logits


@dataclass
class EvalResult:
    metrics: dict[str, float]
    collector: Any = None  # what the task collected for pictures (confusion matrix, predictions), reduced


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Any,
    strategy: Strategy,
    *,
    prefix: str,
    task: Task,
    autocast: Callable[[], AbstractContextManager],
    collector: Any = None,
    interval: bool | None = None,
) -> EvalResult:
    """Every sample of ``loader`` counts once (each rank sees its own shard); metrics are synced at compute().
    ``collector`` (from ``task.collector``) sees every batch and is reduced over ranks at the end (collective).
    ``interval`` (default: on the test split): a task's ``share_metric`` (accuracy) also gets the samples it
    counted and its Wilson 95% interval, ``<prefix>/accuracy/correct``, ``/count``, ``/low``, ``/high``; from
    the same totals as training's (``task.train_stat``), summed on the device and read with the metrics."""
    device = strategy.device
    # The loss as a sum over samples and their count: a nan batch makes the mean nan, never dropped unseen
    # (MeanMetric drops nan with a warning, and with nan_strategy=disable it ignores the weights).
    loss_sum = torchmetrics.SumMetric(nan_strategy="disable").to(device)
    loss_count = torchmetrics.SumMetric().to(device)
    metrics = task.build_metrics(device)
    criterion = task.criterion
    was_training = model.training
    model.eval()
    saw_output = saw_logits = False
    share = task.share_metric if (prefix == "test" if interval is None else interval) else None
    share = share if share in metrics else None  # the task's own metric, not one task.metrics left out
    right: torch.Tensor | None = None  # samples predicted right, summed where the outputs are (no sync)
    counted = 0
    try:
        for x, y in loader:
            x = move(x, device)
            with autocast():
                out = strategy.predict(model, x)
            if out is None:  # a pipeline stage that holds no output
                continue
            logits = output_logits(out)
            saw_output, saw_logits = True, saw_logits or logits is not None
            y = y.to((logits if logits is not None else loss_sum.sum_value).device, non_blocking=True)
            if logits is not None:
                logits = logits.float()
            # a plain tensor is the logits (in float32 for the loss); anything else may hold the model's own loss
            plain = out.__class__ is torch.Tensor and logits is not None
            loss_sum.update(criterion(logits if plain else out, y).float() * len(y))
            loss_count.update(float(len(y)))
            if logits is not None:
                if metrics:
                    preds, target = task.metric_inputs(logits, y)
                    for metric in metrics.values():
                        metric.update(preds, target)
                if share is not None:
                    good, n = task.train_stat(logits, y)
                    right = good if right is None else right + good.to(right.device)
                    counted += n
                if collector is not None:
                    collector.update(x, logits, y)
    finally:
        model.train(was_training)
    count = float(loss_count.compute())
    values = {f"{prefix}/loss": float(loss_sum.compute()) / count if count else float("nan")}
    if saw_output and not saw_logits:
        metrics = {}  # the model returns only its loss: nothing to score (every rank alike, so no collective is skipped on one alone)
    for name, metric in metrics.items():
        value = metric.compute()
        if isinstance(value, torch.Tensor) and value.numel() > 1:  # average="none": one value per class
            for i, v in enumerate(value.flatten().tolist()):
                values[f"{prefix}/{name}/{i}"] = float(v)
        elif isinstance(value, dict):
            values.update({f"{prefix}/{name}/{k}": float(v) for k, v in value.items()})
        else:
            values[f"{prefix}/{name}"] = float(value)
    if share is not None and f"{prefix}/{share}" in values:  # every rank alike: the reduction is collective
        good = right.to(device, torch.long) if right is not None else torch.zeros((), dtype=torch.long, device=device)
        totals = strategy.all_reduce_sum(torch.stack([good.reshape(()), torch.tensor(counted, dtype=torch.long, device=device)]))
        good, n = totals.tolist()  # sync point: once per evaluation, with the metrics
        # the interval is of what the metric reports: a macro average or a top-k accuracy is another quantity
        if n and abs(good / n - values[f"{prefix}/{share}"]) < 1e-4:
            values.update(interval_entries(prefix, share, good, n))
    if collector is not None:
        collector.reduce(strategy)
    return EvalResult(values, collector)
