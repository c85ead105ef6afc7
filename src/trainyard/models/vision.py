"""Any ``torchvision.models`` classification model by name, adapted to the data.

- Class count: the classifier is built (or, with pretrained weights, replaced) for ``info.outputs``.
- Input channels: the first convolution is rebuilt for ``info.in_channels``; pretrained RGB filters are
  summed (1 channel) or repeated and rescaled (more channels), as timm does.
- Small images (<= 64 pixels, ``model.small_stem: auto``): ResNet-family stems without pretrained weights use
  a 3x3 stride-1 convolution and no max-pooling, the usual CIFAR ResNet, so a 28x28 MNIST digit is not
  reduced to 7x7 by the stem (at 16x the compute; ``model.small_stem: false`` keeps the ImageNet stem).
- ``model.pretrained: true`` loads weights from the local torch hub cache only; a missing file is a one-line
  error that says where the file is expected and how to fetch it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainyard.config import ModelConfig
from trainyard.data import DataInfo
from trainyard.errors import ConfigError

SMALL_IMAGE = 64  # at most this many pixels a side: small-image stem for ResNets trained from scratch
RESNET_FAMILY = ("resnet", "resnext", "wide_resnet")


def torchvision_names() -> list[str]:
    """Every classification model torchvision builds by name (resnet18, mobilenet_v3_small, vit_b_16, ...)."""
    from torchvision import models

    return list(models.list_models(module=models))


def is_torchvision_model(name: str) -> bool:
    return name in torchvision_names()


def cached_weights_path(weights) -> Path:
    """Where torch.hub keeps ``weights`` (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def torchvision_model(cfg: ModelConfig, info: DataInfo) -> nn.Module:
    from torchvision import models

    name = cfg.name
    if info.kind != "image" or info.in_channels is None or info.image_size is None:
        raise ConfigError(f"model.name={name}: torchvision models need image data, data.dataset gives {info.kind}")
    if cfg.pretrained:
        weights = models.get_model_weights(name).DEFAULT
        path = cached_weights_path(weights)
        if not path.is_file():
            raise ConfigError(
                f"model.pretrained=true: {name} weights ({weights}) are not in the local cache {path}; "
                f"fetch them where a download is possible (python -c \"import torchvision; torchvision.models.get_model('{name}', "
                "weights='DEFAULT')\") "
                "and copy the file there, or set model.pretrained=false"
            )
        model = models.get_model(name, weights=weights, progress=False)
        _replace_classifier(model, name, len(weights.meta["categories"]), info.outputs)
    else:
        kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = models.get_model(name, weights=None, num_classes=info.outputs, **kwargs)
        small = min(info.image_size) <= SMALL_IMAGE if cfg.small_stem == "auto" else cfg.small_stem
        if small and name.startswith(RESNET_FAMILY):
            _small_image_stem(model)
    _adapt_input_channels(model, name, info.in_channels)
    _check_runs(model, name, info)
    return model


def _parent_of(model: nn.Module, qualified: str) -> tuple[nn.Module, str]:
    *path, leaf = qualified.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    return parent, leaf


def _replace_classifier(model: nn.Module, name: str, pretrained_classes: int, num_classes: int) -> None:
    """Swap the last layer that outputs the pretrained class count for one that outputs ``num_classes``."""
    if pretrained_classes == num_classes:
        return
    last = None
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == pretrained_classes:
            last = (qualified, nn.Linear(module.in_features, num_classes))
        elif isinstance(module, nn.Conv2d) and module.out_channels == pretrained_classes:  # squeezenet
            last = (qualified, nn.Conv2d(module.in_channels, num_classes, module.kernel_size, module.stride))
    if last is None:
        raise ConfigError(f"model.name={name}: cannot find the classifier to resize from {pretrained_classes} to {num_classes} classes")
    parent, leaf = _parent_of(model, last[0])
    setattr(parent, leaf, last[1])


def _small_image_stem(model: nn.Module) -> None:
    conv = model.conv1
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def _adapt_input_channels(model: nn.Module, name: str, channels: int) -> None:
    first = next(((q, m) for q, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ConfigError(
            f"model.name={name}: no first convolution to adapt to {channels}-channel images; convert the images to RGB (data transforms: "
            "- RGB)"
        )
    qualified, conv = first
    if conv.in_channels == channels:
        return
    if conv.groups != 1:
        raise ConfigError(
            f"model.name={name}: its first convolution is grouped and cannot take {channels}-channel images; convert them to RGB (- RGB)"
        )
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        w = conv.weight  # (out, in, kh, kw)
        if channels == 1:
            new.weight.copy_(w.sum(1, keepdim=True))
        else:
            repeats = -(-channels // w.shape[1])
            new.weight.copy_(w.repeat(1, repeats, 1, 1)[:, :channels] * (w.shape[1] / channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent, leaf = _parent_of(model, qualified)
    setattr(parent, leaf, new)


def _check_runs(model: nn.Module, name: str, info: DataInfo) -> None:
    """One forward pass on a blank batch of the data's shape, so a size the architecture cannot take fails now, in one line."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, info.in_channels, *info.image_size))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        size = "x".join(map(str, info.image_size))
        raise ConfigError(
            f"model.name={name}: cannot run on {info.in_channels}x{size} images ({reason}); "
            "resize them in data.train_transforms and data.eval_transforms, e.g. - Resize: {size: 224}"
        ) from None
    finally:
        model.train(was_training)
    if out.shape[-1] != info.outputs:
        raise ConfigError(f"model.name={name}: gives {out.shape[-1]} outputs, the data has {info.outputs} classes")
