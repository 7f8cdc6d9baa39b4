"""The shared fold table: stratified (iteratively for multi-label), duplicates and pair sides
grouped, fingerprinted by content.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from comp.config.schema import DataConfig
from comp.core.utils import CompError, log, sha1_of, write_json, write_text
from comp.data.competition import PAIR_SEP, Competition, split_pair
from comp.data.readers import read_table

HASH_KEYS = ("folds_hash", "train_hash", "test_hash")  # see data_hashes


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
        groups = _merge_groups(groups, [[v] for v in row_groups])
        group_of = dict.fromkeys(groups.tolist())
    if texts and any(PAIR_SEP in t for t in texts) and k >= 2:
        groups, line = _pair_groups(groups, texts, k)
        group_of = dict.fromkeys(groups.tolist())
        log(line)
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


def _merge_groups(text_groups: np.ndarray, row_values: list[Sequence[str]]) -> np.ndarray:
    """Group ids joining rows that share a text group or any of their values (a group column's
    value; a pair's sentences).

    Text groups and values are the nodes of a graph whose edges join each row's text group to
    each of its values; each row gets the smallest text-group id of its connected component, so
    a group no value joins keeps its id (StratifiedGroupKFold's shuffle follows the sorted ids:
    same ids, same folds).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_text = int(text_groups.max()) + 1
    value_of: dict[str, int] = {}
    src, dst = [], []
    for g, values in zip(text_groups.tolist(), row_values):
        for v in values:
            src.append(g)
            dst.append(n_text + value_of.setdefault(v, len(value_of)))
    n = n_text + len(value_of)
    edges = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    _, component = connected_components(edges, directed=False)
    smallest = np.full(n, n_text, dtype=np.int64)
    np.minimum.at(smallest, component[:n_text], np.arange(n_text))
    return smallest[component[text_groups]]


def _pair_groups(groups: np.ndarray, texts: list[str], k: int) -> tuple[np.ndarray, str]:
    """Pair groups joined by the sentences they share, so no sentence sits on both sides of a
    split; when one joined group would hold more than a fold's share of the rows, pairs are
    grouped by one of their sentences instead (the smaller, so both orders agree; the other
    sentence may then recur across folds).
    Returns the groups and a line for the log."""
    sides = [[normalize_text(x) for x in split_pair(t) if x] for t in texts]
    joined = _merge_groups(groups, sides)
    biggest = int(np.bincount(joined).max())
    if biggest <= len(texts) / k:
        return joined, (f"folds: {len(np.unique(joined))} groups of pairs joined by the "
                        "sentences they share (no sentence in two folds)")
    # a pair's smaller sentence: the same for (a, b) and (b, a), so no order joins two groups
    first = _merge_groups(groups, [[min(s)] if s else [] for s in sides])
    return first, (f"folds: pairs sharing sentences form a group of {biggest} of {len(texts)} "
                   f"rows, more than a fold holds; grouped by one sentence of each pair instead "
                   f"({len(np.unique(first))} groups; the other sentence may recur across folds)")


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
    comp.nn.rows.inner_split take one label per row)."""
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


# fold tables comp made with an older grouping -> the methods that replace them: remade (and
# said so in the log) rather than refused as a user's table made with other settings
PREVIOUS_METHODS = {
    "stratified-group(normalized text)": (
        "stratified-group(normalized text, shared pair sentences)",),
}


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
    method = comp.shape.fold_method(method)  # e.g. pairs that share a sentence share a fold
    want = {"k": cfg.folds, "seed": cfg.fold_seed, "method": method,
            "train_hash": comp.train_hash}
    if path.exists() and not meta_path.exists():
        return _user_folds(comp, cfg, path)
    if path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        diff = [key for key in want if meta.get(key) != want[key]]
        if "method" in diff and want["method"] in PREVIOUS_METHODS.get(meta.get("method"), ()):
            log(f"folds: {path} was made by an older grouping ({meta.get('method')}); making "
                f"it anew as {want['method']} (every member's folds refit)")
            return _write_folds(comp, cfg, path, meta_path, want)
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
    folds = make_folds(comp.labels, comp.fold_texts, cfg.folds, cfg.fold_seed,
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
