"""TensorBoard event files in the run folder, written through tensorboard's public protos by a record writer of
our own, in the calling thread (no writer thread to take turns at the GIL with the step loop)."""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from tensorboard.compat.proto.attr_value_pb2 import AttrValue
from tensorboard.compat.proto.config_pb2 import RunMetadata
from tensorboard.compat.proto.event_pb2 import Event, SessionLog, TaggedRunMetadata
from tensorboard.compat.proto.graph_pb2 import GraphDef
from tensorboard.compat.proto.node_def_pb2 import NodeDef
from tensorboard.compat.proto.step_stats_pb2 import DeviceStepStats, StepStats
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.proto.versions_pb2 import VersionDef
from torch import nn

from trainyard.config import RunConfig
from trainyard.track import FLUSH_SECS, Tracker
from trainyard.track.crc32c import masked_crc32c
from trainyard.track.media import encode_figure, encode_png

_UID = itertools.count()


class EventFile:
    """One event file: Event protos in TFRecord framing (length, masked CRC-32C of the length, data, masked CRC-32C
    of the data), buffered and flushed when ``flush_secs`` have passed since the last flush, at ``flush()`` and ``close()``."""

    def __init__(self, logdir: str | Path, flush_secs: float = FLUSH_SECS):
        os.makedirs(logdir, exist_ok=True)
        self.logdir = str(logdir)
        self.flush_secs = flush_secs
        self._next_flush = 0.0
        # tensorboard's own file name, the counter padded: TensorBoard reads a folder's files in name order
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_UID):06d}"
        self._file = open(os.path.join(self.logdir, name), "wb")
        self.write(Event(file_version="brain.Event:2"))
        self.flush()

    def write(self, event: Event, step: int | None = None) -> None:
        event.wall_time = time.time()
        if step is not None:
            event.step = int(step)
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(b"".join((header, struct.pack("<I", masked_crc32c(header)), data, struct.pack("<I", masked_crc32c(data)))))
        if time.monotonic() >= self._next_flush:
            self.flush()

    def summary(self, values: list[Summary.Value], step: int | None = None) -> None:
        self.write(Event(summary=Summary(value=values)), step)

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()
        self._next_flush = time.monotonic() + self.flush_secs

    def close(self) -> None:
        self._file.close()


