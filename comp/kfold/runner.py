"""The member contract and the k-fold runner every member uses.

A member turns a Competition and the shared fold table into runs/<name>/:
  fold{k}/val_proba.npy, fold{k}/test_proba.npy, fold{k}/done.json   (one per fold, resumable)
  oof.npy (n_train, C), test.npy (n_test, C), classes.json, cv.json, recipe.toml
  fold{k}/unlabelled_proba.npy, unlabelled.npy (n_unlabelled, C)     (when data.extra is set)
  fold{k}/train_proba.npy, train_by_fold.npy (K, n_train, C)          (with train.predict_train)
On a subset of folds (data.use_folds) the per-fold arrays hold those folds, in cv.json's
folds_used order.

A fold predicts `ctx.predict_texts`: the test texts, then the unlabelled texts of `data.extra`.
The runner splits that (n_test + n_unlabelled, C) block into test and unlabelled probabilities,
both fold-averaged. A member kind that predicts the test texts only ((n_test, C)) still works;
it just writes no unlabelled.npy. The unlabelled file is not part of the recipe fingerprint: a
done fold records the unlabelled texts it was asked to predict, and is refitted when they change.

With `train.predict_train` a fold also predicts its own training rows (a third array from the
fit function). train_by_fold.npy row i of fold k is then fold k's model on train row i: its
validation prediction inside fold k, an in-sample one elsewhere. Those are the only predictions
on training rows made without fold k's validation labels, which is what a distilled student's
fold k may learn from. A done fold without them is completed from its kept model when the member
kind can (`predict_fold_train`), else refitted.

Extra training rows (pseudo-labels, distillation targets for unlabelled text) join each fold's
training part only. Rows may be meant for one fold (`ExtraRows.folds`): per-fold pseudo-labels,
where fold k's rows were labelled only by fold-k models, which never saw fold k's validation
labels; fold k then receives its own rows and the rows meant for every fold. Any extra row whose
normalized text equals a validation row's text is dropped for that fold as well: a target made by
models that saw that validation row's label would hand it straight back.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from comp.config.schema import Recipe
from comp.core.metrics import score
from comp.core.utils import CompError, log, read_json, save_npy, write_json, write_text
from comp.data.competition import Competition, load_competition
from comp.data.folds import data_hashes, load_folds
from comp.kfold.augment import augment_fold, drop_val_copies
from comp.kfold.extra import ExtraRows, check_extra_folds, extra_for_fold, load_pseudo_for
from comp.kfold.rundir import FoldStatus, RunDir, fingerprint_of, recipe_fingerprint, same_recipe
from comp.kfold.suspects import treat_suspects

__all__ = ["ExtraRows", "FoldContext", "FoldOutput", "run_member", "assemble",
           "recipe_fingerprint", "same_recipe", "fingerprint_of", "write_member_files",
           "member_done", "fold_inputs"]


@dataclass
class FoldContext:
    """Everything one fold's fit needs."""

    fold: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    dir: Path
    comp: Competition
    recipe: Recipe
    extra: ExtraRows
    report: Callable[[int, float], None] = lambda step, value: None
    predict_train: bool = False  # also return predictions on the training part (train_idx)
    # (len(train_idx),) loss weights of the training rows (data.suspects = "weight"), or None
    train_weights: np.ndarray | None = None

    @property
    def train_texts(self) -> list[str]:
        """Texts of the fold's training part."""
        return [self.comp.train_texts[i] for i in self.train_idx]

    @property
    def val_texts(self) -> list[str]:
        """Texts of the fold's validation part."""
        return [self.comp.train_texts[i] for i in self.val_idx]

    @property
    def predict_texts(self) -> list[str]:
        """Texts the fold predicts besides validation: the test texts, then the unlabelled."""
        return self.comp.predict_texts


@dataclass
class FoldOutput:
    """What one fold's fit returns to the runner.

    Attributes:
        val: (n_val, C) probabilities on the fold's validation rows.
        predict: (n_test + n_unlabelled, C) on ctx.predict_texts, or (n_test, C) from a member
            kind that predicts the test texts only.
        train: (len(train_idx), C) on the fold's training rows, with ctx.predict_train.
    """

    val: np.ndarray
    predict: np.ndarray
    train: np.ndarray | None = None

    @classmethod
    def of(cls, out: FoldOutput | tuple[np.ndarray, ...]) -> FoldOutput:
        """A FoldOutput from a fit function's FoldOutput or (val, predict[, train]) tuple."""
        if isinstance(out, FoldOutput):
            return out
        val, pred, *rest = out
        return cls(val, pred, rest[0] if rest else None)


