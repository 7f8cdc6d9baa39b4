"""Schedules that fit small and large data (`train.min_steps`) and the planner's costs scaled to
the task's own texts."""

from dataclasses import replace

import numpy as np
import pytest

from comp.config.schema import Recipe, TrainConfig
from comp.core.utils import CompError
from comp.data.recipes import load_recipe
from comp.nn.trainer import phase_epochs
from comp.workflows import plan
from comp.workflows.plan import Shape, estimate, shape_of


def test_min_steps_raises_each_phase_with_epochs_and_leaves_large_data_alone():
    cfg = TrainConfig(epochs_frozen=2, epochs_unfrozen=2, min_steps=200, batch_size=32)
    assert phase_epochs(cfg, 15) == (14, 14)  # 480 rows: 15 steps an epoch
    assert phase_epochs(cfg, 347) == (2, 2)  # 11,112 rows: already 347 steps an epoch
    assert phase_epochs(replace(cfg, epochs_unfrozen=0), 15) == (14, 0)  # no phase 2 stays off
    assert phase_epochs(replace(cfg, accum=3), 15) == (40, 40)  # 5 optimizer steps an epoch
    assert phase_epochs(replace(cfg, min_steps=0), 15) == (2, 2)
    with pytest.raises(CompError, match="train.min_steps"):
        load_recipe(None, ["train.min_steps=-1"])


def test_a_short_text_task_prices_a_network_by_the_characters_it_reads():
    """The priors were measured on reviews averaging ~60 characters at a 128 cut: a task of
    5-character texts costs far less per row, its setup scales with the texts it caches, and
    TF-IDF members keep their priors."""
    ref = Shape(chars=59.8, max_chars=128, n_texts=plan.REF_TEXTS)
    short = Shape(chars=5.0, max_chars=128, n_texts=plan.REF_TEXTS)
    s_ref, f_ref = estimate("fusion_e5_fast", 13890, 5, {}, ref)
    s_short, f_short = estimate("fusion_e5_fast", 13890, 5, {}, short)
    assert (s_ref, f_ref) == pytest.approx(estimate("fusion_e5_fast", 13890, 5, {}))
    assert f_short < 0.3 * f_ref and s_short < 0.4 * s_ref
    many = replace(short, n_texts=4 * plan.REF_TEXTS)
    assert estimate("fusion_e5_fast", 13890, 5, {}, many)[0] > s_short
    assert estimate("tfidf_char_svc", 13890, 5, {}, None) == estimate("tfidf_char_svc", 13890,
                                                                       5, {})
    # measured here beats the prior, whatever the shape
    speeds = {"fusion_e5_fast": {"per_fold_per_1k": 10.0, "setup": 0.0}}
    assert estimate("fusion_e5_fast", 5000, 5, speeds, short) == (0.0, 40.0)


def test_min_steps_makes_a_small_task_dearer_per_row_in_the_plan():
    recipe = load_recipe(None, ["kind='fusion'", "train.epochs_frozen=2",
                                "train.epochs_unfrozen=2", "train.min_steps=200"])
    lengths = [20] * 600
    shape = shape_of(recipe, lengths)
    assert shape.n_texts == 600 and shape.chars == 20.0 and shape.max_chars == 256
    with_min = estimate("fusion_e5_fast", 600, 5, {}, shape)[1]
    without = estimate("fusion_e5_fast", 600, 5, {}, replace(shape, min_steps=0))[1]
    assert with_min == pytest.approx(without * 7)  # 480 rows: 15 steps, 2 + 2 -> 14 + 14 epochs
    assert shape_of(Recipe(kind="linear"), lengths) is None


def test_a_timed_pace_prices_a_vectors_network_from_its_schedule_and_the_tasks_rows():
    """With a pace timed on the task's texts the prior is not used: each epoch trains the
    fold's fitting rows (both orders of a pair with pair_swap) and predicts its selection and
    validation rows; the fold then predicts validation and test rows once more."""
    pace = {"train_row": 0.001, "eval_row": 0.0005, "setup_text": 0.002}
    shape = Shape(chars=30.0, max_chars=160, n_texts=1500, epochs=(3, 0), batch_size=50,
                  inner_val=0.1, pace=pace)
    setup, per_fold = estimate("textcnn_vectors", 1000, 5, {}, shape)
    # 800 training rows: 720 fit, 80 choose; 200 validation rows; 500 test rows
    epoch = 720 * 0.001 + (80 + 200) * 0.0005
    assert setup == pytest.approx(plan.PACE_SETUP + 1500 * 0.002)
    assert per_fold == pytest.approx(3 * epoch + (200 + 500) * 0.0005)
    swapped = estimate("textcnn_vectors", 1000, 5, {}, replace(shape, swap=True))[1]
    assert swapped == pytest.approx(per_fold + 3 * 720 * 0.001)
    # min_steps: 720 rows are 15 steps an epoch, so 200 steps take 14 epochs
    longer = estimate("textcnn_vectors", 1000, 5, {}, replace(shape, min_steps=200))[1]
    assert longer == pytest.approx(14 * epoch + (200 + 500) * 0.0005)
    # a pace twice as slow costs twice as much; what finished here still beats it
    slow = {k: 2 * v for k, v in pace.items()}
    assert estimate("textcnn_vectors", 1000, 5, {}, replace(shape, pace=slow))[1] == \
        pytest.approx(2 * per_fold)
    speeds = {"textcnn_vectors": {"per_fold_per_1k": 10.0, "setup": 0.0}}
    assert estimate("textcnn_vectors", 1000, 5, speeds, shape) == (0.0, 8.0)


def test_a_vectors_networks_pace_is_timed_on_the_tasks_texts(tmp_path, monkeypatch):
    """A short timed run of the member's own model (word2vec on a sample, training steps,
    predictions) on the task's texts, pairs included; nothing is left behind."""
    from comp.data.competition import PAIR_SEP
    from comp.nn.pace import network_pace

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    alphabet = [chr(0x4e00 + i) for i in range(300)]

    def text(n_chars: int) -> str:
        return "".join(rng.choice(alphabet, n_chars))

    single = load_recipe(None, ["kind='fusion'", "model.vectors=['char', 'bigram']",
                                "model.head='cnn'", "train.batch_size=32"])
    pair = load_recipe(None, ["kind='fusion'", "data.task='pair'", "data.text_cols=['a', 'b']",
                              "model.vectors=['char']", "model.head='cnn'",
                              "model.pair='siamese'", "train.pair_swap=true"])
    for recipe, texts in ((single, [text(20) for _ in range(300)]),
                          (pair, [text(10) + PAIR_SEP + text(12) for _ in range(300)])):
        pace = network_pace(recipe, texts, 3)
        assert set(pace) == {"train_row", "eval_row", "setup_text"}
        assert all(0 < v < 1 for v in pace.values()), pace
    assert list(tmp_path.iterdir()) == []
