"""Text data and models: files to tokens to padded batches, and the models that skip the padding."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from trainyard.config import load_config
from trainyard.data import build_data
from trainyard.data.bucketing import LengthBucketBatchSampler
from trainyard.data.collate import pad_collate
from trainyard.data.loading import train_sampler
from trainyard.data.text import TokenizedTexts, load_tokenizer
from trainyard.errors import ConfigError, DataError
from trainyard.models.text import EmbeddingBagClassifier, RecurrentClassifier, TransformerClassifier, load_vectors


def text_cfg(path: Path, *overrides: str):
    return load_config(None, ["data.dataset=text", f"data.path={path}", *overrides])


@pytest.fixture
def sms(shared_data: Path, tmp_path: Path) -> Path:
    """The first 800 lines of the SMS Spam Collection (both classes, non-ASCII included), as a headerless TSV."""
    lines = (shared_data / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").split("\n")[:800]
    path = tmp_path / "sms.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


SMS = ["data.columns=[label,text]"]


# --- reading files -------------------------------------------------------------------------


def test_sms_file_reads_with_stratified_seeded_splits(sms: Path):
    a = build_data(text_cfg(sms, *SMS))
    b = build_data(text_cfg(sms, *SMS))
    assert a.info.classes == ["ham", "spam"] and a.info.kind == "text" and a.info.pad_id == 0
    assert len(a.train) + len(a.val) + len(a.test) == 800
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.test.flat, b.test.flat)
    spam_share = [float(ds.labels.float().mean()) for ds in (a.train, a.val, a.test)]
    assert max(spam_share) - min(spam_share) < 0.03  # stratified: every split holds the same share of spam
    c = build_data(text_cfg(sms, *SMS, "data.split_seed=1"))
    assert not torch.equal(a.test.flat, c.test.flat)


def test_csv_with_header_quotes_and_jsonl(tmp_path: Path):
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text(
        'id,review,sentiment\n1,"good, really ""good""",pos\n2,"bad\nvery bad",neg\n3,fine,pos\n4,awful,neg\n', encoding="utf-8"
    )
    data = build_data(
        text_cfg(csv_path, "data.text_field=review", "data.label_field=sentiment", "data.val_fraction=0", "data.test_fraction=0")
    )
    assert data.info.classes == ["neg", "pos"] and len(data.train) == 4
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"text": t, "label": y}) for t, y in [("great", 1), ("poor", 0), ("ok", 1), ("bad", 0)]) + "\n",
        encoding="utf-8",
    )
    data = build_data(text_cfg(jsonl, "data.val_fraction=0", "data.test_fraction=0"))
    assert data.info.classes == ["0", "1"] and data.train.labels.tolist() == [1, 0, 1, 0]


def test_separate_split_files(tmp_path: Path):
    rows = lambda n: "".join(f"{'spam' if i % 2 else 'ham'}\tmessage number {i}\n" for i in range(n))  # noqa: E731
    for name, n in (("train.tsv", 20), ("val.tsv", 6), ("test.tsv", 8)):
        (tmp_path / name).write_text(rows(n), encoding="utf-8")
    data = build_data(
        text_cfg(tmp_path / "train.tsv", *SMS, f"data.val_path={tmp_path / 'val.tsv'}", f"data.test_path={tmp_path / 'test.tsv'}")
    )
    assert (len(data.train), len(data.val), len(data.test)) == (20, 6, 8)


# --- bad input: one line naming the file and the line ----------------------------------------


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    "content, overrides, message",
    [
        (
            "label,body\nham,hi\nspam,win\n",
            [],
            r"data\.csv line 1 \(header\): no column 'text' \(data\.text_field\); columns are 'label', 'body'",
        ),
        (
            "ham\thi\nspam\twin\n",
            ["data.format=tsv", "data.columns=[label,message]"],
            r"data\.csv data\.columns=\['label', 'message'\]: no column 'text'",
        ),
        ("text,label\nhello,ham\n   ,spam\nwin,spam\n", [], r"data\.csv line 3: empty text in 'text'"),
        ("text,label\nhello,ham\nwin\n", [], r"data\.csv line 3: 1 fields, expected 2"),
        (b"text,label\nhello,ham\ncaf\xe9 \xa35,spam\n", [], r"data\.csv line 3: not UTF-8 \(byte 0xe9\)"),
        ("text,label\nhello,ham\nhi there,ham\nbye,ham\n", [], r"data\.csv lines 2-4: column 'label' holds a single class \('ham'\)"),
    ],
    ids=["missing-column", "missing-column-headerless", "empty-text", "short-row", "not-utf8", "single-class"],
)
def test_bad_input_names_file_and_line(tmp_path: Path, content, overrides, message):
    path = write(tmp_path, "data.csv", content)
    with pytest.raises(DataError, match=message):
        build_data(text_cfg(path, *overrides))


