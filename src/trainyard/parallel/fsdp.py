"""``parallel.strategy=fsdp``: one process per device, parameters, gradients and optimizer state sharded (FSDP2).

Processes, samplers and collectives are ddp's (spawn, torchrun, SLURM). The model is wrapped with
``torch.distributed.fsdp.fully_shard``, per block first, then the root: each rank keeps 1/N of every
parameter as a DTensor shard, gathers a block's full weights just before that block computes and frees them
after (``parallel.reshard_after_forward``), and reduce-scatters the gradients, so the optimizer steps on the
shard alone. Which blocks (``trainyard.parallel.units``): ``parallel.shard: auto`` (the blocks
:func:`named_blocks` lists, else the layers of a ``ModuleList`` of like layers; those under 1% of the
parameters stay with the root) or a list of module class names.

Checkpoints are sharded (``torch.distributed.checkpoint``): every rank writes its own shards of the weights
and of the optimizer's state into one folder, and no rank gathers the whole model (``engine/checkpoint.py``
lays the folder out beside ``last.pt``, which keeps the loop's state). DCP reads them back at any world size:
under fsdp each rank reads the pieces of its new shards; under ``single`` and ``ddp`` every process reads whole
tensors. Whole checkpoints (``single``, ``ddp``) load here too: every rank reads the file and keeps its shard.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, ContextManager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.data import Dataset, Sampler

from trainyard.errors import ConfigError
from trainyard.parallel.activation import checkpoint_blocks
from trainyard.parallel.ddp import DistributedDataParallel
from trainyard.parallel.launch import uses_cuda
from trainyard.parallel.shards import load_shards
from trainyard.parallel.units import check_shard_setting, shard_paths

GATHERED = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets full CPU tensors, the others {}
FULL_IN = StateDictOptions(full_state_dict=True)  # every rank passes the whole state (each read the file); each keeps its shard


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class FullyShardedDataParallel(DistributedDataParallel):
    name = "fsdp"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.sharded: list[str] = []  # module paths wrapped with fully_shard, the root ("") last
        self.total_parameters = 0
        self.rank_parameters = 0
        self.model: nn.Module | None = None
        self.steps_run = 0  # micro-steps trained, and where the buffers were last made rank 0's
        self.buffers_synced_at = -1

    # --- processes -------------------------------------------------------------------
    def launch(self, fn, *args):
        t = self.cfg.trainer
        if t.precision == "fp16" and not uses_cuda(t.device):
            raise ConfigError(
                "trainer.precision=fp16: parallel.strategy=fsdp on cpu has no fp16 gradient scaling; use trainer.precision=bf16 or 32"
            )
        check_shard_setting(self.cfg.parallel.shard)
        return super().launch(fn, *args)

    def setup(self) -> None:
        super().setup()
        tr = self.cfg.track
        if tr.graph or self.cfg.trainer.histogram_every:
            # both read the model on rank 0 alone; a sharded model's forward and its DTensor reductions are
            # collectives the other ranks would never join
            if self.is_primary:
                print(
                    "trainyard: parallel.strategy=fsdp: track.graph and weight histograms are off (they would need every rank)", flush=True
                )
            tr.graph, self.cfg.trainer.histogram_every = False, 0

    def teardown(self) -> None:
        # A rank that destroys its gloo group while a peer still runs the last collectives aborted the process
        # now and then ("terminate called without an active exception"): after a run that ended normally every
        # rank waits for the others first. Not after an error, where a peer may never arrive.
        if sys.exc_info()[0] is None and dist.is_available() and dist.is_initialized():
            with contextlib.suppress(RuntimeError):
                self.barrier()
        super().teardown()

    # --- model -----------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        p = self.cfg.parallel
        model = model.to(self.device)
        if p.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.total_parameters = sum(q.numel() for q in model.parameters())
        paths = shard_paths(model, p.shard, f"model.name={self.cfg.model.name}")
        modules = dict(model.named_modules())
        # bf16: FSDP's own policy, weights gathered and computed in bf16, gradients reduced and stepped in fp32
        # (the fp32 shards stay the optimizer's); autocast still runs around the forward as under every strategy
        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if self.cfg.trainer.precision == "bf16"
            else MixedPrecisionPolicy()
        )
        if p.activation_checkpointing:  # the blocks sharded, each recomputed inside its own all-gather
            checkpoint_blocks(model, paths)
            self.checkpointed_blocks = paths
        if self.cfg.trainer.precision == "bf16":
            # BatchNorm in fp32, as FSDP1's MixedPrecision kept it: its running statistics are fp32 buffers, and the
            # eval kernel refuses bf16 weights beside them. Its input is cast to fp32 on the way in.
            for module in model.modules():
                if isinstance(module, BATCH_NORMS):
                    fully_shard(module, reshard_after_forward=p.reshard_after_forward, mp_policy=MixedPrecisionPolicy())
        for path in paths:  # inner blocks first: each becomes one all-gather group; the root takes what is left
            fully_shard(modules[path], reshard_after_forward=p.reshard_after_forward, mp_policy=policy)
        fully_shard(model, reshard_after_forward=p.reshard_after_forward, mp_policy=policy)
        self.sharded = [*paths, ""]
        self.rank_parameters = sum(q.to_local().numel() if isinstance(q, DTensor) else q.numel() for q in model.parameters())
        self.model = model  # the optimizer's state is keyed through it
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model  # fully_shard keeps the module's class and names; its parameters are DTensors

    def no_sync(self, model: nn.Module) -> ContextManager:
        return _gradient_sync_off(model)

    def forward_backward(self, model, x, y, loss_fn, autocast, scale):
        self.steps_run += 1
        return super().forward_backward(model, x, y, loss_fn, autocast, scale)

    def predict(self, model: nn.Module, x: Any) -> torch.Tensor | None:
        if self.buffers_synced_at != self.steps_run:
            # Buffers are not sharded: each rank's BatchNorm statistics followed its own batches. Evaluate with
            # rank 0's, the ones the checkpoint keeps (ddp broadcasts them the same way). Once per evaluation:
            # every rank has the same number of batches, so every rank gets here.
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
            self.buffers_synced_at = self.steps_run
        return model(x)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # over DTensor shards: one all-reduce
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    # --- checkpoints -----------------------------------------------------------------
    def model_state_dict(self, model: nn.Module) -> dict[str, Any] | None:
        state = get_model_state_dict(model, options=GATHERED)  # collective: every rank sends its shards to rank 0
        return state if self.is_primary else None

    def load_model_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        set_model_state_dict(model, state, options=FULL_IN)

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        model = self._model_of(optimizer)
        state = get_optimizer_state_dict(model, optimizer, options=GATHERED)  # collective
        return by_index(state, optimizer, model) if self.is_primary else None

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        model = self._model_of(optimizer)
        set_optimizer_state_dict(model, optimizer, by_name(state, optimizer, model), options=FULL_IN)

    def sharded_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        weights, moments = get_state_dict(model, optimizer)  # DTensor shards, keyed by the plain module's names
        return {"model": weights, "optimizer": moments}

    def load_sharded_state(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, folder: str) -> None:
        load_shards(model, optimizer, folder)  # each rank reads the pieces of its own shards, whatever world size wrote them

    def _model_of(self, optimizer: torch.optim.Optimizer) -> nn.Module:
        model = self.model
        if model is None:
            raise RuntimeError("fsdp: optimizer state before the model was wrapped")
        return model

    # --- data ------------------------------------------------------------------------
    def eval_sampler(self, dataset: Dataset) -> Sampler:
        """Every sample once, and the same number of batches on every rank: each batch's forward is a collective."""
        loader = self.cfg.loader
        batch = loader.eval_batch_size or 2 * loader.batch_size
        counts = equal_batch_counts(len(dataset), self.world_size, batch)
        if counts is None:
            good = [b for b in range(1, len(dataset) + 1) if equal_batch_counts(len(dataset), self.world_size, b)]
            if not good:
                raise ConfigError(
                    f"parallel.strategy=fsdp: an evaluation split has {len(dataset)} samples, fewer than the {self.world_size} processes; "
                    "give it more samples or use fewer processes"
                )
            near = min(good, key=lambda b: (abs(b - batch), -b))
            raise ConfigError(
                f"loader.eval_batch_size={batch}: {len(dataset)} evaluation samples cannot be shared by {self.world_size} fsdp processes "
                f"in the same number of batches of {batch} (every forward is a collective); use loader.eval_batch_size={near}"
            )
        start = sum(counts[: self.rank])
        return ContiguousShard(start, counts[self.rank])

    def describe(self) -> str:
        launcher = self.env.launcher if self.env else "spawn"
        held = f", {self.rank_parameters:,} of {self.total_parameters:,} parameters per rank" if self.total_parameters else ""
        return f"fsdp, {self.world_size} processes on {self.device.type} ({self.backend}, {launcher}{self._job_mark()}){held}"


