"""How long `trainyard doctor` takes on the default job, against the cost of starting trainyard at all.

Runs, alternating, each in a fresh process: ``python -m trainyard train --help`` (the CLI alone),
the imports any data-touching command pays (torch, torchvision's v2 transforms, scikit-learn's digits,
the engine with torchmetrics), and ``python -m trainyard doctor`` (all 12 checks on the default digits
job). Reports the median wall time and CPU time (user + sys of the child). The target: the doctor
finishes in under 15 s on 2 CPU cores. On a shared, oversubscribed machine wall time measures the
neighbours; CPU time is what 2 idle cores would take (the doctor is mostly single-threaded).

    python benchmarks/doctor_time.py [--repeats 3]
    OMP_NUM_THREADS=1 python benchmarks/doctor_time.py   # torch's intra-op threads spin when cores are oversubscribed
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


IMPORTS = "import trainyard.data.vision, trainyard.engine.trainer, trainyard.models.small, sklearn.datasets, torchvision.transforms.v2"


def timed(args: list[str], cwd: str) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", IMPORTS] if args == ["imports"] else [sys.executable, "-m", "trainyard", *args]
    r = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in (0, 1):
        raise SystemExit(f"trainyard {' '.join(args)} failed ({r.returncode}): {r.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, r.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores} CPU cores; load average before: {os.getloadavg()[0]:.1f}")
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    runs = {"train_help": ["train", "--help"], "imports": ["imports"], "doctor_default": ["doctor"]}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    last = ""
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            for key, args in runs.items():
                args = args + [f"track.root={tmp}/runs"] if key == "doctor_default" else args
                w, c, out = timed(args, tmp)
                wall[key].append(w), cpu[key].append(c)
                last = out if key == "doctor_default" else last
            print(f"repeat {i + 1}: " + ";  ".join(f"{k} {wall[k][-1]:.2f} s wall / {cpu[k][-1]:.2f} s CPU" for k in runs))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print("last doctor output:")
    print(last, end="")
    med = statistics.median
    for key in runs:
        print(f"RESULT {key}_wall_s {med(wall[key]):.2f}")
        print(f"RESULT {key}_cpu_s {med(cpu[key]):.2f}")
    print(f"RESULT doctor_default_under_15s_wall {'yes' if med(wall['doctor_default']) < 15 else 'no'}")
    print(f"RESULT doctor_default_under_15s_cpu {'yes' if med(cpu['doctor_default']) < 15 else 'no'}")


if __name__ == "__main__":
    main()
