"""Sweeps on real data: the same 16-trial learning-rate/width search on MNIST (../shared/data) with and without
``--prune median``, and ``--workers 2`` against ``--workers 1`` on a smaller search.

    python benchmarks/sweep.py [--data ../shared/data] [--samples 2000] [--epochs 4] [--workers-repeats 1] [--workers-only]

Each sweep is a whole ``trainyard sweep`` process: an MLP (model.width hidden units) on ``data.max_samples``
MNIST images per split, no augmentation. The 16 trials are the 4x4 grid of optim.lr and model.width in a
seeded random order (``--random 16``), so the median pruner's first trials are not all one learning rate.

Ends with RESULT lines: sweep_best_val_accuracy_unpruned / _pruned (the best val/accuracy any trial reached),
sweep_epochs_unpruned / _pruned (epochs trained by all trials), sweep_epochs_saved_fraction
(1 - pruned / unpruned), sweep_wall_s_workers1 / _workers2 and sweep_workers_speedup.
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

ROOT = Path(__file__).resolve().parents[1]
LRS = "0.03,0.003,0.0003,0.00003"
WIDTHS = "16,32,64,128"


def sweep(root: Path, name: str, common: list[str], *extra: str) -> float:
    cmd = [sys.executable, "-m", "trainyard", "sweep", f"track.root={root}", *common, "--name", name, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return wall


def trials(folder: Path) -> list[dict]:
    """Each trial's status, epochs trained and best val/accuracy, from its run folder."""
    out = []
    for run in sorted(folder.glob("trial-*")):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        accuracy = [r["val/accuracy"] for r in rows if "val/accuracy" in r]
        status = json.loads((run / "status.json").read_text())["status"]
        # a pruned trial stops at the validation of the epoch it was pruned in, before that epoch is logged: it trained one more
        out.append(
            {
                "name": run.name,
                "status": status,
                "epochs": len(accuracy) + (status == "pruned"),
                "best": max(accuracy) if accuracy else None,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--samples", type=int, default=2000, help="data.max_samples (each split)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers-repeats", type=int, default=1, help="alternating rounds of --workers 1 and 2 (the medians are reported)")
    parser.add_argument("--workers-only", action="store_true", help="only the --workers comparison")
    args = parser.parse_args()
    common = [
        "data.dataset=mnist",
        f"data.root={args.data}",
        f"data.max_samples={args.samples}",
        f"trainer.epochs={args.epochs}",
        "model.name=mlp",
        "data.train_transforms=[]",
        "track.images=false",
        "track.graph=false",
        "trainer.histogram_every=0",
        "trainer.progress=false",
        f"optim.lr={LRS}",
        f"model.width={WIDTHS}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.workers_only:
            wall_full = sweep(root, "full", common, "--random", "16", "--seed", "0")
            wall_pruned = sweep(root, "pruned", common, "--random", "16", "--seed", "0", "--prune", "median")
            full, pruned = trials(root / "full"), trials(root / "pruned")
            for label, found, wall in (("unpruned", full, wall_full), ("pruned", pruned, wall_pruned)):
                statuses = {s: sum(t["status"] == s for t in found) for s in sorted({t["status"] for t in found})}
                print(f"{label}: {len(found)} trials {statuses}, {sum(t['epochs'] for t in found)} epochs, {wall:.1f}s", flush=True)
        # --workers 2 against --workers 1: 4 trials (2 learning rates x 2 widths), unpruned, alternating
        small = [c for c in common if not c.startswith(("optim.lr=", "model.width="))] + ["optim.lr=0.003,0.0003", "model.width=32,64"]
        ones, twos = [], []
        for i in range(args.workers_repeats):
            ones.append(sweep(root, f"w1-{i}", small, "--workers", "1"))
            twos.append(sweep(root, f"w2-{i}", small, "--workers", "2"))
            print(
                f"4 trials, round {i}: --workers 1 {ones[-1]:.1f}s, --workers 2 {twos[-1]:.1f}s (cores here: "
                f"{len(os.sched_getaffinity(0))})",
                flush=True,
            )
        wall_one, wall_two = statistics.median(ones), statistics.median(twos)

    if not args.workers_only:
        report_pruning(full, pruned, wall_full, wall_pruned)
    print(f"RESULT sweep_wall_s_workers1 {wall_one:.1f}")
    print(f"RESULT sweep_wall_s_workers2 {wall_two:.1f}")
    print(f"RESULT sweep_workers_speedup {wall_one / wall_two:.3f}")


def report_pruning(full: list[dict], pruned: list[dict], wall_full: float, wall_pruned: float) -> None:
    epochs_full, epochs_pruned = sum(t["epochs"] for t in full), sum(t["epochs"] for t in pruned)
    print(f"RESULT sweep_best_val_accuracy_unpruned {max(t['best'] for t in full if t['best'] is not None):.4f}")
    print(f"RESULT sweep_best_val_accuracy_pruned {max(t['best'] for t in pruned if t['best'] is not None):.4f}")
    print(f"RESULT sweep_epochs_unpruned {epochs_full}")
    print(f"RESULT sweep_epochs_pruned {epochs_pruned}")
    print(f"RESULT sweep_epochs_saved_fraction {1 - epochs_pruned / epochs_full:.3f}")
    print(f"RESULT sweep_wall_s_unpruned {wall_full:.1f}")
    print(f"RESULT sweep_wall_s_pruned {wall_pruned:.1f}")


if __name__ == "__main__":
    main()
