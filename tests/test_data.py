import csv
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comp.config.schema import DataConfig
from comp.core.utils import CompError
from comp.data.competition import load_competition
from comp.data.folds import _merge_groups, load_folds, make_folds, normalize_text
from comp.data.readers import read_answers, read_table


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


def test_required_columns_name_the_file_and_the_first_missing_one(tmp_path):
    _write(tmp_path / "answers.csv", ["id", "text"], [("a", "x")])
    t = read_table(tmp_path / "answers.csv")
    t.require(["text", "id"])
    with pytest.raises(CompError, match=r"answers\.csv: missing column 'label' \(why\)$"):
        t.require(["id", "label", "other"], " (why)")
    with pytest.raises(CompError, match=r"answers\.csv: missing column 'label'$"):
        read_answers(tmp_path / "answers.csv")
    _write(tmp_path / "answers.csv", ["id", "label"], [("a", "pos")])
    assert read_answers(tmp_path / "answers.csv") == {"a": "pos"}


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
    # the shared fixture is de-duplicated: add copies (exact, spaced, full-width, upper-case) of
    # 60 of its texts, 2-4 copies each, so there is something to keep together
    rows = list(csv.reader(open(small_comp / "train.csv", encoding="utf-8")))
    header, body = rows[0], rows[1:]
    variants = [lambda t: t, lambda t: " ".join(t), lambda t: t.upper() + " ",
                lambda t: t.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789"})]
    copies = [(f"dup{i}_{j}", variants[j % 4](t), y)
              for i, (_, t, y) in enumerate(body[:60]) for j in range(1 + i % 3 + 1)]
    _write(small_comp / "train.csv", header, body + copies)
    cfg = DataConfig(dir=str(small_comp), folds=4)
    comp = load_competition(cfg)
    keys = [normalize_text(t) for t in comp.train_texts]
    assert len(set(keys)) == len(body) < len(keys)  # the copies are duplicates of real rows
    folds = load_folds(comp, cfg)
    assert set(folds.tolist()) == {0, 1, 2, 3}
    by_key = {}
    for key, f in zip(keys, folds):
        assert by_key.setdefault(key, f) == f
    # stratified: each fold's positive share is close to the overall share
    share = comp.labels.mean()
    for f in range(4):
        assert abs(comp.labels[folds == f].mean() - share) < 0.08


def test_rare_classes_go_to_distinct_folds_and_are_named_once(capsys):
    rng = np.random.default_rng(0)
    labels = np.array([0] * 40 + [1] * 40 + [2] + [3] * 2 + [4] * 3 + [5] * 4)
    rng.shuffle(labels)
    texts = [f"文本{i}" for i in range(len(labels))]
    classes = ["a", "b", "one", "two", "three", "four"]
    folds = make_folds(labels, texts, 5, 0, classes)
    err = capsys.readouterr().err
    assert err.count("fewer rows than the 5 folds") == 1
    assert "'one' (1), 'two' (2), 'three' (3), 'four' (4)" in err and "'a'" not in err
    for c in range(6):
        rows = np.flatnonzero(labels == c)
        assert len(set(folds[rows].tolist())) == min(len(rows), 5), classes[c]
    # a rare class with 2+ rows is in every fold's training part
    for c in (3, 4, 5):
        for f in range(5):
            assert (labels[folds != f] == c).any()


def test_group_column_merges_text_groups_under_their_smallest_id():
    # texts 0 and 2 share user u; 1 and 4 share v; 5 joins 1 through its text and x; 3, 6 alone
    groups = _merge_groups(np.array([0, 1, 2, 3, 4, 1, 5, 6]),
                           ["u", "v", "u", "w", "v", "x", "x", "y"])
    assert groups.tolist() == [0, 1, 0, 3, 1, 1, 1, 6]


def test_folds_with_a_group_column_are_pinned():
    # the splitter's shuffle follows the group ids: another numbering of the same groups gives
    # another table, and folds.csv must not change under existing competitions
    users = [18, 12, 13, 17, 11, 15, 16, 4, 1, 6, 5, 17, 18, 0, 9, 16, 2, 15, 2, 9, 16, 6, 6, 5,
             14, 5, 19, 8, 9, 10]
    folds = make_folds(np.arange(30) % 3, [f"文本{i % 18}" for i in range(30)], 3, 7,
                       row_groups=[f"user{u}" for u in users])
    assert folds.tolist() == [1, 0, 2, 1, 1, 0, 2, 0, 2, 1, 0, 1, 1, 2, 0, 2, 1, 0, 1, 0, 2, 1,
                              1, 0, 2, 0, 2, 1, 0, 1]


def test_too_few_texts_for_the_folds_is_one_line():
    with pytest.raises(CompError, match="only 3 distinct train text"):
        make_folds(np.array([0, 1, 0, 1]), ["a", "b", "c", "c"], 4, 0)


def test_sample_with_one_column_per_class(tmp_path):
    cfg = _comp(tmp_path, [("a", "好", "pos"), ("b", "坏", "neg")], [("c", "一般"), ("d", "行")])
    _write(tmp_path / "sample_submission.csv", ("id", "pos", "neg"), [("d", 0.5, 0.5),
                                                                      ("c", 0.5, 0.5)])
    assert load_competition(cfg).layout.proba_cols == ["pos", "neg"]
    _write(tmp_path / "sample_submission.csv", ("id", "label"), [("d", "pos"), ("c", "pos")])
    assert load_competition(cfg).layout.proba_cols == []


def test_fold_table_is_reused_and_never_silently_replaced(small_comp):
    cfg = DataConfig(dir=str(small_comp), folds=4)
    comp = load_competition(cfg)
    a = load_folds(comp, cfg)
    b = load_folds(comp, cfg)
    assert (a == b).all()
    with pytest.raises(CompError, match="other settings"):
        load_folds(comp, DataConfig(dir=str(small_comp), folds=3))


# ---------------------------------------------------------------------------------------------
# unlabelled texts (data.extra)


def _unl_comp(tmp_path):
    return _comp(tmp_path, [("a", "好", "pos"), ("b", "坏", "neg")], [("c", "一般")])


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "txt"])
def test_unlabelled_file_in_every_format(tmp_path, fmt):
    import dataclasses

    cfg = _unl_comp(tmp_path)
    texts = ["还行吧", "", "非常满意", "nan", "  差评  "]
    name = f"more.{fmt}"
    if fmt in ("csv", "tsv"):
        _write(tmp_path / name, ["id", "text"], [(f"u{i}", t) for i, t in enumerate(texts)],
               delimiter="\t" if fmt == "tsv" else ",")
    elif fmt == "jsonl":
        (tmp_path / name).write_text("\n".join(json.dumps({"id": f"u{i}", "text": t},
                                                          ensure_ascii=False)
                                               for i, t in enumerate(texts)), encoding="utf-8")
    else:
        (tmp_path / name).write_text("\n".join(texts), encoding="gb18030")
    comp = load_competition(dataclasses.replace(cfg, extra=name))
    assert comp.unlabelled_texts == ["还行吧", "非常满意", "差评"]
    if fmt != "txt":
        assert comp.unlabelled_ids == ["u0", "u2", "u4"]
    assert len(set(comp.unlabelled_ids)) == 3
    assert comp.predict_texts == ["一般", "还行吧", "非常满意", "差评"]
    assert comp.unlabelled_path == tmp_path / name and comp.unlabelled_hash
    assert any("2 empty or NaN text(s) skipped" in w for w in comp.warnings)
    assert comp.test_texts == ["一般"] and len(comp.train_texts) == 2


