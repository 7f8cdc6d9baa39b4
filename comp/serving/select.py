"""`comp labels select`: which unlabelled texts to label next (active learning).

    path = select_to_label(source, pool, n, out)

A finished ensemble or member (`source`) predicts every text of the pool file; a text's
uncertainty is the normalised entropy of its probabilities (multi-label: the mean over labels of
each label's binary entropy). Near-duplicates (the same text after normalisation, which is how
folds group them) count once. The distinct texts are embedded with frozen e5 (comp.nn.sentence)
and clustered into `n` groups by k-means; a text's representativeness is its cosine to its
group's centre, so an outlier counts little. Each group gives its text with the highest
uncertainty x representativeness, and the `n` picks are ranked by that score: `n` rows that
cover `n` different kinds of text, the model's doubts first, instead of `n` near-copies of its
single worst confusion.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from comp.core.utils import CompError, log, write_text
from comp.data.folds import normalize_text
from comp.data.readers import read_table

COLUMNS = ("id", "text", "predicted", "uncertainty", "representativeness", "score", "cluster",
           "rank")


def uncertainty(proba: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """(n,) in [0, 1]: the task shape's predictive entropy over its largest value (log C over
    C classes; multi-label: L binary entropies of log 2 each)."""
    from comp.tasks.shapes import task_of

    proba = np.asarray(proba, dtype=np.float64)
    c = proba.shape[1]
    top = c * np.log(2) if multilabel else np.log(max(c, 2))
    return task_of("multilabel" if multilabel else "single").entropy(proba) / top


def read_pool(path: str | Path, text_col: str = "text") -> tuple[list[str], list[str]]:
    """(ids, texts) of a pool file (csv/tsv/jsonl/json/txt). A .txt file is one text a line;
    the others need a `text_col` column, ids from an `id` column or the row numbers. An empty
    text is a one-line error naming file, row and column."""
    path = Path(path)
    if not path.is_file():
        raise CompError(f"{path}: pool file not found")
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        texts = [t.strip() for t in lines if t.strip()]
        return [str(i) for i in range(len(texts))], texts
    table = read_table(path)
    table.require([text_col], " (the texts to choose from)")
    ids, texts = [], []
    for i, (row, line) in enumerate(zip(table.rows, table.row_numbers)):
        text = (row.get(text_col) or "").strip()
        if not text:
            raise CompError(f"{path}: row {line}, column '{text_col}': empty text")
        ids.append(str(row.get("id") or i))
        texts.append(text)
    return ids, texts


def select_to_label(source: str | Path, pool: str | Path, n: int,
                    out: str | Path = "to_label.csv", seed: int = 0) -> Path:
    """Write the `n` pool texts to label next (see the module doc); returns the CSV path."""
    from sklearn.cluster import KMeans

    from comp.nn.backbones.e5 import resolve_backbone
    from comp.nn.sentence import cached_encode
    from comp.serving.predictor import load

    if n < 1:
        raise CompError(f"--n: must be >= 1, got {n}")
    ids, texts = read_pool(pool)
    model = load(source)
    first: dict[str, int] = {}
    for i, t in enumerate(texts):  # near-duplicates count once
        first.setdefault(normalize_text(t), i)
    keep = np.array(sorted(first.values()))
    if len(keep) < len(texts):
        log(f"labels select: {len(texts) - len(keep)} near-duplicate pool texts counted once")
    n = min(n, len(keep))
    texts_k = [texts[i] for i in keep]
    proba = model.predict_proba(texts_k)
    unc = uncertainty(proba, model.multilabel)
    decided = model.shape.decide(proba, model.thresholds)  # as comp predict decides
    folder = Path(resolve_backbone(Path("models") / "e5-small"))
    emb = cached_encode(folder, texts_k, 128, folder.parent / "embeddings")
    km = KMeans(n_clusters=n, n_init=3, random_state=seed).fit(emb)
    centres = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
    rep = np.clip((emb * centres[km.labels_]).sum(1), 0.0, 1.0)
    score = unc * rep
    picks = [int(np.flatnonzero(km.labels_ == c)[np.argmax(score[km.labels_ == c])])
             for c in range(n) if (km.labels_ == c).any()]
    picks.sort(key=lambda j: -score[j])
    classes = list(model.classes)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for rank, j in enumerate(picks, start=1):
        pred = ("|".join(c for c, v in zip(classes, decided[j]) if v) if model.multilabel
                else classes[int(decided[j])])
        w.writerow([ids[keep[j]], texts_k[j], pred, f"{unc[j]:.4f}", f"{rep[j]:.4f}",
                    f"{score[j]:.4f}", int(km.labels_[j]), rank])
    write_text(out, buf.getvalue())
    log(f"labels select: {len(picks)} of {len(keep)} distinct pool texts, one per k-means "
        f"group of e5 embeddings, most uncertain x representative first -> {out}")
    return Path(out)
