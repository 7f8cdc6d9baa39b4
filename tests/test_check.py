"""comp check: INV perturbations, suite files, and the report on a small TF-IDF member."""

import csv
import html
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from comp.cli import main
from comp.core.utils import CompError
from comp.data import perturb as P
from comp.serving import check as C

RNG = random.Random(0)
SUITE = Path(__file__).resolve().parents[1] / "recipes" / "check" / "sentiment.toml"


# ---------------------------------------------------------------------------------------------
# INV functions


def test_every_built_in_invariance_is_registered():
    assert set(P.INVARIANCES) == {"s2t", "t2s", "fullwidth", "halfwidth", "punct_swap",
                                  "punct_remove", "whitespace", "emoji", "repeat", "case",
                                  "digits", "homophone", "synonym"}


def test_simplified_and_traditional_really_change_characters():
    s = "简体中文，这个酒店质量很好"
    t = P.to_traditional(s, RNG)
    assert t == "簡體中文，這個酒店質量很好"
    assert P.to_simplified(t, RNG) == s
    assert P.to_simplified(s, RNG) == s  # simplified text: t2s does not apply


def test_full_width_round_trip():
    s = "iPhone 12, 3.5分! (ok)?"
    f = P.to_fullwidth(s, RNG)
    assert f == "ｉＰｈｏｎｅ\u3000１２，\u3000３．５分！\u3000（ｏｋ）？"
    assert not any(ord(c) < 0x80 for c in f)
    assert P.to_halfwidth(f, RNG) == s
    assert P.to_halfwidth("质量很好！ＯＫ", RNG) == "质量很好!OK"


def test_punctuation_swap_and_removal():
    assert P.swap_punctuation("很好，推荐！真的?", RNG) == "很好,推荐!真的？"
    assert P.swap_punctuation("评分4.5,不错.", RNG) == "评分4.5，不错。"  # a decimal point stays
    assert P.remove_punctuation("很好，推荐！(真的)", RNG) == "很好推荐真的"
    assert P.remove_punctuation("。。！", RNG) == "。。！"  # nothing would be left


def test_noise_repeat_case_and_digits():
    s = "质量很好"
    w = P.add_whitespace(s, random.Random(1))
    assert w.replace(" ", "") == s and 1 <= w.count(" ") <= 2 and not w.startswith(" ")
    e = P.add_emoji(s, random.Random(1))
    assert len(e) == len(s) + 1 and any(x in e for x in P.NEUTRAL_EMOJI)
    assert P.repeat_char("好", RNG) == "好好好"
    r = P.repeat_char("不错ok", random.Random(3))
    assert r in ("不不不错ok", "不错错错ok")
    assert P.repeat_char("ok!", RNG) == "ok!"
    assert P.flip_case("iPhone很好", RNG) == "IPHONE很好"
    assert P.flip_case("USB很好", RNG) == "usb很好"
    assert P.swap_digits("买了2个，5分", RNG) == "买了两个，五分"
    assert P.swap_digits("3.5分，iPhone12，2021年", RNG) == "3.5分，iPhone12，2021年"  # not lone
    assert P.swap_digits("第一次买，住了三晚", RNG) == "第1次买，住了3晚"
    assert P.swap_digits("一般，十一个", RNG) == "一般，十一个"  # 一般 is no number


def test_homophone_keeps_pinyin_and_changes_the_character():
    from pypinyin import Style, lazy_pinyin

    texts = ["这个手机质量很好", "知道了，制作精良", "是的，事情十分顺利", "试试看"]
    table = P.homophone_table(texts)
    assert {"质", "知", "制"} <= set(table) and "质" not in table["质"]
    fn = P.make_homophone(table)
    changed = 0
    for seed in range(20):
        for t in texts:
            q = fn(t, random.Random(seed))
            diff = [(a, b) for a, b in zip(t, q) if a != b]
            assert len(q) == len(t) and len(diff) <= 1
            for a, b in diff:
                changed += 1
                assert lazy_pinyin(a, style=Style.NORMAL) == lazy_pinyin(b, style=Style.NORMAL)
                assert b in "".join(texts)  # from the tested texts' own characters
    assert changed > 40
    assert P.make_homophone({})("很好", RNG) == "很好"


