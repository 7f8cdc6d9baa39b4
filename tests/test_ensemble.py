"""Blenders (comp.blend), stacking and honest nested CV (comp.blend.ensemble) on synthetic OOF."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from comp.blend.blenders import (
    BLENDERS,
    HillClimbBlender,
    StackEnsemble,
    WeightBlender,
    blender_params,
    create_blender,
)
from comp.blend.ensemble import (
    EnsembleResult,
    ensemble,
    leaderboard,
    load_members,
    nested_stack_cv,
    read_member,
)
from comp.core.metrics import score
from comp.core.utils import CompError, save_npy, write_json

K = 5


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def synth(n: int = 300, M: int = 4, C: int = 3, seed: int = 0, strengths=None):
    """y (n,), folds (n,), X (n, M, C): member m sees the label with strength strengths[m]."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    folds = np.arange(n) % K
    rng.shuffle(folds)
    strengths = np.linspace(0.5, 2.5, M) if strengths is None else np.asarray(strengths)
    onehot = np.eye(C)[y]  # (n, C)
    logits = strengths[None, :, None] * onehot[:, None, :] + rng.normal(size=(n, M, C))
    return y, folds, _softmax(logits)  # (n, M, C)


def write_member(root: Path, name: str, oof: np.ndarray, test: np.ndarray,
                 classes: list[str], **cv_over) -> Path:
    d = root / name
    save_npy(d / "oof.npy", oof)
    save_npy(d / "test.npy", test)
    write_json(d / "classes.json", classes)
    cv = {"name": name, "metric": "accuracy", "cv": 0.5, "fold_scores": [0.5] * K,
          "folds_hash": "f0", "train_hash": "t0", "test_hash": "s0", "n_train": len(oof),
          "n_test": len(test), "kind": "linear", "seconds": 1.0}
    cv.update(cv_over)
    write_json(d / "cv.json", cv)
    return d


# ---------------------------------------------------------------------------------------------
# the estimator protocol, for every registered blender


@pytest.mark.parametrize("name", sorted(BLENDERS))
def test_estimator_protocol(name):
    y, _, X = synth(n=120, M=3, C=3)
    est = create_blender(name)
    params = est.get_params()
    assert blender_params(name) == params
    before = set(vars(est))
    assert before == set(params), "__init__ must only store its arguments"
    c = clone(est)
    assert c.get_params() == params
    with pytest.raises(NotFittedError):
        check_is_fitted(c)
    assert c.fit(X, y) is c
    added = set(vars(c)) - before
    assert added and all(a.endswith("_") for a in added), added
    assert c.get_params() == params, "fit must not change the constructor arguments"
    p = c.predict_proba(X)
    assert p.shape == (120, 3)
    assert (p >= 0).all() and np.allclose(p.sum(1), 1.0)
    assert np.array_equal(c.predict(X), p.argmax(1))
    # A clone of a fitted blender is a fresh, unfitted one.
    with pytest.raises(NotFittedError):
        check_is_fitted(clone(c))


@pytest.mark.parametrize("name", sorted(BLENDERS))
def test_blenders_beat_chance_and_check_shapes(name):
    y, _, X = synth(n=300, M=3, C=3)
    est = create_blender(name).fit(X, y)
    assert score("accuracy", y, est.predict_proba(X)) > 0.6
    with pytest.raises(CompError, match="members"):
        est.predict_proba(X[:, :2])
    with pytest.raises(CompError, match="rows, members, classes"):
        est.predict_proba(X[:, 0])


def test_create_blender_errors_name_the_problem():
    with pytest.raises(CompError, match="unknown .*known: .*hill"):
        create_blender("nope")
    with pytest.raises(CompError, match="unknown parameter 'n_iters'"):
        create_blender("hill", n_iters=3)
    assert blender_params("nope") == {}


# ---------------------------------------------------------------------------------------------
# weights and hill climbing


