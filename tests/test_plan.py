"""`comp run` plans members and folds to a time budget, prints the plan, and ends with the best
ensemble of what it ran."""

import numpy as np
import pytest

import comp.workflows.pipeline as pipeline
import comp.workflows.plan as plan
from comp.core.utils import read_json
from comp.workflows.plan import make_plan, record_speed


def test_the_plan_takes_cheap_members_whole_an_expensive_one_partly_and_skips_the_rest():
    speeds = {"a": {"per_fold_per_1k": 1.0}, "b": {"per_fold_per_1k": 100.0, "setup": 50.0},
              "c": {"per_fold_per_1k": 100.0}}
    plan.PARTIAL_OK = (*plan.PARTIAL_OK, "b")
    try:
        steps = make_plan(["a", "b", "c"], 600.0, 5000, 5, speeds)
    finally:
        plan.PARTIAL_OK = plan.PARTIAL_OK[:-1]
    # a: 5 folds x 4k rows x 1 s = 20 s; b: 50 + 400 s a fold -> one fold fits in 580 s
    assert [(s.name, s.folds) for s in steps] == [("a", None), ("b", [0]), ("c", [])]
    assert steps[0].seconds == 20.0 and steps[1].seconds == 450.0
    assert "not started" in steps[2].note
    assert make_plan(["a", "b", "c"], None, 5000, 5, speeds)[2].folds is None  # no budget


def test_folds_already_trained_cost_nothing_so_a_resumed_run_spends_the_budget_on_the_rest():
    speeds = {"a": {"per_fold_per_1k": 1.0}, "b": {"per_fold_per_1k": 100.0, "setup": 50.0}}
    plan.PARTIAL_OK = (*plan.PARTIAL_OK, "b")
    try:
        # b's fold 0 is trained: 580 s left after a buy fold 1 (50 + 400), not fold 0 again
        steps = make_plan(["a", "b"], 600.0, 5000, 5, speeds, {"b": {0}})
        assert steps[1].folds == [0, 1] and steps[1].seconds == 450.0
        assert "1 already trained" in steps[1].note
        # no time left: b keeps the folds it has, at no cost
        steps = make_plan(["a", "b"], 100.0, 5000, 5, speeds, {"b": {0, 2}})
        assert steps[1].folds == [0, 2] and steps[1].seconds == 0.0
    finally:
        plan.PARTIAL_OK = plan.PARTIAL_OK[:-1]
    # every fold trained: current, free, and the next member gets the budget
    steps = make_plan(["b", "a"], 30.0, 5000, 5, speeds, {"b": set(range(5))})
    assert [(s.folds, s.seconds, s.note) for s in steps] == [(None, 0.0, "current"),
                                                            (None, 20.0, "")]


@pytest.mark.parametrize("minutes,rows", [(5, 2000), (20, 13890), (60, 13890), (20, 60000)])
def test_a_first_plan_stays_inside_its_budget_and_cuts_members_by_whole_folds(minutes, rows):
    """Before anything is measured (no speeds.json) the priors plan the default preset: the
    planned minutes stay inside the budget, every member runs on all folds, on its first folds
    (a member allowed to run partly), or not at all, in the preset's order."""
    steps = make_plan(pipeline.PRESETS["default"], minutes * 60.0, rows, 5, {})
    assert sum(s.seconds for s in steps if s.folds != []) <= minutes * 60.0
    for s in steps:
        assert s.folds is None or s.folds == list(range(len(s.folds)))
        if s.folds not in (None, []):
            assert s.name in plan.PARTIAL_OK
    assert [s.name for s in steps] == list(pipeline.PRESETS["default"])


