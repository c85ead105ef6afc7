"""Image datasets: the 8x8 handwritten digits (the default job), torchvision's datasets, and image folders.

Every image stays a uint8 tensor (C, H, W) until the transforms convert it: MNIST and CIFAR are held in
memory as one uint8 tensor, folders are decoded with ``torchvision.io.decode_image`` (no PIL on the way).
Datasets and transforms are plain picklable objects, so loader workers work under spawn too.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from trainyard.config import RunConfig
from trainyard.data import DataBundle, DataInfo
from trainyard.data.splits import TensorPairs, TransformedSubset, stratified_split
from trainyard.data.transforms import build_pipeline, check_pipeline
from trainyard.errors import ConfigError, DataError, first_line

# Light augmentation for 8x8 digits: a degree or two of rotation and up to one pixel of shift.
DIGITS_TRAIN_TRANSFORMS = [{"RandomAffine": {"degrees": 10, "translate": [0.125, 0.125]}}]

# Per-channel mean and std of the training images in [0, 1] (the usual published values).
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # what torchvision's pretrained weights expect

DEFAULT_TRAIN_TRANSFORMS: dict[str, list] = {
    "mnist": [{"RandomAffine": {"degrees": 8, "translate": [0.08, 0.08]}}],
    "fashion_mnist": [{"RandomHorizontalFlip": {}}],
    "cifar10": [{"RandomCrop": {"size": 32, "padding": 4}}, {"RandomHorizontalFlip": {}}],
    "cifar100": [{"RandomCrop": {"size": 32, "padding": 4}}, {"RandomHorizontalFlip": {}}],
}

# name -> (torchvision.datasets class, folder under data.root, files it must hold, where to get them)
TORCHVISION_DATASETS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "mnist": (
        "MNIST",
        "MNIST/raw",
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        "https://ossci-datasets.s3.amazonaws.com/mnist/ (gunzip the .gz files)",
    ),
    "fashion_mnist": (
        "FashionMNIST",
        "FashionMNIST/raw",
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (gunzip the .gz files)",
    ),
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        ("data_batch_1", "...", "data_batch_5", "test_batch", "batches.meta"),
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (untar it into data.root)",
    ),
    "cifar100": (
        "CIFAR100",
        "cifar-100-python",
        ("train", "test", "meta"),
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (untar it into data.root)",
    ),
}

# The first bytes of the image files torchvision can decode.
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"P5", b"P6")


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


# scikit-learn's digits.csv.gz (BSD-3-Clause), shipped so the default job needs no scikit-learn: the test set of
# E. Alpaydin and C. Kaynak's UCI "Optical Recognition of Handwritten Digits" (CC BY 4.0), 64 grey levels and a label a row.
DIGITS_CSV = Path(__file__).with_name("digits.csv.gz")


def load_digits() -> tuple[Any, Any]:
    """What scikit-learn's ``load_digits()`` gives as ``images`` ((1797, 8, 8) floats 0..16) and ``target`` (ints)."""
    import gzip

    import numpy as np

    with gzip.open(DIGITS_CSV, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def digits(cfg: RunConfig) -> DataBundle:
    """1,797 real 8x8 handwritten digits (scikit-learn's load_digits), grey levels 0..16, as uint8 images 0..255."""
    raw_images, raw_labels = load_digits()
    images = torch.from_numpy(raw_images).to(torch.float32).mul_(255.0 / 16.0).round_().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(raw_labels).long()
    base = TensorPairs(images, labels)

    d = cfg.data
    rest, test_idx = stratified_split(labels, d.test_fraction, d.split_seed)
    train_rel, val_rel = stratified_split(labels[rest], d.val_fraction, d.split_seed + 1)
    train_idx = [rest[i] for i in train_rel]
    val_idx = [rest[i] for i in val_rel]

    scaled = images[train_idx].float() / 255.0
    stats = ((scaled.mean().item(),), (scaled.std().item(),))
    splits = {"train": (base, train_idx, labels), "val": (base, val_idx, labels), "test": (base, test_idx, labels)}
    return _assemble(cfg, "digits", splits, [str(i) for i in range(10)], stats, DIGITS_TRAIN_TRANSFORMS)


def mnist(cfg: RunConfig) -> DataBundle:
    """torchvision's MNIST: 60,000 training and 10,000 test 28x28 grey digits."""
    return _torchvision_in_memory(cfg, "mnist", classes=[str(i) for i in range(10)])


def fashion_mnist(cfg: RunConfig) -> DataBundle:
    """torchvision's FashionMNIST: 60,000 training and 10,000 test 28x28 grey clothing images."""
    return _torchvision_in_memory(cfg, "fashion_mnist")


def cifar10(cfg: RunConfig) -> DataBundle:
    """torchvision's CIFAR10 (the pickled python batches): 50,000 training and 10,000 test 32x32 RGB images."""
    return _torchvision_in_memory(cfg, "cifar10")


def cifar100(cfg: RunConfig) -> DataBundle:
    """torchvision's CIFAR100: 50,000 training and 10,000 test 32x32 RGB images in 100 classes."""
    return _torchvision_in_memory(cfg, "cifar100")


def image_folder(cfg: RunConfig) -> DataBundle:
    """``data.root/train/<class>/*`` (and optionally ``val/`` and ``test/``), found with torchvision's
    ImageFolder and decoded to uint8 tensors by torchvision.io."""
    root = Path(cfg.data.root)
    if not (root / "train").is_dir():
        hint = " (it holds class folders: move them into a train/ sub-folder)" if root.is_dir() and _looks_like_classes(root) else ""
        raise DataError(f"data.root={root}: expected {root}/train/<class>/<image files> (and optionally val/ and test/){hint}")
    train = _scan_folder(root / "train", cfg, classes=None)
    classes = train.classes
    splits: dict[str, Any] = {"train": (train, None, train.labels)}
    for split in ("val", "test"):
        if (root / split).is_dir():
            ds = _scan_folder(root / split, cfg, classes=classes)
            splits[split] = (ds, None, ds.labels)
    mode = _channel_mode(train)
    for ds, _, _ in splits.values():
        ds.mode = mode
    stats = folder_stats(train)
    if cfg.data.in_memory:
        held = {name: decode_all(ds) for name, (ds, _, _) in splits.items()}
        splits = {name: (pairs, None, pairs.labels) for name, pairs in held.items()}
    return _assemble(cfg, f"image_folder {root}", splits, classes, stats, [])


def decode_all(ds: ImageFiles) -> TensorPairs:
    """data.in_memory: every image decoded once into one uint8 (N, C, H, W) tensor, cut into batches by index.
    An image that fails to decode stops the run or, with data.skip_bad_files, is left out with its label."""
    images: torch.Tensor | None = None
    labels: list[int] = []
    bad: list[str] = []
    for path, label in zip(ds.paths, ds.labels):
        try:
            image = read_image(path, ds.mode)
        except Exception as exc:  # it passed the scan's header check, then failed to decode whole
            if not ds.skip_bad:
                raise DataError(
                    f"{path}: cannot decode image ({first_line(exc)}); fix or remove it, or set data.skip_bad_files=true"
                ) from None
            bad.append(path)
            continue
        if images is None:
            first = path
            images = torch.empty((len(ds.paths), *image.shape), dtype=torch.uint8)
        elif image.shape != images.shape[1:]:
            raise DataError(
                f"data.in_memory=true: {path} is {image.shape[2]}x{image.shape[1]}, {first} is {images.shape[3]}x{images.shape[2]}; "
                "one tensor holds images of one size: resize them, or set data.in_memory=false"
            )
        images[len(labels)] = image
        labels.append(label)
    if bad:
        print(f"trainyard: skipped {len(bad)} undecodable image(s) (first: {bad[0]})", file=sys.stderr)
    if images is None:
        raise DataError(f"no image of {len(ds.paths)} could be decoded (first: {ds.paths[0]})")
    return TensorPairs(images[: len(labels)], labels)


# --------------------------------------------------------------------------------------
# torchvision's own datasets
# --------------------------------------------------------------------------------------


def _torchvision_in_memory(cfg: RunConfig, name: str, classes: list[str] | None = None) -> DataBundle:
    train_set = _open_torchvision(cfg, name, train=True)
    test_set = _open_torchvision(cfg, name, train=False)
    train_images, train_labels = _as_tensors(train_set)
    test_images, test_labels = _as_tensors(test_set)
    splits = {
        "train": (TensorPairs(train_images, train_labels), None, train_labels),
        "test": (TensorPairs(test_images, test_labels), None, test_labels),
    }
    return _assemble(cfg, name, splits, classes or list(train_set.classes), STATS[name], DEFAULT_TRAIN_TRANSFORMS[name])


def _open_torchvision(cfg: RunConfig, name: str, *, train: bool):
    import torchvision.datasets

    cls_name, folder, files, source = TORCHVISION_DATASETS[name]
    cls = getattr(torchvision.datasets, cls_name)
    root, download = cfg.data.root, cfg.data.download
    missing = (
        f"data.dataset={name}: files not found in {Path(root) / folder} (expected {', '.join(files)}); "
        f"get them from {source}, or point data.root at the folder that holds {folder.split('/')[0]}/"
    )
    if download is not True:
        try:
            return cls(root, train=train, download=False)
        except RuntimeError:
            if download is False:
                raise DataError(missing + "; data.download=false") from None
    try:
        return cls(root, train=train, download=True)
    except Exception as exc:  # URLError, HTTPError, socket errors, checksum failures
        reason = first_line(exc)
        raise DataError(f"{missing}; download failed ({reason})") from None


def _as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision keeps MNIST as a (N, H, W) uint8 tensor and CIFAR as a (N, H, W, C) numpy array: both to (N, C, H, W) uint8."""
    data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(ds.data)
    data = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    return data.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


# --------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------


class ImageFiles(Dataset):
    """``(path, label)`` pairs read as uint8 (C, H, W) tensors. ``mode``: ``gray`` or ``rgb`` (every image
    converted to it, so a folder mixing grey, RGB and RGBA files yields one channel count)."""

    def __init__(self, paths: list[str], labels: list[int], classes: list[str], *, skip_bad: bool, mode: str = "rgb"):
        self.paths, self.labels, self.classes = paths, list(labels), classes  # plain ints: no tensor indexing per sample
        self.skip_bad, self.mode = skip_bad, mode
        self.bad: set[str] = set()  # counted per process

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        for j in range(len(self.paths)):
            index = (i + j) % len(self.paths)
            try:
                return read_image(self.paths[index], self.mode), self.labels[index]
            except Exception as exc:
                reason = first_line(exc)
                if not self.skip_bad:
                    raise DataError(
                        f"{self.paths[index]}: cannot decode image ({reason}); fix or remove it, or set data.skip_bad_files=true"
                    ) from None
                if self.paths[index] not in self.bad:
                    self.bad.add(self.paths[index])
                    warnings.warn(
                        f"trainyard: skipping undecodable image {self.paths[index]} ({reason}); {len(self.bad)} so far in this process",
                        stacklevel=2,
                    )
        raise DataError(f"no image of {len(self.paths)} could be decoded (first: {self.paths[0]})")


def read_image(path: str, mode: str = "rgb") -> torch.Tensor:
    """One image file as a uint8 (C, H, W) tensor: torchvision.io for PNG, JPEG, GIF and WebP; PIL for the rest (BMP, TIFF, PPM)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(path, mode=ImageReadMode.GRAY if mode == "gray" else ImageReadMode.RGB)
    except RuntimeError:
        if Path(path).suffix.lower() not in (".bmp", ".tif", ".tiff", ".ppm", ".pgm"):
            raise
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    with Image.open(path) as img:
        return pil_to_tensor(img.convert("L" if mode == "gray" else "RGB"))


def _readable(path: str) -> str | None:
    """Why ``path`` is not an image file, or None. Reads the first bytes only (a truncated body is found when decoded)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    if not head:
        return "empty file"
    if head.startswith(MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    return "not an image file (unknown header)"


def _scan_folder(path: Path, cfg: RunConfig, classes: list[str] | None) -> ImageFiles:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    try:
        found = ImageFolder(str(path), loader=str, allow_empty=False)
    except FileNotFoundError as exc:
        text = str(exc)
        if text.startswith("Found no valid file for the classes"):
            empty = text.split("classes ", 1)[1].split(". ", 1)[0]
            raise DataError(
                f"{path}: class folder(s) {empty} hold no images ({', '.join(IMG_EXTENSIONS)}); add images or remove the folder(s)"
            ) from None
        raise DataError(f"{path}: no class folders ({text})") from None
    if classes is not None:
        extra = [c for c in found.classes if c not in classes]
        if extra:
            raise DataError(f"{path}: class folder(s) {', '.join(extra)} do not exist in the train/ split ({', '.join(classes)})")
        index = {c: i for i, c in enumerate(classes)}
        remap = [index[c] for c in found.classes]
    else:
        classes, remap = list(found.classes), list(range(len(found.classes)))

    paths, labels, bad = [], [], []
    for file, label in found.samples:
        reason = _readable(file)
        if reason is None:
            paths.append(file)
            labels.append(remap[label])
        elif cfg.data.skip_bad_files:
            bad.append(file)
        else:
            raise DataError(f"{file}: {reason}; fix or remove it, or set data.skip_bad_files=true to skip such files")
    if bad:
        print(f"trainyard: skipped {len(bad)} unreadable image(s) in {path} (first: {bad[0]})", file=sys.stderr)
    if not paths:
        raise DataError(f"{path}: no readable images")
    ds = ImageFiles(paths, labels, classes, skip_bad=cfg.data.skip_bad_files)
    ds.skipped = len(bad)
    return ds


def _looks_like_classes(root: Path) -> bool:
    return any(p.is_dir() and any(q.is_file() for q in p.iterdir()) for p in root.iterdir())


def _channel_mode(ds: ImageFiles, probe: int = 32) -> str:
    """``gray`` when the first images are all single-channel, else ``rgb``."""
    from torchvision.io import decode_image

    for path in ds.paths[:probe]:
        try:
            if decode_image(path).shape[0] != 1:
                return "rgb"
        except RuntimeError:
            continue
    return "gray"


def folder_stats(ds: ImageFiles, limit: int = 512, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] over up to ``limit`` training images picked at random (seeded)."""
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
    total = sq = None
    count = 0
    for i in pick:
        try:
            x = read_image(ds.paths[i], ds.mode).double().div_(255).flatten(1)
        except Exception:
            continue  # a bad file is reported (or skipped) when it is loaded
        total = x.sum(1) if total is None else total + x.sum(1)
        sq = (x * x).sum(1) if sq is None else sq + (x * x).sum(1)
        count += x.shape[1]
    if total is None:
        raise DataError(f"no image of {ds.paths[0]}'s folder could be decoded")
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


# --------------------------------------------------------------------------------------
# Splits, caps, transforms and the DataInfo, shared by every image dataset
# --------------------------------------------------------------------------------------


def _cap(indices: list[int], labels: torch.Tensor, cap: int | None, seed: int) -> list[int]:
    """At most about ``cap`` of ``indices``, every class keeping its share."""
    if cap is None or len(indices) <= cap:
        return indices
    kept, _ = stratified_split(labels[indices], 1.0 - cap / len(indices), seed)
    return [indices[i] for i in kept]


def _assemble(cfg: RunConfig, where: str, splits: dict[str, Any], classes: list[str], stats, default_train: list) -> DataBundle:
    """``splits``: name -> (base dataset, indices or None for all, labels of the base). Missing val/test
    are held out of train (stratified, seeded by data.split_seed); every split is capped by data.max_samples."""
    d = cfg.data
    splits = {name: (ds, idx, torch.as_tensor(labels, dtype=torch.long)) for name, (ds, idx, labels) in splits.items()}
    base, idx, labels = splits["train"]
    train_idx = list(range(len(base))) if idx is None else list(idx)
    if "test" not in splits:
        rest, test_rel = stratified_split(labels[train_idx], d.test_fraction, d.split_seed)
        splits["test"] = (base, [train_idx[i] for i in test_rel], labels)
        train_idx = [train_idx[i] for i in rest]
    if "val" not in splits:
        rest, val_rel = stratified_split(labels[train_idx], d.val_fraction, d.split_seed + 1)
        splits["val"] = (base, [train_idx[i] for i in val_rel], labels)
        train_idx = [train_idx[i] for i in rest]
    splits["train"] = (base, train_idx, labels)

    chosen: dict[str, tuple[Any, list[int]]] = {}
    for name, (ds, idx, lab) in splits.items():
        idx = list(range(len(ds))) if idx is None else list(idx)
        chosen[name] = (ds, _cap(idx, lab, d.max_samples, d.split_seed + 2))
    if not chosen["train"][1]:
        raise DataError(f"{where}: the training split is empty")

    sample = chosen["train"][0][chosen["train"][1][0]][0]
    mean, std = stats
    if cfg.model.pretrained and sample.shape[0] == 3:
        mean, std = IMAGENET_STATS  # what the pretrained weights were trained on
    train_tf = build_pipeline(
        default_train if d.train_transforms is None else d.train_transforms, "data.train_transforms", mean=mean, std=std
    )
    eval_tf = build_pipeline(d.eval_transforms, "data.eval_transforms", mean=mean, std=std)
    shown = f"{where} ({sample.shape[0]}x{sample.shape[1]}x{sample.shape[2]} uint8)"
    train_out = check_pipeline(train_tf, sample, shown)
    eval_out = check_pipeline(eval_tf, sample, shown)
    if train_out.shape[0] != eval_out.shape[0]:
        raise ConfigError(
            f"channel mismatch: data.train_transforms give {train_out.shape[0]}-channel images, data.eval_transforms give "
            f"{eval_out.shape[0]}; "
            "convert both the same way (Grayscale, RGB)"
        )
    normalize = [s for s in train_tf.transforms if type(s).__name__ == "Normalize"]
    if normalize:
        mean, std = tuple(normalize[-1].mean), tuple(normalize[-1].std)

    info = DataInfo(
        kind="image",
        num_classes=len(classes),
        classes=list(classes),
        in_channels=int(eval_out.shape[0]),
        image_size=(int(eval_out.shape[1]), int(eval_out.shape[2])),
        mean=tuple(mean),
        std=tuple(std),
        extra={"skipped_files": sum(getattr(ds, "skipped", 0) for ds in {id(ds): ds for ds, _ in chosen.values()}.values())},
    )
    views = {
        name: TransformedSubset(ds, idx, train_tf if name == "train" else eval_tf) if idx else None for name, (ds, idx) in chosen.items()
    }
    return DataBundle(
        train=views["train"],
        val=views.get("val"),
        test=views.get("test"),
        info=info,
        train_labels=torch.as_tensor(splits["train"][2], dtype=torch.long)[chosen["train"][1]],
    )
