"""Reading tables: CSV/TSV/JSONL/CLUE JSON in utf-8 or GBK, one clear error per bad file."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from comp.core.utils import CompError, write_text

# joins the two sides of a pair task's text; removed from the sides when read ("SYMBOL FOR
# RECORD SEPARATOR": no real text holds it, and unlike U+001E it survives control-char cleaning)
PAIR_SEP = "\u241e"


def split_pair(text: str) -> tuple[str, str]:
    """The (a, b) sides of a pair text; a text without PAIR_SEP is (text, "")."""
    a, _, b = text.partition(PAIR_SEP)
    return a, b


EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json", ".txt")
csv.field_size_limit(1 << 30)  # a competition text may be far longer than csv's 128 KiB


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
