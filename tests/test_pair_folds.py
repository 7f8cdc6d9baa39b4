"""Pair folds: pairs that share a sentence share a fold, so a member cannot recognise a
validation pair's sentence from training; a group too big for a fold falls back to one
sentence of each pair, and says so."""

import random

import numpy as np

from comp.data.competition import PAIR_SEP
from comp.data.folds import make_folds, normalize_text


def _pairs(n_sentences: int, n_pairs: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = random.Random(seed)
    sents = [f"句子{i}号" for i in range(n_sentences)]
    texts, labels = [], []
    for _ in range(n_pairs):
        a, b = rng.sample(sents, 2)
        texts.append(a + PAIR_SEP + b)
        labels.append(rng.randrange(2))
    return texts, np.array(labels)


def _folds_of_sentences(texts: list[str], folds: np.ndarray) -> dict[str, set[int]]:
    seen: dict[str, set[int]] = {}
    for t, f in zip(texts, folds.tolist()):
        for side in t.split(PAIR_SEP):
            seen.setdefault(normalize_text(side), set()).add(f)
    return seen


def test_no_sentence_sits_in_two_folds(capsys):
    # 900 sentences in 150 pairs: many small components, each well under a fold's share
    texts, labels = _pairs(900, 150)
    texts.append(texts[0].split(PAIR_SEP)[0].upper() + PAIR_SEP + "另一个句子")  # same, normalized
    labels = np.append(labels, 0)
    folds = make_folds(labels, texts, 5, 42)
    assert all(len(f) == 1 for f in _folds_of_sentences(texts, folds).values())
    assert "groups of pairs joined by the sentences they share" in capsys.readouterr().err
    assert len(set(folds.tolist())) == 5


def test_a_component_larger_than_a_fold_falls_back_to_the_first_sentence(capsys):
    # 30 sentences in 300 pairs: one connected component holds every row
    texts, labels = _pairs(30, 300)
    folds = make_folds(labels, texts, 5, 42)
    err = capsys.readouterr().err
    assert "grouped by one sentence of each pair instead" in err
    firsts: dict[str, set[int]] = {}
    for t, f in zip(texts, folds.tolist()):
        key = min(normalize_text(side) for side in t.split(PAIR_SEP))
        firsts.setdefault(key, set()).add(f)
    assert all(len(f) == 1 for f in firsts.values())
    assert len(set(folds.tolist())) == 5


def test_single_texts_are_grouped_as_before():
    texts = [f"文本{i % 40}" for i in range(200)]
    labels = np.array([i % 2 for i in range(200)])
    folds = make_folds(labels, texts, 5, 0)
    for key in set(texts):
        assert len({f for t, f in zip(texts, folds) if t == key}) == 1
