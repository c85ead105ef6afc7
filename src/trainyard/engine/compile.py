"""trainer.compile: the training forward through ``torch.compile``, the eager model wherever that cannot run.

What is compiled is the plain module's ``forward``, inside the strategy's wrapper: the whole model under single
and ddp, each innermost sharded block under fsdp (torchtitan compiles per block too). Compiling the wrapper
itself compiles nothing on current torch: DDP's forward and FSDP's hooks break the graph, and what is left to trace
is torch's own code (``nn.Sequential.forward``), which dynamo does not start a graph in. Called from inside DDP's
forward, the inner graph is still split at DDP's gradient buckets (dynamo's DDPOptimizer), so the all-reduce of
one bucket overlaps the backward of the next. The compiled forward
runs only in training steps; evaluation, the graph trace and checkpoints see the eager module, so a
checkpoint's keys are the same with and without compile.
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


def compile_targets(model: nn.Module, strategy: Any) -> list[nn.Module]:
    """The modules whose forward is compiled: the unwrapped model, or under fsdp each sharded module that holds no
    other (a graph cannot span FSDP's all-gather hooks, which run eager between the blocks)."""
    inner = strategy.unwrap(model)
    sharded = getattr(strategy, "sharded", None) or []
    if len(sharded) <= 1:  # not fsdp, or the root is the only shard unit
        return [inner]
    modules = dict(inner.named_modules())
    return [modules[p] for p in sharded if not any(q != p and (p == "" or q.startswith(f"{p}.")) for q in sharded)]


class CompiledForward:
    """Runs the strategy's forward-backward with compiled forwards until a call fails (compile is lazy: the first
    step compiles), then eager for good, after one warning line naming the reason."""

    def __init__(self, model: nn.Module, setting: bool | str, *, strategy: Any, warn: Callable[[str], None]):
        self.warn = warn
        self.mode = mode_of(setting)
        self.reason = compiler_missing(strategy.device)  # why it runs eager (None: compiled)
        self.in_step = False  # the compiled forwards run only inside a training step
        self.patched: list[tuple[nn.Module, Any]] = []  # each module, and the forward it held itself (None: its class's)
        if self.reason is None:
            try:
                for module in compile_targets(model, strategy):
                    self._compile_forward(module)
            except Exception as exc:  # e.g. a Python version dynamo does not support yet
                self.reason = one_line(exc)
                self.restore()
        if self.reason is not None:
            self.warn(f"trainyard: trainer.compile: training eager: {self.reason}")

    def _compile_forward(self, module: nn.Module) -> None:
        # An instance attribute over the class's forward, as Accelerate patches forward for mixed precision;
        # nn.Module.__call__ still runs the module's hooks (DDP's, FSDP's) around it, eager.
        eager = module.forward
        compiled = torch.compile(eager, mode=self.mode)

        def forward(*args, **kwargs):
            return compiled(*args, **kwargs) if self.in_step and self.reason is None else eager(*args, **kwargs)

        self.patched.append((module, vars(module).get("forward")))
        module.forward = forward

    def restore(self) -> None:
        """The modules' own forwards back (the model handed back to a ``trainyard.fit`` caller)."""
        for module, own in self.patched:
            if own is None:
                del module.forward
            else:
                module.forward = own
        self.patched = []

    @property
    def active(self) -> bool:
        return self.reason is None

    def describe(self) -> str:
        return f"compile {self.mode or 'default'}" if self.active else "compile off (see the warning)"

    def wrap(self, forward_backward: Callable) -> Callable:
        """``forward_backward`` with the compiled forwards, and eager after a failure."""

        def step(model, x, y, loss_fn, autocast, scale):
            if self.reason is None:
                self.in_step = True
                try:
                    return forward_backward(model, x, y, loss_fn, autocast, scale)
                except Exception as exc:  # any compiler error (inductor, a missing toolchain, an untraceable model)
                    self.reason = one_line(exc)
                    self.warn(f"trainyard: trainer.compile: compiling failed, training eager from here: {self.reason}")
                    # Compiling fails before a parameter's gradient is written (the forward compiles at the call, the
                    # backward graph before it hands gradients on): the eager step starts from clean gradients.
                finally:
                    self.in_step = False
            return forward_backward(model, x, y, loss_fn, autocast, scale)

        return step
