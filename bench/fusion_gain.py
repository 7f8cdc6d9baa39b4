"""Does fusing five backbones and three kinds of vectors beat one backbone? Side by side.

Two arms on the same rows, folds and training budget:
  single: recipes/fusion_bert_bilstm.toml  (one BERT, biLSTM head)
  fusion: recipes/fusion_all.toml          (BERT, RoBERTa-wwm, WoBERT, XLNet, ALBERT + char,
                                            word, bigram vectors, biLSTM + TextCNN head)
To fit a CPU budget both arms train on a seeded sample of the sentiment training set (its own
5-fold table) and run the first `--folds` folds; the score is the accuracy over those folds'
out-of-fold rows. Missing backbones (models/<kind>_tiny) are pretrained with
recipes/pretrain/<kind>_tiny.toml when present (else PretrainConfig defaults); missing vectors
(models/w2v-{char,word,bigram}.kv) are trained with comp.nn.vectors. Last line:
    single_oof=<acc> fusion_oof=<acc>

    .venv/bin/python bench/fusion_gain.py [--rows 3000] [--folds 2] [--epochs-frozen 2]
                                          [--epochs-unfrozen 1] [--threads N]
"""

from __future__ import annotations

import argparse
import csv
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

from comp.config.schema import DataConfig, PretrainConfig
from comp.data.competition import load_competition
from comp.data.folds import load_folds  # noqa: E402
from comp.data.recipes import load_recipe  # noqa: E402
from comp.nn.trainer import train_fusion  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("bert", "roberta_wwm", "wobert", "xlnet", "albert")


def ensure_models() -> None:
    """Pretrain missing tiny backbones and train missing vectors (cached under models/)."""
    from comp.nn.pretrain import run_pretrain
    from comp.nn.vectors import train_vectors

    for kind in KINDS:
        out = ROOT / "models" / f"{kind}_tiny"
        if (out / "config.json").exists():
            continue
        spec = ROOT / "recipes" / "pretrain" / f"{kind}_tiny.toml"
        cfg = (load_recipe(spec).pretrain if spec.exists()
               else PretrainConfig(kind=kind, out=str(out)))
        print(f"pretraining {kind} -> {cfg.out} (once)", flush=True)
        run_pretrain(replace(cfg, out=str(out)))
    comp = load_competition(DataConfig(dir=str(ROOT / "data" / "sentiment")))
    for kind in ("char", "word", "bigram"):
        path = ROOT / "models" / f"w2v-{kind}.kv"
        if not path.exists():
            print(f"training {kind} vectors -> {path} (once)", flush=True)
            train_vectors(comp.train_texts + comp.test_texts, kind, path)


def sample_competition(out: Path, rows: int, n_test: int, seed: int) -> Path:
    """A seeded sample of the sentiment training rows as its own competition dir."""
    src = load_competition(DataConfig(dir=str(ROOT / "data" / "sentiment")))
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(src.train_texts))[:rows])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        w.writerows((src.train_ids[i], src.train_texts[i], src.classes[src.labels[i]])
                    for i in idx)
    with open(out / "test.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((src.test_ids[i], src.test_texts[i]) for i in range(n_test))
    return out


def arm(recipe_file: str, data_dir: Path, runs: Path, folds: list[int], epochs: tuple[int, int],
        extra: list[str] = ()) -> tuple[float, list[float], float]:
    """Train one arm on `folds`; (accuracy over their OOF rows, per-fold scores, seconds)."""
    overrides = [f"data.dir={data_dir}", f"runs_dir={runs}",
                 f"train.epochs_frozen={epochs[0]}", f"train.epochs_unfrozen={epochs[1]}",
                 *extra]
    recipe = load_recipe(ROOT / "recipes" / recipe_file, overrides)
    recipe = replace(recipe, model=replace(recipe.model, vectors_dir=str(ROOT / "models"),
                                           backbones=tuple(
        replace(b, path=str(ROOT / b.path)) for b in recipe.model.backbones)))
    t = time.time()
    train_fusion(recipe, folds_to_run=folds)
    seconds = time.time() - t
    comp = load_competition(recipe.data)
    fold_of = load_folds(comp, recipe.data)
    hits, per_fold = [], []
    for f in folds:
        val = np.flatnonzero(fold_of == f)
        proba = np.load(recipe.run_dir / f"fold{f}" / "val_proba.npy")
        ok = proba.argmax(1) == comp.labels[val]
        hits.append(ok)
        per_fold.append(float(ok.mean()))
    return float(np.concatenate(hits).mean()), per_fold, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3000, help="sampled training rows")
    ap.add_argument("--folds", type=int, default=2, help="folds run (of 5)")
    ap.add_argument("--epochs-frozen", type=int, default=2)
    ap.add_argument("--epochs-unfrozen", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--fusion-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the fusion arm only, e.g. model.proj_dim=128 "
                         "(repeatable)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    ensure_models()
    folds = list(range(args.folds))
    epochs = (args.epochs_frozen, args.epochs_unfrozen)
    with tempfile.TemporaryDirectory() as tmp:
        data = sample_competition(Path(tmp) / "sentiment_sample", args.rows, 200, args.seed)
        print(f"{args.rows} sampled sentiment rows, folds {folds} of 5, epochs frozen/unfrozen "
              f"{epochs[0]}/{epochs[1]} for both arms"
              + (f"; fusion arm: {' '.join(args.fusion_set)}" if args.fusion_set else ""),
              flush=True)
        results = {}
        for name, recipe_file in (("single", "fusion_bert_bilstm.toml"),
                                  ("fusion", "fusion_all.toml")):
            acc, per_fold, sec = arm(recipe_file, data, Path(tmp) / "runs", folds, epochs,
                                     args.fusion_set if name == "fusion" else [])
            results[name] = acc
            folds_txt = " ".join(f"{s:.4f}" for s in per_fold)
            print(f"  {name:6s} {recipe_file:26s} OOF accuracy {acc:.4f}  (folds {folds_txt}; "
                  f"{sec:.0f} s)", flush=True)
    print(f"single_oof={results['single']:.4f} fusion_oof={results['fusion']:.4f}")


if __name__ == "__main__":
    main()
