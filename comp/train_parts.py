"""Building blocks of the fit loop in comp/train.py: rows, batching, schedules, LR groups,
FGM/PGD, EMA, AMP and torch.distributed helpers. Each piece is small and tested on its own.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from comp.config import ModelConfig, TrainConfig
from comp.fusion import FusionModel, grid_len, grid_texts

__all__ = ["Rows", "make_rows", "shard_rows", "inner_split", "train_batches", "eval_batches",
           "schedule_lambda", "param_groups", "Adversary", "EMA", "amp_setup", "dist_info",
           "init_distributed", "all_reduce_grads"]


# ---------------------------------------------------------------------------------------------
# rows


@dataclass
class Rows:
    """Model inputs with their targets: one row per grid text (a truncated text or a window).

    `source[i]` is the input text row i came from, so window predictions average back to one
    per text (`average`).
    """

    texts: list[str]  # grid texts
    targets: np.ndarray  # (n, C) float32 target distributions (one-hot for labelled rows)
    weights: np.ndarray  # (n,) float32 loss weights
    source: np.ndarray  # (n,) int64 index of the source text
    n_source: int
    vec_ids: list[Tensor] | None = None  # per vector kind (n, max_chars), see FusionModel

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def lengths(self) -> np.ndarray:
        """(n,) grid length of each row (for bucketing)."""
        return np.fromiter((grid_len(t) for t in self.texts), dtype=np.int64,
                           count=len(self.texts))

    def subset(self, idx: np.ndarray) -> Rows:
        """Rows `idx` (sources unchanged)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Rows([self.texts[i] for i in idx], self.targets[idx], self.weights[idx],
                    self.source[idx], self.n_source,
                    None if self.vec_ids is None else [v[idx] for v in self.vec_ids])

    def take(self, source_ids: np.ndarray) -> Rows:
        """The rows of these source texts; sources renumbered 0..len(source_ids)-1 in order."""
        source_ids = np.asarray(source_ids, dtype=np.int64)
        pos = np.full(self.n_source, -1, dtype=np.int64)
        pos[source_ids] = np.arange(len(source_ids))
        keep = np.flatnonzero(pos[self.source] >= 0)
        out = self.subset(keep)
        out.source = pos[self.source[keep]]
        out.n_source = len(source_ids)
        return out

    def concat(self, other: Rows) -> Rows:
        """self's rows then other's (other's sources shifted past self's)."""
        vec = None
        if self.vec_ids is not None and other.vec_ids is not None:
            vec = [torch.cat([a, b]) for a, b in zip(self.vec_ids, other.vec_ids)]
        return Rows(self.texts + other.texts, np.concatenate([self.targets, other.targets]),
                    np.concatenate([self.weights, other.weights]),
                    np.concatenate([self.source, other.source + self.n_source]),
                    self.n_source + other.n_source, vec)

    def average(self, proba: np.ndarray) -> np.ndarray:
        """(n, C) row probabilities -> (n_source, C), the mean over each source's rows."""
        out = np.zeros((self.n_source, proba.shape[1]), dtype=np.float64)
        np.add.at(out, self.source, proba)
        counts = np.bincount(self.source, minlength=self.n_source).astype(np.float64)
        return (out / np.maximum(counts, 1)[:, None]).astype(np.float32)


def make_rows(texts: Sequence[str], cfg: ModelConfig, targets: np.ndarray,
              weights: np.ndarray | None = None, both_orders: bool | None = None) -> Rows:
    """Rows for input texts: each text's grid text(s) (`comp.fusion.grid_texts`) with its target.

    Args:
        texts: input texts.
        cfg: model config (truncation or windows).
        targets: (n, C) target distributions (one-hot rows for hard labels).
        weights: (n,) loss weights; default 1.
        both_orders: a pair text also as (b, a) (its own row, same source and target); None =
            `cfg.pair_tta`, so predictions average both orders when the recipe asks.

    Returns:
        Rows; a windowed text gives one row per window, all with the text's target.
    """
    both = getattr(cfg, "pair_tta", False) if both_orders is None else both_orders
    out_texts, source = [], []
    for i, t in enumerate(texts):
        g = grid_texts(t, cfg, both)
        out_texts.extend(g)
        source.extend([i] * len(g))
    src = np.asarray(source, dtype=np.int64)
    w = np.ones(len(texts), np.float32) if weights is None else np.asarray(weights, np.float32)
    return Rows(out_texts, np.asarray(targets, np.float32)[src].reshape(len(src), -1), w[src],
                src, len(texts))


def shard_rows(rows: Rows, rank: int, world: int, seed: int) -> Rows:
    """This rank's share of `rows`: a seeded permutation, padded by wrapping to a multiple of
    `world` so every rank runs the same number of steps."""
    perm = np.random.default_rng(seed).permutation(len(rows))
    pad = (-len(perm)) % world
    perm = np.concatenate([perm, perm[:pad]])
    return rows.subset(perm[rank::world])


