"""The typed run config: defaults, YAML files, ``key.sub=value`` overrides, validation.

One tree of dataclasses describes a run. Every field carries its help text and its
limits in ``metadata``, so validation, ``trainyard config`` and error messages all read
from the same place. A bad value raises :class:`ConfigError`, one line naming the key,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from trainyard.errors import ConfigError


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, **limits: Any) -> Any:
    """A config field: its default, help text and limits (``choices``, ``min``, ``gt``, ``max``, ``lt``)."""
    meta = {"help": help, **limits}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------
# The tree. Each section is a dataclass; its docstring and field help are user-facing.
# --------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the samples come from and how they are split and transformed."""

    dataset: str = opt(
        "digits",
        "digits (bundled with scikit-learn), mnist, fashion_mnist, cifar10, cifar100, image_folder, text, "
        "or package.module:function returning a Dataset (split by val/test_fraction) or a dict of splits",
    )
    args: dict = opt(factory=dict, help="keyword arguments of an imported data.dataset function")
    root: str = opt("data", "folder holding (or receiving) the dataset files")
    download: Union[bool, Literal["auto"]] = opt("auto", "auto: download when missing; true: always try; false: never")
    val_fraction: float = opt(0.1, "share of the training split held out for validation when the dataset has none", min=0.0, lt=1.0)
    test_fraction: float = opt(0.2, "share held out for testing when the dataset has no test split", min=0.0, lt=1.0)
    split_seed: int = opt(0, "seed of the train/val/test split, kept apart from `seed` so runs compare on the same samples", min=0)
    train_transforms: Union[list, None] = opt(
        None, "list of {Name: {arg: value}} torchvision.transforms.v2 entries; null: the dataset's default"
    )
    eval_transforms: Union[list, None] = opt(None, "as train_transforms, for validation and test; null: the dataset's default")
    skip_bad_files: bool = opt(False, "skip unreadable images (and count them) instead of stopping")
    in_memory: bool = opt(
        False,
        "image_folder: decode every image once into one uint8 tensor in memory (all of one size; 3 kB per 32x32 RGB image), "
        "so training takes the batched loader; false decodes each image at every epoch",
    )
    max_samples: Union[int, None] = opt(
        None, "cap each split at about this many samples (stratified, seeded by split_seed); for quick runs", min=1
    )
    # text
    path: Union[str, None] = opt(None, "text dataset: a CSV, TSV or JSONL file")
    val_path: Union[str, None] = opt(None, "text dataset: a separate validation file")
    test_path: Union[str, None] = opt(None, "text dataset: a separate test file")
    format: str = opt("auto", "text file format", choices=["auto", "csv", "tsv", "jsonl"])
    text_field: str = opt("text", "text dataset: the column holding the text")
    label_field: str = opt("label", "text dataset: the column holding the label")
    columns: Union[list, None] = opt(None, "text dataset: column names of a headerless file, e.g. [label, text]")
    tokenizer: str = opt("basic", "basic, wordpiece, bpe, or a path to a tokenizer.json")
    vocab_size: int = opt(20000, "vocabulary size for trained tokenizers", min=10)
    min_frequency: int = opt(1, "minimum token count to enter the vocabulary", min=1)
    max_length: int = opt(256, "truncate token sequences to this length", min=1)


@dataclass
class ModelConfig:
    """The network. Built-ins: cnn, mlp; any torchvision.models name; text models."""

    name: str = opt(
        "cnn",
        "cnn, mlp, a torchvision.models name (resnet18, ...), embedding_bag, gru, lstm, transformer, "
        "or package.module:Class (any nn.Module class or function returning one)",
    )
    args: dict = opt(
        factory=dict,
        help="keyword arguments of an imported model.name; the data's facts (num_classes, in_channels, ...) are added where its signature "
        "names them",
    )
    pretrained: bool = opt(False, "torchvision models: load locally cached pretrained weights")
    small_stem: Union[bool, Literal["auto"]] = opt(
        "auto", "torchvision ResNets from scratch: 3x3 stride-1 stem, no max-pooling (auto: images <= 64 pixels; 16x the compute at 32x32)"
    )
    width: int = opt(32, "cnn: channels of the first block (doubling per block); mlp: hidden units", min=1)
    depth: int = opt(2, "cnn: conv blocks; mlp: hidden layers; rnn/transformer: layers", min=1)
    dropout: float = opt(0.0, "dropout probability before the classifier", min=0.0, lt=1.0)
    embed_dim: int = opt(64, "text models: embedding size", min=1)
    bidirectional: bool = opt(False, "gru/lstm: read both directions")
    heads: int = opt(4, "transformer: attention heads", min=1)
    vectors: Union[str, None] = opt(None, "text models: GloVe-format word vectors file")


