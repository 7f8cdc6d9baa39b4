"""Building blocks of the fit loop in comp/nn/trainer.py: rows, batching, schedules, LR groups,
FGM/PGD, EMA, AMP and torch.distributed helpers. Each piece is small and tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from comp.config.schema import ModelConfig
from comp.nn.fusion import grid_len, grid_texts

__all__ = ["Rows", "make_rows", "inner_split", "train_batches", "eval_batches",
           "LengthGroupedBatchSampler"]


# ---------------------------------------------------------------------------------------------
# rows


@dataclass
class Rows:
    """Model inputs with their targets: one row per grid text (a truncated text or a window).

    `source[i]` is the input text row i came from, so window predictions average back to one
    per text (`average`).
    """

    texts: list[str]  # grid texts
    targets: np.ndarray  # (n, C) float32 target distributions (one-hot for labelled rows)
    weights: np.ndarray  # (n,) float32 loss weights
    source: np.ndarray  # (n,) int64 index of the source text
    n_source: int
    vec_ids: list[Tensor] | None = None  # per vector kind (n, max_chars), see FusionModel

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def lengths(self) -> np.ndarray:
        """(n,) grid length of each row (for bucketing)."""
        return np.fromiter((grid_len(t) for t in self.texts), dtype=np.int64,
                           count=len(self.texts))

    def subset(self, idx: np.ndarray) -> Rows:
        """Rows `idx` (sources unchanged)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Rows([self.texts[i] for i in idx], self.targets[idx], self.weights[idx],
                    self.source[idx], self.n_source,
                    None if self.vec_ids is None else [v[idx] for v in self.vec_ids])

    def take(self, source_ids: np.ndarray) -> Rows:
        """The rows of these source texts; sources renumbered 0..len(source_ids)-1 in order."""
        source_ids = np.asarray(source_ids, dtype=np.int64)
        pos = np.full(self.n_source, -1, dtype=np.int64)
        pos[source_ids] = np.arange(len(source_ids))
        keep = np.flatnonzero(pos[self.source] >= 0)
        out = self.subset(keep)
        out.source = pos[self.source[keep]]
        out.n_source = len(source_ids)
        return out

    def concat(self, other: Rows) -> Rows:
        """self's rows then other's (other's sources shifted past self's)."""
        vec = None
        if self.vec_ids is not None and other.vec_ids is not None:
            vec = [torch.cat([a, b]) for a, b in zip(self.vec_ids, other.vec_ids)]
        return Rows(self.texts + other.texts, np.concatenate([self.targets, other.targets]),
                    np.concatenate([self.weights, other.weights]),
                    np.concatenate([self.source, other.source + self.n_source]),
                    self.n_source + other.n_source, vec)

    def average(self, proba: np.ndarray) -> np.ndarray:
        """(n, C) row probabilities -> (n_source, C), the mean over each source's rows."""
        out = np.zeros((self.n_source, proba.shape[1]), dtype=np.float64)
        np.add.at(out, self.source, proba)
        counts = np.bincount(self.source, minlength=self.n_source).astype(np.float64)
        return (out / np.maximum(counts, 1)[:, None]).astype(np.float32)


def make_rows(texts: Sequence[str], cfg: ModelConfig, targets: np.ndarray,
              weights: np.ndarray | None = None, both_orders: bool | None = None) -> Rows:
    """Rows for input texts: each text's grid text(s) (`comp.nn.fusion.grid_texts`) with its
    target.

    Args:
        texts: input texts.
        cfg: model config (truncation or windows).
        targets: (n, C) target distributions (one-hot rows for hard labels).
        weights: (n,) loss weights; default 1.
        both_orders: a pair text also as (b, a) (its own row, same source and target); None =
            `cfg.pair_tta`, so predictions average both orders when the recipe asks.

    Returns:
        Rows; a windowed text gives one row per window, all with the text's target.
    """
    both = getattr(cfg, "pair_tta", False) if both_orders is None else both_orders
    out_texts, source = [], []
    for i, t in enumerate(texts):
        g = grid_texts(t, cfg, both)
        out_texts.extend(g)
        source.extend([i] * len(g))
    src = np.asarray(source, dtype=np.int64)
    w = np.ones(len(texts), np.float32) if weights is None else np.asarray(weights, np.float32)
    return Rows(out_texts, np.asarray(targets, np.float32)[src].reshape(len(src), -1), w[src],
                src, len(texts))


