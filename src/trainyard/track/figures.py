"""Pictures for the trackers: image grids, labelled sample grids, the confusion matrix."""

from __future__ import annotations

from typing import Sequence

import numpy as np
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
    """The images side by side (CHW in [0, 1]); one channel stays one channel (a third of the PNG to encode)."""
    from torchvision.utils import make_grid

    grid = make_grid(denormalize(x, mean, std), nrow=nrow, padding=1, pad_value=1.0)
    return grid[:1] if x.shape[1] == 1 else grid  # make_grid repeats a single channel three times


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def labelled_grid(images: torch.Tensor, titles: Sequence[str], mean=None, std=None, cols: int = 8, cell: int = 64) -> torch.Tensor:
    """One image per cell with its title underneath (e.g. ``pred 3 / true 8``), as a CHW float image in [0, 1]:
    one channel for one-channel images, else RGB.

    Drawn with PIL rather than matplotlib: a few milliseconds instead of a second, so the trainer can log it."""
    from PIL import Image, ImageDraw, ImageFont

    images = denormalize(images, mean, std)
    n, c, h, w = images.shape
    scale = max(1, cell // max(h, w))
    ch, cw = h * scale, w * scale
    band = 12
    cols = max(1, min(cols, n))
    rows = max(1, (n + cols - 1) // cols)
    width = max(cw, 6 * max((len(t) for t in titles), default=1)) + 4
    gray = c == 1
    canvas = Image.new("L" if gray else "RGB", (cols * width, rows * (ch + band + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    # every cell as uint8 HWC at once, scaled up by repeating pixels (nearest neighbour)
    shown = images if gray else images[:, :3] if c >= 3 else images[:, :1].expand(n, 3, h, w)
    cells = (shown * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    if scale > 1:
        cells = cells.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    cells = cells.contiguous().numpy()
    for i in range(n):
        x0, y0 = (i % cols) * width + (width - cw) // 2, (i // cols) * (ch + band + 4) + 2
        canvas.paste(Image.fromarray(cells[i, :, :, 0] if gray else cells[i]), (x0, y0))
        draw.text(((i % cols) * width + 2, y0 + ch + 1), titles[i], fill="black", font=font)
    pixels = torch.from_numpy(np.asarray(canvas).copy())
    return (pixels.unsqueeze(0) if gray else pixels.permute(2, 0, 1)).float() / 255


def sample_titles(labels: Sequence[int] | torch.Tensor, classes: Sequence[str]) -> list[str]:
    """Class names for labels, shortened to fit a grid cell."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy().tolist()  # once per run, like the images' copy to the host
    titles = [classes[y] if 0 <= y < len(classes) else str(y) for y in map(int, labels)]
    return [t if len(t) <= 14 else t[:13] + "…" for t in titles]


def samples_figure(
    images: torch.Tensor, labels: Sequence[int] | torch.Tensor, classes: Sequence[str], mean=None, std=None, cols: int = 8
) -> torch.Tensor:
    """Augmented training samples titled with their class names (a CHW image): ``trainyard preview`` writes it
    as a PNG, the trainer logs it as ``data/train_samples``."""
    return labelled_grid(images, sample_titles(labels, classes), mean, std, cols=cols)


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


def predictions_figure(predicted: torch.Tensor, true: torch.Tensor, name: str = "target"):
    """Predicted against true values (regression, test split), with the diagonal a perfect model lies on."""
    plt = _pyplot()
    p, t = predicted.detach().float().cpu().flatten().numpy(), true.detach().float().cpu().flatten().numpy()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(t, p, s=8, alpha=0.6, edgecolors="none")
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, linestyle="--")
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"predicted {name}")
    ax.set_title(f"predicted against true (test, {len(t)} values)")
    fig.tight_layout()
    return fig


def render(kind: str, data: dict):
    """A task's picture (see ``Task.collector``) as what the trackers log: ``(image tensor or None, figure or None)``."""
    if kind == "confusion":
        return None, confusion_figure(data["matrix"], data["classes"])
    if kind == "labelled_grid":
        return labelled_grid(data["images"], data["titles"], data.get("mean"), data.get("std")), None
    if kind == "predictions":
        return None, predictions_figure(data["predicted"], data["true"])
    if kind == "figure":
        return None, data["figure"]
    if kind == "image":
        return data["image"], None
    raise ValueError(f"unknown picture kind {kind!r}")
