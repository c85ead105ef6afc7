"""Sharded data parallel (FSDP2): equivalence with one process and with ddp, sharded checkpoints that reshard
across strategies and world sizes, activation checkpointing, bad settings. On CPU with gloo, 2 processes on
127.0.0.1.

AdamW with a constant learning rate and no augmentation, so 2 ranks x batch b must equal 1 process x batch 2b
on the MLP and the transformer. The CNN has BatchNorm, whose batch statistics are per rank under fsdp and ddp
alike (no SyncBatchNorm on CPU): there fsdp must equal ddp with the same per-rank batch.

Most 2-rank runs start their two processes as a launcher would (``RANK``/``WORLD_SIZE``, trainyard's ``env``
launcher): two interpreters instead of a parent and two spawned children; ``fsdp_runs`` keeps one spawned run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import SRC, free_port, run_cli
from torch import nn
from torch.distributed.checkpoint import FileSystemReader

from trainyard.config import load_config
from trainyard.engine.checkpoint import load_checkpoint, resumed_batch, save_sharded_checkpoint
from trainyard.errors import ConfigError
from trainyard.parallel import build_strategy
from trainyard.parallel.activation import checkpoint_blocks
from trainyard.parallel.fsdp import by_index, by_name, equal_batch_counts, shard_paths

TESTS = Path(__file__).resolve().parent
SETUP = [
    "optim.name=adamw",
    "optim.lr=0.01",
    "schedule.name=constant",
    "data.train_transforms=[]",
    "trainer.progress=false",
    "trainer.log_every=1",
    "trainer.histogram_every=0",
    "track.images=false",
    "track.graph=false",
    "track.backends=[]",
]
MLP = ["model.name=mlp", "model.width=16"]
CNN = ["model.name=cnn", "model.width=4"]
STEPS = ["trainer.epochs=1", "trainer.max_steps=12"]
FSDP2 = ["parallel.strategy=fsdp", "parallel.devices=2", "loader.batch_size=16"]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
STOP = "callbacks=[stop_at:StopAt]"  # every rank stops after step 6, mid-epoch: last.pt saved, exit 130


def train(*args: str, resume: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """One ``trainyard train`` command (spawning its ranks itself when parallel.devices asks for them)."""
    first = ["--resume", str(resume)] if resume else []
    return run_cli("train", *first, *SETUP, *args, timeout=timeout, env=ENV)


def train2(*args: str, resume: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Two ranks as a launcher starts them (RANK/WORLD_SIZE set): rank 0's output, the worst exit status."""
    first = ["--resume", str(resume)] if resume else []
    command = [sys.executable, "-m", "trainyard", "train", *first, *SETUP, *args, "parallel.devices=2", "parallel.timeout=60"]
    port = str(free_port())
    ranks = [
        subprocess.Popen(
            command,
            env={**os.environ, **ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
            | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=timeout) for p in ranks]
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in ranks]
    return subprocess.CompletedProcess(command, max(codes, key=abs), outs[0][0], outs[0][1] + outs[1][1])