def test_unlabelled_file_uses_the_test_text_columns(tmp_path):
    import dataclasses

    _write(tmp_path / "train.csv", ["title", "body", "label"], [("a", "b", "x"), ("c", "d", "y")])
    _write(tmp_path / "test.csv", ["id", "title", "body"], [("t", "e", "f")])
    _write(tmp_path / "u.csv", ["title", "body"], [("标题", "正文"), ("", "只有正文")])
    cfg = DataConfig(dir=str(tmp_path), text_cols=("title", "body"), text_sep="|", extra="u.csv")
    comp = load_competition(cfg)
    assert comp.unlabelled_texts == ["标题|正文", "只有正文"]
    assert comp.unlabelled_ids == ["unlabelled-0", "unlabelled-1"]
    assert load_competition(dataclasses.replace(cfg, extra="")).unlabelled_texts == []


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"nope\.csv: unlabelled file not found \(recipe key 'data\.extra'\)"),
    ("column", r"u\.csv: missing text column 'text' \(columns: id, body\)"),
    ("dup_id", r"u\.csv: row 3: column 'id': duplicate id 'k' \(first at row 2\)"),
    ("json", r"u\.jsonl: line 2: invalid JSON"),
    ("cells", r"u\.csv: row 3: 3 cells for 2 columns"),
    ("empty", r"u\.csv: every text is empty"),
    ("header_only", r"u\.csv: no data rows"),
])
def test_bad_unlabelled_file_is_one_line_naming_file_row_column(tmp_path, case, pattern):
    import dataclasses

    cfg = _unl_comp(tmp_path)
    name = "u.csv"
    if case == "missing":
        name = "nope.csv"
    elif case == "column":
        _write(tmp_path / name, ["id", "body"], [("k", "文本")])
    elif case == "dup_id":
        _write(tmp_path / name, ["id", "text"], [("k", "一"), ("k", "二")])
    elif case == "json":
        name = "u.jsonl"
        (tmp_path / name).write_text('{"text": "好"}\n{"text": 坏}\n', encoding="utf-8")
    elif case == "cells":
        (tmp_path / name).write_text("id,text\na,好\nb,坏,多\n", encoding="utf-8")
    elif case == "empty":
        _write(tmp_path / name, ["id", "text"], [("a", ""), ("b", "NaN")])
    else:
        (tmp_path / name).write_text("id,text\n", encoding="utf-8")
    with pytest.raises(CompError, match=pattern) as e:
        load_competition(dataclasses.replace(cfg, extra=name))
    assert "\n" not in str(e.value)


