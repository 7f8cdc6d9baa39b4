"""Distilled students: member files, the KD loss, alpha = 1 as plain training, the fold leak
guard (validation rows never taught, never seen), and refusing a teacher from another
competition or fold table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import comp.members.student as distill
import comp.nn.serving as serving
import comp.workflows.distill as teacher_wf
from comp.config.schema import DataConfig, Recipe
from comp.core.utils import CompError
from comp.data.competition import load_competition
from comp.data.folds import folds_hash, load_folds, normalize_text
from comp.data.recipes import load_recipe
from comp.members.student import UNLABELLED, DistillLoss, load_teacher, pack_targets, train_student
from comp.nn.fusion import grid_texts
from comp.nn.losses import create_loss, loss_names
from comp.nn.serving import predict_texts, serving_model
from comp.nn.vectors import train_vectors

K = 3


@pytest.fixture(scope="module")
def vec_dir(tmp_path_factory) -> Path:
    """Tiny char and word vectors trained on the small competition's texts."""
    from conftest import make_small_competition

    root = tmp_path_factory.mktemp("vec")
    comp = load_competition(DataConfig(dir=str(make_small_competition(root / "c"))))
    texts = comp.train_texts + comp.test_texts
    for kind in ("char", "word"):
        train_vectors(texts, kind, root / f"w2v-{kind}.kv", dim=16, epochs=1, min_count=1)
    return root


