"""Each text model on the SMS Spam Collection, end to end: test accuracy and F1 on `spam`.

    PYTHONPATH=src python benchmarks/text_sms.py [--models embedding_bag gru lstm transformer] [--data PATH]

Trains through ``trainyard.engine.run.train`` exactly as ``trainyard train`` would, with the overrides
printed below; then reloads the run's saved tokenizer, label map and best checkpoint and scores the
held-out test split (20%, stratified, data.split_seed=0) with scikit-learn.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

from trainyard.config import load_config  # noqa: E402
from trainyard.data import build_data  # noqa: E402
from trainyard.data.loading import build_loader  # noqa: E402
from trainyard.engine.checkpoint import load_checkpoint  # noqa: E402
from trainyard.engine.run import train  # noqa: E402
from trainyard.models import build_model  # noqa: E402

DEFAULT_DATA = next(
    (
        p
        for p in (ROOT.parent / "shared/data/sms_spam/SMSSpamCollection", ROOT.parent.parent / "shared/data/sms_spam/SMSSpamCollection")
        if p.is_file()
    ),
    ROOT.parent / "shared/data/sms_spam/SMSSpamCollection",
)

COMMON = ["data.dataset=text", "data.columns=[label,text]", "loader.bucket_by_length=true", "trainer.progress=false", "track.backends=[]"]
MODELS = {
    "embedding_bag": ["model.name=embedding_bag", "model.embed_dim=128", "optim.lr=0.01", "trainer.epochs=10"],
    "gru": ["model.name=gru", "model.bidirectional=true", "trainer.epochs=5"],
    "lstm": ["model.name=lstm", "model.bidirectional=true", "trainer.epochs=5"],
    "transformer": ["model.name=transformer", "model.width=128", "model.depth=2", "trainer.epochs=5"],
}


@torch.no_grad()
def score(cfg, run_dir: Path) -> tuple[float, float]:
    """Test accuracy and F1 of the `spam` class, from what the run saved (tokenizer, labels, best.pt)."""
    data = build_data(cfg, run_dir=run_dir)
    model = build_model(cfg.model, data.info)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"])
    model.eval()
    loader = build_loader(data.test, cfg.loader, device=torch.device("cpu"), train=False, collate_fn=data.collate_fn)
    preds, truth = [], []
    for x, y in loader:
        preds += model(x).argmax(1).tolist()
        truth += y.tolist()
    spam = data.info.classes.index("spam")
    return accuracy_score(truth, preds), f1_score(truth, preds, pos_label=spam)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--split-seed", type=int, default=0, help="data.split_seed: which 20%% of the file is the test split")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            overrides = [*COMMON, f"data.path={args.data}", f"data.split_seed={args.split_seed}", *MODELS[name]]
            print(f"== {name}: trainyard train {' '.join(overrides)}", flush=True)
            cfg = load_config(None, [*overrides, f"track.root={tmp}", f"name={name}"])
            start = time.perf_counter()
            final = train(cfg)
            seconds = time.perf_counter() - start
            accuracy, f1 = score(cfg, Path(tmp) / name)
            assert abs(accuracy - final["test/accuracy"]) < 1e-6, (accuracy, final["test/accuracy"])  # same numbers as the run's own test
            results[name] = (accuracy, f1, seconds)
    for name, (accuracy, f1, seconds) in results.items():
        print(f"RESULT {name}_test_accuracy {accuracy:.4f}")
        print(f"RESULT {name}_spam_f1 {f1:.4f}")
        print(f"RESULT {name}_train_seconds {seconds:.1f}")


if __name__ == "__main__":
    main()
