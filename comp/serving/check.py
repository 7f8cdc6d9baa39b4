"""`comp check`: behavioural tests of a finished member, ensemble or bundle (CheckList-style).

    comp check MANIFEST|RUN_DIR|--bundle DIR [--texts FILE] [--suite default|FILE.toml]
               [--synonyms FILE.tsv|VECTORS.kv] [--harvest N] [--seed S] [--out reports/check]

INV  a label-preserving perturbation of each tested text (simplified <-> traditional, full- and
     half-width, punctuation, whitespace and emoji noise, a repeated character, Latin case,
     digits, a homophone typo, a synonym). A failure is a changed prediction (multi-label: a
     changed label set); beside it, the mean change of the original's top class probability.
     A perturbation that leaves a text unchanged does not count.
MFT  texts from a template with an expected label; a failure is any other prediction
     (multi-label: the label missing from the predicted set).
DIR  template texts (or, without a template, the tested texts) with a phrase appended or
     prefixed; `expect = "not_up:pos"`: pos's probability must not rise by more than
     `tolerance` (`not_down:` the other way).

Per test: the failure rate with a 95% Wilson interval, the number of texts it applied to, the
mean change of probability and the worst examples. Written to <out>/check.json, check.csv,
check.md (and uncertain.csv with --harvest). Every random choice comes from a random.Random
seeded with (seed, test, text), so a seed gives the same report for the same texts.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
import random
import string
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comp.core.utils import CompError, log, write_json, write_text
from comp.data.perturb import (
    INVARIANCES,
    is_cjk,
    perturb_text,
    read_synonyms,
    text_rng,
)
from comp.tasks.shapes import task_of

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def vector_synonyms(path: str | Path, texts: Sequence[str], cut: float = 0.8, topn: int = 3,
                    max_words: int = 2000) -> list[tuple[str, str]]:
    """Synonym pairs from word vectors (comp vectors --kind word): for the most frequent
    Chinese words (2+ characters) of the texts, their nearest neighbours with cosine >= cut.
    Word2vec neighbours include antonyms (满意 / 失望 share contexts): review the pairs."""
    from collections import Counter

    from comp.nn.vectors import corpus_tokens, load_vectors

    kv = load_vectors(path)
    counts = Counter(w for toks in corpus_tokens(list(texts), "word") for w in toks
                     if len(w) >= 2 and all(map(is_cjk, w)) and w in kv.key_to_index)
    words = sorted(counts, key=lambda w: (-counts[w], w))[:max_words]
    pairs = []
    for w in words:
        for o, sim in kv.most_similar(w, topn=topn):
            if (sim >= cut and len(o) >= 2 and all(map(is_cjk, o)) and o not in w
                    and w not in o):
                pairs.append((w, o))
    return pairs


# ---------------------------------------------------------------------------------------------
# suite files: MFT and DIR templates


@dataclasses.dataclass(frozen=True)
class TemplateTest:
    """An MFT or DIR test read from a suite file."""

    name: str
    kind: str  # MFT | DIR
    key: str  # where it sits in the file, e.g. mft[0]
    templates: tuple[str, ...] = ()  # DIR without templates: the tested texts
    fill: tuple[tuple[str, tuple[str, ...]], ...] = ()
    expect: str = ""  # MFT: a label; DIR: the class whose probability is watched
    direction: str = ""  # DIR: not_up | not_down
    append: str = ""
    prefix: str = ""
    tolerance: float = 0.0

    def texts(self) -> list[str]:
        """The template texts: each template filled with every combination of its fields."""
        fill = dict(self.fill)
        out: list[str] = []
        for t in self.templates:
            fields = sorted({f for _, f, _, _ in string.Formatter().parse(t) if f})
            for combo in itertools.product(*(fill[f] for f in fields)):
                out.append(t.format(**dict(zip(fields, combo))))
        return list(dict.fromkeys(out))


@dataclasses.dataclass(frozen=True)
class Suite:
    """Which INV tests run, the synonym list and the template tests."""

    path: str = ""
    inv: tuple[str, ...] = tuple(INVARIANCES)
    synonyms: str = ""
    templates: tuple[TemplateTest, ...] = ()


_MAX_TEMPLATE_TEXTS = 10_000


def load_suite(path: str | Path) -> Suite:
    """Read a suite file (format: docs/guide.md, `comp check`); a bad key is one line naming
    the file and the key."""
    p = Path(path)
    if not p.is_file():
        raise CompError(f"{p}: suite file not found")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise CompError(f"{p}: invalid TOML: {e}") from None

    def bad(key: str, msg: str) -> CompError:
        return CompError(f"{p}: key '{key}': {msg}")

    unknown = sorted(set(data) - {"inv", "mft", "dir"})
    if unknown:
        raise bad(unknown[0], "unknown key (known: inv, mft, dir)")
    inv = data.get("inv", {})
    if not isinstance(inv, dict):
        raise bad("inv", "must be a table ([inv])")
    extra = sorted(set(inv) - {"tests", "synonyms"})
    if extra:
        raise bad(f"inv.{extra[0]}", "unknown key (known: tests, synonyms)")
    tests = inv.get("tests", list(INVARIANCES))
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        raise bad("inv.tests", "must be a list of test names")
    for t in tests:
        if t not in INVARIANCES:
            raise bad("inv.tests", f"unknown test '{t}' (known: {', '.join(INVARIANCES)})")
    synonyms = inv.get("synonyms", "")
    if not isinstance(synonyms, str):
        raise bad("inv.synonyms", "must be a file name (a string)")
    if synonyms:
        synonyms = str(p.parent / synonyms)
    templates: list[TemplateTest] = []
    names: dict[str, str] = {}
    for kind in ("mft", "dir"):
        items = data.get(kind, [])
        if not isinstance(items, list):
            raise bad(kind, f"must be an array of tables ([[{kind}]])")
        for i, item in enumerate(items):
            t = _template_test(item, kind, f"{kind}[{i}]", bad)
            if t.name in names or t.name in INVARIANCES:
                raise bad(f"{t.key}.name", f"'{t.name}' is already the name of "
                          f"{names.get(t.name, 'a built-in INV test')}")
            names[t.name] = t.key
            templates.append(t)
    return Suite(str(p), tuple(tests), synonyms, tuple(templates))


def _template_test(item: Any, kind: str, key: str, bad) -> TemplateTest:
    if not isinstance(item, dict):
        raise bad(key, "must be a table")
    known = {"name", "template", "fill", "expect"} | (
        {"append", "prefix", "tolerance"} if kind == "dir" else set())
    extra = sorted(set(item) - known)
    if extra:
        raise bad(f"{key}.{extra[0]}", f"unknown key (known: {', '.join(sorted(known))})")
    name = item.get("name", key.replace("[", "").replace("]", ""))
    if not isinstance(name, str) or not name.strip():
        raise bad(f"{key}.name", "must be a non-empty string")
    tpl = item.get("template", [])
    tpl = [tpl] if isinstance(tpl, str) else tpl
    if not isinstance(tpl, list) or not all(isinstance(t, str) and t for t in tpl):
        raise bad(f"{key}.template", "must be a string or a list of non-empty strings")
    if kind == "mft" and not tpl:
        raise bad(f"{key}.template", "missing (an MFT needs its texts)")
    fill = item.get("fill", {})
    if not isinstance(fill, dict):
        raise bad(f"{key}.fill", "must be a table of lists, e.g. {item = [\"手机\", \"酒店\"]}")
    for f, vals in fill.items():
        if (not isinstance(vals, list) or not vals
                or not all(isinstance(v, str) for v in vals)):
            raise bad(f"{key}.fill.{f}", "must be a non-empty list of strings")
    used: set[str] = set()
    for t in tpl:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
        except ValueError as e:
            raise bad(f"{key}.template", f"'{t}': {e} (write {{{{ and }}}} for braces)") from None
        for f in sorted(fields):
            if not f.isidentifier():
                raise bad(f"{key}.template", f"'{t}': field '{{{f}}}' must be a plain name")
            if f not in fill:
                raise bad(f"{key}.fill", f"no values for the template's field '{{{f}}}'")
        used |= fields
    unused = sorted(set(fill) - used)
    if unused:
        raise bad(f"{key}.fill.{unused[0]}", "not a field of any template")
    expect = item.get("expect")
    if not isinstance(expect, str) or not expect:
        raise bad(f"{key}.expect", "missing" if expect is None else "must be a string")
    direction, tolerance, append, prefix = "", 0.0, "", ""
    if kind == "dir":
        direction, _, cls = expect.partition(":")
        if direction not in ("not_up", "not_down") or not cls:
            raise bad(f"{key}.expect", f"'{expect}': expected 'not_up:CLASS' or "
                      "'not_down:CLASS'")
        expect = cls
        append, prefix = item.get("append", ""), item.get("prefix", "")
        for k, v in (("append", append), ("prefix", prefix)):
            if not isinstance(v, str):
                raise bad(f"{key}.{k}", "must be a string")
        if not append and not prefix:
            raise bad(f"{key}.append", "a DIR test needs `append` or `prefix` (or both)")
        tolerance = item.get("tolerance", 0.0)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) \
                or not 0 <= tolerance <= 1:
            raise bad(f"{key}.tolerance", "must be a number in [0, 1]")
    test = TemplateTest(name.strip(), kind.upper(), key, tuple(tpl),
                        tuple((f, tuple(v)) for f, v in fill.items()), expect, direction,
                        append, prefix, float(tolerance))
    if len(test.texts()) > _MAX_TEMPLATE_TEXTS:
        raise bad(f"{key}.fill", f"makes more than {_MAX_TEMPLATE_TEXTS} texts")
    return test


def _check_labels(suite: Suite, classes: Sequence[str]) -> None:
    for t in suite.templates:
        if t.expect not in classes:
            raise CompError(f"{suite.path}: key '{t.key}.expect': class '{t.expect}' is not "
                            f"one of the model's classes ({', '.join(classes)})")


# ---------------------------------------------------------------------------------------------
# running a suite


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (n > 0)."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the bounds are exactly 0 and 1 at k = 0 and k = n (no float residue)
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    return lo, 1.0 if k == n else min(1.0, centre + half)


class _Predictions:
    """Every text's probabilities and predicted label (set), each distinct text predicted once."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.classes = [str(c) for c in model.classes]
        self.thresholds = getattr(model, "thresholds", None)
        self.rows: dict[str, np.ndarray] = {}

    def add(self, texts: Sequence[str]) -> None:
        new = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if new:
            p = np.asarray(self.model.predict_proba(new), dtype=float)
            self.rows.update(zip(new, p))

    def proba(self, text: str) -> np.ndarray:
        return self.rows[text]

    def labels(self, text: str) -> tuple[str, ...]:
        p = self.rows[text]
        if self.thresholds is None:
            return (self.classes[int(np.argmax(p))],)
        return tuple(c for c, v, th in zip(self.classes, p, self.thresholds) if v >= th)

    def shown(self, text: str) -> str:
        return "|".join(self.labels(text)) or "(none)"


