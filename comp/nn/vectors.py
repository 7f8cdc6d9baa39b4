"""gensim word2vec vectors (character, jieba word, character bigram) on the character grid.

`train_vectors` writes one KeyedVectors file per kind (models/w2v-{kind}.kv). `GridVectors`
turns texts into one id per character position: a character's own id, the id of the jieba
word covering it (a word's vector is spread over its characters), or the id of the bigram
starting at it. The ids are pure functions of the text, so a trainer computes them once.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from comp.core.utils import CompError, atomic_path, code_points, jieba_module, log

__all__ = ["KINDS", "GridVectors", "corpus_tokens", "load_vectors", "train_vectors",
           "vector_epochs"]

KINDS = ("char", "word", "bigram")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise CompError(f"vector kind '{kind}': must be one of {', '.join(KINDS)}")


def _jieba_tokenize(text: str) -> list[tuple[str, int, int]]:
    jieba = jieba_module()
    words = jieba.lcut(text)
    if "".join(words) != text:
        return list(jieba.tokenize(text))
    out, pos = [], 0
    for w in words:  # spans from lengths: faster than jieba.tokenize, same words
        out.append((w, pos, pos + len(w)))
        pos += len(w)
    return out


def corpus_tokens(texts: list[str], kind: str) -> list[list[str]]:
    """Token sequences for word2vec; whitespace never forms (part of) a token.

    char: the characters; word: jieba.lcut words; bigram: text[i:i+2] for each start i.
    A pair text (`a + PAIR_SEP + b`, comp.data) is two sentences: no context or bigram spans
    its sides, and the separator gets no vector (the grid marks it with the segment feature).
    """
    from comp.data.competition import PAIR_SEP

    _check_kind(kind)
    out = []
    for text in (side for t in texts for side in t.split(PAIR_SEP)):
        if kind == "char":
            out.append([c for c in text if not c.isspace()])
        elif kind == "word":
            out.append([w for w, _, _ in _jieba_tokenize(text) if w.strip()])
        else:
            out.append([text[i:i + 2] for i in range(len(text) - 1)
                        if not (text[i].isspace() or text[i + 1].isspace())])
    return out


def _stable_hash(text: str) -> int:
    """A hash that is the same in every process (Python's str hash is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


# word2vec passes over the corpus: at least EPOCHS, more for a small corpus until it has seen
# MIN_TOKEN_PASSES tokens (at most MAX_EPOCHS). Five passes over a few thousand texts leave the
# vectors near gensim's random start (norms ~0.05 where trained ones are ~1), and a network over
# them frozen learns nothing: a vectors TextCNN on 600 few-shot texts scored 0.02 with five
# passes and 0.61 with this (its OOF); a corpus of the embedded reviews' size keeps five.
EPOCHS = 5
MIN_TOKEN_PASSES = 2_000_000
MAX_EPOCHS = 200


def vector_epochs(n_tokens: int, epochs: int | None = None) -> int:
    """Passes word2vec makes over a corpus of `n_tokens` tokens: `epochs` when given, else
    EPOCHS raised until the passes see MIN_TOKEN_PASSES tokens (at most MAX_EPOCHS)."""
    if epochs is not None:
        return epochs
    return max(EPOCHS, min(MAX_EPOCHS, -(-MIN_TOKEN_PASSES // max(n_tokens, 1))))


def train_vectors(texts: list[str], kind: str, out: str | Path, dim: int = 128, sg: int = 1,
                  window: int = 5, epochs: int | None = None, min_count: int = 2,
                  seed: int = 42, sample: float = 1e-4, workers: int = 1,
                  quiet: bool = False) -> Path:
    """Train word2vec on `texts` tokenized by `kind` and save its KeyedVectors to `out`.

    Skips training when `out` already exists. The file is written atomically, as one file.
    `epochs` None: `vector_epochs` of the corpus (more passes over a small one).
    `sample` down-samples frequent tokens; 1e-4 (gensim's default is 1e-3) roughly halves the
    time on Chinese characters, whose frequencies are very skewed, with similar neighbours.

    Reproducible for a seed: gensim's docs ask for one worker thread (several interleave their
    updates in OS-scheduling order) and a hash that does not depend on PYTHONHASHSEED; both are
    the defaults here. `workers` > 1 trades that for speed. `quiet`: no log line.

    Returns:
        `out` as a Path.
    """
    from gensim.models import Word2Vec

    _check_kind(kind)
    out = Path(out)
    if out.exists():
        log(f"vectors: {out} exists; skipping")
        return out
    sentences = [s for s in corpus_tokens(texts, kind) if s]
    if not sentences:
        raise CompError(f"vectors {kind}: the corpus has no tokens")
    logging.getLogger("gensim").setLevel(logging.WARNING)
    epochs = vector_epochs(sum(map(len, sentences)), epochs)
    model = Word2Vec(sentences=sentences, vector_size=dim, sg=sg, window=window, epochs=epochs,
                     min_count=min_count, seed=seed, sample=sample, workers=workers,
                     hashfxn=_stable_hash)
    kv = model.wv
    if len(kv) == 0:
        raise CompError(f"vectors {kind}: no token occurs {min_count}+ times; lower min_count")
    with atomic_path(out) as tmp:
        kv.save(str(tmp), separately=[])  # one pickle, so the rename is the whole write
    if not quiet:
        log(f"vectors: {kind} {len(kv)} x {dim}, {epochs} epochs -> {out}")
    return out


def load_vectors(path: str | Path) -> Any:
    """Load gensim KeyedVectors saved by `train_vectors`."""
    from gensim.models import KeyedVectors

    p = Path(path)
    if not p.exists():
        raise CompError(f"{p}: vectors not found; build them with `comp vectors`")
    try:
        return KeyedVectors.load(str(p))
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CompError(f"{p}: not a gensim KeyedVectors file ({type(e).__name__}: {e})") from None


class GridVectors(nn.Module):
    """An embedding over char / word / bigram ids laid on the character grid.

    Row 0 is padding and unknown (zeros, never trained); row i + 1 holds kv's i-th vector.
    """

    def __init__(self, kv: Any, kind: str, trainable: bool = False) -> None:
        super().__init__()
        _check_kind(kind)
        self.kind = kind
        self.dim = int(kv.vector_size)
        self.key_to_id = {k: i + 1 for i, k in enumerate(kv.index_to_key)}
        weight = torch.zeros(len(self.key_to_id) + 1, self.dim)  # (V + 1, D)
        weight[1:] = torch.as_tensor(kv.vectors, dtype=torch.float32)
        self.embedding = nn.Embedding.from_pretrained(weight, freeze=not trainable, padding_idx=0)
        if kind == "char":  # code point -> id, for whole batches at once (see _char_ids)
            singles = [(ord(k), i) for k, i in self.key_to_id.items() if len(k) == 1]
            self._table = np.zeros(max((cp for cp, _ in singles), default=0) + 1, dtype=np.int64)
            for cp, i in singles:
                self._table[cp] = i

    def ids(self, texts: list[str], n_chars: int) -> Tensor:
        """(B, n_chars) int64 id per character position; 0 past the end or when unknown.

        char: the character's id; word: the id of the jieba word covering the character;
        bigram: the id of text[i:i+2] at position i.
        """
        if self.kind == "char":
            return self._char_ids(texts, n_chars)
        out = torch.zeros(len(texts), n_chars, dtype=torch.long)
        get = self.key_to_id.get
        for b, text in enumerate(texts):
            text = text[:n_chars]
            if self.kind == "char":
                row = [get(c, 0) for c in text]
            elif self.kind == "bigram":
                row = [get(text[i:i + 2], 0) if i + 1 < len(text) else 0
                       for i in range(len(text))]
            else:
                row = [0] * len(text)
                for w, s, e in _jieba_tokenize(text):
                    row[s:e] = [get(w, 0)] * (e - s)
            if row:
                out[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def _char_ids(self, texts: list[str], n_chars: int) -> Tensor:
        """Char ids for a whole batch at once: code points through a dense lookup table (a
        dict lookup per character costs more than the model serving it)."""
        cut = [t[:n_chars] for t in texts]
        cps, lens = code_points(cut)
        ids = np.where(cps < len(self._table), self._table[np.minimum(cps, len(self._table) - 1)],
                       0)
        out = np.zeros((len(cut), n_chars), dtype=np.int64)
        rows = np.repeat(np.arange(len(cut)), lens)
        cols = np.arange(len(cps)) - np.repeat(np.cumsum(lens) - lens, lens)
        out[rows, cols] = ids
        return torch.from_numpy(out)

    def forward(self, ids: Tensor) -> Tensor:
        """(B, N) ids -> (B, N, dim) vectors."""
        return self.embedding(ids)
