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

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from comp.config.schema import DataConfig
from comp.core.utils import CompError, log, sha1_of
from comp.data.perturb import normalize_texts
from comp.data.readers import (  # noqa: F401 (PAIR_SEP, split_pair: re-exported)
    EXTENSIONS,
    PAIR_SEP,
    Table,
    detect_encoding,
    read_table,
    split_pair,
)
from comp.tasks.shapes import Task, task_of

TEXT_FALLBACKS = ("text", "sentence", "content", "review", "comment", "query", "title")


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
    # the texts as read, before data.normalize (None: not normalized); the fold table and the
    # row fingerprints are of these, so every member shares one table whatever it normalizes
    raw_train_texts: list[str] | None = None
    raw_test_texts: list[str] | None = None

    @property
    def fold_texts(self) -> list[str]:
        """The train texts as read: what the shared fold table groups."""
        return self.train_texts if self.raw_train_texts is None else self.raw_train_texts

    @property
    def shape(self) -> Task:
        """The task shape (comp.tasks.shapes): targets, outputs, decisions, fold grouping."""
        return task_of(self.task)

    @property
    def multilabel(self) -> bool:
        """True for a multi-label task: labels is (n, L) 0/1 and members predict (n, L)
        independent probabilities."""
        return self.shape.multilabel

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
        """Fingerprint of train ids + texts as read + labels (members must agree on it)."""
        return sha1_of([*self.train_ids, *self.fold_texts, *map(str, self.labels.tolist())])

    @property
    def test_hash(self) -> str:
        """Fingerprint of test ids + texts as read."""
        texts = self.test_texts if self.raw_test_texts is None else self.raw_test_texts
        return sha1_of([*self.test_ids, *texts])


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


def text_columns(table: Table, cfg: DataConfig) -> list[str]:
    cols = list(cfg.text_cols)
    missing = [c for c in cols if c not in table.columns]
    if missing and cfg.shape.pair:  # a pair without one of its sides is not a pair
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


def read_texts(table: Table, cols: list[str], sep: str, warnings: list[str],
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


def read_ids(table: Table, id_col: str, prefix: str, required: bool) -> list[str]:
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


# competitions handed in already read (a Ray task's copy from the object store): data config ->
# Competition, only inside `preloaded`
_PRELOADED: dict[DataConfig, Competition] = {}


@contextlib.contextmanager
def preloaded(cfg: DataConfig, comp: Competition | None) -> Iterator[None]:
    """Inside the block, load_competition(cfg) returns `comp` (None: reads as usual)."""
    if comp is None:
        yield
        return
    _PRELOADED[cfg] = comp
    try:
        yield
    finally:
        _PRELOADED.pop(cfg, None)


def load_competition(cfg: DataConfig) -> Competition:
    """Read and validate a competition folder.

    Args:
        cfg: the recipe's data section.

    Returns:
        The Competition, with labels as int indices into a stable class order.
    """
    if cfg in _PRELOADED:
        return _PRELOADED[cfg]
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
    if cfg.shape.multilabel:
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

    pair = cfg.shape.pair
    train_texts = read_texts(train, text_columns(train, cfg), cfg.text_sep, warnings, pair=pair)
    test_texts = read_texts(test, text_columns(test, cfg), cfg.text_sep, warnings, pair=pair)
    raw = (train_texts, test_texts) if cfg.normalize else (None, None)
    if cfg.normalize:
        train_texts = normalize_texts(train_texts, cfg.normalize)
        test_texts = normalize_texts(test_texts, cfg.normalize)
    groups: list[str] = []
    if cfg.group_col:
        if cfg.group_col not in train.columns:
            raise CompError(f"{train_path}: missing group column '{cfg.group_col}' "
                            f"(recipe key 'data.group_col'; columns: {', '.join(train.columns)})")
        groups = _non_empty(train, cfg.group_col, ": empty group (data.group_col)")
    train_ids = read_ids(train, cfg.id_col, "train-", required=False)
    test_ids = read_ids(test, cfg.id_col, "", required=sample_path is not None)

    lay, sample_ids = SampleLayout(cfg.id_col, label_col), []
    if sample_path is not None:
        sample = read_table(sample_path, "auto", cfg.encoding)
        lay = sample_layout(sample, sample_path, cfg.id_col, label_col, classes,
                            cfg.shape.multilabel)
        sample_ids = read_ids(sample, lay.id_col, "", required=True)
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
                       sub_order=sample_ids, raw_train_texts=raw[0], raw_test_texts=raw[1])
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
        if cfg.shape.pair:
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
        cols = text_columns(table, cfg)
    if not table.rows:
        raise CompError(f"{path}: no data rows (header only)")
    ids = read_ids(table, cfg.id_col, "unlabelled-", required=False)
    # an empty text has nothing to predict or learn from: skipped, unlike test rows
    texts = read_texts(table, cols, cfg.text_sep, warnings, empty_fate="skipped",
                   pair=cfg.shape.pair)
    keep = [k for k, t in enumerate(texts) if not is_empty_text(t)]
    if not keep:
        raise CompError(f"{path}: every text is empty (columns: {', '.join(cols)})")
    log(f"unlabelled: {len(keep)} texts from {path}")
    return [ids[k] for k in keep], normalize_texts([texts[k] for k in keep], cfg.normalize)
