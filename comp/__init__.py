"""comp: a text-classification competition toolkit."""

__version__ = "0.1.0"


def load(path, folds=None):
    """A finished ensemble (manifest .json), member (run dir) or bundle as a predictor:
    .predict_proba(texts) -> (n, C), .predict(texts) -> labels, .classes."""
    from comp.serving.predictor import load as _load

    return _load(path, folds)
