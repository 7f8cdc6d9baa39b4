"""Distillation benchmark: an ensemble teacher vs its distilled student vs the same student
trained on labels alone, side by side on the embedded sentiment competition.

The teacher is a submission manifest under submissions/ that has a neural (fusion) member and
matches the competition: the best CV among those with a backbone (transformer) member, else the
best CV; without one, a teacher is built into --work: a BERT fusion member (when
models/bert_tiny exists) plus TF-IDF members, blended by hill climbing.

Printed, for each of teacher / student / plain student:
  hidden   accuracy on answers.csv of its test predictions (the teacher: the ensemble's test
           probabilities; the students: the one fold model that is timed)
  rows/s   CPU inference over the test texts, text to probabilities, on --threads threads
           (torch, BLAS and the tokenizers' thread pool alike): the best of --repeat rounds,
           timed after the students are trained; each round runs every teacher and student job
           once, so a shared CPU's load changes hit both sides alike.

The teacher's test probabilities average k fold models of every member, so producing them costs
k models per member. Each member is timed as its inputs (text -> features: TF-IDF vectorizing,
tokenizing, vector ids; shared by its fold models, so counted once) plus one fold model, and
charged inputs + k * model; members with weight 0 in the blend are not needed and not charged.
Neural members run at the student's eval batch size or their own, whichever is faster. The
table shows both the one-model and the k-fold rows/s per member; the speedup on the last line
is the k-fold teacher's time over the student's (one model: the fold-0 student is what is
scored).

The students are served as `comp.nn.serving.serving_model` serves them: a TextCNN over gensim
vectors folded into per-vocabulary lookup tables of its convolutions (equal outputs, tested in
tests/test_distill.py); the plain model forward of the same weights is printed below it.

Students are trained on --folds (default fold 0) of the shared fold table; pass --folds all to
train every fold (the member files then exist too). Student fold k learns from the teacher's
fold-k models only (distill.targets = "fold"): the teacher's members first predict their
training rows per fold (`comp.workflows.distill.teacher_with_fold_targets`: fusion members
from their kept fold models, TF-IDF members refitted) and are blended again the same way into
--work.

  .venv/bin/python bench/distill.py
  .venv/bin/python bench/distill.py --recipe recipes/student_bilstm.toml --teacher X.json

Ends with one line: teacher_acc=… student_acc=… plain_student_acc=… speedup=…
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp.config.schema import DataConfig, ModelConfig, Recipe
from comp.core.utils import CompError, log, read_json  # noqa: E402
from comp.data.competition import Competition, load_competition
from comp.data.folds import load_folds
from comp.data.readers import read_answers  # noqa: E402
from comp.data.recipes import load_recipe  # noqa: E402

if TYPE_CHECKING:
    from comp.nn.fusion import FusionModel, TokenMemo
    from comp.nn.rows import Rows

ROOT = Path(__file__).resolve().parents[1]
LINEAR = ["tfidf_char_lr", "tfidf_word_lr", "tfidf_nblr"]


class Stopwatch:
    """Best-of-n wall times of named jobs, run round-robin: every round runs each job once, so
    the load drifts of a shared CPU hit the teacher and the students alike (the minimum is the
    least noisy figure)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Callable[[], object]] = {}

    def add(self, key: str, fn: Callable[[], object]) -> str:
        """Register a job; returns its key."""
        self.jobs[key] = fn
        return key

    def run(self, repeat: int) -> dict[str, float]:
        """Seconds of each job's fastest run."""
        best = {key: math.inf for key in self.jobs}
        for _ in range(repeat):
            for key, fn in self.jobs.items():
                t0 = time.perf_counter()
                fn()
                best[key] = min(best[key], time.perf_counter() - t0)
        return best


# ---------------------------------------------------------------------------------------------
# the teacher


def member_kind(run_dir: Path) -> str:
    """kind of a member dir from its cv.json or recipe.toml ('' when unknown)."""
    cv = run_dir / "cv.json"
    if cv.exists():
        return str(read_json(cv).get("kind", ""))
    return ""


def has_backbone(run_dir: Path) -> bool:
    """Whether a member runs a pretrained backbone (a transformer under its head)."""
    try:
        return bool(load_recipe(run_dir / "recipe.toml").model.backbones)
    except CompError:
        return False


