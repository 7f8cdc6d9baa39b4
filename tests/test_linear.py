import numpy as np
import pytest

from comp.config import load_recipe
from comp.linear import NBLogisticRegression, train_linear


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