def test_unseen_label_at_evaluation_names_the_line(tmp_path: Path):
    train = write(tmp_path, "train.jsonl", "".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(10)))
    val = write(tmp_path, "val.jsonl", '{"text": "x", "label": "a"}\n\n{"text": "y", "label": "c"}\n')
    with pytest.raises(DataError, match=r"val\.jsonl line 3: validation label 'c' is not one of the training classes \(a, b\)"):
        build_data(text_cfg(train, f"data.val_path={val}"))


def test_jsonl_missing_field_names_the_line(tmp_path: Path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n')
    with pytest.raises(
        DataError, match=r"d\.jsonl line 2: no field 'text' \(data\.text_field\); fields are 'txt', 'label'; did you mean txt\?"
    ):
        build_data(text_cfg(path))


@pytest.mark.timeout(60)
def test_bad_input_through_the_cli_is_one_line_exit_2(tmp_path: Path):
    path = write(tmp_path, "sms.tsv", b"ham\thello\nspam\twin \xa3100 now\n")
    result = run_cli("train", "data.dataset=text", f"data.path={path}", "data.columns=[label,text]", f"track.root={tmp_path / 'runs'}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"trainyard: error: {path} line 2: not UTF-8 (byte 0xa3); save the file as UTF-8"
    assert not (tmp_path / "runs").exists()


# --- tokenizers ------------------------------------------------------------------------------


def test_basic_tokenizer_is_lowercase_words_and_punctuation(tmp_path: Path):
    path = write(tmp_path, "d.tsv", "ham\tHello, World!\nspam\tWIN £100 now!!\n")
    data = build_data(text_cfg(path, *SMS, "data.val_fraction=0", "data.test_fraction=0"))
    vocab = data.info.extra["vocab"]
    inverse = {i: t for t, i in vocab.items()}
    assert [inverse[i] for i in data.train[0][0].tolist()] == ["hello", ",", "world", "!"]
    assert [inverse[i] for i in data.train[1][0].tolist()] == ["win", "£100", "now", "!", "!"]
    assert vocab["<pad>"] == 0 and vocab["<unk>"] == 1


@pytest.mark.parametrize("kind", ["basic", "wordpiece", "bpe"])
def test_tokenizer_round_trip_through_the_run_folder(sms: Path, tmp_path: Path, kind: str):
    cfg = text_cfg(sms, *SMS, f"data.tokenizer={kind}", "data.vocab_size=500", "data.max_length=24")
    data = build_data(cfg)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data.save_artifacts(run_dir)
    assert json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))["classes"] == ["ham", "spam"]
    # the saved file, loaded as a tokenizer path: identical ids for every split
    reloaded = build_data(text_cfg(sms, *SMS, f"data.tokenizer={run_dir / 'tokenizer.json'}", "data.max_length=24"))
    for a, b in ((data.train, reloaded.train), (data.test, reloaded.test)):
        assert torch.equal(a.flat, b.flat) and torch.equal(a.offsets, b.offsets)
    assert max(data.train.lengths) == 24  # truncation applied
    # resuming reuses the saved tokenizer even when the config would now train a different one
    resumed = build_data(
        text_cfg(sms, *SMS, "data.tokenizer=basic" if kind != "basic" else "data.tokenizer=bpe", "data.max_length=24"), run_dir=run_dir
    )
    assert torch.equal(resumed.train.flat, data.train.flat) and resumed.info.vocab_size == data.info.vocab_size
    tok = load_tokenizer(run_dir / "tokenizer.json")
    text = "Free entry in 2 a wkly comp to win FA Cup final tkts £"
    assert tok.encode(text).ids == load_tokenizer(run_dir / "tokenizer.json").encode(text).ids


