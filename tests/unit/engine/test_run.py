"""The step loop: what a run writes, exact resume, atomic checkpoints, signals, and the knobs' effects."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from trainyard.cli import main
from trainyard.config import load_config
from trainyard.engine import checkpoint as checkpoint_module
from trainyard.engine.checkpoint import load_checkpoint
from trainyard.engine.run import train
from trainyard.engine.trainer import Interrupted, Trainer
from trainyard.errors import CheckpointError


def config(tmp_path: Path, *overrides: str):
    base = [
        f"track.root={tmp_path / 'runs'}",
        "trainer.epochs=2",
        "trainer.log_every=5",
        "model.width=8",
        "trainer.progress=false",
        "data.train_transforms=[]",
    ]
    return load_config(None, base + list(overrides))


def weights(run_dir: Path, name: str = "last.pt") -> dict:
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_run_folder_contents_and_metrics(tmp_path):
    final = train(config(tmp_path, "name=r1"))
    run = tmp_path / "runs" / "r1"
    for f in ("config.yaml", "status.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / f).is_file(), f
    assert list(run.glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in r and "epoch" in r for r in rows)
    keys = set().union(*rows)
    for k in ("train/loss", "val/loss", "val/accuracy", "test/accuracy", "lr", "perf/samples_per_s", "perf/data_wait_fraction"):
        assert k in keys, k
    assert 0.0 <= final["test/accuracy"] <= 1.0
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["final"]["test/accuracy"] == final["test/accuracy"]
    assert load_config(run / "config.yaml") == config(tmp_path, "name=r1")


def test_tensorboard_event_file_holds_every_kind(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(config(tmp_path, "name=tb"))
    run = tmp_path / "runs" / "tb"
    acc = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "val/accuracy", "test/accuracy", "lr"} <= set(tags["scalars"])
    assert any(t.startswith("weights/") for t in tags["histograms"]) and any(t.startswith("grads/") for t in tags["histograms"])
    assert {"data/train_batch", "test/confusion_matrix"} <= set(tags["images"])
    assert tags["graph"] is True
    weights = acc.Histograms(next(t for t in tags["histograms"] if t.startswith("weights/")))[-1].histogram_value
    assert weights.num > 1 and sum(weights.bucket) == weights.num and weights.min <= weights.max  # every value counted once
    assert len(weights.bucket) == len(weights.bucket_limit) == 30 and weights.bucket_limit[-1] >= weights.max
    graph = {node.name: node for node in acc.Graph().node}
    ops = {node.op for node in graph.values()}
    assert {"Conv2d", "Linear", "IO Node"} <= ops, ops  # the traced CNN itself, one node per layer, not an empty graph
    conv = next(node for name, node in graph.items() if node.op == "Conv2d")
    assert conv.name.startswith("Sequential/Sequential[0]/Conv2d[")  # named by where the layer sits in the model
    assert b"kernel_size" in conv.attr["attr"].s and len(conv.attr["_output_shapes"].list.shape[0].dim) == 4
    assert all(i in graph for node in graph.values() for i in node.input)  # every edge joins two nodes
    picture = acc.Images("data/train_batch")[-1]
    from PIL import Image

    decoded = Image.open(io.BytesIO(picture.encoded_image_string))
    assert decoded.size == (picture.width, picture.height) and picture.width > 8
    assert decoded.mode == "L"  # digits have one channel: so has their grid
    assert picture.encoded_image_string == (run / "media" / "data_train_batch.png").read_bytes()  # encoded once, both places
    hparams = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(hparams)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optim.lr"].number_value == pytest.approx(3e-3)
    assert start.hparams["model.name"].string_value == "cnn"
    # add_scalars groups: train and val curves of one chart, as sub-runs of this run (no separate hparams sub-run)
    loss_groups = {p.name for p in run.iterdir() if p.is_dir() and p.name.startswith("epoch_loss")}
    assert loss_groups == {"epoch_loss_train", "epoch_loss_val"}
    assert not [p for p in run.iterdir() if p.is_dir() and p.name.replace(".", "").isdigit()], "add_hparams' timestamped sub-run"


def test_tensorboard_writes_in_the_calling_thread_and_a_resumed_run_drops_later_events(tmp_path):
    import threading

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainyard.track.tensorboard import TensorBoardTracker

    run, threads = tmp_path / "tb", threading.active_count()
    tracker = TensorBoardTracker(config(tmp_path), run)
    for step in range(1, 11):
        tracker.log_metrics({"train/loss": float(step)}, step, 0)
    tracker.log_groups({"epoch/loss": {"train": 1.0, "val": 2.0}}, 1)
    assert threading.active_count() == threads  # no writer thread to take turns at the GIL with the step loop
    tracker.flush()
    on_disk = EventAccumulator(str(run), size_guidance={"scalars": 0})
    on_disk.Reload()
    assert len(on_disk.Scalars("train/loss")) == 10  # buffered between clock flushes; flush() (each epoch end) writes them
    tracker.close("interrupted")  # as if killed at step 10 with the last checkpoint at step 6
    resumed = TensorBoardTracker(config(tmp_path), run, resume_step=6)
    for step in range(6, 13):
        resumed.log_metrics({"train/loss": 100.0 + step}, step, 0)
    resumed.close("finished")
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    points = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert points == [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 13)]  # no step twice


def test_step_scalars_are_held_and_handed_on_in_order(tmp_path):
    """Trackers hold log_metrics points and hand them on together: before any other call (every backend
    sees the calls in the order made), at flush(), at close(), and when the hold clock runs out."""
    from trainyard.track import Tracker, Trackers
    from trainyard.track.jsonl import JsonlTracker, read_metrics

    class Recorder(Tracker):
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step, epoch):
            self.calls.append(("metrics", step))

        def log_groups(self, groups, step):
            self.calls.append(("groups", step))

        def flush(self):
            self.calls.append(("flush", None))

    recorder, jsonl = Recorder(), JsonlTracker(tmp_path)
    trackers = Trackers([recorder, jsonl], hold_secs=3600)
    for step in (1, 2):
        trackers.log_metrics({"train/loss": 1.0 / step}, step, 0)
    assert recorder.calls == [] and read_metrics(tmp_path) == []  # held: nothing ran between steps
    trackers.log_groups({"epoch/loss": {"train": 0.5}}, 3)
    assert recorder.calls == [("metrics", 1), ("metrics", 2), ("groups", 3)]
    trackers.log_metrics({"train/loss": 0.25}, 4, 0)
    trackers.flush()
    assert recorder.calls[3:] == [("metrics", 4), ("flush", None)]
    assert [(row["step"], row["train/loss"]) for row in read_metrics(tmp_path)] == [(1, 1.0), (2, 0.5), (4, 0.25)]
    trackers.log_metrics({"train/loss": 0.2}, 5, 0)
    trackers.close("finished")
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2, 4, 5]

    clocked = Recorder()
    every_call = Trackers([clocked], hold_secs=0)  # the clock has run out at every point: handed on and flushed at once
    every_call.log_metrics({"lr": 0.1}, 1, 0)
    assert clocked.calls == [("metrics", 1), ("flush", None)]


def test_metrics_jsonl_reader_skips_a_half_written_last_line(tmp_path):
    from trainyard.track.jsonl import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epoch": 0, "train/loss": 0.5}\n{"step": 2, "ep', encoding="utf-8")
    assert read_metrics(tmp_path) == [{"step": 1, "epoch": 0, "train/loss": 0.5}]


def test_event_checksums_are_tensorboards():
    import random

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

    from trainyard.track.crc32c import crc32c, masked_crc32c

    assert crc32c(b"123456789") == 0xE3069283  # CRC-32C's standard check value
    rng = random.Random(0)
    for n in [0, 1, 63, 64, 65, 4095, 4096, 4097, 4096 + 63, 20000, 150001]:  # both paths, lane boundaries
        data = rng.randbytes(n)
        assert masked_crc32c(data) == reference(data), n


def test_a_cnn_trains_in_channels_last_on_cpu_and_false_keeps_the_default_layout(tmp_path, capsys):
    """The default CNN on CPU: NHWC, said in the start line, weights equal to the contiguous run's up to rounding."""
    short = ["trainer.epochs=1", "trainer.max_steps=5", "track.backends=[]"]
    train(config(tmp_path, "name=nhwc", *short))
    nhwc = next(line for line in capsys.readouterr().out.splitlines() if "training samples" in line)
    train(config(tmp_path, "name=plain", *short, "trainer.channels_last=false"))
    plain = next(line for line in capsys.readouterr().out.splitlines() if "training samples" in line)
    assert "channels_last" in nhwc and "channels_last" not in plain, (nhwc, plain)
    a, b = weights(tmp_path / "runs" / "nhwc"), weights(tmp_path / "runs" / "plain")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4, msg=name)


