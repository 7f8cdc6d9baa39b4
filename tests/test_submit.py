import csv
import dataclasses

import numpy as np
import pytest

from comp.blend.submit import label_scores, score_submission, write_submission
from comp.config.schema import DataConfig
from comp.core.utils import CompError, read_json
from comp.data.competition import load_competition


def test_submission_follows_sample_order_and_columns(small_comp, tmp_path):
    comp = load_competition(DataConfig(dir=str(small_comp)))
    # reorder the sample and rename its columns: the submission must follow it
    rows = list(csv.reader(open(small_comp / "sample_submission.csv", encoding="utf-8")))[1:]
    rows.reverse()
    with open(small_comp / "sample_submission.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "sentiment"])
        w.writerows(rows)
    comp = load_competition(DataConfig(dir=str(small_comp)))
    proba = np.random.default_rng(0).random((100, 2))
    path = write_submission(comp, proba, comp.classes, tmp_path / "sub" / "mean",
                            {"cv": 0.81234, "method": "mean"}, proba=True)
    assert path.name == "mean_cv0.8123.csv"
    out = list(csv.reader(open(path, encoding="utf-8")))
    assert out[0] == ["id", "sentiment", "p_neg", "p_pos"]
    assert [r[0] for r in out[1:]] == [r[0] for r in rows]
    by_id = dict(zip(comp.test_ids, proba.argmax(1)))
    assert all(r[1] == comp.classes[by_id[r[0]]] for r in out[1:])
    man = read_json(path.with_suffix(".json"))
    assert man["method"] == "mean" and man["n_rows"] == 100 and "commit" in man
    assert not list(path.parent.glob("*.tmp"))


def test_wrong_shape_or_classes_refused(small_comp, tmp_path):
    comp = load_competition(DataConfig(dir=str(small_comp)))
    with pytest.raises(CompError, match="shape"):
        write_submission(comp, np.zeros((5, 2)), comp.classes, tmp_path / "x", {})
    with pytest.raises(CompError, match="classes"):
        write_submission(comp, np.zeros((100, 2)), ["a", "b"], tmp_path / "x", {})


def test_score_against_answers(small_comp, tmp_path):
    comp = load_competition(DataConfig(dir=str(small_comp)))
    answers = dict(csv.reader(open(small_comp / "answers.csv", encoding="utf-8")))
    truth = np.array([comp.classes.index(answers[i]) for i in comp.test_ids])
    proba = np.eye(2)[truth]
    proba[:10] = proba[:10, ::-1]  # ten wrong
    path = write_submission(comp, proba, comp.classes, tmp_path / "s", {"cv": 0.5})
    s = score_submission(path, small_comp / "answers.csv")
    assert s["accuracy"] == pytest.approx(0.9) and s["n"] == 100
    assert 0 < s["macro_f1"] <= 1


def test_label_scores_average_f1_over_the_answer_classes():
    out = label_scores(["a", "a", "b", "b"], ["a", "c", "b", "b"])
    assert out["accuracy"] == 0.75 and out["n"] == 4
    # a: P=1 R=0.5 F1=2/3; b: F1=1; the predicted-only class c is not averaged in
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)


def test_sample_with_one_column_per_class_gets_probabilities(small_comp, tmp_path):
    # regression: such a sample got label text in its first class column
    ids = [r[0] for r in csv.reader(open(small_comp / "sample_submission.csv",
                                         encoding="utf-8"))][1:]
    with open(small_comp / "sample_submission.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "pos", "neg"])  # not the class order (neg, pos)
        w.writerows((i, 0.5, 0.5) for i in ids)
    comp = load_competition(DataConfig(dir=str(small_comp)))
    proba = np.random.default_rng(0).dirichlet([1, 1], len(comp.test_ids))
    path = write_submission(comp, proba, comp.classes, tmp_path / "p", {"cv": 0.5})
    out = list(csv.reader(open(path, encoding="utf-8")))
    assert out[0] == ["id", "pos", "neg"]
    by_id = dict(zip(comp.test_ids, proba))
    for i, pos, neg in out[1:]:
        assert float(pos) == pytest.approx(by_id[i][comp.classes.index("pos")], abs=1e-6)
        assert float(neg) == pytest.approx(by_id[i][comp.classes.index("neg")], abs=1e-6)
    # and such a file is scored by its argmax, like a label file of the same predictions
    label_file = dataclasses.replace(comp, layout=dataclasses.replace(comp.layout, proba_cols=[]))
    labels = write_submission(label_file, proba,
                              comp.classes, tmp_path / "l", {"cv": 0.5})
    assert (score_submission(path, small_comp / "answers.csv")
            == score_submission(labels, small_comp / "answers.csv"))


def test_hidden_macro_f1_is_the_cv_function():
    from comp.core.metrics import score

    truth = ["a", "b", "b", "c"]
    pred = ["a", "b", "c", "c"]
    idx = {"a": 0, "b": 1, "c": 2, "d": 3}  # d: a class the model knows, absent here
    proba = np.eye(4)[[idx[p] for p in pred]]
    y = np.array([idx[t] for t in truth])
    hidden = label_scores(truth, pred)
    assert hidden["macro_f1"] == pytest.approx(score("macro_f1", y, proba))
    assert hidden["accuracy"] == score("accuracy", y, proba) == 0.75
