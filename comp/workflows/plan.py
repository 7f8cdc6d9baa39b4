"""Planning `comp run` to a time budget: which members, on how many folds, in what order.

    steps = make_plan(candidates, budget_s, n_train, k, speeds)
    later = pseudo_steps(names, rounds, n_train, k, speeds)  # the pseudo-label rounds' members
    print_plan(steps, budget_s, k, later)  # before training: members, folds, estimated minutes
    record_speed(speeds_path, cv)     # after a member: what it really cost, for the next plan

A member's cost is a setup (caches, vectors, imports: once per member) plus a per-fold cost that
grows with the training rows. The priors below were measured on the 2-core machine this toolkit
is built on; every finished member replaces its prior with what it really cost on this machine
(runs/speeds.json), so the second plan of a competition is better than the first. Members come
in the caller's order (expected gain per second: TF-IDF first, then the pretrained e5 member,
then fusion variants). A member that cannot finish all its folds in what is left either runs on
as many folds as fit (networks: their OOF covers those folds' rows, see
comp.kfold.runner.assemble) or is not started. Budget left when the members finish buys more
(`leftover`): whole folds of a network at its real pace, else one fold cut to what is left.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comp.config.schema import min_steps_epochs
from comp.core.utils import log, read_json, write_json

# name -> (setup seconds, seconds per fold per 1,000 training rows), measured on 2 cores
PRIORS: dict[str, tuple[float, float]] = {
    # the vectorizer once, then seconds per fold; the default run on the embedded competition
    # (13,890 rows, 5 folds) measured 18-47 s a member (runs/speeds.json), ~2x below the first
    # priors, which had the plan give e5 less of the budget than it could use
    "tfidf_char_svc": (5.0, 0.25),
    "tfidf_char_lr": (5.0, 0.27),
    "tfidf_word_lr": (10.0, 0.3),  # jieba over every text once
    "tfidf_word_svc": (10.0, 0.28),
    "tfidf_nblr": (5.0, 0.75),
    # frozen e5 sentence embeddings of every text (~42 texts/s at 128 pieces on 2 cores), then
    # a logistic regression a fold; a pair member embeds both sides
    "e5_linear": (420.0, 0.5),
    "e5_pair_linear": (840.0, 1.0),
    # pair members: TF-IDF + jieba overlaps of both sides once (5,250 pairs: 7 s), then folds
    "tfidf_pair_svc": (15.0, 0.5),
    "tfidf_pair_lr": (20.0, 1.0),
    # char + word word2vec, then up to 12 epochs of a shared biLSTM over both orders of a pair
    "siamese_vectors": (60.0, 60.0),
    "textcnn_vectors": (150.0, 20.0),  # three word2vec files, then 3 epochs of a TextCNN
    # e5 import, the char/word/bigram vectors, the frozen-feature and layer-8 caches of every
    # text; then per fold two cached phase-1 epochs and two top-4 phase-2 epochs
    # measured on the embedded competition (13,890 rows, fold 0, quiet 2 cores): caching
    # 330 s, two phase-1 epochs 62 s, two top-4 phase-2 epochs 541 s, predictions 64 s
    "fusion_e5_bilstm": (480.0, 60.0),  # + 150 s of char/word/bigram word2vec
    # 128 characters, char vectors only, fixed epochs, bf16 without dropout: the default run
    # measured 16.1 min for folds 0 and 1 (caching 3.0 min, ~6.5 min a fold)
    "fusion_e5_fast": (180.0, 35.0),
    # every layer fine-tuned for two epochs in bf16 without dropout (--preset best), fast's
    # inputs: measured 77.0 min for five folds (13-19 min a fold)
    "fusion_e5_full": (180.0, 80.0),
    # the same at 160 characters: measured 83.6 min; as --preset best's pseudo-round member
    # (~1,460 pseudo rows joining each fold's 11,112) 94.1 min, what this prior plans
    "fusion_e5_full160": (180.0, 100.0),
}
DEFAULT_PRIOR = (60.0, 60.0)  # an unknown neural member: assume it is slow
# member kinds whose OOF may cover a subset of folds (expensive ones under a budget)
PARTIAL_OK = ("fusion_e5_bilstm", "fusion_e5_fast", "fusion_e5_full", "fusion_e5_full160")


@dataclass
class Step:
    """One planned member: its folds (None = all), estimated seconds, and the plan's reason."""

    name: str
    folds: list[int] | None
    seconds: float
    note: str = ""
    actual: float | None = field(default=None)
    per_fold: float = 0.0  # estimated seconds of one more fold (what a time slice is cut from)
    setup: float = 0.0  # estimated seconds before its first fold (caches, word vectors)
    slice: float | None = None  # a fold's time slice when the leftover budget sets it
    fold_seconds: list[float] = field(default_factory=list)  # what each trained fold took

    def pace(self) -> float | None:
        """Seconds one more fold of a member that ran costs: the mean of its folds' seconds
        without the dearest (the fold that filled the member's caches, which later folds and
        calls of this process reuse), else its minutes over its folds; None before it ran."""
        f = sorted(self.fold_seconds)
        if len(f) >= 2:
            return sum(f[:-1]) / (len(f) - 1)
        n = len(self.folds) if self.folds is not None else len(f)
        return self.actual / n if self.actual and n else None

    def fold_cost(self) -> float:
        """Seconds one fold still to train costs as it was bought: its slice (a fold cut to
        the budget's end), else its real pace once it ran, else its planned per-fold cost."""
        if self.slice is not None:
            return self.slice
        return self.pace() or self.per_fold


