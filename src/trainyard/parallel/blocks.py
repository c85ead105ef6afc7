"""Cutting a model into stages: its blocks in forward order, where the cuts go, and the chain that runs them.

Shared by ``parallel.strategy: model`` (all stages in one process, one device each) and
``parallel.strategy: pipeline`` (one process per stage). A model splits when it is an ``nn.Sequential``,
a torchvision ResNet, or when it lists its blocks itself::

    class MyNet(nn.Module):
        def pipeline_blocks(self) -> list[tuple[str, nn.Module]]:
            return [("embed", self.embed), ("body.0", self.body[0]), ("body.1", self.body[1]), ("head", self.head)]

where running the blocks one after the other equals ``forward``, and every parameter lives in a block.
Block names are the model's own attribute paths, so a stage's ``state_dict`` keys are the whole model's keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from trainyard.devices import resolve_device
from trainyard.errors import ConfigError

NamedBlocks = list[tuple[str, nn.Module]]


def named_blocks(model: nn.Module, where: str) -> NamedBlocks:
    """The model's blocks in forward order, named by their attribute paths."""
    if hasattr(model, "pipeline_blocks"):
        blocks = [(str(name), block) for name, block in model.pipeline_blocks()]
    elif isinstance(model, nn.Sequential):
        blocks = list(model.named_children())
    elif type(model).__name__ == "ResNet" and all(hasattr(model, a) for a in ("conv1", "layer4", "avgpool", "fc")):
        # torchvision's ResNet.forward: these modules in this order, with torch.flatten(x, 1) before fc
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
        blocks = [(n, getattr(model, n)) for n in names] + [("flatten", nn.Flatten(1)), ("fc", model.fc)]
    else:
        raise ConfigError(
            f"{where}: {type(model).__name__} cannot be split into stages in order; use an nn.Sequential, "
            "a torchvision ResNet, or give the model a pipeline_blocks() method returning (name, block) pairs in forward order"
        )
    if not blocks:
        raise ConfigError(f"{where}: {type(model).__name__} has no blocks to split")
    inside = {id(t) for _, b in blocks for t in [*b.parameters(), *b.buffers()]}
    outside = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if id(t) not in inside]
    if outside:
        raise ConfigError(
            f"{where}: {type(model).__name__} cannot be split into stages in order: {', '.join(outside[:3])} "
            "belong to no block of pipeline_blocks()"
        )
    return blocks


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def balanced_starts(costs: Sequence[int], stages: int) -> list[int]:
    """First block of each stage so the largest stage cost is as small as possible (contiguous stages,
    each at least one block); ties go to the more even split, then to later cuts."""
    n = len(costs)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    # best[k][i]: (max cost, sum of squares) splitting the first i blocks into k stages; cut[k][i]: start of stage k
    inf = (float("inf"), float("inf"))
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = (0, 0)
    for k in range(1, stages + 1):
        for i in range(k, n - (stages - k) + 1):
            for j in range(k - 1, i):
                prev = best[k - 1][j]
                if prev == inf:
                    continue
                load = prefix[i] - prefix[j]
                cand = (max(prev[0], load), prev[1] + load * load)
                if cand <= best[k][i]:  # on ties the later cut: parameter-free blocks (ReLU, ...) stay with the block before them
                    best[k][i], cut[k][i] = cand, j
    starts, i = [], n
    for k in range(stages, 0, -1):
        i = cut[k][i]
        starts.append(i)
    return starts[::-1]


def split_starts(blocks: NamedBlocks, stages: int, split: Any) -> list[int]:
    """``parallel.split`` as the first block index of each stage."""
    n = len(blocks)
    if stages > n:
        raise ConfigError(f"parallel.devices: {stages} stages but the model has only {n} blocks in order; use at most {n} devices")
    counts = [parameter_count(b) for _, b in blocks]
    if split == "auto":
        with_params = sum(1 for c in counts if c)
        if stages > with_params:
            raise ConfigError(
                f"parallel.devices: {stages} stages but only {with_params} of the model's {n} blocks hold parameters; use at most "
                f"{with_params} devices"
            )
        return _check_every_stage_learns(balanced_starts(counts, stages), counts, split)
    if not isinstance(split, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in split):
        raise ConfigError(f"parallel.split={split}: expected auto or a list of block indices where stages start, e.g. [0, 3]")
    starts = split if split[:1] == [0] else [0, *split]
    if len(starts) != stages:
        raise ConfigError(f"parallel.split={split}: gives {len(starts)} stages but parallel.devices gives {stages}")
    if any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= n:
        raise ConfigError(f"parallel.split={split}: stage starts must increase and lie in 1..{n - 1} (the model has {n} blocks)")
    return _check_every_stage_learns(starts, counts, split)