def student(comp_dir: Path, vec_dir: Path, runs: Path, **sections) -> Recipe:
    """A tiny TextCNN student recipe; `sections` deep-merge over it (e.g. distill={...})."""
    base = {
        "name": "stu", "kind": "student", "runs_dir": str(runs),
        "data": {"dir": str(comp_dir), "folds": K},
        "model": {"vectors": ["char"], "vectors_dir": str(vec_dir), "head": "cnn",
                  "channels": 16, "kernel_sizes": [2, 3], "hidden": 16, "max_chars": 48,
                  "dropout": 0.1},
        # fixed epochs, no rows held out to choose one: tests count every training row
        "train": {"epochs_frozen": 1, "epochs_unfrozen": 0, "batch_size": 32,
                  "lr_head": 3e-3, "patience": 0, "inner_val": 0.0},
        "distill": {"alpha": 0.5, "temperature": 2.0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load_recipe(None, base=base)


def comp_and_folds(comp_dir: Path):
    cfg = DataConfig(dir=str(comp_dir), folds=K)
    comp = load_competition(cfg)
    return comp, load_folds(comp, cfg)


def honest_proba(labels: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Probabilities that lean toward the labels, with some confident mistakes."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(n_classes), size=len(labels))
    p[np.arange(len(labels)), labels] += 1.5
    flip = rng.random(len(labels)) < 0.15
    p[flip] = p[flip][:, ::-1]
    return p / p.sum(1, keepdims=True)


def write_teacher(comp_dir: Path, out: Path, oof: np.ndarray | None = None,
                  test: np.ndarray | None = None, train_by_fold: np.ndarray | None = None,
                  test_by_fold: np.ndarray | None = None, by_fold: bool = True,
                  **manifest) -> Path:
    """A teacher manifest in `comp ensemble`'s format with arrays `oof` / `test`, and (with
    `by_fold`) per-fold `train_by_fold` (K, n_train, C) / `test_by_fold` (K, n_test, C)."""
    comp, folds = comp_and_folds(comp_dir)
    if oof is None:
        oof = honest_proba(comp.labels, comp.n_classes, 0)
    if test is None:
        test = honest_proba(np.zeros(len(comp.test_ids), int), comp.n_classes, 1)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "oof.npy", oof.astype(np.float32))
    np.save(out / "test.npy", test.astype(np.float32))
    man = {"name": "teacher", "kind": "ensemble", "cv": 0.9, "classes": comp.classes,
           "n_train": len(comp.train_ids), "n_test": len(comp.test_ids),
           "folds_hash": folds_hash(comp.train_ids, folds), "train_hash": comp.train_hash,
           "test_hash": comp.test_hash, "oof": str(out / "oof.npy"),
           "test": str(out / "test.npy"), "data_dir": str(comp_dir), **manifest}
    if by_fold:
        if train_by_fold is None:
            train_by_fold = np.stack([honest_proba(comp.labels, comp.n_classes, 10 + k)
                                      for k in range(K)])
        if test_by_fold is None:
            test_by_fold = np.stack([test] * K)
        for key, a in (("train_by_fold", train_by_fold), ("test_by_fold", test_by_fold)):
            np.save(out / f"{key}.npy", a.astype(np.float32))
            man[key] = str(out / f"{key}.npy")
    path = out / "teacher.json"
    path.write_text(json.dumps(man), encoding="utf-8")
    return path


def fold_proba(recipe: Recipe, fold: int = 0) -> tuple[np.ndarray, np.ndarray]:
    d = recipe.run_dir / f"fold{fold}"
    return np.load(d / "val_proba.npy"), np.load(d / "test_proba.npy")


# ---------------------------------------------------------------------------------------------
# member files


def test_student_writes_member_files_and_resumes(small_comp, vec_dir, tmp_path):
    teacher = write_teacher(small_comp, tmp_path / "t")
    r = student(small_comp, vec_dir, tmp_path / "runs",
                model={"vectors": ["char", "word"]},
                distill={"teacher": str(teacher), "use_test": True, "test_weight": 0.5})
    cv = train_student(r)
    comp, _ = comp_and_folds(small_comp)
    d = r.run_dir
    oof, test = np.load(d / "oof.npy"), np.load(d / "test.npy")
    assert oof.shape == (len(comp.train_ids), comp.n_classes)
    assert test.shape == (len(comp.test_ids), comp.n_classes)
    assert np.allclose(oof.sum(1), 1, atol=1e-5) and np.allclose(test.sum(1), 1, atol=1e-5)
    assert json.loads((d / "classes.json").read_text()) == comp.classes
    assert cv["kind"] == "student" and len(cv["fold_scores"]) == K
    assert cv["extra_rows"] == len(comp.test_ids)  # teacher-labelled test rows joined
    assert cv["cv"] > 0.5  # 1 epoch on 270 rows, but a TextCNN should beat a coin
    for f in range(K):
        assert (d / f"fold{f}" / "model.pt").exists()
    mtime = (d / "fold0" / "done.json").stat().st_mtime_ns
    assert train_student(r)["cv"] == cv["cv"]  # resumes: nothing retrained
    assert (d / "fold0" / "done.json").stat().st_mtime_ns == mtime

    from comp.blend.ensemble import read_member

    assert read_member(d).oof.shape == oof.shape  # joins ensembles like any member


def test_trained_fold_serves_raw_texts(small_comp, vec_dir, tmp_path):
    r = student(small_comp, vec_dir, tmp_path / "runs",
                distill={"teacher": str(write_teacher(small_comp, tmp_path / "t"))})
    train_student(r, folds_to_run=[0])
    comp, _ = comp_and_folds(small_comp)
    model = serving.load_student(r.run_dir, 0, comp.n_classes)
    proba = predict_texts(model, comp.test_texts, r.model, batch_size=64)
    assert np.allclose(proba, fold_proba(r)[1], atol=1e-5)


def test_folds_share_one_token_memo(small_comp, vec_dir, tmp_path, monkeypatch):
    """A student with a backbone tokenizes each text once per member, not once per fold."""
    from comp.config.schema import PretrainConfig
    from comp.nn.backbones.model import Backbone
    from comp.nn.pretrain import run_pretrain

    comp, _ = comp_and_folds(small_comp)
    bert = run_pretrain(PretrainConfig(kind="bert", out=str(tmp_path / "bert"), hidden=16,
                                       layers=1, heads=2, intermediate=32, vocab_size=200,
                                       steps=0, max_len=48, batch_size=4, max_positions=64),
                        comp.train_texts[:64])
    seen: list[str] = []
    real = Backbone.encode

    def counting(self, texts, max_len):
        seen.extend(texts)
        return real(self, texts, max_len)

    monkeypatch.setattr(Backbone, "encode", counting)
    # the vocabulary check tokenizes raw texts once per member; only the memo is counted here
    monkeypatch.setattr("comp.nn.backbones.check_vocab_coverage", lambda *a, **k: 1.0)
    r = student(small_comp, vec_dir, tmp_path / "runs",
                model={"backbones": [{"kind": "bert", "path": str(bert), "max_len": 32}],
                       "hidden": 8, "max_chars": 24},
                train={"epochs_frozen": 0, "epochs_unfrozen": 1},
                distill={"teacher": str(write_teacher(small_comp, tmp_path / "t"))})
    train_student(r, folds_to_run=[0, 1])
    assert (r.run_dir / "fold1" / "done.json").exists()
    assert len(seen) > 0 and len(seen) == len(set(seen))  # fold 1 re-tokenized nothing


# ---------------------------------------------------------------------------------------------
# serving: a TextCNN student folded into lookup tables


SERVE_TEXTS = ["", "好", "这个酒店很好，服务也不错", "差" * 80, "🙂 x 𠀀 unknown ☃",
               "早餐 一般。" * 9]


@pytest.mark.parametrize("kernels,vectors,truncation", [
    ((1, 2, 3), ("char",), "head_tail"),
    ((2,), ("char", "word"), "head"),
    ((3, 1), ("word", "char"), "window"),
])
def test_served_tables_equal_the_model(small_comp, vec_dir, tmp_path, kernels, vectors,
                                       truncation):
    from comp.nn.fusion import build_fusion

    r = student(small_comp, vec_dir, tmp_path / "runs",
                model={"kernel_sizes": list(kernels), "vectors": list(vectors),
                       "truncation": truncation, "max_chars": 24, "window_stride": 10})
    comp, _ = comp_and_folds(small_comp)
    torch.manual_seed(0)
    model = build_fusion(r, comp.n_classes)
    with torch.no_grad():  # a nonzero unknown-id row: unknown characters must still read it
        model.vectors[0].embedding.weight[0] = torch.randn(model.vectors[0].dim)
        for conv in model.head.convs:
            conv.bias.normal_()  # some channels positive everywhere, some never
    texts = SERVE_TEXTS + comp.test_texts[:40]
    served = serving_model(model)
    assert isinstance(served, serving.TextCNNTables)
    want = predict_texts(model, texts, r.model, batch_size=7)
    got = predict_texts(served, texts, r.model, batch_size=7)
    assert got.shape == (len(texts), comp.n_classes)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # batch size and order do not matter (rows are pooled one by one)
    np.testing.assert_allclose(predict_texts(served, texts[::-1], r.model, 512),
                               got[::-1], atol=2e-6)


@pytest.mark.parametrize("model", [{"head": "bilstm"}, {"pooling": "attention"},
                                   {"head": "bilstm_cnn"}])
def test_students_that_do_not_fold_serve_as_themselves(small_comp, vec_dir, tmp_path, model):
    from comp.nn.fusion import build_fusion

    r = student(small_comp, vec_dir, tmp_path / "runs", model=model)
    net = build_fusion(r, 2)
    assert serving_model(net) is net
    with pytest.raises(CompError, match="model.head"):
        serving.TextCNNTables(net)


def test_trained_student_served_from_tables(small_comp, vec_dir, tmp_path):
    r = student(small_comp, vec_dir, tmp_path / "runs", model={"vectors_trainable": True},
                distill={"teacher": str(write_teacher(small_comp, tmp_path / "t"))})
    train_student(r, folds_to_run=[0])
    comp, _ = comp_and_folds(small_comp)
    served = serving_model(serving.load_student(r.run_dir, 0, comp.n_classes))
    proba = predict_texts(served, comp.test_texts, r.model, batch_size=64)
    assert np.allclose(proba, fold_proba(r)[1], atol=1e-5)  # what the fold predicted


# ---------------------------------------------------------------------------------------------
# the loss


@pytest.mark.parametrize("name", loss_names())
def test_alpha_one_is_the_hard_label_loss(name):
    torch.manual_seed(0)
    c = 3
    logits = torch.randn(10, c, requires_grad=True)
    y = torch.randint(0, c, (10,))
    labelled = torch.arange(10) < 7  # the last rows are unlabelled (teacher-only) rows
    hard = torch.nn.functional.one_hot(y, c).float() * labelled[:, None]
    soft = torch.softmax(torch.randn(10, c), -1)
    w = torch.rand(10) + 0.5
    counts = np.array([3, 4, 3])
    kd = DistillLoss(create_loss(name, c, class_counts=counts), alpha=1.0, temperature=3.0)
    got = kd(logits, torch.cat([hard, soft], 1), w)
    want = create_loss(name, c, class_counts=counts)(logits[:7], y[:7], w[:7])
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_kd_loss_matches_hand_computation(kind):
    alpha, tau = 0.3, 2.0
    s = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0]])  # student logits
    t = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])  # teacher probabilities
    hard = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0]], float)  # the last row is unlabelled
    w = np.array([1.0, 2.0, 0.5])

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    ce = -(hard * log_softmax(s)).sum(1)
    hard_term = (w[:2] * ce[:2]).sum() / w[:2].sum()
    if kind == "kl":
        log_p, log_q = log_softmax(np.log(t) / tau), log_softmax(s / tau)
        rows = tau**2 * (np.exp(log_p) * (log_p - log_q)).sum(1)
    else:
        sc = s - s.mean(1, keepdims=True)
        tc = np.log(t) - np.log(t).mean(1, keepdims=True)
        rows = ((sc - tc) ** 2).mean(1)
    want = alpha * hard_term + (1 - alpha) * (w * rows).sum() / w.sum()
    loss = DistillLoss(create_loss("ce", 3), alpha=alpha, temperature=tau, kind=kind)
    got = loss(torch.tensor(s), torch.from_numpy(pack_targets(hard, t)), torch.tensor(w))
    assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_kd_term_vanishes_when_student_equals_teacher_up_to_a_shift(kind):
    t = torch.softmax(torch.randn(6, 4), -1)
    logits = torch.log(t) + torch.randn(6, 1)  # a per-row shift changes no probability
    loss = DistillLoss(create_loss("ce", 4), alpha=0.0, temperature=3.0, kind=kind)
    target = torch.cat([torch.zeros(6, 4), t], 1)
    assert loss(logits, target).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(logits + torch.randn(6, 4), target).item() > 1e-3


