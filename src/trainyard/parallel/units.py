"""Which modules are units of their own: the blocks ``parallel.shard=auto`` finds in a model (or the classes a
list names), the ones fsdp shards one by one and activation checkpointing recomputes one by one."""

from __future__ import annotations

from typing import Any

from torch import nn

from trainyard.errors import ConfigError
from trainyard.parallel.blocks import named_blocks


def check_shard_setting(shard: Any) -> None:
    if shard == "auto":
        return
    if not isinstance(shard, list) or not shard or not all(isinstance(n, str) and n for n in shard):
        raise ConfigError(f"parallel.shard={shard}: expected auto or a list of module class names, e.g. [TransformerEncoderLayer]")


def shard_paths(model: nn.Module, shard: Any, where: str) -> list[str]:
    """Paths (``named_modules`` names) of the modules to shard on their own before the root, innermost first."""
    check_shard_setting(shard)
    modules = dict(model.named_modules())
    if shard == "auto":
        # a block under 1% of the parameters (a stem conv, a norm) is not worth its own all-gather: it stays with the root
        total = max(sum(q.numel() for q in model.parameters()), 1)
        candidates = [path for path in auto_blocks(model) if sum(q.numel() for q in modules[path].parameters()) >= 0.01 * total]
    else:
        have = sorted({type(m).__name__ for m in modules.values()})
        missing = [n for n in shard if n not in have]
        if missing:
            raise ConfigError(
                f"parallel.shard={shard}: {type(model).__name__} has no module of class {', '.join(missing)}; "
                f"its classes: {', '.join(have)}"
            )
        candidates = [path for path, m in modules.items() if path and type(m).__name__ in shard]
    owners = _parameter_owners(model)
    paths = []
    for path in candidates:
        module = modules[path]
        if not any(True for _ in module.parameters()):
            continue  # nothing to shard (ReLU, pooling)
        if any(
            owners[id(q)] - {path} and not all(o == path or o.startswith(path + ".") for o in owners[id(q)]) for q in module.parameters()
        ):
            continue  # a weight shared with a module outside (tied embeddings): it stays with the root
        paths.append(path)
    # innermost first, so a class list naming both a block and its parent shards the inner one first
    return sorted(paths, key=lambda p: -p.count(".") if p else 1)


def auto_blocks(model: nn.Module) -> list[str]:
    """The blocks trainyard knows in the model: pipeline_blocks(), an nn.Sequential's children, a ResNet's
    stages; else every layer of the largest ModuleList of like layers (transformer layers); else none."""
    modules = dict(model.named_modules())
    by_id = {id(m): path for path, m in modules.items()}
    try:
        blocks = named_blocks(model, "parallel.shard=auto")
    except ConfigError:
        blocks = []
    paths = [by_id[id(b)] for _, b in blocks if id(b) in by_id and by_id[id(b)]]
    if paths:
        return paths
    stacks = [
        (path, list(m)) for path, m in modules.items() if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(x) for x in m}) == 1
    ]
    if not stacks:
        return []
    path, layers = max(stacks, key=lambda s: sum(q.numel() for x in s[1] for q in x.parameters()))
    return [f"{path}.{i}" if path else str(i) for i in range(len(layers))]


def _parameter_owners(model: nn.Module) -> dict[int, set[str]]:
    """For every parameter, the paths of the modules that hold it directly (more than one when tied)."""
    owners: dict[int, set[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for q in module.parameters(recurse=False):
            owners.setdefault(id(q), set()).add(path)
    return owners