@contextlib.contextmanager
def _gradient_sync_off(model: nn.Module):
    """Accumulation micro-steps: gradients stay unsharded and local until the step that syncs."""
    if not isinstance(model, FSDPModule):
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# --- evaluation shards -----------------------------------------------------------------


def equal_batch_counts(n: int, world: int, batch: int) -> list[int] | None:
    """Samples per rank, summing to ``n``, so every rank has the same number of batches of ``batch`` (the
    last one possibly short); as even as that allows. None where no such split exists."""
    if n < world:
        return None
    batches = math.ceil(n / (world * batch))
    low = (batches - 1) * batch + 1  # fewest samples that still make `batches` batches
    if n < world * low:
        return None
    counts = [n // world + (1 if r < n % world else 0) for r in range(world)]
    if min(counts) >= low:
        return counts
    extra = n - world * low  # fill ranks up to `batches` full batches, in rank order
    counts = []
    for _ in range(world):
        give = min(extra, batches * batch - low)
        counts.append(low + give)
        extra -= give
    return counts


class ContiguousShard(Sampler[int]):
    """Indices ``start .. start + count - 1``: one rank's contiguous part of an evaluation split."""

    def __init__(self, start: int, count: int):
        self.start, self.count = start, count

    def __iter__(self):
        return iter(range(self.start, self.start + self.count))

    def __len__(self) -> int:
        return self.count


# --- optimizer state: DCP's name-keyed format <-> torch.optim's index-keyed one --------


def _names_in_order(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    names = {id(q): n for n, q in model.named_parameters()}
    return [names[id(q)] for group in optimizer.param_groups for q in group["params"]]


def by_index(state: dict[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """What ``optimizer.state_dict()`` of the unsharded model would be: parameters numbered across groups."""
    order = _names_in_order(optimizer, model)
    index = {n: i for i, n in enumerate(order)}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: s for n, s in state["state"].items()}, "param_groups": groups}


def by_name(state: dict[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """The inverse: an index-keyed optimizer state (any strategy's checkpoint) keyed by parameter names."""
    order = _names_in_order(optimizer, model)
    groups = state["param_groups"]
    if sum(len(g["params"]) for g in groups) != len(order):
        raise ValueError(f"the checkpoint's optimizer holds {sum(len(g['params']) for g in groups)} parameters, this model {len(order)}")
    names = {}
    for group in groups:
        for i in group["params"]:
            names[i] = order[len(names)]
    return {
        "state": {names[i]: s for i, s in state["state"].items()},
        "param_groups": [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[i] for i in g["params"]]} for g in groups],
    }