def _check_every_stage_learns(starts: list[int], counts: list[int], split: Any) -> list[int]:
    """A stage without parameters would have nothing to train (and its optimizer nothing to hold)."""
    for k, (a, b) in enumerate(zip(starts, [*starts[1:], len(counts)])):
        if not sum(counts[a:b]):
            raise ConfigError(
                f"parallel.split={split}: stage {k} (blocks {a}..{b - 1}) holds no parameters; move a split point or use fewer devices"
            )
    return starts


def stage_devices(spec: Any, strategy: str) -> list[torch.device]:
    """``parallel.devices`` as one device per stage: a list of names or CUDA indices, a count
    (that many CUDA devices, or that many CPU stages without CUDA), or auto (every CUDA device)."""
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        if cuda < 2:
            raise ConfigError(
                f"parallel.devices=auto: parallel.strategy={strategy} needs 2 or more devices and {cuda} CUDA device(s) are here; "
                "give a count (parallel.devices=2: two CPU stages without CUDA) or a list such as [cuda:0, cuda:1]"
            )
        return [torch.device("cuda", i) for i in range(cuda)]
    if isinstance(spec, int):
        if not cuda:
            return [torch.device("cpu")] * spec
        if spec > cuda:
            raise ConfigError(f"parallel.devices={spec}: only {cuda} CUDA device(s) here")
        return [torch.device("cuda", i) for i in range(spec)]
    if not spec:
        raise ConfigError("parallel.devices=[]: give at least one device")
    devices = []
    for item in spec:
        name = f"cuda:{item}" if isinstance(item, int) and not isinstance(item, bool) else str(item)
        try:
            devices.append(resolve_device(name))
        except ConfigError as exc:
            reason = str(exc).split(": ", 1)[-1].split("; use")[0]
            raise ConfigError(f"parallel.devices entry {name}: {reason}; allowed: cpu, cuda:N, mps, or a CUDA index") from None
    return devices


def bubble_fraction(stages: int, microbatches: int) -> float:
    """Idle share of a fill-drain pipeline step: (K - 1) / (M + K - 1)."""
    return (stages - 1) / (microbatches + stages - 1)


@dataclass
class Split:
    """Which blocks each stage holds, on which device."""

    blocks: NamedBlocks
    starts: list[int]
    devices: list[torch.device]

    def stage_blocks(self, stage: int) -> NamedBlocks:
        end = self.starts[stage + 1] if stage + 1 < len(self.starts) else len(self.blocks)
        return self.blocks[self.starts[stage] : end]

    @property
    def stages(self) -> int:
        return len(self.starts)

    def stage_parameters(self) -> list[int]:
        return [sum(parameter_count(b) for _, b in self.stage_blocks(k)) for k in range(self.stages)]

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for k, params in enumerate(self.stage_parameters()):
            names = [n for n, _ in self.stage_blocks(k)]
            first = self.starts[k]
            out.append(
                {
                    "stage": k,
                    "device": str(self.devices[k]),
                    "blocks": f"{first}-{first + len(names) - 1}",
                    "names": names,
                    "parameters": params,
                }
            )
        return out

    def table(self) -> str:
        total = max(sum(self.stage_parameters()), 1)
        lines = []
        for row in self.summary():
            names = ", ".join(row["names"])
            if len(names) > 48:
                names = names[:45] + "..."
            lines.append(
                f"  stage {row['stage']} on {row['device']}: blocks {row['blocks']} ({names}), "
                f"{row['parameters']:,} parameters ({100 * row['parameters'] / total:.0f}%)"
            )
        return "\n".join(lines)


def plan_split(model: nn.Module, devices: list[torch.device], split: Any, where: str) -> Split:
    blocks = named_blocks(model, where)
    return Split(blocks, split_starts(blocks, len(devices), split), devices)


def to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


class BlockChain(nn.Module):
    """Named blocks run one after the other. With ``devices`` (one per block), a block's input is moved to
    its device first; that is a copy only at stage boundaries. ``state_dict`` keys are the blocks' names,
    the same keys as in the model they came from."""

    def __init__(self, blocks: NamedBlocks, devices: Sequence[torch.device] | None = None):
        super().__init__()
        for name, block in blocks:
            parent: nn.Module = self
            *path, leaf = name.split(".")
            for part in path:
                child = dict(parent.named_children()).get(part)
                if child is None:
                    child = nn.Module()
                    parent.add_module(part, child)
                parent = child
            parent.add_module(leaf, block)
        # a plain list (not registered twice): the blocks in order, each with the device its input must be on
        self._steps: list[tuple[nn.Module, torch.device | None]] = [
            (block, devices[i] if devices is not None and (i == 0 or devices[i] != devices[i - 1]) else None)
            for i, (_, block) in enumerate(blocks)
        ]

    def forward(self, x: Any) -> Any:
        for block, device in self._steps:
            if device is not None:
                x = to_device(x, device)
            x = block(x)
        return x
