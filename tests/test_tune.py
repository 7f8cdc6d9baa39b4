import json

import optuna
import pytest

from comp import cli
from comp.config.schema import read_toml
from comp.core.utils import CompError, write_json
from comp.data.recipes import load_recipe
from comp.workflows.tune import (
    check_space,
    claim_worker,
    make_sampler,
    open_storage,
    run_tune,
    suggest,
    trial_overrides,
    worker_seed,
)

SPACE = {
    "linear.C": {"type": "float", "low": 0.05, "high": 8.0, "log": True},
    "linear.min_df": {"type": "int", "low": 1, "high": 3},
    "linear.max_features": {"type": "int", "low": 1000, "high": 5000, "step": 1000},
    "train.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.05},
    "linear.char_ngram": {"type": "categorical", "choices": [[1, 2], [1, 3], [2, 4]]},
    "linear.model": {"type": "categorical", "choices": ["lr", "svc"]},
    "linear.sublinear_tf": {"type": "categorical", "choices": [True, False]},
}


def _recipe(tmp_path, data_dir="data/x", space=None, **extra):
    sets = [f"runs_dir='{tmp_path / 'runs'}'", f"data.dir='{data_dir}'", "data.folds=3",
            "name='tiny'", "linear.min_df=1"]
    sets += [f"{k}={v}" for k, v in extra.items()]
    r = load_recipe(None, sets)
    import dataclasses

    return dataclasses.replace(r, tune=space if space is not None else SPACE)


def test_suggest_applies_every_space_type(tmp_path):
    r = _recipe(tmp_path)
    check_space(r)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_ngrams = set()
    for _ in range(12):
        trial = study.ask()
        s = suggest(trial, r)
        assert 0.05 <= s.linear.C <= 8.0 and s.linear.C == trial.params["linear.C"]
        assert s.linear.min_df in (1, 2, 3)
        assert s.linear.max_features in (1000, 2000, 3000, 4000, 5000)
        assert s.train.label_smoothing in (0.0, 0.05, 0.1, 0.15, 0.2)
        assert isinstance(s.linear.char_ngram, tuple)
        assert s.linear.char_ngram in ((1, 2), (1, 3), (2, 4))
        assert s.linear.model in ("lr", "svc") and s.linear.sublinear_tf in (True, False)
        seen_ngrams.add(s.linear.char_ngram)
        study.tell(trial, s.linear.C)
    assert len(seen_ngrams) > 1
    assert r.linear.C == 4.0  # the source recipe is untouched (frozen copies)


def test_suggest_decodes_list_choices_from_fixed_trial(tmp_path):
    r = _recipe(tmp_path, space={k: SPACE[k] for k in ("linear.C", "linear.char_ngram")})
    s = suggest(optuna.trial.FixedTrial({"linear.C": 0.7, "linear.char_ngram": "[2, 4]"}), r)
    assert s.linear.char_ngram == (2, 4) and s.linear.C == 0.7


@pytest.mark.parametrize("key, spec", [
    ("linear.nope", {"type": "float", "low": 0.1, "high": 1.0}),
    ("linear.C", {"type": "uniform", "low": 0.1, "high": 1.0}),
    ("linear.C", {"type": "float", "high": 1.0}),
    ("linear.C", {"type": "float", "low": 2.0, "high": 1.0}),
    ("linear.C", {"type": "float", "low": 0.0, "high": 1.0, "log": True}),
    ("linear.C", {"type": "float", "low": 0.1, "high": 1.0, "lo": 3}),
    ("linear.min_df", {"type": "int", "low": 1.5, "high": 3}),
    ("linear.model", {"type": "categorical", "choices": []}),
    ("linear.model", {"type": "categorical", "choices": ["lr", "forest"]}),
    ("linear.char_ngram", {"type": "categorical", "choices": [[1, 2, 3]]}),
    ("linear", {"type": "categorical", "choices": [1]}),
    ("model.dropout", {"type": "float", "low": 0.1, "high": 1.0}),
])
def test_bad_space_entries_name_the_key(tmp_path, key, spec):
    r = _recipe(tmp_path, space={key: spec})
    with pytest.raises(CompError, match=rf"\[tune\] '{key}'") as e:
        check_space(r)
    assert "\n" not in str(e.value)


def test_empty_space_is_an_error(tmp_path):
    with pytest.raises(CompError, match="no \\[tune\\] table"):
        run_tune(_recipe(tmp_path, space={}), trials=1)