def find_teacher(submissions: Path, comp: Competition, folds: np.ndarray) -> Path | None:
    """The manifest with a fusion member that matches this competition, or None: one with a
    backbone member (a transformer teacher) first, then the best CV."""
    from comp.members.student import load_teacher

    best: tuple[tuple[bool, float], Path] | None = None
    for man in sorted(submissions.glob("*.json")):
        try:
            info = read_json(man)
        except ValueError:
            continue
        if not isinstance(info, dict) or "members" not in info:
            continue
        members = [Path(m) for m in info["members"]]
        if not any(member_kind(m) == "fusion" for m in members):
            continue
        try:
            load_teacher(man, comp, folds)
        except CompError as e:
            log(f"bench: {man} skipped ({e})")
            continue
        key = (any(has_backbone(m) for m in members), float(info.get("cv") or 0.0))
        if best is None or key > best[0]:
            best = (key, man)
    return None if best is None else best[1]


def build_teacher(data: Path, work: Path) -> Path:
    """Train TF-IDF members (+ a BERT fusion member when models/bert_tiny exists) into
    work/runs and blend them by hill climbing; returns the manifest path."""
    from comp.blend.ensemble import run_ensemble
    from comp.kfold.runner import member_done
    from comp.members.registry import train_recipe

    over = [f"runs_dir={work / 'runs'}", f"data.dir={data}"]
    names = list(LINEAR)
    if (ROOT / "models" / "bert_tiny").exists():
        names.insert(0, "fusion_bert_bilstm")
    dirs = []
    for n in names:
        r = load_recipe(ROOT / "recipes" / f"{n}.toml", over)
        if not member_done(r.run_dir):
            t0 = time.time()
            log(f"bench: training teacher member {r.name}")
            train_recipe(r)
            log(f"bench: {r.name} took {time.time() - t0:.0f}s")
        dirs.append(r.run_dir)
    csv = run_ensemble(dirs, "hill", DataConfig(dir=str(data)), "accuracy",
                       work / "teacher" / "hill")
    return csv.with_suffix(".json")


@dataclass
class Cost:
    """Inference cost of one member on the test texts, split so shared work is counted once.

    `feat_sec` turns texts into model inputs (TF-IDF vectorizing, tokenizing, vector ids): a
    member's k fold models share it. `model_sec` is one fold model on those inputs.
    """

    name: str
    what: str
    k: int  # fold models whose test predictions the member averages
    feat_sec: float
    model_sec: float
    batch_size: int | None = None

    @property
    def one_sec(self) -> float:
        """One fold model, text to probabilities."""
        return self.feat_sec + self.model_sec

    @property
    def kfold_sec(self) -> float:
        """What the member's test probabilities cost: shared inputs + k fold models."""
        return self.feat_sec + self.k * self.model_sec


def fold_models(run_dir: Path) -> int:
    """How many fold models a member's test.npy averages (its cv.json fold scores)."""
    cv = read_json(run_dir / "cv.json")
    k = len(cv.get("fold_scores") or [])
    if k < 1:
        raise CompError(f"{run_dir}/cv.json: no fold_scores; is the member finished?")
    return k


def linear_member(run_dir: Path, recipe: Recipe, comp: Competition,
                  watch: Stopwatch) -> Callable[[dict[str, float]], Cost]:
    """A TF-IDF member: vectorizing once, then one fold-sized model's predict_proba."""
    from comp.members.linear import full_proba, make_model, make_vectorizer

    vec = make_vectorizer(recipe.linear)
    vec.fit(comp.train_texts + comp.test_texts)  # as train_linear does
    model = make_model(recipe.linear, comp.n_classes, recipe.train.seed)
    model.fit(vec.transform(comp.train_texts), comp.labels)
    texts = comp.test_texts
    X = vec.transform(texts)
    name = run_dir.name
    feat = watch.add(f"{name} inputs", lambda: vec.transform(texts))
    pred = watch.add(f"{name} model", lambda: full_proba(model, X, comp.n_classes))
    what = f"TF-IDF {recipe.linear.features} {recipe.linear.model}"
    k = fold_models(run_dir)
    return lambda t: Cost(name, what, k, t[feat], t[pred])


