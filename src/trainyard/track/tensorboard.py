"""TensorBoard through ``SummaryWriter``, event files in the run folder itself."""

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
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.writer import FileWriter

from trainyard.config import RunConfig
from trainyard.track import FLUSH_SECS, Tracker
from trainyard.track.crc32c import masked_crc32c
from trainyard.track.media import encode_png


class TensorBoardTracker(Tracker):
    def __init__(self, cfg: RunConfig, run_dir: Path, *, resume_step: int | None = None):
        self.writer = _SummaryWriter(log_dir=str(run_dir), flush_secs=FLUSH_SECS)
        if resume_step is not None:  # SummaryWriter's purge_step: drop events past the checkpoint so curves do not double back
            self.writer._get_file_writer().add_event(Event(session_log=SessionLog(status=SessionLog.START)), step=resume_step)

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        """Every scalar of one point in one event (``add_scalar`` writes an event per tag, the same values)."""
        values = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in metrics.items()]
        self.writer._get_file_writer().add_summary(Summary(value=values), step)

    def log_groups(self, groups: Mapping[str, Mapping[str, float]], step: int) -> None:
        writer = self.writer
        logdir = writer._get_file_writer().get_logdir()
        for main_tag, values in groups.items():
            for tag in values:  # add_scalars writes each series to this folder; it finds our writer there first
                folder = f"{logdir}/{main_tag.replace('/', '_')}_{tag}"
                if folder not in writer.all_writers:
                    writer.all_writers[folder] = _FileWriter(folder, writer.flush_secs)
            writer.add_scalars(main_tag, dict(values), step)

    def log_histograms(self, model: nn.Module, step: int) -> None:
        """Weights and gradients, every histogram of one step in one event."""
        values = []
        for name, p in model.named_parameters():
            for tag, tensor in ((f"weights/{name}", p), (f"grads/{name}", p.grad)):
                if tensor is not None and (histogram := _histogram(tensor)) is not None:
                    values.append(Summary.Value(tag=tag, histo=HistogramProto(**histogram)))
        if values:
            self.writer._get_file_writer().add_summary(Summary(value=values), step)

    def log_graph(self, model: nn.Module, example: Any) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.writer._get_file_writer().add_graph(graph_def(model, example))
        except Exception as exc:  # tracing fails on data-dependent control flow: a warning, never a crash
            warnings.warn(f"model graph not logged: tracing failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", stacklevel=2)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """What ``add_image`` writes, from the PNG the media tracker also writes (encoded once, see encode_png)."""
        png = encode_png(image)
        picture = Summary.Image(height=png.height, width=png.width, colorspace=png.channels, encoded_image_string=png.data)
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=picture)]), step)

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        self.writer.add_figure(tag, figure, step, close=False)  # Trackers closes it once every backend has it

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        # SummaryWriter.add_hparams writes into a new timestamped sub-folder, which splits the run in two
        # in TensorBoard. Write the same three summaries into this run's own event file instead.
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        exp, ssi, sei = hparams_summary(dict(hparams), dict(metrics))
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)
        # The metric values themselves are the run's scalars of the same tags (logged by the trainer).
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.flush()
        self.writer.close()


_UID = itertools.count()