def test_study_writes_overlay_plots_and_continues(small_comp, tmp_path, capsys):
    space = {"linear.C": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
             "linear.char_ngram": {"type": "categorical", "choices": [[1, 2], [1, 3]]}}
    r = _recipe(tmp_path, small_comp, space)
    storage = f"sqlite:///{tmp_path / 'opt.db'}"
    out = run_tune(r, trials=2, storage=storage, overlay_dir=tmp_path / "tuned")
    assert out["counts"] == {"COMPLETE": 2}
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("trial ")]
    assert len(lines) == 2 and all("COMPLETE" in x and "linear.C=" in x for x in lines)

    overlay = tmp_path / "tuned" / "tiny.toml"
    assert out["overlay"] == overlay
    study = optuna.load_study(study_name="tiny", storage=storage)
    best = trial_overrides(study.best_trial, space)
    # the values, and the fold table they were chosen on: not the one the CV is reported on
    assert out["fold_seed"] == r.data.fold_seed + 1000
    assert read_toml(overlay) == {"linear": {"C": best["linear.C"],
                                             "char_ngram": best["linear.char_ngram"]},
                                  "train": {"tuned_fold_seed": r.data.fold_seed + 1000}}
    loaded = load_recipe(None, [f"data.dir='{small_comp}'"], base=read_toml(overlay))
    assert loaded.train.tuned_fold_seed == 1042
    assert loaded.linear.C == best["linear.C"]
    assert loaded.linear.char_ngram == tuple(best["linear.char_ngram"])
    # trials ran in their own member dirs and scored fold 0 only
    done = tmp_path / "runs" / "tune" / "tiny" / "trial_0" / "tiny-t0" / "fold0" / "done.json"
    assert done.exists() and not (done.parent.parent / "fold1").exists()
    # on their own fold table, next to links to the competition's files; its folds.csv untouched
    tune_data = tmp_path / "runs" / "tune" / "tiny" / "data"
    assert json.loads((tune_data / "folds.json").read_text())["seed"] == 1042
    assert (tune_data / "train.csv").resolve() == (small_comp / "train.csv").resolve()
    assert not (small_comp / "folds.csv").exists()
    assert (tmp_path / "runs" / "tune" / "tiny" / "history.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "tune" / "tiny" / "importances.png").exists()

    again = run_tune(r, trials=1, storage=storage, overlay_dir=tmp_path / "tuned", plots=False)
    assert again["counts"] == {"COMPLETE": 3}
    numbers = [t.number for t in optuna.load_study(study_name="tiny", storage=storage).trials]
    assert numbers == [0, 1, 2]


def _fake_trainer(values_by_trial, calls):
    """A trainer that reports given per-epoch values for each fold and writes fold scores."""

    def train_recipe(recipe, folds=None, force=False, report=None, extra=None):
        n = int(recipe.name.rsplit("-t", 1)[1])
        calls.append((n, list(folds)))
        if values_by_trial(n, recipe) is None:
            raise RuntimeError(f"exploded in trial {n}")
        for k in folds:
            vals = values_by_trial(n, recipe)
            for epoch, v in enumerate(vals, 1):
                report(epoch, v)
            write_json(recipe.run_dir / f"fold{k}" / "done.json", {"score": vals[-1]})
            (recipe.run_dir / f"fold{k}" / "model.pt").write_bytes(b"weights")
        return None

    return train_recipe


def test_failing_trial_is_recorded_and_study_goes_on(tmp_path):
    calls = []
    r = _recipe(tmp_path, space={"linear.C": SPACE["linear.C"]})
    storage = f"sqlite:///{tmp_path / 'opt.db'}"
    out = run_tune(r, trials=3, storage=storage, overlay_dir=tmp_path / "tuned", plots=False,
                   trainer=_fake_trainer(lambda n, r: None if n == 1 else [0.5, 0.6], calls),
                   fold_seed=r.data.fold_seed)
    assert out["counts"] == {"COMPLETE": 2, "FAIL": 1}
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert trials[1].state == optuna.trial.TrialState.FAIL
    assert "exploded in trial 1" in trials[1].user_attrs["error"]
    assert trials[2].state == optuna.trial.TrialState.COMPLETE and trials[2].value == 0.6
    tune_dir = tmp_path / "runs" / "tune" / "tiny"
    assert (tune_dir / "trial_2" / "tiny-t2" / "fold0" / "done.json").exists()
    assert not list(tune_dir.rglob("*.pt"))  # trial weights are not kept


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_bad_epochs_get_pruned_with_steps_unique_across_folds(tmp_path, pruner):
    calls = []

    def values(n, recipe):  # the first trials are good; later ones are poor from epoch 1
        base = 0.9 if n < 5 else 0.3
        return [base, base + 0.02]

    r = _recipe(tmp_path, space={"linear.C": SPACE["linear.C"]})
    storage = f"sqlite:///{tmp_path / 'opt.db'}"
    out = run_tune(r, trials=8, storage=storage, n_folds=2, pruner=pruner,
                   overlay_dir=tmp_path / "tuned", plots=False,
                   trainer=_fake_trainer(values, calls), fold_seed=r.data.fold_seed)
    assert out["counts"].get("PRUNED", 0) >= 2
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert sorted(trials[0].intermediate_values) == [1, 2, 1001, 1002]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(t.number >= 5 and max(t.intermediate_values.values()) < 0.5 for t in pruned)
    assert out["best_value"] == pytest.approx(0.92)


def test_no_pruner_never_prunes(tmp_path):
    r = _recipe(tmp_path, space={"linear.C": SPACE["linear.C"]})
    out = run_tune(r, trials=6, storage=f"sqlite:///{tmp_path / 'opt.db'}", pruner="none",
                   overlay_dir=tmp_path / "tuned", plots=False,
                   trainer=_fake_trainer(lambda n, r: [0.9 if n < 5 else 0.1], []),
                   fold_seed=r.data.fold_seed)
    assert out["counts"] == {"COMPLETE": 6}


def test_workers_get_distinct_reproducible_samplers(tmp_path):
    assert worker_seed(42, 0) == worker_seed(42, 0) != worker_seed(42, 1)
    assert worker_seed(43, 0) != worker_seed(42, 0)

    def first_points(worker):
        study = optuna.create_study(sampler=make_sampler(42, worker))
        return [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(3)]

    assert first_points(0) == first_points(0) and first_points(1) == first_points(1)
    assert not set(first_points(0)) & set(first_points(1))
    # the workers joining a study are numbered in turn, each study on its own
    storage = open_storage(f"sqlite:///{tmp_path / 'opt.db'}")
    assert [claim_worker(storage, "s") for _ in range(3)] == [0, 1, 2]
    assert claim_worker(storage, "other") == 0


def test_workers_with_one_seed_draw_other_points_and_repeat_them(tmp_path):
    def tune(name, **kw):
        r = _recipe(tmp_path / name, space={"linear.C": SPACE["linear.C"]})
        storage = f"sqlite:///{tmp_path / name / 'opt.db'}"
        run_tune(r, trials=2, storage=storage, overlay_dir=tmp_path / name / "tuned",
                 plots=False, trainer=_fake_trainer(lambda n, r: [0.5], []),
                 fold_seed=r.data.fold_seed, **kw)
        return [t.params["linear.C"] for t in
                optuna.load_study(study_name="tiny", storage=storage).trials]

    tune("a")
    shared = tune("a")  # a second worker on the same study, same --seed
    assert len(set(shared)) == 4
    tune("b")
    assert tune("b") == shared  # the same history of workers draws the same points
    assert tune("c", worker=1) == shared[2:]  # the index alone picks a worker's points


def test_bad_storage_and_folds_are_one_line_errors(tmp_path):
    r = _recipe(tmp_path, space={"linear.C": SPACE["linear.C"]})
    with pytest.raises(CompError, match="--storage") as e:
        run_tune(r, trials=1, storage="nosuchdb://x/y")
    assert "\n" not in str(e.value)
    with pytest.raises(CompError, match="--folds"):
        run_tune(r, trials=1, n_folds=4)


def test_cli_tune_runs_and_overlay_trains(small_comp, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "tiny_lr.toml"
    recipe.write_text('kind = "linear"\n[data]\nfolds = 3\n[linear]\nmin_df = 1\n'
                      '[tune]\n"linear.C" = {type = "float", low = 0.1, high = 10.0, log = true}'
                      '\n', encoding="utf-8")
    base = [str(recipe), "--data", str(small_comp)]
    assert cli.main(["tune", *base, "--trials", "1"]) == 0
    assert "best trial" in capsys.readouterr().out
    overlay = tmp_path / "recipes" / "tuned" / "tiny_lr.toml"
    assert (tmp_path / "runs" / "optuna.db").exists() and overlay.exists()
    assert cli.main(["train", *base, "--overlay", str(overlay)]) == 0
    trained = read_toml(tmp_path / "runs" / "tiny_lr" / "recipe.toml")
    assert trained["linear"]["C"] == read_toml(overlay)["linear"]["C"]
    # the member says its values were chosen on another fold table than its CV's
    cv = json.loads((tmp_path / "runs" / "tiny_lr" / "cv.json").read_text())
    assert cv["tuned_on"] == {"fold_seed": 1042, "same_folds": False}
