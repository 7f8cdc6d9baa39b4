"""The HTML report: parses, embeds PNGs, shows each section when its inputs exist."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from comp.core.utils import save_npy, write_json
from comp.report import _series, build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects img sources, headings and table cells; fails on unbalanced tables."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.h2: list[str] = []
        self.cells: list[str] = []
        self.stack: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        elif tag in ("table", "tr", "td", "th", "h2"):
            self.stack.append(tag)
            self._in = tag

    def handle_endtag(self, tag):
        if tag in ("table", "tr", "td", "th", "h2"):
            assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"
            self._in = None

    def handle_data(self, data):
        if self._in == "h2":
            self.h2.append(data)
        elif self._in in ("td", "th"):
            self.cells.append(data.strip())


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page.stack
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    return page


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def project(tmp_path):
    """A tiny competition with three members, an epochs log and a tuning plot."""
    from comp.config.schema import DataConfig
    from comp.data.competition import load_competition
    from comp.data.folds import folds_hash, load_folds

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    n, nt = 90, 30
    labels = rng.choice(["正面", "负面", "中性"], n)
    (data / "train.csv").write_text(
        "id,text,label\n" + "\n".join(f"t{i},文本{i},{labels[i]}" for i in range(n)) + "\n",
        encoding="utf-8")
    (data / "test.csv").write_text("id,text\n" + "\n".join(f"s{i},测试{i}" for i in range(nt))
                                   + "\n", encoding="utf-8")
    cfg = DataConfig(dir=str(data), folds=3)
    comp = load_competition(cfg)
    folds = load_folds(comp, cfg)
    answers = rng.choice(comp.classes, nt)
    (data / "answers.csv").write_text(
        "id,label\n" + "\n".join(f"s{i},{answers[i]}" for i in range(nt)) + "\n",
        encoding="utf-8")
    C = len(comp.classes)
    hashes = {"folds_hash": folds_hash(comp.train_ids, folds), "train_hash": comp.train_hash,
              "test_hash": comp.test_hash}
    runs = tmp_path / "runs"
    dirs = []
    for m, s in enumerate([0.5, 1.5, 3.0]):
        d = runs / f"member{m}"
        oof = _softmax(s * np.eye(C)[comp.labels] + rng.normal(size=(n, C)))
        test = _softmax(s * np.eye(C)[[comp.classes.index(a) for a in answers]]
                        + rng.normal(size=(nt, C)))
        save_npy(d / "oof.npy", oof)
        save_npy(d / "test.npy", test)
        write_json(d / "classes.json", comp.classes)
        fs = [float((oof[folds == k].argmax(1) == comp.labels[folds == k]).mean())
              for k in range(3)]
        write_json(d / "cv.json", {"name": f"member{m}", "metric": "accuracy",
                                   "cv": float(np.mean(fs)), "fold_scores": fs, **hashes,
                                   "n_train": n, "n_test": nt, "kind": "linear", "seconds": 1})
        (d / "recipe.toml").write_text(f'[data]\ndir = "{data.as_posix()}"\nfolds = 3\n',
                                       encoding="utf-8")
        dirs.append(d)
    write_json(dirs[2] / "epochs.json", [{"fold": k, "epoch": e, "train_loss": 1.0 / (e + 1),
                                          "val_accuracy": 0.5 + 0.1 * e}
                                         for k in range(3) for e in range(3)])
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([1, 2, 3])
    (runs / "tune").mkdir()
    fig.savefig(runs / "tune" / "history.png")
    return {"cfg": cfg, "runs": runs, "dirs": dirs, "tmp": tmp_path}


def test_report_with_ensembles_labels_and_answers(project, capsys):
    from comp.blend.ensemble import run_ensemble

    subs = project["tmp"] / "submissions"
    subs.mkdir()
    run_ensemble(project["dirs"], "hill", project["cfg"], "accuracy", subs, n_iter=5)
    run_ensemble(project["dirs"], "stack", project["cfg"], "accuracy", subs)
    # a pseudo-label file lives beside the submissions; it is not one to score
    (subs / "pseudo.csv").write_text("id,text,label\nx9,文本,neg\n", encoding="utf-8")
    out = build_report(project["dirs"], subs, project["tmp"] / "reports" / "index.html",
                       project["cfg"])
    assert out.exists()
    page = parse(out)
    # fold plot, correlation, 2 weight charts, confusion, learning curves, tuning png
    assert len(page.imgs) >= 7
    assert {"Leaderboard", "OOF correlation", "Ensemble weights",
            "Hidden score (answers.csv)", "Tuning"} <= set(page.h2)
    assert any(h.startswith("Best submission") for h in page.h2)
    assert any(h.startswith("Learning curves") for h in page.h2)
    for name in ("member0", "member1", "member2", "hill", "stack", "macro"):
        assert name in page.cells, name
    assert any("正面" in c for c in page.cells)  # per-class F1 table
    # members are scored on the hidden answers straight from test.npy; the strong one wins
    i = page.cells.index("member2 (test.npy)")
    assert float(page.cells[i + 1]) > 0.8
    assert float(page.cells[page.cells.index("member0 (test.npy)") + 1]) < 0.8
    # the hidden-score table lists both submission CSVs with an accuracy in [0, 1]
    csvs = sorted(p.name for p in subs.glob("*_cv*.csv"))
    assert len(csvs) == 2 and all(c in page.cells for c in csvs)
    assert "pseudo.csv" not in page.cells and "pseudo.csv" not in capsys.readouterr().err
    i = page.cells.index(csvs[0])
    assert 0.0 <= float(page.cells[i + 1]) <= 1.0


def test_report_members_only_without_data(project, tmp_path):
    for d in project["dirs"]:
        (d / "recipe.toml").unlink()
    out = build_report(project["dirs"], tmp_path / "no_subs", tmp_path / "r.html")
    page = parse(out)
    assert "Leaderboard" in page.h2 and "Hidden score (answers.csv)" not in page.h2
    assert len(page.imgs) >= 3  # fold plot, correlation, learning curves (+ tuning)
    assert "member2" in page.cells


def test_report_notes_members_it_cannot_compare(project, tmp_path):
    bad = project["runs"] / "broken"
    bad.mkdir()
    write_json(bad / "cv.json", {"name": "broken", "metric": "accuracy", "cv": 0.1})
    out = build_report(project["dirs"] + [bad], tmp_path / "none", tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    assert "skipped" in text and "missing oof.npy" in text
    assert "broken" in parse(out).cells  # still on the leaderboard from its cv.json


@pytest.mark.parametrize("log", [
    [{"fold": 0, "epoch": 1, "loss": 0.5}, {"fold": 0, "epoch": 2, "loss": 0.4}],
    {"epochs": [{"fold": 0, "loss": 0.5}, {"fold": 0, "loss": 0.4}]},
    {"0": {"loss": [0.5, 0.4]}},
])
def test_epoch_logs_of_several_shapes(log):
    series = _series(json.loads(json.dumps(log)))
    assert series == {"0": {"loss": [0.5, 0.4]}}


@pytest.mark.parametrize("per_fold", [False, True])
def test_report_shows_the_pseudo_label_round(project, per_fold):
    """A `_pl` member beside its base member and an ensemble with it beside the one without:
    CV and hidden accuracy before and after; honest CV only with per-fold pseudo-labels."""
    import shutil

    from comp.blend.ensemble import run_ensemble
    from comp.core.utils import read_json
    from comp.data.readers import read_answers

    base = project["dirs"][1]
    pl = project["runs"] / "member1_pl"
    shutil.copytree(base, pl)
    classes = read_json(base / "classes.json")
    ans = read_answers(project["tmp"] / "data" / "answers.csv")
    truth = [classes.index(ans[f"s{i}"]) for i in range(len(ans))]
    save_npy(pl / "test.npy", np.eye(len(classes))[truth] * 0.9 + 0.1 / len(classes))
    cv = read_json(base / "cv.json")
    write_json(pl / "cv.json", {**cv, "name": "member1_pl", "cv": cv["cv"] + 0.05,
                                "extra_rows": 17, "extra_per_fold": per_fold})
    subs = project["tmp"] / "submissions"
    subs.mkdir()
    run_ensemble(project["dirs"], "hill", project["cfg"], "accuracy", subs / "hill", n_iter=5)
    run_ensemble(project["dirs"] + [pl], "hill", project["cfg"], "accuracy", subs / "pl_hill",
                 n_iter=5)
    out = build_report(project["dirs"] + [pl], subs, project["tmp"] / "r.html", project["cfg"])
    page = parse(out)
    assert "Pseudo-label round" in page.h2
    i = len(page.cells) - 1 - page.cells[::-1].index("member1_pl")  # the section's table
    assert page.cells[i - 1] == "member1"
    before, after, delta = (float(x) for x in page.cells[i + 1: i + 4])
    assert before == pytest.approx(cv["cv"], abs=1e-4)
    assert after == pytest.approx(cv["cv"] + 0.05, abs=1e-4)
    assert delta == pytest.approx(0.05, abs=2e-4)
    hidden_before, hidden_after = float(page.cells[i + 4]), float(page.cells[i + 5])
    assert hidden_after == 1.0 and hidden_before < 1.0
    assert page.cells[i + 7] == "17"  # pseudo rows it trained with
    assert page.cells[i + 8] == ("yes" if per_fold else "no")
    text = out.read_text(encoding="utf-8")
    assert ("CV after the round is honest" in text) == per_fold
    assert ("CV after the round can flatter it" in text) != per_fold
    mans = {read_json(p)["name"]: read_json(p) for p in subs.glob("*.json")}
    j = len(page.cells) - 1 - page.cells[::-1].index("pl_hill")
    assert page.cells[j - 1] == "hill" and page.cells[j - 2] == "hill"  # method, before
    assert float(page.cells[j + 1]) == pytest.approx(mans["hill"]["cv"], abs=1e-4)
    assert float(page.cells[j + 2]) == pytest.approx(mans["pl_hill"]["cv"], abs=1e-4)
    assert 0.0 <= float(page.cells[j + 4]) <= 1.0 and 0.0 <= float(page.cells[j + 5]) <= 1.0


def test_report_without_pl_members_has_no_pseudo_section(project, tmp_path):
    page = parse(build_report(project["dirs"], tmp_path / "none", tmp_path / "r.html",
                              project["cfg"]))
    assert "Pseudo-label round" not in page.h2 and "Leaderboard" in page.h2
