"""`trainyard doctor`: every check catches a deliberately broken setup, and the default job passes.

Broken setups are real components registered for one test: a dataset builder in DATASETS, a model in
MODELS, a strategy in STRATEGIES, or plain config overrides.
"""

from __future__ import annotations

import io
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from trainyard.config import load_config
from trainyard.data import DATASETS, DataBundle, DataInfo
from trainyard.data.splits import TensorPairs, TransformedSubset
from trainyard.doctor import CHECKS, FAIL, PASS, WARN, run_check, run_checks
from trainyard.doctor.context import Context
from trainyard.models import MODELS
from trainyard.parallel import STRATEGIES, Strategy

HERE = __name__  # registry entries point back into this module: "test_doctor:builder"


def doctor(tmp_path, *overrides: str, only: list[str] | None = None) -> dict:
    cfg = load_config(None, [f"track.root={tmp_path / 'runs'}", *overrides])
    out = io.StringIO()
    findings = run_checks(cfg, only, out=out)
    return {f.name: f for f in findings}


# --- test datasets ----------------------------------------------------------------------------
def _images(n: int = 240, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable 1x8x8 images: class c lights up row c % 8 (plus noise); normalised-ish."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    x[torch.arange(n), 0, labels % 8, :] += 2.0
    x[torch.arange(n), 0, :, labels // 8] += 2.0
    return (x - x.mean()) / x.std(), labels


def _info(k: int = 10, channels: int = 1) -> DataInfo:
    return DataInfo(kind="image", num_classes=k, classes=[str(i) for i in range(k)], in_channels=channels, image_size=(8, 8))


def _bundle(x, y, val_x=None, val_y=None, info=None) -> DataBundle:
    val = TensorPairs(val_x, val_y) if val_x is not None else None
    return DataBundle(train=TensorPairs(x, y), val=val, test=None, info=info or _info())


def one_based_labels(cfg):
    x, y = _images()
    return _bundle(x, y + 1)


def missing_class(cfg):
    x, y = _images()
    keep = y != 3
    return _bundle(x[keep], y[keep])


def imbalanced(cfg):
    x, y = _images(600)
    keep = (y != 9) | (torch.arange(len(y)) < 60)  # class 9: 6 samples, the others 60
    return _bundle(x[keep], y[keep])


def three_channels(cfg):
    x, y = _images()
    return _bundle(x.repeat(1, 3, 1, 1), y)  # the model is built for DataInfo's 1 channel


def with_nans(cfg):
    x, y = _images()
    x[5, 0, 2, 2] = float("nan")
    return _bundle(x, y)


def val_copies_train(cfg):
    x, y = _images()
    return _bundle(x, y, x[:40].clone(), y[:40].clone())


def val_shares_some(cfg):
    x, y = _images()
    vx, vy = _images(40, seed=1)
    vx[:4] = x[:4]
    return _bundle(x, y, vx, vy)


def augmented_val_is_separate(cfg):
    """Train samples pass through random noise; hashing must look below the transform."""
    x, y = _images()
    vx, vy = _images(40, seed=1)
    base = TensorPairs(torch.cat([x, vx]), torch.cat([y, vy]))
    noisy = lambda t: t + 0.1 * torch.randn_like(t)  # noqa: E731
    return DataBundle(TransformedSubset(base, range(240), noisy), TransformedSubset(base, range(240, 280)), None, _info())


class SlowImages(Dataset):
    def __init__(self):
        self.x, self.y = _images(64)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        time.sleep(0.02)  # a slow decoder: 160 ms of loading per batch of 8, far above a tiny MLP step even on a busy machine
        return self.x[i], int(self.y[i])


def slow(cfg):
    return DataBundle(SlowImages(), None, None, _info())


class Unreadable(Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, i):
        raise OSError(f"cannot read sample {i}")


def unreadable(cfg):
    return DataBundle(Unreadable(), None, None, _info(), train_labels=torch.arange(100) % 10)


def registering(registry, request):
    """Add a name to a registry for one test. Not monkeypatch.setitem: it reads the old value with
    ``registry.get(name, notset)``, and Registry.get(spec, key) resolves names instead (a new one raises)."""

    def register(name: str, target: str) -> None:
        registry[name] = target
        request.addfinalizer(lambda: registry.pop(name, None))

    return register


# --- the user's datasets, given as data.dataset=test_doctor:<function>: plain Datasets or dicts of splits
def _features(n: int = 200, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))


def regression_targets():
    """Standardised real targets, a linear function of the features plus a little noise."""
    x = _features()
    y = x @ torch.linspace(-1.0, 1.0, 6) + 0.1 * torch.randn(len(x), generator=torch.Generator().manual_seed(1))
    return TensorDataset(x, (y - y.mean()) / y.std())


def regression_nan_targets():
    ds = regression_targets()
    ds.tensors[1][::10] = float("nan")
    return ds


def multilabel_targets():
    """Four 0/1 labels per sample (each positive about half the time), with a validation split of its own."""
    x, vx = _features(), _features(60, seed=2)
    return {"train": TensorDataset(x, (x[:, :4] > 0).float()), "val": TensorDataset(vx, (vx[:, :4] > 0).float())}


def multilabel_dead_label():
    ds = multilabel_targets()["train"]
    ds.tensors[1][:, 2] = 0.0
    return ds


def multilabel_as_class_ids():
    x = _features()
    return TensorDataset(x, torch.arange(len(x)) % 4)


def binary_targets(cfg):
    x = _features()
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())


