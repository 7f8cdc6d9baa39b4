"""Distillation: a fast student (TextCNN / biLSTM over gensim vectors) taught by an ensemble.

    train_student(recipe)                     k folds on the shared fold table (comp.member)
      load_teacher(manifest, comp, folds)     the ensemble's OOF (n_train, C) + test (n_test, C)
                                              (+ unlabelled (n_unlabelled, C) when it has them)
      fit_student_fold(ctx, data, teacher)    rows with packed targets -> comp.train.fit
    serving_model(load_student(run, fold))    a TextCNN folded into lookup tables (TextCNNTables)
      predict_texts(served, texts, cfg)       raw texts -> (n, C) probabilities

The teacher is an ensemble's probabilities: OOF probabilities for train rows, so a row's target
comes from teacher models that never saw that row's label, and test probabilities for the test
texts, which join training parts as unlabelled rows when `distill.use_test` is on (the runner
drops any of them that duplicates a validation text). With `data.extra` set and a teacher whose
members predicted those texts, the teacher's unlabelled probabilities join the same way, after
the test rows, with the same weight (`distill.test_weight`). A fold's training targets are read
from the teacher's OOF at that fold's training rows only; validation rows reach the fit loop
with empty targets and are scored against their true labels. A student predicts the unlabelled
texts too, so it can itself join an ensemble that teaches or pseudo-labels.

Each training row carries a packed (2C,) target: [one-hot label | teacher probabilities]; an
unlabelled row has a zero label half, which gives it zero weight in the hard-label loss. The
loss (Hinton et al. 2015; Tang et al. 2019 for MSE on logits) is

    alpha * hard(student, label) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))
    alpha * hard(student, label) + (1 - alpha) * MSE(s - mean(s), t - mean(t))    (loss = "mse")

with teacher logits t = log(teacher probabilities) (a logit vector is only defined up to a
per-row shift, hence the centring for MSE) and `hard` the recipe's `train.loss`. With alpha = 1
the student is exactly a fusion member trained on hard labels.

A second-order effect remains, as with any stacking on OOF predictions: the teacher's OOF value
for a training row came from teacher models that did see this fold's validation rows, so fold
scores can be a little optimistic. The hidden test score is the honest one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comp.config import ModelConfig, Recipe
from comp.data import Competition, folds_hash, load_competition, load_folds
from comp.fusion import FusionModel, build_fusion, describe
from comp.losses import ClassificationLoss, create_loss
from comp.member import ExtraRows, FoldContext, run_member
from comp.train import FusionData, fit, predict
from comp.train_parts import Rows, make_rows
from comp.utils import CompError, log, read_json, seed_everything

__all__ = ["Teacher", "DistillLoss", "load_teacher", "teacher_logits", "pack_targets",
           "UnlabelledRows", "fit_student_fold", "train_student", "predict_texts",
           "load_student", "TextCNNTables", "serving_model"]

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


def _resolve(p: str, base: Path) -> Path:
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
        The Teacher, columns reordered to comp.classes, rows renormalised. Its unlabelled
        probabilities are kept only when they are for comp.unlabelled_texts.

    Raises:
        CompError: one line naming the file and what does not match.
    """
    p = Path(path)
    if not p.exists():
        raise CompError(f"{p}: teacher manifest not found")
    if p.is_dir():
        for f in ("oof.npy", "test.npy", "classes.json", "cv.json"):
            if not (p / f).exists():
                raise CompError(f"{p}: teacher directory has no {f} (not a finished member?)")
        info = dict(read_json(p / "cv.json"))
        info.update(classes=read_json(p / "classes.json"), oof=str(p / "oof.npy"),
                    test=str(p / "test.npy"))
        if (p / "unlabelled.npy").exists():
            info["unlabelled"] = str(p / "unlabelled.npy")
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
    for key, n in keys:
        f = _resolve(str(info[key]), base)
        if not f.exists():
            raise CompError(f"{p}: teacher '{key}' file {f} not found")
        a = np.load(f)
        if a.ndim != 2 or a.shape != (n, len(classes)):
            raise CompError(f"{f}: teacher {key} probabilities have shape {a.shape}, expected "
                            f"({n}, {len(classes)}) for {comp.dir}")
        if not np.isfinite(a).all() or (a < 0).any():
            raise CompError(f"{f}: teacher {key} probabilities are not finite and >= 0")
        a = a[:, order].astype(np.float64)
        arrays.append(a / np.maximum(a.sum(1, keepdims=True), 1e-12))
    return Teacher(arrays[0], arrays[1], p, info, arrays[2] if len(arrays) > 2 else None)


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