@pytest.mark.parametrize("metric", ["logloss", "accuracy", "auc"])
def test_weights_on_the_simplex_and_no_worse_than_best_member(metric):
    y, _, X = synth(n=400, M=4, C=2, seed=1)
    X = np.concatenate([X, np.full((400, 1, 2), 0.5)], axis=1)  # a useless uniform member
    w = WeightBlender(metric=metric).fit(X, y).weights_
    assert w.shape == (5,)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    p = WeightBlender(metric="logloss").fit(X, y).predict_proba(X)
    best_ll = min(score("logloss", y, X[:, m]) for m in range(5))
    assert score("logloss", y, p) <= best_ll + 1e-9
    assert score("logloss", y, p) < score("logloss", y, X.mean(1))


def test_weights_ignore_a_useless_member():
    y, _, X = synth(n=500, M=2, C=3, seed=2, strengths=[2.0, 2.0])
    rng = np.random.default_rng(0)
    noise = _softmax(3 * rng.normal(size=(500, 1, 3)))
    w = WeightBlender().fit(np.concatenate([X, noise], 1), y).weights_
    assert w[2] < 0.05 and w[:2].min() > 0.3


@pytest.mark.parametrize("metric", ["accuracy", "logloss", "auc", "macro_f1"])
def test_hill_starts_from_best_member_and_never_does_worse(metric):
    y, _, X = synth(n=300, M=5, C=2, seed=3, strengths=[0.3, 1.0, 2.0, 0.8, 1.5])
    from comp.core.metrics import greater_is_better

    sign = 1 if greater_is_better(metric) else -1
    member = [sign * score(metric, y, X[:, m]) for m in range(5)]
    best = int(np.argmax(member))
    start = HillClimbBlender(metric=metric, n_iter=0).fit(X, y)
    assert start.start_members_ == [best]
    assert np.array_equal(start.weights_, np.eye(5)[best])
    hill = HillClimbBlender(metric=metric, n_iter=30).fit(X, y)
    assert hill.history_[0] == pytest.approx(sign * member[best])
    assert sign * score(metric, y, hill.predict_proba(X)) >= member[best] - 1e-12
    assert (hill.weights_ >= 0).all() and hill.weights_.sum() == pytest.approx(1.0)
    # with replacement: weights are counts / total
    assert np.allclose(hill.weights_ * hill.counts_.sum(), hill.counts_)


def test_hill_start_k_and_bad_start():
    y, _, X = synth(n=200, M=4, C=2)
    h = HillClimbBlender(n_iter=0, start=2).fit(X, y)
    assert h.counts_.sum() == 2 and len(h.start_members_) == 2
    with pytest.raises(CompError, match="start"):
        HillClimbBlender(start=9).fit(X, y)


@pytest.mark.parametrize("meta", ["lr", "ridge", "hgb"])
@pytest.mark.parametrize("use_logits", [False, True])
def test_stack_metas(meta, use_logits):
    y, folds, X = synth(n=300, M=3, C=3, seed=4)
    st = StackEnsemble(meta=meta, use_logits=use_logits)
    oof, s = nested_stack_cv(st, X, y, folds, "accuracy")
    assert oof.shape == (300, 3) and np.allclose(oof.sum(1), 1.0)
    assert s > 0.6
    if meta != "hgb":
        imp = st.fit(X, y).member_importance()
        assert imp.shape == (3,) and imp.sum() == pytest.approx(1.0)
        assert imp.argmax() == 2  # the strongest member matters most


def test_stack_fold_missing_a_class_still_gives_all_columns():
    y, _, X = synth(n=200, M=2, C=3)
    keep = y != 2
    p = StackEnsemble().fit(X[keep], y[keep]).predict_proba(X)
    assert p.shape == (200, 3) and np.allclose(p[:, 2], 0) and np.allclose(p.sum(1), 1)


def test_stack_bad_meta():
    y, _, X = synth(n=50)
    with pytest.raises(CompError, match="meta='xgb'"):
        StackEnsemble(meta="xgb").fit(X, y)


# ---------------------------------------------------------------------------------------------
# honest CV: leak detectors


