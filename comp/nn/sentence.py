"""Frozen sentence embeddings of a pretrained encoder (the packaged multilingual-e5-small).

    enc = SentenceEncoder(folder, max_len=128)
    E = enc.encode(texts)                                  # (n, H) float32, L2-normalised
    E = cached_encode(folder, texts, max_len, cache_dir)   # the same, kept on disk by content

e5 was trained with mean pooling over the last layer and a "query: " prefix for symmetric tasks
(classification, clustering), so that is what is computed. Texts are read in batches sorted by
length (little padding), in full precision: bf16 autocast was 6x slower than fp32 on 2 cores
without native bf16 and int8 dynamic quantization 1.4x faster at a cosine of 0.97 to fp32.
One forward over a competition's texts is the whole cost; a member that reads them (a linear
head, deep k-NN label checks, active-learning picks) reads the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from comp.core.utils import CompError, progress, save_npy, sha1_of

PREFIX = "query: "


class SentenceEncoder:
    """Mean-pooled, L2-normalised last-layer vectors of a local `save_pretrained` folder."""

    def __init__(self, folder: str | Path, max_len: int = 128, prefix: str = PREFIX,
                 batch_size: int = 64) -> None:
        self.folder, self.max_len, self.prefix = Path(folder), int(max_len), prefix
        self.batch_size = int(batch_size)
        self._model = self._tok = None

    def _load(self) -> None:
        if self._model is not None:
            return
        if not (self.folder / "config.json").exists():
            raise CompError(f"{self.folder}: no encoder here (config.json missing)")
        from transformers import AutoModel, AutoTokenizer

        from comp.nn.backbones.model import quiet_transformers

        with quiet_transformers():  # the unused pooler's "newly initialized" notice, bars
            self._tok = AutoTokenizer.from_pretrained(self.folder)
            self._model = AutoModel.from_pretrained(self.folder).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], desc: str = "e5 sentence embeddings") -> np.ndarray:
        """(n, H) float32 unit vectors, one per text."""
        texts = list(texts)
        self._load()
        out = np.zeros((len(texts), self._model.config.hidden_size), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for lo in progress(range(0, len(texts), self.batch_size), desc=desc,
                           total=-(-len(texts) // self.batch_size)):
            idx = order[lo:lo + self.batch_size]
            enc = self._tok([self.prefix + texts[i] for i in idx], padding=True,
                            truncation=True, max_length=self.max_len, return_tensors="pt")
            hidden = self._model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


# this process's vectors by (folder, length) and text: a list that differs from one already
# encoded (a shrinking active-learning pool, a fold's augmented copies) encodes only what is new
_MEMO: dict[tuple[str, int], dict[str, np.ndarray]] = {}


def cached_encode(folder: str | Path, texts: Sequence[str], max_len: int = 128,
                  cache_dir: str | Path | None = None) -> np.ndarray:
    """`SentenceEncoder(folder, max_len).encode(texts)`, kept in `cache_dir` (one file per
    folder, length and text list) so every later reader of the same texts pays nothing, and
    per text in this process."""
    texts = list(texts)
    if not texts:
        return SentenceEncoder(folder, max_len).encode([])
    memo = _MEMO.setdefault((str(Path(folder).resolve()), int(max_len)), {})
    path = (Path(cache_dir) / f"{Path(folder).name}-{max_len}-{sha1_of(texts)}.npy"
            if cache_dir is not None else None)
    if path is not None and path.exists():
        emb = np.load(path)
        memo.update(zip(texts, emb))
        return emb
    missing = [t for t in dict.fromkeys(texts) if t not in memo]
    if missing:
        memo.update(zip(missing, SentenceEncoder(folder, max_len).encode(missing)))
    emb = np.stack([memo[t] for t in texts]).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npy(path, emb)
    return emb


def encode_rate(folder: str | Path, texts: Sequence[str], max_len: int = 128, n: int = 96,
                seed: int = 0) -> float:
    """Texts per second of `SentenceEncoder` on a seeded sample of `texts` on this machine
    (one batch warms up first, then the faster of two timed passes: the first pass over new
    batch shapes also builds their kernels, which made single passes vary by up to 2x): how a
    planner learns what the task's texts cost an e5 forward, whatever their script and
    length."""
    import time

    rng = np.random.default_rng(seed)
    texts = list(texts)
    sample = [texts[i] for i in rng.choice(len(texts), min(n, len(texts)), replace=False)]
    enc = SentenceEncoder(folder, max_len, batch_size=32)
    enc.encode(sample[:8], desc="")
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        enc.encode(sample, desc="")
        best = min(best, time.perf_counter() - t)
    return len(sample) / max(best, 1e-6)
