import numpy as np
import pytest

from comp.config import load_recipe
from comp.data import load_competition, normalize_text
from comp.member import ExtraRows, extra_for_fold, run_member
from comp.utils import CompError, read_json


def _recipe(small_comp, tmp_path, name="m", k=3):
    return load_recipe(None, [f"data.dir={small_comp}", f"data.folds={k}",
                              f"runs_dir={tmp_path / 'runs'}", f"name={name}"])


def _prior_fit(calls):
    def fit(ctx):
        calls.append(ctx.fold)
        y = ctx.comp.labels[ctx.train_idx]
        p = np.bincount(y, minlength=ctx.comp.n_classes) / len(y)
        return np.tile(p, (len(ctx.val_idx), 1)), np.tile(p, (len(ctx.comp.test_ids), 1))
    return fit


def test_runner_writes_member_contract_and_resumes(small_comp, tmp_path):
    r = _recipe(small_comp, tmp_path)
    calls = []
    assert run_member(r, _prior_fit(calls), folds_to_run=[0, 2]) is None  # fold 1 missing
    assert calls == [0, 2]
    cv = run_member(r, _prior_fit(calls))
    assert calls == [0, 2, 1]  # finished folds were skipped
    d = r.run_dir
    oof, test = np.load(d / "oof.npy"), np.load(d / "test.npy")
    assert oof.shape == (400, 2) and test.shape == (100, 2)
    assert read_json(d / "classes.json") == ["neg", "pos"]
    assert cv["fold_scores"] and len(cv["fold_scores"]) == 3
    assert (d / "recipe.toml").exists()
    before = (d / "fold0" / "val_proba.npy").read_bytes()
    run_member(r, _prior_fit(calls))
    assert calls == [0, 2, 1] and (d / "fold0" / "val_proba.npy").read_bytes() == before


def test_changed_recipe_refuses_to_mix_folds(small_comp, tmp_path):
    run_member(_recipe(small_comp, tmp_path), _prior_fit([]), folds_to_run=[0])
    r2 = load_recipe(None, [f"data.dir={small_comp}", "data.folds=3", "train.lr_head=0.5",
                            f"runs_dir={tmp_path / 'runs'}", "name=m"])
    with pytest.raises(CompError, match="different recipe"):
        run_member(r2, _prior_fit([]), folds_to_run=[0])


def test_bad_member_output_shape_is_refused(small_comp, tmp_path):
    def fit(ctx):
        return np.zeros((3, 2)), np.zeros((100, 2))
    with pytest.raises(CompError, match="shape"):
        run_member(_recipe(small_comp, tmp_path), fit, folds_to_run=[0])


def test_extra_rows_join_training_parts_only_and_never_duplicate_validation(small_comp,
                                                                           tmp_path):
    comp = load_competition(_recipe(small_comp, tmp_path).data)
    # extra rows: 5 fresh texts + copies of two train texts (their targets would leak labels)
    dup = [comp.train_texts[0], " " + comp.train_texts[1].upper() + " "]
    texts = [f"额外文本{i}" for i in range(5)] + dup
    extra = ExtraRows(texts, np.full((7, 2), 0.5), np.ones(7))
    seen = []

    def fit(ctx):
        val_keys = {normalize_text(t) for t in ctx.val_texts}
        assert not val_keys & {normalize_text(t) for t in ctx.extra.texts}
        seen.append(len(ctx.extra))
        p = np.full((len(ctx.val_idx), 2), 0.5)
        return p, np.full((100, 2), 0.5)

    run_member(_recipe(small_comp, tmp_path), fit, extra=extra)
    assert sorted(seen)[-1] == 7 and min(seen) < 7  # the duplicates were dropped where needed


def test_extra_for_fold_counts_dropped_rows():
    extra = ExtraRows(["a", "B ", "c"], np.zeros((3, 2)), np.ones(3))
    kept, dropped = extra_for_fold(extra, ["b", "x"])
    assert kept.texts == ["a", "c"] and dropped == 1
