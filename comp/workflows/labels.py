"""Label review: find suspect training labels from OOF probabilities, then apply corrections.

`find_label_issues` reads a member's run directory or an ensemble manifest (a submission .json,
or the ensemble's own directory) and scores every training row:

- `label_quality`: cleanlab's label quality score of the given label under the OOF
  probabilities (`cleanlab.rank.get_label_quality_scores`, self-confidence; multi-label:
  `cleanlab.multilabel_classification.rank`); lower is more suspect.
- `is_issue`: cleanlab's confident-learning flag (`cleanlab.filter.find_label_issues`,
  prune by noise rate; multi-label: `cleanlab.multilabel_classification.filter`).
- `members_disagree`: how many members' OOF prediction differs from the given label (argmax;
  multi-label: the label set decided at each member's thresholds). A member directory counts
  as one member.
- `knn_agreement` (deep k-NN, Bahri et al. 2020): the share of a row's `knn` nearest training
  texts, by cosine of frozen e5 sentence embeddings (comp.nn.sentence, kept beside the
  competition's pruned e5), that carry its label; low is suspect. Single-text, single-label
  tasks; blank elsewhere or with knn = 0. It reads no model's predictions, so it also checks
  the members' own blind spots.

The OOF probabilities are honest: a row's come from models that never saw its label (for an
ensemble, the nested blend in its directory's oof.npy), which is what confident learning needs.
Rows a subset-of-folds member does not cover have no OOF: their scores are blank, they are
never flagged and they sort last.

The CSV (`reports/<competition>/label_issues.csv` by default) holds every training row once:
id, text, label, suggested_label (the OOF argmax; multi-label: the labels at or above their
thresholds, joined by the label separator), the scores, is_issue, rank and an empty
`corrected_label` column to fill in. Flagged rows come first, each group by label_quality
ascending. A sidecar `<csv stem>.json` records the source and the competition's [data] table,
so `apply_corrections` finds the train file again.

`apply_corrections` reads a reviewed copy: a non-blank `corrected_label` replaces the row's
label. It writes a corrected copy of the train file in the original's format and encoding
(default `train.corrected.<ext>` beside it; the original is never written) and a log of what
changed (`<corrected stem>.log.json`). An unknown id, a label outside the classes, a duplicate
id or a `label` cell that no longer matches the train file is a one-line error naming the
reviewed file, row and column.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from comp.config.schema import DataConfig, from_dict
from comp.core.utils import CompError, atomic_path, log, read_json, write_json, write_text
from comp.data.competition import PAIR_SEP, Competition, load_competition, read_ids
from comp.data.readers import Table, detect_encoding, read_table, sniff_format
from comp.kfold.rundir import Member, read_member

SCORE_COLUMNS = ("label_quality", "members_disagree", "knn_agreement")
KNN = 10  # neighbours of the deep k-NN score
COLUMNS = ("id", "text", "label", "suggested_label", *SCORE_COLUMNS, "is_issue", "rank",
           "corrected_label")


@dataclasses.dataclass
class Source:
    """What the OOF probabilities came from: the scored OOF, the members, the competition."""

    name: str
    kind: str  # member | ensemble
    oof: np.ndarray  # (n_train, C); NaN rows: not covered
    thresholds: np.ndarray | None  # multi-label: (L,) cuts of `oof`
    members: list[Member]
    cfg: DataConfig
    comp: Competition


# ---------------------------------------------------------------------------------------------
# find


def find_label_issues(source: str | Path, out: str | Path | None = None, knn: int = KNN
                      ) -> Path:
    """Score every training row of the source's competition and write label_issues.csv.

    Args:
        source: a member run directory (oof.npy, classes.json, cv.json), an ensemble manifest
            (submission .json) or an ensemble's directory (it holds manifest.json).
        out: the CSV; default `reports/<competition folder name>/label_issues.csv`.
        knn: neighbours of the deep k-NN score (0: not computed).

    Returns:
        The CSV path (its sidecar `<stem>.json` beside it).
    """
    src = _read_source(Path(source))
    comp = src.comp
    covered = ~np.isnan(src.oof).any(axis=1)
    quality = np.full(len(covered), np.nan)
    issue = np.zeros(len(covered), dtype=bool)
    q, flagged = _cleanlab_scores(comp, src.oof[covered], covered)
    quality[covered], issue[covered] = q, flagged
    disagree, n_voting = _disagreement(comp, src.members)
    agree = knn_agreement(comp, src.cfg, knn)
    suggested = _suggested(comp, src.oof, src.thresholds)
    # flagged first, then the least likely label; rows without OOF last; ties: file order
    qkey = np.where(covered, quality, np.inf)
    order = np.lexsort((np.arange(len(qkey)), -disagree, qkey, ~issue))
    given = [_label_text(comp, i) for i in range(len(comp.train_ids))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for rank, i in enumerate(order, start=1):
        w.writerow([comp.train_ids[i], comp.train_texts[i].replace(PAIR_SEP, " ||| "),
                    given[i], suggested[i] if covered[i] else "",
                    f"{quality[i]:.6f}" if covered[i] else "",
                    int(disagree[i]) if n_voting[i] else "",
                    f"{agree[i]:.3f}" if agree[i] == agree[i] else "", int(issue[i]), rank, ""])
    out_path = Path(out) if out else (Path("reports") / Path(src.cfg.dir).resolve().name
                                      / "label_issues.csv")
    write_text(out_path, buf.getvalue())
    per_class = _per_class(comp, issue, suggested)
    import cleanlab

    write_json(out_path.with_suffix(".json"), {
        "source": str(source), "kind": src.kind, "name": src.name,
        "members": [str(m.path) for m in src.members], "data": dataclasses.asdict(src.cfg),
        "train": str(comp.train_path), "train_hash": comp.train_hash, "task": comp.task,
        "classes": list(comp.classes), "rows": len(covered), "rows_scored": int(covered.sum()),
        "issues": int(issue.sum()), "issues_per_class": per_class,
        "cleanlab": cleanlab.__version__})
    what = "per label" if comp.multilabel else "by given label"
    scored = "" if covered.all() else f" ({int(covered.sum())} with OOF)"
    log(f"labels: {int(issue.sum())} of {len(covered)} training rows{scored} flagged by "
        f"cleanlab on the OOF of {src.kind} {src.name} ({len(src.members)} member"
        f"{'s' if len(src.members) != 1 else ''}); {what}: {per_class} -> {out_path}")
    return out_path


def knn_agreement(comp: Competition, cfg: DataConfig, k: int = KNN) -> np.ndarray:
    """(n_train,) share of each row's k nearest training texts (cosine of e5 sentence
    embeddings, the row itself left out) that carry its label; NaN where not computed."""
    out = np.full(len(comp.train_ids), np.nan)
    if k <= 0 or comp.multilabel or comp.shape.pair or len(out) <= k:
        return out
    from comp.nn.backbones.e5 import resolve_backbone
    from comp.nn.sentence import cached_encode
    from comp.workflows.pipeline import Layout

    embedded = Path(cfg.dir).resolve() == Path(Layout(None).data).resolve()
    models = Layout(None if embedded else str(cfg.dir)).models
    folder = Path(resolve_backbone(models / "e5-small", comp=comp))
    emb = cached_encode(folder, comp.train_texts, 128, folder.parent / "embeddings")
    labels = np.asarray(comp.labels)
    for lo in range(0, len(out), 2048):  # (chunk, n) similarities at a time, not (n, n)
        sims = emb[lo:lo + 2048] @ emb.T
        rows = np.arange(sims.shape[0])
        sims[rows, lo + rows] = -np.inf  # not its own neighbour
        near = np.argpartition(-sims, k, axis=1)[:, :k]
        out[lo:lo + len(rows)] = (labels[near] == labels[lo + rows, None]).mean(1)
    log(f"labels: deep k-NN agreement of {len(out)} rows over {k} e5 neighbours "
        f"(median {np.median(out):.2f})")
    return out


def _read_source(path: Path) -> Source:
    """A member directory, an ensemble manifest or an ensemble directory, read and checked
    against the competition its [data] table names."""
    if not path.exists():
        raise CompError(f"{path}: not found (give a member run directory or an ensemble "
                        "manifest .json)")
    man_path = path / "manifest.json" if path.is_dir() else path
    if path.is_dir() and not man_path.exists():  # a member
        from comp.blend.ensemble import member_data_config

        member = read_member(path)
        cfg = member_data_config([path])
        comp = _competition(cfg, member, path)
        member = _aligned(member, comp)
        return Source(member.name, "member", member.oof, _thresholds(member.cv, comp),
                      [member], cfg, comp)
    if not path.is_dir() and path.suffix != ".json":
        raise CompError(f"{path}: not a member run directory or an ensemble manifest .json")
    man = read_json(man_path)
    if not isinstance(man, dict) or not man.get("members") or not man.get("run_dir"):
        raise CompError(f"{man_path}: not an ensemble manifest (no 'members' or 'run_dir')")
    members = [read_member(m) for m in man["members"]]
    cfg = _manifest_data_config(man, man_path)
    ens = read_member(man["run_dir"])  # its oof.npy: the nested (honest) blend of the members
    comp = _competition(cfg, ens, man_path)
    ens = _aligned(ens, comp)
    members = [_aligned(m, comp) for m in members]
    for m in members:
        if m.oof.shape[0] != ens.oof.shape[0]:
            raise CompError(f"{m.path}: {m.oof.shape[0]} OOF rows but the ensemble has "
                            f"{ens.oof.shape[0]}")
    th = _thresholds(man, comp) if comp.multilabel else None
    return Source(str(man.get("name") or man_path.stem), "ensemble", ens.oof, th, members, cfg,
                  comp)


def _manifest_data_config(man: dict[str, Any], man_path: Path) -> DataConfig:
    """The manifest's [data] table, else its members' recipe.toml, else its data_dir alone."""
    from comp.blend.ensemble import member_data_config

    if isinstance(man.get("data"), dict):
        try:
            return from_dict(DataConfig, man["data"], "data")
        except CompError as e:
            raise CompError(f"{man_path}: 'data': {e}") from None
    try:
        return member_data_config(man["members"])
    except CompError:
        if not man.get("data_dir"):
            raise CompError(f"{man_path}: no [data] table, member recipe or data_dir names "
                            "the competition") from None
        from comp.data.settings import folder_data_config

        return folder_data_config(man["data_dir"])


def _competition(cfg: DataConfig, m: Member, where: Path) -> Competition:
    """The competition, checked to be the train rows the OOF predicted."""
    cfg = dataclasses.replace(cfg, extra="")  # the unlabelled texts play no part here
    comp = load_competition(cfg)
    if m.oof.shape[0] != len(comp.train_ids):
        raise CompError(f"{where}: {m.oof.shape[0]} OOF rows but {comp.train_path} has "
                        f"{len(comp.train_ids)} training rows")
    want = m.cv.get("train_hash")
    if want is not None and want != comp.train_hash:
        raise CompError(f"{where}: its OOF predicted other train rows than {comp.train_path} "
                        f"holds now (train_hash {want} vs {comp.train_hash}); retrain on "
                        "this file")
    return comp


def _aligned(m: Member, comp: Competition) -> Member:
    """The member's OOF columns in the competition's class order."""
    if m.classes == list(comp.classes):
        return m
    if sorted(m.classes) != sorted(comp.classes):
        raise CompError(f"{m.path}: classes {m.classes} differ from the competition's "
                        f"{list(comp.classes)}")
    idx = [m.classes.index(c) for c in comp.classes]
    return dataclasses.replace(m, oof=m.oof[:, idx], classes=list(comp.classes))


def _thresholds(record: dict[str, Any], comp: Competition) -> np.ndarray | None:
    """A multi-label source's (L,) thresholds (cv.json or manifest "thresholds"), else 0.5."""
    if not comp.multilabel:
        return None
    got = record.get("thresholds")
    if isinstance(got, dict) and all(c in got for c in comp.classes):
        return np.array([float(got[c]) for c in comp.classes])
    return np.full(len(comp.classes), 0.5)


