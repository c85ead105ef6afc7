"""The Python API: ``trainyard.fit(model, train, val)`` for a notebook or a script, ``trainyard.load(run)``
to get a trained model back. Everything a config run has applies (run folder, tracking, checkpoints,
exact resume, Ctrl-C safety, AMP, accumulation, early stopping, ``parallel.strategy``).

Under ``parallel.strategy=ddp`` or ``pipeline`` trainyard starts new processes, and each gets a pickled
copy of the model, the datasets and whatever else is passed: their classes and functions must be
importable (defined at module level in a ``.py`` file, not in a notebook cell or inside a function), and
the script must start training under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from trainyard.config import RunConfig, from_dict, load_config, parse_override, set_dotted, to_dict
from trainyard.errors import CheckpointError, ConfigError
from trainyard.registry import qualified_name


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]  # the final metrics: last epoch's train/val, test with the best checkpoint, best/<monitor>

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]


def sets_keep_host_memory(config: Any) -> bool:
    """Whether fit()'s ``config`` names ``trainer.keep_host_memory`` (a RunConfig holds every key, so it does)."""
    from trainyard.config import read_yaml

    if isinstance(config, RunConfig):
        return True
    if isinstance(config, (str, Path)):
        config = read_yaml(config)
    if isinstance(config, Mapping):
        trainer = config.get("trainer")
        return "trainer.keep_host_memory" in config or (isinstance(trainer, Mapping) and "keep_host_memory" in trainer)
    if isinstance(config, Sequence):
        return any(isinstance(item, str) and item.split("=", 1)[0].strip() == "trainer.keep_host_memory" for item in config)
    return False


def config_from(config: Any = None, name: str | None = None, base: Path | None = None) -> RunConfig:
    """A RunConfig from None, a RunConfig, a YAML path, a list of ``key=value`` strings, or a dict
    (nested, or with dotted keys: ``{"trainer.epochs": 5}``); on top of the YAML file ``base`` when given."""
    from trainyard.config import read_yaml

    raw: dict = read_yaml(base) if base is not None else {}
    if isinstance(config, RunConfig):
        if base is not None:
            raise ConfigError("trainyard.fit(resume=..., config=RunConfig): give overrides as a dict or a list of key=value strings")
        cfg = from_dict(to_dict(config))  # a copy: fit() fills in names of its own
    elif config is None:
        cfg = from_dict(raw)
    elif isinstance(config, (str, Path)):
        if base is not None:
            raise ConfigError("trainyard.fit(resume=..., config=PATH): the run's own config.yaml is used; give overrides instead")
        cfg = load_config(config)
    elif isinstance(config, Mapping):
        for key, value in config.items():
            if isinstance(value, Mapping) and "." not in str(key):
                for sub, v in _dotted(value, str(key)):
                    set_dotted(raw, sub, v)
            else:
                set_dotted(raw, str(key), value)
        cfg = from_dict(raw)
    elif isinstance(config, Sequence):
        for item in config:
            set_dotted(raw, *parse_override(item))
        cfg = from_dict(raw)
    else:
        raise ConfigError(
            f"trainyard.fit(config=...): {type(config).__name__}; give a dict, a list of key=value strings, a YAML path or a RunConfig"
        )
    if name is not None:
        cfg.name = name
    return cfg


def _dotted(tree: Mapping, prefix: str):
    for key, value in tree.items():
        full = f"{prefix}.{key}"
        if isinstance(value, Mapping) and value and full not in _DICT_KEYS:
            yield from _dotted(value, full)
        else:
            yield full, value


_DICT_KEYS = {"model.args", "data.args", "optim.args", "schedule.args", "task.loss_args"}


def _name_of(obj: Any, default: str = "python") -> str:
    if isinstance(obj, str):
        return obj
    return qualified_name(obj if isinstance(obj, type) or callable(obj) and not isinstance(obj, nn.Module) else type(obj)) or default