# a fold's fit: FoldOutput, or the tuple (val_proba, predict_proba[, train_proba])
FitFold = Callable[[FoldContext], "FoldOutput | tuple[np.ndarray, ...]"]
# a done fold's kept model -> train_proba (len(train_idx), C), or None when it has no model
PredictFoldTrain = Callable[[FoldContext], np.ndarray | None]
# a done fold's kept model -> (n_test + n_unlabelled, C) on ctx.predict_texts, or None
PredictFold = Callable[[FoldContext], np.ndarray | None]


def fold_inputs(recipe: Recipe, comp: Competition, folds: np.ndarray) -> dict[str, Any]:
    """The content hashes every fold of a member shares (a fold marker adds its extra rows'
    `extra_hash`): the recipe, the train rows, the fold table, the test and unlabelled texts."""
    return {"recipe": recipe_fingerprint(recipe), **data_hashes(comp, folds),
            "unlabelled_hash": comp.unlabelled_hash}


def folds_done(recipe: Recipe, comp: Competition | None = None) -> set[int]:
    """The folds a run of this member would skip today (trained on today's recipe, rows, fold
    table and extra rows; test or unlabelled texts may still want predicting, which is cheap):
    what the planner leaves out of its estimate. run_member decides per fold for itself."""
    rd = RunDir(recipe.run_dir)
    k = recipe.data.folds
    marked = [f for f in range(k) if rd.marker(f) is not None]
    if not marked:  # nothing trained yet: no hashing
        return set()
    comp = comp or load_competition(recipe.data)
    folds = load_folds(comp, recipe.data)
    extra = load_pseudo_for(recipe, comp)
    shared = fold_inputs(recipe, comp, folds)
    text = recipe.to_toml()
    return {f for f in marked
            if rd.fold_status(f, fold_want(shared, extra, comp, folds, f)[2], text).state != "fit"}


def fold_want(shared: dict[str, Any], extra: ExtraRows, comp: Competition, folds: np.ndarray,
              fold: int, inputs: dict[str, str] | None = None
              ) -> tuple[ExtraRows, int, dict[str, Any]]:
    """(the fold's extra rows, how many were dropped as copies of its validation texts, the
    inputs its done marker must match: `shared` + those rows' fingerprint + `inputs`)."""
    val_texts = [comp.train_texts[i] for i in np.flatnonzero(folds == fold)]
    fold_extra, dropped = extra_for_fold(extra, val_texts, fold)
    return fold_extra, dropped, {**shared, "extra_hash": fold_extra.fingerprint,
                                 **(inputs or {})}