def test_existing_run_folder_is_never_overwritten(tmp_path, capsys):
    train(config(tmp_path, "name=keep", "trainer.epochs=1"))
    before = (tmp_path / "runs" / "keep" / "checkpoints" / "last.pt").read_bytes()
    code = main(["train", f"track.root={tmp_path / 'runs'}", "name=keep", "trainer.epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in err and "--resume" in err
    assert (tmp_path / "runs" / "keep" / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_after_epoch_two_is_bitwise_identical(tmp_path, monkeypatch):
    full = config(tmp_path, "name=full", "trainer.epochs=4")
    train(full)

    original = Trainer.train_epoch

    def stop_after_second_epoch(self):
        metrics = original(self)
        if self.epoch == 1:
            self.signals.received = signal.SIGTERM  # as if SIGTERM arrived during epoch 2's last step
        return metrics

    monkeypatch.setattr(Trainer, "train_epoch", stop_after_second_epoch)
    with pytest.raises(Interrupted):
        train(config(tmp_path, "name=cut", "trainer.epochs=4"))
    monkeypatch.setattr(Trainer, "train_epoch", original)
    cut = tmp_path / "runs" / "cut"
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["epoch"] == 2
    assert json.loads((cut / "status.json").read_text())["status"] == "interrupted"

    assert main(["train", "--resume", str(cut)]) == 0
    assert_same_weights(weights(tmp_path / "runs" / "full"), weights(cut))
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["epoch"] == 4


def test_sigterm_mid_epoch_saves_and_resumes_exactly(tmp_path):
    common = [
        f"track.root={tmp_path / 'runs'}",
        "trainer.epochs=3",
        "model.width=8",
        "trainer.progress=false",
        "trainer.log_every=1",
        "loader.batch_size=16",
    ]
    assert main(["train", *common, "name=full"]) == 0

    proc = subprocess.Popen(
        [sys.executable, "-m", "trainyard", "train", *common, "name=cut"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / "runs" / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 10):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "resume with: trainyard train --resume" in err and "Traceback" not in err
    state = load_checkpoint(tmp_path / "runs" / "cut" / "checkpoints" / "last.pt")
    assert state["step"] >= 10

    assert main(["train", "--resume", str(tmp_path / "runs" / "cut")]) == 0
    assert_same_weights(weights(tmp_path / "runs" / "full"), weights(tmp_path / "runs" / "cut"))


def test_crash_while_writing_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    train(config(tmp_path, "name=c", "trainer.epochs=1"))
    last = tmp_path / "runs" / "c" / "checkpoints" / "last.pt"
    before = load_checkpoint(last)

    def dies_half_way(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 half a zip")  # the process is killed mid-write
        else:
            Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_module.save_checkpoint(last, {"model": {}})
    after = load_checkpoint(last)
    assert_same_weights(before["model"], after["model"])
    assert [p.name for p in last.parent.iterdir()] == sorted(["last.pt", "best.pt"]) or len(list(last.parent.iterdir())) == 2


def test_corrupt_and_foreign_checkpoints_give_one_line(tmp_path, capsys):
    train(config(tmp_path, "name=x", "trainer.epochs=1"))
    capsys.readouterr()  # the training run's own output (it may warn that it is data-bound)
    run = tmp_path / "runs" / "x"
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(b"not a checkpoint at all")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "corrupt or not a torch checkpoint" in err and len(err.strip().splitlines()) == 1
    torch.save({"weights": torch.zeros(2)}, last)
    with pytest.raises(CheckpointError, match="not a trainyard checkpoint"):
        load_checkpoint(last)
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_hot_path_reads_values_only_at_log_steps(tmp_path, monkeypatch):
    calls = {"n": 0}

    def counting(real):
        def read(self, *args):
            caller = sys._getframe(1).f_code.co_filename
            # trainyard's step-loop code (torch's optimizers read CPU step counters; trackers read at epoch ends)
            if f"{os.sep}trainyard{os.sep}" in caller and f"{os.sep}track{os.sep}" not in caller:
                calls["n"] += 1
            return real(self, *args)

        return read

    cfg = config(
        tmp_path,
        "name=sync",
        "trainer.epochs=1",
        "trainer.log_every=1000",
        "data.val_fraction=0",
        "data.test_fraction=0",
        "loader.batch_size=8",
    )
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    trainer_steps = []
    original = Trainer.train_epoch

    def record(self):
        out = original(self)
        trainer_steps.append(self.step)
        return out

    monkeypatch.setattr(Trainer, "train_epoch", record)
    train(cfg)
    assert trainer_steps[0] > 150  # many steps ...
    assert calls["n"] <= 4  # ... and no host sync per step: the dataset's mean/std, and once at the end of the epoch


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    common = [
        "model.name=mlp",
        "optim.name=sgd",
        "optim.lr=0.1",
        "trainer.max_steps=6",
        "trainer.epochs=1",
        "data.val_fraction=0",
        "data.test_fraction=0",
        "data.train_transforms=[]",
    ]
    train(config(tmp_path, "name=big", "loader.batch_size=32", *common))
    train(config(tmp_path, "name=acc", "loader.batch_size=16", "trainer.accumulate=2", *common))
    a, b = weights(tmp_path / "runs" / "big"), weights(tmp_path / "runs" / "acc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_clip_grad_norm_bounds_each_sgd_step(tmp_path):
    common = [
        "model.name=mlp",
        "optim.name=sgd",
        "optim.momentum=0",
        "optim.weight_decay=0",
        "optim.lr=1.0",
        "schedule.name=constant",
        "trainer.max_steps=3",
        "trainer.epochs=1",
    ]
    train(config(tmp_path, "name=clipped", "trainer.clip_grad_norm=1e-4", *common))
    start = load_config(None, [])  # the initial weights: same seed, same model
    from trainyard.data import build_data
    from trainyard.engine.run import seed_everything
    from trainyard.models import build_model

    cfg = config(tmp_path, "model.name=mlp")
    seed_everything(cfg.seed)
    data = build_data(cfg)
    init = build_model(cfg.model, data.info).state_dict()
    after = weights(tmp_path / "runs" / "clipped")
    moved = torch.sqrt(sum(((after[k] - init[k]) ** 2).sum() for k in init))
    assert 0 < moved <= 3 * 1e-4 * 1.0001
    assert start is not None


def test_early_stopping_stops_when_the_monitor_stalls(tmp_path):
    final = train(
        config(tmp_path, "name=es", "model.name=mlp", "trainer.epochs=10", "trainer.patience=2", "optim.lr=1e-12", "schedule.name=constant")
    )
    rows = [json.loads(line) for line in (tmp_path / "runs" / "es" / "metrics.jsonl").read_text().splitlines()]
    epochs = {r["epoch"] for r in rows if "val/accuracy" in r}
    assert len(epochs) == 3  # the first sets the best, two more without improvement
    assert "test/accuracy" in final


def test_bf16_autocast_on_cpu_and_fp16_needs_cuda(tmp_path, capsys):
    final = train(config(tmp_path, "name=bf16", "trainer.precision=bf16", "trainer.epochs=1"))
    assert final["test/accuracy"] > 0.3
    if not torch.cuda.is_available():
        assert main(["train", f"track.root={tmp_path / 'runs'}", "trainer.precision=fp16", "trainer.device=cpu"]) == 2
        assert "trainer.precision=fp16: needs a CUDA device" in capsys.readouterr().err


def test_same_seed_same_run_and_deterministic_mode(tmp_path):
    train(config(tmp_path, "name=a", "trainer.epochs=1", "trainer.deterministic=true"))
    train(config(tmp_path, "name=b", "trainer.epochs=1", "trainer.deterministic=true"))
    train(config(tmp_path, "name=c", "trainer.epochs=1", "seed=1"))
    assert_same_weights(weights(tmp_path / "runs" / "a"), weights(tmp_path / "runs" / "b"))
    assert not torch.equal(weights(tmp_path / "runs" / "a")["0.0.weight"], weights(tmp_path / "runs" / "c")["0.0.weight"])


@pytest.mark.parametrize("name", ["constant", "step", "cosine", "onecycle"])
def test_schedules(name):
    from trainyard.config import ScheduleConfig
    from trainyard.engine.optim import build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    cfg = ScheduleConfig(name=name, warmup_steps=5, step_epochs=1, gamma=0.5, min_lr=0.001)
    sched = build_scheduler(opt, cfg, total_steps=40, steps_per_epoch=10, max_lr=0.1)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5]  # warmup rises
    assert max(lrs) == pytest.approx(0.1, rel=1e-3)
    if name == "constant":
        assert lrs[10:] == pytest.approx([0.1] * 30)
    if name == "cosine":
        assert lrs[-1] == pytest.approx(0.001, abs=2e-3) and lrs[20] > lrs[30]
    if name == "step":
        assert sorted(set(round(x, 6) for x in lrs[5:])) == sorted(set(round(x, 6) for x in lrs[5:]))
        assert lrs[-1] < lrs[6]
    if name == "onecycle":
        assert lrs[-1] < 0.01


def test_progress_bar_is_quiet_when_output_is_not_a_terminal(tmp_path):
    proc = run_cli("train", f"track.root={tmp_path}", "name=q", "trainer.epochs=1", "model.width=8")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr
    assert "test accuracy" in proc.stdout and f"tensorboard --logdir {tmp_path / 'q'}" in proc.stdout


def test_graph_tracing_failure_is_a_warning(tmp_path):
    from trainyard.track.tensorboard import TensorBoardTracker

    class Untraceable(torch.nn.Module):
        def forward(self, x):
            return {"not": "a tensor"}

    tracker = TensorBoardTracker(config(tmp_path), tmp_path)
    with pytest.warns(UserWarning, match="model graph not logged"):
        tracker.log_graph(Untraceable(), torch.zeros(1, 3))
    tracker.close("finished")


@pytest.mark.parametrize("channels", [1, 3])
def test_pictures_keep_the_images_channels(channels):
    from trainyard.track.figures import image_grid, labelled_grid

    x = torch.rand(5, channels, 6, 6)
    grid, labelled = image_grid(x), labelled_grid(x, ["a"] * 5)
    assert grid.shape[0] == labelled.shape[0] == channels
    assert torch.equal(grid[:, 1:7, 1:7], x[0])  # the first image, inside its one-pixel frame
    assert 0 <= labelled.min() and labelled.max() <= 1 and labelled.shape[1] > 6 * 8  # cells scaled up, titles below


def test_graph_of_a_model_fx_cannot_trace_comes_from_jit(tmp_path):
    from trainyard.track.tensorboard import graph_def

    class Branchy(torch.nn.Module):  # control flow on a tensor's value: torch.fx cannot trace it, torch.jit.trace can
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.warns():  # the jit tracer's own warnings (the branch taken is recorded)
        graph, _ = graph_def(Branchy(), torch.ones(2, 3))
    assert "aten::linear" in {node.op for node in graph.node}
    graph, _ = graph_def(torch.nn.Sequential(torch.nn.Linear(3, 2)), torch.ones(2, 3))
    assert {node.op for node in graph.node} == {"IO Node", "Linear"}


def test_best_is_a_link_that_later_saves_do_not_touch(tmp_path):
    from trainyard.engine.checkpoint import link_checkpoint, save_checkpoint

    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint(last, {"model": {"w": torch.ones(3)}})
    link_checkpoint(last, best)
    save_checkpoint(last, {"model": {"w": torch.zeros(3)}})
    assert torch.equal(load_checkpoint(best)["model"]["w"], torch.ones(3))
    assert torch.equal(load_checkpoint(last)["model"]["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_totals_release_each_steps_graph_at_a_fold_and_record_none(tmp_path):
    """forward_backward hands back its loss and logits attached to their spent graph (detaching each step
    cost more than the step's own framework code); the totals hold them until a fold, then drop them, and
    their sums never join a graph."""
    import gc
    import weakref

    from trainyard.engine.totals import RunningTotals
    from trainyard.parallel import Strategy

    class Payload:
        pass

    class Tag(torch.autograd.Function):  # something that lives exactly as long as the step's graph
        @staticmethod
        def forward(ctx, x, payload):
            ctx.payload = payload
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad, None

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    strategy, totals = Strategy(config(tmp_path)), RunningTotals(torch.device("cpu"), max_held=1 << 30)
    graphs = []
    for _ in range(3):
        payload = Payload()
        graphs.append(weakref.ref(payload))
        x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
        loss, logits = strategy.forward_backward(
            lambda x, payload=payload: model(Tag.apply(x.requires_grad_(), payload)),
            x,
            y,
            torch.nn.CrossEntropyLoss(),
            contextlib.nullcontext,
            lambda loss: loss,
        )
        totals.add(loss, y, logits)
        del payload, loss, logits, x
    gc.collect()
    assert all(p.grad is not None for p in model.parameters())  # the backward did happen
    assert graphs[0]() is None and graphs[1]() is not None  # the first add folds at once; the next steps are held
    totals.fold()
    gc.collect()
    assert [g() for g in graphs] == [None, None, None]  # every step's graph went with the fold
    assert not totals.loss_sum.requires_grad and totals.loss_sum.grad_fn is None and totals.stat_sum.grad_fn is None


FAULTS_PER_STEP = """
import ctypes, resource, sys, torch
from trainyard.config import load_config
# glibc's starting thresholds (128 KiB), held there: its own adjustment of them depends on where earlier
# objects sit in the heap, so a process with glibc's settings faults or not by chance
mallopt = ctypes.CDLL(None).mallopt
assert mallopt(-1, 128 * 1024) == 1 and mallopt(-3, 128 * 1024) == 1  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
if sys.argv[1] == "trainer":  # what a run does: the Trainer sets the allocator up (trainer.keep_host_memory: true)
    from trainyard.engine.run import train
    train(load_config(None, [f"track.root={sys.argv[2]}", "trainer.epochs=1", "model.width=8", "trainer.progress=false"]))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(8):  # a step's activations: 8 x 4 MiB, freed together at the end of the step
    before = faults()
    blocks = [torch.ones(1 << 20) for _ in range(8)]
    del blocks
    counts.append(faults() - before)
print(min(counts[3:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_freed_host_memory_is_kept_for_the_next_step(tmp_path):
    """glibc hands a step's freed activations back to the OS and the next step faults every page in again
    (in the CNN benchmark, millions of faults an epoch and a quarter of the time); a run keeps them. How much a
    process with glibc's own settings faults depends on its heap's layout (0 or 8,160 a step here, run to run),
    so both sides start from glibc's starting thresholds held fixed: only the run's own setting differs."""
    bare, trainer = (
        int(
            subprocess.run(
                [sys.executable, "-c", FAULTS_PER_STEP, mode, str(tmp_path)], capture_output=True, text=True, timeout=120, check=True
            ).stdout.split()[-1]
        )
        for mode in ("bare", "trainer")
    )
    assert bare > 4000 and trainer < 100, (bare, trainer)  # 32 MiB a step is 8192 fresh pages


def test_running_totals_without_logits_hold_a_bounded_number_of_steps():
    from trainyard.engine.totals import RunningTotals, steps_held_before_gc

    totals = RunningTotals(torch.device("cpu"))  # a pipeline stage before the last: losses and labels, no logits
    for _ in range(3072):
        totals.add(torch.tensor(0.5), torch.zeros(4, dtype=torch.long), None)
        assert len(totals._held) <= steps_held_before_gc()
    totals.fold()
    assert totals.seen == 4 * 3072 and totals.loss_sum.item() == pytest.approx(0.5 * totals.seen)


def test_running_totals_hold_too_few_steps_for_a_garbage_collection():
    """Each held step is objects the cyclic garbage collector tracks; holding more than its youngest
    generation's threshold made it collect in the middle of the loop, scanning them."""
    import gc

    from trainyard.engine.totals import RunningTotals

    collections = []
    callback = lambda phase, info: phase == "start" and collections.append(info["generation"])  # noqa: E731
    totals = RunningTotals(torch.device("cpu"))  # small logits: the element bound alone would hold ~3000 steps
    labels = torch.zeros(4, dtype=torch.long)
    gc.collect()
    gc.callbacks.append(callback)
    try:
        for _ in range(3000):  # what the loop keeps of each step: a fresh loss, labels and logits
            totals.add(torch.tensor(0.5), labels.clone(), torch.zeros(4, 10))
    finally:
        gc.callbacks.remove(callback)
    assert collections == [] and len(totals._held) < gc.get_threshold()[0] // 4


@pytest.mark.parametrize("max_held", [1 << 22, 25])  # logits folded after the first step and at the end, or every step
def test_running_totals_equal_per_step_sums(max_held):
    from trainyard.engine.totals import RunningTotals

    g = torch.Generator().manual_seed(0)
    totals = RunningTotals(torch.device("cpu"), max_held=max_held)
    loss_sum, correct, seen = 0.0, 0, 0
    for step, n in enumerate([8, 8, 8, 5, 8, 3, 8]):  # short batches in the middle, as length-bucketed batches have
        logits, labels = torch.randn(n, 4, generator=g), torch.randint(0, 4, (n,), generator=g)
        logits[0] = 1.0  # a tie: both count the first maximum
        loss = torch.nn.functional.cross_entropy(logits, labels)
        totals.add(loss, labels, logits)
        loss_sum += loss.item() * n
        correct += int((logits.argmax(1) == labels).sum())
        seen += n
        if step == 2:
            totals.fold_losses()  # a log step in between: the loss total and samples are current
            assert totals.loss_sum.item() == pytest.approx(loss_sum, rel=1e-6) and totals.seen == seen
    totals.fold()
    assert totals.seen == seen and int(totals.stat_sum) == correct
    assert totals.loss_sum.item() == pytest.approx(loss_sum, rel=1e-6)
    assert not totals._held  # nothing held after a fold