@dataclass
class LoaderConfig:
    """DataLoader knobs. batch_size is per device."""

    batch_size: int = opt(64, "samples per step on each device", min=1)
    eval_batch_size: Union[int, None] = opt(None, "batch size for validation and test; null: 2 x batch_size", min=1)
    shuffle: bool = opt(True, "shuffle the training samples each epoch")
    num_workers: Union[int, Literal["auto"]] = opt(0, "loader worker processes; auto: the value `trainyard tune-workers` measures", min=0)
    pin_memory: Union[bool, Literal["auto"]] = opt("auto", "auto: on only when training on CUDA")
    drop_last: bool = opt(False, "drop the last incomplete training batch")
    persistent_workers: bool = opt(False, "keep workers alive between epochs")
    prefetch_factor: Union[int, None] = opt(None, "batches loaded in advance by each worker (needs num_workers > 0)", min=1)
    collate: str = opt("default", "default, pad (variable-length samples), or package.module:function")
    bucket_by_length: bool = opt(False, "text: batch samples of similar length together")
    bucket_pool: int = opt(
        100, "bucket_by_length: batches' worth of samples sorted by length together (larger: less padding, less mixing)", min=1
    )
    batched: Union[bool, Literal["auto"]] = opt(
        "auto",
        "splits held as tensors (digits, MNIST, CIFAR, a TensorDataset): each batch cut by index in one "
        "operation and augmented per sample on the whole batch, on the training device; auto: wherever the split, "
        "its transforms, the collate and num_workers=0 allow it, else the DataLoader; true: also with workers set, "
        "and says why when it falls back",
    )


@dataclass
class OptimConfig:
    """The optimizer."""

    name: str = opt("adamw", "sgd, adam, adamw, any torch.optim class by its name (RMSprop, ...), or package.module:Class")
    lr: float = opt(3e-3, "learning rate", gt=0.0)
    weight_decay: float = opt(1e-4, "weight decay (decoupled for adamw)", min=0.0)
    momentum: float = opt(0.9, "sgd momentum", min=0.0, lt=1.0)
    nesterov: bool = opt(False, "sgd: Nesterov momentum")
    betas: list = opt(factory=lambda: [0.9, 0.999], help="adam/adamw betas")
    args: dict = opt(factory=dict, help="more keyword arguments of the optimizer class (lr and weight_decay come from the keys above)")


@dataclass
class ScheduleConfig:
    """The learning-rate schedule, stepped once per optimizer step."""

    name: str = opt(
        "cosine",
        "constant, step, cosine, onecycle, any torch.optim.lr_scheduler class by its name (OneCycleLR, ReduceLROnPlateau, ...), or "
        "package.module:Class",
    )
    args: dict = opt(
        factory=dict, help="keyword arguments of a torch.optim.lr_scheduler class (total_steps, T_max, max_lr are filled in where left out)"
    )
    interval: str = opt(
        "step",
        "a scheduler class steps every optimizer step or every epoch (ReduceLROnPlateau: every epoch, on trainer.monitor)",
        choices=["step", "epoch"],
    )
    warmup_steps: int = opt(0, "linear warmup from 0 over this many optimizer steps (any schedule)", min=0)
    step_epochs: int = opt(10, "step: epochs between decays", min=1)
    gamma: float = opt(0.1, "step: decay factor", gt=0.0, max=1.0)
    min_lr: float = opt(0.0, "cosine: final learning rate", min=0.0)


