"""The default run on tasks of other shapes than the embedded one, each to the same budget.

Builds four competitions from texts the dependencies ship (comp.data.embedded), runs
`comp run --data DIR --budget B` on each in a fresh process (runs/, models/, submissions/ under
--work), and reads back what the issue of budgets on any task asks:

- the plan's member minutes (first plan, then with what the leftover budget bought) beside
  what the members took and the run's wall time,
- the share of the budget the members used (or that every preset member finished),
- which pretrained members ran on how many folds, their OOF beside the best TF-IDF member's,
- the chosen ensemble's nested CV beside the best single member's and beside the TF-IDF-only
  ensemble's on the same rows (its nested OOF scored on the rows the chosen one covers),
- every member's OOF beside its hidden score (the pair task: no test sentence is in train),
  both the averaged fold models' and each fold model's alone (like for like with the OOF).

Tasks: fewshot (People's Daily, 60 classes, <= 10 rows each), large (30,000 jieba dictionary
words by part of speech, 20 classes, median 3 characters), embedded (the sentiment reviews),
pair (review crops, 3,000 train pairs; 1,500 test pairs from reviews train never saw).

  .venv/bin/python bench/anytask.py --budget 20
  .venv/bin/python bench/anytask.py --tasks fewshot pair --budget 10

One line per task, then one key=value line.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comp.core.utils import read_json  # noqa: E402

TASKS = ("fewshot", "large", "embedded", "pair")
PRETRAINED = ("e5_linear", "e5_pair_linear", "fusion_e5_fast")


def build(task: str, data: Path) -> None:
    """The task's competition folder, once."""
    from comp.data import embedded

    if (data / "train.csv").exists():
        return
    if task == "fewshot":
        embedded.build_fewshot(data)
    elif task == "large":
        embedded.build_wordclass(data)
    elif task == "embedded":
        embedded.build_sentiment(data)
    else:
        embedded.build_pairs(data, n_train=3000, n_test=1500)  # hidden accuracy to +-1.3 points


def run(task: str, data: Path, work: Path, budget: float) -> tuple[float, str]:
    """`comp run` on one task in its own process; (wall seconds, its log)."""
    log = work / f"{task}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    t = time.time()
    with open(log, "w", encoding="utf-8") as f:
        subprocess.run([sys.executable, "-m", "comp", "run", "--data", str(data), "--budget",
                        str(budget)], cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT,
                       check=True)
    return time.time() - t, log.read_text(encoding="utf-8")


def oof_on(run_dir: Path, rows: np.ndarray, labels: np.ndarray, metric: str) -> float:
    """A member's or ensemble's OOF scored on `rows` only."""
    from comp.core.metrics import score

    oof = np.load(run_dir / "oof.npy")
    return float(score(metric, labels[rows], oof[rows]))


def fold_models_hidden(member: Path, comp, answers: Path) -> float:
    """Mean hidden accuracy of a member's fold models, each alone: what its OOF (every row
    scored by one fold model) is like for like with; the member's test.npy averages the fold
    models, which scores above any one of them."""
    from comp.blend.submit import label_scores
    from comp.data.readers import read_answers

    ans = read_answers(answers)
    keep = [j for j, i in enumerate(comp.test_ids) if i in ans]
    truth = [ans[comp.test_ids[j]] for j in keep]
    classes = [str(c) for c in read_json(member / "classes.json")]
    scores = [label_scores(truth, [classes[j] for j in np.load(f)[keep].argmax(1)])["accuracy"]
              for f in sorted(member.glob("fold*/test_proba.npy"))]
    return float(np.mean(scores)) if scores else float("nan")


