"""Checks on where the run writes: the run folder and the disk room for its checkpoints."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from trainyard.doctor import Finding, fail, ok, warn
from trainyard.doctor.context import Context, human_bytes

OPTIMIZER_STATES = {"adam": 2, "adamw": 2}  # tensors per parameter besides the weights (exp_avg, exp_avg_sq)
CHECKPOINT_COPIES = 3  # last.pt, best.pt, and the temporary file of an atomic write
LOG_ROOM = 64 * 2**20  # event files, metrics.jsonl, figures


def checkpoint_bytes(ctx: Context) -> int:
    """Parameters x (1 + optimizer states) + buffers: what one checkpoint holds, give or take the small fields."""
    model = ctx.model
    o = ctx.cfg.optim
    states = OPTIMIZER_STATES.get(o.name, 1 if o.name == "sgd" and o.momentum > 0 else 0)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return weights + states * trained + buffers + 64 * 1024


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def run_folder(ctx: Context) -> Finding:
    """11. The run folder can be created and written, and the disk has room for the checkpoints."""
    cfg = ctx.cfg
    root = Path(cfg.track.root)
    if cfg.name is not None and (root / cfg.name).exists():
        return fail(
            f"run folder {root / cfg.name} already exists",
            f"pick another name=..., or continue it with `trainyard train --resume {root / cfg.name}`",
        )
    existing = nearest_existing(root)
    if not existing.is_dir():
        return fail(f"track.root={cfg.track.root}: {existing} is a file, not a folder", "point track.root at a folder")
    try:  # create (and remove) what the run would create, without leaving anything behind
        probe = Path(tempfile.mkdtemp(prefix=".trainyard-doctor-", dir=existing))
        (probe / "probe").write_bytes(b"x")
        shutil.rmtree(probe)
    except OSError as exc:
        return fail(
            f"track.root={cfg.track.root}: cannot write in {existing} ({exc.strerror or exc})", "point track.root at a writable folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        return fail(f"track.root={cfg.track.root}: {existing} is not writable", "point track.root at a writable folder")
    size = checkpoint_bytes(ctx)
    need = CHECKPOINT_COPIES * size + LOG_ROOM
    free = shutil.disk_usage(existing).free
    seen = (
        f"{root} writable; checkpoints ~{human_bytes(size)} each, ~{human_bytes(need)} with best.pt, the atomic write and logs; "
        f"{human_bytes(free)} free"
    )
    if free < need:
        return fail(seen, f"free disk space on {existing} or point track.root at a larger disk")
    if free < 2 * need:
        return warn(seen + ": tight", "free some space: the disk may fill while the run writes")
    return ok(seen)
