"""Character offsets: cleaning fast-tokenizer offsets, aligning slow tokenizers' tokens."""

from __future__ import annotations

import unicodedata

import torch
from torch import Tensor


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


def clean_offsets(texts: list[str], offsets: Tensor, special: Tensor, mask: Tensor) -> Tensor:
    """(-1, -1) for special, pad and empty tokens; spans trimmed of surrounding whitespace."""
    off = offsets.clone()
    dead = (special.bool()) | (~mask.bool()) | (off[..., 1] <= off[..., 0])  # (B, T)
    off[dead] = -1
    for b, text in enumerate(texts):
        for t in torch.nonzero(~dead[b]).flatten().tolist():
            s, e = off[b, t].tolist()
            while s < e and text[s].isspace():
                s += 1
            while e > s and text[e - 1].isspace():
                e -= 1
            off[b, t] = torch.tensor([s, e] if e > s else [-1, -1])
    return off