# ---------------------------------------------------------------------------------------------
# alpha = 1: a plain fusion member


def test_alpha_one_student_equals_plain_fusion_member(small_comp, vec_dir, tmp_path):
    from comp.config.schema import set_key
    from comp.nn.trainer import train_fusion

    r = student(small_comp, vec_dir, tmp_path / "a",
                distill={"teacher": str(write_teacher(small_comp, tmp_path / "t")),
                         "alpha": 1.0, "use_test": True})
    train_student(r, folds_to_run=[0])
    plain = set_key(set_key(r, "kind", "fusion"), "runs_dir", str(tmp_path / "b"))
    train_fusion(plain, folds_to_run=[0])
    for a, b in zip(fold_proba(r), fold_proba(plain)):
        assert np.allclose(a, b, atol=1e-6)
    # and a teacher at alpha < 1 does change the student
    taught = set_key(set_key(r, "distill.alpha", 0.2), "runs_dir", str(tmp_path / "c"))
    train_student(taught, folds_to_run=[0])
    assert not np.allclose(fold_proba(taught)[0], fold_proba(r)[0], atol=1e-4)


def test_alpha_one_needs_no_teacher_but_alpha_below_one_does(small_comp, vec_dir, tmp_path):
    r = student(small_comp, vec_dir, tmp_path / "runs", distill={"alpha": 1.0})
    train_student(r, folds_to_run=[0])
    assert (r.run_dir / "fold0" / "done.json").exists()
    with pytest.raises(CompError, match="distill.teacher"):
        train_student(student(small_comp, vec_dir, tmp_path / "runs2"), folds_to_run=[0])