def test_synonyms_both_ways_and_the_list_file(tmp_path):
    fn = P.make_synonyms([("很好", "不错"), ("满意", "满足")])
    assert fn("质量很好", RNG) == "质量不错"
    assert fn("质量不错", RNG) == "质量很好"
    assert fn("太差了", RNG) == "太差了"
    f = tmp_path / "syn.tsv"
    f.write_text("# word\tsynonyms\n很好\t不错\t挺好\n\n满意\t满足\n", encoding="utf-8")
    assert P.read_synonyms(f) == [("很好", "不错"), ("很好", "挺好"), ("满意", "满足")]
    f.write_text("很好 不错\n", encoding="utf-8")
    with pytest.raises(CompError, match=r"syn\.tsv: line 1: expected a word and a synonym"):
        P.read_synonyms(f)


@pytest.mark.parametrize("name", sorted(P.INVARIANCES))
def test_each_invariance_is_deterministic_for_a_seed(name):
    texts = ["这个手机质量很好，我非常满意！买了2个", "Good 书很好看? 第一次买",
             "酒店服务太差了。。。"]
    inv = P.INVARIANCES[name]
    fn = inv.perturb or inv.build(texts, {"synonyms": [("很好", "不错"), ("酒店", "宾馆")]})
    for t in texts:
        a = [fn(t, P.text_rng(7, name, t)) for _ in range(2)]
        assert a[0] == a[1]


def test_a_seed_changes_the_random_ones():
    t = "这个手机质量很好，我非常满意"
    outs = {P.add_whitespace(t, P.text_rng(s, "whitespace", t)) for s in range(10)}
    assert len(outs) > 3


def test_pair_sides_are_perturbed_each():
    from comp.data.competition import PAIR_SEP

    q = P.perturb_text(P.to_fullwidth, f"a b{PAIR_SEP}c", RNG, pair=True)
    assert q == f"ａ\u3000ｂ{PAIR_SEP}ｃ"


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(0, 5), (3, 10), (10, 10), (17, 230)]:
        lo, hi = C.wilson_interval(k, n)
        ref = binomtest(k, n).proportion_ci(method="wilson")
        assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# suites on stand-in predictors


class Constant:
    """Says pos with probability 0.8 whatever the text."""

    classes = ["neg", "pos"]

    def predict_proba(self, texts):
        return np.tile([0.2, 0.8], (len(texts), 1))


class Lexicon:
    """p(pos) rises with each 好 and falls with each 差: something the tests can fail."""

    classes = ["neg", "pos"]

    def predict_proba(self, texts):
        s = np.array([t.count("好") - t.count("差") for t in texts], dtype=float)
        p = 1 / (1 + np.exp(-s))
        return np.stack([1 - p, p], axis=1)


def _suite(tmp_path, text, name="s.toml"):
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    return C.load_suite(f)


TEXTS = ["质量很好，推荐！", "太差了，不推荐。", "还行吧，一般般", "Good, 第一次买2个", "很好很好",
         "好差"]


