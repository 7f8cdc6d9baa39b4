"""comp predict / comp export / comp.load: kept models reproduce the run's submission."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

import comp
from comp.blend.ensemble import run_ensemble
from comp.cli import main
from comp.data.recipes import load_recipe
from comp.members.registry import train_recipe

K = 3


def _rows(path: Path) -> list[list[str]]:
    return list(csv.reader(open(path, encoding="utf-8")))


def _test_texts(comp_dir: Path) -> list[str]:
    return [r[1] for r in _rows(comp_dir / "test.csv")[1:]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A small competition with two TF-IDF members, a tiny vectors-only fusion member and a
    tiny student (hard labels), each over 3 folds, and hill + stack ensembles of them."""
    from conftest import make_small_competition

    from comp.config.schema import DataConfig
    from comp.data.competition import load_competition
    from comp.nn.vectors import train_vectors

    root = tmp_path_factory.mktemp("pred")
    cdir = make_small_competition(root / "c")
    models = root / "models"
    c = load_competition(DataConfig(dir=str(cdir)))
    train_vectors(c.train_texts + c.test_texts, "char", models / "w2v-char.kv", dim=16,
                  epochs=1, min_count=1)
    over = [f"data.dir={cdir}", f"data.folds={K}", f"runs_dir={root / 'runs'}"]
    tiny = ["model.vectors=['char']", f"model.vectors_dir={models}", "model.channels=16",
            "model.max_chars=48", "train.epochs_frozen=1", "train.batch_size=64"]
    recipes = [load_recipe("recipes/tfidf_char_svc.toml", over),
               load_recipe("recipes/tfidf_word_lr.toml", over),
               load_recipe("recipes/textcnn_vectors.toml", over + tiny
                           + ["model.kernel_sizes=[2,3]", "model.head='cnn'"]),
               load_recipe("recipes/student_textcnn.toml", over + tiny
                           + ["distill.alpha=1.0", "distill.use_test=false"])]
    for r in recipes:
        train_recipe(r)
    runs = [r.run_dir for r in recipes]
    subs = {m: run_ensemble(runs, m, None, "accuracy", root / "subs" / m)
            for m in ("hill", "stack")}
    return root, cdir, recipes, subs


@pytest.mark.parametrize("i", [0, 1, 2, 3])
def test_a_member_predicts_its_own_test_file_as_the_run_did(finished, i):
    root, cdir, recipes, _ = finished
    run_dir = recipes[i].run_dir
    p = comp.load(run_dir).predict_proba(_test_texts(cdir))
    np.testing.assert_allclose(p, np.load(run_dir / "test.npy"), atol=1e-5)


@pytest.mark.parametrize("method", ["hill", "stack"])
def test_comp_predict_reproduces_the_ensemble_submission(finished, method, tmp_path):
    root, cdir, _, subs = finished
    sub = subs[method]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(sub.with_suffix(".json")), "--test", str(cdir / "test.csv"),
                 "--out", str(out)]) == 0
    assert _rows(out) == _rows(sub)  # the competition's sample: same ids, order, labels
    model = comp.load(sub.with_suffix(".json"))
    ens_test = np.load(Path(str(sub).rsplit("_cv", 1)[0]) / "test.npy")
    np.testing.assert_allclose(model.predict_proba(_test_texts(cdir)), ens_test, atol=1e-5)
    assert model.predict(["质量很好，非常满意"])[0] in ("pos", "neg")


def test_a_bundle_predicts_with_runs_and_models_gone(finished, tmp_path, monkeypatch, capsys):
    root, cdir, recipes, subs = finished
    work = tmp_path / "work"
    shutil.copytree(root, work)  # the module's files stay for the other tests
    monkeypatch.chdir(work)
    manifest = subs["hill"].with_suffix(".json")
    rel = Path("subs") / manifest.name
    text = (work / rel).read_text(encoding="utf-8").replace(str(root), str(work))
    (work / rel).write_text(text, encoding="utf-8")
    for p in (work / "runs").glob("*/recipe.toml"):
        p.write_text(p.read_text(encoding="utf-8").replace(str(root), str(work)),
                     encoding="utf-8")
    assert main(["export", str(rel), "--out", "bundle"]) == 0
    sizes = capsys.readouterr().out
    assert "tfidf_char_svc:" in sizes and "MiB in all" in sizes
    shutil.rmtree(work / "runs")
    shutil.rmtree(work / "models")
    shutil.rmtree(work / "subs")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["predict", "--bundle", "bundle", "--test", str(work / "c" / "test.csv"),
                 "--out", "b.csv"]) == 0
    assert _rows(work / "b.csv") == _rows(subs["hill"])
    # a one-fold bundle is smaller and still predicts every row
    shutil.copytree(root / "runs", work / "runs")
    shutil.copytree(root / "models", work / "models")
    shutil.copytree(root / "subs", work / "subs")
    for p in (work / "runs").glob("*/recipe.toml"):
        p.write_text(p.read_text(encoding="utf-8").replace(str(root), str(work)),
                     encoding="utf-8")
    (work / rel).write_text(text, encoding="utf-8")
    assert main(["export", str(rel), "--out", "small", "--folds", "0"]) == 0
    assert not (work / "small" / "members" / "tfidf_char_svc" / "fold1").exists()
    assert main(["predict", "--bundle", "small", "--test", str(work / "c" / "test.csv"),
                 "--out", "s.csv"]) == 0
    assert len(_rows(work / "s.csv")) == len(_rows(subs["hill"]))


def test_bad_test_files_get_one_line(finished, tmp_path, capsys):
    root, cdir, recipes, _ = finished
    bad = tmp_path / "bad.csv"
    bad.write_text("id,foo\nt0,很好\n", encoding="utf-8")
    assert main(["predict", str(recipes[0].run_dir), "--test", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("comp predict: error: ") and "missing text column 'text'" in err[-1]
    extra = tmp_path / "extra.csv"
    extra.write_text("id,text,source\nt0,很好,web\nt1,太差,app\n", encoding="utf-8")
    assert main(["predict", str(recipes[0].run_dir), "--test", str(extra), "--out",
                 str(tmp_path / "o.csv")]) == 0
    err = capsys.readouterr().err
    assert "column(s) source are not text columns" in err
    assert _rows(tmp_path / "o.csv")[0] == ["id", "label"] and len(_rows(tmp_path / "o.csv")) == 3
