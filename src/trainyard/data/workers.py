"""``loader.num_workers: auto``: the value ``trainyard tune-workers`` measured for this data on this
machine (stored in ``~/.cache/trainyard``), else a heuristic, and where it came from. The measuring
itself is ``trainyard.tools.workers``."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

from trainyard.config import RunConfig, to_dict
from trainyard.devices import cpu_count  # also imported from here by tools/ and the doctor
from trainyard.files import atomic_write

DATA_BOUND = 0.30  # waiting for data more than this share of the time: the run is data-bound


def heuristic_num_workers() -> int:
    """Without a measurement: leave one core for the training process, at most 4."""
    return max(0, min(4, cpu_count() - 1))


# --- the stored measurements that `auto` reads ------------------------------------------------


def cache_path() -> Path:
    root = os.environ.get("TRAINYARD_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "trainyard")
    return Path(root) / "num_workers.json"


def fingerprint(cfg: RunConfig) -> str:
    """What the best num_workers depends on: the data and its transforms, the batch, the model, the device, this machine."""
    key = {
        "data": to_dict(cfg.data),
        "loader": {k: v for k, v in to_dict(cfg.loader).items() if k != "num_workers"},
        "model": to_dict(cfg.model),
        "device": cfg.trainer.device,
        "precision": cfg.trainer.precision,
        "host": platform.node(),
        "cpus": cpu_count(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stored_num_workers(cfg: RunConfig) -> int | None:
    try:
        entry = json.loads(cache_path().read_text(encoding="utf-8")).get(fingerprint(cfg))
    except (OSError, ValueError):
        return None
    return int(entry["num_workers"]) if isinstance(entry, dict) and "num_workers" in entry else None


def store_num_workers(cfg: RunConfig, num_workers: int) -> Path | None:
    """Remember a measurement for ``auto``. A cache that cannot be written is skipped, not an error."""
    path = cache_path()
    try:
        entries = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if not isinstance(entries, dict):
            entries = {}
        entries[fingerprint(cfg)] = {
            "num_workers": num_workers,
            "dataset": cfg.data.dataset,
            "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(entries, indent=1, sort_keys=True))
        return path
    except (OSError, ValueError):
        return None


def resolve_auto(cfg: RunConfig) -> tuple[int, str]:
    """``loader.num_workers`` as a number, and where it came from (for the run's log)."""
    value = cfg.loader.num_workers
    if value != "auto":
        return int(value), "set"
    stored = stored_num_workers(cfg)
    if stored is not None:
        return stored, f"measured by trainyard tune-workers for this data on this machine ({cache_path()})"
    return (
        heuristic_num_workers(),
        f"not measured yet, so a guess (CPU count {cpu_count()} - 1, at most 4); measure it with `trainyard tune-workers`",
    )
