"""The report shows what a person needs (issue 21): mistakes drawn across classes (the most confident first), small
pictures scaled up with nearest neighbour, titles in words, quality metrics apart from lr and perf/*, and the
test accuracy with its count and 95% interval."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from trainyard.data import DataInfo
from trainyard.tasks.classification import Classification, ConfusionCollector

CLASS_SORTED = '''
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset


def sorted_digits():
    """Digits whose test split is sorted by class, as a class-per-folder test set reads."""
    raw = load_digits()
    x = torch.as_tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(raw.target)
    test = torch.arange(len(y)) % 5 == 0
    order = torch.argsort(y[test], stable=True)
    return {"train": TensorDataset(x[~test], y[~test]), "test": TensorDataset(x[test][order], y[test][order]),
            "classes": [f"digit {i}" for i in range(10)]}
'''


def collector(k=10, keep=32, seed=0):
    info = DataInfo(kind="image", num_classes=k, classes=[f"c{i}" for i in range(k)], in_channels=1, image_size=(4, 4))
    return ConfusionCollector(Classification(info), keep, seed=seed)


def feed_class_sorted(col, classes_with_errors, per_class=40, k=10, batch=16):
    """A class-sorted test set: ``per_class`` samples of each class in order, wrong ones in the given classes
    (each predicted as the next class, more confidently for later samples)."""
    y = torch.arange(k).repeat_interleave(per_class)
    pred = torch.where(torch.isin(y, torch.tensor(classes_with_errors)) & (torch.arange(len(y)) % 2 == 0), (y + 1) % k, y)
    sure = torch.linspace(1.0, 6.0, len(y))
    logits = F.one_hot(pred, k).float() * sure[:, None]
    x = torch.arange(len(y), dtype=torch.float32)[:, None, None, None].expand(len(y), 1, 4, 4).clone()  # x holds its index
    for i in range(0, len(y), batch):
        col.update(x[i : i + batch], logits[i : i + batch], y[i : i + batch])
    return logits


def true_classes(col):
    return [t.split(" / true ")[1] for t in col.titles]


@pytest.mark.parametrize("with_errors", [list(range(10)), [0, 1, 2], [3]])
def test_the_gallery_spans_the_classes_with_errors_on_a_class_sorted_test_set(with_errors):
    col = collector()
    logits = feed_class_sorted(col, with_errors)
    shown = true_classes(col)
    assert len(set(shown)) >= min(len(with_errors), 8)
    assert len(shown) <= 32 and len(shown) == len(col.images)
    if len(with_errors) == 10:
        assert len(set(shown[:10])) == 10  # round robin: one of each class before a second of any
    # each class's mistakes come most confident first
    conf = logits.softmax(1).max(1).values
    for cls in set(shown):
        picked = [int(img[0, 0, 0]) for img, t in zip(col.images, shown) if t == cls]
        assert [conf[i] for i in picked] == sorted((conf[i] for i in picked), reverse=True)
    assert col.matrix.sum() == 400


def test_the_gallery_is_seeded_where_confidences_tie():
    def drawn(seed):
        col = collector(seed=seed)
        y = torch.arange(10).repeat_interleave(20)
        logits = F.one_hot((y + 1) % 10, 10).float() * 100  # every mistake saturated: all tie at probability 1
        x = torch.arange(len(y), dtype=torch.float32)[:, None, None, None].expand(len(y), 1, 4, 4).clone()
        for i in range(0, len(y), 16):
            col.update(x[i : i + 16], logits[i : i + 16], y[i : i + 16])
        return [int(img[0, 0, 0]) for img in col.images]

    assert drawn(0) == drawn(0)
    assert drawn(0) != drawn(1)
    assert len({i // 20 for i in drawn(0)}) == 10  # 4 a class at most: every class shows


def decode(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.timeout(300)
def test_report_of_a_run_on_a_class_sorted_test_set(tmp_path, tiny):
    (tmp_path / "sorteddata.py").write_text(CLASS_SORTED)
    r = run_cli(
        "train",
        *tiny,
        "trainer.epochs=1",
        "name=sorted",
        "data.dataset=sorteddata:sorted_digits",
        "track.backends=[]",
        cwd=tmp_path,
        env={"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[2] / 'src'}"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "sorted"
    final = json.loads((run / "status.json").read_text())["final"]
    assert final["test/accuracy/count"] == 360.0 and final["test/accuracy/correct"] == round(final["test/accuracy"] * 360)
    assert final["test/accuracy/low"] < final["test/accuracy"] < final["test/accuracy/high"]

    out = tmp_path / "report.html"
    r = run_cli("report", str(run), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    # the accuracy with its count and interval, in the headline and the quality table
    shown = (
        f"{final['test/accuracy']:.4f} ({int(final['test/accuracy/correct'])}/360, "
        f"95% CI {final['test/accuracy/low']:.3f}-{final['test/accuracy/high']:.3f})"
    )
    assert f"test accuracy {shown}" in text
    quality = text[text.index("<h3>Quality</h3>") : text.index("<h3>Learning rate and performance</h3>")]
    details = text[text.index("<h3>Learning rate and performance</h3>") :].split("</table>")[0]
    assert "test/accuracy" in quality and "val/loss" in quality and "lr" not in re.findall(r"<th>([^<]+)</th>", quality)
    assert "<th>lr</th>" in details and "perf/data_wait_fraction" in details and "test/accuracy" not in details
    assert "test/accuracy/low" not in text.split("<h2>Learning curves</h2>")[0]
    # titles in words
    titles = re.findall(r"<h2>([^<]+)</h2>", text)
    assert "Training samples with their labels" in titles and "Sample predictions" in titles
    assert not [t for t in titles if "_" in t]
    # every picture at its natural size or larger; small ones scaled up by a whole factor
    images = dict(re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', text))
    media = {
        "A training batch": "data_train_batch.png",
        "Sample predictions": "test_misclassified.png",
        "Confusion matrix": "test_confusion_matrix.png",
    }
    for alt, name in media.items():
        natural = decode((run / "media" / name).read_bytes()).size
        embedded = decode(base64.b64decode(images[alt])).size
        assert embedded[0] >= natural[0] and embedded[1] >= natural[1], alt
        assert embedded[0] >= 480, alt
        assert embedded[0] % natural[0] == 0 and embedded[0] // natural[0] == embedded[1] // natural[1], alt  # a whole factor
    assert "image-rendering: pixelated" in text
