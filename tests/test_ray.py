"""--executor ray: every (member, fold) a Ray task on a local cluster (one per module), writing
the same fold markers, OOF and submission as the sequential run; a killed worker's fold is
retried from nothing; a task that raises is one line naming member and fold while the others
finish; Optuna workers as Ray tasks share one study."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import make_small_competition, write_train_test

ray = pytest.importorskip("ray")

from comp.cli import main  # noqa: E402
from comp.core.utils import CompError  # noqa: E402
from comp.data.recipes import load_recipe  # noqa: E402
from comp.members.registry import train_recipe  # noqa: E402
from comp.workflows import fanout  # noqa: E402
from comp.workflows.fanout import FoldTask, run_fold_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    fanout.start_ray(None, 2)
    yield
    ray.shutdown()


def _tfidf(data, runs, *over):
    return load_recipe(ROOT / "recipes" / "tfidf_char_lr.toml",
                       [f"data.dir={data}", f"runs_dir={runs}", "data.folds=3", *over])


def test_quick_run_on_ray_gives_the_sequential_submission(tmp_path, monkeypatch):
    d = make_small_competition(tmp_path / "comp", n_train=300, n_test=60)
    out = {}
    for mode in ("local", "ray"):
        home = tmp_path / mode
        home.mkdir()
        monkeypatch.chdir(home)
        args = ["run", "--data", str(d), "--quick", "--stages", "data,linear,ensemble"]
        assert main(args + (["--executor", "ray", "--jobs", "2"] if mode == "ray" else [])) == 0
        (d / "folds.csv").unlink()  # each mode makes the table itself (the same seed)
        (d / "folds.json").unlink()
        runs = home / "runs" / "comp"
        out[mode] = {p.relative_to(runs): p.read_bytes()
                     for p in runs.glob("*/oof.npy")}
        out[mode]["sub"] = next((home / "submissions" / "comp").glob("*.csv")).read_bytes()
        markers = sorted(runs.glob("*/fold*/done.json"))
        out[mode]["markers"] = [(p.relative_to(runs), json.loads(p.read_text())["inputs"])
                                for p in markers]
    assert len(out["local"]) == 5  # three members' OOF, the submission, the markers
    assert out["ray"] == out["local"]  # bit-identical OOF and submission, the same markers


def test_rerun_in_the_other_mode_skips_finished_folds(tmp_path, capsys):
    d = make_small_competition(tmp_path / "c", n_train=150, n_test=20)
    r = _tfidf(d, tmp_path / "runs")
    assert train_recipe(r, [0, 1]) is None  # sequential: two folds
    res = run_fold_tasks([FoldTask(r, f) for f in range(3)], jobs=2)
    assert set(res.seconds) == {(r.name, 0), (r.name, 1), (r.name, 2)}
    first = (r.run_dir / "fold0" / "done.json").read_text()
    capsys.readouterr()
    cv = train_recipe(r)  # every fold current: nothing retrained, the member assembled
    assert cv is not None and (r.run_dir / "fold0" / "done.json").read_text() == first
    assert "folds 0,1,2 current, skipped" in capsys.readouterr().err


def _big_competition(root, n=6000, seed=0):
    """Long random texts, so a TF-IDF fold takes seconds: time to kill its worker."""
    rng = np.random.default_rng(seed)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]
    texts = ["".join(rng.choice(chars, 120)) + f"{i}" for i in range(n)]
    labels = rng.choice(["a", "b", "c"], n)
    return write_train_test(root, texts, labels, texts[:50])


def test_a_killed_worker_is_retried_and_the_oof_is_the_sequential_one(tmp_path):
    d = _big_competition(tmp_path / "big")
    seq = _tfidf(d, tmp_path / "seq", "linear.char_ngram=[1, 3]")
    par = _tfidf(d, tmp_path / "par", "linear.char_ngram=[1, 3]")
    train_recipe(seq)
    killed = []

    def kill_first():
        pid_file = tmp_path / "par" / ".tasks" / f"{par.name}-fold0.json"
        for _ in range(600):
            if pid_file.exists():
                time.sleep(0.5)  # inside the fold's fit
                pid = json.loads(pid_file.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    th = threading.Thread(target=kill_first)
    th.start()
    res = run_fold_tasks([FoldTask(par, f, cost=3 - f) for f in range(3)], jobs=2)
    th.join()
    assert killed and not res.failed and len(res.seconds) == 3
    pid_now = json.loads((tmp_path / "par" / ".tasks" / f"{par.name}-fold0.json").read_text())
    assert pid_now["pid"] != killed[0]  # fold 0 ran again in another worker process
    cv = train_recipe(par)
    assert cv is not None
    assert np.array_equal(np.load(seq.run_dir / "oof.npy"), np.load(par.run_dir / "oof.npy"))


def test_a_raising_task_is_one_line_and_the_others_finish(tmp_path, capsys):
    d = make_small_competition(tmp_path / "c", n_train=150, n_test=20)
    good = _tfidf(d, tmp_path / "runs", "name=good")
    bad = _tfidf(d, tmp_path / "runs", "name=bad", f"train.pseudo={tmp_path / 'nope.csv'}")
    res = run_fold_tasks([FoldTask(bad, 0, 2.0), FoldTask(good, 0), FoldTask(good, 1),
                          FoldTask(good, 2)], jobs=2)
    assert set(res.seconds) == {("good", 0), ("good", 1), ("good", 2)}
    assert [t.label for t, _ in res.failed] == ["bad fold 0"]
    line = res.failed[0][1]
    assert line.startswith("bad fold 0: CompError: ") and "nope.csv" in line
    assert "\n" not in line
    with pytest.raises(CompError, match="1 fold task.s. failed: bad fold 0: CompError"):
        fanout.raise_failures(res)
    # the CLI: the one line, exit code 2
    capsys.readouterr()
    code = main(["train", str(ROOT / "recipes" / "tfidf_char_lr.toml"), "--data", str(d),
                 "--set", f"runs_dir={tmp_path / 'runs'}", "--set", "name=bad2",
                 "--set", "data.folds=3", "--set", f"train.pseudo={tmp_path / 'nope.csv'}",
                 "--executor", "ray", "--jobs", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad2 fold 0: CompError" in err and "Traceback" not in err


def test_tasks_that_cannot_finish_in_the_time_left_are_not_started(tmp_path):
    d = make_small_competition(tmp_path / "c", n_train=150, n_test=20)
    r = _tfidf(d, tmp_path / "runs")
    res = run_fold_tasks([FoldTask(r, 0, 1.0), FoldTask(r, 1, 3600.0)], jobs=1,
                         deadline=time.time() + 600)
    assert [t.fold for t in res.skipped] == [1] and set(res.seconds) == {(r.name, 0)}


def test_resources_by_member_kind_and_recipe():
    lin = load_recipe(ROOT / "recipes" / "tfidf_char_lr.toml")
    net = load_recipe(ROOT / "recipes" / "textcnn_vectors.toml")
    assert fanout.task_resources(lin, 4) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert fanout.task_resources(net, 0) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert fanout.task_resources(net, 2) == {"num_cpus": 1.0, "num_gpus": 1.0}
    big = load_recipe(ROOT / "recipes" / "textcnn_vectors.toml",
                      ["resources.num_cpus=2", "resources.num_gpus=0", "resources.memory=1000"])
    assert fanout.task_resources(big, 2) == {"num_cpus": 2.0, "num_gpus": 0.0, "memory": 1000.0}


def test_tune_workers_as_ray_tasks_share_one_study(tmp_path, small_comp):
    import dataclasses

    r = load_recipe(None, [f"runs_dir={tmp_path / 'runs'}", f"data.dir={small_comp}",
                           "data.folds=3", "name=tiny", "linear.min_df=1"])
    r = dataclasses.replace(r, tune={"linear.C": {"type": "float", "low": 0.1, "high": 10.0,
                                                  "log": True}})
    storage = f"sqlite:///{tmp_path / 'opt.db'}"
    out = fanout.tune_on_ray(r, 2, None, trials=4, storage=storage,
                             overlay_dir=str(tmp_path / "tuned"))
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 4
    workers = optuna.load_study(study_name="tiny.workers", storage=storage)
    assert len(workers.trials) == 2  # two Optuna workers joined, with their own seeds
    assert out["best_value"] == study.best_value
    assert (tmp_path / "tuned" / "tiny.toml").exists()


def test_without_ray_the_local_executor_needs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if not installed
    with pytest.raises(CompError, match=r"pip install 'comp\[ray\]'"):
        fanout.ray_module()
    assert main(["train", "x.toml", "--jobs", "2"]) == 2
    assert "--address and --jobs go with --executor ray" in capsys.readouterr().err


def test_a_networks_folds_train_from_one_state_task_and_match_the_sequential_run(tmp_path):
    """A vectors TextCNN's rows are built by one task and handed to its fold tasks; the OOF is
    the sequential run's (within float noise: one thread per task)."""
    from comp.config.schema import DataConfig
    from comp.data.competition import load_competition
    from comp.nn.vectors import train_vectors

    d = make_small_competition(tmp_path / "c", n_train=150, n_test=20)
    comp = load_competition(DataConfig(dir=str(d)))
    for kind in ("char", "word", "bigram"):
        train_vectors(comp.train_texts + comp.test_texts, kind,
                      tmp_path / "models" / f"w2v-{kind}.kv", dim=16, epochs=1, min_count=1)

    def net(runs):
        return load_recipe(ROOT / "recipes" / "textcnn_vectors.toml", [
            f"data.dir={d}", "data.folds=3", f"runs_dir={runs}",
            f"model.vectors_dir='{tmp_path / 'models'}'", "model.channels=8",
            "model.max_chars=32", "train.epochs_frozen=1", "train.batch_size=32",
            "train.min_steps=0"])

    seq, par = net(tmp_path / "seq"), net(tmp_path / "par")
    train_recipe(seq)
    res = run_fold_tasks([FoldTask(par, f) for f in range(3)], jobs=2)
    assert not res.failed and len(res.seconds) == 3
    for f in range(3):
        task = json.loads((tmp_path / "par" / ".tasks" / f"{par.name}-fold{f}.json").read_text())
        assert task["shared_state"]
    assert train_recipe(par) is not None
    np.testing.assert_allclose(np.load(par.run_dir / "oof.npy"),
                               np.load(seq.run_dir / "oof.npy"), atol=1e-5)


