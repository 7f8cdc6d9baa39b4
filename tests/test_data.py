import csv
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comp.config import DataConfig
from comp.data import (
    load_competition,
    load_folds,
    make_folds,
    normalize_text,
    read_table,
)
from comp.utils import CompError


def _write(path, header, rows, encoding="utf-8", delimiter=","):
    with open(path, "w", encoding=encoding, newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)


def _comp(tmp_path, train_rows, test_rows, header=("id", "text", "label"), **kw):
    _write(tmp_path / "train.csv", header, train_rows, **kw)
    _write(tmp_path / "test.csv", ("id", "text"), test_rows, **kw)
    return DataConfig(dir=str(tmp_path))


texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"),
                min_size=1, max_size=40).filter(lambda s: s.strip() == s and s.strip())


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(texts, min_size=1, max_size=8), st.sampled_from([",", "\t"]))
def test_reader_round_trips_arbitrary_unicode(tmp_path_factory, values, delimiter):
    d = tmp_path_factory.mktemp("rt")
    ext = ".csv" if delimiter == "," else ".tsv"
    p = d / f"t{ext}"
    _write(p, ["id", "text"], [(str(i), v) for i, v in enumerate(values)], delimiter=delimiter)
    t = read_table(p)
    assert t.column("text") == values


def test_reader_keeps_emoji_fullwidth_and_quoted_newlines(tmp_path):
    vals = ["好评😀\n第二行", "ＡＢＣ，全角", 'say "hi", ok']
    _write(tmp_path / "a.csv", ["id", "text"], [(i, v) for i, v in enumerate(vals)])
    assert read_table(tmp_path / "a.csv").column("text") == vals


def test_gbk_and_bom_files_are_detected(tmp_path):
    cfg = _comp(tmp_path, [("a", "这本书很好", "pos"), ("b", "太差了", "neg")],
                [("x", "一般般")], encoding="gbk")
    comp = load_competition(cfg)
    assert comp.train_texts == ["这本书很好", "太差了"]
    (tmp_path / "test.csv").write_bytes(b"\xef\xbb\xbf" + "id,text\nx,一般般\n".encode())
    assert load_competition(cfg).test_texts == ["一般般"]
    assert read_table(tmp_path / "test.csv").encoding == "utf-8-sig"


def test_missing_label_column_is_one_line_naming_file_and_column(tmp_path):
    cfg = _comp(tmp_path, [("a", "x")], [("b", "y")], header=("id", "text"))
    with pytest.raises(CompError) as e:
        load_competition(cfg)
    msg = str(e.value)
    assert "train.csv" in msg and "'label'" in msg and "\n" not in msg


def test_nan_label_names_row(tmp_path):
    cfg = _comp(tmp_path, [("a", "x", "pos"), ("b", "y", "NaN")], [("c", "z")])
    with pytest.raises(CompError, match=r"row 3: column 'label'"):
        load_competition(cfg)


def test_duplicate_ids_name_row(tmp_path):
    cfg = _comp(tmp_path, [("a", "x", "pos"), ("a", "y", "neg")], [("c", "z")])
    with pytest.raises(CompError, match=r"row 3: column 'id': duplicate id 'a'"):
        load_competition(cfg)


def test_test_ids_must_match_sample(tmp_path):
    cfg = _comp(tmp_path, [("a", "x", "pos"), ("b", "y", "neg")], [("c", "z")])
    _write(tmp_path / "sample_submission.csv", ["id", "label"], [("c", "pos"), ("d", "pos")])
    with pytest.raises(CompError, match="sample_submission.csv.*'d'"):
        load_competition(cfg)


def test_empty_texts_are_counted_not_dropped(tmp_path):
    cfg = _comp(tmp_path, [("a", "", "pos"), ("b", "y", "neg"), ("c", "nan", "neg")],
                [("d", "z")])
    comp = load_competition(cfg)
    assert len(comp.train_texts) == 3
    assert any("2 empty" in w for w in comp.warnings)


def test_clue_json_lines_and_joined_columns(tmp_path):
    rows = [{"id": 1, "sentence": "股市大涨", "label": "102", "label_desc": "news_finance",
             "keywords": ["股市"]},
            {"id": 2, "sentence": "球队夺冠", "label": "103", "label_desc": "news_sports"}]
    (tmp_path / "train.json").write_text("\n".join(json.dumps(r, ensure_ascii=False)
                                                   for r in rows))
    (tmp_path / "test.json").write_text(json.dumps({"id": 9, "sentence": "降息"},
                                                   ensure_ascii=False))
    comp = load_competition(DataConfig(dir=str(tmp_path), format="clue"))
    assert comp.train_texts == ["股市大涨", "球队夺冠"] and comp.classes == ["102", "103"]
    comp = load_competition(DataConfig(dir=str(tmp_path), text_cols=("sentence", "keywords"),
                                       text_sep="|"))
    assert comp.train_texts[0] == "股市大涨|股市"


def test_numeric_classes_sort_as_numbers(tmp_path):
    cfg = _comp(tmp_path, [(str(i), f"t{i}", str(lab)) for i, lab in enumerate([10, 2, 1])],
                [("x", "y")])
    assert load_competition(cfg).classes == ["1", "2", "10"]


def test_folds_group_identical_normalized_texts():
    rng = np.random.default_rng(0)
    base = [f"文本{i}" for i in range(60)]
    texts = base + [b.replace("文", "文 ") for b in base[:30]] + ["ＡＢＣ", "abc", "Abc "]
    labels = rng.integers(0, 2, len(texts))
    folds = make_folds(labels, texts, 5, 0)
    seen = {}
    for t, f in zip(texts, folds):
        assert seen.setdefault(normalize_text(t), f) == f


def test_sentiment_folds_never_split_a_text(small_comp):
    cfg = DataConfig(dir=str(small_comp), folds=4)
    comp = load_competition(cfg)
    folds = load_folds(comp, cfg)
    assert set(folds.tolist()) == {0, 1, 2, 3}
    by_key = {}
    for t, f in zip(comp.train_texts, folds):
        assert by_key.setdefault(normalize_text(t), f) == f
    # stratified: each fold's positive share is close to the overall share
    share = comp.labels.mean()
    for f in range(4):
        assert abs(comp.labels[folds == f].mean() - share) < 0.08


def test_fold_table_is_reused_and_never_silently_replaced(small_comp):
    cfg = DataConfig(dir=str(small_comp), folds=4)
    comp = load_competition(cfg)
    a = load_folds(comp, cfg)
    b = load_folds(comp, cfg)
    assert (a == b).all()
    with pytest.raises(CompError, match="other settings"):
        load_folds(comp, DataConfig(dir=str(small_comp), folds=3))