def test_a_budgeted_run_prints_its_plan_and_covers_what_fits(small_comp, tmp_path, monkeypatch,
                                                             capsys, tiny_members):
    """A fusion member that the recorded speeds say fits on one fold is planned on fold 0
    only, then adds the folds its real pace leaves time for, then a second seed; a member that
    fits nowhere is not started."""
    monkeypatch.chdir(tmp_path)
    layout = pipeline.Layout(str(small_comp))
    monkeypatch.setattr(pipeline, "PRESETS", {**pipeline.PRESETS, "default": [
        "tfidf_char_lr", "textcnn_vectors", "fusion_all"]})
    monkeypatch.setattr(plan, "PARTIAL_OK", ("textcnn_vectors",))
    # recorded speeds: the TextCNN costs 100 s a fold of 320 rows, fusion_all far more
    layout.runs.mkdir(parents=True)
    (layout.runs / "speeds.json").write_text(
        '{"textcnn_vectors": {"per_fold_per_1k": 312.5, "setup": 0},'
        ' "fusion_all": {"per_fold_per_1k": 10000, "setup": 0}}', encoding="utf-8")
    best = pipeline.run_pipeline(str(small_comp), budget=2.5)  # 150 s: one TextCNN fold
    err = capsys.readouterr().err
    assert " of 2.5 budget minutes" in err
    assert "textcnn_vectors            folds 0" in err
    assert "fusion_all                 folds none" in err and "not started" in err
    # the recorded speed was 20x too slow: fold 0 took seconds, and the budget left over
    # bought the folds the plan had left out
    assert "budget minutes left: textcnn_vectors adds fold(s) 1,2" in err
    cv = read_json(layout.runs / "textcnn_vectors" / "cv.json")
    assert cv.get("folds_used") is None  # every fold
    # every network done with time to spare: a second seed of the TextCNN on every fold
    assert "textcnn_vectors_seed2 starts on fold(s) 0,1,2,3,4 (leftover: a second seed" in err
    first, second = (np.load(layout.runs / n / "oof.npy")
                     for n in ("textcnn_vectors", "textcnn_vectors_seed2"))
    assert first.shape == second.shape and not np.array_equal(first, second)
    man = read_json(best.with_suffix(".json"))
    assert sorted(man["member_names"]) == ["textcnn_vectors", "textcnn_vectors_seed2",
                                           "tfidf_char_lr"]
    assert "of the 2.5-minute budget)" in err  # where the budget went
    assert "took" in err  # planned vs actual minutes at the end
    # the member's real cost replaced the recorded one
    assert read_json(layout.runs / "speeds.json")["textcnn_vectors"]["per_fold_per_1k"] != 312.5

    # run again: the plan knows what is trained (folds_done) and estimates it at nothing
    pipeline.run_pipeline(str(small_comp), budget=2.5)
    err = capsys.readouterr().err
    assert "tfidf_char_lr              folds all    ~  0.0 min  (current)" in err


def test_record_speed_reads_a_members_cv(tmp_path):
    p = tmp_path / "speeds.json"
    record_speed(p, "m", {"seconds": 40.0, "n_train": 5000}, 5)
    assert np.isclose(read_json(p)["m"]["per_fold_per_1k"], 40.0 / 5 / 4.0)
    record_speed(p, "p", {"seconds": 10.0, "n_train": 5000, "folds_used": [0]}, 5)
    assert np.isclose(read_json(p)["p"]["per_fold_per_1k"], 10.0 / 1 / 4.0)


def test_the_plan_names_the_pseudo_rounds_members_and_their_minutes(capsys):
    """--preset best retrains an e5 member in its pseudo-label round: the printed plan lists
    it with its minutes instead of leaving an hour and a half out of the estimate."""
    names = pipeline.PSEUDO_RECIPES["best"]
    later = plan.pseudo_steps(names, 1, 13890, 5, {})
    assert [s.name for s in later] == [f"{n}_pl" for n in names]
    setup, per_1k = plan.PRIORS["fusion_e5_full160"]
    assert np.isclose(later[-1].seconds, setup + 5 * per_1k * 13890 * 4 / 5 / 1000)
    plan.print_plan(make_plan(pipeline.PRESETS["best"], None, 13890, 5, {}), None, 5, later)
    err = capsys.readouterr().err
    assert f"then ~{sum(s.seconds for s in later) / 60:.1f} for the pseudo-label round" in err
    assert "fusion_e5_full160_pl" in err and "pseudo-label round 1" in err
    assert plan.pseudo_steps(names, 2, 13890, 5, {})[-1].name == "fusion_e5_full160_pl_pl"
    assert plan.pseudo_steps(names, 0, 13890, 5, {}) == []


