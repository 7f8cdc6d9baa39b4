"""How the epoch is chosen, side by side: OOF against hidden accuracy on the sentiment task.

Three arms of one fusion recipe (default recipes/textcnn_vectors.toml with char vectors only,
`--epochs` frozen-phase epochs, early stopping with `--patience`) on the same rows and folds:
  inner: the epoch chosen on train.inner_val of each fold's training rows (the default)
  refit: the same choice, then the fold trained again on all its training rows (train.refit)
  fixed: train.inner_val = 0: every epoch runs, the last is kept
For the inner arm it also prints what a per-fold pick of the best epoch on the fold's own
validation rows would have reported (from its learning curves): the old, optimistic choice.
The hidden score is the test accuracy against answers.csv of the fold-averaged test
predictions. The task gets its own `--folds` table in a temporary copy; missing char vectors
are trained there. Last line:
    inner_gap=<oof-hidden> refit_gap=<oof-hidden> fixed_gap=<oof-hidden>

    .venv/bin/python bench/honest_selection.py [--rows 0] [--folds 3] [--epochs 6]
                                               [--patience 2] [--arms inner,refit,fixed]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("COMP_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from comp.config.schema import DataConfig
from comp.data.competition import load_competition
from comp.data.embedded import build_sentiment
from comp.data.folds import load_folds  # noqa: E402
from comp.data.recipes import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"inner": [], "refit": ["train.refit=true"], "fixed": ["train.inner_val=0"]}


def copy_task(src: Path, dst: Path, rows: int, seed: int) -> Path:
    """train/test/answers of the task in `dst` (train sampled to `rows` when > 0)."""
    dst.mkdir(parents=True)
    for name in ("test.csv", "answers.csv", "sample_submission.csv"):
        shutil.copy(src / name, dst / name)
    with open(src / "train.csv", encoding="utf-8", newline="") as f:
        table = list(csv.reader(f))
    body = table[1:]
    if rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(body), rows, replace=False))
        body = [body[i] for i in keep]
    with open(dst / "train.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([table[0], *body])
    return dst


def hidden_accuracy(run_dir: Path, data: Path) -> float:
    """Accuracy of the member's test.npy against answers.csv."""
    classes = json.loads((run_dir / "classes.json").read_text(encoding="utf-8"))
    with open(data / "answers.csv", encoding="utf-8") as f:
        truth = {r["id"]: r["label"] for r in csv.DictReader(f)}
    with open(data / "test.csv", encoding="utf-8") as f:
        ids = [r["id"] for r in csv.DictReader(f)]
    pred = np.load(run_dir / "test.npy").argmax(1)
    return float(np.mean([classes[p] == truth[i] for p, i in zip(pred, ids)]))


def validation_pick(run_dir: Path, folds: np.ndarray, metric: str) -> float:
    """The OOF a per-fold best epoch on the validation rows would report (fold-size weighted),
    read from the learning curves."""
    curves = json.loads((run_dir / "epochs.json").read_text(encoding="utf-8"))
    k = int(folds.max()) + 1
    best = [max(c[metric] for c in curves if c["fold"] == f) for f in range(k)]
    return float(np.dot(best, np.bincount(folds, minlength=k)) / len(folds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="recipes/textcnn_vectors.toml")
    ap.add_argument("--rows", type=int, default=0, help="sample this many train rows (0: all)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--arms", default="inner,refit,fixed")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.chdir(ROOT)
    src = Path("data/sentiment")
    if not (src / "train.csv").exists():
        build_sentiment(src)
    with tempfile.TemporaryDirectory() as tmp:
        data = copy_task(src, Path(tmp) / "sentiment", args.rows, args.seed)
        vec = Path("models/w2v-char.kv")
        if not vec.exists():
            from comp.nn.vectors import train_vectors

            comp = load_competition(DataConfig(dir=str(data)))
            vec = Path(tmp) / "w2v-char.kv"
            train_vectors(comp.train_texts + comp.test_texts, "char", vec)
        base = [f"data.dir={data}", f"data.folds={args.folds}", f"runs_dir={tmp}/runs",
                'model.vectors=["char"]', f"model.vectors_dir={vec.parent}",
                f"train.epochs_frozen={args.epochs}", "train.epochs_unfrozen=0",
                f"train.patience={args.patience}"]
        print(f"{args.recipe}: {args.rows or 'all'} train rows, {args.folds} folds, "
              f"{args.epochs} epochs, patience {args.patience}", flush=True)
        from comp.members.registry import train_recipe

        gaps = {}
        for name in args.arms.split(","):
            r = load_recipe(args.recipe, base + ARMS[name] + [f"name=honest_{name}"])
            t0 = time.time()
            cv = train_recipe(r)
            hidden = hidden_accuracy(r.run_dir, data)
            gaps[name] = cv["cv"] - hidden
            line = (f"  {name:6s} OOF {cv['cv']:.4f}  hidden {hidden:.4f}  OOF-hidden "
                    f"{gaps[name]:+.4f}  ({time.time() - t0:.0f} s)")
            if name == "inner":
                folds = load_folds(load_competition(r.data), r.data)
                line += (f"; a pick on the validation rows would report "
                         f"{validation_pick(r.run_dir, folds, r.metric):.4f}")
            print(line, flush=True)
    print(" ".join(f"{n}_gap={g:+.4f}" for n, g in gaps.items()))


if __name__ == "__main__":
    main()
