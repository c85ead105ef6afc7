"""Pictures for the trackers: image grids, labelled sample grids, the confusion matrix."""

from __future__ import annotations

from typing import Sequence

import torch


def denormalize(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """Undo Normalize for display and clamp to [0, 1]."""
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        m = torch.tensor(mean).view(1, -1, 1, 1)
        s = torch.tensor(std).view(1, -1, 1, 1)
        x = x * s + m
    return x.clamp(0, 1)


def image_grid(x: torch.Tensor, mean=None, std=None, nrow: int = 8) -> torch.Tensor:
    from torchvision.utils import make_grid

    return make_grid(denormalize(x, mean, std), nrow=nrow, padding=1, pad_value=1.0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def labelled_grid(images: torch.Tensor, titles: Sequence[str], mean=None, std=None, cols: int = 8):
    """A matplotlib figure: one image per cell with its title (e.g. ``pred 3 / true 8``)."""
    plt = _pyplot()
    images = denormalize(images, mean, std)
    n = len(images)
    rows = max(1, (n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = images[i].numpy()
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img[:3].transpose(1, 2, 0))
            ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig


def samples_figure(images: torch.Tensor, labels: Sequence[int] | torch.Tensor, classes: Sequence[str], mean=None, std=None, cols: int = 8):
    """Augmented training samples titled with their class names: ``trainyard preview`` writes it as a PNG,
    the trainer logs it as ``data/train_samples``."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy().tolist()  # once per run, like the images' copy to the host
    titles = [classes[y] if 0 <= y < len(classes) else str(y) for y in map(int, labels)]
    return labelled_grid(images, [t if len(t) <= 14 else t[:13] + "…" for t in titles], mean, std, cols=cols)


def confusion_figure(matrix: torch.Tensor, classes: Sequence[str]):
    plt = _pyplot()
    m = matrix.detach().cpu().numpy()
    k = len(classes)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(k), labels=list(classes), rotation=90 if k > 10 else 0, fontsize=7)
    ax.set_yticks(range(k), labels=list(classes), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        top = m.max() or 1
        for i in range(k):
            for j in range(k):
                v = int(m[i, j])
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=6, color="white" if v > top / 2 else "black")
    ax.set_title("confusion matrix (test)")
    fig.tight_layout()
    return fig
