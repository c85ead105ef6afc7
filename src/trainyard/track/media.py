"""``<run>/media/``: the latest image and figure of each tag as a PNG, so reports need no event-file parsing."""

from __future__ import annotations

import io
import re
import weakref
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from trainyard.track import Tracker


class Png(NamedTuple):
    data: bytes
    height: int
    width: int
    channels: int


_last: tuple[Any, str, int, Png] | None = None  # (weak reference to the image, its tag, its step, its encoding)


def encode_png(image: torch.Tensor, tag: str | None = None, step: int | None = None) -> Png:
    """A CHW float image in [0, 1] as PNG bytes. Every backend that logs the same image under one tag at one step
    gets the same bytes, encoded once: the last encoding is kept while the image lives."""
    global _last
    if tag is not None and _last is not None:
        ref, last_tag, last_step, png = _last
        if ref() is image and (last_tag, last_step) == (tag, step):
            return png
    hwc = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    if hwc.dim() == 2:
        hwc = hwc.unsqueeze(0)
    channels = hwc.shape[0]
    hwc = hwc.permute(1, 2, 0).numpy()
    png = png_of(hwc[:, :, 0] if channels == 1 else hwc)
    if tag is not None:
        _last = (weakref.ref(image), tag, step, png)
    return png


def png_of(pixels: Any) -> Png:
    """An HxW or HxWxC uint8 array as PNG bytes at zlib level 1 (a third of the default level's time, about the
    same size for figures and grids)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return Png(buffer.getvalue(), pixels.shape[0], pixels.shape[1], channels)


def encode_figure(figure: Any) -> Png:
    """A matplotlib figure as an RGB PNG, drawn at the figure's own size and dpi (what ``SummaryWriter.add_figure`` logs)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return png_of(np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[:, :, :3]))


def media_path(run_dir: Path, tag: str) -> Path:
    """``test/confusion_matrix`` -> ``<run>/media/test_confusion_matrix.png``."""
    return Path(run_dir) / "media" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_") + ".png")


class MediaTracker(Tracker):
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def _path(self, tag: str) -> Path:
        path = media_path(self.run_dir, tag)
        path.parent.mkdir(exist_ok=True)
        return path

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self._path(tag).write_bytes(encode_png(image, tag, step).data)

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        figure.savefig(self._path(tag), dpi=110)
