"""What reproducible gensim vectors cost: one worker thread (the default) vs two, side by side.

Trains the pipeline's vectors (comp.nn.vectors.train_vectors, its default dim/epochs/sample) on the
embedded competition's train + test texts, twice per arm, alternating arms so machine load hits
both alike. Prints each run's seconds and whether an arm's two runs gave identical vectors.
Last line:
    workers1_s=<median> workers2_s=<median> slowdown=<w1/w2> identical_w1=<b> identical_w2=<b>

    .venv/bin/python bench/vectors_workers.py [--kind char] [--data data/sentiment] [--epochs 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("COMP_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from comp.config.schema import DataConfig  # noqa: E402
from comp.data.competition import load_competition  # noqa: E402
from comp.data.embedded import build_sentiment
from comp.nn.vectors import load_vectors, train_vectors  # noqa: E402


def main() -> None:
    """Time both arms and print the key=value line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="char", help="char | word | bigram")
    ap.add_argument("--data", default="data/sentiment")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    if not (Path(args.data) / "train.csv").exists():
        build_sentiment(args.data)
    comp = load_competition(DataConfig(dir=args.data))
    texts = comp.train_texts + comp.test_texts
    times: dict[int, list[float]] = {1: [], 2: []}
    vecs: dict[int, list[np.ndarray]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(2):
            for workers in (1, 2):
                out = Path(tmp) / f"w{workers}_{rep}.kv"
                t = time.perf_counter()
                train_vectors(texts, args.kind, out, epochs=args.epochs, workers=workers)
                times[workers].append(time.perf_counter() - t)
                vecs[workers].append(load_vectors(out).vectors)
                print(f"{args.kind} workers={workers} run {rep + 1}: "
                      f"{times[workers][-1]:.1f}s", flush=True)
    same = {w: bool(np.array_equal(v[0], v[1])) for w, v in vecs.items()}
    w1, w2 = float(np.median(times[1])), float(np.median(times[2]))
    print(f"workers1_s={w1:.1f} workers2_s={w2:.1f} slowdown={w1 / w2:.2f} "
          f"identical_w1={same[1]} identical_w2={same[2]}")


if __name__ == "__main__":
    main()
