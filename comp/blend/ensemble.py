"""Ensembling members from their OOF files: loading, honest nested CV, submissions, leaderboard.

A member is a directory holding oof.npy (n_train, C), test.npy (n_test, C), classes.json and
cv.json. The blenders and stackers of comp.blend take the members stacked as (n_rows,
n_members, C); because they follow the scikit-learn estimator protocol, `clone` plus one fold
loop gives every method the same honest CV: the model that predicts fold k has only seen the
other folds' OOF rows and labels.

A member may also hold unlabelled.npy (n_unlabelled, C): its predictions on `data.extra`. When
every member has them for the same texts, the full-fit blender predicts them exactly as it
predicts the test rows; otherwise the ensemble leaves them out and says why.

Per-fold predictions serve fold-honest pseudo-labels. A k-fold member's fold{k}/test_proba.npy
(and unlabelled_proba.npy) come from a model that never saw fold k's labels; the blender that
the nested CV fitted without fold k's rows blends them into the ensemble's fold-k prediction,
(K, n_test, C) in test_by_fold.npy (and unlabelled_by_fold.npy). No label of fold k reaches
those rows: the members' fold-k models never had it, and the blender, fitted on the other folds'
OOF rows, keeps only a handful of weights. Ensembles write these files into their own member
directory, so an ensemble of ensembles has them too. A member that trained every fold on the same
extra rows (global pseudo-labels, a teacher's test targets) learnt from labels of every fold, so
an ensemble with it has no per-fold predictions.

Members run with `train.predict_train` also hold train_by_fold.npy (K, n_train, C): fold k's
model on every train row. The fold-k blender applied to those gives the ensemble's own
train_by_fold.npy, the targets a distilled student's fold k learns from (comp.members.student).

A multi-label task (2-D y, comp.data) blends each label's probabilities, then fits per-label
thresholds on the ensemble's nested OOF (comp.tasks.thresholds): the CV cuts fold k's rows at
thresholds fitted on the other folds' rows, and the test rows at the thresholds fitted on all.
Those other folds' ensemble OOF came from blenders that saw fold k's rows, but a blender keeps
a handful of weights (a few coefficients per label for the stack), which the noise-label test
(tests/test_multilabel.py) shows does not lift the CV.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone

from comp.blend.bias import ClassBias
from comp.blend.blenders import StackEnsemble, blender_params, create_blender
from comp.blend.submit import write_submission
from comp.core.metrics import greater_is_better, score
from comp.core.utils import CompError, log, progress, read_json, save_model, write_json
from comp.data.competition import load_competition
from comp.data.folds import HASH_KEYS, data_hashes, load_folds
from comp.kfold.rundir import Member, RunDir, read_member
from comp.kfold.runner import write_member_files

# ---------------------------------------------------------------------------------------------
# members (read and checked by comp.kfold.rundir)

__all__ = ["Member", "read_member", "load_members", "ensemble", "run_ensemble", "leaderboard"]


def load_members(run_dirs: Sequence[str | Path]) -> list[Member]:
    """Load members and refuse any that could not have come from one shared fold table.

    Args:
        run_dirs: member directories.

    Returns:
        The members, in the given order.

    Raises:
        CompError: one line naming the member and the mismatch (folds/train/test hash, row
            counts, classes, duplicate names).
    """
    if not run_dirs:
        raise CompError("no members given")
    members = [read_member(d) for d in run_dirs]
    ref = members[0]
    seen = {ref.name: ref.path}
    for m in members[1:]:
        if m.name in seen:
            raise CompError(f"{m.path}: member name '{m.name}' already used by {seen[m.name]}")
        seen[m.name] = m.path
        if m.classes != ref.classes:
            raise CompError(f"{m.path}: classes {m.classes} differ from {ref.path} {ref.classes}")
        for key, a, b in (("train rows", m.oof, ref.oof), ("test rows", m.test, ref.test)):
            if a.shape[0] != b.shape[0]:
                raise CompError(f"{m.path}: {a.shape[0]} {key} but {ref.path} has {b.shape[0]}")
        for key in HASH_KEYS:
            if m.cv.get(key) != ref.cv.get(key):
                raise CompError(f"{m.path}: {key} {m.cv.get(key)} differs from {ref.path} "
                                f"{ref.cv.get(key)} (members must share one fold table and data)")
    return members


def stack_members(members: Sequence[Member]) -> tuple[np.ndarray, np.ndarray]:
    """The blenders' inputs: (n_train, M, C) OOF and (n_test, M, C) test probabilities."""
    return (np.stack([m.oof for m in members], axis=1),
            np.stack([m.test for m in members], axis=1))


