"""Character-grid alignment: truncation, windows, offsets -> char index, gathering."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from comp.core.utils import CompError
from comp.nn import align
from comp.nn.align import (
    char_mask,
    char_to_token_index,
    gather_to_grid,
    span_to_grid,
    truncate,
    window_starts,
    windows,
)

# ---------------------------------------------------------------------------------------------
# truncate


def test_truncate_short_text_unchanged():
    for mode in ("head", "head_tail", "tail", "window"):
        assert truncate("我爱北京", 4, mode=mode) == "我爱北京"
        assert truncate("", 4, mode=mode) == ""


def test_truncate_head_and_head_tail():
    text = "0123456789"
    assert truncate(text, 4, mode="head") == "0123"
    assert truncate(text, 4, mode="tail") == "6789"
    assert truncate(text, 4) == "01" + "89"
    assert truncate(text, 5, head_frac=0.8) == "0123" + "9"
    assert truncate(text, 4, head_frac=1.0, mode="head_tail") == "0123"
    assert truncate(text, 4, head_frac=0.0, mode="head_tail") == "6789"


def test_truncate_rejects_bad_arguments():
    with pytest.raises(CompError, match="model.truncation"):
        truncate("abcdef", 3, mode="middle")
    with pytest.raises(CompError, match="model.max_chars"):
        truncate("abc", 0)
    with pytest.raises(CompError, match="model.head_frac"):
        truncate("abcdef", 3, head_frac=1.5)


@given(st.text(max_size=60), st.integers(1, 40), st.floats(0.0, 1.0))
def test_truncate_properties(text, max_chars, head_frac):
    out = truncate(text, max_chars, head_frac)
    assert len(out) == min(len(text), max_chars)
    n_head = round(max_chars * head_frac) if len(text) > max_chars else len(text)
    assert text.startswith(out[:n_head])
    assert text.endswith(out[n_head:])


# ---------------------------------------------------------------------------------------------
# windows


def test_windows_short_text_is_one_window():
    assert windows("短文本", 10, 5) == ["短文本"]
    assert windows("", 10, 5) == [""]


def test_windows_example():
    assert windows("0123456789", 4, 3) == ["0123", "3456", "6789"]
    # regular windows already reach the end: no duplicate final window
    assert windows("012345", 4, 2) == ["0123", "2345"]


def test_windows_stride_is_clamped_and_validated():
    assert windows("0123456789", 3, 100) == ["012", "345", "678", "789"]
    with pytest.raises(CompError, match="window_stride"):
        windows("0123456789", 3, 0)


@given(st.text(max_size=80), st.integers(1, 20), st.integers(1, 30))
def test_windows_cover_the_whole_text(text, max_chars, stride):
    starts = window_starts(len(text), max_chars, stride)
    pieces = windows(text, max_chars, stride)
    assert len(pieces) == len(starts)
    assert starts == sorted(set(starts)) and starts[0] == 0
    covered = set()
    for s, piece in zip(starts, pieces):
        assert piece == text[s:s + max_chars]
        assert len(piece) == min(max_chars, len(text))
        covered.update(range(s, s + len(piece)))
    assert covered == set(range(len(text)))
    assert starts[-1] + len(pieces[-1]) == len(text)


# ---------------------------------------------------------------------------------------------
# char_to_token_index on hand-written offsets


def test_chinese_one_token_per_char_with_specials():
    # [CLS] 我 爱 北 京 [SEP] [PAD]: HF gives specials and pads (0, 0)
    offsets = np.array([[[0, 0], [0, 1], [1, 2], [2, 3], [3, 4], [0, 0], [0, 0]]])
    idx = char_to_token_index(offsets, 6, [4])
    assert idx.dtype == torch.long
    assert idx.tolist() == [[1, 2, 3, 4, -1, -1]]


def test_latin_words_and_word_pieces_spread_over_their_chars():
    # "hi world": [CLS] hi wor ##ld [SEP]; the space at 2 is dropped by the tokenizer
    offsets = torch.tensor([[[-1, -1], [0, 2], [3, 6], [6, 8], [-1, -1]]])
    idx = char_to_token_index(offsets, 10, [8])
    assert idx.tolist() == [[1, 1, -1, 2, 2, 2, 3, 3, -1, -1]]


def test_left_padding_and_tokenizer_truncation():
    # XLNet-style: pads first, specials last; the tokenizer kept only chars 0..2 of 5
    offsets = np.array([
        [[0, 0], [0, 0], [0, 1], [1, 3], [-1, -1]],
        [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]],
    ])
    idx = char_to_token_index(offsets, 6, [5, 5])
    assert idx.tolist() == [[2, 3, 3, -1, -1, -1], [0, 1, 2, 3, 4, -1]]


def test_positions_past_text_length_are_empty_even_if_claimed():
    offsets = np.array([[[0, 4]]])
    assert char_to_token_index(offsets, 6, [2]).tolist() == [[0, 0, -1, -1, -1, -1]]


def test_overlapping_tokens_first_or_last():
    # a Metaspace prefix "▁" and the first char share span (0, 1); a byte-level emoji split in two
    offsets = np.array([[[0, 1], [0, 1], [1, 2], [2, 3], [2, 3]]])
    assert char_to_token_index(offsets, 3, [3]).tolist() == [[0, 2, 3]]
    assert char_to_token_index(offsets, 3, [3], prefer="last").tolist() == [[1, 2, 4]]
    with pytest.raises(ValueError, match="prefer"):
        char_to_token_index(offsets, 3, [3], prefer="middle")


def test_char_to_token_index_edge_shapes():
    assert char_to_token_index(np.zeros((2, 0, 2)), 3, [1, 2]).tolist() == [[-1] * 3] * 2
    assert char_to_token_index(np.zeros((1, 2, 2)), 0, [1]).shape == (1, 0)
    with pytest.raises(ValueError, match="text_lens"):
        char_to_token_index(np.zeros((2, 3, 2)), 3, [1])
    with pytest.raises(ValueError, match="shape"):
        char_to_token_index(np.zeros((2, 3)), 3, [1, 1])


@st.composite
def _tokenised(draw):
    """A random text length and tokenisation: gaps, multi-char pieces, overlaps, specials."""
    n = draw(st.integers(0, 30))
    spans, pos = [], 0
    while pos < n:
        pos += draw(st.integers(0, 2))  # dropped characters (spaces)
        width = draw(st.integers(1, 4))
        if pos + width > n:
            break
        spans.append((pos, pos + width))
        pos += width
    keep = draw(st.integers(0, len(spans)))  # tokenizer max_len truncation
    spans = spans[:keep]
    # overlapping extras: byte-level pieces of one char, Metaspace prefixes, spans past the end
    for _ in range(draw(st.integers(0, 3))):
        s = draw(st.integers(0, n + 2))
        spans.insert(draw(st.integers(0, len(spans))), (s, s + draw(st.integers(0, 5))))
    left_pad = draw(st.integers(0, 3))
    tokens = [(0, 0)] * left_pad + [(-1, -1)] + spans + [(0, 0)]
    return n, tokens


@settings(max_examples=60, deadline=None)
@given(st.lists(_tokenised(), min_size=1, max_size=4), st.integers(0, 35))
def test_round_trip_every_char_maps_to_a_token_containing_it(batch, n_chars):
    t = max(len(toks) for _, toks in batch)
    offsets = np.zeros((len(batch), t, 2), dtype=np.int64)
    for i, (_, toks) in enumerate(batch):
        offsets[i, :len(toks)] = toks
    lens = [n for n, _ in batch]
    idx = char_to_token_index(offsets, n_chars, lens).numpy()
    last = char_to_token_index(offsets, n_chars, lens, prefer="last").numpy()
    assert idx.shape == (len(batch), n_chars)
    for i, (n, toks) in enumerate(batch):
        for c in range(n_chars):
            k = idx[i, c]
            covering = [j for j, (s, e) in enumerate(toks) if s <= c < e and s < e]
            if c >= n or not covering:
                assert k == -1 and last[i, c] == -1
            else:
                assert k == covering[0] and last[i, c] == covering[-1]
                s, e = offsets[i, k]
                assert s <= c < e


def test_chunked_path_matches_single_pass(monkeypatch):
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 40, size=(9, 12))
    offsets = np.stack([starts, starts + rng.integers(0, 4, size=(9, 12))], axis=-1)
    lens = rng.integers(0, 45, size=9).tolist()
    whole = char_to_token_index(offsets, 40, lens)
    last = char_to_token_index(offsets, 40, lens, prefer="last")
    monkeypatch.setattr(align, "_CHUNK_ELEMS", 1)  # one row per chunk
    assert torch.equal(char_to_token_index(offsets, 40, lens), whole)
    assert torch.equal(char_to_token_index(offsets, 40, lens, prefer="last"), last)


# ---------------------------------------------------------------------------------------------
# real fast tokenizers (built on the fly, no hub)


def _wordpiece_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "我", "爱", "北", "京", "很", "好", "hello",
             "wor", "##ld", "!", "ａ", "，"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def _metaspace_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=60, special_tokens=["<pad>", "<unk>"],
                                      unk_token="<unk>")
    tok.train_from_iterator(["我爱北京很好 hello world"] * 10 + ["很好 the world"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   padding_side="left")


def _check_round_trip(texts, enc, idx):
    offsets = np.asarray(enc["offset_mapping"])
    for i, text in enumerate(texts):
        for c in range(idx.shape[1]):
            k = int(idx[i, c])
            if k >= 0:
                s, e = offsets[i, k]
                assert s <= c < e < len(text) + 1


def test_real_wordpiece_tokenizer():
    tok = _wordpiece_tokenizer()
    texts = ["我爱北京 hello world!", "很好😀ＡＢ，好", "ａ  ａ"]
    enc = tok(texts, return_offsets_mapping=True, padding=True)
    n = 24
    idx = char_to_token_index(enc["offset_mapping"], n, [len(t) for t in texts])
    _check_round_trip(texts, enc, idx)
    ids = enc["input_ids"]
    names = [tok.convert_ids_to_tokens(row) for row in ids]
    row0 = [names[0][k] if k >= 0 else None for k in idx[0].tolist()]
    assert row0[:4] == ["我", "爱", "北", "京"]
    assert row0[4] is None  # the space
    assert row0[5:10] == ["hello"] * 5  # a Latin word spread over its chars
    assert row0[11:16] == ["wor"] * 3 + ["##ld"] * 2  # word pieces over their chars
    assert row0[16] == "!" and row0[17:] == [None] * (n - 17)
    row1 = [names[1][k] if k >= 0 else None for k in idx[1].tolist()]
    # the emoji and full-width letters form one unknown piece covering all three chars
    assert row1[:7] == ["很", "好", "[UNK]", "[UNK]", "[UNK]", "，", "好"]
    row2 = [names[2][k] if k >= 0 else None for k in idx[2].tolist()]
    assert row2[:4] == ["ａ", None, None, "ａ"]  # full-width letter, two spaces


def test_real_tokenizer_truncation_leaves_the_cut_chars_empty():
    tok = _wordpiece_tokenizer()
    texts = ["我爱北京很好我爱北京"]
    enc = tok(texts, return_offsets_mapping=True, truncation=True, max_length=6)
    idx = char_to_token_index(enc["offset_mapping"], 12, [len(texts[0])])
    assert idx[0, :4].tolist() == [1, 2, 3, 4]
    assert (idx[0, 4:] == -1).all()


def test_real_metaspace_tokenizer_left_padding():
    tok = _metaspace_tokenizer()
    texts = ["我爱 hello world", "很好"]
    enc = tok(texts, return_offsets_mapping=True, padding=True)
    input_ids = np.asarray(enc["input_ids"])
    assert input_ids[1, 0] == tok.pad_token_id  # left padded
    lens = [len(t) for t in texts]
    for prefer in ("first", "last"):
        idx = char_to_token_index(enc["offset_mapping"], 16, lens, prefer=prefer)
        _check_round_trip(texts, enc, idx)
        assert (idx[1, 2:] == -1).all()
        assert (idx[1, :2] >= 0).all()
        assert (idx[0, :len(texts[0])] >= 0).all()  # spaces become "▁" pieces here
    idx = char_to_token_index(enc["offset_mapping"], 16, lens, prefer="last")
    first_piece = tok.convert_ids_to_tokens([int(input_ids[1, idx[1, 0]])])[0]
    assert "很" in first_piece


# ---------------------------------------------------------------------------------------------
# gather_to_grid, char_mask, span_to_grid


def test_gather_to_grid_values_zeros_and_gradient():
    states = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2).requires_grad_()
    index = torch.tensor([[1, 1, -1, 2], [0, -1, -1, -1]])
    grid = gather_to_grid(states, index)
    assert grid.shape == (2, 4, 2)
    assert torch.equal(grid[0, 0], states[0, 1]) and torch.equal(grid[0, 1], states[0, 1])
    assert torch.equal(grid[0, 3], states[0, 2]) and torch.equal(grid[1, 0], states[1, 0])
    assert (grid[0, 2] == 0).all() and (grid[1, 1:] == 0).all()
    grid.sum().backward()
    # each token receives one gradient per character it was spread over
    assert states.grad[:, :, 0].tolist() == [[0, 2, 1], [1, 0, 0]]


def test_gather_to_grid_does_not_leak_nan_from_unused_tokens():
    states = torch.tensor([[[1.0], [float("nan")]]])
    grid = gather_to_grid(states, torch.tensor([[0, -1, -1]]))
    assert torch.isfinite(grid).all()


def test_char_mask():
    m = char_mask([0, 2, 5], 3)
    assert m.dtype == torch.bool
    assert m.tolist() == [[False] * 3, [True, True, False], [True] * 3]


def test_span_to_grid_with_jieba_words():
    import jieba

    texts = ["我爱北京天安门", "今天 天气很好"]
    spans = [[(s, e) for _, s, e in jieba.tokenize(t)] for t in texts]
    idx = span_to_grid(spans, 10, [len(t) for t in texts])
    for i, text in enumerate(texts):
        words = [w for w, _, _ in jieba.tokenize(text)]
        rebuilt = [words[k] for k in idx[i, :len(text)].tolist()]
        # every char points at the jieba word that contains it
        for c, w in enumerate(rebuilt):
            s, e = spans[i][idx[i, c]]
            assert text[s:e] == w and s <= c < e
        assert (idx[i, len(text):] == -1).all()
    assert idx[0, 2].item() == idx[0, 3].item()  # 北京 is one word
    assert span_to_grid([[], [(0, 2)]], 3).tolist() == [[-1, -1, -1], [0, 0, -1]]
