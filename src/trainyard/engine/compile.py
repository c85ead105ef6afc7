"""trainer.compile: the training forward through ``torch.compile``, the eager model wherever that cannot run.

The compiled module wraps the strategy's model (after DDP or fully_shard, as torchtitan compiles a whole model
after data parallelism) and shares its parameters; the trainer keeps the plain model for everything else
(optimizer, checkpoints, evaluation), so a checkpoint's keys are the same with and without compile.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any, Callable

import torch
from torch import nn

from trainyard.errors import ConfigError

WORKS_WITH = ("single", "ddp", "fsdp")
REFUSED = ("dp", "model", "pipeline")  # DataParallel replicas per step, a model split over devices, stages in flight


def compiler_missing(device: torch.device) -> str | None:
    """On CPU, inductor builds C++ kernels with $CXX (else g++; clang++ on macOS): None when it is found, else why not."""
    if device.type != "cpu":
        return None
    name = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(name):
        return None
    where = f"CXX={name}" if os.environ.get("CXX") else name
    return f"no C++ compiler ({where} not found), which torch.compile needs on CPU; install g++ or set CXX"


def one_line(exc: BaseException) -> str:
    """An exception's type and the first line of its message (compiler errors run to pages)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def mode_of(setting: bool | str) -> str | None:
    """The trainer.compile value as torch.compile's mode (None: its default)."""
    return None if setting is True or setting == "default" else str(setting)


def check_compile(cfg: Any) -> None:
    """Before launch: trainer.compile under a strategy it works with."""
    setting, name = cfg.trainer.compile, cfg.parallel.strategy
    if setting is not False and name in REFUSED:
        raise ConfigError(
            f"trainer.compile={str(setting).lower()}: works with parallel.strategy {', '.join(WORKS_WITH)}, not {name}; "
            "set trainer.compile=false"
        )


class CompiledForward:
    """Runs the strategy's forward-backward on the compiled model until a call fails (compile is lazy: the first
    step compiles), then on the eager model for good, after one warning line naming the reason."""

    def __init__(self, model: nn.Module, setting: bool | str, *, strategy: Any, warn: Callable[[str], None]):
        self.warn = warn
        self.mode = mode_of(setting)
        self.reason = compiler_missing(strategy.device)  # why it runs eager (None: compiled)
        self.module: nn.Module = model
        if self.reason is None:
            try:
                self.module = torch.compile(model, mode=self.mode)
            except Exception as exc:  # e.g. a Python version dynamo does not support yet
                self.reason = one_line(exc)
        if self.reason is not None:
            self.warn(f"trainyard: trainer.compile: training eager: {self.reason}")

    @property
    def active(self) -> bool:
        return self.reason is None

    def describe(self) -> str:
        return f"compile {self.mode or 'default'}" if self.active else "compile off (see the warning)"

    def wrap(self, forward_backward: Callable) -> Callable:
        """``forward_backward`` that runs the compiled model, and the eager one (the model passed in) after a failure."""

        def step(model, x, y, loss_fn, autocast, scale):
            if self.reason is None:
                try:
                    return forward_backward(self.module, x, y, loss_fn, autocast, scale)
                except Exception as exc:  # any compiler error (inductor, a missing toolchain, an untraceable model)
                    self.reason = one_line(exc)
                    self.module = model
                    self.warn(f"trainyard: trainer.compile: compiling failed, training eager from here: {self.reason}")
                    # Compiling fails before a parameter's gradient is written (the forward compiles at the call, the
                    # backward graph before it hands gradients on): the eager step starts from clean gradients.
            return forward_backward(model, x, y, loss_fn, autocast, scale)

        return step