def stack_unlabelled(members: Sequence[Member]) -> tuple[np.ndarray | None, str]:
    """(n_unlabelled, M, C) unlabelled probabilities, or (None, why) when they cannot blend.

    They blend only when every member predicted the same unlabelled texts.
    """
    have = [m for m in members if m.unlabelled is not None]
    if not have:
        return None, "no member predicted unlabelled texts"
    lacking = [m.name for m in members if m.unlabelled is None]
    if lacking:
        return None, (f"member {lacking[0]} has no unlabelled.npy"
                      + (f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else ""))
    ref = have[0]
    for m in have[1:]:
        if (m.unlabelled.shape != ref.unlabelled.shape
                or m.cv.get("unlabelled_hash") != ref.cv.get("unlabelled_hash")):
            return None, (f"members {ref.name} and {m.name} predicted different unlabelled "
                          "texts")
    return np.stack([m.unlabelled for m in members], axis=1), ""


def stack_by_fold(members: Sequence[Member], fold_ids: Sequence[int]
                  ) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Per-fold blender inputs: (K, n_test, M, C) and (K, n_unlabelled, M, C), K = len(fold_ids).

    Returns:
        (test, unlabelled, why): test is None when a member lacks per-fold test predictions
        for one of `fold_ids`, or trained every fold on the same extra rows (why says which);
        unlabelled is None when test is, or a member lacks per-fold unlabelled predictions.
        `stack_train_by_fold` gives the (K, n_train, M, C) train inputs.
    """
    for m in members:
        if m.test_by_fold is None:
            return None, None, (f"member {m.name} has no per-fold test predictions "
                                "(fold{k}/test_proba.npy or test_by_fold.npy)")
        if m.cv.get("extra_rows") and not m.cv.get("extra_per_fold"):
            # global pseudo-labels or teacher targets: fold k's model learnt from a blend that
            # saw fold k's labels, so its test predictions are no longer fold k's alone
            return None, None, (f"member {m.name} trained every fold on the same extra rows "
                                "(global pseudo-labels or teacher targets)")
        if m.cv.get("teacher_targets") == "oof":
            return None, None, (f"member {m.name} is a student taught with the teacher's OOF, "
                                "which carries every fold's labels")
        lacking = [f for f in fold_ids if f not in m.fold_ids]
        if lacking or len(m.test_by_fold) != len(m.fold_ids):
            return None, None, (f"member {m.name} has test predictions of folds {m.fold_ids}, "
                                f"not of {list(fold_ids)}")
    test = np.stack([_pick(m, m.test_by_fold, fold_ids) for m in members], axis=2)
    if any(m.unlabelled_by_fold is None or len(m.unlabelled_by_fold) != len(m.fold_ids)
           for m in members):
        return test, None, ""
    return test, np.stack([_pick(m, m.unlabelled_by_fold, fold_ids) for m in members],
                          axis=2), ""


def stack_train_by_fold(members: Sequence[Member], fold_ids: Sequence[int]) -> np.ndarray | None:
    """(K, n_train, M, C) the fold_ids' models on every train row, when every member has them."""
    if any(m.train_by_fold is None or len(m.train_by_fold) != len(m.fold_ids)
           or not set(fold_ids) <= set(m.fold_ids) for m in members):
        return None
    return np.stack([_pick(m, m.train_by_fold, fold_ids) for m in members], axis=2)


def _pick(m: Member, by_fold: np.ndarray, fold_ids: Sequence[int]) -> np.ndarray:
    """The rows of a member's per-fold array that belong to fold_ids, in that order."""
    return by_fold[[m.fold_ids.index(f) for f in fold_ids]]


# ---------------------------------------------------------------------------------------------
# honest CV


