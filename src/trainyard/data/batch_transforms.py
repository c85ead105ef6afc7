"""Augmentations computed on a whole batch, each sample with its own random parameters.

torchvision's v2 transforms draw one set of parameters per call: given a batch, every image gets the same
crop, flip or rotation. The classes here draw one set per sample, from the generator they are handed, and
apply them in one operation (an index gather for crops, a ``where`` for flips, one ``grid_sample`` for
affine maps and rotations), on whatever device the batch is on. Each reproduces its v2 transform's
parameter distribution and geometry (the same inverse matrix and sampling grid as
``torchvision.transforms.v2.functional.affine``), so a sample's output has the same distribution as the
per-sample path; tests/unit/data/test_batched.py checks that.

``batch_pipeline`` turns a per-sample v2 ``Compose`` into a batch pipeline, or says which step has no
batched version. Steps without randomness (ToDtype, Normalize, CenterCrop, ...) run as they are: v2
applies them to a (N, C, H, W) batch exactly as to each image.
"""

from __future__ import annotations

from numbers import Number
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

# v2 transforms without random parameters: applied to the whole batch as they are.
DETERMINISTIC = (
    "ToDtype",
    "ConvertImageDtype",
    "Normalize",
    "Identity",
    "CenterCrop",
    "Pad",
    "Resize",
    "Grayscale",
    "RGB",
    "ToPureTensor",
    "ToImage",
)


def _fill_of(value: Any) -> list[float] | None:
    """A v2 ``fill`` as a list of per-channel values (one value broadcasts), None for none; dicts are not supported."""
    if value is None:
        return None
    if isinstance(value, Number):
        return [float(value)]
    if isinstance(value, (tuple, list)) and all(isinstance(v, Number) for v in value):
        return [float(v) for v in value]
    raise ValueError(f"fill={value!r} (a fill per type has no batched version)")


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device, dtype=torch.float64) * (high - low) + low


class BatchRandomFlip:
    """RandomHorizontalFlip / RandomVerticalFlip: each sample flipped with probability ``p``."""

    def __init__(self, p: float, dim: int):
        self.p, self.dim = float(p), dim

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        flip = torch.rand(x.shape[0], generator=g, device=x.device) < self.p
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(self.dim), x)


