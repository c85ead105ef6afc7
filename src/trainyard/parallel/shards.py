"""Sharded checkpoints through ``torch.distributed.checkpoint`` (DCP): a folder in which every rank wrote its
own part (``__<rank>_0.distcp``) and rank 0 the metadata saying which piece of which tensor lies where.

Saved from an fsdp model, the tensors are DTensor shards: no rank holds the whole model. Loaded, DCP reads
for each rank the pieces its own tensors cover, whatever the world size that wrote them: sharded DTensors
under fsdp (resharding to the new world size), whole tensors under single or ddp. The folder holds
``{"model": ..., "optimizer": ...}`` in ``torch.distributed.checkpoint.state_dict``'s format: parameter
names (the plain module's) for both, the optimizer's param_groups listing names instead of indices.
"""

from __future__ import annotations

import contextlib
import errno
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import CheckpointException, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from trainyard.errors import CANNOT_WRITE


def save_shards(state: dict[str, Any], folder: Path) -> None:
    """Collective: every rank writes its part of ``state`` into ``folder`` (files fsynced). A failed write on
    any rank fails it on every rank, as the OSError of the first failure (a full disk reads as one)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        with _quiet():
            dcp.save(state, storage_writer=FileSystemWriter(folder, sync_files=True), no_dist=_alone())
    except CheckpointException as exc:  # a BaseException: every rank gets the failures of all of them
        raise _first_error(exc, folder) from None


def load_shards(model: nn.Module, optimizer: torch.optim.Optimizer | None, folder: Path, options: StateDictOptions | None = None) -> None:
    """Collective: load ``folder`` into ``model`` (and ``optimizer``, unless None) in place.

    The templates come from the model itself (``get_state_dict``): DTensor shards under fsdp, whole tensors
    for a plain module, so DCP reads for each rank what it holds. ``get_state_dict`` first gives a fresh
    optimizer its state (one step of zero gradients at lr 0), which the checkpoint's values then replace."""
    try:
        with _quiet():
            if optimizer is None:
                weights = get_model_state_dict(model, options=options)
                dcp.load({"model": weights}, storage_reader=FileSystemReader(folder), no_dist=_alone())
                set_model_state_dict(model, weights, options=options)
                return
            weights, moments = get_state_dict(model, optimizer, options=options)
            dcp.load({"model": weights, "optimizer": moments}, storage_reader=FileSystemReader(folder), no_dist=_alone())
            set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=moments, options=options)
    except CheckpointException as exc:
        raise _first_error(exc, folder) from None


def read_full(folder: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The whole checkpoint in one process (no process group), in torch.optim's own formats: the model's
    state_dict and the optimizer's index-keyed state_dict, what ``single`` and ``ddp`` checkpoints hold."""
    with tempfile.TemporaryDirectory(prefix="trainyard-shards-") as tmp:
        whole = Path(tmp) / "whole.pt"
        try:
            dcp_to_torch_save(folder, whole)
        except CheckpointException as exc:
            raise _first_error(exc, folder) from None
        state = torch.load(whole, map_location=map_location, weights_only=True)
    return {"model": state["model"], "optimizer": optimizer_by_index(state["optimizer"])}


def optimizer_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state as ``optimizer.state_dict()`` gives it: parameters numbered in the order the
    param_groups list them, which is the order the optimizer was built in."""
    index: dict[str, int] = {}
    for group in state["param_groups"]:
        for name in group["params"]:
            index[name] = len(index)
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: s for n, s in state.get("state", {}).items()}, "param_groups": groups}


def _alone() -> bool:
    """No process group (``single``): DCP reads and writes in this process alone."""
    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns whenever it runs without a process group, even when told to (``no_dist=True``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _first_error(exc: CheckpointException, folder: Path) -> Exception:
    """DCP's exception carries each failed rank's (exception, traceback): the first as an ordinary error, a
    write error as its OSError, a checkpoint that does not fit as a RuntimeError naming the key."""
    failures = getattr(exc, "failures", {}) or {}
    for _, failure in sorted(failures.items()):
        inner = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(inner, OSError) and inner.errno in CANNOT_WRITE:
            return inner
    for _, failure in sorted(failures.items()):
        inner = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(inner, FileNotFoundError) or (isinstance(inner, OSError) and inner.errno == errno.ENOENT):
            return RuntimeError(f"sharded checkpoint {folder}: a file is missing ({inner})")
        if isinstance(inner, Exception):
            return RuntimeError(str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__)
    text = str(exc).strip()
    return RuntimeError(text.splitlines()[0] if text else "torch.distributed.checkpoint failed")