@dataclass
class TrainerConfig:
    """The step loop."""

    epochs: int = opt(30, "training epochs", min=1)
    max_steps: Union[int, None] = opt(None, "stop after this many optimizer steps (null: no limit)", min=1)
    device: str = opt("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    precision: str = opt("32", "32, bf16 (autocast, CPU too) or fp16 (autocast and GradScaler, CUDA)", choices=["32", "bf16", "fp16"])
    accumulate: int = opt(1, "micro-batches per optimizer step (gradient accumulation)", min=1)
    clip_grad_norm: Union[float, None] = opt(None, "clip the gradient norm to this value (null: off)", gt=0.0)
    log_every: int = opt(50, "optimizer steps between logged training scalars (the only per-step host syncs)", min=1)
    histogram_every: int = opt(1, "epochs between weight/gradient histograms (0: off)", min=0)
    monitor: str = opt(
        "auto",
        "metric that picks best.pt and drives early stopping; auto: the task's (val/accuracy for classification, val/loss for regression)",
    )
    monitor_mode: str = opt("auto", "auto (min for losses, else max), min or max", choices=["auto", "min", "max"])
    patience: int = opt(0, "early stopping: epochs without improvement before stopping (0: off)", min=0)
    deterministic: bool = opt(False, "use deterministic algorithms only (slower, bitwise repeatable on GPU)")
    compile: Union[bool, Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]] = opt(
        False,
        "torch.compile the model for training (single, ddp, fsdp): false, true (mode default), or a mode; the first step compiles "
        "(slow), a failure falls back to eager with one warning; on CPU it needs a C++ compiler (g++ or $CXX); checkpoints hold "
        "the plain weights either way",
    )
    cpu_threads: Union[int, Literal["auto"]] = opt(
        "auto",
        "torch.set_num_threads; auto: this process's share of the cores (at most torch's default) less one per loader worker (at least 1), "
        "left as it is when OMP_NUM_THREADS is set",
        min=1,
    )
    cuda_defaults: bool = opt(
        True,
        "on CUDA: TF32 matmuls and convolutions and cudnn.benchmark (both off under trainer.deterministic); false: PyTorch's defaults",
    )
    channels_last: bool = opt(
        True,
        "models with 2-d convolutions train in channels_last memory format (NHWC, what cuDNN's tensor cores and oneDNN's CPU "
        "kernels read fastest), on CUDA and CPU, under single, dp and ddp; false: PyTorch's default layout",
    )
    progress: Union[bool, Literal["auto"]] = opt("auto", "progress bar; auto: only when output is a terminal")
    progress_every_s: float = opt(
        30.0,
        "without a terminal on stdout (nohup, CI, a pipe): seconds between plain progress lines "
        "(step, epoch fraction, samples/s, ETA, the last logged loss; no extra host sync); 0: off",
        min=0.0,
    )
    keep_host_memory: bool = opt(
        True,
        "keep freed host memory for reuse instead of returning it to the OS (glibc malloc): steps stop faulting their pages in again; the "
        "process keeps its peak. It sets the allocator of the whole process, so trainyard.fit() turns it off unless its config sets it",
    )
    on_nonfinite: str = opt(
        "stop",
        "a non-finite (nan/inf) loss or weights: stop (status diverged, at the next log step or epoch end, no extra sync; best.pt kept, "
        "test skipped), "
        "skip_step (skip the optimizer update of a step whose loss is non-finite: one host sync per optimizer step, and a collective "
        "under ddp), ignore (train on)",
        choices=["stop", "skip_step", "ignore"],
    )


@dataclass
class WandbConfig:
    """Weights & Biases backend (optional extra: pip install 'trainyard[wandb]')."""

    project: str = opt("trainyard", "W&B project")
    entity: Union[str, None] = opt(None, "W&B entity (team or user)")
    tags: list = opt(factory=list, help="W&B run tags")
    mode: str = opt("offline", "online, offline or disabled", choices=["online", "offline", "disabled"])
    watch: int = opt(0, "log gradients every N steps (0: off)", min=0)