class BatchRandomCrop:
    """RandomCrop(size, padding, pad_if_needed, fill, padding_mode): the batch padded once, then each sample's
    own window (top, left drawn uniformly over every position, as v2 does) gathered in one index operation."""

    def __init__(self, step: Any):
        self.size = tuple(step.size)
        self.padding = list(step.padding) if step.padding is not None else None  # v2 keeps [left, right, top, bottom]
        self.pad_if_needed = bool(step.pad_if_needed)
        self.padding_mode = step.padding_mode
        self.fill = _fill_of(step.fill)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        n, c, height, width = x.shape
        left, right, top, bottom = self.padding or (0, 0, 0, 0)
        ph, pw = height + top + bottom, width + left + right
        h, w = self.size
        if self.pad_if_needed:  # as v2's make_params: the missing size added on both sides
            if ph < h:
                top, bottom, ph = top + h - ph, bottom + h - ph, ph + 2 * (h - ph)
            if pw < w:
                left, right, pw = left + w - pw, right + w - pw, pw + 2 * (w - pw)
        if ph < h or pw < w:
            raise ValueError(f"Required crop size {(h, w)} is larger than input image size {(ph, pw)}")
        if left or right or top or bottom:
            fill = None if self.fill is None else (self.fill[0] if len(self.fill) == 1 else self.fill)
            x = TF.pad(x, [left, top, right, bottom], fill=fill if fill is not None else 0, padding_mode=self.padding_mode)
        tops = torch.randint(0, ph - h + 1, (n,), generator=g, device=x.device)
        lefts = torch.randint(0, pw - w + 1, (n,), generator=g, device=x.device)
        rows = tops.view(n, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
        cols = lefts.view(n, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
        flat = (rows * pw + cols).view(n, 1, h * w).expand(n, c, h * w)
        return x.reshape(n, c, ph * pw).gather(2, flat).view(n, c, h, w)


def inverse_affine_matrices(
    angle: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    scale: torch.Tensor,
    shear_x: torch.Tensor,
    shear_y: torch.Tensor,
    center: tuple[float, float],
) -> torch.Tensor:
    """(N, 2, 3) output-to-input maps, one per sample: torchvision's inverse affine matrix (angle and shears in
    degrees, translation in pixels, ``center`` relative to the image centre), computed for N parameter sets at once."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    cx, cy = center
    cos_sy, tan_sx = torch.cos(sy), torch.tan(sx)
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d / scale, -b / scale, -c / scale, a / scale
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def apply_affine(x: torch.Tensor, theta: torch.Tensor, mode: str, fill: list[float] | None) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) resampled through its own ``theta``: v2's sampling grid (pixel centres,
    coordinates about the image centre), ``grid_sample`` without aligned corners, and v2's fill (a mask channel
    marks what came from outside the image); integer images are rounded back to their dtype, as v2 does."""
    n, c, h, w = x.shape
    dtype = x.dtype if x.is_floating_point() else torch.float32
    base = torch.empty(1, h, w, 3, dtype=dtype, device=x.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=x.device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=x.device).unsqueeze(-1))
    base[..., 2].fill_(1)
    rescaled = theta.to(dtype).transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], dtype=dtype, device=x.device)
    grid = base.view(1, h * w, 3).matmul(rescaled).view(n, h, w, 2)
    img = x.to(dtype)
    masked = fill is not None and not (mode == "nearest" and all(v == 0 for v in fill))  # zero fill, nearest: padding does it
    if masked:
        img = torch.cat([img, torch.ones(n, 1, h, w, dtype=dtype, device=x.device)], dim=1)
    out = F.grid_sample(img, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if masked:
        out, mask = out[:, :-1], out[:, -1:].expand(n, c, h, w)
        fill_img = torch.tensor(fill, dtype=dtype, device=x.device).view(1, -1, 1, 1).expand(n, c, h, w)
        out = torch.where(mask < 0.5, fill_img, out) if mode == "nearest" else out.sub(fill_img).mul_(mask).add_(fill_img)
    return out if x.is_floating_point() else out.round_().to(x.dtype)


def _mode(step: Any) -> str:
    mode = getattr(step.interpolation, "value", step.interpolation)
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation={mode!r} (tensors take nearest or bilinear)")
    return mode


def _center(step: Any, h: int, w: int) -> tuple[float, float]:
    return (0.0, 0.0) if step.center is None else (step.center[0] - w * 0.5, step.center[1] - h * 0.5)


class BatchRandomAffine:
    """RandomAffine(degrees, translate, scale, shear, interpolation, fill, center): per sample, the angle, scale and
    shears uniform in their ranges and the shift a whole number of pixels (v2 rounds a uniform draw), as v2 draws them."""

    def __init__(self, step: Any):
        self.step = step
        self.mode = _mode(step)
        self.fill = _fill_of(step.fill)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s, (n, _, h, w), dev = self.step, x.shape, x.device
        angle = _uniform(n, s.degrees[0], s.degrees[1], g, dev)
        zero = torch.zeros(n, dtype=torch.float64, device=dev)
        tx = ty = zero
        if s.translate is not None:
            max_dx, max_dy = float(s.translate[0] * w), float(s.translate[1] * h)
            tx, ty = _uniform(n, -max_dx, max_dx, g, dev).round(), _uniform(n, -max_dy, max_dy, g, dev).round()
        scale = _uniform(n, s.scale[0], s.scale[1], g, dev) if s.scale is not None else zero + 1.0
        shear_x = shear_y = zero
        if s.shear is not None:
            shear_x = _uniform(n, s.shear[0], s.shear[1], g, dev)
            if len(s.shear) == 4:
                shear_y = _uniform(n, s.shear[2], s.shear[3], g, dev)
        theta = inverse_affine_matrices(angle, tx, ty, scale, shear_x, shear_y, _center(s, h, w))
        return apply_affine(x, theta, self.mode, self.fill)


class BatchRandomRotation:
    """RandomRotation(degrees, interpolation, expand=False, center, fill): each sample its own angle, uniform in the range."""

    def __init__(self, step: Any):
        if step.expand:
            raise ValueError("expand=True (the output size would differ per sample)")
        self.step = step
        self.mode = _mode(step)
        self.fill = _fill_of(step.fill)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s, (n, _, h, w), dev = self.step, x.shape, x.device
        angle = _uniform(n, s.degrees[0], s.degrees[1], g, dev)
        zero = torch.zeros(n, dtype=torch.float64, device=dev)
        # v2's rotate passes -angle to the matrix that affine gets +angle (the two differ in direction)
        theta = inverse_affine_matrices(-angle, zero, zero, zero + 1.0, zero, zero, _center(s, h, w))
        return apply_affine(x, theta, self.mode, self.fill)


class Deterministic:
    """A v2 step without random parameters, applied to the whole batch."""

    def __init__(self, step: Any):
        self.step = step

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.step(x)


def batch_step(step: Any) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """The batched version of one v2 step; ValueError saying why where there is none."""
    name = type(step).__name__
    if name in DETERMINISTIC:
        return Deterministic(step)
    if name == "RandomHorizontalFlip":
        return BatchRandomFlip(step.p, -1)
    if name == "RandomVerticalFlip":
        return BatchRandomFlip(step.p, -2)
    if name == "RandomCrop":
        return BatchRandomCrop(step)
    if name == "RandomAffine":
        return BatchRandomAffine(step)
    if name == "RandomRotation":
        return BatchRandomRotation(step)
    raise ValueError(
        "no batched version (batched: RandomCrop, RandomHorizontalFlip, RandomVerticalFlip, RandomAffine, "
        "RandomRotation and steps without randomness: " + ", ".join(DETERMINISTIC) + ")"
    )


class BatchPipeline:
    """A per-sample v2 pipeline's steps, each applied to the whole batch with per-sample random parameters."""

    def __init__(self, steps: Sequence[Callable[[torch.Tensor, torch.Generator], torch.Tensor]], names: Sequence[str]):
        self.steps, self.names = list(steps), list(names)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            x = step(x, g)
        return x


def batch_pipeline(pipeline: Any) -> BatchPipeline | str:
    """``pipeline`` (None, one v2 transform or a v2 Compose) as a BatchPipeline, or one line saying which step has no batched version."""
    if pipeline is None:
        return BatchPipeline([], [])
    steps = list(pipeline.transforms) if type(pipeline).__name__ == "Compose" else [pipeline]
    origins = getattr(pipeline, "origins", None) or [type(s).__name__ for s in steps]
    out = []
    for step, origin in zip(steps, origins):
        try:
            out.append(batch_step(step))
        except ValueError as exc:
            return f"{origin}: {exc}"
    return BatchPipeline(out, [type(s).__name__ for s in steps])


__all__ = [
    "BatchPipeline",
    "BatchRandomAffine",
    "BatchRandomCrop",
    "BatchRandomFlip",
    "BatchRandomRotation",
    "apply_affine",
    "batch_pipeline",
    "batch_step",
    "inverse_affine_matrices",
]