def test_an_impossible_mft_fails_at_rate_one_and_a_constant_passes_what_it_says(tmp_path):
    suite = _suite(tmp_path, """
[inv]
tests = ["punct_swap", "repeat"]
[[mft]]
name = "want_neg"
template = "{x}太差了"
fill = {x = ["手机", "酒店", "书"]}
expect = "neg"
[[mft]]
name = "want_pos"
template = ["{x}很好", "{x}一般"]
fill = {x = ["手机", "酒店", "书"]}
expect = "pos"
[[dir]]
name = "worse"
template = "{x}很好"
fill = {x = ["手机", "酒店"]}
append = "，但是太差了"
expect = "not_up:pos"
""")
    rep = {t["name"]: t for t in C.check_model(Constant(), TEXTS, suite)["tests"]}
    assert rep["want_neg"]["n"] == 3 and rep["want_neg"]["rate"] == 1.0
    assert rep["want_neg"]["ci_high"] == pytest.approx(1.0)
    assert 0.3 < rep["want_neg"]["ci_low"] < 0.5
    assert rep["want_pos"]["n"] == 6 and rep["want_pos"]["rate"] == 0.0
    assert rep["want_pos"]["mean_p_expected"] == pytest.approx(0.8)
    for name in ("punct_swap", "repeat", "worse"):  # a constant never changes its mind
        assert rep[name]["n"] > 0 and rep[name]["rate"] == 0.0
        assert rep[name]["mean_delta"] == pytest.approx(0.0)
    # the lexicon model fails what the constant passes, with the worst examples first
    lex = {t["name"]: t for t in C.check_model(Lexicon(), TEXTS, suite)["tests"]}
    assert lex["want_pos"]["rate"] == pytest.approx(0.5)  # "{x}一般" has no 好
    assert lex["worse"]["rate"] == 0.0  # 好 then 差: p(pos) falls
    # 好差 (a tie: neg) -> 好好好差 (pos) or 好差差差 (neg), as the seed says
    runs = [C.check_model(Lexicon(), TEXTS, C.Suite(inv=("repeat",)), seed=s)["tests"][0]
            for s in range(8)]
    assert all(r["n"] == len(TEXTS) for r in runs)
    assert {r["failures"] for r in runs} == {0, 1}
    ex = next(r for r in runs if r["failures"])["examples"][0]
    assert ex["text"] == "好差" and ex["perturbed"] == "好好好差"
    assert ex["failed"] and ex["perturbed"] != ex["text"]
    assert ex["delta"] == pytest.approx(ex["p_perturbed"] - ex["p"], abs=1e-5)
    flip = C.check_model(Lexicon(), TEXTS, _suite(tmp_path, """
[inv]
tests = []
[[dir]]
template = "{x}太差了"
fill = {x = ["手机", "酒店"]}
prefix = "很好很好，"
expect = "not_up:pos"
tolerance = 0.1
""", "flip.toml"))["tests"][0]
    assert flip["name"] == "dir0" and flip["rate"] == 1.0 and flip["mean_delta"] > 0.1


def test_a_test_that_changes_nothing_is_skipped_not_passed():
    rep = C.check_model(Constant(), ["质量很好", "太差"], C.Suite(inv=("t2s", "synonym", "case")))
    t2s, syn, case = rep["tests"]
    assert t2s["n"] == 0 and t2s["rate"] is None and t2s["skipped"] == "no text changed"
    assert syn["n"] == 0 and syn["skipped"].startswith("no --synonyms list")
    assert case["ci_low"] is None and case["examples"] == []
    table = C.format_table(rep)
    assert "t2s: skipped (no text changed)" in table and "n/a" in table


def test_multilabel_failure_is_a_changed_label_set():
    class Multi:
        classes = ["a", "b"]
        thresholds = np.array([0.5, 0.5])

        def predict_proba(self, texts):
            return np.array([[0.9, 0.6 if "!" in t else 0.4] for t in texts])

    rep = C.check_model(Multi(), ["好!", "好！"], C.Suite(inv=("punct_swap",)))
    t = rep["tests"][0]
    assert rep["multilabel"] and t["n"] == 2 and t["failures"] == 2
    assert {e["prediction"] for e in t["examples"]} == {"a|b", "a"}


def test_harvest_orders_by_entropy():
    rows = C.harvest_uncertain(Lexicon(), ["x", "y", "z"], ["好好好", "一般", "差"], 2)
    assert [r["id"] for r in rows] == ["y", "z"]
    assert rows[0]["entropy"] == pytest.approx(np.log(2)) and rows[0]["p_pos"] == 0.5


