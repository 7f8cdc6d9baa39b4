"""Task shapes (comp.tasks.shapes): each shape's targets, outputs, decisions and fold method, and
a new shape registered in one place being accepted by data.task."""

import numpy as np
import pytest
import torch

from comp.config.schema import DataConfig
from comp.core.utils import CompError
from comp.tasks.shapes import TASKS, SingleLabel, register_task, task_names, task_of


def test_the_three_shapes_and_their_rules():
    assert task_names()[:3] == ("single", "pair", "multilabel")
    single, pair, ml = task_of("single"), task_of("pair"), task_of("multilabel")
    assert task_of(None) is single and task_of("") is single
    assert pair.pair and not single.pair and ml.multilabel and not pair.multilabel

    labels = np.array([2, 0, 1])
    assert np.array_equal(single.targets(labels, 3), np.eye(3, dtype=np.float32)[labels])
    sets = np.array([[1, 0, 1], [0, 0, 0]])
    assert ml.targets(sets, 3).dtype == np.float32 and np.array_equal(ml.targets(sets, 3), sets)

    logits = torch.tensor([[2.0, 0.0, -1.0]])
    assert torch.allclose(single.activate(logits).sum(-1), torch.ones(1))
    assert torch.allclose(ml.activate(logits), torch.sigmoid(logits))

    proba = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    assert single.decide(proba).tolist() == [1, 0]
    assert ml.decide(proba).tolist() == [[0, 1, 0], [1, 0, 0]]
    assert ml.decide(proba, np.array([0.1, 0.9, 0.3])).tolist() == [[1, 0, 1], [1, 0, 1]]

    base = "stratified-group(normalized text)"
    assert single.fold_method(base) == base
    assert pair.fold_method(base) == "stratified-group(normalized text, shared pair sentences)"
    assert ml.fold_method(base) == "iterative-" + base

    sure, unsure = np.array([[0.99, 0.01]]), np.array([[0.5, 0.5]])
    assert single.entropy(sure)[0] < single.entropy(unsure)[0] == pytest.approx(np.log(2))
    assert ml.entropy(np.array([[0.5, 0.5]]))[0] == pytest.approx(2 * np.log(2))
    assert single.default_metric == "accuracy" and ml.default_metric == "micro_f1"


def test_a_new_shape_is_one_registered_class():
    @register_task
    class Ordinal(SingleLabel):
        name = "ordinal_test"
        default_metric = "qwk"

    try:
        cfg = DataConfig(task="ordinal_test")
        assert cfg.shape.default_metric == "qwk" and not cfg.shape.multilabel
    finally:
        TASKS.pop("ordinal_test")
    with pytest.raises(CompError, match="data.task"):
        DataConfig(task="ordinal_test")