@pytest.fixture
def dataset(request):
    add = registering(DATASETS, request)

    def register(builder) -> str:
        name = f"doctor_{builder.__name__}"
        add(name, f"{HERE}:{builder.__name__}")
        return f"data.dataset={name}"

    return register


# --- test models ------------------------------------------------------------------------------
class Detached(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.fc = nn.Linear(64, k)

    def forward(self, x):
        return self.fc(x.flatten(1)).detach() * 1.0


class UnusedBranch(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.fc = nn.Linear(64, k)
        self.aux = nn.Linear(64, k)  # never called

    def forward(self, x):
        return self.fc(x.flatten(1))


class AlwaysDropout(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.fc = nn.Linear(64, k)

    def forward(self, x):
        return self.fc(F.dropout(x.flatten(1), 0.5))  # training=True by default: random in eval mode too


class ShadowedTrain(nn.Module):
    """A method named ``train`` hides nn.Module.train: model.train()/eval() never reach the dropout."""

    def __init__(self, k):
        super().__init__()
        self.fc = nn.Linear(64, k)
        self.drop = nn.Dropout(0.5)

    def train(self, mode=True):  # noqa: D102 - the bug under test
        return self

    def forward(self, x):
        return self.fc(self.drop(x.flatten(1)))


class ElevenOutputs(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.fc = nn.Linear(64, k + 1)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Huge(nn.Module):
    """Ten trillion parameters on the meta device: counted, never allocated."""

    def __init__(self, k):
        super().__init__()
        self.w = nn.Parameter(torch.empty(10**13, device="meta"))


class ThreeLogits(nn.Module):
    """A user model (model.name=test_doctor:ThreeLogits) whose head is one short for four labels."""

    def __init__(self, in_features):
        super().__init__()
        self.fc = nn.Linear(in_features, 3)

    def forward(self, x):
        return self.fc(x)


class DictHead(nn.Module):
    """Returns its predictions in a dict, as Hugging Face models do; dropout so the modes check has work."""

    def __init__(self, in_features, num_outputs):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, num_outputs))

    def forward(self, x):
        return {"logits": self.body(x)}


def detached(cfg, info):
    return Detached(info.num_classes)


def unused_branch(cfg, info):
    return UnusedBranch(info.num_classes)


def always_dropout(cfg, info):
    return AlwaysDropout(info.num_classes)


def shadowed_train(cfg, info):
    return ShadowedTrain(info.num_classes)


def eleven_outputs(cfg, info):
    return ElevenOutputs(info.num_classes)


def huge(cfg, info):
    return Huge(info.num_classes)


@pytest.fixture
def model(request):
    add = registering(MODELS, request)

    def register(builder) -> str:
        name = f"doctor_{builder.__name__}"
        add(name, f"{HERE}:{builder.__name__}")
        return f"model.name={name}"

    return register


# --- the default job --------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_default_job_has_no_fail_and_no_false_warn(tmp_path):
    findings = doctor(tmp_path)
    assert list(findings) == list(CHECKS)
    loader = findings.pop("loader")
    assert {n: f.status for n, f in findings.items() if f.status != PASS} == {}
    # The loader check is honest: it warns exactly when its own measurement says the step is data-bound.
    from trainyard.doctor.data_checks import DATA_BOUND_FRACTION

    assert loader.status == (WARN if loader.measured["data_share"] >= DATA_BOUND_FRACTION else PASS)
    assert "tune-workers" in loader.fix or loader.status == PASS


def test_cli_default_output_and_exit_code(tmp_path):
    r = run_cli("doctor", f"track.root={tmp_path}", "--only", "labels,batches", "--only", "run_folder")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("trainyard doctor:")
    assert [line.split()[:2] for line in lines[1:4]] == [["PASS", "labels"], ["PASS", "batches"], ["PASS", "run_folder"]]
    assert lines[-1].startswith("doctor: 3 PASS, 0 WARN, 0 FAIL")
    assert not list(tmp_path.iterdir())  # the writability probe leaves nothing behind


def test_cli_exits_nonzero_on_fail(tmp_path):
    r = run_cli("doctor", f"track.root={tmp_path}", "optim.lr=1000", "--only", "lr")
    assert r.returncode == 1
    assert r.stdout.splitlines()[1].startswith("FAIL  lr")
    assert "Traceback" not in r.stderr


def test_train_doctor_stops_on_fail_before_writing_anything(tmp_path):
    r = run_cli("train", "--doctor", f"track.root={tmp_path / 'runs'}", "optim.lr=1000", "trainer.epochs=1", "trainer.progress=false")
    assert r.returncode == 1
    assert "doctor found a FAIL; not training" in r.stderr
    assert "FAIL  lr" in r.stdout and "FAIL  overfit" in r.stdout
    assert not (tmp_path / "runs").exists()


def test_unknown_check_name_is_one_line_error(tmp_path):
    r = run_cli("doctor", "--only", "lables")
    assert r.returncode == 2
    assert r.stderr.strip() == r.stderr.strip().splitlines()[0]
    assert "did you mean labels?" in r.stderr and "Traceback" not in r.stderr


def test_unknown_dataset_is_one_line_error():
    r = run_cli("doctor", "data.dataset=digitz")
    assert r.returncode == 2 and "did you mean digits?" in r.stderr and "Traceback" not in r.stderr


def test_crashing_parts_are_fails_not_tracebacks(tmp_path, dataset):
    findings = doctor(tmp_path, dataset(unreadable), "model.name=mlp", "model.width=8", only=["labels", "forward", "overfit"])
    assert findings["labels"].status == PASS  # labels come from train_labels, no sample is read
    for name in ("forward", "overfit"):
        assert findings[name].status == FAIL
        assert "not run: loading training batches failed: OSError: cannot read sample" in findings[name].saw


def test_a_check_that_raises_is_its_own_fail(tmp_path, monkeypatch):
    import trainyard.doctor.data_checks as data_checks

    def broken(ctx):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(data_checks, "batches", broken)
    f = run_check("batches", Context(load_config(None, [f"track.root={tmp_path}"])))
    assert f.status == FAIL and f.saw == "the check crashed: ZeroDivisionError: boom"


# --- 1. labels --------------------------------------------------------------------------------
def test_labels_off_by_one(tmp_path, dataset):
    f = doctor(tmp_path, dataset(one_based_labels), only=["labels"])["labels"]
    assert f.status == FAIL
    assert "outside [0, 10) (min 1, max 10)" in f.saw and "1-based" in f.fix


def test_labels_missing_class(tmp_path, dataset):
    f = doctor(tmp_path, dataset(missing_class), only=["labels"])["labels"]
    assert f.status == FAIL and "1 of 10 classes have no training sample" in f.saw and ": 3" in f.saw


def test_labels_imbalance_is_reported(tmp_path, dataset):
    f = doctor(tmp_path, dataset(imbalanced), only=["labels"])["labels"]
    assert f.status == WARN and "imbalance 10.0x" in f.saw and "class 9 6" in f.saw


def test_labels_user_regression_dataset(tmp_path):
    findings = doctor(
        tmp_path,
        f"data.dataset={HERE}:regression_targets",
        "task.name=regression",
        "model.name=mlp",
        "model.width=16",
        only=["labels", "forward", "overfit", "gradients", "modes"],
    )
    assert {n: f.status for n, f in findings.items()} == {n: PASS for n in findings}, [f.saw for f in findings.values()]
    assert "144 training targets finite: mean" in findings["labels"].saw and ", std 0.98, range [" in findings["labels"].saw
    assert "-> predictions (64, 1); initial loss" in findings["forward"].saw and "predicting the mean = " in findings["forward"].saw


def test_labels_regression_nan_targets_fail(tmp_path):
    f = doctor(tmp_path, f"data.dataset={HERE}:regression_nan_targets", "task.name=regression", "model.name=mlp", only=["labels"])["labels"]
    # the task's own target check stops it as the data is read (the run would stop the same way)
    assert f.status == FAIL and "20 of 200 target values are NaN or infinite" in f.saw, f.saw
    assert "makes the loss NaN" in f.saw


def test_labels_regression_far_from_scale_one_warns(tmp_path):
    f = doctor(tmp_path, "data.dataset=diabetes", "task.name=regression", "model.name=mlp", only=["labels", "forward"])
    assert f["labels"].status == WARN and "far from scale 1" in f["labels"].saw and "standardise the targets" in f["labels"].fix
    assert "predicting the mean = " in f["forward"].saw


def test_multilabel_user_dataset_and_dict_output(tmp_path):
    findings = doctor(
        tmp_path,
        f"data.dataset={HERE}:multilabel_targets",
        "task.name=multilabel",
        f"model.name={HERE}:DictHead",
        "optim.lr=0.03",
        only=["labels", "forward", "overfit", "gradients", "modes"],
    )
    assert {n: f.status for n, f in findings.items()} == {n: PASS for n in findings}, [f.saw for f in findings.values()]
    assert findings["labels"].saw.startswith("4 labels in 200 training targets, positive rate ")
    assert "-> logits (64, 4)" in findings["forward"].saw and "(chance ln 2 per label = 0.6931)" in findings["forward"].saw
    assert "Dropout: train and eval outputs differ" in findings["modes"].saw


def test_multilabel_label_never_positive_fails(tmp_path):
    f = doctor(tmp_path, f"data.dataset={HERE}:multilabel_dead_label", "task.name=multilabel", only=["labels"])["labels"]
    assert f.status == FAIL and "1 of 4 labels are never positive in training: 2" in f.saw


def test_multilabel_targets_given_as_class_ids_fail_with_the_tasks_message(tmp_path):
    findings = doctor(tmp_path, f"data.dataset={HERE}:multilabel_as_class_ids", "task.name=multilabel", only=["labels", "forward"])
    labels = findings["labels"]
    assert labels.status == FAIL
    assert "train split: targets are class ids (e.g. 0), but task=multilabel takes a 0/1 vector per sample" in labels.saw
    assert findings["forward"].status == FAIL and findings["forward"].saw.startswith("not run: building the data failed: ")


def test_binary_user_dataset(tmp_path):
    findings = doctor(
        tmp_path,
        f"data.dataset={HERE}:binary_targets",
        "task.name=binary",
        f"model.name={HERE}:DictHead",
        "optim.lr=0.03",
        only=["labels", "forward", "overfit", "modes"],
    )
    assert {n: f.status for n, f in findings.items()} == {n: PASS for n in findings}, [f.saw for f in findings.values()]
    assert "144 training targets in {0, 1}: " in findings["labels"].saw and "positive (" in findings["labels"].saw
    assert "-> logits (64, 1)" in findings["forward"].saw and "(chance ln 2 = 0.6931)" in findings["forward"].saw


def test_forward_user_model_output_does_not_fit_the_task(tmp_path):
    f = doctor(
        tmp_path, f"data.dataset={HERE}:multilabel_targets", "task.name=multilabel", f"model.name={HERE}:ThreeLogits", only=["forward"]
    )["forward"]
    assert f.status == FAIL and "output (64, 3) for targets (64, 4)" in f.saw, f.saw
    assert "output 4 per sample" in f.fix


# --- 2. forward -------------------------------------------------------------------------------
def test_forward_channel_mismatch(tmp_path, dataset):
    f = doctor(tmp_path, dataset(three_channels), only=["forward"])["forward"]
    assert f.status == FAIL
    assert "float32 (64, 3, 8, 8)" in f.saw and "RuntimeError" in f.saw and "in_channels=1" in f.fix


def test_forward_wrong_number_of_outputs(tmp_path, model):
    f = doctor(tmp_path, model(eleven_outputs), only=["forward"])["forward"]
    assert f.status == FAIL and "output (64, 11) for targets (64,)" in f.saw and "needs (64, 10)" in f.saw


# --- 3. inputs --------------------------------------------------------------------------------
def test_inputs_nan(tmp_path, dataset):
    f = doctor(tmp_path, dataset(with_nans), "loader.shuffle=false", only=["inputs"])["inputs"]
    assert f.status == FAIL and f.saw.startswith("1 NaN and 0 Inf input values")


def test_inputs_not_scaled(tmp_path):
    # ToDtype without scale=True keeps 0..255 pixels; Normalize with [0, 1] statistics then blows them up.
    f = doctor(tmp_path, "data.train_transforms=[{ToDtype: {dtype: torch.float32, scale: false}}]", only=["inputs"])["inputs"]
    assert f.status == WARN and "far from mean 0, std 1" in f.saw and "Normalize" in f.fix


# --- 4. overfit one batch ---------------------------------------------------------------------
def test_overfit_lr_too_small(tmp_path):
    f = doctor(tmp_path, "optim.lr=1e-7", "model.width=8", only=["overfit"])["overfit"]
    assert f.status == FAIL and "optim.lr=1.0e-07 is very small" in f.fix


def test_overfit_detached_graph(tmp_path, model):
    f = doctor(tmp_path, model(detached), only=["overfit"])["overfit"]
    assert f.status == FAIL and "detached" in f.fix


def test_overfit_lr_too_large(tmp_path):
    f = doctor(tmp_path, "optim.lr=1000", "model.width=8", only=["overfit"])["overfit"]
    assert f.status == FAIL and "too high" in f.fix


# --- 5. gradients -----------------------------------------------------------------------------
def test_gradients_unused_parameter_warns(tmp_path, model):
    f = doctor(tmp_path, model(unused_branch), only=["gradients"])["gradients"]
    assert f.status == WARN and "2 of 4 trainable tensors get no gradient: aux.weight, aux.bias" in f.saw
    assert "find_unused_parameters" in f.fix


def test_gradients_unused_parameter_fails_under_ddp(tmp_path, model):
    f = doctor(tmp_path, model(unused_branch), "parallel.strategy=ddp", only=["gradients"])["gradients"]
    assert f.status == FAIL and "parallel.find_unused_parameters=true" in f.fix
    f = doctor(tmp_path, model(unused_branch), "parallel.strategy=ddp", "parallel.find_unused_parameters=true", only=["gradients"])[
        "gradients"
    ]
    assert f.status == WARN


# --- 6. train/eval modes ----------------------------------------------------------------------
def test_modes_functional_dropout_in_eval(tmp_path, model):
    f = doctor(tmp_path, model(always_dropout), only=["modes"])["modes"]
    assert f.status == FAIL and "eval mode gives different outputs" in f.saw and "training=self.training" in f.fix


def test_modes_shadowed_train_method(tmp_path, model):
    f = doctor(tmp_path, model(shadowed_train), only=["modes"])["modes"]
    assert f.status == FAIL and "ran in training mode" in f.saw


# --- 7. loader --------------------------------------------------------------------------------
def test_loader_data_bound(tmp_path, dataset):
    f = doctor(tmp_path, dataset(slow), "model.name=mlp", "model.width=8", "loader.batch_size=8", only=["loader"])["loader"]
    assert f.status == WARN and f.measured["data_share"] > 0.5
    assert "trainyard tune-workers" in f.fix


def test_loader_pin_memory_without_cuda_and_too_many_workers(tmp_path):
    from trainyard.data.workers import cpu_count

    if torch.cuda.is_available():
        pytest.skip("pin_memory is right on CUDA")
    f = doctor(
        tmp_path,
        "model.name=mlp",
        "loader.pin_memory=true",
        f"loader.num_workers={cpu_count() + 1}",
        "loader.batch_size=256",
        only=["loader"],
    )["loader"]
    assert f.status == WARN
    assert "loader.pin_memory=true on cpu" in f.saw and "set loader.pin_memory=auto" in f.fix
    assert f"loader.num_workers={cpu_count() + 1} on {cpu_count()} CPUs" in f.saw


# --- 8. distributed sampler -------------------------------------------------------------------
class SharedOrderDDP(Strategy):
    """A broken ddp: every rank iterates the whole dataset in one fixed order."""

    name = "ddp"

    def train_sampler(self, dataset, *, shuffle, seed):
        from trainyard.data.loading import ResumableSampler

        return ResumableSampler(range(len(dataset)))


class PlainDDP(Strategy):
    name = "ddp"  # the default Strategy.train_sampler: DistributedSampler in a ResumableSampler


def test_sampler_ranks_overlap(tmp_path, monkeypatch):
    monkeypatch.setitem(STRATEGIES, "ddp", f"{HERE}:SharedOrderDDP")
    f = doctor(tmp_path, "parallel.strategy=ddp", "parallel.devices=2", "model.width=8", only=["sampler"])["sampler"]
    assert f.status == FAIL and "2 ranks share 1295 training samples" in f.saw


def test_sampler_real_distributed_sampler_passes(tmp_path, monkeypatch):
    monkeypatch.setitem(STRATEGIES, "ddp", f"{HERE}:PlainDDP")
    f = doctor(
        tmp_path,
        "parallel.strategy=ddp",
        "parallel.devices=4",
        "loader.batch_size=32",
        "trainer.accumulate=2",
        "model.width=8",
        only=["sampler"],
    )["sampler"]
    assert f.status == PASS, f.saw
    assert "each rank gets 324 of 1295 samples, disjoint" in f.saw
    assert "batch 32 per rank x 4 ranks x accumulate 2 = 256 samples per optimizer step" in f.saw


def test_sampler_without_ddp_registered_degrades(tmp_path, monkeypatch):
    # a copy without ddp, put back whole afterwards: delitem + setitem would move ddp to the end of the listing
    monkeypatch.setattr(STRATEGIES, "_entries", {k: v for k, v in STRATEGIES._entries.items() if k != "ddp"})
    f = doctor(tmp_path, "parallel.strategy=ddp", "parallel.devices=2", "model.width=8", only=["sampler"])["sampler"]
    assert f.status == WARN and "not registered" in f.saw and "disjoint" in f.saw


# --- 9. batches and drop_last -----------------------------------------------------------------
def test_batches_drop_last_drops_a_lot(tmp_path):
    f = doctor(tmp_path, "loader.batch_size=512", "loader.drop_last=true", only=["batches"])["batches"]
    assert f.status == WARN and "drop_last drops 271 samples (20.9%)" in f.saw


def test_batches_no_batch_at_all(tmp_path):
    f = doctor(tmp_path, "loader.batch_size=2000", "loader.drop_last=true", only=["batches"])["batches"]
    assert f.status == FAIL and "an epoch has no batch" in f.saw


# --- 10. duplicates ---------------------------------------------------------------------------
def test_duplicates_val_is_train(tmp_path, dataset):
    f = doctor(tmp_path, dataset(val_copies_train), only=["duplicates"])["duplicates"]
    assert f.status == FAIL and "40 of 40 val samples (100%) also occur in training" in f.saw


def test_duplicates_some_shared(tmp_path, dataset):
    f = doctor(tmp_path, dataset(val_shares_some), only=["duplicates"])["duplicates"]
    assert f.status == WARN and "4 of 40 val samples (10%)" in f.saw


def test_duplicates_hash_below_augmentation(tmp_path, dataset):
    f = doctor(tmp_path, dataset(augmented_val_is_separate), only=["duplicates"])["duplicates"]
    assert f.status == PASS and "0 of 40 val" in f.saw


# --- 11. run folder and disk ------------------------------------------------------------------
def test_run_folder_not_creatable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    f = doctor(tmp_path, f"track.root={blocker / 'runs'}", only=["run_folder"])["run_folder"]
    assert f.status == FAIL and "is a file, not a folder" in f.saw


def test_run_folder_name_taken(tmp_path):
    (tmp_path / "runs" / "exp1").mkdir(parents=True)
    f = doctor(tmp_path, "name=exp1", only=["run_folder"])["run_folder"]
    assert f.status == FAIL and "already exists" in f.saw and "--resume" in f.fix


def test_run_folder_no_disk_room(tmp_path, model):
    f = doctor(tmp_path, model(huge), only=["run_folder"])["run_folder"]
    assert f.status == FAIL and "checkpoints ~" in f.saw and "TiB each" in f.saw


# --- 12. learning rate ------------------------------------------------------------------------
def test_lr_far_too_high(tmp_path):
    f = doctor(tmp_path, "optim.lr=1000", "model.width=8", only=["lr"])["lr"]
    assert f.status == FAIL and "past the point where training diverges" in f.saw and f.fix.startswith("set optim.lr=")


def test_lr_far_too_low(tmp_path):
    f = doctor(tmp_path, "optim.lr=1e-6", "model.width=8", only=["lr"])["lr"]
    assert f.status == WARN and "below the suggestion" in f.saw and f.fix.startswith("try optim.lr=")