def test_under_ray_the_leftover_budget_buys_folds_and_a_second_seed_as_tasks(
        small_comp, tmp_path, monkeypatch, capsys, tiny_members):
    """`comp run --executor ray` with a budget: the folds the plan left out, and a network's
    second seed, are bought by the leftover budget and trained as Ray tasks too."""
    from comp.core.utils import read_json
    from comp.workflows import pipeline, plan

    monkeypatch.chdir(tmp_path)
    layout = pipeline.Layout(str(small_comp))
    monkeypatch.setattr(pipeline, "PRESETS", {**pipeline.PRESETS, "default": [
        "tfidf_char_lr", "textcnn_vectors"]})
    monkeypatch.setattr(plan, "PARTIAL_OK", ("textcnn_vectors",))
    layout.runs.mkdir(parents=True)  # recorded: 100 s a TextCNN fold, so the plan buys one
    (layout.runs / "speeds.json").write_text(
        '{"textcnn_vectors": {"per_fold_per_1k": 312.5, "setup": 0}}', encoding="utf-8")
    best = pipeline.run_pipeline(str(small_comp), budget=2.5, executor="ray", jobs=2)
    err = capsys.readouterr().err
    assert "textcnn_vectors            folds 0" in err
    assert "budget minutes left: textcnn_vectors adds fold(s) 1," in err
    assert "textcnn_vectors_seed2 starts on fold(s) 0,1,2,3,4 (leftover: a second seed" in err
    tasks = layout.runs / ".tasks"
    for name in ("textcnn_vectors", "textcnn_vectors_seed2"):  # every fold a Ray task
        assert all((tasks / f"{name}-fold{f}.json").exists() for f in range(5))
        assert read_json(layout.runs / name / "cv.json").get("folds_used") is None
    assert sorted(read_json(best.with_suffix(".json"))["member_names"]) == [
        "textcnn_vectors", "textcnn_vectors_seed2", "tfidf_char_lr"]
