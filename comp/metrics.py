"""Metrics on class probabilities: accuracy, macro-F1, log-loss, AUC."""

from __future__ import annotations

import numpy as np

from comp.utils import CompError

METRICS = ("accuracy", "macro_f1", "logloss", "auc")


def greater_is_better(metric: str) -> bool:
    """False for losses (log-loss), True for scores."""
    return metric != "logloss"


def score(metric: str, y: np.ndarray, proba: np.ndarray) -> float:
    """Score probabilities (n, C) against int labels (n,).

    Args:
        metric: accuracy | macro_f1 | logloss | auc (binary: positive = class 1; else macro OvR).
        y: (n,) int class indices.
        proba: (n, C) probabilities.

    Returns:
        The metric value.
    """
    from sklearn import metrics as skm

    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = proba.shape[1]
    if metric == "accuracy":
        return float((proba.argmax(1) == y).mean())
    if metric == "macro_f1":
        return float(skm.f1_score(y, proba.argmax(1), average="macro",
                                  labels=np.arange(n_classes), zero_division=0))
    if metric == "logloss":
        p = np.clip(proba, 1e-15, 1.0)
        p = p / p.sum(1, keepdims=True)
        return float(-np.log(p[np.arange(len(y)), y]).mean())
    if metric == "auc":
        if n_classes == 2:
            return float(skm.roc_auc_score(y, proba[:, 1]))
        present = np.unique(y)
        p = proba[:, present] / proba[:, present].sum(1, keepdims=True)
        return float(skm.roc_auc_score(y, p, multi_class="ovr", labels=present))
    raise CompError(f"unknown metric '{metric}' (known: {', '.join(METRICS)})")


def is_better(metric: str, a: float, b: float) -> bool:
    """True if score a beats score b under this metric."""
    return a > b if greater_is_better(metric) else a < b