@dataclasses.dataclass
class _Planned:
    name: str
    kind: str
    description: str
    originals: list[str]
    perturbed: list[str]  # MFT: the originals again
    expect: str = ""
    direction: str = ""
    tolerance: float = 0.0
    skipped: str = ""


def _plan_inv(names: Sequence[str], texts: list[str], seed: int, options: dict[str, Any],
              pair: bool) -> list[_Planned]:
    out = []
    for name in names:
        inv = INVARIANCES[name]
        fn = inv.perturb or inv.build(texts, options)
        if fn is None:
            why = ("no --synonyms list (nor [inv] synonyms)" if name == "synonym"
                   else "nothing to build it from")
            out.append(_Planned(name, "INV", inv.description, [], [], skipped=why))
            continue
        orig, pert = [], []
        for t in texts:
            q = perturb_text(fn, t, text_rng(seed, name, t), pair)
            if q != t:  # an unchanged text is not a case of this test
                orig.append(t)
                pert.append(q)
        out.append(_Planned(name, "INV", inv.description, orig, pert))
    return out


def _plan_template(t: TemplateTest, texts: list[str]) -> _Planned:
    base = t.texts() if t.templates else list(dict.fromkeys(texts))
    if t.kind == "MFT":
        desc = f"{len(base)} template texts; expect '{t.expect}'"
        return _Planned(t.name, "MFT", desc, base, base, expect=t.expect)
    pert = [f"{t.prefix}{x}{t.append}" for x in base]
    what = " + ".join(x for x in (f"prefix '{t.prefix}'" * bool(t.prefix),
                                  f"append '{t.append}'" * bool(t.append)) if x)
    desc = (f"{'template' if t.templates else 'tested'} texts, {what}: p({t.expect}) must not "
            f"{'rise' if t.direction == 'not_up' else 'fall'} by more than {t.tolerance:g}")
    return _Planned(t.name, "DIR", desc, base, pert, expect=t.expect, direction=t.direction,
                    tolerance=t.tolerance)


