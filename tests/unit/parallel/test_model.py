"""parallel.strategy=model and the block splitting it shares with pipeline: a split model is the same model."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import run_cli
from torch import nn

from trainyard.config import load_config
from trainyard.data import DataInfo
from trainyard.errors import ConfigError
from trainyard.models import build_model
from trainyard.parallel import build_strategy
from trainyard.parallel.blocks import BlockChain, balanced_starts, bubble_fraction, named_blocks, split_starts

DIGITS = DataInfo(
    kind="image", num_classes=10, classes=[str(i) for i in range(10)], in_channels=1, image_size=(8, 8), mean=(0.5,), std=(0.5,)
)


def split_model(model: nn.Module, devices: list[str], split="auto") -> nn.Module:
    cfg = load_config(overrides=["parallel.strategy=model", f"parallel.devices=[{','.join(devices)}]", f"parallel.split={split}"])
    strategy = build_strategy(cfg)
    strategy.setup()
    return strategy, strategy.wrap(model)


def assert_same_model(reference: nn.Module, split: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    out_ref = reference(x)
    out = split(x)
    assert torch.allclose(out, out_ref, atol=1e-6)
    nn.functional.cross_entropy(out_ref, y).backward()
    nn.functional.cross_entropy(out, y).backward()
    ref_params = dict(reference.named_parameters())
    names = [n for n, _ in split.named_parameters()]
    assert names == list(ref_params)  # same names: checkpoints are interchangeable
    for name, p in split.named_parameters():
        assert torch.allclose(p.grad, ref_params[name].grad, atol=1e-6), name


@pytest.mark.parametrize(
    "name,devices,split",
    [
        ("mlp", ["cpu", "cpu"], "auto"),
        ("mlp", ["cpu", "cpu", "cpu"], "[0,2,4]"),
        ("cnn", ["cpu", "cpu"], "auto"),
        ("cnn", ["cpu", "cpu", "cpu"], "auto"),
    ],
)
def test_split_model_outputs_and_gradients_equal_unsplit(name, devices, split):
    torch.manual_seed(0)
    model = build_model(load_config(overrides=[f"model.name={name}", "model.width=8"]).model, DIGITS)
    reference = copy.deepcopy(model)
    strategy, staged = split_model(model, devices, split)
    assert strategy.split.stages == len(devices)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    assert_same_model(reference, staged, x, y)
    assert staged.state_dict().keys() == reference.state_dict().keys()


def test_resnet_and_pipeline_blocks_models_split():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10)
    reference = copy.deepcopy(resnet)
    _, staged = split_model(resnet, ["cpu", "cpu"])
    resnet.eval(), reference.eval()  # BatchNorm running statistics aside, the same function
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    assert_same_model(reference, staged, x, y)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.body = nn.ModuleList([nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8)])
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            x = self.embed(x)
            for layer in self.body:
                x = layer(x)
            return self.head(x)

        def pipeline_blocks(self):
            return [("embed", self.embed), *[(f"body.{i}", m) for i, m in enumerate(self.body)], ("head", self.head)]

    net = Net()
    reference = copy.deepcopy(net)
    _, staged = split_model(net, ["cpu", "cpu"], "[0,3]")
    assert_same_model(reference, staged, torch.randn(5, 4), torch.randint(0, 3, (5,)))


def test_auto_split_balances_parameters():
    assert balanced_starts([10, 10, 10, 10], 2) == [0, 2]
    assert balanced_starts([1, 100, 1, 1, 1, 100], 2) == [0, 3]
    assert balanced_starts([0, 50, 0, 30, 0, 20, 0], 2) == [0, 3]  # parameter-free blocks stay behind their layer
    assert balanced_starts([5, 5, 5], 3) == [0, 1, 2]
    assert bubble_fraction(4, 1) == pytest.approx(3 / 4)
    assert bubble_fraction(2, 8) == pytest.approx(1 / 9)


def test_bad_splits_are_one_clear_error():
    blocks = named_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)), "model")
    with pytest.raises(ConfigError, match="4 stages but the model has only 3 blocks"):
        split_starts(blocks, 4, "auto")
    with pytest.raises(ConfigError, match="gives 3 stages but parallel.devices gives 2"):
        split_starts(blocks, 2, [0, 1, 2])
    with pytest.raises(ConfigError, match="must increase"):
        split_starts(blocks, 2, [0, 3])

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.a(x) + self.b(x)

    with pytest.raises(ConfigError, match="Branchy cannot be split into stages in order"):
        named_blocks(Branchy(), "model.name=branchy")


def test_model_parallel_training_matches_single(tiny):
    from trainyard.engine.run import train

    common = tiny + [
        "model.name=mlp",
        "optim.name=sgd",
        "optim.lr=0.1",
        "trainer.epochs=1",
        "track.backends=[]",
        "track.images=false",
        "trainer.histogram_every=0",
    ]
    single = train(load_config(overrides=common + ["name=single"]))
    split = train(load_config(overrides=common + ["name=model", "parallel.strategy=model", "parallel.devices=[cpu,cpu]"]))
    for key in ("train/loss", "val/loss", "test/accuracy"):
        assert split[key] == pytest.approx(single[key], abs=1e-6), key


def test_more_stages_than_blocks_exits_2(tiny):
    result = run_cli("train", *tiny, "parallel.strategy=model", "parallel.devices=[cpu,cpu,cpu,cpu]", "model.depth=1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["trainyard: error: parallel.devices: 4 stages but the model has only 2 blocks in order; use at most 2 devices"]


def test_every_stage_must_hold_parameters():
    from trainyard.parallel.blocks import split_starts

    blocks = [("0", nn.Flatten()), ("1", nn.Linear(4, 4)), ("2", nn.ReLU()), ("3", nn.Linear(4, 2))]
    with pytest.raises(ConfigError, match="3 stages but only 2 of the model's 4 blocks hold parameters; use at most 2 devices"):
        split_starts(blocks, 3, "auto")
    with pytest.raises(ConfigError, match=r"parallel.split=\[1\]: stage 0 \(blocks 0..0\) holds no parameters"):
        split_starts(blocks, 2, [1])
    assert split_starts(blocks, 2, "auto") == [0, 2] or split_starts(blocks, 2, "auto") == [0, 3]


def test_model_parallel_checks_its_devices():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="parallel.devices entry cuda:0: CUDA is not available"):
            split_model(model, ["cpu", "cuda:0"])
        with pytest.raises(ConfigError, match="parallel.devices=auto: parallel.strategy=model needs 2 or more devices"):
            build_strategy(load_config(overrides=["parallel.strategy=model"])).setup()


def test_chain_keeps_state_dict_keys():
    model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))
    chain = BlockChain(named_blocks(model, "model"))
    assert list(chain.state_dict()) == list(model.state_dict())
