import csv
import json

import numpy as np
import pytest

from comp.core.utils import CompError, read_json
from comp.data.competition import load_competition
from comp.data.folds import data_hashes, load_folds, normalize_text
from comp.data.recipes import load_recipe
from comp.kfold.extra import ExtraRows, extra_for_fold
from comp.kfold.runner import run_member, write_member_files


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


def test_changed_recipe_refits_and_says_which_keys(small_comp, tmp_path, capsys):
    calls: list[int] = []
    run_member(_recipe(small_comp, tmp_path), _prior_fit(calls), folds_to_run=[0])
    r2 = load_recipe(None, [f"data.dir={small_comp}", "data.folds=3", "train.lr_head=0.5",
                            f"runs_dir={tmp_path / 'runs'}", "name=m"])
    run_member(r2, _prior_fit(calls), folds_to_run=[0])
    assert calls == [0, 0]
    assert "fold 0: the recipe (train.lr_head: 0.002 -> 0.5) changed; refitting" in \
        capsys.readouterr().err


def test_folds_from_before_a_new_recipe_key_still_resume(small_comp, tmp_path):
    """A run made when `model.proj_dim` did not exist yet (its recipe.toml and fold markers
    lack it) resumes: it trained with the key's default. Any real change refits."""
    import tomllib

    from comp.config.schema import dumps_toml
    from comp.kfold.rundir import _legacy_fingerprints, _legacy_toml
    from comp.kfold.rundir import fingerprint_of as _fingerprint_of

    r = _recipe(small_comp, tmp_path)
    calls: list[int] = []
    run_member(r, _prior_fit(calls), folds_to_run=[0, 1])
    old = tomllib.loads((r.run_dir / "recipe.toml").read_text(encoding="utf-8"))
    del old["model"]["proj_dim"]  # the older toolkit's recipe, in its TOML writer's layout
    (r.run_dir / "recipe.toml").write_text(_legacy_toml(old), encoding="utf-8")
    for f in (0, 1):
        done = r.run_dir / f"fold{f}" / "done.json"
        # the older toolkit's fingerprint: its TOML text, data.dir still in it
        marker = {**read_json(done), "recipe": _legacy_fingerprints(old)[1]}
        marker.pop("inputs")  # as the older toolkit wrote it
        done.write_text(json.dumps(marker))
    run_member(r, _prior_fit(calls))
    assert calls == [0, 1, 2]  # folds 0 and 1 were not refitted
    assert read_json(r.run_dir / "fold0" / "done.json")["recipe"] == \
        read_json(r.run_dir / "fold2" / "done.json")["recipe"]  # markers brought up to date

    # the stored recipe must be the one that made the marker, and equal today's
    old["train"]["lr_head"] = 0.5
    (r.run_dir / "recipe.toml").write_text(dumps_toml(old), encoding="utf-8")
    done = r.run_dir / "fold0" / "done.json"
    marker = {**read_json(done), "recipe": _fingerprint_of(old)}
    marker.pop("inputs")
    done.write_text(json.dumps(marker))
    run_member(r, _prior_fit(calls))
    assert calls == [0, 1, 2, 0]  # a real change refits


def test_legacy_fingerprint_is_the_toml_text_one():
    """The back-compat fingerprints are the ones the toolkit wrote when it hashed the text of
    its own TOML writer (digests made by that code: without data.dir, and with it)."""
    from comp.kfold.rundir import _legacy_fingerprints, fingerprint_of

    d = {"name": "m", "kind": "fusion", "runs_dir": "runs",
         "data": {"dir": "data/x", "text_cols": ["a", "b"], "text_sep": "\t", "extra": "u.csv",
                  "use_folds": [0]},
         "model": {"head": "cnn", "backbones": [{"kind": "bert", "path": "p"}],
                   "kernel_sizes": [2, 3]},
         "train": {"lr_head": 0.002, "amp": True, "predict_train": True},
         "tune": {"train.lr_head": {"type": "float"}}}
    assert _legacy_fingerprints(d) == ("1fa8351c45927ce3", "fc720761576b1689")
    # today's: canonical JSON, the same whatever the key order
    assert fingerprint_of(dict(reversed(d.items()))) == fingerprint_of(d) == "a18b59fbee96cd00"