def _score(plan: _Planned, pred: _Predictions, n_examples: int) -> dict[str, Any]:
    res: dict[str, Any] = {"name": plan.name, "kind": plan.kind,
                           "description": plan.description, "n": len(plan.originals)}
    if plan.skipped or not plan.originals:
        res.update(failures=0, rate=None, failure_rate=None, ci_low=None, ci_high=None,
                   ci=None, mean_delta=None, examples=[],
                   skipped=plan.skipped or "no text changed")
        return res
    cls = pred.classes
    cases = []
    for o, q in zip(plan.originals, plan.perturbed):
        po, pq = pred.proba(o), pred.proba(q)
        if plan.kind == "INV":
            c = int(np.argmax(po))
            failed = pred.labels(o) != pred.labels(q)
            delta = float(pq[c] - po[c])
            badness = -delta
        elif plan.kind == "MFT":
            c = cls.index(plan.expect)
            failed = plan.expect not in pred.labels(o)
            delta = float(po[c])  # the expected class's probability
            badness = -delta
        else:
            c = cls.index(plan.expect)
            delta = float(pq[c] - po[c])
            badness = delta if plan.direction == "not_up" else -delta
            failed = badness > plan.tolerance
        cases.append((failed, badness, o, q, c, po, pq, delta))
    k = sum(c[0] for c in cases)
    lo, hi = wilson_interval(k, len(cases))
    deltas = [c[7] for c in cases]
    res.update(failures=int(k), rate=k / len(cases), failure_rate=k / len(cases),
               ci_low=lo, ci_high=hi, ci=[lo, hi],
               mean_delta=None if plan.kind == "MFT" else float(np.mean(deltas)))
    if plan.kind == "MFT":
        res["mean_p_expected"] = float(np.mean(deltas))
    order = sorted(range(len(cases)), key=lambda i: (not cases[i][0], -cases[i][1], i))
    examples = []
    for i in order[:n_examples]:
        failed, _, o, q, c, po, pq, delta = cases[i]
        ex = {"failed": bool(failed), "text": o, "prediction": pred.shown(o),
              "class": cls[c], "p": round(float(po[c]), 6)}
        if plan.kind != "MFT":
            ex.update(perturbed=q, perturbed_prediction=pred.shown(q),
                      p_perturbed=round(float(pq[c]), 6), delta=round(delta, 6))
        examples.append(ex)
    res["examples"] = examples
    return res