def neural_inputs(model: FusionModel, texts: list[str],
                  cfg: ModelConfig) -> tuple[Rows, TokenMemo]:
    """Rows with vector ids, and every backbone's tokens in a fresh memo (what prediction
    would otherwise tokenize batch by batch)."""
    from comp.nn.fusion import TokenMemo
    from comp.nn.rows import make_rows

    rows = make_rows(texts, cfg, np.zeros((len(texts), model.n_classes), np.float32))
    rows.vec_ids = model.vector_ids(rows.texts)
    memo = TokenMemo()
    for j, (b, max_len) in enumerate(zip(model.backbones, model.max_lens)):
        memo.encode(j, b, rows.texts, max_len)
    return rows, memo


def neural_member(run_dir: Path, recipe: Recipe, comp: Competition, watch: Stopwatch,
                  batch_sizes: list[int]) -> Callable[[dict[str, float]], Cost]:
    """A fusion (or student) member: inputs once, then fold 0's model at the fastest of
    `batch_sizes` (the student's eval batch size and the member's own)."""
    from comp.nn.serving import load_student
    from comp.nn.trainer import predict

    model = load_student(run_dir, 0, comp.n_classes, recipe)
    texts = comp.test_texts
    rows, memo = neural_inputs(model, texts, recipe.model)
    model.tokens = memo  # the model's own batches now only re-pad memoised tokens
    name = run_dir.name
    feat = watch.add(f"{name} inputs", lambda: neural_inputs(model, texts, recipe.model))
    preds = {bs: watch.add(f"{name} model batch {bs}",
                           lambda bs=bs: predict(model, rows, bs, desc="teacher member"))
             for bs in sorted(set(batch_sizes))}
    what = f"{recipe.kind} {recipe.model.head}"
    k = fold_models(run_dir)

    def cost(t: dict[str, float]) -> Cost:
        bs = min(preds, key=lambda b: t[preds[b]])
        return Cost(name, what, k, t[feat], t[preds[bs]], bs)

    return cost


def teacher_member(run_dir: Path, comp: Competition, watch: Stopwatch,
                   student_bs: int) -> Callable[[dict[str, float]], Cost]:
    """Register one teacher member's timing jobs; the returned function builds its Cost."""
    recipe = load_recipe(run_dir / "recipe.toml")
    if recipe.kind == "linear":
        return linear_member(run_dir, recipe, comp, watch)
    return neural_member(run_dir, recipe, comp, watch,
                         [student_bs, recipe.train.eval_batch_size])


# ---------------------------------------------------------------------------------------------
# students


def student_recipe(path: Path, work: Path, data: Path, teacher: Path, plain: bool) -> Recipe:
    """The student recipe under test, or its plain (labels only) twin.

    Its run dir is named after the recipe's fingerprint, so a rerun resumes the same student
    and an edited recipe trains a new one instead of clashing with the old folds.
    """
    from comp.kfold.runner import recipe_fingerprint

    stem = path.stem
    over = [f"runs_dir={work / 'runs'}", f"data.dir={data}", f"distill.teacher={teacher}",
            f"name=bench_{stem}{'_plain' if plain else ''}"]
    if plain:
        over += ["distill.alpha=1.0", "distill.use_test=false"]
    recipe = load_recipe(path, over)
    return load_recipe(path, over + [f"name={recipe.name}_{recipe_fingerprint(recipe)[:8]}"])


def run_student(recipe: Recipe, folds: list[int] | None, comp: Competition, truth: np.ndarray,
                watch: Stopwatch) -> dict:
    """Train (resumes) and score fold 0's model on the test texts; register its timing jobs:
    served as comp.nn.serving serves it (lookup tables for a TextCNN), the plain model
    forward, and its text -> inputs part (as charged to the teacher's members)."""
    from comp.members.student import train_student
    from comp.nn.fusion import count_parameters
    from comp.nn.serving import load_student, predict_texts, serving_model

    t0 = time.time()
    cv = train_student(recipe, folds)
    train_sec = time.time() - t0
    model = load_student(recipe.run_dir, 0, comp.n_classes, recipe)
    served = serving_model(model)
    bs = recipe.train.eval_batch_size
    texts = comp.test_texts
    proba = predict_texts(served, texts, recipe.model, bs)
    name = recipe.name
    done = json_or_none(recipe.run_dir / "fold0" / "done.json")
    out = {"acc": float((proba.argmax(1) == truth).mean()), "served": type(served).__name__,
           "params": count_parameters(model)["total"], "train_sec": train_sec,
           "val": done["score"] if done else float("nan"),
           "jobs": {"sec": watch.add(f"{name} served",
                                     lambda: predict_texts(served, texts, recipe.model, bs)),
                    "forward_sec": watch.add(f"{name} forward",
                                             lambda: predict_texts(model, texts, recipe.model,
                                                                   bs)),
                    "feat_sec": watch.add(f"{name} inputs",
                                          lambda: neural_inputs(model, texts, recipe.model))}}
    if cv is not None:  # every fold done: the member's k-fold test average too
        test = np.load(recipe.run_dir / "test.npy")
        out["acc_kfold"] = float((test.argmax(1) == truth).mean())
        out["cv"] = cv["cv"]
    return out


