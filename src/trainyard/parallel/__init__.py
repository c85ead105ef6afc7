"""How a run maps onto processes and devices: one module per strategy behind :class:`Strategy`.

The step loop only calls the methods below; it never asks which strategy it runs under.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from trainyard.config import RunConfig
from trainyard.errors import ConfigError
from trainyard.registry import Registry

STRATEGIES = Registry("strategy", "parallel.strategy")
STRATEGIES.register("single", "trainyard.parallel.single:SingleDevice", "one process, one device")
STRATEGIES.register("dp", "trainyard.parallel.dp:DataParallelStrategy", "nn.DataParallel over the GPUs of one process")
STRATEGIES.register("ddp", "trainyard.parallel.ddp:DistributedDataParallel", "one process per device, gradients all-reduced")
STRATEGIES.register("model", "trainyard.parallel.model:ModelParallel", "one process, the model's blocks on several devices")
STRATEGIES.register("pipeline", "trainyard.parallel.pipeline:PipelineParallel", "one process per stage, micro-batches in flight")
STRATEGIES.register(
    "fsdp", "trainyard.parallel.fsdp:FullyShardedDataParallel", "one process per device, parameters, gradients and optimizer state sharded"
)


class Strategy:
    """One process on one device. Subclasses override what differs."""

    name = "single"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.rank = 0
        self.local_rank = 0
        self.world_size = 1
        self.device = torch.device("cpu")
        self.checkpointed_blocks: list[str] = []  # parallel.activation_checkpointing: the blocks recomputed in backward

    # --- processes -------------------------------------------------------------------
    def launch(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(self, *args)`` in every process of the run; return the primary process's result."""
        return fn(self, *args)

    def setup(self) -> None:
        """Inside each process, before anything is built: process group, device."""

    def teardown(self) -> None:
        """Always runs, also after an error."""

    def resume_dir(self) -> str | None:
        """A run folder to continue without --resume: set after a launcher restarted the job (torchrun --max-restarts)."""
        return None

    @property
    def is_primary(self) -> bool:
        """The one process that writes files, logs and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj: Any) -> Any:
        """The primary's ``obj`` on every rank."""
        return obj

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process (collective; ``[obj]`` without a process group)."""
        import torch.distributed as dist

        if self.processes == 1:
            return [obj]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    @property
    def process_index(self) -> int:
        """This process's place in the process group (0 without one)."""
        import torch.distributed as dist

        return dist.get_rank() if self.processes > 1 else 0

    @property
    def processes(self) -> int:
        """Processes in this run's process group (ddp ranks, pipeline stages), 1 without one. Not world_size:
        a pipeline is one data-parallel replica (world_size 1) made of several processes."""
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def any_rank(self, flag: bool) -> bool:
        """Collective over every process: True everywhere when ``flag`` is True in any (e.g. a stop signal that reached one)."""
        import torch.distributed as dist

        if self.processes == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())  # sync point

    # --- model -----------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """Place (and wrap) the model for training."""
        self._checkpoint_activations(model)
        return model.to(self.device)

    def _checkpoint_activations(self, model: nn.Module) -> None:
        """parallel.activation_checkpointing: the auto blocks recompute in backward (on the plain module, before any wrapper)."""
        if self.cfg.parallel.activation_checkpointing:
            from trainyard.parallel.activation import checkpoint_auto_blocks

            self.checkpointed_blocks = checkpoint_auto_blocks(model, f"model.name={self.cfg.model.name}")

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module whose state_dict goes into checkpoints."""
        return model

    def model_state_dict(self, model: nn.Module) -> dict[str, Any] | None:
        """Collective: every rank calls it; the primary gets the whole model's state_dict (others may get None)."""
        return self.unwrap(model).state_dict()

    def load_model_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Load a whole-model state_dict (as saved by any strategy) into this strategy's model."""
        self.unwrap(model).load_state_dict(state)

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Collective, like model_state_dict."""
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def sharded_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Collective: what a sharded checkpoint saves of the model and optimizer (each rank its part), or None
        where this strategy writes whole checkpoints (``model_state_dict``)."""
        return None

    def load_sharded_state(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, folder: str) -> None:
        """Collective: load a sharded checkpoint (written by any world size) into this process's model and
        optimizer (None: the weights alone). Here the whole tensors: every process reads all of them."""
        from trainyard.parallel.shards import load_shards

        load_shards(self.unwrap(model), optimizer, folder)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip gradients by their total norm over the whole model (a model split over processes adds up all parts)."""
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def no_sync(self, model: nn.Module) -> ContextManager:
        """Skip gradient synchronisation (accumulation micro-steps)."""
        return contextlib.nullcontext()

    def forward_backward(
        self,
        model: nn.Module,
        x: Any,
        y: torch.Tensor,
        loss_fn: Callable,
        autocast: Callable[[], ContextManager],
        scale: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One micro-step: forward, loss, backward. Returns (loss, the model's output or None), still attached to their graph.

        Not detached: detaching runs cold autograd code every step; after backward a graph holds only its nodes
        (no saved tensors), and the step loop's totals drop them every few dozen steps (``engine/totals.py``).
        What a custom ``autograd.Function`` stores on ``ctx`` outside ``save_for_backward`` lives as long."""
        with autocast():
            out = model(x)
            loss = loss_fn(out, y)
        scale(loss).backward()
        return loss, out

    def predict(self, model: nn.Module, x: Any) -> torch.Tensor | None:
        """Logits for evaluation (None on processes that hold no output)."""
        return model(x)

    # --- data ------------------------------------------------------------------------
    def train_sampler(self, dataset: Dataset, *, shuffle: bool, seed: int) -> Sampler:
        from trainyard.data.loading import train_sampler

        return train_sampler(dataset, shuffle=shuffle, seed=seed, rank=self.rank, world_size=self.world_size)

    def eval_sampler(self, dataset: Dataset) -> Sampler:
        from trainyard.data.loading import EvalShardSampler

        return EvalShardSampler(len(dataset), self.rank, self.world_size)

    def describe(self) -> str:
        return f"{self.name} on {self.device}"


def strategy_class(name: str) -> type:
    cls = STRATEGIES.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(
            f"parallel.strategy={name}: {getattr(cls, '__name__', type(cls).__name__)} is not a trainyard.parallel.Strategy subclass"
        )
    return cls


def build_strategy(cfg: RunConfig) -> Strategy:
    return strategy_class(cfg.parallel.strategy)(cfg)
