"""SIGINT and SIGTERM over a whole run, one way in every phase: set-up, training, validation, test, saving.

While the loop trains (``deferred``) a signal is only noted: the loop stops at its next safe point, after the
step, validation or save under way, with last.pt saved. Elsewhere (``immediate``: set-up, the final test) there is
no state worth waiting for, so the signal stops the run at once. A second signal always stops at once: the person
pressing Ctrl-C again does not want to wait for a long save (last.pt is written atomically, so the previous one
stays whole)."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from trainyard.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self) -> None:
        self.received: int | None = None
        self.deferred_mode = False
        self.phase = "set-up"
        self.run_dir: Path | None = None
        # what the stop says when it happens at once in this phase; None: the default (last.pt saved, resume)
        self.detail: Callable[[], str | None] = lambda: None
        self.previous: dict[int, Any] = {}

    def install(self) -> "StopSignals":
        """Handle both signals in this process until :meth:`restore` (only the main thread may; elsewhere a no-op)."""
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in SIGNALS}
        return self

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def handle(self, signum: int, frame: Any) -> None:
        again = self.received is not None
        self.received = signum
        if again or not self.deferred_mode:
            raise self.interrupted(signum)

    def interrupted(self, signum: int | None = None) -> Interrupted:
        return Interrupted(signum or self.received or signal.SIGTERM, self.run_dir, self.detail())

    @contextlib.contextmanager
    def deferred(self, phase: str) -> Iterator["StopSignals"]:
        """Signals only noted while the body runs; the body polls :attr:`received` at its safe points."""
        before = (self.deferred_mode, self.phase)
        self.deferred_mode, self.phase = True, phase
        try:
            yield self
        finally:
            self.deferred_mode, self.phase = before

    @contextlib.contextmanager
    def immediate(self, phase: str, detail: Callable[[], str | None] | None = None) -> Iterator["StopSignals"]:
        """A signal while the body runs stops it at once with ``detail``; one noted before stops it on entry."""
        before = (self.deferred_mode, self.phase, self.detail)
        self.deferred_mode, self.phase = False, phase
        if detail is not None:
            self.detail = detail
        try:
            if self.received is not None:
                raise self.interrupted()
            yield self
        finally:
            self.deferred_mode, self.phase, self.detail = before
