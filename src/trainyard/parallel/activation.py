"""``parallel.activation_checkpointing``: each block keeps only its input for backward and runs its forward
again there, instead of keeping every activation inside it (``torch.utils.checkpoint``, non-reentrant).

Less memory for about one more forward per step, and the same numbers: the recomputation replays the
forward's random state (dropout) and autocast. The blocks are the ones ``parallel.shard=auto`` finds
(fsdp: the blocks it shards), wrapped in place: their forward is replaced on the instance, so the module
tree, its parameter names and the checkpoints stay as they are, and fsdp's hooks, which run around the
forward, gather a block's weights before its recomputation as before its forward.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from trainyard.errors import ConfigError
from trainyard.parallel.units import shard_paths


def checkpoint_auto_blocks(model: nn.Module, where: str) -> list[str]:
    """Checkpoint the blocks ``parallel.shard=auto`` finds in ``model``; their paths. One line when there are none."""
    paths = shard_paths(model, "auto", where)
    checkpoint_blocks(model, paths)
    return paths


def checkpoint_blocks(model: nn.Module, paths: list[str]) -> None:
    if not paths:
        raise ConfigError(
            f"parallel.activation_checkpointing=true: {type(model).__name__} lists no blocks to checkpoint "
            "(pipeline_blocks(), an nn.Sequential's children, ResNet stages, a ModuleList of layers); set it to false"
        )
    modules = dict(model.named_modules())
    for path in paths:
        _recompute_in_backward(modules[path])


def _recompute_in_backward(module: nn.Module) -> None:
    forward = module.forward

    @functools.wraps(forward)
    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # evaluation: nothing is kept for a backward, nothing to recompute
            return forward(*args, **kwargs)
        if torch.compiler.is_compiling():  # trainer.compile: the recompute is traced into the backward graph, where
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)  # a buffer update is not applied again
        return checkpoint(forward, *args, use_reentrant=False, context_fn=functools.partial(_contexts, module), **kwargs)

    module.forward = checkpointed


def _contexts(module: nn.Module) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    return contextlib.nullcontext(), _buffers_kept(module)


@contextlib.contextmanager
def _buffers_kept(module: nn.Module) -> Iterator[None]:
    """The recomputation must not count twice what the forward already counted: BatchNorm's running
    statistics (and any buffer a forward updates) are put back as they were before it."""
    buffers = [b for b in module.buffers() if b.numel()]
    kept = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, kept):
                buffer.copy_(value)