def _check_picklable(parts: Any, strategy: str) -> None:
    """Spawned processes get pickled copies: say which part cannot be pickled, and why, before any process starts."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import __main__

    interactive = not hasattr(__main__, "__file__")
    for field_name in ("model", "datasets", "task", "loss", "metrics", "optimizer", "scheduler", "callbacks"):
        value = getattr(parts, field_name)
        if value is None or value == []:
            continue
        if interactive and _defined_in_main(value):
            raise ConfigError(
                f"parallel.strategy={strategy} starts new processes, which cannot import the {field_name} defined in this notebook or "
                "interactive session; "
                "move its class or function into a .py file and import it from there"
            )
        try:
            ForkingPickler.dumps(value)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"parallel.strategy={strategy} gives each process a pickled copy of the {field_name}, and it cannot be pickled ({first}); "
                "define classes and functions at module level in an importable file (no lambdas or local classes)"
            ) from None


def _defined_in_main(value: Any) -> bool:
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else [value]
    return any(
        getattr(v if isinstance(v, type) else type(v), "__module__", "") == "__main__" or getattr(v, "__module__", "") == "__main__"
        for v in items
    )


def fit(
    model: nn.Module | str,
    train: Any = None,
    val: Any = None,
    test: Any = None,
    *,
    task: Any = None,
    loss: Any = None,
    metrics: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    callbacks: Sequence[Any] | None = None,
    collate_fn: Any = None,
    config: Any = None,
    name: str | None = None,
    resume: str | Path | None = None,
) -> RunResult:
    """Train ``model`` (an ``nn.Module``, or a model name or import path built from the config) on ``train``
    (a map-style Dataset of ``(input, target)`` pairs; with ``val``/``test`` when you have them, else
    ``data.val_fraction`` of train is held out for validation). Without ``train`` the config's
    ``data.dataset`` is used.

    ``task``: "classification" (default), "binary", "multilabel", "regression", a Task class or instance.
    ``loss``: a torch.nn loss name, class or callable ``(output, target) -> loss``. ``metrics``: torchmetrics
    names, ``{Name: {args}}``, or ``{name: Metric instance}``. ``optimizer``: a name, a torch.optim class
    (lr and weight_decay from the config) or ``params -> Optimizer`` (e.g. ``functools.partial``).
    ``scheduler``: a name, an lr_scheduler class or ``optimizer -> scheduler``. ``callbacks``: objects with
    hooks (see trainyard.engine.callbacks). ``config``: overrides as a dict (``{"trainer.epochs": 5}``), a list
    of ``key=value`` strings, a YAML path or a RunConfig. ``resume``: a run folder to continue from its
    ``last.pt`` (pass the same model and datasets).

    Returns the run folder and the final metrics. The model instance itself is trained in place under
    ``single``; under ``ddp``/``pipeline`` the processes train copies: ``trainyard.load(result.run_dir)``.
    """
    from trainyard.data import PYTHON
    from trainyard.engine.run import UserParts
    from trainyard.engine.run import train as run_training
    from trainyard.track.rundir import fresh_name, read_status

    if resume is not None:
        if not (Path(resume) / "config.yaml").is_file():
            raise ConfigError(f"trainyard.fit(resume={str(resume)!r}): not a run folder (no config.yaml)")
        cfg = config_from(config, base=Path(resume) / "config.yaml")
    else:
        cfg = config_from(config, name)
    if not sets_keep_host_memory(config):
        cfg.trainer.keep_host_memory = False  # process-wide allocator change: the caller's process, not ours to retune
    datasets = None
    if train is not None:
        from trainyard.data.user import check_python_dataset

        splits = {}
        for split, value in (("train", train), ("val", val), ("test", test)):
            if value is not None and hasattr(value, "dataset") and hasattr(value, "batch_size"):  # a DataLoader: its dataset and batch
                if split == "train" and value.batch_size:
                    cfg.loader.batch_size = value.batch_size
                collate_fn = collate_fn if collate_fn is not None else _custom_collate(value)
                value = value.dataset
            check_python_dataset(value, split)
            splits[split] = value
        datasets = splits
        cfg.data.dataset = PYTHON
    elif val is not None or test is not None:
        raise ConfigError("trainyard.fit(val=/test=...): give train= too (or neither, to use the config's data.dataset)")
    if isinstance(model, nn.Module):
        cfg.model.name = _name_of(model)
        parts_model = model
    elif isinstance(model, str):
        cfg.model.name, parts_model = model, None
    else:
        raise ConfigError(f"trainyard.fit(model=...): {type(model).__name__}; give an nn.Module, or a model name or import path")
    if task is not None:
        cfg.task.name = _name_of(task, "python")
    if isinstance(metrics, (list, tuple)) and all(isinstance(m, (str, dict)) for m in metrics):
        cfg.task.metrics, metrics = list(metrics), None  # names: recorded in config.yaml like a config run's
    if isinstance(loss, str):
        cfg.task.loss, loss = loss, None
    elif loss is not None:
        cfg.task.loss = _name_of(loss)
    if isinstance(optimizer, str):
        cfg.optim.name, optimizer = optimizer, None
    elif optimizer is not None:
        cfg.optim.name = _name_of(optimizer)
    if isinstance(scheduler, str):
        cfg.schedule.name, scheduler = scheduler, None
    elif scheduler is not None:
        cfg.schedule.name = _name_of(scheduler)
    parts = UserParts(
        model=parts_model,
        datasets=datasets,
        task=None if isinstance(task, str) else task,
        loss=loss,
        metrics=metrics,
        optimizer=optimizer,
        scheduler=scheduler,
        callbacks=list(callbacks or []),
    )
    parts.collate_fn = collate_fn
    if resume is None and cfg.name is None:
        cfg.name = fresh_name(cfg.track.root)  # so the caller learns the folder, whichever process creates it
    if cfg.parallel.strategy in ("ddp", "fsdp", "pipeline"):
        _check_picklable(parts, cfg.parallel.strategy)
    final = run_training(cfg, resume=resume, parts=parts)
    run_dir = Path(resume) if resume is not None else Path(cfg.track.root) / cfg.name
    if not final and run_dir.is_dir():  # a process other than this one held the primary's result
        final = read_status(run_dir).get("final", {})
    return RunResult(run_dir, dict(final or {}))


def _custom_collate(loader: Any) -> Any:
    from torch.utils.data import default_collate

    fn = getattr(loader, "collate_fn", None)
    return None if fn is None or fn is default_collate or getattr(fn, "__name__", "") == "default_collate" else fn


def load(run: str | Path, which: str = "best", model: nn.Module | None = None, map_location: Any = "cpu") -> nn.Module:
    """The model of a finished (or interrupted) run with the weights of ``which`` (``best`` or ``last``), in
    eval mode. Rebuilt from the run's config (model.name and model.args, with the data's facts kept in the
    checkpoint), or pass ``model`` (a fresh instance of the same architecture) to load the weights into."""
    from trainyard.data import DataInfo
    from trainyard.engine.checkpoint import load_checkpoint
    from trainyard.models import build_model

    run = Path(run)
    path = run / "checkpoints" / f"{which}.pt"
    if which not in ("best", "last"):
        raise ConfigError(f"trainyard.load(which={which!r}): allowed: best, last")
    if which == "best" and not path.is_file() and (run / "checkpoints" / "last.pt").is_file():
        path = run / "checkpoints" / "last.pt"  # no validation improvement recorded: the last weights
    state = load_checkpoint(path, map_location=map_location)
    if model is None:
        cfg = from_dict(state["config"])
        if "data_info" not in state:
            raise CheckpointError(
                f"checkpoint {path}: written before trainyard kept the data's facts; pass model= to load the weights into"
            )
        info = DataInfo(
            **{
                k: tuple(v) if isinstance(v, list) and k in ("image_size", "mean", "std", "target_shape") else v
                for k, v in state["data_info"].items()
            }
        )
        try:
            model = build_model(cfg.model, info)
        except ConfigError as exc:
            raise ConfigError(
                f"trainyard.load({str(run)!r}): cannot rebuild the model from its config ({exc}); pass model=<a fresh instance> to load "
                "the weights into"
            ) from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines()[1:] if line.strip()]  # the first only says "Error(s) in loading"
        shown = "; ".join(lines)[:400] or str(exc).strip()[:200]
        raise CheckpointError(
            f"checkpoint {path}: does not fit {type(model).__name__} ({shown}); pass model= built with the run's arguments"
        ) from None
    return model.eval()
