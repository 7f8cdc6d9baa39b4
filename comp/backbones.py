"""Pretrained backbones: a registry of kinds and one loading path for local dirs and hub ids.

Each kind (bert, roberta_wwm, wobert, xlnet, albert) knows its HF model family, how its tokenizer
is built and restored, where its CLS/summary vector sits, how its parameters split into layers
for layer-wise LR decay, and which objective `comp pretrain` uses for it. `load_backbone` wraps
`from_pretrained(path)` for both a local `save_pretrained` dir and a hub id; `Backbone.encode`
returns character offsets into the original text for every token so any tokenizer can feed the
character grid (see comp/align.py).

WoBERT tokenizes jieba words: a word in the vocabulary is one token, any other word falls back
to BERT's character split. The jieba step is a Python pre-tokenizer, which `tokenizers` cannot
serialize, so it is saved as a plain BertTokenizer and re-attached on load by the registry.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import NormalizedString, PreTokenizedString, Tokenizer, normalizers, pre_tokenizers
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, BertTokenizer

from comp.utils import CompError, log

__all__ = [
    "Backbone",
    "quiet_transformers",
    "BackboneSpec",
    "JiebaBertTokenizer",
    "align_tokens",
    "backbone_kinds",
    "backbone_spec",
    "create_backbone",
    "jieba_spans",
    "load_backbone",
    "register_backbone",
    "save_tokenizer",
    "vocab_coverage",
]

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


# ---------------------------------------------------------------------------------------------
# jieba pre-tokenization (WoBERT)

@functools.lru_cache(maxsize=1 << 16)
def jieba_spans(text: str) -> tuple[tuple[str, int, int], ...]:
    """jieba words of `text` with [start, end) character spans (precise mode, no HMM).

    No HMM, as WoBERT: new words guessed by the HMM would never be in a fixed vocabulary.
    Cached: building a WoBERT vocabulary and tokenizing the same corpus segment it twice.
    """
    import jieba

    jieba.setLogLevel(logging.WARNING)
    words = jieba.lcut(text, HMM=False)  # faster than jieba.tokenize, same segmentation
    if "".join(words) != text:
        return tuple(jieba.tokenize(text, HMM=False))
    out, pos = [], 0
    for w in words:
        out.append((w, pos, pos + len(w)))
        pos += len(w)
    return tuple(out)


def _is_cjk(c: str) -> bool:
    cp = ord(c)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_punct(c: str) -> bool:
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def basic_spans(text: str) -> list[tuple[int, int]]:
    """BERT's basic split as spans: CJK characters and punctuation alone, other runs together."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif _is_cjk(c) or _is_punct(c):
            spans.append((i, i + 1))
            i += 1
        else:
            j = i + 1
            while j < n and not (text[j].isspace() or _is_cjk(text[j]) or _is_punct(text[j])):
                j += 1
            spans.append((i, j))
            i = j
    return spans


class JiebaPreTokenizer:
    """Split into jieba words; a word outside `vocab` falls back to BERT's character split."""

    def __init__(self, vocab: set[str] | dict[str, int]) -> None:
        self.vocab = set(vocab)

    def _split(self, i: int, normalized: NormalizedString) -> list[NormalizedString]:
        out = []
        for word, start, _end in jieba_spans(str(normalized)):
            if word in self.vocab:
                out.append(normalized[start:start + len(word)])
            else:
                out.extend(normalized[start + a:start + b] for a, b in basic_spans(word))
        return out

    def pre_tokenize(self, pretok: PreTokenizedString) -> None:
        """The `tokenizers` custom pre-tokenizer hook."""
        pretok.split(self._split)