class Memorizer(ClassifierMixin, BaseEstimator):
    """Reads the row id hidden in X[:, 0, 0] and recalls its training label; unseen -> uniform.

    In-sample it is perfect; through an honest fold loop it never sees the rows it predicts,
    so every prediction must be exactly uniform.
    """

    def fit(self, X, y):
        self.n_classes_ = X.shape[2]
        self.table_ = dict(zip(np.rint(X[:, 0, 0] * 1e6).astype(int).tolist(), y.tolist()))
        return self

    def predict_proba(self, X):
        out = np.full((len(X), self.n_classes_), 1.0 / self.n_classes_)
        for i, key in enumerate(np.rint(X[:, 0, 0] * 1e6).astype(int).tolist()):
            if key in self.table_:
                out[i] = np.eye(self.n_classes_)[self.table_[key]]
        return out


def test_nested_cv_never_sees_a_rows_own_label():
    n, C = 250, 3
    y, folds, X = synth(n=n, M=2, C=C, seed=5)
    X[:, 0, 0] = (np.arange(n) + 1) / 1e6  # row ids hidden in the features
    assert score("accuracy", y, Memorizer().fit(X, y).predict_proba(X)) == 1.0
    oof, s = nested_stack_cv(Memorizer(), X, y, folds, "accuracy")
    assert np.allclose(oof, 1.0 / C), "a row's own label reached its prediction"
    assert s == pytest.approx(np.mean(y == 0))  # argmax of uniform is class 0


@pytest.mark.parametrize("name", sorted(BLENDERS))
def test_nested_oof_of_a_fold_ignores_that_folds_labels(name):
    """Rewriting every label in fold k must leave fold k's nested predictions unchanged."""
    y, folds, X = synth(n=200, M=3, C=3, seed=6)
    kw = {"n_iter": 10} if name == "hill" else {}
    ref = ensemble_oof(name, X, y, folds, **kw)
    for k in (0, 3):
        y2 = y.copy()
        y2[folds == k] = (y2[folds == k] + 1) % 3
        got = ensemble_oof(name, X, y2, folds, **kw)
        assert np.allclose(got[folds == k], ref[folds == k])
        assert got.shape == ref.shape


def ensemble_oof(name, X, y, folds, **kw):
    from comp.blend.ensemble import Member

    members = [Member(f"m{m}", X[:, m], X[:20, m], ["a", "b", "c"], {}) for m in
               range(X.shape[1])]
    return ensemble(members, name, y, folds, "logloss", **kw).oof


@pytest.mark.parametrize("method,kw", [("stack", {"C": 100.0}), ("hill", {"n_iter": 40}),
                                       ("weights", {}), ("stack", {"meta": "hgb"})])
def test_noise_labels_nested_cv_is_chance_while_in_sample_is_optimistic(method, kw):
    """Members carry no signal about the labels: honest CV must sit at chance."""
    rng = np.random.default_rng(7)
    n, M, C = 400, 20, 2
    y = rng.integers(0, C, n)
    folds = np.arange(n) % K
    X = _softmax(2.0 * rng.normal(size=(n, M, C)))
    from comp.blend.ensemble import Member

    members = [Member(f"m{m}", X[:, m], X[:10, m], ["0", "1"], {}) for m in range(M)]
    res = ensemble(members, method, y, folds, "accuracy", **kw)
    assert isinstance(res, EnsembleResult)
    assert abs(res.cv - 0.5) < 0.08, res.cv
    assert res.cv_in_sample > res.cv + 0.03
    assert res.meta["cv"] == res.cv and res.meta["cv_in_sample"] == res.cv_in_sample


