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

from comp.core.utils import CompError, write_json, write_text
from comp.data.competition import Competition, SampleLayout
from comp.data.readers import read_answers, read_table


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
        thresholds: multi-label: (L,) per-label cuts (comp.tasks.thresholds; default 0.5 each). A
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
    order = comp.sub_order or comp.test_ids  # load_competition checked the sample's ids
    buf = io.StringIO()
    write_rows(csv.writer(buf, lineterminator="\n"), test_proba, classes, comp.test_ids, order,
               comp.layout, comp.multilabel, thresholds, comp.label_sep, proba)
    stem = submission_stem(out_stem, manifest.get("cv"))
    csv_path = stem.with_name(stem.name + ".csv")
    write_text(csv_path, buf.getvalue())
    full = {**manifest, "csv": str(csv_path), "n_rows": len(order),
            "commit": git_commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data_dir": str(comp.dir)}
    write_json(stem.with_name(stem.name + ".json"), full)
    return csv_path


def sample_order(sample: Any, path: str | Path, id_col: str, ids: Sequence[str],
                 test_name: str) -> list[str]:
    """The sample's ids in its row order (its column `id_col`), every one of them among `ids`.

    Raises:
        CompError: a sample id that the test file (`test_name`) does not have.
    """
    order = [r.get(id_col) or "" for r in sample.rows]
    missing = sorted(set(order) - set(ids))
    if missing:
        raise CompError(f"{path}: column '{id_col}': id '{missing[0]}' is not in {test_name} "
                        f"({len(missing)} missing)")
    return order


def write_rows(w: Any, test_proba: np.ndarray, classes: list[str], ids: Sequence[str],
               order: Sequence[str], layout: SampleLayout, multilabel: bool,
               thresholds: np.ndarray | None, label_sep: str, proba: bool) -> None:
    """The rows of a submission in a sample's layout (used by submissions and `comp predict`):
    `test_proba` row k belongs to `ids[k]`; rows are written in `order`.

    Single-label: one probability column per class when the layout has them, else id + the
    argmax class (+ p_<class> columns with `proba`). Multi-label: one column per label (0/1
    decisions when `layout.binary`, else probabilities), or one column of each row's positive
    labels joined by `label_sep` (+ p_<label> with `proba`); decisions cut each label at its
    threshold (0.5 when None).
    """
    from comp.tasks.thresholds import apply_thresholds

    by_id = {i: k for k, i in enumerate(ids)}
    rows = [by_id[i] for i in order]
    classes = list(classes)
    t = np.full(len(classes), 0.5) if thresholds is None else np.asarray(thresholds)
    if layout.proba_cols:
        cols = [classes.index(c) for c in layout.proba_cols]
        w.writerow([layout.id_col, *layout.proba_cols])
        if multilabel and layout.binary:
            cells = apply_thresholds(test_proba[rows][:, cols], t[cols]).tolist()
        else:
            cells = [[f"{p:.6f}" for p in test_proba[k, cols]] for k in rows]
        for i, c in zip(order, cells):
            w.writerow([i, *c])
        return
    w.writerow([layout.id_col, layout.label_col] + ([f"p_{c}" for c in classes] if proba else []))
    if multilabel:
        decided = apply_thresholds(test_proba[rows], t)
        labels = [label_sep.join(c for c, v in zip(classes, d) if v) for d in decided]
    else:
        labels = [classes[int(j)] for j in test_proba[rows].argmax(1)]
    for i, k, lab in zip(order, rows, labels):
        w.writerow([i, lab] + ([f"{p:.6f}" for p in test_proba[k]] if proba else []))


def score_submission(submission: str | Path, answers: str | Path) -> dict:
    """Label metrics of a submission CSV against answers (id, label).

    A submission with one probability column per answer class is scored by its argmax.

    Raises:
        CompError: ids missing on either side, or no label column.
    """
    multi = multilabel_answers(answers)
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
    """Every label metric of comp.core.metrics on predicted labels, and the row count n.

    The same functions score CV (comp.core.metrics.score): macro-F1 averages over the classes
    present in `truth`, so a class only ever predicted adds no zero to the average. QWK reads
    the class order of comp.data.competition.class_order (numbers as numbers) as ordinal.
    """
    from comp.core.metrics import METRICS, label_metric
    from comp.data.competition import class_order

    order = class_order([*truth, *pred])
    out: dict = {m: label_metric(m, truth, pred, order) for m, spec in METRICS.items()
                 if spec.on_labels}
    return {**out, "n": len(truth)}


_SEPS = re.compile(r"[|,; ]+")


def multilabel_answers(answers: str | Path) -> tuple[list[str], list[str], np.ndarray] | None:
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
    from comp.core.metrics import METRICS, multilabel_metric_names, score

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