def teacher_logits(proba: Tensor, floor: float = PROBA_FLOOR) -> Tensor:
    """Teacher probabilities (B, C) -> logits (B, C): log-probabilities, floored."""
    return torch.log(proba.float().clamp_min(floor))


def pack_targets(hard: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """(n, C) one-hot labels (zero rows = unlabelled) + (n, C) teacher probabilities -> (n, 2C)."""
    if hard.shape != soft.shape:
        raise ValueError(f"hard {hard.shape} and soft {soft.shape} targets differ in shape")
    return np.concatenate([hard, soft], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the loss


class DistillLoss(nn.Module):
    """alpha * hard-label loss + (1 - alpha) * KD loss on packed (B, 2C) targets.

    Args:
        hard: the hard-label loss (a comp.losses ClassificationLoss), applied to labelled rows.
        alpha: weight of the hard-label loss.
        temperature: softening temperature T of the KL term (scaled by T^2 so its gradients
            keep their size as T changes).
        kind: "kl" or "mse" (on centred logits; T unused).
    """

    def __init__(self, hard: ClassificationLoss, alpha: float = 0.5, temperature: float = 2.0,
                 kind: str = "kl") -> None:
        super().__init__()
        if kind not in ("kl", "mse"):
            raise CompError(f"recipe key 'distill.loss': must be kl or mse, got '{kind}'")
        self.hard = hard
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.kind = kind
        self.n_classes = hard.n_classes

    def soft_rows(self, logits: Tensor, teacher: Tensor) -> Tensor:
        """Per-row KD loss: (B, C) student logits, (B, C) teacher probabilities -> (B,)."""
        s = logits.float()
        t = teacher_logits(teacher)
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
            target: (B, 2C) packed [one-hot label | teacher probabilities].
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
            labelled = (hard.sum(dim=-1) > 0).float()  # (B,) unlabelled rows weigh 0
            total = total + self.alpha * self.hard(logits, hard, w * labelled)
        if self.alpha < 1:
            kd = (w * self.soft_rows(logits, soft)).sum() / w.sum().clamp_min(1e-12)
            total = total + (1.0 - self.alpha) * kd
        return total


# ---------------------------------------------------------------------------------------------
# the k-fold member


class UnlabelledRows:
    """The unlabelled texts as model rows, built once per member (every fold predicts them)."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        self.rows: Rows | None = None

    def ensure(self, model: FusionModel, cfg: ModelConfig) -> Rows | None:
        """The rows (vector ids included); None when there are no unlabelled texts."""
        if self.rows is None and self.texts:
            rows = make_rows(self.texts, cfg,
                             np.zeros((len(self.texts), model.n_classes), np.float32))
            rows.vec_ids = model.vector_ids(rows.texts)
            self.rows = rows
        return self.rows


def fit_student_fold(ctx: FoldContext, data: FusionData, teacher: Teacher | None,
                     unlabelled: UnlabelledRows | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One fold: training rows with packed targets (+ teacher-only rows), fit, predict.

    Mirrors comp.train.fit_fold (same seeds and order), so alpha = 1 reproduces a plain fusion
    member exactly. The teacher's OOF is indexed by ctx.train_idx only.

    Returns:
        (val_proba (n_val, C), predict_proba (n_test [+ n_unlabelled], C)): the unlabelled
        texts are predicted after the test texts when `unlabelled` holds any.
    """
    recipe, comp, cfg, dcfg = ctx.recipe, ctx.comp, ctx.recipe.train, ctx.recipe.distill
    name = f"{recipe.name} fold {ctx.fold}"
    c = comp.n_classes
    seed_everything(cfg.seed + ctx.fold)
    model = build_fusion(recipe, c)
    model.tokens = data.tokens  # every fold tokenizes the same texts: once per member
    model.to(_device())
    if ctx.fold == 0 or data.rows is None:
        log(f"{name}: {describe(model)}")
    data.ensure_rows(model)
    train = data.rows.take(ctx.train_idx)
    hard = np.eye(c, dtype=np.float32)[comp.labels[ctx.train_idx]]  # (n_tr, C)
    soft = teacher.oof[ctx.train_idx] if teacher is not None else hard  # (n_tr, C)
    train.targets = pack_targets(hard, soft)[train.source]  # (rows, 2C), windows share
    if len(ctx.extra):
        extra = make_rows(ctx.extra.texts, recipe.model,
                          pack_targets(np.zeros_like(ctx.extra.targets), ctx.extra.targets),
                          ctx.extra.weights.astype(np.float32))
        extra.vec_ids = model.vector_ids(extra.texts)
        train = train.concat(extra)
    val = data.rows.take(ctx.val_idx)
    val.targets = np.zeros((len(val), 2 * c), np.float32)  # fit never holds validation targets
    unl = None
    if unlabelled is not None and data.test.n_source == len(comp.test_texts):
        # only while FusionData's prediction rows stop at the test texts
        unl = unlabelled.ensure(model, recipe.model)
    cache = data.ensure_cache(model, data.rows.texts + data.test.texts + train.texts
                              + (unl.texts if unl is not None else []))
    counts = np.bincount(comp.labels[ctx.train_idx], minlength=c)
    hard_loss = create_loss(cfg.loss, c, class_counts=counts,
                            label_smoothing=cfg.label_smoothing, class_weights=cfg.class_weights,
                            focal_gamma=cfg.focal_gamma)
    alpha = dcfg.alpha if teacher is not None else 1.0
    loss_fn = DistillLoss(hard_loss, alpha, dcfg.temperature, dcfg.loss)
    result = fit(model, train, val, comp.labels[ctx.val_idx], cfg, metric=recipe.metric,
                 loss_fn=loss_fn, cache=cache, ckpt=ctx.dir / "model.pt", report=ctx.report,
                 seed=cfg.seed + 1000 * ctx.fold, name=name)
    test_cache = cache if result.best_phase == 1 else None
    test_proba = predict(model, data.test, cfg.eval_batch_size, test_cache, cfg.bucket, cfg.amp,
                         desc=f"{name} test")
    if unl is not None:
        unl_proba = predict(model, unl, cfg.eval_batch_size, test_cache, cfg.bucket, cfg.amp,
                            desc=f"{name} unlabelled")
        test_proba = np.concatenate([test_proba, unl_proba])  # (n_test + n_unlabelled, C)
    return result.val_proba, test_proba


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_student(recipe: Recipe, folds_to_run: list[int] | None = None, force: bool = False,
                  report: Callable[[int, float], None] | None = None) -> dict | None:
    """Run (or resume) a distilled student over the shared folds; cv.json's dict when done.

    Args:
        recipe: a student recipe: [model] (vectors and/or backbones), [train], [distill] with
            `teacher` (a submission manifest or member dir), alpha, temperature, loss, use_test
            (teacher-labelled test rows, and unlabelled rows of `data.extra` when the teacher
            predicted them, join the training parts).
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
        log(f"{recipe.name}: teacher {teacher.path} (OOF accuracy "
            f"{(teacher.oof.argmax(1) == comp.labels).mean():.4f}), alpha={dcfg.alpha} "
            f"T={dcfg.temperature} loss={dcfg.loss}")
    elif dcfg.alpha < 1:
        raise CompError("recipe key 'distill.teacher': no teacher manifest; pass --teacher "
                        "(a .json from `comp ensemble`) or set distill.alpha = 1")
    extra = ExtraRows(targets=np.zeros((0, comp.n_classes)))
    if teacher is not None and dcfg.use_test and dcfg.alpha < 1:
        texts, targets = list(comp.test_texts), teacher.test
        if teacher.unlabelled is not None:
            texts += comp.unlabelled_texts
            targets = np.concatenate([targets, teacher.unlabelled])  # (n_test + n_unl, C)
            log(f"{recipe.name}: {len(comp.test_texts)} test + {len(comp.unlabelled_texts)} "
                "unlabelled teacher rows join the training parts")
        extra = ExtraRows(texts, targets.copy(), np.full(len(texts), dcfg.test_weight),
                          source="teacher")
    data = FusionData(recipe, comp)
    unlabelled = UnlabelledRows(comp.unlabelled_texts)
    return run_member(recipe, lambda ctx: fit_student_fold(ctx, data, teacher, unlabelled),
                      folds_to_run, force, extra, report, comp)


# ---------------------------------------------------------------------------------------------
# inference


class TextCNNTables:
    """A trained vectors-only TextCNN student folded into lookup tables for serving.

    A convolution over looked-up vectors is linear in them: for kernel size k, the output at
    position t is bias + sum_j W_j . E[id(t + j)], j < k. Every product W_j . E[v] is computed
    once per vocabulary entry v and tap j, so a window's output becomes a sum of k table rows
    (one `embedding_bag`) instead of k (D x C) matrix products: the same outputs (up to float
    rounding) for a fraction of the work. Positions past a text's end read zero rows, as the
    head's zero padding does, and the bias sits in the tap-0 rows of ids (unknown included), not
    in that block's zero row: a position outside the text sums to 0, so after ReLU (outputs
    >= 0) max and mean pooling over every position equal the head's masked pooling.

    Built from a model in its final state (eval mode); training the model afterwards leaves the
    tables stale. `predict_texts` serves either form.

    Args:
        model: a FusionModel without backbones, with a CNN head and max/mean pooling.
    """

    def __init__(self, model: FusionModel) -> None:
        why = _tables_unsupported(model)
        if why:
            raise CompError(f"model.head: cannot fold this student into lookup tables ({why})")
        head = model.head
        self.cfg = model.cfg
        self.n_classes = model.n_classes
        self.vectors = list(model.vectors)  # only their ids(): texts -> vocabulary ids
        self.kmax = max(head.kernel_sizes)
        self.classifier = copy.deepcopy(model.classifier).cpu().eval()  # tables serve on CPU
        ch = head.convs[0].out_channels
        width = ch * len(head.kernel_sizes)
        blocks, self.bases, self.pads = [], [], []  # one block per (vector kind, tap)
        base = 0
        with torch.no_grad():
            dim0 = 0
            for v in self.vectors:
                emb = v.embedding.weight.detach().float().cpu()  # (V + 1, D_v); 0 = unknown
                for j in range(self.kmax):
                    block = emb.new_zeros(len(emb) + 1, width)  # last row: outside the text
                    for i, (conv, k) in enumerate(zip(head.convs, head.kernel_sizes)):
                        if j < k:
                            w = conv.weight[:, dim0:dim0 + v.dim, j].float().cpu()  # (C, D_v)
                            block[:-1, i * ch:(i + 1) * ch] = emb @ w.t()
                    blocks.append(block)
                    self.bases.append(base)
                    self.pads.append(len(emb))
                    base += len(block)
                dim0 += v.dim
            bias = torch.cat([conv.bias.float().cpu() for conv in head.convs])  # (width,)
            blocks[0][:-1] += bias  # once per position inside a text, never outside
            self.table = torch.cat(blocks)  # (rows, width)

    def bag_index(self, texts: Sequence[str], n: int) -> Tensor:
        """(B, n, kinds * kmax) table rows read at each of the first n positions of B grid
        texts: row base + id of position t + j for each vector kind and tap j, or that block's
        zero row where t + j lies outside the text."""
        from comp.fusion import grid_len

        lens = torch.tensor([grid_len(t) for t in texts])  # (B,)
        inside = torch.arange(n + self.kmax - 1)[None, :] < lens[:, None]  # (B, n + kmax - 1)
        cols, b = [], 0
        for v in self.vectors:
            ids = F.pad(v.ids(list(texts), n).long(), (0, self.kmax - 1))  # (B, n + kmax - 1)
            for j in range(self.kmax):
                rows = torch.where(inside, ids, self.pads[b])[:, j:j + n]  # (B, n)
                cols.append(rows + self.bases[b])
                b += 1
        return torch.stack(cols, dim=-1)  # (B, n, kinds * kmax)

    @torch.inference_mode()
    def predict_rows(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Grid texts -> (n, C) probabilities, in length-sorted batches as `predict` cuts them."""
        from comp.fusion import grid_len
        from comp.train_parts import eval_batches

        lens = np.fromiter((grid_len(t) for t in texts), dtype=np.int64, count=len(texts))
        proba = np.zeros((len(texts), self.n_classes), dtype=np.float32)
        for idx in eval_batches(lens, batch_size):
            n = int(lens[idx].max())
            bag = self.bag_index([texts[i] for i in idx], n)  # (B, n, K)
            h = F.embedding_bag(bag.reshape(-1, bag.shape[-1]), self.table, mode="sum")
            h = h.view(len(idx), n, -1).relu_()  # (B, n, width): conv outputs, 0 outside
            count = torch.from_numpy(lens[idx]).to(h.dtype)[:, None]  # (B, 1)
            pooled = torch.cat([h.amax(dim=1), h.sum(dim=1) / count], dim=-1)  # (B, 2 width)
            proba[idx] = torch.softmax(self.classifier(pooled, []), dim=-1).numpy()
        return proba


def _tables_unsupported(model: FusionModel) -> str:
    """Why a model cannot be folded into TextCNNTables ('' when it can)."""
    from comp.heads import CNNHead, MaxMeanPool
    from comp.vectors import GridVectors

    if len(model.backbones):
        return "it has backbones"
    if not isinstance(model.head, CNNHead) or not isinstance(model.head.pool, MaxMeanPool):
        return "only a CNN head with maxmean pooling folds"
    if not len(model.vectors) or not all(isinstance(v, GridVectors) for v in model.vectors):
        return "its inputs are not gensim vectors"
    if model.classifier.cls_dims:
        return "it has CLS inputs"
    return ""


def serving_model(model: FusionModel) -> FusionModel | TextCNNTables:
    """What serves a trained student fastest: its lookup tables when it folds, else itself."""
    model.eval()
    return TextCNNTables(model) if not _tables_unsupported(model) else model


@torch.no_grad()
def predict_texts(model: FusionModel | TextCNNTables, texts: Sequence[str], cfg: ModelConfig,
                  batch_size: int = 512) -> np.ndarray:
    """Raw texts -> (n, C) probabilities, including text-to-id work (what serving costs).

    Args:
        model: a trained student, or its `serving_model` form.
        texts: raw texts.
        cfg: the student's model section (truncation, windows).
        batch_size: texts per forward.
    """
    c = model.n_classes
    rows = make_rows(list(texts), cfg, np.zeros((len(texts), c), np.float32))
    if isinstance(model, TextCNNTables):
        return rows.average(model.predict_rows(rows.texts, batch_size))
    rows.vec_ids = model.vector_ids(rows.texts)
    return predict(model, rows, batch_size, desc="student predict")


def load_student(run_dir: str | Path, fold: int, n_classes: int,
                 recipe: Recipe | None = None) -> FusionModel:
    """A trained fold's model from runs/<name>/fold{k}/model.pt (for serving and benchmarks)."""
    from comp.config import load_recipe

    run_dir = Path(run_dir)
    recipe = recipe or load_recipe(run_dir / "recipe.toml")
    ckpt = run_dir / f"fold{fold}" / "model.pt"
    if not ckpt.exists():
        raise CompError(f"{ckpt}: no checkpoint (fold not trained?)")
    model = build_fusion(recipe, n_classes)
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    model.eval()
    return model