class TensorBoardTracker(Tracker):
    def __init__(self, cfg: RunConfig, run_dir: Path, *, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.events = EventFile(self.run_dir)
        self.groups: dict[str, EventFile] = {}  # add_scalars' sub-runs, one folder per series
        if resume_step is not None:  # TensorBoard drops the events past a START at this step: curves do not double back
            self.events.write(Event(session_log=SessionLog(status=SessionLog.START)), resume_step)

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        """Every scalar of one point in one event."""
        self.events.summary([Summary.Value(tag=tag, simple_value=float(value)) for tag, value in metrics.items()], step)

    def log_groups(self, groups: Mapping[str, Mapping[str, float]], step: int) -> None:
        """What ``SummaryWriter.add_scalars`` writes: each series in its own sub-run ``<main_tag>_<series>``, under the main tag."""
        for main_tag, values in groups.items():
            for tag, value in values.items():
                folder = f"{main_tag.replace('/', '_')}_{tag}"
                if folder not in self.groups:
                    self.groups[folder] = EventFile(self.run_dir / folder, self.events.flush_secs)
                self.groups[folder].summary([Summary.Value(tag=main_tag, simple_value=float(value))], step)

    def log_histograms(self, model: nn.Module, step: int) -> None:
        """Weights and gradients, every histogram of one step in one event."""
        values = []
        for name, p in model.named_parameters():
            for tag, tensor in ((f"weights/{name}", p), (f"grads/{name}", p.grad)):
                if tensor is not None and (histogram := _histogram(tensor)) is not None:
                    values.append(Summary.Value(tag=tag, histo=HistogramProto(**histogram)))
        if values:
            self.events.summary(values, step)

    def log_graph(self, model: nn.Module, example: Any) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph, run_metadata = graph_def(model, example)
        except Exception as exc:  # tracing fails on data-dependent control flow: a warning, never a crash
            warnings.warn(
                f"model graph not logged: tracing failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                stacklevel=2,
            )
            return
        self.events.write(Event(graph_def=graph.SerializeToString()))  # the two events add_graph writes
        self.events.write(Event(tagged_run_metadata=TaggedRunMetadata(tag="step1", run_metadata=run_metadata.SerializeToString())))

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """The PNG the media tracker also writes (encoded once, see encode_png)."""
        self._picture(tag, encode_png(image, tag, step), step)

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        self._picture(tag, encode_figure(figure), step)  # Trackers closes the figure once every backend has it

    def _picture(self, tag: str, png, step: int) -> None:
        picture = Summary.Image(height=png.height, width=png.width, colorspace=png.channels, encoded_image_string=png.data)
        self.events.summary([Summary.Value(tag=tag, image=picture)], step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        # The three summaries SummaryWriter.add_hparams writes, into this run's own event file: add_hparams puts them
        # in a new timestamped sub-run, which splits the run in two in TensorBoard. The metric values themselves are
        # the run's scalars of the same tags (logged by the trainer).
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        for summary in hparams_summary(dict(hparams), dict(metrics)):
            self.events.write(Event(summary=summary))
        self.flush()

    def flush(self) -> None:
        for events in (self.events, *self.groups.values()):
            events.flush()

    def close(self, status: str) -> None:
        for events in (self.events, *self.groups.values()):
            events.close()


# --- the model graph ----------------------------------------------------------------------------


def node_proto(name: str, op: str, inputs: list[str], shape: tuple[int, ...] | None = None, attributes: str = "") -> NodeDef:
    """A graph node as TensorBoard's graph plugin draws PyTorch models: its settings in ``attr``, its output shape."""
    attr = {"attr": AttrValue(s=attributes.encode())}
    if shape is not None:
        attr["_output_shapes"] = AttrValue(
            list=AttrValue.ListValue(shape=[TensorShapeProto(dim=[TensorShapeProto.Dim(size=d) for d in shape])])
        )
    return NodeDef(name=name, op=op, input=inputs, attr=attr)


def graph_def(model: nn.Module, example: Any) -> tuple[GraphDef, RunMetadata]:
    """What ``SummaryWriter.add_graph`` logs (a GraphDef and its run metadata), drawn from ``torch.fx`` where the
    model traces symbolically (one node per layer, with its settings; a fraction of a jit trace's time), else
    from ``torch.jit.trace`` (one node per aten op) for models with control flow on tensor values."""
    args = example if isinstance(example, tuple) else (example,)
    try:
        nodes = _fx_graph_nodes(model, args)
    except Exception:  # not symbolically traceable
        nodes = _jit_graph_nodes(model, args)
    return GraphDef(node=nodes, versions=VersionDef(producer=22)), RunMetadata(
        step_stats=StepStats(dev_stats=[DeviceStepStats(device="/device:CPU:0")])
    )


def _scope_namer(model: nn.Module):
    """``"layer1.0"`` -> ``"ResNet/Sequential[layer1]/BasicBlock[0]"``: a module path as TensorBoard's PyTorch graphs name scopes."""
    modules = dict(model.named_modules())
    root = type(model).__name__

    def scope(path: str) -> str:
        parts, prefix = [root], ""
        for part in filter(None, path.split(".")):
            prefix = f"{prefix}.{part}" if prefix else part
            parts.append(f"{type(modules[prefix]).__name__}[{part}]" if prefix in modules else part)
        return "/".join(parts)

    return modules, scope


def _fx_graph_nodes(model: nn.Module, args: tuple) -> list[NodeDef]:
    import torch.fx

    traced = torch.fx.symbolic_trace(model)
    shapes: dict[torch.fx.Node, tuple[int, ...]] = {}

    class Shapes(torch.fx.Interpreter):  # runs the traced model once on the example, noting each output's shape
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n] = tuple(out.shape)
            return out

    with torch.no_grad():
        Shapes(traced).run(*args)
    modules, scope = _scope_namer(model)
    names: dict[torch.fx.Node, str] = {}
    uses: dict[str, int] = {}  # how often each name came up: a layer called twice gets a second node
    protos = []
    outputs: list[torch.fx.Node] = []
    for n in traced.graph.nodes:
        attributes = ""
        if n.op == "output":
            outputs = n.all_input_nodes
            continue
        if n.op == "placeholder":
            name, op = f"input/{n.name}", "IO Node"
        elif n.op == "call_module":
            module = modules[n.target]
            name, op, attributes = scope(n.target), type(module).__name__, module.extra_repr()
        elif n.op == "get_attr":
            owner, _, attr = n.target.rpartition(".")
            name, op = f"{scope(owner)}/{attr}", "get_attr"
        else:  # call_function, call_method: placed in the module whose forward called it
            stack = n.meta.get("nn_module_stack")
            owner = next(reversed(stack.values()))[0] if stack else ""
            name, op = f"{scope(owner)}/{n.name}", n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        uses[name] = uses.get(name, 0) + 1
        if uses[name] > 1:
            name = f"{name}_{uses[name] - 1}"
        names[n] = name
        protos.append(node_proto(name, op, [names[i] for i in n.all_input_nodes], shapes.get(n), attributes))
    if not outputs:
        raise ValueError("the model's output holds no tensor")
    for i, source in enumerate(outputs, 1):
        protos.append(node_proto(f"output/output.{i}", "IO Node", [names[source]], shapes.get(source)))
    return protos


def _jit_graph_nodes(model: nn.Module, args: tuple) -> list[NodeDef]:
    """One node per op of the traced, inlined TorchScript graph, placed in the module that ran it. Constants and
    attribute reads (parameters, submodules) are left out, as TensorBoard's own PyTorch graphs leave them."""
    trace = torch.jit.trace(model, args, check_trace=False)  # the default check traces the model a second time
    _, scope = _scope_namer(model)
    graph = trace.inlined_graph
    names: dict[str, str] = {}  # a value's debug name -> the node that makes it

    def shape(value) -> tuple[int, ...] | None:
        return tuple(value.type().sizes()) if value.isCompleteTensor() else None

    protos = []
    for value in graph.inputs():
        if value.type().kind() != "ClassType":  # the module itself
            names[value.debugName()] = f"input/{value.debugName()}"
            protos.append(node_proto(names[value.debugName()], "IO Node", [], shape(value)))
    for node in graph.nodes():
        if node.kind() in ("prim::Constant", "prim::GetAttr"):
            continue
        module_path = node.scopeName().rpartition("/")[2].removeprefix("__module").removeprefix(".")
        outputs = list(node.outputs())
        name = f"{scope(module_path)}/{node.kind().partition('::')[2]}_{outputs[0].debugName() if outputs else len(protos)}"
        for out in outputs:
            names[out.debugName()] = name
        protos.append(
            node_proto(
                name,
                node.kind(),
                [names[v.debugName()] for v in node.inputs() if v.debugName() in names],
                shape(outputs[0]) if outputs else None,
            )
        )
    for i, value in enumerate(graph.outputs(), 1):
        if value.debugName() in names:
            protos.append(node_proto(f"output/output.{i}", "IO Node", [names[value.debugName()]], shape(value)))
    return protos


def _histogram(values: torch.Tensor, bins: int = 30) -> dict[str, Any] | None:
    """A HistogramProto's fields over the finite values, in equal buckets computed by torch (cheaper per tensor
    than add_histogram's numpy path), with one host read for the statistics."""
    v = values.detach().flatten().float().cpu()
    finite = torch.isfinite(v)
    if not finite.all():
        v = v[finite]
    if v.numel() == 0:
        return None
    lo, hi = torch.aminmax(v)
    lo, hi, total, squares = torch.stack([lo, hi, v.sum(), v.dot(v)]).tolist()
    top = hi if hi > lo else lo + max(abs(lo), 1.0) * 1e-6  # one value throughout (e.g. a zero-initialised bias)
    counts = torch.histc(v, bins=bins, min=lo, max=top).tolist()
    limits = [lo + (top - lo) * (i + 1) / bins for i in range(bins)]
    return {"min": lo, "max": hi, "num": v.numel(), "sum": total, "sum_squares": squares, "bucket_limit": limits, "bucket": counts}
