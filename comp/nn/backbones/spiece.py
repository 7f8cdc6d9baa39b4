"""Reading a sentencepiece `spiece.model` into a fast Unigram tokenizer.

transformers converts a checkpoint that ships only `spiece.model` (hfl/chinese-xlnet-base, the
ALBERTs with a sentencepiece vocab) itself; when that fails or gives a vocabulary that does not
fit the model, the ModelProto is read here with sentencepiece's own protobuf classes and handed
to the tokenizer class the way transformers' SentencePieceExtractor would: (piece, score)
vocabulary, the unknown id, control / user-defined pieces as added tokens, and the precompiled
normalization map.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from comp.core.utils import CompError

# sentencepiece_model.proto: SentencePiece.Type
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4


def read_spiece(path: str | Path) -> dict[str, Any]:
    """The parts of a sentencepiece model a Unigram tokenizer needs.

    Returns:
        {'pieces': [(piece, score, type)], 'model_type': int, 'charsmap': bytes | None}
        (model_type as TrainerSpec: 1 unigram, 2 bpe, 3 word, 4 char).
    """
    from google.protobuf.message import DecodeError
    from sentencepiece.sentencepiece_model_pb2 import ModelProto

    p = Path(path)
    try:
        m = ModelProto.FromString(p.read_bytes())
    except DecodeError as e:
        raise CompError(f"{p}: not a readable sentencepiece model ({e})") from None
    pieces = [(x.piece, x.score, x.type) for x in m.pieces]
    if any(isinstance(x, bytes) for x, _, _ in pieces):  # upb hands back invalid UTF-8 as is
        raise CompError(f"{p}: not a readable sentencepiece model (a piece is not UTF-8)")
    if not pieces:
        raise CompError(f"{p}: sentencepiece model without pieces")
    return {"pieces": pieces, "model_type": m.trainer_spec.model_type,
            "charsmap": m.normalizer_spec.precompiled_charsmap or None}


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
                        "only Unigram spiece.model files are read")
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
