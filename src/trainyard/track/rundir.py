"""The run folder: ``<track.root>/<name or timestamp>/`` with config.yaml, status.json, metrics.jsonl,
event files and checkpoints/. An existing folder is never reused except by resuming it."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from trainyard.config import RunConfig, to_yaml
from trainyard.errors import ConfigError, TrainyardError


def fresh_name(root: Path | str) -> str:
    """A timestamp no folder under ``root`` has yet (``20261201-221235``, then ``-2``, ``-3``...)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name, n = stamp, 1
    while (Path(root) / name).exists():
        n += 1
        name = f"{stamp}-{n}"
    return name


def new_run_dir(cfg: RunConfig) -> Path:
    root = Path(cfg.track.root)
    if cfg.name is not None:
        if not cfg.name or "/" in cfg.name or cfg.name in (".", ".."):
            raise ConfigError(f"name={cfg.name!r}: must be a plain folder name")
        path = root / cfg.name
        if path.exists():
            raise TrainyardError(f"run folder {path} already exists; pick another name=..., or continue it with --resume {path}")
    else:
        path = root / fresh_name(root)
    try:
        (path / "checkpoints").mkdir(parents=True)
    except OSError as exc:
        raise TrainyardError(f"track.root={cfg.track.root}: cannot create run folder {path} ({exc.strerror})") from None
    (path / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    return path


def write_status(run_dir: Path, **fields: Any) -> None:
    """Merge ``fields`` into status.json (atomically): status, started, ended, duration_s, metrics..."""
    path = Path(run_dir) / "status.json"
    data = read_status(run_dir)
    data.update(fields)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_status(run_dir: Path) -> dict:
    path = Path(run_dir) / "status.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def environment() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "host": platform.node(),
        "pid": os.getpid(),
        "time": time.time(),
    }
