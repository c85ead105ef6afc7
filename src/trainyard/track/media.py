"""``<run>/media/``: the latest image and figure of each tag as a PNG, so reports need no event-file parsing."""

from __future__ import annotations

import io
import re
import weakref
from pathlib import Path
from typing import Any, NamedTuple

import torch

from trainyard.track import Tracker


class Png(NamedTuple):
    data: bytes
    height: int
    width: int
    channels: int


_last: tuple[Any, int, Png] | None = None  # (weak reference to the image, its version, its encoding)


def encode_png(image: torch.Tensor) -> Png:
    """A CHW float image in [0, 1] as PNG bytes, at zlib level 1 (a third of the default level's time, about
    the same size for figures and grids). Every backend that logs the same image gets the same bytes: the last
    image's encoding is kept until the image is gone or changed."""
    global _last
    version = -1 if image.is_inference() else image._version  # inference tensors keep no version counter
    if _last is not None:
        ref, last_version, png = _last
        if ref() is image and version == last_version:
            return png
    from PIL import Image

    hwc = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    if hwc.dim() == 2:
        hwc = hwc.unsqueeze(0)
    channels = hwc.shape[0]
    hwc = hwc.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(hwc[:, :, 0] if channels == 1 else hwc).save(buffer, format="PNG", compress_level=1)
    png = Png(buffer.getvalue(), hwc.shape[0], hwc.shape[1], channels)
    _last = (weakref.ref(image), version, png)
    return png


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
        self._path(tag).write_bytes(encode_png(image).data)

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        figure.savefig(self._path(tag), dpi=110)
