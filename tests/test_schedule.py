"""Schedules that fit small and large data (`train.min_steps`) and the planner's costs scaled to
the task's own texts."""

from dataclasses import replace

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
