"""competition.toml and the layout inferred from a train file's header, as a recipe overlay."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from comp.config.schema import DataConfig
from comp.core.utils import CompError, log
from comp.data.competition import _BINARY, TEXT_FALLBACKS, _clean, find_file
from comp.data.folds import user_fold_count
from comp.data.readers import detect_encoding, read_table, sniff_format
from comp.tasks.shapes import task_choices, task_names, task_of

SETTINGS_FILE = "competition.toml"
# column names of the common pair layouts (LCQMC/AFQMC/CLUE json, GLUE, Quora), first match wins
PAIR_COLUMNS = (("sentence1", "sentence2"), ("text_a", "text_b"), ("query1", "query2"),
                ("question1", "question2"), ("text1", "text2"))


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
    from comp.config.schema import deep_merge, from_dict

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
    shape = task_of(task)
    if s.get("label_sep") and not shape.multilabel:
        raise bad("label_sep", f"only a multilabel task splits labels (task is {task})")
    if s.get("label_cols") and not shape.multilabel:
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
    elif shape.default_metric != "accuracy":  # the recipes' default; a shape may need another
        overlay["metric"] = shape.default_metric
    shown = cols or [next((c for c in TEXT_FALLBACKS if c in columns), "text")]
    source = (f"{SETTINGS_FILE}" + (f" + inferred {found} layout" if found else "")
              if s else f"inferred {found or 'single-text'} layout (no {SETTINGS_FILE})")
    extras = "".join(f" {k}={s[k]}" for k in ("metric", "folds", "group_col") if k in s)
    labels_txt = f"label {label}"
    if ml.get("label_cols"):
        labels_txt = f"labels {'/'.join(ml['label_cols'])} (0/1 columns)"
    elif task == "multilabel":
        labels_txt = f"labels in {label} joined by '{s.get('label_sep')}'"
    if "metric" in overlay and "metric" not in s:  # the shape's default, not accuracy
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

    from comp.core.metrics import METRICS

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
        elif k == "task" and v not in task_names():
            raise CompError(f"{path}: key 'task': '{v}' is not {task_choices()}")
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
