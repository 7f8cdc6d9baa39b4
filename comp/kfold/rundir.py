"""One member's directory: its files, their checks, and the fingerprints of what made them.

    runs/<name>/recipe.toml                 the resolved recipe
    runs/<name>/fold{k}/done.json           the fold's marker: content hashes of its inputs
    runs/<name>/fold{k}/val_proba.npy ...   its predictions, and its kept model files
    runs/<name>/oof.npy test.npy classes.json cv.json [unlabelled.npy] [*_by_fold.npy]

A fold marker records what the fold used, by content, never by path (moving a competition
folder changes nothing): the recipe fingerprint, the train rows, the fold table, the extra
training rows (pseudo-labels, teacher targets), the test texts and the unlabelled texts.
`RunDir.fold_status` compares them with today's: a changed recipe, train set, fold table or
extra rows means refitting; changed test or unlabelled texts only mean predicting again, which a
member kind that keeps its fold models does from them. Every caller asks this one place whether
a fold is current, and the answer says why not, for the log.

`read_member` loads the member files for ensembles, pseudo-labels, distillation and the report,
checking them against each other; `file_hashes` fingerprints them for the manifests of whatever
is built from them (an ensemble is rebuilt when a member's files change).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from comp.core.utils import CompError, file_sha256, read_json, save_npy, write_json

EPS = 1e-12
# a change here means the fold's model is no longer the one asked for: refit
REFIT_KEYS = ("recipe", "train_hash", "folds_hash", "extra_hash")
# a change here only means other texts to predict: a kept model can predict them again
PREDICT_KEYS = ("test_hash", "unlabelled_hash")
WHAT = {"recipe": "the recipe", "train_hash": "the train rows (texts or labels)",
        "folds_hash": "the fold table", "extra_hash": "the extra training rows (pseudo-labels "
        "or teacher targets)", "test_hash": "the test texts",
        "unlabelled_hash": "the unlabelled texts (data.extra)",
        "teacher": "the teacher's targets (distill.teacher)"}
MEMBER_FILES = ("oof.npy", "test.npy", "classes.json", "cv.json")


@dataclass
class FoldStatus:
    """Whether a fold's files are current: state is current | predict | fit, and why not."""

    fold: int
    state: str
    why: str = ""


@dataclass
class Member:
    """One finished member: its OOF and test probabilities in a shared class order."""

    name: str
    oof: np.ndarray  # (n_train, C)
    test: np.ndarray  # (n_test, C)
    classes: list[str]
    cv: dict[str, Any]
    path: Path | None = None
    unlabelled: np.ndarray | None = None  # (n_unlabelled, C) when the member predicted them
    # fold k's predictions, made without fold k's labels; None when the member lacks them
    test_by_fold: np.ndarray | None = None  # (K, n_test, C)
    unlabelled_by_fold: np.ndarray | None = None  # (K, n_unlabelled, C)
    train_by_fold: np.ndarray | None = None  # (K, n_train, C) fold k's model on every train row

    @property
    def fold_ids(self) -> list[int]:
        """The fold each row of the *_by_fold arrays belongs to: cv.json's folds_used for a
        member on a subset of folds (data.use_folds), else 0..K-1."""
        used = self.cv.get("folds_used")
        if used:
            return [int(f) for f in used]
        n = len(self.test_by_fold) if self.test_by_fold is not None else 0
        return list(range(n))


