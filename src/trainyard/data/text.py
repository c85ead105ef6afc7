"""Text classification data: a CSV, TSV or JSONL file -> tokens (Hugging Face ``tokenizers``) -> padded batches.

What torchtext was used for, on a library that is maintained: read labelled texts, split them
(seeded and stratified), train a tokenizer on the training split only, encode every split once up
front, and batch with :func:`~trainyard.data.collate.pad_collate`. The trained tokenizer and the
label map are saved in the run folder (``tokenizer.json``, ``labels.json``); a resumed run reloads
them, so token and label ids never shift under a checkpoint.

Every problem with the input file is one :class:`DataError` naming the file and the line.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset

from trainyard.config import DataConfig, RunConfig, suggest
from trainyard.data import DataBundle, DataInfo
from trainyard.data.collate import pad_collate
from trainyard.data.splits import stratified_split
from trainyard.errors import ConfigError, DataError
from trainyard.files import atomic_write

# Texts are encoded once, in the main process, before loader workers start. Rust-side threads that
# were used before a fork make `tokenizers` print a warning in every forked worker; the threads buy
# little for classification-sized files, so they are off unless the user turns them on.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAD, UNK = "<pad>", "<unk>"
TRAINED_TOKENIZERS = ("basic", "wordpiece", "bpe")
PAD_CANDIDATES = (PAD, "[PAD]", "<|pad|>", "<|endoftext|>")  # how loaded tokenizer.json files name padding
TOKENIZER_FILE, LABELS_FILE = "tokenizer.json", "labels.json"


class Record(NamedTuple):
    text: str
    label: str
    line: int  # 1-based line of the file where the record starts


# --------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------


def detect_format(path: Path, fmt: str, first_line: str) -> str:
    """``auto``: from the extension; a file without a known one (SMSSpamCollection) from its first line."""
    if fmt != "auto":
        return fmt
    ext = path.suffix.lower()
    if ext in (".csv",):
        return "csv"
    if ext in (".tsv", ".tab"):
        return "tsv"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if first_line.lstrip().startswith("{"):
        return "jsonl"
    return "tsv" if "\t" in first_line else "csv"


def read_text(path: Path) -> str:
    """The whole file as UTF-8 (a leading byte-order mark is dropped); a bad byte names its line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.start + 1].hex()
        raise DataError(f"{path} line {line}: not UTF-8 (byte 0x{bad}); save the file as UTF-8") from None


def delimited_rows(text: str, fmt: str) -> Iterator[tuple[int, list[str]]]:
    """(start line, fields) of each non-blank row. TSV has no quoting (a text may start with a quote); CSV does."""
    if fmt == "tsv":
        for n, line in enumerate(text.split("\n"), 1):
            line = line.removesuffix("\r")
            if line.strip():
                yield n, line.split("\t")
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise csv.Error(f"line {reader.line_num}: {exc}") from None
        if any(f.strip() for f in fields):
            yield start, fields
        start = reader.line_num + 1


def read_records(path: str | Path, d: DataConfig) -> list[Record]:
    """The (text, label, line) records of one file, checked: columns present, text and label not empty."""
    path = Path(path)
    text = read_text(path)
    fmt = detect_format(path, d.format, text.split("\n", 1)[0])
    if fmt == "jsonl":
        return _jsonl_records(path, text, d)
    try:
        return _delimited_records(path, text, fmt, d)
    except csv.Error as exc:
        raise DataError(f"{path} {exc} (data.format={fmt})") from None


def _delimited_records(path: Path, text: str, fmt: str, d: DataConfig) -> list[Record]:
    rows = delimited_rows(text, fmt)
    if d.columns is not None:
        names, where = [str(c) for c in d.columns], f"data.columns={d.columns}"
    else:
        first = next(rows, None)
        if first is None:
            raise DataError(f"{path}: no rows")
        names, where = [c.strip() for c in first[1]], f"line {first[0]} (header)"
    positions = {}
    for key, field in (("data.text_field", d.text_field), ("data.label_field", d.label_field)):
        if field not in names:
            hint = suggest(field, names) or "; for a file without a header set data.columns, e.g. [label, text]"
            shown = ", ".join(repr(n if len(n) <= 24 else n[:21] + "...") for n in names)
            raise DataError(f"{path} {where}: no column {field!r} ({key}); columns are {shown}{hint}")
        positions[field] = names.index(field)
    records = []
    for line, fields in rows:
        if len(fields) != len(names):
            raise DataError(
                f"{path} line {line}: {len(fields)} fields, expected {len(names)} ({', '.join(names)}) separated by "
                f"{'a tab' if fmt == 'tsv' else 'commas'}"
            )
        records.append(_record(path, line, fields[positions[d.text_field]], fields[positions[d.label_field]], d))
    return _nonempty(path, records)


