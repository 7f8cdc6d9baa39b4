"""Heads over the character grid (biLSTM, TextCNN, both), masked pooling, and the classifier.

A head reads the concatenated grid features (B, N, D) with a (B, N) mask and returns one pooled
vector per text (B, out_dim). The Classifier then meets that vector with every backbone's CLS
vector (the CLS skip) right before the final linear layer, whatever the head is.

    head = create_head("bilstm", in_dim=D, hidden=128)       # registry, timm style
    pooled = head(x, mask)                                    # (B, head.out_dim)
    clf = Classifier(head.out_dim, cls_dims=[H1, H2], n_classes=C)
    logits = clf(pooled, [cls1, cls2])                        # (B, C)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comp.core.utils import CompError

__all__ = [
    "HeadConfig",
    "Head",
    "Classifier",
    "register_head",
    "create_head",
    "head_names",
    "pool_names",
    "create_pool",
    "masked_max",
    "masked_mean",
    "reverse_index",
]

_HEADS: dict[str, Callable[[int, Any], Head]] = {}
_POOLS = ("maxmean", "attention")
_DROPOUTS = ("spatial", "element")


@dataclass(frozen=True)
class HeadConfig:
    """Head hyper-parameters; a ModelConfig has the same fields and works in its place."""

    hidden: int = 128  # LSTM units per direction
    channels: int = 128  # filters per CNN kernel size
    kernel_sizes: tuple[int, ...] = (2, 3, 4)
    pooling: str = "maxmean"  # maxmean | attention
    dropout: float = 0.2
    input_dropout: str = "spatial"  # spatial (whole channels per text) | element


def register_head(fn: Callable[[int, Any], Head]) -> Callable[[int, Any], Head]:
    """Register a head factory `fn(in_dim, cfg) -> Head` under its function name."""
    _HEADS[fn.__name__] = fn
    return fn


def head_names() -> list[str]:
    """Names of every registered head, sorted."""
    return sorted(_HEADS)


def pool_names() -> list[str]:
    """Names of the pooling strategies."""
    return list(_POOLS)


def create_head(name: str, in_dim: int, hidden: int = 128, channels: int = 128,
                kernel_sizes: Sequence[int] = (2, 3, 4), pooling: str = "maxmean",
                dropout: float = 0.2, input_dropout: str = "spatial") -> Head:
    """Build a registered head.

    Args:
        name: a name from `head_names()`.
        in_dim: feature width D of the grid.
        hidden: LSTM units per direction.
        channels: CNN filters per kernel size.
        kernel_sizes: CNN kernel widths in characters.
        pooling: "maxmean" (masked max and mean, concatenated) or "attention".
        dropout: dropout rate on the head's input features.
        input_dropout: "spatial" drops whole feature channels per text, "element" single
            values.

    Returns:
        The head; `head.out_dim` is the width of its pooled output.
    """
    if name not in _HEADS:
        raise CompError(f"recipe key 'model.head': unknown head '{name}' "
                        f"(known: {', '.join(head_names())})")
    if in_dim <= 0:
        raise ValueError(f"head input width must be > 0, got {in_dim}")
    cfg = HeadConfig(hidden=hidden, channels=channels, kernel_sizes=tuple(kernel_sizes),
                     pooling=pooling, dropout=dropout, input_dropout=input_dropout)
    return _HEADS[name](in_dim, cfg)


# ---------------------------------------------------------------------------------------------
# masked pooling


def masked_max(x: Tensor, mask: Tensor, channels_first: bool = False,
               nonnegative: bool = False) -> Tensor:
    """Max over positions where mask is True; zeros for rows without any.

    Args:
        x: (B, N, D) features, or (B, D, N) with `channels_first` (a Conv1d's layout, pooled
            without a transposed copy).
        mask: (B, N) bool.
        channels_first: x is (B, D, N).
        nonnegative: the caller guarantees x >= 0 (e.g. after ReLU); padding is then zeroed
            by one multiply, which can never exceed a real value and leaves empty rows at 0.

    Returns:
        (B, D).
    """
    m = mask.unsqueeze(1 if channels_first else -1)  # (B, 1, N) or (B, N, 1)
    dim = -1 if channels_first else 1
    if nonnegative:
        return (x * m.to(x.dtype)).amax(dim=dim)
    # a finite floor instead of -inf keeps fp16 and empty rows free of inf/NaN
    filled = x.masked_fill(~m, torch.finfo(x.dtype).min)
    out = filled.max(dim=dim).values  # (B, D)
    return torch.where(mask.any(dim=1, keepdim=True), out, torch.zeros_like(out))


def masked_mean(x: Tensor, mask: Tensor, channels_first: bool = False) -> Tensor:
    """Mean over positions where mask is True; zeros for rows without any.

    Args:
        x: (B, N, D) features, or (B, D, N) with `channels_first`.
        mask: (B, N) bool.
        channels_first: x is (B, D, N).

    Returns:
        (B, D).
    """
    if channels_first:
        total = (x * mask.unsqueeze(1).to(x.dtype)).sum(dim=-1)  # (B, D)
    else:
        total = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)  # (B, D)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)  # (B, 1)
    return total / count


class MaxMeanPool(nn.Module):
    """Masked max and masked mean, concatenated: (B, N, D) -> (B, 2D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = 2 * dim

    def forward(self, x: Tensor, mask: Tensor, channels_first: bool = False,
                nonnegative: bool = False) -> Tensor:
        """Pool the unmasked positions of x, (B, N, D) or (B, D, N) with `channels_first`.

        `nonnegative` (x >= 0, as after ReLU) masks once by a multiply shared by both poolings.
        """
        if channels_first and nonnegative:
            xm = x * mask.unsqueeze(1).to(x.dtype)  # (B, D, N), padding zero
            count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)  # (B, 1)
            return torch.cat([xm.amax(dim=-1), xm.sum(dim=-1) / count], dim=-1)  # (B, 2D)
        return torch.cat([masked_max(x, mask, channels_first, nonnegative),
                          masked_mean(x, mask, channels_first)], dim=-1)


