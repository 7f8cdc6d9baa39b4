"""Label noise on the embedded competition: how well `comp labels find` finds flipped labels, and
what `data.suspects = drop | weight` wins back.

For each noise level, a copy of the embedded competition with that share of its train labels
flipped (fixed seed; test labels untouched) gets the quick preset's members (three TF-IDF
members, hill blend) trained with `keep`, `drop` and `weight`; `comp labels find` runs on the
`keep` ensemble. Printed per level: precision and recall of the flipped rows among the rows each
score flags (cleanlab's confident-learning flags; deep k-NN agreement below 0.5; every member
disagreeing; the combined rank's top rows, as many as cleanlab flags), and the hidden accuracy of
each ensemble beside the clean data's. Every run shares one fold table per level (same texts).

  .venv/bin/python bench/label_noise.py                     # 10 % and 20 % noise
  .venv/bin/python bench/label_noise.py --levels 0.2

Ends with one key=value line.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp.core.utils import read_json  # noqa: E402

MEMBERS = ["tfidf_char_svc", "tfidf_word_lr", "tfidf_nblr"]


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def noisy_copy(clean: Path, out: Path, level: float, seed: int = 0) -> set[str]:
    """`clean` with `level` of its train labels flipped; returns the flipped ids."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(clean, out)
    for p in out.glob("folds*.csv"):
        p.unlink()
    rows = rows_of(out / "train.csv")
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(rows), int(round(level * len(rows))), replace=False)
    for i in flip:
        rows[i]["label"] = "neg" if rows[i]["label"] == "pos" else "pos"
    write_rows(out / "train.csv", rows)
    return {rows[i]["id"] for i in flip}


def ensemble(data: Path, mode: str) -> tuple[Path, float]:
    """The quick members with data.suspects = mode, their hill blend; (manifest, hidden)."""
    from comp.blend.submit import score_submission
    from comp.members.registry import train_recipe
    from comp.workflows.pipeline import Layout, member_recipe, stage_ensembles

    layout = Layout(str(data))
    over = [] if mode == "keep" else [f"data.suspects={mode}"]
    runs = []
    for name in MEMBERS:
        r = member_recipe(layout, name, [*over, f"name={name}_{mode}"])
        train_recipe(r)
        runs.append(r.run_dir)
    sub = stage_ensembles(layout, runs, ["hill"], f"{mode}_")[0]
    return sub.with_suffix(".json"), score_submission(sub, data / "answers.csv")["accuracy"]


def precision_recall(flagged: set[str], flipped: set[str]) -> tuple[float, float]:
    hit = len(flagged & flipped)
    return hit / max(len(flagged), 1), hit / max(len(flipped), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench_work/label_noise"))
    ap.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.2])
    args = ap.parse_args()
    from comp.data.embedded import build_sentiment
    from comp.workflows.labels import find_label_issues

    work = args.work.resolve()
    (work / "models").mkdir(parents=True, exist_ok=True)
    clean = work / "clean" / "sentiment"
    if not (clean / "train.csv").exists():
        build_sentiment(clean)
    os.chdir(work / "clean")
    os.makedirs("models", exist_ok=True)
    _, clean_hidden = ensemble(clean, "keep")
    print(f"clean: hill of {len(MEMBERS)} TF-IDF members, hidden {clean_hidden:.4f}", flush=True)
    keys = [f"clean_hidden={clean_hidden:.4f}"]
    for level in args.levels:
        tag = f"n{int(round(level * 100))}"
        home = work / tag
        home.mkdir(exist_ok=True)
        link = home / "models"  # one models/ (pruned e5, embeddings): the texts are the same
        if not link.exists():
            link.symlink_to(work / "models")
        flipped = noisy_copy(clean, home / "sentiment", level)
        os.chdir(home)
        got = {}
        for mode in ("keep", "drop", "weight"):
            man, got[mode] = ensemble(home / "sentiment", mode)
            if mode == "keep":
                issues = rows_of(find_label_issues(man, home / "label_issues.csv"))
        n_members = len(read_json(man)["members"])
        flags = {
            "cleanlab": {r["id"] for r in issues if r["is_issue"] == "1"},
            "knn<0.5": {r["id"] for r in issues if r["knn_agreement"]
                        and float(r["knn_agreement"]) < 0.5},
            "all_members_disagree": {r["id"] for r in issues
                                     if r["members_disagree"] == str(n_members)},
        }
        n_top = len(flags["cleanlab"])
        flags["combined_rank_top"] = {r["id"] for r in issues[:n_top]}
        parts = []
        for name, f in flags.items():
            p, r = precision_recall(f, flipped)
            parts.append(f"{name} {len(f)} flagged precision {p:.3f} recall {r:.3f}")
            keys += [f"{tag}_{name}_precision={p:.3f}", f"{tag}_{name}_recall={r:.3f}"]
        cost = clean_hidden - got["keep"]
        won = max(got["drop"], got["weight"]) - got["keep"]
        print(f"{int(level * 100)}% flipped ({len(flipped)} rows): " + "; ".join(parts)
              + f" | hidden keep {got['keep']:.4f} drop {got['drop']:.4f} weight "
              f"{got['weight']:.4f} (clean {clean_hidden:.4f}: noise cost {cost:+.4f}, "
              f"best treatment won back {won:+.4f})", flush=True)
        keys += [f"{tag}_hidden_{m}={v:.4f}" for m, v in got.items()]
        keys.append(f"{tag}_won_back_share={won / cost if cost > 0 else float('nan'):.2f}")
    print(" ".join(keys))


if __name__ == "__main__":
    main()