def inner_split(labels: np.ndarray, texts: Sequence[str], frac: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Positions (fit, select) of a fold's training rows: `select` (about `frac` of them) is
    held out to choose the epoch, so that choice never needs the fold's validation labels.

    Stratified by label, identical normalized texts on one side (a copy in `fit` would hand its
    label to `select`), seeded. Rows of classes with fewer than 3 rows stay in `fit`: a model
    has to see a class to learn it. A split stratification cannot make falls back to a random
    grouped one; `select` is empty when `frac` is 0 or there is nothing to split.

    Args:
        labels: (n,) int labels of the training rows.
        texts: their texts.
        frac: share held out, in [0, 0.5].
        seed: split seed.

    Returns:
        Two sorted int arrays of positions into `labels`, together 0..n-1.
    """
    import warnings

    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    from comp.data.folds import normalize_text

    n = len(labels)
    everything = np.arange(n)
    if frac <= 0 or n < 4:
        return everything, everything[:0]
    keys: dict[str, int] = {}
    groups = np.array([keys.setdefault(normalize_text(t), len(keys)) for t in texts])
    counts = np.bincount(labels)
    forced = np.isin(groups, groups[counts[labels] < 3])  # groups holding a rare-class row
    rest = np.flatnonzero(~forced)
    if len(np.unique(groups[rest])) < 2:
        return everything, everything[:0]
    y, g = labels[rest], groups[rest]
    splits = max(2, round(1 / frac))
    try:
        with warnings.catch_warnings():  # a class with fewer rows than splits is expected here
            warnings.simplefilter("ignore", UserWarning)
            splitter = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
            _, sel = next(splitter.split(np.zeros(len(rest)), y, g))
    except ValueError:  # fewer groups than splits: a random grouped share instead
        splitter = GroupShuffleSplit(n_splits=1, test_size=frac, random_state=seed)
        _, sel = next(splitter.split(np.zeros(len(rest)), y, g))
    select = np.sort(rest[sel])
    return np.setdiff1d(everything, select), select


# ---------------------------------------------------------------------------------------------
# batching


def train_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None,
                  bucket: bool = True, pool: int = 50) -> list[np.ndarray]:
    """Shuffled training batches; with `bucket`, rows of similar length share a batch.

    Bucketing: shuffle, cut into pools of `pool` batches, sort each pool by length, cut it into
    batches, shuffle the batches. Padding shrinks while every epoch still sees a new order.
    `rng=None` keeps the input order (used to count batches).
    """
    n = len(lengths)
    order = np.arange(n) if rng is None else rng.permutation(n)
    if not bucket or rng is None:
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return group_by_length(order, lengths, batch_size, rng, pool)


def group_by_length(order: np.ndarray, lengths: np.ndarray, batch_size: int,
                    rng: np.random.Generator, pool: int = 50) -> list[np.ndarray]:
    """Batches of `order` (already shuffled) whose rows have similar lengths: cut into pools of
    `pool` batches, sort each pool by length, cut it into batches, shuffle the batches."""
    batches: list[np.ndarray] = []
    for lo in range(0, len(order), batch_size * pool):
        chunk = order[lo:lo + batch_size * pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """One rank's training batches for a DataLoader: every epoch (`set_epoch`) the rows are
    dealt anew (several ranks: torch's DistributedSampler, each rank its share, padded by
    wrapping so every rank runs the same number of steps; one process: a seeded permutation),
    then `group_by_length` batches rows of similar length together when `bucket`.

    Args:
        lengths: (n,) row lengths (characters of the grid text).
        batch_size: rows per batch.
        seed: with the epoch, fixes the order.
        bucket: group by length (else batches in the dealt order).
        rank, world: this process and the number of processes (torch.distributed).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, bucket: bool = True,
                 rank: int = 0, world: int = 1) -> None:
        from torch.utils.data import DistributedSampler

        self.lengths, self.batch_size, self.seed, self.bucket = lengths, batch_size, seed, bucket
        self.rows = (DistributedSampler(range(len(lengths)), num_replicas=world, rank=rank,
                                        shuffle=True, seed=seed) if world > 1 else None)
        self.key: tuple[int, ...] = (0,)

    def set_epoch(self, epoch: int, key: tuple[int, ...] = ()) -> None:
        """Deal and group the rows for this epoch (same epoch and key, same batches); `key`
        seeds the shuffles instead of the epoch number (the fit loop: phase, epoch in phase)."""
        self.key = key or (epoch,)
        if self.rows is not None:
            self.rows.set_epoch(epoch)

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches of row indices."""
        rng = np.random.default_rng([self.seed, *self.key])
        if self.rows is None:  # one process: the rows in a seeded order
            return train_batches(self.lengths, self.batch_size, rng, self.bucket)
        order = np.fromiter(iter(self.rows), dtype=np.int64, count=len(self.rows))
        if not self.bucket:
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return group_by_length(order, self.lengths, self.batch_size, rng)

    def __iter__(self):  # noqa: ANN204 - a Sampler's iterator of index lists
        return (b.tolist() for b in self.batches())

    def __len__(self) -> int:
        n = len(self.rows) if self.rows is not None else len(self.lengths)
        return -(-n // self.batch_size)


def eval_batches(lengths: np.ndarray, batch_size: int, bucket: bool = True) -> list[np.ndarray]:
    """Inference batches: rows sorted by length (stable) when `bucket`, else in order."""
    order = np.argsort(lengths, kind="stable") if bucket else np.arange(len(lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
