"""``parallel.strategy=ddp``: one process per device, gradients all-reduced by DistributedDataParallel.

The processes come from torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), from ``srun`` in a SLURM allocation,
or, when nothing launched them, from ``torch.multiprocessing.spawn`` on 127.0.0.1. The primary (rank 0)
writes files and logs; the others train and evaluate their shard. Checkpoints hold the plain module's
state, so they load under any strategy.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from trainyard.errors import ConfigError, TrainyardError
from trainyard.parallel import Strategy
from trainyard.parallel.launch import (
    ProcessEnv,
    cuda_device_ids,
    free_port,
    launcher_env,
    process_backend,
    spawn,
    uses_cuda,
)
from trainyard.track.rundir import read_status


class DistributedDataParallel(Strategy):
    name = "ddp"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.env: ProcessEnv | None = None
        self.backend = "gloo"
        self.teardown_at: float | None = None

    # --- processes -------------------------------------------------------------------
    def launch(self, fn: Callable[..., Any], *args: Any) -> Any:
        p = self.cfg.parallel
        cuda = uses_cuda(self.cfg.trainer.device)
        if p.sync_batchnorm and not cuda:
            raise ConfigError(
                "parallel.sync_batchnorm=true: SyncBatchNorm needs CUDA devices (these processes run on cpu); set it to false"
            )
        process_backend(p.backend, torch.device("cuda" if cuda else "cpu"))
        self.env = launcher_env()
        if self.env is not None:  # torchrun or srun started this process: it is one rank
            return self._run_rank(fn, args)
        if cuda:
            nprocs = len(cuda_device_ids(p.devices))
        elif p.devices == "auto":
            nprocs = 1
        elif isinstance(p.devices, list):
            raise ConfigError(
                f"parallel.devices={p.devices}: device ids need CUDA; on CPU give a count of processes, e.g. parallel.devices=2"
            )
        else:
            nprocs = p.devices
        if nprocs == 1:  # a group of one: no second process needed
            self.env = ProcessEnv("spawn", 0, 0, 1, 1, "127.0.0.1", free_port())
            return fn(self, *args)
        return spawn(self, fn, args, nprocs, grace_s=min(p.timeout, 10))

    def _run_rank(self, fn: Callable[..., Any], args: tuple) -> Any:
        """One rank of a launcher-started run: errors name the rank (the launcher stops the others)."""
        env = self.env
        if env.launcher == "torchrun":
            from torch.distributed.elastic.multiprocessing.errors import record

            fn = record(fn)  # the failing rank's error goes into torchrun's error file and its failure summary
        try:
            return fn(self, *args)
        except TrainyardError as exc:
            if env.world_size > 1 and not str(exc).startswith("rank "):
                exc.args = (f"rank {env.rank} of {env.world_size}: {exc}",)
            raise
        except Exception as exc:
            if env.world_size > 1:
                print(f"trainyard: rank {env.rank} of {env.world_size} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            raise

    def setup(self) -> None:
        env, p = self.env, self.cfg.parallel
        self.rank, self.local_rank, self.world_size = env.rank, env.local_rank, env.world_size
        if uses_cuda(self.cfg.trainer.device):
            ids = cuda_device_ids(p.devices if env.launcher == "spawn" else "auto")
            if env.local_rank >= len(ids):
                raise ConfigError(
                    f"{env.launcher} started {env.local_world_size} processes on this node, but it has {len(ids)} CUDA device(s)"
                )
            self.device = torch.device("cuda", ids[env.local_rank])
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
            if "OMP_NUM_THREADS" not in os.environ:  # share the cores fairly between this node's processes
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))
        self.backend = process_backend(p.backend, self.device)
        if env.max_restarts > 0 and self.cfg.name is None:
            # A restarted worker group must find its run folder again: name it after the rendezvous id.
            if not env.run_id or env.run_id == "none":
                raise ConfigError(
                    "torchrun --max-restarts: give the run a fixed name=... (or torchrun --rdzv-id=...) so that a restarted job finds its "
                    "run folder"
                )
            self.cfg.name = "torchrun-" + re.sub(r"[^A-Za-z0-9_.-]", "_", env.run_id)
        timeout = datetime.timedelta(seconds=p.timeout)
        init = "env://" if env.launcher in ("torchrun", "env") else f"tcp://{_host(env.master_addr)}:{env.master_port}"
        store, _, _ = next(dist.rendezvous(init, rank=env.rank, world_size=env.world_size, timeout=timeout))
        # torchrun keeps one store across restarts: without a per-attempt prefix a restarted group reads the
        # dead group's addresses (pytorch/pytorch#135712).
        store = dist.PrefixStore(f"trainyard/attempt-{env.restart_count}", store)
        dist.init_process_group(self.backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout)

    def teardown(self) -> None:
        self.teardown_at = time.time()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def resume_dir(self) -> str | None:
        """After torchrun restarted the worker group, the run folder to continue (when it has a checkpoint)."""
        if self.env is None or self.env.restart_count == 0 or self.cfg.name is None:
            return None
        run_dir = Path(self.cfg.track.root) / self.cfg.name
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            return None
        if self._job_mark() not in read_status(run_dir).get("strategy", ""):
            return None  # a folder this job did not write: leave it alone (new_run_dir refuses to reuse it)
        if self.is_primary:
            print(
                f"trainyard: restart {self.env.restart_count} of {self.env.max_restarts}: resuming {run_dir} from its last checkpoint",
                flush=True,
            )
        return str(run_dir)

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj if self.is_primary else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    # --- model -----------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.cfg.parallel.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self._checkpoint_activations(model)
        return DDP(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.cfg.parallel.find_unused_parameters,
        )

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DDP) else model

    def no_sync(self, model: nn.Module) -> ContextManager:
        return model.no_sync()

    def train_sampler(self, dataset, *, shuffle: bool, seed: int):
        if len(dataset) < self.world_size:  # the sampler would pad with copies: some rank would train on another's samples only
            raise ConfigError(
                f"parallel.strategy={self.name}: the training split has {len(dataset)} sample{'s' if len(dataset) != 1 else ''}, "
                f"fewer than the {self.world_size} processes (each needs one of its own); use fewer processes or more data"
            )
        return super().train_sampler(dataset, shuffle=shuffle, seed=seed)

    def _job_mark(self) -> str:
        run_id = self.env.run_id if self.env is not None else None
        return f", job {run_id}" if run_id and run_id != "none" else ""

    def describe(self) -> str:
        launcher = self.env.launcher if self.env else "spawn"
        return f"ddp, {self.world_size} processes on {self.device.type} ({self.backend}, {launcher}{self._job_mark()})"


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr
