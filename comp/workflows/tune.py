"""Optuna tuning of a recipe's `[tune]` search space.

    run_tune(recipe, trials=40)            one worker: ask -> suggest -> train folds 0..K-1 -> tell
      suggest(trial, recipe) -> recipe     the space applied through config.set_key (validated)
      objective                            trainer(..., report=) with pruning on epoch scores

A space maps dotted recipe keys to distributions:

    [tune]
    "linear.C" = {type = "float", low = 0.05, high = 8.0, log = true}
    "linear.min_df" = {type = "int", low = 1, high = 3}
    "linear.char_ngram" = {type = "categorical", choices = [[1, 2], [1, 3], [2, 4]]}

Every trial trains in runs/tune/<study>/trial_<n>/ under its own member name, so trials never
collide with each other or with real members.

Trials are scored on another fold table than the one the member's CV is reported on: the
competition's files seen through runs/tune/<study>/data/ (links, the competition's folds.csv
left alone) with `data.fold_seed + TUNE_SEED_OFFSET`. Values picked as the best of many trials
on the reported table would carry the luck of that pick into the reported CV (on random labels,
above chance). Another table removes the luck that belongs to a fold table (a seed, an
initialisation: tests/test_honest.py); luck that belongs to the rows themselves, such as a
feature subset that happens to fit these labels, partly survives it (TF-IDF on random labels:
about 40 % of the pick's optimism removed). Only nested tuning, values chosen per fold on that
fold's training rows, removes all of it. The overlay records the seed
(`train.tuned_fold_seed`), which the member's cv.json reports as `tuned_on`. A student with a
teacher is tuned on the reported table: its teacher's per-fold targets exist for that table
only (cv.json then says `same_folds`).

The study lives in an Optuna RDB storage: SQLite (runs/optuna.db) by default; a PostgreSQL URL
lets any number of `comp tune` processes on any machines share one study. Each process seeds its
TPE sampler with `--seed` mixed with its worker index (`claim_worker`), so workers started alike
draw different points and a rerun draws the same ones. The best parameters
are written as a TOML overlay (recipes/tuned/<name>.toml) for `comp train RECIPE --overlay ...`,
and the optimisation history and parameter importances as PNGs next to the trials.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import re
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from comp.config.schema import (
    DataConfig,
    Recipe,
    deep_merge,
    dumps_toml,
    parse_override_value,
    set_key,
)
from comp.core.metrics import greater_is_better
from comp.core.utils import CompError, log, read_json, write_text

# comp.members.registry.train_recipe's shape: (recipe, folds=, force=, report=) -> cv.json
# dict or None
Trainer = Callable[..., "dict | None"]

__all__ = ["suggest", "check_space", "run_tune", "default_storage", "open_storage",
           "trial_overrides"]

SPACE_TYPES = ("float", "int", "categorical")
_FIELDS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
           "categorical": {"choices"}}
# An epoch's report at fold k becomes step k * FOLD_STEPS + epoch: unique across the K folds of
# a trial, and the same fold/epoch of two trials share a step, which is what pruners compare.
FOLD_STEPS = 1000
OVERLAY_DIR = "recipes/tuned"
TUNE_SEED_OFFSET = 1000  # trials' fold table: data.fold_seed + this
WORKERS_SUFFIX = ".workers"  # the companion study that numbers a study's workers


# ---------------------------------------------------------------------------------------------
# the search space


def check_space(recipe: Recipe) -> None:
    """Validate `recipe.tune`: known types and fields, keys the recipe has, values it accepts.

    Raises:
        CompError: one line naming the offending `[tune]` key.
    """
    if not recipe.tune:
        raise CompError(f"recipe '{recipe.name}': no [tune] table, nothing to tune")
    plain = recipe.to_dict()
    for key, spec in recipe.tune.items():
        where = f"[tune] '{key}'"
        cur: Any = plain
        for part in key.split("."):
            if not isinstance(cur, dict) or part not in cur:
                raise CompError(f"{where}: the recipe has no such key")
            cur = cur[part]
        if isinstance(cur, dict) or key.split(".")[0] in ("tune", "name", "runs_dir"):
            raise CompError(f"{where}: not a tunable value")
        if not isinstance(spec, dict):
            raise CompError(f"{where}: expected an inline table like {{type = \"float\", ...}}")
        kind = spec.get("type")
        if kind not in SPACE_TYPES:
            raise CompError(f"{where}: type must be one of {', '.join(SPACE_TYPES)}, "
                            f"got {kind!r}")
        unknown = set(spec) - _FIELDS[kind] - {"type"}
        if unknown:
            raise CompError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} for type "
                            f"{kind} (known: {', '.join(sorted(_FIELDS[kind]))})")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise CompError(f"{where}: categorical needs a non-empty list 'choices'")
            labels = [_label(c) for c in choices]
            if len(set(map(repr, labels))) != len(labels):
                raise CompError(f"{where}: duplicate choices")
            values = choices
        else:
            num = int if kind == "int" else (int, float)
            low, high = spec.get("low"), spec.get("high")
            what = "an integer" if kind == "int" else "a number"
            for name, v in (("low", low), ("high", high)):
                if isinstance(v, bool) or not isinstance(v, num):
                    raise CompError(f"{where}: '{name}' must be {what}, got {v!r}")
            if low > high:
                raise CompError(f"{where}: low {low} > high {high}")
            log_ = spec.get("log", False)
            if not isinstance(log_, bool):
                raise CompError(f"{where}: 'log' must be true or false")
            if log_ and low <= 0:
                raise CompError(f"{where}: log scale needs low > 0")
            step = spec.get("step")
            if step is not None:
                if isinstance(step, bool) or not isinstance(step, num) or step <= 0:
                    raise CompError(f"{where}: 'step' must be a positive number")
                if log_ and step != 1:
                    raise CompError(f"{where}: 'step' and 'log' cannot be combined")
            values = [low, high]
        for v in values:  # the recipe's own validation, so a bad bound fails before trial 0
            try:
                set_key(recipe, key, v)
            except CompError as e:
                raise CompError(f"{where}: value {v!r} rejected: {e}") from None


def _label(choice: Any) -> Any:
    """Optuna stores scalars only; lists and tables become their JSON text."""
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return choice
    return json.dumps(choice, ensure_ascii=False)


def _suggest_values(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ask the trial for every key of the space; returns {dotted key: recipe value}."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "float":
            v = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                    log=spec.get("log", False), step=spec.get("step"))
            # a stepped grid gives low + i * step: 0.15000000000000002 reads badly in overlays
            out[key] = round(v, 10) if spec.get("step") is not None else v
        elif kind == "int":
            out[key] = trial.suggest_int(key, spec["low"], spec["high"],
                                         log=spec.get("log", False), step=spec.get("step", 1))
        else:
            by_label = {repr(_label(c)): c for c in spec["choices"]}
            picked = trial.suggest_categorical(key, [_label(c) for c in spec["choices"]])
            out[key] = by_label[repr(picked)]
    return out


def suggest(trial: optuna.Trial, recipe: Recipe) -> Recipe:
    """Sample `recipe.tune` with `trial` and return the recipe with those values (validated).

    Args:
        trial: an Optuna trial (or FixedTrial; list-valued choices are given as their JSON text).
        recipe: a recipe whose `[tune]` table is the search space.

    Returns:
        A copy of the recipe with every tuned key replaced.
    """
    for key, value in _suggest_values(trial, recipe.tune).items():
        recipe = set_key(recipe, key, value)
    return recipe


def trial_overrides(trial: optuna.trial.FrozenTrial, space: dict[str, dict[str, Any]]
                    ) -> dict[str, Any]:
    """The recipe values a finished trial used, {dotted key: value} (list choices decoded)."""
    if "overrides" in trial.user_attrs:
        return dict(trial.user_attrs["overrides"])
    out = {}
    for key, v in trial.params.items():
        spec = space.get(key, {})
        if spec.get("type") == "categorical":
            v = {repr(_label(c)): c for c in spec["choices"]}.get(repr(v), v)
        out[key] = v
    return out


# ---------------------------------------------------------------------------------------------
# storage, sampler, pruner


def default_storage(recipe: Recipe) -> str:
    """sqlite:///<runs_dir>/optuna.db."""
    return f"sqlite:///{Path(recipe.runs_dir) / 'optuna.db'}"


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with heartbeats, so trials of a killed worker are failed and retried.

    Workers starting together on a fresh PostgreSQL database race to create its tables; a
    losing worker retries after a short random wait.
    """
    import sqlalchemy.exc

    url = _pick_driver(url)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # concurrent local workers wait for the lock
    last: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=60, grace_period=300,
                    heartbeat_stale_trial_callback=retry)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError,
                sqlalchemy.exc.ProgrammingError) as e:
            last = e
            time.sleep(0.3 + random.random() * (attempt + 1))
        except ImportError as e:
            raise CompError(f"--storage {_redact(url)}: {_first_line(e)} (PostgreSQL: pip "
                            "install psycopg2-binary)") from None
        except (sqlalchemy.exc.ArgumentError, ValueError) as e:
            raise CompError(f"--storage {_redact(url)}: {_first_line(e)}") from None
    raise CompError(f"--storage {_redact(url)}: cannot open: {_first_line(last)}")


def _pick_driver(url: str) -> str:
    """postgresql:// means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
            return f"postgresql+psycopg2://{rest}"
        return f"postgresql://{rest}"
    return url


