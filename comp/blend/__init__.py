"""Layer 8: from members to submissions: blenders (`blenders`), per-class biases (`bias`),
ensembling with nested CV (`ensemble`) and the submission file (`submit`).
"""


def __getattr__(name: str):
    """The blenders under the package's name: what models pickled when `comp.blend` was the
    blenders' module name (comp.core.utils.load_model) look them up by."""
    from comp.blend import blenders

    try:
        return getattr(blenders, name)
    except AttributeError:
        raise AttributeError(f"module 'comp.blend' has no attribute '{name}'") from None
