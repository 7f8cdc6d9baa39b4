"""gensim vectors: corpus tokens, training/loading, ids on the character grid."""

import jieba
import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from comp.core.utils import CompError
from comp.nn.vectors import KINDS, GridVectors, corpus_tokens, load_vectors, train_vectors

TEXTS = ["我们喜欢北京的天气", "质量不错物流很快", "今天天气非常好"] * 10


def make_kv(keys: list[str], dim: int = 4) -> KeyedVectors:
    kv = KeyedVectors(dim)
    vecs = np.arange(1, len(keys) * dim + 1, dtype=np.float32).reshape(len(keys), dim)
    kv.add_vectors(keys, vecs)
    return kv


def test_corpus_tokens_per_kind():
    text = "我们喜欢 北京"
    assert corpus_tokens([text], "char") == [["我", "们", "喜", "欢", "北", "京"]]
    assert corpus_tokens([text], "word") == [[w for w in jieba.lcut(text) if w.strip()]]
    assert corpus_tokens([text], "bigram") == [["我们", "们喜", "喜欢", "北京"]]
    with pytest.raises(CompError, match="vector kind 'trigram'"):
        corpus_tokens([text], "trigram")


@pytest.mark.parametrize("kind", KINDS)
def test_train_save_load_and_skip(tmp_path, kind):
    out = tmp_path / f"w2v-{kind}.kv"
    p = train_vectors(TEXTS, kind, out, dim=8, epochs=1, min_count=1)
    assert p == out and out.exists()
    assert [f.name for f in tmp_path.iterdir()] == [out.name]  # one file, no leftovers
    kv = load_vectors(out)
    assert kv.vector_size == 8 and len(kv) > 3
    stamp = out.stat().st_mtime_ns
    train_vectors(TEXTS, kind, out, dim=8, epochs=1, min_count=1)
    assert out.stat().st_mtime_ns == stamp
    grid = GridVectors(kv, kind)
    ids = grid.ids(TEXTS[:3], 12)
    assert ids.shape == (3, 12) and ids.dtype == torch.long
    assert (ids[:, :6] > 0).all()  # all known with min_count=1 (the 7th char ends a text)
    assert grid(ids).shape == (3, 12, 8)


def test_word_ids_spread_a_word_over_its_characters():
    text = "我们喜欢北京"
    words = jieba.lcut(text)
    assert words == ["我们", "喜欢", "北京"]
    kv = make_kv(["我们", "北京"])
    grid = GridVectors(kv, "word")
    ids = grid.ids([text, "北京"], 8)
    we, bj = grid.key_to_id["我们"], grid.key_to_id["北京"]
    assert ids[0].tolist() == [we, we, 0, 0, bj, bj, 0, 0]  # 喜欢 unknown, then past the end
    assert ids[1].tolist() == [bj, bj, 0, 0, 0, 0, 0, 0]
    vecs = grid(ids)
    assert torch.equal(vecs[0, 0], vecs[0, 1])
    assert torch.equal(vecs[0, 4], torch.tensor(kv["北京"].copy()))
    assert torch.equal(vecs[0, 2], torch.zeros(4))


def test_bigram_ids_start_at_each_character():
    kv = make_kv(["我们", "们喜", "北京"])
    grid = GridVectors(kv, "bigram")
    ids = grid.ids(["我们喜北京", "我们"], 6)
    k = grid.key_to_id
    assert ids[0].tolist() == [k["我们"], k["们喜"], 0, k["北京"], 0, 0]  # 喜北 unknown
    assert ids[1].tolist() == [k["我们"], 0, 0, 0, 0, 0]  # a lone last character has none


def test_char_ids_truncate_to_the_grid():
    kv = make_kv(["好", "差"])
    grid = GridVectors(kv, "char")
    ids = grid.ids(["好差好差", "坏"], 3)
    k = grid.key_to_id
    assert ids.tolist() == [[k["好"], k["差"], k["好"]], [0, 0, 0]]


def test_char_ids_match_a_lookup_per_character():
    """The batched code-point table gives exactly the per-character dict lookups: unknown and
    non-BMP characters, keys longer than one character, empty texts, truncation."""
    kv = make_kv(["好", "差", "a", "😀", "[UNK]", "很"])
    grid = GridVectors(kv, "char")
    texts = ["好a差😀很", "", "zz好", "ü很很很很很很很很", "😀😀"]
    want = [[grid.key_to_id.get(c, 0) for c in t[:6]] + [0] * (6 - len(t[:6])) for t in texts]
    assert grid.ids(texts, 6).tolist() == want
    assert grid.ids([], 6).shape == (0, 6)


def test_padding_row_is_zero_and_trainability():
    kv = make_kv(["好", "差"])
    frozen = GridVectors(kv, "char")
    assert frozen.dim == 4
    assert torch.equal(frozen.embedding.weight[0], torch.zeros(4))
    assert not frozen.embedding.weight.requires_grad
    tuned = GridVectors(kv, "char", trainable=True)
    out = tuned(tuned.ids(["好坏"], 3)).sum()
    out.backward()
    grad = tuned.embedding.weight.grad
    assert grad[0].abs().sum() == 0 and grad[tuned.key_to_id["好"]].abs().sum() > 0


def test_bad_files_are_comp_errors(tmp_path):
    with pytest.raises(CompError, match="vectors not found"):
        load_vectors(tmp_path / "missing.kv")
    bad = tmp_path / "bad.kv"
    bad.write_text("not a pickle")
    with pytest.raises(CompError, match="not a gensim KeyedVectors"):
        load_vectors(bad)


@pytest.mark.vector_passes
def test_a_small_corpus_gets_the_passes_that_train_its_vectors(tmp_path, small_comp):
    """Five word2vec passes over a few hundred texts leave the vectors near gensim's random
    start (norms ~0.05); by default a small corpus gets passes until 2M tokens are seen, and its
    vectors train (norms near 1, as a large corpus's after five)."""
    from comp.config.schema import DataConfig
    from comp.data.competition import load_competition
    from comp.nn.vectors import vector_epochs

    assert vector_epochs(10_000_000) == 5  # a large corpus: five
    assert vector_epochs(100_000) == 20 and vector_epochs(1_000) == 200  # (at most 200)
    assert vector_epochs(1_000, epochs=3) == 3  # asked for: as asked
    texts = load_competition(DataConfig(dir=str(small_comp))).train_texts

    def median_norm(path):
        return float(np.median(np.linalg.norm(load_vectors(path).vectors, axis=1)))

    five = median_norm(train_vectors(texts, "bigram", tmp_path / "five.kv", epochs=5))
    default = median_norm(train_vectors(texts, "bigram", tmp_path / "default.kv"))
    assert five < 0.2 and default > 0.5, (five, default)
