"""Blenders and stackers: scikit-learn estimators over the members' probabilities.

Every blender takes a 3-D X of probabilities (n_rows, n_members, C) and class indices y, and
follows the estimator protocol: `__init__` only stores its arguments, `fit` returns self,
fitted attributes end in `_`, and `clone` gives an unfitted copy. That is what lets
comp.blend.ensemble measure every method with the same honest fold loop. Register a new one with
`@register_blender("name")`; `create_blender(name, **params)` builds it.

Multi-label tasks: y is (n_rows, L) 0/1 and X holds each member's L independent label
probabilities (rows do not sum to 1). Blenders learn that from the 2-D y in `fit`
(`multilabel_`): nothing is renormalised, weights minimise the mean binary log-loss, hill
climbing scores the metric with each label cut at its best threshold on the fit rows
(comp.tasks.thresholds.tuned_score), and the stack fits one logistic regression per
label on the members' probabilities of that label.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from comp.core.metrics import greater_is_better, score
from comp.core.utils import CompError, progress

EPS = 1e-7

# ---------------------------------------------------------------------------------------------
# objectives (comp.core.metrics owns the definitions)


def _loss(metric: str, y: np.ndarray, proba: np.ndarray) -> float:
    """The metric turned into something to minimise."""
    s = score(metric, y, proba)
    if np.isnan(s):  # undefined on these rows (AUC of one class): nothing to prefer
        return np.inf
    return -s if greater_is_better(metric) else s


def _logloss(y: np.ndarray, proba: np.ndarray) -> float:
    # Used as the smooth objective and as a tie-breaker for flat metrics like accuracy.
    if y.ndim == 2:  # multi-label: mean binary log-loss over every cell
        p = np.clip(proba, EPS, 1 - EPS)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], EPS, None))))


# ---------------------------------------------------------------------------------------------
# blenders: a registry of estimators over X (n_rows, n_members, C)

BLENDERS: dict[str, type] = {}


def register_blender(name: str) -> Callable[[type], type]:
    """Register a blender/stacker class under `name` (used by `create_blender`)."""

    def deco(cls: type) -> type:
        BLENDERS[name] = cls
        return cls

    return deco


def blender_params(name: str) -> dict[str, Any]:
    """A registered blender's parameters with their defaults ({} for an unknown name)."""
    cls = BLENDERS.get(name)
    return cls().get_params() if cls is not None else {}


def create_blender(name: str, **kwargs: Any) -> BaseEstimator:
    """Build a registered blender; unknown names and parameters are one-line errors."""
    if name not in BLENDERS:
        known = ", ".join(sorted(BLENDERS))
        raise CompError(f"ensemble method '{name}': unknown (known: {known})")
    cls = BLENDERS[name]
    valid = blender_params(name)
    for k in kwargs:
        if k not in valid:
            raise CompError(f"ensemble method '{name}': unknown parameter '{k}' "
                            f"(known: {', '.join(sorted(valid)) or 'none'})")
    return cls(**kwargs)


class _Blender(ClassifierMixin, BaseEstimator):
    """Shared plumbing: input checks, class bookkeeping, argmax predict."""

    # Blenders that never look at labels give honest CV without a fold loop.
    needs_labels = True

    def _validate(self, X: Any, fitting: bool) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 3:
            raise CompError(f"blender input must be (rows, members, classes), got shape {X.shape}")
        if fitting:
            self.n_members_, self.n_classes_ = int(X.shape[1]), int(X.shape[2])
            self.classes_ = np.arange(self.n_classes_)
        else:
            check_is_fitted(self)
            if X.shape[1:] != (self.n_members_, self.n_classes_):
                raise CompError(f"blender fitted on {self.n_members_} members x "
                                f"{self.n_classes_} classes, got {X.shape[1:]}")
        return X

    def _set_task(self, y: Any) -> None:
        """multilabel_: a 2-D y (rows, L) of 0/1 makes the columns independent labels."""
        self.multilabel_ = y is not None and np.ndim(y) == 2

    def predict(self, X: Any) -> np.ndarray:
        """Class indices (argmax of `predict_proba`); multi-label: 0/1 at 0.5."""
        p = self.predict_proba(X)
        return (p >= 0.5).astype(np.int64) if getattr(self, "multilabel_", False) else p.argmax(1)


