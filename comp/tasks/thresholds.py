"""Per-label decision thresholds of a multi-label task, fitted on OOF rows, scored honestly.

A multi-label member or ensemble predicts one probability per label; a submission of 0/1
decisions cuts each label at its own threshold. The thresholds are chosen on OOF
probabilities to the competition metric (a label metric such as micro_f1; for a probability
metric, auc or logloss, whose value no cut changes, they are fitted to micro_f1 and only shape
the submission's decisions).

Chosen on the rows they are then scored on, they would flatter the CV (on random labels by
several points of F1). So the reported CV is nested: the thresholds deciding fold k's rows are
fitted on the other folds' OOF rows only, and the CV is the metric of those decisions. The test
rows are cut at the thresholds fitted on every OOF row.

Fitting is coordinate ascent: each label's threshold in turn takes the grid value that most
improves the metric of the whole matrix (the others held), twice over the labels; for micro-F1
the labels interact through the pooled counts, which a per-label search would miss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from comp.core.metrics import greater_is_better, is_label_metric, score

GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)  # candidate cuts
COARSE = np.round(np.arange(0.05, 0.951, 0.05), 3)  # inside a search (hill climbing)
PASSES = 2


def threshold_metric(metric: str) -> str:
    """The metric thresholds are fitted to: the metric itself when it reads decisions, else
    micro_f1 (auc and logloss do not change with a cut)."""
    return metric if is_label_metric(metric) else "micro_f1"


def apply_thresholds(proba: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n, L) 0/1 decisions: probability >= the label's threshold."""
    return (np.asarray(proba) >= np.asarray(thresholds)[None, :]).astype(np.int64)


def fit_thresholds(y: np.ndarray, proba: np.ndarray, metric: str,
                   grid: np.ndarray = GRID, passes: int = PASSES) -> np.ndarray:
    """Per-label thresholds maximising `metric` (a label metric) of the cut probabilities.

    Args:
        y: (n, L) 0/1 labels.
        proba: (n, L) probabilities.
        metric: a comp.core.metrics label metric with a multi-label form.
        grid: candidate thresholds.
        passes: rounds over the labels (each stops early when nothing moved).

    Returns:
        (L,) thresholds; 0.5 where no grid value beats it.
    """
    y, proba = np.asarray(y), np.asarray(proba, dtype=np.float64)
    if metric in ("micro_f1", "macro_f1", "weighted_f1"):
        return _fit_f1(y, proba, metric, grid, passes)
    sign = 1.0 if greater_is_better(metric) else -1.0
    t = np.full(y.shape[1], 0.5)

    def value(th: np.ndarray) -> float:
        return sign * score(metric, y, apply_thresholds(proba, th))

    best = value(t)
    for _ in range(passes):
        changed = False
        for j in range(y.shape[1]):
            for c in grid:
                if c == t[j]:
                    continue
                trial = t.copy()
                trial[j] = c
                v = value(trial)
                if v > best + 1e-12:
                    best, t, changed = v, trial, True
        if not changed:
            break
    return t


def _fit_f1(y: np.ndarray, proba: np.ndarray, metric: str, grid: np.ndarray,
            passes: int) -> np.ndarray:
    """fit_thresholds for micro/macro/weighted F1 from per-label counts at every cut at once:
    the same search and the same result, without scoring the whole matrix per candidate.

    Macro and weighted F1 are sums over labels, so each label takes its best cut on its own;
    micro-F1 pools the counts, so the labels take turns (coordinate ascent)."""
    cand = np.union1d(grid, [0.5])  # (G,) sorted; the search starts at 0.5
    half = int(np.searchsorted(cand, 0.5))
    yb = y.astype(bool)
    above = [proba[:, j:j + 1] >= cand[None, :] for j in range(y.shape[1])]  # L x (n, G)
    tp = np.stack([(a & yb[:, j:j + 1]).sum(0) for j, a in enumerate(above)]).astype(float)
    npred = np.stack([a.sum(0) for a in above]).astype(float)  # (L, G)
    pos = yb.sum(0).astype(float)  # (L,)
    # candidates are tried in grid order (0.5 first): the first best one wins, as in the search
    order = np.concatenate([[half], [g for g in range(len(cand)) if g != half]])
    idx = np.full(y.shape[1], half)
    if metric in ("macro_f1", "weighted_f1"):
        tot = pos[:, None] + npred
        f1 = np.where(tot > 0, 2 * tp / np.maximum(tot, 1), 0.0)  # (L, G)
        for j in np.flatnonzero(pos > 0):  # labels never positive add nothing to the average
            best = order[int(np.argmax(f1[j, order]))]
            if f1[j, best] > f1[j, half] + 1e-12:
                idx[j] = best
        return cand[idx]
    for _ in range(passes):
        changed = False
        for j in range(y.shape[1]):
            cur = np.arange(y.shape[1]) != j
            other_tp = tp[cur, idx[cur]].sum()
            other_tot = pos.sum() + npred[cur, idx[cur]].sum()
            tot = other_tot + npred[j]
            f = np.where(tot > 0, 2 * (other_tp + tp[j]) / np.maximum(tot, 1), 0.0)  # (G,)
            best = order[int(np.argmax(f[order]))]
            if f[best] > f[idx[j]] + 1e-12:
                idx[j], changed = best, True
        if not changed:
            break
    return cand[idx]


