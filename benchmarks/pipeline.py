"""Naive model parallelism against GPipe with M micro-batches: the step time falls as the bubble shrinks.

K stage processes (gloo on CPU, each with its fair share of the cores; nccl with one GPU each on CUDA)
hold one stage each of a stack of Linear+ReLU layers. Measured, alternating, in the same processes:

  naive    the unsplit model stepped with one device's compute (one stage's share of the cores, or
           cuda:0), which is what ``seq2(seq1(x).to(dev1))`` costs: the stages work one after another
           (no copies counted, so this favours the baseline)
  gpipe M  trainyard's pipeline strategy, ``parallel.microbatches=M``: forward and backward of M
           micro-batches flow through the stages; (K-1)/(M+K-1) of each step is bubble

Every step is forward, backward and an SGD step on the same batch. Micro-batches need enough rows to
keep each layer's GEMMs efficient (the weight-gradient GEMM of a 48-row micro-batch through a 1536-wide
layer is memory-bound and costs twice the whole-batch one on a CPU), hence the default 2048 x 512.

    python benchmarks/pipeline.py                      # CPU: 2 stage processes
    python benchmarks/pipeline.py --device cuda        # one GPU per stage (needs K GPUs)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def build(width: int, layers: int) -> nn.Sequential:
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.ReLU()]
    blocks.append(nn.Linear(width, 10))
    return nn.Sequential(*blocks)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stage_main(rank: int, args: argparse.Namespace, port: int, out) -> None:
    from trainyard.config import load_config
    from trainyard.parallel.pipeline import PipelineParallel

    torch.set_num_threads(args.threads)
    devices = "[" + ",".join(f"cuda:{i}" for i in range(args.stages)) + "]" if args.device == "cuda" else str(args.stages)
    cfg = load_config(
        overrides=[
            "parallel.strategy=pipeline",
            f"parallel.devices={devices}",
            f"loader.batch_size={args.batch}",
            "parallel.microbatches=1",
            "track.graph=false",
        ]
    )
    strategy = PipelineParallel(cfg)
    strategy.stage, strategy._port = rank, port
    strategy.setup()
    device = strategy.device
    stage_module = strategy.wrap(build(args.width, args.layers))
    optimizer = torch.optim.SGD(stage_module.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.width, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)

    full = build(args.width, args.layers).to(device) if rank == 0 else None
    full_optimizer = torch.optim.SGD(full.parameters(), lr=1e-3) if full is not None else None

    def naive_step() -> None:
        if rank == 0:
            loss_fn(full(x), y).backward()
            full_optimizer.step()
            full_optimizer.zero_grad(set_to_none=True)

    def gpipe_step() -> None:
        strategy.forward_backward(stage_module, x, y, loss_fn, contextlib.nullcontext, lambda loss: loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(step) -> tuple[float, float]:
        """Median wall seconds per step, and this process's CPU seconds in it (what the machine gave it)."""
        walls, cpus = [], []
        for i in range(args.warmup + args.steps):
            dist.barrier()
            sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            step()
            sync(device)
            dist.barrier()  # a step ends when the last stage is done
            if i >= args.warmup:
                walls.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu)
        return statistics.median(walls), statistics.median(cpus)

    results: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.rounds):  # alternate, so drifting machine load hits every variant alike
        results.setdefault("naive", []).append(timed(naive_step))
        for m in args.microbatches:
            strategy.microbatches = m
            results.setdefault(f"gpipe_m{m}", []).append(timed(gpipe_step))
    out.put((rank, results))
    strategy.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8, help="Linear+ReLU layers (split evenly across the stages)")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--microbatches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median of the round medians)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    args.threads = max(1, cores // args.stages)
    if args.device == "cuda" and torch.cuda.device_count() < args.stages:
        raise SystemExit(f"--device cuda --stages {args.stages}: needs {args.stages} GPUs, found {torch.cuda.device_count()}")

    from trainyard.parallel.blocks import bubble_fraction
    from trainyard.parallel.launch import free_port

    print(
        f"{args.stages} stages on {args.device} ({args.threads} threads each of {cores} cores), {args.layers} x Linear({args.width}), "
        f"batch {args.batch}"
    )
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(stage_main, args=(args, free_port(), queue), nprocs=args.stages, start_method="spawn")
    per_rank = dict(queue.get() for _ in range(args.stages))
    results = {name: statistics.median(w for w, _ in runs) for name, runs in per_rank[0].items()}
    # CPU seconds per step of the busiest process; on an idle machine about the step time (times its share of
    # the step for a pipeline stage), far below it when other work takes the cores
    cpu = {name: max(statistics.median(c for _, c in ranks[name]) for ranks in per_rank.values()) for name in results}

    naive = results["naive"]
    k = args.stages
    print(f"{'variant':<10} {'step ms':>9} {'cpu ms':>7} {'speedup':>8} {'bubble':>7} {'ideal':>6}")
    print(f"{'naive':<10} {naive * 1e3:9.1f} {cpu['naive'] * 1e3:7.1f} {1.0:8.2f} {bubble_fraction(k, 1):7.1%} {1.0:6.2f}")
    for m in args.microbatches:
        name = f"gpipe_m{m}"
        t = results[name]
        ideal = k * m / (m + k - 1)  # K stages busy for M of the M+K-1 slots
        print(f"{'gpipe M=' + str(m):<10} {t * 1e3:9.1f} {cpu[name] * 1e3:7.1f} {naive / t:8.2f} {bubble_fraction(k, m):7.1%} {ideal:6.2f}")
    print(
        "(cpu ms: CPU time per step of the busiest process; far below step ms means other work held the cores; load average "
        f"{os.getloadavg()[0]:.1f})"
    )
    print(f"RESULT pipeline_step_ms_naive {naive * 1e3:.1f}")
    for m in args.microbatches:
        print(f"RESULT pipeline_step_ms_m{m} {results[f'gpipe_m{m}'] * 1e3:.1f}")
    if 8 in args.microbatches:
        print(f"RESULT pipeline_speedup_m8 {naive / results['gpipe_m8']:.2f}")


if __name__ == "__main__":
    main()
