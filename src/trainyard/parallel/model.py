"""``parallel.strategy: model``: one process, the model's blocks split into stages on ``parallel.devices``.

The generalised ``seq2(seq1(x).to("cuda:1"))``: each stage's blocks live on its device and the activations
move to the next stage's device between blocks. Only one device works at a time (no micro-batching);
``parallel.strategy: pipeline`` overlaps the stages. Inputs go to the first stage's device; the loss and
logits come back there, so the step loop's accumulators live on one device.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager

import torch
from torch import nn

from trainyard.devices import move
from trainyard.parallel import Strategy
from trainyard.parallel.blocks import BlockChain, Split, plan_split, stage_devices


class ModelParallel(Strategy):
    name = "model"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.devices: list[torch.device] = []
        self.split: Split | None = None

    def setup(self) -> None:
        self.devices = stage_devices(self.cfg.parallel.devices, self.name)
        self.device = self.devices[0]
        for device in self.devices:
            if device.type == "cuda":
                torch.cuda.set_device(device)  # the first CUDA stage is current; each block still runs on its own device
                break

    def wrap(self, model: nn.Module) -> nn.Module:
        self.split = split = plan_split(model, self.devices, self.cfg.parallel.split, f"model.name={self.cfg.model.name}")
        devices = []
        for k in range(split.stages):
            for _, block in split.stage_blocks(k):
                block.to(split.devices[k])
                devices.append(split.devices[k])
        if self.is_primary:
            print(f"model parallel: {split.stages} stages\n{split.table()}", flush=True)
        return BlockChain(split.blocks, devices)

    def forward_backward(
        self,
        model: nn.Module,
        x: Any,
        y: torch.Tensor,
        loss_fn: Callable,
        autocast: Callable[[], ContextManager],
        scale: Callable[[torch.Tensor], torch.Tensor],
    ):
        # the output comes off the last stage's device: the targets meet it there
        loss, out = super().forward_backward(model, x, y.to(self.split.devices[-1], non_blocking=True), loss_fn, autocast, scale)
        # back to the first stage's device, where the step loop accumulates (a small copy, no host sync)
        return loss.to(self.device, non_blocking=True), move(out, self.device)

    def predict(self, model: nn.Module, x: Any) -> Any:
        return move(model(x), self.device)

    def describe(self) -> str:
        if self.split is None:
            return f"model parallel on {', '.join(str(d) for d in self.devices)}"
        parts = [f"stage {row['stage']} {row['device']} blocks {row['blocks']} {row['parameters']} params" for row in self.split.summary()]
        return f"model parallel, {self.split.stages} stages: " + "; ".join(parts)