@dataclass
class TrackConfig:
    """Where and how the run is recorded. metrics.jsonl is always written."""

    root: str = opt("runs", "folder holding one sub-folder per run")
    backends: list = opt(factory=lambda: ["tensorboard"], help="tensorboard, wandb (metrics.jsonl is always written)")
    images: bool = opt(True, "log image grids (a training batch, misclassified samples, confusion matrix)")
    graph: bool = opt(True, "log the model graph")
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata={"help": "W&B settings"})


@dataclass
class ParallelConfig:
    """How the run is spread over devices and processes."""

    strategy: str = opt("single", "single, dp, ddp, fsdp, model, pipeline, or package.module:Strategy")
    devices: Union[int, list, Literal["auto"]] = opt("auto", "a count, a list of device ids or names, or auto", min=1)
    backend: str = opt("auto", "process-group backend: auto (nccl on CUDA, gloo on CPU), nccl, gloo", choices=["auto", "nccl", "gloo"])
    timeout: int = opt(300, "seconds before a stuck collective fails the run", min=1)
    sync_batchnorm: bool = opt(False, "ddp: convert BatchNorm to SyncBatchNorm")
    find_unused_parameters: bool = opt(False, "ddp: allow parameters that get no gradient")
    microbatches: int = opt(4, "pipeline: micro-batches per batch", min=1)
    schedule: str = opt("gpipe", "pipeline schedule", choices=["gpipe", "1f1b"])
    split: Union[list, Literal["auto"]] = opt("auto", "model/pipeline: auto (balance parameters) or block indices where stages start")
    shard: Union[list, Literal["auto"]] = opt(
        "auto",
        "fsdp: modules sharded on their own before the root: auto (the model's blocks: pipeline_blocks(), "
        "an nn.Sequential's children, ResNet stages, a ModuleList of layers) or a list of module class names",
    )
    reshard_after_forward: bool = opt(
        True,
        "fsdp: free a block's gathered weights after its forward and gather them again for backward (less memory, one more all-gather)",
    )
    activation_checkpointing: bool = opt(
        False,
        "single, ddp, fsdp: recompute each block's activations in backward instead of keeping them "
        "(the blocks parallel.shard=auto finds; less memory, about one more forward a step)",
    )


@dataclass
class TaskConfig:
    """What the run learns: the loss, the metrics and the monitor come from the task unless given."""

    name: str = opt("classification", "classification, binary, multilabel, regression, or package.module:Task")
    loss: Union[str, None] = opt(
        None, "a torch.nn loss by name (MSELoss, SmoothL1Loss, BCEWithLogitsLoss, ...) or an import path; null: the task's"
    )
    loss_args: dict = opt(factory=dict, help="keyword arguments of task.loss")
    metrics: Union[list, None] = opt(None, "torchmetrics names, or {Name: {arg: value}} (F1Score: {average: macro}); null: the task's")