# ---------------------------------------------------------------------------------------------
# leaks


def _append_test_rows(comp_dir: Path, texts: list[str]) -> None:
    """Add test rows (ids x0, x1...) to test.csv and sample_submission.csv."""
    for name, row in (("test.csv", lambda i, t: [f"x{i}", t]),
                      ("sample_submission.csv", lambda i, t: [f"x{i}", "pos"])):
        with open(comp_dir / name, "a", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            for i, t in enumerate(texts):
                w.writerow(row(i, t))


def _spy_on_fit(monkeypatch) -> dict:
    """Record what the fit loop is given: its training rows, validation rows, every batch's
    texts and targets."""
    seen: dict = {"batch_texts": [], "batch_targets": []}
    real_fit = distill.fit

    class Recorder(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, logits, target, weight=None):
            seen["batch_targets"].append(target.detach().cpu().numpy().copy())
            return self.inner(logits, target, weight)

    def spy(model, train, val, val_y, cfg, **kw):
        seen["train_texts"] = list(train.texts)
        seen["train_targets"] = train.targets.copy()
        seen["train_weights"] = train.weights.copy()
        seen["val_targets"] = val.targets.copy()
        kw["loss_fn"] = Recorder(kw["loss_fn"])
        kw["on_batch"] = seen["batch_texts"].extend
        return real_fit(model, train, val, val_y, cfg, **kw)

    monkeypatch.setattr(distill, "fit", spy)
    return seen


@pytest.mark.parametrize("targets", ["fold", "oof"])
def test_no_validation_row_is_taught_or_seen(small_comp, vec_dir, tmp_path, monkeypatch, targets):
    """Fold 0 trains on its training rows taught by the teacher (fold 0's models, or the OOF),
    then the test rows minus those duplicating a validation text; a sentinel marks every
    teacher value fold 0 must never read: its validation rows, and with fold targets anything
    the other folds' models (which saw fold 0's labels) or the OOF said."""
    comp, folds = comp_and_folds(small_comp)
    val_idx, train_idx = np.flatnonzero(folds == 0), np.flatnonzero(folds != 0)
    planted = [comp.train_texts[i] for i in val_idx[:4]]
    _append_test_rows(small_comp, planted)  # test rows duplicating validation texts
    comp = load_competition(DataConfig(dir=str(small_comp), folds=K))
    sentinel = np.array([0.0123, 0.9877])
    oof = honest_proba(comp.labels, comp.n_classes, 0)
    test = honest_proba(np.zeros(len(comp.test_ids), int), comp.n_classes, 1)
    train_k = np.stack([honest_proba(comp.labels, comp.n_classes, 5)] * K)
    test_k = np.stack([honest_proba(np.zeros(len(comp.test_ids), int), comp.n_classes, 6)] * K)
    if targets == "fold":
        train_k[0, val_idx] = sentinel
        train_k[1:], test_k[1:], oof[:], test[:] = sentinel, sentinel, sentinel, sentinel
        want_train, want_test = train_k[0, train_idx], test_k[0]
    else:
        oof[val_idx] = sentinel
        train_k[:], test_k[:] = sentinel, sentinel
        want_train, want_test = oof[train_idx], test
    teacher = write_teacher(small_comp, tmp_path / "t", oof=oof, test=test,
                            train_by_fold=train_k, test_by_fold=test_k)
    r = student(small_comp, vec_dir, tmp_path / "runs",
                distill={"teacher": str(teacher), "use_test": True, "test_weight": 0.7,
                         "targets": targets})
    seen = _spy_on_fit(monkeypatch)
    train_student(r, folds_to_run=[0])

    val_keys = {normalize_text(comp.train_texts[i]) for i in val_idx}
    keep = [j for j, t in enumerate(comp.test_texts) if normalize_text(t) not in val_keys]
    assert len(keep) == len(comp.test_texts) - len(planted)
    eye = np.eye(comp.n_classes)
    want = np.concatenate([pack_targets(eye[comp.labels[train_idx]], want_train),
                           pack_targets(np.full((len(keep), 2), UNLABELLED), want_test[keep])])
    assert np.allclose(seen["train_targets"], want, atol=1e-6)
    assert np.allclose(seen["train_weights"][len(train_idx):], 0.7)
    grid = [grid_texts(comp.train_texts[i], r.model)[0] for i in train_idx]
    assert seen["train_texts"][:len(train_idx)] == grid
    assert not np.any(seen["val_targets"])  # validation rows reach the fit without targets

    # what the batches actually carried (grid texts: truncated as the model sees them)
    val_grid = {normalize_text(grid_texts(comp.train_texts[i], r.model)[0]) for i in val_idx}
    assert not val_grid & {normalize_text(t) for t in seen["batch_texts"]}
    assert sorted(seen["batch_texts"]) == sorted(seen["train_texts"])  # one epoch, every row
    got = np.concatenate(seen["batch_targets"])
    assert got.shape == want.shape
    assert not np.isclose(got[:, 2:], sentinel).all(1).any()
    assert np.allclose(np.sort(got, 0), np.sort(want.astype(np.float32), 0), atol=1e-6)


def test_teacher_values_at_validation_rows_do_not_matter(small_comp, vec_dir, tmp_path):
    """A teacher whose fold-0 models leak labels at fold 0's validation rows trains the same
    student as one that is wrong there: those values are never read. Training rows do
    matter."""
    comp, folds = comp_and_folds(small_comp)
    val_idx, train_idx = np.flatnonzero(folds == 0), np.flatnonzero(folds != 0)
    eye = np.eye(comp.n_classes)
    base = np.stack([honest_proba(comp.labels, comp.n_classes, k) for k in range(K)])
    leaky, wrong, other = base.copy(), base.copy(), base.copy()
    leaky[0, val_idx] = eye[comp.labels[val_idx]]  # in-sample: the labels themselves
    wrong[0, val_idx] = eye[1 - comp.labels[val_idx]]
    other[0, train_idx[:60]] = other[0, train_idx[:60], ::-1]
    out = {}
    for name, train_k in (("leaky", leaky), ("wrong", wrong), ("other", other)):
        t = write_teacher(small_comp, tmp_path / name, train_by_fold=train_k)
        r = student(small_comp, vec_dir, tmp_path / f"runs_{name}",
                    distill={"teacher": str(t), "alpha": 0.2})
        train_student(r, folds_to_run=[0])
        out[name] = fold_proba(r)
    assert np.array_equal(out["leaky"][0], out["wrong"][0])
    assert np.array_equal(out["leaky"][1], out["wrong"][1])
    assert not np.allclose(out["leaky"][0], out["other"][0], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# refusing a teacher that does not belong here


@pytest.mark.parametrize("bad", ["n_train", "classes", "folds_hash", "train_hash", "shape",
                                 "no_oof_key", "missing", "nan"])
def test_mismatched_teacher_is_refused(bad, small_comp, vec_dir, tmp_path):
    comp, _ = comp_and_folds(small_comp)
    n, c = len(comp.train_ids), comp.n_classes
    oof = honest_proba(comp.labels, c, 0)
    kw: dict = {}
    if bad == "n_train":
        kw["n_train"] = n + 1
    elif bad == "classes":
        kw["classes"] = ["neg", "neutral"]
    elif bad in ("folds_hash", "train_hash"):
        kw[bad] = "0123456789abcdef"
    elif bad == "shape":
        oof = oof[:-1]
    elif bad == "nan":
        oof[3, 0] = np.nan
    path = write_teacher(small_comp, tmp_path / "t", oof=oof, **kw)
    if bad == "no_oof_key":
        man = json.loads(path.read_text())
        del man["oof"]
        path.write_text(json.dumps(man))
    if bad == "missing":
        path = tmp_path / "nope.json"
    r = student(small_comp, vec_dir, tmp_path / "runs", distill={"teacher": str(path)})
    with pytest.raises(CompError) as e:
        train_student(r)
    msg = str(e.value)
    assert "\n" not in msg and ("nope.json" in msg or "teacher" in msg)
    assert not (r.run_dir / "fold0").exists()  # refused before any training


def test_classes_in_another_order_are_realigned(small_comp, tmp_path):
    comp, folds = comp_and_folds(small_comp)
    oof = honest_proba(comp.labels, comp.n_classes, 0)
    path = write_teacher(small_comp, tmp_path / "t", oof=oof[:, ::-1],
                         classes=comp.classes[::-1])
    t = load_teacher(path, comp, folds)
    assert np.allclose(t.oof, oof, atol=1e-6)


def test_a_real_ensemble_teaches_a_student(small_comp, vec_dir, tmp_path):
    """The manifest `comp ensemble` writes (over a TF-IDF member) is a usable teacher once its
    member predicted its training rows per fold; before that the student says what to run."""
    from comp.blend.ensemble import run_ensemble
    from comp.cli import train_recipe

    over = [f"data.dir={small_comp}", f"data.folds={K}", f"runs_dir={tmp_path}/runs"]
    data = DataConfig(dir=str(small_comp), folds=K)
    lin = load_recipe("recipes/tfidf_char_lr.toml", over)
    train_recipe(lin)
    csv_path = run_ensemble([lin.run_dir], "mean", data, "accuracy", tmp_path / "subs" / "mean")
    r = student(small_comp, vec_dir, tmp_path / "runs",
                distill={"teacher": str(csv_path.with_suffix(".json")), "use_test": True})
    with pytest.raises(CompError, match="--prepare-teacher"):
        train_student(r)
    oof0 = np.load(lin.run_dir / "oof.npy")
    # the member's kept fold models predict their training rows; blend again
    teacher = teacher_wf.teacher_with_fold_targets(csv_path.with_suffix(".json"))
    assert teacher.name == csv_path.with_suffix(".json").name.replace("mean_", "mean_folds_")
    assert np.allclose(np.load(lin.run_dir / "oof.npy"), oof0)
    train_k = np.load(lin.run_dir / "train_by_fold.npy")  # (K, n_train, C)
    folds = load_folds(load_competition(data), data)
    for k in range(K):  # fold k's model on its validation rows is the OOF there
        assert np.allclose(train_k[k, folds == k], oof0[folds == k])
        assert not np.allclose(train_k[k, folds != k], oof0[folds != k])  # in-sample elsewhere
    man = json.loads(teacher.read_text(encoding="utf-8"))
    assert np.allclose(np.load(man["train_by_fold"]), train_k, atol=1e-6)
    assert teacher_wf.teacher_with_fold_targets(teacher) == teacher  # nothing left to do
    r = student(small_comp, vec_dir, tmp_path / "runs",
                distill={"teacher": str(teacher), "use_test": True})
    cv = train_student(r, folds_to_run=[0])
    assert cv is None  # one fold of three: member files wait for the rest
    val, test = fold_proba(r)
    assert val.shape == ((load_folds(*_comp_cfg(small_comp)) == 0).sum(), 2)
    assert test.shape == (100, 2)


def _comp_cfg(comp_dir: Path):
    cfg = DataConfig(dir=str(comp_dir), folds=K)
    return load_competition(cfg), cfg


# ---------------------------------------------------------------------------------------------
# unlabelled texts (data.extra)


def test_teacher_unlabelled_rows_teach_the_student(small_comp, vec_dir, tmp_path, monkeypatch):
    unl_texts = ["物流很快包装很好", "质量太差了", "还行吧", "客服态度不错"]
    with open(small_comp / "unlabelled.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text"], *[[t] for t in unl_texts]])
    cfg = DataConfig(dir=str(small_comp), folds=K, extra="unlabelled.csv")
    comp = load_competition(cfg)
    unl = honest_proba(np.array([1, 0, 1, 1]), comp.n_classes, 2)
    out = tmp_path / "t"
    out.mkdir()
    np.save(out / "unlabelled.npy", unl.astype(np.float32))
    np.save(out / "unlabelled_k.npy", np.stack([unl] * K).astype(np.float32))
    teacher = write_teacher(small_comp, out, unlabelled=str(out / "unlabelled.npy"),
                            unlabelled_by_fold=str(out / "unlabelled_k.npy"),
                            unlabelled_hash=comp.unlabelled_hash, n_unlabelled=4)
    test = np.load(out / "test.npy").astype(np.float64)
    r = student(small_comp, vec_dir, tmp_path / "runs", data={"extra": "unlabelled.csv"},
                distill={"teacher": str(teacher), "use_test": True, "test_weight": 0.5})
    seen = _spy_on_fit(monkeypatch)
    train_student(r, folds_to_run=[0])
    folds = load_folds(comp, cfg)
    n_tr = int((folds != 0).sum())
    grid = [grid_texts(t, r.model)[0] for t in unl_texts]
    assert seen["train_texts"][-4:] == grid  # after the test rows
    assert len(seen["train_texts"]) == n_tr + len(comp.test_texts) + 4
    got = seen["train_targets"][n_tr:]  # teacher rows: empty label half, teacher half
    assert (got[:, :2] == UNLABELLED).all()
    assert np.allclose(got[:, 2:], np.concatenate([test / test.sum(1, keepdims=True),
                                                   unl / unl.sum(1, keepdims=True)]),
                       atol=1e-6)
    assert np.allclose(seen["train_weights"][n_tr:], 0.5)
    # and the student predicts the unlabelled texts after the test texts
    assert np.load(r.run_dir / "fold0" / "unlabelled_proba.npy").shape == (4, comp.n_classes)
    assert fold_proba(r)[1].shape == (len(comp.test_ids), comp.n_classes)

    # a teacher that predicted other unlabelled texts is refused before any training
    bad = write_teacher(small_comp, tmp_path / "bad", unlabelled=str(out / "unlabelled.npy"),
                        unlabelled_hash="0123456789abcdef")
    r2 = student(small_comp, vec_dir, tmp_path / "runs2", data={"extra": "unlabelled.csv"},
                 distill={"teacher": str(bad), "use_test": True})
    with pytest.raises(CompError, match="unlabelled_hash 0123456789abcdef does not match"):
        train_student(r2)
    # a student without data.extra learns from the test rows only
    r3 = student(small_comp, vec_dir, tmp_path / "runs3",
                 distill={"teacher": str(teacher), "use_test": True})
    assert load_teacher(teacher, *comp_and_folds(small_comp)).unlabelled is None
    train_student(r3, folds_to_run=[0])
    assert len(seen["train_texts"]) == n_tr + len(comp.test_texts)
    assert not (r3.run_dir / "fold0" / "unlabelled_proba.npy").exists()


