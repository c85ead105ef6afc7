"""metrics.jsonl: one JSON object per logged point, ``{"step": 50, "epoch": 0, "train/loss": 0.31, ...}``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

from trainyard.track import Tracker


class JsonlTracker(Tracker):
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        row = {"step": step, "epoch": epoch}
        row.update({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self, status: str) -> None:
        self._file.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
