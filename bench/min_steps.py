"""Small-data schedules: fixed epochs against `train.min_steps`, side by side on a few-shot task.

The default run's neural members (the e5 member and the vectors TextCNN) train a fixed number of
epochs; on a few hundred rows that is a few dozen optimizer steps. `train.min_steps = N` raises
each phase's epochs until it makes N steps; on large data (the embedded reviews: ~347 steps an
epoch) it changes nothing. Each arm trains the member on every fold of the same fold table
(OOF: each row scored by a model that never saw it; min_steps is fixed beforehand, nothing is
chosen on validation rows) and predicts the test texts (hidden: accuracy on answers.csv).

  .venv/bin/python bench/min_steps.py                       # few-shot People's Daily, 60 classes
  .venv/bin/python bench/min_steps.py --steps 0 200 --members textcnn_vectors
  .venv/bin/python bench/min_steps.py --steps 200 --prototypes off on   # class-prototype start

`--prototypes` arms compare `train.prototypes` (the classifier started from class means of its
training rows' inputs) at each min_steps.

Ends with one line per member and then: <member>_oof_<N>[_<prototypes>]=... and _hidden_.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp.core.utils import read_json  # noqa: E402
from comp.data.embedded import build_fewshot  # noqa: E402
from comp.data.readers import read_answers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench_work/min_steps"))
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 200])
    ap.add_argument("--prototypes", nargs="+", default=["auto"], choices=["auto", "on", "off"])
    ap.add_argument("--members", nargs="+", default=["textcnn_vectors", "fusion_e5_fast"])
    ap.add_argument("--classes", type=int, default=60)
    ap.add_argument("--per-class", type=int, default=10)
    args = ap.parse_args()

    from comp.data.competition import load_competition
    from comp.members.registry import train_recipe
    from comp.workflows.pipeline import Layout, member_recipe, stage_vectors

    work = args.work.resolve()
    data = work / "fewshot"
    if not (data / "train.csv").exists():
        build_fewshot(data, args.classes, args.per_class)
    os.chdir(work)  # runs/ and models/ of this bench live here
    layout = Layout(str(data))
    comp = load_competition(layout.data_config())
    ans = read_answers(data / "answers.csv")
    truth = np.array([comp.classes.index(ans[i]) for i in comp.test_ids])
    print(f"few-shot task: {len(comp.train_texts)} train rows, {comp.n_classes} classes, "
          f"{len(comp.test_ids)} test rows")
    kinds = sorted({v for m in args.members for v in member_recipe(layout, m).model.vectors})
    stage_vectors(layout, kinds)
    rows, line = [], []
    arms = [(n, p) for n in args.steps for p in args.prototypes]
    for name in args.members:
        for n, proto in arms:
            suffix = "" if args.prototypes == ["auto"] else f"_{proto}"
            tag = f"{name}_ms{n}{suffix}"
            recipe = member_recipe(layout, name, [f"train.min_steps={n}", f"name={tag}",
                                                  f"train.prototypes='{proto}'"])
            t0 = time.time()
            cv = train_recipe(recipe)
            secs = time.time() - t0
            test = np.load(recipe.run_dir / "test.npy")
            hidden = float((test.argmax(1) == truth).mean())
            oof = float(cv["cv"])
            epochs = read_json(recipe.run_dir / "epochs.json") if (
                recipe.run_dir / "epochs.json").exists() else []
            n_ep = max((e["epoch"] for e in epochs), default=0)
            rows.append((name, n, proto, oof, hidden, n_ep, secs))
            line.append(f"{name}_oof_{n}{suffix}={oof:.4f} {name}_hidden_{n}{suffix}={hidden:.4f}")
    print(f"\n{'member':<18}{'min_steps':>10}{'prototypes':>11}{'OOF acc':>10}{'hidden':>10}"
          f"{'epochs':>8}{'seconds':>9}")
    for name, n, proto, oof, hidden, n_ep, secs in rows:
        print(f"{name:<18}{n:>10}{proto:>11}{oof:>10.4f}{hidden:>10.4f}{n_ep:>8}{secs:>9.0f}")
    print(" ".join(line))


if __name__ == "__main__":
    main()
