"""Distillation on a multi-label task: the per-label KD loss by hand, a student taught by a real
TF-IDF ensemble (per-fold targets, test rows) that learns the labels, and the noise-label leak
test: a student taught each fold's own teacher targets stays at chance, one taught the
teacher's OOF reads its validation rows' labels off their near-copies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_multilabel import LABELS, RECIPES, best_constant_f1, make_multilabel_folder
from test_pairs import write_csv

import comp.members.student as distill
import comp.workflows.distill as teacher_wf
from comp.core.utils import read_json
from comp.data.competition import load_competition
from comp.data.folds import load_folds
from comp.data.recipes import load_recipe
from comp.data.settings import folder_data_config
from comp.members.student import UNLABELLED, DistillLoss, pack_targets, train_student
from comp.nn.losses import create_loss

K = 3


def _kd_by_hand(s: np.ndarray, p: np.ndarray, tau: float) -> np.ndarray:
    """Per-row mean over labels of tau^2 * KL(Bernoulli(sigmoid(logit(p)/tau)) ||
    Bernoulli(sigmoid(s/tau)))."""
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    t = np.log(p / (1 - p))
    a, b = sig(t / tau), sig(s / tau)
    kl = a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))
    return tau * tau * kl.mean(1)


def test_multilabel_kd_loss_by_hand():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 4))
    p = rng.uniform(0.05, 0.95, size=(6, 4))
    hard = (rng.random((6, 4)) < 0.4).astype(np.float32)
    hard[1] = 0  # an empty label set is a label
    hard[4] = UNLABELLED  # a teacher-only row
    bce = create_loss("ce", 4, multilabel=True)
    target = torch.tensor(pack_targets(hard, p.astype(np.float32)))
    logits = torch.tensor(s, dtype=torch.float32)
    for tau in (1.0, 2.0):
        loss = DistillLoss(bce, alpha=0.0, temperature=tau, multilabel=True)
        want = _kd_by_hand(s, p, tau).mean()
        assert float(loss(logits, target)) == pytest.approx(want, rel=1e-4)
    # the KD term is zero when the student's log-odds are the teacher's
    same = torch.logit(torch.tensor(p, dtype=torch.float32))
    assert float(DistillLoss(bce, 0.0, 2.0, multilabel=True)(same, target)) < 1e-6
    mse = DistillLoss(bce, 0.0, kind="mse", multilabel=True)
    assert float(mse(same, target)) < 1e-6 and float(mse(logits, target)) > 0.1
    # alpha = 1: the BCE of the labelled rows only (row 1 included, row 4 not)
    keep = torch.tensor([True, True, True, True, False, True])
    w = keep.float()
    want = float(bce(logits, torch.tensor(hard).clamp_min(0), w))
    got = float(DistillLoss(bce, alpha=1.0, multilabel=True)(logits, target))
    assert got == pytest.approx(want, rel=1e-5)
    only = float(bce(logits[keep], torch.tensor(hard)[keep]))
    assert got == pytest.approx(only, rel=1e-5)


@pytest.fixture(scope="module")
def vec_dir(tmp_path_factory) -> Path:
    from comp.nn.vectors import train_vectors

    root = tmp_path_factory.mktemp("mlvec")
    folder = make_multilabel_folder(root / "reviews")
    comp = load_competition(folder_data_config(folder))
    train_vectors(comp.train_texts + comp.test_texts, "char", root / "w2v-char.kv", dim=16,
                  epochs=2, min_count=1)
    return root


def _student(folder: Path, vec_dir: Path, runs: Path, name: str, **distill_keys):
    base = {
        "name": name, "kind": "student", "runs_dir": str(runs),
        "data": {"dir": str(folder), "folds": K},
        "model": {"vectors": ["char"], "vectors_dir": str(vec_dir), "head": "cnn",
                  "channels": 32, "kernel_sizes": [1, 2], "hidden": 16, "max_chars": 80,
                  "dropout": 0.1, "vectors_trainable": True},
        "train": {"epochs_frozen": 12, "epochs_unfrozen": 0, "batch_size": 16,
                  "lr_head": 1e-2, "patience": 0, "inner_val": 0.0},
        "distill": {"alpha": 0.5, "temperature": 2.0, **distill_keys},
    }
    return load_recipe(None, base=base)


def test_a_tfidf_ensemble_teaches_a_multilabel_student(vec_dir, tmp_path):
    """A real teacher (a TF-IDF member's ensemble, given per-fold targets) teaches a TextCNN
    student with its test rows: the student's OOF has one probability per label, its nested CV
    is well above the best constant label set, and its test probabilities follow the
    teacher's."""
    from comp.blend.ensemble import run_ensemble
    from comp.members.registry import train_recipe

    folder = vec_dir / "reviews"
    runs = tmp_path / "runs"
    lin = load_recipe(RECIPES / "tfidf_char_lr.toml",
                      [f"data.dir={folder}", f"data.folds={K}", f"runs_dir={runs}"])
    train_recipe(lin)
    man = run_ensemble([str(lin.run_dir)], "mean", None, "", tmp_path / "subs" / "mean")
    teacher = teacher_wf.teacher_with_fold_targets(man.with_suffix(".json"))
    r = _student(folder, vec_dir, runs, "stu", teacher=str(teacher), use_test=True)
    cv = train_student(r)
    comp = load_competition(r.data)
    oof = np.load(r.run_dir / "oof.npy")
    assert oof.shape == (len(comp.train_ids), len(LABELS)) and cv["task"] == "multilabel"
    assert cv["teacher_targets"] == "fold" and set(cv["thresholds"]) == set(LABELS)
    chance = best_constant_f1(comp.labels)
    print(f"multi-label student: nested CV {cv['cv']:.4f}, teacher "
          f"{read_json(lin.run_dir / 'cv.json')['cv']:.4f}, best constant {chance:.4f}")
    assert cv["cv"] > chance + 0.1
    test, taught = np.load(r.run_dir / "test.npy"), np.load(lin.run_dir / "test.npy")
    assert np.corrcoef(test.ravel(), taught.ravel())[0, 1] > 0.5


# ---------------------------------------------------------------------------------------------
# random labels


def _near_copy_folder(root: Path, n: int = 150, seed: int = 3) -> Path:
    """Train texts in near-copy pairs (x, x + one character), each row an independent random
    label set over three labels (each label on with probability 0.3)."""
    rng = np.random.default_rng(seed)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 400)]
    base = sorted({"".join(rng.choice(chars, 6)) for _ in range(n)})
    texts = [t for x in base for t in (x, x + "啊")]
    y = (rng.random((len(texts), 3)) < 0.3).astype(int)
    names = ["a", "b", "c"]
    root.mkdir(parents=True, exist_ok=True)
    write_csv(root / "train.csv", ["id", "text", *names],
              [(f"r{i}", t, *row) for i, (t, row) in enumerate(zip(texts, y.tolist()))])
    test = ["".join(rng.choice(chars, 7)) for _ in range(20)]
    write_csv(root / "test.csv", ["id", "text"], [(f"t{i}", t) for i, t in enumerate(test)])
    write_csv(root / "sample_submission.csv", ["id", *names],
              [(f"t{i}", 0, 0, 0) for i in range(len(test))])
    return root


