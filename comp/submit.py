"""Submission files in the competition's format, with a JSON manifest; scoring against answers."""

from __future__ import annotations

import csv
import io
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

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
                     out_stem: str | Path, manifest: dict, proba: bool = False) -> Path:
    """Write `<out_stem>_cv<CV>.csv` in sample_submission's format and its `.json` manifest.

    Args:
        comp: the competition (test ids, sample submission, column names).
        test_proba: (n_test, C) in comp.test_ids order.
        classes: class labels of the columns of test_proba (must equal comp.classes).
        out_stem: e.g. submissions/hill; the CV from manifest["cv"] is added to the name.
        manifest: method, members, weights, CVs...; commit and time are added.
        proba: also write per-class probability columns (soft-label competitions).

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
    header = [comp.sub_id_col, comp.sub_label_col]
    if proba:
        header += [f"p_{c}" for c in classes]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
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


def score_submission(submission: str | Path, answers: str | Path) -> dict:
    """Accuracy and macro-F1 of a submission CSV against answers (id, label).

    Raises:
        CompError: ids missing on either side, or no label column.
    """
    ans = read_answers(answers)
    sub = read_table(submission)
    id_col = "id" if "id" in sub.columns else sub.columns[0]
    label_col = "label" if "label" in sub.columns else sub.columns[1]
    pred = dict(zip(sub.column(id_col), sub.column(label_col)))
    missing = [i for i in ans if i not in pred]
    if missing:
        raise CompError(f"{submission}: column '{id_col}': {len(missing)} answer id(s) missing, "
                        f"e.g. '{missing[0]}'")
    return label_scores([ans[i] for i in ans], [pred[i] for i in ans])


def label_scores(truth: Sequence[str], pred: Sequence[str]) -> dict:
    """Accuracy and macro-F1 of predicted labels, and the row count n.

    Macro-F1 averages over the classes present in `truth`: a class only ever predicted adds
    no zero to the average.
    """
    from sklearn.metrics import f1_score

    acc = float(np.mean([a == b for a, b in zip(truth, pred)]))
    f1 = float(f1_score(truth, pred, average="macro", labels=sorted(set(truth)),
                        zero_division=0))
    return {"accuracy": acc, "macro_f1": f1, "n": len(truth)}
