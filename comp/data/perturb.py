"""Text transforms on one text: the label-preserving perturbations behind `comp check`'s INV
tests and `train.augment`, and the normalizers behind `data.normalize`.

A perturbation is `fn(text, rng) -> text` (every random choice from the rng, so a seed gives the
same text); a builder makes one from a list of texts (homophones of the texts' characters, a
synonym list). A normalizer is `fn(text) -> text`, idempotent, so applying it to texts that were
already normalized changes nothing.
"""

from __future__ import annotations

import dataclasses
import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from comp.core.utils import CompError
from comp.data.readers import PAIR_SEP

Perturb = Callable[[str, random.Random], str]

# ---------------------------------------------------------------------------------------------
# invariance tests: text -> perturbed text


@dataclasses.dataclass(frozen=True)
class Invariance:
    """One INV test: `perturb(text, rng)`, or `build(texts, options)` making it from the
    tested texts (None: skipped, e.g. no synonym list)."""

    name: str
    description: str
    perturb: Perturb | None = None
    build: Callable[[list[str], dict[str, Any]], Perturb | None] | None = None


INVARIANCES: dict[str, Invariance] = {}


def register_inv(name: str, description: str) -> Callable[[Perturb], Perturb]:
    """Register a perturbation `fn(text, rng) -> text` as the INV test `name`."""

    def deco(fn: Perturb) -> Perturb:
        INVARIANCES[name] = Invariance(name, description, perturb=fn)
        return fn

    return deco


def register_inv_builder(name: str, description: str):
    """Register `build(texts, options) -> perturb | None` as the INV test `name`."""

    def deco(fn):
        INVARIANCES[name] = Invariance(name, description, build=fn)
        return fn

    return deco


def is_cjk(c: str) -> bool:
    """True for a CJK unified ideograph (the basic block or extension A)."""
    return "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf"


@cache
def _opencc(config: str):
    try:
        import opencc
    except ImportError:
        raise CompError("the s2t/t2s tests need the opencc package (pip install opencc)") from None
    return opencc.OpenCC(config)


@register_inv("s2t", "simplified -> traditional characters (OpenCC s2t)")
def to_traditional(text: str, rng: random.Random) -> str:
    return _opencc("s2t").convert(text)


@register_inv("t2s", "traditional -> simplified characters (OpenCC t2s)")
def to_simplified(text: str, rng: random.Random) -> str:
    return _opencc("t2s").convert(text)


_FULL = {i: i + 0xFEE0 for i in range(0x21, 0x7F)} | {0x20: 0x3000}


@register_inv("fullwidth", "ASCII letters, digits, punctuation and spaces -> full-width forms")
def to_fullwidth(text: str, rng: random.Random) -> str:
    return text.translate(_FULL)


@register_inv("halfwidth", "full-width forms -> half-width (Unicode NFKC)")
def to_halfwidth(text: str, rng: random.Random) -> str:
    return unicodedata.normalize("NFKC", text)


_ZH_PUNCT = "，。！？：；（）"
_EN_PUNCT = ",.!?:;()"
_ZH2EN = dict(zip(_ZH_PUNCT, _EN_PUNCT))
_EN2ZH = dict(zip(_EN_PUNCT, _ZH_PUNCT))


@register_inv("punct_swap", "Chinese punctuation ，。！？：；（） <-> ASCII ,.!?:;() (both ways; "
              "a point or comma inside a number is kept)")
def swap_punctuation(text: str, rng: random.Random) -> str:
    out = []
    for i, c in enumerate(text):
        if c in _ZH2EN:
            c = _ZH2EN[c]
        elif c in _EN2ZH and not (c in ".," and 0 < i < len(text) - 1
                                  and text[i - 1].isdigit() and text[i + 1].isdigit()):
            c = _EN2ZH[c]
        out.append(c)
    return "".join(out)


@register_inv("punct_remove", "every punctuation character removed (a text of punctuation only "
              "is left as it is)")
def remove_punctuation(text: str, rng: random.Random) -> str:
    out = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    return out if out.strip() else text


@register_inv("whitespace", "one or two spaces inserted inside the text")
def add_whitespace(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 2)):
        k = rng.randint(1, len(text) - 1) if len(text) > 1 else len(text)
        text = text[:k] + " " + text[k:]
    return text


NEUTRAL_EMOJI = ("📦", "📌", "🔹", "📎", "🔸", "📝")


@register_inv("emoji", "one neutral emoji (📦📌🔹📎🔸📝) inserted at a random position")
def add_emoji(text: str, rng: random.Random) -> str:
    k = rng.randint(0, len(text))
    return text[:k] + rng.choice(NEUTRAL_EMOJI) + text[k:]


@register_inv("repeat", "one Chinese character said three times (好 -> 好好好)")
def repeat_char(text: str, rng: random.Random) -> str:
    where = [i for i, c in enumerate(text) if is_cjk(c)]
    if not where:
        return text
    i = rng.choice(where)
    return text[:i] + text[i] * 2 + text[i:]


_LATIN = re.compile(r"[A-Za-z]+")