def finished(result, code: int = 0) -> None:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def only_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def checkpoint(run: Path, name: str = "last.pt") -> dict:
    return load_checkpoint(run / "checkpoints" / name)  # a sharded one read whole, in a whole one's format


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()  # plain module keys
    for name in a:
        torch.testing.assert_close(a[name].float(), b[name].float(), rtol=0, atol=atol, msg=name)


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def step_losses(run: Path) -> dict[int, float]:
    """train/loss of every logged step (trainer.log_every=1): the primary's own batch."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["train/loss"] for r in rows if "perf/samples_per_s" in r}


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> dict:
    """single: batch 32. fsdp: 2 ranks x batch 16 (spawned). stopped: the fsdp run again, stopped after step 6
    (its sharded last.pt is mid-epoch). single_stopped: the single run stopped after step 6. 12 AdamW steps."""
    root = tmp_path_factory.mktemp("fsdp_mlp")
    finished(train(f"track.root={root / 'single'}", *MLP, *STEPS, "loader.batch_size=32"))
    fsdp = train(f"track.root={root / 'fsdp'}", *MLP, *STEPS, *FSDP2)
    finished(fsdp)
    finished(train2(f"track.root={root / 'stopped'}", *MLP, *STEPS, *FSDP2, STOP), 130)
    finished(train(f"track.root={root / 'single_stopped'}", *MLP, *STEPS, "loader.batch_size=32", STOP), 130)
    return {
        "root": root,
        "single": only_run(root / "single"),
        "fsdp": only_run(root / "fsdp"),
        "fsdp_stdout": fsdp.stdout,
        "stopped": only_run(root / "stopped"),
        "single_stopped": only_run(root / "single_stopped"),
    }


@pytest.mark.timeout(400)
def test_two_sharded_ranks_of_batch_b_train_like_one_process_of_batch_2b(mlp):
    single, fsdp = checkpoint(mlp["single"]), checkpoint(mlp["fsdp"])
    assert single["step"] == fsdp["step"] == 12
    assert_same_weights(fsdp["model"], single["model"])
    # the optimizer's state read back in torch.optim's own format, the same as one process writes
    assert fsdp["optimizer"]["param_groups"][0]["params"] == single["optimizer"]["param_groups"][0]["params"]
    for i, s in single["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fsdp["optimizer"]["state"][i][key], s[key], rtol=0, atol=1e-5)
    # the start line and status.json say what each rank holds: half of each of the MLP's tensors (rounded up per tensor)
    line = next(line for line in mlp["fsdp_stdout"].splitlines() if "fsdp, 2 processes on cpu (gloo, spawn)" in line)
    total = sum(t.numel() for t in single["model"].values())
    assert f"of {total:,} parameters per rank" in line
    held = status(mlp["fsdp"])["per_rank"]
    assert held["after_step"] == 1 and len(held["parameters"]) == 2 and sum(held["parameters"]) >= total > max(held["parameters"])
    assert all(p > 10 * 2**20 for p in held["peak_memory_bytes"]) and "ru_maxrss" in held["peak_memory"]
    assert "trainyard: after step 1, per rank: parameters " in mlp["fsdp_stdout"]
    assert status(mlp["single"])["per_rank"]["parameters"] == [total]
    # val (143) and test (359) are odd: every sample counted once, each rank with as many batches as the other
    single_final, fsdp_final = status(mlp["single"])["final"], status(mlp["fsdp"])["final"]
    for key in ("val/loss", "val/accuracy", "test/loss", "test/accuracy", "test/accuracy/count"):
        assert fsdp_final[key] == pytest.approx(single_final[key], abs=1e-5), key


@pytest.mark.timeout(400)
def test_fsdp_checkpoints_are_sharded_every_rank_writing_its_part(mlp):
    folder = mlp["stopped"] / "checkpoints"
    pointer = load_checkpoint(folder / "last.pt", weights=False)
    assert "model" not in pointer and "optimizer" not in pointer and pointer["step"] == 6 and pointer["batch"] == 6
    shards = Path(pointer["sharded"])
    assert shards.parent == folder and shards.name.startswith("last-s6-") and shards.name.endswith(".dcp")
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    metadata = FileSystemReader(shards).read_metadata().state_dict_metadata
    weight = metadata["model.1.weight"]  # Linear(64, 16): rows 0-7 written by rank 0, rows 8-15 by rank 1
    assert [tuple(c.offsets) for c in weight.chunks] == [(0, 0), (8, 0)] and tuple(weight.size) == (16, 64)
    assert len(metadata["optimizer.state.1.weight.exp_avg"].chunks) == 2
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    # the finished run: best.pt names a folder of its own or the same one; nothing else is left
    done = mlp["fsdp"] / "checkpoints"
    named = {Path(load_checkpoint(done / n, weights=False)["sharded"]).name for n in ("last.pt", "best.pt")}
    assert {p.name for p in done.iterdir() if p.is_dir()} == named


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "how, args, reference",
    [
        ("fsdp x2", ["parallel.strategy=fsdp", "loader.batch_size=16"], "fsdp"),
        ("ddp x2", ["parallel.strategy=ddp", "loader.batch_size=16"], "fsdp"),
        ("fsdp x1", ["parallel.strategy=fsdp", "parallel.devices=1", "loader.batch_size=32"], "single"),
        ("single", ["parallel.strategy=single", "loader.batch_size=32"], "single"),
    ],
)
def test_a_sharded_checkpoint_of_2_ranks_resumes_at_any_world_size_and_strategy(mlp, tmp_path, how, args, reference):
    """Stopped after step 6 of 12 on 2 fsdp ranks, resumed: the first resumed step's loss is the loss the
    uninterrupted run had there, and the run ends where it ended. The global batch is kept (2 x 16 or 1 x 32),
    so every global batch holds the same samples; the loss logged is the primary's batch (half of it on 2 ranks)."""
    run = copy_run(mlp["stopped"], tmp_path / "run")
    finished((train2 if "x2" in how else train)(*MLP, *STEPS, *args, resume=run))
    assert status(run)["status"] == "finished"
    ref = mlp[reference]
    assert step_losses(run)[7] == pytest.approx(step_losses(ref)[7], abs=1e-5)
    assert set(step_losses(run)) == set(range(1, 13))
    state = checkpoint(run)
    assert state["step"] == 12
    assert_same_weights(state["model"], checkpoint(ref)["model"])
    sharded = "sharded" in load_checkpoint(run / "checkpoints" / "last.pt", weights=False)
    assert sharded == how.startswith("fsdp")  # single and ddp write whole checkpoints again
    assert len([p for p in (run / "checkpoints").iterdir() if p.is_dir()]) == (1 if sharded else 0)  # the old folder is gone


