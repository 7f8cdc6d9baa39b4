"""data.normalize and train.augment: the text transforms of comp.data.perturb applied to what a
member reads. Normalizers are idempotent and pair-aware; a training row that normalizes to a
validation text leaves the fold's training part; augmented copies come from a fold's training
rows only and never read as one of its validation texts, so on random labels CV stays at chance
even for a model that memorises what it trained on."""

import numpy as np
import pytest
from conftest import make_small_competition, near_memoriser, noise_competition, write_train_test

from comp.core.utils import CompError
from comp.data import perturb as P
from comp.data.competition import PAIR_SEP, load_competition
from comp.data.folds import normalize_text
from comp.data.recipes import load_recipe
from comp.kfold.rundir import recipe_fingerprint
from comp.kfold.runner import run_member
from comp.members.registry import train_recipe

N = 100
TOL = 2 * 0.5 / np.sqrt(N)  # two standard deviations of N coin flips


def _recipe(data, runs, *over):
    return load_recipe(None, [f"data.dir={data}", f"runs_dir={runs}", *over])


def test_normalizers_on_fixed_examples():
    f = P.normalizer("nfkc,t2s,punct,space,lower,repeat")
    assert P.normalizer("t2s")("質量很好") == "质量很好"
    assert P.normalizer("nfkc")("ＡＢ１２，") == "AB12,"
    assert P.normalizer("punct")("好！！！真的。") == "好!真的."
    assert P.normalizer("space")("很 好  ok  go ") == "很好ok go"
    assert P.normalizer("repeat")("好好好好的") == "好好的"
    for t in ["質量 很好！！ＯＫ", "  哈哈哈哈 Good。", "一般般吧"]:
        assert f(f(t)) == f(t)  # idempotent: normalizing twice changes nothing
    assert f(f"質量{PAIR_SEP}好！！") == f"质量{PAIR_SEP}好!"
    assert P.normalizer("") is None


def test_an_unknown_normalizer_or_perturbation_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(CompError, match=r"data\.normalize: unknown normalizer 'nfc'"):
        P.normalizer("nfkc,nfc")
    with pytest.raises(CompError, match=r"train\.augment: unknown perturbation 'typo'"):
        P.augmenter("s2t,typo", ["好"])


def test_normalize_applies_to_train_test_and_predicted_texts(tmp_path):
    d = write_train_test(tmp_path / "c", ["質量很好！", "太差了。。", "還不錯", "不喜歡"],
                         ["pos", "neg", "pos", "neg"], ["質量一般！！"])
    plain = _recipe(d, tmp_path / "runs", "data.folds=2")
    norm = _recipe(d, tmp_path / "runs", "data.folds=2", "data.normalize=t2s,punct")
    comp = load_competition(norm.data)
    assert comp.train_texts == ["质量很好!", "太差了.", "还不错", "不喜欢"]
    assert comp.test_texts == ["质量一般!"]
    assert load_competition(plain.data).train_texts[0] == "質量很好！"
    assert recipe_fingerprint(norm) != recipe_fingerprint(plain)  # a normalized run is new
    d2 = plain.to_dict()
    d2["data"].pop("normalize")  # the default names the same run as a recipe without the key
    assert recipe_fingerprint(plain) == recipe_fingerprint(load_recipe(None, [
        f"data.dir={d}", f"runs_dir={tmp_path / 'runs'}", "data.folds=2"]))


def test_augment_is_seeded_and_copies_differ_from_their_originals():
    texts = ["质量很好，值得购买", "太差了，不会再来", "物流很快2天就到", "一般般吧"]
    a = P.augment(texts, "all", 2.0, seed=3)
    assert a == P.augment(texts, "all", 2.0, seed=3)
    src, copies = a
    assert len(copies) > len(texts)  # two copies a row, fewer where a test changed nothing
    assert all(c != texts[i] for i, c in zip(src, copies))
    assert P.augment(texts, "s2t", 0.0, seed=3) == ([], [])


def test_augmented_copies_come_from_the_folds_training_rows(tmp_path):
    d = make_small_competition(tmp_path / "c", n_train=120, n_test=10)
    recipe = _recipe(d, tmp_path / "runs", "data.folds=3", "train.augment=all",
                     "train.augment_rate=1.0", "name=spy")
    seen = []

    def spy(ctx):
        seen.append(ctx)
        return near_memoriser(ctx)

    run_member(recipe, spy)
    assert len(seen) == 3
    for ctx in seen:
        assert len(ctx.extra) > 0.5 * len(ctx.train_idx)
        assert (ctx.extra.folds == ctx.fold).all()
        val = {normalize_text(t) for t in ctx.val_texts}
        assert not any(normalize_text(t) in val for t in ctx.extra.texts)
        # each copy carries a training row's label: one-hot targets of the original's class
        train_labels = {ctx.comp.labels[i] for i in ctx.train_idx}
        assert set(ctx.extra.targets.argmax(1)) <= train_labels


@pytest.mark.parametrize("member", ["memoriser", "tfidf"])
def test_noise_labels_stay_at_chance_with_augmentation(tmp_path, member):
    data = noise_competition(tmp_path / "noise", n=N)
    over = ["train.augment=all", "train.augment_rate=2.0"]
    if member == "tfidf":
        cv = train_recipe(load_recipe("recipes/tfidf_char_lr.toml", [
            f"data.dir={data}", f"runs_dir={tmp_path / 'runs'}", "linear.min_df=1", *over]))
    else:
        cv = run_member(_recipe(data, tmp_path / "runs", "name=memo", *over), near_memoriser)
    assert abs(cv["cv"] - 0.5) <= TOL, cv["cv"]


# simplified characters whose traditional forms differ (OpenCC s2t)
_SIMPLE = "们这说时国会过对发现学经开动问题还没见样长关点机车马鸟龙门东书"


def test_a_training_row_that_normalizes_to_a_validation_text_leaves_training(tmp_path):
    """Each text is in train twice, simplified and traditional, with one random label; the
    fold table keeps raw texts apart, data.normalize=t2s makes them equal. A memoriser would
    read the validation copy's label off its training twin."""
    rng = np.random.default_rng(0)
    base = {"".join(rng.choice(list(_SIMPLE), 7)) for _ in range(N // 2)}
    base = sorted(base)
    texts, labels = [], []
    for t, y in zip(base, rng.permutation(["neg", "pos"] * len(base))[:len(base)]):
        texts += [t, P.to_traditional(t, None)]
        labels += [y, y]
    assert all(P.to_traditional(t, None) != t for t in base)
    d = write_train_test(tmp_path / "c", texts, labels, ["们这说"])
    raw = run_member(_recipe(d, tmp_path / "runs", "name=raw"), near_memoriser)
    norm = run_member(_recipe(d, tmp_path / "runs", "name=norm", "data.normalize=t2s"),
                      near_memoriser)
    assert abs(norm["cv"] - 0.5) <= 2 * 0.5 / np.sqrt(len(texts)), norm["cv"]
    assert raw["cv"] <= norm["cv"] + 0.15  # raw copies differ: nothing read off either way