def test_unknown_tokenizer_name_suggests(tmp_path: Path):
    path = write(tmp_path, "d.tsv", "ham\thi\nspam\twin\n")
    with pytest.raises(
        ConfigError,
        match="data.tokenizer=wordpeice: allowed values are basic, wordpiece, bpe or a path to a tokenizer.json .*did you mean wordpiece",
    ):
        build_data(text_cfg(path, *SMS, "data.tokenizer=wordpeice"))


# --- padding, masks, workers -----------------------------------------------------------------


def test_pad_collate_pads_to_longest_with_mask():
    samples = [(torch.tensor([5, 6, 7]), 1), (torch.tensor([8]), 0), (torch.tensor([9, 10]), 1)]
    x, y = pad_collate(samples, pad_value=3)
    assert x["ids"].tolist() == [[5, 6, 7], [8, 3, 3], [9, 10, 3]]
    assert x["lengths"].tolist() == [3, 1, 2]
    assert x["mask"].tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert y.tolist() == [1, 0, 1]


@pytest.mark.timeout(120)
def test_collate_and_dataset_work_in_spawned_workers(sms: Path):
    data = build_data(text_cfg(sms, *SMS))
    assert pickle.loads(pickle.dumps(data.collate_fn))([data.train[0], data.train[1]])[0]["ids"].shape[0] == 2
    loader = torch.utils.data.DataLoader(
        data.val, batch_size=16, collate_fn=data.collate_fn, num_workers=1, multiprocessing_context="spawn"
    )
    in_workers = [b for b in loader]
    in_process = [data.collate_fn([data.val[i] for i in range(s, min(s + 16, len(data.val)))]) for s in range(0, len(data.val), 16)]
    for (xa, ya), (xb, yb) in zip(in_workers, in_process):
        assert torch.equal(xa["ids"], xb["ids"]) and torch.equal(xa["mask"], xb["mask"]) and torch.equal(ya, yb)


# --- models ignore padding: a batch gives what each sequence gives alone -----------------------


def padded_batch(seqs: list[list[int]], pad_id: int = 0):
    return pad_collate([(torch.tensor(s), 0) for s in seqs], pad_value=pad_id)[0]


SEQS = [[4, 9, 2, 7, 7, 3], [5], [8, 2, 6], [3, 3, 9, 4]]


@pytest.mark.parametrize("kind, bidirectional, layers", [("gru", False, 1), ("gru", True, 2), ("lstm", True, 2)])
def test_packed_rnn_equals_each_sequence_alone(kind: str, bidirectional: bool, layers: int):
    torch.manual_seed(0)
    model = RecurrentClassifier(kind, 12, 8, 16, layers, 3, pad_id=0, bidirectional=bidirectional).eval()
    with torch.no_grad():
        batched = model(padded_batch(SEQS))
        alone = torch.cat([model(padded_batch([s])) for s in SEQS])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def test_embedding_bag_mean_leaves_padding_out():
    torch.manual_seed(0)
    model = EmbeddingBagClassifier(12, 8, 3, pad_id=0).eval()
    with torch.no_grad():
        batched = model(padded_batch(SEQS))
        alone = torch.cat([model(padded_batch([s])) for s in SEQS])
        by_hand = torch.stack([model.embed.weight[torch.tensor(s)].mean(0) for s in SEQS]) @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(batched, alone)
    torch.testing.assert_close(batched, by_hand)


def test_transformer_masks_padding():
    torch.manual_seed(0)
    model = TransformerClassifier(12, 16, heads=4, ff_dim=32, layers=2, max_length=8, num_classes=3, pad_id=0).eval()
    with torch.no_grad():
        batched = model(padded_batch(SEQS))
        alone = torch.cat([model(padded_batch([s])) for s in SEQS])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_glove_vectors_fill_the_embedding(tmp_path: Path):
    vectors = write(tmp_path, "glove.txt", "hello 1 2 3\nworld 4 5 6\nunused 7 8 9\n")
    weight = torch.zeros(4, 3)
    assert load_vectors(vectors, {"<pad>": 0, "hello": 1, "##world": 2, "zzz": 3}, weight) == 2
    assert weight.tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6], [0, 0, 0]]
    with pytest.raises(ConfigError, match=r"glove\.txt line 1: 3 numbers for 'hello', but model\.embed_dim=2; set model\.embed_dim=3"):
        load_vectors(vectors, {"hello": 0}, torch.zeros(1, 2))


