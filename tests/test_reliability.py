"""The bad-input matrix, crash-resume, determinism and atomic writes (README: Reliability)."""

import csv
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comp.blend.submit import write_submission
from comp.config.schema import DataConfig
from comp.core.utils import CompError, atomic_path, save_npy
from comp.data.competition import load_competition
from comp.data.recipes import load_recipe
from comp.members.linear import train_linear


def _write(path, header, rows, encoding="utf-8"):
    with open(path, "w", encoding=encoding, newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _folder(tmp_path, train, test, train_header=("id", "text", "label"), encoding="utf-8"):
    _write(tmp_path / "train.csv", train_header, train, encoding)
    _write(tmp_path / "test.csv", ("id", "text"), test, encoding)
    return DataConfig(dir=str(tmp_path))


TRAIN = [("a", "好书", "pos"), ("b", "差评", "neg"), ("c", "很棒", "pos")]
TEST = [("x", "还行")]


def _one_line_error(cfg, *needles):
    with pytest.raises(CompError) as e:
        load_competition(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_empty_file(tmp_path):
    cfg = _folder(tmp_path, TRAIN, TEST)
    (tmp_path / "train.csv").write_text("")
    _one_line_error(cfg, "train.csv", "empty")


def test_header_only(tmp_path):
    cfg = _folder(tmp_path, [], TEST)
    _one_line_error(cfg, "train.csv", "header only")


def test_missing_text_column(tmp_path):
    cfg = _folder(tmp_path, [("a", "pos"), ("b", "neg")], TEST, train_header=("id", "label"))
    _one_line_error(cfg, "train.csv", "'text'")


def test_missing_label_column(tmp_path):
    cfg = _folder(tmp_path, [("a", "x")], TEST, train_header=("id", "text"))
    _one_line_error(cfg, "train.csv", "'label'")


def test_nan_label(tmp_path):
    cfg = _folder(tmp_path, TRAIN + [("d", "一般", "")], TEST)
    _one_line_error(cfg, "train.csv", "row 5", "'label'")


def test_nan_and_empty_texts_warned_with_count(tmp_path):
    cfg = _folder(tmp_path, TRAIN + [("d", "NaN", "neg"), ("e", "", "pos")], TEST)
    comp = load_competition(cfg)
    assert len(comp.train_texts) == 5 and comp.train_texts[3:] == ["", ""]
    assert any("2 empty or NaN" in w for w in comp.warnings)


def test_duplicate_ids(tmp_path):
    cfg = _folder(tmp_path, TRAIN + [("a", "重复", "neg")], TEST)
    _one_line_error(cfg, "train.csv", "row 5", "duplicate id 'a'")


def test_test_ids_absent_from_sample(tmp_path):
    cfg = _folder(tmp_path, TRAIN, TEST + [("y", "多余")])
    _write(tmp_path / "sample_submission.csv", ("id", "label"), [("x", "pos")])
    _one_line_error(cfg, "sample_submission.csv", "'y'")


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "utf-8-sig"])
def test_gbk_and_bom_files(tmp_path, encoding):
    cfg = _folder(tmp_path, TRAIN + [("d", "繁體字測試", "pos")], TEST, encoding=encoding)
    comp = load_competition(cfg)
    assert comp.train_texts[-1] == "繁體字測試"


def test_fifty_thousand_character_text_trains(tmp_path):
    long = "这本书很好看" * 8400  # 50,400 characters
    rows = [(f"r{i}", t, y) for i, (t, y) in enumerate(
        [(long, "pos")] + [("好书推荐", "pos"), ("太差了", "neg")] * 6)]
    cfg = _folder(tmp_path, rows, TEST)
    comp = load_competition(cfg)
    assert len(comp.train_texts[0]) == 50_400
    r = load_recipe(None, [f"data.dir={tmp_path}", "data.folds=2", f"runs_dir={tmp_path}/r",
                           "linear.min_df=1"])
    assert train_linear(r)["n_train"] == 13


def test_control_characters_removed_with_count(tmp_path):
    cfg = _folder(tmp_path, TRAIN + [("d", "坏\x07书\x00", "neg")], TEST)
    comp = load_competition(cfg)
    assert comp.train_texts[-1] == "坏书"
    assert any("control characters from 1" in w for w in comp.warnings)


def test_emoji_and_traditional_characters_kept(tmp_path):
    cfg = _folder(tmp_path, TRAIN + [("d", "好評😀👍🏽", "pos")], TEST)
    assert load_competition(cfg).train_texts[-1] == "好評😀👍🏽"


def test_unseen_label_in_pseudo_file(tmp_path):
    from comp.kfold.extra import read_pseudo

    f = tmp_path / "p.csv"
    f.write_text("id,text,label\n1,好,pos\n2,坏,maybe\n", encoding="utf-8")
    with pytest.raises(CompError, match=r"p.csv: row 3: column 'label': unseen label"):
        read_pseudo(f, ["neg", "pos"])


@pytest.mark.parametrize("override, key", [("train.nope=1", "train.nope"),
                                           ("train.epochs_frozen='x'", "train.epochs_frozen"),
                                           ("train.warmup=3.0", "train.warmup")])
def test_recipe_errors(override, key):
    with pytest.raises(CompError, match=f"'{key}'"):
        load_recipe(None, [override])


