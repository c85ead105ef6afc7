"""Errors meant for people: each one prints as a single line and exits with code 2. And
:class:`Interrupted`, the stop a signal asks for."""

from __future__ import annotations

import errno
import shutil
import signal
from pathlib import Path


class TrainyardError(Exception):
    """A problem with the user's input (config, data, files). The CLI prints it on one line, exit 2."""

    exit_code = 2

    def __str__(self) -> str:
        # Raised in a DataLoader worker, the error comes back re-created from a message that holds the
        # worker's traceback; its last line is the original message.
        text = super().__str__()
        if "\nOriginal Traceback" in text:
            last = text.rstrip().splitlines()[-1]
            return last.split(": ", 1)[1] if ": " in last else last
        return text


class ConfigError(TrainyardError):
    """A bad config key or value."""


class DataError(TrainyardError):
    """Data that cannot be found, read or used."""


class CheckpointError(TrainyardError):
    """A checkpoint that cannot be loaded."""


class WriteError(TrainyardError):
    """A file that could not be written: a full disk, a quota, a file-size limit, a read-only folder (exit 1)."""

    exit_code = 1


# errors a user fixes by making room (or lifting a limit), not by changing the run
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
CANNOT_WRITE = NO_ROOM + (errno.EROFS, errno.EACCES, errno.EPERM)


def write_error(exc: OSError, path: Path | str | None = None) -> WriteError:
    """One line for an OSError raised while writing ``path``: what failed, where, and the room left there."""
    path = Path(path or exc.filename or "?")
    reason = exc.strerror or type(exc).__name__
    room = ""
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        room = f"; {format_bytes(shutil.disk_usage(folder).free)} free there"
    except OSError:
        pass
    if exc.errno == errno.EFBIG:
        room += " (a file-size limit: ulimit -f)"
    return WriteError(f"cannot write {path}: {reason}{room}; the files saved before are kept")


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (library errors run to pages), or its type where it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


class Diverged(TrainyardError):
    """A non-finite loss or weights stopped the run (``trainer.on_nonfinite: stop``): status ``diverged``, exit 3."""

    exit_code = 3
    run_status = "diverged"


class Pruned(TrainyardError):
    """A sweep's pruner stopped this trial for falling behind: status ``pruned``, exit 4."""

    exit_code = 4
    run_status = "pruned"


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped the run (exit 128 + the signal's number). ``detail`` says what was kept and what to
    run next; by default: last.pt saved, resume with ``--resume``.

    A BaseException, as KeyboardInterrupt is: the signal handler raises it wherever the run happens to be, and an
    ``except Exception`` there (a compile fallback, an optional graph trace, a user's import) must not swallow it."""

    def __init__(self, signum: int, run_dir: Path | str | None, detail: str | None = None):
        self.signum = signum
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.detail = detail
        if detail is None and self.run_dir is None:
            detail = "stopped before a run folder was made; nothing was saved"
        elif detail is None:
            detail = f"saved {self.run_dir / 'checkpoints' / 'last.pt'}; resume with: trainyard train --resume {self.run_dir}"
        super().__init__(f"{signal.Signals(signum).name}: {detail}")
        self.exit_code = 128 + signum

    def __reduce__(self):  # rebuilt from its arguments when it crosses a process boundary
        return (Interrupted, (self.signum, str(self.run_dir) if self.run_dir is not None else None, self.detail))
