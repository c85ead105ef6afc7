"""The run folder: ``<track.root>/<name or timestamp>/`` with config.yaml, status.json, metrics.jsonl,
event files and checkpoints/. An existing folder is never reused except by resuming it."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from trainyard.config import RunConfig, to_yaml
from trainyard.errors import ConfigError, TrainyardError
from trainyard.files import atomic_write


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
    try:
        write_config(path, cfg)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # this command made it; it holds nothing
        raise
    return path


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    """config.yaml, replaced atomically: a failed write leaves the previous one."""
    atomic_write(Path(run_dir) / "config.yaml", to_yaml(cfg))


def write_status(run_dir: Path, **fields: Any) -> None:
    """Merge ``fields`` into status.json (atomically): status, started, ended, duration_s, metrics..."""
    data = read_status(run_dir)
    data.update(fields)
    atomic_write(Path(run_dir) / "status.json", json.dumps(data, indent=2, default=str))


def cut_torn_tail(path: Path) -> None:
    """Drop the half line a killed writer may have left at the end of a JSON-lines file (metrics.jsonl), so that
    what a resume appends starts on a line of its own."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            tail = min(size, 1 << 20)
            f.seek(size - tail)
            chunk = f.read(tail)
            cut = chunk.rfind(b"\n")
            f.truncate(size - tail + cut + 1 if cut >= 0 else (0 if tail == size else size))
    except FileNotFoundError:
        return


def cut_rows_after(path: Path, step: int) -> None:
    """Drop the JSON-lines rows past ``step``, the step a resume starts from: a run killed after logging a row but
    before its checkpoint landed trains those steps again and logs them again (TensorBoard's writer purges the same)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return

    def past(line: str) -> bool:
        try:
            row = json.loads(line)
        except ValueError:
            return False
        return isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step

    kept = [line for line in lines if not past(line)]
    if len(kept) != len(lines):
        atomic_write(path, "".join(kept))


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


LOCK_FILE = ".lock"


class RunLock:
    """The one writer of a run folder: an exclusive ``flock`` on ``RUN/.lock``, which holds the writer's pid, host
    and command. The kernel drops the lock when the process dies, however it dies, so a killed run never blocks
    its own resume. Where ``fcntl`` is missing, or the folder's file system refuses locks, nothing is locked."""

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`TrainyardError` naming the process that holds it; changes nothing then."""
        try:
            import fcntl
        except ImportError:  # e.g. Windows: no lock, as before
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:  # a read-only folder: whatever would write there fails on its own
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise TrainyardError(
                    f"run folder {self.path.parent} is in use by {holder}; wait for it to end (or stop it) first"
                ) from None
            except OSError:  # a file system without locks
                os.close(fd)
                return self
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except OSError:
                same = False
            if same:  # not a file the previous holder unlinked as it let go
                break
            os.close(fd)
        self.fd = fd
        import sys

        argv = list(sys.argv)
        if argv and (argv[0].endswith("__main__.py") or Path(argv[0]).name == "trainyard"):
            argv[0] = "trainyard"
        command = " ".join(argv) if argv and argv[0] else ""
        text = json.dumps({"pid": os.getpid(), "host": platform.node(), "command": command[:300], "time": time.time()}) + "\n"
        try:
            os.ftruncate(fd, 0)
            os.write(fd, text.encode("utf-8"))
        except OSError:
            pass
        return self

    def release(self) -> None:
        """Remove the lock file and let go (no effect when not held)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still held: a process that opened it meanwhile sees another inode and retries
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """``pid 123 on host (python -m trainyard train ...)`` from a lock file, or ``another process``."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8"))
        text = f"pid {int(info['pid'])} on {info.get('host') or 'an unknown host'}"
        if info.get("command"):
            text += f" ({info['command']})"
        return text
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def lock_run_dir(run_dir: Path | str) -> RunLock:
    """Take ``run_dir``'s writer lock (see :class:`RunLock`)."""
    return RunLock(run_dir).acquire()


def check_free(run_dir: Path | str) -> None:
    """Refuse now, with the lock's one line, a run folder another process writes in. The rank that trains takes
    the lock again for itself; this only spares starting the processes of a run that would be refused."""
    RunLock(run_dir).acquire().release()
