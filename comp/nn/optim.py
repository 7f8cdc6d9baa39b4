"""Optimisation pieces of the fit loop: LR schedules (transformers'), layer-wise LR groups,
FGM/PGD adversarial training, EMA of weights (torch's AveragedModel).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from comp.config.schema import TrainConfig
from comp.nn.fusion import FusionModel

# ---------------------------------------------------------------------------------------------
# optimisation


# recipe train.schedule -> transformers' scheduler name
SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def lr_scheduler(opt: torch.optim.Optimizer, kind: str, warmup: float,
                 total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' schedule for `total_steps` optimizer steps: linear warmup over `warmup` of
    them (step s of w gets s / w, so the first step has LR 0), then constant, linear decay to 0,
    or cosine decay to 0."""
    from transformers import get_scheduler

    return get_scheduler(SCHEDULES[kind], opt, num_warmup_steps=int(round(warmup * total_steps)),
                         num_training_steps=total_steps)


class TimeSlice:
    """`train.time_limit`: the seconds a fold may take, from its start (model build, feature
    caches) to its predictions written, spent phase by phase.

    Phase 1 may use PHASE1_SHARE of what is left when it starts if a phase 2 follows (it is the
    cheap, frozen one), the last phase the rest less a reserve for the fold's predictions
    (`reserve_rows` rows, each a forward at PREDICT_SHARE of a training row's cost at the phase's
    own pace). After a few optimizer steps a phase projects its end from its own pace
    (evaluations included); when the steps left do not fit, it is cut once: the LR decays
    linearly from where it is to 0 over the steps that fit (the schedule's decay brought
    forward), and the phase ends at that step boundary with a finished model. `cuts` records
    what was cut, for cv.json. Under torch.distributed every rank takes the slowest's answer.
    """

    PHASE1_SHARE = 0.25
    MIN_STEPS = 3  # steps a phase takes before its pace is trusted
    # a row predicted without gradients costs about a third of a trained row (the backward is
    # about twice the forward)
    PREDICT_SHARE = 1 / 3

    def __init__(self, seconds: float, two_phases: bool, start: float | None = None,
                 reserve_rows: int = 0, step_rows: int = 1) -> None:
        self.seconds, self.two_phases = float(seconds), two_phases
        self.start = time.time() if start is None else start
        self.reserve_rows, self.step_rows = reserve_rows, max(1, step_rows)
        self.cuts: list[dict] = []

    def begin(self, phase: int, steps: int) -> None:
        """A phase of `steps` optimizer steps starts now."""
        now = time.time()
        self.last = not (phase == 1 and self.two_phases)
        left = self.start + self.seconds - now
        self.phase, self.steps, self.done = phase, steps, 0
        self.phase_start = now
        self.end = now + max(left, 0.0) * (1.0 if self.last else self.PHASE1_SHARE)
        self.cut_at: int | None = None

    def step(self, opt: torch.optim.Optimizer, sched):
        """After an optimizer step: the scheduler to step next (a decay once cut)."""
        self.done += 1
        if (not self.seconds or self.cut_at is not None or self.done < self.MIN_STEPS
                or self.done >= self.steps):
            return sched
        now = time.time()
        pace = (now - self.phase_start) / self.done
        reserve = (self.PREDICT_SHARE * pace / self.step_rows * self.reserve_rows
                   if self.last else 0.0)
        fit = _min_over_ranks(int(max(self.end - reserve - now, 0.0) // max(pace, 1e-9)))
        if fit >= self.steps - self.done:
            return sched
        self.cut_at = self.done + max(fit, 1)
        self.cuts.append({"phase": self.phase, "planned_steps": self.steps,
                          "steps": self.cut_at, "time_limit": self.seconds})
        # the r steps left get (r - j) / (r + 1) of today's LR: a line to 0 one step after them
        r = self.cut_at - self.done
        return torch.optim.lr_scheduler.LinearLR(opt, start_factor=r / (r + 1), end_factor=0.0,
                                                 total_iters=r)

    @property
    def over(self) -> bool:
        """True once a cut phase made its last step."""
        return self.cut_at is not None and self.done >= self.cut_at


def clock() -> float:
    """The time a TimeSlice reads (one clock for the fold's start and its phases)."""
    return time.time()


def _min_over_ranks(n: int) -> int:
    """n, the smallest over the ranks under torch.distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return n
    t = torch.tensor([n], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


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
    """Exponential moving average of the weights: torch's AveragedModel with its EMA update, the
    decay warmed up to min(decay, (1 + n) / (10 + n)) at the n-th update so early evaluations
    are not dominated by the init.

    Only parameters are averaged (use_buffers=False): the model's buffers are its own when the
    average is applied. Frozen parameters are skipped (their average is their value): averaging
    a frozen 33M-parameter backbone anyway took 250 ms an update instead of 0.35 ms on a 2-core
    CPU. The averaged copy holds the parameters and buffers alone, not the tokenizers and token
    memo that AveragedModel's deep copy of the whole model would duplicate.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Start again from the model's current weights."""
        self.n = 0
        weights = nn.ParameterList(model.parameters())
        for i, b in enumerate(model.buffers()):  # update_parameters syncs them one to one
            weights.register_buffer(f"b{i}", b)
        self.avg = AveragedModel(weights, multi_avg_fn=self._average)
        self.avg.update_parameters(model)  # the first update copies

    def _average(self, avg: list[Tensor], now: list[Tensor], _n: Tensor) -> None:
        keep = [i for i, t in enumerate(now) if t.data_ptr() in self._trained]
        if keep:
            d = min(self.decay, (1 + self.n) / (10 + self.n))
            get_ema_multi_avg_fn(d)([avg[i] for i in keep], [now[i] for i in keep], _n)

    def update(self, model: nn.Module) -> None:
        """Move the average toward the current weights (call after each optimizer step)."""
        self.n += 1
        self._trained = {p.data_ptr() for p in model.parameters() if p.requires_grad}
        self.avg.update_parameters(model)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily swap the averaged weights into `model`."""
        params = list(model.parameters())
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, a in zip(params, self.avg.module.parameters(), strict=True):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)
