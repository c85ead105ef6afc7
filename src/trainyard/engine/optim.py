"""Optimizers and learning-rate schedules. Schedules step once per optimizer step."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainyard.config import OptimConfig, ScheduleConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.name]
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *, total_steps: int, steps_per_epoch: int, max_lr: float) -> torch.optim.lr_scheduler.LRScheduler:
    """The named schedule over ``total_steps`` optimizer steps, with ``warmup_steps`` of linear warmup in front."""
    sched = torch.optim.lr_scheduler
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    main_steps = max(total_steps - warmup, 1)
    if cfg.name == "onecycle":
        # one-cycle has its own warmup (pct_start); warmup_steps sets it when given
        pct = warmup / total_steps if warmup else 0.3
        return sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 2), pct_start=min(max(pct, 1e-3), 0.99))
    if cfg.name == "constant":
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif cfg.name == "step":
        main = sched.StepLR(optimizer, step_size=max(cfg.step_epochs * steps_per_epoch, 1), gamma=cfg.gamma)
    else:  # cosine
        main = sched.CosineAnnealingLR(optimizer, T_max=main_steps, eta_min=cfg.min_lr)
    if not warmup:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def steps_per_epoch(batches: int, accumulate: int) -> int:
    return max(1, math.ceil(batches / accumulate))
