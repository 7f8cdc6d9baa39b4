"""`Backbone`: tokenizer + encoder with the contract the fusion model builds on; loading."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer

from comp.core.utils import CompError, log
from comp.data.competition import PAIR_SEP, split_pair
from comp.nn.align import cut_head_tail, pair_budgets
from comp.nn.backbones.offsets import align_tokens, clean_offsets
from comp.nn.backbones.registry import TOKENIZER_FILES, BackboneSpec, backbone_kinds, backbone_spec
from comp.nn.backbones.wordseg import save_tokenizer


class Backbone(nn.Module):
    """A pretrained encoder with its tokenizer: texts -> token states + offsets + CLS vector."""

    def __init__(self, spec: BackboneSpec, tokenizer: Any, model: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.kind = spec.kind
        self.tokenizer = tokenizer
        self.model = model
        self.source = ""  # the folder or hub id it was loaded from (load_backbone)
        cfg = model.config
        self.hidden_size = int(getattr(cfg, "d_model", None) or cfg.hidden_size)
        # sentencepiece's lone word-boundary piece "▁" covers no character of its own
        self._blank_ids = torch.tensor(sorted(i for t, i in tokenizer.get_vocab().items()
                                              if t and not t.strip("▁ ")), dtype=torch.long)

    def encode(self, texts: list[str], max_len: int) -> dict[str, Tensor | dict[str, Tensor]]:
        """Tokenize a batch, padded to its longest member and cut to `max_len` tokens; a batch
        of pair texts (`a + PAIR_SEP + b`) goes to `encode_pairs`.

        Returns:
            {'inputs': model inputs (input_ids, attention_mask, token_type_ids if used), each
            (B, T) int64; 'offsets': (B, T, 2) int64 [start, end) character span in the
            original text, (-1, -1) for special and pad tokens}.
        """
        texts = list(texts)
        if any(PAIR_SEP in t for t in texts):
            return self.encode_pairs(texts, max_len)
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
        offsets = clean_offsets(texts, offsets, special, inputs["attention_mask"])
        return {"inputs": inputs, "offsets": offsets}

    def encode_pairs(self, texts: list[str], max_len: int, head_frac: float = 0.5
                     ) -> dict[str, Tensor | dict[str, Tensor]]:
        """Tokenize pair texts `a + PAIR_SEP + b` (comp.data) as the tokenizer's own pairs.

        `tokenizer(a, b)` adds the model's special tokens and segment layout: token_type_ids
        0 / 1 for BERT-like models, XLNet's segments with its summary token last, no token
        types for e5 / XLM-R (`<s> a </s></s> b </s>`). Each side keeps its share of the
        `max_len` - special tokens budget (comp.nn.align.pair_budgets); a longer side keeps its
        head and tail tokens (`head_frac` from the head). Offsets index the pair text, so side
        b's characters start after the separator and every token lands on its own side of the
        character grid.

        Returns:
            What `encode` returns.
        """
        tok = self.tokenizer
        if not getattr(tok, "is_fast", False):
            raise CompError(f"backbone '{self.kind}': text pairs need a fast tokenizer (offsets "
                            f"and sequence ids); {type(tok).__name__} is not one")
        sides = [split_pair(t) for t in texts]
        budget = max(2, max_len - tok.num_special_tokens_to_add(pair=True))
        alone = tok([x for ab in sides for x in ab], add_special_tokens=False,
                    return_offsets_mapping=True)["offset_mapping"]
        cuts, shifts = [], []  # per row: the cut sides; (head_end, gap, start) per side
        for i, (a, b) in enumerate(sides):
            keep = pair_budgets(len(alone[2 * i]), len(alone[2 * i + 1]), budget)
            ca, ha, ga = cut_head_tail(a, alone[2 * i], keep[0], head_frac)
            cb, hb, gb = cut_head_tail(b, alone[2 * i + 1], keep[1], head_frac)
            cuts.append((ca, cb))
            shifts.append(((ha, ga, 0), (hb, gb, len(a) + 1)))  # b starts after PAIR_SEP
        enc = tok([a for a, _ in cuts], [b for _, b in cuts], padding=True,
                  truncation="longest_first", max_length=max_len, return_offsets_mapping=True,
                  return_special_tokens_mask=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping").long()  # (B, T, 2) within each cut side
        for i in range(len(texts)):
            seq = torch.tensor([-1 if s is None else s for s in enc.sequence_ids(i)])  # (T,)
            for side, (head_end, gap, start) in enumerate(shifts[i]):
                on = seq == side
                o = offsets[i][on]  # (t, 2)
                # a start at or past the cut moves by the gap; an end past it too
                o[:, 0] += torch.where(o[:, 0] >= head_end, gap, 0) + start
                o[:, 1] += torch.where(o[:, 1] > head_end, gap, 0) + start
                offsets[i][on] = o
        special = enc.pop("special_tokens_mask").bool()
        special |= torch.isin(enc["input_ids"], self._blank_ids)
        inputs = {k: v.long() for k, v in enc.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
        offsets = clean_offsets(texts, offsets, special, inputs["attention_mask"])
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
        return states, self.summary(states, inputs.get("attention_mask"))

    def summary(self, states: Tensor, mask: Tensor | None) -> Tensor:
        """The CLS / summary vector (B, H) of (B, T, H) states: first token, or last real one."""
        if self.spec.cls == "first":
            return states[:, 0]
        # last real token under any padding side: the highest position with mask 1
        if mask is None:
            return states[:, -1]
        t = mask.shape[1]
        pos = torch.arange(t, device=mask.device).expand_as(mask)  # (B, T)
        last = torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(dim=1).values  # (B,)
        return states[torch.arange(states.shape[0], device=states.device), last]

    # -- split at a layer: a frozen bottom computed once, a trained top (train.unfreeze_top) --

    def _stack(self) -> tuple[nn.Module, Any]:
        """(embeddings, layer list) of a BERT-style encoder; others cannot be split here."""
        m = self.model
        layers = getattr(getattr(m, "encoder", None), "layer", None)
        if getattr(m, "embeddings", None) is None or layers is None:
            raise CompError(f"train.unfreeze_top: backbone kind '{self.kind}' "
                            f"({type(m).__name__}) has no BERT layer stack to split; use "
                            "train.unfreeze_top = 0 for it")
        return m.embeddings, layers

    @property
    def splittable(self) -> bool:
        """Whether the encoder is a BERT-style layer stack `bottom_states`/`top_states` split."""
        m = self.model
        return getattr(m, "embeddings", None) is not None and \
            getattr(getattr(m, "encoder", None), "layer", None) is not None

    @property
    def n_layers(self) -> int:
        """Transformer layers in the stack."""
        return len(self._stack()[1])

    def bottom_modules(self, cut: int) -> list[nn.Module]:
        """Everything below layer `cut`: embeddings and layers 0..cut-1."""
        emb, layers = self._stack()
        return [emb, *layers[:cut]]

    def _layer_mask(self, hidden: Tensor, attention_mask: Tensor) -> Any:
        from transformers.masking_utils import create_bidirectional_mask

        # the mask the model's own forward builds (its attention implementation decides)
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)

    def bottom_states(self, inputs: dict[str, Tensor], cut: int) -> Tensor:
        """Hidden states after layer `cut` - 1 (B, T, H); cut = 0 gives the embeddings."""
        emb, layers = self._stack()
        h = emb(input_ids=inputs["input_ids"], token_type_ids=inputs.get("token_type_ids"))
        mask = self._layer_mask(h, inputs["attention_mask"])
        for layer in layers[:cut]:
            h = layer(h, mask)
        return h

    def top_states(self, hidden: Tensor, attention_mask: Tensor, cut: int) -> Tensor:
        """Layers cut.. on (B, T, H) states from `bottom_states`: the last hidden states."""
        _, layers = self._stack()
        mask = self._layer_mask(hidden, attention_mask)
        for layer in layers[cut:]:
            hidden = layer(hidden, mask)
        return hidden

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
    if model_type in spec.model_types:
        return
    fits = [k for k in backbone_kinds() if model_type in backbone_spec(k).model_types]
    if fits:
        raise CompError(f"{where}: model_type '{model_type}' does not fit backbone kind "
                        f"'{spec.kind}' (expects {' or '.join(spec.model_types)}); "
                        f"use kind = \"{fits[0]}\"")
    raise CompError(f"{where}: model_type '{model_type}' has no backbone kind in the registry "
                    f"(kinds: {', '.join(backbone_kinds())}); register one with "
                    "@register_backbone in comp/nn/backbones/registry.py")


def _checkpoint_file(path: str, name: str, local: bool) -> str | None:
    """A file of a local dir or hub repo (from the cache, or fetched when online), or None."""
    if local:
        f = Path(path) / name
        return str(f) if f.exists() else None
    from transformers.utils import cached_file

    try:
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):
        return None


def _vocab_problem(tok: Any, n_embeddings: int) -> str:
    """Why a tokenizer cannot feed a model with `n_embeddings` rows ('' when it can)."""
    n = int(tok.vocab_size)
    if n > n_embeddings:
        return f"{n} tokens but the model embeds only {n_embeddings} (ids would overflow)"
    if n < n_embeddings // 2:
        return f"{n} tokens for the model's {n_embeddings} embeddings (wrong vocabulary files)"
    return ""


def _fallback_tokenizer(spec: BackboneSpec, path: str, local: bool, model_type: str
                        ) -> tuple[Any, str] | None:
    """The tokenizer a checkpoint's own files imply when AutoTokenizer gets it wrong.

    A sentencepiece `spiece.model` is read with sentencepiece's protobuf classes; a
    WordPiece `vocab.txt` is a BertTokenizer (Chinese ALBERTs, WoBERT's own tokenizer class).
    """
    from transformers import AlbertTokenizer, BertTokenizer, XLNetTokenizer

    from comp.nn.backbones.spiece import spiece_tokenizer

    sp_cls = {"xlnet": XLNetTokenizer, "albert": AlbertTokenizer}.get(model_type)
    spm = _checkpoint_file(path, "spiece.model", local) if sp_cls else None
    if spm is not None:
        return spiece_tokenizer(sp_cls, spm), "spiece.model"
    if _checkpoint_file(path, "vocab.txt", local) is not None:
        cls = spec.tokenizer_cls if isinstance(spec.tokenizer_cls, type) and issubclass(
            spec.tokenizer_cls, BertTokenizer) else BertTokenizer
        return cls.from_pretrained(path), "vocab.txt"
    return None


def _saved_tokenizer_class(path: str, local: bool) -> str:
    """`tokenizer_class` named by the checkpoint's tokenizer_config.json ('' when none)."""
    f = _checkpoint_file(path, "tokenizer_config.json", local)
    if f is None:
        return ""
    try:
        return str(json.loads(Path(f).read_text(encoding="utf-8")).get("tokenizer_class") or "")
    except (OSError, json.JSONDecodeError, AttributeError):
        return ""


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load_tokenizer(spec: BackboneSpec, path: str, model: nn.Module, where: str,
                   local: bool = True) -> Any:
    """The kind's tokenizer for a checkpoint, checked against the model's embedding table.

    `from_pretrained(path)` with the kind's tokenizer class (AutoTokenizer by default) first.
    When that fails or gives a vocabulary that cannot belong to the model (an ALBERT with a
    BERT vocab.txt and no spiece.model comes back as a near-empty AlbertTokenizer), the
    checkpoint's own vocabulary file decides (see `_fallback_tokenizer`), with a log line.

    Raises:
        CompError: no tokenizer that fits the model can be built from the checkpoint.
    """
    n_emb = int(model.get_input_embeddings().num_embeddings)
    model_type = str(model.config.model_type)
    tok_cls = spec.tokenizer_cls or AutoTokenizer
    try:
        tok, error = tok_cls.from_pretrained(path), None
        problem = _vocab_problem(tok, n_emb)
    except (OSError, ValueError, KeyError, ImportError, TypeError) as e:
        tok, error, problem = None, e, _first_line(e)
    if not problem:
        return tok
    found = _fallback_tokenizer(spec, path, local, model_type)
    if found is not None and _vocab_problem(found[0], n_emb):
        raise CompError(f"{where}: the tokenizer from {found[1]} has "
                        f"{_vocab_problem(found[0], n_emb)}")
    if found is not None:
        alt, file = found
        if error is None:
            why = f"{tok_cls.__name__} gave {problem}"
        else:
            why = f"{tok_cls.__name__} failed ({problem[:120]})"
        hint = ""
        if _saved_tokenizer_class(path, local).startswith("WoBert") and spec.kind != "wobert":
            hint = "; its words need jieba: use kind = \"wobert\""
        log(f"backbone {spec.kind} from {where}: {why}; using {type(alt).__name__} built from "
            f"{file} ({alt.vocab_size} tokens){hint}")
        return alt
    if error is not None:
        raise error
    raise CompError(f"{where}: tokenizer {type(tok).__name__} has {problem}")


def load_backbone(kind: str, path: str | Path) -> Backbone:
    """Load a backbone of a registered kind from a local save_pretrained dir or a hub id.

    Both go through `from_pretrained(path)`: AutoModel, then AutoTokenizer (or the kind's
    tokenizer class) checked against the model's vocabulary, with the checkpoint's own
    vocabulary files as the fallback (see `load_tokenizer`). The model comes back in eval mode.

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
    where = str(p) if local else f"'{path}'"
    try:
        with quiet_transformers():
            model, info = AutoModel.from_pretrained(str(path), output_loading_info=True)
            if not local:
                _check_model_type(where, model.config.model_type, spec)
            tokenizer = load_tokenizer(spec, str(path), model, where, local)
    except (OSError, ValueError, KeyError, ImportError) as e:
        hint = "" if local else " (not a local dir, and the model hub is not reachable offline?)"
        raise CompError(f"{where}: cannot load backbone '{kind}'{hint}: {_first_line(e)}"
                        ) from None
    # pretraining heads left over in the checkpoint are expected; weights that are missing and
    # therefore random are worth a line. The pooler is not among them: forward reads the
    # hidden states only, and MLM-only checkpoints (Chinese ALBERTs) ship none.
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
    if missing:
        log(f"backbone {kind} from {where}: {len(missing)} weights not in the checkpoint were "
            f"initialised randomly ({', '.join(sorted(missing)[:4])}...)")
    model.eval()
    b = Backbone(spec, tokenizer, model)
    b.source = str(path)
    return b


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
                      f"characters (< {warn_below:.0%}); the rest reach the model as unknown "
                      "tokens", UserWarning, stacklevel=2)
    return cov


def check_vocab_coverage(backbone: Backbone, texts: list[str], where: str,
                         fail_below: float = 0.5, warn_below: float = 0.95,
                         sample: int = 2000) -> float:
    """Log a backbone's vocabulary coverage of a competition; fail when it misses most of it.

    A checkpoint whose vocabulary misses most characters (an English vocab.txt on Chinese text,
    tokenizer files of another model) trains without error but learns from unknown tokens, so
    it is stopped before training. Between `fail_below` and `warn_below` it warns.

    Args:
        backbone: the loaded backbone.
        texts: the competition's texts; an evenly spaced `sample` of them is tokenized.
        where: names the backbone in messages, e.g. "model.backbones[0] (hfl/...)".

    Returns:
        The coverage in [0, 1].

    Raises:
        CompError: coverage below `fail_below`.
    """
    texts = list(texts)
    step = max(1, len(texts) // sample) if sample > 0 else 1
    picked = [t for t in texts[::step] if t and not t.isspace()]
    cov = vocab_coverage(backbone, picked, warn_below=warn_below) if picked else 1.0
    log(f"{where}: vocabulary covers {cov:.1%} of the text's characters")
    if cov < fail_below:
        raise CompError(f"{where}: vocabulary covers only {cov:.1%} of the competition's "
                        f"characters (< {fail_below:.0%}); the checkpoint's tokenizer does not "
                        "fit this text (another language, or another model's vocabulary files)")
    return cov
