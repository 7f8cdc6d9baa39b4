"""Distillation's teacher: an ensemble's per-fold targets, so a student's fold k learns only from
models that never saw it.
"""

from __future__ import annotations

from pathlib import Path

from comp.core.utils import CompError, log, read_json
from comp.members.student import resolve_path


def teacher_with_fold_targets(manifest: str | Path, out: str | Path | None = None) -> Path:
    """The same teacher, with the per-fold training targets fold-honest students need.

    Each member of the manifest runs again with `train.predict_train`: a done fold predicts its
    training rows from its kept model (fusion, student) or is refitted (TF-IDF, seconds); then
    the members are blended again by the manifest's method and parameters.

    Args:
        manifest: a submission manifest from `comp ensemble` (its members: k-fold run dirs).
        out: the new ensemble's output stem; default next to the manifest, name + "_folds".

    Returns:
        The manifest path (the given one when it already has train_by_fold).
    """
    from comp.blend.ensemble import run_ensemble
    from comp.data.recipes import load_recipe
    from comp.members.registry import train_recipe

    p = Path(manifest)
    info = read_json(p) if p.is_file() else {}
    if not isinstance(info, dict) or "members" not in info or "method" not in info:
        raise CompError(f"{p}: not an ensemble manifest with members (from `comp ensemble`)")
    if info.get("train_by_fold"):
        return p
    dirs = []
    for m in info["members"]:
        d = resolve_path(str(m), p.parent)
        if not (d / "recipe.toml").exists():
            raise CompError(f"{p}: member {d} has no recipe.toml, so it cannot predict its "
                            "training rows per fold (an ensemble of ensembles?)")
        r = load_recipe(d / "recipe.toml", [f"runs_dir={d.parent}", f"name={d.name}",
                                            "train.predict_train=true"])
        log(f"{p.name}: {d.name}: predictions on the training rows of every fold")
        train_recipe(r)
        dirs.append(d)
    params = {k: v for k, v in (info.get("params") or {}).items() if k != "metric"}
    stem = Path(out) if out else p.parent / f"{info.get('name') or p.stem}_folds"
    csv = run_ensemble(dirs, info["method"], None, info.get("metric", ""), stem, **params)
    new = csv.with_suffix(".json")
    if not read_json(new).get("train_by_fold"):
        raise CompError(f"{new}: still no train_by_fold (see the log for the member lacking it)")
    return new