class _EqualWeights(_Blender):
    """A blender with nothing to learn: every member weighs the same."""

    needs_labels = False

    def fit(self, X: Any, y: Any = None) -> _EqualWeights:
        """Record the shapes and equal weights_; labels are ignored."""
        X = self._validate(X, fitting=True)
        self._set_task(y)
        self.weights_ = np.full(self.n_members_, 1.0 / self.n_members_)
        return self


@register_blender("mean")
class MeanBlender(_EqualWeights):
    """Plain average of the members' probabilities."""

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, C) mean of the members."""
        return self._validate(X, fitting=False).mean(1)


@register_blender("rank")
class RankBlender(_EqualWeights):
    """Average of per-class ranks, mapped back onto the mean blend's probability values.

    Ranks are taken within the rows passed to `predict_proba`, which makes members with very
    different calibration comparable (useful for AUC). The averaged ranks only order the rows;
    each class's column then gets the mean blend's own values of that class in that order
    (a quantile mapping), so the cut between classes stays where the probabilities put it. A
    raw rank average cuts a binary task at the median row: on 10 %-positive data that called
    half the rows positive.
    """

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, C) the mean blend's values of each class, reordered by the mean rank."""
        X = self._validate(X, fitting=False)
        mean = X.mean(1)  # (n, C)
        if X.shape[0] == 1:
            return mean
        r = rankdata(X, axis=0).mean(1)  # (n, C) mean rank of each row per class
        p = np.empty_like(mean)
        for c in range(self.n_classes_):
            # the row with the j-th smallest mean rank gets the j-th smallest mean probability;
            # rows tied in rank share their values' average, so equal inputs get equal outputs
            order = np.argsort(r[:, c], kind="stable")
            _, tie = np.unique(r[:, c], return_inverse=True)
            sums = np.bincount(tie[order], weights=np.sort(mean[:, c]))
            p[:, c] = (sums / np.bincount(tie))[tie]
        if getattr(self, "multilabel_", False):  # independent labels: no sum to keep
            return p
        s = p.sum(1, keepdims=True)
        return np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / self.n_classes_)


