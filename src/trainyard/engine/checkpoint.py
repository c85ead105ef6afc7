"""Checkpoints: written atomically, loaded with ``weights_only=True``, holding everything a run needs
to continue exactly (model, optimizer, scheduler, scaler, counters, RNG states, data position).

A whole checkpoint is one file, ``last.pt``. A sharded one (fsdp) is the same file without the model and the
optimizer, naming (``"sharded"``) a folder beside it, ``last-s<step>-<id>.dcp``, in which every rank wrote its
own part (``trainyard.parallel.shards``). Such folders are never written in place: each save writes a new
one under a temporary name, renames it into place, then swaps the small file over the old one, so a kill at
any point leaves ``last.pt`` and the folder it names whole; folders no ``*.pt`` names any more are removed.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from trainyard.errors import CANNOT_WRITE, CheckpointError, write_error

FORMAT = "trainyard-checkpoint-1"


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resumed_batch(state: dict[str, Any], batch_size: int, world_size: int) -> tuple[int, str | None]:
    """Where in its epoch a resumed run continues, in batches of this run's loader, and a line saying so when the
    world size or the per-device batch changed (None when not).

    An epoch's order is one permutation of the split whatever the world size (``DistributedSampler``'s, from the
    seed and the epoch), dealt round-robin over the ranks: after k batches of b on each of w ranks its first
    k*b*w samples are done. At another world size or batch the rest is dealt over the new ranks from the last
    multiple of the new global batch at or before that point, so every rank has as many batches as the others;
    the samples between that point and the one reached (fewer than one new global batch) are trained again."""
    batch = state["batch"]
    saved_world = state.get("world_size", world_size)  # older checkpoints: assume the world size they ran at
    saved_batch = (state.get("config") or {}).get("loader", {}).get("batch_size", batch_size)
    if not batch or (saved_world, saved_batch) == (world_size, batch_size):
        return batch, None
    done = batch * saved_batch * saved_world
    moved = done // (batch_size * world_size)
    start = moved * batch_size * world_size
    line = (
        f"resumed at {world_size} process{'es' if world_size > 1 else ''} x loader.batch_size {batch_size} "
        f"(saved at {saved_world} x {saved_batch}): epoch {state['epoch'] + 1} continues from sample {start} of its order, "
        f"dealt over the new processes"
    )
    if start < done:
        line += f"; its samples {start}-{done - 1} are trained a second time"
    return moved, line


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file beside ``path``, then rename over it: a kill mid-write leaves the old file whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:  # a file object: a failed write comes back as its OSError, not only torch's message
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in CANNOT_WRITE:
            raise write_error(exc, path) from None
        raise
    except RuntimeError as exc:  # torch's zip writer reports a failed write as its own error, the OSError as context
        cause = exc.__context__
        if isinstance(cause, OSError) and cause.errno in CANNOT_WRITE:
            raise write_error(cause, path) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def save_sharded_checkpoint(
    folder: Path, name: str, state: dict[str, Any], shards: dict[str, Any], strategy: Any, *, also: str | None = None
) -> None:
    """Collective: every rank writes its part of ``shards`` into a new folder; then the primary renames it into
    place and writes ``name`` (the rest of ``state``) naming it, and ``also`` as a copy of that small file."""
    from trainyard.parallel.shards import save_shards  # torch.distributed.checkpoint: imported where it is used

    folder = Path(folder)
    tag = strategy.broadcast_object(f"{Path(name).stem}-s{state['step']}-{os.urandom(4).hex()}.dcp")
    tmp, final = folder / f".{tag}.tmp", folder / tag
    try:
        save_shards(shards, tmp)
        strategy.barrier()  # every part written and fsynced before the folder becomes a checkpoint
        if strategy.is_primary:
            os.replace(tmp, final)
            _fsync_dir(folder)
            save_checkpoint(folder / name, {**state, "sharded": final.name})
            if also is not None:
                link_checkpoint(folder / name, folder / also)
            remove_unnamed_shards(folder)
    except OSError as exc:
        if exc.errno in CANNOT_WRITE:
            raise write_error(exc, tmp) from None
        raise
    finally:
        if strategy.is_primary and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    strategy.barrier()


def remove_unnamed_shards(folder: Path) -> None:
    """Remove the sharded folders (and the temporary ones of saves that were killed) no ``*.pt`` file here names."""
    if not any(e.name.endswith((".dcp", ".dcp.tmp")) for e in Path(folder).iterdir()):
        return
    named = set()
    for pointer in Path(folder).glob("*.pt"):
        try:
            state = torch.load(pointer, map_location="cpu", weights_only=True, mmap=True)  # mmap: a whole checkpoint is not read
        except Exception:  # noqa: BLE001 - a torn or foreign file names nothing
            continue
        if isinstance(state, dict) and isinstance(state.get("sharded"), str):
            named.add(Path(state["sharded"]).name)
    for entry in Path(folder).iterdir():
        if entry.is_dir() and (entry.name.endswith(".dcp") or entry.name.endswith(".dcp.tmp")) and entry.name not in named:
            shutil.rmtree(entry, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_checkpoint(source: Path, target: Path) -> str:
    """``target`` becomes an independent file holding the same checkpoint as ``source``, swapped in atomically
    (a temporary file beside it, fsynced, then renamed over it: a kill mid-way leaves the old ``target`` whole).

    Independent: writing into either file in place (``cp backup.pt last.pt``) leaves the other as it was, and
    a later save of ``source`` replaces its own file only. Neither a hard link nor a symlink keeps that promise
    (``cp`` writes through both into the one shared file), so the bytes are shared only copy-on-write:

    - ``clone``: a reflink (Linux ``ioctl(FICLONE)``; btrfs, XFS with reflink, bcachefs, ZFS 2.2+, overlayfs
      over one of these): the two files share their blocks until one is written to, so the weights are
      written once however large they are;
    - ``copy``: elsewhere (ext4, tmpfs, Windows, macOS) a copy, in the kernel where it can
      (``os.copy_file_range``, which NFS 4.2 and SMB servers do on their side) else ``shutil`` - the only way
      two independent files exist on such a file system, at the cost of writing the weights a second time
      in the epochs that improved the monitored metric. The disk room the doctor asks for already counts
      ``best.pt`` as a file of its own.

    Returns which of the two it did."""
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            how = "clone" if _clone(src, dst) else "copy"
            if how == "copy":
                _copy(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno in CANNOT_WRITE:
            raise write_error(exc, target) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return how


_FICLONE = getattr(fcntl, "FICLONE", 0x40049409) if fcntl is not None and sys.platform.startswith("linux") else None


def _clone(src: Any, dst: Any) -> bool:
    """Share ``src``'s blocks with the empty ``dst`` (a reflink); False where the file system cannot."""
    if _FICLONE is None:
        return False
    try:
        fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
    except OSError:  # EOPNOTSUPP, EXDEV, EINVAL, ENOTTY...: not a copy-on-write file system
        return False
    return True