def test_ensemble_reports_nested_cv_and_full_fit_test():
    y, folds, X = synth(n=300, M=3, C=3, seed=8)
    from comp.blend.ensemble import Member

    XT = X[:40] * 0.5 + 1.0 / 6
    members = [Member(f"m{m}", X[:, m], XT[:, m], ["a", "b", "c"], {}) for m in range(3)]
    res = ensemble(members, "weights", y, folds, "logloss")
    oof, s = nested_stack_cv(WeightBlender(metric="logloss"), X, y, folds, "logloss")
    assert res.cv == pytest.approx(s) and np.allclose(res.oof, oof)
    full = WeightBlender(metric="logloss").fit(X, y)
    assert np.allclose(res.test, full.predict_proba(XT))
    assert list(res.weights) == ["m0", "m1", "m2"]
    assert sum(res.weights.values()) == pytest.approx(1.0)
    assert len(res.meta["fold_weights"]) == K and len(res.meta["fold_scores"]) == K
    mean = ensemble(members, "mean", y, folds, "accuracy")
    assert mean.cv == pytest.approx(score("accuracy", y, X.mean(1)))
    assert mean.cv == mean.cv_in_sample
    hill = ensemble(members, "hill", y, folds, "accuracy", objective="logloss", n_iter=5)
    assert hill.meta["params"]["metric"] == "logloss" and hill.meta["metric"] == "accuracy"
    assert ensemble(members, "hill", y, folds, "auc", n_iter=2).meta["params"]["metric"] == "auc"
    st = ensemble(members, "stack", y, folds, "accuracy", meta="lr")
    assert st.weights is None and st.meta["meta_model"]["meta"] == "lr"


def test_ensemble_input_checks():
    y, folds, X = synth(n=100, M=2)
    from comp.blend.ensemble import Member

    members = [Member(f"m{m}", X[:, m], X[:5, m], ["a", "b", "c"], {}) for m in range(2)]
    with pytest.raises(CompError, match="labels"):
        ensemble(members, "mean", y[:50], folds, "accuracy")
    with pytest.raises(CompError, match="fewer than 2 folds"):
        ensemble(members, "mean", y, np.zeros(100, int), "accuracy")


# ---------------------------------------------------------------------------------------------
# members on disk


@pytest.fixture
def two_members(tmp_path):
    y, _, X = synth(n=60, M=2, C=2)
    a = write_member(tmp_path, "a", X[:, 0], X[:10, 0], ["neg", "pos"])
    b = write_member(tmp_path, "b", X[:, 1], X[:10, 1], ["neg", "pos"])
    return tmp_path, a, b, X


def test_load_members_reads_contract(two_members):
    _, a, b, X = two_members
    ms = load_members([a, b])
    assert [m.name for m in ms] == ["a", "b"]
    assert ms[0].oof.shape == (60, 2) and ms[1].test.shape == (10, 2)
    assert np.allclose(ms[1].oof, X[:, 1])
    assert ms[0].classes == ["neg", "pos"] and ms[0].cv["metric"] == "accuracy"


@pytest.mark.parametrize("key", ["folds_hash", "train_hash", "test_hash"])
def test_load_members_refuses_other_data(two_members, key):
    root, a, _, X = two_members
    c = write_member(root, "c", X[:, 1], X[:10, 1], ["neg", "pos"], **{key: "other"})
    with pytest.raises(CompError) as e:
        load_members([a, c])
    msg = str(e.value)
    assert "\n" not in msg and str(c) in msg and key in msg and "other" in msg


def test_load_members_refuses_other_rows_and_classes(two_members):
    root, a, _, X = two_members
    c = write_member(root, "c", X[:50, 1], X[:10, 1], ["neg", "pos"])
    with pytest.raises(CompError, match=r"c: 50 train rows but .*a has 60"):
        load_members([a, c])
    d = write_member(root, "d", X[:, 1], X[:9, 1], ["neg", "pos"])
    with pytest.raises(CompError, match="9 test rows"):
        load_members([a, d])
    e = write_member(root, "e", X[:, 1], X[:10, 1], ["pos", "neg"])
    with pytest.raises(CompError, match=r"e: classes \['pos', 'neg'\] differ"):
        load_members([a, e])


def test_read_member_refuses_broken_files(two_members):
    root, _, _, X = two_members
    f = write_member(root, "f", X[:, 1] * 3 - 1, X[:10, 1], ["neg", "pos"])
    with pytest.raises(CompError, match="oof.npy: row .* (negative|sums to)"):
        read_member(f)
    g = write_member(root, "g", X[:, 1], X[:10, 1], ["neg", "pos"], n_train=61)
    with pytest.raises(CompError, match="n_train=61"):
        read_member(g)
    (root / "a" / "test.npy").unlink()
    with pytest.raises(CompError, match="missing test.npy"):
        read_member(root / "a")
    with pytest.raises(CompError, match="already used"):
        load_members([root / "b", write_member(root / "x", "b", X[:, 1], X[:10, 1],
                                               ["neg", "pos"])])