@dataclass
class RunConfig:
    """One training run."""

    name: Union[str, None] = opt(None, "run folder name under track.root (null: a timestamp)")
    seed: int = opt(0, "seed for python, numpy and torch (each rank and worker derives its own)", min=0)
    task: TaskConfig = field(default_factory=TaskConfig, metadata={"help": "task"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "model"})
    loader: LoaderConfig = field(default_factory=LoaderConfig, metadata={"help": "loader"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer"})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, metadata={"help": "schedule"})
    trainer: TrainerConfig = field(default_factory=TrainerConfig, metadata={"help": "trainer"})
    track: TrackConfig = field(default_factory=TrackConfig, metadata={"help": "tracking"})
    parallel: ParallelConfig = field(default_factory=ParallelConfig, metadata={"help": "parallel"})
    callbacks: list = opt(
        factory=list,
        help="import paths (package.module:Class, or {path: {arg: value}}) of objects with hooks such as on_epoch_end(trainer, metrics)",
    )


# --------------------------------------------------------------------------------------
# Building a config: defaults <- YAML file <- overrides, each value checked on the way in.
# --------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Resolve a run config from defaults, an optional YAML file and ``key.sub=value`` overrides."""
    raw: dict = {}
    if path is not None:
        raw = read_yaml(path)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return from_dict(raw)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {p}{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: must hold a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.sub=value (e.g. optim.lr=0.01)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: the key before '=' is empty")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # not YAML: keep the plain string, the field type decides
    return key, value


def set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str):  # task=regression then task.loss=MSELoss: the shorthand is the section's name
            child = {"name": child}
            node[part] = child
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def from_dict(raw: dict) -> RunConfig:
    return _build(RunConfig, raw, prefix="")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def flat_items(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.003, ...}`` for every leaf of the tree."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flat_items(value, key + "."))
        else:
            out[key] = value
    return out


def all_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys.append(prefix + f.name)
            keys.extend(all_keys(t, prefix + f.name + "."))
        else:
            keys.append(prefix + f.name)
    return keys


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if isinstance(raw, str) and "name" in {f.name for f in dataclasses.fields(cls)}:
        raw = {"name": raw}  # task: regression, optim: sgd
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}={_show(raw)}: must be a mapping of keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            full = f"{prefix}{key}"
            value = raw[key]
            while isinstance(value, dict) and len(value) == 1:  # optimm: {lr: ..} reads as optimm.lr
                sub, value = next(iter(value.items()))
                full += f".{sub}"
            hint = suggest(full, all_keys()) or suggest(str(key), fields)
            raise ConfigError(f"unknown config key {full!r}{hint or '; allowed here: ' + ', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        t = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(t):
            kwargs[name] = _build(t, raw[name] if raw.get(name) is not None else {}, key + ".")
        elif name in raw:
            kwargs[name] = _check(key, raw[name], t, f.metadata)
    return cls(**kwargs)


def _show(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("...").strip()
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(t))
    if origin is Literal:
        return " or ".join(repr(a) if isinstance(a, str) else str(a).lower() for a in typing.get_args(t))
    if t is type(None):
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}.get(
        t, getattr(t, "__name__", str(t))
    )


def _check(key: str, given: Any, t: Any, meta: typing.Mapping) -> Any:
    try:
        value = _coerce(given, t)
    except TypeError:
        raise ConfigError(f"{key}={_show(given)}: expected {_describe(t)}") from None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}={_show(given)}: allowed values are {', '.join(map(str, choices))}{suggest(str(value), choices)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for limit, ok, words in (
            ("min", lambda v, b: v >= b, ">="),
            ("gt", lambda v, b: v > b, ">"),
            ("max", lambda v, b: v <= b, "<="),
            ("lt", lambda v, b: v < b, "<"),
        ):
            if limit in meta and not ok(value, meta[limit]):
                raise ConfigError(f"{key}={_show(given)}: must be {words} {meta[limit]:g}")
    return value


def _coerce(value: Any, t: Any) -> Any:
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(t):
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin is Literal:
        if value in typing.get_args(t) and type(value) is type(typing.get_args(t)[0]):
            return value
        raise TypeError
    if t is type(None):
        if value is None:
            return None
        raise TypeError
    if t is Any:
        return value
    if t is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                raise TypeError from None
        raise TypeError
    if t is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # precision: 32
        raise TypeError
    if t is list or origin is list:
        if isinstance(value, list):
            return value
        raise TypeError
    if t is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise TypeError
    raise TypeError


# --------------------------------------------------------------------------------------
# Help: every key's type, default, allowed values and help text, read from the tree above
# (``trainyard config --explain [SECTION]`` and the generated table docs/config.md).
# --------------------------------------------------------------------------------------


@dataclass
class KeyHelp:
    key: str  # dotted, e.g. optim.lr
    type: str  # float, int | null, bool | auto, ...
    default: str  # as YAML writes it
    allowed: str  # choices or limits ("" when any value of the type)
    help: str
    section: bool = False  # a section (a mapping of keys), not a value


def type_text(t: Any) -> str:
    """A key's type as the table shows it: ``float``, ``int | null``, ``bool | auto``."""
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(a) for a in typing.get_args(t))
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(t))
    if t is type(None):
        return "null"
    if dataclasses.is_dataclass(t):
        return "section"
    return {dict: "mapping"}.get(t, getattr(t, "__name__", str(t)))