def _cleanlab_scores(comp: Competition, oof: np.ndarray, covered: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's (n,) label quality and (n,) issue mask for the covered rows."""
    if not len(oof):
        raise CompError("labels: no training row has OOF probabilities")
    y = np.asarray(comp.labels)[covered]
    try:
        if comp.multilabel:
            from cleanlab.multilabel_classification import filter as mfilter
            from cleanlab.multilabel_classification import rank as mrank

            sets = [np.flatnonzero(row).tolist() for row in y]
            quality = mrank.get_label_quality_scores(sets, oof)
            issue = mfilter.find_label_issues(sets, oof, n_jobs=1)
        else:
            from cleanlab.filter import find_label_issues as cl_find
            from cleanlab.rank import get_label_quality_scores

            p = oof / oof.sum(1, keepdims=True)
            quality = get_label_quality_scores(y, p)
            issue = cl_find(y, p, n_jobs=1)
    except (ValueError, TypeError, IndexError) as e:
        raise CompError(f"labels: cleanlab could not score the OOF probabilities: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return np.asarray(quality, dtype=np.float64), np.asarray(issue, dtype=bool)


def _decided(comp: Competition, oof: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
    """(n,) argmax, or (n, L) 0/1 at the thresholds; rows of NaN give -1 / all -1."""
    nan = np.isnan(oof).any(axis=1)
    if comp.multilabel:
        t = thresholds if thresholds is not None else np.full(oof.shape[1], 0.5)
        d = (np.nan_to_num(oof, nan=-1.0) >= t[None, :]).astype(np.int64)
        d[nan] = -1
        return d
    d = np.nan_to_num(oof, nan=0.0).argmax(1)
    d[nan] = -1
    return d


def _disagreement(comp: Competition, members: list[Member]) -> tuple[np.ndarray, np.ndarray]:
    """(n,) members whose OOF prediction differs from the given label, (n,) members with an
    OOF prediction for the row."""
    n = len(comp.train_ids)
    differ, voting = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    y = np.asarray(comp.labels)
    for m in members:
        d = _decided(comp, m.oof, _thresholds(m.cv, comp))
        has = (d >= 0).all(axis=1) if d.ndim == 2 else d >= 0
        diff = (d != y).any(axis=1) if d.ndim == 2 else d != y
        voting += has
        differ += has & diff
    return differ, voting


def _suggested(comp: Competition, oof: np.ndarray, thresholds: np.ndarray | None
               ) -> list[str]:
    """Each row's OOF decision as label text ("" for rows without OOF)."""
    d = _decided(comp, oof, thresholds)
    if comp.multilabel:
        return [comp.label_sep.join(c for c, x in zip(comp.classes, row) if x == 1)
                if row[0] >= 0 else "" for row in d]
    return [comp.classes[int(j)] if j >= 0 else "" for j in d]


def _label_text(comp: Competition, i: int) -> str:
    """Row i's given label as text (multi-label: its labels joined by the separator)."""
    y = comp.labels[i]
    if comp.multilabel:
        return comp.label_sep.join(c for c, x in zip(comp.classes, y) if x)
    return comp.classes[int(y)]


def _per_class(comp: Competition, issue: np.ndarray, suggested: list[str]) -> dict[str, int]:
    """Flagged rows by given label; multi-label: flagged rows whose decision on each label
    differs from the given one."""
    if not comp.multilabel:
        counts = np.bincount(np.asarray(comp.labels)[issue], minlength=len(comp.classes))
        return dict(zip(comp.classes, counts.tolist()))
    out = {}
    for j, c in enumerate(comp.classes):
        out[c] = sum(1 for i in np.flatnonzero(issue)
                     if (c in suggested[i].split(comp.label_sep)) != bool(comp.labels[i][j]))
    return out


# ---------------------------------------------------------------------------------------------
# apply


def apply_corrections(reviewed: str | Path, out: str | Path | None = None,
                      data: str | Path | None = None) -> tuple[Path, Path, int]:
    """Write a corrected copy of the train file from a reviewed label_issues.csv.

    Args:
        reviewed: a copy of label_issues.csv (columns id and corrected_label at least; a blank
            corrected_label keeps the row's label; a `label` column, when present, must still
            match the train file).
        out: a folder (the corrected file gets the default name in it) or a file path (with
            the train file's extension); default `<train stem>.corrected<ext>` beside the
            train file. The original train file is never written.
        data: the competition folder; default the one the sidecar label_issues.json (beside
            the reviewed file) records.

    Returns:
        (corrected train file, change log .json, number of labels changed).
    """
    reviewed = Path(reviewed)
    cfg = _apply_data_config(reviewed, data)
    comp = load_competition(dataclasses.replace(cfg, extra=""))
    changes = _read_reviewed(reviewed, comp)
    train = comp.train_path
    target = _corrected_path(train, out)
    raw = train.read_bytes()
    text, enc = detect_encoding(raw, train, cfg.encoding)
    kind = sniff_format(train, text, cfg.format)
    table = read_table(train, cfg.format, cfg.encoding)
    ids = read_ids(table, cfg.id_col, "train-", required=False)
    index = {i: k for k, i in enumerate(ids)}
    new_by_row = {index[c["id"]]: c["new"] for c in changes}
    body = _rewrite(table, text, kind, cfg, comp, new_by_row)
    with atomic_path(target) as tmp:
        tmp.write_text(body, encoding=enc)
    log_path = target.with_name(target.stem + ".log.json")
    write_json(log_path, {"train": str(train), "corrected": str(target),
                          "reviewed": str(reviewed), "changed": len(changes),
                          "changes": [{"id": c["id"], "old": c["old"], "new": c["new"]}
                                      for c in changes]})
    hint = (f"; train on it with --set data.train={target.name}"
            if target.parent.resolve() == train.parent.resolve() else "")
    log(f"labels: {len(changes)} label(s) changed -> {target} (log {log_path}){hint}")
    return target, log_path, len(changes)


def _apply_data_config(reviewed: Path, data: str | Path | None) -> DataConfig:
    """--data's folder settings, else the [data] table the sidecar of `labels find` records."""
    if data:
        from comp.data.settings import folder_data_config

        return folder_data_config(data)
    for side in (reviewed.with_suffix(".json"), reviewed.with_name("label_issues.json")):
        if side.is_file():
            rec = read_json(side)
            if isinstance(rec, dict) and isinstance(rec.get("data"), dict):
                try:
                    return from_dict(DataConfig, rec["data"], "data")
                except CompError as e:
                    raise CompError(f"{side}: 'data': {e}") from None
    raise CompError(f"{reviewed}: no label_issues.json beside it names the competition; pass "
                    "--data DIR")


def _read_reviewed(path: Path, comp: Competition) -> list[dict[str, Any]]:
    """The changes a reviewed file asks for: [{id, old, new}] in its row order."""
    table: Table = read_table(path)
    table.require(["id", "corrected_label"])
    where = {i: k for k, i in enumerate(comp.train_ids)}
    seen: dict[str, int] = {}
    changes = []
    for row, n in zip(table.rows, table.row_numbers):
        rid = (row.get("id") or "").strip()
        if rid not in where:
            raise CompError(f"{path}: row {n}: column 'id': unknown id '{rid}' (not in "
                            f"{comp.train_path.name})")
        if rid in seen:
            raise CompError(f"{path}: row {n}: column 'id': duplicate id '{rid}' (first at "
                            f"row {seen[rid]})")
        seen[rid] = n
        i = where[rid]
        old = _label_text(comp, i)
        if "label" in table.columns and row.get("label") is not None and \
                _norm_label(comp, row["label"]) != _norm_label(comp, old):
            raise CompError(f"{path}: row {n}: column 'label': '{row['label'].strip()}' but "
                            f"{comp.train_path.name} has '{old}' for id '{rid}' (the train "
                            "file changed since `comp labels find`?)")
        new = (row.get("corrected_label") or "").strip()
        if not new:
            continue
        new = _norm_label(comp, new)
        bad = [t for t in (new.split(comp.label_sep) if comp.multilabel else [new])
               if t not in comp.classes]
        if bad:
            raise CompError(f"{path}: row {n}: column 'corrected_label': '{bad[0]}' is not "
                            f"{'a label' if comp.multilabel else 'a class'} of "
                            f"{comp.train_path.name} ({', '.join(comp.classes)})")
        if new != _norm_label(comp, old):
            changes.append({"id": rid, "old": old, "new": new, "row": i})
    return changes


def _norm_label(comp: Competition, text: str) -> str:
    """A label cell as comparable text: stripped; multi-label: the set in class order."""
    text = text.strip()
    if not comp.multilabel:
        return text
    got = {t.strip() for t in text.split(comp.label_sep) if t.strip()}
    return comp.label_sep.join([c for c in comp.classes if c in got]
                               + sorted(got - set(comp.classes)))


def _corrected_path(train: Path, out: str | Path | None) -> Path:
    """Where the corrected train file goes (never the train file itself)."""
    name = f"{train.stem}.corrected{train.suffix}"
    if out is None:
        target = train.with_name(name)
    else:
        o = Path(out)
        target = o / name if o.is_dir() or str(out).endswith(("/", "\\")) else o
        if target.suffix.lower() != train.suffix.lower():
            raise CompError(f"--out {out}: the corrected file keeps the train file's "
                            f"extension ({train.suffix}), got '{target.name}'")
    if target.exists() and target.resolve() == train.resolve():
        raise CompError(f"--out {out}: that is the train file itself; the original is never "
                        "overwritten")
    return target


def _typed(new: str, old: Any) -> Any:
    """A JSON value for a new label: a number where the old value was one and new is one."""
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        try:
            f = float(new)
        except ValueError:
            return new
        return int(f) if f.is_integer() else f
    return new


def _set_label(rec: dict[str, Any], cfg: DataConfig, comp: Competition, new: str,
               as_json: bool) -> None:
    """Write a new label (text) into one record: the label column, or 0/1 label columns."""
    if comp.multilabel and not cfg.label_sep:
        got = set(new.split(comp.label_sep)) if new else set()
        for c in comp.classes:
            v = "1" if c in got else "0"
            rec[c] = _typed(v, rec.get(c)) if as_json else v
        return
    rec[cfg.label_col] = _typed(new, rec.get(cfg.label_col)) if as_json else new


def _rewrite(table: Table, text: str, kind: str, cfg: DataConfig, comp: Competition,
             new_by_row: dict[int, str]) -> str:
    """The train file's text with the new labels in, in its own format."""
    if kind in ("csv", "tsv"):
        nl = "\r\n" if "\r\n" in text[:10000] else "\n"
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t" if kind == "tsv" else ",", lineterminator=nl)
        w.writerow(table.columns)
        for k, row in enumerate(table.rows):
            row = dict(row)
            if k in new_by_row:
                _set_label(row, cfg, comp, new_by_row[k], as_json=False)
            w.writerow(["" if row.get(c) is None else row[c] for c in table.columns])
        return buf.getvalue()
    if text.lstrip().startswith("["):  # a JSON array of records
        records = json.loads(text.lstrip())
        for k, n in enumerate(table.row_numbers):
            if k in new_by_row:
                _set_label(records[n - 1], cfg, comp, new_by_row[k], as_json=True)
        return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"
    lines = text.splitlines()
    for k, n in enumerate(table.row_numbers):  # JSON lines: only the changed lines are rewritten
        if k in new_by_row:
            rec = json.loads(lines[n - 1])
            _set_label(rec, cfg, comp, new_by_row[k], as_json=True)
            lines[n - 1] = json.dumps(rec, ensure_ascii=False)
    return "\n".join(lines) + ("\n" if text.endswith(("\n", "\r")) else "")
