import subprocess
import sys

import pytest

from comp.cli import main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("data", "train", "tune", "pseudo", "ensemble", "distill", "report", "score",
                "run", "pretrain", "vectors"):
        assert cmd in out


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
