"""Training around suspect labels, fold-honestly (`data.suspects = "drop" | "weight"`).

    ctx = treat_suspects(ctx)   # fold k's training rows without (or down-weighted) suspects

Fold k's suspects are found among its training rows only, by models that never see fold k's
labels: an inner stratified CV on the training part with a char TF-IDF logistic regression gives
every training row an out-of-fold probability, and cleanlab scores the given labels under them
(`cleanlab.rank.get_label_quality_scores`, self-confidence). The suspects are the rows
`cleanlab.filter.find_label_issues` flags, or with `data.suspect_frac` that share of the
training rows with the lowest quality. `drop` removes them from the fold's training part;
`weight` multiplies their loss by their label quality. Validation rows are always scored with
their given labels, so the CV stays comparable with `keep`. Multi-label tasks: one LR per label
in the inner CV, label sets scored by `cleanlab.multilabel_classification`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from comp.core.utils import CompError, log

INNER_FOLDS = 3


_MEMO: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # members of one run share fold k's answer


def inner_quality(texts: list[str], labels: np.ndarray, n_classes: int, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(quality, flagged) of each row's label from an inner CV on these rows alone (the same
    rows, labels and seed give the same answer: computed once per process)."""
    from comp.core.utils import sha1_of

    key = sha1_of([*texts, labels.tobytes().hex(), str(n_classes), str(seed)])
    if key not in _MEMO:
        if len(_MEMO) > 32:
            _MEMO.clear()
        _MEMO[key] = _inner_quality(texts, labels, n_classes, seed)
    quality, flagged = _MEMO[key]
    return quality.copy(), flagged.copy()


def _inner_features(texts: list[str]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True,
                           dtype=np.float32).fit_transform(texts)


def _inner_multilabel(texts: list[str], labels: np.ndarray, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(quality, flagged) of each row's label set: one LR per label in an inner CV, scored by
    cleanlab.multilabel_classification."""
    from cleanlab.multilabel_classification import filter as mfilter
    from cleanlab.multilabel_classification import rank as mrank
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    n, L = labels.shape
    if n < 2 * INNER_FOLDS:
        return np.ones(n), np.zeros(n, dtype=bool)
    X = _inner_features(texts)
    oof = np.zeros((n, L))
    for fit, held in KFold(INNER_FOLDS, shuffle=True, random_state=seed).split(X):
        for j in range(L):
            y = labels[fit, j]
            if y.min() == y.max():  # a label always (or never) on in this part: its rate
                oof[held, j] = float(y[0])
                continue
            m = LogisticRegression(C=4.0, max_iter=2000).fit(X[fit], y)
            oof[held, j] = m.predict_proba(X[held])[:, 1]
    oof = np.clip(oof, 1e-6, 1 - 1e-6)
    sets = [list(np.flatnonzero(row)) for row in labels]
    quality = mrank.get_label_quality_scores(sets, oof)
    flagged = mfilter.find_label_issues(labels=sets, pred_probs=oof)
    return np.asarray(quality, dtype=float), np.asarray(flagged, dtype=bool)


def _inner_quality(texts: list[str], labels: np.ndarray, n_classes: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    if labels.ndim == 2:
        return _inner_multilabel(texts, labels, seed)
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=n_classes)
    inner = int(min(INNER_FOLDS, counts[counts > 0].min())) if counts.any() else 0
    if inner < 2:
        return np.ones(len(labels)), np.zeros(len(labels), dtype=bool)
    X = _inner_features(texts)
    oof = np.zeros((len(labels), n_classes))
    split = StratifiedKFold(inner, shuffle=True, random_state=seed)
    for fit, held in split.split(X, labels):
        model = LogisticRegression(C=4.0, max_iter=2000).fit(X[fit], labels[fit])
        oof[np.ix_(held, model.classes_)] = model.predict_proba(X[held])
    oof = np.clip(oof, 1e-9, None)
    oof /= oof.sum(1, keepdims=True)
    present = np.flatnonzero(counts)  # cleanlab wants every class it is told of to appear
    remap = np.full(n_classes, -1)
    remap[present] = np.arange(len(present))
    y, p = remap[labels], oof[:, present] / oof[:, present].sum(1, keepdims=True)
    quality = get_label_quality_scores(y, p)
    flagged = find_label_issues(y, p, filter_by="prune_by_noise_rate")
    return quality, flagged


def treat_suspects(ctx: Any) -> Any:
    """Fold `ctx` with its training part's suspect labels dropped or down-weighted (see the
    module doc); unchanged with data.suspects = "keep"."""
    cfg = ctx.recipe.data
    if cfg.suspects == "keep":
        return ctx
    comp = ctx.comp
    if cfg.suspects == "drop" and ctx.predict_train:
        raise CompError("recipe key 'data.suspects': 'drop' leaves some training rows "
                        "unpredicted, which train.predict_train needs; use 'weight'")
    idx = ctx.train_idx
    quality, flagged = inner_quality([comp.train_texts[i] for i in idx], comp.labels[idx],
                                     comp.n_classes, ctx.recipe.train.seed + ctx.fold)
    if cfg.suspect_frac > 0:
        n = int(round(cfg.suspect_frac * len(idx)))
        flagged = np.zeros(len(idx), dtype=bool)
        flagged[np.argsort(quality, kind="stable")[:n]] = True
    log(f"{ctx.recipe.name} fold {ctx.fold}: {int(flagged.sum())} of {len(idx)} training "
        f"labels suspect (inner {INNER_FOLDS}-fold CV on the training part, cleanlab): "
        + ("dropped" if cfg.suspects == "drop" else "weighted by their label quality"))
    if cfg.suspects == "drop":
        return dataclasses.replace(ctx, train_idx=idx[~flagged])
    weights = np.where(flagged, quality, 1.0).astype(np.float32)
    return dataclasses.replace(ctx, train_weights=weights)
