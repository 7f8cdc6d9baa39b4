"""The metric registry: every metric config, the CLI, members, tuning and ensembles can name.

Each metric is a function of int class indices y (n,) and probabilities (n, C), with a flag
saying whether greater is better. Label metrics (accuracy, F1s, MCC, QWK) only look at the
argmax, and `label_metric` computes them on labels of any type, so a CV score (`score`) and a
hidden score of a submission file (comp.submit.label_scores) are one function.

Conventions, the same for CV folds, OOF and hidden scores:
- macro_f1 / weighted_f1 average over the classes present in the truth: a class that is absent
  from the rows scored adds no zero (a fold without a rare class is not penalised for it).
- auc is binary AUC (positive = class 1) for two classes, else one-vs-rest macro AUC over the
  classes present in the truth, on the probabilities renormalised over those classes. Rows
  holding a single class leave AUC undefined: `score` returns NaN and logs why, once.
- logloss only reads the probability of each row's true class, so absent classes are fine.
- qwk (quadratic weighted kappa) takes the class order as ordinal (numeric labels sort as
  numbers); when truth and predictions hold a single class it is 1.0 if they agree, else 0.0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from comp.utils import CompError, log


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
        y: (n,) int class indices.
        proba: (n, C) probabilities.

    Returns:
        The metric value (NaN for AUC on rows of one class).
    """
    m = get_metric(metric)
    y = np.asarray(y, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or len(proba) != len(y):
        raise CompError(f"metric {metric}: probabilities of shape {proba.shape} for "
                        f"{len(y)} labels")
    if len(y) == 0:
        raise CompError(f"metric {metric}: no rows to score")
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
    p = np.clip(proba, 1e-15, 1.0)
    p = p / p.sum(1, keepdims=True)
    return float(-np.log(p[np.arange(len(y)), y]).mean())


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
