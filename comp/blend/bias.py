"""Per-class biases for label metrics (macro-F1 and its kin), fitted on out-of-fold rows.

The argmax of calibrated probabilities maximises accuracy, not macro-F1: a rare class is worth
as much as a common one to macro-F1, so it pays to predict it more often. `ClassBias` wraps any
blender and adds one log-space bias per class, chosen by coordinate ascent on the competition
metric over the blend's own predictions of the rows it was fitted on:

    p'(c | x) = softmax(log p(c | x) + b_c)

It is an estimator like the blenders (comp.blend), so comp.blend.ensemble's nested loop clones and
fits the whole thing per fold: the reported CV of a biased blend comes from biases fitted without
the scored fold's rows, and test rows see only the biases fitted on the OOF rows. The wrapped
blender is fitted on the same rows, so the biases are fitted on its in-sample blend; with a handful
of blend weights that is nearly the OOF, and the nested CV reports whatever optimism remains. Hand-
written because scikit-learn has no class-prior tuning for a multi-class metric
(TunedThresholdClassifierCV is binary and refits its estimator per threshold). """

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from comp.core.metrics import get_metric, ml_f1, score

EPS = 1e-7
GRID = np.linspace(-3.0, 3.0, 25)  # candidate moves of one class's log-bias per pass


def biased(proba: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """softmax(log proba + bias), row-wise."""
    z = np.log(np.clip(proba, EPS, None)) + bias
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_bias(proba: np.ndarray, y: np.ndarray, metric: str, passes: int = 3,
             grid: np.ndarray = GRID) -> np.ndarray:
    """Per-class log-biases that maximise (or minimise) `metric` of the biased argmax.

    Coordinate ascent: each pass tries, for each class in turn, every move of its bias on
    `grid / (pass + 1)` and keeps the best (ties keep the smaller move); it stops when a pass
    changes nothing. Bias 0 for every class is the starting point, so the result never scores
    worse than the plain argmax on these rows.
    """
    m = get_metric(metric)
    sign = 1.0 if m.greater_is_better else -1.0
    n_classes = proba.shape[1]
    logp = np.log(np.clip(proba, EPS, None))
    bias = np.zeros(n_classes)

    # macro/weighted F1 of one-hot rows from per-label counts (comp.core.metrics.ml_f1, the
    # registry's definitions): scikit-learn is too slow for the thousands of candidates tried
    counted = {"macro_f1": "macro", "weighted_f1": "weighted"}.get(metric)
    y_onehot = np.eye(n_classes, dtype=np.int64)[np.asarray(y, dtype=np.int64)]

    def value(b: np.ndarray) -> float:
        # label metrics read only the argmax: one-hot rows are the cheapest valid input
        onehot = np.eye(n_classes, dtype=np.int64)[(logp + b).argmax(1)]
        if counted is not None:
            return sign * ml_f1(y_onehot, onehot, counted)
        return sign * score(metric, y, onehot)

    best = value(bias)
    for p in range(passes):
        moved = False
        for c in range(n_classes):
            best_b = bias[c]
            for step in sorted(grid / (p + 1), key=abs):
                if step == 0:
                    continue
                trial = bias.copy()
                trial[c] = bias[c] + step
                v = value(trial)
                if v > best + 1e-12:
                    best, best_b = v, trial[c]
            if best_b != bias[c]:
                bias[c], moved = best_b, True
        if not moved:
            break
    return bias - bias.mean()  # softmax is shift-invariant: a readable, centred vector


class ClassBias(ClassifierMixin, BaseEstimator):
    """A blender followed by per-class biases fitted to a label metric (see module doc).

    Fitted attributes: `blender_` (the fitted blender), `bias_` (C,). Attributes of the fitted
    blender (`weights_`, `member_importance`...) are reachable through the wrapper.
    """

    def __init__(self, blender: BaseEstimator | None = None, metric: str = "macro_f1"):
        self.blender = blender
        self.metric = metric

    def fit(self, X: np.ndarray, y: np.ndarray) -> ClassBias:
        self.blender_ = clone(self.blender).fit(X, y)
        self.classes_ = getattr(self.blender_, "classes_", np.arange(X.shape[-1]))
        self.bias_ = fit_bias(self.blender_.predict_proba(X), np.asarray(y), self.metric)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "bias_")
        return biased(self.blender_.predict_proba(X), self.bias_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def __getattr__(self, name: str) -> Any:
        # the fitted blender's attributes (weights_, member_importance, meta...), never during
        # unpickling or cloning, when __dict__ is not there yet
        if name.startswith("__") or name in ("blender_", "blender", "metric"):
            raise AttributeError(name)
        inner = self.__dict__.get("blender_")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


def bias_applies(metric: str) -> bool:
    """Whether per-class biases can change `metric`: metrics of the argmax other than
    accuracy (which calibrated probabilities already maximise) and micro-F1 (= accuracy)."""
    m = get_metric(metric)
    return m.on_labels and metric not in ("accuracy", "micro_f1")