def check_model(model: Any, texts: Sequence[str], suite: Suite | None = None, seed: int = 0,
                synonyms: Sequence[tuple[str, str]] = (), pair: bool = False,
                n_examples: int = 5, cache: _Predictions | None = None) -> dict[str, Any]:
    """Run a suite on a predictor (anything with predict_proba(texts) and classes; multi-label
    when it has per-label `thresholds`).

    Args:
        model: the predictor (comp.load's result).
        texts: the tested texts (INV tests perturb them; a DIR without a template uses them).
        suite: the tests (default: every built-in INV test, no templates).
        seed: seeds every random choice (with the test's name and the text).
        synonyms: word pairs for the synonym test (skipped when empty).
        pair: texts are pairs joined by comp.data PAIR_SEP (each side is perturbed).
        n_examples: worst examples kept per test.
        cache: predictions to reuse (harvest_uncertain shares them).

    Returns:
        The report: {"seed", "n_texts", "classes", "suite", "tests": [per test: name, kind,
        description, n, failures, rate, ci_low, ci_high, mean_delta, examples]}.
    """
    suite = suite or Suite()
    texts = list(texts)
    pred = cache or _Predictions(model)
    _check_labels(suite, pred.classes)
    if pair and suite.templates:
        raise CompError(f"{suite.path}: templates (mft, dir) are single texts; this is a pair "
                        "task (run its INV tests with a suite without templates)")
    plans = _plan_inv(suite.inv, texts, seed, {"synonyms": list(synonyms)}, pair)
    plans += [_plan_template(t, texts) for t in suite.templates]
    every = [t for p in plans for t in (*p.originals, *p.perturbed)]
    log(f"check: {len(plans)} tests on {len(texts)} texts; predicting "
        f"{len(set(every) - set(pred.rows))} distinct texts")
    pred.add(every)
    tests = [_score(p, pred, n_examples) for p in plans]
    return {"seed": seed, "n_texts": len(texts), "classes": pred.classes,
            "multilabel": pred.thresholds is not None, "suite": suite.path or "default",
            "tests": tests}


