"""Per-class biases for label metrics (comp.blend.bias): better macro-F1 on imbalanced classes, an
honest nested CV (a noise-label check), and a blender that predicts after a round trip."""

from __future__ import annotations

import joblib
import numpy as np
import pytest

from comp.blend.bias import ClassBias, bias_applies, biased, fit_bias
from comp.blend.blenders import create_blender
from comp.blend.ensemble import ensemble
from comp.core.metrics import score
from comp.kfold.rundir import Member

K = 5


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def imbalanced(n: int = 2000, C: int = 3, seed: int = 0, strength: float = 1.2):
    """y with class shares 80/15/5 %, two members whose probabilities carry the class prior
    (so their argmax rarely names the rare classes), and a fold table."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.80, 0.15, 0.05])[:C]
    y = rng.choice(C, n, p=prior / prior.sum())
    folds = rng.permutation(np.arange(n) % K)
    logits = [np.log(prior) + strength * np.eye(C)[y] + rng.normal(size=(n, C))
              for _ in range(2)]
    return y, folds, [_softmax(z) for z in logits]


def members_of(probas: list[np.ndarray], n_test: int = 7) -> list[Member]:
    C = probas[0].shape[1]
    return [Member(name=f"m{i}", oof=p, test=np.full((n_test, C), 1.0 / C),
                   classes=[str(c) for c in range(C)], cv={}) for i, p in enumerate(probas)]


def test_fit_bias_raises_macro_f1_of_imbalanced_argmax_and_never_lowers_it():
    y, _, (p, _) = imbalanced()
    plain = score("macro_f1", y, p)
    b = fit_bias(p, y, "macro_f1")
    assert b.shape == (3,) and abs(b.mean()) < 1e-9
    tuned = score("macro_f1", y, biased(p, b))
    assert tuned > plain + 0.03, (plain, tuned)
    assert b[2] > b[0]  # the rare class is pushed up
    # balanced, confident probabilities: nothing to gain, the zero start is kept or improved
    yb = np.arange(300) % 3
    pb = _softmax(3.0 * np.eye(3)[yb])
    assert score("macro_f1", yb, biased(pb, fit_bias(pb, yb, "macro_f1"))) >= \
        score("macro_f1", yb, pb)


def test_biased_hill_blend_beats_plain_blend_in_nested_cv():
    y, folds, probas = imbalanced(seed=1)
    plain = ensemble(members_of(probas), "hill", y, folds, "macro_f1")
    tuned = ensemble(members_of(probas), "hill", y, folds, "macro_f1", class_bias=True)
    assert tuned.cv > plain.cv + 0.02, (plain.cv, tuned.cv)
    assert len(tuned.meta["class_bias"]) == 3 and tuned.meta["params"]["class_bias"] is True
    assert tuned.weights is not None  # the hill weights are reachable through the wrapper
    # stacking takes biases too
    stack = ensemble(members_of(probas), "stack", y, folds, "macro_f1", class_bias=True)
    assert stack.meta["meta_model"]["meta"] and np.isfinite(stack.cv)


def test_noise_labels_keep_the_biased_nested_cv_at_chance():
    """Random labels over 30 classes: biases fitted on the scored rows would find a macro-F1
    well above chance (the in-sample score shows how much); fitted without the scored fold,
    the reported CV stays at chance."""
    rng = np.random.default_rng(3)
    n, C = 900, 30
    y = rng.integers(0, C, n)
    folds = rng.permutation(np.arange(n) % K)
    probas = [_softmax(rng.normal(size=(n, C))) for _ in range(2)]
    res = ensemble(members_of(probas), "mean", y, folds, "macro_f1", class_bias=True)
    chance = 1.0 / C
    assert res.cv < chance + 0.025, res.cv
    assert res.cv_in_sample > res.cv + 0.02, (res.cv_in_sample, res.cv)


def test_class_bias_round_trips_through_joblib(tmp_path):
    y, _, probas = imbalanced(n=600, seed=2)
    X = np.stack(probas, axis=1)
    est = ClassBias(create_blender("hill", metric="macro_f1"), "macro_f1").fit(X, y)
    joblib.dump(est, tmp_path / "b.joblib")
    back = joblib.load(tmp_path / "b.joblib")
    np.testing.assert_allclose(back.predict_proba(X), est.predict_proba(X))
    assert np.allclose(back.predict_proba(X).sum(1), 1.0)
    assert back.weights_ is not None


@pytest.mark.parametrize("metric", ["macro_f1", "weighted_f1"])
def test_the_count_based_f1_of_the_search_is_the_registrys(metric):
    """The bias search scores one-hot rows with comp.core.metrics.ml_f1: the single-label
    registry's value, classes absent from the truth left out."""
    from comp.core.metrics import ml_f1

    rng = np.random.default_rng(4)
    y = rng.choice(6, 500, p=[0.5, 0.2, 0.1, 0.1, 0.1, 0.0])  # class 5 absent from the truth
    for _ in range(5):
        pred = rng.integers(0, 6, 500)
        onehot = np.eye(6)[pred]
        counted = ml_f1(np.eye(6)[y], onehot, metric.split("_")[0])
        assert counted == pytest.approx(score(metric, y, onehot))


def test_bias_applies_to_label_metrics_other_than_accuracy():
    assert bias_applies("macro_f1") and bias_applies("weighted_f1") and bias_applies("mcc")
    assert not bias_applies("accuracy") and not bias_applies("micro_f1")
    assert not bias_applies("logloss") and not bias_applies("auc")


def test_macro_f1_run_biases_its_blend_and_predict_reproduces_the_submission(tmp_path,
                                                                               monkeypatch):
    """`comp run --metric macro_f1` on a 4+-class task: the hill blend carries per-class
    biases (named by class in its manifest), and `comp predict` with the manifest gives the
    submission's labels again, so the biases reach new test files too."""
    import csv

    from test_pipeline import _many_class_competition

    from comp.core.utils import read_json
    from comp.serving.predictor import predict_file
    from comp.workflows.pipeline import run_pipeline

    root, _ = _many_class_competition(tmp_path / "tags")
    monkeypatch.chdir(tmp_path)
    best = run_pipeline(str(root), quick=True, metric="macro_f1")
    man = read_json(best.with_suffix(".json"))
    assert man["metric"] == "macro_f1" and set(man["class_bias"]) == set(man["classes"])
    assert man["params"]["class_bias"] is True
    out = predict_file(best.with_suffix(".json"), root / "test.tsv", out=tmp_path / "p.csv")
    assert list(csv.reader(open(out, encoding="utf-8"))) == \
        list(csv.reader(open(best, encoding="utf-8")))
