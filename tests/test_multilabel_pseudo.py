"""Pseudo-labels on a multi-label task: `comp pseudo` keeps test (and unlabelled) rows whose
every label is sure, at the ensemble's per-fold thresholds, writing the decided label set;
TF-IDF and fusion members train with them in the right fold only; on random labels a pseudo
round leaves the nested CV at the best constant label set (a global file would not)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from test_multilabel import LABELS, RECIPES, _copy, best_constant_f1, make_multilabel_folder
from test_pairs import write_csv

from comp.core.utils import CompError, read_json
from comp.data.competition import load_competition
from comp.data.folds import load_folds, normalize_text
from comp.data.recipes import load_recipe
from comp.data.settings import folder_data_config
from comp.kfold.extra import read_pseudo
from comp.workflows.pseudo import (
    MULTILABEL_THRESHOLD,
    label_confidence,
    make_pseudo,
    select_confident_multilabel,
)


def _tfidf(folder: Path, runs: Path, name: str, *overrides: str):
    """Train a TF-IDF LR member on `folder`; returns (cv.json dict, recipe)."""
    from comp.members.registry import train_recipe

    r = load_recipe(RECIPES / "tfidf_char_lr.toml",
                    [f"data.dir={folder}", f"runs_dir={runs}", f"name={name}", *overrides])
    return train_recipe(r), r


def _answers(folder: Path) -> np.ndarray:
    """(n_test, L) true test labels of the fixture (answers.csv)."""
    rows = list(csv.reader(open(folder / "answers.csv", encoding="utf-8")))[1:]
    return np.array([[int(v) for v in r[1:]] for r in rows])


def _hidden(run_dir: Path, folder: Path) -> float:
    """A member's micro-F1 on the hidden test labels, its test rows cut at its thresholds."""
    from comp.core.metrics import score
    from comp.tasks.thresholds import apply_thresholds

    cv = read_json(run_dir / "cv.json")
    t = np.array([cv["thresholds"][c] for c in LABELS])
    return score("micro_f1", _answers(folder), apply_thresholds(np.load(run_dir / "test.npy"), t))


@pytest.fixture(scope="module")
def round1(tmp_path_factory):
    """The learnable fixture, a TF-IDF member and its ensemble (manifest with per-fold test
    predictions and per-fold thresholds)."""
    from comp.blend.ensemble import run_ensemble

    root = tmp_path_factory.mktemp("mlp")
    folder = make_multilabel_folder(root / "reviews")
    runs = root / "runs"
    cv, r = _tfidf(folder, runs, "lr")
    sub = run_ensemble([str(r.run_dir)], "mean", None, "", root / "subs" / "mean")
    return {"folder": folder, "root": root, "runs": runs, "cv": cv, "run_dir": r.run_dir,
            "manifest": sub.with_suffix(".json")}


# ---------------------------------------------------------------------------------------------
# choosing rows


def test_multilabel_confidence_and_selection_by_hand():
    p = np.array([[0.97, 0.02, 0.10],   # sure of all three: {a}
                  [0.97, 0.50, 0.02],   # b at 0.5 with threshold 0.3: decided, unsure
                  [0.85, 0.01, 0.01],   # a only 0.85 sure
                  [0.03, 0.96, 0.03],   # {b}
                  [0.01, 0.04, 0.01],   # the empty set, sure
                  [0.92, 0.93, 0.08]])  # {a, b}
    t = np.array([0.5, 0.3, 0.15])
    conf = label_confidence(p, t)
    assert np.allclose(conf[1], [0.97, 0.5, 0.98])  # decided present: p; absent: 1 - p
    assert conf[0, 2] == pytest.approx(0.9)  # 0.10 < 0.15: absent, 90% sure
    assert np.allclose(label_confidence(p, np.full(3, 0.5)), np.maximum(p, 1 - p))
    keep = select_confident_multilabel(p, t, threshold=0.9)
    assert keep.tolist() == [True, False, False, True, True, True]
    assert select_confident_multilabel(p, t, threshold=0.95).tolist() == \
        [False, False, False, True, True, False]
    # top_frac ranks rows by their least sure label; per_class cuts within each label set
    assert select_confident_multilabel(p, t, top_frac=0.5).tolist() == \
        [False, False, False, True, True, True]
    by_set = select_confident_multilabel(p, t, top_frac=0.5, per_class=True)
    # sets {a}: rows 0, 2 -> keeps 0; {a, b}: rows 1, 5 -> keeps 5; {b} and {}: one row each,
    # half of one row rounds to none
    assert by_set.tolist() == [True, False, False, False, False, True]
    with pytest.raises(CompError, match="exactly one of threshold or top_frac"):
        select_confident_multilabel(p, t)