def _first_line(e: BaseException | None) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def claim_worker(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """This process's index among the workers that joined the study: 0, 1, 2, ...

    Indices are the trial numbers of a companion study `<study_name>.workers`, which the storage
    hands out under a lock, so workers started at the same moment on any machines still get
    distinct ones, and a study's history of runs numbers them the same way every time.
    """
    name = study_name + WORKERS_SUFFIX
    optuna.create_study(storage=storage, study_name=name, load_if_exists=True)
    # the storage's own calls: Study.ask on a storage with heartbeats warns outside optimize()
    trial_id = storage.create_new_trial(storage.get_study_id_from_name(name))
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, [0.0])
    return storage.get_trial_number_from_id(trial_id)


def worker_seed(seed: int, worker: int) -> int:
    """The TPE seed of worker `worker` of a study tuned with base `seed`.

    Workers of one study share the base seed (`comp tune --seed`), so each needs a seed of its
    own to draw other points; SeedSequence mixes the two into independent streams.
    """
    return int(np.random.SeedSequence([seed % 2**64, worker]).generate_state(1)[0])


def make_sampler(seed: int, worker: int) -> optuna.samplers.TPESampler:
    """This worker's TPE sampler: reproducible for (seed, worker), distinct across workers."""
    return optuna.samplers.TPESampler(seed=worker_seed(seed, worker))


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """median | hyperband | none."""
    if name == "median":
        # epochs count from 1 and the first (frozen-backbone) epoch already separates bad
        # learning rates, so pruning may start there once 5 trials have finished
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise CompError(f"--pruner: expected median, hyperband or none, got '{name}'")


