"""Distillation benchmark: an ensemble teacher vs its distilled student vs the same student
trained on labels alone, side by side on the embedded sentiment competition.

The teacher is the best submission manifest under submissions/ that has a neural (fusion)
member and matches the competition; without one, a teacher is built into --work: a BERT fusion
member (when models/bert_tiny exists) plus TF-IDF members, blended by hill climbing.

Printed, for each of teacher / student / plain student:
  hidden   accuracy on answers.csv of its test predictions (the teacher: the ensemble's test
           probabilities; the students: the one fold model that is timed)
  rows/s   CPU inference over the test texts, best of --repeat runs on --threads threads,
           including text -> features work. An ensemble teacher counts one model per member
           (vectorize + predict for TF-IDF members), summed; its test probabilities average k
           fold models per member, which would cost k times more, so this favours the teacher.

Students are trained on --folds (default fold 0) of the shared fold table with the teacher's
OOF probabilities; pass --folds all to train every fold (the member files then exist too).

  .venv/bin/python bench/distill.py
  .venv/bin/python bench/distill.py --recipe recipes/student_bilstm.toml --teacher X.json

Ends with one line: teacher_acc=… student_acc=… plain_student_acc=… speedup=…
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp.config import DataConfig, Recipe, load_recipe  # noqa: E402
from comp.data import Competition, load_competition, load_folds, read_answers  # noqa: E402
from comp.utils import CompError, log, read_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LINEAR = ["tfidf_char_lr", "tfidf_word_lr", "tfidf_nblr"]


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Fastest wall time of `repeat` calls (the CPU is shared; the minimum is the least noisy)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# ---------------------------------------------------------------------------------------------
# the teacher


def member_kind(run_dir: Path) -> str:
    """kind of a member dir from its cv.json or recipe.toml ('' when unknown)."""
    cv = run_dir / "cv.json"
    if cv.exists():
        return str(read_json(cv).get("kind", ""))
    return ""


def find_teacher(submissions: Path, comp: Competition, folds: np.ndarray) -> Path | None:
    """The best-CV manifest with a fusion member that matches this competition, or None."""
    from comp.distill import load_teacher

    best: tuple[float, Path] | None = None
    for man in sorted(submissions.glob("*.json")):
        try:
            info = read_json(man)
        except ValueError:
            continue
        if not isinstance(info, dict) or "members" not in info:
            continue
        if not any(member_kind(Path(m)) == "fusion" for m in info["members"]):
            continue
        try:
            load_teacher(man, comp, folds)
        except CompError as e:
            log(f"bench: {man} skipped ({e})")
            continue
        cv = float(info.get("cv") or 0.0)
        if best is None or cv > best[0]:
            best = (cv, man)
    return None if best is None else best[1]


def build_teacher(data: Path, work: Path) -> Path:
    """Train TF-IDF members (+ a BERT fusion member when models/bert_tiny exists) into
    work/runs and blend them by hill climbing; returns the manifest path."""
    from comp.cli import train_recipe
    from comp.ensemble import run_ensemble
    from comp.member import member_done

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


def member_seconds(run_dir: Path, comp: Competition, repeat: int) -> tuple[str, float]:
    """(description, seconds) of one model of a member predicting every test text."""
    recipe = load_recipe(run_dir / "recipe.toml")
    texts = comp.test_texts
    if recipe.kind == "linear":
        from comp.linear import full_proba, make_model, make_vectorizer

        vec = make_vectorizer(recipe.linear)
        vec.fit(comp.train_texts + comp.test_texts)  # as train_linear does
        model = make_model(recipe.linear, comp.n_classes, recipe.train.seed)
        model.fit(vec.transform(comp.train_texts), comp.labels)
        sec = best_of(lambda: full_proba(model, vec.transform(texts), comp.n_classes), repeat)
        return f"TF-IDF {recipe.linear.features} {recipe.linear.model}", sec
    from comp.distill import load_student, predict_texts

    model = load_student(run_dir, 0, comp.n_classes, recipe)
    bs = recipe.train.eval_batch_size
    sec = best_of(lambda: predict_texts(model, texts, recipe.model, bs), repeat)
    return f"{recipe.kind} {recipe.model.head}", sec


# ---------------------------------------------------------------------------------------------
# students


def student_recipe(path: Path, work: Path, data: Path, teacher: Path, plain: bool) -> Recipe:
    """The student recipe under test, or its plain (labels only) twin."""
    stem = path.stem
    over = [f"runs_dir={work / 'runs'}", f"data.dir={data}", f"distill.teacher={teacher}",
            f"name=bench_{stem}{'_plain' if plain else ''}"]
    if plain:
        over += ["distill.alpha=1.0", "distill.use_test=false"]
    return load_recipe(path, over)


def run_student(recipe: Recipe, folds: list[int] | None, comp: Competition, truth: np.ndarray,
                repeat: int) -> dict:
    """Train (resumes), then score and time fold 0's model on the test texts."""
    from comp.distill import load_student, predict_texts, train_student
    from comp.fusion import count_parameters

    t0 = time.time()
    cv = train_student(recipe, folds)
    train_sec = time.time() - t0
    model = load_student(recipe.run_dir, 0, comp.n_classes, recipe)
    bs = recipe.train.eval_batch_size
    proba = predict_texts(model, comp.test_texts, recipe.model, bs)
    sec = best_of(lambda: predict_texts(model, comp.test_texts, recipe.model, bs), repeat)
    done = json_or_none(recipe.run_dir / "fold0" / "done.json")
    out = {"acc": float((proba.argmax(1) == truth).mean()), "sec": sec,
           "params": count_parameters(model)["total"], "train_sec": train_sec,
           "val": done["score"] if done else float("nan")}
    if cv is not None:  # every fold done: the member's k-fold test average too
        test = np.load(recipe.run_dir / "test.npy")
        out["acc_kfold"] = float((test.argmax(1) == truth).mean())
        out["cv"] = cv["cv"]
    return out


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
    from comp.vectors import train_vectors

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
    man = read_json(teacher)
    t_test = np.load(man["test"])
    import jieba

    jieba.initialize()  # a one-off dictionary load must not count against the first model
    teacher_acc = float((t_test.argmax(1) == truth).mean())
    parts = [(Path(m), *member_seconds(Path(m), comp, args.repeat)) for m in man["members"]]
    teacher_sec = sum(s for _, _, s in parts)

    res = {}
    for plain in (False, True):
        r = student_recipe(Path(args.recipe), work, data, teacher, plain)
        log(f"bench: training {r.name} on folds {args.folds}")
        res[plain] = run_student(r, student_folds, comp, truth, args.repeat)

    n = len(comp.test_texts)
    print(f"data {data}: {len(comp.train_ids)} train / {n} test texts; torch threads "
          f"{args.threads}; timing = best of {args.repeat}")
    print(f"teacher {teacher} ({source}); OOF cv {man.get('cv', float('nan')):.4f}, "
          f"method {man.get('method', '?')}")
    print(f"\n{'model':<44}{'hidden':>8}{'rows/s':>10}")
    for path, what, sec in parts:
        print(f"  member {path.name + ' (' + what + ')':<35}{'':>8}{n / sec:>10.0f}")
    print(f"{'teacher (ensemble, members summed)':<44}{teacher_acc:>8.4f}{n / teacher_sec:>10.0f}")
    stem = Path(args.recipe).stem
    for plain, label in ((False, f"student {stem} (KD)"), (True, f"plain {stem} (alpha=1)")):
        s = res[plain]
        print(f"{label:<44}{s['acc']:>8.4f}{n / s['sec']:>10.0f}   fold-0 val {s['val']:.4f}, "
              f"{s['params'] / 1e6:.2f}M params, trained in {s['train_sec']:.0f}s")
        if "acc_kfold" in s:
            print(f"{'  k-fold test average':<44}{s['acc_kfold']:>8.4f}{'':>10}   OOF cv "
                  f"{s['cv']:.4f}")
    student, plain = res[False], res[True]
    speedup = teacher_sec / student["sec"]
    print(f"\nstudent vs teacher: {100 * (student['acc'] - teacher_acc):+.2f} points, "
          f"{speedup:.1f}x rows/s; KD vs plain student: "
          f"{100 * (student['acc'] - plain['acc']):+.2f} points")
    print(f"targets: speedup >= 100x {'met' if speedup >= 100 else 'NOT met'}; within 2 points "
          f"{'met' if teacher_acc - student['acc'] <= 0.02 else 'NOT met'}; beats plain "
          f"{'met' if student['acc'] > plain['acc'] else 'NOT met'}  "
          f"(total {time.time() - t_start:.0f}s)")
    print(f"teacher_acc={teacher_acc:.4f} student_acc={student['acc']:.4f} "
          f"plain_student_acc={plain['acc']:.4f} speedup={speedup:.1f}")


if __name__ == "__main__":
    main()
