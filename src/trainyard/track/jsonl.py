"""metrics.jsonl: one JSON object per logged point, ``{"step": 50, "epoch": 0, "train/loss": 0.31, ...}``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

from trainyard.track import Tracker


class JsonlTracker(Tracker):
    """Rows are kept in memory and appended together at ``flush()`` (the trackers' clock, each epoch end)
    and ``close()``: one write of whole lines, so a reader never sees half a row."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._rows: list[str] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        row = {"step": step, "epoch": epoch}
        row.update({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})
        self._rows.append(json.dumps(row) + "\n")

    def flush(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, []
            self._file.write("".join(rows))
            self._file.flush()

    def close(self, status: str) -> None:
        self.flush()
        self._file.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    complete = text[: text.rfind("\n") + 1]  # a run still writing may have half a line at the end
    rows = []
    for line in complete.splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:  # a row a killed writer cut short, later appended to: the others still count
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