# The neural priors were measured on the embedded reviews (train + test: REF_TEXTS texts). What a
# neural member reads of a text is its first max_chars characters; there, on average:
REF_TEXTS = 17363
REF_CHARS = {48: 37.0, 64: 43.7, 96: 53.2, 128: 59.8, 160: 65.0, 256: 69.8}
# share of a neural step's cost that shorter texts do not shrink (optimizer step, Python work,
# kernels' fixed costs); an assumption the first finished member replaces (runs/speeds.json)
LENGTH_FIXED = 0.2
SETUP_FIXED = 20.0  # a neural member's imports and model build; the rest of its setup reads texts


@dataclass
class Shape:
    """What a member's cost depends on in a task: the mean characters it reads per text (its
    max_chars cut), how many texts its caches and word vectors read (train + test + unlabelled),
    and its schedule (epochs per phase, min_steps, batch size, accumulation)."""

    chars: float
    max_chars: int
    n_texts: int
    epochs: tuple[int, int] = (0, 0)
    min_steps: int = 0
    batch_size: int = 32
    accum: int = 1
    # texts/s of an e5 forward on a sample of this task's texts on this machine (`calibrate`):
    # for a member that reads e5 it replaces the guess from characters
    rate: float | None = None
    # a vectors network's seconds per training row, predicted row and text of setup, timed on
    # this task's texts here (`calibrate_pace`): it replaces the prior altogether
    pace: dict[str, float] | None = None
    inner_val: float = 0.0  # share of a fold's training rows held back to choose the epoch
    swap: bool = False  # a pair trains in both orders (train.pair_swap): twice the rows
    tta: bool = False  # a pair is predicted in both orders (model.pair_tta)


def shape_of(recipe: Any, lengths: Any) -> Shape | None:
    """A recipe's Shape on texts of these lengths (train + test + unlabelled); None for a
    TF-IDF member (its prior is used as it is). An e5 embedding member is priced like a
    network's caching: by the texts it reads, cut at its encoder length."""
    import numpy as np

    if recipe.kind == "linear":
        if recipe.linear.features != "e5":
            return None
        cut = int(recipe.linear.encoder_len)
        return Shape(float(np.minimum(np.asarray(lengths), cut).mean()) if len(lengths) else
                     0.0, cut, len(lengths))
    t = recipe.train
    cut = int(recipe.model.max_chars)
    return Shape(float(np.minimum(np.asarray(lengths), cut).mean()) if len(lengths) else 0.0,
                 cut, len(lengths), (t.epochs_frozen, t.epochs_unfrozen), t.min_steps,
                 t.batch_size, t.accum, inner_val=float(t.inner_val),
                 swap=bool(getattr(t, "pair_swap", False)),
                 tta=bool(getattr(recipe.model, "pair_tta", False)))