def table_row(label: str, hidden: float | str | None = None, k: int | str | None = None,
              one: float | str | None = None, kfold: float | str | None = None,
              inputs: float | str | None = None, note: str = "") -> str:
    """One line of the printed table; None leaves a cell blank."""
    def cell(v: float | str | None, width: int, fmt: str) -> str:
        text = "" if v is None else v if isinstance(v, str) else format(v, fmt)
        return f"{text:>{width}}"

    return (f"{label:<58}{cell(hidden, 7, '.4f')}{cell(k, 3, 'd')}{cell(one, 10, '.0f')}"
            f"{cell(kfold, 10, '.0f')}{cell(inputs, 8, '.2f')}"
            + (f"   {note}" if note else "")).rstrip()


def json_or_none(p: Path) -> dict | None:
    """A JSON file's content, or None when absent."""
    return read_json(p) if p.exists() else None


# ---------------------------------------------------------------------------------------------


def main() -> None:
    """Parse arguments, get a teacher, train both students, print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "sentiment"))
    ap.add_argument("--work", default="/tmp/comp-bench-distill")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "student_textcnn.toml"))
    ap.add_argument("--teacher", help="a teacher manifest (default: find or build one)")
    ap.add_argument("--submissions", default=str(ROOT / "submissions"))
    ap.add_argument("--folds", default="0", help="student folds to train: '0', '0,1' or 'all'")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every model")
    ap.add_argument("--repeat", type=int, default=3, help="timing runs (best is kept)")
    args = ap.parse_args()
    os.environ.setdefault("COMP_QUIET", "1")
    # one thread count for every model: torch, BLAS (sklearn) and the tokenizers' Rayon pool
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    os.chdir(ROOT)  # recipes and manifests hold paths relative to the repository
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    data, work = Path(args.data), Path(args.work)
    cfg = DataConfig(dir=str(data))
    comp = load_competition(cfg)
    folds = load_folds(comp, cfg)
    answers = read_answers(data / "answers.csv")
    truth = np.array([comp.classes.index(answers[i]) for i in comp.test_ids])
    student_folds = None if args.folds == "all" else [int(f) for f in args.folds.split(",")]
    if student_folds is not None and 0 not in student_folds:
        raise SystemExit("--folds must include fold 0 (its model is the one scored and timed)")

    # vectors the student needs, where its recipe looks for them
    from comp.nn.vectors import train_vectors

    probe = load_recipe(Path(args.recipe))
    for kind in probe.model.vectors:
        kv = Path(probe.model.vectors_dir) / f"w2v-{kind}.kv"
        if not kv.exists():
            train_vectors(comp.train_texts + comp.test_texts, kind, kv)

    teacher = Path(args.teacher) if args.teacher else find_teacher(Path(args.submissions),
                                                                   comp, folds)
    source = "given" if args.teacher else "found in " + args.submissions
    if teacher is None:
        source = f"built in {work}"
        teacher = build_teacher(data, work)
    if probe.distill.targets == "fold":  # fold-honest targets: the student's CV is honest too
        from comp.workflows.distill import teacher_with_fold_targets

        name = read_json(teacher).get("name") or teacher.stem
        teacher = teacher_with_fold_targets(teacher, work / "teacher" / f"{name}_folds")
    man = read_json(teacher)
    t_test = np.load(man["test"])
    import jieba

    jieba.initialize()  # a one-off dictionary load must not count against the first model
    teacher_acc = float((t_test.argmax(1) == truth).mean())
    weights = man.get("weights") or {}
    names = man.get("member_names") or [Path(m).name for m in man["members"]]
    unused = [n for n in names if weights.get(n, 1.0) == 0]  # test.npy does not depend on them
    watch = Stopwatch()
    student_bs = probe.train.eval_batch_size
    members = [teacher_member(Path(m), comp, watch, student_bs)
               for m, n in zip(man["members"], names) if n not in unused]

    res = {}
    for plain in (False, True):
        r = student_recipe(Path(args.recipe), work, data, teacher, plain)
        log(f"bench: training {r.name} on folds {args.folds}")
        res[plain] = run_student(r, student_folds, comp, truth, watch)

    log(f"bench: timing {len(watch.jobs)} jobs, best of {args.repeat} round-robin rounds")
    times = watch.run(args.repeat)
    costs = [member(times) for member in members]
    teacher_one = sum(c.one_sec for c in costs)
    teacher_sec = sum(c.kfold_sec for c in costs)
    for s in res.values():
        s.update({key: times[job] for key, job in s.pop("jobs").items()})

    n = len(comp.test_texts)
    print(f"data {data}: {len(comp.train_ids)} train / {n} test texts; threads "
          f"{args.threads}; timing = best of {args.repeat} rounds, teacher and students "
          "round-robin")
    print(f"teacher {teacher} ({source}); OOF cv {man.get('cv', float('nan')):.4f}, "
          f"method {man.get('method', '?')}")
    print("rows/s: test texts per second, text to probabilities. inputs: the text -> features "
          "part of that\n(TF-IDF vectorizing, tokenizing, vector ids), which a member's k fold "
          "models share. The\nteacher's test probabilities average k fold models per member, so "
          "it costs k models per\nmember: the speedup uses the 'k models' figure.")
    print("\n" + table_row("model", "hidden", "k", "rows/s", "rows/s", "inputs"))
    print(table_row("", "", "", "1 model", "k models", "sec"))
    for c in costs:
        what = c.what + (f", batch {c.batch_size}" if c.batch_size else "")
        print(table_row(f"  member {c.name} ({what})", None, c.k, n / c.one_sec, n / c.kfold_sec,
                        c.feat_sec))
    for name in unused:
        print(f"  member {name}: weight 0 in the blend, not needed for its test probabilities")
    print(table_row("teacher (ensemble, members summed)", teacher_acc, None, n / teacher_one,
                    n / teacher_sec, sum(c.feat_sec for c in costs)))
    stem = Path(args.recipe).stem
    for plain, label in ((False, f"student {stem} (KD)"), (True, f"plain {stem} (alpha=1)")):
        s = res[plain]
        print(table_row(label, s["acc"], 1, n / s["sec"], None, s["feat_sec"],
                        f"served as {s['served']}; fold-0 val {s['val']:.4f}, "
                        f"{s['params'] / 1e6:.2f}M params, trained in {s['train_sec']:.0f}s"))
        print(table_row("  same weights, plain model forward", None, None, n / s["forward_sec"]))
        if "acc_kfold" in s:
            print(table_row("  its k-fold test average (k models)", s["acc_kfold"], None, None,
                            None, None, f"OOF cv {s['cv']:.4f}"))
    student, plain = res[False], res[True]
    speedup = teacher_sec / student["sec"]
    models_only = sum(c.k * c.model_sec for c in costs)
    print(f"\nstudent vs teacher: {100 * (student['acc'] - teacher_acc):+.2f} points, "
          f"{speedup:.1f}x rows/s vs the k-fold teacher; KD vs plain student: "
          f"{100 * (student['acc'] - plain['acc']):+.2f} points")
    print(f"  for reference: {teacher_one / student['sec']:.1f}x vs one model per member; "
          f"{models_only / student['sec']:.1f}x vs the teacher's k-fold models with its inputs "
          f"free; plain forward of the student: {teacher_sec / student['forward_sec']:.1f}x")
    print(f"targets: speedup >= 100x {'met' if speedup >= 100 else 'NOT met'}; within 2 points "
          f"{'met' if teacher_acc - student['acc'] <= 0.02 else 'NOT met'}; beats plain "
          f"{'met' if student['acc'] > plain['acc'] else 'NOT met'}  "
          f"(total {time.time() - t_start:.0f}s)")
    print(f"teacher_acc={teacher_acc:.4f} student_acc={student['acc']:.4f} "
          f"plain_student_acc={plain['acc']:.4f} speedup={speedup:.1f}")


if __name__ == "__main__":
    main()
