"""What a fold trains on besides its own rows, decided inside the fold: perturbed copies of its
training rows (train.augment) and, after data.normalize, the guard that no training row reads
as a validation row.

Both see the fold's training part only, so validation rows never meet their own labels:
augmented copies are made from training rows and dropped where one reads as a validation text,
and a training row that data.normalize made equal to a validation text leaves the training part.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from comp.core.utils import log
from comp.data.folds import normalize_text
from comp.data.perturb import augment
from comp.kfold.extra import ExtraRows


def drop_val_copies(ctx: Any) -> Any:
    """Fold `ctx` without the training rows that read as one of its validation texts (the fold
    table groups raw texts; data.normalize may make two of them equal); unchanged without."""
    if not ctx.recipe.data.normalize:
        return ctx
    val = {normalize_text(t) for t in ctx.val_texts}
    keep = np.array([normalize_text(t) not in val for t in ctx.train_texts], dtype=bool)
    if keep.all():
        return ctx
    log(f"{ctx.recipe.name} fold {ctx.fold}: {int((~keep).sum())} training row(s) read as a "
        "validation text after data.normalize; left out of the training part")
    weights = ctx.train_weights[keep] if ctx.train_weights is not None else None
    return dataclasses.replace(ctx, train_idx=ctx.train_idx[keep], train_weights=weights)


def augment_fold(ctx: Any) -> Any:
    """Fold `ctx` with train.augment's perturbed copies of its training rows joined to its extra
    rows (for this fold only, carrying their originals' labels and weights); unchanged without.
    """
    cfg = ctx.recipe.train
    if not cfg.augment or cfg.augment_rate <= 0:
        return ctx
    comp, idx = ctx.comp, ctx.train_idx
    src, texts = augment(ctx.train_texts, cfg.augment, cfg.augment_rate,
                         cfg.seed + 1000 * ctx.fold, pair=comp.shape.pair)
    val = {normalize_text(t) for t in ctx.val_texts}
    keep = [k for k, t in enumerate(texts) if normalize_text(t) not in val]
    src, texts = [src[k] for k in keep], [texts[k] for k in keep]
    if not texts:
        return ctx
    rows = idx[src]
    weights = (ctx.train_weights[src] if ctx.train_weights is not None
               else np.ones(len(src), np.float32))
    labels = comp.labels[rows]
    aug = ExtraRows(texts, comp.shape.targets(labels, comp.n_classes), weights,
                    f"train.augment={cfg.augment}", np.full(len(texts), ctx.fold),
                    ctx.extra.folds_hash, labels if comp.multilabel else None)
    log(f"{ctx.recipe.name} fold {ctx.fold}: {len(texts)} augmented cop(ies) of "
        f"{len(idx)} training rows ({cfg.augment}, rate {cfg.augment_rate:g})")
    return dataclasses.replace(ctx, extra=join_extra(ctx.extra, aug))


def join_extra(a: ExtraRows, b: ExtraRows) -> ExtraRows:
    """Rows of a, then b (b's `folds` and `labels` kept where a has none of its own)."""
    if not len(a):
        return b
    n = a.targets.shape[1]
    folds = (np.concatenate([a.folds if a.folds is not None else np.full(len(a), -1),
                             b.folds if b.folds is not None else np.full(len(b), -1)]))
    labels = None
    if a.labels is not None or b.labels is not None:
        labels = np.concatenate([a.labels if a.labels is not None else (a.targets >= 0.5),
                                 b.labels if b.labels is not None else (b.targets >= 0.5)]
                                ).astype(np.int64)
    return ExtraRows([*a.texts, *b.texts], np.concatenate([a.targets, b.targets.reshape(-1, n)]),
                     np.concatenate([a.weights, b.weights]).astype(np.float32),
                     f"{a.source}+{b.source}", folds, a.folds_hash or b.folds_hash, labels)
