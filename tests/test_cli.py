import argparse
import re
import subprocess
import sys

import pytest

from comp.cli import _recipe, build_parser, main


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_lists_every_command(capsys):
    commands = _commands(build_parser())
    assert {"data", "folds", "pretrain", "vectors", "train", "tune", "pseudo", "ensemble",
            "distill", "report", "leaderboard", "score", "run"} <= set(commands)
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    # the command list only (argparse lists a subcommand there only when it has a help text),
    # not the examples of the epilog
    listing = out.split("positional arguments:")[1].split("options:")[0]
    for name in commands:
        assert re.search(rf"^ {{4}}{re.escape(name)}(  |\n)", listing, re.M), name


def _overlay(tmp_path, text):
    path = tmp_path / "tuned.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_set_beats_overlay(tmp_path):
    ov = _overlay(tmp_path, "[linear]\nC = 2.0\nmin_df = 3\n")
    args = build_parser().parse_args(["train", "recipes/tfidf_char_svc.toml", "--overlay", ov,
                                      "--set", "linear.C=0.3"])
    r = _recipe(args)
    assert r.linear.C == 0.3  # regression: the overlay used to override --set
    assert r.linear.min_df == 3  # the overlay's other keys still apply


def test_metric_choices_come_from_the_registry(capsys):
    from comp.core.metrics import metric_names

    p = build_parser()
    for name in metric_names():
        assert p.parse_args(["run", "--metric", name]).metric == name
        assert p.parse_args(["ensemble", "runs/x", "--metric", name]).metric == name
    assert p.parse_args(["run"]).metric is None
    with pytest.raises(SystemExit):
        p.parse_args(["run", "--metric", "f2"])
    assert "invalid choice: 'f2'" in capsys.readouterr().err


def test_bad_recipe_key_is_one_line_exit_2(tmp_path, capsys):
    assert main(["train", "recipes/tfidf_char_svc.toml", "--set", "linear.C=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["comp train: error: recipe key 'linear.C': must be > 0"]


def test_missing_label_column_via_cli(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("id,text\n1,好\n", encoding="utf-8")
    (tmp_path / "test.csv").write_text("id,text\n2,坏\n", encoding="utf-8")
    code = main(["train", "recipes/tfidf_char_svc.toml", "--data", str(tmp_path),
                 "--set", f"runs_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "train.csv" in err[0] and "'label'" in err[0]


def test_train_then_score_end_to_end(small_comp, tmp_path):
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "comp"]
    r = subprocess.run(cmd + ["train", "recipes/tfidf_char_svc.toml", "--data", str(small_comp),
                              "--set", f"runs_dir={runs}", "--set", "data.folds=3"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "OOF accuracy=" in r.stdout
    assert (runs / "tfidf_char_svc" / "oof.npy").exists()


def test_quiet_keeps_warnings_and_results_but_not_progress_lines(tmp_path, capsys):
    import csv
    import logging

    rows = [(f"r{i}", f"text number {i}", "ab"[i % 2]) for i in range(20)] + [("r99", "x", "c")]
    outs = {}
    for quiet in (False, True):
        d = tmp_path / f"quiet{quiet}"
        d.mkdir()
        for name, header, body in (("train.csv", ("id", "text", "label"), rows),
                                   ("test.csv", ("id", "text"), [("t1", "y")])):
            with open(d / name, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows([header, *body])
        assert main(["--quiet"] * quiet + ["folds", str(d), "--k", "3"]) == 0
        outs[quiet] = capsys.readouterr()
    # class 'c' has 1 row for 3 folds: a warning; writing folds.csv: a progress line
    loud = outs[False].err.splitlines()
    assert any(x.startswith("warning: 1 class(es)") for x in loud)
    assert any(x.startswith("folds: wrote") for x in loud)
    assert outs[True].err.splitlines() == [x for x in loud if x.startswith("warning:")]
    assert outs[True].out.replace("quietTrue", "quietFalse") == outs[False].out
    assert logging.getLogger("comp").getEffectiveLevel() == logging.INFO  # restored