@pytest.mark.parametrize("targets", ["fold", "oof"])
def test_multilabel_student_never_sees_a_validation_label_through_its_teacher(
        tmp_path, vec_dir, monkeypatch, targets):
    """Random label sets; every train text has a near-copy in the train set. A memorising
    teacher's OOF for a copy in fold m is the label set of the original, which sits in fold k.
    A memorising student fold k taught the OOF answers its validation rows with their own
    labels (all leaked); taught by fold k's own teacher models it answers with the copy's own
    labels, which agree with the validation row's only by chance."""
    from conftest import memorised_teacher, memorising_student

    folder = _near_copy_folder(tmp_path / "pairs")
    manifest = memorised_teacher(folder, tmp_path, K)
    assert read_json(manifest)["train_by_fold"]


    monkeypatch.setattr(distill, "fit_student_fold", memorising_student)
    r = _student(folder, vec_dir, tmp_path / "runs", f"stu_{targets}", teacher=str(manifest),
                 alpha=0.0, targets=targets)
    cv = train_student(r)
    cfg = dataclasses.replace(folder_data_config(folder), folds=K)
    comp = load_competition(cfg)
    folds = load_folds(comp, cfg)
    assert comp.multilabel and cv["teacher_targets"] == targets
    got = (np.load(r.run_dir / "oof.npy") >= 0.5).astype(int)
    pair = np.arange(len(folds)) ^ 1  # rows 2i and 2i + 1 are a pair
    split = folds != folds[pair]  # the copy trains the fold that validates the original
    assert split.sum() > 100
    agree = (got[split] == comp.labels[split]).mean()
    if targets == "oof":
        assert agree == 1.0  # every validation label read off the copy: leaked
    else:
        assert (got[split] == comp.labels[pair][split]).all()  # the copy's own labels only
        share = comp.labels.mean()
        chance = share ** 2 + (1 - share) ** 2  # two independent draws agree
        print(f"noise: per-label agreement {agree:.3f}, chance {chance:.3f}")
        assert abs(agree - chance) < 0.08
