"""Fusion trainer speed, measured side by side in one run on the sentiment data.

1. Phase-1 epoch on cached frozen-backbone features vs recomputing the backbones every batch,
   the median of three epochs per arm, for backbones of the sizes users cache: random-init BERTs
   shaped like hfl/rbt3 (3 layers x 768), the smallest published Chinese checkpoint in wide use,
   and like the base-size checkpoints of recipes/gpu (12 layers x 768). Speed does not depend on
   the weights. `cache_speedup` on the last line is the smaller of the two. For reference also
   the tiny in-task backbones of the default run (one + biLSTM as in
   recipes/fusion_bert_bilstm.toml; the five of recipes/fusion_all.toml without vectors): a
   2 x 128 backbone's forward pass costs about what the head's training step costs, so no cache
   can save more than about 2-3x there.
2. Training rows/s: the fusion trainer (one backbone, phase 2: everything trains) vs Hugging
   Face fine-tuning of AutoModelForSequenceClassification on the same backbone and rows.
   transformers' Trainer needs `accelerate`, which is not installed, so the HF arm is the plain
   loop Trainer runs: shuffled batches padded to their longest row (DataCollatorWithPadding),
   AdamW, linear schedule, gradient clipping.
3. Inference rows/s on the test set: length-sorted batches vs every row padded to the fixed
   maximum length (what a static-shape pipeline does); unsorted dynamic padding for reference.
   Each arm: the median of three passes after an untimed one.
Tokenization is a one-time cost per member (comp.nn.fusion.TokenMemo; datasets.map for HF), so it
is done before the timers start in every arm.

Tiny backbones come from models/<kind>_tiny when present, else random-init ones of the same size
are built in a temp dir (speed does not depend on pretraining). Last line:
    cache_speedup=<x> trainer_ratio=<x> bucket_speedup=<x>

    .venv/bin/python bench/fusion_speed.py [--rows 1500] [--threads N] [--shape-rows 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("COMP_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from comp.config.schema import BackboneConfig, PretrainConfig
from comp.data.competition import load_competition  # noqa: E402
from comp.data.recipes import load_recipe  # noqa: E402
from comp.nn.fusion import FeatureCache, FusionModel, build_fusion  # noqa: E402
from comp.nn.rows import make_rows  # noqa: E402
from comp.nn.trainer import fit, predict  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("bert", "roberta_wwm", "wobert", "xlnet", "albert")


def backbone_dirs(kinds, tmp: Path) -> dict[str, str]:
    """models/<kind>_tiny, or a random-init tiny backbone of the same shape in `tmp`."""
    from comp.nn.pretrain import run_pretrain

    out = {}
    for kind in kinds:
        real = ROOT / "models" / f"{kind}_tiny"
        if (real / "config.json").exists():
            out[kind] = str(real)
            continue
        cfg = PretrainConfig(kind=kind, out=str(tmp / kind), hidden=128, layers=2, heads=2,
                             intermediate=512, vocab_size=6000, steps=0, max_len=128,
                             corpus=(str(ROOT / "data" / "sentiment"),))
        out[kind] = str(run_pretrain(cfg))
        print(f"  (random-init {kind} backbone: models/{kind}_tiny not found)", flush=True)
    return out


# random-init BERTs shaped like published checkpoints: (label, layers, hidden, heads, intermediate)
CHECKPOINT_SHAPES = (("rbt3-size bert (3 x 768)", 3, 768, 12, 3072),
                     ("base-size bert (12 x 768)", 12, 768, 12, 3072))


def shaped_backbone(tmp: Path, layers: int, hidden: int, heads: int, intermediate: int) -> str:
    """A random-init BERT of the given shape with an in-task tokenizer."""
    from comp.nn.pretrain import run_pretrain

    cfg = PretrainConfig(kind="bert", out=str(tmp / f"bert_{layers}x{hidden}"), hidden=hidden,
                         layers=layers, heads=heads, intermediate=intermediate, vocab_size=6000,
                         steps=0, max_len=128, corpus=(str(ROOT / "data" / "sentiment"),))
    return str(run_pretrain(cfg))


def tokenize(model: FusionModel, texts) -> float:
    """Fill the model's token memo (a one-time cost per member); returns seconds."""
    t = time.perf_counter()
    memo = getattr(model.tokens, "memo", model.tokens)
    for j, (b, n) in enumerate(zip(model.backbones, model.max_lens)):
        memo.encode(j, b, list(texts), n)
    return time.perf_counter() - t


def rows_for(model: FusionModel, texts, labels, n_classes):
    rows = make_rows(texts, model.cfg, np.eye(n_classes, dtype=np.float32)[labels])
    rows.vec_ids = model.vector_ids(rows.texts)
    return rows


