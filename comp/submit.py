"""Submission files in the competition's format, with a JSON manifest; scoring against answers."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comp.data import Competition, read_answers, read_table
from comp.utils import CompError, write_json, write_text


def git_commit() -> str:
    """The current git commit (with a '+dirty' mark), or '' outside a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def submission_stem(out_stem: str | Path, cv: float | None) -> Path:
    """`submissions/stack` + 0.8912 -> `submissions/stack_cv0.8912`."""
    out_stem = Path(out_stem)
    if out_stem.suffix in (".csv", ".json"):
        out_stem = out_stem.with_suffix("")
    if cv is None:
        return out_stem
    return out_stem.with_name(f"{out_stem.name}_cv{cv:.4f}")


def write_submission(comp: Competition, test_proba: np.ndarray, classes: list[str],
                     out_stem: str | Path, manifest: dict, proba: bool = False,
                     thresholds: np.ndarray | None = None) -> Path:
    """Write `<out_stem>_cv<CV>.csv` in sample_submission's format and its `.json` manifest.

    Args:
        comp: the competition (test ids, sample submission, column names).
        test_proba: (n_test, C) in comp.test_ids order.
        classes: class labels of the columns of test_proba (must equal comp.classes).
        out_stem: e.g. submissions/hill; the CV from manifest["cv"] is added to the name.
        manifest: method, members, weights, CVs...; commit and time are added.
        proba: also write per-class probability columns (soft-label competitions).
        thresholds: multi-label: (L,) per-label cuts (comp.thresholds; default 0.5 each). A
            sample with one column per label gets 0/1 decisions when its values are 0/1, else
            the probabilities; a sample with one label column gets each row's positive labels
            joined by data.label_sep ("|" by default; empty when none).

    Returns:
        The CSV path. Both files are written atomically.
    """
    if list(classes) != list(comp.classes):
        raise CompError(f"submission classes {classes} differ from the competition's "
                        f"{comp.classes}")
    if test_proba.shape != (len(comp.test_ids), len(classes)):
        raise CompError(f"test probabilities have shape {test_proba.shape}, expected "
                        f"({len(comp.test_ids)}, {len(classes)})")
    by_id = dict(zip(comp.test_ids, range(len(comp.test_ids))))
    order = comp.test_ids
    if comp.sample_path is not None:
        sample = read_table(comp.sample_path)
        order = [r.get(comp.sub_id_col) or "" for r in sample.rows]
        missing = [i for i in order if i not in by_id]
        if missing:
            raise CompError(f"{comp.sample_path}: id '{missing[0]}' is not in the test file")
    pred = test_proba.argmax(1)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if comp.multilabel:
        _write_multilabel(w, comp, test_proba, classes, order, by_id, proba, thresholds)
    elif comp.sub_proba_cols:  # the sample has one probability column per class: fill those
        cols = [list(classes).index(c) for c in comp.sub_proba_cols]
        w.writerow([comp.sub_id_col, *comp.sub_proba_cols])
        for i in order:
            w.writerow([i, *(f"{p:.6f}" for p in test_proba[by_id[i], cols])])
    else:
        header = [comp.sub_id_col, comp.sub_label_col]
        if proba:
            header += [f"p_{c}" for c in classes]
        w.writerow(header)
        for i in order:
            row = [i, classes[pred[by_id[i]]]]
            if proba:
                row += [f"{p:.6f}" for p in test_proba[by_id[i]]]
            w.writerow(row)
    stem = submission_stem(out_stem, manifest.get("cv"))
    csv_path = stem.with_name(stem.name + ".csv")
    write_text(csv_path, buf.getvalue())
    full = {**manifest, "csv": str(csv_path), "n_rows": len(order),
            "commit": git_commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data_dir": str(comp.dir)}
    write_json(stem.with_name(stem.name + ".json"), full)
    return csv_path


def _write_multilabel(w: Any, comp: Competition, test_proba: np.ndarray, classes: list[str],
                      order: list[str], by_id: dict[str, int], proba: bool,
                      thresholds: np.ndarray | None) -> None:
    """The rows of a multi-label submission (see write_submission)."""
    write_multilabel_rows(w, test_proba, classes, order, by_id, thresholds, comp.sub_id_col,
                          comp.sub_label_col, comp.sub_proba_cols, comp.sub_binary,
                          comp.label_sep, proba)


def write_multilabel_rows(w: Any, test_proba: np.ndarray, classes: list[str],
                          order: list[str], by_id: dict[str, int],
                          thresholds: np.ndarray | None, id_col: str, label_col: str,
                          label_cols: list[str], binary: bool, label_sep: str,
                          proba: bool) -> None:
    """Multi-label rows in a sample's layout: one column per label (`label_cols`: 0/1
    decisions when `binary`, else probabilities), or one column of each row's positive labels
    joined by `label_sep` (plus p_<label> columns with `proba`). Decisions cut each label at
    its threshold (0.5 when None). Used by submissions and `comp predict`."""
    from comp.thresholds import apply_thresholds

    t = np.full(len(classes), 0.5) if thresholds is None else np.asarray(thresholds)
    decided = apply_thresholds(test_proba, t)  # (n_test, L)
    if label_cols:
        cols = [list(classes).index(c) for c in label_cols]
        w.writerow([id_col, *label_cols])
        for i in order:
            k = by_id[i]
            w.writerow([i, *(decided[k, cols].tolist() if binary
                             else (f"{p:.6f}" for p in test_proba[k, cols]))])
        return
    header = [id_col, label_col] + ([f"p_{c}" for c in classes] if proba else [])
    w.writerow(header)
    for i in order:
        k = by_id[i]
        row = [i, label_sep.join(c for c, v in zip(classes, decided[k]) if v)]
        w.writerow(row + ([f"{p:.6f}" for p in test_proba[k]] if proba else []))


def score_submission(submission: str | Path, answers: str | Path) -> dict:
    """Label metrics of a submission CSV against answers (id, label).

    A submission with one probability column per answer class is scored by its argmax.

    Raises:
        CompError: ids missing on either side, or no label column.
    """
    multi = _multilabel_answers(answers)
    if multi is not None:
        return _score_multilabel(submission, answers, *multi)
    ans = read_answers(answers)
    sub = read_table(submission)
    id_col = "id" if "id" in sub.columns else sub.columns[0]
    if len(sub.columns) < 2:
        raise CompError(f"{submission}: no label column (columns: {', '.join(sub.columns)})")
    classes = sorted(set(ans.values()))
    prob_cols = [c for c in sub.columns if c != id_col]
    if len(prob_cols) >= 2 and set(classes) <= set(prob_cols) and "label" not in prob_cols:
        pred = {}
        for row, n in zip(sub.rows, sub.row_numbers):
            try:
                p = [float(row.get(c) or 0) for c in prob_cols]
            except ValueError:
                raise CompError(f"{submission}: row {n}: a probability column is not a "
                                "number") from None
            pred[row.get(id_col)] = prob_cols[int(np.argmax(p))]
    else:
        label_col = "label" if "label" in sub.columns else sub.columns[1]
        pred = dict(zip(sub.column(id_col), sub.column(label_col)))
    missing = [i for i in ans if i not in pred]
    if missing:
        raise CompError(f"{submission}: column '{id_col}': {len(missing)} answer id(s) missing, "
                        f"e.g. '{missing[0]}'")
    return label_scores([ans[i] for i in ans], [pred[i] for i in ans])


def label_scores(truth: Sequence[str], pred: Sequence[str]) -> dict:
    """Every label metric of comp.metrics on predicted labels, and the row count n.

    The same functions score CV (comp.metrics.score): macro-F1 averages over the classes
    present in `truth`, so a class only ever predicted adds no zero to the average. QWK reads
    the class order of comp.data.class_order (numbers as numbers) as ordinal.
    """
    from comp.data import class_order
    from comp.metrics import METRICS, label_metric

    order = class_order([*truth, *pred])
    out: dict = {m: label_metric(m, truth, pred, order) for m, spec in METRICS.items()
                 if spec.on_labels}
    return {**out, "n": len(truth)}


_SEPS = re.compile(r"[|,; ]+")


def _multilabel_answers(answers: str | Path) -> tuple[list[str], list[str], np.ndarray] | None:
    """Multi-label answers (id, then one 0/1 column per label): (ids, labels, (n, L) 0/1);
    None for single-label answers (id, label)."""
    t = read_table(answers)
    cols = [c for c in t.columns if c != "id"]
    if "id" not in t.columns or len(cols) < 2 or "label" in cols:
        return None
    values = {(r.get(c) or "").strip() for r in t.rows for c in cols}
    if not values <= {"0", "1"}:
        return None
    y = np.array([[int(r[c]) for c in cols] for r in t.rows], dtype=np.int64)
    return t.column("id"), cols, y


def _score_multilabel(submission: str | Path, answers: str | Path, ids: list[str],
                      labels: list[str], y: np.ndarray) -> dict:
    """Multi-label metrics of a submission: one column per label (0/1, or probabilities cut
    at 0.5) or one column of labels joined by '|' (or ',', ';', ' ')."""
    from comp.metrics import METRICS, multilabel_metric_names, score

    sub = read_table(submission)
    id_col = "id" if "id" in sub.columns else sub.columns[0]
    by_id = {r.get(id_col): (r, n) for r, n in zip(sub.rows, sub.row_numbers)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise CompError(f"{submission}: column '{id_col}': {len(missing)} answer id(s) missing, "
                        f"e.g. '{missing[0]}'")
    pred = np.zeros(y.shape, dtype=np.float64)
    if set(labels) <= set(sub.columns):
        for k, i in enumerate(ids):
            row, n = by_id[i]
            try:
                pred[k] = [float(row.get(c) or 0) for c in labels]
            except ValueError:
                raise CompError(f"{submission}: row {n}: a label column is not a number") from None
    else:
        others = [c for c in sub.columns if c != id_col]
        if not others:
            raise CompError(f"{submission}: no label column (columns: {', '.join(sub.columns)})")
        col = others[0]
        for k, i in enumerate(ids):
            got = {s for s in _SEPS.split((by_id[i][0].get(col) or "").strip()) if s}
            pred[k] = [c in got for c in labels]
    out = {m: score(m, y, pred) for m in multilabel_metric_names() if METRICS[m].on_labels}
    return {**out, "n": len(ids)}