def _ref_chars(cut: int) -> float:
    import numpy as np

    keys = sorted(REF_CHARS)
    return float(np.interp(cut, keys, [REF_CHARS[c] for c in keys]))


# texts/s of an e5 forward (fp32, 2 cores) over the reference texts at 128 pieces
REF_RATE = 42.0


def ref_rate(cut: int) -> float:
    """REF_RATE at another cut, by the characters the reference texts have under it."""
    per_text = LENGTH_FIXED + (1.0 - LENGTH_FIXED) * _ref_chars(cut) / _ref_chars(128)
    return REF_RATE / per_text


def length_factor(shape: Shape) -> float:
    """A neural member's cost per text here over its cost per text on the reference texts: a
    measured e5 rate on this task's texts when there is one (it knows the script, the pieces
    and this machine), else from the characters read."""
    if shape.rate:
        return ref_rate(shape.max_chars) / shape.rate
    return LENGTH_FIXED + (1.0 - LENGTH_FIXED) * shape.chars / max(_ref_chars(shape.max_chars),
                                                                    1.0)


def epoch_factor(shape: Shape, fold_rows: float) -> float:
    """How much longer `train.min_steps` makes a fold's schedule on `fold_rows` training rows
    than the recipe's epochs (comp.config.schema.min_steps_epochs)."""
    if sum(shape.epochs) == 0:
        return 1.0
    steps = math.ceil(math.ceil(fold_rows / shape.batch_size) / shape.accum)
    return sum(min_steps_epochs(shape.epochs, shape.min_steps, steps)) / sum(shape.epochs)


def estimate(name: str, n_train: int, k: int, speeds: dict[str, Any],
             shape: Shape | None = None) -> tuple[float, float]:
    """(setup seconds, seconds per fold) for a member on this competition.

    Measured here (runs/speeds.json) beats everything. Else the prior, and for a network with
    its `shape` on this task, the prior scaled to the task: per fold by the characters it reads
    per text and the epochs min_steps adds, its setup (caches, word vectors) by the texts it
    reads and their characters."""
    rec = speeds.get(name)
    setup, per_1k = PRIORS.get(name, DEFAULT_PRIOR)
    rows = n_train * (k - 1) / k / 1000.0  # a fold trains on (k - 1) / k of the rows
    if rec:  # measured here: the per-fold cost, setup folded in when it could not be told apart
        return float(rec.get("setup", 0.0)), float(rec["per_fold_per_1k"]) * rows
    if shape is None:
        return setup, per_1k * rows
    if shape.pace:
        return paced(shape, n_train, k)
    lf = length_factor(shape)
    reads = lf * shape.n_texts / REF_TEXTS
    setup = min(setup, SETUP_FIXED) + max(setup - SETUP_FIXED, 0.0) * reads
    return setup, per_1k * rows * lf * epoch_factor(shape, rows * 1000.0)


PACE_SETUP = 3.0  # a vectors network's imports and model build, beside what its texts cost


def paced(shape: Shape, n_train: int, k: int) -> tuple[float, float]:
    """(setup, per fold) seconds of a vectors network from its timed pace: every epoch trains
    the fold's fitting rows and predicts its selection and validation rows, then the fold
    predicts its validation and test rows once more. Early stopping only makes it cheaper."""
    pace = shape.pace or {}
    fold_train = n_train * (k - 1) / k
    val, test = n_train / k, max(shape.n_texts - n_train, 0)
    fit_rows = fold_train * (1.0 - shape.inner_val) * (2 if shape.swap else 1)
    orders = 2 if shape.tta else 1
    steps = math.ceil(math.ceil(fit_rows / shape.batch_size) / shape.accum)
    epochs = sum(min_steps_epochs(shape.epochs, shape.min_steps, steps))
    per_epoch = (fit_rows * pace["train_row"]
                 + (fold_train * shape.inner_val + val) * orders * pace["eval_row"])
    return (PACE_SETUP + shape.n_texts * pace["setup_text"],
            epochs * per_epoch + (val + test) * orders * pace["eval_row"])


