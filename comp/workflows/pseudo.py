"""Pseudo-labels: confident test and unlabelled rows of an ensemble become extra training rows.

The rows come from the ensemble's test probabilities and, when its members predicted the
competition's unlabelled texts (`data.extra`), from its unlabelled probabilities too; one
confidence cut ranks both together. The file (id, text, label, confidence, p_<class>...,
source, fold, folds_hash) is referenced by a recipe's `train.pseudo`; the k-fold runner adds
its rows to training parts only.

Per fold by default: fold k's block of rows is labelled by the ensemble's fold-k prediction
(test_by_fold.npy), which only models that never saw fold k's validation labels made, and only
fold k trains with it. Global labels average every fold's models, so a near-copy of a fold-k
validation text could carry that row's label back into fold k's training and flatter its CV.
An ensemble without per-fold predictions (or `per_fold=False`) still gives one global block
(empty fold cells) that every fold trains with. Either way the runner also drops any row whose
text duplicates one of the fold's validation texts.

A multi-label task (the manifest's competition has data.task = "multilabel") keeps the same
file and the same blocks; only a row's label and confidence change. The p_<label> columns hold
each label's own probability (rows need not sum to 1), and `label` holds the decided label set:
the labels whose probability reaches the label's threshold, joined by the competition's
`data.label_sep` ("|" when it has label columns; empty for a row with no label). That column is
what members read back (`read_pseudo(..., label_sep=...)`: an unknown label in it is an error);
with train.pseudo_soft the fusion members learn the p_<label> columns instead (BCE takes them
as they are) while TF-IDF members keep the decided set. The thresholds are the ensemble's
(manifest "thresholds"); fold k's block is cut at "fold_thresholds"[k], fitted without fold k's
rows. `threshold` keeps its single-label meaning, the probability that the decision is right,
now per label: a label decided present (p >= its threshold t) is right with probability p, one
decided absent with 1 - p (`label_confidence`), and a row's confidence (the `confidence`
column) is its least sure label's. A row is kept when every label is far from its threshold on
the side it was decided: p >= max(t, threshold), or p < t and p <= 1 - threshold. Every label
of a row has to pass, so a multi-label round cuts lower than a single-label one: the pipeline
uses MULTILABEL_THRESHOLD (0.8: 0.95 of each of 4 labels kept no row of a TF-IDF member on the
multi-label fixture, 0.8 about a sixth of the test rows). `per_class` groups rows by their
decided label set.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np

from comp.config.schema import DataConfig, from_dict
from comp.core.utils import CompError, log, read_json, write_text
from comp.data.competition import Competition, load_competition
from comp.data.folds import normalize_text

# the pipeline's cut for a multilabel task (module docstring); a single-label round uses 0.95
MULTILABEL_THRESHOLD = 0.8


def _check_cut(threshold: float | None, top_frac: float | None) -> None:
    """Exactly one of threshold / top_frac, each in (0, 1]."""
    if (threshold is None) == (top_frac is None):
        raise CompError("pseudo: give exactly one of threshold or top_frac")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise CompError(f"pseudo: threshold must be in (0, 1], got {threshold}")
    if top_frac is not None and not 0.0 < top_frac <= 1.0:
        raise CompError(f"pseudo: top-frac must be in (0, 1], got {top_frac}")


def select_confident(proba: np.ndarray, threshold: float | None = None,
                     top_frac: float | None = None, per_class: bool = False) -> np.ndarray:
    """Boolean mask of rows to pseudo-label.

    Args:
        proba: (n, C) probabilities.
        threshold: keep rows whose max probability is >= threshold.
        top_frac: keep the most confident fraction of rows.
        per_class: apply the cut within each predicted class, so a dominant class cannot
            crowd out the others.

    Returns:
        (n,) bool mask.
    """
    _check_cut(threshold, top_frac)
    conf = proba.max(1)
    pred = proba.argmax(1)
    groups = [np.flatnonzero(pred == c) for c in range(proba.shape[1])] if per_class \
        else [np.arange(len(proba))]
    return _cut(conf, groups, threshold, top_frac)


def label_confidence(proba: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n, L) probability that each multi-label decision is right: p for a label decided
    present (p >= its threshold), 1 - p for one decided absent (at 0.5: max(p, 1 - p))."""
    p = np.asarray(proba, dtype=np.float64)
    return np.where(p >= np.asarray(thresholds, dtype=np.float64)[None, :], p, 1 - p)