def _check_cv_inputs(X: np.ndarray, y: np.ndarray, folds: np.ndarray) -> None:
    if X.ndim != 3:
        raise CompError(f"OOF stack must be (rows, members, classes), got shape {X.shape}")
    if len(y) != len(X) or len(folds) != len(X):
        raise CompError(f"{len(X)} OOF rows but {len(y)} labels and {len(folds)} fold ids")
    if len(np.unique(folds)) < 2:
        raise CompError("the fold table has fewer than 2 folds")


def _nested(est: BaseEstimator, X: np.ndarray, y: np.ndarray, folds: np.ndarray
            ) -> tuple[np.ndarray, list[BaseEstimator]]:
    oof = np.zeros((X.shape[0], X.shape[2]))
    fitted = []
    for k in progress(np.unique(folds), desc="nested cv"):
        va = folds == k
        # Only other folds' rows and labels reach the model that predicts fold k.
        model = clone(est).fit(X[~va], y[~va])
        oof[va] = model.predict_proba(X[va])
        fitted.append(model)
    return oof, fitted


def nested_stack_cv(stacker: BaseEstimator, X_oof: np.ndarray, y: np.ndarray,
                    folds: np.ndarray, metric: str) -> tuple[np.ndarray, float]:
    """Honest CV of a blender/stacker on the members' own fold table.

    Args:
        stacker: an unfitted estimator with fit(X, y) / predict_proba(X) (cloned per fold).
        X_oof: (n, M, C) members' OOF probabilities.
        y: (n,) class indices.
        folds: (n,) fold id of each row (the fold table the members were trained with).
        metric: a comp.core.metrics name.

    Returns:
        (n, C) stacked OOF probabilities, each fold predicted by a model fitted on the other
        folds only, and their score.
    """
    X_oof, y, folds = np.asarray(X_oof, dtype=np.float64), np.asarray(y), np.asarray(folds)
    _check_cv_inputs(X_oof, y, folds)
    oof, _ = _nested(stacker, X_oof, y, folds)
    return oof, score(metric, y, oof)


@dataclass
class EnsembleResult:
    """An ensemble's honest OOF, its test prediction and how it was made."""

    oof: np.ndarray  # (n_train, C)
    test: np.ndarray  # (n_test, C)
    cv: float  # honest: nested for methods that learn from labels
    weights: dict[str, float] | None
    meta: dict[str, Any] = field(default_factory=dict)
    cv_in_sample: float = math.nan
    unlabelled: np.ndarray | None = None  # (n_unlabelled, C), blended like test
    # fold k's blender (fitted without fold k) on the members' fold-k predictions
    test_by_fold: np.ndarray | None = None  # (K, n_test, C)
    unlabelled_by_fold: np.ndarray | None = None  # (K, n_unlabelled, C)
    train_by_fold: np.ndarray | None = None  # (K, n_train, C)
    model: BaseEstimator | None = None  # the blender fitted on every OOF row (predicts test)
    fold_models: list[BaseEstimator] = field(default_factory=list)  # nested: fold k left out
    thresholds: np.ndarray | None = None  # multi-label: (L,) per-label cuts of the test rows


