"""Checkpoints: written atomically, loaded with ``weights_only=True``, holding everything a run needs
to continue exactly (model, optimizer, scheduler, scaler, counters, RNG states, data position)."""

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


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
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
    return state