def test_folds_marked_with_the_toml_text_fingerprint_stay_current(small_comp, tmp_path):
    """Folds whose markers hold the fingerprint of the older definition (sha1 of the recipe's
    TOML text) are not refitted by the switch to JSON; their markers are brought up to date."""
    import tomllib

    from comp.kfold.rundir import _legacy_fingerprints, _legacy_toml, recipe_fingerprint

    r = _recipe(small_comp, tmp_path)
    calls: list[int] = []
    run_member(r, _prior_fit(calls))
    raw = tomllib.loads((r.run_dir / "recipe.toml").read_text(encoding="utf-8"))
    (r.run_dir / "recipe.toml").write_text(_legacy_toml(raw), encoding="utf-8")
    old = _legacy_fingerprints(raw)[0]
    for f in range(3):
        done = r.run_dir / f"fold{f}" / "done.json"
        marker = read_json(done)
        assert marker["recipe"] != old
        done.write_text(json.dumps({**marker, "recipe": old,
                                    "inputs": {**marker["inputs"], "recipe": old}}))
    run_member(r, _prior_fit(calls))
    assert calls == [0, 1, 2]  # nothing refitted
    marker = read_json(r.run_dir / "fold0" / "done.json")
    assert marker["recipe"] == marker["inputs"]["recipe"] == recipe_fingerprint(r)


def test_control_characters_round_trip_through_recipe_toml(small_comp, tmp_path):
    """A recipe value holding control characters is written escaped (tomli_w), read back equal,
    and fingerprints the same from the file as from the recipe."""
    import tomllib

    from comp.config.schema import Recipe, from_dict
    from comp.kfold.rundir import fingerprint_of, recipe_fingerprint

    r = load_recipe(None, [f"data.dir={small_comp}", "data.folds=3", "name=m",
                           f"runs_dir={tmp_path / 'runs'}", 'data.text_sep="\\u0001\\t\\r"'])
    assert r.data.text_sep == "\x01\t\r"
    calls: list[int] = []
    run_member(r, _prior_fit(calls))
    raw = tomllib.loads((r.run_dir / "recipe.toml").read_text(encoding="utf-8"))
    assert raw["data"]["text_sep"] == "\x01\t\r" and from_dict(Recipe, raw) == r
    assert fingerprint_of(raw) == recipe_fingerprint(r)
    run_member(r, _prior_fit(calls))
    assert calls == [0, 1, 2]


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


def test_changed_extra_rows_refit_and_the_same_rows_skip(small_comp, tmp_path):
    """A regenerated pseudo-label file under the same path must not leave stale folds."""
    r = _recipe(small_comp, tmp_path)
    texts = [f"额外文本{i}" for i in range(4)]
    first = ExtraRows(texts, np.eye(2)[[0, 1, 0, 1]], np.ones(4))
    calls = []
    run_member(r, _prior_fit(calls), extra=first)
    assert calls == [0, 1, 2]
    same = ExtraRows(list(texts), np.eye(2)[[0, 1, 0, 1]], np.ones(4))
    run_member(r, _prior_fit(calls), extra=same)
    assert calls == [0, 1, 2]  # same rows: nothing retrained
    relabelled = ExtraRows(list(texts), np.eye(2)[[1, 1, 0, 1]], np.ones(4))
    run_member(r, _prior_fit(calls), extra=relabelled)
    assert calls == [0, 1, 2, 0, 1, 2]
    assert read_json(r.run_dir / "fold0" / "done.json")["extra_hash"] == relabelled.fingerprint


def test_extra_for_fold_counts_dropped_rows():
    extra = ExtraRows(["a", "B ", "c"], np.zeros((3, 2)), np.ones(3))
    kept, dropped = extra_for_fold(extra, ["b", "x"])
    assert kept.texts == ["a", "c"] and dropped == 1


# ---------------------------------------------------------------------------------------------
# unlabelled texts (data.extra)


