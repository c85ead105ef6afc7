"""The batched in-memory loader: the DataLoader's batches in the DataLoader's order, exact resume, and batched
augmentations whose outputs have the per-sample torchvision transform's distribution."""

from __future__ import annotations

import dataclasses
import math
import signal

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from trainyard.config import LoaderConfig, load_config
from trainyard.data import build_data
from trainyard.data.batch_transforms import apply_affine, batch_step, inverse_affine_matrices
from trainyard.data.batched import BatchedLoader
from trainyard.data.loading import ResumableSampler, build_loader, train_sampler
from trainyard.data.splits import TensorPairs, TransformedSubset
from trainyard.data.transforms import build_pipeline

CPU = torch.device("cpu")


def loader_cfg(**kw) -> LoaderConfig:
    return dataclasses.replace(LoaderConfig(), **kw)


@pytest.fixture(scope="module")
def plain_digits():
    """The digits splits with no augmentation (ToDtype and Normalize only)."""
    return build_data(load_config(None, ["data.train_transforms=[]"]))


@pytest.fixture(scope="module")
def digits():
    """The default job's digits, with its RandomAffine augmentation."""
    return build_data(load_config(None, []))


def batches(loader, epoch: int = 0, seed: int = 0, skip: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    sampler = loader.sampler if not hasattr(loader, "batch_sampler") or loader.batch_sampler is None else loader.batch_sampler.sampler
    sampler.set_epoch(epoch)
    sampler.skip = skip
    loader.generator.manual_seed(seed)  # what the trainer does each epoch
    return list(loader)


def pair(dataset, *, rank: int = 0, world: int = 1, **kw):
    """The batched loader and the DataLoader over ``dataset``, each with its own (identically seeded) sampler."""
    out = []
    for batched in (True, False):
        sampler = train_sampler(dataset, shuffle=True, seed=3, rank=rank, world_size=world)
        out.append(build_loader(dataset, loader_cfg(batched=batched, **kw), device=CPU, sampler=sampler, train=True))
    assert isinstance(out[0], BatchedLoader) and isinstance(out[1], DataLoader)
    return out


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype and ya.dtype == yb.dtype
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --------------------------------------------------------------------------------------
# The same batches as the DataLoader, in the same order
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("rank, world", [(0, 1), (1, 2)])
def test_same_batches_in_the_same_order_as_the_dataloader(plain_digits, drop_last, rank, world):
    fast, slow = pair(plain_digits.train, rank=rank, world=world, batch_size=64, drop_last=drop_last)
    assert len(fast) == len(slow)
    for epoch in (0, 1):
        assert_same_batches(batches(fast, epoch), batches(slow, epoch))


def test_evaluation_splits_and_a_user_tensor_dataset_give_the_same_batches(plain_digits):
    for split in (plain_digits.val, plain_digits.test):
        fast = build_loader(split, loader_cfg(batched="auto"), device=CPU, train=False)
        slow = build_loader(split, loader_cfg(batched=False), device=CPU, train=False)
        assert isinstance(fast, BatchedLoader)
        assert_same_batches(list(fast), list(slow))
    # a user's TensorDataset, through from_splits (float inputs, float targets: regression)
    g = torch.Generator().manual_seed(0)
    user = TensorDataset(torch.randn(300, 5, generator=g), torch.randn(300, generator=g))
    from trainyard.data.user import from_splits

    bundle = from_splits(load_config(None, ["task.name=regression", "data.val_fraction=0.2"]), user, "test")
    fast, slow = pair(bundle.train, batch_size=32)
    assert_same_batches(batches(fast, 2), batches(slow, 2))


def test_steps_without_randomness_run_on_the_batch_as_on_each_image(plain_digits):
    base = plain_digits.train.base
    pipeline = build_pipeline(
        [{"Pad": {"padding": 2}}, {"CenterCrop": {"size": 10}}, {"Resize": {"size": 14}}], "t", mean=(0.3,), std=(0.2,)
    )
    split = TransformedSubset(base, plain_digits.train.indices[:200], pipeline)
    fast, slow = pair(split, batch_size=50)
    assert_same_batches(batches(fast), batches(slow))


def test_auto_takes_the_dataloader_where_the_batched_path_cannot_and_true_says_why(digits, capsys):
    jitter = TransformedSubset(digits.train.base, digits.train.indices, build_pipeline([{"ColorJitter": {"brightness": 0.4}}], "t"))

    class Items(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(3), i

    cases = [
        (jitter, {}, "ColorJitter: no batched version"),
        (Items(), {}, "the split is a Items, not tensors held in memory"),
        (digits.train, {"collate": "pad"}, "loader.collate=pad"),
        (digits.train, {"num_workers": 1}, None),  # auto: workers asked for are the DataLoader's
    ]
    for dataset, extra, reason in cases:
        assert isinstance(build_loader(dataset, loader_cfg(**extra), device=CPU, train=True), DataLoader)
        assert capsys.readouterr().err == ""  # auto falls back silently
        if reason is not None:
            assert isinstance(build_loader(dataset, loader_cfg(batched=True, **extra), device=CPU, train=True), DataLoader)
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("trainyard: loader.batched=true: the DataLoader instead: ") and reason in err[0], err
    assert isinstance(build_loader(digits.train, loader_cfg(batched=True, num_workers=1), device=CPU, train=True), BatchedLoader)


# --------------------------------------------------------------------------------------
# Exact resume
# --------------------------------------------------------------------------------------


def test_a_mid_epoch_skip_gives_the_uninterrupted_batches_bit_exact(digits):
    sampler = ResumableSampler(train_sampler(digits.train, shuffle=True, seed=0).inner)
    loader = build_loader(digits.train, loader_cfg(batch_size=32), device=CPU, sampler=sampler, train=True)
    assert isinstance(loader, BatchedLoader) and loader.pipeline.names[0] == "RandomAffine"
    full = batches(loader, epoch=1, seed=11)
    again = batches(loader, epoch=1, seed=11)
    resumed = batches(loader, epoch=1, seed=11, skip=5 * 32)
    assert_same_batches(full, again)
    assert_same_batches(full[5:], resumed)
    other = batches(loader, epoch=1, seed=12)
    assert not torch.equal(full[0][0], other[0][0]), "another epoch seed must draw other augmentations"
    assert torch.equal(full[0][1], other[0][1]), "the epoch seed changes the augmentation, not the order"


def test_training_resumed_mid_epoch_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    from trainyard.cli import main
    from trainyard.engine.checkpoint import load_checkpoint
    from trainyard.engine.run import train
    from trainyard.engine.trainer import Interrupted, Trainer

    common = [
        f"track.root={tmp_path / 'runs'}",
        "trainer.epochs=2",
        "model.width=8",
        "trainer.progress=false",
        "loader.batch_size=32",
        "track.backends=[]",
    ]
    train(load_config(None, common + ["name=full"]))
    monkeypatch.setattr(Trainer, "_stop_signal", property(lambda self: signal.SIGTERM if self.step == 50 else None))
    with pytest.raises(Interrupted):
        train(load_config(None, common + ["name=cut"]))
    monkeypatch.undo()
    cut = tmp_path / "runs" / "cut"
    state = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["batch"] > 0, "the cut must fall inside the second epoch"
    assert main(["train", "--resume", str(cut)]) == 0
    full = load_checkpoint(tmp_path / "runs" / "full" / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(cut / "checkpoints" / "last.pt")["model"]
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


# --------------------------------------------------------------------------------------
# Batched augmentations: torchvision's geometry, and its distribution over many draws
# --------------------------------------------------------------------------------------


def test_affine_and_rotation_use_torchvisions_geometry():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 12, 10), dtype=torch.uint8, generator=g)
    cases = [(17.5, 2, -1, 1.1, 5.0, -3.0, "nearest"), (-40.0, 0, 3, 0.8, 0.0, 0.0, "bilinear"), (3.0, -2, 0, 1.0, 0.0, 12.0, "nearest")]
    for angle, tx, ty, scale, shx, shy, mode in cases:
        want = TF.affine(
            img, angle=angle, translate=[tx, ty], scale=scale, shear=[shx, shy], interpolation=v2.InterpolationMode(mode), fill=0
        )
        t = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
        theta = inverse_affine_matrices(t(angle), t(tx), t(ty), t(scale), t(shx), t(shy), (0.0, 0.0))
        got = apply_affine(img.unsqueeze(0), theta, mode, [0.0])[0]
        # the same pixels but where float rounding puts a sampling point on the other side of a pixel edge
        assert (got.int() - want.int()).abs().gt(1).float().mean() < 0.01, (angle, mode)
    rotation = batch_step(v2.RandomRotation(degrees=(30, 30)))
    want = TF.rotate(img, 30.0)
    got = rotation(img.unsqueeze(0), torch.Generator())[0]
    assert (got.int() - want.int()).abs().gt(1).float().mean() < 0.01


DRAWS = 500  # per-sample calls of the v2 transform dominate the time: 2,000 per augmentation


def per_sample_and_batched(step, images: torch.Tensor, draws: int = DRAWS) -> tuple[torch.Tensor, torch.Tensor]:
    """(draws, N, C, H, W) outputs of the v2 transform image by image (torch's global RNG) and of its batched version."""
    torch.manual_seed(0)
    slow = torch.stack([torch.stack([step(img) for img in images]) for _ in range(draws)]).float()
    batched, g = batch_step(step), torch.Generator().manual_seed(1)
    fast = torch.stack([batched(images, g) for _ in range(draws)]).float()
    return slow, fast


def assert_same_distribution(slow: torch.Tensor, fast: torch.Tensor, what: str) -> None:
    """Per-pixel mean and variance over the draws agree within sampling error (5 standard errors, plus a little)."""
    n = slow.shape[0]
    ms, mf, vs, vf = slow.mean(0), fast.mean(0), slow.var(0), fast.var(0)
    se_mean = ((vs + vf) / n).sqrt()
    assert ((ms - mf).abs() <= 5 * se_mean + 0.5).all(), f"{what}: per-pixel means differ by up to {(ms - mf).abs().max():.3g}"
    fourth = ((slow - ms) ** 4).mean(0) + ((fast - mf) ** 4).mean(0)
    se_var = (fourth / n).sqrt()
    assert ((vs - vf).abs() <= 5 * se_var + 0.05 * (vs + vf) + 1.0).all(), (
        f"{what}: per-pixel variances differ by up to {(vs - vf).abs().max():.3g}"
    )
    assert (vs - vf).abs().mean() <= 0.05 * (vs + vf).mean() + 1.0, f"{what}: variances differ on average"


@pytest.fixture(scope="module")
def images(digits):
    """Four real digits (uint8, 1x8x8), scaled up to 16x16 so that sub-pixel geometry shows."""
    base = digits.train.base
    picked = torch.stack([base[i][0] for i in digits.train.indices[:4]])
    return TF.resize(picked, [16, 16], interpolation=v2.InterpolationMode.NEAREST)


@pytest.mark.parametrize(
    "step",
    [
        v2.RandomCrop(16, padding=3),
        v2.RandomCrop(12, padding=2, padding_mode="reflect"),
        v2.RandomCrop((16, 14), padding=(1, 2, 3, 0), fill=77),  # left, top, right, bottom
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(p=0.3),
        v2.RandomAffine(degrees=10, translate=(0.125, 0.125)),  # the digits default job's
        v2.RandomAffine(
            degrees=15, translate=(0.1, 0.2), scale=(0.8, 1.2), shear=(-10, 10, -5, 5), interpolation=v2.InterpolationMode.BILINEAR, fill=40
        ),
        v2.RandomRotation(degrees=25),
        v2.RandomRotation(degrees=(-10, 40), interpolation=v2.InterpolationMode.BILINEAR, fill=200),
    ],
    ids=lambda s: repr(s)[:60],
)
def test_batched_augmentation_has_the_per_sample_distribution(step, images):
    slow, fast = per_sample_and_batched(step, images)
    assert slow.shape == fast.shape
    assert_same_distribution(slow, fast, repr(step))


def test_flip_rate_and_crop_shifts_are_drawn_per_sample_as_v2_draws_them():
    # a ramp image: the flip and the crop's left edge read straight off the output
    ramp = torch.arange(10, dtype=torch.uint8).view(1, 1, 10).expand(512, 1, 4, 10).contiguous()
    flips = torch.stack([batch_step(v2.RandomHorizontalFlip(p=0.25))(ramp, g) for g in [torch.Generator().manual_seed(2)] * 20])
    rate = (flips[..., 0, 0, 0] == 9).float().mean().item()
    assert abs(rate - 0.25) < 4 * math.sqrt(0.25 * 0.75 / flips[..., 0, 0, 0].numel())
    crop, g = batch_step(v2.RandomCrop((4, 4))), torch.Generator().manual_seed(3)  # 7 left positions, 1 top position
    lefts = torch.cat([crop(ramp, g)[:, 0, 0, 0] for _ in range(20)]).long()  # the ramp's value at the left edge: the shift
    counts = torch.bincount(lefts, minlength=7).float()
    expected = len(lefts) / 7
    assert len(counts) == 7 and ((counts - expected).abs() < 5 * math.sqrt(expected)).all(), counts.tolist()
    assert len(set(lefts[:512].tolist())) == 7, "every sample in one batch draws its own crop"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_split_is_resident_and_augmented_there(digits):
    cuda = torch.device("cuda")
    sampler = train_sampler(digits.train, shuffle=True, seed=0)
    loader = build_loader(digits.train, loader_cfg(batch_size=64), device=cuda, sampler=sampler, train=True)
    assert isinstance(loader, BatchedLoader) and loader.inputs.is_cuda
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    plain = TensorPairs(digits.train.base.inputs, digits.train.base.labels)
    step = v2.RandomAffine(degrees=10, translate=(0.125, 0.125))
    images = plain.inputs[:4]
    torch.manual_seed(0)
    slow = torch.stack([torch.stack([step(img) for img in images]) for _ in range(DRAWS)]).float()
    g = torch.Generator(device=cuda).manual_seed(1)
    fast = torch.stack([batch_step(step)(images.to(cuda), g) for _ in range(DRAWS)]).float().cpu()
    assert_same_distribution(slow, fast, "RandomAffine on cuda")


def test_batches_gathered_in_blocks_are_the_same_batches(plain_digits, digits, monkeypatch):
    import trainyard.data.batched as batched_module

    monkeypatch.setattr(batched_module, "BLOCK_BYTES", 3 * 32 * 64)  # 3 batches of 32 8x8 uint8 images per block
    fast, slow = pair(plain_digits.train, batch_size=32, drop_last=True)
    assert_same_batches(batches(fast, 1), batches(slow, 1))
    sampler = ResumableSampler(train_sampler(digits.train, shuffle=True, seed=0).inner)
    loader = build_loader(digits.train, loader_cfg(batch_size=32), device=CPU, sampler=sampler, train=True)
    full = batches(loader, epoch=0, seed=4)
    assert_same_batches(full[4:], batches(loader, epoch=0, seed=4, skip=4 * 32))  # a skip inside a block
    monkeypatch.undo()
    assert_same_batches(full, batches(loader, epoch=0, seed=4))  # the block size changes nothing