def test_leaderboard_orders_members_and_ensembles(tmp_path):
    y, _, X = synth(n=30, M=2, C=2)
    a = write_member(tmp_path / "runs", "weak", X[:, 0], X[:5, 0], ["0", "1"], cv=0.71,
                     fold_scores=[0.7, 0.72])
    b = write_member(tmp_path / "runs", "strong", X[:, 1], X[:5, 1], ["0", "1"], cv=0.83)
    subs = tmp_path / "subs"
    write_json(subs / "hill-0.8600.json", {"name": "hill", "method": "hill",
                                           "metric": "accuracy", "cv": 0.86,
                                           "cv_in_sample": 0.88, "fold_scores": [0.85, 0.87]})
    (subs / "junk.json").write_text("[1, 2]")
    table = leaderboard([a, b], subs)
    lines = table.splitlines()
    order = [ln.split()[2] for ln in lines[2:]]
    assert order == ["hill", "strong", "weak"]
    assert "0.86000" in table and "0.88000" in table and "0.7100 ± 0.0100" in table


# ---------------------------------------------------------------------------------------------
# end to end through comp.data and comp.blend.submit


@pytest.mark.skipif(importlib.util.find_spec("comp.blend.submit") is None,
                    reason="comp.blend.submit not available")
def test_run_ensemble_end_to_end(tmp_path):
    from comp.blend.ensemble import run_ensemble
    from comp.config.schema import DataConfig
    from comp.data.competition import load_competition
    from comp.data.folds import folds_hash, load_folds

    rng = np.random.default_rng(9)
    data = tmp_path / "data"
    data.mkdir()
    n, nt = 80, 20
    labels = rng.choice(["neg", "pos"], n)
    rows = [f"t{i},文本{i}号,{labels[i]}" for i in range(n)]
    (data / "train.csv").write_text("id,text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (data / "test.csv").write_text("id,text\n" + "\n".join(f"s{i},测试{i}" for i in range(nt))
                                   + "\n", encoding="utf-8")
    (data / "sample_submission.csv").write_text(
        "id,label\n" + "\n".join(f"s{i},pos" for i in range(nt)) + "\n", encoding="utf-8")
    cfg = DataConfig(dir=str(data), folds=4)
    comp = load_competition(cfg)
    folds = load_folds(comp, cfg)
    C = len(comp.classes)
    hashes = {"folds_hash": folds_hash(comp.train_ids, folds), "train_hash": comp.train_hash,
              "test_hash": comp.test_hash}
    runs = tmp_path / "runs"
    dirs = []
    for m, s in enumerate([1.0, 2.0, 0.3]):
        oof = _softmax(s * np.eye(C)[comp.labels] + rng.normal(size=(n, C)))
        test = _softmax(rng.normal(size=(nt, C)))
        dirs.append(write_member(runs, f"m{m}", oof, test, comp.classes, **hashes))
    subs = tmp_path / "subs"
    subs.mkdir()
    csv_path = run_ensemble(dirs, "hill", cfg, "", subs, n_iter=5)
    assert csv_path.exists() and csv_path.suffix == ".csv"
    assert csv_path.parent == subs and csv_path.name.startswith("hill_cv")
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == nt + 1
    manifests = [json.loads(p.read_text(encoding="utf-8")) for p in subs.glob("*.json")]
    man = next(m for m in manifests if m.get("method") == "hill")
    assert man["metric"] == "accuracy" and set(man["weights"]) == {"m0", "m1", "m2"}
    assert man["cv_in_sample"] >= man["cv"] - 0.2 and len(man["fold_scores"]) == 4
    ens = read_member(man["run_dir"])
    assert ens.oof.shape == (n, C) and ens.cv["folds_hash"] == hashes["folds_hash"]
    assert "hill" in leaderboard(dirs, subs)
    # an output stem, and the data config read from a member's recipe.toml
    (dirs[0] / "recipe.toml").write_text(f'[data]\ndir = "{data.as_posix()}"\nfolds = 4\n',
                                         encoding="utf-8")
    blend = run_ensemble(dirs, "stack", None, "logloss", subs / "blend", proba=True)
    assert blend.name.startswith("blend_cv") and blend.parent == subs
    assert "p_neg" in blend.read_text(encoding="utf-8").splitlines()[0]
    assert read_member(subs / "blend").cv["metric"] == "logloss"
    # rerun with other members: the stem's ensemble dir exists now, the CSV still sits beside it
    again = run_ensemble(dirs[:2], "stack", None, "logloss", subs / "blend")
    assert again.parent == subs and again.name.startswith("blend_cv")
    man2 = json.loads(again.with_suffix(".json").read_text(encoding="utf-8"))
    assert man2["member_names"] == ["m0", "m1"] and man2["run_dir"] == str(subs / "blend")
    stale = write_member(tmp_path / "old", "m9", oof, test, comp.classes,
                         **{**hashes, "folds_hash": "stale"})
    with pytest.raises(CompError, match="folds_hash stale does not match"):
        run_ensemble([stale], "mean", cfg, "", subs)


