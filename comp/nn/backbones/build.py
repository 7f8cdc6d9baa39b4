"""Building tiny backbones: tokenizers trained on a corpus, randomly initialised models.

Character WordPiece for BERT / RoBERTa-wwm / ALBERT (every CJK character its own token), jieba
words + characters for WoBERT, a sentencepiece Unigram for XLNet. Each comes back as the fast
tokenizer class that `from_pretrained(dir)` restores for its kind.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from typing import Any

import numpy as np
import torch
from tokenizers import normalizers, pre_tokenizers
from torch import nn
from transformers import BertTokenizer, XLNetTokenizer

from comp.config.schema import PretrainConfig
from comp.core.utils import CompError
from comp.nn.backbones.registry import backbone_spec
from comp.nn.backbones.wordseg import JiebaBertTokenizer, basic_spans, jieba_spans

__all__ = ["build_model", "init_from_vectors", "train_tokenizer"]

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
XLNET_SPECIALS = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]
WORD_SHARE = 0.5  # WoBERT: share of the vocabulary given to jieba words
UNIGRAM_SAMPLE = 5000  # texts the Unigram (XLNet) vocabulary is learnt from

# ---------------------------------------------------------------------------------------------
# tokenizers


def _wordpiece_vocab(texts: list[str], vocab_size: int) -> dict[str, int]:
    """A character WordPiece vocabulary, as the Chinese BERTs have, counted deterministically.

    Every character of the corpus (each CJK character is its own pre-token after BERT's
    normalizer), "##" forms of characters seen inside words, then the most frequent multi-char
    words (Latin words, numbers) up to `vocab_size`. WordPiece's longest match spells any other
    word from characters. Counting instead of `tokenizers`' WordPieceTrainer: its merges break
    ties in hash order, so the same corpus gave different vocabularies in different processes.
    """
    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=None, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    first: Counter[str] = Counter()
    inner: Counter[str] = Counter()
    words: Counter[str] = Counter()
    for t in texts:
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)):
            first[w[0]] += 1
            inner.update(w[1:])
            if len(w) > 1:
                words[w] += 1

    def ranked(c: Counter[str]) -> list[str]:
        return [k for k, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))]

    vocab = list(BERT_SPECIALS)
    vocab += [c for c in ranked(first + inner) if c not in BERT_SPECIALS]
    vocab += ["##" + c for c in ranked(inner)]
    budget = max(0, vocab_size - len(vocab))
    vocab += [w for w in ranked(words)[:budget] if words[w] >= 2]
    return {t: i for i, t in enumerate(dict.fromkeys(vocab))}


def _jieba_words(texts: list[str], budget: int) -> list[str]:
    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                      strip_accents=None, lowercase=True)
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(w for w, _, _ in jieba_spans(norm.normalize_str(t))
                      if len(w) > 1 and len(basic_spans(w)) == len(w))  # multi-char CJK words
    return [w for w, c in counts.most_common(budget) if c >= 2]


def _unigram_vocab(texts: list[str], vocab_size: int, seed: int = 0) -> list[tuple[str, float]]:
    """(piece, log-prob) list for XLNetTokenizer(vocab=...).

    XLNet specials, then sentencepiece Unigram pieces learnt on a sample, then any character of
    the corpus the sample missed (so no character of the corpus is unknown). sentencepiece, not
    `tokenizers`' UnigramTrainer: on the 17k-text sentiment corpus the latter took about two
    minutes, sentencepiece on a 5000-text sample a few seconds; the pieces are then served by
    the `tokenizers`-backed XLNetTokenizer like any hub XLNet vocabulary.
    """
    import sentencepiece as spm

    # the normalizer XLNetTokenizer restores (NFKD, accents stripped), so pieces match at use
    norm = XLNetTokenizer().backend_tokenizer.normalizer
    texts = [norm.normalize_str(t) for t in texts]
    # Unigram training cost grows faster than the corpus; a sample learns the frequent pieces
    rng = np.random.default_rng(seed)
    sample = [texts[i] for i in sorted(rng.permutation(len(texts))[:UNIGRAM_SAMPLE])]
    seen = {c for t in sample for c in t if not c.isspace()}
    missing = sorted({c for t in texts for c in t if not c.isspace()} - seen)
    n_pieces = max(len(seen) + 2, vocab_size - len(XLNET_SPECIALS) - len(missing))
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample), model_writer=buf, model_type="unigram",
            vocab_size=n_pieces, character_coverage=1.0, normalization_rule_name="identity",
            num_threads=min(2, os.cpu_count() or 1), minloglevel=2, unk_id=0, bos_id=-1,
            eos_id=-1, pad_id=-1, hard_vocab_limit=False)
    except RuntimeError as e:
        raise CompError(f"pretrain.vocab_size: sentencepiece could not train ({e})") from None
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    pieces = [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(1, sp.get_piece_size())]
    floor = min((sc for _, sc in pieces), default=0.0) - 1.0
    return [(t, 0.0) for t in XLNET_SPECIALS] + pieces + [(c, floor) for c in missing]


def train_tokenizer(kind: str, texts: list[str], vocab_size: int) -> Any:
    """Train the tokenizer of a backbone kind on `texts`.

    Returns:
        A fast tokenizer (BertTokenizer, JiebaBertTokenizer or XLNetTokenizer) whose
        save_pretrained dir the kind's loader restores.
    """
    how = backbone_spec(kind).tokenizer
    if how == "char":
        return BertTokenizer(vocab=_wordpiece_vocab(texts, vocab_size))
    if how == "jieba":
        vocab = _wordpiece_vocab(texts, max(len(BERT_SPECIALS) + 1,
                                            int(vocab_size * (1 - WORD_SHARE))))
        for w in _jieba_words(texts, max(0, vocab_size - len(vocab))):
            vocab.setdefault(w, len(vocab))
        return JiebaBertTokenizer(vocab=vocab)
    if how == "unigram":
        return XLNetTokenizer(vocab=_unigram_vocab(texts, vocab_size), unk_id=0)
    raise CompError(f"backbone kind '{kind}': no tokenizer recipe '{how}'")


# ---------------------------------------------------------------------------------------------
# models


def build_model(kind: str, tokenizer: Any, cfg: PretrainConfig) -> nn.Module:
    """A randomly initialised pretraining model (with LM head) of `kind`, sized by `cfg`."""
    import transformers as tf

    spec = backbone_spec(kind)
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if spec.pretrain_cls == "XLNetLMHeadModel":
        config = tf.XLNetConfig(d_model=cfg.hidden, n_layer=cfg.layers, n_head=cfg.heads,
                                d_inner=cfg.intermediate, mem_len=None, use_mems_eval=False,
                                use_mems_train=False, **common)
    elif spec.pretrain_cls == "AlbertForPreTraining":
        config = tf.AlbertConfig(embedding_size=cfg.embedding_size or min(cfg.hidden, 128),
                                 hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                                 num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                                 max_position_embeddings=cfg.max_positions,
                                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                                 bos_token_id=tokenizer.cls_token_id,
                                 eos_token_id=tokenizer.sep_token_id, **common)
    else:
        config = tf.BertConfig(hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                               num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                               max_position_embeddings=cfg.max_positions, **common)
    return getattr(tf, spec.pretrain_cls)(config)


def init_from_vectors(model: nn.Module, tokenizer: Any, kv: Any) -> int:
    """Initialise token embeddings from gensim KeyedVectors; returns how many rows were set.

    A token found in `kv` takes its vector; a multi-character token not found takes the mean
    of its characters' vectors when all are known. Vectors are projected (PCA) or padded
    (random init) to the embedding size, then scaled to the embedding's init spread.
    """
    emb = model.get_input_embeddings().weight  # (V, E)
    e_dim = emb.shape[1]
    vocab = tokenizer.get_vocab()
    chosen: dict[int, np.ndarray] = {}
    for tok, idx in vocab.items():
        w = tok[2:] if tok.startswith("##") else tok.replace("▁", "")
        if not w or idx >= emb.shape[0]:
            continue
        if w in kv.key_to_index:
            chosen[idx] = kv[w]
        elif len(w) > 1 and all(c in kv.key_to_index for c in w):
            chosen[idx] = np.mean([kv[c] for c in w], axis=0)
    if not chosen:
        return 0
    ids = sorted(chosen)
    m = np.stack([chosen[i] for i in ids]).astype(np.float64)  # (n, D)
    m -= m.mean(axis=0, keepdims=True)
    if m.shape[1] > e_dim:  # keep the top principal directions
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        m = m @ vt[:e_dim].T  # (n, E)
    with torch.no_grad():
        std = float(emb.std())
        vec = torch.tensor(m / (m.std() + 1e-12) * std, dtype=emb.dtype)  # (n, D')
        emb[torch.tensor(ids), :vec.shape[1]] = vec
    return len(ids)
