"""Bytes of parameters + gradients + optimizer state held per rank: ddp against fsdp, 2 processes.

    python benchmarks/fsdp_memory.py [--width 2560] [--layers 8] [--device cpu|cuda]

A stack of ``--layers`` Linear(width, width) + ReLU blocks (default 8 x 2560: 52.5 M parameters) wrapped
by trainyard's own ``ddp`` and ``fsdp`` strategies (``Strategy.wrap``, ``parallel.shard: auto``: each block,
then the root), AdamW, two steps on random data. Per rank, after the steps: the bytes of the tensors each
rank keeps between steps (its parameter shards, their gradients, AdamW's exp_avg/exp_avg_sq/step), counted
from the local tensors (``DTensor.to_local()`` under fsdp), and the peak resident memory of the process
(ru_maxrss; on CUDA also torch.cuda.max_memory_allocated). Ends with RESULT lines; fsdp_state_bytes_ratio
(fsdp / ddp, per rank) is expected near 1 / processes = 0.5. Then the checkpoint each writes: every fsdp rank
its own shards (``torch.distributed.checkpoint``), against ddp's whole file written by rank 0, with the bytes
each rank wrote, the seconds, and how far the save pushed the rank's peak RSS (a gathered copy would add the
whole state on rank 0; fsdp_checkpoint_bytes_per_rank_ratio is expected near 0.5).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def local_bytes(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def rank_main(rank: int, world: int, port: int, strategy_name: str, width: int, layers: int, device: str, out: str) -> None:
    from trainyard.config import load_config
    from trainyard.parallel import build_strategy
    from trainyard.parallel.shards import save_shards

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dev = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = load_config(None, [f"parallel.strategy={strategy_name}", f"parallel.devices={world}", "model.name=benchmark_stack"])
        strategy = build_strategy(cfg)
        strategy.rank, strategy.world_size, strategy.device = rank, world, dev
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(layers)])
        total = sum(p.numel() for p in model.parameters())
        model = strategy.wrap(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(2):
            x = torch.randn(8, width, device=dev)
            model(x).square().mean().backward()
            optimizer.step()  # the gradients stay: what a rank holds just before zero_grad
            if _ == 0:
                optimizer.zero_grad(set_to_none=False)
        params = sum(local_bytes(p) for p in model.parameters())
        grads = sum(local_bytes(p.grad) for p in model.parameters())
        state = sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
        peak_dev = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
        # the checkpoint trainyard writes: sharded under fsdp (every rank its part); then, to compare, the whole
        # checkpoint gathered on rank 0 (what fsdp wrote before its checkpoints were sharded, and what ddp writes)
        folder = Path(out).parent / f"checkpoint-{strategy_name}"
        measured = []
        shards = strategy.sharded_state(model, optimizer)
        if shards is not None:
            dist.barrier()
            start = time.perf_counter()
            save_shards(shards, folder)
            dist.barrier()
            measured += [(folder / f"__{rank}_0.distcp").stat().st_size, time.perf_counter() - start, _rss()]
            del shards
        else:
            measured += [0, 0, peak_rss]
        dist.barrier()
        start = time.perf_counter()
        gathered = {"model": strategy.model_state_dict(model), "optimizer": strategy.optimizer_state_dict(optimizer)}  # collective
        written = 0
        if rank == 0:
            torch.save(gathered, folder.with_suffix(".pt"))
            written = folder.with_suffix(".pt").stat().st_size
        del gathered
        dist.barrier()
        measured += [written, time.perf_counter() - start, _rss()]
        row = torch.tensor([params, grads, state, peak_rss, peak_dev, total, *measured], dtype=torch.float64)
        rows = [torch.zeros_like(row) for _ in range(world)]
        dist.all_gather_object(rows, row)
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak so far, kilobytes on Linux


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(strategy_name: str, args) -> list[torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rows.pt")
        mp.spawn(rank_main, args=(2, free_port(), strategy_name, args.width, args.layers, args.device, out), nprocs=2, join=True)
        return torch.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=2560)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        sys.exit("--device cuda needs 2 CUDA devices")
    results = {name: measure(name, args) for name in ("ddp", "fsdp")}
    mib = 2**20
    total = int(results["ddp"][0][5])
    print(f"model: {args.layers} x Linear({args.width}, {args.width}), {total / 1e6:.1f} M parameters, AdamW, 2 processes on {args.device}")
    print(
        "| strategy | rank | params MiB | grads MiB | AdamW state MiB | params+grads+state MiB | peak RSS MiB |"
        + (" peak CUDA MiB |" if args.device == "cuda" else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if args.device == "cuda" else ""))
    held = {}
    for name, rows in results.items():
        for rank, r in enumerate(rows):
            p, g, s, rss, peak = (float(v) for v in r[:5])
            held.setdefault(name, []).append(p + g + s)
            cells = f"| {name} | {rank} | {p / mib:.1f} | {g / mib:.1f} | {s / mib:.1f} | {(p + g + s) / mib:.1f} | {rss / mib:.0f} |"
            print(cells + (f" {peak / mib:.0f} |" if args.device == "cuda" else ""))
    ratio = max(held["fsdp"]) / max(held["ddp"])
    print(f"RESULT parameters {total}")
    print(f"RESULT ddp_state_bytes_per_rank {int(max(held['ddp']))}")
    print(f"RESULT fsdp_state_bytes_per_rank {int(max(held['fsdp']))}")
    print(f"RESULT fsdp_state_bytes_ratio {ratio:.3f}")
    rss = {name: max(float(r[3]) for r in rows) for name, rows in results.items()}
    print(f"RESULT fsdp_peak_rss_ratio {rss['fsdp'] / rss['ddp']:.3f}")
    print("| strategy | checkpoint | rank | bytes written MiB | save s | peak RSS growth while saving MiB |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        for rank, r in enumerate(rows):
            r = [float(v) for v in r]
            if name == "fsdp":
                print(f"| fsdp | sharded (DCP), every rank its part | {rank} | {r[6] / mib:.1f} | {r[7]:.2f} | {(r[8] - r[3]) / mib:.0f} |")
                kind = "whole, gathered on rank 0 (for comparison)"
            else:
                kind = "whole, written by rank 0"
            print(f"| {name} | {kind} | {rank} | {r[9] / mib:.1f} | {r[10]:.2f} | {(r[11] - max(r[8], r[3])) / mib:.0f} |")
    sharded = max(float(r[6]) for r in results["fsdp"])
    whole = max(float(r[9]) for r in results["ddp"])
    print(f"RESULT fsdp_checkpoint_bytes_per_rank_ratio {sharded / whole:.3f}")
    growth = [(float(r[8]) - float(r[3])) / mib for r in results["fsdp"]]
    gathered = (float(results["fsdp"][0][11]) - float(results["fsdp"][0][8])) / mib
    print(f"RESULT fsdp_sharded_save_rss_growth_mib {max(growth):.0f}")
    print(f"RESULT fsdp_gathered_save_rank0_rss_growth_mib {gathered:.0f}")


if __name__ == "__main__":
    main()