# ---------------------------------------------------------------------------------------------
# unlabelled predictions


def _with_unlabelled(members, XU, hashes=None):
    from comp.blend.ensemble import Member

    return [Member(m.name, m.oof, m.test, m.classes,
                   {**m.cv, "unlabelled_hash": (hashes or {}).get(m.name, "u0")}, m.path,
                   XU[:, j] if XU is not None else None) for j, m in enumerate(members)]


def _members(X, XT):
    from comp.blend.ensemble import Member

    return [Member(f"m{j}", X[:, j], XT[:, j], ["a", "b", "c"], {}) for j in range(X.shape[1])]


@pytest.mark.parametrize("name", sorted(BLENDERS))
def test_unlabelled_rows_are_blended_exactly_like_test_rows(name):
    y, folds, X = synth(n=150, M=3, C=3)
    XT = X[:40]
    members = _with_unlabelled(_members(X, XT), XT[::-1].copy())  # the test rows, reversed
    res = ensemble(members, name, y, folds, "accuracy")
    assert res.unlabelled is not None and res.unlabelled.shape == (40, 3)
    assert np.allclose(res.unlabelled, res.test[::-1], atol=1e-9)
    assert res.meta["unlabelled"] == "blended"


def test_unlabelled_left_out_when_a_member_lacks_them_or_saw_other_texts():
    y, folds, X = synth(n=120, M=2, C=3)
    XT = X[:20]
    members = _members(X, XT)
    some = _with_unlabelled(members, XT.copy())
    some[1].unlabelled = None
    res = ensemble(some, "mean", y, folds, "accuracy")
    assert res.unlabelled is None and "m1 has no unlabelled.npy" in res.meta["unlabelled"]
    other = _with_unlabelled(members, XT.copy(), hashes={"m0": "u0", "m1": "u1"})
    res = ensemble(other, "mean", y, folds, "accuracy")
    assert res.unlabelled is None and "different unlabelled texts" in res.meta["unlabelled"]
    assert ensemble(members, "mean", y, folds, "accuracy").unlabelled is None


def _random_members_with_unlabelled(small_comp, tmp_path) -> list:
    """Two 3-fold members of random predictions that also predict three unlabelled texts."""
    from comp.data.recipes import load_recipe
    from comp.kfold.runner import run_member

    (small_comp / "more.txt").write_text("好极了\n糟透了\n还可以\n", encoding="utf-8")
    rng = np.random.default_rng(0)

    def fit(ctx):
        return (_softmax(rng.normal(size=(len(ctx.val_idx), 2))),
                _softmax(rng.normal(size=(len(ctx.predict_texts), 2))))

    dirs = []
    for name in ("a", "b"):
        r = load_recipe(None, [f"data.dir={small_comp}", "data.folds=3", f"name={name}",
                               f"runs_dir={tmp_path / 'runs'}", "data.extra=more.txt"])
        run_member(r, fit)
        dirs.append(r.run_dir)
    return dirs