# ---------------------------------------------------------------------------------------------
# the objective


class _Reporter:
    """Turns the trainer's `report(epoch, value)` into trial steps and prunes.

    Folds run in order and each restarts its epoch count, so a non-increasing epoch means the
    next fold has begun.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial, self.fold, self.last = trial, 0, 0

    def __call__(self, epoch: int, value: float) -> None:
        if epoch <= self.last:
            self.fold += 1
        self.last = epoch
        step = self.fold * FOLD_STEPS + int(epoch)
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at fold {self.fold} epoch {epoch} "
                                     f"(value {value:.4f})")


def _default_trainer(*args: Any, **kw: Any) -> dict | None:
    """comp.members.registry.train_recipe, imported at call time (it imports every member kind)."""
    from comp.members.registry import train_recipe

    return train_recipe(*args, **kw)


def tune_data(recipe: Recipe, tune_dir: Path, fold_seed: int) -> DataConfig:
    """The data section trials train on: the competition with a fold table of `fold_seed`.

    With the recipe's own seed that is the recipe's data. Otherwise tune_dir/data/ links every
    file of the competition except its fold table, and gets its own folds.csv there (made once,
    remade when the train rows changed); the competition's folds.csv is never touched.
    """
    if fold_seed == recipe.data.fold_seed:
        return recipe.data
    from comp.data.competition import load_competition
    from comp.data.folds import load_folds

    src = Path(recipe.data.dir).resolve()
    if not src.is_dir():
        raise CompError(f"{recipe.data.dir}: competition folder not found (recipe key "
                        "'data.dir')")
    dst = tune_dir / "data"
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.name in ("folds.csv", "folds.json"):
            continue
        link = dst / p.name
        if link.is_symlink() and link.resolve() == p.resolve():
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        try:
            link.symlink_to(p.resolve(), target_is_directory=p.is_dir())
        except FileExistsError:  # another worker made it a moment ago
            pass
    cfg = dataclasses.replace(recipe.data, dir=str(dst), fold_seed=fold_seed)
    comp = load_competition(cfg)
    try:
        load_folds(comp, cfg)
    except CompError:  # a table of older train rows: the trials' own, so remake it
        for name in ("folds.csv", "folds.json"):
            (dst / name).unlink(missing_ok=True)
        load_folds(comp, cfg)
    return cfg


def make_objective(recipe: Recipe, n_folds: int, tune_dir: Path,
                   trainer: Trainer | None = None, data: DataConfig | None = None
                   ) -> Callable[[optuna.Trial], float]:
    """The objective: mean validation metric over folds 0..n_folds-1 of the suggested recipe.

    Args:
        recipe: the recipe being tuned.
        n_folds: folds each trial trains and scores.
        tune_dir: trials go to tune_dir/trial_<n>/.
        trainer: trains a recipe's folds (`Trainer`); default comp.members.registry.train_recipe.
        data: the trials' data section (`tune_data`); default the recipe's.
    """
    train_recipe = trainer or _default_trainer

    def objective(trial: optuna.Trial) -> float:
        trial_dir = tune_dir / f"trial_{trial.number}"
        try:
            values = _suggest_values(trial, recipe.tune)
            trial.set_user_attr("overrides", values)
            r = recipe
            for key, value in values.items():
                r = set_key(r, key, value)
            folds = list(range(n_folds))
            # the trial is a member on its scored folds: its cv.json says what they score
            # together (a multi-label one at thresholds fitted across them)
            r = dataclasses.replace(r, name=f"{recipe.name}-t{trial.number}",
                                    runs_dir=str(trial_dir),
                                    data=dataclasses.replace(data or r.data,
                                                             use_folds=tuple(folds)))
            trial.set_user_attr("run_dir", str(r.run_dir))
            # force: a reused trial number (a study deleted and made again) retrains cleanly
            train_recipe(r, folds=folds, force=True, report=_Reporter(trial))
            scores = []
            for k in folds:
                done = r.run_dir / f"fold{k}" / "done.json"
                if not done.exists():
                    raise CompError(f"{done}: the trainer wrote no fold score")
                scores.append(float(read_json(done)["score"]))
            value = sum(scores) / len(scores)
            cv = read_json(r.run_dir / "cv.json") if (r.run_dir / "cv.json").exists() else {}
            if cv.get("task") == "multilabel":
                # fold scores above cut at 0.5; a multi-label member is judged at per-label
                # thresholds fitted on the other scored folds (comp.tasks.thresholds), as its CV is
                scores, value = [float(x) for x in cv["fold_scores"]], float(cv["cv"])
            trial.set_user_attr("fold_scores", scores)
            if not math.isfinite(value):
                raise CompError(f"non-finite objective {value} (fold scores {scores})")
            return value
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {_first_line(e)}")
            if not isinstance(e, CompError):
                log("".join(traceback.format_exception(e)[-6:]).rstrip())
            raise
        finally:
            _drop_checkpoints(trial_dir)

    return objective


def _drop_checkpoints(trial_dir: Path) -> None:
    """Trial weights are never reused (the overlay retrains), so they don't pile up on disk."""
    if trial_dir.is_dir():
        for p in trial_dir.rglob("*.pt"):
            p.unlink(missing_ok=True)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_trial(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    """One line per finished trial: number, state, value, params (and why, if it failed)."""
    value = "-" if t.value is None else f"{t.value:.4f}"
    params = " ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    secs = f"{t.duration.total_seconds():.0f}s" if t.duration else "?"
    tail = ""
    if t.state == optuna.trial.TrialState.PRUNED:
        tail = f" at step {t.last_step}"
    elif t.state == optuna.trial.TrialState.FAIL:
        tail = f" error: {t.user_attrs.get('error', '?')}"
    try:
        best = f" best={study.best_value:.4f} (#{study.best_trial.number})"
    except ValueError:
        best = ""
    print(f"trial {t.number} {t.state.name} value={value} {params} ({secs}){tail}{best}",
          flush=True)


# ---------------------------------------------------------------------------------------------
# outputs


def write_overlay(study: optuna.Study, recipe: Recipe, path: Path, n_folds: int,
                  fold_seed: int | None = None) -> Path | None:
    """The best trial's values as a nested TOML overlay (None if no trial completed), with
    `train.tuned_fold_seed` = the fold seed trials were scored on (default the recipe's)."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    fold_seed = recipe.data.fold_seed if fold_seed is None else fold_seed
    nested: dict[str, Any] = {}
    for key, v in trial_overrides(best, recipe.tune).items():
        nested = deep_merge(nested, parse_override_value(key, v))
    nested = deep_merge(nested, {"train": {"tuned_fold_seed": fold_seed}})
    head = (f"# Tuned overlay for '{recipe.name}': study '{study.study_name}', trial "
            f"{best.number}, {recipe.metric}={best.value:.4f} (mean of {n_folds} fold(s) of "
            f"the fold table with seed {fold_seed}).\n"
            f"# Use: comp train <recipe>.toml --overlay {path}\n")
    write_text(path, head + dumps_toml(nested))
    return path


def save_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """history.png and importances.png (when >= 2 completed trials vary >= 2 params)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    saved = []
    plots = [("history.png", ovm.plot_optimization_history)]
    varied = {k for t in complete for k in t.params
              if len({repr(u.params.get(k)) for u in complete}) > 1}
    if len(complete) >= 2 and len(varied) >= 2:
        plots.append(("importances.png", ovm.plot_param_importances))
    else:
        log(f"tune: parameter importances need >= 2 completed trials varying >= 2 params "
            f"({len(complete)} trial(s), {len(varied)} varied); skipped")
    for name, fn in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
            fig.set_size_inches(7, 4)
            out = out_dir / name
            out.parent.mkdir(parents=True, exist_ok=True)
            from comp.core.utils import atomic_path

            with atomic_path(out) as tmp:
                fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            saved.append(out)
        except Exception as e:  # noqa: BLE001 - a plot is a nicety; the study result stands
            log(f"tune: {name} skipped: {_first_line(e)}")
    return saved


# ---------------------------------------------------------------------------------------------
# entry point


def run_tune(recipe: Recipe, trials: int = 20, timeout: float | None = None,
             storage: str | None = None, study: str | None = None, n_folds: int = 1,
             sampler_seed: int = 42, pruner: str = "median",
             overlay_dir: str | Path = OVERLAY_DIR, plots: bool = True,
             trainer: Trainer | None = None, fold_seed: int | None = None,
             worker: int | None = None) -> dict[str, Any]:
    """Run `trials` more trials of the recipe's `[tune]` space (continuing an existing study).

    Args:
        recipe: the recipe to tune; its `[tune]` table is the search space.
        trials: trials this worker runs (other workers on the same storage add theirs).
        timeout: stop starting new trials after this many seconds.
        storage: an Optuna RDB URL, or "memory" for a study kept in this process only;
            default sqlite:///<runs_dir>/optuna.db.
        study: study name; default the recipe name.
        n_folds: the objective is the mean validation metric over folds 0..n_folds-1.
        sampler_seed: base TPE seed, shared by the study's workers (mixed with `worker`).
        pruner: median | hyperband | none, fed by per-epoch validation scores.
        overlay_dir: where <recipe name>.toml with the best values goes.
        plots: save history.png / importances.png under runs/tune/<study>/.
        trainer: trains a recipe's folds, `trainer(recipe, folds=, force=, report=)`; default
            comp.members.registry.train_recipe.
        fold_seed: the seed of the fold table trials are scored on; default data.fold_seed +
            TUNE_SEED_OFFSET (a student with a teacher: data.fold_seed). The recipe's own seed
            scores trials on the reported table, which makes the tuned member's CV optimistic.
        worker: this worker's index, which seeds its sampler; default: claimed from the storage
            (`claim_worker`: 0 for a study's first worker, then 1, 2, ...).

    Returns:
        {"study", "storage", "best_value", "best_params", "overlay", "plots", "counts",
        "tune_dir", "fold_seed"} where counts maps COMPLETE/PRUNED/FAIL/... to trial counts
        over the whole study.
    """
    check_space(recipe)
    if not 1 <= n_folds <= recipe.data.folds:
        raise CompError(f"--folds: must be between 1 and data.folds={recipe.data.folds}, "
                        f"got {n_folds}")
    if trials < 1:
        raise CompError(f"--trials: must be >= 1, got {trials}")
    storage = storage or default_storage(recipe)
    study_name = study or recipe.name
    slug = re.sub(r"[^\w.-]+", "_", study_name)
    tune_dir = Path(recipe.runs_dir) / "tune" / slug
    direction = "maximize" if greater_is_better(recipe.metric) else "minimize"
    if fold_seed is None:
        fold_seed = recipe.data.fold_seed + TUNE_SEED_OFFSET
        if recipe.kind == "student" and recipe.distill.teacher:
            fold_seed = recipe.data.fold_seed
            log(f"tune: '{recipe.name}' is a student: its teacher's per-fold targets exist for "
                f"the reported fold table only, so trials are scored on it (seed {fold_seed}) "
                "and the tuned member's CV is optimistic", level=logging.WARNING)
    elif fold_seed == recipe.data.fold_seed:
        log(f"tune: trials are scored on the reported fold table (seed {fold_seed}); the tuned "
            "member's CV is optimistic", level=logging.WARNING)

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is printed below
    # "memory": a throwaway in-process study (quick looks, tests): nothing kept, no other workers
    rdb = optuna.storages.InMemoryStorage() if storage == "memory" else open_storage(storage)
    if worker is None:
        worker = claim_worker(rdb, study_name)
    st = optuna.create_study(storage=rdb, study_name=study_name, direction=direction,
                             load_if_exists=True, sampler=make_sampler(sampler_seed, worker),
                             pruner=make_pruner(pruner))
    if st.direction.name.lower() != direction:
        raise CompError(f"study '{study_name}' in {_redact(storage)} was made to "
                        f"{st.direction.name.lower()}, but metric '{recipe.metric}' wants to "
                        f"{direction}; pass another --study")
    before = len(st.trials)
    log(f"tune: study '{study_name}' ({direction} {recipe.metric} over {n_folds} fold(s)) in "
        f"{_redact(storage)}: {before} trial(s) so far, {trials} more here "
        f"(pid {os.getpid()}, worker {worker}); trials in {tune_dir} on the fold table with seed "
        f"{fold_seed}")
    data = tune_data(recipe, tune_dir, fold_seed)
    objective = make_objective(recipe, n_folds, tune_dir, trainer, data)
    overlay_path = Path(overlay_dir) / f"{recipe.name}.toml"
    try:
        # networks leave reference cycles (hooks, optimizer state) that a collection frees
        # between trials; TF-IDF trials don't need the extra pause
        st.optimize(objective, n_trials=trials, timeout=timeout, catch=(Exception,),
                    callbacks=[_print_trial], gc_after_trial=recipe.kind != "linear")
    except KeyboardInterrupt:
        # keep what finished trials found
        write_overlay(st, recipe, overlay_path, n_folds, fold_seed)
        raise
    overlay = write_overlay(st, recipe, overlay_path, n_folds, fold_seed)
    saved = save_plots(st, tune_dir) if plots else []
    counts: dict[str, int] = {}
    for t in st.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    summary: dict[str, Any] = {"study": study_name, "storage": _redact(storage),
                               "best_value": None, "best_params": {}, "overlay": overlay,
                               "plots": saved, "counts": counts, "tune_dir": tune_dir,
                               "fold_seed": fold_seed}
    if overlay is None:
        print(f"tune: no trial completed in study '{study_name}' ({counts})", flush=True)
        return summary
    best = st.best_trial
    summary["best_value"] = best.value
    summary["best_params"] = trial_overrides(best, recipe.tune)
    shown = " ".join(f"{k}={_fmt(v)}" for k, v in summary["best_params"].items())
    print(f"best trial {best.number}: {recipe.metric}={best.value:.4f} {shown}", flush=True)
    print(f"saved {overlay}" + "".join(f", {p}" for p in saved) + f"  ({counts})", flush=True)
    return summary