BAD_SUITES = [
    ("[[mft]]\ntemplate = 'x'\nfill = {}\nexpect = 'pos'\ncolour = 1\n", "mft[0].colour"),
    ("[[mft]]\ntemplate = '{item}很好'\nexpect = 'pos'\n", "mft[0].fill"),
    ("[[mft]]\ntemplate = '{item}很好'\nfill = {item = []}\nexpect = 'pos'\n",
     "mft[0].fill.item"),
    ("[[mft]]\ntemplate = '很好'\nfill = {item = ['a']}\nexpect = 'pos'\n", "mft[0].fill.item"),
    ("[[mft]]\ntemplate = '很好'\n", "mft[0].expect"),
    ("[[mft]]\nexpect = 'pos'\n", "mft[0].template"),
    ("[[mft]]\ntemplate = '{很好'\nexpect = 'pos'\n", "mft[0].template"),
    ("[[dir]]\ntemplate = '很好'\nappend = '差'\nexpect = 'up:pos'\n", "dir[0].expect"),
    ("[[dir]]\ntemplate = '很好'\nexpect = 'not_up:pos'\n", "dir[0].append"),
    ("[[dir]]\ntemplate = '很好'\nappend = 'x'\nexpect = 'not_up:pos'\ntolerance = 2\n",
     "dir[0].tolerance"),
    ("[[mft]]\nname = 'a'\ntemplate = 'x'\nexpect = 'pos'\n"
     "[[dir]]\nname = 'a'\nappend = 'y'\nexpect = 'not_up:pos'\n", "dir[0].name"),
    ("[inv]\ntests = ['s2t', 'leet']\n", "inv.tests"),
    ("[inv]\nsynonym = 'x.tsv'\n", "inv.synonym"),
    ("[mft]\ntemplate = 'x'\n", "mft"),
    ("checks = 1\n", "checks"),
]


@pytest.mark.parametrize("text,key", BAD_SUITES)
def test_bad_suite_files_name_the_file_and_key(tmp_path, text, key):
    f = tmp_path / "bad.toml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(CompError) as e:
        C.load_suite(f)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{f}: key '{key}'"), msg


def test_an_unknown_class_and_bad_toml_are_one_line(tmp_path):
    suite = _suite(tmp_path, "[[mft]]\ntemplate = 'x'\nexpect = 'positive'\n")
    with pytest.raises(CompError, match=r"s\.toml: key 'mft\[0\]\.expect': class 'positive' "
                                        r"is not one of the model's classes \(neg, pos\)"):
        C.check_model(Constant(), TEXTS, suite)
    f = tmp_path / "broken.toml"
    f.write_text("[[mft]\n", encoding="utf-8")
    with pytest.raises(CompError, match=r"broken\.toml: invalid TOML"):
        C.load_suite(f)


def test_the_shipped_sentiment_suite_loads():
    suite = C.load_suite(SUITE)
    kinds = [t.kind for t in suite.templates]
    assert kinds.count("MFT") >= 2 and kinds.count("DIR") >= 2
    assert all(t.expect in ("pos", "neg") for t in suite.templates)
    assert set(suite.inv) == set(P.INVARIANCES)


# ---------------------------------------------------------------------------------------------
# end to end: a TF-IDF member on a small sentiment competition


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    from conftest import make_small_competition

    from comp.data.recipes import load_recipe
    from comp.members.registry import train_recipe

    root = tmp_path_factory.mktemp("check")
    cdir = make_small_competition(root / "c", n_train=300, n_test=100)
    recipe = load_recipe("recipes/tfidf_char_lr.toml",
                         [f"data.dir={cdir}", "data.folds=3", f"runs_dir={root / 'runs'}"])
    train_recipe(recipe)
    return root, cdir, recipe.run_dir


def _test_texts(cdir):
    return [r["text"] for r in csv.DictReader(open(cdir / "test.csv", encoding="utf-8"))]


