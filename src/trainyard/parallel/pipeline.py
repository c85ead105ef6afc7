"""``parallel.strategy: pipeline``: one process per stage, micro-batches flowing through them
(``torch.distributed.pipelining``, schedules GPipe and 1F1B; gloo on CPU, nccl on CUDA).

Every stage process iterates the same batches: the first stage feeds the inputs, the last computes the
loss. So this strategy is one data-parallel replica (``rank`` 0 of ``world_size`` 1) made of
``num_stages`` processes; the last stage holds the outputs and is the primary (it logs, saves and
prints). A checkpoint holds the whole model, gathered from the stages, and loads under ``single``.

The loss of micro-batch i is scaled by its share of the batch (n_i / n) before backward, so the
gradients equal one pass over the whole batch with a mean loss, and gradient accumulation adds up as
it does on one device. Whole-batch shapes other than the configured one (the last, smaller batch of an
epoch; evaluation batches) get their own schedule with the largest micro-batch count that divides them.
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from typing import Any, Callable, ContextManager

import torch
import torch.distributed as dist
from torch import nn

from trainyard.errors import ConfigError
from trainyard.parallel import Strategy
from trainyard.parallel.blocks import BlockChain, Split, bubble_fraction, plan_split, stage_devices
from trainyard.parallel.launch import free_port, spawn


class PipelineParallel(Strategy):
    name = "pipeline"

    def __init__(self, cfg):
        super().__init__(cfg)
        p = cfg.parallel
        self.devices = stage_devices(p.devices, self.name)
        self.num_stages = len(self.devices)
        self.stage = 0  # set in each stage process by launch()
        self.microbatches = p.microbatches
        self.backend = self._backend()
        self.split: Split | None = None
        batch = cfg.loader.batch_size
        if batch % p.microbatches:
            divisors = [d for d in range(1, min(batch, 64) + 1) if batch % d == 0]
            raise ConfigError(
                f"parallel.microbatches={p.microbatches}: loader.batch_size={batch} does not split into equal micro-batches; use one of "
                f"{divisors}"
            )
        if p.schedule == "1f1b" and p.microbatches < self.num_stages:
            raise ConfigError(
                f"parallel.schedule=1f1b: needs parallel.microbatches >= the {self.num_stages} stages (got {p.microbatches}); raise it or "
                "use gpipe"
            )
        if cfg.trainer.precision == "fp16":
            raise ConfigError("trainer.precision=fp16: loss scaling is not synchronised across pipeline stages; use bf16")
        if cfg.track.graph:
            cfg.track.graph = False  # each process holds one stage: there is no whole graph to trace
        self._schedules: dict[tuple[int, bool, int], tuple[Any, int]] = {}
        self._addr, self._port = "127.0.0.1", 0

    def _backend(self) -> str:
        kinds = {d.type for d in self.devices}
        if len(kinds) > 1 or not kinds <= {"cpu", "cuda"}:
            raise ConfigError(f"parallel.devices={self.cfg.parallel.devices}: pipeline stages must all be cpu or all cuda")
        backend = self.cfg.parallel.backend
        if backend == "auto":
            return "nccl" if kinds == {"cuda"} else "gloo"
        if backend == "nccl" and kinds != {"cuda"}:
            raise ConfigError("parallel.backend=nccl: needs CUDA stages; use gloo (or auto) for CPU stages")
        return backend

    # --- processes -------------------------------------------------------------------
    def launch(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One process per stage, started and reported on as ddp's ranks are (MASTER_ADDR/MASTER_PORT from the
        environment, else a free local port)."""
        self._addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
        port = int(os.environ.get("MASTER_PORT") or free_port())
        return spawn(self, fn, args, self.num_stages, grace_s=min(self.cfg.parallel.timeout, 10), port=port)

    def enter_process(self, stage: int, nprocs: int, port: int) -> None:
        """In stage process ``stage``, before the run's body: its place, and a fair share of the cores."""
        self.stage, self._port = stage, port
        os.environ.update(RANK=str(stage), LOCAL_RANK=str(stage), WORLD_SIZE=str(nprocs))
        if "OMP_NUM_THREADS" not in os.environ:
            from trainyard.devices import cpu_count

            torch.set_num_threads(max(1, cpu_count() // nprocs))

    def setup(self) -> None:
        self.device = self.devices[self.stage]
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group(
            self.backend,
            init_method=f"tcp://{self._addr}:{self._port}",
            rank=self.stage,
            world_size=self.num_stages,
            timeout=timedelta(seconds=self.cfg.parallel.timeout),
        )
        # Only the last stage holds outputs; torchmetrics on the others warns that compute() ran before update().
        warnings.filterwarnings("ignore", message=r".*compute.*before the ``update``", category=UserWarning)
        self._zero = torch.zeros((), device=self.device)

    def teardown(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.num_stages - 1

    @property
    def is_primary(self) -> bool:
        return self.last

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=self.num_stages - 1)
        return box[0]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """One replica: its totals are the last stage's (the one that saw outputs), now on every stage."""
        tensor = tensor.clone()
        dist.broadcast(tensor, src=self.num_stages - 1)
        return tensor

    # --- model -----------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """Keep this stage's blocks (on its device); the rest of the model is left to the other processes."""
        self.split = split = plan_split(model, self.devices, self.cfg.parallel.split, f"model.name={self.cfg.model.name}")
        trainable = {id(p): i for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
        self._state_keys = list(model.state_dict().keys())
        module = BlockChain(split.stage_blocks(self.stage)).to(self.device)
        if not self.first:
            _no_inplace_input(module)
        self._param_ids = [trainable[id(p)] for p in module.parameters() if p.requires_grad]  # global optimizer index of each local one
        self.module = module
        if self.is_primary:
            p = self.cfg.parallel
            bubble = bubble_fraction(split.stages, p.microbatches)
            print(
                f"pipeline: {split.stages} stages x {p.microbatches} micro-batches ({p.schedule}, {self.backend}); "
                f"theoretical bubble (K-1)/(M+K-1) = {bubble:.1%} of each step idle\n{split.table()}",
                flush=True,
            )
        return module

    def model_state_dict(self, model: nn.Module) -> dict[str, Any] | None:
        local = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        parts = self._gather(local)
        if parts is None:
            return None
        merged = {k: v for part in parts for k, v in part.items()}
        return {k: merged[k] for k in self._state_keys if k in merged}

    def load_model_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        own = model.state_dict().keys()
        missing = [k for k in own if k not in state]
        if missing:
            from trainyard.errors import CheckpointError

            raise CheckpointError(f"checkpoint does not fit this model: no {', '.join(missing[:3])} (stage {self.stage})")
        model.load_state_dict({k: state[k] for k in own})

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        local = optimizer.state_dict()
        ids = self._param_ids
        part = {
            "state": {
                ids[i]: {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for i, s in local["state"].items()
            },
            "param_groups": [{**g, "params": [ids[i] for i in g["params"]]} for g in local["param_groups"]],
        }
        parts = self._gather(part)
        if parts is None:
            return None
        groups = [
            {**group, "params": sorted(p for part in parts for p in part["param_groups"][g]["params"])}
            for g, group in enumerate(parts[0]["param_groups"])
        ]
        return {"state": {k: v for part in parts for k, v in part["state"].items()}, "param_groups": groups}

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        local_of = {g: i for i, g in enumerate(self._param_ids)}
        optimizer.load_state_dict(
            {
                "state": {local_of[g]: s for g, s in state["state"].items() if g in local_of},
                "param_groups": [
                    {**group, "params": [local_of[p] for p in group["params"] if p in local_of]} for group in state["param_groups"]
                ],
            }
        )

    def _gather(self, obj: Any) -> list[Any] | None:
        """Collective: every stage's ``obj``, in stage order, on the primary; None elsewhere."""
        out = [None] * self.num_stages if self.is_primary else None
        dist.gather_object(obj, out, dst=self.num_stages - 1)
        return out

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip by the norm over all stages' gradients, as on one device."""
        params = [p for p in model.parameters() if p.grad is not None]
        square = torch.nn.utils.get_total_norm([p.grad for p in params]).to(self.device, torch.float32) ** 2
        dist.all_reduce(square)
        total = square.sqrt()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total

    # --- steps -----------------------------------------------------------------------
    def _schedule(self, batch: int, train: bool) -> tuple[Any, int]:
        """The schedule for whole batches of ``batch`` samples (shapes are fixed per schedule)."""
        key = (batch, train, self.microbatches)
        if key not in self._schedules:
            from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

            m = max(d for d in range(1, min(self.microbatches, batch) + 1) if batch % d == 0)
            stage = PipelineStage(self.module, self.stage, self.num_stages, self.device)
            if not train:
                schedule = ScheduleGPipe(stage, m)  # forward only
            else:
                cls = Schedule1F1B if self.cfg.parallel.schedule == "1f1b" and m >= self.num_stages else ScheduleGPipe
                schedule = cls(stage, m, loss_fn=self._microbatch_loss, scale_grads=False)
            self._schedules[key] = (schedule, m)
        return self._schedules[key]

    def _microbatch_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self._loss_fn(output, target) * (len(target) / self._batch)  # this micro-batch's share of the batch mean
        self._losses.append(loss.detach())
        return self._scale(loss)

    def forward_backward(
        self,
        model: nn.Module,
        x: Any,
        y: torch.Tensor,
        loss_fn: Callable,
        autocast: Callable[[], ContextManager],
        scale: Callable[[torch.Tensor], torch.Tensor],
    ):
        if not isinstance(x, torch.Tensor):
            raise ConfigError("parallel.strategy=pipeline: needs tensor inputs (image or fixed-size data), not padded text batches")
        schedule, m = self._schedule(len(y), train=True)
        self._loss_fn, self._scale, self._batch, self._losses = loss_fn, scale, len(y), []
        with autocast():
            output = schedule.step(*([x] if self.first else []), target=y if self.last else None)
        if not self.last:
            return self._zero, None
        # the schedule's first step also calls the loss once while it infers shapes: keep the last m
        return torch.stack(self._losses[-m:]).sum(), output.detach()

    def predict(self, model: nn.Module, x: Any) -> torch.Tensor | None:
        if not isinstance(x, torch.Tensor):
            raise ConfigError("parallel.strategy=pipeline: needs tensor inputs (image or fixed-size data), not padded text batches")
        schedule, _ = self._schedule(len(x), train=False)
        output = schedule.eval(*([x] if self.first else []))
        return output if self.last else None

    def describe(self) -> str:
        p = self.cfg.parallel
        head = f"pipeline, {self.num_stages} stages x {p.microbatches} micro-batches ({p.schedule}, {self.backend})"
        if self.split is None:
            return f"{head} on {', '.join(str(d) for d in self.devices)}"
        rows = [f"stage {r['stage']} {r['device']} blocks {r['blocks']} {r['parameters']} params" for r in self.split.summary()]
        return f"{head}, bubble {bubble_fraction(self.num_stages, p.microbatches):.1%}: " + "; ".join(rows)


def _no_inplace_input(module: nn.Module) -> None:
    """A later stage's input is the buffer received from the stage before, a leaf that needs its gradient:
    an in-place first op (``ReLU(inplace=True)``) may not overwrite it. Same output, one copy."""
    while True:
        if getattr(module, "inplace", False):
            module.inplace = False
        children = list(module.children())
        if not children:
            return
        module = children[0]