@pytest.mark.timeout(400)
def test_a_whole_checkpoint_of_one_process_resumes_on_2_fsdp_ranks(mlp, tmp_path):
    run = copy_run(mlp["single_stopped"], tmp_path / "run")
    finished(train2(*MLP, *STEPS, *FSDP2, resume=run))
    assert step_losses(run)[7] == pytest.approx(step_losses(mlp["fsdp"])[7], abs=1e-5)
    assert_same_weights(checkpoint(run)["model"], checkpoint(mlp["fsdp"])["model"])


@pytest.mark.timeout(300)
def test_a_checkpoint_of_another_model_is_one_line(mlp, cnn, tmp_path):
    run = copy_run(mlp["stopped"], tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(cnn["fsdp_ac"] / "checkpoints", run / "checkpoints")  # a CNN's sharded checkpoint under the MLP's run
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    result = train2(*MLP, *STEPS, *FSDP2, resume=run)
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "checkpoints/last.pt does not fit this model" in line and "the run's record is unchanged" in line, line
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


@pytest.mark.timeout(400)
def test_accumulation_and_clipping_under_fsdp_train_like_one_process(mlp, tmp_path):
    """2 ranks x batch 8 x 2 accumulated micro-batches (the first without gradient sync) = one process of
    batch 32; a clip far above the gradient norm goes through the sharded norm and changes nothing."""
    args = ["loader.batch_size=8", "trainer.accumulate=2", "trainer.clip_grad_norm=1000000", "parallel.strategy=fsdp"]
    finished(train2(f"track.root={tmp_path}", *MLP, *STEPS, *args))
    fsdp = checkpoint(only_run(tmp_path))
    assert fsdp["step"] == 12
    assert_same_weights(fsdp["model"], checkpoint(mlp["single"])["model"])


# --- the CNN and the transformer, with activation checkpointing -----------------------------------------


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> dict:
    """The CNN (BatchNorm) on 2 ranks x batch 16, with activation checkpointing: ddp, and fsdp (with the gathered
    weights kept from forward to backward). That checkpointing changes nothing is shown in one process below."""
    root = tmp_path_factory.mktemp("fsdp_cnn")
    steps = ["trainer.epochs=1", "trainer.max_steps=8", "loader.batch_size=16", "parallel.activation_checkpointing=true"]
    ddp = train2(f"track.root={root / 'ddp_ac'}", *CNN, *steps, "parallel.strategy=ddp")
    finished(ddp)
    fsdp = train2(f"track.root={root / 'fsdp_ac'}", *CNN, *steps, "parallel.strategy=fsdp", "parallel.reshard_after_forward=false")
    finished(fsdp)
    return {"ddp_ac": only_run(root / "ddp_ac"), "fsdp_ac": only_run(root / "fsdp_ac"), "stdout": ddp.stdout + fsdp.stdout}


@pytest.mark.timeout(400)
def test_sharded_cnn_with_activation_checkpointing_trains_like_ddp(cnn):
    # BatchNorm's running statistics too: rank 0's under both, each batch counted once though recomputed
    assert_same_weights(checkpoint(cnn["fsdp_ac"])["model"], checkpoint(cnn["ddp_ac"])["model"])
    assert cnn["stdout"].count("activation checkpointing on 3 blocks") == 2  # the start lines: two conv blocks and the head, under both


@pytest.mark.timeout(400)
def test_sharded_transformer_trains_like_one_process_with_and_without_activation_checkpointing(shared_data, tmp_path):
    """The text transformer, sharded per encoder layer (auto: its ModuleList of layers), on 800 SMS messages:
    2 ranks x 16 against one process of 32, AdamW at lr 1e-5. (At a large lr the attention's key bias, whose
    gradient is ~0, takes AdamW's normalised step from rounding noise and differs by ~5e-4 between the two.)"""
    sms = tmp_path / "sms.tsv"
    sms.write_text(
        "\n".join((shared_data / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").split("\n")[:800]) + "\n", encoding="utf-8"
    )
    text = [
        "data.dataset=text",
        f"data.path={sms}",
        "data.columns=[label,text]",
        "model.name=transformer",
        "model.embed_dim=16",
        "model.width=32",
        "model.depth=2",
        "model.heads=2",
        "trainer.epochs=1",
        "trainer.max_steps=8",
        "optim.lr=1e-5",
    ]
    finished(train(f"track.root={tmp_path / 'single'}", *text, "loader.batch_size=32"))
    finished(train2(f"track.root={tmp_path / 'fsdp'}", *text, *FSDP2))
    ac = train2(f"track.root={tmp_path / 'fsdp_ac'}", *text, *FSDP2, "parallel.activation_checkpointing=true")
    finished(ac)
    assert "activation checkpointing on 2 blocks" in ac.stdout  # the two encoder layers
    single = checkpoint(only_run(tmp_path / "single"))["model"]
    assert_same_weights(checkpoint(only_run(tmp_path / "fsdp"))["model"], single)
    assert_same_weights(checkpoint(only_run(tmp_path / "fsdp_ac"))["model"], single)


@pytest.mark.timeout(300)
def test_bf16_under_fsdp_trains_and_keeps_fp32_weights(tmp_path):
    # The CNN's BatchNorm: its weights gathered in bf16 beside its fp32 running statistics failed evaluation
    # ("expected scalar type BFloat16 but found Float"); it is kept in fp32.
    finished(train2(f"track.root={tmp_path}", *CNN, "trainer.epochs=1", "trainer.max_steps=6", *FSDP2, "trainer.precision=bf16"))
    run = only_run(tmp_path)
    state = checkpoint(run)
    assert state["step"] == 6 and all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())
    assert 0 < status(run)["final"]["val/loss"] < 3


# --- bad settings: one line, exit 2 ------------------------------------------------------------------


@pytest.mark.timeout(200)
def test_a_shard_class_the_model_lacks_is_one_line_naming_its_classes(tmp_path):
    result = train(f"track.root={tmp_path}", *CNN, *FSDP2, "parallel.shard=[TransformerEncoderLayer]", timeout=180)
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "parallel.shard=['TransformerEncoderLayer']: Sequential has no module of class TransformerEncoderLayer; its classes: " in line
    assert "BatchNorm2d, Conv2d" in line and "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_fp16_under_fsdp_on_cpu_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU message")
    result = run_cli(
        "train",
        f"track.root={tmp_path}",
        "parallel.strategy=fsdp",
        "parallel.devices=2",
        "trainer.precision=fp16",
        "trainer.device=cpu",
        env=ENV,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "trainyard: error: trainer.precision=fp16: parallel.strategy=fsdp on cpu has no fp16 gradient scaling; "
        "use trainer.precision=bf16 or 32"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_activation_checkpointing_is_refused_where_it_does_not_apply(tmp_path):
    result = run_cli("train", f"track.root={tmp_path}", "parallel.strategy=pipeline", "parallel.activation_checkpointing=true", env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "trainyard: error: parallel.activation_checkpointing=true: not under parallel.strategy=pipeline; "
        "use single, ddp or fsdp, or set it to false"
    )


@pytest.mark.timeout(240)
def test_a_diverging_fsdp_run_stops_as_diverged_with_its_sharded_weights_checked(tmp_path):
    result = train2(f"track.root={tmp_path}", *MLP, *FSDP2, "optim.name=sgd", "optim.lr=1e6", "trainer.epochs=1", "name=nan")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "diverged" in result.stderr and "Traceback" not in result.stderr
    assert json.loads((tmp_path / "nan" / "status.json").read_text())["status"] == "diverged"


def test_fewer_training_samples_than_ranks_is_one_line():
    strategy = build_strategy(load_config(None, ["parallel.strategy=fsdp", "parallel.devices=2"]))
    strategy.world_size = 2
    with pytest.raises(ConfigError, match=r"^parallel.strategy=fsdp: the training split has 1 sample, fewer than the 2 processes"):
        strategy.train_sampler(torch.utils.data.TensorDataset(torch.zeros(1, 2)), shuffle=True, seed=0)
    assert len(strategy.train_sampler(torch.utils.data.TensorDataset(torch.zeros(2, 2)), shuffle=True, seed=0)) == 1


# --- the pieces, in one process ----------------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def test_auto_shards_the_blocks_then_the_root_and_keeps_tied_weights_with_the_root():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    assert shard_paths(seq, "auto", "here") == ["0", "2"]  # ReLU holds nothing to shard
    assert shard_paths(Tied(), "auto", "here") == ["layers.0", "layers.1", "layers.2"]
    resnet = torchvision.models.resnet18(num_classes=10)
    assert shard_paths(resnet, "auto", "here") == ["layer1", "layer2", "layer3", "layer4"]  # the stem and fc (<1%) stay with the root
    assert shard_paths(Tied(), ["Linear"], "here") == ["layers.0", "layers.1", "layers.2"]  # head shares embed's weight
    with pytest.raises(ConfigError, match=r"Tied has no module of class Block; its classes: Embedding, Linear, ModuleList, Tied"):
        shard_paths(Tied(), ["Block"], "here")
    with pytest.raises(ConfigError, match="expected auto or a list of module class names"):
        shard_paths(Tied(), "Linear", "here")


@pytest.mark.parametrize("n, world, batch", [(143, 2, 32), (143, 2, 71), (359, 2, 32), (10, 4, 3), (7, 4, 2), (1000, 3, 7), (145, 2, 72)])
def test_every_rank_gets_the_same_number_of_evaluation_batches(n, world, batch):
    counts = equal_batch_counts(n, world, batch)
    if counts is None:  # 143 over 2 ranks in batches of 71: 72 + 71 is 2 + 1 batches, and 142 + 1 no better
        assert (n, batch) in ((143, 71), (145, 72))
        return
    assert sum(counts) == n and len({-(-c // batch) for c in counts}) == 1
    assert max(counts) - min(counts) <= batch


def test_optimizer_state_round_trips_between_index_and_name_keys():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    optimizer = torch.optim.AdamW([{"params": [model[1].weight]}, {"params": [model[0].weight, model[0].bias, model[1].bias], "lr": 0.1}])
    model(torch.randn(4, 2)).sum().backward()
    optimizer.step()
    plain = optimizer.state_dict()
    named = by_name(plain, optimizer, model)
    assert named["param_groups"][0]["params"] == ["1.weight"] and named["param_groups"][1]["params"] == ["0.weight", "0.bias", "1.bias"]
    assert named["state"]["1.weight"] is plain["state"][0]
    back = by_index(named, optimizer, model)
    assert back["param_groups"] == plain["param_groups"] and back["state"].keys() == plain["state"].keys()


@pytest.mark.parametrize(
    "batch, saved_world, saved_b, world, b, expect",
    [
        (6, 2, 16, 2, 16, 6),  # unchanged
        (6, 2, 16, 1, 32, 6),  # the global batch kept: the same samples in every batch
        (6, 2, 16, 1, 16, 12),  # half the global batch: twice the batches
        (5, 2, 16, 3, 16, 3),  # 160 samples done, batches of 48: from 144, samples 144-159 trained again
        (0, 2, 16, 3, 16, 0),  # at an epoch's start nothing moves
    ],
)
def test_a_resume_at_another_world_size_continues_from_the_samples_done(batch, saved_world, saved_b, world, b, expect):
    state = {"batch": batch, "epoch": 0, "world_size": saved_world, "config": {"loader": {"batch_size": saved_b}}}
    moved, line = resumed_batch(state, b, world)
    assert moved == expect
    assert (line is None) == (batch == 0 or (saved_world, saved_b) == (world, b))
    if (batch, world) == (5, 3):
        assert line.endswith(
            "epoch 1 continues from sample 144 of its order, dealt over the new processes; its samples 144-159 are trained a second time"
        )


class OneProcess:
    """What save_sharded_checkpoint asks of a strategy, for one process without a process group."""

    is_primary = True

    def broadcast_object(self, obj):
        return obj

    def barrier(self):
        pass


def test_a_sharded_save_killed_at_any_point_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import trainyard.engine.checkpoint as ckpt
    import trainyard.parallel.shards as shards_module

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    model = nn.Linear(3, 2)

    def save(step: int, value: float) -> None:
        with torch.no_grad():
            model.weight.fill_(value)
        shards = {"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": ["weight", "bias"]}]}}
        save_sharded_checkpoint(folder, "last.pt", {"step": step, "epoch": 0}, shards, OneProcess(), also="best.pt" if step == 1 else None)

    save(1, 1.0)
    first = load_checkpoint(folder / "last.pt")
    assert torch.equal(first["model"]["weight"], torch.ones(2, 3)) and first["optimizer"]["param_groups"][0]["params"] == [0, 1]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed there

    # while the parts are written; after the folder is renamed, before last.pt is swapped
    for module, where in ((shards_module, "save_shards"), (ckpt, "save_checkpoint")):
        with monkeypatch.context() as m:
            m.setattr(module, where, killed)
            with pytest.raises(KeyboardInterrupt):
                save(2, 2.0)
        assert torch.equal(load_checkpoint(folder / "last.pt")["model"]["weight"], torch.ones(2, 3)), where
    save(3, 3.0)  # the next save clears what the killed ones left; best.pt keeps its own folder
    assert torch.equal(load_checkpoint(folder / "last.pt")["model"]["weight"], torch.full((2, 3), 3.0))
    assert torch.equal(load_checkpoint(folder / "best.pt")["model"]["weight"], torch.ones(2, 3))
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 2


def test_activation_checkpointing_keeps_less_and_trains_the_same(tmp_path):
    """In one process: a block with BatchNorm and dropout, checkpointed, gives the same weights and running
    statistics after a few AdamW steps (the recomputation replays dropout, and BatchNorm counts each batch once)."""

    def build() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3)),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
            nn.Flatten(),
            nn.Linear(4 * 8 * 8, 3),
        )

    def train_steps(model: nn.Module) -> int:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        torch.manual_seed(1)
        saved = 0

        def count(t):
            nonlocal saved
            saved += t.numel()
            return t

        for _ in range(3):
            x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
            with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return saved

    plain, checkpointed = build(), build()
    checkpoint_blocks(checkpointed, ["0", "1"])
    kept_plain, kept_checkpointed = train_steps(plain), train_steps(checkpointed)
    assert kept_checkpointed < kept_plain / 2
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # the same names: checkpoints unchanged
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(checkpointed.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    with pytest.raises(ConfigError, match="lists no blocks to checkpoint"):
        checkpoint_blocks(nn.Linear(2, 2), [])