def inner_split(labels: np.ndarray, texts: Sequence[str], frac: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Positions (fit, select) of a fold's training rows: `select` (about `frac` of them) is
    held out to choose the epoch, so that choice never needs the fold's validation labels.

    Stratified by label, identical normalized texts on one side (a copy in `fit` would hand its
    label to `select`), seeded. Rows of classes with fewer than 3 rows stay in `fit`: a model
    has to see a class to learn it. A split stratification cannot make falls back to a random
    grouped one; `select` is empty when `frac` is 0 or there is nothing to split.

    Args:
        labels: (n,) int labels of the training rows.
        texts: their texts.
        frac: share held out, in [0, 0.5].
        seed: split seed.

    Returns:
        Two sorted int arrays of positions into `labels`, together 0..n-1.
    """
    import warnings

    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    from comp.data import normalize_text

    n = len(labels)
    everything = np.arange(n)
    if frac <= 0 or n < 4:
        return everything, everything[:0]
    keys: dict[str, int] = {}
    groups = np.array([keys.setdefault(normalize_text(t), len(keys)) for t in texts])
    counts = np.bincount(labels)
    forced = np.isin(groups, groups[counts[labels] < 3])  # groups holding a rare-class row
    rest = np.flatnonzero(~forced)
    if len(np.unique(groups[rest])) < 2:
        return everything, everything[:0]
    y, g = labels[rest], groups[rest]
    splits = max(2, round(1 / frac))
    try:
        with warnings.catch_warnings():  # a class with fewer rows than splits is expected here
            warnings.simplefilter("ignore", UserWarning)
            splitter = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
            _, sel = next(splitter.split(np.zeros(len(rest)), y, g))
    except ValueError:  # fewer groups than splits: a random grouped share instead
        splitter = GroupShuffleSplit(n_splits=1, test_size=frac, random_state=seed)
        _, sel = next(splitter.split(np.zeros(len(rest)), y, g))
    select = np.sort(rest[sel])
    return np.setdiff1d(everything, select), select


# ---------------------------------------------------------------------------------------------
# batching


def train_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None,
                  bucket: bool = True, pool: int = 50) -> list[np.ndarray]:
    """Shuffled training batches; with `bucket`, rows of similar length share a batch.

    Bucketing: shuffle, cut into pools of `pool` batches, sort each pool by length, cut it into
    batches, shuffle the batches. Padding shrinks while every epoch still sees a new order.
    `rng=None` keeps the input order (used to count batches).
    """
    n = len(lengths)
    order = np.arange(n) if rng is None else rng.permutation(n)
    if not bucket or rng is None:
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    batches: list[np.ndarray] = []
    for lo in range(0, n, batch_size * pool):
        chunk = order[lo:lo + batch_size * pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: np.ndarray, batch_size: int, bucket: bool = True) -> list[np.ndarray]:
    """Inference batches: rows sorted by length (stable) when `bucket`, else in order."""
    order = np.argsort(lengths, kind="stable") if bucket else np.arange(len(lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# ---------------------------------------------------------------------------------------------
# optimisation


def schedule_lambda(kind: str, warmup: float, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warmup over `warmup` of the steps, then
    constant, linear decay to 0, or cosine decay to 0."""
    warm = int(round(warmup * total_steps))
    decay_steps = max(1, total_steps - warm)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        t = min(1.0, (step - warm) / decay_steps)
        if kind == "linear":
            return 1.0 - t
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def param_groups(model: FusionModel, cfg: TrainConfig, phase: int) -> list[dict]:
    """AdamW groups: the head at its LR; in phase 2 every backbone layer group at
    lr * layer_decay^(depth from the top), lr the backbone's own (model.backbones[i].lr) or
    train.lr_backbone; frozen groups (below train.unfreeze_top's cut) get none. Biases and
    norms get no weight decay."""
    groups: list[dict] = []
    seen: set[int] = set()

    def add(params: Sequence[nn.Parameter], lr: float, tag: str) -> None:
        fresh = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in fresh)
        decay = [p for p in fresh if p.ndim > 1]
        plain = [p for p in fresh if p.ndim <= 1]
        for ps, wd in ((decay, cfg.weight_decay), (plain, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": lr, "weight_decay": wd, "tag": tag})

    head_lr = cfg.lr_head if phase == 1 or cfg.lr_head_unfrozen <= 0 else cfg.lr_head_unfrozen
    add(model.head_parameters(), head_lr, "head")
    if phase == 2:
        for j, b in enumerate(model.backbones):
            layers = [g for g in b.layer_groups() if g]
            bcs = getattr(getattr(model, "cfg", None), "backbones", ())
            lr = (bcs[j].lr if j < len(bcs) else 0.0) or cfg.lr_backbone  # per backbone
            for i, g in enumerate(layers):
                depth = len(layers) - 1 - i  # 0 for the top group
                add(g, lr * cfg.layer_decay ** depth, f"{b.kind}.{i}")
    if not groups:
        raise ValueError("no trainable parameters")
    return groups


# ---------------------------------------------------------------------------------------------
# adversarial training


class Adversary:
    """FGM / PGD on embedding outputs (Miyato et al. 2017; Madry et al. 2018).

    Forward hooks add a perturbation r to each module's output. `recording()` makes r a zero
    leaf so the clean backward also yields dL/d(output); `attack` then trains on the perturbed
    input too: FGM takes one step r = eps * g / ||g||; PGD takes `steps` steps of 0.3 * eps,
    each projected back onto the eps ball, and keeps the gradient of the last one. Parameter
    gradients end up as clean + adversarial, as in the usual competition recipe. Modules not
    run by a forward (frozen, cached backbones) are simply not attacked.
    """

    def __init__(self, modules: Sequence[nn.Module], kind: str = "fgm", eps: float = 1.0,
                 steps: int = 3) -> None:
        if kind not in ("fgm", "pgd"):
            raise ValueError(f"adversarial kind must be fgm or pgd, got {kind!r}")
        self.kind, self.eps, self.steps = kind, eps, max(1, steps)
        self.alpha = 0.3 * eps
        self.mode: str | None = None  # None | "leaf" (r is a grad leaf) | "fixed"
        self.delta: dict[int, Tensor] = {}
        self.leaves: dict[int, Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
            if self.mode is None:
                return None
            base = self.delta.get(i)
            r = torch.zeros_like(output) if base is None else base.to(output.dtype)
            if self.mode == "leaf":
                r = r.detach().requires_grad_(True)
                self.leaves[i] = r
            return output + r

        return hook

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """The clean forward/backward: records dL/d(embedding output)."""
        self.mode, self.delta, self.leaves = "leaf", {}, {}
        try:
            yield
        finally:
            self.mode = None

    def _step(self, grads: dict[int, Tensor], size: float) -> bool:
        ok = False
        for i, g in grads.items():
            norm = g.float().norm()
            if not torch.isfinite(norm) or norm == 0:
                continue
            r = self.delta.get(i, torch.zeros_like(g)) + size * g / norm
            rn = r.float().norm()
            if rn > self.eps:  # project back onto the eps ball
                r = r * (self.eps / rn)
            self.delta[i] = r.detach()
            ok = True
        return ok

    def attack(self, loss_fn: Callable[[], Tensor], backward: Callable[[Tensor], None],
               params: Sequence[nn.Parameter]) -> None:
        """After the recorded clean backward: add the adversarial loss's gradients."""
        grads = {i: r.grad for i, r in self.leaves.items() if r.grad is not None}
        if not grads:
            return
        self.delta = {}
        try:
            if self.kind == "fgm":
                if self._step(grads, self.eps):
                    self.mode = "fixed"
                    backward(loss_fn())
                return
            for t in range(self.steps):
                if not self._step(grads, self.alpha):
                    return
                if t == self.steps - 1:
                    self.mode = "fixed"
                    backward(loss_fn())
                else:  # only the direction for the next step; parameter grads untouched
                    self.mode, self.leaves = "leaf", {}
                    loss = loss_fn()
                    keys = list(self.leaves)
                    got = torch.autograd.grad(loss, [self.leaves[k] for k in keys],
                                              allow_unused=True)
                    grads = {k: g for k, g in zip(keys, got) if g is not None}
        finally:
            self.mode, self.delta, self.leaves = None, {}, {}

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self.handles:
            h.remove()
        self.handles = []


# ---------------------------------------------------------------------------------------------
# EMA


class EMA:
    """Exponential moving average of the weights, with the usual warm-up of the decay
    (min(decay, (1 + n) / (10 + n))) so early evaluations are not dominated by the init."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Start again from the model's current weights."""
        self.n = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward the current weights (call after each optimizer step)."""
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for k, v in model.state_dict(keep_vars=True).items():
            s = self.shadow[k]
            if isinstance(v, nn.Parameter) and v.requires_grad and s.is_floating_point():
                s.lerp_(v.detach(), 1.0 - d)
            elif not isinstance(v, nn.Parameter):
                s.copy_(v.detach())  # buffers follow the model

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily swap the averaged weights into `model`."""
        state = model.state_dict(keep_vars=True)
        backup = {k: v.detach().clone() for k, v in state.items()}
        with torch.no_grad():
            for k, v in state.items():
                v.data.copy_(self.shadow[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in state.items():
                    v.data.copy_(backup[k])


# ---------------------------------------------------------------------------------------------
# AMP and torch.distributed


def amp_setup(amp: str, device: torch.device) -> tuple[Callable, object | None]:
    """(autocast context factory, GradScaler or None).

    CUDA: bf16 or fp16 (auto picks bf16 where supported). CPU: bf16 only when asked for, and
    only where oneDNN has native bf16 kernels; elsewhere full precision.
    """
    if device.type == "cpu" and amp == "bf16" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)), None
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext, None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        dtype = torch.bfloat16
    else:
        dtype = torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); else stay single-process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return dist_info()


def all_reduce_grads(params: Sequence[nn.Parameter], world: int) -> None:
    """Average gradients over ranks in one flat all_reduce."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