def tuned_score(y: np.ndarray, proba: np.ndarray, metric: str) -> float:
    """The metric of probabilities cut at per-label thresholds fitted on these very rows
    (coarse grid, one pass): what a blend is worth once thresholded, for hill climbing to
    compare candidates by. In-sample; the nested CV around the blender keeps it honest."""
    if not is_label_metric(metric):
        return score(metric, y, proba)
    t = fit_thresholds(y, proba, metric, COARSE, passes=1)
    return score(metric, y, apply_thresholds(proba, t))


@dataclass
class Thresholded:
    """Thresholds fitted on OOF rows and the honest (nested) score of the decisions they make."""

    metric: str  # what the CV reports
    fit_metric: str  # what the thresholds were fitted to
    thresholds: np.ndarray  # (L,) fitted on every OOF row: they cut the test rows
    fold_thresholds: dict[int, np.ndarray] = field(default_factory=dict)  # fold k: not on k
    decisions: np.ndarray | None = None  # (n, L) nested 0/1 decisions of the OOF rows
    cv: float = float("nan")  # the metric of the nested decisions (probability metrics: OOF)
    cv_at_half: float = float("nan")  # the metric at the 0.5 cut
    cv_in_sample: float = float("nan")  # decisions at `thresholds`: optimistic
    fold_scores: list[float] = field(default_factory=list)  # nested, per fold

    def summary(self, classes: list[str]) -> dict[str, Any]:
        """What cv.json and manifests record."""
        return {"thresholds": {c: float(t) for c, t in zip(classes, self.thresholds)},
                "threshold_metric": self.fit_metric, "cv_at_0.5": self.cv_at_half,
                "cv_thresholds_in_sample": self.cv_in_sample,
                "fold_thresholds": {str(k): [float(x) for x in v]
                                    for k, v in self.fold_thresholds.items()}}


def nested_thresholds(y: np.ndarray, oof: np.ndarray, folds: np.ndarray,
                      metric: str) -> Thresholded:
    """Fit per-label thresholds on OOF rows with an honest CV.

    Args:
        y: (n, L) 0/1 labels of the rows the OOF covers.
        oof: (n, L) OOF probabilities.
        folds: (n,) fold id of each row; rows of a single fold are split into 5 inner parts.
        metric: the competition metric (what the CV reports).

    Returns:
        Thresholded: `cv` scores fold k's rows cut at thresholds fitted on the other folds'
        rows only (for a probability metric, the OOF probabilities themselves).
    """
    y, oof, folds = np.asarray(y), np.asarray(oof, dtype=np.float64), np.asarray(folds)
    if len(np.unique(folds)) < 2:  # a member on one fold: its rows in seeded inner parts
        from sklearn.model_selection import KFold

        folds = np.zeros(len(y), dtype=np.int64)
        for i, (_, part) in enumerate(KFold(min(5, len(y)), shuffle=True,
                                            random_state=0).split(y)):
            folds[part] = i
    fit_metric = threshold_metric(metric)
    full = fit_thresholds(y, oof, fit_metric)
    res = Thresholded(metric, fit_metric, full, cv_at_half=score(metric, y, oof))
    decisions = np.zeros_like(y)
    for k in np.unique(folds):
        va = folds == k
        # fold k's rows are cut at thresholds that never saw their labels
        t = fit_thresholds(y[~va], oof[~va], fit_metric)
        res.fold_thresholds[int(k)] = t
        decisions[va] = apply_thresholds(oof[va], t)
    res.decisions = decisions
    scored = decisions if is_label_metric(metric) else oof
    res.cv = score(metric, y, scored)
    res.fold_scores = [score(metric, y[folds == k], scored[folds == k])
                       for k in np.unique(folds)]
    res.cv_in_sample = score(metric, y, apply_thresholds(oof, full)
                             if is_label_metric(metric) else oof)
    return res
