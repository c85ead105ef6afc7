"""The W&B backend, checked by reading the offline run's ``.wandb`` file back (conftest sets WANDB_MODE=offline)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import free_port, run_cli

pytest.importorskip("wandb")


def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then a LevelDB log (32 KiB blocks of
    checksum:u32, length:u16, type:u8, data; type 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a record never starts in a block's last 6 bytes
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def read_offline_run(run_dir: Path) -> dict:
    """config, history rows (flat keys), summary and exit code of the one offline W&B run in ``run_dir``."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    out: dict = {"config": {}, "history": [], "summary": {}, "exit_code": None}

    def key(item):
        return "/".join(item.nested_key) if item.nested_key else item.key

    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            out["summary"].update({key(u): json.loads(u.value_json) for u in r.summary.update})
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out


@pytest.mark.timeout(180)
def test_wandb_offline_run_holds_config_metrics_pictures_gradients_and_summary(tiny, tmp_path):
    res = run_cli(
        "train", *tiny, "name=w", "optim.lr=0.004", "track.backends=[tensorboard,wandb]", "track.wandb.watch=5", "track.wandb.tags=[ci]"
    )
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "runs" / "w"
    run = read_offline_run(run_dir)

    assert run["config"]["optim"]["lr"] == 0.004
    assert run["config"]["trainer"]["epochs"] == 2
    assert run["exit_code"] == 0

    # The same scalars as metrics.jsonl (what TensorBoard gets), at the same trainer steps.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for tag in ("train/loss", "val/accuracy", "test/accuracy"):
        expected = [(r["step"], r[tag]) for r in rows if tag in r]
        logged = [(h["trainer/step"], h[tag]) for h in run["history"] if tag in h]
        assert expected and logged == expected, tag

    images = {k.split("/_type")[0] for h in run["history"] for k, v in h.items() if k.endswith("/_type") and v == "image-file"}
    assert {"data/train_batch", "test/confusion_matrix", "test/misclassified"} <= images
    assert any(k.startswith("gradients/") for h in run["history"] for k in h), "track.wandb.watch logged no gradients"

    status = json.loads((run_dir / "status.json").read_text())
    assert run["summary"]["best/val/accuracy"] == pytest.approx(status["best"])
    assert run["summary"]["test/accuracy"] == pytest.approx(status["final"]["test/accuracy"])
    assert status["wandb"]["mode"] == "offline"


@pytest.mark.timeout(180)
def test_unreachable_wandb_server_goes_offline_with_a_warning(tiny, tmp_path):
    env = {"WANDB_MODE": "online", "WANDB_BASE_URL": f"http://127.0.0.1:{free_port()}", "WANDB_API_KEY": "x" * 40}
    res = run_cli(
        "train", *tiny, "trainer.epochs=1", "name=u", "track.backends=[wandb]", "track.wandb.mode=online", "track.images=false", env=env
    )
    assert res.returncode == 0, res.stderr
    assert "cannot reach" in res.stderr and "offline" in res.stderr
    run = read_offline_run(tmp_path / "runs" / "u")
    assert any("val/accuracy" in h for h in run["history"])


def test_without_wandb_one_line_says_how_to_install(tiny, tmp_path, monkeypatch, capsys):
    from trainyard.cli import main

    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # import wandb -> ImportError
    assert main(["train", *tiny, "track.backends=[tensorboard,wandb]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["trainyard: error: track.backends: wandb needs the wandb package; install it with: pip install 'trainyard[wandb]'"]
    assert not (tmp_path / "runs").exists()