def allowed_text(meta: typing.Mapping) -> str:
    """``auto, min, max`` for choices; ``>= 0, < 1`` for limits."""
    if meta.get("choices") is not None:
        return ", ".join(map(str, meta["choices"]))
    return ", ".join(
        f"{words} {meta[limit]:g}" for limit, words in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<")) if limit in meta
    )


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def key_help(cls: type = RunConfig, prefix: str = "") -> list[KeyHelp]:
    """Every key of the tree, sections included (their help: the section's docstring), in the tree's order."""
    out: list[KeyHelp] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(t):
            doc = " ".join((t.__doc__ or "").split())
            out.append(KeyHelp(key, "section", "", "", doc or f.metadata.get("help", ""), section=True))
            out.extend(key_help(t, key + "."))
        else:
            out.append(KeyHelp(key, type_text(t), _show(_default_of(f)), allowed_text(f.metadata), f.metadata.get("help", "")))
    return out


def _select(section: str | None) -> list[KeyHelp]:
    entries = key_help()
    if not section:
        return entries
    section = section.strip().rstrip(".")
    chosen = [e for e in entries if e.key == section or e.key.startswith(section + ".")]
    if not chosen:
        sections = [e.key for e in entries if e.section]
        raise ConfigError(
            f"--explain {section}: no such section or key; sections: {', '.join(sections)}{suggest(section, [e.key for e in entries])}"
        )
    return chosen


def _grouped(entries: list[KeyHelp]) -> list[KeyHelp]:
    """Top-level value keys (name, seed, callbacks) first, then each section with its keys."""
    return [e for e in entries if "." not in e.key and not e.section] + [e for e in entries if "." in e.key or e.section]


def explain(section: str | None = None, width: int = 100, cfg: Any = None) -> str:
    """Plain text, one block per key: ``optim.lr  float (> 0)  default 0.003``, then its help indented. With
    ``cfg`` (a YAML file or overrides resolved), a key it sets apart from the default also says ``set: 0.01``."""
    import textwrap

    given = {k: _show(v) for k, v in flat_items(cfg).items()} if cfg is not None else {}
    lines: list[str] = []
    entries = _grouped(_select(section))
    if entries and "." not in entries[0].key and not entries[0].section:
        lines.append("top level:")
    for e in entries:
        if e.section:
            lines += ([""] if lines else []) + [f"{e.key}: {e.help}".rstrip(": ")]
            continue
        kind = e.type + (f" ({e.allowed})" if e.allowed else "")
        setting = f"  set: {given[e.key]}" if e.key in given and given[e.key] != e.default else ""
        lines.append(f"  {e.key}  {kind}  default {e.default}{setting}")
        lines += textwrap.wrap(e.help, width=width, initial_indent="      ", subsequent_indent="      ") or ["      (no help text)"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table() -> str:
    """docs/config.md: every key in one table per section. Regenerate with ``trainyard config --markdown > docs/config.md``."""
    out = [
        "# Config keys",
        "",
        "<!-- generated by `trainyard config --markdown > docs/config.md` from src/trainyard/config.py; a test keeps it in sync -->",
        "",
        "Every key of the run config, its type, default, allowed values and help. Set a key in the YAML file or as",
        "`key.sub=value` on the command line; `trainyard config --explain [SECTION]` prints the same in the terminal.",
    ]
    top: list[KeyHelp] = []
    for e in key_help():
        if e.section:
            out += ["", f"## `{e.key}`", "", _cell(e.help), "", "| key | type | default | allowed | help |", "|---|---|---|---|---|"]
            continue
        if "." not in e.key:
            top.append(e)
            continue
        out.append(f"| `{e.key}` | {_cell(e.type)} | `{_cell(e.default)}` | {_cell(e.allowed)} | {_cell(e.help)} |")
    if top:
        rows = [f"| `{e.key}` | {_cell(e.type)} | `{_cell(e.default)}` | {_cell(e.allowed)} | {_cell(e.help)} |" for e in top]
        out[6:6] = ["", "## Top level", "", "| key | type | default | allowed | help |", "|---|---|---|---|---|", *rows]
    return "\n".join(out) + "\n"
