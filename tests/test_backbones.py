"""Backbone registry: save/load round trips, offsets, CLS pooling, layer groups, load errors."""

import copy
import json
import pickle

import pytest
import torch
from conftest import clean_piece, fold

from comp.config.schema import PretrainConfig
from comp.core.utils import CompError
from comp.nn.backbones import (
    Backbone,
    align_tokens,
    backbone_kinds,
    backbone_spec,
    load_backbone,
    vocab_coverage,
)
from comp.nn.backbones.build import build_model, train_tokenizer

CORPUS = [
    "今天天气非常好，我们去公园散步。",
    "这本书写得很不错，推荐大家购买！",
    "Apple发布了新款iPhone 15，价格是5999元。",
    "ＡＢＣ全角字母和１２３全角数字，还有全角标点：（好）",
    "我爱北京天安门 😀 hello world",
    "服务态度很差，再也不来了。",
    "质量不错，物流很快，五星好评 👍",
    "房间干净，价格实惠，下次还会入住。",
    "电脑运行速度快，屏幕清晰，电池续航一般。",
    "客服回复太慢了，等了3天才发货。",
    "Hello World, this is a test of Latin words and numbers 2024.",
    "酒店位置很好，离地铁站只有500米。",
] * 3
PROBES = [
    "我爱北京天安门 😀 hello world",
    "ＡＢＣ全角１２３",
    "Apple发布了新款iPhone 15，价格5999元。",
    "  服务 很差  ",
    "好",
]
TINY = PretrainConfig(hidden=32, layers=2, heads=2, intermediate=64, vocab_size=400,
                      max_positions=128)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """kind -> (in-memory Backbone, saved dir), one tiny model per registered kind."""
    out = {}
    torch.manual_seed(0)
    for kind in backbone_kinds():
        tok = train_tokenizer(kind, CORPUS, TINY.vocab_size)
        lm = build_model(kind, tok, TINY)
        mem = Backbone(backbone_spec(kind), tok, lm.base_model).eval()
        d = tmp_path_factory.mktemp(kind)
        mem.save_pretrained(d)
        out[kind] = (mem, d)
    return out


@pytest.mark.parametrize("kind", backbone_kinds())
def test_save_load_round_trip_gives_identical_outputs(built, kind):
    mem, d = built[kind]
    loaded = load_backbone(kind, str(d))
    assert loaded.kind == kind and loaded.hidden_size == 32
    assert loaded.tokenizer.is_fast
    a, b = mem.encode(PROBES, 64), loaded.encode(PROBES, 64)
    for k in a["inputs"]:
        assert torch.equal(a["inputs"][k], b["inputs"][k]), k
    assert torch.equal(a["offsets"], b["offsets"])
    with torch.no_grad():
        sa, ca = mem(a["inputs"])
        sb, cb = loaded(b["inputs"])
    assert sa.shape == (len(PROBES), a["inputs"]["input_ids"].shape[1], 32)
    assert ca.shape == (len(PROBES), 32)
    assert torch.allclose(sa, sb, atol=1e-6) and torch.allclose(ca, cb, atol=1e-6)


@pytest.mark.parametrize("kind", backbone_kinds())
def test_offsets_map_back_to_the_right_characters(built, kind):
    bb, _ = built[kind]
    enc = bb.encode(PROBES, 64)
    ids, off = enc["inputs"]["input_ids"], enc["offsets"]
    assert off.shape == (*ids.shape, 2) and off.dtype == torch.long
    for b, text in enumerate(PROBES):
        toks = bb.tokenizer.convert_ids_to_tokens(ids[b].tolist())
        covered = set()
        last_end = 0
        for tok, (s, e) in zip(toks, off[b].tolist()):
            if s < 0:
                assert e < 0
                continue
            assert 0 <= s < e <= len(text) and s >= last_end, (tok, s, e)
            assert not text[s].isspace() and not text[e - 1].isspace()
            if tok != bb.tokenizer.unk_token:
                assert fold(text[s:e]) == fold(clean_piece(tok)), (tok, text[s:e])
            covered.update(range(s, e))
            last_end = e
        # every visible character is carried by some token
        assert covered == {i for i, c in enumerate(text) if not c.isspace()}, text
        mask = enc["inputs"]["attention_mask"][b].bool()
        special = set(bb.tokenizer.all_special_tokens)
        for tok, m, (s, _) in zip(toks, mask.tolist(), off[b].tolist()):
            if tok in special or not m:
                assert s == -1