@register_inv("case", "Latin letters upper-cased (lower-cased when there is no lower-case one)")
def flip_case(text: str, rng: random.Random) -> str:
    if not _LATIN.search(text):
        return text
    up = any("a" <= c <= "z" for c in text)
    return _LATIN.sub(lambda m: m.group().upper() if up else m.group().lower(), text)


_ZH_DIGITS = "零一二三四五六七八九"
_MEASURE = "个次天晚件本台位张间家年月周部只条瓶盒份遍星岁页层"
_LONE_DIGIT = re.compile(r"(?<![0-9.,:%/A-Za-z０-９])[0-9](?![0-9.,:%/A-Za-z０-９])")
_NUMERAL = {c: str(i) for i, c in enumerate(_ZH_DIGITS)} | {"两": "2"}
_ZH_NUMBER = re.compile(rf"(?<![零一二两三四五六七八九十百千万亿])[一二两三四五六七八九]"
                        rf"(?=[{_MEASURE}])")


@register_inv("digits", "a lone digit -> its Chinese numeral (2个 -> 两个, 5 -> 五); a text "
              "without one: a numeral before a measure word -> a digit (一次 -> 1次)")
def swap_digits(text: str, rng: random.Random) -> str:
    def zh(m: re.Match) -> str:
        d = int(m.group())
        after = text[m.end():m.end() + 1]
        return "两" if d == 2 and after and after in _MEASURE else _ZH_DIGITS[d]

    if _LONE_DIGIT.search(text):
        return _LONE_DIGIT.sub(zh, text)
    return _ZH_NUMBER.sub(lambda m: _NUMERAL[m.group()], text)


def pinyin_of(c: str) -> str:
    """A character's toneless pinyin (its most common reading), '' for a non-Chinese one."""
    from pypinyin import Style, lazy_pinyin

    if not is_cjk(c):
        return ""
    p = lazy_pinyin(c, style=Style.NORMAL, errors="ignore")
    return p[0] if p and p[0] != c else ""