def phase1_epoch(recipe, comp, idx, val_idx, use_cache: bool,
                 epochs: int = 3) -> tuple[float, float]:
    """Seconds of a phase-1 epoch (train + its validation pass), the median of `epochs` run
    back to back, as a recipe's frozen epochs run fold after fold in one process; the first
    epoch's one-time warm-up then counts in neither arm. Cache build time is returned apart."""
    torch.manual_seed(0)
    model = build_fusion(recipe, comp.n_classes)
    texts = [comp.train_texts[i] for i in idx]
    train = rows_for(model, texts, comp.labels[idx], comp.n_classes)
    val = rows_for(model, [comp.train_texts[i] for i in val_idx], comp.labels[val_idx],
                   comp.n_classes)
    cfg = replace(recipe.train, epochs_frozen=epochs, epochs_unfrozen=0, patience=0)
    build = 0.0
    cache = None
    if not use_cache:  # steady state: tokens are memoised after the first epoch anyway
        tokenize(model, train.texts + val.texts)
    if use_cache:
        t = time.perf_counter()
        cache = FeatureCache(model.cls_dims)
        model.freeze_backbones(True)
        cache.ensure(model, train.texts + val.texts, cfg.eval_batch_size)
        build = time.perf_counter() - t
    res = fit(model, train, val, comp.labels[val_idx], cfg, cache=cache, name="bench")
    return float(np.median([h["seconds"] for h in res.history])), build


def fusion_rows_per_s(recipe, comp, idx, val_idx) -> float:
    torch.manual_seed(0)
    model = build_fusion(recipe, comp.n_classes)
    train = rows_for(model, [comp.train_texts[i] for i in idx], comp.labels[idx],
                     comp.n_classes)
    val = rows_for(model, [comp.train_texts[i] for i in val_idx], comp.labels[val_idx],
                   comp.n_classes)
    cfg = replace(recipe.train, epochs_frozen=0, epochs_unfrozen=1, patience=0)
    tok_s = tokenize(model, train.texts + val.texts)
    print(f"  (fusion: tokenizing once per member took {tok_s:.1f} s, not timed below)",
          flush=True)
    res = fit(model, train, val, comp.labels[val_idx], cfg, name="bench")
    return len(idx) / res.history[0]["train_seconds"]  # the HF arm does not evaluate


