"""Classification tasks: one class per sample, a yes/no target, or a 0/1 vector of labels."""

from __future__ import annotations

import heapq
import random
from typing import Any

import torch

from trainyard.errors import DataError
from trainyard.tasks import Task


def _example(targets: torch.Tensor) -> str:
    v = targets.flatten()[:1]
    return f"{v.item():g}" if v.numel() else "none"


class Classification(Task):
    """One class id in [0, num_classes) per sample; the model outputs (batch, num_classes) logits."""

    name = "classification"
    targets = "class"
    default_loss = "CrossEntropyLoss"
    monitor = "val/accuracy"
    monitor_mode = "max"
    train_metric = "accuracy"
    stat_dtype = torch.long
    figures = True
    share_metric = "accuracy"  # train_stat counts the samples predicted right: the test split gets its interval

    def num_outputs(self) -> int | None:
        return self.info.num_classes

    def check_output(self, out: torch.Tensor, y: torch.Tensor) -> str | None:
        k = self.info.num_classes
        if out.ndim != 2 or out.shape[0] != len(y) or (k is not None and out.shape[1] != k):
            return f"output {tuple(out.shape)} for targets {tuple(y.shape)}: {self.name} needs ({len(y)}, {k}), one logit per class"
        return None

    def check_targets(self, targets: torch.Tensor, where: str) -> None:
        if targets.ndim > 1:
            raise DataError(
                f"{where}: targets are vectors of {targets.shape[-1]}, but task=classification takes one class id per sample; for 0/1 "
                "label vectors use task=multilabel"
            )
        if targets.is_floating_point() and not torch.equal(targets, targets.round()):
            raise DataError(
                f"{where}: targets are fractional (e.g. {_example(targets[targets != targets.round()])}), but task=classification takes "
                "class ids 0..num_classes-1; for real values use task=regression"
            )

    def train_stat(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        # max(1).indices is argmax(1) (the first maximum on ties), several times faster on CPU for few classes
        return outputs.max(1).indices.eq_(targets.to(outputs.device, non_blocking=True)).sum(), len(targets)

    def default_metrics(self):
        from torchmetrics.classification import MulticlassAccuracy

        return [("accuracy", MulticlassAccuracy, {"average": "micro"})]

    def metric_facts(self) -> dict[str, Any]:
        return {"task": "multiclass", "num_classes": self.info.num_classes}

    def collector(self, keep_wrong: int) -> Any:
        return ConfusionCollector(self, keep_wrong)

    def predicted_classes(self, out: torch.Tensor) -> torch.Tensor:
        return out.max(1).indices

    def confidence(self, out: torch.Tensor) -> torch.Tensor:
        """The probability the model gives its predicted class (how sure a mistake was)."""
        return out.float().softmax(1).max(1).values

    def true_classes(self, y: torch.Tensor) -> torch.Tensor:
        return y.long()


class Binary(Classification):
    """A yes/no target per sample (0/1, bool, or a probability); the model outputs one logit per sample."""

    name = "binary"
    targets = "binary"
    default_loss = "BCEWithLogitsLoss"

    def num_outputs(self) -> int | None:
        return 1

    def adapt(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if out.ndim == 2 and out.shape[1] == 1:
            out = out.view(-1)
        if y.dtype != out.dtype:
            y = y.to(out.dtype)
        return out, y

    def check_output(self, out: torch.Tensor, y: torch.Tensor) -> str | None:
        if out.numel() != len(y) or out.shape[0] != len(y):
            return (
                f"output {tuple(out.shape)} for targets {tuple(y.shape)}: task=binary needs one logit per sample, "
                f"({len(y)},) or ({len(y)}, 1)"
            )
        return None

    def check_targets(self, targets: torch.Tensor, where: str) -> None:
        if targets.ndim > 1 and not (targets.ndim == 2 and targets.shape[1] == 1):  # (N, 1) is one value per sample too
            raise DataError(
                f"{where}: targets are vectors of {targets.shape[-1]}, but task=binary takes one 0/1 value per sample; use task=multilabel"
            )
        t = targets.float()
        if bool(((t < 0) | (t > 1)).any()):
            bad = t[(t < 0) | (t > 1)]
            raise DataError(
                f"{where}: targets outside [0, 1] (e.g. {_example(bad)}); task=binary takes 0/1 (or probabilities); for class ids use "
                "task=classification"
            )

    def train_stat(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        return outputs.reshape(-1).gt(0).eq_(targets.to(outputs.device).reshape(-1).gt(0.5)).sum(), len(targets)

    def default_metrics(self):
        from torchmetrics.classification import BinaryAccuracy, BinaryF1Score

        return [("accuracy", BinaryAccuracy, {}), ("f1", BinaryF1Score, {})]

    def metric_facts(self) -> dict[str, Any]:
        return {"task": "binary", "num_classes": 2}

    def metric_inputs(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return out.float().reshape(y.shape).sigmoid(), y.gt(0.5).long()

    def predicted_classes(self, out: torch.Tensor) -> torch.Tensor:
        return out.reshape(-1).gt(0).long()

    def confidence(self, out: torch.Tensor) -> torch.Tensor:
        p = out.float().reshape(-1).sigmoid()
        return torch.maximum(p, 1 - p)

    def true_classes(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(-1).gt(0.5).long()


class Multilabel(Task):
    """A 0/1 vector of ``num_labels`` per sample; the model outputs (batch, num_labels) logits."""

    name = "multilabel"
    targets = "labels"
    default_loss = "BCEWithLogitsLoss"
    monitor = "val/accuracy"
    monitor_mode = "max"
    train_metric = "accuracy"  # the share of (sample, label) pairs predicted right
    stat_dtype = torch.long

    def num_outputs(self) -> int | None:
        return self.info.num_labels

    def adapt(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if y.dtype != out.dtype:
            y = y.to(out.dtype)
        return out, y

    def check_output(self, out: torch.Tensor, y: torch.Tensor) -> str | None:
        if tuple(out.shape) != tuple(y.shape):
            return f"output {tuple(out.shape)} for targets {tuple(y.shape)}: task=multilabel needs one logit per label, {tuple(y.shape)}"
        return None

    def check_targets(self, targets: torch.Tensor, where: str) -> None:
        if targets.ndim < 2:
            what = "class ids" if not targets.is_floating_point() or torch.equal(targets, targets.round()) else "one number per sample"
            raise DataError(
                f"{where}: targets are {what} (e.g. {_example(targets)}), but task=multilabel takes a 0/1 vector per sample; "
                "for one class per sample use task=classification (task=binary for one yes/no value)"
            )
        t = targets.float()
        if bool(((t != 0) & (t != 1)).any()):
            raise DataError(
                f"{where}: targets hold values other than 0 and 1 (e.g. {_example(t[(t != 0) & (t != 1)])}); task=multilabel takes 0/1 "
                "label vectors"
            )

    def train_stat(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        return outputs.gt(0).eq_(targets.to(outputs.device).gt(0.5)).sum(), targets.numel()

    def default_metrics(self):
        from torchmetrics.classification import MultilabelAccuracy, MultilabelF1Score

        return [("accuracy", MultilabelAccuracy, {"average": "micro"}), ("f1_macro", MultilabelF1Score, {"average": "macro"})]

    def metric_facts(self) -> dict[str, Any]:
        return {"task": "multilabel", "num_labels": self.info.num_labels}

    def metric_inputs(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return out.float().sigmoid(), y.gt(0.5).long()


class ConfusionCollector:
    """On the test split: the confusion matrix, and up to ``keep_wrong`` misclassified images with their titles,
    drawn across the true classes: the most confident mistakes of each class first, a few per class, so a
    class-sorted test set shows more than its first class. Ties (saturated probabilities) break by a seeded
    random draw. At most ``4 * keep_wrong`` candidate images are held at any time."""

    def __init__(self, task: Classification, keep_wrong: int, seed: int = 0):
        self.task, self.keep_wrong = task, keep_wrong
        k = task.info.num_classes if task.name != "binary" else 2
        self.classes = task.info.classes if task.info.classes and len(task.info.classes) == k else [str(c) for c in range(k)]
        self.matrix: torch.Tensor | None = None
        self.k = k
        self.per_class = max(2, -(-keep_wrong // min(k, 8)))  # 32 images over 10 classes: up to 4 each
        self.limit = 4 * keep_wrong
        self.random = random.Random(seed)
        self.candidates: dict[int, list[tuple[float, float, int, torch.Tensor, int]]] = {}  # true class -> min-heap
        self.held = 0
        self.seen = 0

    @property
    def images(self) -> list[torch.Tensor]:
        return [c[3] for c in self.chosen()]

    @property
    def titles(self) -> list[str]:
        return [f"pred {self.classes[c[4]]} / true {self.classes[t]}" for t, c in self.chosen(with_class=True)]

    def update(self, x: Any, out: torch.Tensor, y: torch.Tensor) -> None:
        preds, true = self.task.predicted_classes(out), self.task.true_classes(y)
        counts = torch.bincount(true * self.k + preds, minlength=self.k * self.k).view(self.k, self.k)
        self.matrix = counts if self.matrix is None else self.matrix + counts
        if not (self.keep_wrong and isinstance(x, torch.Tensor) and x.dim() == 4):
            return
        wrong = torch.nonzero(preds != true).flatten()
        if not wrong.numel():
            return
        confidence = self.task.confidence(out[wrong]).tolist()  # host sync: the test split only, for the pictures
        for i, conf, t, p in zip(wrong.tolist(), confidence, true[wrong].tolist(), preds[wrong].tolist()):
            heap = self.candidates.setdefault(t, [])
            entry = (conf, self.random.random(), self.seen, x[i].detach().cpu(), p)
            self.seen += 1
            if len(heap) < self.per_class:
                heapq.heappush(heap, entry)
                self.held += 1
            elif entry[:2] > heap[0][:2]:
                heapq.heapreplace(heap, entry)
            if self.held > self.limit:  # many classes with errors: drop the least confident of the fullest class
                fullest = max(self.candidates.values(), key=len)
                heapq.heappop(fullest)
                self.held -= 1

    def chosen(self, with_class: bool = False) -> list:
        """Round robin over the classes (the class with the most confident mistake first): each one's most
        confident mistake, then each one's second, ... up to ``keep_wrong``."""
        ranked = {t: sorted(heap, key=lambda e: e[:2], reverse=True) for t, heap in self.candidates.items() if heap}
        order = sorted(ranked, key=lambda t: ranked[t][0][:2], reverse=True)
        out: list = []
        for depth in range(self.per_class):
            for t in order:
                if depth < len(ranked[t]) and len(out) < self.keep_wrong:
                    out.append((t, ranked[t][depth]) if with_class else ranked[t][depth])
        return out

    def reduce(self, strategy: Any) -> None:
        if self.matrix is not None or strategy.processes > 1:
            m = self.matrix if self.matrix is not None else torch.zeros(self.k, self.k, dtype=torch.long, device=strategy.device)
            self.matrix = strategy.all_reduce_sum(m.to(strategy.device))

    def pictures(self) -> list[tuple[str, str, dict]]:
        """(tag, kind, data) for the trackers to render: the engine draws them (tasks know no tracker)."""
        info = self.task.info
        out = []
        if self.matrix is not None:
            out.append(("test/confusion_matrix", "confusion", {"matrix": self.matrix.cpu(), "classes": self.classes}))
        images = self.images
        if images:
            out.append(
                (
                    "test/misclassified",
                    "labelled_grid",
                    {"images": torch.stack(images), "titles": self.titles, "mean": info.mean, "std": info.std},
                )
            )
        return out