class JiebaBertTokenizer(BertTokenizer):
    """A BertTokenizer whose pre-tokenizer is jieba (WoBERT).

    Saved as a plain `BertTokenizer` (char-level for anyone loading it without comp), restored
    with jieba by `JiebaBertTokenizer.from_pretrained(dir)`, which `load_backbone` calls for the
    wobert kind. Survives pickling and deepcopy (the jieba step is re-attached).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attach_jieba()

    def _attach_jieba(self) -> None:
        bt = self._tokenizer
        # characters stay together so jieba sees words; its fallback splits OOV words again
        bt.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=False, strip_accents=self.strip_accents,
            lowercase=self.do_lower_case)
        bt.pre_tokenizer = pre_tokenizers.PreTokenizer.custom(JiebaPreTokenizer(self.get_vocab()))

    @contextlib.contextmanager
    def _plain(self) -> Iterator[None]:
        """Temporarily a serializable character-level BERT tokenizer."""
        bt = self._tokenizer
        bt.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=self.strip_accents,
            lowercase=self.do_lower_case)
        bt.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        try:
            yield
        finally:
            self._attach_jieba()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        with self._plain():
            state["_tokenizer"] = Tokenizer.from_str(self._tokenizer.to_str())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attach_jieba()

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> tuple:
        """Save as a plain BertTokenizer (the jieba step is code, not data)."""
        with self._plain():
            files = super().save_pretrained(save_directory, *args, **kwargs)
        cfg_path = Path(save_directory) / "tokenizer_config.json"
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            cfg["tokenizer_class"] = "BertTokenizer"
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False)
                                + "\n", encoding="utf-8")
        return files


def save_tokenizer(tokenizer: Any, out: str | Path) -> None:
    """save_pretrained for any tokenizer this module hands out (jieba ones included)."""
    tokenizer.save_pretrained(str(out))


# ---------------------------------------------------------------------------------------------
# offsets


def _norm(s: str) -> str:
    """Fold case, width and accents so token strings compare to raw text."""
    s = unicodedata.normalize("NFKD", s).lower()
    return "".join(c for c in s if not unicodedata.combining(c) and not c.isspace())


def align_tokens(text: str, tokens: list[str], unk: str | None = None) -> list[tuple[int, int]]:
    """Recover [start, end) character spans by aligning token strings to the text.

    For tokenizers that give no offsets (slow ones). WordPiece "##" and sentencepiece "▁"
    markers are dropped; comparison ignores case, width and accents. An unknown token spans the
    text between its neighbours; a token that cannot be placed gets (-1, -1).

    Args:
        text: the original text.
        tokens: its tokens in order, without special tokens.
        unk: the unknown-token string.

    Returns:
        One span per token.
    """
    spans: list[tuple[int, int]] = []
    pending: list[int] = []  # unknown tokens waiting for the next placed token
    cur, n = 0, len(text)

    def settle(upto: int) -> None:
        # share the gap between pending unknown tokens, one character each, the last takes rest
        pos = cur
        for k, idx in enumerate(pending):
            while pos < upto and text[pos].isspace():
                pos += 1
            end = upto if k == len(pending) - 1 else min(pos + 1, upto)
            spans[idx] = (pos, end) if end > pos else (-1, -1)
            pos = end
        pending.clear()

    for tok in tokens:
        piece = tok[2:] if tok.startswith("##") else tok.replace("▁", "")
        target = _norm(piece)
        spans.append((-1, -1))
        if tok == unk or not target:
            if tok == unk:
                pending.append(len(spans) - 1)
            continue
        found = None
        for start in range(cur, n):
            if text[start].isspace():
                continue
            acc, end = "", start
            while end < n and len(acc) < len(target) and target.startswith(acc):
                acc += _norm(text[end])
                end += 1
            if acc == target:
                found = (start, end)
                break
        if found is None:
            continue
        settle(found[0])
        spans[-1] = found
        cur = found[1]
    settle(n)
    return spans


def _clean_offsets(texts: list[str], offsets: Tensor, special: Tensor, mask: Tensor) -> Tensor:
    """(-1, -1) for special, pad and empty tokens; spans trimmed of surrounding whitespace."""
    off = offsets.clone()
    dead = (special.bool()) | (~mask.bool()) | (off[..., 1] <= off[..., 0])  # (B, T)
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


# ---------------------------------------------------------------------------------------------
# the backbone


class Backbone(nn.Module):
    """A pretrained encoder with its tokenizer: texts -> token states + offsets + CLS vector."""

    def __init__(self, spec: BackboneSpec, tokenizer: Any, model: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.kind = spec.kind
        self.tokenizer = tokenizer
        self.model = model
        cfg = model.config
        self.hidden_size = int(getattr(cfg, "d_model", None) or cfg.hidden_size)
        # sentencepiece's lone word-boundary piece "▁" covers no character of its own
        self._blank_ids = torch.tensor(sorted(i for t, i in tokenizer.get_vocab().items()
                                              if t and not t.strip("▁ ")), dtype=torch.long)

    def encode(self, texts: list[str], max_len: int) -> dict[str, Tensor | dict[str, Tensor]]:
        """Tokenize a batch, padded to its longest member and cut to `max_len` tokens.

        Returns:
            {'inputs': model inputs (input_ids, attention_mask, token_type_ids if used), each
            (B, T) int64; 'offsets': (B, T, 2) int64 [start, end) character span in the
            original text, (-1, -1) for special and pad tokens}.
        """
        texts = list(texts)
        tok = self.tokenizer
        if getattr(tok, "is_fast", False):
            enc = tok(texts, padding=True, truncation=True, max_length=max_len,
                      return_offsets_mapping=True, return_special_tokens_mask=True,
                      return_tensors="pt")
            offsets = enc.pop("offset_mapping").long()
        else:
            enc = tok(texts, padding=True, truncation=True, max_length=max_len,
                      return_special_tokens_mask=True, return_tensors="pt")
            offsets = self._aligned_offsets(texts, enc)
        special = enc.pop("special_tokens_mask")
        special = special.bool() | torch.isin(enc["input_ids"], self._blank_ids)
        inputs = {k: v.long() for k, v in enc.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
        offsets = _clean_offsets(texts, offsets, special, inputs["attention_mask"])
        return {"inputs": inputs, "offsets": offsets}

    def _aligned_offsets(self, texts: list[str], enc: Any) -> Tensor:
        ids, special = enc["input_ids"], enc["special_tokens_mask"]
        offsets = torch.full((*ids.shape, 2), -1, dtype=torch.long)
        for b, text in enumerate(texts):
            pos = torch.nonzero(~special[b].bool() & enc["attention_mask"][b].bool()).flatten()
            toks = self.tokenizer.convert_ids_to_tokens(ids[b, pos].tolist())
            spans = align_tokens(text, toks, unk=self.tokenizer.unk_token)
            if len(spans):
                offsets[b, pos] = torch.tensor(spans, dtype=torch.long)
        return offsets

    def forward(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Encode; returns (states (B, T, H) last hidden states, cls (B, H) summary vector)."""
        out = self.model(**inputs, **self.spec.forward_kwargs)
        states = out.last_hidden_state  # (B, T, H)
        if self.spec.cls == "first":
            return states, states[:, 0]
        # last real token under any padding side: the highest position with mask 1
        mask = inputs.get("attention_mask")
        if mask is None:
            return states, states[:, -1]
        t = mask.shape[1]
        pos = torch.arange(t, device=mask.device).expand_as(mask)  # (B, T)
        last = torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(dim=1).values  # (B,)
        return states, states[torch.arange(states.shape[0], device=states.device), last]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters bottom->top: [embeddings, layer 0, ..., layer L-1, pooler/rest].

        ALBERT's layers are shared, so it gives [embeddings, shared layer group, pooler]. The
        last group is empty when the model has nothing above its layers (XLNet).
        """
        emb, layers = self.spec.layers(self.model)
        groups = [list(emb)] + [list(m.parameters()) for m in layers]
        seen = {id(p) for g in groups for p in g}
        groups.append([p for p in self.model.parameters() if id(p) not in seen])
        return groups

    def input_embeddings(self) -> nn.Embedding:
        """The word-embedding module (adversarial training perturbs its weight)."""
        return self.model.get_input_embeddings()

    def save_pretrained(self, out: str | Path) -> None:
        """Save model and tokenizer into one dir that `load_backbone(kind, out)` restores."""
        with quiet_transformers():
            self.model.save_pretrained(str(out))
        save_tokenizer(self.tokenizer, out)


# ---------------------------------------------------------------------------------------------
# loading


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports, warnings and progress bars inside the block."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _check_local_dir(p: Path, spec: BackboneSpec) -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not p.is_dir():
        raise CompError(f"{p}: backbone path is a file; expected a save_pretrained dir or hub id")
    cfg_file = p / "config.json"
    if not cfg_file.exists():
        raise CompError(f"{p}: no config.json; expected a dir written by save_pretrained")
    try:
        model_type = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type")
    except json.JSONDecodeError as e:
        raise CompError(f"{cfg_file}: invalid JSON: {e}") from None
    if model_type not in CONFIG_MAPPING:
        raise CompError(f"{cfg_file}: unknown model_type '{model_type}'")
    _check_model_type(str(cfg_file), model_type, spec)
    if not any((p / f).exists() for f in TOKENIZER_FILES):
        names = ", ".join(TOKENIZER_FILES)
        raise CompError(f"{p}: model weights but no tokenizer files ({names}); save the "
                        "tokenizer into the same dir with save_pretrained")


def _check_model_type(where: str, model_type: str, spec: BackboneSpec) -> None:
    if model_type not in spec.model_types:
        raise CompError(f"{where}: model_type '{model_type}' does not fit backbone kind "
                        f"'{spec.kind}' (expects {' or '.join(spec.model_types)})")


def load_backbone(kind: str, path: str | Path) -> Backbone:
    """Load a backbone of a registered kind from a local save_pretrained dir or a hub id.

    Both go through `from_pretrained(path)`: AutoTokenizer (or the kind's tokenizer class) and
    AutoModel. The model comes back in eval mode.

    Args:
        kind: a registered kind (see `backbone_kinds()`).
        path: a local dir or a hub id.

    Returns:
        The Backbone.
    """
    spec = backbone_spec(kind)
    p = Path(path)
    local = p.exists()
    if local:
        _check_local_dir(p, spec)
    tok_cls = spec.tokenizer_cls or AutoTokenizer
    where = str(p) if local else f"'{path}'"
    try:
        with quiet_transformers():
            tokenizer = tok_cls.from_pretrained(str(path))
            model, info = AutoModel.from_pretrained(str(path), output_loading_info=True)
    except (OSError, ValueError, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if local else " (not a local dir, and the model hub is not reachable offline?)"
        raise CompError(f"{where}: cannot load backbone '{kind}'{hint}: {msg}") from None
    if not local:
        _check_model_type(where, model.config.model_type, spec)
    # pretraining heads left over in the checkpoint are expected; weights that are missing and
    # therefore random are worth a line
    missing = list(info.get("missing_keys", []))
    if missing:
        log(f"backbone {kind} from {where}: {len(missing)} weights not in the checkpoint were "
            f"initialised randomly ({', '.join(sorted(missing)[:4])}...)")
    model.eval()
    return Backbone(spec, tokenizer, model)


create_backbone = load_backbone


def vocab_coverage(backbone: Backbone, texts: list[str], warn_below: float = 0.95,
                   batch_size: int = 256) -> float:
    """Share of non-space characters of `texts` covered by known (non-unknown) tokens.

    Warns (UserWarning, with the number) when the share is below `warn_below`: a backbone whose
    vocabulary misses the competition's characters feeds the head little but unknown tokens.
    """
    tok = backbone.tokenizer
    unk_id = tok.unk_token_id
    total = unknown = 0
    for lo in range(0, len(texts), batch_size):
        chunk = list(texts[lo:lo + batch_size])
        enc = backbone.encode(chunk, max_len=max(8, max(len(t) for t in chunk) * 2 + 8))
        ids, off = enc["inputs"]["input_ids"], enc["offsets"]
        for b, text in enumerate(chunk):
            total += sum(not c.isspace() for c in text)
            for t in torch.nonzero(ids[b] == unk_id).flatten().tolist():
                s, e = off[b, t].tolist()
                if s >= 0:
                    unknown += sum(not c.isspace() for c in text[s:e])
    cov = 1.0 - unknown / total if total else 1.0
    if cov < warn_below:
        warnings.warn(f"backbone '{backbone.kind}': vocabulary covers {cov:.1%} of the text's "
                      f"characters (< {warn_below:.0%}); its tokens will be mostly unknown",
                      UserWarning, stacklevel=2)
    return cov