def _jsonl_records(path: Path, text: str, d: DataConfig) -> list[Record]:
    records = []
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {line}: not a JSON object ({exc.msg}, column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {line}: expected a JSON object, got {type(obj).__name__}")
        for key, field in (("data.text_field", d.text_field), ("data.label_field", d.label_field)):
            if field not in obj:
                raise DataError(
                    f"{path} line {line}: no field {field!r} ({key}); fields are {', '.join(map(repr, obj))}{suggest(field, obj)}"
                )
        value = obj[d.text_field]
        if not isinstance(value, str):
            raise DataError(f"{path} line {line}: field {d.text_field!r} must be a string, got {type(value).__name__}")
        label = obj[d.label_field]
        if isinstance(label, (dict, list)) or label is None:
            raise DataError(f"{path} line {line}: field {d.label_field!r} must be a string or a number, got {json.dumps(label)}")
        records.append(_record(path, line, value, str(label).lower() if isinstance(label, bool) else str(label), d))
    return _nonempty(path, records)


def _record(path: Path, line: int, text: str, label: str, d: DataConfig) -> Record:
    if not text.strip():
        raise DataError(f"{path} line {line}: empty text in {d.text_field!r}")
    label = label.strip()
    if not label:
        raise DataError(f"{path} line {line}: empty label in {d.label_field!r}")
    return Record(text, label, line)


def _nonempty(path: Path, records: list[Record]) -> list[Record]:
    if not records:
        raise DataError(f"{path}: no records")
    return records


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------


def label_order(labels: Sequence[str]) -> list[str]:
    """Sorted classes; numerically when every label is an integer (so "10" comes after "9")."""
    unique = set(labels)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def check_classes(path: Path, records: list[Record], d: DataConfig) -> list[str]:
    classes = label_order([r.label for r in records])
    if len(classes) < 2:
        raise DataError(
            f"{path} lines {records[0].line}-{records[-1].line}: column {d.label_field!r} holds a single class ({classes[0]!r}); a "
            "classifier needs at least two"
        )
    return classes


def label_indices(path: Path, records: list[Record], index: dict[str, int], role: str) -> torch.Tensor:
    """Class indices of ``records``; a label outside ``index`` names its line."""
    out = []
    for r in records:
        if r.label not in index:
            raise DataError(f"{path} line {r.line}: {role} label {r.label!r} is not one of the training classes ({', '.join(index)})")
        out.append(index[r.label])
    return torch.tensor(out, dtype=torch.long)


# --------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------


def train_tokenizer(kind: str, texts: Sequence[str], vocab_size: int, min_frequency: int):
    """A ``tokenizers.Tokenizer`` trained on ``texts``; ids 0 and 1 are <pad> and <unk>.

    basic: lower-case words and single punctuation marks (torchtext's ``basic_english``) into a word vocabulary.
    wordpiece: BERT-style (lower-cased, accents kept) sub-words. bpe: byte-level BPE (GPT-2 style, never unknown).
    """
    from trainyard.extras import require

    require("tokenizers", "text", "text data")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    special = [PAD, UNK]
    if kind == "basic":
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special)
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special)
    else:  # bpe
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def load_tokenizer(path: Path, key: str = "data.tokenizer"):
    from trainyard.extras import require

    Tokenizer = require("tokenizers", "text", key).Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ConfigError(
            f"{key}={path}: not a tokenizers tokenizer.json ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None


def build_tokenizer(d: DataConfig, train_texts: Sequence[str], saved: Path | None = None):
    """The run's tokenizer: the one saved in the run folder when resuming, else ``data.tokenizer``."""
    if saved is not None and saved.is_file():
        tok = load_tokenizer(saved, key=f"saved tokenizer {saved}")
    elif d.tokenizer in TRAINED_TOKENIZERS:
        tok = train_tokenizer(d.tokenizer, train_texts, d.vocab_size, d.min_frequency)
    else:
        path = Path(d.tokenizer)
        if not path.is_file():
            raise ConfigError(
                f"data.tokenizer={d.tokenizer}: allowed values are {', '.join(TRAINED_TOKENIZERS)} or a path to a tokenizer.json (no such "
                f"file){suggest(d.tokenizer, TRAINED_TOKENIZERS)}"
            )
        tok = load_tokenizer(path)
    tok.no_padding()  # pad_collate pads per batch, to the longest sample only
    tok.enable_truncation(max_length=d.max_length)
    return tok


def pad_id_of(tok) -> int:
    """The padding token's id; a tokenizer without one pads with an extra id just past its vocabulary."""
    for name in PAD_CANDIDATES:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return tok.get_vocab_size(with_added_tokens=True)


def encode(tok, texts: Sequence[str], fallback_id: int) -> list[list[int]]:
    """Token ids of each text; a text that tokenizes to nothing becomes one unknown token, so no sample is empty."""
    return [e.ids or [fallback_id] for e in tok.encode_batch(list(texts), add_special_tokens=False)]


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------


class TokenizedTexts(Dataset):
    """Token ids of many texts in one flat tensor with offsets (compact, quick to send to spawned workers).

    ``dataset[i]`` is ``(1-D LongTensor of token ids, label index)``; ``lengths`` feeds the length-bucketing sampler.
    """

    def __init__(self, ids: Sequence[Sequence[int]], labels: torch.Tensor):
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        self.offsets = torch.zeros(len(ids) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=self.offsets[1:])
        self.flat = torch.tensor([t for x in ids for t in x], dtype=torch.long)
        self.labels = labels
        self.lengths = lengths.tolist()
        self._bounds = self.offsets.tolist()  # plain ints: indexing with them is several times faster than with 0-d tensors
        self._label_list = labels.tolist()

    def __len__(self) -> int:
        return len(self._label_list)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.flat[self._bounds[i] : self._bounds[i + 1]], self._label_list[i]


# --------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------


def save_text_artifacts(run_dir: Path, tokenizer_json: str, labels: dict) -> None:
    """Write tokenizer.json and labels.json into the run folder (the primary process calls it once the folder exists)."""
    run_dir = Path(run_dir)
    for name, text in ((TOKENIZER_FILE, tokenizer_json), (LABELS_FILE, json.dumps(labels, indent=2, ensure_ascii=False) + "\n")):
        path = run_dir / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue  # a resume: the run's own files, left untouched
        atomic_write(path, text)


def read_saved_classes(run_dir: Path | None) -> list[str] | None:
    path = None if run_dir is None else Path(run_dir) / LABELS_FILE
    if path is None or not path.is_file():
        return None
    try:
        return [str(c) for c in json.loads(path.read_text(encoding="utf-8"))["classes"]]
    except (ValueError, KeyError, TypeError):
        raise DataError(f'{path}: not a trainyard label map (expected {{"classes": [...]}})') from None


def text(cfg: RunConfig, run_dir: Path | None = None) -> DataBundle:
    """``data.dataset: text``. ``run_dir``: the folder of a run being resumed, whose saved tokenizer and labels are reused."""
    d = cfg.data
    if d.path is None:
        raise ConfigError("data.dataset=text: needs data.path, a CSV, TSV or JSONL file (e.g. data.path=sms.tsv data.columns=[label,text])")
    train_path = Path(d.path)
    records = read_records(train_path, d)
    classes = check_classes(train_path, records, d)
    saved_classes = read_saved_classes(run_dir)
    if saved_classes is not None:
        classes = saved_classes
    index = {c: i for i, c in enumerate(classes)}
    labels = label_indices(train_path, records, index, "training")

    # Splits: separate files where given, else seeded stratified hold-outs of the training file (test first, then validation).
    splits: dict[str, tuple[Path, list[Record]]] = {}
    for name, path in (("val", d.val_path), ("test", d.test_path)):
        if path is not None:
            splits[name] = (Path(path), read_records(path, d))
    keep = list(range(len(records)))
    for name, fraction, seed in (("test", d.test_fraction, d.split_seed), ("val", d.val_fraction, d.split_seed + 1)):
        if name not in splits and fraction > 0:
            kept_rel, held_rel = stratified_split(labels[keep], fraction, seed)
            splits[name] = (train_path, [records[keep[i]] for i in held_rel])
            keep = [keep[i] for i in kept_rel]
    train_records = [records[i] for i in keep]

    saved_tokenizer = Path(run_dir) / TOKENIZER_FILE if run_dir is not None else None
    tok = build_tokenizer(d, [r.text for r in train_records], saved_tokenizer)
    pad_id = pad_id_of(tok)
    unk_id = tok.token_to_id(UNK)
    fallback = unk_id if unk_id is not None else pad_id

    def dataset(path: Path, recs: list[Record], role: str) -> TokenizedTexts | None:
        if not recs:
            return None
        return TokenizedTexts(encode(tok, [r.text for r in recs], fallback), label_indices(path, recs, index, role))

    train = dataset(train_path, train_records, "training")
    val = dataset(*splits["val"], "validation") if "val" in splits else None
    test = dataset(*splits["test"], "test") if "test" in splits else None

    vocab = tok.get_vocab(with_added_tokens=True)
    info = DataInfo(
        kind="text",
        num_classes=len(classes),
        classes=classes,
        vocab_size=max(tok.get_vocab_size(with_added_tokens=True), pad_id + 1),
        pad_id=pad_id,
        extra={"vocab": vocab, "max_length": d.max_length, "unk_id": unk_id},
    )
    label_map = {"label_field": d.label_field, "classes": classes}
    return DataBundle(
        train=train,
        val=val,
        test=test,
        info=info,
        collate_fn=functools.partial(pad_collate, pad_value=pad_id),  # picklable: works with spawned workers
        train_labels=train.labels,
        save_artifacts=functools.partial(save_text_artifacts, tokenizer_json=tok.to_str(), labels=label_map),
    )
