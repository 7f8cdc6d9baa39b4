"""The metric registry: every metric config, the CLI, members, tuning and ensembles can name.

Each metric is a function of int class indices y (n,) and probabilities (n, C), with a flag
saying whether greater is better. Label metrics (accuracy, F1s, MCC, QWK) only look at the
argmax, and `label_metric` computes them on labels of any type, so a CV score (`score`) and a
hidden score of a submission file (comp.blend.submit.label_scores) are one function.

Conventions, the same for CV folds, OOF and hidden scores:
- macro_f1 / weighted_f1 average over the classes present in the truth: a class that is absent
  from the rows scored adds no zero (a fold without a rare class is not penalised for it).
- auc is binary AUC (positive = class 1) for two classes, else one-vs-rest macro AUC over the
  classes present in the truth, on the probabilities renormalised over those classes. Rows
  holding a single class leave AUC undefined: `score` returns NaN and logs why, once.
- logloss only reads the probability of each row's true class, so absent classes are fine.
- qwk (quadratic weighted kappa) takes the class order as ordinal (numeric labels sort as
  numbers); when truth and predictions hold a single class it is 1.0 if they agree, else 0.0.

Multi-label tasks: `score` sees a 2-D y (n, L) of 0/1 and (n, L) independent probabilities, and
computes the metric's multi-label form (`register_multilabel`). Label metrics threshold the
probabilities at 0.5 (comp.tasks.thresholds fits per-label thresholds and scores 0/1 decisions, on
which 0.5 changes nothing): micro_f1 / macro_f1 / weighted_f1 / samples_f1 are sklearn's F1
averages over the label columns (computed from counts, `ml_f1`: sklearn's is too slow to call
thousands of times) (macro over the labels with a positive in the truth, as for
classes), accuracy is the exact-match ratio. auc is the macro ROC AUC over the labels whose
column holds both values, logloss the mean binary log-loss over every cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from comp.core.utils import CompError, log


@dataclass(frozen=True)
class Metric:
    """A registered metric: its name, direction, and how it is computed."""

    name: str
    greater_is_better: bool
    fn: Callable[[np.ndarray, np.ndarray], float]  # (y (n,), proba (n, C)) -> value
    on_labels: bool  # True: a function of the argmax only (label_metric computes it too)
    help: str


METRICS: dict[str, Metric] = {}
_LABEL_FNS: dict[str, Callable[[np.ndarray, np.ndarray, list[Any]], float]] = {}
# multi-label forms: (y (n, L) 0/1, proba (n, L)) -> value; metrics without one refuse a matrix
_MULTILABEL_FNS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {}


def register_metric(name: str, greater_is_better: bool, help: str) -> Callable:
    """Register a probability metric `fn(y, proba) -> float` under `name`."""

    def deco(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable:
        METRICS[name] = Metric(name, greater_is_better, fn, False, help)
        return fn

    return deco


def register_label_metric(name: str, greater_is_better: bool, help: str) -> Callable:
    """Register a label metric `fn(truth, pred, order) -> float` (order: the class order)."""

    def deco(fn: Callable[[np.ndarray, np.ndarray, list[Any]], float]) -> Callable:
        def on_proba(y: np.ndarray, proba: np.ndarray) -> float:
            return fn(y, proba.argmax(1), list(range(proba.shape[1])))

        _LABEL_FNS[name] = fn
        METRICS[name] = Metric(name, greater_is_better, on_proba, True, help)
        return fn

    return deco


def register_multilabel(name: str) -> Callable:
    """Register the multi-label form `fn(y (n, L), proba (n, L)) -> float` of metric `name`."""

    def deco(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable:
        _MULTILABEL_FNS[name] = fn
        return fn

    return deco


def multilabel_metric_names() -> tuple[str, ...]:
    """The metrics defined for multi-label tasks."""
    return tuple(m for m in METRICS if m in _MULTILABEL_FNS)


def is_label_metric(metric: str) -> bool:
    """True when the metric reads decisions only (thresholds change it), not probabilities."""
    return get_metric(metric).on_labels


def metric_names() -> tuple[str, ...]:
    """Every registered metric name, in registration order."""
    return tuple(METRICS)


def get_metric(name: str) -> Metric:
    """The registered metric; an unknown name is a one-line CompError listing the known ones."""
    if name not in METRICS:
        raise CompError(f"unknown metric '{name}' (known: {', '.join(METRICS)})")
    return METRICS[name]


def greater_is_better(metric: str) -> bool:
    """False for losses (log-loss), True for scores."""
    return get_metric(metric).greater_is_better


def is_better(metric: str, a: float, b: float) -> bool:
    """True if score a beats score b under this metric; a NaN (undefined) score never beats a
    number, and any number beats it."""
    if a != a:
        return False
    if b != b:
        return True
    return a > b if greater_is_better(metric) else a < b


def score(metric: str, y: np.ndarray, proba: np.ndarray) -> float:
    """Score probabilities (n, C) against int labels (n,).

    Args:
        metric: a registered name (see `metric_names`).
        y: (n,) int class indices; multi-label: (n, L) 0/1.
        proba: (n, C) probabilities; multi-label: (n, L), one probability per label.

    Returns:
        The metric value (NaN for AUC on rows of one class).
    """
    m = get_metric(metric)
    y = np.asarray(y, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or len(proba) != len(y) or (y.ndim == 2 and y.shape != proba.shape):
        raise CompError(f"metric {metric}: probabilities of shape {proba.shape} for "
                        f"labels of shape {y.shape}")
    if len(y) == 0:
        raise CompError(f"metric {metric}: no rows to score")
    if y.ndim == 2:
        if metric not in _MULTILABEL_FNS:
            raise CompError(f"metric {metric}: not defined for a multilabel task (use one of "
                            f"{', '.join(multilabel_metric_names())})")
        return float(_MULTILABEL_FNS[metric](y, proba))
    return float(m.fn(y, proba))


def label_metric(metric: str, truth: Sequence[Any], pred: Sequence[Any],
                 order: Sequence[Any] | None = None) -> float:
    """A label metric on labels of any type (e.g. a submission's label column).

    Args:
        metric: a registered label metric (accuracy, macro_f1, weighted_f1, micro_f1, mcc, qwk).
        truth: (n,) true labels.
        pred: (n,) predicted labels.
        order: the class order (qwk reads it as ordinal); default: the sorted labels seen.

    Returns:
        The metric value; `score` on one-hot probabilities gives the same number.
    """
    if metric not in _LABEL_FNS:
        get_metric(metric)  # unknown names get the usual error
        raise CompError(f"metric {metric}: needs probabilities, not labels")
    truth, pred = np.asarray(truth), np.asarray(pred)
    if order is None:
        order = sorted(set(truth.tolist()) | set(pred.tolist()))
    return float(_LABEL_FNS[metric](truth, pred, list(order)))


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        log(f"warning: {msg}")


# ---------------------------------------------------------------------------------------------
# the metrics


@register_label_metric("accuracy", True, "share of rows whose argmax is the true class")
def _accuracy(truth: np.ndarray, pred: np.ndarray, order: list[Any]) -> float:
    return float(np.mean(truth == pred))


def _present(truth: np.ndarray, order: list[Any]) -> list[Any]:
    seen = set(truth.tolist())
    return [c for c in order if c in seen]


@register_label_metric("macro_f1", True, "F1 averaged over the classes present in the truth")
def _macro_f1(truth: np.ndarray, pred: np.ndarray, order: list[Any]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, average="macro", labels=_present(truth, order),
                          zero_division=0))


@register_label_metric("weighted_f1", True, "F1 per class weighted by its share of the truth")
def _weighted_f1(truth: np.ndarray, pred: np.ndarray, order: list[Any]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, average="weighted", labels=_present(truth, order),
                          zero_division=0))


@register_label_metric("micro_f1", True, "F1 of all decisions pooled (= accuracy, one label "
                       "per row)")
def _micro_f1(truth: np.ndarray, pred: np.ndarray, order: list[Any]) -> float:
    from sklearn.metrics import f1_score

    labels = [c for c in order if c in set(truth.tolist()) | set(pred.tolist())]
    return float(f1_score(truth, pred, average="micro", labels=labels, zero_division=0))


@register_label_metric("mcc", True, "Matthews correlation coefficient (multi-class form)")
def _mcc(truth: np.ndarray, pred: np.ndarray, order: list[Any]) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(truth, pred))


@register_label_metric("qwk", True, "quadratic weighted kappa; classes in order are ordinal")
def _qwk(truth: np.ndarray, pred: np.ndarray, order: list[Any]) -> float:
    from sklearn.metrics import cohen_kappa_score

    if len(set(truth.tolist()) | set(pred.tolist())) < 2:  # kappa is 0/0: agree or not
        return float(np.all(truth == pred))
    return float(cohen_kappa_score(truth, pred, labels=order, weights="quadratic"))


@register_metric("logloss", False, "mean negative log-probability of the true class")
def _logloss(y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    if np.isnan(proba).any():  # a diverged member scores NaN (never best), not an error
        return float("nan")
    # sklearn clips at float64's eps (2.2e-16), neither renormalises nor accepts values outside
    # [0, 1]: clip at 1e-15 and renormalise first, so a zero probability costs -log(1e-15)
    p = np.clip(proba, 1e-15, 1.0)
    return float(log_loss(y, p / p.sum(1, keepdims=True), labels=np.arange(proba.shape[1])))


@register_metric("auc", True, "ROC AUC: binary, or one-vs-rest macro over the present classes")
def _auc(y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    present = np.unique(y)
    if len(present) < 2:
        _warn_once(f"auc is undefined on rows that all hold class #{present[0]} (e.g. a fold "
                   "of a rare class); scored as NaN")
        return float("nan")
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    p = proba[:, present]
    s = p.sum(1, keepdims=True)
    # rows giving the present classes no mass carry no ranking information: uniform
    p = np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / len(present))
    if len(present) == 2:  # sklearn reads a 2-class truth as binary: score the second class
        return float(roc_auc_score(y == present[1], p[:, 1]))
    return float(roc_auc_score(y, p, multi_class="ovr", labels=present))


@register_label_metric("samples_f1", True, "multi-label: F1 of each row's label set, averaged "
                       "over rows (one label per row: accuracy)")
def _samples_f1(truth: np.ndarray, pred: np.ndarray, order: list[Any]) -> float:
    return float(np.mean(truth == pred))  # a single-label row's set F1 is 1 or 0


# ---------------------------------------------------------------------------------------------
# multi-label forms: y (n, L) 0/1, proba (n, L); label metrics at the 0.5 cut


def _decisions(proba: np.ndarray) -> np.ndarray:
    return (proba >= 0.5).astype(np.int64)


def _ml_f1(average: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def fn(y: np.ndarray, proba: np.ndarray) -> float:
        return ml_f1(y, _decisions(proba), average)

    return fn


def ml_f1(y: np.ndarray, pred: np.ndarray, average: str) -> float:
    """sklearn's multi-label f1_score (zero_division=0) from per-label counts.

    sklearn's own takes ~25 ms a call on a few hundred rows, and threshold fitting and hill
    climbing call it thousands of times; tests/test_multilabel.py checks the two agree. macro
    and weighted average over the labels with a positive in the truth (as for classes).
    """
    y, pred = y.astype(bool), pred.astype(bool)
    if average == "samples":  # per row: 2|y&p| / (|y| + |p|), 0 when both are empty
        tp, tot = (y & pred).sum(1), y.sum(1) + pred.sum(1)
        return float(np.mean(np.where(tot > 0, 2 * tp / np.maximum(tot, 1), 0.0)))
    tp = (y & pred).sum(0).astype(np.float64)  # (L,)
    tot = y.sum(0) + pred.sum(0)
    if average == "micro":
        return float(2 * tp.sum() / tot.sum()) if tot.sum() else 0.0
    f1 = np.where(tot > 0, 2 * tp / np.maximum(tot, 1), 0.0)
    support = y.sum(0)
    keep = support > 0
    if not keep.any():
        return float(not pred.any())
    if average == "macro":
        return float(f1[keep].mean())
    return float(np.average(f1[keep], weights=support[keep]))  # weighted


for _avg in ("micro", "macro", "weighted", "samples"):
    register_multilabel(f"{_avg}_f1")(_ml_f1(_avg))


@register_multilabel("accuracy")
def _ml_accuracy(y: np.ndarray, proba: np.ndarray) -> float:
    return float(np.mean((_decisions(proba) == y).all(1)))  # exact match of the label set


@register_multilabel("logloss")
def _ml_logloss(y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    if np.isnan(proba).any():
        return float("nan")
    # every cell is one binary prediction; clipped at 1e-15 as the single-label form
    p = np.clip(proba, 1e-15, 1 - 1e-15)
    return float(log_loss(y.ravel(), p.ravel(), labels=[0, 1]))


@register_multilabel("auc")
def _ml_auc(y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    both = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    if not both:
        _warn_once("auc is undefined on rows where no label column holds both values; scored "
                   "as NaN")
        return float("nan")
    return float(np.mean([roc_auc_score(y[:, j], proba[:, j]) for j in both]))