def test_make_pseudo_keeps_only_sure_rows_with_their_decided_label_sets(round1):
    man = read_json(round1["manifest"])
    assert man["task"] == "multilabel" and man["test_by_fold"] and man["fold_thresholds"]
    out = make_pseudo(round1["manifest"], threshold=MULTILABEL_THRESHOLD,
                      out=round1["root"] / "pseudo.csv")
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    header = next(csv.reader(open(out, encoding="utf-8")))
    assert header == ["id", "text", "label", "confidence", *[f"p_{c}" for c in LABELS],
                      "source", "fold", "folds_hash"]
    comp = load_competition(folder_data_config(round1["folder"]))
    by_fold = np.load(man["test_by_fold"])  # (K, n_test, L)
    truth = _answers(round1["folder"])
    kept_right, all_right, n_kept = 0.0, 0.0, 0
    for k in range(5):
        t = np.array(man["fold_thresholds"][str(k)])  # fitted without fold k's rows
        p = by_fold[k]
        sure = np.where(p >= t, p, 1 - p).min(1) >= MULTILABEL_THRESHOLD
        mine = [r for r in rows if r["fold"] == str(k)]
        assert [r["id"] for r in mine] == [comp.test_ids[i] for i in np.flatnonzero(sure)]
        for r in mine:
            i = comp.test_ids.index(r["id"])
            decided = p[i] >= t
            assert r["label"] == "|".join(c for c, d in zip(LABELS, decided) if d)
            assert float(r["confidence"]) >= MULTILABEL_THRESHOLD
            assert np.allclose([float(r[f"p_{c}"]) for c in LABELS], p[i], atol=1e-5)
            assert r["source"] == "test" and r["folds_hash"] == man["folds_hash"]
        decided = (p >= t).astype(int)
        kept_right += float((decided[sure] == truth[sure]).all(1).sum())
        all_right += float((decided == truth).all(1).mean())
        n_kept += int(sure.sum())
    exact_kept, exact_all = kept_right / n_kept, all_right / 5
    print(f"pseudo rows: {n_kept} of {5 * len(comp.test_ids)} (5 folds); exact label set right "
          f"on {exact_kept:.3f} of them vs {exact_all:.3f} of every test row")
    assert 0 < n_kept < 0.6 * 5 * len(comp.test_ids)
    assert exact_kept > exact_all + 0.1  # the sure rows are the better-labelled ones
    assert any(r["label"] == "" for r in rows) and any("|" in r["label"] for r in rows)
    # read back: the decided sets (hard targets) or the per-label probabilities (soft)
    hard = read_pseudo(out, comp.classes, label_sep="|")
    soft = read_pseudo(out, comp.classes, soft=True, label_sep="|")
    want = np.array([[int(c in r["label"].split("|")) for c in LABELS] for r in rows])
    assert hard.per_fold and hard.labels.tolist() == want.tolist()
    assert np.array_equal(hard.targets, want)
    assert np.array_equal(soft.labels, want)
    assert np.allclose(soft.targets, [[float(r[f"p_{c}"]) for c in LABELS] for r in rows])


