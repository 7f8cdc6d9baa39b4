"""Extra training rows (pseudo-labels, teacher targets): read, checked and cut per fold so no
validation text trains its fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from comp.config.schema import Recipe
from comp.core.utils import CompError, log, sha1_of
from comp.data.competition import Competition
from comp.data.folds import normalize_text
from comp.data.readers import read_table


@dataclass
class ExtraRows:
    """Rows that only ever join training parts: texts with soft targets and weights."""

    texts: list[str] = field(default_factory=list)
    targets: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (m, C) probabilities
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (m,)
    source: str = ""
    # (m,) the fold each row is for, -1 = every fold; None = every row serves every fold
    folds: np.ndarray | None = None
    folds_hash: str = ""  # the fold table `folds` refers to ("" = not recorded)
    # multi-label pseudo rows: (m, L) the decided 0/1 label sets (targets may be soft); None
    # elsewhere (members that need hard labels take the targets' argmax)
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def per_fold(self) -> bool:
        """True when every row is meant for one fold only."""
        return self.folds is not None and len(self) > 0 and bool((self.folds >= 0).all())

    @property
    def fingerprint(self) -> str:
        """What a fold trained on: texts, targets and weights ("" when there are no rows)."""
        if not len(self):
            return ""
        return sha1_of([*self.texts, np.asarray(self.targets, np.float32).tobytes().hex(),
                        np.asarray(self.weights, np.float32).tobytes().hex(),
                        *([np.asarray(self.labels, np.int8).tobytes().hex()]
                          if self.labels is not None else [])])

    def subset(self, keep: np.ndarray) -> ExtraRows:
        """The rows where keep is True."""
        idx = np.flatnonzero(keep)
        return ExtraRows([self.texts[i] for i in idx], self.targets[idx], self.weights[idx],
                         self.source, self.folds[idx] if self.folds is not None else None,
                         self.folds_hash,
                         self.labels[idx] if self.labels is not None else None)


def join_extra(a: ExtraRows, b: ExtraRows) -> ExtraRows:
    """Rows of a, then b (b's `folds` and `labels` kept where a has none of its own)."""
    if not len(a):
        return b
    n = a.targets.shape[1]
    folds = (np.concatenate([a.folds if a.folds is not None else np.full(len(a), -1),
                             b.folds if b.folds is not None else np.full(len(b), -1)]))
    labels = None
    if a.labels is not None or b.labels is not None:
        labels = np.concatenate([a.labels if a.labels is not None else (a.targets >= 0.5),
                                 b.labels if b.labels is not None else (b.targets >= 0.5)]
                                ).astype(np.int64)
    return ExtraRows([*a.texts, *b.texts], np.concatenate([a.targets, b.targets.reshape(-1, n)]),
                     np.concatenate([a.weights, b.weights]).astype(np.float32),
                     f"{a.source}+{b.source}", folds, a.folds_hash or b.folds_hash, labels)


def extra_for_fold(extra: ExtraRows, val_texts: list[str], fold: int | None = None
                   ) -> tuple[ExtraRows, int]:
    """The extra rows one fold trains with; returns (rows, n_dropped).

    Args:
        extra: all extra rows.
        val_texts: the fold's validation texts; rows duplicating one are dropped (counted).
        fold: the fold id; rows meant for another fold (`extra.folds`) are left out (not
            counted). None keeps rows of every fold.
    """
    if fold is not None and extra.folds is not None:
        extra = extra.subset((extra.folds == fold) | (extra.folds < 0))
    if not len(extra):
        return extra, 0
    val_keys = {normalize_text(t) for t in val_texts}
    keep = np.array([normalize_text(t) not in val_keys for t in extra.texts])
    return extra.subset(keep), int((~keep).sum())


def check_extra_folds(extra: ExtraRows, k: int, folds_hash: str) -> None:
    """Refuse per-fold extra rows made for another fold table: their fold ids would mean
    nothing here, and a row could train the fold whose validation labels it came from."""
    if extra.folds is None or not len(extra):
        return
    top = int(extra.folds.max())
    if top >= k:
        raise CompError(f"{extra.source}: column 'fold': rows for fold {top} but the member has "
                        f"data.folds={k}; make the pseudo-labels from members on this fold table")
    if extra.folds_hash and extra.folds_hash != folds_hash:
        raise CompError(f"{extra.source}: column 'folds_hash': per-fold rows labelled for fold "
                        f"table {extra.folds_hash}, but this member's is {folds_hash}; make the "
                        "pseudo-labels from members on this fold table")


def load_pseudo_for(recipe: Recipe, comp: Competition) -> ExtraRows:
    """The recipe's pseudo-label file (train.pseudo) as extra rows, or none (a multilabel
    task's: label sets joined by data.label_sep, comp.workflows.pseudo).

    A file without per-fold rows (no `fold` column, or empty cells) gives every fold the same
    rows; that is logged, since the member's CV then flatters it.
    """
    if not recipe.train.pseudo:
        return ExtraRows(targets=np.zeros((0, comp.n_classes)))

    rows = read_pseudo(recipe.train.pseudo, comp.classes, soft=recipe.train.pseudo_soft,
                       weight=recipe.train.pseudo_weight,
                       label_sep=comp.label_sep if comp.multilabel else None)
    if len(rows) and not rows.per_fold:
        n = len(rows) if rows.folds is None else int((rows.folds < 0).sum())
        log(f"{recipe.name}: {n} pseudo row(s) of {recipe.train.pseudo} serve every fold; "
            "their labels came from models that saw each fold's validation labels, so this "
            "member's CV is optimistic (comp pseudo writes per-fold rows from a new ensemble)")
    return rows


def read_pseudo(path: str | Path, classes: list[str], soft: bool = False,
                weight: float = 1.0, label_sep: str | None = None) -> ExtraRows:
    """Read a pseudo-label file as extra training rows.

    Args:
        path: the CSV written by make_pseudo (or any file with text and label columns).
        classes: the competition's classes (labels must be among them); a multilabel task's
            label names.
        soft: use the p_<class> columns as targets instead of one-hot labels (multilabel: each
            label's probability as it is).
        weight: sample weight of every pseudo row.
        label_sep: a multilabel task's separator: each `label` cell is a set of labels joined
            by it (empty: no label); None for a single-label task.

    Returns:
        ExtraRows with (m, C) targets; `folds` (m,) holds each row's fold (-1 for an empty
        cell: every fold), or None when the file has no fold numbers (an older, global file);
        `folds_hash` the fold table those numbers refer to. Multilabel: `labels` (m, L) holds
        the decided 0/1 label sets (the targets too unless soft).
    """
    table = read_table(path)
    table.require(("text", "label"))
    index = {c: i for i, c in enumerate(classes)}
    texts, targets, folds, sets = [], [], [], []
    hashes: set[str] = set()
    pcols = [f"p_{c}" for c in classes]
    if soft:
        table.require(pcols, " needed for soft pseudo-labels")
    for row, n in zip(table.rows, table.row_numbers):
        label = (row.get("label") or "").strip()
        names = ([t.strip() for t in label.split(label_sep) if t.strip()]
                 if label_sep is not None else [label])
        for name in names:
            if name not in index:
                raise CompError(f"{path}: row {n}: column 'label': unseen label '{name}' "
                                f"({'labels' if label_sep is not None else 'classes'}: "
                                f"{', '.join(classes)})")
        if label_sep is not None:
            sets.append(np.isin(np.arange(len(classes)), [index[x] for x in names]))
        fold = (row.get("fold") or "").strip()
        if fold and not (fold.isascii() and fold.isdigit()):
            raise CompError(f"{path}: row {n}: column 'fold': '{fold}' is not a fold number "
                            "(leave it empty for a row that serves every fold)")
        folds.append(int(fold) if fold else -1)
        if fold and (row.get("folds_hash") or "").strip():
            hashes.add(row["folds_hash"].strip())
        if soft:
            try:
                p = np.array([float(row[c]) for c in pcols])
            except (TypeError, ValueError):
                raise CompError(f"{path}: row {n}: a p_<class> column is not a number") from None
            if label_sep is not None:  # independent labels: each probability as it is
                if not ((p >= 0) & (p <= 1)).all():
                    raise CompError(f"{path}: row {n}: a p_<label> column is outside [0, 1]")
                targets.append(p)
            else:
                targets.append(p / p.sum())
        elif label_sep is not None:
            targets.append(sets[-1].astype(np.float64))
        else:
            targets.append(np.eye(len(classes))[index[label]])
        texts.append(row.get("text") or "")
    if len(hashes) > 1:
        raise CompError(f"{path}: column 'folds_hash': rows from {len(hashes)} fold tables "
                        f"({', '.join(sorted(hashes))}); one file serves one fold table")
    t = np.array(targets, dtype=np.float64).reshape(len(texts), len(classes))
    f = np.array(folds, dtype=np.int64)
    decided = (np.array(sets, dtype=np.int64).reshape(len(texts), len(classes))
               if label_sep is not None else None)
    return ExtraRows(texts, t, np.full(len(texts), float(weight)), source=str(path),
                     folds=f if (f >= 0).any() else None, folds_hash=next(iter(hashes), ""),
                     labels=decided)