# ---------------------------------------------------------------------------------------------
# the fold leak through teacher targets, end to end


def _pairs_competition(root: Path, n: int = 60, seed: int = 5) -> Path:
    """Train texts in near-copy pairs (x, x + one character) with independent noise labels."""
    from conftest import noise_competition

    return noise_competition(root, n, seed, length=6, alphabet=400, balanced=False,
                             copies="train", n_test=20)


@pytest.mark.parametrize("targets", ["fold", "oof"])
def test_student_cv_never_sees_a_validation_label_through_its_teacher(tmp_path, vec_dir,
                                                                       monkeypatch, targets):
    """Noise labels; every train text has a near-copy in the train set. The teacher memorises
    within one character, so its OOF target for a copy in fold m is the label of the original,
    which sits in another fold k. A student fold k that learns from the OOF (and memorises too)
    'predicts' its validation row from that copy: CV 1.0 on pairs split across folds, all of it
    leaked. Taught by fold k's own models only, it learns each copy's own label, which says
    nothing about the validation row: the student's CV is what noise gives."""
    from conftest import memorised_teacher, memorising_student

    data = _pairs_competition(tmp_path / "pairs")
    manifest = memorised_teacher(data, tmp_path, K)


    monkeypatch.setattr(distill, "fit_student_fold", memorising_student)
    r = student(data, vec_dir, tmp_path / "runs", name=f"stu_{targets}",
                distill={"teacher": str(manifest), "alpha": 0.0, "targets": targets})
    cv = train_student(r)

    comp, folds = comp_and_folds(data)
    oof = np.load(r.run_dir / "oof.npy")
    pair = np.arange(len(folds)) ^ 1  # rows 2i and 2i + 1 are a pair
    split = folds != folds[pair]  # the copy trains the fold that validates the original
    got = oof[split].argmax(1)
    assert split.sum() > 30
    assert cv["teacher_targets"] == targets
    if targets == "oof":
        assert (got == comp.labels[split]).all()  # the validation row's own label: leaked
    else:
        assert (got == comp.labels[pair][split]).all()  # the copy's own label, and only that
        # labels of a pair are independent: the honest CV is a coin's
        assert abs((got == comp.labels[split]).mean() - 0.5) < 0.2
    # only the honest student hands per-fold predictions to ensembles
    from comp.blend.ensemble import read_member, stack_by_fold

    test_k, _, why = stack_by_fold([read_member(r.run_dir)], range(K))
    assert (test_k is None) == (targets == "oof"), why


