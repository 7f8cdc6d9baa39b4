"""Distillation: a fast student (TextCNN / biLSTM over gensim vectors) taught by an ensemble.

    train_student(recipe)                     k folds on the shared fold table (comp.kfold.runner)
      load_teacher(manifest, comp, folds)     the ensemble's probabilities: per fold (K, n, C)
                                              on train, test (and unlabelled) rows, and its
                                              OOF (n_train, C) + test (n_test, C)
      teacher_rows(teacher, ...)              test/unlabelled rows with targets, per fold
      fit_student_fold(ctx, data, teacher)    rows with packed targets -> comp.nn.trainer.fit
    comp.nn.serving.serving_model(load_student(run, fold))   TextCNN folded into lookup tables
      comp.nn.serving.predict_texts(served, texts, cfg)     raw texts -> (n, C) probabilities

The teacher is an ensemble's probabilities. Student fold k learns only from what the teacher's
fold-k models said (`distill.targets = "fold"`, the default): their blend on fold k's training
rows (the ensemble's train_by_fold.npy, from members run with `train.predict_train`) and on the
test texts (test_by_fold.npy), which join training parts as unlabelled rows when
`distill.use_test` is on (the runner drops any of them that duplicates a validation text). Those
models never saw fold k's validation labels, so no validation row reaches its own fold through a
target, and the student's CV is honest. With `data.extra` set and a teacher whose members
predicted those texts, the teacher's unlabelled probabilities join the same way, after the test
rows, with the same weight (`distill.test_weight`). Validation rows reach the fit loop with
empty targets and are scored against their true labels. A student predicts the unlabelled texts
too, so it can itself join an ensemble that teaches or pseudo-labels.

`distill.targets = "oof"` teaches with the teacher's OOF probabilities and its full test blend
instead. A training row's OOF target came from a teacher model that never saw that row's label,
but did see fold k's validation rows: a near-copy of a validation row in another fold carries
that row's label into fold k. The student's CV is then optimistic (cv.json says so, and
ensembles take no per-fold predictions from it); the hidden test score is the honest one.

Each training row carries a packed (2C,) target: [one-hot label | teacher probabilities]; an
unlabelled row has a zero label half, which gives it zero weight in the hard-label loss. The
loss (Hinton et al. 2015; Tang et al. 2019 for MSE on logits) is

    alpha * hard(student, label) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))
    alpha * hard(student, label) + (1 - alpha) * MSE(s - mean(s), t - mean(t))    (loss = "mse")

with teacher logits t = log(teacher probabilities) (a logit vector is only defined up to a
per-row shift, hence the centring for MSE) and `hard` the recipe's `train.loss`. With alpha = 1
the student is exactly a fusion member trained on hard labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comp.config.schema import Recipe
from comp.core.utils import CompError, log, read_json, write_json
from comp.data.competition import Competition, load_competition
from comp.data.folds import folds_hash, load_folds
from comp.kfold.extra import ExtraRows
from comp.kfold.rundir import read_member
from comp.kfold.runner import FoldContext, run_member
from comp.nn.fusion import model_inputs
from comp.nn.losses import ClassificationLoss
from comp.nn.rows import Rows
from comp.nn.trainer import (
    FusionData,
    extra_rows,
    finish_fold,
    fit,
    label_loss,
    predict_fold_texts,
    predict_fold_train,
    refit,
    selection_split,
    start_fold,
)

__all__ = ["Teacher", "DistillLoss", "load_teacher", "teacher_logits", "pack_targets",
           "teacher_rows", "fit_student_fold", "train_student"]

PROBA_FLOOR = 1e-6  # log(0) has no logit; ensembles of calibrated models do reach ~0


# ---------------------------------------------------------------------------------------------
# the teacher


@dataclass
class Teacher:
    """An ensemble's probabilities in the competition's class order."""

    oof: np.ndarray  # (n_train, C) out-of-fold probabilities
    test: np.ndarray  # (n_test, C)
    path: Path
    info: dict
    unlabelled: np.ndarray | None = None  # (n_unlabelled, C) on comp.unlabelled_texts
    # fold k's blend, made without fold k's validation labels; None when the teacher lacks it
    train_by_fold: np.ndarray | None = None  # (K, n_train, C)
    test_by_fold: np.ndarray | None = None  # (K, n_test, C)
    unlabelled_by_fold: np.ndarray | None = None  # (K, n_unlabelled, C)
    fold_ids: list[int] = field(default_factory=list)  # the fold of each *_by_fold row

    @property
    def fingerprint(self) -> str:
        """Content hash of the targets a student's training rows learn from."""
        import hashlib

        h = hashlib.sha1()
        for a in (self.oof, self.train_by_fold):
            if a is not None:
                h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    def soft_targets(self, fold: int, train_idx: np.ndarray, mode: str) -> np.ndarray:
        """(len(train_idx), C) targets of fold `fold`'s training rows: from the fold's own
        models ("fold") or the OOF ("oof")."""
        if mode == "oof":
            return self.oof[train_idx]
        return self.train_by_fold[self.fold_ids.index(fold)][train_idx]