# ---------------------------------------------------------------------------------------------
# atomic writes

def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "oof.npy"
    save_npy(target, np.ones(3))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash mid-write")
    assert np.load(target).tolist() == [1, 1, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["oof.npy"]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(0.01, 1.0), min_size=2, max_size=2))
def test_submission_writer_labels_follow_argmax(small_comp, tmp_path, row):
    comp = load_competition(DataConfig(dir=str(small_comp)))
    proba = np.tile(np.array(row), (len(comp.test_ids), 1))
    path = write_submission(comp, proba, comp.classes, tmp_path / "s", {"cv": 0.5})
    labels = {r[1] for r in list(csv.reader(open(path, encoding="utf-8")))[1:]}
    assert labels == {comp.classes[int(np.argmax(row))]}


# ---------------------------------------------------------------------------------------------
# crash-resume and determinism

SCRIPT = textwrap.dedent("""
    import sys, time, pathlib
    import numpy as np
    from comp.data.recipes import load_recipe
    from comp.kfold.runner import run_member

    data, runs, crash_fold = sys.argv[1], sys.argv[2], int(sys.argv[3])
    r = load_recipe(None, [f"data.dir={data}", "data.folds=3", f"runs_dir={runs}", "name=m"])

    def fit(ctx):
        if ctx.fold == crash_fold:
            (ctx.dir / "partial.bin").write_bytes(b"half a checkpoint")
            pathlib.Path(runs, "started").write_text("1")
            time.sleep(60)
        rng = np.random.default_rng(ctx.fold)
        y = ctx.comp.labels[ctx.train_idx]
        p = np.bincount(y, minlength=2) / len(y) + rng.random(2) * 0.01
        p = p / p.sum()
        return np.tile(p, (len(ctx.val_idx), 1)), np.tile(p, (len(ctx.comp.test_ids), 1))

    run_member(r, fit)
""")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_kill_during_fold_then_resume_matches_uninterrupted(small_comp, tmp_path):
    script = tmp_path / "member.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, str(script), str(small_comp), str(runs), "1"],
                            env=env, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if (runs / "started").exists():
            break
        time.sleep(0.1)
    assert (runs / "started").exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fold0 = {p.name: _sha(p) for p in (runs / "m" / "fold0").iterdir()}
    assert not (runs / "m" / "fold1" / "done.json").exists()
    assert not (runs / "m" / "oof.npy").exists()

    subprocess.run([sys.executable, str(script), str(small_comp), str(runs), "-1"], env=env,
                   check=True, stderr=subprocess.DEVNULL)
    assert {p.name: _sha(p) for p in (runs / "m" / "fold0").iterdir()} == fold0
    assert not (runs / "m" / "fold1" / "partial.bin").exists()  # restarted cleanly

    clean = tmp_path / "clean"
    subprocess.run([sys.executable, str(script), str(small_comp), str(clean), "-1"], env=env,
                   check=True, stderr=subprocess.DEVNULL)
    assert np.array_equal(np.load(runs / "m" / "oof.npy"), np.load(clean / "m" / "oof.npy"))
    assert np.array_equal(np.load(runs / "m" / "test.npy"), np.load(clean / "m" / "test.npy"))


def test_linear_member_is_deterministic(small_comp, tmp_path):
    out = []
    for run in ("a", "b"):
        r = load_recipe("recipes/tfidf_char_svc.toml", [f"data.dir={small_comp}",
                        "data.folds=3", f"runs_dir={tmp_path / run}", "linear.min_df=1"])
        train_linear(r)
        out.append(np.load(r.run_dir / "oof.npy"))
    assert np.array_equal(out[0], out[1])


def test_log_lines_go_to_the_stderr_of_the_moment_bare(capsys):
    import contextlib
    import io
    import logging

    from comp.core.utils import LOGGER, log

    log("members: 3 trained")
    log("warning: fold 2 is small")
    assert capsys.readouterr() == ("", "members: 3 trained\nwarning: fold 2 is small\n")
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        log("into the redirect")
    assert buf.getvalue() == "into the redirect\n" and capsys.readouterr().err == ""
    LOGGER.setLevel(logging.WARNING)  # comp --quiet
    try:
        log("progress")
        log("warning: kept")
        log("a notice", level=logging.WARNING)
    finally:
        LOGGER.setLevel(logging.INFO)
    assert capsys.readouterr().err == "warning: kept\na notice\n"


class _Terminal:
    """A stand-in stderr that says it is a terminal."""

    def __init__(self):
        self.text = []

    def write(self, s):
        self.text.append(s)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_progress_draws_on_a_terminal_only(monkeypatch, capsys):
    from comp.core.utils import progress

    monkeypatch.delenv("COMP_QUIET", raising=False)
    # redirected (capsys: not a TTY): nothing drawn, the API still works
    bar = progress(range(500), desc="epoch 1")
    seen = []
    for i in bar:
        seen.append(i)
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    bar.close()
    assert seen == list(range(500)) and capsys.readouterr().err == ""
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert list(progress(range(3), desc="epoch 2")) == [0, 1, 2]
    assert "epoch 2" in "".join(term.text)
    monkeypatch.setenv("COMP_QUIET", "1")  # set by the test suite, CI and DDP children
    term.text.clear()
    assert list(progress(range(3), desc="epoch 3")) == [0, 1, 2] and not term.text