def ensemble(members: Sequence[Member], method: str, y: np.ndarray, folds: np.ndarray,
             metric: str, **kw: Any) -> EnsembleResult:
    """Blend members and measure the blend honestly.

    Args:
        members: from `load_members` (same rows and classes).
        method: a registered blender: mean | rank | weights | hill | stack.
        y: (n_train,) class indices in the members' class order.
        folds: (n_train,) the shared fold table.
        metric: comp.core.metrics name, the one every reported score uses.
        **kw: blender parameters (e.g. n_iter=100, meta="hgb", C=0.5); `objective` is the
            metric weights/hill optimise (default: `metric`; "logloss" is smoother).

    Returns:
        EnsembleResult. For blenders that learn from labels, `oof` and `cv` come from models
        fitted on the other folds (nested); `cv_in_sample` is the optimistic full-fit score and
        `test` uses the model fitted on all OOF rows, and so does `unlabelled` when every
        member predicted the same unlabelled texts (else None; meta["unlabelled"] says why).
        When every member has per-fold predictions, `test_by_fold[k]` is the blender fitted
        without fold k (the nested one; for mean and rank the same blend) applied to the
        members' fold-k test predictions, and `unlabelled_by_fold[k]` likewise (else None;
        meta["by_fold"] says why); `train_by_fold[k]` too when every member has its fold
        models' predictions on the train rows.
    """
    X, XT = stack_members(members)
    y, folds = np.asarray(y, dtype=np.int64), np.asarray(folds)
    _check_cv_inputs(X, y, folds)
    covered = ~np.isnan(X).any(axis=(1, 2))  # members on a subset of folds leave NaN rows
    rows_note = ""
    if not covered.all():
        meta_rows = {"folds_used": np.unique(folds[covered]).tolist(),
                     "rows_covered": int(covered.sum())}
        X, y, folds, rows_note = _covered_rows(X, y, folds, covered)
        members = [dataclasses.replace(m, oof=m.oof[covered]) for m in members]
    params = dict(kw)
    objective = params.pop("objective", None)
    class_bias = bool(params.pop("class_bias", False))
    class_bias = class_bias and y.ndim == 1  # multi-label: per-label thresholds do that job
    if "metric" in blender_params(method):
        params["metric"] = objective or metric
    est = create_blender(method, **params)
    if class_bias:  # per-class biases on the blend, fitted inside the same nested loop
        est = ClassBias(est, metric)
    full = clone(est).fit(X, y)
    test = full.predict_proba(XT)
    XU, why = stack_unlabelled(members)
    unlabelled = full.predict_proba(XU) if XU is not None else None
    in_sample = full.predict_proba(X)
    cv_in = score(metric, y, in_sample)
    names = [m.name for m in members]
    shown = {**getattr(est, "blender", est).get_params(), **({"class_bias": True} if class_bias
                                                             else {})}
    meta: dict[str, Any] = {"method": method, "metric": metric, "params": shown,
                            "member_cv": {m.name: _member_cv(metric, y, m.oof, folds)
                                          for m in members}}
    if rows_note:
        meta["rows"] = rows_note
    fold_ids = np.unique(folds)
    if getattr(est, "needs_labels", True):
        oof, fitted = _nested(est, X, y, folds)
        if hasattr(full, "weights_"):
            meta["fold_weights"] = [dict(zip(names, map(float, f.weights_))) for f in fitted]
    else:
        oof = in_sample
        fitted = [full] * len(fold_ids)  # nothing learnt: the full fit is every fold's blender
    test_k, unl_k, train_k, why_k = None, None, None, ""
    if rows_note and len(meta_rows["folds_used"]) < 2:
        why_k = "the members share one fold only"
    elif not rows_note and not np.array_equal(fold_ids, np.arange(len(fold_ids))):
        why_k = f"fold ids {fold_ids.tolist()} are not 0..K-1"
    else:  # every fold, or the folds every member covers (the manifest's folds_used)
        XTK, XUK, why_k = stack_by_fold(members, fold_ids.tolist())
        if XTK is not None:
            test_k = np.stack([f.predict_proba(x) for f, x in zip(fitted, XTK)])  # (K, n_test, C)
        if XUK is not None and unlabelled is not None:
            unl_k = np.stack([f.predict_proba(x) for f, x in zip(fitted, XUK)])  # (K, n_unl, C)
        XRK = stack_train_by_fold(members, fold_ids.tolist()) if XTK is not None else None
        if XRK is not None:
            train_k = np.stack([f.predict_proba(x) for f, x in zip(fitted, XRK)])  # (K, n_tr, C)
    meta["by_fold"] = why_k or "blended"
    cv = score(metric, y, oof)
    meta["fold_scores"] = [score(metric, y[folds == k], oof[folds == k])
                           for k in np.unique(folds)]
    thresholds = None
    if y.ndim == 2:  # multi-label: per-label cuts fitted on other folds' rows score fold k
        from comp.core.metrics import is_label_metric
        from comp.tasks.thresholds import apply_thresholds, nested_thresholds

        th = nested_thresholds(y, oof, folds, metric)
        cv, meta["fold_scores"], thresholds = th.cv, th.fold_scores, th.thresholds
        meta["thresholded"] = th.summary([m.classes for m in members][0])
        if is_label_metric(metric):
            cv_in = score(metric, y, apply_thresholds(in_sample, thresholds))
    weights = dict(zip(names, map(float, full.weights_))) if hasattr(full, "weights_") else None
    if class_bias:
        meta["class_bias"] = [float(b) for b in full.bias_]  # in the members' class order
    if isinstance(getattr(full, "blender_", full), StackEnsemble):
        imp = full.member_importance()
        meta["meta_model"] = {"meta": full.meta, "use_logits": full.use_logits, "C": full.C,
                              "member_importance": (dict(zip(names, map(float, imp)))
                                                    if imp is not None else None)}
    meta["cv"], meta["cv_in_sample"] = cv, cv_in
    meta["unlabelled"] = why or "blended"
    if rows_note:  # the ensemble's own OOF covers the same rows its members share
        meta.update(meta_rows)
        oof_all = np.full((len(covered), oof.shape[1]), np.nan)
        oof_all[covered] = oof
        oof = oof_all
    return EnsembleResult(oof=oof, test=test, cv=cv, weights=weights, meta=meta,
                          cv_in_sample=cv_in, unlabelled=unlabelled, test_by_fold=test_k,
                          unlabelled_by_fold=unl_k, train_by_fold=train_k, model=full,
                          fold_models=fitted, thresholds=thresholds)