def harvest_uncertain(model: Any, ids: Sequence[str], texts: Sequence[str], n: int,
                      cache: _Predictions | None = None) -> list[dict[str, Any]]:
    """The n texts with the highest predictive entropy (ties: file order), for review; a
    pair's sides are shown joined by ' || '."""
    from comp.data.competition import PAIR_SEP

    pred = cache or _Predictions(model)
    pred.add(texts)
    p = np.stack([pred.proba(t) for t in texts]) if texts else np.zeros((0, len(pred.classes)))
    ent = task_of("multilabel" if pred.thresholds is not None else "single").entropy(p)
    order = sorted(range(len(texts)), key=lambda i: (-ent[i], i))[:n]
    return [{"id": ids[i], "text": texts[i].replace(PAIR_SEP, " || "),
             "entropy": round(float(ent[i]), 6),
             "prediction": pred.shown(texts[i]),
             **{f"p_{c}": round(float(v), 6) for c, v in zip(pred.classes, p[i])}}
            for i in order]


# ---------------------------------------------------------------------------------------------
# report files


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _ci(t: dict[str, Any]) -> str:
    return "n/a" if t["rate"] is None else f"[{t['ci_low']:.3f}, {t['ci_high']:.3f}]"


def _dp(t: dict[str, Any]) -> str:
    if t["mean_delta"] is not None:
        return _fmt(t["mean_delta"], "+.3f")
    return "p=" + _fmt(t.get("mean_p_expected")) if t["kind"] == "MFT" and t["rate"] is not None \
        else "n/a"