def _with_unlabelled(small_comp, tmp_path, texts, name="m"):
    with open(small_comp / "unlabelled.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((f"u{i}", t) for i, t in enumerate(texts))
    return load_recipe(None, [f"data.dir={small_comp}", "data.folds=3", f"name={name}",
                              f"runs_dir={tmp_path / 'runs'}", "data.extra=unlabelled.csv"])


def _predicting_fit(calls):
    """A member kind that predicts ctx.predict_texts: a per-fold constant, so averages show."""
    def fit(ctx):
        calls.append(ctx.fold)
        n = len(ctx.predict_texts)
        assert ctx.predict_texts[:len(ctx.comp.test_texts)] == ctx.comp.test_texts
        p = np.tile([0.1 * (ctx.fold + 1), 1 - 0.1 * (ctx.fold + 1)], (n, 1))
        return np.full((len(ctx.val_idx), 2), 0.5), p
    return fit


def test_members_write_fold_averaged_unlabelled_predictions(small_comp, tmp_path):
    texts = ["第一条额外文本", "第二条", "第三条评论"]
    r = _with_unlabelled(small_comp, tmp_path, texts)
    calls = []
    cv = run_member(r, _predicting_fit(calls))
    d = r.run_dir
    unl, test = np.load(d / "unlabelled.npy"), np.load(d / "test.npy")
    assert unl.shape == (3, 2) and test.shape == (100, 2)
    assert np.allclose(unl[:, 0], 0.2) and np.allclose(test[:, 0], 0.2)  # mean of .1 .2 .3
    assert np.load(d / "fold1" / "unlabelled_proba.npy").shape == (3, 2)
    assert cv["n_unlabelled"] == 3 and cv["n_test"] == 100
    assert cv["unlabelled_hash"] == load_competition(r.data).unlabelled_hash
    run_member(r, _predicting_fit(calls))
    assert calls == [0, 1, 2]  # resumed: done folds predicted these very texts

    from comp.blend.ensemble import read_member

    assert read_member(d).unlabelled.shape == (3, 2)


def test_changed_unlabelled_texts_refit_folds_and_old_runs_still_load(small_comp, tmp_path):
    plain = _recipe(small_comp, tmp_path)
    calls = []
    run_member(plain, _predicting_fit(calls))  # made before any unlabelled file
    d = plain.run_dir
    for f in range(3):  # done markers of a run older than the option
        meta = read_json(d / f"fold{f}" / "done.json")
        meta.pop("unlabelled_hash")
        meta.pop("unlabelled_predicted")
        (d / f"fold{f}" / "done.json").write_text(json.dumps(meta))
    run_member(plain, _predicting_fit(calls))
    assert calls == [0, 1, 2] and not (d / "unlabelled.npy").exists()

    from comp.blend.ensemble import read_member

    assert read_member(d).unlabelled is None
    r = _with_unlabelled(small_comp, tmp_path, ["甲", "乙"])  # same name and recipe
    run_member(r, _predicting_fit(calls))
    assert calls == [0, 1, 2] * 2 and np.load(d / "unlabelled.npy").shape == (2, 2)
    r = _with_unlabelled(small_comp, tmp_path, ["甲", "乙", "丙"])  # the file grew
    run_member(r, _predicting_fit(calls))
    assert calls == [0, 1, 2] * 3 and np.load(d / "unlabelled.npy").shape == (3, 2)


def test_write_member_files_round_trips_and_drops_a_stale_unlabelled_file(tmp_path):
    from comp.blend.ensemble import read_member

    rng = np.random.default_rng(0)
    oof, test, unl = (rng.dirichlet(np.ones(3), n) for n in (6, 4, 2))  # (n, C=3)
    cv = {"name": "m", "metric": "accuracy", "n_train": 6, "n_test": 4, "n_unlabelled": 2}
    d = tmp_path / "m"
    write_member_files(d, oof, test, ["a", "b", "c"], cv, unl)
    m = read_member(d)
    assert m.classes == ["a", "b", "c"] and m.cv == cv
    assert np.allclose(m.oof, oof) and np.allclose(m.test, test) and np.allclose(m.unlabelled, unl)
    write_member_files(d, oof, test, ["a", "b", "c"], {"name": "m"})
    assert not (d / "unlabelled.npy").exists() and read_member(d).unlabelled is None


def test_member_kind_predicting_test_only_writes_no_unlabelled(small_comp, tmp_path):
    r = _with_unlabelled(small_comp, tmp_path, ["甲", "乙"])
    calls = []
    cv = run_member(r, _prior_fit(calls))  # returns (n_test, C)
    assert cv is not None and "n_unlabelled" not in cv
    assert not (r.run_dir / "unlabelled.npy").exists()
    assert np.load(r.run_dir / "test.npy").shape == (100, 2)
    run_member(r, _prior_fit(calls))
    assert calls == [0, 1, 2]  # not refitted again and again


def test_wrong_prediction_rows_name_both_shapes(small_comp, tmp_path):
    r = _with_unlabelled(small_comp, tmp_path, ["甲", "乙"])

    def fit(ctx):
        return np.full((len(ctx.val_idx), 2), 0.5), np.full((101, 2), 0.5)
    with pytest.raises(CompError, match=r"\(101, 2\), expected \(102, 2\).*\(100, 2\)"):
        run_member(r, fit, folds_to_run=[0])


# ---------------------------------------------------------------------------------------------
# per-fold extra rows and per-fold predictions


def test_per_fold_extra_rows_train_their_own_fold_only(small_comp, tmp_path):
    r = _recipe(small_comp, tmp_path)
    comp = load_competition(r.data)
    fh = data_hashes(comp, load_folds(comp, r.data))["folds_hash"]
    # rows 0-5 belong to one fold each, 6-7 serve every fold; row 8 copies a train text
    texts = [f"第{k}折的行{i}" for k in range(3) for i in range(2)] + ["通用甲", "通用乙"]
    texts.append(comp.train_texts[0])
    folds = np.array([0, 0, 1, 1, 2, 2, -1, -1, 1])
    extra = ExtraRows(texts, np.full((9, 2), 0.5), np.ones(9), "p.csv", folds, fh)
    seen = {}

    def fit(ctx):
        seen[ctx.fold] = list(ctx.extra.texts)
        return np.full((len(ctx.val_idx), 2), 0.5), np.full((100, 2), 0.5)

    cv = run_member(r, fit, extra=extra)
    fold_of_0 = int(load_folds(comp, r.data)[0])
    for k in range(3):
        want = [f"第{k}折的行{i}" for i in range(2)] + ["通用甲", "通用乙"]
        if k == 1 and fold_of_0 != 1:
            want.append(comp.train_texts[0])  # a duplicate of fold 1's train part, not its val
        assert seen[k] == want
    assert cv["extra_per_fold"] is False  # the every-fold rows make it optimistic
    for k in range(3):
        assert read_json(r.run_dir / f"fold{k}" / "done.json")["n_extra"] == len(seen[k])

    only = ExtraRows(texts[:6], np.full((6, 2), 0.5), np.ones(6), "p.csv", folds[:6], fh)
    assert run_member(_recipe(small_comp, tmp_path, "own"), fit, extra=only)["extra_per_fold"]
    assert seen == {k: [f"第{k}折的行{i}" for i in range(2)] for k in range(3)}


def test_per_fold_extra_rows_for_another_fold_table_are_refused(small_comp, tmp_path):
    r = _recipe(small_comp, tmp_path)
    rows = ExtraRows(["甲", "乙"], np.full((2, 2), 0.5), np.ones(2), "p.csv", np.array([0, 3]))
    with pytest.raises(CompError, match=r"p\.csv: column 'fold': rows for fold 3 but the member "
                       r"has data\.folds=3"):
        run_member(r, _prior_fit([]), extra=rows)
    rows = ExtraRows(["甲"], np.full((1, 2), 0.5), np.ones(1), "p.csv", np.array([0]), "abc")
    with pytest.raises(CompError, match=r"labelled for fold table abc, but this member's is"):
        run_member(r, _prior_fit([]), extra=rows)


def test_extra_for_fold_keeps_its_fold_and_every_fold_rows():
    extra = ExtraRows(["a", "b", "c", "d"], np.zeros((4, 2)), np.ones(4), "",
                      np.array([0, 1, -1, 0]))
    kept, dropped = extra_for_fold(extra, ["d"], 0)
    assert kept.texts == ["a", "c"] and dropped == 1 and kept.folds.tolist() == [0, -1]
    assert extra_for_fold(extra, [], None)[0].texts == ["a", "b", "c", "d"]


def test_read_member_has_the_folds_predictions_and_ignores_stale_ones(small_comp, tmp_path):
    from comp.blend.ensemble import read_member

    r = _with_unlabelled(small_comp, tmp_path, ["甲", "乙"])
    run_member(r, _predicting_fit([]))
    m = read_member(r.run_dir)
    assert m.test_by_fold.shape == (3, 100, 2) and m.unlabelled_by_fold.shape == (3, 2, 2)
    assert np.allclose(m.test_by_fold[:, :, 0], np.array([0.1, 0.2, 0.3])[:, None])
    assert np.allclose(m.unlabelled_by_fold[:, :, 0], np.array([0.1, 0.2, 0.3])[:, None])
    # fold files that do not average to the member's test.npy belong to another run
    np.save(r.run_dir / "test.npy", np.full((100, 2), 0.5, dtype=np.float32))
    m = read_member(r.run_dir)
    assert m.test_by_fold is None and m.unlabelled_by_fold is None and m.unlabelled is not None


def test_write_member_files_per_fold_arrays_round_trip_and_stale_ones_go(tmp_path):
    from comp.blend.ensemble import read_member

    rng = np.random.default_rng(1)
    oof, test, unl = (rng.dirichlet(np.ones(2), n) for n in (6, 4, 3))
    test_k, unl_k = rng.dirichlet(np.ones(2), (3, 4)), rng.dirichlet(np.ones(2), (3, 3))
    d = tmp_path / "ens"
    write_member_files(d, oof, test, ["a", "b"], {"name": "e"}, unl, test_k, unl_k)
    m = read_member(d)
    assert np.allclose(m.test_by_fold, test_k) and np.allclose(m.unlabelled_by_fold, unl_k)
    write_member_files(d, oof, test, ["a", "b"], {"name": "e"}, None, test_k, unl_k)
    assert not (d / "unlabelled_by_fold.npy").exists()  # never without unlabelled.npy
    assert read_member(d).unlabelled_by_fold is None and read_member(d).test_by_fold is not None
    write_member_files(d, oof, test, ["a", "b"], {"name": "e"})
    assert not (d / "test_by_fold.npy").exists() and read_member(d).test_by_fold is None
    np.save(d / "test_by_fold.npy", test_k[:, :3])
    with pytest.raises(CompError, match=r"test_by_fold\.npy: shape \(3, 3, 2\), expected"):
        read_member(d)