def test_run_ensemble_manifest_carries_unlabelled(small_comp, tmp_path, capsys):
    from comp.blend.ensemble import run_ensemble

    dirs = _random_members_with_unlabelled(small_comp, tmp_path)
    csv_path = run_ensemble(dirs, "hill", None, "accuracy", tmp_path / "subs" / "hill",
                            n_iter=5)
    man = json.loads(csv_path.with_suffix(".json").read_text(encoding="utf-8"))
    u = np.load(man["unlabelled"])
    assert u.shape == (3, 2) and man["n_unlabelled"] == 3
    w = man["weights"]
    want = sum(w[n] * np.load(d / "unlabelled.npy") for n, d in zip(("a", "b"), dirs))
    assert np.allclose(u, want / sum(w.values()), atol=1e-5)  # the test rows' weights
    assert man["data"]["extra"] == "more.txt" and man["data"]["dir"] == str(small_comp)
    assert read_member(man["run_dir"]).unlabelled.shape == (3, 2)
    # a member without them: the blend leaves them out and says so
    (dirs[1] / "unlabelled.npy").unlink()
    capsys.readouterr()
    csv_path = run_ensemble(dirs, "hill", None, "accuracy", tmp_path / "subs" / "hill",
                            n_iter=5)
    man = json.loads(csv_path.with_suffix(".json").read_text(encoding="utf-8"))
    assert "unlabelled" not in man and not (Path(man["run_dir"]) / "unlabelled.npy").exists()
    assert "b has no unlabelled.npy" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# per-fold predictions (fold-honest pseudo-labels)


def _fold_members(X, XTK, XUK=None):
    """Members with per-fold test (K, n_test, M, C) and unlabelled predictions."""
    from comp.blend.ensemble import Member

    return [Member(f"m{j}", X[:, j], XTK[:, :, j].mean(0), ["a", "b", "c"],
                   {"unlabelled_hash": "u0"}, None,
                   XUK[:, :, j].mean(0) if XUK is not None else None, XTK[:, :, j],
                   XUK[:, :, j] if XUK is not None else None) for j in range(X.shape[1])]


@pytest.mark.parametrize("name", sorted(BLENDERS))
def test_per_fold_blends_are_the_fold_k_blender_on_fold_k_predictions(name):
    y, folds, X = synth(n=150, M=3, C=3, seed=11)
    rng = np.random.default_rng(12)
    XTK = _softmax(2 * rng.normal(size=(K, 40, 3, 3)))  # (K, n_test, M, C)
    XUK = _softmax(2 * rng.normal(size=(K, 7, 3, 3)))  # (K, n_unlabelled, M, C)
    kw = {"n_iter": 10} if name == "hill" else {}
    res = ensemble(_fold_members(X, XTK, XUK), name, y, folds, "accuracy", **kw)
    assert res.test_by_fold.shape == (K, 40, 3) and res.unlabelled_by_fold.shape == (K, 7, 3)
    assert res.meta["by_fold"] == "blended"
    params = {**kw, **({"metric": "accuracy"} if "metric" in blender_params(name) else {})}
    for k in range(K):
        # the nested CV's fold-k blender: fitted on the other folds' OOF rows only
        fold_k = create_blender(name, **params).fit(X[folds != k], y[folds != k])
        assert np.allclose(res.test_by_fold[k], fold_k.predict_proba(XTK[k]))
        assert np.allclose(res.unlabelled_by_fold[k], fold_k.predict_proba(XUK[k]))
        if name in ("weights", "hill"):
            w = np.array(list(res.meta["fold_weights"][k].values()))
            assert np.allclose(res.test_by_fold[k], np.einsum("nmc,m->nc", XTK[k], w))
        if name == "mean":
            assert np.allclose(res.test_by_fold[k], XTK[k].mean(1))
    # fold k's labels never reach fold k's rows: rewrite them, the fold-k blend stays
    for k in (0, 3):
        y2 = y.copy()
        y2[folds == k] = (y2[folds == k] + 1) % 3
        got = ensemble(_fold_members(X, XTK, XUK), name, y2, folds, "accuracy", **kw)
        assert np.allclose(got.test_by_fold[k], res.test_by_fold[k])
        assert np.allclose(got.unlabelled_by_fold[k], res.unlabelled_by_fold[k])


