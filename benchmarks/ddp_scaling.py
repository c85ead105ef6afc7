"""Training throughput of 1 process against 2 DDP processes, with the cores split fairly.

    python benchmarks/ddp_scaling.py [--device cpu|cuda] [--repeats 3] [--steps 60]

CPU: the single process gets every core as threads, each of the 2 DDP processes half of them (gloo).
CUDA: 1 GPU against 2 GPUs (nccl). The global batch is the same in both (2b against 2 x b).
Two measurements, alternating, each the median over repeats of the steady-state samples/s:
  - trainyard: `trainyard train` single against `parallel.strategy=ddp parallel.devices=2` on digits,
    read from the perf/samples_per_s scalars of metrics.jsonl (start-up and evaluation excluded);
  - raw PyTorch: the same MLP on in-memory tensors, a bare DistributedDataParallel loop.
Ends with RESULT lines: ddp_speedup_<device> (trainyard) and raw_ddp_speedup_<device> (raw PyTorch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def trainyard_throughput(device: str, processes: int, batch: int, width: int, steps: int) -> float:
    """Median perf/samples_per_s (global) of one `trainyard train` run, first logged window dropped."""
    with tempfile.TemporaryDirectory() as tmp:
        parallel = ["parallel.strategy=ddp", f"parallel.devices={processes}"] if processes > 1 else ["parallel.strategy=single"]
        args = [
            f"track.root={tmp}",
            "model.name=mlp",
            f"model.width={width}",
            "model.depth=2",
            f"loader.batch_size={batch // processes}",
            "trainer.epochs=1000",
            f"trainer.max_steps={steps}",
            "trainer.log_every=5",
            "trainer.progress=false",
            f"trainer.device={device}",
            "data.val_fraction=0",
            "data.test_fraction=0.05",
            "data.train_transforms=[]",
            "track.images=false",
            "track.graph=false",
            "trainer.histogram_every=0",
            "optim.name=sgd",
            "schedule.name=constant",
            *parallel,
        ]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # trainyard splits the cores itself
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        if device == "cpu" and processes == 1:
            env["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
        done = subprocess.run([sys.executable, "-m", "trainyard", "train", *args], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"trainyard run failed:\n{done.stderr[-2000:]}")
        (run,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        rates = [
            r["perf/samples_per_s"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "perf/samples_per_s" in r
        ]
        return statistics.median(rates[1:] or rates)


def raw_rank(rank: int, world: int, port: int, device: str, batch: int, width: int, steps: int, out: str) -> None:
    import torch.distributed as dist
    from torch import nn

    if device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        dev = torch.device("cpu")
    else:
        dev = torch.device("cuda", rank)
        torch.cuda.set_device(dev)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)).to(dev)
    if world > 1:
        dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device == "cuda" else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch // world, 1, 8, 8, device=dev)
    y = torch.randint(0, 10, (batch // world,), device=dev)
    warmup = 5
    for step in range(steps + warmup):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if rank == 0:
        Path(out).write_text(str(steps * batch / elapsed))
    if world > 1:
        dist.destroy_process_group()


def raw_throughput(device: str, processes: int, batch: int, width: int, steps: int) -> float:
    import torch.multiprocessing as mp

    from trainyard.parallel.launch import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rate")
        mp.start_processes(raw_rank, args=(processes, free_port(), device, batch, width, steps, out), nprocs=processes)
        return float(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per measurement")
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--width", type=int, default=1024, help="MLP hidden units (compute per step)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        sys.exit("--device cuda needs two CUDA devices")
    print(f"{os.cpu_count()} CPU cores; global batch {args.batch}; MLP width {args.width}; {args.steps} steps; device {args.device}")
    rates: dict[str, list[float]] = {k: [] for k in ("yard1", "yard2", "raw1", "raw2")}
    for repeat in range(args.repeats):
        for processes in (1, 2):  # alternating, so drifting machine load hits both sides alike
            rates[f"yard{processes}"].append(trainyard_throughput(args.device, processes, args.batch, args.width, args.steps))
            rates[f"raw{processes}"].append(raw_throughput(args.device, processes, args.batch, args.width, args.steps))
        print(f"repeat {repeat + 1}: " + "  ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"trainyard: 1 process {med['yard1']:.0f} samples/s, 2 ddp processes {med['yard2']:.0f} samples/s")
    print(f"raw torch: 1 process {med['raw1']:.0f} samples/s, 2 ddp processes {med['raw2']:.0f} samples/s")
    print(f"RESULT ddp_speedup_{args.device} {med['yard2'] / med['yard1']:.3f}")
    print(f"RESULT raw_ddp_speedup_{args.device} {med['raw2'] / med['raw1']:.3f}")


if __name__ == "__main__":
    main()
