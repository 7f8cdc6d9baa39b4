"""Predicting texts the run never saw: members and ensembles loaded from their kept models.

    p = comp.load("submissions/hill_cv0.8700.json")     # an ensemble manifest, a member dir,
    p.predict_proba(texts)   # (n, C)                    # or a bundle from `comp export`
    p.predict(texts)         # class labels
    comp predict MANIFEST|MEMBER_DIR --test FILE [--out CSV] [--sample CSV]
    comp export MANIFEST --out DIR [--members a,b] [--folds 0,1]
    comp predict --bundle DIR --test FILE

A member predicts the way the run did: every fold's kept model on the texts, averaged over the
folds (windows and length buckets as in training, comp.nn.trainer.predict). An ensemble blends its
members' predictions with the blender it fitted on every OOF row (blender.joblib), the one that
made the submission's test column. On the competition's own test file this reproduces the
run's test probabilities (up to float rounding).

A bundle is a folder that predicts alone: each member's recipe (paths rewritten into the
bundle), fold models, TF-IDF vectorizer, the backbones and vectors its recipe names, the
blender and a manifest (bundle.json), plus the pinned requirements. Nothing outside it is read.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comp.config.schema import DataConfig, Recipe
from comp.core.utils import CompError, load_model, log, read_json, write_text
from comp.data.perturb import normalize_texts
from comp.data.readers import Table
from comp.data.recipes import load_recipe
from comp.members.registry import create_member
from comp.nn.serving import Predictor
from comp.tasks.shapes import Task, task_of

BUNDLE_MANIFEST = "bundle.json"


# ---------------------------------------------------------------------------------------------
# loaded members and ensembles


class _Labels:
    """predict() for both task shapes: a class per text, or (multi-label) the labels whose
    probability reaches the per-label threshold fitted on every OOF row (comp.tasks.thresholds)."""

    classes: list[str]
    thresholds: np.ndarray | None

    @property
    def multilabel(self) -> bool:
        return self.thresholds is not None

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    @property
    def shape(self) -> Task:
        """The task shape whose decision rule predict() applies."""
        return task_of("multilabel" if self.multilabel else "single")

    def predict(self, texts: Sequence[str]) -> list[str] | list[list[str]]:
        """Class labels; multi-label: each text's list of labels."""
        decided = self.shape.decide(self.predict_proba(texts), self.thresholds)
        if not self.multilabel:
            return [self.classes[i] for i in decided]
        return [[c for c, v in zip(self.classes, row) if v] for row in decided]


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
        texts = normalize_texts(texts, self.recipe.data.normalize)
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
    if thresholds is not None and not recipe.data.shape.multilabel:  # inferred from the data
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
                         load_model(blender), _thresholds(man, classes, p))


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
    if recipe.kind == "linear":  # an e5 member's encoder lies in the bundle's refs/
        return dataclasses.replace(recipe, linear=dataclasses.replace(
            recipe.linear, encoder=str(root / recipe.linear.encoder)))
    m = recipe.model
    backbones = tuple(dataclasses.replace(b, path=str(root / b.path)) for b in m.backbones)
    model = dataclasses.replace(m, backbones=backbones, vectors_dir=str(root / m.vectors_dir))
    return dataclasses.replace(recipe, model=model)


# ---------------------------------------------------------------------------------------------
# comp predict


def read_test(path: str | Path, cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(ids, texts) of a test file read as the member's recipe reads its test file; columns
    other than the id and text columns are named once and ignored."""
    from comp.data.competition import read_ids, read_texts, text_columns
    from comp.data.readers import read_table

    table = read_table(path, cfg.format, cfg.encoding)
    if not table.rows:
        raise CompError(f"{path}: no data rows (header only)")
    cols = text_columns(table, cfg)
    warnings: list[str] = []
    texts = read_texts(table, cols, cfg.text_sep, warnings, pair=cfg.shape.pair)
    for w in warnings:
        log(f"warning: {w}")
    unknown = [c for c in table.columns if c not in (*cols, cfg.id_col)]
    if unknown:
        log(f"warning: {path}: column(s) {', '.join(unknown)} are not text columns "
            f"({', '.join(cols)}) nor the id column ('{cfg.id_col}'); ignored")
    return read_ids(table, cfg.id_col, "", required=False), texts


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

    from comp.blend.submit import sample_order, write_rows
    from comp.data.competition import SampleLayout, sample_layout
    from comp.data.readers import read_table

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
    from comp.data.competition import find_file, sample_id_col
    from comp.data.readers import read_table

    d = Path(cfg.dir)
    if not d.is_dir():
        return None
    path = find_file(d, cfg.sample, "sample_submission", required=False)
    if path is None:
        return None
    st = read_table(path)
    col = sample_id_col(st, cfg.id_col)
    return (path, st) if sorted(r.get(col) or "" for r in st.rows) == sorted(ids) else None
