"""Behavioural fixes, measured: `comp check`'s INV flip rates and the hidden accuracy of each arm
on the embedded competition, side by side in one run.

Arms (the same fold table and texts):
  plain      the recipes as they are
  normalize  data.normalize = NORMALIZE (train, test and every checked text pass through it)
  augment    train.augment = all at rate 0.5 (perturbed copies of each fold's training rows)
Models per arm: the quick preset's ensemble (three TF-IDF members, hill blend, every fold), and
the e5 member of the default plan (e5_linear: frozen e5 sentence embeddings + LR) on fold 0.
Each model is checked on the same seeded sample of test texts (--texts); its hidden accuracy is
that of its submission (ensemble) or its fold-0 test predictions (e5) against answers.csv.

A fix becomes a default only if it lowers flip rates without costing hidden accuracy beyond
noise: the binomial standard error of an accuracy on the 3,473 test rows is about 0.0057.

  .venv/bin/python bench/behaviour.py [--texts 400] [--arms plain normalize augment]

Ends with one key=value line.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUICK = ["tfidf_char_svc", "tfidf_word_lr", "tfidf_nblr"]
NORMALIZE = "nfkc,t2s,punct,space,lower"
ARMS = {"plain": [], "normalize": [f"data.normalize={NORMALIZE}"],
        "augment": ["train.augment=all", "train.augment_rate=0.5"]}


def answers_of(data: Path) -> dict[str, str]:
    with open(data / "answers.csv", encoding="utf-8", newline="") as f:
        return {r["id"]: r["label"] for r in csv.DictReader(f)}


def quick_ensemble(layout, arm: str) -> tuple[Path, float]:
    """The quick members under the arm's overrides and their hill blend: (manifest, hidden)."""
    from comp.blend.submit import score_submission
    from comp.members.registry import train_recipe
    from comp.workflows.pipeline import member_recipe, stage_ensembles

    runs = []
    for name in QUICK:
        r = member_recipe(layout, name, [*ARMS[arm], f"name={name}_{arm}"])
        train_recipe(r)
        runs.append(r.run_dir)
    sub = stage_ensembles(layout, runs, ["hill"], f"{arm}_")[0]
    return sub.with_suffix(".json"), score_submission(sub, layout.data / "answers.csv")["accuracy"]


def e5_member(layout, arm: str) -> tuple[Path, float]:
    """e5_linear on fold 0 under the arm's overrides: (run dir, hidden accuracy of fold 0)."""
    from comp.core.utils import read_json
    from comp.data.competition import load_competition
    from comp.members.registry import train_recipe
    from comp.workflows.pipeline import member_recipe

    r = member_recipe(layout, "e5_linear", [*ARMS[arm], f"name=e5_linear_{arm}",
                                            "data.use_folds=[0]"])
    train_recipe(r)
    comp = load_competition(r.data)
    proba = np.load(r.run_dir / "fold0" / "test_proba.npy")
    classes = read_json(r.run_dir / "classes.json")
    answers = answers_of(layout.data)
    pred = [classes[i] for i in proba.argmax(1)]
    hidden = float(np.mean([p == answers[i] for p, i in zip(pred, comp.test_ids)]))
    return r.run_dir, hidden


def flip_rates(source: Path, out: Path, n_texts: int, folds=None) -> dict[str, float]:
    """INV failure rates of `source` on a seeded sample of the competition's test texts."""
    from comp.serving.check import run_check

    rep = run_check(source, out=out, seed=0, max_texts=n_texts, folds=folds)
    return {t["name"]: t["rate"] for t in rep["tests"] if t["kind"] == "INV"
            and t["rate"] is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench_work/behaviour"))
    ap.add_argument("--texts", type=int, default=400, help="checked test texts per model")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--models", nargs="+", default=["quick", "e5"], choices=["quick", "e5"])
    args = ap.parse_args()
    from comp.data.embedded import build_sentiment
    from comp.workflows.pipeline import Layout

    work = args.work.resolve()
    data = work / "data" / "sentiment"
    if not (data / "train.csv").exists():
        build_sentiment(data)
    os.chdir(work)
    layout = Layout(str(data))
    rates: dict[tuple[str, str], dict[str, float]] = {}
    hidden: dict[tuple[str, str], float] = {}
    for model in args.models:
        for arm in args.arms:
            if model == "quick":
                src, hidden[model, arm] = quick_ensemble(layout, arm)
                folds = None
            else:
                src, hidden[model, arm] = e5_member(layout, arm)
                folds = [0]
            rates[model, arm] = flip_rates(src, work / "check" / f"{model}_{arm}", args.texts,
                                           folds)
            print(f"{model} {arm}: hidden {hidden[model, arm]:.4f}; INV flip rates "
                  + " ".join(f"{k} {v:.3f}" for k, v in rates[model, arm].items()), flush=True)
    keys = []
    for model in args.models:
        tests = sorted({t for arm in args.arms for t in rates[model, arm]})
        print(f"\n{model}: INV flip rate per arm ({args.texts} test texts; hidden accuracy last)")
        print(f"{'test':<14}" + "".join(f"{a:>11}" for a in args.arms))
        for t in tests:
            print(f"{t:<14}" + "".join(f"{rates[model, a].get(t, float('nan')):>11.3f}"
                                       for a in args.arms))
        means = {a: float(np.mean(list(rates[model, a].values()))) for a in args.arms}
        print(f"{'mean':<14}" + "".join(f"{means[a]:>11.3f}" for a in args.arms))
        print(f"{'hidden':<14}" + "".join(f"{hidden[model, a]:>11.4f}" for a in args.arms))
        keys += [f"{model}_{a}_mean_flip={means[a]:.3f}" for a in args.arms]
        keys += [f"{model}_{a}_hidden={hidden[model, a]:.4f}" for a in args.arms]
    print(" ".join(keys))


if __name__ == "__main__":
    main()