def test_per_fold_blends_left_out_when_a_member_lacks_them():
    y, folds, X = synth(n=100, M=2, C=3)
    XTK = _softmax(np.random.default_rng(0).normal(size=(K, 9, 2, 3)))
    members = _fold_members(X, XTK)
    res = ensemble(members, "mean", y, folds, "accuracy")
    assert res.test_by_fold.shape == (K, 9, 3) and res.unlabelled_by_fold is None
    members[1].test_by_fold = None
    res = ensemble(members, "mean", y, folds, "accuracy")
    assert res.test_by_fold is None
    assert "m1 has no per-fold test predictions" in res.meta["by_fold"]
    members = _fold_members(X, XTK)
    members[0].cv.update(extra_rows=40, extra_per_fold=False)  # global pseudo-labels
    res = ensemble(members, "mean", y, folds, "accuracy")
    assert res.test_by_fold is None and "m0 trained every fold on the same extra rows" in \
        res.meta["by_fold"]
    members[0].cv.update(extra_per_fold=True)
    assert ensemble(members, "mean", y, folds, "accuracy").test_by_fold is not None
    members = _fold_members(X, XTK[:3])
    res = ensemble(members, "mean", y, folds, "accuracy")
    assert res.test_by_fold is None and "of folds [0, 1, 2], not of [0, 1, 2, 3, 4]" in \
        res.meta["by_fold"]


def test_run_ensemble_writes_per_fold_files_members_and_ensembles_read_back(small_comp, tmp_path,
                                                                           capsys):
    from comp.blend.ensemble import run_ensemble

    dirs = _random_members_with_unlabelled(small_comp, tmp_path)
    members = load_members(dirs)
    assert members[0].test_by_fold.shape == (3, 100, 2)
    assert np.allclose(members[0].test_by_fold[1], np.load(dirs[0] / "fold1" / "test_proba.npy"))
    assert members[1].unlabelled_by_fold.shape == (3, 3, 2)
    csv_path = run_ensemble(dirs, "hill", None, "accuracy", tmp_path / "subs" / "hill",
                            n_iter=5)
    man = json.loads(csv_path.with_suffix(".json").read_text(encoding="utf-8"))
    tk, uk = np.load(man["test_by_fold"]), np.load(man["unlabelled_by_fold"])
    assert tk.shape == (3, 100, 2) and uk.shape == (3, 3, 2)
    for k, w in enumerate(man["fold_weights"]):
        want = sum(w[n] * np.load(d / f"fold{k}" / "unlabelled_proba.npy")
                   for n, d in zip(("a", "b"), dirs))
        assert np.allclose(uk[k], want, atol=1e-5)
    # the ensemble directory is a member too, per-fold files included: ensembles of it have them
    ens = read_member(man["run_dir"])
    assert np.allclose(ens.test_by_fold, tk) and np.allclose(ens.unlabelled_by_fold, uk)
    outer = run_ensemble([man["run_dir"], dirs[0]], "mean", None, "accuracy",
                         tmp_path / "subs" / "outer")
    outer_man = json.loads(outer.with_suffix(".json").read_text(encoding="utf-8"))
    assert np.allclose(np.load(outer_man["test_by_fold"]),
                       (tk + members[0].test_by_fold) / 2, atol=1e-6)
    # a member without fold files: the ensemble drops its stale per-fold files and says why
    (dirs[1] / "fold2" / "test_proba.npy").unlink()
    capsys.readouterr()
    csv_path = run_ensemble(dirs, "hill", None, "accuracy", tmp_path / "subs" / "hill",
                            n_iter=5)
    man = json.loads(csv_path.with_suffix(".json").read_text(encoding="utf-8"))
    assert "test_by_fold" not in man and "unlabelled_by_fold" not in man
    assert not (Path(man["run_dir"]) / "test_by_fold.npy").exists()
    assert read_member(man["run_dir"]).test_by_fold is None
    assert "b has no per-fold test predictions" in capsys.readouterr().err