@pytest.mark.parametrize("kind", backbone_kinds())
def test_encode_truncates_tokens_to_max_len(built, kind):
    bb, _ = built[kind]
    enc = bb.encode(["今天天气非常好，我们去公园散步。" * 4], 10)
    assert enc["inputs"]["input_ids"].shape == (1, 10)
    assert enc["offsets"].shape == (1, 10, 2)


@pytest.mark.parametrize("kind", backbone_kinds())
def test_layer_groups_cover_every_parameter_once(built, kind):
    bb, _ = built[kind]
    groups = bb.layer_groups()
    flat = [id(p) for g in groups for p in g]
    assert len(flat) == len(set(flat))
    assert set(flat) == {id(p) for p in bb.model.parameters()}
    n_layers = 1 if kind == "albert" else TINY.layers  # ALBERT shares one layer group
    assert len(groups) == n_layers + 2
    assert all(len(g) > 0 for g in groups[:-1])
    emb = bb.input_embeddings()
    assert isinstance(emb, torch.nn.Embedding) and emb.weight.shape[0] == len(bb.tokenizer)
    assert any(p is emb.weight for p in groups[0])


def test_xlnet_cls_is_the_last_real_token_under_left_padding(built):
    bb, _ = built["xlnet"]
    texts = ["好", "今天天气非常好，我们去公园散步。"]
    enc = bb.encode(texts, 64)
    mask = enc["inputs"]["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1  # the short text is padded on the left
    with torch.no_grad():
        states, cls = bb(enc["inputs"])
        alone_states, alone_cls = bb(bb.encode(texts[:1], 64)["inputs"])
    assert torch.allclose(cls, states[:, -1])
    assert torch.allclose(cls[0], alone_cls[0], atol=1e-5)
    # the CLS is picked through the mask, not position -1: right padding gives the same vector
    right = {k: v.clone() for k, v in enc["inputs"].items()}
    n = int(mask[0].sum())
    for k in right:
        row = right[k][0]
        right[k][0] = torch.cat([row[-n:], row[:-n]])
    with torch.no_grad():
        _, cls_right = bb(right)
    assert cls_right.shape == cls.shape
    assert torch.allclose(cls_right[0], cls[0], atol=1e-5)


def test_bert_cls_is_the_first_token(built):
    bb, _ = built["bert"]
    with torch.no_grad():
        states, cls = bb(bb.encode(PROBES, 32)["inputs"])
    assert torch.equal(cls, states[:, 0])


def test_wobert_keeps_vocabulary_words_whole_and_splits_others(built):
    bb, _ = built["wobert"]
    tok = bb.tokenizer
    assert {"不错", "物流", "今天天气"} <= set(tok.get_vocab())
    assert tok.tokenize("质量不错，物流很快") == ["质量", "不错", "，", "物流", "很快"]
    # a word never seen falls back to characters (each known on its own)
    assert tok.tokenize("龘龘") == ["[UNK]", "[UNK]"]
    assert tok.tokenize("魑魅魍魉好") == ["[UNK]"] * 4 + ["好"]


def test_wobert_tokenizer_survives_pickle_and_deepcopy(built):
    bb, _ = built["wobert"]
    want = bb.tokenizer.tokenize("今天天气非常好")
    again = pickle.loads(pickle.dumps(bb.tokenizer))
    assert again.tokenize("今天天气非常好") == want
    clone = copy.deepcopy(bb)
    assert clone.tokenizer.tokenize("今天天气非常好") == want
    assert torch.equal(clone.encode(PROBES, 32)["offsets"], bb.encode(PROBES, 32)["offsets"])


def test_wobert_saves_a_plain_bert_tokenizer(built):
    _, d = built["wobert"]
    assert json.loads((d / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "BertTokenizer"


def test_align_tokens_matches_fast_offsets(built):
    bb, _ = built["bert"]
    for text in PROBES + ["龘好Hello,世界"]:
        enc = bb.encode([text], 64)
        ids, off = enc["inputs"]["input_ids"][0], enc["offsets"][0]
        real = off[:, 0] >= 0
        toks = bb.tokenizer.convert_ids_to_tokens(ids[real].tolist())
        spans = align_tokens(text, toks, unk=bb.tokenizer.unk_token)
        assert spans == [tuple(x) for x in off[real].tolist()], text


@pytest.mark.parametrize("kind", ["bert", "xlnet"])
def test_tokenizers_without_offsets_are_aligned(built, kind, monkeypatch):
    bb, _ = built[kind]
    texts = PROBES + ["龘好Hello,世界"]
    fast = bb.encode(texts, 64)
    monkeypatch.setattr(type(bb.tokenizer), "is_fast", property(lambda self: False))
    slow = bb.encode(texts, 64)
    assert torch.equal(slow["inputs"]["input_ids"], fast["inputs"]["input_ids"])
    assert torch.equal(slow["offsets"], fast["offsets"])


def test_vocab_coverage_and_warning(built):
    bb, _ = built["bert"]
    assert vocab_coverage(bb, CORPUS) == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="covers"):
        cov = vocab_coverage(bb, ["가나다라마바사아자차好", "ひらがなカタカナ"])
    assert cov < 0.2


def test_missing_tokenizer_files_is_a_comp_error(built, tmp_path):
    mem, _ = built["bert"]
    mem.model.save_pretrained(tmp_path)
    with pytest.raises(CompError, match="no tokenizer files"):
        load_backbone("bert", str(tmp_path))


def test_unknown_model_type_is_a_comp_error(built, tmp_path):
    _, d = built["bert"]
    for f in d.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "no_such_model"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CompError, match="unknown model_type 'no_such_model'"):
        load_backbone("bert", str(tmp_path))


def test_kind_and_checkpoint_must_agree(built):
    _, d = built["xlnet"]
    with pytest.raises(CompError, match="does not fit backbone kind 'bert'"):
        load_backbone("bert", str(d))


def test_unknown_kind_and_unreachable_hub_id_are_comp_errors(tmp_path):
    with pytest.raises(CompError, match="unknown backbone kind"):
        load_backbone("gpt9", str(tmp_path))
    with pytest.raises(CompError, match="cannot load backbone"):
        load_backbone("bert", "no-such-user/no-such-model")
    with pytest.raises(CompError, match="no config.json"):
        load_backbone("bert", str(tmp_path))


@pytest.mark.parametrize("kind", backbone_kinds())
def test_tokenizer_training_is_deterministic(kind):
    a = train_tokenizer(kind, CORPUS, TINY.vocab_size).get_vocab()
    assert a == train_tokenizer(kind, CORPUS, TINY.vocab_size).get_vocab()


def _clean_offsets_reference(texts, offsets, special, mask):
    """One span at a time, as the definition reads."""
    off = offsets.clone()
    dead = special.bool() | ~mask.bool() | (off[..., 1] <= off[..., 0])
    off[dead] = -1
    for b, text in enumerate(texts):
        for t in torch.nonzero(~dead[b]).flatten().tolist():
            s, e = off[b, t].tolist()
            while s < e and text[s].isspace():
                s += 1
            while e > s and text[e - 1].isspace():
                e -= 1
            off[b, t] = torch.tensor([s, e] if e > s else [-1, -1])
    return off


def test_clean_offsets_equals_trimming_span_by_span():
    import random

    from comp.nn.backbones.offsets import clean_offsets

    rng = random.Random(0)
    alphabet = list("好差很a b\u3000\t\n😀")
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(40)]
    T = 14
    offsets = torch.zeros(len(texts), T, 2, dtype=torch.long)
    for b, text in enumerate(texts):
        for t in range(T):
            s = rng.randint(0, max(len(text), 0))
            offsets[b, t] = torch.tensor([s, min(len(text), s + rng.randint(0, 3))])
    special = torch.rand(len(texts), T, generator=torch.Generator().manual_seed(1)) < 0.1
    mask = torch.rand(len(texts), T, generator=torch.Generator().manual_seed(2)) < 0.9
    want = _clean_offsets_reference(texts, offsets, special, mask)
    got = clean_offsets(texts, offsets, special, mask)
    assert torch.equal(got, want)
    assert (want == -1).any() and (want[..., 1] > want[..., 0]).any()  # both kinds occur
