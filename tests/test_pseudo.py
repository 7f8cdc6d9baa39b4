import numpy as np
import pytest

from comp.config import DataConfig, load_recipe
from comp.data import load_competition, load_folds, normalize_text
from comp.ensemble import run_ensemble
from comp.linear import train_linear
from comp.member import run_member
from comp.pseudo import make_pseudo, read_pseudo, select_confident
from comp.utils import CompError


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
    assert len(rows) == 50 + 6
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