def run_member(recipe: Recipe, fit_fold: FitFold, folds_to_run: list[int] | None = None,
               force: bool = False, extra: ExtraRows | None = None,
               report: Callable[[int, float], None] | None = None,
               comp: Competition | None = None,
               predict_fold_train: PredictFoldTrain | None = None,
               predict_fold: PredictFold | None = None,
               inputs: dict[str, str] | None = None) -> dict | None:
    """Run (or resume) a member's k folds and write the member files.

    Each fold asks its marker whether it is current (comp.kfold.rundir.RunDir.fold_status): a fold
    whose recipe, train rows, fold table or extra rows changed is refitted; one whose test or
    unlabelled texts changed is predicted again from its kept model (`predict_fold`), or
    refitted when the member kind keeps none. One log line per stale fold says why.

    Args:
        recipe: the resolved recipe (recipe.name names runs/<name>).
        fit_fold: trains on ctx.train_idx (+ ctx.extra) and returns a FoldOutput (or the tuple
            (val_proba, predict_proba[, train_proba])): predict_proba for ctx.predict_texts (or
            the test texts only), train_proba on ctx.train_idx when ctx.predict_train
            (recipe.train.predict_train) is set.
        folds_to_run: a subset of folds (a cluster fans folds out); None = all.
        force: retrain folds even if done.
        extra: rows joining training parts only (pseudo-labels, teacher targets).
        report: called with (step, value) during training (Optuna pruning).
        comp: an already loaded competition.
        predict_fold_train: completes a done fold that lacks training-part predictions from
            its kept model (None, or returning None: the fold is refitted).
        predict_fold: predicts ctx.predict_texts with a done fold's kept model (None, or
            returning None: the fold is refitted).
        inputs: more content hashes a fold depends on (e.g. a student's teacher); a change
            refits.

    Returns:
        The cv.json dict once every fold is done, else None.
    """
    comp = comp or load_competition(recipe.data)
    folds = load_folds(comp, recipe.data)
    k = recipe.data.folds
    rd = RunDir(recipe.run_dir)
    extra = extra if extra is not None else load_pseudo_for(recipe, comp)
    shared = fold_inputs(recipe, comp, folds)  # hashed once, not once per fold
    check_extra_folds(extra, k, shared["folds_hash"])
    own = list(recipe.data.use_folds) or list(range(k))  # the folds this member covers
    wanted = own if folds_to_run is None else sorted(set(folds_to_run))
    bad = [f for f in wanted if not 0 <= f < k]
    if bad:
        raise CompError(f"--folds: fold {bad[0]} does not exist (k={k})")
    rd.path.mkdir(parents=True, exist_ok=True)
    recipe_text = recipe.to_toml()
    want_train = recipe.train.predict_train
    todo: list[tuple[FoldContext, dict, FoldStatus, int]] = []
    current = []
    for f in wanted:  # every fold's status before anything is written (recipe.toml tells)
        train_idx = np.flatnonzero(folds != f)
        val_idx = np.flatnonzero(folds == f)
        fold_extra, dropped, want = fold_want(shared, extra, comp, folds, f, inputs)
        ctx = FoldContext(f, train_idx, val_idx, rd.fold_dir(f), comp, recipe, fold_extra,
                          report or (lambda step, value: None), want_train)
        status = (FoldStatus(f, "fit", "--force") if force
                  else rd.fold_status(f, want, recipe_text))
        if status.state == "current" and want_train and not rd.marker(f).get("train_predicted"):
            if not _complete_train_proba(ctx, rd.marker(f), predict_fold_train):
                status = FoldStatus(f, "fit", "predictions on its training rows "
                                    "(train.predict_train) are wanted")
        if status.state == "current":
            meta = rd.marker(f)
            if meta.get("inputs") != want:  # an older marker: record the content hashes
                rd.write_marker(f, {**meta, "recipe": want["recipe"], "inputs": want})
            current.append(f)
        else:
            todo.append((ctx, want, status, dropped))
    write_text(rd.path / "recipe.toml", recipe_text)
    if current:
        log(f"{recipe.name}: fold{'s' if len(current) > 1 else ''} "
            f"{','.join(map(str, current))} current, skipped")

    told = False
    for ctx, want, status, dropped in todo:
        f, fdir = ctx.fold, ctx.dir
        if status.state == "predict":
            t0 = time.time()
            pred = predict_fold(ctx) if predict_fold is not None else None
            if pred is not None:
                test_proba, unl_proba = split_predictions(pred, comp)
                save_npy(fdir / "test_proba.npy", test_proba.astype(np.float32))
                if unl_proba is not None:
                    save_npy(fdir / "unlabelled_proba.npy", unl_proba.astype(np.float32))
                elif (fdir / "unlabelled_proba.npy").exists():
                    (fdir / "unlabelled_proba.npy").unlink()
                rd.write_marker(f, {**rd.marker(f), "recipe": want["recipe"], "inputs": want,
                                    "unlabelled_hash": want["unlabelled_hash"],
                                    "unlabelled_predicted": unl_proba is not None})
                log(f"{recipe.name} fold {f}: {status.why}; predicted again with its kept "
                    f"model ({time.time() - t0:.0f}s)")
                continue
            status = FoldStatus(f, "fit", f"{status.why} and this member kind keeps no model "
                                "to predict them")
        if status.why != "not trained yet":
            log(f"{recipe.name} fold {f}: {status.why}; refitting")
        if fdir.exists():
            shutil.rmtree(fdir)  # an interrupted or stale fold restarts cleanly
        fdir.mkdir(parents=True)
        if dropped:
            log(f"{recipe.name} fold {f}: dropped {dropped} extra row(s) duplicating "
                "validation texts")
        t0 = time.time()
        base_extra = ctx.extra
        ctx = treat_suspects(drop_val_copies(ctx))  # data.suspects: from the training part only
        ctx = augment_fold(ctx)  # train.augment: copies of training rows, this fold only
        out = FoldOutput.of(fit_fold(ctx))
        _check_shape(out.val, (len(ctx.val_idx), comp.n_classes), "validation")
        train_proba = out.train if want_train else None
        if want_train:
            if train_proba is None:
                raise CompError(f"{recipe.name}: train.predict_train is set but this member "
                                "kind does not predict its training rows")
            _check_shape(train_proba, (len(ctx.train_idx), comp.n_classes), "training-part")
        test_proba, unl_proba = split_predictions(out.predict, comp)
        if comp.unlabelled_hash is not None and unl_proba is None and not told:
            log(f"{recipe.name}: this member kind predicts the test texts only; "
                "no unlabelled.npy")
            told = True
        s = score(recipe.metric, comp.labels[ctx.val_idx], out.val)
        save_npy(fdir / "val_proba.npy", out.val.astype(np.float32))
        save_npy(fdir / "test_proba.npy", test_proba.astype(np.float32))
        if unl_proba is not None:
            save_npy(fdir / "unlabelled_proba.npy", unl_proba.astype(np.float32))
        if train_proba is not None:
            save_npy(fdir / "train_proba.npy", train_proba.astype(np.float32))
        rd.write_marker(f, {"fold": f, "metric": recipe.metric, "score": s,
                            "seconds": round(time.time() - t0, 2), "recipe": want["recipe"],
                            "inputs": want, "n_train": len(ctx.train_idx),
                            "n_val": len(ctx.val_idx), "n_extra": len(base_extra),
                            "n_augmented": len(ctx.extra) - len(base_extra),
                            "extra_per_fold": base_extra.per_fold,
                            "extra_hash": base_extra.fingerprint,
                            "unlabelled_hash": comp.unlabelled_hash,
                            "unlabelled_predicted": unl_proba is not None,
                            "train_predicted": train_proba is not None})
        log(f"{recipe.name} fold {f}: {recipe.metric}={s:.4f} ({time.time() - t0:.0f}s)")
    return assemble(recipe, comp, folds, shared)


