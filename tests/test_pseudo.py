import csv

import numpy as np
import pytest
from conftest import near_memoriser

from comp.blend.ensemble import run_ensemble
from comp.config.schema import DataConfig
from comp.core.utils import CompError, read_json, write_json
from comp.data.competition import load_competition
from comp.data.folds import load_folds, normalize_text
from comp.data.recipes import load_recipe
from comp.kfold.extra import read_pseudo
from comp.kfold.runner import run_member
from comp.members.linear import train_linear
from comp.workflows.pseudo import make_pseudo, select_confident


def test_select_threshold_top_frac_and_per_class():
    p = np.array([[0.99, 0.01], [0.6, 0.4], [0.3, 0.7], [0.05, 0.95], [0.9, 0.1]])
    assert select_confident(p, threshold=0.9).tolist() == [True, False, False, True, True]
    assert select_confident(p, top_frac=0.4).tolist() == [True, False, False, True, False]
    # per class: the best of each predicted class survives
    assert select_confident(p, top_frac=0.34, per_class=True).tolist() == \
        [True, False, False, True, False]
    with pytest.raises(CompError):
        select_confident(p)


def test_unseen_label_in_pseudo_file_names_row_and_column(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("id,text,label,confidence\n1,好,pos,0.9\n2,坏,meh,0.9\n", encoding="utf-8")
    with pytest.raises(CompError, match=r"row 3: column 'label': unseen label 'meh'"):
        read_pseudo(f, ["neg", "pos"])


def test_pseudo_file_missing_columns_are_named(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("id,text,confidence\n1,好,0.9\n", encoding="utf-8")
    with pytest.raises(CompError, match=r"p\.csv: missing column 'label'$"):
        read_pseudo(f, ["neg", "pos"])
    f.write_text("id,text,label,p_neg\n1,好,pos,0.1\n", encoding="utf-8")
    with pytest.raises(CompError, match=r"missing column 'p_pos' needed for soft pseudo-labels"):
        read_pseudo(f, ["neg", "pos"], soft=True)
    assert len(read_pseudo(f, ["neg", "pos"])) == 1  # hard labels need no p_<class> columns


def test_pseudo_round_never_lets_validation_rows_see_their_labels(small_comp, tmp_path):
    runs = tmp_path / "runs"
    base = [f"data.dir={small_comp}", "data.folds=3", f"runs_dir={runs}", "linear.min_df=1"]
    train_linear(load_recipe("recipes/tfidf_char_lr.toml", base))
    csv_path = run_ensemble([runs / "tfidf_char_lr"], "mean", DataConfig(dir=str(small_comp),
                            folds=3), "accuracy", tmp_path / "subs" / "mean")
    pseudo = make_pseudo(csv_path.with_suffix(".json"), top_frac=0.5)
    # plant copies of validation texts in the pseudo file: the runner must drop them per fold
    comp = load_competition(DataConfig(dir=str(small_comp), folds=3))
    with open(pseudo, "a", encoding="utf-8") as f:
        for t in comp.train_texts[:6]:
            f.write(f'x,"{t}",pos,0.99,0.01,0.99\n')
    rows = read_pseudo(pseudo, comp.classes)
    assert len(rows) == 3 * 50 + 6  # a block of 50 per fold + the planted rows (every fold)
    assert rows.folds.tolist() == [0] * 50 + [1] * 50 + [2] * 50 + [-1] * 6
    folds = load_folds(comp, DataConfig(dir=str(small_comp), folds=3))
    seen = {}

    def fit(ctx):
        val = {normalize_text(t) for t in ctx.val_texts}
        trained = {normalize_text(t) for t in ctx.train_texts + ctx.extra.texts}
        assert not val & trained
        seen[ctx.fold] = len(ctx.extra)
        p = np.full((len(ctx.val_idx), 2), 0.5)
        return p, np.full((len(comp.test_ids), 2), 0.5)

    r = load_recipe(None, base + ["name=probe", f"train.pseudo={pseudo}"])
    run_member(r, fit)
    planted_per_fold = np.bincount(folds[:6], minlength=3)
    assert [seen[f] for f in range(3)] == [56 - planted_per_fold[f] for f in range(3)]
    assert read_json(r.run_dir / "cv.json")["extra_per_fold"] is False  # planted rows: global


# ---------------------------------------------------------------------------------------------
# unlabelled texts (data.extra)


def _write_unlabelled(comp_dir, texts, name="unlabelled.csv"):
    with open(comp_dir / name, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((f"u{i}", t) for i, t in enumerate(texts))


def _base(small_comp, tmp_path):
    return [f"data.dir={small_comp}", "data.folds=3", f"runs_dir={tmp_path / 'runs'}",
            "data.extra=unlabelled.csv"]


def _memorising_fit(ctx):
    """A member that knows the labels of its training part by heart and nothing else."""
    comp = ctx.comp
    known = {normalize_text(comp.train_texts[i]): comp.labels[i] for i in ctx.train_idx}

    def proba(texts):
        out = np.full((len(texts), 2), 0.5)
        for j, t in enumerate(texts):
            if normalize_text(t) in known:
                out[j] = 0.01
                out[j, known[normalize_text(t)]] = 0.99
        return out

    return proba(ctx.val_texts), proba(ctx.predict_texts)


def _keyword_fit(ctx):
    """Confident only on texts holding 好 (pos) or 差 (neg)."""
    def proba(texts):
        out = np.full((len(texts), 2), 0.5)
        for j, t in enumerate(texts):
            if "好" in t:
                out[j] = [0.02, 0.98]
            elif "差" in t:
                out[j] = [0.97, 0.03]
        return out
    return proba(ctx.val_texts), proba(ctx.predict_texts)


def _ensemble(small_comp, tmp_path, fit, names=("a", "b")):
    dirs = []
    for name in names:
        r = load_recipe(None, _base(small_comp, tmp_path) + [f"name={name}"])
        run_member(r, fit)
        dirs.append(r.run_dir)
    csv_path = run_ensemble(dirs, "mean", None, "accuracy", tmp_path / "subs" / "mean")
    return csv_path.with_suffix(".json")


def test_pseudo_labels_confident_unlabelled_rows(small_comp, tmp_path):
    comp = load_competition(DataConfig(dir=str(small_comp)))
    test_conf = sum(("好" in t or "差" in t) for t in comp.test_texts)
    texts = ["服务真好", "房间太差", "一般般吧", "早餐很好吃", "", "中规中矩"]
    _write_unlabelled(small_comp, texts)
    manifest = _ensemble(small_comp, tmp_path, _keyword_fit)
    pseudo = make_pseudo(manifest, threshold=0.95)
    rows = list(csv.DictReader(open(pseudo, encoding="utf-8")))
    for fold in "012":  # the keyword member says the same in every fold: three equal blocks
        unl = [r for r in rows if r["source"] == "unlabelled" and r["fold"] == fold]
        assert [(r["id"], r["text"], r["label"]) for r in unl] == \
            [("u0", "服务真好", "pos"), ("u1", "房间太差", "neg"), ("u3", "早餐很好吃", "pos")]
        assert sum(r["source"] == "test" and r["fold"] == fold for r in rows) == test_conf
    assert len(rows) == 3 * (test_conf + 3)
    assert len(read_pseudo(pseudo, comp.classes)) == len(rows)
    # --extra points at the same texts elsewhere; other texts are refused
    moved = tmp_path / "moved.csv"
    moved.write_bytes((small_comp / "unlabelled.csv").read_bytes())
    (small_comp / "unlabelled.csv").unlink()
    with pytest.raises(CompError, match=r"unlabelled\.csv: unlabelled file not found"):
        make_pseudo(manifest, threshold=0.95)
    again = make_pseudo(manifest, threshold=0.95, extra=str(moved), out=tmp_path / "p2.csv")
    assert again.read_text(encoding="utf-8") == pseudo.read_text(encoding="utf-8")
    _write_unlabelled(tmp_path, ["别的", "文本", "五条", "不一样", "呢"], "other.csv")
    with pytest.raises(CompError, match="not the unlabelled texts the members predicted"):
        make_pseudo(manifest, threshold=0.95, extra=str(tmp_path / "other.csv"))
    _write_unlabelled(tmp_path, ["多", "了", "一", "条", "文", "本"], "longer.csv")
    with pytest.raises(CompError, match=r"shape \(5, 2\) but .*longer\.csv has 6 texts"):
        make_pseudo(manifest, threshold=0.95, extra=str(tmp_path / "longer.csv"))


def test_extra_flag_needs_an_ensemble_that_predicted_unlabelled_texts(small_comp, tmp_path):
    runs = tmp_path / "runs"
    r = load_recipe(None, [f"data.dir={small_comp}", "data.folds=3", f"runs_dir={runs}",
                           "name=plain"])
    run_member(r, _keyword_fit)
    csv_path = run_ensemble([r.run_dir], "mean", None, "accuracy", tmp_path / "subs" / "m")
    _write_unlabelled(tmp_path, ["好"], "u.csv")
    with pytest.raises(CompError, match="no unlabelled predictions"):
        make_pseudo(csv_path.with_suffix(".json"), threshold=0.9, extra=str(tmp_path / "u.csv"))
    assert make_pseudo(csv_path.with_suffix(".json"), threshold=0.9).exists()


def test_validation_texts_in_the_unlabelled_file_never_train_their_own_fold(small_comp,
                                                                           tmp_path):
    """The unlabelled file holds copies of train texts. The ensemble's members memorised the
    labels of their training parts, so its confident pseudo-labels on those copies carry true
    labels; each copy must stay out of the fold where its original is a validation row."""
    cfg = DataConfig(dir=str(small_comp), folds=3)
    comp = load_competition(cfg)
    planted = list(range(0, 60, 2))
    fresh = [f"全新的文本{i}" for i in range(5)]
    _write_unlabelled(small_comp, [comp.train_texts[i] for i in planted] + fresh)
    manifest = _ensemble(small_comp, tmp_path, _memorising_fit)
    pseudo = make_pseudo(manifest, threshold=0.8)
    rows = list(csv.DictReader(open(pseudo, encoding="utf-8")))
    from_unl = {r["text"]: r["label"] for r in rows if r["source"] == "unlabelled"}
    assert len(from_unl) == len(planted)  # every copy labelled, with its true label
    assert all(from_unl[comp.train_texts[i]] == comp.classes[comp.labels[i]] for i in planted)

    folds = load_folds(comp, cfg)
    seen = {}

    def spy(ctx):
        val = {normalize_text(t) for t in ctx.val_texts}
        assert not val & {normalize_text(t) for t in ctx.extra.texts}
        assert not val & {normalize_text(t) for t in ctx.train_texts}
        seen[ctx.fold] = {normalize_text(t) for t in ctx.extra.texts}
        return np.full((len(ctx.val_idx), 2), 0.5), np.full((len(ctx.predict_texts), 2), 0.5)

    r = load_recipe(None, _base(small_comp, tmp_path) + ["name=pl", f"train.pseudo={pseudo}"])
    run_member(r, spy)
    for f in range(3):
        own = {normalize_text(comp.train_texts[i]) for i in planted if folds[i] == f}
        others = {normalize_text(comp.train_texts[i]) for i in planted if folds[i] != f}
        assert own and not own & seen[f]
        assert others <= seen[f]  # copies of other folds' rows do train this fold


# ---------------------------------------------------------------------------------------------
# per-fold pseudo-labels


def _noise_competition(root, n=90, seed=3):
    """Train texts with random labels; every test text is a train text plus one character."""
    from conftest import noise_competition

    return noise_competition(root, n, seed, length=6, alphabet=400, balanced=False,
                             copies="test")


def _leaks(pseudo, comp, folds):
    """(fold, row) pairs where a pseudo row training that fold near-copies one of its
    validation texts and carries that row's label."""
    rows = read_pseudo(pseudo, comp.classes)
    val_label = {normalize_text(t): (int(folds[i]), comp.classes[comp.labels[i]])
                 for i, t in enumerate(comp.train_texts)}
    out = []
    for j, t in enumerate(rows.texts):
        fold, label = val_label[normalize_text(t)[:-1]]  # the train text it copies
        row_folds = range(3) if rows.folds is None or rows.folds[j] < 0 else [rows.folds[j]]
        if fold in row_folds and comp.classes[int(rows.targets[j].argmax())] == label:
            out.append((fold, t))
    return out


@pytest.mark.parametrize("per_fold", [False, True])
def test_per_fold_pseudo_labels_never_carry_a_validation_label_to_its_fold(tmp_path, per_fold):
    """Test texts are near-copies of noise-labelled train texts. The global blend labels a copy
    of a fold-k row with that row's label (folds j != k memorised it); fold k then trains on it
    and 'predicts' its validation rows. Per-fold labels of fold k come from fold-k models only,
    which never saw those rows."""
    data = _noise_competition(tmp_path / "noise")
    cfg = DataConfig(dir=str(data), folds=3)
    base = [f"data.dir={data}", "data.folds=3", f"runs_dir={tmp_path / 'runs'}"]
    r = load_recipe(None, base + ["name=memo"])
    cv0 = run_member(r, near_memoriser)
    manifest = run_ensemble([r.run_dir], "mean", None, "accuracy",
                            tmp_path / "subs" / "mean").with_suffix(".json")
    pseudo = make_pseudo(manifest, threshold=0.8, per_fold=per_fold)
    comp = load_competition(cfg)
    folds = load_folds(comp, cfg)
    rows = read_pseudo(pseudo, comp.classes)
    # the file: every copy is labelled (2/3 of the global blend's models know it); per fold,
    # exactly the copies of the other folds' rows
    if per_fold:
        assert rows.per_fold and rows.folds_hash == read_json(manifest)["folds_hash"]
        assert np.bincount(rows.folds).tolist() == [int((folds != k).sum()) for k in range(3)]
        assert _leaks(pseudo, comp, folds) == []
    else:
        assert rows.folds is None and len(rows) == len(comp.train_texts)
        assert len(_leaks(pseudo, comp, folds)) == len(comp.train_texts)

    # through training: fold k never receives a copy of its own validation rows
    got = {}

    def spy(ctx):
        val = {normalize_text(t) for t in ctx.val_texts}
        got[ctx.fold] = sum(normalize_text(t)[:-1] in val for t in ctx.extra.texts)
        return near_memoriser(ctx)

    pl = load_recipe(None, base + ["name=memo_pl", f"train.pseudo={pseudo}"])
    cv = run_member(pl, spy)
    assert cv0["cv"] < 0.7  # alone, memorising noise predicts nothing
    if per_fold:
        assert got == {0: 0, 1: 0, 2: 0} and cv["extra_per_fold"] is True
        assert np.allclose(np.load(pl.run_dir / "oof.npy"), 0.5)  # nothing about val rows
    else:
        assert all(got[k] == int((folds == k).sum()) for k in range(3))
        assert cv["cv"] == 1.0 and cv["extra_per_fold"] is False  # the leak, in the CV


def test_global_pseudo_files_still_read_and_serve_every_fold(small_comp, tmp_path):
    """A file from before per-fold labels (no fold column), or a manifest without per-fold
    predictions, gives every fold the same rows."""
    comp = load_competition(DataConfig(dir=str(small_comp), folds=3))
    old = tmp_path / "old.csv"
    old.write_text("id,text,label,confidence,p_neg,p_pos,source\n"
                   "t1,额外的好评,pos,0.9,0.1,0.9,test\nt2,额外的差评,neg,0.8,0.8,0.2,test\n",
                   encoding="utf-8")
    rows = read_pseudo(old, comp.classes, soft=True)
    assert rows.folds is None and not rows.per_fold and rows.targets[0].tolist() == [0.1, 0.9]
    seen = {}

    def fit(ctx):
        seen[ctx.fold] = list(ctx.extra.texts)
        return np.full((len(ctx.val_idx), 2), 0.5), np.full((len(comp.test_ids), 2), 0.5)

    r = load_recipe(None, [f"data.dir={small_comp}", "data.folds=3", "name=old",
                           f"runs_dir={tmp_path / 'runs'}", f"train.pseudo={old}"])
    cv = run_member(r, fit)
    assert seen == {k: ["额外的好评", "额外的差评"] for k in range(3)}
    assert cv["extra_rows"] == 2 and cv["extra_per_fold"] is False

    _write_unlabelled(small_comp, ["服务真好", "一般般吧"])
    manifest = _ensemble(small_comp, tmp_path, _keyword_fit, names=("k",))
    man = read_json(manifest)
    assert man["test_by_fold"] and man["unlabelled_by_fold"]
    del man["test_by_fold"], man["unlabelled_by_fold"]  # written before per-fold predictions
    write_json(manifest, man)
    p = make_pseudo(manifest, threshold=0.95, out=tmp_path / "global.csv")
    table = list(csv.DictReader(open(p, encoding="utf-8")))
    assert table and all(row["fold"] == "" and row["folds_hash"] == "" for row in table)
    assert read_pseudo(p, comp.classes).folds is None
    write_json(manifest, {**man, "test_by_fold": "gone.npy"})
    with pytest.raises(CompError, match=r"per-fold test probabilities gone\.npy not found"):
        make_pseudo(manifest, threshold=0.95)
    from comp.cli import main

    forced = tmp_path / "forced.csv"
    assert main(["pseudo", "--from", str(manifest), "--threshold", "0.95", "--global",
                 "--out", str(forced)]) == 0
    assert forced.read_text(encoding="utf-8") == p.read_text(encoding="utf-8")


def test_fold_column_errors_name_the_row(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("id,text,label,fold\n1,好,pos,0\n2,坏,neg,x\n", encoding="utf-8")
    with pytest.raises(CompError, match=r"row 3: column 'fold': 'x' is not a fold number"):
        read_pseudo(f, ["neg", "pos"])
    f.write_text("id,text,label,fold,folds_hash\n1,好,pos,0,aa\n2,坏,neg,1,bb\n",
                 encoding="utf-8")
    with pytest.raises(CompError, match=r"column 'folds_hash': rows from 2 fold tables"):
        read_pseudo(f, ["neg", "pos"])
    f.write_text("id,text,label,fold\n1,好,pos,0\n2,坏,neg,\n", encoding="utf-8")
    rows = read_pseudo(f, ["neg", "pos"])
    assert rows.folds.tolist() == [0, -1] and not rows.per_fold
