"""Classification losses behind one registry, all taking hard or soft targets.

Every loss is called as `loss(logits (B, C), target, weight=None) -> scalar`, where target is
either int class ids (B,) or probabilities (B, C) (pseudo-labels, teacher outputs) and weight
is an optional (B,) per-sample weight. Label smoothing mixes the target with the uniform
distribution; class weights (inverse frequency, mean 1) scale each row by its target's weight.
Losses are averaged over rows by the total weight, so a row with weight 0 is exactly absent.
Cross-entropy terms are torch's F.cross_entropy with probability targets; smoothing is applied
to the target first (every loss sees the same smoothed target), not by its label_smoothing.

    loss_fn = create_loss("focal", n_classes=3, class_counts=np.bincount(y), class_weights=True)
    loss = loss_fn(logits, y_batch)

Multi-label tasks (comp.data: targets (B, L) of 0/1, one sigmoid per label) take bce, bce_focal
or asl (`create_loss(..., multilabel=True)`, where ce means bce and focal bce_focal); each
row's loss is the mean over its labels, so a row with no positive label counts like any other.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comp.core.utils import CompError

__all__ = ["ClassificationLoss", "register_loss", "create_loss", "loss_names",
           "inverse_frequency_weights", "register_multilabel_loss", "multilabel_loss_names"]

_LOSSES: dict[str, type[ClassificationLoss]] = {}
_EPS = 1e-12


def register_loss(cls: type[ClassificationLoss]) -> type[ClassificationLoss]:
    """Register a ClassificationLoss subclass under its `name` attribute."""
    _LOSSES[cls.name] = cls
    return cls


def loss_names() -> list[str]:
    """Names of every registered loss, sorted."""
    return sorted(_LOSSES)


# multi-label losses live in their own registry: a single-label task never sees them
_MULTILABEL_LOSSES: dict[str, type[ClassificationLoss]] = {}
_MULTILABEL_ALIASES = {"ce": "bce", "focal": "bce_focal"}


def register_multilabel_loss(cls: type[ClassificationLoss]) -> type[ClassificationLoss]:
    """Register a multi-label loss (sigmoid per label) under its `name` attribute."""
    _MULTILABEL_LOSSES[cls.name] = cls
    return cls


def multilabel_loss_names() -> list[str]:
    """Names of every registered multi-label loss, sorted."""
    return sorted(_MULTILABEL_LOSSES)


def create_loss(name: str, n_classes: int, class_counts: np.ndarray | None = None,
                label_smoothing: float = 0.0, class_weights: bool = False,
                focal_gamma: float = 2.0, multilabel: bool = False) -> ClassificationLoss:
    """Build a registered loss.

    Args:
        name: a name from `loss_names()`: ce, focal, dice, ghm, logit_adjusted.
        n_classes: number of classes C.
        class_counts: (C,) training label counts; needed for class weights, and the priors
            of logit_adjusted (uniform priors when absent, which makes it plain CE).
        label_smoothing: epsilon mixing the target with the uniform distribution.
        class_weights: weight rows by inverse class frequency (normalised to mean 1).
        focal_gamma: focusing exponent of the focal loss.
        multilabel: a multi-label task: bce, bce_focal or asl (ce and focal name the first
            two); the single-label losses are refused, and these are refused without it.

    Returns:
        An nn.Module: `forward(logits (B, C), target (B,) long | (B, C) float,
        weight (B,) | None) -> scalar`.
    """
    if multilabel:
        name = _MULTILABEL_ALIASES.get(name, name)
        if name not in _MULTILABEL_LOSSES:
            raise CompError(f"recipe key 'train.loss': '{name}' is not a multi-label loss (a "
                            f"multilabel task takes {', '.join(multilabel_loss_names())}; ce "
                            "means bce, focal bce_focal)")
        return _MULTILABEL_LOSSES[name](n_classes, focal_gamma=focal_gamma)
    if name not in _LOSSES:
        more = (" (a multi-label loss: this task has one label per row)"
                if name in _MULTILABEL_LOSSES else "")
        raise CompError(f"recipe key 'train.loss': unknown loss '{name}'{more} "
                        f"(known: {', '.join(loss_names())})")
    return _LOSSES[name](n_classes, class_counts=class_counts, label_smoothing=label_smoothing,
                         class_weights=class_weights, focal_gamma=focal_gamma)


def inverse_frequency_weights(class_counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency class weights normalised to mean 1; empty classes count as one row."""
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    w = 1.0 / counts
    return w * len(w) / w.sum()


