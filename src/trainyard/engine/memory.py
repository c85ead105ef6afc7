"""What each process holds, measured once after its first optimizer step: the parameters it keeps (its shards
under fsdp, its stage under pipeline, the whole model under ddp) and its peak memory so far (on CUDA
``torch.cuda.max_memory_allocated``, else the peak resident set, ``ru_maxrss``). One line, and
``status.json["per_rank"]``."""

from __future__ import annotations

import sys
from typing import Any

import torch


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Bytes, and what was measured."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    try:
        import resource
    except ImportError:  # Windows
        return 0, "unmeasured"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "peak resident set (ru_maxrss)"  # kilobytes on Linux


def local_parameters(model: torch.nn.Module) -> int:
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())


class RankMemory:
    """Collective at the first optimizer step of this process (every rank gets there): one all-gather."""

    def __init__(self) -> None:
        self.done = False

    def on_step_end(self, trainer: Any, step: int, loss: Any) -> None:
        if self.done:
            return
        self.done = True
        strategy = trainer.strategy
        peak, source = peak_memory(strategy.device)
        held_by_rank = strategy.gather_object((local_parameters(trainer.model), peak))  # sync point: once per process
        if not strategy.is_primary:
            return
        parameters, peaks = [p for p, _ in held_by_rank], [m for _, m in held_by_rank]
        record = {"after_step": step, "parameters": parameters, "peak_memory_bytes": peaks, "peak_memory": source}
        mib = ", ".join(f"{p / 2**20:.0f}" for p in peaks)
        held = ", ".join(f"{p:,}" for p in parameters)
        print(f"trainyard: after step {step}, per rank: parameters {held}; peak memory MiB {mib} ({source})", flush=True)
        if trainer.run_dir is not None and (trainer.run_dir / "status.json").exists():
            from trainyard.track.rundir import write_status

            write_status(trainer.run_dir, per_rank=record)

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.done and self.on_step_end in trainer.callbacks.step_end:  # out of the loop's way (not while it iterates the hooks)
            trainer.callbacks.step_end.remove(self.on_step_end)