def select_confident_multilabel(proba: np.ndarray, thresholds: np.ndarray,
                                threshold: float | None = None, top_frac: float | None = None,
                                per_class: bool = False) -> np.ndarray:
    """Boolean mask of multi-label rows to pseudo-label: every label far from its threshold.

    Args:
        proba: (n, L) per-label probabilities.
        thresholds: (L,) the labels' decision thresholds.
        threshold: keep rows whose least confident label (`label_confidence`) is >= threshold.
        top_frac: keep the most confident fraction of rows (by that least confident label).
        per_class: apply the cut within each decided label set.

    Returns:
        (n,) bool mask.
    """
    _check_cut(threshold, top_frac)
    conf = label_confidence(proba, thresholds).min(1) if len(proba) else np.zeros(0)
    if per_class and len(proba):
        decided = (np.asarray(proba) >= np.asarray(thresholds)[None, :])
        _, group = np.unique(decided, axis=0, return_inverse=True)
        group = np.asarray(group).ravel()
        groups = [np.flatnonzero(group == g) for g in range(int(group.max()) + 1)]
    else:
        groups = [np.arange(len(proba))]
    return _cut(conf, groups, threshold, top_frac)


def _cut(conf: np.ndarray, groups: list[np.ndarray], threshold: float | None,
         top_frac: float | None) -> np.ndarray:
    """(n,) mask: within each group of rows, confidence >= threshold or the top fraction."""
    keep = np.zeros(len(conf), dtype=bool)
    for idx in groups:
        if not len(idx):
            continue
        if threshold is not None:
            keep[idx[conf[idx] >= threshold]] = True
        else:
            n = int(round(len(idx) * top_frac))
            keep[idx[np.argsort(-conf[idx], kind="stable")[:n]]] = True
    return keep


