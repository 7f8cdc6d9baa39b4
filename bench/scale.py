"""Folds side by side: wall time of the quick members plus the vectors TextCNN trained one fold
after another vs as Ray tasks (`--executor ray`), on this machine, in one run.

A slice of the embedded competition (--rows train rows, its test file) gets the TextCNN's
word2vec vectors once (untimed, every arm reads them); then each arm trains every (member, fold)
from nothing in a fresh process (its own runs/), timed as a whole (Python start, Ray start,
workers, assembling):

  sequential    one fold after another, torch and BLAS on every core (what `comp train` does)
  ray_jobs      `--executor ray --jobs N`: N one-CPU tasks at a time
  sequential_1  one fold after another on one thread
  ray_1         `--executor ray --jobs 1`: one one-CPU task at a time

speedup = sequential / ray_jobs (members that are single-threaded gain most: TF-IDF folds fit
on one thread; a network's fold already uses every core in the sequential arm);
speedup_single_threaded = sequential_1 / ray_jobs, the gain where every fold runs on one thread;
overhead = ray_1 / sequential_1, the cost of the Ray path itself. Each arm's
OOF is compared with the sequential arm's (TF-IDF: bit for bit; the network: max difference).

  .venv/bin/python bench/scale.py [--rows 6000] [--jobs 2]

Ends with one key=value line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEMBERS = ["tfidf_char_svc", "tfidf_word_lr", "tfidf_nblr", "textcnn_vectors"]
ARMS = ("sequential", "ray_jobs", "sequential_1", "ray_1")


def slice_competition(src: Path, out: Path, rows: int) -> Path:
    """The first `rows` train rows of the embedded competition, its whole test file."""
    if (out / "train.csv").exists():
        return out
    out.mkdir(parents=True)
    with open(src / "train.csv", encoding="utf-8", newline="") as f:
        r = csv.reader(f)
        head, body = next(r), list(r)[:rows]
    with open(out / "train.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(head)
        w.writerows(body)
    for name in ("test.csv", "sample_submission.csv", "answers.csv"):
        (out / name).write_bytes((src / name).read_bytes())
    return out


def recipes(work: Path, arm: str):
    from comp.workflows.pipeline import Layout, member_recipe

    layout = Layout(str(work / "data" / "slice"))
    return [member_recipe(layout, n, [f"runs_dir={work / 'runs' / arm}"]) for n in MEMBERS]


def run_arm(work: Path, arm: str, jobs: int) -> None:
    """One arm, in this (fresh) process."""
    os.chdir(work)
    if arm.endswith("_1"):
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)
        threadpool_limits(1)
    from comp.members.registry import train_recipe

    rs = recipes(work, arm)
    if arm.startswith("ray"):
        from comp.workflows.fanout import FoldTask, raise_failures, run_fold_tasks

        tasks = [FoldTask(r, f, cost=60.0 if r.kind != "linear" else 10.0)
                 for r in rs for f in range(r.data.folds)]
        raise_failures(run_fold_tasks(tasks, jobs=1 if arm == "ray_1" else jobs))
    for r in rs:
        train_recipe(r)  # sequential: trains; after Ray: assembles the finished folds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench_work/scale"))
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args()
    work = args.work.resolve()
    if args.arm:
        run_arm(work, args.arm, args.jobs)
        return
    from comp.data.embedded import build_sentiment
    from comp.workflows.pipeline import Layout, stage_vectors

    full = work / "data" / "sentiment"
    if not (full / "train.csv").exists():
        build_sentiment(full)
    data = slice_competition(full, work / "data" / "slice", args.rows)
    os.chdir(work)
    kinds = sorted({v for r in recipes(work, "sequential") if r.kind != "linear"
                    for v in r.model.vectors})
    stage_vectors(Layout(str(data)), kinds)  # read by every arm, made once, untimed
    seconds = {}
    for arm in ARMS:
        runs = work / "runs" / arm
        if runs.exists():
            import shutil

            shutil.rmtree(runs)
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--work", str(work), "--jobs", str(args.jobs),
                        "--arm", arm], check=True, stdout=subprocess.DEVNULL,
                       stderr=open(work / f"{arm}.log", "w"))
        seconds[arm] = time.perf_counter() - t
        print(f"{arm}: {seconds[arm]:.1f} s", flush=True)
    same = []
    for name in MEMBERS:
        # each Ray task has one thread: compare it with the sequential arm of as many
        for arm, ref_arm in (("ray_jobs", "sequential"), ("ray_jobs", "sequential_1"),
                             ("ray_1", "sequential_1"), ("sequential_1", "sequential")):
            ref = np.load(work / "runs" / ref_arm / name / "oof.npy")
            got = np.load(work / "runs" / arm / name / "oof.npy")
            diff = float(np.abs(got - ref).max())
            if name != "textcnn_vectors":
                same.append(diff == 0.0)
            print(f"  {name} {arm} vs {ref_arm}: OOF max difference {diff:.2e}")
    speedup = seconds["sequential"] / seconds["ray_jobs"]
    overhead = seconds["ray_1"] / seconds["sequential_1"]
    cv = {n: json.loads((work / "runs" / "sequential" / n / "cv.json").read_text())
          ["seconds"] for n in MEMBERS}
    print("fold seconds per member (sequential, summed): "
          + ", ".join(f"{n} {s:.0f}" for n, s in cv.items()))
    single = seconds["sequential_1"] / seconds["ray_jobs"]
    print(f"speedup={speedup:.2f} speedup_single_threaded={single:.2f} overhead={overhead:.2f} "
          f"tfidf_bit_identical={all(same)}")


if __name__ == "__main__":
    main()
