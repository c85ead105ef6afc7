"""evaluate(): the loss is the mean over samples (batches of unequal size weighed by their size), and one nan
sample makes it nan rather than being dropped."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainyard.config import load_config
from trainyard.data import DataInfo
from trainyard.engine.evaluate import evaluate
from trainyard.parallel.single import SingleDevice
from trainyard.tasks import build_task


def setup(x: torch.Tensor, y: torch.Tensor):
    torch.manual_seed(0)
    cfg = load_config(None, ["trainer.device=cpu"])
    task = build_task(cfg, DataInfo(kind="tabular", num_classes=3))
    strategy = SingleDevice(cfg)
    strategy.setup()
    model = nn.Linear(4, 3)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 20 samples: batches of 8, 8 and 4
    return model, loader, strategy, task


def test_the_loss_is_the_mean_over_samples_and_a_nan_sample_makes_it_nan():
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    model, loader, strategy, task = setup(x, y)
    result = evaluate(model, loader, strategy, prefix="val", task=task, autocast=contextlib.nullcontext)
    expected = nn.functional.cross_entropy(model(x), y).item()
    assert abs(result.metrics["val/loss"] - expected) < 1e-6

    x[17, 2] = float("nan")  # in the short last batch
    model, loader, strategy, task = setup(x, y)
    result = evaluate(model, loader, strategy, prefix="val", task=task, autocast=contextlib.nullcontext)
    assert result.metrics["val/loss"] != result.metrics["val/loss"]  # nan