def test_multilabel_pseudo_file_errors_name_row_and_column(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("id,text,label,fold\n1,好书,pos|book,0\n2,坏,pos|spam,0\n", encoding="utf-8")
    with pytest.raises(CompError, match=r"row 3: column 'label': unseen label 'spam'"):
        read_pseudo(f, list(LABELS), label_sep="|")
    f.write_text("id,text,label,p_pos,p_book,p_hotel,p_buy\n1,好,pos,1.2,0,0,0\n",
                 encoding="utf-8")
    with pytest.raises(CompError, match=r"row 2: a p_<label> column is outside \[0, 1\]"):
        read_pseudo(f, list(LABELS), soft=True, label_sep="|")


# ---------------------------------------------------------------------------------------------
# members


def test_tfidf_member_trains_with_each_folds_own_pseudo_rows(round1, monkeypatch):
    """Fold k's per-label models fit its training part plus exactly the file's fold-k rows,
    with their decided label sets; the CV stays honest (no validation text among them)."""
    import comp.members.linear as linear

    folder = round1["folder"]
    pseudo = make_pseudo(round1["manifest"], threshold=MULTILABEL_THRESHOLD,
                         out=round1["root"] / "pseudo_b.csv")
    comp = load_competition(folder_data_config(folder))
    folds = load_folds(comp, folder_data_config(folder))
    rows = read_pseudo(pseudo, comp.classes, label_sep="|")
    fitted = []
    real_fit = linear.PerLabelModel.fit

    def spy(self, X, Y, sample_weight=None):
        fitted.append((X.shape[0], Y.copy(), sample_weight))
        return real_fit(self, X, Y, sample_weight)

    monkeypatch.setattr(linear.PerLabelModel, "fit", spy)
    cv, r = _tfidf(folder, round1["runs"], "lr_pl", f"train.pseudo={pseudo}")
    assert len(fitted) == 5
    for k, (n, Y, w) in enumerate(fitted):
        n_train = int((folds != k).sum())
        mine = rows.folds == k
        assert n == n_train + int(mine.sum()) and mine.sum() > 0
        assert np.array_equal(Y[:n_train], comp.labels[folds != k])
        assert np.array_equal(Y[n_train:], rows.labels[mine])  # the file's decided sets
        assert w is not None and np.allclose(w, 1.0)
        done = read_json(r.run_dir / f"fold{k}" / "done.json")
        assert done["n_extra"] == int(mine.sum()) and done["extra_per_fold"] is True
        val = {normalize_text(comp.train_texts[i]) for i in np.flatnonzero(folds == k)}
        assert not val & {normalize_text(rows.texts[j]) for j in np.flatnonzero(mine)}
    assert cv["extra_per_fold"] is True and cv["task"] == "multilabel"
    assert not np.allclose(np.load(r.run_dir / "oof.npy"), np.load(round1["run_dir"] / "oof.npy"))
    cv0 = round1["cv"]["cv"]
    h0, h1 = _hidden(round1["run_dir"], folder), _hidden(r.run_dir, folder)
    print(f"tfidf lr: nested CV micro_f1 {cv0:.4f} -> {cv['cv']:.4f} with "
          f"{len(rows)} pseudo rows over 5 folds; hidden {h0:.4f} -> {h1:.4f}")
    # test texts are new texts: fold k's rows were labelled by fold-k models only, so the CV
    # moves by what the rows teach, not by a leak
    assert cv0 - 0.015 <= cv["cv"] <= cv0 + 0.03
    assert h1 >= h0 - 0.02


def test_fusion_member_learns_soft_per_label_targets_of_its_fold(round1, tmp_path,
                                                                 monkeypatch):
    """A vectors TextCNN (BCE, one sigmoid per label) with train.pseudo_soft: fold 0 trains on
    the file's fold-0 rows with their per-label probabilities as targets."""
    import comp.nn.trainer as train
    from comp.members.registry import train_recipe
    from comp.nn.vectors import train_vectors

    folder = _copy(round1["folder"], tmp_path / "c")
    pseudo = make_pseudo(round1["manifest"], threshold=MULTILABEL_THRESHOLD,
                         out=tmp_path / "pseudo.csv")
    comp = load_competition(folder_data_config(folder))
    train_vectors(comp.train_texts + comp.test_texts, "char", tmp_path / "models" / "w2v-char.kv")
    seen = []
    real = train.extra_rows

    def spy(model, ctx, targets):
        seen.append((ctx.fold, list(ctx.extra.texts), np.array(targets)))
        return real(model, ctx, targets)

    monkeypatch.setattr(train, "extra_rows", spy)
    r = load_recipe(RECIPES / "textcnn_vectors.toml", [
        f"data.dir={folder}", f"runs_dir={tmp_path / 'runs'}", "data.use_folds=[0]",
        "model.vectors=['char']", f"model.vectors_dir={tmp_path / 'models'}",
        "model.channels=8", "model.max_chars=40", "train.epochs_frozen=2",
        "train.batch_size=64", "train.inner_val=0", f"train.pseudo={pseudo}",
        "train.pseudo_soft=true", "train.min_steps=0"])
    cv = train_recipe(r)
    soft = read_pseudo(pseudo, comp.classes, soft=True, label_sep="|")
    mine = soft.folds == 0
    assert seen and all(f == 0 for f, _, _ in seen)
    _, texts, targets = seen[0]
    assert texts == [soft.texts[j] for j in np.flatnonzero(mine)]
    assert targets.shape == (int(mine.sum()), 4)
    assert np.allclose(targets, soft.targets[mine], atol=1e-6)
    assert not np.isin(targets, [0.0, 1.0]).all()  # probabilities, not the decided sets
    assert read_json(r.run_dir / "fold0" / "done.json")["n_extra"] == int(mine.sum())
    assert cv["task"] == "multilabel" and cv["extra_per_fold"] is True
    print(f"textcnn fold 0 with {int(mine.sum())} soft pseudo rows: nested micro_f1 "
          f"{cv['cv']:.4f}")


# ---------------------------------------------------------------------------------------------
# random labels


def test_noise_labels_pseudo_round_keeps_the_nested_cv_at_the_best_constant(tmp_path):
    """Random labels; the unlabelled file holds a near-copy of every train text. The round-1
    members memorise their training rows, so the global blend labels the copy of a fold-k row
    with that row's own label (the other folds' models learnt it). Per-fold rows come from
    fold-k models only: the pseudo member's nested CV stays at the best constant label set. The
    same round from a global file lifts it far above: the test can tell a leak."""
    from comp.blend.ensemble import run_ensemble

    folder = make_multilabel_folder(tmp_path / "noise", noise=True)
    comp = load_competition(folder_data_config(folder))
    write_csv(folder / "unlabelled.csv", ["id", "text"],
              [(f"u{i}", t + "啊") for i, t in enumerate(comp.train_texts)])
    runs, extra = tmp_path / "runs", "data.extra=unlabelled.csv"
    dirs = []
    for name, c in (("lr", 8), ("lr_memo", 100)):
        _, r = _tfidf(folder, runs, name, extra, f"linear.C={c}")
        dirs.append(r.run_dir)
    manifest = run_ensemble([str(d) for d in dirs], "mean", None, "",
                            tmp_path / "subs" / "mean").with_suffix(".json")
    assert read_json(manifest)["unlabelled_by_fold"]
    chance = best_constant_f1(comp.labels)
    out = {}
    for per_fold in (True, False):
        pseudo = make_pseudo(manifest, top_frac=0.5, per_fold=per_fold,
                             out=tmp_path / f"pseudo_{per_fold}.csv")
        rows = read_pseudo(pseudo, comp.classes, label_sep="|")
        assert (rows.folds is not None) == per_fold
        assert sum(t.endswith("啊") for t in rows.texts) > 100  # the copies are in
        cv, _ = _tfidf(folder, runs, f"lr_pl_{'fold' if per_fold else 'global'}", extra,
                       f"train.pseudo={pseudo}")
        out[per_fold] = (cv["cv"], len(rows))
    print(f"noise: best constant micro_f1 {chance:.4f}; pseudo member nested CV "
          f"{out[True][0]:.4f} per fold ({out[True][1]} rows), {out[False][0]:.4f} from a "
          f"global file ({out[False][1]} rows)")
    assert out[True][0] <= chance + 0.03
    assert out[False][0] >= chance + 0.06  # the leak per-fold rows prevent, seen in the CV