def test_cli_names_the_fix_then_prepares_the_teacher(small_comp, vec_dir, tmp_path, capsys):
    """`comp distill` refuses a teacher without per-fold targets in one line naming the flag;
    with --prepare-teacher it gives the teacher those targets and trains."""
    from comp.blend.ensemble import run_ensemble
    from comp.cli import main, train_recipe

    over = [f"data.dir={small_comp}", f"data.folds={K}", f"runs_dir={tmp_path}/runs"]
    lin = load_recipe("recipes/tfidf_char_lr.toml", over)
    train_recipe(lin)
    manifest = run_ensemble([lin.run_dir], "mean", None, "accuracy",
                            tmp_path / "subs" / "mean").with_suffix(".json")
    capsys.readouterr()  # the teacher's log so far
    args = ["distill", "recipes/student_textcnn.toml", "--teacher", str(manifest),
            "--folds", "0", "--set", f"model.vectors_dir={vec_dir}", "--set",
            "train.epochs_frozen=1"] + [a for o in over for a in ("--set", o)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--prepare-teacher" in err[-1] and str(manifest) in err[-1]
    assert err[-1].startswith("comp distill: error: ")
    assert main(args + ["--prepare-teacher"]) in (0, None)
    assert [p.name for p in (tmp_path / "subs").glob("mean_folds_cv*.json")] == [
        manifest.name.replace("mean_", "mean_folds_")]
    assert (tmp_path / "runs" / "student_textcnn" / "fold0" / "done.json").exists()
