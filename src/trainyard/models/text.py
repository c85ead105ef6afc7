"""Text classifiers over padded batches ``{"ids": (B, L), "lengths": (B,), "mask": (B, L)}``.

None of them computes on padding: ``embedding_bag`` leaves the padding id out of its mean, ``gru``
and ``lstm`` run packed sequences, ``transformer`` masks padded keys and pools real tokens only.
``model.vectors`` starts the embedding from a GloVe-format text file (``word v1 v2 ... vd`` per line).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from trainyard.config import ModelConfig
from trainyard.data import DataInfo
from trainyard.errors import ConfigError


def _text_info(cfg: ModelConfig, info: DataInfo) -> int:
    if info.kind != "text" or not info.vocab_size:
        raise ConfigError(f"model.name={cfg.name}: a text model needs a text dataset (data.dataset=text), not {info.kind} data")
    return info.vocab_size


class EmbeddingBagClassifier(nn.Module):
    """fastText-like: the mean of the word embeddings (padding left out of the mean), then a linear layer."""

    def __init__(self, vocab_size: int, embed_dim: int, num_classes: int, pad_id: int, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x["ids"])))


class RecurrentClassifier(nn.Module):
    """Embedding, a GRU or LSTM over packed sequences, and a linear layer on the last layer's final state
    (both directions' when bidirectional)."""

    def __init__(
        self,
        kind: str,
        vocab_size: int,
        embed_dim: int,
        hidden: int,
        layers: int,
        num_classes: int,
        pad_id: int,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[kind]
        self.rnn = rnn(
            embed_dim, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0
        )
        self.directions = 2 if bidirectional else 1
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * self.directions, num_classes)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        embedded = self.embed(x["ids"])
        lengths = x["lengths"].cpu()  # sync point on GPU: pack_padded_sequence takes its lengths on the CPU
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)  # final states come back in the batch's own order
        if isinstance(state, tuple):  # LSTM: (h, c)
            state = state[0]
        last = state[-self.directions :]  # the last layer: (directions, B, hidden)
        return self.head(self.dropout(torch.cat(list(last), dim=1)))


class TransformerClassifier(nn.Module):
    """A small pre-norm Transformer encoder: token and learned position embeddings, padded keys masked,
    the mean of the real tokens' outputs into a linear layer."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        heads: int,
        ff_dim: int,
        layers: int,
        max_length: int,
        num_classes: int,
        pad_id: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.position = nn.Embedding(max_length, embed_dim)
        layer = nn.TransformerEncoderLayer(embed_dim, heads, dim_feedforward=ff_dim, dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = x["ids"], x["mask"]
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.embed(ids) + self.position(positions)
        h = self.norm(self.encoder(h, src_key_padding_mask=~mask))
        keep = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


# --------------------------------------------------------------------------------------
# Pretrained word vectors
# --------------------------------------------------------------------------------------


def load_vectors(path: str | Path, vocab: dict[str, int], embedding: torch.Tensor) -> int:
    """Copy the vectors of ``vocab``'s tokens from a GloVe-format file into ``embedding`` (rows by token id).

    A token missing from the file keeps its random start; a word-piece (``##ing``) or byte-level (``Ġword``)
    token is looked up without its marker. Returns how many tokens were found.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.vectors={path}: file not found")
    wanted: dict[str, list[int]] = {}
    for token, i in vocab.items():
        if i < embedding.shape[0]:
            wanted.setdefault(token.removeprefix("##").removeprefix("Ġ"), []).append(i)
    found, dim = 0, embedding.shape[1]
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"model.vectors={path} line {n}: not UTF-8") from None
            word, _, rest = line.rstrip("\r\n").partition(" ")
            if n == 1 and " " not in rest and word.isdigit():
                continue  # a word2vec-style "count dim" header line
            ids = wanted.pop(word, None)
            if ids is None:
                continue
            values = rest.split()
            if len(values) != dim:
                raise ConfigError(
                    f"model.vectors={path} line {n}: {len(values)} numbers for {word!r}, but model.embed_dim={dim}; set "
                    f"model.embed_dim={len(values)}"
                )
            try:
                vector = torch.tensor([float(v) for v in values], dtype=embedding.dtype)
            except ValueError:
                raise ConfigError(f"model.vectors={path} line {n}: not a GloVe line (a word, then {dim} numbers)") from None
            embedding[ids] = vector
            found += len(ids)
    if found == 0:
        raise ConfigError(f"model.vectors={path}: none of the {len(vocab)} vocabulary tokens has a vector in it")
    return found


def _with_vectors(model: nn.Module, embedding: nn.Module, cfg: ModelConfig, info: DataInfo) -> nn.Module:
    if cfg.vectors:
        with torch.no_grad():
            load_vectors(cfg.vectors, info.extra.get("vocab", {}), embedding.weight)
            if getattr(embedding, "padding_idx", None) is not None:
                embedding.weight[embedding.padding_idx].zero_()
    return model


# --------------------------------------------------------------------------------------
# Builders (registered in trainyard.models.MODELS)
# --------------------------------------------------------------------------------------


def embedding_bag(cfg: ModelConfig, info: DataInfo) -> nn.Module:
    model = EmbeddingBagClassifier(_text_info(cfg, info), cfg.embed_dim, info.outputs, info.pad_id, cfg.dropout)
    return _with_vectors(model, model.embed, cfg, info)


def _recurrent(kind: str, cfg: ModelConfig, info: DataInfo) -> nn.Module:
    model = RecurrentClassifier(
        kind, _text_info(cfg, info), cfg.embed_dim, cfg.width, cfg.depth, info.outputs, info.pad_id, cfg.bidirectional, cfg.dropout
    )
    return _with_vectors(model, model.embed, cfg, info)


def gru(cfg: ModelConfig, info: DataInfo) -> nn.Module:
    return _recurrent("gru", cfg, info)


def lstm(cfg: ModelConfig, info: DataInfo) -> nn.Module:
    return _recurrent("lstm", cfg, info)


def transformer(cfg: ModelConfig, info: DataInfo) -> nn.Module:
    vocab_size = _text_info(cfg, info)
    if cfg.embed_dim % cfg.heads:
        raise ConfigError(f"model.embed_dim={cfg.embed_dim}: must be a multiple of model.heads={cfg.heads}")
    max_length = int(info.extra.get("max_length", 512))
    model = TransformerClassifier(
        vocab_size, cfg.embed_dim, cfg.heads, cfg.width, cfg.depth, max_length, info.outputs, info.pad_id, cfg.dropout
    )
    return _with_vectors(model, model.embed, cfg, info)
