"""Optimizers and learning-rate schedules, by short name, by their own torch name, or by import path.

Short names (``sgd``, ``adam``, ``adamw``; ``constant``, ``step``, ``cosine``, ``onecycle``) keep the keys
of the config (momentum, betas, warmup, ...). Any ``torch.optim`` class (``RMSprop``) or
``torch.optim.lr_scheduler`` class (``OneCycleLR``, ``ReduceLROnPlateau``) is taken by its own name with
``optim.args`` / ``schedule.args``; what the run knows (``lr``, ``weight_decay``, ``total_steps``, ``T_max``,
``max_lr``, ...) fills the arguments their signature names and the args leave out. Schedules step once per
optimizer step, or per epoch with ``schedule.interval: epoch`` (ReduceLROnPlateau: per epoch, on the monitor).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from trainyard.config import OptimConfig, ScheduleConfig
from trainyard.errors import ConfigError
from trainyard.registry import Registry, call_with


def _torch_class(space: Any, base: type) -> Callable[[str], Any]:
    def find(name: str) -> Any:
        obj = getattr(space, name, None)
        return obj if isinstance(obj, type) and issubclass(obj, base) and obj is not base else None

    return find


def _torch_names(space: Any, base: type) -> Callable[[], list[str]]:
    return lambda: sorted(
        n
        for n in dir(space)
        if not n.startswith("_")
        and isinstance(getattr(space, n), type)
        and issubclass(getattr(space, n), base)
        and getattr(space, n) is not base
    )


OPTIMIZERS = Registry(
    "optimizer",
    "optim.name",
    fallback=_torch_class(torch.optim, torch.optim.Optimizer),
    fallback_names=_torch_names(torch.optim, torch.optim.Optimizer),
)
OPTIMIZERS.fallback_help = "any torch.optim class (SGD, RMSprop, Adagrad, ...)"
for _name, _help in (
    ("sgd", "SGD with optim.momentum, optim.nesterov"),
    ("adam", "Adam with optim.betas"),
    ("adamw", "AdamW (decoupled weight decay)"),
):
    OPTIMIZERS.register(_name, _name, _help)  # built by build_optimizer from the config's own keys

_SCHED = torch.optim.lr_scheduler


def _schedule_class(name: str) -> Any:
    obj = getattr(_SCHED, name, None)  # ReduceLROnPlateau is no LRScheduler before torch 2.2
    return (
        obj
        if isinstance(obj, type)
        and (issubclass(obj, _SCHED.LRScheduler) or obj is _SCHED.ReduceLROnPlateau)
        and obj is not _SCHED.LRScheduler
        else None
    )


SCHEDULES = Registry("schedule", "schedule.name", fallback=_schedule_class, fallback_names=_torch_names(_SCHED, _SCHED.LRScheduler))
SCHEDULES.fallback_help = "any torch.optim.lr_scheduler class (OneCycleLR, ReduceLROnPlateau, ...)"
for _name, _help in (
    ("constant", "the configured rate"),
    ("step", "decay by schedule.gamma every schedule.step_epochs"),
    ("cosine", "cosine to schedule.min_lr"),
    ("onecycle", "one cycle up to optim.lr and down"),
):
    SCHEDULES.register(_name, _name, _help)
PLATEAU = _SCHED.ReduceLROnPlateau


def optimizer_factory(cfg: OptimConfig, given: Any = None) -> Any:
    """The optimizer class or factory ``optim.name`` stands for (checked before anything runs), or ``given``."""
    if given is not None:
        return given
    if cfg.name in OPTIMIZERS:
        return cfg.name
    factory = OPTIMIZERS.get(cfg.name)
    if not callable(factory):
        raise ConfigError(f"optim.name={cfg.name}: {type(factory).__name__} is not an optimizer class or factory")
    return factory


def build_optimizer(model: nn.Module, cfg: OptimConfig, factory: Any = None) -> torch.optim.Optimizer:
    """``factory``: from Python, an optimizer class or a ``params -> Optimizer`` callable (e.g. a partial)."""
    params = [p for p in model.parameters() if p.requires_grad]
    factory = optimizer_factory(cfg, factory)
    if factory == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay, **cfg.args
        )
    if factory in ("adam", "adamw"):
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[factory]
        return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **cfg.args)
    key = "optim.args" if cfg.args else f"optim.name={cfg.name}"
    # From Python a factory may be a class (lr and weight_decay from the config) or a finished partial.
    optimizer = call_with(factory, key, cfg.args, {"lr": cfg.lr, "weight_decay": cfg.weight_decay}, positional=(params,))
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optim.name={cfg.name}: built a {type(optimizer).__name__}, expected a torch.optim.Optimizer")
    return optimizer


def schedule_factory(cfg: ScheduleConfig, given: Any = None) -> Any:
    if given is not None:
        return given
    if cfg.name in SCHEDULES:
        return cfg.name
    return SCHEDULES.get(cfg.name)


def is_per_epoch(cfg: ScheduleConfig, scheduler: Any) -> bool:
    """Whether the scheduler steps at epoch ends (and, for ReduceLROnPlateau, on the monitored metric)."""
    return isinstance(scheduler, PLATEAU) or (cfg.name not in SCHEDULES and cfg.interval == "epoch")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    *,
    total_steps: int,
    steps_per_epoch: int,
    max_lr: float,
    epochs: int = 1,
    mode: str = "min",
    factory: Any = None,
) -> Any:
    """The named schedule over ``total_steps`` optimizer steps, with ``warmup_steps`` of linear warmup in front."""
    sched = torch.optim.lr_scheduler
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    main_steps = max(total_steps - warmup, 1)
    factory = schedule_factory(cfg, factory)
    if factory == "onecycle":
        # one-cycle has its own warmup (pct_start); warmup_steps sets it when given
        pct = warmup / total_steps if warmup else 0.3
        return sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 2), pct_start=min(max(pct, 1e-3), 0.99))
    if factory == "constant":
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif factory == "step":
        main = sched.StepLR(optimizer, step_size=max(cfg.step_epochs * steps_per_epoch, 1), gamma=cfg.gamma)
    elif factory == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=main_steps, eta_min=cfg.min_lr)
    else:
        per_epoch = factory is PLATEAU or cfg.interval == "epoch"
        span = epochs if per_epoch else main_steps
        facts = {"total_steps": max(total_steps, 2), "T_max": span, "max_lr": max_lr, "mode": mode, "total_iters": span}
        key = "schedule.args" if cfg.args else f"schedule.name={cfg.name}"
        main = call_with(factory, key, cfg.args, facts, positional=(optimizer,))
        if not hasattr(main, "step") or not hasattr(main, "state_dict"):
            raise ConfigError(f"schedule.name={cfg.name}: built a {type(main).__name__}, expected a torch.optim.lr_scheduler scheduler")
        if per_epoch or isinstance(main, PLATEAU):
            if warmup:
                raise ConfigError(
                    f"schedule.warmup_steps={cfg.warmup_steps}: warmup needs a per-step schedule; set schedule.interval=step or "
                    "warmup_steps=0"
                )
            return main
    if not warmup:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    sequence = sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
    sequence.trainyard_main = main  # what a resume that changes the run's length adjusts (Trainer.load_state)
    return sequence


def steps_per_epoch(batches: int, accumulate: int) -> int:
    return max(1, math.ceil(batches / accumulate))