def make_plan(candidates: list[str], budget_s: float | None, n_train: int, k: int,
              speeds: dict[str, Any], done: dict[str, set[int]] | None = None,
              shapes: dict[str, Shape | None] | None = None) -> list[Step]:
    """Members in order, each on all folds, on the folds that fit, or left out (folds = []).

    done: per member, the folds already trained on today's inputs (comp.kfold.runner.folds_done):
    they cost nothing, so a resumed run spends its budget on the folds still missing.
    shapes: per member, its Shape on this task (`shape_of`); without one, the prior as it is."""
    steps, left = [], budget_s if budget_s is not None else math.inf
    for name in candidates:
        setup, per_fold = estimate(name, n_train, k, speeds, (shapes or {}).get(name))
        have = set((done or {}).get(name, ()))
        todo = [f for f in range(k) if f not in have]
        whole = (setup if todo else 0.0) + len(todo) * per_fold
        if whole <= left:
            steps.append(Step(name, None, whole, "" if todo else "current", per_fold=per_fold,
                              setup=setup if todo else 0.0))
            left -= whole
            continue
        n = int((left - setup) // per_fold) if per_fold > 0 else 0
        if partial_ok(name, (shapes or {}).get(name)) and (n >= 1 or have):
            n = max(n, 0)
            cost = (setup if n else 0.0) + n * per_fold
            use = sorted(have | set(todo[:n]))
            steps.append(Step(name, use, cost, f"{len(use)} of {k} folds fit in the budget"
                              + (f" ({len(have)} already trained)" if have else "")
                              + "; its OOF covers those rows", per_fold=per_fold,
                              setup=setup if n else 0.0))
            left -= cost
        else:
            steps.append(Step(name, [], whole, f"needs {whole / 60:.1f} min, "
                              f"{max(left, 0) / 60:.1f} left: not started", per_fold=per_fold,
                              setup=setup))
    return steps


def partial_ok(name: str, shape: Shape | None) -> bool:
    """A member whose OOF may cover some folds only: a network (an expensive member under a
    budget; comp.kfold.runner.assemble joins the folds it has)."""
    return name in PARTIAL_OK or (shape is not None and sum(shape.epochs) > 0)


# share of a network's planned seconds its folds' slices get: the rest is the member's own
# start (reading the competition, word vectors, the model's files) and the joining of its folds
FOLD_SHARE = 0.9


def time_slice(step: Step, n_folds: int) -> float:
    """`train.time_limit` for a planned network's folds: what the plan gave each of its
    `n_folds` new folds, its setup shared among them (a fold's slice counts from its start:
    model build, feature caches, predictions), so a member whose estimate was low ends its
    schedule early (the decay brought forward) instead of eating the members after it."""
    if step.slice is not None:
        return round(step.slice, 1)
    return round(FOLD_SHARE * (step.per_fold + step.setup / max(n_folds, 1)), 1)


# a fold bought with the leftover budget gets at least this share of what a whole fold costs;
# less than that is a model cut before it learned much
MIN_SLICE = 0.4


def leftover(step: Step, k: int, left: float, partial: bool = True) -> list[int]:
    """Leftover budget: the folds a network adds in `left` seconds. Whole folds at the pace its
    folds really had (else the estimate: its setup too when it has not started); when no whole
    fold fits but MIN_SLICE of one does, one fold with a slice cut to what is left (set on
    `step.slice`). What it buys is added to the step's planned seconds. A member planned on
    every fold, or not partial, adds nothing."""
    if step.folds is None or not partial or len(step.folds) >= k or left <= 0:
        return []
    pace = (step.pace() if step.folds else None) or (
        step.per_fold + (0.0 if step.folds else step.setup))
    if pace <= 0:
        return []
    todo = [f for f in range(k) if f not in step.folds]
    base = step.seconds if step.folds else 0.0  # not started: it costs what it now buys
    n = min(int(left // pace), len(todo))
    if n >= 1:
        step.slice, step.seconds = None, base + n * pace
        return todo[:n]
    if left >= MIN_SLICE * pace:
        step.slice, step.seconds = FOLD_SHARE * left, base + left
        return todo[:1]
    return []


SEED_COPY = "_seed"  # <member>_seed<N>: the member's N-th seed


def seed_copy(name: str) -> tuple[str, int]:
    """(the member, N) of a seed copy's name `<member>_seed<N>` (N >= 2); (name, 0) else."""
    base, _, n = name.rpartition(SEED_COPY)
    return (base, int(n)) if base and n.isdigit() and int(n) >= 2 else (name, 0)


def second_seed(steps: list[Step], k: int, left: float, skip: set[str],
                ranks: dict[str, float] | None = None) -> Step | None:
    """Leftover budget once every network has what fits: a second seed of the member that
    finished every fold (none in `skip`), ranks first by `ranks` (lower first: its OOF rank;
    unranked ones after, in the steps' order) and fits on every fold in `left` seconds at the
    pace its folds really had; None when none fits. Every fold, because a member on some folds
    only moves the ensembles' comparison onto those folds' rows. Another seed's errors differ
    from the first's, which an ensemble averages away; the blenders weigh the copy by its own
    OOF, as any member."""
    ranks = ranks or {}
    done = [s for s in steps if s.name not in skip and not seed_copy(s.name)[1] and s.actual
            and (s.folds is None or len(s.folds) >= k)]
    for step in sorted(done, key=lambda s: ranks.get(s.name, math.inf)):
        pace = step.pace() or step.actual / k
        name = f"{step.name}{SEED_COPY}2"
        if k * pace > left or any(s.name == name for s in steps):
            continue
        return Step(name, None, k * pace,
                    f"leftover: a second seed of {step.name}, every fold at its pace",
                    per_fold=pace)
    return None


def pseudo_steps(names: list[str], rounds: int, n_train: int, k: int,
                 speeds: dict[str, Any], done: dict[str, set[int]] | None = None,
                 shapes: dict[str, Shape | None] | None = None) -> list[Step]:
    """The pseudo-label rounds' members, for the printed plan: each costs what its recipe costs
    here (measured or prior) on the training rows, the confident test rows add to that; `done`:
    folds current on the last run's pseudo rows (free if the round writes the same rows)."""
    steps = []
    for r in range(1, rounds + 1):
        for name in names:
            setup, per_fold = estimate(name, n_train, k, speeds, (shapes or {}).get(name))
            left = k - len((done or {}).get(name + "_pl" * r, ()))
            steps.append(Step(name + "_pl" * r, None, (setup if left else 0.0) + left * per_fold,
                              f"pseudo-label round {r}, "
                              + ("+ its confident test rows" if left else
                                 "current if its pseudo rows come out the same")))
    return steps


def print_plan(steps: list[Step], budget_s: float | None, k: int,
               later: list[Step] = ()) -> None:
    """The plan, one line per member, before anything trains; `later`: the pseudo-label
    rounds' members, which run after the ensembles, outside the budget."""
    total = sum(s.seconds for s in steps if s.folds != [])
    more = sum(s.seconds for s in later)
    head = (f"plan: {total / 60:.1f} of {budget_s / 60:g} budget minutes" if budget_s
            else f"plan: about {total / 60:.1f} minutes (no budget)")
    log(head + (f", then ~{more / 60:.1f} for the pseudo-label round" if later else ""))
    for s in [*steps, *later]:
        folds = ("all" if s.folds is None else "none" if not s.folds
                 else ",".join(map(str, s.folds)))
        log(f"  {s.name:<26} folds {folds:<6} ~{s.seconds / 60:5.1f} min"
            + (f"  ({s.note})" if s.note else ""))


def print_actual(steps: list[Step], budget_s: float | None = None) -> None:
    """Estimated vs actual minutes of the members that ran, and where the budget went."""
    for s in steps:
        if s.actual is not None:
            folds = "all" if s.folds is None else ",".join(map(str, s.folds))
            log(f"  {s.name:<26} folds {folds:<10} planned {s.seconds / 60:5.1f} min, took "
                f"{s.actual / 60:5.1f}" + ("  (with leftover budget)" if "leftover" in s.note
                                           else ""))
    ran = [s for s in steps if s.actual is not None]
    if budget_s and ran:
        planned, took = sum(s.seconds for s in ran), sum(s.actual for s in ran)
        log(f"plan: members planned {planned / 60:.1f} min, took {took / 60:.1f} "
            f"({took / budget_s:.0%} of the {budget_s / 60:g}-minute budget)")


def machine() -> str:
    """This machine, as calibrations are kept by: host name and CPU count."""
    import os
    import socket

    return f"{socket.gethostname()}/{os.cpu_count()}cpu"


def calibrated(path: Path, key: str, measure: Callable[[], Any], say: Callable[[Any], str]
               ) -> Any:
    """A calibration kept in runs/speeds.json under "calibration", by machine and `key`:
    `measure()` once, `say(value)` logged when it is measured."""
    speeds = load_speeds(path)
    mine = speeds.get("calibration", {}).get(machine(), {})
    if key not in mine:
        mine[key] = measure()
        log(say(mine[key]))
        speeds = load_speeds(path)  # as it is now
        speeds.setdefault("calibration", {})[machine()] = mine
        write_json(path, speeds)
    return mine[key]


def calibrate(path: Path, folder: str | Path, texts: list[str], cut: int) -> float:
    """Texts/s of an e5 forward at `cut` pieces on a sample of `texts` here, measured once per
    machine, folder, cut and sample."""
    from comp.core.utils import sha1_of
    from comp.nn.sentence import encode_rate

    return float(calibrated(
        path, f"e5 {Path(folder).name} {cut} {sha1_of(texts)}",
        lambda: round(encode_rate(folder, texts, cut), 2),
        lambda r: f"plan: e5 reads {r:.1f} of this task's texts a second here at {cut} pieces "
                  f"({REF_RATE:g} on the reference reviews at 128)"))


def calibrate_pace(path: Path, recipe: Any, texts: list[str], n_classes: int
                   ) -> dict[str, float]:
    """A vectors network's pace on a sample of `texts` here (comp.nn.pace.network_pace),
    measured once per machine, member, model, batch sizes and texts."""
    from comp.core.utils import sha1_of
    from comp.nn.pace import network_pace

    t = recipe.train
    return dict(calibrated(
        path, f"pace {recipe.name} "
              f"{sha1_of([repr(recipe.model), repr((t.batch_size, t.eval_batch_size)), *texts])}",
        lambda: {k: float(f"{v:.4g}") for k, v in network_pace(recipe, texts, n_classes).items()},
        lambda p: f"plan: {recipe.name} trains {1 / max(p['train_row'], 1e-9):.0f} and predicts "
                  f"{1 / max(p['eval_row'], 1e-9):.0f} of this task's rows a second here"))


def load_speeds(path: Path) -> dict[str, Any]:
    """runs/speeds.json, or {}."""
    return read_json(path) if path.exists() else {}


def record_speed(path: Path, name: str, cv: dict[str, Any] | None, k: int) -> None:
    """Remember what a member's folds cost here (from its cv.json), for the next plan."""
    if not cv or not cv.get("seconds") or not cv.get("n_train"):
        return
    n_folds = len(cv.get("folds_used") or range(k))
    rows = cv["n_train"] * (k - 1) / k / 1000.0
    speeds = load_speeds(path)
    speeds[name] = {"per_fold_per_1k": cv["seconds"] / n_folds / max(rows, 1e-9),
                    "setup": 0.0, "n_train": cv["n_train"]}
    write_json(path, speeds)
