"""Errors meant for people: each one prints as a single line and exits with code 2. And
:class:`Interrupted`, the stop a signal asks for."""

from __future__ import annotations

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


class Diverged(TrainyardError):
    """A non-finite loss or weights stopped the run (``trainer.on_nonfinite: stop``): status ``diverged``, exit 3."""

    exit_code = 3
    run_status = "diverged"


class Pruned(TrainyardError):
    """A sweep's pruner stopped this trial for falling behind: status ``pruned``, exit 4."""

    exit_code = 4
    run_status = "pruned"


class Interrupted(Exception):
    """SIGINT or SIGTERM: the run saved last.pt and stopped (exit 128 + the signal's number)."""

    def __init__(self, signum: int, run_dir: Path | str):
        self.signum = signum
        self.run_dir = Path(run_dir)
        name = signal.Signals(signum).name
        super().__init__(f"{name}: saved {self.run_dir / 'checkpoints' / 'last.pt'}; resume with: trainyard train --resume {self.run_dir}")
        self.exit_code = 128 + signum

    def __reduce__(self):  # rebuilt from its two arguments when it crosses a process boundary
        return (Interrupted, (self.signum, str(self.run_dir)))
