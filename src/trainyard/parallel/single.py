"""One process, one device."""

from __future__ import annotations

from trainyard.parallel import Strategy
from trainyard.parallel.launch import resolve_device


class SingleDevice(Strategy):
    name = "single"

    def setup(self) -> None:
        self.device = resolve_device(self.cfg.trainer.device)
