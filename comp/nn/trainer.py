"""Training a fusion member: one fit loop, read top to bottom, and the k-fold runner around it.

    train_fusion(recipe)                          k folds via comp.kfold.runner.run_member
      fit_fold(ctx)                               one fold: rows, model, cache, fit, predict
        fit(model, train, val, val_y, cfg)        phase 1 (backbones frozen) -> phase 2 (unfrozen)
        predict(model, rows)                      length-sorted batches, window averaging

Phase 1 trains the head (and tuned vectors) on frozen backbones. Frozen backbones in eval mode
are a fixed function of the text, so their grid features are computed once per member for every
distinct text (comp.nn.fusion.FeatureCache) and phase 1 runs the head alone; tokens are likewise
memoised once per member (comp.nn.fusion.TokenMemo) for phase 2 and evaluation. Phase 2
restores the best phase-1 weights, unfreezes, and gives each backbone layer
lr * decay^(depth from the top).

Honest selection: every choice made by a score (early stopping, the kept checkpoint, phase 2's
start) is made on `train.inner_val` of the fold's training rows, held out from its fit
(`comp.nn.rows.inner_split`), never on the fold's validation rows. Those are scored every
epoch for the learning curves and Optuna's pruning only; the OOF is the kept model's prediction.
A best-of-epochs pick on the validation rows would add the luck of the pick to the CV (on random
labels it reads above chance). The kept weights (EMA ones when EMA is on) go to
fold_dir/model.pt and are restored at the end; with `inner_val = 0` the last epoch is kept.

Under `torchrun --nproc_per_node N -m comp train ...` every rank trains on its shard of the fold's
training rows, gradients are averaged with all_reduce (gloo on CPU, nccl on GPU), evaluation is
split across ranks and gathered, and rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from comp.config.schema import Recipe, TrainConfig, min_steps_epochs
from comp.core.metrics import is_better, score
from comp.core.utils import (
    CompError,
    atomic_path,
    log,
    progress,
    read_json,
    seed_everything,
    sha1_of,
    write_json,
)
from comp.data.folds import label_strata, normalize_text
from comp.kfold.extra import ExtraRows
from comp.kfold.runner import FoldContext, run_member
from comp.nn.distributed import amp_setup, dist_info, init_distributed, wrap_ddp
from comp.nn.fusion import (
    CACHE_DTYPES,
    FeatureCache,
    FusionModel,
    TokenMemo,
    build_fusion,
    checkpoint_state,
    describe,
    load_fold_model,
    log_unknown,
    model_inputs,
    resolve_backbones,
    to_device,
    train_swap,
    write_fold_backbones,
)
from comp.nn.losses import create_loss
from comp.nn.optim import EMA, Adversary, TimeSlice, lr_scheduler, param_groups
from comp.nn.optim import clock as slice_clock
from comp.nn.rows import LengthGroupedBatchSampler, Rows, eval_batches, inner_split, make_rows

__all__ = ["FitResult", "fit", "predict", "train_fusion", "make_batch", "FusionData",
           "selection_split", "chosen_epochs", "refit"]


@dataclass
class FitResult:
    """What `fit` leaves behind (the model itself holds the kept weights)."""

    best_score: float  # selection score of the kept epoch (nan without selection rows)
    best_epoch: int  # 1-based over both phases
    best_phase: int  # 1 = frozen backbones, 2 = unfrozen
    # (n_sources, C) the kept model on the `watch` rows (the selection rows without them)
    val_proba: np.ndarray
    history: list[dict] = field(default_factory=list)
    train_rows: int = 0  # training rows this rank saw per epoch
    phase1_epoch: int = 0  # the phase-1 epoch whose weights phase 2 started from


def make_batch(model: FusionModel, rows: Rows, idx: np.ndarray, cache: FeatureCache | None,
               device: torch.device, pad_to: int | None = None) -> dict:
    """Rows `idx` as a model batch on `device`, with cached backbone features when given."""
    texts = [rows.texts[i] for i in idx]
    vec = [v[idx] for v in rows.vec_ids] if rows.vec_ids is not None else None
    use_cache = cache is not None and len(model.backbones) > 0
    batch = model.prepare(texts, vec_ids=vec, backbones=not use_cache, pad_to=pad_to)
    if use_cache:
        batch["cached"] = cache.lookup(texts, batch["mask"].shape[1])  # (B, N, ΣH), [(B, Hi)]
    batch["targets"] = torch.from_numpy(rows.targets[idx])  # (B, C)
    batch["weights"] = torch.from_numpy(rows.weights[idx])  # (B,)
    return to_device(batch, device)


@torch.no_grad()
def predict(model: FusionModel, rows: Rows, batch_size: int = 128,
            cache: FeatureCache | None = None, bucket: bool = True, amp: str = "off",
            desc: str = "predict") -> np.ndarray:
    """Class probabilities per source text: (rows.n_source, C), windows averaged.

    Batches are cut from rows sorted by length (little padding); under torch.distributed each
    rank predicts every world-th batch and the pieces are gathered on every rank.
    """
    rank, world = dist_info()
    device = next(model.parameters()).device
    autocast, _ = amp_setup(amp, device)
    was_training = model.training
    model.eval()
    proba = np.zeros((len(rows), model.n_classes), dtype=np.float32)
    mine = eval_batches(rows.lengths, batch_size, bucket)[rank::world]
    for idx in progress(mine, desc=desc):
        with autocast():
            logits = model(make_batch(model, rows, idx, cache, device))  # (B, C)
        proba[idx] = model.task.activate(logits.float()).cpu().numpy()
    if world > 1:
        import torch.distributed as dist

        got: list = [None] * world
        mine_idx = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
        dist.all_gather_object(got, (mine_idx, proba[mine_idx]))
        for idx, p in got:
            proba[idx] = p
    model.train(was_training)
    return rows.average(proba)


PROTOTYPE_CLASSES, PROTOTYPE_ROWS = 20, 25  # "auto": many classes, few rows each


def wants_prototypes(cfg: TrainConfig, model: FusionModel, train: Rows) -> bool:
    """`train.prototypes` for this fit: "auto" on single-label tasks of many classes with few
    training rows each (fixed in advance, never chosen on validation rows)."""
    if cfg.prototypes == "off" or model.multilabel:
        return False
    return cfg.prototypes == "on" or (model.n_classes >= PROTOTYPE_CLASSES
                                      and len(train) <= PROTOTYPE_ROWS * model.n_classes)


@torch.no_grad()
def init_prototypes(model: FusionModel, rows: Rows, cfg: TrainConfig,
                    cache: FeatureCache | None = None) -> None:
    """The classifier's final layer as a nearest-class-mean rule on its inputs h over `rows`
    (their target distributions weigh each row into its classes' means m_c): logit_c =
    -tau |h - m_c|^2 / 2 up to a row's constant, i.e. weights tau (m_c - mu) and biases
    -tau (m_c - mu) . (mu + (m_c - mu) / 2) with mu the mean of all rows. The temperature tau
    is the one whose leave-one-out logits (a row left out of its own class's mean) fit the
    rows' labels best, so the first steps start from calibrated, not overconfident, logits.
    Classes without rows keep their weights."""
    device = next(model.parameters()).device
    autocast, _ = amp_setup(cfg.amp, device)
    fc = model.classifier.fc
    seen: list[torch.Tensor] = []
    hook = fc.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().float()))
    was_training = model.training
    model.eval()
    order: list[np.ndarray] = []
    try:
        for idx in eval_batches(rows.lengths, cfg.eval_batch_size, cfg.bucket):
            with autocast():
                model(make_batch(model, rows, idx, cache, device))
            order.append(idx)
    finally:
        hook.remove()
        model.train(was_training)
    h = torch.empty(len(rows), fc.in_features, device=device)
    h[torch.as_tensor(np.concatenate(order))] = torch.cat(seen)
    t = torch.as_tensor(rows.targets, dtype=torch.float32, device=device)  # (n, C)
    mass = t.sum(0)  # (C,)
    has = mass > 0
    mu = h.mean(0)
    means = (t.T @ h) / mass.clamp_min(1e-9)[:, None]  # (C, D)
    dist = torch.cdist(h.double(), means.double()).pow(2)[:, has]  # (n, C') squared
    cls = torch.cumsum(has.long(), 0) - 1  # class -> column among the classes with rows
    y = t.argmax(1)
    n_y = mass[y].double()
    loo = n_y > 1.5  # rows whose class keeps a mean without them
    tau = 1.0
    if loo.any():
        rows_loo = torch.nonzero(loo).flatten()
        col = cls[y[loo]]
        d_loo = dist[rows_loo].clone()  # a row left out of its own class's mean
        d_loo[torch.arange(len(rows_loo)), col] *= (n_y[loo] / (n_y[loo] - 1)) ** 2
        unit = float(d_loo.mean().clamp_min(1e-12))
        grid = np.logspace(-2, 3, 51)
        ce = [float(torch.nn.functional.cross_entropy(-g * d_loo / (2 * unit), col))
              for g in grid]
        tau = float(grid[int(np.argmin(ce))]) / unit
    d = means - mu
    fc.weight[has] = (tau * d[has]).to(fc.weight.dtype)
    fc.bias[has] = (-tau * (d[has] @ mu + 0.5 * d[has].pow(2).sum(1))).to(fc.bias.dtype)


def phase_epochs(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int, int]:
    """(phase-1, phase-2) epochs: the recipe's, each phase that has any raised until it makes
    `train.min_steps` optimizer steps (small data: a fixed epoch count is too few steps)."""
    return min_steps_epochs((cfg.epochs_frozen, cfg.epochs_unfrozen), cfg.min_steps,
                            -(-batches_per_epoch // cfg.accum))


def fit(model: FusionModel, train: Rows, select: Rows | None, select_y: np.ndarray | None,
        cfg: TrainConfig, *, metric: str = "accuracy", loss_fn: nn.Module | None = None,
        cache: FeatureCache | None = None, ckpt: Path | None = None,
        report: Callable[[int, float], None] | None = None,
        on_batch: Callable[[list[str]], None] | None = None, seed: int | None = None,
        name: str = "fit", watch: tuple[Rows, np.ndarray] | None = None,
        stop_after: tuple[int, int] | None = None, started: float | None = None,
        reserve_rows: int = 0) -> FitResult:
    """Train `model` on `train`, choosing the epoch on `select`; leaves the kept weights loaded.

    Args:
        model: a FusionModel on its device (any model with the same interface works).
        train: training rows (this rank's shard under torch.distributed).
        select: the rows that choose (early stopping, kept checkpoint, phase 2's start);
            `select_y` (select.n_source,) holds their int labels. None or no rows: no choice,
            every epoch runs and the last is kept.
        cfg: the train section (phases, LRs, schedule, clipping, accumulation, AMP, patience,
            FGM/PGD, EMA).
        metric: the metric (comp.core.metrics) of the choice, the history and `report`.
        loss_fn: default `create_loss(cfg.loss, ...)` with class counts from `train`.
        cache: frozen-backbone features covering train, select and watch texts; phase 1 then
            skips the backbones entirely.
        ckpt: where the kept weights go (written atomically by rank 0).
        report: `report(epoch, score)` after every epoch, the watch score when watching (else
            the selection score); may raise optuna.TrialPruned.
        on_batch: called with each training batch's texts (diagnostics and tests).
        seed: shuffling seed; default cfg.seed.
        name: log prefix.
        watch: (rows, int labels) scored every epoch and never chosen on: a fold's validation
            rows. Their scores are the history's `metric` (the selection's `select_<metric>`).
        stop_after: (phase-1, phase-2) epochs to run, each phase's LR schedule still spanning
            its configured epochs: a refit replaying a chosen epoch (`chosen_epochs`).
        started, reserve_rows: what `cfg.time_limit` counts from (default now: the fold's start
            when the caller built the model and caches before) and the rows the caller predicts
            after the fit, inside the same slice (comp.nn.optim.TimeSlice).

    Returns:
        A FitResult with the kept epoch/phase and its selection score, the kept model's
        probabilities on the watch rows (else the selection rows), one history entry per epoch
        (the kept one marked `kept`).
    """
    rank, world = dist_info()
    device = next(model.parameters()).device
    seed = cfg.seed if seed is None else seed
    if cfg.epochs_frozen + cfg.epochs_unfrozen == 0:
        raise CompError("recipe keys 'train.epochs_frozen' + 'train.epochs_unfrozen': "
                        "need at least one epoch")
    if loss_fn is None:
        counts = np.bincount(train.targets.argmax(1), minlength=model.n_classes)
        loss_fn = create_loss(cfg.loss, model.n_classes, class_counts=counts,
                              label_smoothing=cfg.label_smoothing,
                              class_weights=cfg.class_weights, focal_gamma=cfg.focal_gamma)
    loss_fn = loss_fn.to(device)
    autocast, scaler = amp_setup(cfg.amp, device)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    choosing = select is not None and select.n_source > 0
    shown = watch[0] if watch is not None else select
    best = FitResult(best_score=float("nan"), best_epoch=0, best_phase=0,
                     val_proba=np.zeros((shown.n_source if shown is not None else 0,
                                         model.n_classes), np.float32), train_rows=len(train))
    best_state: dict | None = None
    epoch = 0
    # each rank its share of the rows, dealt anew every epoch, batched by similar length
    sampler = LengthGroupedBatchSampler(train.lengths, cfg.batch_size, seed, cfg.bucket, rank,
                                        world)
    batches_per_epoch = len(sampler)
    steps_per_epoch = -(-batches_per_epoch // cfg.accum)
    epochs = phase_epochs(cfg, batches_per_epoch)
    runs = stop_after or epochs  # epochs each phase runs
    clock = TimeSlice(cfg.time_limit, min(epochs[0], runs[0]) > 0 and min(epochs[1], runs[1]) > 0,
                      started, reserve_rows, cfg.batch_size * cfg.accum)

    for phase, n_epochs in ((1, epochs[0]), (2, epochs[1])):
        if min(n_epochs, runs[phase - 1]) == 0:
            continue
        if phase == 2 and best_state is not None:
            # phase 2 starts from the phase-1 state the selection rows chose, not the last
            model.load_state_dict(best_state)
            best.phase1_epoch = best.best_epoch
            if ema is not None:
                ema.reset(model)
        model.set_phase(phase, cfg)  # phase 2 with train.unfreeze_top: top layers only
        if epoch == 0 and wants_prototypes(cfg, model, train):
            init_prototypes(model, train, cfg, cache if phase == 1 else None)
            if rank == 0:
                log(f"{name}: classifier starts from the class prototypes of "
                    f"{len(train)} training rows ({model.n_classes} classes)")
        # under torch.distributed: DDP averages the gradients of what trains in this phase
        net = wrap_ddp(model) if world > 1 else model
        phase_cache = cache if phase == 1 else None
        opt = torch.optim.AdamW(param_groups(model, cfg, phase))
        sched = lr_scheduler(opt, cfg.schedule, cfg.warmup, steps_per_epoch * n_epochs)
        # frozen backbones are attacked in no phase: phase 1 must not depend on whether their
        # features come from the cache; a vectors-only model is attacked throughout
        attack = cfg.adv != "none" and (phase == 2 or not len(model.backbones))
        adversary = (Adversary(model.adversarial_modules(), cfg.adv, cfg.adv_eps, cfg.adv_steps)
                     if attack else None)
        params = [p for g in opt.param_groups for p in g["params"]]
        stale = 0  # epochs without improvement in this phase
        # patience counts the recipe's epochs: as many steps when min_steps made epochs more
        configured = cfg.epochs_frozen if phase == 1 else cfg.epochs_unfrozen
        patience = math.ceil(cfg.patience * n_epochs / max(configured, 1))
        ran = min(n_epochs, runs[phase - 1])
        clock.begin(phase, steps_per_epoch * ran)

        for in_phase in range(ran):
            epoch += 1
            t0 = time.time()
            model.train()
            # seeded by the epoch within its phase: a refit (stop_after) that runs fewer
            # phase-1 epochs still shuffles phase 2 as the run it replays did
            sampler.set_epoch(epoch, (phase, in_phase))
            # its own generator: a loader's base seed drawn from torch's global one would shift
            # every dropout mask after it
            loader = DataLoader(range(len(train)), batch_sampler=sampler,
                                generator=torch.Generator().manual_seed(seed),
                                collate_fn=lambda ids, c=phase_cache: (
                                    ids, make_batch(model, train, np.asarray(ids), c, device)))
            n_batches = len(loader)
            bar = progress(loader, desc=f"{name} p{phase} ep{epoch}")
            loss_sum, loss_n = 0.0, 0
            for i, (idx, batch) in enumerate(bar):
                if on_batch is not None:
                    on_batch([train.texts[j] for j in idx])
                # the epoch's last accumulation group may hold fewer batches: average over them
                group = min(cfg.accum, n_batches - i // cfg.accum * cfg.accum)
                stepping = (i + 1) % cfg.accum == 0 or i + 1 == n_batches
                # DDP syncs gradients on the backward of a group's last batch only
                sync = (contextlib.nullcontext() if stepping or net is model
                        else net.no_sync())

                def batch_loss(batch: dict = batch, group: int = group,
                               net: nn.Module = net) -> torch.Tensor:
                    with autocast():
                        logits = net(batch)  # (B, C)
                    return loss_fn(logits, batch["targets"], batch["weights"]) / group

                def backward(loss: torch.Tensor) -> None:
                    (scaler.scale(loss) if scaler is not None else loss).backward()

                with sync:
                    if adversary is not None:
                        with adversary.recording():
                            loss = batch_loss()
                            backward(loss)
                        adversary.attack(batch_loss, backward, params)
                    else:
                        loss = batch_loss()
                        backward(loss)
                loss_sum += float(loss.detach()) * group
                loss_n += 1

                if stepping:
                    if scaler is not None:
                        scaler.unscale_(opt)
                    if cfg.clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(model)
                    sched = clock.step(opt, sched)
                    if clock.over:  # the time slice's last step: a finished model
                        break
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}")

            train_seconds = time.time() - t0
            with ema.applied(model) if ema is not None else contextlib.nullcontext():
                s, w, shown_proba = float("nan"), float("nan"), best.val_proba
                if choosing:
                    sel_proba = predict(model, select, cfg.eval_batch_size, phase_cache,
                                        cfg.bucket, cfg.amp, desc=f"{name} select")
                    s = score(metric, select_y, sel_proba)
                    shown_proba = sel_proba
                if watch is not None:  # scored for the curves, never chosen on
                    shown_proba = predict(model, watch[0], cfg.eval_batch_size, phase_cache,
                                          cfg.bucket, cfg.amp, desc=f"{name} eval")
                    w = score(metric, watch[1], shown_proba)
                # without selection rows every epoch is the latest, kept until the next one
                improved = (not choosing or best.best_epoch == 0
                            or is_better(metric, s, best.best_score))
                if improved:
                    best.best_score, best.best_epoch, best.best_phase = s, epoch, phase
                    best.val_proba = shown_proba
                    # without a choice only a phase's end state is ever restored or kept
                    if choosing or in_phase + 1 == ran or clock.over:
                        best_state = copy.deepcopy(model.state_dict())
                        if ckpt is not None and rank == 0:
                            with atomic_path(ckpt) as tmp:
                                torch.save(checkpoint_state(model, best_state), tmp)
            stale = 0 if improved else stale + 1
            entry = {"epoch": epoch, "phase": phase, "loss": loss_sum / max(1, loss_n),
                     "seconds": round(time.time() - t0, 2),
                     "train_seconds": round(train_seconds, 2)}
            if watch is not None:
                entry[metric] = w
            if choosing:
                entry[f"select_{metric}" if watch is not None else metric] = s
            best.history.append(entry)
            if clock.over:
                entry["cut"] = clock.cuts[-1]
            if rank == 0:
                shown_s = " ".join(f"{k}={v:.4f}" for k, v in entry.items()
                                   if k in (metric, f"select_{metric}"))
                log(f"{name} epoch {epoch} (phase {phase}): loss={entry['loss']:.4f} "
                    f"{shown_s}{' *' if improved and choosing else ''} "
                    f"({entry['seconds']:.0f}s)")
                if clock.over:
                    c = clock.cuts[-1]
                    log(f"{name}: phase {phase} cut to {c['steps']} of {c['planned_steps']} "
                        f"steps to fit train.time_limit={cfg.time_limit:g}s (LR decayed to 0 "
                        "over the steps that fit)")
            _report(report, epoch, w if watch is not None else s, world)
            if clock.over or (choosing and cfg.patience and stale >= patience):
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.freeze_backbones(False)
    for h in best.history:
        h["kept"] = h["epoch"] == best.best_epoch
    return best


def _report(report: Callable[[int, float], None] | None, epoch: int, value: float,
            world: int) -> None:
    """Call `report` (rank 0); a pruning exception stops every rank, then re-raises on rank 0."""
    if world == 1:
        if report is not None:
            report(epoch, value)
        return
    import torch.distributed as dist

    rank = dist.get_rank()
    err: BaseException | None = None
    if rank == 0 and report is not None:
        try:
            report(epoch, value)
        except BaseException as e:  # noqa: BLE001 - re-raised below after telling the others
            err = e
    flag = [err is not None]
    dist.broadcast_object_list(flag, src=0)
    if err is not None:
        raise err
    if flag[0]:
        raise CompError(f"training stopped by rank 0 at epoch {epoch}")


# ---------------------------------------------------------------------------------------------
# the k-fold member


# one member's frozen-feature cache and token memo (with its bottom caches), kept per process
_LAST_CACHES: dict[tuple, tuple[FeatureCache, TokenMemo]] = {}
# the last member's rows (grid texts, vector ids: jieba over every text for word vectors), kept
# per process: a Ray worker that trains a member's next fold, or a second call for more folds,
# does not build them again
_LAST_ROWS: dict[tuple, tuple[Rows, Rows, Rows]] = {}


def caches_frozen(recipe: Recipe) -> bool:
    """Whether the member's frozen phase reads its backbones' features from a cache."""
    cfg = recipe.train
    return bool(cfg.cache_frozen and cfg.epochs_frozen > 0 and recipe.model.backbones)


class FusionData:
    """Rows shared by every fold of a member: grid texts, vector ids, the frozen-feature cache.

    Built lazily, so a rerun whose folds are all done loads nothing.
    """

    def __init__(self, recipe: Recipe, comp, inputs: dict[str, str] | None = None) -> None:
        self.recipe = recipe
        self.comp = comp
        self.inputs = inputs or {}  # content hashes of the files the model reads
        self.rows: Rows | None = None
        self.test: Rows | None = None
        self.fit_rows: Rows | None = None  # rows trained on: pairs in both orders with pair_swap
        self.cache: FeatureCache | None = None
        self.tokens = TokenMemo()
        self.backbone_paths: list[str] | None = None  # the folders new folds train with

    def ensure_rows(self, model: FusionModel) -> None:
        """Grid texts and vector ids of every train and test text (once per member)."""
        if self.rows is not None:
            return
        cfg, comp = self.recipe.model, self.comp
        from comp.nn.backbones import check_vocab_coverage

        # a vocabulary missing most characters trains on [UNK]s: stop before the first fold
        for i, (bc, b) in enumerate(zip(cfg.backbones, model.backbones)):
            check_vocab_coverage(b, comp.train_texts, f"model.backbones[{i}] ({bc.path})")
        swap = train_swap(self.recipe)
        # what the rows are made of: the texts, their labels, the model's grid and the vectors
        # files' content (what vector ids look up)
        key = (tuple(sorted(self.inputs.items())), repr(cfg), swap,
               sha1_of([*comp.train_texts, "\x00", *comp.predict_texts,
                        "\x00", *map(str, comp.labels)]))
        if self.inputs and key in _LAST_ROWS:  # (no inputs given: the files are not known)
            self.rows, self.test, self.fit_rows = _LAST_ROWS[key]
            return
        y = comp.shape.targets(comp.labels, comp.n_classes)
        self.rows = make_rows(comp.train_texts, cfg, y)
        self.test = make_rows(comp.predict_texts, cfg, np.zeros((len(comp.predict_texts),
                                                                 comp.n_classes), np.float32))
        for r in (self.rows, self.test):
            r.vec_ids = model.vector_ids(r.texts)
        self.fit_rows = self.rows
        if swap != cfg.pair_tta:  # else the evaluation rows are the same
            self.fit_rows = make_rows(comp.train_texts, cfg, y, both_orders=swap)
            self.fit_rows.vec_ids = model.vector_ids(self.fit_rows.texts)
        _LAST_ROWS.clear()
        if self.inputs:
            _LAST_ROWS[key] = (self.rows, self.test, self.fit_rows)

    def ensure_cache(self, model: FusionModel, texts: Sequence[str]) -> FeatureCache | None:
        """The frozen-feature cache, extended to cover `texts`; None when not used."""
        cfg = self.recipe.train
        if not caches_frozen(self.recipe):
            return None
        if self.cache is None:
            # the same backbone files under the same model and precision: the last member's
            # caches (a fold the leftover budget adds, in a second call of this process, does
            # not run e5 over every text again). Keyed as every fold of one call shares them:
            # by the files' content (model_inputs) and the folders a fold reads, not by the
            # weights of one fold's model (seeded parts such as an untrained pooler differ)
            key = (tuple(sorted(self.inputs.items())), tuple(self.backbone_paths or ()),
                   repr(self.recipe.model), cfg.cache_dtype, cfg.amp)
            if key in _LAST_CACHES:
                self.cache, self.tokens = _LAST_CACHES[key]
                model.tokens = self.tokens
            else:
                self.cache = FeatureCache(model.cls_dims, CACHE_DTYPES[cfg.cache_dtype])
                _LAST_CACHES.clear()
                _LAST_CACHES[key] = (self.cache, self.tokens)
        model.freeze_backbones(True)
        autocast, _ = amp_setup(cfg.amp, next(model.parameters()).device)
        self.cache.ensure(model, texts, cfg.eval_batch_size,
                          desc=f"{self.recipe.name}: caching frozen backbone features",
                          autocast=autocast)
        return self.cache


@dataclass
class MemberState:
    """A member's rows and frozen-feature cache under the keys its folds look them up by: built
    by one process, adopted by the processes that train its folds (Ray fold tasks)."""

    rows: dict[tuple, tuple[Rows, Rows, Rows]]
    caches: dict[tuple, tuple[FeatureCache, TokenMemo]]


def member_state(recipe: Recipe, comp) -> MemberState | None:
    """Build a member's rows (and its frozen-feature cache over every train and test text) as
    its first fold would; None when rows are not kept (a model that reads no files)."""
    inputs = model_inputs(recipe)
    if not inputs:
        return None
    data = FusionData(recipe, comp, inputs)
    model = fresh_model(recipe, comp, data, 0)  # as fold 0 (seeded parts of backbone features)
    data.ensure_rows(model)
    cache = data.ensure_cache(model, data.rows.texts + data.test.texts + data.fit_rows.texts)
    return MemberState({k: v for k, v in _LAST_ROWS.items() if v[0] is data.rows},
                       {k: v for k, v in _LAST_CACHES.items() if v[0] is cache})


def adopt_state(state: MemberState) -> None:
    """Keep `state` in this process, as if this process had built it: the member's folds here
    find their rows and cache instead of building them."""
    for kept, new in ((_LAST_ROWS, state.rows), (_LAST_CACHES, state.caches)):
        if new:
            kept.clear()
            kept.update(new)


def fresh_model(recipe: Recipe, comp, data: FusionData, fold: int) -> FusionModel:
    """Fold `fold`'s untrained model: seeded by the fold, on the member's backbone folders, with
    its token memo, on the device."""
    seed_everything(recipe.train.seed + fold)
    if data.backbone_paths is None:  # a pruned e5 is found (or made) once per member
        data.backbone_paths = resolve_backbones(recipe, comp)
    model = build_fusion(recipe, comp.n_classes, data.backbone_paths)
    model.task = comp.shape  # its outputs in `predict`
    model.tokens = data.tokens  # every fold tokenizes the same texts: once per member
    return model.to(_device())


def start_fold(ctx: FoldContext, data: FusionData) -> tuple[FusionModel, str]:
    """A fold's fresh model: seeded by the fold, sharing the member's token memo, on the device
    (the same starting weights on every rank), with the member's rows built; and its log name."""
    recipe = ctx.recipe
    rank, world = dist_info()
    name = f"{recipe.name} fold {ctx.fold}"
    model = fresh_model(recipe, ctx.comp, data, ctx.fold)
    if rank == 0:
        write_fold_backbones(ctx.dir, recipe, data.backbone_paths)
    if world > 1:  # identical starting weights on every rank
        import torch.distributed as dist

        for t in model.state_dict().values():
            dist.broadcast(t, src=0)
    if rank == 0 and data.rows is None:
        log(f"{name}: {describe(model)}" + (f"; {world} ranks" if world > 1 else ""))
    data.ensure_rows(model)
    return model, name


def extra_rows(model: FusionModel, ctx: FoldContext, targets: np.ndarray) -> Rows:
    """The fold's extra rows (ctx.extra) as model rows with `targets` (one per text)."""
    rows = make_rows(ctx.extra.texts, ctx.recipe.model, targets.astype(np.float32),
                     ctx.extra.weights.astype(np.float32), both_orders=train_swap(ctx.recipe))
    rows.vec_ids = model.vector_ids(rows.texts)
    return rows


def label_loss(ctx: FoldContext) -> nn.Module:
    """The recipe's hard-label loss, with class counts of the fold's training part."""
    cfg, c = ctx.recipe.train, ctx.comp.n_classes
    if ctx.comp.multilabel:  # train.loss ce (the default) means bce; focal bce_focal; or asl
        return create_loss(cfg.loss, c, focal_gamma=cfg.focal_gamma, multilabel=True)
    counts = np.bincount(ctx.comp.labels[ctx.train_idx], minlength=c)
    return create_loss(cfg.loss, c, class_counts=counts, label_smoothing=cfg.label_smoothing,
                       class_weights=cfg.class_weights, focal_gamma=cfg.focal_gamma)


def finish_fold(ctx: FoldContext, data: FusionData, model: FusionModel, result: FitResult,
                cache: FeatureCache | None) -> tuple[np.ndarray, ...]:
    """After the fit: learning curves, then the fold's predictions for the runner:
    (val_proba, predict_proba[, train_proba with ctx.predict_train])."""
    cfg = ctx.recipe.train
    if dist_info()[0] == 0:  # learning curves for the report
        write_json(ctx.dir / "epochs.json", [{"fold": ctx.fold, **h} for h in result.history])
    # weights from phase 1 still have the original backbones, so the cache stays valid
    test_cache = cache if result.best_phase == 1 else None
    test_proba = predict(model, data.test, cfg.eval_batch_size, test_cache, cfg.bucket, cfg.amp,
                         desc=f"{ctx.recipe.name} fold {ctx.fold} test")
    if not ctx.predict_train:
        return result.val_proba, test_proba
    return result.val_proba, test_proba, predict_training_part(model, ctx, data, test_cache)


def selection_split(ctx: FoldContext) -> tuple[np.ndarray, np.ndarray, FoldContext]:
    """The fold's training part split for honest selection (`train.inner_val`).

    Returns:
        (fit_idx, select_idx) train row ids (together ctx.train_idx), and ctx with the extra
        rows that duplicate a selection text dropped: a pseudo-label made by models that
        learnt that row would hand its label to the choice.
    """
    cfg, comp = ctx.recipe.train, ctx.comp
    labels = label_strata(comp.labels[ctx.train_idx])  # multi-label: a stratum per row
    fit_pos, sel_pos = inner_split(labels, ctx.train_texts, cfg.inner_val,
                                   cfg.seed + ctx.fold)
    fit_idx, sel_idx = ctx.train_idx[fit_pos], ctx.train_idx[sel_pos]
    if dist_info()[0] == 0:
        if len(sel_idx):
            log(f"{ctx.recipe.name} fold {ctx.fold}: the epoch is chosen on {len(sel_idx)} of "
                f"its {len(ctx.train_idx)} training rows (train.inner_val={cfg.inner_val}), "
                "never on its validation rows")
        else:
            why = ("train.inner_val=0" if cfg.inner_val <= 0
                   else "too few training rows to hold any out")
            log(f"{ctx.recipe.name} fold {ctx.fold}: {why}: every epoch runs, the last is kept")
    if len(sel_idx) and len(ctx.extra):
        held = {normalize_text(comp.train_texts[i]) for i in sel_idx}
        keep = np.array([normalize_text(t) not in held for t in ctx.extra.texts])
        if not keep.all():
            ctx = dataclasses.replace(ctx, extra=ctx.extra.subset(keep))
    return fit_idx, sel_idx, ctx


def chosen_epochs(result: FitResult) -> tuple[int, int]:
    """(phase-1, phase-2) epochs that made the kept weights: phase 2 ran from `phase1_epoch`."""
    if result.best_phase == 1:
        return result.best_epoch, 0
    ran1 = sum(h["phase"] == 1 for h in result.history)
    return result.phase1_epoch, result.best_epoch - ran1


def refit(ctx: FoldContext, data: FusionData, result: FitResult, rows: Rows,
          loss_fn: nn.Module, cache: FeatureCache | None, watch: tuple[Rows, np.ndarray],
          started: float | None = None) -> tuple[FusionModel, FitResult]:
    """`train.refit`: the fold's model again from the same start, on all its training `rows`,
    for the epochs `result` chose (no choice made, the last kept); returns it and its result,
    whose history is the choosing run's (the curves and the kept epoch)."""
    cfg = ctx.recipe.train
    e1, e2 = chosen_epochs(result)
    model, name = start_fold(ctx, data)  # same seed: the same initial weights
    if dist_info()[0] == 0:
        log(f"{name}: refitting on all {len(ctx.train_idx)} training rows for the chosen "
            f"{e1} + {e2} epochs (train.refit)")
    again = fit(model, rows, None, None, cfg, metric=ctx.recipe.metric, loss_fn=loss_fn,
                cache=cache, ckpt=ctx.dir / "model.pt", seed=cfg.seed + 1000 * ctx.fold,
                name=f"{name} refit", watch=watch, stop_after=(e1, e2), started=started,
                reserve_rows=predicted_rows(ctx, data))
    again.history = result.history
    return model, again


def fit_fold(ctx: FoldContext, data: FusionData) -> tuple[np.ndarray, ...]:
    """One fold: build the model, fit on the training part (+ extra rows) choosing the epoch on
    held-out training rows (then, with train.refit, again on all of them for that many
    epochs), predict val/test (and the training part with ctx.predict_train)."""
    cfg = ctx.recipe.train
    started = slice_clock()  # train.time_limit counts the model build, the caches, predictions
    rank, world = dist_info()
    model, name = start_fold(ctx, data)
    everything = ctx
    fit_idx, sel_idx, ctx = selection_split(ctx)

    # data.suspects = "weight": each training row's loss weight, by train row id
    weight_of = np.ones(len(ctx.comp.train_ids), np.float32)
    if everything.train_weights is not None:
        weight_of[everything.train_idx] = everything.train_weights

    def training_rows(idx: np.ndarray, c: FoldContext) -> Rows:
        rows = data.fit_rows.take(idx)
        rows.weights = rows.weights * weight_of[idx[rows.source]]
        if len(c.extra):
            rows = rows.concat(extra_rows(model, c, c.extra.targets))
        return rows  # with several ranks, the batch sampler deals each its share every epoch

    train = training_rows(fit_idx, ctx)
    full = training_rows(everything.train_idx, everything) if (
        cfg.refit and len(sel_idx)) else None
    select = data.rows.take(sel_idx)
    val = (data.rows.take(ctx.val_idx), ctx.comp.labels[ctx.val_idx])
    cache = data.ensure_cache(model, data.rows.texts + data.test.texts + train.texts
                              + (full.texts if full is not None else []))
    result = fit(model, train, select, ctx.comp.labels[sel_idx], cfg, metric=ctx.recipe.metric,
                 loss_fn=label_loss(ctx), cache=cache, ckpt=ctx.dir / "model.pt",
                 report=ctx.report, seed=cfg.seed + 1000 * ctx.fold, name=name, watch=val,
                 started=started, reserve_rows=predicted_rows(everything, data))
    if full is not None:
        model, result = refit(everything, data, result, full, label_loss(ctx), cache, val,
                              started)
    return finish_fold(everything, data, model, result, cache)


def predicted_rows(ctx: FoldContext, data: FusionData) -> int:
    """Rows a fold predicts after its fit: validation, test (+ unlabelled), and its training
    part when asked."""
    return (len(ctx.val_idx) + len(data.test.texts)
            + (len(ctx.train_idx) if ctx.predict_train else 0))


def predict_training_part(model: FusionModel, ctx: FoldContext, data: FusionData,
                          cache: FeatureCache | None = None) -> np.ndarray:
    """A fold's model on its own training rows: (len(ctx.train_idx), C)."""
    cfg = ctx.recipe.train
    return predict(model, data.rows.take(ctx.train_idx), cfg.eval_batch_size, cache, cfg.bucket,
                   cfg.amp, desc=f"{ctx.recipe.name} fold {ctx.fold} training rows")


def _kept_model(ctx: FoldContext, data: FusionData) -> FusionModel | None:
    """A done fold's kept model.pt, loaded, with the member's rows built; None without one."""
    ckpt = ctx.dir / "model.pt"
    if not ckpt.exists():
        return None
    model = load_fold_model(ckpt, ctx.recipe, ctx.comp.n_classes)
    model.task = ctx.comp.shape  # inferred from the data, not only the recipe
    model.tokens = data.tokens
    model.to(_device())
    data.ensure_rows(model)
    return model


def predict_fold_train(ctx: FoldContext, data: FusionData) -> np.ndarray | None:
    """A done fold's training-part predictions from its kept model.pt; None without one."""
    model = _kept_model(ctx, data)
    return None if model is None else predict_training_part(model, ctx, data)


def predict_fold_texts(ctx: FoldContext, data: FusionData) -> np.ndarray | None:
    """A done fold's predictions on ctx.predict_texts (new test or unlabelled texts) from its
    kept model.pt; None without one."""
    model = _kept_model(ctx, data)
    if model is None:
        return None
    log_unknown(model, ctx.comp.predict_texts, f"{ctx.recipe.name} fold {ctx.fold}")
    cfg = ctx.recipe.train
    return predict(model, data.test, cfg.eval_batch_size, None, cfg.bucket, cfg.amp,
                   desc=f"{ctx.recipe.name} fold {ctx.fold} test")


def collect_epochs(run_dir: str | Path, cv: dict | None) -> dict | None:
    """Join the folds' epochs.json into the member's (one record per fold and epoch) once the
    member is done, and record in cv.json the phases a time slice cut (`cut`: fold, phase,
    planned and made steps; [] when none was); returns `cv` with it."""
    if cv is not None:
        recs = []
        for p in sorted(Path(run_dir).glob("fold*/epochs.json")):
            recs.extend(read_json(p))
        if recs:
            write_json(Path(run_dir) / "epochs.json", recs)
        cuts = [{"fold": r["fold"], **r["cut"]} for r in recs if r.get("cut")]
        if cuts or "cut" in cv:
            cv = {**cv, "cut": cuts}
            write_json(Path(run_dir) / "cv.json", cv)
    return cv


def _device() -> torch.device:
    if torch.cuda.is_available():
        _, world = dist_info()
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else 0)
    return torch.device("cpu")


def train_fusion(recipe: Recipe, folds_to_run: list[int] | None = None, force: bool = False,
                 report: Callable[[int, float], None] | None = None,
                 extra: ExtraRows | None = None) -> dict | None:
    """Run (or resume) a fusion member over the shared folds; returns cv.json's dict when done.

    Under torchrun (WORLD_SIZE > 1) rank 0 drives comp.kfold.runner.run_member and tells the other
    ranks which fold to train; they train their shards and write nothing.
    """
    from comp.data.competition import load_competition

    comp = load_competition(recipe.data)
    inputs = model_inputs(recipe)
    data = FusionData(recipe, comp, inputs)
    rank, world = init_distributed()
    if world == 1:
        return collect_epochs(recipe.run_dir, run_member(
            recipe, lambda ctx: fit_fold(ctx, data), folds_to_run, force, extra, report, comp,
            lambda ctx: predict_fold_train(ctx, data), lambda ctx: predict_fold_texts(ctx, data),
            inputs=inputs))
    import torch.distributed as dist

    if rank == 0:
        def lead(ctx: FoldContext) -> tuple[np.ndarray, np.ndarray]:
            dist.broadcast_object_list([(ctx.fold, ctx.train_idx, ctx.val_idx, ctx.extra)], 0)
            return fit_fold(ctx, data)

        try:
            return collect_epochs(recipe.run_dir, run_member(recipe, lead, folds_to_run, force,
                                                             extra, report, comp,
                                                             inputs=inputs))
        finally:
            dist.broadcast_object_list([None], 0)  # release the other ranks
    while True:
        msg: list = [None]
        dist.broadcast_object_list(msg, 0)
        if msg[0] is None:
            return None
        fold, train_idx, val_idx, fold_extra = msg[0]
        ctx = FoldContext(fold, train_idx, val_idx, Path(recipe.run_dir) / f"fold{fold}", comp,
                          recipe, fold_extra, predict_train=recipe.train.predict_train)
        fit_fold(ctx, data)