def make_pseudo(manifest: str | Path, threshold: float | None = None,
                top_frac: float | None = None, per_class: bool = False,
                out: str | Path | None = None, extra: str | None = None,
                per_fold: bool = True) -> Path:
    """Write a pseudo-label file from a submission manifest's test and unlabelled probabilities.

    Args:
        manifest: a submission .json written by `comp ensemble`.
        threshold, top_frac, per_class: see select_confident (applied to test and unlabelled
            rows together, and to each fold's rows separately when per fold); for a multilabel
            task select_confident_multilabel, at the ensemble's per-label thresholds (module
            docstring).
        out: output CSV; default `<manifest stem>.pseudo.csv`.
        extra: the unlabelled file the members predicted, when the manifest's [data] table
            does not lead to it (e.g. it moved); its texts must be the ones the members saw.
        per_fold: one block of rows per fold from the manifest's per-fold predictions
            (`test_by_fold`, `unlabelled_by_fold`), each for its fold only; when the manifest
            has none, or False, one block for every fold (logged: CV will be optimistic).

    Returns:
        The CSV path.
    """
    man_path = Path(manifest)
    if not man_path.exists():
        raise CompError(f"{man_path}: manifest not found")
    man = read_json(man_path)
    for key in ("test", "classes", "data_dir"):
        if key not in man:
            raise CompError(f"{man_path}: not an ensemble manifest (no '{key}')")
    cfg = _data_config(man, man_path)
    if extra:
        cfg = dataclasses.replace(cfg, extra=str(Path(extra).resolve()))
    elif not man.get("unlabelled"):
        cfg = dataclasses.replace(cfg, extra="")  # nothing to label there: do not read it
    comp = load_competition(cfg)
    classes = man["classes"]
    cuts = _label_thresholds(man, man_path, comp, classes) if comp.multilabel else None
    proba = np.load(man["test"])
    if proba.shape != (len(comp.test_ids), len(classes)):
        raise CompError(f"{man['test']}: shape {proba.shape} does not match the competition's "
                        f"test file ({len(comp.test_ids)} rows)")
    ids, texts = list(comp.test_ids), list(comp.test_texts)
    source = ["test"] * len(ids)
    unl = _unlabelled_proba(man, man_path, comp, len(classes), required=bool(extra))
    if unl is not None:
        proba = np.concatenate([proba, unl])  # (n_test + n_unlabelled, C)
        ids += comp.unlabelled_ids
        texts += comp.unlabelled_texts
        source += ["unlabelled"] * len(unl)
    by_fold, why = (_by_fold_proba(man, man_path, comp, len(classes), unl is not None)
                    if per_fold else (None, "asked for one set of rows for every fold"))
    # blocks of (fold cell, (n_rows, C) probabilities); "" = every fold
    blocks = ([(str(k), p) for k, p in enumerate(by_fold)] if by_fold is not None
              else [("", proba)])
    folds_hash = str(man.get("folds_hash") or "") if by_fold is not None else ""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "text", "label", "confidence", *[f"p_{c}" for c in classes],
                "source", "fold", "folds_hash"])
    n_test = len(comp.test_ids)
    kept, counts, dups = [], np.zeros(len(classes), dtype=np.int64), 0
    for fold, p in blocks:
        if cuts is None:
            keep, dup = _choose(p, texts, threshold, top_frac, per_class)
            counts += np.bincount(p[keep].argmax(1), minlength=len(classes))
            labels = [classes[int(j)] for j in p.argmax(1)]
            conf = p.max(1)
        else:  # fold k's rows at the thresholds fitted without fold k's rows
            t = cuts[1].get(fold, cuts[0])
            keep, dup = _choose(p, texts, threshold, top_frac, per_class, t)
            decided = p >= t[None, :]
            counts += decided[keep].sum(0)
            labels = [comp.label_sep.join(c for c, d in zip(classes, row) if d)
                      for row in decided]
            conf = label_confidence(p, t).min(1)
        dups += dup
        kept.append((int(keep[:n_test].sum()), int(keep[n_test:].sum())))
        for i in np.flatnonzero(keep):
            w.writerow([ids[i], texts[i], labels[i], f"{conf[i]:.6f}",
                        *[f"{x:.6f}" for x in p[i]], source[i], fold, folds_hash])
    out_path = Path(out) if out else man_path.with_name(man_path.stem + ".pseudo.csv")
    write_text(out_path, buf.getvalue())
    what = "/".join(str(t) for t, _ in kept) + f" of {n_test} test rows"
    if unl is not None:
        what += " + " + "/".join(str(u) for _, u in kept) + f" of {len(unl)} unlabelled rows"
    what_counts = "positives per label" if cuts is not None else "classes"
    where = (f"per fold ({len(blocks)} folds; {what_counts} summed over them"
             if by_fold is not None else f"for every fold ({what_counts}")
    log(f"pseudo: {what} kept {where} {dict(zip(classes, counts.tolist()))}"
        + (f"; {dups} duplicate text(s) dropped" if dups else "") + f") -> {out_path}")
    if by_fold is None:
        log(f"pseudo: one set of rows for every fold ({why}); its labels came from models that "
            "saw every fold's validation labels, so CV after the round is optimistic")
    return out_path