def test_end_to_end_on_a_tfidf_member(member, tmp_path, capsys):
    root, cdir, run_dir = member
    texts = _test_texts(cdir)
    # a few traditional, full-width and Latin/digit texts so every INV test applies
    extra = [P.to_traditional(t, RNG) for t in texts[:10]] + [
        "ＯＫ，质量很好！", "买了2个iPhone，第一次用，很满意", "USB接口不好用，差评"]
    tfile = tmp_path / "texts.txt"
    tfile.write_text("\n".join(texts + extra) + "\n", encoding="utf-8")
    syn = tmp_path / "syn.tsv"
    syn.write_text("很好\t不错\n满意\t满足\n喜欢\t喜爱\n书\t图书\n酒店\t宾馆\n质量\t品质\n",
                   encoding="utf-8")
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.read_text(encoding="utf-8") + """
[[mft]]
name = "same_as_plain_positive_but_neg"   # the same texts expecting the other label
template = ["{item}质量很好", "{item}非常满意，推荐购买", "这{unit}{item}很不错"]
fill = { item = ["手机", "酒店", "书", "电脑", "键盘", "衣服"], unit = ["个", "本", "件"] }
expect = "neg"
""", encoding="utf-8")
    out = tmp_path / "out"
    args = ["check", str(run_dir), "--texts", str(tfile), "--suite", str(suite), "--synonyms",
            str(syn), "--out", str(out), "--harvest", "5", "--seed", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + printed)
    rep = json.loads((out / "check.json").read_text(encoding="utf-8"))
    assert rep["n_texts"] == len(texts) + len(extra) and rep["classes"] == ["neg", "pos"]
    names = [t["name"] for t in rep["tests"]]
    assert set(P.INVARIANCES) <= set(names) and "but_unhappy" in names
    for t in rep["tests"]:
        assert t["n"] > 0, t["name"]
        assert 0.0 <= t["ci_low"] <= t["rate"] <= t["ci_high"] <= 1.0, t["name"]
        assert t["failures"] == round(t["rate"] * t["n"])
        assert t["name"] in printed
        assert 0 < len(t["examples"]) <= 5
        if t["kind"] != "MFT":
            e = t["examples"][0]
            assert e["perturbed"] != e["text"]
            assert {"prediction", "perturbed_prediction", "delta"} <= set(e)
    by = {t["name"]: t for t in rep["tests"]}
    same = by["same_as_plain_positive_but_neg"]
    assert by["plain_positive"]["failures"] + same["failures"] == same["n"]
    assert by["tested_texts_disappointed"]["n"] == len(set(texts + extra))
    # the CSV and markdown tables, and the uncertain texts by entropy
    rows = list(csv.DictReader(open(out / "check.csv", encoding="utf-8")))
    assert [r["name"] for r in rows] == names
    assert "| s2t | INV |" in (out / "check.md").read_text(encoding="utf-8")
    unc = list(csv.DictReader(open(out / "uncertain.csv", encoding="utf-8")))
    assert len(unc) == 5 and list(unc[0])[:4] == ["id", "text", "entropy", "prediction"]
    ent = [float(r["entropy"]) for r in unc]
    assert ent == sorted(ent, reverse=True) and all(r["text"] in texts + extra for r in unc)
    # the same seed gives the same report; another seed other perturbations
    first = (out / "check.json").read_text(encoding="utf-8")
    assert main(args) == 0
    assert (out / "check.json").read_text(encoding="utf-8") == first
    assert main(args[:-1] + ["4"]) == 0
    assert (out / "check.json").read_text(encoding="utf-8") != first
    # --fail-above: exit 1 naming the tests above the rate, 0 when none is
    worst = max(rep["tests"], key=lambda t: t["rate"])
    capsys.readouterr()
    assert main(args + ["--fail-above", str(worst["rate"])]) == 0
    assert main(args + ["--fail-above", str(worst["rate"] - 1e-3)]) == 1
    assert f"{worst['name']} {worst['rate']:.3f}" in capsys.readouterr().err
    # the HTML report beside reports/check/ shows a Behaviour section: every test, the worst
    from comp.report import build_report

    reports = tmp_path / "reports"
    shutil.copytree(out, reports / "check")
    page = build_report([run_dir], tmp_path / "subs", reports / "index.html").read_text(
        encoding="utf-8")
    section = page[page.index("Behaviour (comp check)</h2>"):]
    assert "<img" in section and all(f">{n}<" in section for n in names)
    failed = next(t for t in rep["tests"] if t["failures"])
    shown = next(e for e in failed["examples"] if e["failed"])
    assert html.escape(shown["text"][:60]) in section
    assert "Behaviour" not in build_report([run_dir], tmp_path / "subs",
                                           tmp_path / "index.html").read_text(encoding="utf-8")