def _weighted(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.einsum("nmc,m->nc", X, w)  # (n, C)


@register_blender("weights")
class WeightBlender(_Blender):
    """Non-negative weights summing to 1, fitted on OOF rows.

    Log-loss is minimised with SLSQP on the simplex (smooth, with an exact gradient). For
    another metric the log-loss weights are then refined by Nelder-Mead over softmax-parametrised
    weights and kept only if they score better.
    """

    def __init__(self, metric: str = "logloss", maxiter: int = 200):
        self.metric = metric
        self.maxiter = maxiter

    def fit(self, X: Any, y: Any) -> WeightBlender:
        """Fit weights_ (n_members,) on probabilities X and class indices y."""
        X = self._validate(X, fitting=True)
        y = np.asarray(y, dtype=np.int64)
        self._set_task(y)
        M = self.n_members_
        if self.multilabel_:
            # each (row, label) cell is a binary decision: the probability of its true side
            yy = y[:, None, :]
            A = np.where(yy == 1, X, 1.0 - X).transpose(0, 2, 1).reshape(-1, M)  # (n*L, M)
        else:
            A = X[np.arange(len(y)), :, y]  # (n, M) probability each member gives the true class

        def f(w: np.ndarray) -> float:
            return float(-np.mean(np.log(np.clip(A @ w, EPS, None))))

        def g(w: np.ndarray) -> np.ndarray:
            return -(A / np.clip(A @ w, EPS, None)[:, None]).mean(0)

        w0 = np.full(M, 1.0 / M)
        res = minimize(f, w0, jac=g, method="SLSQP", bounds=[(0.0, 1.0)] * M,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                     "jac": lambda w: np.ones_like(w)}],
                       options={"maxiter": self.maxiter, "ftol": 1e-10})
        w = _simplex(res.x)
        # SLSQP can stop early on flat problems; never return worse than its start or one member.
        for cand in [w0] + [np.eye(M)[m] for m in range(M)]:
            if f(cand) < f(w) - 1e-12:
                w = cand
        if self.metric != "logloss":
            w = self._refine(X, y, w)
        self.weights_ = w
        return self

    def _refine(self, X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        def obj(z: np.ndarray) -> float:
            return _loss(self.metric, y, _weighted(X, _softmax(z)))

        z0 = np.log(w + 1e-4)
        res = minimize(obj, z0, method="Nelder-Mead",
                       options={"maxiter": self.maxiter * len(w), "xatol": 1e-4, "fatol": 1e-7})
        w_new = _softmax(res.x)
        return w_new if obj(res.x) < obj(z0) - 1e-12 else w

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, C) weighted average of the members."""
        return _weighted(self._validate(X, fitting=False), self.weights_)


def _simplex(w: np.ndarray) -> np.ndarray:
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    s = w.sum()
    return w / s if s > 0 else np.full(len(w), 1.0 / len(w))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


@register_blender("hill")
class HillClimbBlender(_Blender):
    """Caruana ensemble selection with replacement.

    Starts from the best member (or the top `start` members), then greedily adds whichever
    member most improves the metric of the running average, `n_iter` times; the best prefix of
    that path is kept, so in-sample it is never worse than the starting point. Ties on flat
    metrics (accuracy) are broken by log-loss.
    """

    def __init__(self, metric: str = "logloss", n_iter: int = 50, start: int | str = "best"):
        self.metric = metric
        self.n_iter = n_iter
        self.start = start

    def _key(self, y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
        if y.ndim == 2:  # multi-label: the metric once each label is cut at its best threshold
            from comp.tasks.thresholds import tuned_score

            s = tuned_score(y, p, self.metric)
            s = np.inf if np.isnan(s) else (-s if greater_is_better(self.metric) else s)
            return (s, _logloss(y, p))
        return (_loss(self.metric, y, p), _logloss(y, p))

    def fit(self, X: Any, y: Any) -> HillClimbBlender:
        """Fit weights_ = selection counts / total; history_ holds the in-sample path."""
        X = self._validate(X, fitting=True)
        y = np.asarray(y, dtype=np.int64)
        self._set_task(y)
        M = self.n_members_
        k = 1 if self.start == "best" else int(self.start)
        if not 1 <= k <= M:
            raise CompError(f"hill start={self.start!r}: must be 'best' or 1..{M}")
        order = sorted(range(M), key=lambda m: self._key(y, X[:, m]))
        counts = np.zeros(M, dtype=np.int64)
        counts[order[:k]] = 1
        running = X[:, order[:k]].sum(1)  # (n, C) sum of the selected members
        best_key = self._key(y, running / counts.sum())
        best_counts = counts.copy()
        self.start_members_ = [int(m) for m in order[:k]]
        self.history_ = [score(self.metric, y, running / counts.sum())]
        for _ in progress(range(self.n_iter), desc="hill climb"):
            total = counts.sum() + 1
            keys = [self._key(y, (running + X[:, m]) / total) for m in range(M)]
            j = min(range(M), key=lambda m: keys[m])
            counts[j] += 1
            running += X[:, j]
            self.history_.append(score(self.metric, y, running / counts.sum()))
            if keys[j] < best_key:
                best_key, best_counts = keys[j], counts.copy()
        self.counts_ = best_counts
        self.weights_ = best_counts / best_counts.sum()
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, C) count-weighted average of the members."""
        return _weighted(self._validate(X, fitting=False), self.weights_)


