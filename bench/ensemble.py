"""Ensembling benchmark: every method's nested CV, its in-sample CV and the hidden test score.

Measured side by side in one run on the embedded sentiment competition (data/sentiment, with
answers.csv): members are trained once into --work (resumable, reused on the next run), or
taken from --runs. For every blender the table shows

  nested    honest CV (weights / meta-model fitted on the other folds)
  in-samp   the same blender fitted and scored on all OOF rows (optimistic)
  optim.    in-sample minus nested: how much the blender fits noise
  hidden    accuracy on answers.csv of the test prediction (fitted on all OOF rows)
  d_best    hidden minus the best single member's hidden accuracy

and, at the end, how well nested and in-sample CV rank the methods by their hidden score
(Spearman). Nothing here is asserted; read the numbers. Ends with one line for the defaults
(hill, stack with a logistic-regression meta-model) against the best member by CV:
    best_member_oof=… ens_oof=… best_member_hidden=… ens_hidden=… stack_cv=… stack_hidden=…

  .venv/bin/python bench/ensemble.py                    # linear members + a char-vector CNN
  .venv/bin/python bench/ensemble.py --no-neural        # linear members only (~2 min)
  .venv/bin/python bench/ensemble.py --runs runs/a runs/b --metric accuracy
  .venv/bin/python bench/ensemble.py --add runs/fusion_bert_bilstm   # plus a fusion member
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp.blend.ensemble import ensemble, load_members  # noqa: E402
from comp.config.schema import DataConfig
from comp.core.metrics import score  # noqa: E402
from comp.core.utils import log  # noqa: E402
from comp.data.competition import load_competition
from comp.data.folds import load_folds
from comp.data.readers import read_answers  # noqa: E402
from comp.data.recipes import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LINEAR = ["tfidf_char_lr", "tfidf_word_lr", "tfidf_nblr", "tfidf_char_svc", "tfidf_word_svc"]
METHODS = [
    ("mean", {}),
    ("rank", {}),
    ("weights", {}),
    ("weights", {"objective": "logloss"}),
    ("hill", {}),
    ("hill", {"objective": "logloss"}),
    ("stack", {"meta": "lr"}),
    ("stack", {"meta": "lr", "use_logits": True}),
    ("stack", {"meta": "ridge"}),
    ("stack", {"meta": "hgb"}),
]
HEADLINE_ENS = ("hill", {})
HEADLINE_STACK = ("stack", {"meta": "lr"})


def train_members(data: Path, work: Path, neural: bool, epochs: int) -> list[Path]:
    """Train (or resume) the bench members into work/runs; returns their run dirs."""
    from comp.kfold.runner import member_done
    from comp.members.registry import train_recipe

    over = [f"runs_dir={work / 'runs'}", f"data.dir={data}"]
    recipes = [load_recipe(ROOT / "recipes" / f"{n}.toml", over) for n in LINEAR]
    if neural:
        recipes.append(neural_recipe(data, work, epochs))
    dirs = []
    for r in recipes:
        if not member_done(r.run_dir):
            t0 = time.time()
            log(f"bench: training {r.name}")
            train_recipe(r)
            log(f"bench: {r.name} took {time.time() - t0:.0f}s")
        dirs.append(r.run_dir)
    return dirs


def neural_recipe(data: Path, work: Path, epochs: int):
    """A small TextCNN over skip-gram character vectors (the vectors are trained once)."""
    from comp.nn.vectors import train_vectors

    models = work / "models"
    kv = models / "w2v-char.kv"
    if not kv.exists():
        comp = load_competition(DataConfig(dir=str(data)))
        train_vectors(comp.train_texts + comp.test_texts, "char", kv, dim=100)
    base = {"name": "textcnn_charvec", "kind": "fusion", "runs_dir": str(work / "runs"),
            "data": {"dir": str(data)},
            "model": {"vectors": ["char"], "vectors_dir": str(models), "head": "cnn",
                      "channels": 96, "kernel_sizes": [2, 3, 4], "max_chars": 128},
            "train": {"epochs_frozen": epochs, "epochs_unfrozen": 0, "batch_size": 64,
                      "lr_head": 3e-3, "patience": 0}}
    return load_recipe(None, base=base)


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> None:
    """Parse arguments, get members, compare every method."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "sentiment"))
    ap.add_argument("--work", default="/tmp/comp-bench-ensemble")
    ap.add_argument("--runs", nargs="*", help="use these member dirs instead of training")
    ap.add_argument("--add", nargs="*", default=[],
                    help="finished member dirs to add to the trained ones (e.g. runs/fusion_*)")
    ap.add_argument("--metric", default="accuracy")
    ap.add_argument("--no-neural", action="store_true")
    ap.add_argument("--epochs", type=int, default=3, help="neural member epochs")
    args = ap.parse_args()
    os.environ.setdefault("COMP_QUIET", "1")

    data = Path(args.data)
    if not (data / "train.csv").exists():
        from comp.data.embedded import build_sentiment

        build_sentiment(data)
    runs = ([Path(r) for r in args.runs] if args.runs else
            train_members(data, Path(args.work), not args.no_neural, args.epochs))
    cfg = DataConfig(dir=str(data))
    comp = load_competition(cfg)
    folds = load_folds(comp, cfg)
    y = comp.labels
    members = load_members([*runs, *(Path(r) for r in args.add)])
    answers = read_answers(data / "answers.csv") if (data / "answers.csv").exists() else {}
    keep = [k for k, i in enumerate(comp.test_ids) if i in answers]
    truth = np.array([comp.classes.index(answers[comp.test_ids[k]]) for k in keep])

    def hidden(test: np.ndarray) -> float:
        return float((test[keep].argmax(1) == truth).mean()) if keep else float("nan")

    print(f"data {data}: {len(y)} train / {len(comp.test_ids)} test rows, {len(comp.classes)} "
          f"classes, {len(np.unique(folds))} folds, metric {args.metric}; "
          f"{len(members)} members\n")
    print(f"{'member':<30}{'cv':>8}{'hidden':>8}")
    member_hidden = {}
    for m in members:
        member_hidden[m.name] = hidden(m.test)
        print(f"{m.name:<30}{score(args.metric, y, m.oof):>8.4f}{member_hidden[m.name]:>8.4f}")
    best = max(members, key=lambda m: score(args.metric, y, m.oof))
    best_hidden = member_hidden[best.name]
    print(f"best member by CV: {best.name}\n")

    print(f"{'method':<30}{'nested':>8}{'in-samp':>9}{'optim.':>8}{'hidden':>8}{'d_best':>8}"
          f"{'sec':>7}  weights")
    rows = []
    headline: dict[str, tuple[float, float]] = {}
    for method, kw in METHODS:
        t0 = time.time()
        res = ensemble(members, method, y, folds, args.metric, **kw)
        sec = time.time() - t0
        label = method + "".join(f" {k}={v}" for k, v in kw.items())
        h = hidden(res.test)
        w = ("" if res.weights is None else
             " ".join(f"{k}:{v:.2f}" for k, v in res.weights.items() if v >= 0.005))
        print(f"{label:<30}{res.cv:>8.4f}{res.cv_in_sample:>9.4f}"
              f"{res.cv_in_sample - res.cv:>+8.4f}{h:>8.4f}{h - best_hidden:>+8.4f}"
              f"{sec:>7.1f}  {w}")
        rows.append((res.cv, res.cv_in_sample, h))
        if (method, kw) in (HEADLINE_ENS, HEADLINE_STACK):
            headline[method] = (res.cv, h)
    if keep and len(rows) > 2:
        nested, insample, hid = (np.array(c) for c in zip(*rows))
        # Binomial standard errors: differences smaller than these are noise, not signal.
        se_h = math.sqrt(hid.mean() * (1 - hid.mean()) / len(keep))
        se_cv = math.sqrt(nested.mean() * (1 - nested.mean()) / len(y))
        print(f"\nstandard error of one accuracy: hidden {se_h:.4f} ({len(keep)} rows), "
              f"CV {se_cv:.4f} ({len(y)} rows)")
        print(f"Spearman with hidden over {len(rows)} methods: nested CV "
              f"{spearman(list(nested), list(hid)):+.2f}, in-sample CV "
              f"{spearman(list(insample), list(hid)):+.2f}")
        print(f"mean hidden - CV (test uses all folds' models): nested "
              f"{np.mean(hid - nested):+.4f}, in-sample {np.mean(hid - insample):+.4f}; "
              f"spread of (hidden - CV) across methods: nested {np.std(hid - nested):.4f}, "
              f"in-sample {np.std(hid - insample):.4f}")

    best_cv = score(args.metric, y, best.oof)
    print(f"\n(best member = best by CV, {best.name}; ens = {HEADLINE_ENS[0]}, stack = "
          f"{HEADLINE_STACK[0]} {HEADLINE_STACK[1]['meta']}, the defaults; CVs nested)")
    print(f"best_member_oof={best_cv:.4f} ens_oof={headline['hill'][0]:.4f} "
          f"best_member_hidden={best_hidden:.4f} ens_hidden={headline['hill'][1]:.4f} "
          f"stack_cv={headline['stack'][0]:.4f} stack_hidden={headline['stack'][1]:.4f}")


if __name__ == "__main__":
    main()
