"""``parallel.strategy=dp``: ``nn.DataParallel``, one process driving several CUDA devices.

Each step scatters the batch over the devices, replicates the model onto them and gathers the outputs
on the first one: simple, but one Python process and one device do the gathering, so it scales worse
than ``ddp`` (one process per device). With fewer than two CUDA devices it warns and runs ``single``.
Here ``loader.batch_size`` is the batch that is split across the devices.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from trainyard.devices import resolve_device
from trainyard.parallel import Strategy
from trainyard.parallel.launch import cuda_device_ids, uses_cuda


class DataParallelStrategy(Strategy):
    name = "dp"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.device_ids: list[int] = []

    def setup(self) -> None:
        ids = cuda_device_ids(self.cfg.parallel.devices) if uses_cuda(self.cfg.trainer.device) else []
        if len(ids) < 2:
            self.device = resolve_device(self.cfg.trainer.device)
            print(
                f"trainyard: warning: parallel.strategy=dp needs two or more CUDA devices (found {len(ids)}); running single-device on "
                f"{self.device}",
                file=sys.stderr,
                flush=True,
            )
            return
        self.device_ids = ids
        self.device = torch.device("cuda", ids[0])
        torch.cuda.set_device(self.device)

    def wrap(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return nn.DataParallel(model, device_ids=self.device_ids) if self.device_ids else model

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.DataParallel) else model

    def describe(self) -> str:
        if not self.device_ids:
            return f"dp (as single) on {self.device}"
        return f"dp over cuda:{','.join(map(str, self.device_ids))} (each batch split across {len(self.device_ids)} devices)"