class RunDir:
    """runs/<name>/: reads, writes and checks one member's files and fold markers.

    Args:
        path: the member directory (need not exist yet).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def fold_dir(self, fold: int) -> Path:
        """runs/<name>/fold{k}/."""
        return self.path / f"fold{fold}"

    def marker(self, fold: int) -> dict[str, Any] | None:
        """The fold's done.json, or None when the fold has not finished."""
        p = self.fold_dir(fold) / "done.json"
        return read_json(p) if p.exists() else None

    def write_marker(self, fold: int, meta: dict[str, Any]) -> None:
        """Write the fold's done.json (atomically: a fold is done only once it is whole)."""
        write_json(self.fold_dir(fold) / "done.json", meta)

    @property
    def stored_recipe(self) -> str | None:
        """The text of recipe.toml as the last run left it, or None."""
        p = self.path / "recipe.toml"
        return p.read_text(encoding="utf-8") if p.exists() else None

    def done(self) -> bool:
        """True when the member files are complete (not whether they are current)."""
        return all((self.path / n).exists() for n in MEMBER_FILES)

    def recorded_inputs(self, meta: dict[str, Any]) -> dict[str, Any]:
        """What a fold marker says the fold used. Markers from before content fingerprints
        lack the data hashes: the member's cv.json (written from those very folds) fills them
        in when present."""
        have = {k: meta.get(k) for k in ("recipe", "unlabelled_hash", "extra_hash") if k in meta}
        cv_path = self.path / "cv.json"
        if "inputs" not in meta and cv_path.exists():
            cv = read_json(cv_path)
            have.update({k: cv[k] for k in ("train_hash", "folds_hash", "test_hash") if k in cv})
        have.update(meta.get("inputs", {}))
        return have

    def fold_status(self, fold: int, want: dict[str, Any], recipe_text: str = "") -> FoldStatus:
        """Compare a fold's recorded inputs with `want` (fold_inputs of today's data).

        Args:
            fold: the fold id.
            want: today's inputs: recipe fingerprint and the data hashes (`fold_inputs`).
            recipe_text: today's resolved recipe as TOML, to name the keys that changed.
        """
        meta = self.marker(fold)
        if meta is None:
            return FoldStatus(fold, "fit", "not trained yet")
        have = self.recorded_inputs(meta)
        refit = [*REFIT_KEYS, *(k for k in want if k not in (*REFIT_KEYS, *PREDICT_KEYS))]
        stale = [k for k in refit if k in have and have[k] != want.get(k)
                 and not (k == "recipe" and same_recipe(have[k], want[k], self.stored_recipe))]
        if stale:
            why = ", ".join(WHAT.get(k, k) for k in stale)
            if "recipe" in stale and recipe_text:
                keys = recipe_changes(self.stored_recipe or "", recipe_text)
                why = why.replace("the recipe", "the recipe" + (f" ({keys})" if keys else ""))
            return FoldStatus(fold, "fit", f"{why} changed")
        stale = [k for k in PREDICT_KEYS if have.get(k) != want.get(k)
                 and not (k == "test_hash" and k not in have)]
        if stale:
            return FoldStatus(fold, "predict", " and ".join(WHAT[k] for k in stale) + " changed")
        return FoldStatus(fold, "current")

    def write_member_files(self, oof: np.ndarray, test: np.ndarray, classes: list[str],
                           cv: dict[str, Any], unlabelled: np.ndarray | None = None,
                           test_by_fold: np.ndarray | None = None,
                           unlabelled_by_fold: np.ndarray | None = None,
                           train_by_fold: np.ndarray | None = None) -> None:
        """Write oof.npy, test.npy, classes.json, cv.json and the optional arrays.

        An optional file given as None that an earlier run left behind is removed: it predicted
        other texts or came from other models and must never be read with these files. Shapes
        are as in `Member`.
        """
        d = self.path
        if unlabelled is None:
            unlabelled_by_fold = None
        for name, arr in (("unlabelled.npy", unlabelled), ("test_by_fold.npy", test_by_fold),
                          ("unlabelled_by_fold.npy", unlabelled_by_fold),
                          ("train_by_fold.npy", train_by_fold)):
            if arr is not None:
                save_npy(d / name, arr)
            elif (d / name).exists():
                (d / name).unlink()
        save_npy(d / "oof.npy", oof)
        save_npy(d / "test.npy", test)
        write_json(d / "classes.json", classes)
        write_json(d / "cv.json", cv)

    def file_hashes(self) -> dict[str, str]:
        """sha1 of each member file that exists: what a manifest built from it records."""
        names = (*MEMBER_FILES, "unlabelled.npy", "test_by_fold.npy", "unlabelled_by_fold.npy",
                 "train_by_fold.npy")
        return {n: hashlib.sha1((self.path / n).read_bytes()).hexdigest()[:16]
                for n in names if (self.path / n).exists()}

    def read(self) -> Member:
        """Read the member files and check them against each other (see `read_member`)."""
        d = self.path
        for f in MEMBER_FILES:
            if not (d / f).exists():
                raise CompError(f"{d}: missing {f} (not a finished member?)")
        cv = read_json(d / "cv.json")
        classes = [str(c) for c in read_json(d / "classes.json")]
        ml = cv.get("task") == "multilabel"  # (n, L) per-label probabilities: rows need no sum
        oof = np.load(d / "oof.npy")
        if cv.get("folds_used"):  # a member on a subset of folds: NaN rows are the others
            have = ~np.isnan(oof).all(axis=1) if oof.ndim == 2 else None
            if have is None or int(have.sum()) != int(cv.get("rows_covered", -1)):
                raise CompError(f"{d / 'oof.npy'}: {int(have.sum()) if have is not None else 0}"
                                f" rows covered but cv.json says {cv.get('rows_covered')}")
            oof = oof.astype(np.float64)
            oof[have] = check_proba(oof[have], d / "oof.npy", len(classes), ml)
        else:
            oof = check_proba(oof, d / "oof.npy", len(classes), ml)
        test = check_proba(np.load(d / "test.npy"), d / "test.npy", len(classes), ml)
        unl = None
        if (d / "unlabelled.npy").exists():
            unl = check_proba(np.load(d / "unlabelled.npy"), d / "unlabelled.npy", len(classes),
                              ml)
        for key, arr in (("n_train", oof), ("n_test", test), ("n_unlabelled", unl)):
            if arr is not None and key in cv and int(cv[key]) != arr.shape[0]:
                raise CompError(f"{d}: cv.json {key}={cv[key]} but the array has "
                                f"{arr.shape[0]} rows")
        test_k, unl_k = self._read_by_fold(cv, test, unl)
        train_k = None
        if test_k is not None and (d / "train_by_fold.npy").exists():
            train_k = stacked(d / "train_by_fold.npy", oof, len(test_k), ml)
        return Member(name=str(cv.get("name") or d.name), oof=oof, test=test, classes=classes,
                      cv=cv, path=d, unlabelled=unl, test_by_fold=test_k,
                      unlabelled_by_fold=unl_k, train_by_fold=train_k)

    def _read_by_fold(self, cv: dict[str, Any], test: np.ndarray, unl: np.ndarray | None
                      ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The member's (K, n_test, C) and (K, n_unlabelled, C) per-fold predictions, or None.

        Fold dirs count only when all K are there and average to test.npy (unlabelled.npy): a
        run interrupted between a fold and the member files could otherwise pair stale folds
        with them.
        """
        d = self.path
        n_classes = test.shape[1]
        ml = cv.get("task") == "multilabel"
        if (d / "test_by_fold.npy").exists():
            test_k = stacked(d / "test_by_fold.npy", test, multilabel=ml)
            unl_k = None
            if unl is not None and (d / "unlabelled_by_fold.npy").exists():
                unl_k = stacked(d / "unlabelled_by_fold.npy", unl, len(test_k), ml)
            return test_k, unl_k
        own = [int(f) for f in cv.get("folds_used") or range(len(cv.get("fold_scores") or []))]

        def from_folds(name: str, like: np.ndarray) -> np.ndarray | None:
            files = [self.fold_dir(f) / name for f in own]
            if len(own) < 2 or not all(f.exists() for f in files):
                return None
            a = np.stack([check_proba(np.load(f), f, n_classes, ml) for f in files])  # (K, n, C)
            if a.shape[1:] != like.shape or not np.allclose(a.mean(0), like, atol=1e-4):
                return None
            return a

        test_k = from_folds("test_proba.npy", test)
        if test_k is None:
            return None, None
        return test_k, (from_folds("unlabelled_proba.npy", unl) if unl is not None else None)


def read_member(run_dir: str | Path) -> Member:
    """Read one member directory and check its files against each other.

    Args:
        run_dir: a directory with oof.npy, test.npy, classes.json and cv.json; optionally
            unlabelled.npy, and per-fold predictions: test_by_fold.npy (+
            unlabelled_by_fold.npy) or, for a k-fold member, fold{k}/test_proba.npy (+
            unlabelled_proba.npy) for each of its len(cv.json fold_scores) folds, and
            train_by_fold.npy.

    Returns:
        The Member, with rows renormalised to sum to 1 (tiny float drift only).
    """
    return RunDir(run_dir).read()


def stacked(f: Path, like: np.ndarray, k: int | None = None,
            multilabel: bool = False) -> np.ndarray:
    """A (K, *like.shape) per-fold prediction file, checked (K = k when given: the member's
    number of folds of test predictions)."""
    a = np.load(f)
    if a.ndim != 3 or a.shape[1:] != like.shape:
        raise CompError(f"{f}: shape {a.shape}, expected (folds, {like.shape[0]}, "
                        f"{like.shape[1]}) to match {like.shape[0]} rows")
    if k is not None and len(a) != k:
        raise CompError(f"{f}: {len(a)} folds but the member has {k} folds of test "
                        "predictions")
    return check_proba(a.reshape(-1, like.shape[1]), f, like.shape[1],
                       multilabel).reshape(a.shape)


def check_proba(a: np.ndarray, where: Path, n_classes: int,
                multilabel: bool = False) -> np.ndarray:
    """A (rows, C) probability array checked (finite, non-negative, rows sum to 1) and
    renormalised; one-line errors name the file and row. Multi-label (one independent
    probability per label): values in [0, 1], rows need not sum to 1, nothing renormalised."""
    if a.ndim != 2 or a.shape[1] != n_classes:
        raise CompError(f"{where}: shape {a.shape}, expected (rows, {n_classes}) "
                        "to match classes.json")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        bad = int(np.argwhere(~np.isfinite(a))[0, 0])
        raise CompError(f"{where}: row {bad} is not finite")
    if (a < -1e-6).any():
        bad = int(np.argwhere(a < -1e-6)[0, 0])
        raise CompError(f"{where}: row {bad} has negative values (save probabilities, not logits)")
    if multilabel:
        if (a > 1 + 1e-6).any():
            bad = int(np.argwhere(a > 1 + 1e-6)[0, 0])
            raise CompError(f"{where}: row {bad} has values above 1 (save probabilities, "
                            "not logits)")
        return np.clip(a, 0.0, 1.0)
    sums = a.sum(1)
    off = np.abs(sums - 1.0)
    if len(a) and off.max() > 1e-2:
        bad = int(off.argmax())
        raise CompError(f"{where}: row {bad} sums to {sums[bad]:.4g}, not 1 "
                        "(save probabilities, not logits)")
    return np.clip(a, 0.0, None) / np.clip(a.sum(1, keepdims=True), EPS, None)


# ---------------------------------------------------------------------------------------------
# recipe fingerprints


def recipe_fingerprint(recipe: Any) -> str:
    """What makes two runs of a member interchangeable: the recipe minus its search space.

    `data.extra` and `train.predict_train` are left out: which texts a fold predicted is
    recorded in its done marker instead, so asking for more never invalidates a run's identity.
    So is `data.dir`: the data are fingerprinted by content, and moving a competition folder
    must not refit anything.
    """
    return fingerprint_of(recipe.to_dict())


def fingerprint_of(d: dict[str, Any]) -> str:
    """recipe_fingerprint of a recipe's plain dict (as to_dict or a recipe.toml gives it): the
    sha1 of its canonical JSON, which neither key order nor a TOML writer's layout moves."""
    from comp.core.utils import sha1_of

    return sha1_of([json.dumps(_identity(d), sort_keys=True, ensure_ascii=False,
                               separators=(",", ":"))])


def _identity(d: dict[str, Any], keep_dir: bool = False) -> dict[str, Any]:
    """The part of a recipe's plain dict that names the run (see recipe_fingerprint)."""
    d = copy.deepcopy(d)
    d.pop("tune", None)
    d.pop("runs_dir", None)
    d.pop("resources", None)  # where a fold runs (a Ray cluster), not what it is
    data = d.setdefault("data", {})
    data["extra"] = ""
    data.pop("use_folds", None)  # which folds run is recorded per fold, not in the identity
    if not keep_dir:
        data.pop("dir", None)
    d.get("train", {}).pop("predict_train", None)
    # a time slice is how long a run may take, not what it is: a fold cut short stays current
    # (its cv.json records the cut) and a resumed run with another budget refits nothing
    d.get("train", {}).pop("time_limit", None)
    if data.get("suspects", "keep") == "keep":  # the default names no run
        data.pop("suspects", None)
        data.pop("suspect_frac", None)
    if not data.get("normalize"):  # the defaults name no run
        data.pop("normalize", None)
    train = d.get("train", {})
    if not train.get("augment"):
        train.pop("augment", None)
        train.pop("augment_rate", None)
    linear = d.get("linear", {})
    if linear.get("features") != "e5":  # the encoder only names runs that read one
        linear.pop("encoder", None)
        linear.pop("encoder_len", None)
    return d


def same_key(recorded: dict[str, Any] | None, key: dict[str, Any], recipe: Any) -> bool:
    """Whether an output's recorded key (a vectorizer's, a tuned overlay's stamp) is today's
    `key`; its recipe fingerprint may be the one an older toolkit wrote for the same recipe."""
    if recorded is None or {**recorded, "recipe": ""} != {**key, "recipe": ""}:
        return False
    fp = recorded.get("recipe")
    return fp == recipe_fingerprint(recipe) or fp in _legacy_fingerprints(recipe.to_dict())


def _legacy_fingerprints(d: dict[str, Any]) -> tuple[str, str]:
    """The fingerprints fold markers written before the JSON one hold for the same recipe: sha1
    of the text the toolkit's own TOML writer made of it, without data.dir and (older still)
    with it. Only for recognising those markers (same_recipe)."""
    from comp.core.utils import sha1_of

    return (sha1_of([_legacy_toml(_identity(d))]),
            sha1_of([_legacy_toml(_identity(d, keep_dir=True))]))


def _legacy_toml(d: dict[str, Any]) -> str:
    """The hand-written TOML writer those fingerprints hashed, byte for byte (it leaves control
    characters but \\n unescaped, so recipe.toml is written by tomli_w now)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def key(k: str) -> str:
        return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else value(k)

    def aot(v: Any) -> bool:
        return isinstance(v, list) and len(v) > 0 and all(isinstance(x, dict) for x in v)

    def table(t: dict[str, Any], prefix: list[str]) -> None:
        lines.extend(f"{key(k)} = {value(v)}" for k, v in t.items()
                     if not isinstance(v, dict) and not aot(v))
        for k, v in t.items():
            name = ".".join(key(p) for p in [*prefix, k])
            for item in [v] if isinstance(v, dict) else v if aot(v) else []:
                lines.extend(["", f"[{name}]" if isinstance(v, dict) else f"[[{name}]]"])
                table(item, [*prefix, k])

    lines: list[str] = []
    table(d, [])
    return "\n".join(lines).strip() + "\n"


def same_recipe(marker: str, fingerprint: str, stored: str | None) -> bool:
    """Whether a done fold's recipe fingerprint `marker` is the current recipe's.

    A recipe key added to the toolkit later changes every fingerprint, though a fold trained
    before it existed trained with its default; so did hashing JSON instead of TOML text. So
    when the marker does not match, the run's stored recipe.toml (`stored`, its text) decides:
    if it is the recipe that made the marker (by today's definition or an older one: TOML text,
    with the data folder's path before that), it is read with today's defaults and
    fingerprinted again.
    """
    if marker == fingerprint:
        return True
    made = _stored_fingerprints(stored) if stored else None
    return made is not None and marker in made[0] and made[1] == fingerprint


@functools.lru_cache(maxsize=16)
def _stored_fingerprints(stored: str) -> tuple[frozenset[str], str] | None:
    """(the fingerprints a stored recipe.toml text had, by today's definition and the older
    ones, and its fingerprint read with today's defaults); parsed once per text. None when it
    no longer reads as a recipe."""
    import tomllib

    from comp.data.recipes import load_recipe

    try:
        raw = tomllib.loads(stored)
        return (frozenset([fingerprint_of(raw), *_legacy_fingerprints(raw)]),
                recipe_fingerprint(load_recipe(None, base=raw)))
    except (ValueError, CompError, TypeError):
        return None


def recipe_changes(old: str, new: str, limit: int = 3) -> str:
    """The recipe keys whose values differ between two recipe.toml texts, for the log."""
    import tomllib

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and k != "tune":
                out.update(flat(v, f"{prefix}{k}."))
            elif k not in ("tune", "runs_dir", "dir", "extra", "predict_train", "use_folds"):
                out[f"{prefix}{k}"] = v
        return out

    try:
        a, b = flat(tomllib.loads(old)), flat(tomllib.loads(new))
    except ValueError:
        return ""
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------
# model files a fold reads


def path_digest(path: str | Path) -> str:
    """A content fingerprint of a file, or of a folder's files (names and bytes); a path that
    does not exist (a hub id) is its own fingerprint. Hashed once per file version."""
    p = Path(path)
    if not p.exists():
        return f"id:{path}"
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode("utf-8") + b"\0")
        h.update(file_sha256(f).encode())
    return h.hexdigest()[:16]


