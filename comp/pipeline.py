"""`comp run` / `./run.sh`: the whole pipeline on one competition, every stage resumable.

data -> folds -> TF-IDF members -> ensembles -> submissions/ -> score (when answers exist).
Each stage skips what is already on disk, so a rerun after a finished run retrains nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

from comp.config import load_recipe
from comp.utils import CompError, log, read_json

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

LINEAR = ["tfidf_char_svc", "tfidf_char_lr", "tfidf_word_lr", "tfidf_word_svc", "tfidf_nblr"]
LINEAR_QUICK = ["tfidf_char_svc", "tfidf_word_lr"]


class Layout:
    """Where one competition's files go: embedded -> runs/, models/; others get a sub-folder."""

    def __init__(self, data: str | None):
        self.embedded = data is None
        self.data = Path(data or "data/sentiment")
        name = "" if self.embedded else self.data.resolve().name
        self.runs = Path("runs") / name if name else Path("runs")
        self.models = Path("models") / name if name else Path("models")
        self.submissions = Path("submissions") / name if name else Path("submissions")
        self.reports = Path("reports") / name if name else Path("reports")


def _overrides(layout: Layout) -> list[str]:
    return [f"data.dir={layout.data}", f"runs_dir={layout.runs}"]


def stage_data(layout: Layout) -> None:
    """Build the embedded competition if needed; load and validate any competition."""
    from comp.config import DataConfig
    from comp.data import build_sentiment, load_competition, load_folds

    if layout.embedded and not (layout.data / "train.csv").exists():
        counts = build_sentiment(layout.data)
        log(f"data: {counts['lines']} lines -> {counts['distinct']} distinct, dropped "
            f"{counts['both_labels']} under both labels: train={counts['train']} "
            f"test={counts['test']}")
    cfg = DataConfig(dir=str(layout.data))
    comp = load_competition(cfg)
    load_folds(comp, cfg)
    log(f"data: {len(comp.train_ids)} train, {len(comp.test_ids)} test, "
        f"{comp.n_classes} classes")


def stage_members(layout: Layout, names: list[str]) -> list[Path]:
    """Train (or resume) members by recipe name; returns their run dirs."""
    from comp.cli import train_recipe
    from comp.member import member_done

    dirs = []
    for name in names:
        recipe = load_recipe(RECIPES / f"{name}.toml", _overrides(layout))
        if member_done(recipe.run_dir):
            cv = read_json(recipe.run_dir / "cv.json")
            log(f"member {name}: done (OOF {cv['metric']}={cv['cv']:.4f}), skipped")
        else:
            log(f"member {name}: training")
            train_recipe(recipe)
        dirs.append(recipe.run_dir)
    return dirs


def stage_ensembles(layout: Layout, runs: list[Path], methods: list[str]) -> list[Path]:
    """One submission per method; returns the CSV paths (existing ones are reused)."""
    from comp.config import DataConfig
    from comp.ensemble import run_ensemble

    out = []
    for method in methods:
        existing = _latest(layout.submissions, method)
        if existing is not None and _same_members(existing, runs):
            log(f"ensemble {method}: {existing} exists, skipped")
            out.append(existing)
            continue
        out.append(run_ensemble([str(r) for r in runs], method, DataConfig(dir=str(layout.data)),
                                "accuracy", layout.submissions / method))
    return out


def _latest(folder: Path, method: str) -> Path | None:
    hits = sorted(folder.glob(f"{method}_cv*.csv"), key=lambda p: p.stat().st_mtime)
    return hits[-1] if hits else None


def _same_members(csv_path: Path, runs: list[Path]) -> bool:
    man = csv_path.with_suffix(".json")
    if not man.exists():
        return False
    members = read_json(man).get("members", [])
    names = sorted(m["name"] if isinstance(m, dict) else Path(m).name for m in members)
    return names == sorted(r.name for r in runs)


def best_submission(paths: list[Path]) -> Path:
    """The submission whose manifest reports the best (nested, honest) CV."""
    def cv_of(p: Path) -> float:
        return float(read_json(p.with_suffix(".json")).get("cv", float("-inf")))

    return max(paths, key=cv_of)


def run_pipeline(data: str | None = None, quick: bool = False,
                 stages: str | None = None) -> Path:
    """Run every stage; print the final one-line summary.

    Args:
        data: a competition folder; None builds and uses the embedded sentiment one.
        quick: fewer, cheaper members for a first submission in minutes.
        stages: comma-separated subset (data, linear, ensemble, score).

    Returns:
        The best submission CSV.
    """
    t0 = time.time()
    layout = Layout(data)
    want = set(stages.split(",")) if stages else None

    def on(stage: str) -> bool:
        return want is None or stage in want

    if on("data"):
        stage_data(layout)
    runs = stage_members(layout, LINEAR_QUICK if quick else LINEAR) if on("linear") else []
    if not runs:
        raise CompError("run: no members selected")
    subs = stage_ensembles(layout, runs, ["mean"] if quick else ["mean", "hill", "stack"])
    best = best_submission(subs)
    answers = layout.data / "answers.csv"
    if answers.exists() and on("score"):
        from comp.submit import score_submission

        s = score_submission(best, answers)
        print(f"hidden_accuracy={s['accuracy']:.4f} hidden_macro_f1={s['macro_f1']:.4f} "
              f"submission={best}")
    else:
        print(f"submission={best}")
    log(f"run: finished in {time.time() - t0:.0f}s")
    return best
