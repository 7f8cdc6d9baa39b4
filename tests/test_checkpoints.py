"""Published Chinese checkpoint layouts load through the recipe path and train a fold.

Each layout of tests/checkpoint_fixtures.py (hfl RoBERTa-wwm-ext / BERT-wwm-ext with .bin,
.safetensors and tokenizer.json, hfl XLNet with only spiece.model, WoBERT with a jieba word
vocabulary and its own tokenizer class, a Chinese ALBERT with a BERT vocab.txt) is loaded both
as a local dir and by its hub id from an offline hub cache. It must give character offsets, the
checkpoint's own weights and the tokens of the repo's reference tokenizer, and train one fold
of a fusion member. Layouts that cannot work fail with one-line CompErrors.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_fixtures import LAYOUTS, install_in_hub_cache, write_lines
from conftest import clean_piece, fold

from comp.core.utils import CompError
from comp.data.recipes import load_recipe
from comp.nn.backbones import check_vocab_coverage, jieba_spans, load_backbone
from comp.nn.backbones.spiece import read_spiece

PROBES = [
    "今天天气非常好，我们去公园散步。",
    "房间干净，价格实惠，下次还会入住！",
    "Apple发布了新款iPhone 15，价格5999元。",
    "  服务 很差  ",
    "ＡＢＣ全角字母，还有全角标点：（好）",
    "好",
]
CJK_PROBES = ["今天天气非常好，我们去公园散步。", "房间干净，价格实惠，下次还会入住！",
              "服务态度很差，再也不来了。"]
EMBEDDING_KEY = {"bert": "bert.embeddings.word_embeddings.weight",
                 "albert": "albert.embeddings.word_embeddings.weight",
                 "xlnet": "transformer.word_embedding.weight"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """name -> a directory in that published layout (written once per module)."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: lay.write(root / name) for name, lay in LAYOUTS.items()}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Install a checkpoint dir in an offline hub cache: hub(dir, hub_id) -> hub_id."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))

    def install(d: Path, hub_id: str) -> str:
        install_in_hub_cache(d, hub_id, cache)
        return hub_id

    return install


def checkpoint_state(d: Path) -> dict[str, torch.Tensor]:
    if (d / "model.safetensors").exists():
        from safetensors.torch import load_file

        return load_file(str(d / "model.safetensors"))
    return torch.load(d / "pytorch_model.bin", weights_only=True)


