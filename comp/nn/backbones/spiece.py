"""Reading a sentencepiece `spiece.model` into a fast Unigram tokenizer without protobuf.

transformers converts a checkpoint that ships only `spiece.model` (hfl/chinese-xlnet-base, the
ALBERTs with a sentencepiece vocab) through protobuf's generated classes; without the protobuf
package it falls back to a tiktoken reader and fails. A ModelProto is a handful of plain
protobuf fields, so they are read here directly and handed to the tokenizer class the way
transformers' own SentencePieceExtractor would: (piece, score) vocabulary, the unknown id,
control / user-defined pieces as added tokens, and the precompiled normalization map.
"""

from __future__ import annotations

import inspect
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from comp.core.utils import CompError

# sentencepiece_model.proto numbers
_PIECES, _TRAINER, _NORMALIZER = 1, 2, 3
_PIECE, _SCORE, _TYPE = 1, 2, 3
_MODEL_TYPE = 3  # TrainerSpec.model_type: 1 unigram, 2 bpe, 3 word, 4 char
_CHARSMAP = 2  # NormalizerSpec.precompiled_charsmap
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, Any]]:
    """(field number, value) of one protobuf message: ints, 4/8-byte chunks, or bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, val


def read_spiece(path: str | Path) -> dict[str, Any]:
    """The parts of a sentencepiece model a Unigram tokenizer needs.

    Returns:
        {'pieces': [(piece, score, type)], 'model_type': int, 'charsmap': bytes | None}.
    """
    p = Path(path)
    try:
        buf = p.read_bytes()
        pieces, model_type, charsmap = [], 1, None
        for num, val in _fields(buf):
            if num == _PIECES:
                piece, score, kind = "", 0.0, 1
                for n, v in _fields(val):
                    if n == _PIECE:
                        piece = v.decode("utf-8")
                    elif n == _SCORE:
                        score = struct.unpack("<f", v)[0]
                    elif n == _TYPE:
                        kind = v
                pieces.append((piece, score, kind))
            elif num == _TRAINER:
                model_type = next((v for n, v in _fields(val) if n == _MODEL_TYPE), 1)
            elif num == _NORMALIZER:
                charsmap = next((v for n, v in _fields(val) if n == _CHARSMAP), None) or None
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as e:
        raise CompError(f"{p}: not a readable sentencepiece model ({e})") from None
    if not pieces:
        raise CompError(f"{p}: sentencepiece model without pieces")
    return {"pieces": pieces, "model_type": model_type, "charsmap": charsmap}


def _saved_kwargs(d: Path) -> dict[str, Any]:
    """tokenizer_config.json and special_tokens_map.json settings (when the repo has them)."""
    out: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = d / name
        if f.exists():
            try:
                out.update(json.loads(f.read_text(encoding="utf-8")))
            except json.JSONDecodeError as e:
                raise CompError(f"{f}: invalid JSON: {e}") from None
    special = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
               "mask_token"}
    keep = {"do_lower_case", "remove_space", "keep_accents", *special}
    return {k: (v["content"] if isinstance(v, dict) and k in special else v)
            for k, v in out.items() if k in keep}


def spiece_tokenizer(tok_cls: type, model_file: str | Path) -> Any:
    """A fast `tok_cls` (XLNetTokenizer, AlbertTokenizer) built from a `spiece.model` file.

    Settings in tokenizer_config.json / special_tokens_map.json next to the file are kept.
    """
    from tokenizers import AddedToken

    f = Path(model_file)
    sp = read_spiece(f)
    if sp["model_type"] != 1:
        raise CompError(f"{f}: sentencepiece model type {sp['model_type']} is not Unigram; "
                        "only Unigram spiece.model files are read without protobuf")
    pieces = sp["pieces"]
    unk = next((i for i, (_, _, t) in enumerate(pieces) if t == _UNKNOWN), 0)
    added = [AddedToken(p, normalized=False, special=t == _CONTROL)
             for p, _, t in pieces if t in (_CONTROL, _USER_DEFINED)]
    kwargs = _saved_kwargs(f.parent)
    kwargs.setdefault("unk_token", pieces[unk][0])
    if "unk_id" in inspect.signature(tok_cls.__init__).parameters:
        kwargs["unk_id"] = unk  # XLNetTokenizer takes it; AlbertTokenizer finds its unk_token
    tok = tok_cls(vocab=[(p, s) for p, s, _ in pieces], additional_special_tokens=added,
                  _spm_precompiled_charsmap=sp["charsmap"], **kwargs)
    tok.name_or_path = str(f.parent)
    return tok