def _choose(proba: np.ndarray, texts: list[str], threshold: float | None,
            top_frac: float | None, per_class: bool,
            label_thresholds: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """select_confident (select_confident_multilabel given per-label thresholds), then one row
    per text; returns ((n,) mask, duplicates dropped)."""
    keep = (select_confident(proba, threshold, top_frac, per_class)
            if label_thresholds is None else
            select_confident_multilabel(proba, label_thresholds, threshold, top_frac, per_class))
    # one row per text: a text in both files (or twice) would count double in training
    seen: set[str] = set()
    dup = 0
    for i in np.flatnonzero(keep):
        key = normalize_text(texts[i])
        if key in seen:
            keep[i] = False
            dup += 1
        seen.add(key)
    return keep, dup


def _label_thresholds(man: dict, man_path: Path, comp: Competition, classes: list[str]
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A multilabel ensemble's (L,) thresholds and {fold cell: (L,) fitted without that fold}.

    A manifest without thresholds cuts every label at 0.5 (logged); a fold without its own
    thresholds takes the global ones.
    """
    bad = [c for c in classes if comp.label_sep in c]
    if bad:
        raise CompError(f"{man_path}: label '{bad[0]}' contains the label separator "
                        f"'{comp.label_sep}' the pseudo-label file joins labels with; set "
                        "data.label_sep to a string no label holds")
    got = man.get("thresholds")
    if not isinstance(got, dict) or any(c not in got for c in classes):
        log(f"pseudo: {man_path.name} records no per-label thresholds; labels are decided at "
            "0.5")
        return np.full(len(classes), 0.5), {}
    t = np.array([float(got[c]) for c in classes])
    by_fold = {str(k): np.array(v, dtype=np.float64)
               for k, v in (man.get("fold_thresholds") or {}).items()
               if len(v) == len(classes)}
    return t, by_fold


def _by_fold_proba(man: dict, man_path: Path, comp: Competition, n_classes: int,
                   with_unlabelled: bool) -> tuple[np.ndarray | None, str]:
    """The ensemble's (K, n_test [+ n_unlabelled], C) per-fold probabilities, or (None, why)."""
    n_test = len(comp.test_ids)

    def load(key: str, n_rows: int, what: str) -> np.ndarray:
        f = Path(man[key])
        if not f.exists():
            raise CompError(f"{man_path}: per-fold {what} probabilities {f} not found")
        a = np.load(f)
        if a.ndim != 3 or a.shape[1:] != (n_rows, n_classes):
            raise CompError(f"{f}: shape {a.shape}, expected (folds, {n_rows}, {n_classes}) "
                            f"for the {what} rows")
        return a

    if not man.get("test_by_fold"):
        return None, (f"{man_path.name} has no per-fold predictions: its ensemble was made "
                      "before them or a member lacks fold{k}/test_proba.npy")
    if man.get("folds_used"):
        return None, (f"{man_path.name} has per-fold predictions of folds {man['folds_used']} "
                      "only (a member covers only those), and every fold needs its own rows")
    test_k = load("test_by_fold", n_test, "test")
    if not with_unlabelled:
        return test_k, ""
    if not man.get("unlabelled_by_fold"):
        return None, f"{man_path.name} has no per-fold unlabelled predictions"
    unl_k = load("unlabelled_by_fold", len(comp.unlabelled_texts), "unlabelled")
    if len(unl_k) != len(test_k):
        raise CompError(f"{man['unlabelled_by_fold']}: {len(unl_k)} folds but "
                        f"{man['test_by_fold']} has {len(test_k)}")
    return np.concatenate([test_k, unl_k], axis=1), ""  # (K, n_test + n_unlabelled, C)


def _data_config(man: dict, man_path: Path) -> DataConfig:
    """The members' [data] table recorded in the manifest, else the competition dir alone."""
    if isinstance(man.get("data"), dict):
        try:
            return from_dict(DataConfig, man["data"], "data")
        except CompError as e:
            raise CompError(f"{man_path}: 'data': {e}") from None
    from comp.data.settings import folder_data_config

    return folder_data_config(man["data_dir"])


def _unlabelled_proba(man: dict, man_path: Path, comp: Competition, n_classes: int,
                      required: bool) -> np.ndarray | None:
    """The ensemble's (n_unlabelled, C) probabilities, checked against the texts; None if none."""
    if not man.get("unlabelled"):
        if required:
            raise CompError(f"{man_path}: the ensemble has no unlabelled predictions (a member "
                            "lacks unlabelled.npy); set data.extra in the members' recipes and "
                            "retrain them")
        return None
    f = Path(man["unlabelled"])
    if not f.exists():
        raise CompError(f"{man_path}: unlabelled probabilities {f} not found")
    if not comp.unlabelled_texts:
        log(f"pseudo: {man_path} has unlabelled predictions but its [data] table names no "
            "unlabelled file; pass --extra FILE to label them")
        return None
    u = np.load(f)
    if u.shape != (len(comp.unlabelled_texts), n_classes):
        raise CompError(f"{f}: shape {u.shape} but {comp.unlabelled_path} has "
                        f"{len(comp.unlabelled_texts)} texts; retrain the members on this file")
    want = man.get("unlabelled_hash")
    if want is not None and want != comp.unlabelled_hash:
        raise CompError(f"{comp.unlabelled_path}: not the unlabelled texts the members predicted "
                        f"({man_path} unlabelled_hash {want}); retrain the members on this file")
    return u
