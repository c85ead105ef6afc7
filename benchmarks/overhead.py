"""Framework overhead: the same model, data, optimizer, schedule and steps through trainyard and through
a plain PyTorch loop, alternating, median of N runs each.

Two workloads: a tiny MLP on 64 features (real digits, replicated to 57,504 samples; framework cost
dominates) and a small CNN on 28x28 MNIST (60,000 real images). Both sides read the same preloaded
tensors through a DataLoader with batch 64 in the same shuffled order (seed + epoch, what trainyard's
sampler draws), use AdamW with a per-step cosine schedule, and train for the same number of epochs:
the same computation, checked by comparing the final weights of the first pair of runs. The order
matters for speed, not only for results: a different order is a different trajectory, and on CPU the
optimizer's kernels slow down on subnormal numbers (Adam's moments of dead units decay
through them), so two orders can differ by a few percent in throughput with no framework involved.
trainyard runs with its default tracking on (metrics.jsonl and TensorBoard: scalars every 50 steps,
histograms, graph, image grid, checkpoints every epoch).

Both sides run with the host allocator as a trainyard run sets it up (``trainer.keep_host_memory``: glibc
keeps freed memory instead of handing it back to the OS). The setting is process-wide, so it is made once
before anything runs: without it, a run of either side can spend a quarter of its time faulting freed
activations back in (millions of page faults an epoch in the CNN), a lottery that decided earlier CNN figures.

Timed: from building the loaders to the end of the last epoch (Trainer(...) + fit() for trainyard);
dataset loading and imports are outside the timing on both sides.

    python benchmarks/overhead.py [--repeats 5] [--device cpu] [--precision 32]

Ends with ``RESULT overhead_ratio_mlp`` and ``RESULT overhead_ratio_cnn`` (trainyard / raw throughput), and where
``lightning`` is installed, a third side (``run_lightning``, each run in a process of its own) and
``RESULT lightning_ratio_*`` (Lightning / raw). For these, trainyard runs with ``loader.batched=false`` and
``trainer.channels_last=false``: the same DataLoader and layout as the raw loop, so the ratio is the framework's cost alone.

``--sides batched`` (issue 20) times what a user gets against the loop a user would write: the naive raw loop
(``run_naive_raw``: a DataLoader over a ``TensorDataset`` with the default collate, ``__getitem__`` per sample)
against trainyard as it runs by default on in-memory tensors (the batched loader, ``loader.batched=auto``, and the
CNN in channels_last), in the same order, alternating: ``RESULT batched_vs_naive_raw_mlp`` and ``..._cnn``
(trainyard / naive raw throughput).

    python benchmarks/overhead.py --sides batched [--repeats 5]

``--sides compile`` times ``trainer.compile=true`` against the same trainyard run eager (both on the batched
loader), one unmeasured run of each first (it fills inductor's cache), then alternating; each timed run pays its
own compile (a new model is a new graph to trace; the kernels come from the cache), as a user's run would:
``RESULT compile_speedup_<workload>_<device>`` (compiled / eager throughput).

    python benchmarks/overhead.py --sides compile --workloads cnn [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from trainyard.config import load_config  # noqa: E402
from trainyard.data import DataBundle, DataInfo  # noqa: E402
from trainyard.data.splits import TensorPairs  # noqa: E402
from trainyard.engine.run import seed_everything  # noqa: E402
from trainyard.models import build_model  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
_CACHE: dict[str, DataBundle] = {}


def digits64(cfg) -> DataBundle:
    """Real digits as 64 features (8x8, scaled), replicated 32 times: a dataset big enough to time."""
    if "mlp" not in _CACHE:
        from sklearn.datasets import load_digits

        raw = load_digits()
        x = torch.from_numpy(raw.images).float().div(16).sub(0.3).div(0.4).unsqueeze(1).repeat(32, 1, 1, 1)
        y = torch.from_numpy(raw.target).long().repeat(32)
        info = DataInfo(
            kind="image", num_classes=10, classes=[str(i) for i in range(10)], in_channels=1, image_size=(8, 8), mean=(0.3,), std=(0.4,)
        )
        _CACHE["mlp"] = DataBundle(TensorPairs(x, y), None, None, info)
    return _CACHE["mlp"]


def mnist28(cfg) -> DataBundle:
    """The 60,000 real MNIST training images, normalised, preloaded."""
    if "cnn" not in _CACHE:
        from torchvision.datasets import MNIST

        ds = MNIST(root=str(SHARED), train=True, download=False)
        x = ds.data.float().div(255).sub(0.1307).div(0.3081).unsqueeze(1)
        info = DataInfo(
            kind="image",
            num_classes=10,
            classes=[str(i) for i in range(10)],
            in_channels=1,
            image_size=(28, 28),
            mean=(0.1307,),
            std=(0.3081,),
        )
        _CACHE["cnn"] = DataBundle(TensorPairs(x, ds.targets), None, None, info)
    return _CACHE["cnn"]


# The datasets are this script's own functions, named by import path as a user's would be.
WORKLOADS = {
    "mlp": [f"data.dataset={__name__}:digits64", "model.name=mlp", "model.width=64", "model.depth=2", "trainer.epochs=3"],
    "cnn": [f"data.dataset={__name__}:mnist28", "model.name=cnn", "model.width=16", "model.depth=2", "trainer.epochs=1"],
}


def make_config(workload: str, root: str, device: str, precision: str, name: str, batched: str = "false", channels_last: str = "false"):
    return load_config(
        None,
        WORKLOADS[workload]
        + [
            f"loader.batched={batched}",
            f"trainer.channels_last={channels_last}",
            f"track.root={root}",
            f"name={name}",
            "data.val_fraction=0",
            "data.test_fraction=0",
            "loader.batch_size=64",
            f"trainer.device={device}",
            f"trainer.precision={precision}",
            "trainer.progress=false",
        ],
    )


def run_trainyard(cfg) -> tuple[float, dict[str, torch.Tensor]]:
    """Samples per second of Trainer(...) + fit() with the default tracking, and the final weights."""
    from trainyard.data import build_data
    from trainyard.engine.trainer import Trainer
    from trainyard.parallel import build_strategy
    from trainyard.track import build_trackers
    from trainyard.track.rundir import new_run_dir

    strategy = build_strategy(cfg)
    strategy.setup()
    seed_everything(cfg.seed)
    data = build_data(cfg)
    model = build_model(cfg.model, data.info)
    run_dir = new_run_dir(cfg)
    tracker = build_trackers(cfg, run_dir)
    with contextlib.redirect_stdout(None):
        sync(strategy.device)
        start = time.perf_counter()
        trainer = Trainer(cfg, strategy, data, model, run_dir, tracker)
        trainer.fit()
        sync(strategy.device)
        elapsed = time.perf_counter() - start
    tracker.close("finished")
    return cfg.trainer.epochs * len(data.train) / elapsed, strategy.unwrap(trainer.model).state_dict()


def run_raw(cfg) -> tuple[float, dict[str, torch.Tensor]]:
    """The same training written by hand: samples per second and the final weights."""
    from trainyard.data import build_data

    device = torch.device("cuda" if cfg.trainer.device == "cuda" else "cpu")
    seed_everything(cfg.seed)
    data = build_data(cfg)
    model = build_model(cfg.model, data.info).to(device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.trainer.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.trainer.precision == "fp16")
    sync(device)
    start = time.perf_counter()
    order = torch.Generator()  # reseeded each epoch: the order DistributedSampler(seed).set_epoch(epoch) gives
    sampler = torch.utils.data.RandomSampler(data.train, generator=order)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=64, sampler=sampler, pin_memory=device.type == "cuda", generator=torch.Generator()
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.trainer.epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(cfg.trainer.epochs):
        order.manual_seed(cfg.seed + epoch)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
    sync(device)
    return cfg.trainer.epochs * len(data.train) / (time.perf_counter() - start), model.state_dict()


def run_naive_raw(cfg) -> tuple[float, dict[str, torch.Tensor]]:
    """The loop a user writes first: a DataLoader over a ``TensorDataset`` (``__getitem__`` per sample, the default
    collate stacks them), otherwise ``run_raw``: the same model, optimizer, schedule and order."""
    from trainyard.data import build_data

    device = torch.device("cuda" if cfg.trainer.device == "cuda" else "cpu")
    seed_everything(cfg.seed)
    data = build_data(cfg)
    base = data.train.base if hasattr(data.train, "base") else data.train  # the preloaded tensors behind the split
    dataset = torch.utils.data.TensorDataset(base.inputs, torch.as_tensor(base.labels))
    model = build_model(cfg.model, data.info).to(device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.trainer.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.trainer.precision == "fp16")
    sync(device)
    start = time.perf_counter()
    order = torch.Generator()  # reseeded each epoch: the order DistributedSampler(seed).set_epoch(epoch) gives
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=64, sampler=torch.utils.data.RandomSampler(dataset, generator=order), pin_memory=device.type == "cuda"
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.trainer.epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(cfg.trainer.epochs):
        order.manual_seed(cfg.seed + epoch)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
    sync(device)
    return cfg.trainer.epochs * len(dataset) / (time.perf_counter() - start), model.state_dict()


def lightning_available() -> bool:
    """Whether lightning is installed, without importing it here: importing it slows every later step of this
    process (measured: the raw MLP step 570 us -> 900 us, the optimizer step twice as long; not the GC, not
    hooks, not threads), so Lightning runs in processes of its own (``run_lightning_process``)."""
    import importlib.util

    return importlib.util.find_spec("lightning") is not None


def run_lightning_process(workload: str, args, root: str, name: str) -> tuple[float, dict[str, torch.Tensor]]:
    """``run_lightning`` in a fresh process: one unmeasured run, then the measured one. Returns its samples per
    second and its final weights."""
    import subprocess

    weights = Path(root) / f"{name}-lightning-weights.pt"
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--lightning-child",
            workload,
            name,
            root,
            str(weights),
            "--device",
            args.device,
            "--precision",
            args.precision,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.split("LIGHTNING_SAMPLES_PER_S")[-1].split()[0]), torch.load(weights, weights_only=True)


def run_lightning(cfg, root: str) -> tuple[float, dict[str, torch.Tensor]]:
    """The same training as a LightningModule under ``lightning.Trainer`` with its defaults on (TensorBoard logger,
    ``self.log`` of the loss, every 50 steps to the logger; a checkpoint each epoch; model summary), progress bar
    off as on the other sides. The sampler is trainyard's (Lightning calls its ``set_epoch``), so the order and the
    final weights are the same. Timed like trainyard: from building the loader to the end of ``fit``."""
    import logging

    import lightning as L

    from trainyard.data import build_data
    from trainyard.data.loading import train_sampler

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    device = "gpu" if cfg.trainer.device == "cuda" else "cpu"
    seed_everything(cfg.seed)
    data = build_data(cfg)
    model = build_model(cfg.model, data.info)
    epochs = cfg.trainer.epochs

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.loss_fn = nn.CrossEntropyLoss()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = self.loss_fn(self.model(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.estimated_stepping_batches)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    precision = {"32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[cfg.trainer.precision]
    with contextlib.redirect_stdout(None), contextlib.redirect_stderr(None):
        sync(torch.device(cfg.trainer.device if cfg.trainer.device == "cuda" else "cpu"))
        start = time.perf_counter()
        sampler = train_sampler(data.train, shuffle=True, seed=cfg.seed)
        loader = torch.utils.data.DataLoader(data.train, batch_size=64, sampler=sampler, pin_memory=device == "gpu")
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator=device,
            devices=1,
            precision=precision,
            enable_progress_bar=False,
            default_root_dir=str(Path(root) / f"{cfg.name}-lightning"),
        )
        trainer.fit(Module(), loader)
        sync(torch.device(cfg.trainer.device if cfg.trainer.device == "cuda" else "cpu"))
        elapsed = time.perf_counter() - start
    return epochs * len(data.train) / elapsed, model.state_dict()


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str:
    """'identical', or the largest difference (expected on GPUs, where kernels need not be deterministic)."""
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    return "identical (the same computation as the raw loop)" if diff == 0 else f"differ by up to {diff:.3g}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "fp16"])
    parser.add_argument("--workloads", nargs="+", default=["mlp", "cnn"], choices=list(WORKLOADS))
    parser.add_argument(
        "--sides",
        nargs="+",
        default=["overhead"],
        choices=["overhead", "batched", "compile"],
        help="overhead: raw loop vs trainyard on the same DataLoader (and Lightning); batched: naive raw loop vs trainyard's batched "
        "loader; compile: trainyard eager vs trainer.compile=true",
    )
    parser.add_argument("--lightning-child", nargs=4, metavar=("WORKLOAD", "NAME", "ROOT", "WEIGHTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lightning_child:
        workload, name, root, weights = args.lightning_child
        from trainyard.engine.hostmem import keep_freed_host_memory

        keep_freed_host_memory()  # as in the parent: the same allocator for every side
        for run in ("warm", "timed"):
            sps, state = run_lightning(make_config(workload, root, args.device, args.precision, f"{name}-{run}"), root)
        torch.save(state, weights)
        print(f"LIGHTNING_SAMPLES_PER_S {sps}")
        return
    from trainyard.engine.hostmem import keep_freed_host_memory

    kept = keep_freed_host_memory()  # process-wide: the raw loop runs with it too
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, precision {args.precision}, "
        f"freed host memory {'kept (both sides)' if kept else 'returned to the OS (no glibc)'}"
    )
    overhead = "overhead" in args.sides
    lightning = overhead and lightning_available()
    if overhead:
        print(f"lightning: {'installed, a third column' if lightning else 'not installed, no column'}")
    results, lightning_results, batched_results, compile_results = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as root:
        for workload in args.workloads:
            if "batched" in args.sides:
                batched_results[workload] = batched_side(workload, args, root)
            if "compile" in args.sides:
                compile_results[workload] = compile_side(workload, args, root)
            if not overhead:
                continue

            def config(name: str, workload: str = workload):
                return make_config(workload, root, args.device, args.precision, f"{workload}-{name}")

            # one unmeasured run of each side first (caches, allocator, lazy imports), which also checks
            # that the sides did the same computation
            _, raw_weights = run_raw(config("warm-raw"))
            _, our_weights = run_trainyard(config("warm"))
            print(f"{workload}: final weights {same_weights(raw_weights, our_weights)}")
            if lightning:
                _, lightning_weights = run_lightning_process(workload, args, root, f"{workload}-lightning-check")
                print(f"{workload}: lightning's final weights {same_weights(raw_weights, lightning_weights)}")
            raw, ours, theirs = [], [], []
            for i in range(args.repeats):  # alternating, so drift hits every side alike
                raw.append(run_raw(config(f"raw-{i}"))[0])
                ours.append(run_trainyard(config(str(i)))[0])
                if lightning:
                    theirs.append(run_lightning_process(workload, args, root, f"{workload}-lightning-{i}")[0])
            r, o = statistics.median(raw), statistics.median(ours)
            results[workload] = o / r
            pairs = statistics.median(b / a for a, b in zip(raw, ours))  # each run against the raw run just before it
            print(
                f"{workload}: raw {r:,.0f} samples/s  trainyard {o:,.0f} samples/s  ratio {o / r:.3f} (median of pairs {pairs:.3f})  "
                f"(raw runs {', '.join(f'{v:,.0f}' for v in raw)}; trainyard runs {', '.join(f'{v:,.0f}' for v in ours)})"
            )
            if lightning:
                t = statistics.median(theirs)
                lightning_results[workload] = t / r
                print(f"{workload}: lightning {t:,.0f} samples/s  ratio {t / r:.3f}  (runs {', '.join(f'{v:,.0f}' for v in theirs)})")
    for workload, ratio in results.items():
        print(f"RESULT overhead_ratio_{workload} {ratio:.3f}")
    for workload, ratio in lightning_results.items():
        print(f"RESULT lightning_ratio_{workload} {ratio:.3f}")
    for workload, ratio in batched_results.items():
        print(f"RESULT batched_vs_naive_raw_{workload} {ratio:.3f}")
    for workload, ratio in compile_results.items():
        print(f"RESULT compile_speedup_{workload}_{args.device.split(':')[0]} {ratio:.3f}")


def batched_side(workload: str, args, root: str) -> float:
    """The naive raw loop against trainyard's batched loader: one unmeasured run of each (which checks that they
    trained the same weights), then ``--repeats`` alternating pairs. Returns trainyard / naive, medians."""

    def config(name: str, batched: str):
        return make_config(workload, root, args.device, args.precision, f"{workload}-{name}", batched=batched, channels_last="true")

    _, naive_weights = run_naive_raw(config("warm-naive", "false"))
    _, our_weights = run_trainyard(config("warm-batched", "true"))
    print(f"{workload}: batched vs naive raw: final weights {same_weights(naive_weights, our_weights)}")
    naive, ours = [], []
    for i in range(args.repeats):  # alternating, so drift hits both sides alike
        naive.append(run_naive_raw(config(f"naive-{i}", "false"))[0])
        ours.append(run_trainyard(config(f"batched-{i}", "true"))[0])
    n, o = statistics.median(naive), statistics.median(ours)
    pairs = statistics.median(b / a for a, b in zip(naive, ours))
    print(
        f"{workload}: naive raw {n:,.0f} samples/s  trainyard batched {o:,.0f} samples/s  ratio {o / n:.3f} (median of pairs {pairs:.3f})  "
        f"(naive runs {', '.join(f'{v:,.0f}' for v in naive)}; trainyard runs {', '.join(f'{v:,.0f}' for v in ours)})"
    )
    return o / n


def compile_side(workload: str, args, root: str) -> float:
    """trainyard eager against trainer.compile=true, both batched: one unmeasured run of each, then ``--repeats``
    alternating pairs (each compiled run compiles its own model). Returns compiled / eager, medians."""

    def config(name: str, compiled: bool):
        cfg = make_config(workload, root, args.device, args.precision, f"{workload}-{name}", batched="auto", channels_last="true")
        cfg.trainer.compile = compiled
        return cfg

    _, eager_weights = run_trainyard(config("warm-eager", False))
    _, compiled_weights = run_trainyard(config("warm-compiled", True))
    print(f"{workload}: compiled vs eager: final weights {same_weights(eager_weights, compiled_weights)}")
    eager, compiled = [], []
    for i in range(args.repeats):  # alternating, so drift hits both sides alike
        eager.append(run_trainyard(config(f"eager-{i}", False))[0])
        compiled.append(run_trainyard(config(f"compiled-{i}", True))[0])
    e, c = statistics.median(eager), statistics.median(compiled)
    pairs = statistics.median(b / a for a, b in zip(eager, compiled))
    print(
        f"{workload}: eager {e:,.0f} samples/s  compiled {c:,.0f} samples/s  ratio {c / e:.3f} (median of pairs {pairs:.3f})  "
        f"(eager runs {', '.join(f'{v:,.0f}' for v in eager)}; compiled runs {', '.join(f'{v:,.0f}' for v in compiled)})"
    )
    return c / e


if __name__ == "__main__":
    main()