def format_table(report: dict[str, Any]) -> str:
    """The printed table: one line per test."""
    rows = [("test", "kind", "n", "fail", "rate", "95% CI", "mean dp")]
    for t in report["tests"]:
        rows.append((t["name"], t["kind"], str(t["n"]), str(t["failures"]), _fmt(t["rate"]),
                     _ci(t), _dp(t)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    skipped = [f"{t['name']}: skipped ({t['skipped']})" for t in report["tests"]
               if t.get("skipped")]
    return "\n".join(lines + skipped)


def _markdown(report: dict[str, Any]) -> str:
    out = [f"# comp check: {report.get('source', '')}", "",
           f"{report['n_texts']} texts ({report.get('texts', '')}), suite {report['suite']}, "
           f"seed {report['seed']}. rate: failures / n with a 95% Wilson interval; mean dp: "
           "the mean change of the original's top class probability (INV) or of the watched "
           "class (DIR); MFT: the mean probability of the expected class.", "",
           "| test | kind | n | failures | rate | 95% CI | mean dp | |",
           "|---|---|---|---|---|---|---|---|"]
    for t in report["tests"]:
        out.append(f"| {t['name']} | {t['kind']} | {t['n']} | {t['failures']} | "
                   f"{_fmt(t['rate'])} | {_ci(t)} | {_dp(t)} | {t.get('skipped', '')} |")
    for t in report["tests"]:
        if not t["examples"]:
            continue
        out += ["", f"## {t['name']} ({t['kind']}): {t['description']}", ""]
        for e in t["examples"]:
            mark = "FAIL" if e["failed"] else "ok"
            if "perturbed" in e:
                out.append(f"- {mark}: `{e['text']}` -> `{e['perturbed']}`: {e['prediction']} "
                           f"-> {e['perturbed_prediction']}, p({e['class']}) {e['p']:.3f} -> "
                           f"{e['p_perturbed']:.3f} ({e['delta']:+.3f})")
            else:
                out.append(f"- {mark}: `{e['text']}`: {e['prediction']}, p({e['class']}) "
                           f"{e['p']:.3f}")
    return "\n".join(out) + "\n"


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
    return buf.getvalue()


def write_report(report: dict[str, Any], out: str | Path,
                 uncertain: list[dict[str, Any]] | None = None) -> dict[str, Path]:
    """check.json, check.csv (one row per test), check.md and uncertain.csv in `out`."""
    out = Path(out)
    paths = {"json": out / "check.json", "csv": out / "check.csv", "md": out / "check.md"}
    write_json(paths["json"], report)
    write_text(paths["csv"], _csv(report["tests"], ["name", "kind", "n", "failures", "rate",
                                                    "ci_low", "ci_high", "mean_delta",
                                                    "skipped", "description"]))
    write_text(paths["md"], _markdown(report))
    if uncertain is not None:
        paths["uncertain"] = out / "uncertain.csv"
        cols = list(uncertain[0]) if uncertain else ["id", "text", "entropy", "prediction"]
        write_text(paths["uncertain"], _csv(uncertain, cols))
    return paths


# ---------------------------------------------------------------------------------------------
# comp check


def _recipe_data(model: Any):
    while hasattr(model, "members"):
        model = model.members[0]
    return model.recipe.data


def run_check(source: str | Path, texts: str | Path | None = None, suite: str = "default",
              out: str | Path = "reports/check", seed: int = 0,
              synonyms: str | Path | None = None, synonym_cut: float = 0.8, harvest: int = 0,
              max_texts: int = 0, folds: Sequence[int] | None = None,
              n_examples: int = 5) -> dict[str, Any]:
    """`comp check`: load a manifest, member dir or bundle, run the suite, write the report.

    Args:
        source: an ensemble manifest, a member directory or a bundle folder.
        texts: the tested texts: a .txt (one per line) or a file with the text column(s);
            default the competition's test file, read as `comp predict` reads it.
        suite: "default" (every INV test, plus the competition folder's check.toml when there
            is one) or a suite .toml.
        out: the report folder.
        seed: seeds every perturbation.
        synonyms: a tab-separated synonym list, or word vectors (.kv) to draw pairs from
            (written to <out>/synonyms_from_vectors.tsv for review).
        synonym_cut: the cosine a vector neighbour needs.
        harvest: write the N most uncertain texts to <out>/uncertain.csv.
        max_texts: test a seeded sample of this many texts (0: all).
        folds: the fold models to use (default all).
    """
    from comp.data.competition import find_file, read_unlabelled
    from comp.serving.predictor import load, read_test

    model = load(source, folds)
    cfg = _recipe_data(model)
    if texts:
        ids, tested = read_unlabelled(texts, cfg)
        where = str(texts)
    else:
        d = Path(cfg.dir)
        if not d.is_dir():
            raise CompError(f"{d}: the member's competition folder is not here; give the "
                            "texts with --texts FILE")
        test_path = find_file(d, cfg.test, "test")
        ids, tested = read_test(test_path, cfg)
        where = str(test_path)
    if suite == "default":
        own = Path(cfg.dir) / "check.toml"
        the_suite = load_suite(own) if own.is_file() else Suite()
    else:
        the_suite = load_suite(suite)
    pairs: list[tuple[str, str]] = []
    syn_path = synonyms or the_suite.synonyms
    if syn_path and Path(syn_path).suffix == ".kv":
        pairs = vector_synonyms(syn_path, tested, cut=synonym_cut)
        kept = Path(out) / "synonyms_from_vectors.tsv"
        write_text(kept, "".join(f"{a}\t{b}\n" for a, b in pairs))
        log(f"check: {len(pairs)} synonym pairs from {syn_path} (cosine >= {synonym_cut}) -> "
            f"{kept}; review them: word2vec neighbours include antonyms")
    elif syn_path:
        pairs = read_synonyms(syn_path)
    sample = list(range(len(tested)))
    if max_texts and len(tested) > max_texts:
        sample = sorted(random.Random(seed).sample(sample, max_texts))
    cache = _Predictions(model)
    report = check_model(model, [tested[i] for i in sample], the_suite, seed, pairs,
                         pair=cfg.shape.pair, n_examples=n_examples, cache=cache)
    report = {"source": str(source), "texts": where, **report}
    uncertain = harvest_uncertain(model, ids, tested, harvest, cache) if harvest else None
    paths = write_report(report, out, uncertain)
    report["files"] = {k: str(v) for k, v in paths.items()}
    return report