def _copy(src: Any, dst: Any) -> None:
    size = os.fstat(src.fileno()).st_size
    if hasattr(os, "copy_file_range"):
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(src.fileno(), dst.fileno(), size - done, done, done)
                if n == 0:
                    break
                done += n
            if done == size:
                return
        except OSError as exc:  # ENOSYS, EXDEV, EINVAL on older kernels or some file systems: copy in user space
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO):
                raise  # a copy in user space would fail the same way
        dst.seek(0)
        dst.truncate()
    src.seek(0)
    shutil.copyfileobj(src, dst, 1 << 20)


def load_checkpoint(path: Path, map_location: Any = "cpu", *, weights: bool = True) -> dict[str, Any]:
    """The checkpoint in ``path``. Sharded: ``state["sharded"]`` becomes the folder's path, and with ``weights``
    the model and the optimizer are read from it whole, in the format a whole checkpoint holds (one process,
    no process group); without, they are left to ``Strategy.load_sharded_state``, each rank reading its part."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path}: corrupt or not a torch checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a trainyard checkpoint (no '{FORMAT}' marker)")
    if isinstance(state.get("sharded"), str):
        shards = path.parent / Path(state["sharded"]).name
        if not (shards / ".metadata").is_file():
            raise CheckpointError(f"checkpoint {path}: names the sharded folder {shards}, which is missing or incomplete")
        state["sharded"] = str(shards)
        if weights:
            from trainyard.parallel.shards import read_full

            try:
                state.update(read_full(shards, map_location))
            except (RuntimeError, ValueError, OSError, pickle.UnpicklingError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CheckpointError(f"checkpoint {shards}: corrupt sharded checkpoint ({first[:160]})") from None
    return state