def homophone_table(texts: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Each Chinese character of the texts -> the other characters of the texts with the same
    toneless pinyin (what a pinyin input method offers for the same keystrokes), sorted."""
    by_sound: dict[str, list[str]] = {}
    for c in sorted({c for t in texts for c in t if is_cjk(c)}):
        p = pinyin_of(c)
        if p:
            by_sound.setdefault(p, []).append(c)
    return {c: tuple(o for o in group if o != c)
            for group in by_sound.values() if len(group) > 1 for c in group}


def make_homophone(table: dict[str, tuple[str, ...]]) -> Perturb:
    """A perturbation replacing one character by a homophone from `table`."""

    def homophone(text: str, rng: random.Random) -> str:
        where = [i for i, c in enumerate(text) if c in table]
        if not where:
            return text
        i = rng.choice(where)
        return text[:i] + rng.choice(table[text[i]]) + text[i + 1:]

    return homophone


@register_inv_builder("homophone", "one Chinese character -> another with the same toneless "
                      "pinyin, from the characters of the tested texts (pypinyin)")
def _build_homophone(texts: list[str], options: dict[str, Any]) -> Perturb | None:
    table = homophone_table(texts)
    return make_homophone(table) if table else None


def make_synonyms(pairs: Sequence[tuple[str, str]]) -> Perturb:
    """A perturbation replacing one occurrence of a listed word by one of its synonyms (the
    pairs are read both ways; the longest word matches first)."""
    syn: dict[str, set[str]] = {}
    for a, b in pairs:
        if a != b:
            syn.setdefault(a, set()).add(b)
            syn.setdefault(b, set()).add(a)
    table = {w: tuple(sorted(s)) for w, s in syn.items()}
    pattern = re.compile("|".join(map(re.escape, sorted(table, key=lambda w: (-len(w), w)))))

    def synonym(text: str, rng: random.Random) -> str:
        found = list(pattern.finditer(text)) if table else []
        if not found:
            return text
        m = rng.choice(found)
        return text[:m.start()] + rng.choice(table[m.group()]) + text[m.end():]

    return synonym


@register_inv_builder("synonym", "one word -> a synonym from the --synonyms list (skipped "
                      "without one)")
def _build_synonym(texts: list[str], options: dict[str, Any]) -> Perturb | None:
    pairs = options.get("synonyms") or []
    return make_synonyms(pairs) if pairs else None


def read_synonyms(path: str | Path) -> list[tuple[str, str]]:
    """Synonym pairs from a tab-separated file: a word, then one or more synonyms; blank lines
    and lines starting with # are skipped."""
    p = Path(path)
    if not p.is_file():
        raise CompError(f"{p}: synonym list not found")
    pairs = []
    for n, line in enumerate(p.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = [w.strip() for w in line.split("\t") if w.strip()]
        if len(words) < 2:
            raise CompError(f"{p}: line {n}: expected a word and a synonym separated by a tab")
        pairs += [(words[0], w) for w in words[1:]]
    if not pairs:
        raise CompError(f"{p}: no synonym pairs")
    return pairs


def perturb_text(fn: Perturb, text: str, rng: random.Random, pair: bool = False) -> str:
    """fn on a text; a pair's sides (joined by comp.data PAIR_SEP) are perturbed each."""
    if not pair:
        return fn(text, rng)
    return PAIR_SEP.join(fn(side, rng) for side in text.split(PAIR_SEP))


def text_rng(seed: int, test: str, text: str) -> random.Random:
    """The random stream of one test on one text: the same whatever the other texts are."""
    return random.Random(f"{seed}\x1f{test}\x1f{text}")


# ---------------------------------------------------------------------------------------------
# normalizers (data.normalize): text -> the form every reader gives the members


_ZH2EN_ALL = _ZH2EN | {"、": ",", "～": "~", "【": "[", "】": "]", "“": '"', "”": '"',
                       "‘": "'", "’": "'", "《": "<", "》": ">"}
_PUNCT_RUN = re.compile(r"([!?.,~])\1+")
_REPEAT = re.compile(r"(.)\1{2,}")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff"
_CJK_SPACE = re.compile(rf"(?<=[{_CJK}])\s+|\s+(?=[{_CJK}])")


def _punct(text: str) -> str:
    out = "".join(_ZH2EN_ALL.get(c, c) for c in text)
    return _PUNCT_RUN.sub(r"\1", out)


def _space(text: str) -> str:
    return re.sub(r"\s+", " ", _CJK_SPACE.sub("", text)).strip()


NORMALIZERS: dict[str, tuple[Callable[[str], str], str]] = {
    "nfkc": (lambda t: unicodedata.normalize("NFKC", t),
             "Unicode NFKC: full-width letters, digits and punctuation -> half-width"),
    "t2s": (lambda t: _opencc("t2s").convert(t), "traditional -> simplified (OpenCC t2s)"),
    "punct": (_punct, "Chinese punctuation -> ASCII (，。！？、 -> ,.!?,); a run of one mark -> "
              "one"),
    "lower": (str.lower, "Latin letters lower-cased"),
    "space": (_space, "whitespace next to a Chinese character removed, other runs -> one space"),
    "repeat": (lambda t: _REPEAT.sub(r"\1\1", t), "a character said 3+ times -> twice"),
}


def normalizer(spec: str, key: str = "data.normalize") -> Callable[[str], str] | None:
    """The function `spec` names ("nfkc,t2s,punct": applied left to right; a pair's sides each);
    None for "". An unknown name is one line naming the recipe key."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in NORMALIZERS]
    if unknown:
        raise CompError(f"{key}: unknown normalizer '{unknown[0]}' (known: "
                        f"{', '.join(NORMALIZERS)})")
    if not names:
        return None
    steps = [NORMALIZERS[n][0] for n in names]

    def one(text: str) -> str:
        for f in steps:
            text = f(text)
        return text

    def apply(text: str) -> str:
        if PAIR_SEP in text:
            return PAIR_SEP.join(one(side) for side in text.split(PAIR_SEP))
        return one(text)

    return apply


def normalize_texts(texts: Sequence[str], spec: str) -> list[str]:
    """texts under data.normalize `spec` (unchanged for "")."""
    fn = normalizer(spec)
    return list(texts) if fn is None else [fn(t) for t in texts]


# ---------------------------------------------------------------------------------------------
# training-time augmentation (train.augment)


def augmenter(spec: str, texts: Sequence[str], key: str = "train.augment"
              ) -> list[tuple[str, Perturb]]:
    """The (name, perturbation) pairs `spec` names ("s2t,fullwidth,homophone"; "all" = every
    INV test that needs no list); builders are built from `texts` (the fold's training texts).
    An unknown name is one line naming the recipe key."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["all"]:
        names = [n for n in INVARIANCES if n != "synonym"]
    unknown = [n for n in names if n not in INVARIANCES]
    if unknown:
        raise CompError(f"{key}: unknown perturbation '{unknown[0]}' (known: "
                        f"{', '.join(INVARIANCES)}, or all)")
    out = []
    for n in names:
        inv = INVARIANCES[n]
        fn = inv.perturb or (inv.build(list(texts), {}) if inv.build else None)
        if fn is not None:
            out.append((n, fn))
    return out


def augment(texts: Sequence[str], spec: str, rate: float, seed: int, pair: bool = False
            ) -> tuple[list[int], list[str]]:
    """Perturbed copies of a seeded share `rate` of the texts (rate > 1: more than one copy
    each), each by the first of `spec`'s perturbations, in a seeded order, that changes it (a
    text none changes gets no copy). Returns (the index of each copy's original, the copies)."""
    fns = augmenter(spec, texts)
    if not fns or rate <= 0:
        return [], []
    rng = random.Random(seed)
    n = len(texts)
    picks = [i for _ in range(int(rate)) for i in range(n)]
    picks += rng.sample(range(n), round((rate - int(rate)) * n))
    src, out = [], []
    for i in sorted(picks):
        for name, fn in rng.sample(fns, len(fns)):
            t = perturb_text(fn, texts[i], text_rng(seed, name, f"{len(src)}\x1f{texts[i]}"),
                             pair)
            if t != texts[i]:
                src.append(i)
                out.append(t)
                break
    return src, out
