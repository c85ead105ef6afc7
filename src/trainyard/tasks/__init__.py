"""Tasks: what a run learns. A task is the loss, the metrics, what is totalled on the device during
training, the default monitor and its direction, the checks its targets must pass, and the pictures the
test split gets. Built-ins: ``classification`` (the default), ``binary``, ``multilabel``, ``regression``;
``task.name`` may also be an import path to a :class:`Task` subclass of the user's.

``task.loss`` (a ``torch.nn`` loss name or an import path, with ``task.loss_args``) and ``task.metrics``
(torchmetrics names with arguments) replace the task's defaults. A model that computes its own loss
(returns a scalar, or a dict or object holding ``loss``, as Hugging Face models do) needs no task loss.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

import torch
from torch import nn

from trainyard.errors import ConfigError
from trainyard.registry import Registry, call_with, hint, import_object, is_import_path, signature_text

Criterion = Callable[[Any, torch.Tensor], torch.Tensor]


# --- model outputs ------------------------------------------------------------------------------


def output_loss(out: Any) -> torch.Tensor | None:
    """The loss a model computed itself: a scalar output, ``out["loss"]`` or ``out.loss``."""
    if isinstance(out, torch.Tensor):
        return out if out.ndim == 0 else None
    if isinstance(out, Mapping):
        return out.get("loss")
    return getattr(out, "loss", None)


def output_logits(out: Any) -> torch.Tensor | None:
    """The predictions in a model's output: the tensor itself, ``out["logits"]``/``out.logits``, or the
    first non-scalar tensor of a tuple. None when the model returns only a loss."""
    if isinstance(out, torch.Tensor):
        return out if out.ndim > 0 else None
    if isinstance(out, Mapping):
        found = out.get("logits")
        if found is None:
            found = next((v for k, v in out.items() if k != "loss" and isinstance(v, torch.Tensor) and v.ndim > 0), None)
        return found
    found = getattr(out, "logits", None)
    if found is not None:
        return found
    if isinstance(out, (tuple, list)):
        return next((v for v in out if isinstance(v, torch.Tensor) and v.ndim > 0), None)
    return None


def make_criterion(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None, adapt: Callable | None = None) -> Criterion:
    """``criterion(output, target) -> loss``. A plain tensor goes straight to the loss (a module's ``forward``,
    skipping ``Module.__call__``'s hook machinery, which costs microseconds a step); anything else is looked
    into for the model's own loss first. ``adapt(out, y) -> (out, y)`` fits shapes and dtypes to the loss."""
    Tensor = torch.Tensor

    def own(out: Any, y: torch.Tensor) -> torch.Tensor:
        found = output_loss(out)
        if found is not None:
            return found
        logits = output_logits(out)
        if logits is None or loss is None:
            raise ConfigError(
                "the model's output holds no loss and no logits, and the task has no loss to compute; return a tensor of predictions, or "
                "a dict with 'loss'"
            )
        return criterion(logits, y)

    if loss is None:
        return own
    if adapt is None:

        def criterion(out: Any, y: torch.Tensor) -> torch.Tensor:
            if out.__class__ is Tensor and out.ndim:
                return loss(out, y)
            return own(out, y)
    else:

        def criterion(out: Any, y: torch.Tensor) -> torch.Tensor:
            if out.__class__ is Tensor and out.ndim:
                return loss(*adapt(out, y))
            return own(out, y)

    return criterion


# --- losses and metrics by name -----------------------------------------------------------------


def _torch_losses() -> list[str]:
    return sorted(n for n in dir(nn) if n.endswith("Loss") and isinstance(getattr(nn, n), type))


def build_loss(spec: Any, args: dict | None, key: str = "task.loss") -> Callable:
    """A ``torch.nn`` loss by its class name (``MSELoss``), an import path, a loss class, or a callable as is."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if is_import_path(spec):
            obj = import_object(spec, key)
        elif spec in _torch_losses():
            obj = getattr(nn, spec)
        else:
            raise ConfigError(
                f"{key}={spec}: unknown loss; a torch.nn loss ({', '.join(_torch_losses()[:8])}, ...) or an import "
                f"path{hint(spec, _torch_losses())}"
            )
    else:
        obj = spec
    if isinstance(obj, type):
        obj = call_with(obj, f"{key}_args", args)
        if isinstance(obj, nn.Module):
            return obj.forward  # built here, so no hooks: skip Module.__call__ (microseconds a step)
    elif args:
        raise ConfigError(f"{key}_args: given, but {key} is not a class to construct")
    if not callable(obj):
        raise ConfigError(f"{key}: {type(obj).__name__} is not callable")
    return obj


# the usual short names, so val/mae lines up with train/mae
SHORT_NAMES = {
    "MeanAbsoluteError": "mae",
    "MeanSquaredError": "mse",
    "R2Score": "r2",
    "MeanAbsolutePercentageError": "mape",
    "MulticlassAccuracy": "accuracy",
    "BinaryAccuracy": "accuracy",
    "MultilabelAccuracy": "accuracy",
    "AUROC": "auroc",
}


def metric_name(cls_name: str, args: dict) -> str:
    """``F1Score`` -> ``f1``; with ``average: macro`` -> ``f1_macro``; ``Accuracy`` with ``top_k: 5`` -> ``accuracy_top5``;
    ``MeanAbsoluteError`` -> ``mae``; other classes in snake case."""
    name = SHORT_NAMES.get(cls_name) or re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", cls_name).lower()
    name = re.sub(r"^(binary_|multiclass_|multilabel_)", "", name).replace("f1_score", "f1")
    if cls_name == "MeanSquaredError" and args.get("squared") is False:
        name = "rmse"
    if args.get("top_k") not in (None, 1):
        name += f"_top{args['top_k']}"
    if "average" in args:
        name += f"_{args['average']}"
    return name


def _metric_class(name: str, key: str):
    import torchmetrics

    if is_import_path(name):
        return import_object(name, key)
    for space in (torchmetrics, torchmetrics.classification, torchmetrics.regression):
        cls = getattr(space, name, None)
        if isinstance(cls, type):
            return cls
    known = [n for n in dir(torchmetrics) if n[:1].isupper()]
    raise ConfigError(
        f"{key}: unknown metric {name!r}; a torchmetrics class name (Accuracy, F1Score, MeanAbsoluteError, ...) or an import "
        f"path{hint(name, known)}"
    )


def parse_metrics(spec: Any, key: str = "task.metrics") -> list[tuple[str, Any, dict]]:
    """``[F1Score, {Accuracy: {top_k: 5}}, {my_f1: {metric: F1Score, average: macro}}]`` -> (name, class or object, args)."""
    if spec is None:
        return []
    if isinstance(spec, Mapping):  # {name: Metric instance} from Python, or one {Name: args}
        spec = [{k: v} for k, v in spec.items()]
    if not isinstance(spec, (list, tuple)):
        spec = [spec]
    out = []
    for i, item in enumerate(spec):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            cls = _metric_class(item, where)
            out.append((metric_name(cls.__name__, {}), cls, {}))
        elif isinstance(item, Mapping) and len(item) == 1:
            ((name, value),) = item.items()
            if isinstance(value, (dict, type(None))):
                args = dict(value or {})
                target = args.pop("metric", None)
                cls = _metric_class(target or name, where)
                out.append((name if target else metric_name(cls.__name__, args), cls, args))
            else:  # {name: Metric instance or class}
                out.append((str(name), value, {}))
        elif hasattr(item, "update") and hasattr(item, "compute"):
            out.append((metric_name(type(item).__name__, {}), item, {}))
        else:
            raise ConfigError(f"{where}: expected a torchmetrics name or {{Name: {{arg: value}}}}, got {item!r}")
    names = [n for n, _, _ in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"{key}: two metrics are named {dup!r}; name one yourself: {{my_name: {{metric: Class, ...}}}}")
    return out


# --- the task interface -------------------------------------------------------------------------


class Task:
    """The built-in behaviour lives in the subclasses; a user task subclasses one of them (or this) and
    overrides what differs. Constructed with the data's :class:`~trainyard.data.DataInfo`."""

    name = "task"
    default_loss: str | None = None
    monitor = "val/loss"
    monitor_mode = "min"
    train_metric: str | None = None  # the name of what train_stat totals (train/<name>), None for nothing
    targets = "value"  # "class" (one id per sample), "binary", "labels" (0/1 vectors) or "value": how splits are stratified
    stat_dtype = torch.float32
    figures = False  # whether the test split collects pictures (confusion matrix, predictions)
    # a metric that is the share of samples ``train_stat`` counts as right (accuracy): the test split also stores
    # how many samples it counted and a Wilson 95% interval (``test/accuracy/correct``, ``/count``, ``/low``, ``/high``)
    share_metric: str | None = None

    def __init__(self, info: Any, loss: Any = None, loss_args: dict | None = None, metrics: Any = None):
        self.info = info
        self.loss = build_loss(loss if loss is not None else self.default_loss, loss_args)
        self.metric_specs = parse_metrics(metrics) if metrics is not None else self.default_metrics()
        self.criterion: Criterion = make_criterion(self.loss, self.adapt)

    # what the model must output --------------------------------------------------------------
    def num_outputs(self) -> int | None:
        return None

    def adapt(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit an output and its targets to the loss (shape, dtype). Runs every step: keep it to a few checks."""
        return out, y

    def check_output(self, out: torch.Tensor, y: torch.Tensor) -> str | None:
        """Why the model's output does not fit the targets (both shapes named), or None."""
        return None

    # targets ---------------------------------------------------------------------------------
    def check_targets(self, targets: torch.Tensor, where: str) -> None:
        """Raise a DataError naming ``where`` when targets do not fit the task."""

    # training totals (on the device, folded every few dozen steps) --------------------------------
    def train_stat(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """A sum over the batch and how many items it counts, e.g. (correct predictions, samples)."""
        raise NotImplementedError

    # evaluation ------------------------------------------------------------------------------
    def default_metrics(self) -> list[tuple[str, Any, dict]]:
        return []

    def metric_facts(self) -> dict[str, Any]:
        """What metric constructors get where their signature names it (and the args leave it unset)."""
        return {}

    def build_metrics(self, device: torch.device) -> dict[str, Any]:
        out = {}
        for name, target, args in self.metric_specs:
            if isinstance(target, type):
                metric = call_with(target, f"task.metrics: {name}", args, self.metric_facts())
            else:
                import copy

                metric = copy.deepcopy(target)  # a fresh instance per evaluation
                metric.reset()
            out[name] = metric.to(device)
        return out

    def metric_inputs(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, targets) as torchmetrics takes them."""
        return out, y

    def metric_names(self) -> list[str]:
        names = ["loss"] + [n for n, _, _ in self.metric_specs]
        return names

    def collector(self, keep_wrong: int) -> Any:
        """What the test split collects for pictures, or None: an object with ``update(x, logits, y)``,
        ``reduce(strategy)`` (collective) and ``pictures() -> [(tag, kind, data)]``, kinds as in
        ``trainyard.track.figures.render``."""
        return None


# --- honest numbers: a share with its count and interval --------------------------------------------

INTERVAL_PARTS = ("correct", "count", "low", "high")  # test/<metric>/<part> (trainyard.runs.table reads the same names)


def wilson_interval(successes: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for the default ``z``): unlike ``p +- z*se`` it stays
    inside [0, 1] and is not zero-width at 0 or n successes (0 errors of 359: the accuracy is >= 0.989)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if successes <= 0 else low), (1.0 if successes >= n else high)  # exact at the ends, not 0.9999999999999998


def interval_entries(prefix: str, name: str, correct: float, count: float) -> dict[str, float]:
    """``{prefix/name/correct, /count, /low, /high}`` for ``correct`` of ``count`` samples."""
    low, high = wilson_interval(correct, count)
    return {
        f"{prefix}/{name}/correct": float(correct),
        f"{prefix}/{name}/count": float(count),
        f"{prefix}/{name}/low": low,
        f"{prefix}/{name}/high": high,
    }


def metric_with_interval(metrics: Mapping[str, Any], key: str, digits: int = 4) -> str:
    """``0.9972 (358/359, 95% CI 0.984-1.000)`` where the interval is stored, else ``0.9972``."""
    value = metrics.get(key)
    if not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    text = f"{value:.{digits}f}"
    low, high, correct, count = (metrics.get(f"{key}/{p}") for p in ("low", "high", "correct", "count"))
    if all(isinstance(v, (int, float)) for v in (low, high, correct, count)):
        text += f" ({int(round(correct))}/{int(round(count))}, 95% CI {low:.3f}-{high:.3f})"
    return text


def summary_text(final: Mapping[str, Any], prefix: str = "test") -> str:
    """What a run's end line says of ``prefix``'s metrics: ``accuracy 0.9972 (358/359, 95% CI 0.984-1.000)``,
    every metric but the loss (the loss alone when there is nothing else); "" when there are none."""
    names = [k for k in final if k.startswith(prefix + "/") and k.count("/") == 1]
    shown = [k for k in names if k != f"{prefix}/loss"] or [k for k in names if k == f"{prefix}/loss"]
    return ", ".join(f"{k.split('/', 1)[1]} {metric_with_interval(final, k)}" for k in shown)


TASKS = Registry("task", "task.name")
TASKS.register("classification", "trainyard.tasks.classification:Classification", "one class per sample; cross-entropy, accuracy")
TASKS.register("binary", "trainyard.tasks.classification:Binary", "a yes/no target per sample; BCE with logits, accuracy and F1")
TASKS.register("multilabel", "trainyard.tasks.classification:Multilabel", "a 0/1 vector per sample; BCE with logits, accuracy and macro F1")
TASKS.register("regression", "trainyard.tasks.regression:Regression", "real-valued targets; MSE, MAE")


def task_class(spec: Any) -> type:
    obj = TASKS.get(spec)
    if isinstance(obj, Task):
        return type(obj)
    if not (isinstance(obj, type) and issubclass(obj, Task)):
        raise ConfigError(f"task.name={spec}: {getattr(obj, '__name__', type(obj).__name__)} is not a trainyard.tasks.Task subclass")
    return obj


def build_task(cfg: Any, info: Any, *, loss: Any = None, metrics: Any = None, task: Any = None) -> Task:
    """The run's task from ``cfg.task`` (the Python API may pass a task, loss or metrics as objects)."""
    t = cfg.task
    spec = task if task is not None else t.name
    if isinstance(spec, Task):
        return spec
    cls = task_class(spec)
    try:
        return cls(
            info, loss=loss if loss is not None else t.loss, loss_args=t.loss_args, metrics=metrics if metrics is not None else t.metrics
        )
    except TypeError as exc:
        raise ConfigError(f"task.name={spec}: {signature_text(cls)} cannot be built ({exc})") from None
