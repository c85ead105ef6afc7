"""The ground floor beside errors: a file replaced whole or not at all."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from trainyard.errors import CANNOT_WRITE, write_error


def atomic_write(path: Path | str, data: str | bytes) -> None:
    """Write ``data`` to a hidden temporary file beside ``path``, fsync it, then rename it over ``path``.

    A kill or a full disk mid-way leaves the previous file whole and no temporary file behind; a write refused
    for room or permission is one line (``WriteError``) naming the path and the room left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the bytes do
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno in CANNOT_WRITE:
            raise write_error(exc, path) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