def test_a_pseudo_round_member_that_the_first_round_did_not_run_gets_its_vectors(
        small_comp, tmp_path, monkeypatch, capsys, tiny_members):
    """As --preset best's second e5: a member only the pseudo-label round trains. Its word2vec
    files are made before it trains (the first round made none), the plan lists it, and it
    joins the pl_ ensembles."""
    monkeypatch.chdir(tmp_path)
    layout = pipeline.Layout(str(small_comp))
    monkeypatch.setattr(pipeline, "PRESETS", {**pipeline.PRESETS, "default": ["tfidf_char_lr"]})
    monkeypatch.setattr(pipeline, "PSEUDO_RECIPES",
                        {**pipeline.PSEUDO_RECIPES, "default": ["textcnn_vectors"]})
    best = pipeline.run_pipeline(str(small_comp), pseudo_rounds=1)
    err = capsys.readouterr().err
    assert "then ~" in err and "textcnn_vectors_pl" in err.split("member ")[0]  # in the plan
    assert all((layout.models / f"w2v-{k}.kv").exists() for k in ("char", "word", "bigram"))
    # run again: the plan finds the pseudo member current on the pseudo rows the run left
    pipeline.run_pipeline(str(small_comp), pseudo_rounds=1)
    assert "(pseudo-label round 1, current if its pseudo rows come out the same)" in (
        capsys.readouterr().err)
    cv = read_json(layout.runs / "textcnn_vectors_pl" / "cv.json")
    assert np.isfinite(cv["cv"]) and not (layout.runs / "textcnn_vectors").exists()
    pl = [read_json(p) for p in layout.submissions.glob("pl_*_cv*.json")]
    assert pl and all("textcnn_vectors_pl" in m["member_names"] for m in pl)
    assert best.exists()


def test_the_leftover_buys_whole_folds_at_the_real_pace_else_one_fold_cut_to_what_is_left():
    """A network planned on fold 0 that took 100 s: 250 s left buy two whole folds; 60 s buy
    one fold with a slice cut to them (at least MIN_SLICE of a fold); 30 s buy nothing. A member
    not started pays its setup in its first fold's pace; one planned on every fold adds none."""
    step = plan.Step("net", [0], 90.0, per_fold=80.0, setup=10.0, actual=100.0)
    assert plan.leftover(step, 5, 250.0) == [1, 2] and step.slice is None
    assert plan.leftover(step, 5, 60.0) == [1]
    assert step.slice == pytest.approx(plan.FOLD_SHARE * 60.0)
    assert plan.time_slice(step, 1) == pytest.approx(plan.FOLD_SHARE * 60.0, abs=0.05)
    assert plan.leftover(plan.Step("net", [0], 90.0, per_fold=80.0, actual=100.0), 5, 30.0) == []
    # a fold costs 200 s; the 900 s it was planned at (not started) are not counted
    fresh = plan.Step("net", [], 900.0, per_fold=80.0, setup=120.0)
    assert plan.leftover(fresh, 5, 150.0) == [0] and fresh.slice is not None
    assert fresh.seconds == 150.0
    assert plan.leftover(plan.Step("net", [], 0.0, per_fold=80.0, setup=120.0), 5, 70.0) == []
    assert plan.leftover(plan.Step("net", None, 0.0, per_fold=80.0), 5, 1e6) == []
    assert plan.leftover(plan.Step("lin", [0], 0.0, per_fold=8.0), 5, 1e6, partial=False) == []


def test_a_members_pace_leaves_out_the_fold_that_filled_its_caches():
    """Fold 0 built the caches later folds (and later calls of the process) reuse: the pace
    the leftover budget buys at is the other folds' mean, not the member's minutes over its
    folds."""
    step = plan.Step("net", [0, 1, 2], 600.0, per_fold=150.0, actual=480.0,
                     fold_seconds=[300.0, 90.0, 80.0])
    assert step.pace() == 85.0
    assert plan.leftover(step, 5, 200.0) == [3, 4]  # 160 s at 480 / 3 would buy one fold
    assert plan.Step("net", [0], 1.0, actual=100.0, fold_seconds=[95.0]).pace() == 100.0
    assert plan.Step("net", [], 1.0).pace() is None


