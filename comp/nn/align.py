"""One character grid for every feature: truncation, windows, offsets -> char index, gathering.

Every tokenizer (five backbones, jieba words, char/bigram vectors) sees the same truncated text.
Fast tokenizers report each token's character span; spreading a token's state over the
characters it covers puts all features on positions 0..n_chars-1 of that text, so they can be
concatenated feature-wise and fed to one head. Everything here is pure and side-effect free.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from comp.core.utils import CompError

__all__ = [
    "truncate",
    "pair_budgets",
    "cut_head_tail",
    "window_starts",
    "windows",
    "char_to_token_index",
    "span_to_grid",
    "gather_to_grid",
    "char_mask",
]

# Upper bound on elements of the (rows, T, widest span) scatter built at once; keeps memory
# flat for large eval batches while staying vectorised.
_CHUNK_ELEMS = 1 << 22


def truncate(text: str, max_chars: int, head_frac: float = 0.5, mode: str = "head_tail") -> str:
    """Cut a text to at most `max_chars` characters.

    Args:
        text: the full text.
        max_chars: grid length; texts no longer than this come back unchanged.
        head_frac: share of `max_chars` kept from the start in "head_tail" mode.
        mode: "head" keeps the first `max_chars` characters; "head_tail" keeps the first
            round(max_chars * head_frac) and the last max_chars minus that; "tail" keeps the
            last `max_chars`. "window" behaves like "head": long texts are meant to be split
            with `windows` first, whose pieces already fit.

    Returns:
        The truncated text.
    """
    if max_chars <= 0:
        raise CompError(f"model.max_chars: must be > 0, got {max_chars}")
    if not 0.0 <= head_frac <= 1.0:
        raise CompError(f"model.head_frac: must be in [0, 1], got {head_frac}")
    if len(text) <= max_chars:
        return text
    if mode in ("head", "window"):
        return text[:max_chars]
    if mode == "tail":
        return text[len(text) - max_chars:]
    if mode == "head_tail":
        n_head = min(max_chars, max(0, round(max_chars * head_frac)))
        n_tail = max_chars - n_head
        return text[:n_head] + (text[len(text) - n_tail:] if n_tail else "")
    raise CompError(f"model.truncation: unknown mode '{mode}' (known: head, head_tail, tail, "
                    "window)")


def pair_budgets(n_a: int, n_b: int, budget: int) -> tuple[int, int]:
    """How many units (characters or tokens) each side of a pair keeps within `budget`.

    Each side gets half; what a shorter side leaves over goes to the other. Symmetric: the
    swapped pair keeps the same amounts, swapped.
    """
    budget = max(0, budget)
    if n_a + n_b <= budget:
        return n_a, n_b
    if n_a == n_b:  # the odd unit would make (a, b) and (b, a) keep different characters
        return budget // 2, budget // 2
    short = min(min(n_a, n_b), budget // 2)
    long = min(max(n_a, n_b), budget - short)
    return (short, long) if n_a < n_b else (long, short)


def cut_head_tail(text: str, spans: Sequence[tuple[int, int]], keep: int,
                  head_frac: float = 0.5) -> tuple[str, int, int]:
    """Keep `keep` of a text's tokens, the first round(keep * head_frac) and the last rest, by
    cutting the characters between them out.

    Args:
        text: one side of a pair.
        spans: its tokens' [start, end) character spans, in order (no special tokens).
        keep: how many tokens to keep.
        head_frac: share kept from the head.

    Returns:
        (cut text, head_end, gap): characters at or after head_end in the cut text sit `gap`
        characters later in `text`; (text, len(text), 0) when nothing is cut.
    """
    n = len(spans)
    if n <= keep:
        return text, len(text), 0
    n_head = min(keep, max(0, round(keep * head_frac)))
    n_tail = keep - n_head
    head_end = int(spans[n_head - 1][1]) if n_head else 0
    tail_start = int(spans[n - n_tail][0]) if n_tail else len(text)
    tail_start = max(tail_start, head_end)
    return text[:head_end] + text[tail_start:], head_end, tail_start - head_end


def window_starts(n: int, max_chars: int, stride: int) -> list[int]:
    """Start offsets of the sliding windows `windows` cuts from a text of length `n`.

    Windows start every `stride` characters; a last window is added, aligned to the end of the
    text, unless the regular ones already end there. A stride above `max_chars` is clamped so
    no character is skipped.

    Args:
        n: text length in characters.
        max_chars: window length.
        stride: step between window starts (> 0).

    Returns:
        Sorted, distinct start offsets; [0] when the text fits in one window.
    """
    if max_chars <= 0:
        raise CompError(f"model.max_chars: must be > 0, got {max_chars}")
    if stride <= 0:
        raise CompError(f"model.window_stride: must be > 0, got {stride}")
    if n <= max_chars:
        return [0]
    stride = min(stride, max_chars)
    last = n - max_chars
    starts = list(range(0, last, stride))
    starts.append(last)  # the final window ends exactly at the end of the text
    return starts


def windows(text: str, max_chars: int, stride: int) -> list[str]:
    """Split a text into overlapping windows that together cover every character.

    Args:
        text: the full text.
        max_chars: window length.
        stride: step between window starts; clamped to `max_chars`.

    Returns:
        The windows in order; `[text]` when the text fits in one window.
    """
    return [text[s:s + max_chars] for s in window_starts(len(text), max_chars, stride)]


def char_to_token_index(offsets: np.ndarray | Tensor, n_chars: int, text_lens: Sequence[int],
                        prefer: str = "first") -> Tensor:
    """Map every character position of the grid to the token that covers it.

    Args:
        offsets: (B, T, 2) integer [start, end) character span of each token, as returned by a
            fast tokenizer's `offset_mapping`. Special and pad tokens carry (-1, -1) or (0, 0);
            spans with start >= end or start < 0 are ignored, so either convention works, and
            so does left padding.
        n_chars: grid length N.
        text_lens: length in characters of each (truncated) text; positions at or beyond it
            map to -1 even if a token claims them.
        prefer: which token wins when several cover one character: "first" (the lowest token
            index) or "last". Byte-level BPE splits one emoji into several tokens with the same
            span; Metaspace tokenizers (XLNet, sentencepiece) give the prefix "▁" token the span
            of the first character, for which "last" picks the real character token.

    Returns:
        (B, N) int64 token index, -1 where no token covers the character (spaces dropped by the
        tokenizer, characters cut by the tokenizer's max_len, padding past the text end).
    """
    if prefer not in ("first", "last"):
        raise ValueError(f"prefer must be 'first' or 'last', got {prefer!r}")
    off = torch.as_tensor(np.asarray(offsets) if not isinstance(offsets, Tensor) else offsets)
    off = off.to(torch.long)
    if off.dim() != 3 or off.shape[-1] != 2:
        raise ValueError(f"offsets must have shape (B, T, 2), got {tuple(off.shape)}")
    b, t, _ = off.shape
    if len(text_lens) != b:
        raise ValueError(f"text_lens has {len(text_lens)} entries for a batch of {b}")
    device = off.device
    out = torch.full((b, n_chars), -1, dtype=torch.long, device=device)
    if b == 0 or t == 0 or n_chars == 0:
        return out
    start, end = off[..., 0], off[..., 1]  # (B, T)
    valid = (start >= 0) & (end > start)
    width = torch.where(valid, end - start, torch.zeros_like(start)).clamp(max=n_chars)  # (B, T)
    w = int(width.max())
    if w == 0:
        return out
    lens = torch.as_tensor(list(text_lens), dtype=torch.long, device=device).clamp(max=n_chars)
    tok = torch.arange(t, device=device)
    # every token scatters its preference key onto the chars it covers and each char keeps the
    # smallest key: O(B * T * widest span) instead of a (B, T, N) coverage mask
    key = tok if prefer == "first" else t - 1 - tok  # (T,)
    k = torch.arange(w, device=device)  # (W,)
    rows = max(1, _CHUNK_ELEMS // (t * w))
    for lo in range(0, b, rows):
        hi = min(b, lo + rows)
        pos = start[lo:hi, :, None] + k  # (b', T, W)
        ok = (k < width[lo:hi, :, None]) & (pos < lens[lo:hi, None, None])  # (b', T, W)
        pos = torch.where(ok, pos, torch.full_like(pos, n_chars))  # misses go to a spare column
        best = torch.full((hi - lo, n_chars + 1), t, dtype=torch.long, device=device)
        keys = key[None, :, None].expand_as(pos)  # (b', T, W)
        best.scatter_reduce_(1, pos.reshape(hi - lo, -1), keys.reshape(hi - lo, -1), "amin")
        best = best[:, :n_chars]  # (b', N)
        found = best < t
        idx = best if prefer == "first" else t - 1 - best
        out[lo:hi] = torch.where(found, idx, torch.full_like(idx, -1))
    return out


def span_to_grid(spans: Sequence[Sequence[tuple[int, int]]], n_chars: int,
                 text_lens: Sequence[int] | None = None) -> Tensor:
    """Map every character to the word (or any span) containing it, e.g. jieba words.

    Args:
        spans: per text, a list of [start, end) character spans in word order, such as
            `[(s, e) for _, s, e in jieba.tokenize(text)]`.
        n_chars: grid length N.
        text_lens: text lengths; defaults to the end of each text's last span.

    Returns:
        (B, N) int64 index into each text's span list, -1 where no span covers the character.
    """
    b = len(spans)
    w = max((len(s) for s in spans), default=0)
    off = np.full((b, max(w, 1), 2), -1, dtype=np.int64)
    for i, row in enumerate(spans):
        if row:
            off[i, :len(row)] = np.asarray(row, dtype=np.int64).reshape(-1, 2)
    if text_lens is None:
        text_lens = [max((e for _, e in row), default=0) for row in spans]
    return char_to_token_index(off, n_chars, text_lens)


def gather_to_grid(states: Tensor, index: Tensor) -> Tensor:
    """Spread token states over the character grid.

    Args:
        states: (B, T, H) token states.
        index: (B, N) token index per character from `char_to_token_index`, -1 for none.

    Returns:
        (B, N, H) states on the grid, zeros where index == -1. Gradients flow to `states`.
    """
    if states.dim() != 3 or index.dim() != 2 or states.shape[0] != index.shape[0]:
        raise ValueError(f"states (B, T, H) and index (B, N) disagree: "
                         f"{tuple(states.shape)} vs {tuple(index.shape)}")
    index = index.to(states.device)
    b, t, h = states.shape
    found = index >= 0  # (B, N)
    if t == 0:
        return states.new_zeros(b, index.shape[1], h)
    # one index_select over the flattened batch: about twice as fast as gather, with backward
    flat = (index.clamp(min=0) + torch.arange(b, device=index.device)[:, None] * t).reshape(-1)
    grid = states.reshape(b * t, h).index_select(0, flat).reshape(b, -1, h)  # (B, N, H)
    # where, not multiply: a NaN/inf in an unused token state must not leak into empty cells
    return torch.where(found.unsqueeze(-1), grid, torch.zeros((), dtype=grid.dtype,
                                                               device=grid.device))


def char_mask(text_lens: Sequence[int], n_chars: int) -> Tensor:
    """True on the character positions that hold text.

    Args:
        text_lens: length of each (truncated) text.
        n_chars: grid length N.

    Returns:
        (B, N) bool mask, True where position < text length.
    """
    lens = torch.as_tensor(list(text_lens), dtype=torch.long).reshape(-1)
    return torch.arange(n_chars)[None, :] < lens[:, None]  # (B, N)