def _member_cv(metric: str, y: np.ndarray, oof: np.ndarray, folds: np.ndarray) -> float:
    """A member's score on these rows, measured as its ensemble's is (multi-label: decisions
    at nested per-label thresholds)."""
    if y.ndim == 2:
        from comp.tasks.thresholds import nested_thresholds

        return nested_thresholds(y, oof, folds, metric).cv
    return score(metric, y, oof)


def _covered_rows(X: np.ndarray, y: np.ndarray, folds: np.ndarray, covered: np.ndarray,
                  inner: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The rows every member covers, with the fold ids their nested CV uses.

    Every member's prediction on a covered row came from a model that never saw its label, so
    a blender fitted on some covered rows and scored on others is honest. When they span two
    or more of the shared folds those folds serve; within one fold, its rows are split into
    `inner` stratified parts (fewer when a class is rarer).
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    X, y, folds = X[covered], y[covered], folds[covered]
    used = np.unique(folds).tolist()
    note = f"{len(y)} rows every member covers (folds {used})"
    if len(used) >= 2:
        return X, y, folds, note
    # multi-label rows: plain KFold (no stratified splitter in scikit-learn)
    smallest = int(np.bincount(y)[np.unique(y)].min()) if y.ndim == 1 else 0
    n = min(inner, len(y))
    split = (StratifiedKFold(n, shuffle=True, random_state=0) if smallest >= n
             else KFold(n, shuffle=True, random_state=0))
    ids = np.zeros(len(y), dtype=np.int64)
    for i, (_, part) in enumerate(split.split(np.zeros(len(y)), y)):
        ids[part] = i
    log(f"ensemble: members cover fold {used[0]} only; nested CV on {n} inner parts of its "
        f"{len(y)} rows")
    return X, y, ids, note + f", nested over {n} inner parts"


# ---------------------------------------------------------------------------------------------
# end to end: runs/* -> submissions/<name>*.csv + manifest


def member_data_config(run_dirs: Sequence[str | Path]) -> Any:
    """The [data] section of the first member's recipe.toml, as a DataConfig."""
    from comp.config.schema import DataConfig, from_dict, read_toml

    for d in run_dirs:
        p = Path(d) / "recipe.toml"
        if p.exists():
            return from_dict(DataConfig, read_toml(p).get("data", {}), "data")
    raise CompError(f"{Path(run_dirs[0]) if run_dirs else 'runs'}: no member has a recipe.toml; "
                    "pass the competition folder")


def _data_table(run_dirs: Sequence[str | Path], data_cfg: Any) -> dict[str, Any]:
    """The [data] table that names the members' unlabelled file (theirs, else data_cfg's)."""
    import dataclasses

    try:
        cfg = member_data_config(run_dirs)
    except CompError:
        cfg = data_cfg
    if not cfg.extra and data_cfg.extra:
        cfg = data_cfg
    return dataclasses.asdict(cfg)


def _out_stem(out: str | Path, name: str | None, method: str) -> Path:
    """`submissions/` -> submissions/<name or method>; `submissions/blend` is already a stem,
    also when an earlier run left its ensemble directory `submissions/blend/` (cv.json)."""
    p = Path(out)
    if str(out).endswith(("/", "\\")) or (p.is_dir() and not (p / "cv.json").exists()):
        return p / (name or method)
    return p.with_name(name) if name else p


def _align_classes(members: list[Member], classes: list[str]) -> list[Member]:
    """Reorder member columns to the competition's class order (same set required)."""
    have = members[0].classes
    if have == classes:
        return members
    if sorted(have) != sorted(classes):
        raise CompError(f"{members[0].path}: classes {have} differ from the competition's "
                        f"{classes}")
    idx = [have.index(c) for c in classes]

    def cols(a: np.ndarray | None) -> np.ndarray | None:
        return a[..., idx] if a is not None else None

    return [dataclasses.replace(m, oof=cols(m.oof), test=cols(m.test), classes=list(classes),
                                unlabelled=cols(m.unlabelled), test_by_fold=cols(m.test_by_fold),
                                unlabelled_by_fold=cols(m.unlabelled_by_fold),
                                train_by_fold=cols(m.train_by_fold))
            for m in members]


def run_ensemble(run_dirs: Sequence[str | Path], method: str, data_cfg: Any, metric: str,
                 out: str | Path, **kw: Any) -> Path:
    """Load members, blend them, write a submission and the ensemble's own member files.

    Args:
        run_dirs: member directories.
        method: mean | rank | weights | hill | stack.
        data_cfg: the competition's DataConfig (labels, fold table, sample submission); None
            reads the [data] section of the first member's recipe.toml.
        metric: comp.core.metrics name; "" takes the members' metric from cv.json.
        out: a submissions directory (`submissions/`, outputs named after the method) or an
            output stem (`submissions/blend`); the CV is appended to the file names.
        **kw: blender parameters, plus `name` (overrides the stem's name) and `proba` (also
            write per-class probability columns).

    Returns:
        Path of the written submission CSV; its manifest sits next to it (.json). The ensemble's
        honest OOF and its test probabilities are also written as a member directory
        `<stem>/` (oof.npy, test.npy, classes.json, cv.json; paths in the manifest under "oof",
        "test", "run_dir") so distillation and pseudo-labelling read them like any member.
        When every member predicted the same unlabelled texts, their blend is written too
        (unlabelled.npy, manifest "unlabelled"), with the members' [data] table under "data"
        so readers can find those texts. When every member has per-fold predictions, the
        fold-honest blends go to test_by_fold.npy (K, n_test, C) and unlabelled_by_fold.npy
        (manifest "test_by_fold", "unlabelled_by_fold"); `comp pseudo` labels each fold's rows
        from them. When every member also predicted its training rows per fold, their blend
        goes to train_by_fold.npy (manifest "train_by_fold"), for `comp distill`.
    """
    t0 = time.time()
    stem = _out_stem(out, kw.pop("name", None), method)
    proba = bool(kw.pop("proba", False))
    members = load_members(run_dirs)
    if data_cfg is None:
        data_cfg = member_data_config(run_dirs)
    comp = load_competition(data_cfg)
    folds = np.asarray(load_folds(comp, data_cfg))
    classes = [str(c) for c in comp.classes]
    members = _align_classes(members, classes)
    n_train, n_test = len(comp.labels), len(comp.test_ids)
    m0 = members[0]
    if m0.oof.shape[0] != n_train or m0.test.shape[0] != n_test:
        raise CompError(f"{m0.path}: {m0.oof.shape[0]} train / {m0.test.shape[0]} test rows but "
                        f"{data_cfg.dir} has {n_train} / {n_test}")
    want = data_hashes(comp, folds)
    for key, value in want.items():
        if m0.cv.get(key) not in (None, value):
            raise CompError(f"{m0.path}: {key} {m0.cv[key]} does not match {data_cfg.dir} "
                            f"({value}); retrain the members on the current data and fold table")
    metric = metric or str(m0.cv.get("metric") or "")
    if not metric:
        raise CompError(f"{m0.path}/cv.json: no metric; pass one")
    log(f"ensemble {method} of {len(members)} members on {metric}")
    res = ensemble(members, method, np.asarray(comp.labels), folds, metric, **kw)
    ens_dir = stem
    common = {"name": stem.name, "kind": "ensemble", "method": method, "metric": metric,
              "cv": res.cv, "cv_in_sample": res.cv_in_sample,
              "fold_scores": res.meta["fold_scores"], "n_train": n_train, "n_test": n_test,
              **want, **{k: res.meta[k] for k in ("folds_used", "rows_covered", "rows")
                         if k in res.meta}}
    if comp.multilabel:
        common.update(task="multilabel", **res.meta["thresholded"])
    unl: dict[str, Any] = {}
    if res.unlabelled is not None:
        unl = {"n_unlabelled": len(res.unlabelled),
               "unlabelled_hash": m0.cv.get("unlabelled_hash")}
        log(f"ensemble {stem.name}: blended {len(res.unlabelled)} unlabelled rows")
    elif any(m.unlabelled is not None for m in members):
        log(f"ensemble {stem.name}: no unlabelled predictions ({res.meta['unlabelled']})")
    if res.test_by_fold is None:
        log(f"ensemble {stem.name}: no per-fold predictions ({res.meta['by_fold']}); "
            "pseudo-labels from it will serve every fold alike")
    elif res.unlabelled is not None and res.unlabelled_by_fold is None:
        log(f"ensemble {stem.name}: no per-fold unlabelled predictions (a member lacks "
            "fold{k}/unlabelled_proba.npy)")
    inputs = member_inputs(run_dirs)
    write_member_files(ens_dir, res.oof, res.test, classes,
                       {**common, **unl, "inputs": inputs, "seconds": time.time() - t0},
                       res.unlabelled, res.test_by_fold, res.unlabelled_by_fold,
                       res.train_by_fold)
    save_model(ens_dir / "blender.joblib", res.model)  # what `comp predict` blends with
    save_model(ens_dir / "fold_blenders.joblib", res.fold_models)  # fold k's: fitted without k
    manifest = {
        **common,
        "inputs": inputs,
        "blender": str(ens_dir / "blender.joblib"),
        "members": [str(m.path) for m in members],
        "member_names": [m.name for m in members],
        "member_cv": res.meta["member_cv"], "weights": res.weights,
        "fold_weights": res.meta.get("fold_weights"), "meta_model": res.meta.get("meta_model"),
        "params": res.meta["params"], "classes": classes, "run_dir": str(ens_dir),
        **({"class_bias": dict(zip(classes, res.meta["class_bias"]))}
           if "class_bias" in res.meta else {}),
        "oof": str(ens_dir / "oof.npy"), "test": str(ens_dir / "test.npy"),
        "seconds": time.time() - t0,
    }
    if unl:
        manifest.update(unl, unlabelled=str(ens_dir / "unlabelled.npy"),
                        data=_data_table(run_dirs, data_cfg))
    if res.test_by_fold is not None:
        manifest["test_by_fold"] = str(ens_dir / "test_by_fold.npy")
        if res.unlabelled_by_fold is not None and unl:
            manifest["unlabelled_by_fold"] = str(ens_dir / "unlabelled_by_fold.npy")
        if res.train_by_fold is not None:
            manifest["train_by_fold"] = str(ens_dir / "train_by_fold.npy")
    path = write_submission(comp, res.test, classes, stem, manifest, proba=proba,
                            thresholds=res.thresholds)
    # the ensemble's directory predicts like a member's (comp.serving.predictor.load_member)
    write_json(ens_dir / "manifest.json", read_json(Path(path).with_suffix(".json")))
    log(f"ensemble {stem.name}: cv {res.cv:.5f} (in-sample {res.cv_in_sample:.5f}) -> {path}")
    return Path(path)


def member_inputs(run_dirs: Sequence[str | Path]) -> dict[str, dict[str, str]]:
    """{member dir name: sha1 of each of its files}: what an ensemble was built from."""
    return {Path(d).name: RunDir(d).file_hashes() for d in run_dirs}


def ensemble_current(csv_path: str | Path, run_dirs: Sequence[str | Path]) -> str:
    """'' when the submission's manifest was built from exactly these members' files as they
    are now; else why not (for the log)."""
    man_path = Path(csv_path).with_suffix(".json")
    if not man_path.exists():
        return "no manifest"
    man = read_json(man_path)
    if sorted(man.get("member_names") or []) != sorted(Path(r).name for r in run_dirs):
        return "other members"
    have = man.get("inputs")
    if have is None:
        return "made before manifests recorded their members' files"
    now = member_inputs(run_dirs)
    changed = sorted(n for n in now if have.get(n) != now[n])
    if changed:
        return f"the files of {', '.join(changed)} changed"
    if not Path(man.get("blender", "")).exists():
        return "its fitted blender is missing"
    return ""


# ---------------------------------------------------------------------------------------------
# leaderboard


def cv_note(cv: dict[str, Any]) -> str:
    """What a reader must know about how a CV was obtained (tuning, folds covered)."""
    notes = []
    tuned = cv.get("tuned_on")
    if tuned:
        notes.append("tuned on the reported folds: CV optimistic" if tuned.get("same_folds")
                     else f"tuned on another fold table (seed {tuned.get('fold_seed')})")
    if cv.get("folds_used"):
        notes.append(f"folds {cv['folds_used']} only ({cv.get('rows_covered')} rows)")
    if cv.get("extra_rows") and not cv.get("extra_per_fold"):
        notes.append("same extra rows in every fold: CV optimistic")
    return "; ".join(notes)


def leaderboard_rows(run_dirs: Sequence[str | Path], submissions_dir: str | Path | None
                     ) -> list[dict[str, Any]]:
    """Leaderboard rows: members from cv.json, ensembles from submission manifests."""
    rows = []
    for d in run_dirs:
        p = Path(d) / "cv.json"
        if not p.exists():
            continue
        cv = read_json(p)
        rows.append({"kind": cv.get("kind", "member"), "name": cv.get("name") or Path(d).name,
                     "metric": cv.get("metric", ""), "cv": cv.get("cv"),
                     "fold_scores": cv.get("fold_scores") or [], "in_sample": None,
                     "source": str(d), "note": cv_note(cv)})
    if submissions_dir is not None and Path(submissions_dir).is_dir():
        for p in sorted(Path(submissions_dir).glob("*.json")):
            try:
                man = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if not isinstance(man, dict) or man.get("cv") is None:
                continue
            kind = f"ens:{man['method']}" if man.get("method") else str(man.get("kind", "sub"))
            rows.append({"kind": kind,
                         "name": man.get("name") or p.stem, "metric": man.get("metric", ""),
                         "cv": man.get("cv"), "fold_scores": man.get("fold_scores") or [],
                         "in_sample": man.get("cv_in_sample"), "source": str(p),
                         "manifest": man, "note": man.get("rows", "")})
    return rows


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first within each metric (direction from comp.core.metrics)."""
    def key(r: dict[str, Any]) -> tuple[str, float]:
        cv = r["cv"] if r["cv"] is not None else math.nan
        if math.isnan(cv):
            return (r["metric"], math.inf)
        return (r["metric"], -cv if greater_is_better(r["metric"]) else cv)

    return sorted(rows, key=key)


def leaderboard(run_dirs: Sequence[str | Path], submissions_dir: str | Path | None) -> str:
    """A terminal table of members (cv.json) and ensembles (submission manifests) by CV."""
    rows = sort_rows(leaderboard_rows(run_dirs, submissions_dir))
    if not rows:
        return "no members or submissions found"
    header = ["#", "kind", "name", "metric", "cv", "folds mean ± std", "in-sample"]
    table = []
    for i, r in enumerate(rows, 1):
        fs = np.asarray(r["fold_scores"], dtype=float)
        folds = f"{fs.mean():.4f} ± {fs.std():.4f}" if len(fs) else "-"
        table.append([str(i), str(r["kind"]), str(r["name"]), str(r["metric"]),
                      f"{r['cv']:.5f}" if r["cv"] is not None else "-", folds,
                      f"{r['in_sample']:.5f}" if r["in_sample"] is not None else ""])
    widths = [max(len(h), *(len(t[j]) for t in table)) for j, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip() for t in table]
    return "\n".join(lines)