def test_a_folds_time_slice_shares_the_members_setup_among_its_new_folds():
    step = plan.Step("net", None, 500.0, per_fold=100.0, setup=100.0)
    assert plan.time_slice(step, 1) == pytest.approx(plan.FOLD_SHARE * 200.0)
    assert plan.time_slice(step, 4) == pytest.approx(plan.FOLD_SHARE * 125.0)


def test_every_network_may_cover_some_folds_under_a_budget():
    shapes = {"tfidf_char_lr": None, "textcnn_vectors": plan.Shape(5.0, 128, 1000, (3, 0))}
    steps = make_plan(["tfidf_char_lr", "textcnn_vectors"], 140.0, 2000, 5,
                      {"textcnn_vectors": {"per_fold_per_1k": 25.0, "setup": 0.0}},
                      shapes=shapes)
    # TF-IDF takes ~7 s of the 140; 40 s a TextCNN fold: three of five fit in what is left
    assert steps[1].folds == [0, 1, 2]


def test_time_left_when_every_network_finished_buys_a_second_seed_of_the_best_one(tmp_path):
    """The best-ranked network (by OOF; else in the steps' order) that finished every fold and
    fits again on every fold at the pace its folds had, with another seed; nothing when none
    fits, for a member cut to some folds, or for members the caller skips (TF-IDF)."""
    from comp.workflows.pipeline import Layout, member_recipe

    steps = [plan.Step("tfidf_char_lr", None, 10.0, actual=8.0),
             plan.Step("cut_net", [0, 1], 200.0, actual=150.0),
             plan.Step("fusion_e5_fast", None, 600.0, actual=500.0),
             plan.Step("textcnn_vectors", None, 60.0, actual=40.0)]
    copy = plan.second_seed(steps, 5, 600.0, {"tfidf_char_lr"})
    assert copy.name == "fusion_e5_fast_seed2" and copy.folds is None  # 100 s a fold
    assert copy.seconds == 500.0 and copy.per_fold == 100.0
    # 250 s: e5's five folds do not fit (a seed on some folds would move the ensembles'
    # comparison onto those rows), the TextCNN's do
    assert plan.second_seed(steps, 5, 250.0, {"tfidf_char_lr"}).name == "textcnn_vectors_seed2"
    assert plan.second_seed(steps, 5, 30.0, {"tfidf_char_lr"}) is None  # nothing fits
    assert plan.second_seed(steps, 5, 1e4, {"tfidf_char_lr", "textcnn_vectors",
                                            "fusion_e5_fast"}) is None  # cut_net: 2 folds
    # a member's second seed is bought once
    assert plan.second_seed([*steps, copy], 5, 600.0, {"tfidf_char_lr"}).name == \
        "textcnn_vectors_seed2"
    # ranked by OOF: the TextCNN (1st) before e5; unranked members come after ranked ones
    ranked = plan.second_seed(steps, 5, 600.0, {"tfidf_char_lr"},
                              {"textcnn_vectors": 0, "fusion_e5_fast": 1})
    assert ranked.name == "textcnn_vectors_seed2" and ranked.folds is None  # 8 s a fold
    assert plan.seed_copy("fusion_e5_fast_seed2") == ("fusion_e5_fast", 2)
    assert plan.seed_copy("x_seed1") == ("x_seed1", 0) and plan.seed_copy("a") == ("a", 0)
    layout = Layout(str(tmp_path / "comp"))
    first = member_recipe(layout, "fusion_e5_fast", ["train.time_limit=60"])
    second = member_recipe(layout, "fusion_e5_fast_seed2", ["train.time_limit=60"])
    assert second.name == "fusion_e5_fast_seed2" and second.run_dir != first.run_dir
    assert second.train.seed == first.train.seed + 1000 and second.train.time_limit == 60
    assert second.model == first.model