def resolve_path(p: str, base: Path) -> Path:
    """A manifest path: as written (relative to the working dir), else next to the manifest."""
    q = Path(p)
    if q.is_absolute() or q.exists():
        return q
    for root in (base, base.parent):
        if (root / q).exists():
            return root / q
    return q


def load_teacher(path: str | Path, comp: Competition, folds: np.ndarray) -> Teacher:
    """Read a teacher and check it belongs to this competition and fold table.

    Args:
        path: a submission manifest (.json from `comp ensemble`, keys "oof", "test",
            "classes", optional "unlabelled") or a member run directory (oof.npy, test.npy,
            classes.json, cv.json, optional unlabelled.npy).
        comp: the student's competition.
        folds: the student's fold table (n_train,).

    Returns:
        The Teacher, columns reordered to comp.classes, rows renormalised (multi-label: one
        probability per label, as they are). Its unlabelled
        probabilities are kept only when they are for comp.unlabelled_texts. Per-fold arrays
        (manifest keys "train_by_fold", "test_by_fold", "unlabelled_by_fold"; a member
        directory's train_by_fold.npy and fold dirs) are read when present.

    Raises:
        CompError: one line naming the file and what does not match.
    """
    p = Path(path)
    if not p.exists():
        raise CompError(f"{p}: teacher manifest not found")
    by_fold: dict[str, np.ndarray | None] = {}
    if p.is_dir():
        for f in ("oof.npy", "test.npy", "classes.json", "cv.json"):
            if not (p / f).exists():
                raise CompError(f"{p}: teacher directory has no {f} (not a finished member?)")
        info = dict(read_json(p / "cv.json"))
        info.update(classes=read_json(p / "classes.json"), oof=str(p / "oof.npy"),
                    test=str(p / "test.npy"))
        if (p / "unlabelled.npy").exists():
            info["unlabelled"] = str(p / "unlabelled.npy")
        m = read_member(p)
        fold_ids = m.fold_ids
        by_fold = {"train_by_fold": m.train_by_fold, "test_by_fold": m.test_by_fold,
                   "unlabelled_by_fold": m.unlabelled_by_fold}
        base = p
    else:
        try:
            info = read_json(p)
        except ValueError as e:
            raise CompError(f"{p}: not a JSON manifest ({e})") from None
        if not isinstance(info, dict):
            raise CompError(f"{p}: not a teacher manifest (expected a JSON object)")
        for key in ("oof", "test", "classes"):
            if key not in info:
                raise CompError(f"{p}: not a teacher manifest (no '{key}'); give the .json "
                                "that `comp ensemble` wrote")
        base = p.parent
    classes = [str(c) for c in info["classes"]]
    if sorted(classes) != sorted(comp.classes):
        raise CompError(f"{p}: teacher classes {classes} differ from the competition's "
                        f"{comp.classes}")
    want = {"n_train": len(comp.train_ids), "n_test": len(comp.test_ids),
            "train_hash": comp.train_hash, "test_hash": comp.test_hash,
            "folds_hash": folds_hash(comp.train_ids, folds)}
    for key, value in want.items():
        if key in info and info[key] is not None and info[key] != value:
            raise CompError(f"{p}: teacher {key} {info[key]} does not match {comp.dir} "
                            f"({value}); rebuild the ensemble on this competition and fold table")
    order = [classes.index(c) for c in comp.classes]
    arrays = []
    keys = [("oof", want["n_train"]), ("test", want["n_test"])]
    if _teacher_unlabelled(info, p, comp):
        keys.append(("unlabelled", len(comp.unlabelled_texts)))
    shapes = dict(keys)

    def checked(a: np.ndarray, f: Path | str, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if a.shape != shape:
            raise CompError(f"{f}: teacher {key} probabilities have shape {a.shape}, expected "
                            f"{shape} for {comp.dir}")
        # a teacher on some folds only (folds_used) leaves the other rows of its OOF NaN
        rows = ~np.isnan(a).all(-1) if key == "oof" and info.get("folds_used") else ...
        if not np.isfinite(a[rows]).all() or (a[rows] < 0).any():
            raise CompError(f"{f}: teacher {key} probabilities are not finite and >= 0")
        a = a[..., order].astype(np.float64)
        if comp.multilabel:  # one probability per label: nothing to renormalise
            if (a > 1).any():
                raise CompError(f"{f}: teacher {key} probabilities exceed 1 (a multi-label "
                                "teacher gives one probability per label)")
            return a
        return a / np.maximum(a.sum(-1, keepdims=True), 1e-12)

    def read(key: str) -> tuple[np.ndarray, Path]:
        f = resolve_path(str(info[key]), base)
        if not f.exists():
            raise CompError(f"{p}: teacher '{key}' file {f} not found")
        return np.load(f), f

    for key, n in keys:
        a, f = read(key)
        arrays.append(checked(a, f, key, (n, len(classes))))
    # an ensemble of members on some folds only has per-fold predictions of those folds
    if not p.is_dir():
        fold_ids = [int(f) for f in info.get("folds_used") or []]
    fold_ids = fold_ids or list(range(int(folds.max()) + 1))
    k = len(fold_ids)
    for key, n in (("train_by_fold", want["n_train"]), ("test_by_fold", want["n_test"]),
                   ("unlabelled_by_fold", shapes.get("unlabelled"))):
        a, f = by_fold.get(key), p
        if a is None and info.get(key) and not p.is_dir():
            a, f = read(key)
        by_fold[key] = None if a is None or n is None else checked(a, f, key,
                                                                   (k, n, len(classes)))
    return Teacher(arrays[0], arrays[1], p, info, arrays[2] if len(arrays) > 2 else None,
                   **by_fold, fold_ids=fold_ids)


def _teacher_unlabelled(info: dict, p: Path, comp: Competition) -> bool:
    """Whether the teacher's unlabelled probabilities are for the student's unlabelled texts."""
    has = bool(info.get("unlabelled"))
    if not has:
        if comp.unlabelled_texts:
            log(f"{p}: the teacher has no unlabelled predictions (a member lacks "
                "unlabelled.npy); the student learns from its test rows only")
        return False
    if not comp.unlabelled_texts:
        log(f"{p}: the teacher predicted {info.get('n_unlabelled', '?')} unlabelled texts; set "
            "data.extra to that file in the student's recipe to learn from them")
        return False
    got = info.get("unlabelled_hash")
    if got is not None and got != comp.unlabelled_hash:
        raise CompError(f"{p}: teacher unlabelled_hash {got} does not match "
                        f"{comp.unlabelled_path} ({comp.unlabelled_hash}); the teacher's "
                        "members predicted other unlabelled texts")
    return True


def teacher_logits(proba: Tensor, floor: float = PROBA_FLOOR, multilabel: bool = False
                   ) -> Tensor:
    """Teacher probabilities (B, C) -> logits (B, C): log-probabilities, floored; multi-label:
    each label's log-odds, its probability kept in [floor, 1 - floor]."""
    p = proba.float()
    if multilabel:
        return torch.logit(p.clamp(floor, 1.0 - floor))
    return torch.log(p.clamp_min(floor))


UNLABELLED = -1.0  # the hard half of a teacher-only row (a 0/1 label set may be all zeros)


def pack_targets(hard: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """(n, C) one-hot labels or 0/1 label sets (rows of UNLABELLED = teacher-only) + (n, C)
    teacher probabilities -> (n, 2C)."""
    if hard.shape != soft.shape:
        raise ValueError(f"hard {hard.shape} and soft {soft.shape} targets differ in shape")
    return np.concatenate([hard, soft], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the loss


class DistillLoss(nn.Module):
    """alpha * hard-label loss + (1 - alpha) * KD loss on packed (B, 2C) targets.

    Args:
        hard: the hard-label loss (a comp.nn.losses ClassificationLoss), applied to labelled rows.
        alpha: weight of the hard-label loss.
        temperature: softening temperature T of the KL term (scaled by T^2 so its gradients
            keep their size as T changes).
        kind: "kl" or "mse" (on centred logits; T unused).
        multilabel: one sigmoid per label: "kl" is each label's binary KL between the softened
            teacher and student (sigmoid of logits / T), averaged over labels; "mse" compares
            log-odds.
    """

    def __init__(self, hard: ClassificationLoss, alpha: float = 0.5, temperature: float = 2.0,
                 kind: str = "kl", multilabel: bool = False) -> None:
        super().__init__()
        if kind not in ("kl", "mse"):
            raise CompError(f"recipe key 'distill.loss': must be kl or mse, got '{kind}'")
        self.hard = hard
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.kind = kind
        self.n_classes = hard.n_classes
        self.multilabel = multilabel

    def soft_rows(self, logits: Tensor, teacher: Tensor) -> Tensor:
        """Per-row KD loss: (B, C) student logits, (B, C) teacher probabilities -> (B,)."""
        s = logits.float()
        t = teacher_logits(teacher, multilabel=self.multilabel)
        if self.multilabel:
            if self.kind == "mse":
                return ((s - t) ** 2).mean(dim=-1)
            tau = self.temperature
            p = torch.sigmoid(t / tau)  # (B, L) teacher, softened
            # binary KL(p || q) = cross-entropy(p, q) - entropy(p), both from torch's stable BCE
            kl = (F.binary_cross_entropy_with_logits(s / tau, p, reduction="none")
                  - F.binary_cross_entropy_with_logits(t / tau, p, reduction="none"))
            return tau * tau * kl.mean(dim=-1)
        if self.kind == "mse":
            s = s - s.mean(dim=-1, keepdim=True)
            t = t - t.mean(dim=-1, keepdim=True)
            return ((s - t) ** 2).mean(dim=-1)
        tau = self.temperature
        log_p = F.log_softmax(t / tau, dim=-1)  # (B, C) teacher, softened
        log_q = F.log_softmax(s / tau, dim=-1)  # (B, C) student, softened
        return tau * tau * (log_p.exp() * (log_p - log_q)).sum(dim=-1)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Scalar loss.

        Args:
            logits: (B, C) student logits.
            target: (B, 2C) packed [one-hot label or 0/1 label set (UNLABELLED for
                teacher-only rows) | teacher probabilities].
            weight: (B,) row weights; default 1.
        """
        c = self.n_classes
        if target.dim() != 2 or target.shape[1] != 2 * c:
            raise ValueError(f"distillation targets must be (B, {2 * c}), "
                             f"got {tuple(target.shape)}")
        w = logits.new_ones(logits.shape[0]) if weight is None else weight.float().reshape(-1)
        hard, soft = target[:, :c].float(), target[:, c:].float()  # (B, C) each
        total = logits.new_zeros(())
        if self.alpha > 0:
            labelled = (hard >= 0).all(dim=-1)  # (B,) teacher-only rows weigh 0
            if not self.multilabel:
                labelled &= hard.sum(dim=-1) > 0  # an all-zero one-hot row: unlabelled too
            total = total + self.alpha * self.hard(logits, hard.clamp_min(0),
                                                   w * labelled.float())
        if self.alpha < 1:
            kd = (w * self.soft_rows(logits, soft)).sum() / w.sum().clamp_min(1e-12)
            total = total + (1.0 - self.alpha) * kd
        return total


# ---------------------------------------------------------------------------------------------
# the k-fold member


def fit_student_fold(ctx: FoldContext, data: FusionData, teacher: Teacher | None
                     ) -> tuple[np.ndarray, ...]:
    """One fold: training rows with packed targets (+ teacher-only rows), fit, predict.

    The same fold as comp.nn.trainer.fit_fold (start_fold / finish_fold: same seeds and order) with
    packed targets and the distillation loss, so alpha = 1 reproduces a plain fusion member
    exactly. The teacher is read at ctx.train_idx only (`Teacher.soft_targets`).

    Returns:
        (val_proba (n_val, C), predict_proba (n_test [+ n_unlabelled], C)), and with
        ctx.predict_train a third array, the training part's (len(train_idx), C).
    """
    recipe, comp, cfg, dcfg = ctx.recipe, ctx.comp, ctx.recipe.train, ctx.recipe.distill
    c = comp.n_classes
    model, name = start_fold(ctx, data)
    everything = ctx
    fit_idx, sel_idx, ctx = selection_split(ctx)  # the epoch is chosen on held-out train rows

    def training_rows(idx: np.ndarray, c: FoldContext) -> Rows:
        rows = data.fit_rows.take(idx)  # pairs in both orders with train.pair_swap
        hard = (comp.labels[idx].astype(np.float32) if comp.multilabel  # (n, C) label sets
                else np.eye(comp.n_classes, dtype=np.float32)[comp.labels[idx]])  # one-hot
        soft = (teacher.soft_targets(c.fold, idx, dcfg.targets) if teacher is not None
                else hard)  # (n, C)
        rows.targets = pack_targets(hard, soft)[rows.source]  # (rows, 2C), windows share
        if len(c.extra):  # teacher-only rows: no label half
            targets = pack_targets(np.full_like(c.extra.targets, UNLABELLED), c.extra.targets)
            rows = rows.concat(extra_rows(model, c, targets))
        return rows

    train = training_rows(fit_idx, ctx)
    # train.refit: all the training rows again, for the epochs the held-out ones chose
    full = training_rows(everything.train_idx, everything) if (
        cfg.refit and len(sel_idx)) else None
    select, val = data.rows.take(sel_idx), data.rows.take(ctx.val_idx)
    for rows in (select, val):  # fit never holds their targets, only scores them
        rows.targets = np.zeros((len(rows), 2 * c), np.float32)
    cache = data.ensure_cache(model, data.rows.texts + data.test.texts + train.texts
                              + (full.texts if full is not None else []))
    alpha = dcfg.alpha if teacher is not None else 1.0

    def loss() -> DistillLoss:
        return DistillLoss(label_loss(ctx), alpha, dcfg.temperature, dcfg.loss, comp.multilabel)

    watch = (val, comp.labels[ctx.val_idx])
    result = fit(model, train, select, comp.labels[sel_idx], cfg, metric=recipe.metric,
                 loss_fn=loss(), cache=cache, ckpt=ctx.dir / "model.pt", report=ctx.report,
                 seed=cfg.seed + 1000 * ctx.fold, name=name, watch=watch)
    if full is not None:
        model, result = refit(everything, data, result, full, loss(), cache, watch)
    return finish_fold(everything, data, model, result, cache)


def train_student(recipe: Recipe, folds_to_run: list[int] | None = None, force: bool = False,
                  report: Callable[[int, float], None] | None = None) -> dict | None:
    """Run (or resume) a distilled student over the shared folds; cv.json's dict when done.

    Args:
        recipe: a student recipe: [model] (vectors and/or backbones), [train], [distill] with
            `teacher` (a submission manifest or member dir), alpha, temperature, loss, use_test
            (teacher-labelled test rows, and unlabelled rows of `data.extra` when the teacher
            predicted them, join the training parts), targets (fold | oof).
        folds_to_run: a subset of folds; None = all.
        force: retrain finished folds.
        report: `report(epoch, score)` after every epoch (Optuna pruning).

    Returns:
        The member's cv.json dict once every fold is done, else None.
    """
    dcfg = recipe.distill
    if recipe.kind == "linear":
        raise CompError("kind: a student is a neural member; set kind = \"student\" and a "
                        "[model] section")
    if recipe.train.pseudo:
        raise CompError("recipe key 'train.pseudo': a student takes test rows from its teacher; "
                        "set distill.use_test = true instead")
    comp = load_competition(recipe.data)
    folds = load_folds(comp, recipe.data)
    teacher = None
    if dcfg.teacher:
        teacher = load_teacher(dcfg.teacher, comp, folds)
        have = ~np.isnan(teacher.oof).any(1)
        oof, y = teacher.oof[have], comp.labels[have]
        agree = (f"label accuracy at 0.5 {((oof >= 0.5) == y).mean():.4f}" if comp.multilabel
                 else f"accuracy {(oof.argmax(1) == y).mean():.4f}")
        log(f"{recipe.name}: teacher {teacher.path} (OOF {agree}), alpha={dcfg.alpha} "
            f"T={dcfg.temperature} loss={dcfg.loss} targets={dcfg.targets}")
        if dcfg.alpha < 1:
            want = (list(folds_to_run or recipe.data.use_folds)
                    or list(range(int(folds.max()) + 1)))
            check_fold_targets(teacher, dcfg.targets, dcfg.use_test, want)
    elif dcfg.alpha < 1:
        raise CompError("recipe key 'distill.teacher': no teacher manifest; pass --teacher "
                        "(a .json from `comp ensemble`) or set distill.alpha = 1")
    extra = ExtraRows(targets=np.zeros((0, comp.n_classes)))
    if teacher is not None and dcfg.use_test and dcfg.alpha < 1:
        extra = teacher_rows(teacher, comp, dcfg.targets, dcfg.test_weight,
                             folds_hash(comp.train_ids, folds))
        log(f"{recipe.name}: {len(extra)} teacher-labelled test/unlabelled rows join the "
            "training parts" + (" (each fold its own)" if extra.folds is not None else ""))
    data = FusionData(recipe, comp)
    # looked up at call time, so tests can put a memorising student in its place
    cv = run_member(recipe, lambda ctx: fit_student_fold(ctx, data, teacher),
                    folds_to_run, force, extra, report, comp,
                    lambda ctx: predict_fold_train(ctx, data),
                    lambda ctx: predict_fold_texts(ctx, data),
                    inputs={"teacher": teacher.fingerprint if teacher is not None else "",
                            **model_inputs(recipe)})
    if cv is not None and teacher is not None and dcfg.alpha < 1:
        # ensembles take per-fold predictions only from students with honest CV
        cv["teacher_targets"] = dcfg.targets
        write_json(recipe.run_dir / "cv.json", cv)
    return cv


def check_fold_targets(teacher: Teacher, mode: str, use_test: bool, folds: Sequence[int]
                       ) -> None:
    """Refuse fold-honest distillation from a teacher without per-fold predictions for the
    student's `folds`; warn on OOF targets."""
    if mode == "oof":
        if np.isnan(teacher.oof).any():
            raise CompError(f"{teacher.path}: the teacher has OOF predictions on folds "
                            f"{teacher.fold_ids} only; distill.targets=oof needs every row's, "
                            "so use distill.targets=fold")
        log(f"warning: distill.targets=oof: training targets from {teacher.path} came from "
            "models that saw each fold's validation labels, so the student's CV is optimistic "
            "(its hidden score is honest)")
        return
    fix = ("`comp distill --prepare-teacher` runs its members again with "
           "train.predict_train=true (fusion members predict from their kept fold models; "
           "TF-IDF ones refit in seconds) and blends them again; or set distill.targets=oof "
           "(the student's CV is then optimistic)")
    if teacher.train_by_fold is None:
        raise CompError(f"{teacher.path}: the teacher has no per-fold predictions on the train "
                        f"rows (train_by_fold), which fold-honest targets need; {fix}")
    if use_test and teacher.test_by_fold is None:
        raise CompError(f"{teacher.path}: the teacher has no per-fold test predictions "
                        f"(test_by_fold) for distill.use_test; {fix}")
    lacking = [f for f in folds if f not in teacher.fold_ids]
    if lacking:
        raise CompError(f"{teacher.path}: the teacher has per-fold predictions of folds "
                        f"{teacher.fold_ids} (a member covers only those), not of the student's "
                        f"folds {lacking}; train the student on those folds (--folds) or train "
                        "the member on every fold")


def teacher_rows(teacher: Teacher, comp: Competition, mode: str, weight: float,
                 table_hash: str) -> ExtraRows:
    """The test texts (then the unlabelled ones, when the teacher predicted them) with teacher
    targets, as extra training rows: one block per fold from that fold's models ("fold"), or
    one block of the full blend serving every fold ("oof")."""
    per_fold = mode == "fold"
    blocks = ([teacher.test] if not per_fold else list(teacher.test_by_fold))  # (n_test, C) each
    texts = list(comp.test_texts)
    unl = teacher.unlabelled if not per_fold else teacher.unlabelled_by_fold
    if unl is not None:
        texts += comp.unlabelled_texts
        blocks = [np.concatenate([b, u]) for b, u in zip(blocks, [unl] if not per_fold else unl)]
    elif per_fold and teacher.unlabelled is not None:
        log(f"{teacher.path}: no per-fold unlabelled predictions (a member lacks "
            "fold{k}/unlabelled_proba.npy); the student learns from the test rows only")
    targets = np.concatenate(blocks)  # (blocks * n, C)
    folds = np.repeat(np.array(teacher.fold_ids), len(texts)) if per_fold else None
    return ExtraRows(texts * len(blocks), targets, np.full(len(targets), weight),
                     source="teacher", folds=folds, folds_hash=table_hash if per_fold else "")