def test_unset_unlabelled_changes_neither_folds_nor_fingerprints(small_comp):
    """A recipe without data.extra fingerprints exactly as before the option existed, and
    setting it moves neither the fold table nor the recipe fingerprint."""
    from comp.core.utils import sha1_of
    from comp.data.recipes import load_recipe
    from comp.kfold.runner import recipe_fingerprint

    _write(small_comp / "unlabelled.csv", ["id", "text"], [("u0", "好评如潮"), ("u1", "太差了")])
    base = [f"data.dir={small_comp}", "data.folds=3", "name=m"]
    plain = load_recipe(None, base)
    d = plain.to_dict()
    d.pop("tune")
    d.pop("runs_dir")
    d.pop("resources")  # where a fold runs, not what it is
    d["train"].pop("predict_train")  # newer than the runs this fingerprint must keep matching
    d["data"].pop("dir")  # the data are fingerprinted by content, not by where they live
    d["data"].pop("use_folds")  # which folds ran is each fold marker's business
    d["data"]["extra"] = ""
    # newer keys that name no run at their defaults (or ever: a time slice)
    d["train"].pop("time_limit")
    for key in ("suspects", "suspect_frac", "normalize"):
        d["data"].pop(key)
    for key in ("augment", "augment_rate"):
        d["train"].pop(key)
    for key in ("encoder", "encoder_len"):
        d["linear"].pop(key)
    canonical = json.dumps(d, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert recipe_fingerprint(plain) == sha1_of([canonical])
    with_unl = load_recipe(None, base + ["data.extra=unlabelled.csv"])
    assert recipe_fingerprint(with_unl) == recipe_fingerprint(plain)
    asked = load_recipe(None, base + ["train.predict_train=true"])
    assert recipe_fingerprint(asked) == recipe_fingerprint(plain)
    a, b = load_competition(plain.data), load_competition(with_unl.data)
    assert (a.train_hash, a.test_hash) == (b.train_hash, b.test_hash)
    assert b.unlabelled_texts == ["好评如潮", "太差了"] and not a.unlabelled_texts
    folds = load_folds(a, plain.data)
    assert np.array_equal(load_folds(b, with_unl.data), folds)
    assert json.loads((small_comp / "folds.json").read_text())["train_hash"] == a.train_hash


def test_spread_rare_moves_a_second_group_out_of_a_shared_fold():
    from comp.data.folds import _spread_rare

    labels = np.array([0, 0, 0, 0, 1, 1, 0, 0])
    groups = np.arange(8)
    folds = np.array([0, 1, 2, 3, 0, 0, 1, 2])  # both rows of class 1 in fold 0
    _spread_rare(folds, labels, groups, [1], 4, seed=0)
    assert len(set(folds[labels == 1].tolist())) == 2
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3]