def hf_rows_per_s(path: str, recipe, comp, idx) -> float:
    """Plain HF fine-tuning (what Trainer does without accelerate) on the same rows."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        get_linear_schedule_with_warmup,
    )
    from transformers.utils import logging as hf_logging

    from comp.nn.align import truncate

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=comp.n_classes)
    m, bb = recipe.model, recipe.model.backbones[0]
    texts = [truncate(comp.train_texts[i], m.max_chars, m.head_frac, m.truncation) for i in idx]
    enc = tok(texts, truncation=True, max_length=bb.max_len)  # pre-tokenized, like datasets.map
    t0 = time.perf_counter()
    feats = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
              **({"token_type_ids": enc["token_type_ids"][i]} if "token_type_ids" in enc else {}),
              "labels": int(comp.labels[j])} for i, j in enumerate(idx)]
    collate = DataCollatorWithPadding(tok)
    bs = recipe.train.batch_size
    order = np.random.default_rng(0).permutation(len(feats))
    batches = [order[i:i + bs] for i in range(0, len(order), bs)]
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.train.lr_backbone, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * len(batches)), len(batches))
    model.train()
    for b in batches:
        batch = collate([feats[i] for i in b])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return len(idx) / (time.perf_counter() - t0)


class FixedPadTokens:
    """Wraps the model's TokenMemo: every batch padded to the backbone's max_len."""

    def __init__(self, memo) -> None:
        self.memo = memo

    def encode(self, j: int, b, texts, max_len: int) -> dict:
        out = self.memo.encode(j, b, list(texts), max_len)
        pad = max_len - out["inputs"]["input_ids"].shape[1]
        if pad > 0:
            ext = (pad, 0) if getattr(b.tokenizer, "padding_side", "right") == "left" else (0, pad)
            fill = {"input_ids": b.tokenizer.pad_token_id, "attention_mask": 0,
                    "token_type_ids": getattr(b.tokenizer, "pad_token_type_id", 0)}
            out["inputs"] = {k: torch.nn.functional.pad(v, ext, value=fill.get(k, 0))
                             for k, v in out["inputs"].items()}
            off = out["offsets"].permute(0, 2, 1)  # (B, 2, T)
            out["offsets"] = torch.nn.functional.pad(off, ext, value=-1).permute(0, 2, 1)
        return out


def fixed_padding(model: FusionModel) -> FusionModel:
    """Pad every batch to max_chars on the grid and to max_len tokens in every backbone."""
    prepare = model.prepare
    model.tokens = FixedPadTokens(model.tokens)
    model.prepare = lambda texts, vec_ids=None, backbones=True, pad_to=None: prepare(
        texts, vec_ids, backbones, pad_to=model.cfg.max_chars)
    return model


def inference_rows_per_s(recipe, comp, mode: str, reps: int = 3) -> float:
    """Rows/s of predicting the test set: the median of `reps` passes after one untimed pass
    (which pays one-time costs, e.g. oneDNN primitives built per new batch shape, as a
    member's first prediction does once for all its folds and epochs)."""
    torch.manual_seed(0)
    model = build_fusion(recipe, comp.n_classes)
    if mode == "fixed":
        fixed_padding(model)
    rows = rows_for(model, comp.test_texts, np.zeros(len(comp.test_texts), dtype=np.int64),
                    comp.n_classes)
    tokenize(model, rows.texts)
    seconds = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        predict(model, rows, recipe.train.eval_batch_size, bucket=(mode == "sorted"))
        seconds.append(time.perf_counter() - t)
    return len(rows) / float(np.median(seconds[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1500, help="training rows per measurement")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--shape-rows", type=int, default=300,
                    help="training rows of the checkpoint-shaped cache arms (a per-epoch ratio "
                         "does not depend on the row count; a 12 x 768 forward pass over every "
                         "row, several times, is slow on a CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    comp = load_competition(load_recipe(ROOT / "recipes" / "fusion_bert_bilstm.toml").data)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(comp.train_texts))
    idx, val_idx = np.sort(perm[:args.rows]), np.sort(perm[args.rows:args.rows + 256])
    print(f"sentiment: {args.rows} training rows, {len(val_idx)} validation rows, "
          f"{len(comp.test_texts)} test rows; torch threads {torch.get_num_threads()}",
          flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        dirs = backbone_dirs(KINDS, Path(tmp))
        one = load_recipe(ROOT / "recipes" / "fusion_bert_bilstm.toml")
        one = replace(one, model=replace(one.model, backbones=(
            replace(one.model.backbones[0], path=dirs["bert"]),)))
        allr = load_recipe(ROOT / "recipes" / "fusion_all.toml")
        five = tuple(BackboneConfig(b.kind, dirs[b.kind], b.max_len)
                     for b in allr.model.backbones)
        allr = replace(allr, model=replace(allr.model, backbones=five, vectors=()))

        print("\n1. phase-1 epoch: cached frozen features vs recomputed backbones", flush=True)
        speed = {}
        sidx, sval = idx[:args.shape_rows], val_idx[:max(32, args.shape_rows // 6)]
        arms = []
        for label, layers, hidden, heads, inter in CHECKPOINT_SHAPES:
            path = shaped_backbone(Path(tmp), layers, hidden, heads, inter)
            recipe = replace(one, model=replace(one.model, backbones=(
                replace(one.model.backbones[0], path=path),)))
            arms.append((f"{label} + bilstm", recipe, sidx, sval,
                         f"random init, {len(sidx)} rows"))
        arms += [("1 tiny backbone (bert) + bilstm", one, idx, val_idx, f"{len(idx)} rows"),
                 ("5 tiny backbones + bilstm_cnn", allr, idx, val_idx, f"{len(idx)} rows")]
        for label, recipe, tr, va, what in arms:
            live, _ = phase1_epoch(recipe, comp, tr, va, use_cache=False)
            cached, build = phase1_epoch(recipe, comp, tr, va, use_cache=True)
            speed[label] = live / cached
            print(f"  {label:34s} recomputed {live:7.1f} s   cached {cached:6.1f} s   "
                  f"speedup {live / cached:6.2f}x   ({what}; cache built once in {build:.1f} s, "
                  f"reused by every epoch and fold)", flush=True)

        print("\n2. training rows/s, one backbone, everything trains", flush=True)
        hf = hf_rows_per_s(dirs["bert"], one, comp, idx)
        ours = fusion_rows_per_s(one, comp, idx, val_idx)
        print(f"  HF AutoModelForSequenceClassification loop (Trainer needs accelerate, not "
              f"installed): {hf:7.1f} rows/s", flush=True)
        print(f"  fusion trainer (bert + bilstm head, bucketed):            {ours:7.1f} rows/s"
              f"   ratio {ours / hf:.2f}", flush=True)

        print("\n3. inference rows/s on the test set (bert + bilstm)", flush=True)
        inf = {m: inference_rows_per_s(one, comp, m) for m in ("fixed", "unsorted", "sorted")}
        for m, label in (("fixed", "fixed max-length padding"),
                         ("unsorted", "dynamic padding, original order"),
                         ("sorted", "length-sorted batches")):
            print(f"  {label:34s} {inf[m]:8.1f} rows/s", flush=True)

    shaped = [f"{label} + bilstm" for label, *_ in CHECKPOINT_SHAPES]
    cache_speedup = min(speed[k] for k in shaped)
    print(f"\n(cache_speedup below: the smaller of the checkpoint-shaped arms; the tiny in-task "
          f"backbones, whose forward pass costs about what the head costs: "
          f"{speed['1 tiny backbone (bert) + bilstm']:.2f}x for one, "
          f"{speed['5 tiny backbones + bilstm_cnn']:.2f}x for five)")
    print(f"cache_speedup={cache_speedup:.2f} trainer_ratio={ours / hf:.2f} "
          f"bucket_speedup={inf['sorted'] / inf['fixed']:.2f}")


if __name__ == "__main__":
    main()
