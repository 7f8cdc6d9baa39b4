"""jieba pre-tokenization for WoBERT: vocabulary words whole, other words split like BERT.

The jieba step is a Python pre-tokenizer, which `tokenizers` cannot serialize, so the tokenizer
is saved as a plain BertTokenizer and re-attached on load (`JiebaBertTokenizer.from_pretrained`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenizers import NormalizedString, PreTokenizedString, Tokenizer, normalizers, pre_tokenizers
from transformers import BertTokenizer

from comp.core.utils import jieba_module


@functools.lru_cache(maxsize=1 << 16)
def jieba_spans(text: str) -> tuple[tuple[str, int, int], ...]:
    """jieba words of `text` with [start, end) character spans (precise mode, no HMM).

    No HMM, as WoBERT: new words guessed by the HMM would never be in a fixed vocabulary.
    Cached: building a WoBERT vocabulary and tokenizing the same corpus segment it twice.
    """
    jieba = jieba_module()
    words = jieba.lcut(text, HMM=False)  # faster than jieba.tokenize, same segmentation
    if "".join(words) != text:
        return tuple(jieba.tokenize(text, HMM=False))
    out, pos = [], 0
    for w in words:
        out.append((w, pos, pos + len(w)))
        pos += len(w)
    return tuple(out)


def _is_cjk(c: str) -> bool:
    cp = ord(c)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_punct(c: str) -> bool:
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def basic_spans(text: str) -> list[tuple[int, int]]:
    """BERT's basic split as spans: CJK characters and punctuation alone, other runs together."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif _is_cjk(c) or _is_punct(c):
            spans.append((i, i + 1))
            i += 1
        else:
            j = i + 1
            while j < n and not (text[j].isspace() or _is_cjk(text[j]) or _is_punct(text[j])):
                j += 1
            spans.append((i, j))
            i = j
    return spans


class JiebaPreTokenizer:
    """Split into jieba words; a word outside `vocab` falls back to BERT's character split."""

    def __init__(self, vocab: set[str] | dict[str, int]) -> None:
        self.vocab = set(vocab)

    def _split(self, i: int, normalized: NormalizedString) -> list[NormalizedString]:
        out = []
        for word, start, _end in jieba_spans(str(normalized)):
            if word in self.vocab:
                out.append(normalized[start:start + len(word)])
            else:
                out.extend(normalized[start + a:start + b] for a, b in basic_spans(word))
        return out

    def pre_tokenize(self, pretok: PreTokenizedString) -> None:
        """The `tokenizers` custom pre-tokenizer hook."""
        pretok.split(self._split)


class JiebaBertTokenizer(BertTokenizer):
    """A BertTokenizer whose pre-tokenizer is jieba (WoBERT).

    Saved as a plain `BertTokenizer` (char-level for anyone loading it without comp), restored
    with jieba by `JiebaBertTokenizer.from_pretrained(dir)`, which `load_backbone` calls for the
    wobert kind. Survives pickling and deepcopy (the jieba step is re-attached).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attach_jieba()

    def _attach_jieba(self) -> None:
        bt = self._tokenizer
        # characters stay together so jieba sees words; its fallback splits OOV words again
        bt.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=False, strip_accents=self.strip_accents,
            lowercase=self.do_lower_case)
        bt.pre_tokenizer = pre_tokenizers.PreTokenizer.custom(JiebaPreTokenizer(self.get_vocab()))

    @contextlib.contextmanager
    def _plain(self) -> Iterator[None]:
        """Temporarily a serializable character-level BERT tokenizer."""
        bt = self._tokenizer
        bt.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=self.strip_accents,
            lowercase=self.do_lower_case)
        bt.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        try:
            yield
        finally:
            self._attach_jieba()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        with self._plain():
            state["_tokenizer"] = Tokenizer.from_str(self._tokenizer.to_str())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attach_jieba()

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> tuple:
        """Save as a plain BertTokenizer (the jieba step is code, not data)."""
        with self._plain():
            files = super().save_pretrained(save_directory, *args, **kwargs)
        cfg_path = Path(save_directory) / "tokenizer_config.json"
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            cfg["tokenizer_class"] = "BertTokenizer"
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False)
                                + "\n", encoding="utf-8")
        return files


def save_tokenizer(tokenizer: Any, out: str | Path) -> None:
    """save_pretrained for any tokenizer this module hands out (jieba ones included)."""
    tokenizer.save_pretrained(str(out))