class ClassificationLoss(nn.Module):
    """Shared target handling, smoothing, class and sample weights; subclasses give the loss.

    Subclasses implement `row_loss(logits, q) -> (B,)` for a row-wise loss averaged with row
    weights, or override `combine` when the loss is not a sum over rows (dice, GHM).
    """

    name = ""

    def __init__(self, n_classes: int, class_counts: np.ndarray | None = None,
                 label_smoothing: float = 0.0, class_weights: bool = False,
                 focal_gamma: float = 2.0) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"need at least 2 classes, got {n_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise CompError(f"recipe key 'train.label_smoothing': must be in [0, 1), "
                            f"got {label_smoothing}")
        if focal_gamma < 0:
            raise CompError(f"recipe key 'train.focal_gamma': must be >= 0, got {focal_gamma}")
        if class_counts is not None:
            class_counts = np.asarray(class_counts, dtype=np.float64).reshape(-1)
            if len(class_counts) != n_classes:
                raise ValueError(f"class_counts has {len(class_counts)} entries for "
                                 f"{n_classes} classes")
        if class_weights and class_counts is None:
            raise ValueError("class_weights=True needs class_counts")
        self.n_classes = n_classes
        self.label_smoothing = label_smoothing
        self.focal_gamma = focal_gamma
        self.use_class_weights = class_weights
        cw = inverse_frequency_weights(class_counts) if class_weights else np.ones(n_classes)
        self.register_buffer("class_weight", torch.tensor(cw, dtype=torch.float32))  # (C,)
        if class_counts is None:
            prior = np.full(n_classes, 1.0 / n_classes)
        else:
            counts = np.maximum(class_counts, 1.0)  # an unseen class must not get log(0)
            prior = counts / counts.sum()
        self.register_buffer("log_prior", torch.tensor(np.log(prior), dtype=torch.float32))

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Mean loss over rows, weighted by per-sample and class weights.

        Args:
            logits: (B, C) raw scores.
            target: (B,) int class ids or (B, C) float probabilities.
            weight: optional (B,) non-negative per-sample weights.

        Returns:
            A scalar tensor.
        """
        if logits.dim() != 2 or logits.shape[1] != self.n_classes:
            raise ValueError(f"logits must be (B, {self.n_classes}), got {tuple(logits.shape)}")
        logits = logits.float()  # losses in fp32 even under autocast
        q_raw = self._probabilities(target, logits.shape[0])  # (B, C)
        eps = self.label_smoothing
        q = q_raw * (1.0 - eps) + eps / self.n_classes if eps else q_raw
        if weight is None:
            w = logits.new_ones(logits.shape[0])
        else:
            w = weight.to(logits.device, torch.float32).reshape(-1)
            if w.shape[0] != logits.shape[0]:
                raise ValueError(f"weight has {w.shape[0]} entries for a batch of "
                                 f"{logits.shape[0]}")
        return self.combine(logits, q, q_raw, w)

    def combine(self, logits: Tensor, q: Tensor, q_raw: Tensor, w: Tensor) -> Tensor:
        """Weighted mean of `row_loss`, class weights read from the unsmoothed target."""
        r = w * (q_raw @ self.class_weight)  # (B,)
        return (r * self.row_loss(logits, q)).sum() / r.sum().clamp_min(_EPS)

    def row_loss(self, logits: Tensor, q: Tensor) -> Tensor:  # pragma: no cover - abstract
        """(B, C) logits and target probabilities -> (B,) losses."""
        raise NotImplementedError

    def _probabilities(self, target: Tensor, b: int) -> Tensor:
        if target.is_floating_point():
            if target.shape != (b, self.n_classes):
                raise ValueError(f"soft targets must be (B, {self.n_classes}), "
                                 f"got {tuple(target.shape)}")
            return target.float()
        target = target.reshape(-1).long()
        if target.shape[0] != b:
            raise ValueError(f"target has {target.shape[0]} labels for a batch of {b}")
        if b and (target.min() < 0 or target.max() >= self.n_classes):
            raise ValueError(f"labels must be in [0, {self.n_classes}), got "
                             f"{target.min().item()}..{target.max().item()}")
        return F.one_hot(target, self.n_classes).float()


@register_loss
class CrossEntropy(ClassificationLoss):
    """Cross-entropy -sum_c q_c log p_c (soft targets welcome)."""

    name = "ce"

    def row_loss(self, logits: Tensor, q: Tensor) -> Tensor:
        """Per-row cross-entropy (torch's, with probability targets)."""
        return F.cross_entropy(logits, q, reduction="none")


@register_loss
class FocalLoss(ClassificationLoss):
    """Focal loss -sum_c q_c (1 - p_c)^gamma log p_c (Lin et al. 2017); gamma 0 is CE."""

    name = "focal"

    def row_loss(self, logits: Tensor, q: Tensor) -> Tensor:
        """Per-row focal loss."""
        if self.focal_gamma == 0:
            return F.cross_entropy(logits, q, reduction="none")
        logp = F.log_softmax(logits, dim=-1)
        # a tiny floor keeps the gradient of x**gamma finite at p == 1 when gamma < 1
        focus = (1.0 - logp.exp()).clamp_min(_EPS) ** self.focal_gamma
        return -(q * focus * logp).sum(dim=-1)


@register_loss
class LogitAdjustedLoss(ClassificationLoss):
    """Logit-adjusted CE (Menon et al. 2021): CE on logits + tau * log(prior).

    Training against the adjusted logits makes the raw logits estimate balanced-error-optimal
    scores, so predictions use the raw logits unchanged.
    """

    name = "logit_adjusted"
    tau = 1.0

    def row_loss(self, logits: Tensor, q: Tensor) -> Tensor:
        """Per-row CE on prior-shifted logits."""
        shifted = logits + self.tau * self.log_prior  # (B, C)
        return F.cross_entropy(shifted, q, reduction="none")


@register_loss
class DiceLoss(ClassificationLoss):
    """Soft multi-class Dice over the batch: mean over classes of 1 - Dice(p_c, q_c).

    It scores each class as a set, which ties it to F1 rather than accuracy; sample weights
    scale each row's share of the sums, class weights weight the per-class terms.
    """

    name = "dice"
    smooth = 1.0

    def combine(self, logits: Tensor, q: Tensor, q_raw: Tensor, w: Tensor) -> Tensor:
        """Batch-level weighted soft Dice."""
        p = torch.softmax(logits, dim=-1)  # (B, C)
        wr = w.unsqueeze(-1)  # (B, 1)
        inter = (wr * p * q).sum(dim=0)  # (C,)
        total = (wr * (p + q)).sum(dim=0)  # (C,)
        dice = (2.0 * inter + self.smooth) / (total + self.smooth)  # (C,)
        cw = self.class_weight
        return ((1.0 - dice) * cw).sum() / cw.sum()


@register_loss
class GHMCLoss(ClassificationLoss):
    """Gradient harmonizing CE (GHM-C, Li et al. 2019) for softmax outputs.

    Each row's gradient norm g = 0.5 * sum_c |p_c - q_c| lies in [0, 1]; rows are weighted by
    the inverse density of their g bin within the batch, so the many easy rows and the few
    outliers (often label noise) both count less than a plain CE gives them.
    """

    name = "ghm"
    bins = 10

    def combine(self, logits: Tensor, q: Tensor, q_raw: Tensor, w: Tensor) -> Tensor:
        """CE weighted by inverse gradient density."""
        ce = F.cross_entropy(logits, q, reduction="none")  # (B,)
        r = w * (q_raw @ self.class_weight)  # (B,)
        with torch.no_grad():
            g = 0.5 * (torch.softmax(logits, dim=-1) - q).abs().sum(dim=-1)  # (B,)
            which = (g * self.bins).long().clamp(0, self.bins - 1)  # (B,)
            density = torch.zeros(self.bins, device=logits.device).index_add_(0, which, r)
            tot = r.sum()
            filled = (density > 0).sum().clamp_min(1)
            in_bin = density[which]  # (B,)
            beta = torch.where(in_bin > 0, tot / in_bin.clamp_min(_EPS),
                               torch.zeros_like(in_bin)) / filled
        return (r * beta * ce).sum() / tot.clamp_min(_EPS)


class _MultiLabelLoss(ClassificationLoss):
    """Multi-label: (B, L) logits, one sigmoid each, targets (B, L) of 0/1 (or soft).

    Each row's loss is the mean of `cell_loss` over its labels, rows averaged with their sample
    weights; label smoothing and class weights (single-label notions) are not applied.
    """

    def combine(self, logits: Tensor, q: Tensor, q_raw: Tensor, w: Tensor) -> Tensor:
        """Weighted mean over rows of the mean over labels."""
        per_row = self.cell_loss(logits, q_raw).mean(dim=-1)  # (B,)
        return (w * per_row).sum() / w.sum().clamp_min(_EPS)

    def cell_loss(self, logits: Tensor, q: Tensor) -> Tensor:  # pragma: no cover - abstract
        """(B, L) logits and targets -> (B, L) losses."""
        raise NotImplementedError


@register_multilabel_loss
class BinaryCrossEntropy(_MultiLabelLoss):
    """Binary cross-entropy of each label's sigmoid (multi-label)."""

    name = "bce"

    def cell_loss(self, logits: Tensor, q: Tensor) -> Tensor:
        """Per-cell BCE."""
        return F.binary_cross_entropy_with_logits(logits, q, reduction="none")


@register_multilabel_loss
class BinaryFocalLoss(_MultiLabelLoss):
    """Binary focal loss per label (Lin et al. 2017): BCE * (1 - p_t)^gamma (multi-label)."""

    name = "bce_focal"

    def cell_loss(self, logits: Tensor, q: Tensor) -> Tensor:
        """Per-cell focal loss."""
        bce = F.binary_cross_entropy_with_logits(logits, q, reduction="none")
        p = torch.sigmoid(logits)
        p_t = q * p + (1 - q) * (1 - p)
        return bce * (1 - p_t).clamp_min(_EPS) ** self.focal_gamma


@register_multilabel_loss
class AsymmetricLoss(_MultiLabelLoss):
    """Asymmetric loss (Ridnik et al. 2021) for many labels with few positives each: negatives
    are focused harder (gamma_neg = 4, gamma_pos = 1) and their probabilities shifted down by
    `clip` (easy negatives give no loss)."""

    name = "asl"
    gamma_pos, gamma_neg, clip = 1.0, 4.0, 0.05

    def cell_loss(self, logits: Tensor, q: Tensor) -> Tensor:
        """Per-cell asymmetric loss."""
        p = torch.sigmoid(logits)
        p_neg = (p - self.clip).clamp_min(0)  # shifted probability of a negative
        pos = q * (1 - p) ** self.gamma_pos * torch.log(p.clamp_min(_EPS))
        neg = (1 - q) * p_neg ** self.gamma_neg * torch.log((1 - p_neg).clamp_min(_EPS))
        return -(pos + neg)