def _complete_train_proba(ctx: FoldContext, meta: dict,
                          predict_fold_train: PredictFoldTrain | None) -> bool:
    """Give a done fold its training-part predictions from its kept model; False if it can't."""
    if predict_fold_train is None:
        return False
    proba = predict_fold_train(ctx)
    if proba is None:
        return False
    _check_shape(proba, (len(ctx.train_idx), ctx.comp.n_classes), "training-part")
    save_npy(ctx.dir / "train_proba.npy", proba.astype(np.float32))
    write_json(ctx.dir / "done.json", {**meta, "train_predicted": True})
    log(f"{ctx.recipe.name} fold {ctx.fold}: predicted its training rows with the kept model")
    return True


def assemble(recipe: Recipe, comp: Competition, folds: np.ndarray,
             now: dict[str, Any] | None = None) -> dict | None:
    """Write oof.npy, test.npy, classes.json, cv.json once every fold the member covers is done.

    A member on a subset of folds (data.use_folds) has OOF predictions on those folds' rows
    only: the other rows of oof.npy are NaN, cv.json lists `folds_used`, and its test
    prediction is the mean of those folds' models.
    """
    run_dir = recipe.run_dir
    k = recipe.data.folds
    own = list(recipe.data.use_folds) or list(range(k))
    missing = [f for f in own if not (run_dir / f"fold{f}" / "done.json").exists()]
    if missing:
        log(f"{recipe.name}: folds {missing} not done yet; member files not written")
        return None
    metas = [read_json(run_dir / f"fold{f}" / "done.json") for f in own]
    now = now or fold_inputs(recipe, comp, folds)  # today's inputs, shared by every fold
    stale = [f for f, m in zip(own, metas)
             if any(m.get("inputs", now).get(key, now[key]) != now[key] for key in now)]
    if stale:  # folds left out of this invocation (--folds) still predict yesterday's data
        log(f"{recipe.name}: folds {stale} are not current (run them too); member files not "
            "written")
        return None
    n = len(own)
    oof = np.full((len(comp.train_ids), comp.n_classes), np.nan, dtype=np.float32)
    test = np.zeros((len(comp.test_ids), comp.n_classes), dtype=np.float64)
    for f in own:
        oof[folds == f] = np.load(run_dir / f"fold{f}" / "val_proba.npy")
        test += np.load(run_dir / f"fold{f}" / "test_proba.npy") / n
    covered = np.isin(folds, own)
    # unlabelled predictions only when every fold made them for the current texts
    unl = None
    if comp.unlabelled_hash is not None and all(
            m.get("unlabelled_hash") == comp.unlabelled_hash and m.get("unlabelled_predicted")
            for m in metas):
        unl = np.zeros((len(comp.unlabelled_texts), comp.n_classes), dtype=np.float64)
        for f in own:
            unl += np.load(run_dir / f"fold{f}" / "unlabelled_proba.npy") / n
    train_k = None  # (len(own), n_train, C): fold own[i]'s model on every train row
    if all(m.get("train_predicted") for m in metas):
        train_k = np.zeros((n, *oof.shape), dtype=np.float32)
        for i, f in enumerate(own):
            train_k[i, folds == f] = oof[folds == f]
            train_k[i, folds != f] = np.load(run_dir / f"fold{f}" / "train_proba.npy")
    cv = {
        "name": recipe.name,
        "kind": recipe.kind,
        "metric": recipe.metric,
        "cv": score(recipe.metric, comp.labels[covered], oof[covered]),
        "fold_scores": [m["score"] for m in metas],
        **{key: now[key] for key in ("folds_hash", "train_hash", "test_hash", "recipe")},
        "n_train": len(comp.train_ids),
        "n_test": len(comp.test_ids),
        "seconds": round(sum(m["seconds"] for m in metas), 2),
        "extra_rows": max(m.get("n_extra", 0) for m in metas),
    }
    if comp.multilabel:
        # per-label thresholds: the CV cuts fold k's rows at thresholds fitted without them
        from comp.tasks.thresholds import nested_thresholds

        th = nested_thresholds(comp.labels[covered], oof[covered], folds[covered],
                               recipe.metric)
        cv.update(task="multilabel", cv=th.cv, **th.summary(comp.classes))
        if n > 1:  # one fold's rows were cut in inner parts: its score stays one number
            cv["fold_scores"] = th.fold_scores
    if n < k:
        cv["folds_used"] = own
        cv["rows_covered"] = int(covered.sum())
    if cv["extra_rows"]:
        # honest CV after a pseudo-label round needs every fold's rows to be its own
        cv["extra_per_fold"] = all(m.get("extra_per_fold", False) for m in metas
                                   if m.get("n_extra", 0))
    if recipe.train.tuned_fold_seed >= 0:  # values from `comp tune`: which folds chose them
        cv["tuned_on"] = {"fold_seed": recipe.train.tuned_fold_seed,
                          "same_folds": recipe.train.tuned_fold_seed == recipe.data.fold_seed}
    if unl is not None:
        cv.update(n_unlabelled=len(unl), unlabelled_hash=comp.unlabelled_hash)
        unl = unl.astype(np.float32)
    write_member_files(run_dir, oof, test.astype(np.float32), comp.classes, cv, unl,
                       train_by_fold=train_k)
    folds_txt = " ".join(f"{s:.4f}" for s in cv["fold_scores"])
    part = f" on folds {own} only ({int(covered.sum())} rows)" if n < k else ""
    log(f"{recipe.name}: OOF {recipe.metric}={cv['cv']:.4f}{part} (folds {folds_txt})")
    return cv