def copy_dir(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy2(f, dst / f.name)
    return dst


# ---------------------------------------------------------------------------------------------
# loading


def test_layouts_have_the_published_files(checkpoints):
    files = {name: {f.name for f in d.iterdir()} for name, d in checkpoints.items()}
    assert {"vocab.txt", "pytorch_model.bin"} <= files["roberta_wwm_bin"]
    assert "tokenizer.json" not in files["roberta_wwm_bin"]
    assert "pytorch_model.bin" not in files["roberta_wwm_safetensors"]
    assert {"pytorch_model.bin", "model.safetensors", "tokenizer.json"} <= files["bert_wwm_full"]
    assert files["xlnet"] == {"config.json", "spiece.model", "pytorch_model.bin"}
    assert files["albert_zh"] == {"config.json", "vocab.txt", "pytorch_model.bin"}
    cfg = json.loads((checkpoints["albert_zh"] / "config.json").read_text())
    assert (cfg["model_type"], cfg["architectures"]) == ("albert", ["AlbertForMaskedLM"])
    tok_cfg = json.loads((checkpoints["wobert"] / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "WoBertTokenizer"


@pytest.mark.parametrize("source", ["dir", "hub"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_checkpoint_loads_with_its_weights_and_character_offsets(checkpoints, hub, capsys,
                                                                  name, source):
    lay, d = LAYOUTS[name], checkpoints[name]
    path = str(d) if source == "dir" else hub(d, lay.hub_id)
    bb = load_backbone(lay.kind, path)
    logged = capsys.readouterr().err
    assert "initialised randomly" not in logged  # every weight the backbone uses was loaded
    tok, model = bb.tokenizer, bb.model
    assert tok.is_fast and bb.hidden_size == 32
    emb = bb.input_embeddings().weight
    assert tok.vocab_size == emb.shape[0] == model.config.vocab_size
    key = EMBEDDING_KEY[model.config.model_type]
    assert torch.equal(emb.detach(), checkpoint_state(d)[key])

    enc = bb.encode(PROBES, 64)
    ids, off = enc["inputs"]["input_ids"], enc["offsets"]
    assert off.shape == (*ids.shape, 2)
    for b, text in enumerate(PROBES):
        toks = tok.convert_ids_to_tokens(ids[b].tolist())
        covered, last_end = set(), 0
        for t, (s, e) in zip(toks, off[b].tolist()):
            if s < 0:
                continue
            assert 0 <= s < e <= len(text) and s >= last_end, (t, s, e)
            if t != tok.unk_token:
                assert fold(text[s:e]) == fold(clean_piece(t)), (t, text[s:e])
            covered.update(range(s, e))
            last_end = e
        assert covered == {i for i, c in enumerate(text) if not c.isspace()}, (text, toks)
    with torch.no_grad():
        states, cls = bb(enc["inputs"])
    assert states.shape == (len(PROBES), ids.shape[1], 32) and cls.shape == (len(PROBES), 32)
    assert torch.isfinite(states).all()
    groups = bb.layer_groups()
    assert sum(len(g) for g in groups) == len(list(model.parameters()))


def bert_reference(text: str, vocab: set[str]) -> list[str]:
    """Chinese BERT's tokenization of lower-case CJK text: one token per character."""
    return [c if c in vocab else "[UNK]" for c in text if not c.isspace()]


def wobert_reference(text: str, vocab: set[str]) -> list[str]:
    """WoBERT's tokenizer: jieba words (no HMM) kept when in the vocabulary, else characters."""
    out = []
    for word, _, _ in jieba_spans(text):
        out.extend([word] if word in vocab else bert_reference(word, vocab))
    return out


def xlnet_reference(text: str, model_file: Path) -> list[str]:
    """The original sentencepiece XLNetTokenizer: strip, NFKD without accents, spm pieces."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    s = unicodedata.normalize("NFKD", " ".join(text.strip().split()))
    s = "".join(c for c in s if not unicodedata.combining(c))
    return sp.encode(s, out_type=str)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_tokens_match_the_repos_reference_tokenizer(checkpoints, name):
    lay, d = LAYOUTS[name], checkpoints[name]
    bb = load_backbone(lay.kind, str(d))
    vocab = set(bb.tokenizer.get_vocab())
    for text in CJK_PROBES:
        got = bb.tokenizer.tokenize(text)
        if lay.kind == "xlnet":
            want = xlnet_reference(text, d / "spiece.model")
        elif lay.kind == "wobert":
            want = wobert_reference(text, vocab)
        else:
            want = bert_reference(text, vocab)
        assert got == want, text
    if lay.kind == "wobert":  # the word vocabulary is in use, not characters only
        assert any(len(t) > 1 for t in bb.tokenizer.tokenize("".join(CJK_PROBES)))


def test_spiece_reader_matches_sentencepiece(checkpoints):
    import sentencepiece as spm

    f = checkpoints["xlnet"] / "spiece.model"
    sp = spm.SentencePieceProcessor(model_file=str(f))
    got = read_spiece(f)
    assert got["model_type"] == 1 and got["charsmap"]
    assert len(got["pieces"]) == sp.get_piece_size()
    for i, (piece, score, kind) in enumerate(got["pieces"]):
        assert piece == sp.id_to_piece(i)
        assert score == pytest.approx(sp.get_score(i))
        assert (kind == 2) == sp.is_unknown(i) and (kind == 3) == sp.is_control(i)
    # XLNet's ids: <unk> 0, <s> 1, </s> 2, <cls> 3, <sep> 4, <pad> 5 (config pad_token_id)
    assert [p for p, _, _ in got["pieces"][:6]] == ["<unk>", "<s>", "</s>", "<cls>", "<sep>",
                                                   "<pad>"]


def test_spiece_reader_reads_types_model_type_and_a_missing_charsmap(tmp_path):
    """User-defined pieces, a BPE model type and identity normalization (no charsmap) come
    through sentencepiece's ModelProto as they did through the hand-written decoder."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world", "a bad cafe", "the old dog"] * 30),
        model_writer=buf, model_type="bpe", vocab_size=40, hard_vocab_limit=False,
        user_defined_symbols="[A]", normalization_rule_name="identity", minloglevel=2)
    (tmp_path / "spiece.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    got = read_spiece(tmp_path / "spiece.model")
    assert got["model_type"] == 2 and got["charsmap"] is None
    assert got["pieces"][sp.piece_to_id("[A]")] == ("[A]", 0.0, 4)
    assert [p for p, _, _ in got["pieces"]] == [sp.id_to_piece(i)
                                                for i in range(sp.get_piece_size())]


def test_xlnet_special_tokens_keep_the_checkpoint_ids(checkpoints):
    bb = load_backbone("xlnet", str(checkpoints["xlnet"]))
    tok = bb.tokenizer
    assert (tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) == \
        (0, 3, 4, 5)
    assert tok.padding_side == "left"
    enc = bb.encode(["好", "今天天气非常好"], 32)
    ids = enc["inputs"]["input_ids"]
    assert ids[0, 0] == 5 and ids[0, -1] == 3 and ids[1, -2] == 4  # ... <sep> <cls>


def test_wobert_under_kind_bert_loads_characters_and_names_the_right_kind(checkpoints, capsys):
    bb = load_backbone("bert", str(checkpoints["wobert"]))
    assert 'use kind = "wobert"' in capsys.readouterr().err
    assert bb.tokenizer.tokenize("非常好") == ["非", "常", "好"]


def test_albert_with_bert_vocab_logs_the_tokenizer_it_used(checkpoints, capsys):
    bb = load_backbone("albert", str(checkpoints["albert_zh"]))
    err = capsys.readouterr().err
    assert "using BertTokenizer built from vocab.txt" in err
    assert type(bb.tokenizer).__name__ == "BertTokenizer"


@pytest.mark.parametrize("name", ["xlnet", "albert_zh", "wobert"])
def test_loaded_checkpoint_saves_a_dir_that_reloads_the_same(checkpoints, tmp_path, capsys, name):
    lay = LAYOUTS[name]
    bb = load_backbone(lay.kind, str(checkpoints[name]))
    bb.save_pretrained(tmp_path / "saved")
    capsys.readouterr()
    again = load_backbone(lay.kind, str(tmp_path / "saved"))
    assert "using" not in capsys.readouterr().err  # the saved dir needs no fallback
    assert type(again.tokenizer) is type(bb.tokenizer)
    a, b = bb.encode(PROBES, 64), again.encode(PROBES, 64)
    assert torch.equal(a["inputs"]["input_ids"], b["inputs"]["input_ids"])
    assert torch.equal(a["offsets"], b["offsets"])


# ---------------------------------------------------------------------------------------------
# training one fold from the recipe line


def fusion_recipe(comp_dir: Path, runs: Path, kind: str, path: str):
    return load_recipe(None, [
        "name=ckpt", "kind=fusion", f"runs_dir={json.dumps(str(runs))}",
        f"data.dir={json.dumps(str(comp_dir))}", "data.folds=2",
        f"model.backbones=[{{kind = \"{kind}\", path = \"{path}\", max_len = 66}}]",
        "model.head=cnn", "model.channels=16", "model.kernel_sizes=[2, 3]",
        "model.max_chars=64", "train.epochs_frozen=1", "train.epochs_unfrozen=1",
        "train.batch_size=32", "train.lr_backbone=1e-4",
    ])


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_recipe_line_trains_one_fold(checkpoints, hub, small_comp, tmp_path, name):
    from comp.data.competition import load_competition
    from comp.nn.trainer import train_fusion

    lay = LAYOUTS[name]
    hub_id = hub(checkpoints[name], lay.hub_id)
    recipe = fusion_recipe(small_comp, tmp_path / "runs", lay.kind, hub_id)
    assert recipe.model.backbones[0].path == lay.hub_id
    comp = load_competition(recipe.data)
    bb = load_backbone(lay.kind, hub_id)
    assert check_vocab_coverage(bb, comp.train_texts, "model.backbones[0]") > 0.99

    train_fusion(recipe, folds_to_run=[0])
    fold_dir = tmp_path / "runs" / "ckpt" / "fold0"
    val = np.load(fold_dir / "val_proba.npy")
    test = np.load(fold_dir / "test_proba.npy")
    assert val.shape[1] == test.shape[1] == 2 and test.shape[0] == len(comp.test_ids)
    assert 150 <= val.shape[0] <= 250  # about half of the 400 rows
    assert np.allclose(val.sum(1), 1, atol=1e-4) and np.isfinite(test).all()
    done = json.loads((fold_dir / "done.json").read_text())
    assert 0.0 <= done["score"] <= 1.0


# ---------------------------------------------------------------------------------------------
# what cannot work fails early, in one line


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_weights_without_tokenizer_files_is_a_comp_error(checkpoints, tmp_path, name):
    d = copy_dir(checkpoints[name], tmp_path / name,
                 skip=("vocab.txt", "spiece.model", "tokenizer.json", "tokenizer_config.json",
                       "special_tokens_map.json", "added_tokens.json"))
    with pytest.raises(CompError, match="no tokenizer files") as e:
        load_backbone(LAYOUTS[name].kind, str(d))
    assert "\n" not in str(e.value)


def test_tokenizer_without_weights_is_a_comp_error(checkpoints, tmp_path):
    d = copy_dir(checkpoints["roberta_wwm_bin"], tmp_path / "d", skip=("pytorch_model.bin",))
    with pytest.raises(CompError, match="cannot load backbone 'roberta_wwm'") as e:
        load_backbone("roberta_wwm", str(d))
    assert "\n" not in str(e.value)


def set_model_type(d: Path, model_type: str) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = model_type
    (d / "config.json").write_text(json.dumps(cfg))


def test_model_type_outside_the_registry_is_a_comp_error(checkpoints, tmp_path):
    d = copy_dir(checkpoints["roberta_wwm_bin"], tmp_path / "electra")
    set_model_type(d, "electra")  # transformers knows it (hfl/chinese-electra), the registry not
    with pytest.raises(CompError, match="model_type 'electra' has no backbone kind"):
        load_backbone("bert", str(d))
    set_model_type(d, "no_such_model")
    with pytest.raises(CompError, match="unknown model_type 'no_such_model'"):
        load_backbone("bert", str(d))


def test_kind_mismatch_names_the_kind_that_fits(checkpoints, hub):
    with pytest.raises(CompError, match='use kind = "xlnet"'):
        load_backbone("bert", str(checkpoints["xlnet"]))
    hub_id = hub(checkpoints["albert_zh"], LAYOUTS["albert_zh"].hub_id)
    with pytest.raises(CompError, match='use kind = "albert"'):
        load_backbone("roberta_wwm", hub_id)


def test_vocab_txt_of_another_model_is_a_comp_error(checkpoints, tmp_path):
    d = copy_dir(checkpoints["albert_zh"], tmp_path / "d")
    write_lines(d / "vocab.txt", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefgh"])
    with pytest.raises(CompError, match="vocab.txt has 13 tokens for the model's"):
        load_backbone("albert", str(d))


def test_corrupt_spiece_model_is_a_comp_error(checkpoints, tmp_path):
    d = copy_dir(checkpoints["xlnet"], tmp_path / "d")
    (d / "spiece.model").write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(CompError, match="not a readable sentencepiece model"):
        load_backbone("xlnet", str(d))


def english_bert(src: Path, dst: Path, chars: list[str]) -> Path:
    """The hfl BERT checkpoint with its vocab.txt cut to `chars` (same number of rows)."""
    d = copy_dir(src, dst)
    n = len((src / "vocab.txt").read_text(encoding="utf-8").splitlines())
    head = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    write_lines(d / "vocab.txt", head + [f"[unused{i}]" for i in range(n - len(head))])
    return d


def test_vocabulary_missing_most_characters_is_a_comp_error(checkpoints, tmp_path, small_comp,
                                                           capsys):
    from comp.data.competition import load_competition

    texts = load_competition(load_recipe(None, [f"data.dir={json.dumps(str(small_comp))}"])
                             .data).train_texts
    d = english_bert(checkpoints["roberta_wwm_bin"], tmp_path / "en",
                     list("abcdefghijklmnopqrstuvwxyz0123456789"))
    bb = load_backbone("bert", str(d))
    with pytest.raises(CompError, match=r"model.backbones\[0\]: vocabulary covers only \d"):
        with pytest.warns(UserWarning, match="covers"):
            check_vocab_coverage(bb, texts, "model.backbones[0]")
    assert "vocabulary covers" in capsys.readouterr().err  # the number is printed
    # a vocabulary that misses some characters warns with the number and still trains
    from collections import Counter

    freq = [c for c, _ in Counter(c for t in texts for c in t if not c.isspace()).most_common()]
    part = english_bert(checkpoints["roberta_wwm_bin"], tmp_path / "part", freq[:300])
    with pytest.warns(UserWarning, match=r"covers \d+\.\d% of the text's characters \(< 95%\)"):
        cov = check_vocab_coverage(load_backbone("bert", str(part)), texts, "b")
    assert 0.5 < cov < 0.95


# ---------------------------------------------------------------------------------------------
# recipes/gpu: the same members named with the real hub checkpoints

GPU_RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes" / "gpu").glob("*.toml"))
GPU_LAYOUT = {"bert": "bert_wwm_full", "roberta_wwm": "roberta_wwm_bin", "wobert": "wobert",
              "xlnet": "xlnet", "albert": "albert_zh"}


def test_gpu_recipes_cover_every_backbone_kind_and_the_full_fusion():
    from comp.nn.backbones import backbone_kinds

    names = {p.stem for p in GPU_RECIPES}
    assert names == {f"fusion_{k}_bilstm" for k in backbone_kinds()} | {"fusion_all"}


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda p: p.stem)
def test_gpu_recipe_builds_through_the_hub_path(checkpoints, hub, small_comp, tmp_path, path):
    """Each hub id in a GPU recipe resolves (from an offline cache holding that repo's layout,
    tiny weights) through the same loader users hit, and the model gives logits."""
    from comp.data.competition import load_competition
    from comp.nn.fusion import build_fusion, to_device

    recipe = load_recipe(path, [f"data.dir={json.dumps(str(small_comp))}", "model.vectors=[]",
                                "model.hidden=8", "model.channels=4"])
    bbs = recipe.model.backbones
    assert all("/" in b.path and not Path(b.path).exists() for b in bbs)  # hub ids, not dirs
    assert recipe.train.lr_backbone <= 5e-5  # base-size learning rate
    for b in bbs:
        hub(checkpoints[GPU_LAYOUT[b.kind]], b.path)
    comp = load_competition(recipe.data)
    model = build_fusion(recipe, comp.n_classes).eval()
    batch = to_device(model.prepare(list(comp.train_texts[:3])), torch.device("cpu"))
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (3, comp.n_classes) and torch.isfinite(logits).all()
