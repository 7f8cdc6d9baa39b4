"""Tuning a tiny fusion member: does a pruned 20-trial TPE study beat the default recipe?

Builds a subsample of data/sentiment under /tmp (same files and format), a tiny frozen BERT
(random init, 1 layer, hidden 32) and char word2vec vectors under a TextCNN head, then:
  default  the recipe as written, fold 0
  study    `run_tune` over the recipe's [tune] space, objective = fold-0 accuracy, median pruning
  tuned    the recipe with the study's overlay (recipes/tuned/<name>.toml), fold 0, retrained
Fold 0 picked the winner, so its tuned score is optimistic; the same two fold-0 models are also
scored on the hidden test answers, which the study never saw.

    .venv/bin/python bench/tune.py [--trials 20] [--train 3000] [--out /tmp/comp-bench-tune]

The last line reads `trials=… pruned=… default=… tuned=…` (fold-0 accuracy).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("COMP_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPE = """\
# A tiny fusion member for the tuning bench: frozen 1-layer BERT + char vectors -> TextCNN.
# Phase 1 only (frozen, cached backbone features), so a trial costs seconds per epoch on CPU.
name = "bench_fusion"
kind = "fusion"

[data]
folds = 5

[model]
vectors = ["char"]
head = "cnn"
channels = 64
kernel_sizes = [2, 3, 4]
dropout = 0.2
max_chars = 64

[[model.backbones]]
kind = "bert"
path = "{bert}"
max_len = 66

[train]
epochs_frozen = 3
epochs_unfrozen = 0
batch_size = 32
lr_head = 2e-3
patience = 0

[tune]
"train.lr_head" = {{type = "float", low = 3e-4, high = 3e-2, log = true}}
"train.epochs_frozen" = {{type = "int", low = 2, high = 5}}
"train.warmup" = {{type = "float", low = 0.0, high = 0.2}}
"train.weight_decay" = {{type = "float", low = 1e-4, high = 0.1, log = true}}
"model.dropout" = {{type = "float", low = 0.0, high = 0.5}}
"model.channels" = {{type = "categorical", choices = [32, 64, 128]}}
"model.vectors_trainable" = {{type = "categorical", choices = [false, true]}}
"train.loss" = {{type = "categorical", choices = ["ce", "focal"]}}
"""


def subsample(src: Path, dst: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A smaller competition folder in the source's format (train/test/sample/answers CSVs)."""
    rng = random.Random(seed)
    dst.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.csv", n_train), ("test.csv", n_test)):
        with open(src / name, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        head, body = rows[0], rows[1:]
        keep = sorted(rng.sample(range(len(body)), min(n, len(body))))
        with open(dst / name, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([head] + [body[i] for i in keep])
        if name == "test.csv":
            ids = {body[i][0] for i in keep}
            for extra in ("answers.csv", "sample_submission.csv"):
                with open(src / extra, encoding="utf-8", newline="") as f:
                    rows = list(csv.reader(f))
                with open(dst / extra, "w", encoding="utf-8", newline="") as f:
                    csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if r[0] in ids])
    return dst


def hidden_test_accuracy(run_dir: Path, data: Path) -> float:
    """Accuracy of fold 0's test probabilities against the hidden answers."""
    import numpy as np

    from comp.config.schema import DataConfig
    from comp.data.competition import load_competition

    comp = load_competition(DataConfig(dir=str(data)))
    with open(data / "answers.csv", encoding="utf-8", newline="") as f:
        answers = {r["id"]: r["label"] for r in csv.DictReader(f)}
    proba = np.load(run_dir / "fold0" / "test_proba.npy")
    pred = [comp.classes[i] for i in proba.argmax(1)]
    return float(np.mean([p == answers[i] for p, i in zip(pred, comp.test_ids)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--train", type=int, default=2000, help="train rows in the subsample")
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest for tiny models on a busy machine)")
    ap.add_argument("--out", default="/tmp/comp-bench-tune")
    ap.add_argument("--src", default="data/sentiment")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from comp.config.schema import PretrainConfig, flatten_overlay, read_toml
    from comp.core.utils import read_json
    from comp.data.competition import load_competition
    from comp.data.recipes import load_recipe
    from comp.members.registry import train_recipe
    from comp.nn.pretrain import run_pretrain
    from comp.nn.vectors import train_vectors
    from comp.workflows.tune import run_tune

    t0 = time.time()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # fresh data, models and study each run
    src = Path(args.src)
    if not (src / "train.csv").exists():
        raise SystemExit(f"{src}: not found; run `comp data sentiment --out {src}` first")
    data = subsample(src, out / "data", args.train, args.test)
    comp = load_competition(load_recipe(None, [f"data.dir='{data}'"]).data)
    texts = comp.train_texts + comp.test_texts
    bert = run_pretrain(PretrainConfig(kind="bert", out=str(out / "models" / "bert_tiny"),
                                       hidden=32, layers=1, heads=2, intermediate=64,
                                       vocab_size=3000, steps=0, max_len=66, max_positions=80),
                        texts)
    train_vectors(texts, "char", out / "models" / "w2v-char.kv", dim=64, epochs=5)
    recipe_path = out / "bench_fusion.toml"
    recipe_path.write_text(RECIPE.format(bert=bert), encoding="utf-8")
    base = [f"data.dir='{data}'", f"runs_dir='{out / 'runs'}'",
            f"model.vectors_dir='{out / 'models'}'"]
    default = load_recipe(recipe_path, base)
    print(f"setup: {len(comp.train_texts)} train / {len(comp.test_texts)} test rows "
          f"({time.time() - t0:.0f}s)", flush=True)

    t1 = time.time()
    train_recipe(default, folds=[0])
    d_score = read_json(default.run_dir / "fold0" / "done.json")["score"]
    d_secs = time.time() - t1
    print(f"default fold-0 accuracy {d_score:.4f} ({d_secs:.0f}s)", flush=True)

    t2 = time.time()
    summary = run_tune(default, trials=args.trials, storage=f"sqlite:///{out / 'runs' / 'o.db'}",
                       study="bench", n_folds=1, overlay_dir=out / "tuned")
    t_secs = time.time() - t2
    counts = summary["counts"]
    overlay = summary["overlay"]
    tuned = load_recipe(recipe_path, base + ["name='bench_fusion_tuned'"]
                        + flatten_overlay(read_toml(overlay)))
    train_recipe(tuned, folds=[0])
    t_score = read_json(tuned.run_dir / "fold0" / "done.json")["score"]
    print(f"study: {counts} in {t_secs:.0f}s ({t_secs / max(1, args.trials):.0f}s/trial vs "
          f"{d_secs:.0f}s for one unpruned default run); best trial {summary['best_value']:.4f}, "
          f"overlay retrained {t_score:.4f}", flush=True)
    print(f"overlay {overlay}: " + ", ".join(f"{k}={v}" for k, v in
                                              summary["best_params"].items()), flush=True)
    h_default = hidden_test_accuracy(default.run_dir, data)
    h_tuned = hidden_test_accuracy(tuned.run_dir, data)
    print(f"hidden test accuracy of the fold-0 models: default={h_default:.4f} "
          f"tuned={h_tuned:.4f} (total {time.time() - t0:.0f}s)", flush=True)
    print(f"trials={sum(counts.values())} pruned={counts.get('PRUNED', 0)} "
          f"default={d_score:.4f} tuned={t_score:.4f}")


if __name__ == "__main__":
    main()
