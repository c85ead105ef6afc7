"""Vision: real MNIST and CIFAR-10 PNGs, every transform by name, torchvision models, preview, bad input."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from trainyard.cli import main
from trainyard.config import ModelConfig, load_config
from trainyard.data import DataInfo, build_data
from trainyard.data.transforms import EXAMPLES, NOT_PER_IMAGE, available, build_one, build_pipeline, check_pipeline
from trainyard.errors import ConfigError, DataError

pytestmark = pytest.mark.timeout(120)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("trainyard: warning:")]  # e.g. data-bound
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("trainyard: error: "), err
    return lines[0]


# --------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------


def test_mnist_through_torchvision_matches_raw_files(shared_data: Path):
    from torchvision.datasets import MNIST

    cfg = load_config(None, ["data.dataset=mnist", f"data.root={shared_data}", "data.download=false", "data.max_samples=300"])
    data = build_data(cfg)
    info = data.info
    assert (info.in_channels, info.image_size, info.num_classes) == (1, (28, 28), 10)
    assert len(data.train) <= 310 and len(data.val) <= 310 and len(data.test) <= 310
    assert set(data.train_labels.tolist()) == set(range(10))  # the cap is stratified

    raw = MNIST(str(shared_data), train=False, download=False)
    i = data.test.indices[0]
    x, y = data.test[0]
    expected = (raw.data[i].float().div(255) - 0.1307) / 0.3081
    assert y == int(raw.targets[i])
    torch.testing.assert_close(x[0], expected)
    # picklable for workers under spawn
    again = pickle.loads(pickle.dumps(data.test))
    torch.testing.assert_close(again[0][0], x)


def test_cifar_png_image_folder(shared_data: Path):
    from torchvision.io import decode_image

    root = shared_data / "cifar10_png"
    cfg = load_config(None, ["data.dataset=image_folder", f"data.root={root}"])
    data = build_data(cfg)
    info = data.info
    assert info.classes == sorted(p.name for p in (root / "train").iterdir())
    assert (info.in_channels, info.image_size) == (3, (32, 32))
    assert len(data.test) == len(list((root / "test").glob("*/*.png")))
    assert len(data.train) + len(data.val) == 5000 and len(data.val) == 500

    x, y = data.test[0]
    path = data.test.base.paths[0]
    expected = (decode_image(path).float() / 255 - torch.tensor(info.mean).view(3, 1, 1)) / torch.tensor(info.std).view(3, 1, 1)
    torch.testing.assert_close(x, expected)
    assert info.classes[y] == Path(path).parent.name


def test_mnist_files_missing_offline_is_one_line(tmp_path: Path, capsys):
    code, _, err = cli(
        capsys, "train", "data.dataset=mnist", f"data.root={tmp_path}", "data.download=false", f"track.root={tmp_path / 'runs'}"
    )
    line = one_line_error(code, err)
    assert f"{tmp_path}/MNIST/raw" in line and "train-images-idx3-ubyte" in line and "ossci-datasets" in line


# --------------------------------------------------------------------------------------
# Every transform `trainyard transforms` lists
# --------------------------------------------------------------------------------------


def test_listing_names_every_transform(capsys):
    code, out, _ = cli(capsys, "transforms")
    assert code == 0
    for name in available():
        assert f"  {name}" in out, name


def _apply(name: str, transform, image: torch.Tensor):
    """Run a transform on what it works on: one image (through a full pipeline), a batch with labels, boxes, a video, ..."""
    from torchvision import tv_tensors

    needs = NOT_PER_IMAGE.get(name, ("image",))[0]
    if needs == "image":
        entry = {name: transform}
        out = check_pipeline(build_pipeline([entry], "data.train_transforms"), image, "a sample")
        assert out.dtype == torch.float32 and out.dim() == 3, name
        return
    if needs == "batch":
        images, labels = transform(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
        assert images.shape == (4, 3, 32, 32) and labels.shape == (4, 10)
        return
    if needs == "boxes":
        boxes = tv_tensors.BoundingBoxes([[2, 2, 20, 20], [5, 5, 30, 30]], format="XYXY", canvas_size=(32, 32))
        points = tv_tensors.KeyPoints([[3, 3], [10, 12]], canvas_size=(32, 32))
        sample = {"image": tv_tensors.Image(image), "boxes": boxes, "points": points, "labels": torch.tensor([1, 2])}
        if name == "RandomIoUCrop":
            sample.pop("points")
        out = transform(sample)
        assert isinstance(out["image"], torch.Tensor)
        return
    if needs == "video":
        out = transform(tv_tensors.Video(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)))
        assert out.shape == (2, 3, 8, 8)
        return
    if needs == "crops":
        out = transform(image)
        assert isinstance(out, tuple) and len(out) in (5, 10)
        return
    if needs == "pil":
        from PIL import Image

        assert isinstance(transform(image), Image.Image)
        return
    raise AssertionError(f"{name}: unknown kind {needs}")


@pytest.mark.parametrize("name", sorted(available()))
def test_every_listed_transform_resolves_and_runs(name: str):
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    args = dict(EXAMPLES.get(name, {}))
    if name == "LinearTransformation":  # its matrix depends on the image size: identity on 3x8x8, from YAML lists
        image = image[:, :8, :8]
        args = {"transformation_matrix": torch.eye(3 * 8 * 8).tolist(), "mean_vector": [0.0] * (3 * 8 * 8)}
    transform = build_one({name: args}, "data.train_transforms[0]")
    assert type(transform).__name__ == name
    _apply(name, transform if name in NOT_PER_IMAGE else args, image)
    if name in NOT_PER_IMAGE:
        with pytest.raises(ConfigError, match=f"{name} .*cannot go in a per-sample pipeline"):
            build_pipeline([{name: args}], "data.train_transforms")


def test_pipeline_adds_conversion_before_float_steps_and_keeps_user_normalize():
    steps = build_pipeline([{"GaussianNoise": {}}, "RandomHorizontalFlip"], "k", mean=[0.5], std=[0.2]).transforms
    assert [type(s).__name__ for s in steps] == ["ToDtype", "GaussianNoise", "RandomHorizontalFlip", "Normalize"]
    steps = build_pipeline([{"Normalize": {"mean": [0.1], "std": [0.3]}}], "k", mean=[0.5], std=[0.2]).transforms
    assert [type(s).__name__ for s in steps] == ["ToDtype", "Normalize"] and list(steps[1].mean) == [0.1]


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def test_resnet18_trains_on_one_channel_mnist(shared_data: Path, tmp_path: Path, capsys):
    """1x28x28 MNIST on resnet18, end to end through the CLI; the labelled sample grid reaches TensorBoard."""
    code, out, err = cli(
        capsys,
        "train",
        "data.dataset=mnist",
        f"data.root={shared_data}",
        "data.max_samples=64",
        "model.name=resnet18",
        "model.small_stem=false",
        "trainer.epochs=1",
        "loader.batch_size=32",
        f"track.root={tmp_path / 'runs'}",
        "trainer.progress=false",
        "track.graph=false",
        "trainer.histogram_every=0",
        "name=r18",
    )
    assert code == 0, err
    assert "test accuracy" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs" / "r18"), size_guidance={"images": 0}).Reload()
    assert {"data/train_batch", "data/train_samples"} <= set(events.Tags()["images"])


def test_small_images_get_the_small_resnet_stem_unless_pretrained_or_off():
    from trainyard.models import build_model

    info = DataInfo("image", 10, [str(i) for i in range(10)], 1, (28, 28), (0.1,), (0.3,))
    small = build_model(ModelConfig(name="resnet18"), info)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and small.conv1.in_channels == 1
    assert isinstance(small.maxpool, torch.nn.Identity)
    plain = build_model(ModelConfig(name="resnet18", small_stem=False), info)
    assert plain.conv1.kernel_size == (7, 7) and plain.conv1.in_channels == 1
    assert small(torch.zeros(2, 1, 28, 28)).shape == plain(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_pretrained_weights_come_from_the_local_cache_only(tmp_path: Path, monkeypatch):
    from torchvision import models

    from trainyard.models import build_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    info = DataInfo("image", 10, [str(i) for i in range(10)], 1, (28, 28), (0.1,), (0.3,))
    with pytest.raises(ConfigError, match=r"model.pretrained=true: resnet18 weights .* not in the local cache .*resnet18-f37072fd.pth"):
        build_model(ModelConfig(name="resnet18", pretrained=True), info)

    torch.manual_seed(0)
    reference = models.resnet18().state_dict()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / "resnet18-f37072fd.pth")
    model = build_model(ModelConfig(name="resnet18", pretrained=True), info)
    torch.testing.assert_close(model.conv1.weight, reference["conv1.weight"].sum(1, keepdim=True))  # RGB filters summed to grey
    torch.testing.assert_close(model.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])
    assert model.fc.out_features == 10
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_model_that_cannot_take_the_image_size_says_how_to_fix_it():
    from trainyard.models import build_model

    info = DataInfo("image", 10, [str(i) for i in range(10)], 3, (32, 32), (0.5,) * 3, (0.2,) * 3)
    with pytest.raises(ConfigError, match=r"model.name=vit_b_16: cannot run on 3x32x32 images .*Resize"):
        build_model(ModelConfig(name="vit_b_16"), info)


# --------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------


def test_preview_writes_a_labelled_png_of_augmented_samples(shared_data: Path, tmp_path: Path, capsys):
    from trainyard.commands.vision import preview_figure

    out = tmp_path / "grid.png"
    code, stdout, err = cli(
        capsys, "preview", "data.dataset=image_folder", f"data.root={shared_data / 'cifar10_png'}", "--out", str(out), "--n", "16"
    )
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "16 training samples" in stdout

    cfg = load_config(None, ["data.dataset=image_folder", f"data.root={shared_data / 'cifar10_png'}"])
    grid, titles = preview_figure(cfg, 12)
    assert len(titles) == 12 and set(titles) <= set(build_data(cfg).info.classes)
    assert grid.shape[0] == 3 and 0 <= grid.min() and grid.max() <= 1
    # 8 cells a row, 2 rows of 32x32 images upscaled to 64 px, each with a text band holding dark label pixels
    band = grid[:, 64 + 2 : 64 + 14, :]
    assert grid.shape[1] == 2 * (64 + 12 + 4) and (band < 0.3).any()


# --------------------------------------------------------------------------------------
# Bad input: one line, exit 2
# --------------------------------------------------------------------------------------


@pytest.fixture
def small_folder(shared_data: Path, tmp_path: Path) -> Path:
    """A copy of 4 real PNGs in each of 3 classes, in tmp_path/folder/train/<class>/."""
    root = tmp_path / "folder"
    for cls in ("cat", "dog", "ship"):
        (root / "train" / cls).mkdir(parents=True)
        for png in sorted((shared_data / "cifar10_png" / "train" / cls).glob("*.png"))[:4]:
            shutil.copy(png, root / "train" / cls / png.name)
    return root


def _folder_run(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train",
        "data.dataset=image_folder",
        f"data.root={root}",
        "trainer.epochs=1",
        "model.width=4",
        "model.depth=1",
        "loader.batch_size=4",
        f"track.root={tmp_path / 'runs'}",
        "trainer.progress=false",
        "track.images=false",
        "track.graph=false",
        "trainer.histogram_every=0",
        *extra,
    ]


@pytest.mark.parametrize(
    "transforms, expected",
    [
        ("[RandomRotaton]", "unknown transform 'RandomRotaton'; did you mean RandomRotation?"),
        (
            "[{RandomRotation: {degree: 15}}]",
            "RandomRotation has no argument 'degree'; did you mean degrees?; signature: RandomRotation(degrees, ",
        ),
        ("[{RandomCrop: {}}]", "signature: RandomCrop(size, padding=None"),
        ("[{RandomCrop: {size: 64}}]", "data.train_transforms[0] RandomCrop: fails on a 1x28x28 image"),
        ("[{Normalize: {mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2]}}]", "channel mismatch: 3 means and stds for images with 1 channel(s)"),
        (
            "[{Grayscale: {num_output_channels: 3}}]",
            "(added) Normalize(dataset mean and std): channel mismatch: 1 means and stds for images with 3 channel(s)",
        ),
        (
            "[{Grayscale: {num_output_channels: 3}}, {Normalize: {mean: [0.1, 0.1, 0.1], std: [0.3, 0.3, 0.3]}}]",
            "channel mismatch: data.train_transforms give 3-channel images, data.eval_transforms give 1",
        ),
        ("[CutMix]", "CutMix mixes a batch of images and their labels"),
    ],
)
def test_bad_transforms(shared_data: Path, tmp_path: Path, capsys, transforms: str, expected: str):
    args = [
        "train",
        "data.dataset=mnist",
        f"data.root={shared_data}",
        "data.max_samples=20",
        f"data.train_transforms={transforms}",
        f"track.root={tmp_path}",
    ]
    line = one_line_error(*cli(capsys, *args)[::2])
    assert expected in line
    assert not (tmp_path / "runs").exists()


def test_corrupt_image_is_named_or_skipped(small_folder: Path, tmp_path: Path, capsys):
    bad = small_folder / "train" / "dog" / "broken.png"
    good = next((small_folder / "train" / "cat").glob("*.png")).read_bytes()
    bad.write_bytes(good[: len(good) // 3])  # a real PNG header, truncated body
    line = one_line_error(*cli(capsys, *_folder_run(small_folder, tmp_path))[::2])
    assert str(bad) in line and "cannot decode image" in line and "data.skip_bad_files=true" in line

    with pytest.warns(UserWarning, match=f"skipping undecodable image {bad}"):
        code, out, err = cli(capsys, *_folder_run(small_folder, tmp_path, "data.skip_bad_files=true"))
    assert code == 0, err

    # held in memory: decoded once up front, the same line, or left out with its label and counted
    line = one_line_error(*cli(capsys, *_folder_run(small_folder, tmp_path, "data.in_memory=true"))[::2])
    assert str(bad) in line and "cannot decode image" in line and "data.skip_bad_files=true" in line
    held = ["data.dataset=image_folder", f"data.root={small_folder}", "data.in_memory=true", "data.skip_bad_files=true"]
    data = build_data(load_config(None, held))
    assert f"skipped 1 undecodable image(s) (first: {bad})" in capsys.readouterr().err
    assert len(data.train) + len(data.val) + len(data.test) == 12  # the 12 good images; the broken 13th left out


def test_unreadable_file_is_named_or_skipped_and_counted(small_folder: Path, tmp_path: Path, capsys):
    bad = small_folder / "train" / "ship" / "notes.png"
    bad.write_text("not an image")
    line = one_line_error(*cli(capsys, *_folder_run(small_folder, tmp_path))[::2])
    assert f"{bad}: not an image file" in line

    cfg = load_config(None, ["data.dataset=image_folder", f"data.root={small_folder}", "data.skip_bad_files=true"])
    data = build_data(cfg)
    assert data.info.extra["skipped_files"] == 1
    assert str(bad) in capsys.readouterr().err
    assert len(data.train) + len(data.val) + len(data.test) == 12


def test_empty_class_folder(small_folder: Path, tmp_path: Path, capsys):
    (small_folder / "train" / "bird").mkdir()
    line = one_line_error(*cli(capsys, *_folder_run(small_folder, tmp_path))[::2])
    assert "class folder(s) bird hold no images" in line


def test_folder_without_train_split(small_folder: Path, tmp_path: Path, capsys):
    line = one_line_error(*cli(capsys, *_folder_run(small_folder / "train", tmp_path))[::2])
    assert "expected" in line and "train/<class>" in line and "move them into a train/ sub-folder" in line


def test_unknown_transform_name_for_docs(capsys):
    line = one_line_error(*cli(capsys, "transforms", "ColourJitter")[::2])
    assert "did you mean ColorJitter?" in line


def test_grey_folder_adapts_and_val_class_must_exist(small_folder: Path, tmp_path: Path):
    from torchvision.io import decode_image, write_png

    for png in (small_folder / "train" / "cat").glob("*.png"):  # a folder mixing grey and RGB files: read as RGB
        write_png(decode_image(str(png))[:1], str(png))
    data = build_data(load_config(None, ["data.dataset=image_folder", f"data.root={small_folder}"]))
    assert data.info.in_channels == 3 and all(data.train[i][0].shape == (3, 32, 32) for i in range(len(data.train)))

    (small_folder / "val" / "horse").mkdir(parents=True)
    shutil.copy(next((small_folder / "train" / "dog").glob("*.png")), small_folder / "val" / "horse" / "x.png")
    with pytest.raises(DataError, match="class folder.s. horse do not exist in the train/ split"):
        build_data(load_config(None, ["data.dataset=image_folder", f"data.root={small_folder}"]))


def test_an_image_folder_held_in_memory_gives_the_same_samples_and_takes_the_batched_loader(shared_data: Path, tmp_path: Path):
    from trainyard.data.batched import InMemorySplit, in_memory_split

    root = shared_data / "cifar10_png"
    files = build_data(load_config(None, ["data.dataset=image_folder", f"data.root={root}", "data.max_samples=200"]))
    held = build_data(load_config(None, ["data.dataset=image_folder", f"data.root={root}", "data.max_samples=200", "data.in_memory=true"]))
    assert isinstance(in_memory_split(files.train), str)  # per-file decoding: the DataLoader path
    assert isinstance(in_memory_split(held.train), InMemorySplit)
    assert held.info.mean == files.info.mean and held.info.classes == files.info.classes
    for split in ("train", "val", "test"):
        a, b = getattr(files, split), getattr(held, split)
        assert len(a) == len(b)
        for i in (0, len(a) // 2, len(a) - 1):  # the same image, normalized the same way, and the same label
            torch.testing.assert_close(b[i][0], a[i][0])
            assert b[i][1] == a[i][1]


def test_an_image_folder_of_mixed_sizes_cannot_be_held_in_memory(small_folder: Path, tmp_path: Path, capsys):
    from torchvision.io import decode_image, write_png

    odd = sorted((small_folder / "train" / "dog").glob("*.png"))[0]
    write_png(decode_image(str(odd))[:, :28, :30].contiguous(), str(odd))
    code, _, err = cli(capsys, *_folder_run(small_folder, tmp_path, "data.in_memory=true"))
    line = one_line_error(code, err)
    assert f"data.in_memory=true: {odd} is 30x28, " in line and "is 32x32" in line and "set data.in_memory=false" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing made for a run that cannot start
