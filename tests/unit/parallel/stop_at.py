"""A callback for tests/unit/parallel/test_fsdp.py, plugged in as ``callbacks=[stop_at:StopAt]``: every rank acts
as if Ctrl-C (SIGINT) had come right after optimizer step ``STOP_AT`` (default 6), so the run saves ``last.pt`` there,
mid-epoch, and exits 130 (interrupted), at a step known in advance."""

from __future__ import annotations

import os
import signal


class StopAt:
    def on_step_end(self, trainer, step, loss) -> None:
        if step == int(os.environ.get("STOP_AT", "6")) and trainer.signals is not None:
            trainer.signals.received = signal.SIGINT
