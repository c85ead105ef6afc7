"""``<run>/media/``: the latest image and figure of each tag as a PNG, so reports need no event-file parsing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from trainyard.track import Tracker


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
        from torchvision.utils import save_image

        save_image(image.detach().float().cpu(), self._path(tag))

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        figure.savefig(self._path(tag), dpi=110)