def write_member_files(run_dir: str | Path, oof: np.ndarray, test: np.ndarray, classes: list[str],
                       cv: dict[str, Any], unlabelled: np.ndarray | None = None,
                       test_by_fold: np.ndarray | None = None,
                       unlabelled_by_fold: np.ndarray | None = None,
                       train_by_fold: np.ndarray | None = None) -> None:
    """Write a member directory's files (comp.kfold.rundir.RunDir.write_member_files)."""
    RunDir(run_dir).write_member_files(oof, test, classes, cv, unlabelled, test_by_fold,
                                       unlabelled_by_fold, train_by_fold)


def split_predictions(pred: np.ndarray, comp: Competition
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """A fold's (n_test + n_unlabelled, C) predictions -> (test (n_test, C), unlabelled or None).

    (n_test, C) is accepted too (a member kind that predicts the test texts only).
    """
    n_test, n_unl, c = len(comp.test_ids), len(comp.unlabelled_texts), comp.n_classes
    if n_unl and getattr(pred, "shape", None) == (n_test + n_unl, c):
        _check_shape(pred, (n_test + n_unl, c), "test + unlabelled")
        return pred[:n_test], pred[n_test:]
    if n_unl and getattr(pred, "shape", None) != (n_test, c):
        raise CompError(f"member returned test probabilities of shape {pred.shape}, expected "
                        f"({n_test + n_unl}, {c}) for the test then unlabelled texts "
                        f"(or ({n_test}, {c}) for the test texts only)")
    _check_shape(pred, (n_test, c), "test")
    return pred, None


def _check_shape(a: np.ndarray, shape: tuple[int, int], what: str) -> None:
    if a.shape != shape:
        raise CompError(f"member returned {what} probabilities of shape {a.shape}, "
                        f"expected {shape}")
    if not np.isfinite(a).all():
        raise CompError(f"member returned non-finite {what} probabilities")


def member_done(run_dir: str | Path) -> bool:
    """True when a member's files are complete (whether they are current is run_member's)."""
    return RunDir(run_dir).done()
