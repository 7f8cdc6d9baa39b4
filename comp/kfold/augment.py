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
from comp.kfold.extra import ExtraRows, extra_for_fold, join_extra


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
    weights = (ctx.train_weights[src] if ctx.train_weights is not None
               else np.ones(len(src), np.float32))
    labels = comp.labels[idx[src]]
    aug = ExtraRows(texts, comp.shape.targets(labels, comp.n_classes), weights,
                    f"train.augment={cfg.augment}", np.full(len(texts), ctx.fold),
                    ctx.extra.folds_hash, labels if comp.multilabel else None)
    aug, _ = extra_for_fold(aug, ctx.val_texts)  # a copy reading as a validation text: out
    if not len(aug):
        return ctx
    log(f"{ctx.recipe.name} fold {ctx.fold}: {len(aug)} augmented cop(ies) of "
        f"{len(idx)} training rows ({cfg.augment}, rate {cfg.augment_rate:g})")
    return dataclasses.replace(ctx, extra=join_extra(ctx.extra, aug))
