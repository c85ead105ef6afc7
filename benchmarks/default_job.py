"""The default job end to end: `trainyard train` against the plain PyTorch script examples/train_torch.py
(same model, data split sizes, augmentation, optimizer, schedule and epochs), alternating, as whole
processes: wall time from process start to exit, and test accuracy.

    python benchmarks/default_job.py [--repeats 3]

Ends with RESULT lines: default_job_accuracy (median trainyard test accuracy; target >= 0.975),
default_job_wall_ratio (median trainyard wall time / median plain wall time; target <= 2),
and the two wall times.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: str) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    match = re.search(r"test accuracy ([0-9.]+)", proc.stdout)
    return wall, float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ours, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            plain.append(timed([sys.executable, str(ROOT / "examples" / "train_torch.py")], tmp))
            ours.append(timed([sys.executable, "-m", "trainyard", "train", f"name=bench-{i}"], tmp))
            print(
                f"run {i}: plain {plain[-1][0]:.1f}s acc {plain[-1][1]:.4f} | trainyard {ours[-1][0]:.1f}s acc {ours[-1][1]:.4f}",
                flush=True,
            )
    wall_ours = statistics.median(w for w, _ in ours)
    wall_plain = statistics.median(w for w, _ in plain)
    print(f"RESULT default_job_accuracy {statistics.median(a for _, a in ours):.4f}")
    print(f"RESULT plain_script_accuracy {statistics.median(a for _, a in plain):.4f}")
    print(f"RESULT default_job_wall_s {wall_ours:.2f}")
    print(f"RESULT plain_script_wall_s {wall_plain:.2f}")
    print(f"RESULT default_job_wall_ratio {wall_ours / wall_plain:.3f}")


if __name__ == "__main__":
    main()
