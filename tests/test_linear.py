import numpy as np
import pytest

from comp.data.recipes import load_recipe
from comp.members.linear import NBLogisticRegression, train_linear


@pytest.mark.parametrize("features, model", [("char", "lr"), ("char", "svc"), ("word", "lr"),
                                             ("char+word", "nblr")])
def test_linear_members_beat_chance(small_comp, tmp_path, features, model):
    r = load_recipe(None, [f"data.dir={small_comp}", "data.folds=3", f"runs_dir={tmp_path}",
                           f"linear.features='{features}'", f"linear.model='{model}'",
                           "linear.min_df=1", f"name={model}_{features.replace('+', '_')}"])
    cv = train_linear(r)
    assert cv["cv"] > 0.6  # 400 short reviews; majority class is ~0.5
    oof = np.load(r.run_dir / "oof.npy")
    assert np.allclose(oof.sum(1), 1, atol=1e-4)


def test_nblr_predicts_three_classes():
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    X = sp.csr_matrix(np.eye(3)[y] * 2 + rng.random((90, 3)) * 0.1)
    p = NBLogisticRegression(C=10).fit(X, y).predict_proba(X)
    assert p.shape == (90, 3) and (p.argmax(1) == y).mean() > 0.9


def test_svc_calibration_adapts_to_rare_classes():
    from comp.members.linear import svc_calibration

    assert svc_calibration(np.array([0] * 5 + [1] * 3)) == (3, "")
    folds, note = svc_calibration(np.array([0] * 5 + [1] * 2 + [2] * 4))
    assert folds == 2 and "2 inner folds instead of 3" in note
    folds, note = svc_calibration(np.array([0] * 5 + [1] + [2] * 2))
    assert folds == 0 and "sigmoid on its own training scores" in note


@pytest.mark.parametrize("rare", [1, 2])
def test_svc_fits_and_predicts_a_class_with_one_or_two_rows(rare, capsys):
    # regression: CalibratedClassifierCV(cv=3) raised "Requesting 3-fold cross-validation but
    # provided less than 3 examples for at least one class"
    import scipy.sparse as sp

    from comp.config.schema import LinearConfig
    from comp.members.linear import full_proba, make_model

    rng = np.random.default_rng(0)
    y = np.array([0] * 30 + [1] * 30 + [2] * rare)
    X = sp.csr_matrix(np.eye(3)[y] * 2 + rng.random((len(y), 3)) * 0.1)
    model = make_model(LinearConfig(model="svc"), 3, 0, y, name=f"rare{rare}")
    model.fit(X, y, sample_weight=np.ones(len(y)))
    p = full_proba(model, X, 3)
    assert p.shape == (len(y), 3) and np.allclose(p.sum(1), 1)
    assert (p.argmax(1) == y).mean() > 0.9
    assert capsys.readouterr().err.count(f"rare{rare}: a class has {rare} training row") == 1
    make_model(LinearConfig(model="svc"), 3, 0, y, name=f"rare{rare}")  # said once per member
    assert "training row" not in capsys.readouterr().err


def test_liblinear_models_are_seeded():
    from comp.config.schema import LinearConfig
    from comp.members.linear import make_model

    for kind in ("lr", "svc", "nblr"):
        m = make_model(LinearConfig(model=kind), 2, seed=7)
        inner = getattr(m, "estimator", m)
        assert inner.random_state == 7, kind


def test_a_worker_reads_each_members_files_once_when_folds_come_member_by_member(tmp_path):
    """Three members' vectorizer and feature files (nine), read fold by fold in turn as Ray
    deals the folds: the second round loads none of them again; a changed file is read anew."""
    import comp.members.linear as linear

    files = []
    for i in range(9):
        files.append(tmp_path / f"f{i}.txt")
        files[-1].write_text(str(i))
    loads = []

    def load(p):
        loads.append(p.name)
        return p.read_text()

    for _ in range(2):
        assert [linear._kept(f, load) for f in files] == [str(i) for i in range(9)]
    assert len(loads) == 9
    files[0].write_text("changed!")
    assert linear._kept(files[0], load) == "changed!" and len(loads) == 10
