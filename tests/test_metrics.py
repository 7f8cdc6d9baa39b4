"""The metric registry: values against scikit-learn, directions, rare and absent classes."""

import numpy as np
import pytest
from sklearn import metrics as skm

from comp.blend.submit import label_scores
from comp.core.metrics import (
    METRICS,
    get_metric,
    greater_is_better,
    is_better,
    label_metric,
    metric_names,
    score,
)
from comp.core.utils import CompError


def _data(n=300, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[y]
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_registry_names_and_directions():
    assert set(metric_names()) >= {"accuracy", "macro_f1", "logloss", "auc", "weighted_f1",
                                   "micro_f1", "mcc", "qwk"}
    assert not greater_is_better("logloss")
    assert all(greater_is_better(m) for m in metric_names() if m != "logloss")
    assert is_better("logloss", 0.2, 0.3) and not is_better("accuracy", 0.2, 0.3)
    nan = float("nan")
    assert not is_better("accuracy", nan, 0.1) and is_better("logloss", 9.0, nan)
    with pytest.raises(CompError, match="unknown metric 'f2'.*accuracy"):
        get_metric("f2")


@pytest.mark.parametrize("name, ref", [
    ("accuracy", lambda y, p: skm.accuracy_score(y, p.argmax(1))),
    ("macro_f1", lambda y, p: skm.f1_score(y, p.argmax(1), average="macro")),
    ("weighted_f1", lambda y, p: skm.f1_score(y, p.argmax(1), average="weighted")),
    ("micro_f1", lambda y, p: skm.f1_score(y, p.argmax(1), average="micro")),
    ("mcc", lambda y, p: skm.matthews_corrcoef(y, p.argmax(1))),
    ("qwk", lambda y, p: skm.cohen_kappa_score(y, p.argmax(1), weights="quadratic")),
    ("logloss", lambda y, p: skm.log_loss(y, p)),
    ("auc", lambda y, p: skm.roc_auc_score(y, p, multi_class="ovr")),
])
def test_values_match_scikit_learn_when_every_class_is_present(name, ref):
    y, p = _data()
    assert score(name, y, p) == pytest.approx(ref(y, p), abs=1e-9)


def test_binary_auc_scores_the_positive_column():
    y, p = _data(c=2)
    assert score("auc", y, p) == pytest.approx(skm.roc_auc_score(y, p[:, 1]))


def test_macro_f1_averages_over_classes_present_in_the_truth():
    # regression: classes absent from the truth counted as F1=0, so perfect predictions of a
    # 2-class fold of a 3-class task scored 0.667
    y = np.array([0, 0, 1, 1])
    p = np.eye(3)[y]
    assert score("macro_f1", y, p) == 1.0
    assert score("weighted_f1", y, p) == 1.0


def test_cv_and_hidden_scores_agree_on_the_same_predictions():
    y, p = _data(n=200, c=5, seed=3)
    y[y == 4] = 3  # class 4 never true, but it may be predicted
    classes = ["a", "b", "c", "d", "e"]
    hidden = label_scores([classes[i] for i in y], [classes[i] for i in p.argmax(1)])
    for name, spec in METRICS.items():
        if spec.on_labels:
            assert hidden[name] == pytest.approx(score(name, y, p)), name


def test_label_metric_refuses_probability_metrics():
    with pytest.raises(CompError, match="needs probabilities"):
        label_metric("auc", ["a"], ["a"])


def test_auc_on_a_fold_with_one_class_is_nan_not_a_traceback():
    y = np.zeros(5, dtype=int)
    p = np.full((5, 2), 0.5)
    assert np.isnan(score("auc", y, p))  # documented fallback; no sklearn ValueError


def test_auc_on_a_fold_holding_two_of_three_classes():
    # regression: sklearn read the 2-class truth as binary and refused a (n, 2) score matrix
    y = np.array([0, 2, 0, 2, 2])
    p = np.array([[.8, .1, .1], [.1, .1, .8], [.6, .3, .1], [.3, .2, .5], [.2, .1, .7]])
    assert score("auc", y, p) == 1.0
    p[0] = [0.0, 1.0, 0.0]  # no mass on the present classes: no ranking information
    assert 0.0 <= score("auc", y, p) <= 1.0


def test_logloss_with_a_class_absent_from_a_fold():
    y = np.array([0, 1, 1])
    p = np.array([[.7, .2, .1], [.1, .8, .1], [.2, .6, .2]])
    assert score("logloss", y, p) == pytest.approx(skm.log_loss(y, p, labels=[0, 1, 2]))


def test_logloss_clips_at_1e15_and_renormalises():
    # a zero on the true class costs -log(1e-15) (sklearn alone would clip at 2.2e-16); rows
    # that do not sum to 1, or stray outside [0, 1], are clipped then renormalised
    y = np.array([0, 1, 2])
    p = np.array([[0.0, 0.5, 0.5], [0.2, 0.6, 0.2], [-0.1, 0.3, 1.2]])
    q = np.clip(p, 1e-15, 1.0)
    q /= q.sum(1, keepdims=True)
    assert score("logloss", y, p) == pytest.approx(-np.log(q[[0, 1, 2], y]).mean(), abs=1e-9)
    assert score("logloss", y[:1], p[:1]) == pytest.approx(-np.log(1e-15 / 1.000000000000001),
                                                             abs=1e-9)
    assert np.isnan(score("logloss", y, np.where(p < 0, np.nan, p)))


def test_multilabel_logloss_is_the_mean_binary_loss_of_every_cell():
    y = np.array([[1, 0, 1], [0, 0, 1]])
    p = np.array([[0.9, 0.0, 1.0], [0.2, 0.4, 0.7]])
    c = np.clip(p, 1e-15, 1 - 1e-15)
    want = -np.mean(y * np.log(c) + (1 - y) * np.log(1 - c))
    assert score("logloss", y, p) == pytest.approx(want, abs=1e-9)
    assert np.isnan(score("logloss", y, np.where(p == 0.0, np.nan, p)))


def test_qwk_on_one_class_is_agreement():
    assert label_metric("qwk", ["1", "1"], ["1", "1"]) == 1.0
    assert label_metric("qwk", ["1", "1"], ["1", "2"], order=["1", "2"]) < 1.0


def test_qwk_reads_numeric_labels_in_number_order():
    # ordinal positions: 1 < 2 < 10 (as strings "10" would sit between "1" and "2")
    truth, pred = ["1", "2", "10", "10", "2"], ["10", "2", "10", "1", "2"]
    as_numbers = skm.cohen_kappa_score([0, 1, 2, 2, 1], [2, 1, 2, 0, 1], weights="quadratic")
    as_strings = skm.cohen_kappa_score([0, 2, 1, 1, 2], [1, 2, 1, 0, 2], weights="quadratic")
    assert as_numbers != pytest.approx(as_strings)
    assert label_scores(truth, pred)["qwk"] == pytest.approx(as_numbers)


def test_bad_shapes_are_comp_errors():
    with pytest.raises(CompError, match="shape"):
        score("accuracy", np.zeros(3, int), np.zeros((2, 2)))
    with pytest.raises(CompError, match="no rows"):
        score("logloss", np.zeros(0, int), np.zeros((0, 2)))
