"""Character offsets: cleaning fast-tokenizer offsets, aligning slow tokenizers' tokens."""

from __future__ import annotations

import unicodedata

import numpy as np
import torch
from torch import Tensor

from comp.core.utils import code_points


def _norm(s: str) -> str:
    """Fold case, width and accents so token strings compare to raw text."""
    s = unicodedata.normalize("NFKD", s).lower()
    return "".join(c for c in s if not unicodedata.combining(c) and not c.isspace())


def align_tokens(text: str, tokens: list[str], unk: str | None = None) -> list[tuple[int, int]]:
    """Recover [start, end) character spans by aligning token strings to the text.

    For tokenizers that give no offsets (slow ones). WordPiece "##" and sentencepiece "▁"
    markers are dropped; comparison ignores case, width and accents. An unknown token spans the
    text between its neighbours; a token that cannot be placed gets (-1, -1).

    Args:
        text: the original text.
        tokens: its tokens in order, without special tokens.
        unk: the unknown-token string.

    Returns:
        One span per token.
    """
    spans: list[tuple[int, int]] = []
    pending: list[int] = []  # unknown tokens waiting for the next placed token
    cur, n = 0, len(text)

    def settle(upto: int) -> None:
        # share the gap between pending unknown tokens, one character each, the last takes rest
        pos = cur
        for k, idx in enumerate(pending):
            while pos < upto and text[pos].isspace():
                pos += 1
            end = upto if k == len(pending) - 1 else min(pos + 1, upto)
            spans[idx] = (pos, end) if end > pos else (-1, -1)
            pos = end
        pending.clear()

    for tok in tokens:
        piece = tok[2:] if tok.startswith("##") else tok.replace("▁", "")
        target = _norm(piece)
        spans.append((-1, -1))
        if tok == unk or not target:
            if tok == unk:
                pending.append(len(spans) - 1)
            continue
        found = None
        for start in range(cur, n):
            if text[start].isspace():
                continue
            acc, end = "", start
            while end < n and len(acc) < len(target) and target.startswith(acc):
                acc += _norm(text[end])
                end += 1
            if acc == target:
                found = (start, end)
                break
        if found is None:
            continue
        settle(found[0])
        spans[-1] = found
        cur = found[1]
    settle(n)
    return spans


_SPACE_CPS = np.array([c for c in range(0x3000 + 1) if chr(c).isspace()], dtype=np.int64)


def clean_offsets(texts: list[str], offsets: Tensor, special: Tensor, mask: Tensor) -> Tensor:
    """(-1, -1) for special, pad and empty tokens; spans trimmed of surrounding whitespace.

    Whitespace is looked up for the whole batch at once; only the few spans that start or end
    on a space are trimmed one by one.
    """
    off = offsets.clone()
    dead = (special.bool()) | (~mask.bool()) | (off[..., 1] <= off[..., 0])  # (B, T)
    off[dead] = -1
    cps, lens = code_points(texts)
    space = np.isin(cps, _SPACE_CPS)  # (sum of lengths,) every whitespace code point <= U+3000
    starts = np.cumsum(lens) - lens  # (B,)
    o = off.numpy()
    live = ~dead.numpy()
    bs, ts = np.nonzero(live)
    if len(bs) == 0:
        return off
    s, e = o[bs, ts, 0], o[bs, ts, 1]
    ok = (s >= 0) & (e <= lens[bs])  # spans past a text's end are left for the slow path
    first = np.where(ok, starts[bs] + np.clip(s, 0, None), 0)
    last = np.where(ok, starts[bs] + np.clip(e, 1, None) - 1, 0)
    edge = ~ok
    if len(space):  # all texts empty: every live span is past its text's end already
        edge |= space[first] | space[last]
    for b, t in zip(bs[edge].tolist(), ts[edge].tolist()):
        text = texts[b]
        s0, e0 = off[b, t].tolist()
        s0, e0 = max(s0, 0), min(e0, len(text))
        while s0 < e0 and text[s0].isspace():
            s0 += 1
        while e0 > s0 and text[e0 - 1].isspace():
            e0 -= 1
        off[b, t] = torch.tensor([s0, e0] if e0 > s0 else [-1, -1])
    return off
