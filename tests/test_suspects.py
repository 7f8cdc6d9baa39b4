"""data.suspects: fold k's suspect labels are found by an inner CV on fold k's training part,
then dropped or down-weighted there; validation rows keep their labels, so on random labels
the CV stays at chance, and a recipe that keeps them names the same run as before."""

import csv
import random

import numpy as np
import pytest
from conftest import make_small_competition, noise_competition

from comp.data.recipes import load_recipe
from comp.kfold import suspects as sus
from comp.kfold.rundir import fingerprint_of, recipe_fingerprint
from comp.members.registry import train_recipe

N = 100
TOL = 2 * 0.5 / np.sqrt(N)  # two standard deviations of N coin flips


def _recipe(data, runs, *over):
    return load_recipe("recipes/tfidf_char_lr.toml", [f"data.dir={data}", f"runs_dir={runs}",
                                                      "linear.min_df=1", *over])


def flip_labels(train_csv, n: int, seed: int, flip) -> set[str]:
    """Rewrite `train_csv` with `flip(row)` applied to n seeded rows; returns their texts."""
    with open(train_csv, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    picked = set(random.Random(seed).sample(range(len(rows)), n))
    for i in picked:
        flip(rows[i])
    with open(train_csv, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return {rows[i]["text"] for i in picked}


def spy_on_suspects(monkeypatch) -> tuple[list[set[str]], list[set[str]]]:
    """(the texts each inner_quality call saw, the texts it flagged), filled as folds run."""
    seen, flagged_texts = [], []
    real = sus.inner_quality

    def spy(texts, labels, n_classes, seed=0):
        q, flagged = real(texts, labels, n_classes, seed)
        seen.append(set(texts))
        flagged_texts.append({t for t, f in zip(texts, flagged) if f})
        return q, flagged

    monkeypatch.setattr(sus, "inner_quality", spy)
    return seen, flagged_texts


@pytest.mark.parametrize("how", ["drop", "weight"])
def test_noise_labels_stay_at_chance_with_suspects_treated(tmp_path, how):
    data = noise_competition(tmp_path / "noise", n=N)
    cv = train_recipe(_recipe(data, tmp_path / "runs", f"data.suspects={how}",
                              "data.suspect_frac=0.2"))
    assert abs(cv["cv"] - 0.5) <= TOL, cv["cv"]


def test_suspects_come_from_the_training_part_and_find_flipped_labels(tmp_path, monkeypatch):
    d = make_small_competition(tmp_path / "c", n_train=600, n_test=20)

    def other(row):
        row["label"] = "neg" if row["label"] == "pos" else "pos"

    flipped_texts = flip_labels(d / "train.csv", 60, 3, other)
    seen, dropped = spy_on_suspects(monkeypatch)
    recipe = _recipe(d, tmp_path / "runs", "data.suspects=drop", "data.folds=3")
    train_recipe(recipe)
    from comp.data.competition import load_competition
    from comp.data.folds import load_folds

    comp = load_competition(recipe.data)
    folds = load_folds(comp, recipe.data)
    assert len(seen) == 3
    for k in range(3):
        val = {comp.train_texts[i] for i in np.flatnonzero(folds == k)}
        assert not (seen[k] & val)  # no validation text reached the suspect finder
        n_flip = len(dropped[k] & flipped_texts)
        # 10 % of the rows are flipped: the flagged ones are 4x richer in them, and a TF-IDF
        # model of 400 short reviews still finds a third of them
        assert n_flip / max(len(dropped[k]), 1) > 0.4, (n_flip, len(dropped[k]))
        assert n_flip >= 0.35 * len(seen[k] & flipped_texts)


def test_keeping_suspects_names_the_same_run_as_before(tmp_path):
    keep = _recipe(tmp_path, tmp_path / "runs")
    d = keep.to_dict()
    d["data"].pop("suspects")
    d["data"].pop("suspect_frac")
    assert recipe_fingerprint(keep) == fingerprint_of(d)
    drop = _recipe(tmp_path, tmp_path / "runs", "data.suspects=drop")
    assert recipe_fingerprint(drop) != recipe_fingerprint(keep)
    with pytest.raises(Exception, match="data.suspects"):
        _recipe(tmp_path, tmp_path / "runs", "data.suspects=burn")


def test_multilabel_suspects_find_flipped_label_sets_on_the_training_part(tmp_path,
                                                                           monkeypatch):
    from test_multilabel import make_multilabel_folder

    d = make_multilabel_folder(tmp_path / "ml", n_train=400, n_test=20)

    def other(row):  # the sentiment label turned over: a wrong label set
        row["pos"] = "0" if row["pos"] == "1" else "1"

    flipped_texts = flip_labels(d / "train.csv", 40, 5, other)
    seen, flagged_texts = spy_on_suspects(monkeypatch)
    recipe = _recipe(d, tmp_path / "runs", "data.suspects=weight", "data.folds=3")
    cv = train_recipe(recipe)
    assert cv["task"] == "multilabel" and len(seen) == 3
    from comp.data.competition import load_competition
    from comp.data.folds import load_folds

    comp = load_competition(recipe.data)
    folds = load_folds(comp, recipe.data)
    for k in range(3):
        val = {comp.train_texts[i] for i in np.flatnonzero(folds == k)}
        assert not (seen[k] & val)
        hits = len(flagged_texts[k] & flipped_texts)
        # 10 % of the rows carry a wrong set: the flagged ones are far richer in them
        assert hits / max(len(flagged_texts[k]), 1) > 0.25, (hits, len(flagged_texts[k]))


@pytest.mark.parametrize("how", ["drop", "weight"])
def test_multilabel_noise_labels_stay_at_chance_with_suspects_treated(tmp_path, how):
    from test_multilabel import best_constant_f1, make_multilabel_folder

    d = make_multilabel_folder(tmp_path / "noise", n_train=300, n_test=20, noise=True)
    recipe = _recipe(d, tmp_path / "runs", f"data.suspects={how}", "data.suspect_frac=0.2")
    cv = train_recipe(recipe)
    from comp.data.competition import load_competition

    chance = best_constant_f1(load_competition(recipe.data).labels)
    assert cv["cv"] <= chance + 0.03, (cv["cv"], chance)
