"""Image datasets: scikit-learn's bundled digits (the default job) and torchvision's datasets."""

from __future__ import annotations

import torch

from trainyard.config import RunConfig
from trainyard.data import DataBundle, DataInfo
from trainyard.data.splits import TensorPairs, TransformedSubset, stratified_split
from trainyard.data.transforms import build_pipeline

# Light augmentation for 8x8 digits: a degree or two of rotation and up to one pixel of shift.
DIGITS_TRAIN_TRANSFORMS = [{"RandomAffine": {"degrees": 10, "translate": [0.125, 0.125]}}]


def digits(cfg: RunConfig) -> DataBundle:
    """scikit-learn's load_digits: 1,797 real 8x8 handwritten digits, grey levels 0..16, as uint8 images 0..255."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(raw.images).to(torch.float32).mul_(255.0 / 16.0).round_().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(raw.target).long()
    base = TensorPairs(images, labels)

    d = cfg.data
    rest, test_idx = stratified_split(labels, d.test_fraction, d.split_seed)
    train_rel, val_rel = stratified_split(labels[rest], d.val_fraction, d.split_seed + 1)
    train_idx = [rest[i] for i in train_rel]
    val_idx = [rest[i] for i in val_rel]

    scaled = images[train_idx].float() / 255.0
    mean, std = (scaled.mean().item(),), (scaled.std().item(),)
    train_tf = build_pipeline(DIGITS_TRAIN_TRANSFORMS if d.train_transforms is None else d.train_transforms, "data.train_transforms", mean=mean, std=std)
    eval_tf = build_pipeline(d.eval_transforms, "data.eval_transforms", mean=mean, std=std)

    info = DataInfo(
        kind="image",
        num_classes=10,
        classes=[str(i) for i in range(10)],
        in_channels=1,
        image_size=(8, 8),
        mean=mean,
        std=std,
    )
    return DataBundle(
        train=TransformedSubset(base, train_idx, train_tf),
        val=TransformedSubset(base, val_idx, eval_tf) if val_idx else None,
        test=TransformedSubset(base, test_idx, eval_tf) if test_idx else None,
        info=info,
        train_labels=labels[train_idx],
    )
