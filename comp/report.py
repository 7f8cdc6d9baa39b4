"""One self-contained HTML page about members and ensembles (images embedded as PNG data URIs).

Everything is read from files other steps already wrote: runs/<member>/{cv,classes}.json and
oof.npy, submissions/*.json manifests and *.csv, runs/tune/**/*.png, data_dir/answers.csv,
the label_issues.csv of `comp labels find` and check/check.json of `comp check` beside the page
(or in its <competition>/). A section whose inputs are missing is skipped with a note, so the
report works at every stage.

A pseudo-label round shows up as members named `<base>_pl` (retrained with pseudo-labels) and
ensembles that include them; the report pairs each with what it had before the round, and says
whether their CV is honest (every fold trained on its own per-fold pseudo-labels) or optimistic.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from comp.blend.ensemble import (
    Member,
    leaderboard_rows,
    member_data_config,
    read_member,
    sort_rows,
)
from comp.core.utils import CompError, log, read_json, write_text

MAX_IMAGE_BYTES = 3_000_000  # tuning plots larger than this are linked, not embedded

CSS = """
body { font-family: -apple-system, "Segoe UI", "Noto Sans CJK SC", sans-serif; margin: 2em;
       color: #222; max-width: 1100px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
tr.ens td { background: #f3f8ff; }
.note { color: #777; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.3em 0; }
"""


# ---------------------------------------------------------------------------------------------
# small helpers


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) else _esc(v)


def _table(header: list[str], rows: list[list[Any]], left: int = 1,
           row_class: list[str] | None = None) -> str:
    """An HTML table; the first `left` columns are left-aligned (names)."""
    def cell(tag: str, j: int, v: Any) -> str:
        cls = ' class="l"' if j < left else ""
        return f"<{tag}{cls}>{v}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell("th", j, _esc(h)) for j, h in enumerate(header))
           + "</tr>"]
    for i, r in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        out.append(f"<tr{cls}>" + "".join(cell("td", j, v) for j, v in enumerate(r)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _png(fig: Any) -> str:
    """A matplotlib Figure as an <img> with a base64 PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return _img_tag(buf.getvalue())


def _img_tag(png: bytes, alt: str = "") -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'


def _figure(w: float, h: float) -> Any:
    # Figure() without pyplot: no global state, no GUI backend, safe in threads and CI.
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "AR PL UMing CN")


def _rc() -> dict[str, Any]:
    """Put an installed CJK font first so Chinese class names render (glyph fallback)."""
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [f for f in CJK_FONTS if f in have]
    return {"font.sans-serif": cjk + ["DejaVu Sans"], "axes.unicode_minus": False} if cjk else {}


def _tick_labels(names: list[str]) -> list[str]:
    """Names for axis ticks: `#k` stands in for non-ASCII names when no CJK font exists."""
    if _rc() or all(n.isascii() for n in names):
        return list(names)
    return [f"#{k}" for k in range(len(names))]


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


# ---------------------------------------------------------------------------------------------
# sections


def _leaderboard(rows: list[dict[str, Any]], hidden: dict[str, dict]) -> str:
    if not rows:
        return _note("no members or submissions with a CV yet")
    n_folds = max((len(r["fold_scores"]) for r in rows), default=0)
    header = ["name", "kind", "metric", "cv", "mean ± std"] + [f"fold {k}" for k in
                                                                range(n_folds)]
    # hidden in each row's own metric (a multi-label row: micro-F1 beside its OOF micro-F1)
    header += ["in-sample"] + (["hidden", "hidden acc"] if hidden else []) + ["note"]
    body, classes = [], []
    for r in rows:
        fs = [float(x) for x in r["fold_scores"]]
        ms = f"{np.mean(fs):.4f} ± {np.std(fs):.4f}" if fs else "-"
        line = [_esc(r["name"]), _esc(r["kind"]), _esc(r["metric"]), _fmt(r["cv"]), ms]
        line += [_fmt(fs[k]) if k < len(fs) else "" for k in range(n_folds)]
        line.append(_fmt(r["in_sample"]) if r["in_sample"] is not None else "")
        if hidden:
            h = hidden.get(str(r["manifest"].get("csv", "")) if "manifest" in r
                           else r["source"], {})
            line += [_fmt(h.get(r["metric"])), _fmt(h.get("accuracy"))]
        note = "; ".join(x for x in (r.get("note", ""), pair_note(r.get("source"))) if x)
        line.append(_esc(note))  # tuned on which folds, folds covered, a pair member's sides
        body.append(line)
        classes.append("ens" if "manifest" in r else "")
    return _table(header, body, left=3, row_class=classes)


def pair_note(run_dir: str | Path | None) -> str:
    """How a pair-task member reads its two sides, from its recipe.toml ('' for other tasks).

    Args:
        run_dir: a member directory (an ensemble row has none).

    Returns:
        e.g. "pair siamese: one encoder per side, [u, v, |u - v|, u * v]; char vectors".
    """
    f = Path(run_dir) / "recipe.toml" if run_dir else None
    if f is None or not f.is_file():
        return ""
    try:
        from comp.config.schema import read_toml

        r = read_toml(f)
    except (CompError, OSError):
        return ""
    if r.get("data", {}).get("task") != "pair":
        return ""
    if r.get("kind") == "linear":
        return ("pair: TF-IDF of each side, |a - b|, a * b, char/word overlaps"
                if r.get("linear", {}).get("pair") else "pair: TF-IDF of the joined sides")
    m, t = r.get("model", {}), r.get("train", {})
    feeds = [b.get("path", "?").rsplit("/", 1)[-1] for b in m.get("backbones", [])]
    feeds += [f"{v} vectors" for v in m.get("vectors", [])]
    how = ("siamese: one encoder per side, [u, v, |u - v|, u * v]" if m.get("pair") == "siamese"
           else "joint: grid a + b with a segment feature, backbones encode (a, b) as a pair")
    extra = [x for x, on in (("swap-trained", t.get("pair_swap")),
                             ("(a, b)/(b, a) averaged", m.get("pair_tta"))) if on]
    return f"pair {how}; {' + '.join(feeds)}" + (f"; {', '.join(extra)}" if extra else "")


def _fold_plot(rows: list[dict[str, Any]]) -> str:
    rows = [r for r in rows if r["fold_scores"]][:40]
    if not rows:
        return ""
    fig = _figure(7, 0.35 * len(rows) + 1.2)
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        fs = np.asarray(r["fold_scores"], dtype=float)
        ax.scatter(fs, np.full(len(fs), i), s=14, color="#999", zorder=2)
        ax.errorbar([fs.mean()], [i], xerr=[fs.std()], fmt="o",
                    color="#1f77b4" if "manifest" in r else "#d62728", zorder=3)
    ax.set_yticks(range(len(rows)), [str(r["name"]) for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"fold score ({rows[0]['metric']}); dot = mean ± std; grey = folds")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _load_comparable(run_dirs: list[Path]) -> tuple[list[Member], list[str]]:
    """Members that share rows and classes with the largest group; notes for the rest."""
    members, notes = [], []
    for d in run_dirs:
        try:
            members.append(read_member(d))
        except CompError as e:
            notes.append(f"skipped: {e}")
    if not members:
        return [], notes
    key = Counter((m.oof.shape[0], tuple(m.classes), m.cv.get("folds_hash"))
                  for m in members).most_common(1)[0][0]
    keep = [m for m in members if (m.oof.shape[0], tuple(m.classes),
                                   m.cv.get("folds_hash")) == key]
    notes += [f"{m.path}: other rows/classes/fold table than the majority; not compared"
              for m in members if m not in keep]
    return keep, notes


def _correlation(members: list[Member]) -> str:
    if len(members) < 2:
        return _note("fewer than two comparable members")
    C = members[0].oof.shape[1]
    # members on a subset of folds (data.use_folds) are compared on the rows all of them cover
    rows = ~np.isnan(np.stack([m.oof for m in members])).any(axis=(0, 2))  # (n,)
    # Binary: the positive-class probability; multi-class: every class column, flattened.
    vecs = np.stack([m.oof[rows, 1] if C == 2 else m.oof[rows].ravel()
                     for m in members])  # (M, n*)
    corr = np.corrcoef(vecs)
    corr = np.nan_to_num(corr, nan=0.0)
    M = len(members)
    fig = _figure(0.55 * M + 2.5, 0.5 * M + 1.5)
    ax = fig.add_subplot()
    off = corr[~np.eye(M, dtype=bool)]
    # Members of one competition are usually 0.9+ correlated: stretch the scale to show it.
    lo = float(np.floor(min(off.min(), 0.99) * 20) / 20)
    mid = (lo + 1.0) / 2
    im = ax.imshow(corr, vmin=lo, vmax=1.0, cmap="viridis")
    names = [m.name for m in members]
    ax.set_xticks(range(M), names, rotation=60, ha="right")
    ax.set_yticks(range(M), names)
    if M <= 16:
        nd = 3 if lo >= 0.9 else 2
        for i in range(M):
            for j in range(M):
                ax.text(j, i, f"{corr[i, j]:.{nd}f}", ha="center", va="center", fontsize=7,
                        color="white" if corr[i, j] < mid else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    what = "P(positive class)" if C == 2 else "all class probabilities"
    ax.set_title(f"OOF correlation of {what}")
    preds = np.stack([m.oof[rows].argmax(1) for m in members])  # (M, n)
    dis = (preds[:, None, :] != preds[None, :, :]).mean(-1)  # (M, M)
    body = [[_esc(names[i])] + [_fmt(dis[i, j], 3) for j in range(M)] for i in range(M)]
    return (_png(fig) + "<p>Share of OOF rows where two members predict different classes "
            "(more disagreement between strong members = more to gain from blending):</p>"
            + _table(["member"] + names, body))


def _weights(ens: list[dict[str, Any]]) -> str:
    parts = []
    for man in ens:
        w = man.get("weights") or (man.get("meta_model") or {}).get("member_importance")
        if not w:
            continue
        what = "weights" if man.get("weights") else "meta-model |coef| share per member"
        names = list(w)
        vals = np.array([float(w[k]) for k in names])
        fig = _figure(6, 0.3 * len(names) + 1.2)
        ax = fig.add_subplot()
        ax.barh(range(len(names)), vals, color="#1f77b4")
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(what)
        ax.set_title(f"{man.get('name')} ({man.get('method')}): cv {_fmt(man.get('cv'))}, "
                     f"in-sample {_fmt(man.get('cv_in_sample'))}")
        fw = man.get("fold_weights")
        extra = ""
        if fw:
            body = [[f"fold {k}"] + [_fmt(f.get(n, 0.0), 3) for n in names]
                    for k, f in enumerate(fw)]
            extra = ("<p>Weights fitted on the other folds (the nested CV); unstable weights "
                     "mean the blend is fitting noise:</p>" + _table(["fit"] + names, body))
        parts.append(f"<h3>{_esc(man.get('name'))}</h3>" + _png(fig) + extra)
    return "\n".join(parts) or _note("no ensemble manifests with weights")


def _best_oof(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], np.ndarray, list[str]] | None:
    """The best-CV row whose OOF probabilities are on disk, with its classes."""
    if not rows:
        return None
    metric = Counter(r["metric"] for r in rows).most_common(1)[0][0]
    for r in sort_rows([r for r in rows if r["metric"] == metric]):
        man = r.get("manifest")
        if man:
            run_dir = Path(man.get("run_dir", "")) if man.get("run_dir") else None
            oof = Path(man["oof"]) if man.get("oof") else None
            classes = man.get("classes")
        else:
            run_dir = Path(r["source"])
            oof, classes = run_dir / "oof.npy", None
        if oof is None or not oof.exists():
            continue
        if classes is None and run_dir is not None and (run_dir / "classes.json").exists():
            classes = read_json(run_dir / "classes.json")
        if classes is None:
            continue
        return r, np.load(oof), [str(c) for c in classes]
    return None


def _confusion(best: tuple[dict[str, Any], np.ndarray, list[str]], comp: Any) -> str:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    r, oof, classes = best
    if oof.shape[0] != len(comp.labels):
        return _note(f"{r['name']}: {oof.shape[0]} OOF rows but the data has "
                     f"{len(comp.labels)}; no confusion matrix")
    idx = {c: i for i, c in enumerate(classes)}
    try:
        y = np.array([idx[str(comp.classes[k])] for k in comp.labels])
    except KeyError as e:
        return _note(f"{r['name']}: class {e} not in its classes.json; no confusion matrix")
    rows = ~np.isnan(oof).any(1)  # an ensemble over a subset of folds covers those rows
    y, pred = y[rows], oof[rows].argmax(1)
    C = len(classes)
    cm = confusion_matrix(y, pred, labels=np.arange(C))
    p, rc, f1, sup = precision_recall_fscore_support(y, pred, labels=np.arange(C),
                                                     zero_division=0)
    fig = _figure(0.6 * C + 2.5, 0.55 * C + 2)
    ax = fig.add_subplot()
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = _tick_labels(classes)
    ax.set_xticks(range(C), ticks, rotation=45, ha="right")
    ax.set_yticks(range(C), ticks)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if C <= 20:
        for i in range(C):
            for j in range(C):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.6 else "black")
    ax.set_title(f"{r['name']}: OOF confusion (rows normalised for colour)")
    names = [c if t == c else f"{t} {c}" for t, c in zip(ticks, classes)]
    body = [[_esc(names[k]), _fmt(p[k]), _fmt(rc[k]), _fmt(f1[k]), str(int(sup[k]))]
            for k in range(C)]
    body.append(["<b>macro</b>", _fmt(p.mean()), _fmt(rc.mean()), _fmt(f1.mean()),
                 str(int(sup.sum()))])
    return (f"<p>Best by CV: <b>{_esc(r['name'])}</b> ({_esc(r['metric'])} "
            f"{_fmt(r['cv'])}), out-of-fold predictions.</p>" + _png(fig)
            + _table(["class", "precision", "recall", "F1", "support"], body))


def _per_label(best: tuple[dict[str, Any], np.ndarray, list[str]], comp: Any) -> str:
    """A multi-label member or ensemble: per-label precision/recall/F1 of its OOF cut at its
    thresholds (cv.json / manifest), and the thresholds, instead of a confusion matrix."""
    from sklearn.metrics import precision_recall_fscore_support

    r, oof, classes = best
    if oof.shape != comp.labels.shape or list(classes) != list(comp.classes):
        return _note(f"{r['name']}: OOF of shape {oof.shape} does not match the labels "
                     f"{comp.labels.shape}; no per-label table")
    src = r.get("manifest") or _read_cv(Path(r["source"]))
    by_label = src.get("thresholds") or {}
    t = np.array([float(by_label.get(c, 0.5)) for c in classes])
    rows = ~np.isnan(oof).any(1)
    y, pred = comp.labels[rows], (oof[rows] >= t).astype(int)
    p, rc, f1, sup = precision_recall_fscore_support(y, pred, zero_division=0)
    body = [[_esc(c), _fmt(t[k], 3), _fmt(p[k]), _fmt(rc[k]), _fmt(f1[k]), str(int(sup[k]))]
            for k, c in enumerate(classes)]
    return (f"<p>Best by CV: <b>{_esc(r['name'])}</b> ({_esc(r['metric'])} {_fmt(r['cv'])}, "
            "nested thresholds). Out-of-fold predictions cut at the thresholds fitted on every "
            "OOF row (the ones the test rows get), so this table is in-sample for the cut:</p>"
            + _table(["label", "threshold", "precision", "recall", "F1", "positives"], body))


def _read_cv(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "cv.json"
    return read_json(p) if p.exists() else {}


def multilabel_member_hidden(sources: list[str], comp: Any, answers: Path) -> dict[str, dict]:
    """member_hidden of a multi-label task: each member's test.npy cut at its cv.json
    thresholds, scored with the multi-label metrics against answers.csv (id + 0/1 columns)."""
    from comp.blend.submit import multilabel_answers
    from comp.core.metrics import METRICS, multilabel_metric_names, score

    got = multilabel_answers(answers)
    if got is None or list(got[1]) != list(comp.classes):
        return {}
    pos = {i: k for k, i in enumerate(comp.test_ids)}
    keep = [pos[i] for i in got[0] if i in pos]
    y = got[2][[k for k, i in enumerate(got[0]) if i in pos]]
    out = {}
    for src in sources:
        d = Path(src)
        if not (d / "test.npy").exists():
            continue
        test = np.load(d / "test.npy")
        if test.shape != (len(comp.test_ids), len(comp.classes)):
            continue
        by_label = _read_cv(d).get("thresholds") or {}
        t = np.array([float(by_label.get(c, 0.5)) for c in comp.classes])
        pred = (test[keep] >= t).astype(float)
        out[str(src)] = {m: score(m, y, pred) for m in multilabel_metric_names()
                         if METRICS[m].on_labels} | {"n": len(keep)}
    return out


def _series(obj: Any) -> dict[str, dict[str, list[float]]]:
    """epochs.json -> {group (fold): {metric: values}}; tolerant of list- or dict-shaped logs."""
    out: dict[str, dict[str, list[float]]] = {}
    if isinstance(obj, dict) and "epochs" in obj:
        obj = obj["epochs"]
    if isinstance(obj, list):
        for rec in obj:
            if not isinstance(rec, dict):
                continue
            g = str(rec.get("fold", "all"))
            for k, v in rec.items():
                if k not in ("fold", "epoch", "step", "phase") and isinstance(v, (int, float)) \
                        and not isinstance(v, bool):
                    out.setdefault(g, {}).setdefault(k, []).append(float(v))
    elif isinstance(obj, dict):
        for g, v in obj.items():
            sub = _series(v)
            if sub:
                out[str(g)] = next(iter(sub.values())) if len(sub) == 1 else {
                    f"{a}/{b}": vals for a, d in sub.items() for b, vals in d.items()}
            elif isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
                out.setdefault("all", {})[str(g)] = [float(x) for x in v]
    return out


def _curves(run_dirs: list[Path]) -> str:
    parts = []
    for d in run_dirs:
        p = d / "epochs.json"
        if not p.exists():
            continue
        try:
            series = _series(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
        keys = sorted({k for s in series.values() for k in s})[:6]
        if not keys:
            continue
        fig = _figure(3.2 * len(keys), 2.6)
        for j, k in enumerate(keys):
            ax = fig.add_subplot(1, len(keys), j + 1)
            for g, s in series.items():
                if k in s:
                    ax.plot(range(1, len(s[k]) + 1), s[k], marker=".", label=f"fold {g}")
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("epoch")
        fig.axes[0].legend(fontsize=7)
        fig.suptitle(d.name, y=1.04)
        parts.append(_png(fig))
    return "\n".join(parts)


def _tuning_images(run_dirs: list[Path]) -> str:
    roots = {d.parent for d in run_dirs}
    found: list[Path] = []
    for root in sorted(roots):
        for sub in ("tune", "optuna"):
            found += sorted((root / sub).rglob("*.png")) if (root / sub).is_dir() else []
    for d in run_dirs:
        found += sorted(d.glob("*.png"))
    parts = []
    for p in dict.fromkeys(found):
        data = p.read_bytes()
        if len(data) > MAX_IMAGE_BYTES:
            parts.append(_note(f"{p}: too large to embed ({len(data)} bytes)"))
            continue
        parts.append(f"<h3>{_esc(p)}</h3>" + _img_tag(data, alt=str(p)))
    return "\n".join(parts)


def _hidden_scores(submissions_dir: Path, answers: Path) -> dict[str, dict]:
    from comp.blend.submit import score_submission

    out = {}
    for csv_path in sorted(submissions_dir.glob("*.csv")):
        if not csv_path.with_suffix(".json").exists():
            continue  # not a submission of `comp ensemble` (e.g. a pseudo-label file)
        try:
            out[str(csv_path)] = score_submission(csv_path, answers)
        except CompError as e:
            log(f"report: {e}")
    return out


def member_hidden(sources: list[str], comp: Any, answers: Path) -> dict[str, dict]:
    """Hidden scores of member run dirs straight from their test.npy (no CSV needed), keyed by
    the source string given; dirs without a test.npy of this competition's shape are left out."""
    from comp.blend.submit import label_scores
    from comp.data.readers import read_answers

    if getattr(comp, "multilabel", False):
        return multilabel_member_hidden(sources, comp, answers)
    ans = read_answers(answers)
    keep = [k for k, i in enumerate(comp.test_ids) if i in ans]
    if not keep:
        return {}
    truth = [ans[comp.test_ids[k]] for k in keep]
    out = {}
    for src in sources:
        d = Path(src)
        if not (d / "test.npy").exists() or not (d / "classes.json").exists():
            continue
        test = np.load(d / "test.npy")
        classes = [str(c) for c in read_json(d / "classes.json")]
        if test.shape != (len(comp.test_ids), len(classes)):
            continue
        out[str(src)] = label_scores(truth, [classes[j] for j in test[keep].argmax(1)])
    return out


PL_SUFFIX = "_pl"


def _delta(before: Any, after: Any) -> str:
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return "-"
    return f"{after - before:+.4f}"


def _ensemble_pairs(ens: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(before, after) manifests: an ensemble with `_pl` members and the same method's ensemble
    of the members it had before the round (the `_pl` ones removed or swapped for their base)."""
    pairs = []
    for after in ens:
        names = list(after.get("member_names") or [])
        pl = [n for n in names if n.endswith(PL_SUFFIX)]
        if not pl:
            continue
        without = sorted(n for n in names if not n.endswith(PL_SUFFIX))
        swapped = sorted({n[: -len(PL_SUFFIX)] if n.endswith(PL_SUFFIX) else n for n in names})
        for before in ens:
            b_names = sorted(before.get("member_names") or [])
            if (before is not after and before.get("method") == after.get("method")
                    and not any(n.endswith(PL_SUFFIX) for n in b_names)
                    and b_names in (without, swapped)):
                pairs.append((before, after))
                break
    return pairs


def _pseudo_section(rows: list[dict[str, Any]], ens: list[dict[str, Any]],
                    hidden: dict[str, dict]) -> str:
    """Each `_pl` member next to its base member, each ensemble with them next to its base
    ensemble: CV and (when answers exist) hidden accuracy before and after the round, and
    whether each member's pseudo-labels were per fold (then its CV is honest)."""
    members = {str(r["name"]): r for r in rows if "manifest" not in r}
    parts = []
    body = []
    pl, global_pl = [], []
    for name, after in sorted(members.items()):
        base = members.get(name[: -len(PL_SUFFIX)]) if name.endswith(PL_SUFFIX) else None
        if base is None:
            continue
        hb, ha = hidden.get(base["source"], {}), hidden.get(after["source"], {})
        n_rows, per_fold = _pseudo_info(Path(after["source"]))
        pl.append(name)
        if not per_fold:
            global_pl.append(name)
        body.append([_esc(base["name"]), _esc(name), _fmt(base["cv"]), _fmt(after["cv"]),
                     _delta(base["cv"], after["cv"]), _fmt(hb.get("accuracy")),
                     _fmt(ha.get("accuracy")), _delta(hb.get("accuracy"), ha.get("accuracy")),
                     str(n_rows) if n_rows is not None else "-", "yes" if per_fold else "no"])
    if body:
        parts.append("<p>Members retrained with pseudo-labels (rows joined the training part of "
                     "their fold, or of every fold, minus those duplicating a validation "
                     "text):</p>"
                     + _table(["member", "with pseudo-labels", "CV before", "CV after", "Δ CV",
                               "hidden acc before", "hidden acc after", "Δ hidden",
                               "pseudo rows", "per fold"], body, left=2))
    body = []
    for before, after in _ensemble_pairs(ens):
        hb = hidden.get(str(before.get("csv", "")), {})
        ha = hidden.get(str(after.get("csv", "")), {})
        body.append([_esc(before.get("method")), _esc(before.get("name")),
                     _esc(after.get("name")), _fmt(before.get("cv")), _fmt(after.get("cv")),
                     _delta(before.get("cv"), after.get("cv")), _fmt(hb.get("accuracy")),
                     _fmt(ha.get("accuracy")), _delta(hb.get("accuracy"), ha.get("accuracy"))])
    if body:
        parts.append("<p>Ensembles before the round and with the pseudo-labelled members:</p>"
                     + _table(["method", "before", "after", "CV before", "CV after", "Δ CV",
                               "hidden acc before", "hidden acc after", "Δ hidden"], body,
                              left=3))
    if not parts:
        return ""
    if pl and not global_pl:
        note = ("Every member above trained with per-fold pseudo-labels: fold k's rows were "
                "labelled only by models that never saw fold k's validation labels, so CV after "
                "the round is honest, for the members and for the ensembles of them.")
    else:
        which = f" ({', '.join(global_pl)})" if 0 < len(global_pl) < len(pl) else ""
        note = (f"CV after the round can flatter it{which}: the same pseudo-labels served every "
                "fold, and they came from models that saw every fold's labels. Where answers "
                "exist, the hidden score is the fair comparison; pseudo-labels made by "
                "comp pseudo from an ensemble with per-fold predictions keep CV honest.")
    return "\n".join(parts) + _note(note)


def _label_issues(path: Path, comp: Any, top: int = 20) -> str:
    """The rows `comp labels find` flagged, most suspect first, when its CSV sits beside the
    report ("" when there is none)."""
    if not path.is_file():
        return ""
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    side = path.with_suffix(".json")
    meta = read_json(side) if side.is_file() else {}
    flagged = [r for r in rows if r.get("is_issue") == "1"]
    body = [[_esc(r.get("rank", "")), _esc(r.get("id", "")),
             _esc((t := r.get("text", ""))[:60] + ("…" if len(t) > 60 else "")),
             _esc(r.get("label", "")), _esc(r.get("suggested_label", "")),
             _esc(r.get("label_quality", "")), _esc(r.get("members_disagree", "")),
             _esc(r.get("knn_agreement", ""))]
            for r in flagged[:top]]
    per_class = meta.get("issues_per_class") or dict(Counter(r.get("label", "")
                                                             for r in flagged))
    what = (f"{len(flagged)} of {len(rows)} training rows flagged by cleanlab on the OOF of "
            f"{meta.get('kind', '')} {meta.get('name', '')}; per class: "
            + ", ".join(f"{k} {v}" for k, v in per_class.items()))
    stale = comp is not None and meta.get("train_hash") not in (None, comp.train_hash)
    return (_note(what) + _table(["rank", "id", "text", "label", "suggested", "quality",
                                  "members disagree", "k-NN agree"], body, left=3)
            + _note(f"{path}: the top {min(top, len(flagged))}; review them there "
                    "(column corrected_label) and run `comp labels apply`.")
            + (_note("made from other train rows than the competition's now: run comp labels "
                     "find again") if stale else ""))


def _pseudo_info(run_dir: Path) -> tuple[int | None, bool]:
    """(pseudo rows a `_pl` member trained with (the largest fold's count), whether every fold
    had its own per-fold rows), from cv.json."""
    try:
        cv = read_json(run_dir / "cv.json")
    except (OSError, ValueError):
        return None, False
    try:
        n = int(cv.get("extra_rows"))
    except (ValueError, TypeError):
        n = None
    return n, cv.get("extra_per_fold") is True


# ---------------------------------------------------------------------------------------------
# the page


def _behaviour(path: Path, top: int = 2) -> str:
    """`comp check`'s check.json as a bar per test (failure rate, 95 % interval) and each
    failing test's worst examples ("" when there is none)."""
    if not path.is_file():
        return ""
    report = read_json(path)
    tests = [t for t in report.get("tests", []) if t.get("rate") is not None]
    if not tests:
        return _note(f"{path}: no test applied to any text")
    fig = _figure(7, 0.3 * len(tests) + 1)
    ax = fig.add_subplot()
    names = [f"{t['kind']} {t['name']}" for t in tests]
    rates = [t["rate"] for t in tests]
    err = [[r - t["ci_low"] for r, t in zip(rates, tests)],
           [t["ci_high"] - r for r, t in zip(rates, tests)]]
    ax.barh(range(len(tests)), rates, xerr=err, color="#4c72b0", capsize=2)
    ax.set_yticks(range(len(tests)), names)
    ax.invert_yaxis()
    ax.set_xlabel("failure rate (95 % interval)")
    ax.grid(axis="x", alpha=0.3)
    bars = _png(fig)
    body = [[_esc(t["kind"]), _esc(t["name"]), str(t["n"]), _fmt(t["rate"], 3),
             f"{_fmt(t['ci_low'], 3)}–{_fmt(t['ci_high'], 3)}",
             _fmt(t.get("mean_delta"), 3) if t.get("mean_delta") is not None else ""]
            for t in tests]
    worst = []
    for t in tests:
        for ex in [e for e in t.get("examples", []) if e.get("failed")][:top]:
            worst.append([_esc(t["name"]), _esc(ex["text"][:60]), _esc(ex["prediction"]),
                          _esc(ex.get("perturbed", "")[:60]),
                          _esc(ex.get("perturbed_prediction", ""))])
    return (_note(f"{report.get('source', '')} on {report.get('texts', '')} ({path})") + bars
            + _table(["kind", "test", "texts", "failure rate", "95 % interval",
                      "mean Δp"], body, left=2)
            + (_table(["test", "text", "prediction", "perturbed", "prediction"], worst,
                      left=5) if worst else ""))


def build_report(run_dirs: list[Path], submissions_dir: Path, out: Path,
                 data_cfg: Any | None = None) -> Path:
    """Write one self-contained HTML report about members and ensembles.

    Args:
        run_dirs: member directories (each with cv.json; oof.npy for correlations).
        submissions_dir: holds submission CSVs and their JSON manifests.
        out: the HTML file to write (atomically).
        data_cfg: the competition's DataConfig, for labels (confusion matrix, per-class F1) and
            answers.csv (hidden score); None reads it from a member's recipe.toml when possible.

    Returns:
        The written path.
    """
    run_dirs = [Path(d) for d in run_dirs]
    submissions_dir = Path(submissions_dir)
    rows = sort_rows(leaderboard_rows(run_dirs, submissions_dir))
    ens = [r["manifest"] for r in rows if "manifest" in r]
    notes: list[str] = []

    if data_cfg is None and run_dirs:
        try:
            data_cfg = member_data_config(run_dirs)
        except CompError:
            data_cfg = None
    comp = None
    if data_cfg is not None:
        try:
            from comp.data.competition import load_competition

            comp = load_competition(data_cfg)
        except (CompError, OSError) as e:
            notes.append(f"labels unavailable: {e}")
    data_dir = Path(data_cfg.dir) if data_cfg is not None else None
    if data_dir is None:
        dirs = [m.get("data_dir") for m in ens if m.get("data_dir")]
        data_dir = Path(dirs[0]) if dirs else None
    answers = data_dir / "answers.csv" if data_dir is not None else None
    hidden: dict[str, dict] = {}
    if answers is not None and answers.exists():
        if submissions_dir.is_dir():
            hidden.update(_hidden_scores(submissions_dir, answers))
        if comp is not None:
            hidden.update(member_hidden([r["source"] for r in rows
                                         if "manifest" not in r], comp, answers))

    import matplotlib

    with matplotlib.rc_context(_rc()), warnings.catch_warnings():
        # Without a CJK font, Chinese labels draw as boxes; the page says so once instead.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        sections = _sections(rows, ens, run_dirs, comp, hidden, notes)
    # `comp labels find` writes reports/<competition>/; the embedded run's report is reports/
    near = [Path(out).parent, *([Path(out).parent / data_dir.resolve().name] if data_dir else [])]
    suspects = next((s for s in (_label_issues(d / "label_issues.csv", comp) for d in near) if s),
                    "")
    if suspects:
        sections.append(("Suspect labels (comp labels find)", suspects))
    # `comp check` writes reports/check/ by default (or reports/<competition>/check/)
    behaviour = next((b for b in (_behaviour(d / "check" / "check.json") for d in near) if b),
                     "")
    if behaviour:
        sections.append(("Behaviour (comp check)", behaviour))
    labels = [str(r["name"]) for r in rows] + [str(c) for c in (comp.classes if comp else [])]
    if not _rc() and not all(x.isascii() for x in labels):
        notes.append("no CJK font installed: Chinese labels in the images may show as boxes")
    head = (f"<p>{len([r for r in rows if 'manifest' not in r])} members, {len(ens)} "
            f"ensembles; data: {_esc(data_dir or '?')}; written "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>")
    body = "\n".join(f'<h2 id="s{i}">{_esc(t)}</h2>\n{c}' for i, (t, c) in enumerate(sections))
    toc = " · ".join(f'<a href="#s{i}">{_esc(t)}</a>' for i, (t, _) in enumerate(sections))
    note_html = "".join(_note(n) for n in notes)
    page = (f'<!DOCTYPE html>\n<html lang="zh">\n<head><meta charset="utf-8">'
            f"<title>comp report</title><style>{CSS}</style></head>\n<body>\n"
            f"<h1>comp report</h1>\n{head}\n<p>{toc}</p>\n{note_html}\n{body}\n</body>\n</html>\n")
    out = Path(out)
    write_text(out, page)
    return out


def _sections(rows: list[dict[str, Any]], ens: list[dict[str, Any]], run_dirs: list[Path],
              comp: Any, hidden: dict[str, dict], notes: list[str]) -> list[tuple[str, str]]:
    members, skip_notes = _load_comparable(run_dirs)
    notes += skip_notes
    sec: list[tuple[str, str]] = []
    sec.append(("Leaderboard", _leaderboard(rows, hidden) + _fold_plot(rows)
                + _note("Ensemble CVs are nested (weights/meta-model fitted on the other folds); "
                        "in-sample is the optimistic full-fit score.")))
    sec.append(("OOF correlation", _correlation(members)))
    sec.append(("Ensemble weights", _weights(ens)))
    best = _best_oof(rows)
    if best is not None and comp is not None:
        sec.append(("Best submission: confusion and per-class F1",
                     (_per_label if comp.multilabel else _confusion)(best, comp)))
    else:
        sec.append(("Best submission: confusion and per-class F1",
                    _note("needs OOF probabilities and the competition's labels (--data)")))
    if hidden:
        body = [[_esc(Path(k).name if k.endswith(".csv") else f"{Path(k).name} (test.npy)"),
                 _fmt(v["accuracy"]), _fmt(v["macro_f1"]), str(v["n"])]
                for k, v in sorted(hidden.items(), key=lambda kv: -kv[1]["accuracy"])]
        sec.append(("Hidden score (answers.csv)",
                    _table(["submission", "accuracy", "macro F1", "rows"], body)
                    + _note("Scored against held-out answers: look, but do not select on it.")))
    pseudo = _pseudo_section(rows, ens, hidden)
    if pseudo:
        sec.append(("Pseudo-label round", pseudo))
    curves = _curves(run_dirs)
    if curves:
        sec.append(("Learning curves (epochs.json)", curves))
    tuning = _tuning_images(run_dirs)
    if tuning:
        sec.append(("Tuning", tuning))
    return sec
