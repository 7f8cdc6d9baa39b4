"""The backbone registry: one spec per kind (timm style, `@register_backbone`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from comp.core.utils import CompError
from comp.nn.backbones.wordseg import JiebaBertTokenizer

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
                   "vocab.json", "tokenizer.model")

# ---------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class BackboneSpec:
    """What one backbone kind needs to be loaded, pooled, decayed and pretrained."""

    kind: str
    model_types: tuple[str, ...]  # config.model_type values this kind accepts
    tokenizer: str  # how `comp pretrain` builds one: char | jieba | unigram
    cls: str  # where the summary vector is: first | last (last real token, mask-aware)
    objective: str  # pretraining objective: mlm | wwm | plm
    pretrain_cls: str  # transformers class `comp pretrain` trains and saves
    layers: Callable[[nn.Module], tuple[list[nn.Parameter], list[nn.Module]]]
    tokenizer_cls: type | None = None  # None: AutoTokenizer
    forward_kwargs: dict[str, Any] = field(default_factory=dict)


_BACKBONES: dict[str, Callable[[], BackboneSpec]] = {}


def register_backbone(fn: Callable[[], BackboneSpec]) -> Callable[[], BackboneSpec]:
    """Register a backbone kind under the function's name (timm style)."""
    _BACKBONES[fn.__name__] = fn
    return fn


def backbone_kinds() -> list[str]:
    """The registered kinds, in registration order."""
    return list(_BACKBONES)


def backbone_spec(kind: str) -> BackboneSpec:
    """The spec of a registered kind; unknown kinds are a CompError naming the known ones."""
    if kind not in _BACKBONES:
        raise CompError(f"unknown backbone kind '{kind}' (known: {', '.join(_BACKBONES)})")
    return _BACKBONES[kind]()


def _bert_layers(m: nn.Module) -> tuple[list[nn.Parameter], list[nn.Module]]:
    return list(m.embeddings.parameters()), list(m.encoder.layer)


def _albert_layers(m: nn.Module) -> tuple[list[nn.Parameter], list[nn.Module]]:
    # ALBERT shares one layer group across depth: embeddings (and their projection), then the
    # shared group(s), then the pooler
    emb = [*m.embeddings.parameters(), *m.encoder.embedding_hidden_mapping_in.parameters()]
    return emb, list(m.encoder.albert_layer_groups)


def _xlnet_layers(m: nn.Module) -> tuple[list[nn.Parameter], list[nn.Module]]:
    return [m.word_embedding.weight, m.mask_emb], list(m.layer)


_BERT_TYPES = ("bert", "roberta", "ernie")


@register_backbone
def bert() -> BackboneSpec:
    """BERT: character WordPiece, CLS first, masked LM."""
    return BackboneSpec("bert", _BERT_TYPES, "char", "first", "mlm", "BertForPreTraining",
                        _bert_layers)


@register_backbone
def roberta_wwm() -> BackboneSpec:
    """RoBERTa-wwm-ext style (a BERT model): character WordPiece, whole-word masking by jieba."""
    return BackboneSpec("roberta_wwm", _BERT_TYPES, "char", "first", "wwm", "BertForPreTraining",
                        _bert_layers)


@register_backbone
def wobert() -> BackboneSpec:
    """WoBERT: BERT over jieba words (in-vocab words are one token), masked LM."""
    return BackboneSpec("wobert", _BERT_TYPES, "jieba", "first", "mlm", "BertForPreTraining",
                        _bert_layers, tokenizer_cls=JiebaBertTokenizer)


@register_backbone
def xlnet() -> BackboneSpec:
    """XLNet: Unigram pieces, left padding, summary token last, permutation LM."""
    return BackboneSpec("xlnet", ("xlnet",), "unigram", "last", "plm", "XLNetLMHeadModel",
                        _xlnet_layers, forward_kwargs={"use_mems": False})


@register_backbone
def albert() -> BackboneSpec:
    """ALBERT (Chinese ALBERTs use a BERT tokenizer): shared layers, CLS first, masked LM."""
    return BackboneSpec("albert", ("albert",), "char", "first", "mlm", "AlbertForPreTraining",
                        _albert_layers)
