"""Pseudo-labels: confident test rows of an ensemble become extra training rows.

The file (id, text, label, confidence, p_<class>...) is referenced by a recipe's `train.pseudo`;
the k-fold runner adds its rows to each fold's training part only, and drops any row whose text
duplicates one of that fold's validation texts.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from comp.config import DataConfig
from comp.data import load_competition, read_table
from comp.member import ExtraRows
from comp.utils import CompError, log, read_json, write_text


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
    if (threshold is None) == (top_frac is None):
        raise CompError("pseudo: give exactly one of threshold or top_frac")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise CompError(f"pseudo: threshold must be in (0, 1], got {threshold}")
    if top_frac is not None and not 0.0 < top_frac <= 1.0:
        raise CompError(f"pseudo: top-frac must be in (0, 1], got {top_frac}")
    conf = proba.max(1)
    pred = proba.argmax(1)
    groups = [np.flatnonzero(pred == c) for c in range(proba.shape[1])] if per_class \
        else [np.arange(len(proba))]
    keep = np.zeros(len(proba), dtype=bool)
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
                out: str | Path | None = None, extra: str | None = None) -> Path:
    """Write a pseudo-label file from a submission manifest's test probabilities.

    Args:
        manifest: a submission .json written by `comp ensemble`.
        threshold, top_frac, per_class: see select_confident.
        out: output CSV; default `<manifest stem>.pseudo.csv`.
        extra: not supported yet for labelling (members predict the test file only).

    Returns:
        The CSV path.
    """
    if extra:
        raise CompError("pseudo: --extra needs members that predict extra texts; not supported "
                        "yet — append the texts to a copy of the competition's test file instead")
    man_path = Path(manifest)
    if not man_path.exists():
        raise CompError(f"{man_path}: manifest not found")
    man = read_json(man_path)
    for key in ("test", "classes", "data_dir"):
        if key not in man:
            raise CompError(f"{man_path}: not an ensemble manifest (no '{key}')")
    comp = load_competition(DataConfig(dir=man["data_dir"]))
    proba = np.load(man["test"])
    if proba.shape != (len(comp.test_ids), len(man["classes"])):
        raise CompError(f"{man['test']}: shape {proba.shape} does not match the competition's "
                        f"test file ({len(comp.test_ids)} rows)")
    keep = select_confident(proba, threshold, top_frac, per_class)
    classes = man["classes"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "text", "label", "confidence", *[f"p_{c}" for c in classes]])
    for i in np.flatnonzero(keep):
        w.writerow([comp.test_ids[i], comp.test_texts[i], classes[int(proba[i].argmax())],
                    f"{proba[i].max():.6f}", *[f"{p:.6f}" for p in proba[i]]])
    out_path = Path(out) if out else man_path.with_name(man_path.stem + ".pseudo.csv")
    write_text(out_path, buf.getvalue())
    counts = np.bincount(proba[keep].argmax(1), minlength=len(classes)).tolist()
    log(f"pseudo: {int(keep.sum())}/{len(keep)} test rows kept "
        f"(per class {dict(zip(classes, counts))}) -> {out_path}")
    return out_path


def read_pseudo(path: str | Path, classes: list[str], soft: bool = False,
                weight: float = 1.0) -> ExtraRows:
    """Read a pseudo-label file as extra training rows.

    Args:
        path: the CSV written by make_pseudo.
        classes: the competition's classes (labels must be among them).
        soft: use the p_<class> columns as targets instead of one-hot labels.
        weight: sample weight of every pseudo row.

    Returns:
        ExtraRows with (m, C) targets.
    """
    table = read_table(path)
    for col in ("text", "label"):
        if col not in table.columns:
            raise CompError(f"{path}: missing column '{col}'")
    index = {c: i for i, c in enumerate(classes)}
    texts, targets = [], []
    pcols = [f"p_{c}" for c in classes]
    if soft and not all(c in table.columns for c in pcols):
        missing = next(c for c in pcols if c not in table.columns)
        raise CompError(f"{path}: missing column '{missing}' needed for soft pseudo-labels")
    for row, n in zip(table.rows, table.row_numbers):
        label = (row.get("label") or "").strip()
        if label not in index:
            raise CompError(f"{path}: row {n}: column 'label': unseen label '{label}' "
                            f"(classes: {', '.join(classes)})")
        if soft:
            try:
                p = np.array([float(row[c]) for c in pcols])
            except (TypeError, ValueError):
                raise CompError(f"{path}: row {n}: a p_<class> column is not a number") from None
            targets.append(p / p.sum())
        else:
            targets.append(np.eye(len(classes))[index[label]])
        texts.append(row.get("text") or "")
    t = np.array(targets, dtype=np.float64).reshape(len(texts), len(classes))
    return ExtraRows(texts, t, np.full(len(texts), float(weight)), source=str(path))