class EventFile:
    """What tensorboard's ``EventFileWriter`` writes (Event protos in TFRecord framing), written in the calling thread.

    ``EventFileWriter`` hands each event to a writer thread, which checksums it in pure Python and appends it
    with an open/write/close of the file. On a small model that thread's turns at the GIL stalled the training
    loop: measured in ``benchmarks/overhead.py``'s MLP, the step after a log step often took twice as long,
    about 2% of all training time. Here an event goes into a buffered file at once (one checksum, no thread),
    flushed when ``flush_secs`` have passed since the last flush, and on ``flush()`` and ``close()``.
    """

    def __init__(self, logdir: str, flush_secs: float = FLUSH_SECS):
        os.makedirs(logdir, exist_ok=True)
        self._logdir = logdir
        self._flush_secs = flush_secs
        self._next_flush = 0.0
        # EventFileWriter's name, with the counter padded: TensorBoard reads a folder's files in name order
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_UID):06d}"
        self._file = open(os.path.join(logdir, name), "wb")
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def get_logdir(self) -> str:
        return self._logdir

    def add_event(self, event: Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(b"".join((header, struct.pack("<I", masked_crc32c(header)), data, struct.pack("<I", masked_crc32c(data)))))
        if time.monotonic() >= self._next_flush:
            self.flush()

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()
        self._next_flush = time.monotonic() + self._flush_secs

    def close(self) -> None:
        self._file.close()

    def reopen(self) -> None:
        """Nothing to reopen: after close() SummaryWriter makes a new file writer, so a new file."""


class _FileWriter(FileWriter):
    def __init__(self, log_dir: str, flush_secs: float):  # FileWriter's own __init__ only makes its event_writer
        self.event_writer = EventFile(log_dir, flush_secs)


class _SummaryWriter(SummaryWriter):
    """``SummaryWriter`` with an :class:`EventFile` as its main event file."""

    def _get_file_writer(self) -> FileWriter:
        if self.all_writers is None or self.file_writer is None:
            self.file_writer = _FileWriter(self.log_dir, self.flush_secs)
            self.all_writers = {self.file_writer.get_logdir(): self.file_writer}
        return self.file_writer


def graph_def(model: nn.Module, example: Any):
    """What ``SummaryWriter.add_graph`` logs (a GraphDef and its run metadata), drawn from ``torch.fx`` where the
    model traces symbolically, else from ``torch.jit.trace`` as ``add_graph`` does.

    The fx graph has one node per layer (``Conv2d``, ``Linear``, ... with their settings) and per function
    between layers, named by where it sits in the model (``ResNet/Sequential[layer1]/BasicBlock[0]/Conv2d[conv1]``),
    with each output's shape. It costs a fraction of a jit trace (a small MLP: 3 ms instead of 9; resnet18:
    24 ms instead of 270), where most of the time goes to building a ScriptModule; and ``torch.jit.trace`` is
    deprecated. A model fx cannot trace (control flow on tensor values) still gets the jit graph."""
    from torch.utils.tensorboard._pytorch_graph import DeviceStepStats, GraphDef, RunMetadata, StepStats, VersionDef

    args = example if isinstance(example, tuple) else (example,)
    try:
        nodes = _fx_graph_nodes(model, args)
    except Exception:  # not symbolically traceable: what add_graph does
        nodes = _jit_graph_nodes(model, args)
    return GraphDef(node=nodes, versions=VersionDef(producer=22)), RunMetadata(step_stats=StepStats(dev_stats=[DeviceStepStats(device="/device:CPU:0")]))


def _fx_graph_nodes(model: nn.Module, args: tuple) -> list:
    import torch.fx
    from torch.utils.tensorboard._proto_graph import node_proto

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
    modules = dict(model.named_modules())
    root = type(model).__name__

    def scope(path: str) -> str:  # "layer1.0" -> "ResNet/Sequential[layer1]/BasicBlock[0]"
        parts, prefix = [root], ""
        for part in filter(None, path.split(".")):
            prefix = f"{prefix}.{part}" if prefix else part
            parts.append(f"{type(modules[prefix]).__name__}[{part}]" if prefix in modules else part)
        return "/".join(parts)

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
        protos.append(node_proto(name, op=op, input=[names[i] for i in n.all_input_nodes], outputsize=shapes.get(n), attributes=attributes))
    if not outputs:
        raise ValueError("the model's output holds no tensor")
    for i, source in enumerate(outputs, 1):
        protos.append(node_proto(f"output/output.{i}", op="IO Node", input=[names[source]], outputsize=shapes.get(source)))
    return protos


def _jit_graph_nodes(model: nn.Module, args: tuple) -> list:
    """``add_graph``'s own graph, traced once: its ``graph()`` calls ``torch.jit.trace`` with the default
    ``check_trace=True``, which traces the model a second time to compare."""
    from torch.utils.tensorboard._pytorch_graph import parse

    trace = torch.jit.trace(model, args, check_trace=False)
    torch._C._jit_pass_inline(trace.graph)
    return parse(trace.graph, trace, args)


def _histogram(values: torch.Tensor, bins: int = 30) -> dict[str, Any] | None:
    """A HistogramProto's fields over the finite values, in equal buckets computed by torch (add_histogram's
    numpy path costs several times more per tensor), with one host read for the statistics."""
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