class AttentionPool(nn.Module):
    """Masked additive attention: softmax(v . tanh(W x)) weighted sum, (B, N, D) -> (B, D)."""

    def __init__(self, dim: int, attn_dim: int | None = None) -> None:
        super().__init__()
        attn_dim = attn_dim or min(dim, 128)
        self.proj = nn.Linear(dim, attn_dim)
        self.score = nn.Linear(attn_dim, 1, bias=False)
        self.out_dim = dim

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Pool the unmasked positions; rows without any give zeros."""
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        scores = self.score(torch.tanh(self.proj(x))).squeeze(-1)  # (B, N)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        # an all-masked row would otherwise spread uniform weight over padding
        weights = torch.softmax(scores, dim=-1) * mask.to(scores.dtype)  # (B, N)
        return torch.bmm(weights.unsqueeze(1), x).squeeze(1)  # (B, D)


def create_pool(name: str, dim: int) -> nn.Module:
    """Build a pooling module over features of width `dim`; `.out_dim` gives its output width."""
    if name == "maxmean":
        return MaxMeanPool(dim)
    if name == "attention":
        return AttentionPool(dim)
    raise CompError(f"recipe key 'model.pooling': unknown pooling '{name}' "
                    f"(known: {', '.join(_POOLS)})")


# ---------------------------------------------------------------------------------------------
# heads


class InputDropout(nn.Module):
    """Dropout on the head's (B, N, D) input: whole feature channels per text ("spatial", the
    SpatialDropout1D of Kaggle text models: one (B, 1, D) mask, cheap on wide grids) or single
    elements ("element", nn.Dropout)."""

    def __init__(self, p: float, kind: str = "spatial") -> None:
        super().__init__()
        if kind not in _DROPOUTS:
            raise CompError(f"recipe key 'model.input_dropout': unknown kind '{kind}' "
                            f"(known: {', '.join(_DROPOUTS)})")
        self.p = float(p)
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        """Scale kept channels/elements by 1/(1-p) in training; identity in eval."""
        if not self.training or self.p == 0.0:
            return x
        if self.kind == "element":
            return F.dropout(x, self.p, True)
        keep = F.dropout(x.new_ones(x.shape[0], 1, x.shape[2]), self.p, True)  # (B, 1, D)
        return x * keep


class Head(nn.Module):
    """Base class: (B, N, D) grid features + (B, N) mask -> (B, out_dim) pooled vector.

    `forward` zeroes the padding and applies input dropout once, then `encode` does the rest;
    a composite head prepares its input once and hands it to every part's `encode`.
    """

    out_dim: int
    drop: nn.Module

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Encode and pool."""
        b, n, _ = x.shape
        if n == 0:
            return x.new_zeros(b, self.out_dim)
        return self.encode(self.drop(x.masked_fill(~mask.unsqueeze(-1), 0.0)), mask)

    def encode(self, x: Tensor, mask: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Pooled vector of an input whose padding is zero: (B, N, D) -> (B, out_dim)."""
        raise NotImplementedError


class BiLSTMHead(Head):
    """A bidirectional LSTM over the grid, then masked pooling of its outputs.

    The forward direction runs on the padded rows as they are (padding comes after the text and
    cannot reach it), and the backward direction runs on each row's text reversed in place by
    its length. Outputs equal a packed-sequence biLSTM on every text position, with a backward
    pass several times faster on CPU than packing.
    """

    def __init__(self, in_dim: int, hidden: int, pooling: str, dropout: float,
                 input_dropout: str = "spatial") -> None:
        super().__init__()
        self.drop = InputDropout(dropout, input_dropout)
        self.fwd = nn.LSTM(in_dim, hidden, batch_first=True)
        self.bwd = nn.LSTM(in_dim, hidden, batch_first=True)
        self.pool = create_pool(pooling, 2 * hidden)
        self.out_dim = self.pool.out_dim

    def encode(self, x: Tensor, mask: Tensor) -> Tensor:
        """Run both directions on each row's text only, then pool."""
        b, n, d = x.shape
        idx = reverse_index(mask)  # (B, N)
        fw, _ = self.fwd(x)  # (B, N, hidden)
        bw, _ = self.bwd(x.gather(1, idx.unsqueeze(-1).expand(b, n, d)))
        bw = bw.gather(1, idx.unsqueeze(-1).expand_as(bw))  # back to text order
        return self.pool(torch.cat([fw, bw], dim=-1), mask)  # (B, N, 2*hidden) -> pooled


def reverse_index(mask: Tensor) -> Tensor:
    """Gather index that reverses each row's text and keeps the padding after it in place.

    Args:
        mask: (B, N) bool; a row's text runs up to its last True position.

    Returns:
        (B, N) long; `x.gather(1, idx)` reverses each row's text, and applying it twice is the
        identity.
    """
    b, n = mask.shape
    pos = torch.arange(n, device=mask.device).expand(b, n)  # (B, N)
    lengths = (mask.long() * (pos + 1)).max(dim=1, keepdim=True).values  # (B, 1)
    return torch.where(pos < lengths, lengths - 1 - pos, pos)


class CNNHead(Head):
    """TextCNN: one Conv1d per kernel size, ReLU, masked pooling over positions."""

    def __init__(self, in_dim: int, channels: int, kernel_sizes: Sequence[int], pooling: str,
                 dropout: float, input_dropout: str = "spatial") -> None:
        super().__init__()
        if not kernel_sizes or min(kernel_sizes) < 1:
            raise CompError(f"recipe key 'model.kernel_sizes': need sizes >= 1, "
                            f"got {list(kernel_sizes)}")
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.drop = InputDropout(dropout, input_dropout)
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, channels, k) for k in self.kernel_sizes)
        self.pool = create_pool(pooling, channels * len(self.kernel_sizes))
        self.out_dim = self.pool.out_dim

    def encode(self, x: Tensor, mask: Tensor) -> Tensor:
        """Convolve windows starting at every position, pool those starting inside the text."""
        b, n, _ = x.shape
        # zeroed padding makes a window that runs past the text end see the same zeros whatever
        # the grid held there; right padding gives every start position an output, so texts
        # shorter than a kernel still produce features. One pad serves every kernel size.
        x = F.pad(x.transpose(1, 2), (0, max(self.kernel_sizes) - 1))  # (B, D, N + kmax - 1)
        # in place: a convolution's backward needs its input, not its output
        maps = [torch.relu_(conv(x[:, :, :n + k - 1]))  # (B, channels, N)
                for conv, k in zip(self.convs, self.kernel_sizes)]
        if isinstance(self.pool, MaxMeanPool):
            # pooled in the conv layout, map by map: no transposed copy, no concatenated map;
            # ReLU outputs are >= 0, so one multiply by the mask serves max and mean
            parts = [self.pool(h, mask, channels_first=True, nonnegative=True).view(b, 2, -1)
                     for h in maps]  # (B, 2, channels) each: [max | mean]
            return torch.cat(parts, dim=2).flatten(1)  # (B, 2 * channels * n_kernels)
        feats = torch.cat(maps, dim=1).transpose(1, 2)  # (B, N, channels * n_kernels)
        return self.pool(feats, mask)


