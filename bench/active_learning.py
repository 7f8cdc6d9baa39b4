"""What to label next, measured: `comp labels select` against picking at random, on the embedded
competition.

Each seed starts from the same random 500 labelled train rows; the rest of train is the pool
(its labels hidden until a row is picked). Four steps add 250 rows each, chosen by
`comp labels select` (the current member's uncertainty x e5 representativeness, one per k-means
group) or at random; a TF-IDF member (tfidf_char_lr, 5 folds) is retrained on the labelled rows
after every step and scored on the hidden test answers. Three seeds per arm.

Printed: both mean hidden-accuracy curves (rows labelled -> accuracy), and the ratio of the
areas under them above the 500-row start (selected / random: > 1 means the picks taught the
member more per label).

  .venv/bin/python bench/active_learning.py [--seeds 0 1 2] [--start 500] [--step 250]

Ends with one key=value line.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, str]], cols: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def train_on(full: Path, rows: list[dict[str, str]], home: Path) -> tuple[Path, float]:
    """A competition of `rows` (the full test file), a TF-IDF member on it: (run dir,
    hidden accuracy of its test predictions)."""
    from comp.core.utils import read_json
    from comp.data.recipes import load_recipe
    from comp.members.registry import train_recipe

    data = home / "data"
    write_rows(data / "train.csv", rows, ["id", "text", "label"])
    (data / "test.csv").write_bytes((full / "test.csv").read_bytes())
    r = load_recipe(ROOT / "recipes" / "tfidf_char_lr.toml",
                    [f"data.dir={data}", f"runs_dir={home / 'runs'}"])
    train_recipe(r)
    classes = read_json(r.run_dir / "classes.json")
    pred = [classes[i] for i in np.load(r.run_dir / "test.npy").argmax(1)]
    answers = {a["id"]: a["label"] for a in read_rows(full / "answers.csv")}
    ids = [t["id"] for t in read_rows(full / "test.csv")]
    return r.run_dir, float(np.mean([p == answers[i] for p, i in zip(pred, ids)]))


def pick(arm: str, run_dir: Path, pool: list[dict[str, str]], n: int, seed: int,
         home: Path) -> list[int]:
    """Indices into `pool` of the next n rows to label."""
    if arm == "random":
        return list(np.random.default_rng(seed).choice(len(pool), n, replace=False))
    from comp.serving.select import select_to_label

    write_rows(home / "pool.csv", [{"id": str(i), "text": r["text"]} for i, r in
                                   enumerate(pool)], ["id", "text"])
    out = select_to_label(run_dir, home / "pool.csv", n, home / "to_label.csv", seed=seed)
    return [int(r["id"]) for r in read_rows(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench_work/active_learning"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--start", type=int, default=500)
    ap.add_argument("--step", type=int, default=250)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    from comp.data.embedded import build_sentiment

    work = args.work.resolve()
    full = work / "data" / "sentiment"
    if not (full / "train.csv").exists():
        build_sentiment(full)
    os.chdir(work)  # models/e5-small (the pruned encoder, its embeddings) lives here
    train = read_rows(full / "train.csv")
    sizes = [args.start + args.step * s for s in range(args.steps + 1)]
    curves: dict[str, list[list[float]]] = {"select": [], "random": []}
    for seed in args.seeds:
        start = list(np.random.default_rng(1000 + seed).choice(len(train), args.start,
                                                               replace=False))
        for arm in curves:
            labelled = [train[i] for i in start]
            chosen = set(start)
            pool_idx = [i for i in range(len(train)) if i not in chosen]
            accs = []
            for s in range(args.steps + 1):
                home = work / arm / f"seed{seed}" / f"n{len(labelled)}"
                run_dir, acc = train_on(full, labelled, home)
                accs.append(acc)
                print(f"seed {seed} {arm}: {len(labelled)} labelled rows -> hidden {acc:.4f}",
                      flush=True)
                if s == args.steps:
                    break
                got = pick(arm, run_dir, [train[i] for i in pool_idx], args.step, seed + s,
                           home)
                new = [pool_idx[j] for j in got]
                labelled += [train[i] for i in new]
                taken = set(new)
                pool_idx = [i for i in pool_idx if i not in taken]
            curves[arm].append(accs)
    mean = {arm: np.mean(c, axis=0) for arm, c in curves.items()}
    print("\nrows labelled  " + "".join(f"{n:>9}" for n in sizes))
    for arm, m in mean.items():
        print(f"{arm:<14}" + "".join(f"{a:>9.4f}" for a in m))
    base = mean["random"][0]  # the shared start
    area = {arm: float(np.trapezoid(m - base, sizes)) for arm, m in mean.items()}
    ratio = area["select"] / area["random"] if area["random"] > 0 else float("nan")
    print(f"select_final={mean['select'][-1]:.4f} random_final={mean['random'][-1]:.4f} "
          f"area_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