# --- length bucketing ---------------------------------------------------------------------------


def bucket_sampler(lengths, rank=0, world=1, epoch=0, **kw):
    ds = TokenizedTexts([[1] * n for n in lengths], torch.zeros(len(lengths), dtype=torch.long))
    s = LengthBucketBatchSampler(train_sampler(ds, shuffle=True, seed=3, rank=rank, world_size=world), ds.lengths, 8, seed=3, **kw)
    s.set_epoch(epoch)
    return s


def padded_share(batches, lengths) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - real / total


def test_bucketing_covers_every_sample_deterministically_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = (torch.randint(1, 80, (203,), generator=g)).tolist()
    s = bucket_sampler(lengths, pool_batches=4)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(203)) and len(batches) == len(s) == 26
    assert batches == list(bucket_sampler(lengths, pool_batches=4))  # same seed and epoch: same batches
    assert batches != list(bucket_sampler(lengths, epoch=1, pool_batches=4))
    random_batches = [list(range(i, min(i + 8, 203))) for i in range(0, 203, 8)]
    assert padded_share(batches, lengths) < padded_share(random_batches, lengths) / 2
    # resuming mid-epoch: the trainer sets skip in samples (batches done x batch_size); the rest of the epoch follows
    s.skip = 5 * 8
    assert list(s) == batches[5:]
    assert list(s) == batches  # skip applies once


def test_bucketing_splits_across_ranks():
    lengths = list(range(1, 101))
    ranks = [list(bucket_sampler(lengths, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    assert sorted(i for r in ranks for b in r for i in b) == list(range(100))


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("model", ["embedding_bag", "gru", "lstm", "transformer"])
def test_each_model_trains_on_sms(sms: Path, tmp_path: Path, model: str):
    from trainyard.engine.run import train

    cfg = text_cfg(
        sms,
        *SMS,
        f"model.name={model}",
        "model.embed_dim=32",
        "model.width=32",
        "trainer.epochs=2",
        "loader.bucket_by_length=true",
        "optim.lr=0.01",
        f"track.root={tmp_path / 'runs'}",
        "name=run",
        "trainer.progress=false",
        "track.backends=[]",
    )
    final = train(cfg)
    assert final["train/loss"] < 0.5 and final["test/accuracy"] > 0.8
    run_dir = tmp_path / "runs" / "run"
    assert (run_dir / "tokenizer.json").is_file() and (run_dir / "labels.json").is_file()


@pytest.mark.timeout(240)
def test_resumed_bucketed_run_equals_uninterrupted_and_reuses_saved_tokenizer(sms: Path, tmp_path: Path):
    from trainyard.engine.run import train

    common = [
        *SMS,
        "model.name=embedding_bag",
        "loader.bucket_by_length=true",
        "loader.bucket_pool=2",
        "schedule.name=constant",
        f"track.root={tmp_path}",
        "trainer.progress=false",
        "track.backends=[]",
    ]
    # constant schedule: a cosine schedule over trainer.epochs would differ between a 1-epoch and a 2-epoch run
    straight = train(text_cfg(sms, *common, "trainer.epochs=2", "name=straight"))
    train(text_cfg(sms, *common, "trainer.epochs=1", "name=resumed"))
    run_dir = tmp_path / "resumed"
    saved = (run_dir / "tokenizer.json").read_text(encoding="utf-8")
    # another tokenizer would shift the checkpoint's embedding rows: refused on one line, before anything is written
    from trainyard.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.tokenizer=bpe \(trained with basic\) cannot change on resume"):
        train(load_config(run_dir / "config.yaml", ["trainer.epochs=2", "data.tokenizer=bpe"]), resume=run_dir)
    resumed = train(load_config(run_dir / "config.yaml", ["trainer.epochs=2"]), resume=run_dir)
    assert (run_dir / "tokenizer.json").read_text(encoding="utf-8") == saved
    for key in ("train/loss", "val/loss", "test/accuracy"):
        assert resumed[key] == straight[key], key