class BiLSTMCNNHead(Head):
    """The biLSTM and TextCNN heads side by side on the same grid, outputs concatenated."""

    def __init__(self, in_dim: int, cfg: Any) -> None:
        super().__init__()
        self.drop = InputDropout(cfg.dropout, cfg.input_dropout)  # one mask for both parts
        self.lstm = BiLSTMHead(in_dim, cfg.hidden, cfg.pooling, 0.0, cfg.input_dropout)
        self.cnn = CNNHead(in_dim, cfg.channels, cfg.kernel_sizes, cfg.pooling, 0.0,
                           cfg.input_dropout)
        self.out_dim = self.lstm.out_dim + self.cnn.out_dim

    def encode(self, x: Tensor, mask: Tensor) -> Tensor:
        """Concatenate both pooled vectors."""
        return torch.cat([self.lstm.encode(x, mask), self.cnn.encode(x, mask)], dim=-1)


@register_head
def bilstm(in_dim: int, cfg: Any) -> Head:
    """Bidirectional LSTM (cfg.hidden units per direction) + pooling."""
    return BiLSTMHead(in_dim, cfg.hidden, cfg.pooling, cfg.dropout, cfg.input_dropout)


@register_head
def cnn(in_dim: int, cfg: Any) -> Head:
    """Multi-kernel TextCNN (cfg.channels per size in cfg.kernel_sizes) + pooling."""
    return CNNHead(in_dim, cfg.channels, cfg.kernel_sizes, cfg.pooling, cfg.dropout,
                   cfg.input_dropout)