def test_default_texts_are_the_competition_test_file(member, tmp_path, capsys):
    from comp.nn.vectors import train_vectors

    root, cdir, run_dir = member
    kv = train_vectors(_test_texts(cdir), "word", tmp_path / "w2v-word.kv", dim=16, epochs=1,
                       min_count=1)
    out = tmp_path / "out"
    assert main(["check", str(run_dir), "--out", str(out), "--synonyms", str(kv),
                 "--synonym-cut", "0.0", "--max-texts", "40"]) == 0
    rep = json.loads((out / "check.json").read_text(encoding="utf-8"))
    assert rep["n_texts"] == 40 and rep["texts"].endswith("test.csv")
    assert rep["suite"] == "default" and all(t["kind"] == "INV" for t in rep["tests"])
    by = {t["name"]: t for t in rep["tests"]}
    for t in rep["tests"]:
        assert (t["n"] == 0) == (t["rate"] is None) == bool(t.get("skipped")), t["name"]
    pairs = (out / "synonyms_from_vectors.tsv").read_text(encoding="utf-8").splitlines()
    assert pairs and all(len(p.split("\t")) == 2 for p in pairs)
    assert by["synonym"]["n"] > 0
    # a check.toml beside the competition is the default suite
    (cdir / "check.toml").write_text("[inv]\ntests = ['s2t']\n[[mft]]\nname = 'm'\n"
                                     "template = '很好'\nexpect = 'pos'\n", encoding="utf-8")
    try:
        assert main(["check", str(run_dir), "--out", str(out)]) == 0
    finally:
        (cdir / "check.toml").unlink()
    rep = json.loads((out / "check.json").read_text(encoding="utf-8"))
    assert [t["name"] for t in rep["tests"]] == ["s2t", "m"]


def test_bad_input_gets_one_line(member, tmp_path, capsys):
    root, cdir, run_dir = member
    bad = tmp_path / "bad.toml"
    bad.write_text("[[dir]]\ntemplate = 'x'\nappend = 'y'\nexpect = 'not_up:good'\n",
                   encoding="utf-8")
    assert main(["check", str(run_dir), "--suite", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"comp check: error: {bad}: key 'dir[0].expect': class 'good' is not "
                       "one of the model's classes (neg, pos)")
    assert main(["check", str(run_dir), "--suite", str(tmp_path / "none.toml")]) == 2
    assert capsys.readouterr().err.strip().endswith("none.toml: suite file not found")


def test_a_bundle_is_checked_on_given_texts(member, tmp_path, capsys):
    root, cdir, run_dir = member
    bundle = tmp_path / "bundle"
    assert main(["export", str(run_dir), "--out", str(bundle)]) == 0
    tfile = tmp_path / "t.csv"
    tfile.write_text("id,text\na,质量很好，推荐！\nb,太差了\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["check", "--bundle", str(bundle), "--texts", str(tfile), "--out", str(out),
                 "--harvest", "1"]) == 0
    rep = json.loads((out / "check.json").read_text(encoding="utf-8"))
    assert rep["n_texts"] == 2 and rep["source"] == str(bundle)
    unc = list(csv.DictReader(open(out / "uncertain.csv", encoding="utf-8")))
    assert len(unc) == 1 and unc[0]["id"] in ("a", "b")