def _one_thread() -> Any:
    """Limit OpenMP/BLAS to one thread while a meta-model on (n, M*C) features runs.

    The model is tiny, and on a shared machine OpenMP spin-waiting made HistGradientBoosting
    ~9x slower than a single thread (8.8 s vs 0.9 s on 11k rows x 12 features).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


@register_blender("stack")
class StackEnsemble(_Blender):
    """A meta-model on the members' flattened OOF probabilities (n, M*C).

    meta: "lr" (multinomial logistic regression, inverse regularisation C), "ridge" (ridge
    regression on one-hot targets, alpha = 1/C, outputs clipped and renormalised) or "hgb"
    (histogram gradient boosting, small and regularised). use_logits feeds log-probabilities.
    """

    def __init__(self, meta: str = "lr", use_logits: bool = False, C: float = 1.0):
        self.meta = meta
        self.use_logits = use_logits
        self.C = C

    def _features(self, X: np.ndarray) -> np.ndarray:
        F = np.log(np.clip(X, EPS, None)) if self.use_logits else X
        return F.reshape(len(F), -1)  # (n, M*C)

    def _make_meta(self) -> BaseEstimator:
        if self.meta == "lr":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=self.C, max_iter=2000)
        if self.meta == "ridge":
            from sklearn.linear_model import Ridge

            return Ridge(alpha=1.0 / self.C)
        if self.meta == "hgb":
            from sklearn.ensemble import HistGradientBoostingClassifier

            return HistGradientBoostingClassifier(max_iter=150, learning_rate=0.05,
                                                  max_leaf_nodes=15, min_samples_leaf=40,
                                                  l2_regularization=1.0, early_stopping=False,
                                                  random_state=0)
        raise CompError(f"stack meta='{self.meta}': must be lr, ridge or hgb")

    def fit(self, X: Any, y: Any) -> StackEnsemble:
        """Fit the meta-model (meta_) on OOF probabilities X and class indices y."""
        X = self._validate(X, fitting=True)
        y = np.asarray(y, dtype=np.int64)
        self._set_task(y)
        if self.multilabel_:
            return self._fit_per_label(X, y)
        model = self._make_meta()
        F = self._features(X)
        self.seen_classes_ = np.unique(y)
        if len(self.seen_classes_) < 2:
            self.meta_ = None  # one class only: nothing to discriminate, predict its prior
        elif self.meta == "ridge":
            self.meta_ = model.fit(F, np.eye(self.n_classes_)[y])
        else:
            with _one_thread():
                self.meta_ = model.fit(F, y)
        return self

    def _fit_per_label(self, X: np.ndarray, Y: np.ndarray) -> StackEnsemble:
        """Multi-label: one meta-model per label on the members' probabilities of that label
        (n, M); a label constant in the fit rows predicts that value. meta "lr" and "hgb" fit
        classifiers, "ridge" a regression clipped to [0, 1]."""
        self.meta_ = []
        for j in range(Y.shape[1]):
            y = Y[:, j]
            if y.min() == y.max():
                self.meta_.append(float(y[0]))
                continue
            model = self._make_meta()
            with _one_thread():
                self.meta_.append(model.fit(self._features(X[:, :, j:j + 1]), y))
        return self

    def _predict_per_label(self, X: np.ndarray) -> np.ndarray:
        cols = []
        for j, m in enumerate(self.meta_):
            if isinstance(m, float):
                cols.append(np.full(len(X), m))
                continue
            F = self._features(X[:, :, j:j + 1])
            with _one_thread():
                cols.append(np.clip(m.predict(F), 0.0, 1.0) if self.meta == "ridge"
                            else m.predict_proba(F)[:, list(m.classes_).index(1)])
        return np.column_stack(cols)  # (n, L)

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, C) meta-model probabilities; classes absent from the fit rows get 0. Multi-label:
        (n, L), one probability per label."""
        X = self._validate(X, fitting=False)
        if getattr(self, "multilabel_", False):
            return self._predict_per_label(X)
        n, C = len(X), self.n_classes_
        if self.meta_ is None:
            out = np.zeros((n, C))
            out[:, self.seen_classes_[0]] = 1.0
            return out
        F = self._features(X)
        if self.meta == "ridge":
            out = np.clip(self.meta_.predict(F), 1e-3, None)  # (n, C)
        else:
            out = np.zeros((n, C))
            with _one_thread():
                out[:, self.meta_.classes_] = self.meta_.predict_proba(F)
        return out / out.sum(1, keepdims=True)

    def member_importance(self) -> np.ndarray | None:
        """(n_members,) share of |coefficient| mass per member (linear metas only)."""
        check_is_fitted(self)
        if getattr(self, "multilabel_", False):  # one (1, M) coefficient row per label
            coefs = [np.abs(m.coef_).ravel() for m in self.meta_ if hasattr(m, "coef_")]
            if not coefs:
                return None
            imp = np.sum(coefs, axis=0)
            return imp / imp.sum() if imp.sum() > 0 else imp
        coef = getattr(self.meta_, "coef_", None)
        if coef is None:
            return None
        mass = np.abs(np.atleast_2d(coef)).reshape(-1, self.n_members_, self.n_classes_)
        imp = mass.sum((0, 2))
        return imp / imp.sum() if imp.sum() > 0 else imp
