"""One process, one device."""

from __future__ import annotations

import os

from trainyard.devices import resolve_device
from trainyard.errors import ConfigError
from trainyard.parallel import Strategy


class SingleDevice(Strategy):
    name = "single"

    def setup(self) -> None:
        world = os.environ.get("WORLD_SIZE", "1")
        if self.name == "single" and world.isdigit() and int(world) > 1:  # started by torchrun: every process would train alone
            raise ConfigError(f"parallel.strategy=single: this is one of {world} processes started by torchrun; add parallel.strategy=ddp")
        self.device = resolve_device(self.cfg.trainer.device)