@register_head
def bilstm_cnn(in_dim: int, cfg: Any) -> Head:
    """biLSTM and TextCNN in parallel, pooled vectors concatenated."""
    return BiLSTMCNNHead(in_dim, cfg)


# ---------------------------------------------------------------------------------------------
# classifier


class Classifier(nn.Module):
    """The final layer: pooled head output, optionally joined by every backbone's CLS vector.

    With `msd` > 1, training averages the logits of `msd` independent dropout masks
    (multi-sample dropout); evaluation runs one pass, since dropout is then the identity.
    """

    def __init__(self, pooled_dim: int, cls_dims: Sequence[int], n_classes: int,
                 cls_skip: bool = True, dropout: float = 0.2, msd: int = 0) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"need at least 2 classes, got {n_classes}")
        if msd < 0:
            raise CompError(f"recipe key 'model.msd': must be >= 0, got {msd}")
        self.cls_dims = [int(d) for d in cls_dims]
        self.cls_skip = cls_skip
        self.msd = msd
        self.in_dim = pooled_dim + sum(self.cls_dims) if cls_skip else pooled_dim
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.in_dim, n_classes)

    def features(self, pooled: Tensor, cls: Sequence[Tensor]) -> Tensor:
        """The (B, in_dim) vector the final layer sees."""
        if not self.cls_skip:
            return pooled
        if len(cls) != len(self.cls_dims):
            raise ValueError(f"expected {len(self.cls_dims)} CLS vectors, got {len(cls)}")
        return torch.cat([pooled, *cls], dim=-1) if cls else pooled  # (B, in_dim)

    def forward(self, pooled: Tensor, cls: Sequence[Tensor]) -> Tensor:
        """(B, P) pooled + [(B, Hi)] CLS vectors -> (B, C) logits."""
        h = self.features(pooled, cls)
        if self.training and self.msd > 1:
            return torch.stack([self.fc(self.drop(h)) for _ in range(self.msd)]).mean(dim=0)
        return self.fc(self.drop(h))