def measure(task: str, work: Path, budget: float) -> dict:
    from comp.data.competition import load_competition
    from comp.data.folds import load_folds
    from comp.workflows.pipeline import Layout, hidden_accuracies

    data = work / "data" / task
    build(task, data)
    wall, text = run(task, data, work, budget)
    os.chdir(work)
    layout = Layout(str(data))
    cfg = layout.data_config()
    comp = load_competition(cfg)
    folds = load_folds(comp, cfg)
    k = cfg.folds
    members = sorted(p.parent for p in layout.runs.glob("*/cv.json"))
    cvs = {m.name: read_json(m / "cv.json") for m in members}
    best = re.search(r"submission=(\S+)", text).group(1)
    chosen = Path(best).with_suffix(".json")
    man = read_json(chosen)
    metric = man.get("metric") or "accuracy"
    hidden = hidden_accuracies(layout, members, [Path(best)])
    planned = re.search(r"plan: ([\d.]+) of [\d.]+ budget minutes", text)
    # the members' planned minutes at the end: the first plan + what the leftover bought
    took = re.search(r"members planned ([\d.]+) min, took ([\d.]+)", text)
    covered = man.get("folds_used") or list(range(k))
    rows = np.flatnonzero(np.isin(folds, covered))
    labels = comp.labels
    own = {n: oof_on(m, rows, labels, metric) for n, m in zip(cvs, members)
           if cvs[n].get("folds_used") is None or set(covered) <= set(cvs[n]["folds_used"])}
    tfidf = {n: v for n, v in own.items() if n.startswith("tfidf")}
    # the TF-IDF-only ensemble: blended again without the others, scored on the same rows
    from comp.blend.ensemble import run_ensemble

    tf_dirs = [m for m in members if m.name.startswith("tfidf")]
    tf_sub = run_ensemble([str(m) for m in tf_dirs], man.get("method", "hill"), cfg, "",
                          work / "tfidf_only" / task / man.get("method", "hill"))
    tf_run = Path(read_json(tf_sub.with_suffix(".json"))["run_dir"])
    out = {
        "task": task, "rows": len(comp.train_ids), "classes": comp.n_classes,
        "planned_min": float(planned.group(1)) if planned else float("nan"),
        "took_min": float(took.group(2)) if took else float("nan"),
        "final_plan_min": float(took.group(1)) if took else float("nan"),
        "leftover": re.findall(r"budget minutes left: (\S+) (?:adds|starts on) fold\(s\) (\S+)",
                               text),
        "wall_min": wall / 60, "budget": budget,
        "chosen": chosen.name, "chosen_cv": float(man["cv"]),
        "chosen_hidden": hidden.get(best, float("nan")),
        "best_single": max(own, key=own.get) if own else "", "best_single_cv": max(own.values(),
                                                                               default=np.nan),
        "tfidf_ens_cv": oof_on(tf_run, rows, labels, metric),
        "best_tfidf_cv": max(tfidf.values(), default=np.nan),
        "pretrained": {n: (len(cvs[n].get("folds_used") or range(k)), cvs[n]["cv"],
                           hidden.get(str(m), float("nan")))
                       for n, m in zip(cvs, members) if n in PRETRAINED},
        "members": {n: (cvs[n]["cv"], hidden.get(str(m), float("nan")),
                        fold_models_hidden(m, comp, data / "answers.csv"))
                    for n, m in zip(cvs, members)},
        "covered": len(covered), "k": k,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench_work/anytask"))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--budget", type=float, default=20.0, help="minutes per task")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for task in args.tasks:
        r = measure(task, work, args.budget)
        results.append(r)
        pre = " ".join(f"{n}[{f}/{r['k']} folds oof={cv:.4f} hidden={h:.4f}]"
                       for n, (f, cv, h) in r["pretrained"].items())
        gaps = " ".join(f"{n}:{cv - h:+.3f}/{cv - fh:+.3f}"
                        for n, (cv, h, fh) in r["members"].items())
        bought = ",".join(f"{n}[{f}]" for n, f in r["leftover"]) or "nothing"
        print(f"{task}: {r['rows']} rows {r['classes']} classes | plan {r['planned_min']:.1f} "
              f"min (+ leftover: {bought}; {r['final_plan_min']:.1f} in all), members took "
              f"{r['took_min']:.1f} ({r['took_min'] / r['budget']:.0%} of {r['budget']:g}), "
              f"wall {r['wall_min']:.1f} | chosen {r['chosen']} nested CV "
              f"{r['chosen_cv']:.4f} hidden {r['chosen_hidden']:.4f} on {r['covered']}/{r['k']} "
              f"folds' rows; best single {r['best_single']} {r['best_single_cv']:.4f}; "
              f"TF-IDF-only ensemble {r['tfidf_ens_cv']:.4f}; best TF-IDF "
              f"{r['best_tfidf_cv']:.4f} | pretrained {pre} | OOF - hidden (averaged fold "
              f"models / each fold model alone) {gaps}", flush=True)
    print(" ".join(
        f"{r['task']}_plan_to_wall={r['planned_min'] / max(r['wall_min'], 1e-9):.2f} "
        f"{r['task']}_final_plan_to_wall={r['final_plan_min'] / max(r['wall_min'], 1e-9):.2f} "
        f"{r['task']}_budget_used={r['took_min'] / r['budget']:.2f} "
        f"{r['task']}_wall_to_budget={r['wall_min'] / r['budget']:.2f} "
        f"{r['task']}_ens_gain_over_tfidf={r['chosen_cv'] - r['tfidf_ens_cv']:+.4f} "
        f"{r['task']}_ens_gain_over_single={r['chosen_cv'] - r['best_single_cv']:+.4f}"
        for r in results))


if __name__ == "__main__":
    main()
