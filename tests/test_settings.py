"""competition.toml beside train/test, and the layouts inferred without one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from comp.core.utils import CompError
from comp.data.competition import load_competition
from comp.data.folds import load_folds
from comp.data.recipes import load_recipe
from comp.data.settings import folder_data_config

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def _folder(root: Path, n: int = 40) -> Path:
    """A single-text folder whose columns no default names: qid, content, user, tag."""
    root.mkdir(parents=True, exist_ok=True)
    words = ["好", "差", "很好", "太差", "不错", "糟糕"]
    _csv(root / "train.csv", "qid,content,user,tag",
         [f"q{i},{words[i % 6]}{i},u{i // 4},{'pos' if i % 2 == 0 else 'neg'}"
          for i in range(n)])
    _csv(root / "test.csv", "qid,content", [f"t{i},{words[i % 6]}" for i in range(6)])
    return root


def _settings(root: Path, text: str) -> Path:
    (root / "competition.toml").write_text(text, encoding="utf-8")
    return root


GOOD = ('text_cols = "content"\nlabel_col = "tag"\nid_col = "qid"\nmetric = "macro_f1"\n'
        'folds = 3\ngroup_col = "user"\n')


def test_a_settings_file_names_columns_metric_folds_and_set_still_wins(tmp_path, capsys):
    d = _settings(_folder(tmp_path / "c"), GOOD)
    recipe = load_recipe(RECIPES / "tfidf_char_lr.toml", [f"data.dir={d}"])
    assert (recipe.data.text_cols, recipe.data.label_col, recipe.data.id_col) == (
        ("content",), "tag", "qid")
    assert (recipe.metric, recipe.data.folds, recipe.data.group_col) == ("macro_f1", 3, "user")
    assert "c: competition.toml: task=single, text content, label tag, id qid" in (
        capsys.readouterr().err)
    over = load_recipe(RECIPES / "tfidf_char_lr.toml",
                       [f"data.dir={d}", "data.folds=4", "metric=accuracy"])
    assert (over.data.folds, over.metric) == (4, "accuracy")
    assert folder_data_config(d) == recipe.data
    comp = load_competition(recipe.data)
    assert comp.train_ids[0] == "q0" and comp.classes == ["neg", "pos"]


def test_group_col_keeps_each_users_rows_in_one_fold(tmp_path):
    d = _settings(_folder(tmp_path / "c", n=60), GOOD)
    cfg = folder_data_config(d)
    comp = load_competition(cfg)
    folds = load_folds(comp, cfg)
    users = np.array(comp.train_groups)
    assert all(len(set(folds[users == u].tolist())) == 1 for u in set(comp.train_groups))
    assert len(set(folds.tolist())) == 3
    assert "column 'user'" in json.loads((d / "folds.json").read_text())["method"]


@pytest.mark.parametrize("text, key, words", [
    ('colour = "red"\n', "colour", "unknown"),
    ('task = "multilabel"\ntext_cols = "content"\nlabel_cols = ["tag", "spam"]\n', "label_cols",
     "column 'spam' is not in"),
    ('task = "multilabel"\ntext_cols = "content"\nid_col = "qid"\ngroup_col = "user"\n', "task",
     "multilabel needs label_cols"),
    ('label_cols = ["tag"]\ntext_cols = "content"\ntask = "single"\n', "label_cols",
     "only a multilabel task"),
    ('task = "pairs"\n', "task", "not single, pair or multilabel"),
    ('task = "pair"\ntext_cols = ["content", "user", "qid"]\n', "text_cols", "exactly two"),
    ('task = "pair"\n', "task", "needs text_cols"),
    ('text_cols = "content"\nlabel_col = "content"\n', "label_col", "also a text column"),
    ('text_cols = "content"\nid_col = "content"\n', "id_col", "also the label"),
    ('label_sep = "|"\ntext_cols = "content"\n', "label_sep", "only a multilabel task"),
    ('folds = 1\n', "folds", "integer >= 2"),
    ('metric = "bleu"\n', "metric", "not one of"),
    ('text_cols = ["body"]\n', "text_cols", "column 'body' is not in"),
    ('text_cols = "content"\nlabel_col = "tag"\ngroup_col = "team"\n', "group_col",
     "column 'team' is not in"),
    ("text_cols = 3\n", "text_cols", "expected a column name"),
])
def test_a_contradictory_or_bad_settings_file_is_one_line_naming_the_key(tmp_path, text, key,
                                                                         words):
    d = _settings(_folder(tmp_path / "c"), text)
    with pytest.raises(CompError) as e:
        load_recipe(RECIPES / "tfidf_char_lr.toml", [f"data.dir={d}"])
    msg = str(e.value)
    assert "\n" not in msg and "competition.toml" in msg and f"key '{key}'" in msg
    assert words in msg, msg


def test_an_unreadable_settings_file_is_one_line(tmp_path):
    d = _settings(_folder(tmp_path / "c"), 'text_cols = ["content"\n')
    with pytest.raises(CompError, match=r"competition.toml: unreadable TOML") as e:
        folder_data_config(d)
    assert "\n" not in str(e.value)


def test_folds_in_the_settings_file_must_match_the_users_own_folds_csv(tmp_path):
    d = _settings(_folder(tmp_path / "c"), GOOD)
    _csv(d / "folds.csv", "id,fold", [f"q{i},{i % 4}" for i in range(40)])
    with pytest.raises(CompError, match=r"key 'folds': 3, but .*folds.csv has 4 folds"):
        folder_data_config(d)


def test_without_a_settings_file_common_layouts_are_inferred_a_pair_in_one_line(tmp_path,
                                                                             capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    _csv(plain / "train.csv", "id,text,label", ["a,好,1", "b,差,0"])
    _csv(plain / "test.csv", "id,text", ["c,好"])
    cfg = folder_data_config(plain)
    assert (cfg.task, cfg.text_cols) == ("single", ("text",))
    assert capsys.readouterr().err == ""  # today's layout: nothing to announce

    clue = tmp_path / "afqmc"  # CLUE's pair json: one record per line
    clue.mkdir()
    recs = [{"sentence1": "花呗怎么还款", "sentence2": "花呗如何还钱", "label": "1"},
            {"sentence1": "借呗能提额吗", "sentence2": "花呗怎么关闭", "label": "0"}]
    (clue / "train.json").write_text("\n".join(json.dumps(r, ensure_ascii=False)
                                               for r in recs) + "\n", encoding="utf-8")
    (clue / "test.json").write_text(json.dumps({"id": 0, "sentence1": "花呗", "sentence2": "借呗"},
                                               ensure_ascii=False) + "\n", encoding="utf-8")
    cfg = folder_data_config(clue)
    assert (cfg.task, cfg.text_cols) == ("pair", ("sentence1", "sentence2"))
    assert "inferred CLUE pair json layout" in capsys.readouterr().err
    comp = load_competition(cfg)
    assert comp.train_pairs[0] == ("花呗怎么还款", "花呗如何还钱")
    assert comp.test_pairs == [("花呗", "借呗")]

    # a folder with a text column and sentence1/sentence2 stays a single-text task
    both = tmp_path / "both"
    both.mkdir()
    _csv(both / "train.csv", "id,text,sentence1,sentence2,label", ["a,好,x,y,1", "b,差,x,y,0"])
    _csv(both / "test.csv", "id,text", ["c,好"])
    assert folder_data_config(both).task == "single"


def test_the_settings_are_read_anew_when_the_file_changes(tmp_path):
    d = _settings(_folder(tmp_path / "c"), GOOD)
    assert folder_data_config(d).folds == 3
    import os
    import time

    _settings(d, GOOD.replace("folds = 3", "folds = 2"))
    later = time.time() + 5  # a coarse file clock must still see a newer file
    os.utime(d / "competition.toml", (later, later))
    assert folder_data_config(d).folds == 2


def test_a_train_file_named_by_the_recipe_is_the_one_whose_layout_is_inferred(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    _csv(d / "round2_train.csv", "id,sentence1,sentence2,label", ["a,好,好的,1", "b,差,好,0"])
    _csv(d / "test.csv", "id,sentence1,sentence2", ["c,好,好"])
    recipe = load_recipe(RECIPES / "tfidf_char_lr.toml",
                         [f"data.dir={d}", "data.train=round2_train.csv"])
    assert (recipe.data.task, recipe.data.text_cols) == ("pair", ("sentence1", "sentence2"))
    assert load_competition(recipe.data).train_pairs == [("好", "好的"), ("差", "好")]
