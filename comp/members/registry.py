"""Member kinds (timm-style registry): what trains k folds, keeps fold models and predicts texts.

    kind = create_member(recipe)                   # "linear" | "fusion" | "student"
    kind.train(recipe, folds, force)               # k folds -> runs/<name>/ (comp.kfold.runner)
    predict = kind.load_fold(run_dir, k, recipe, n_classes)
    predict(texts)                                 # (n, C) probabilities from fold k's model
    kind.fold_files(run_dir, k)                    # what `comp export` copies for fold k

Each kind's fold fit returns a `comp.kfold.runner.FoldOutput` to the shared runner, which owns the
fold markers and their content fingerprints (comp.kfold.rundir). Everything that trains a recipe —
the CLI, the pipeline, tuning, distillation — goes through `train_recipe`, so nothing in the
library depends on the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from comp.config.schema import Recipe
from comp.core.utils import CompError
from comp.nn.serving import Predictor

_KINDS: dict[str, type[MemberKind]] = {}


def register_member(name: str) -> Callable[[type], type]:
    """Class decorator: make a member kind available to recipes as `kind = name`."""
    def deco(cls: type) -> type:
        cls.name = name
        _KINDS[name] = cls
        return cls
    return deco


def member_kinds() -> list[str]:
    """Names of the registered member kinds."""
    return sorted(_KINDS)


def create_member(recipe: Recipe | str) -> MemberKind:
    """The member kind a recipe (or a kind name) asks for."""
    kind = recipe if isinstance(recipe, str) else recipe.kind
    if kind not in _KINDS:
        raise CompError(f"recipe key 'kind': unknown member kind '{kind}' "
                        f"(known: {', '.join(member_kinds())})")
    return _KINDS[kind]()


def train_recipe(recipe: Recipe, folds: list[int] | None = None, force: bool = False,
                 report: Callable[[int, float], None] | None = None, extra: Any = None
                 ) -> dict | None:
    """Train (or bring up to date) a recipe's member; cv.json's dict once every fold is done."""
    return create_member(recipe).train(recipe, folds, force, report=report, extra=extra)


class MemberKind:
    """The protocol every member kind follows."""

    name = ""

    def train(self, recipe: Recipe, folds: list[int] | None = None, force: bool = False,
              report: Callable[[int, float], None] | None = None, extra: Any = None
              ) -> dict | None:
        """Run (or resume) the k folds; the runner refits or re-predicts only stale folds."""
        raise NotImplementedError

    def load_fold(self, run_dir: Path, fold: int, recipe: Recipe, n_classes: int
                  ) -> Predictor | None:
        """Fold k's kept model as a predictor of raw texts; None when the fold kept none."""
        raise NotImplementedError

    def fold_files(self, run_dir: Path, fold: int) -> list[Path]:
        """The files fold k needs to predict (relative to run_dir)."""
        raise NotImplementedError

    def member_files(self, run_dir: Path) -> list[Path]:
        """Files shared by every fold (relative to run_dir)."""
        return []

    def shared_state(self, recipe: Recipe, comp: Any) -> Any:
        """What every fold of the member reads and one process can build for all the processes
        that train its folds (a network's rows and frozen-feature cache); None: nothing."""
        return None

    def adopt_state(self, state: Any) -> None:
        """Keep `shared_state`'s result in this process for the folds it trains."""

    def state_threads(self, recipe: Recipe) -> bool:
        """Whether building `shared_state` runs faster on every core it is given (a backbone's
        forward passes) rather than on one (jieba)."""
        return False

    def references(self, recipe: Recipe) -> list[Path]:
        """Files or folders outside the run dir that predicting reads (backbones, vectors)."""
        return []

    def fold_references(self, run_dir: Path, fold: int, recipe: Recipe) -> list[Path]:
        """Folders outside the run dir that one fold's model reads beyond `references`."""
        return []


@register_member("linear")
class LinearMember(MemberKind):
    """TF-IDF features (or frozen e5 sentence embeddings) with LR, calibrated LinearSVC or
    NB-LR (comp.members.linear)."""

    def train(self, recipe, folds=None, force=False, report=None, extra=None):
        """See MemberKind.train (TF-IDF members take pseudo-labels through the recipe)."""
        from comp.members.linear import train_linear

        return train_linear(recipe, folds, force, report=report)

    def load_fold(self, run_dir, fold, recipe, n_classes):
        """The member's vectorizer and fold k's classifier."""
        from comp.members.linear import load_linear_fold

        return load_linear_fold(run_dir, fold, n_classes, recipe)

    def fold_files(self, run_dir, fold):
        """fold{k}/model.joblib."""
        return [Path(f"fold{fold}") / "model.joblib"]

    def member_files(self, run_dir):
        """vectorizer.joblib (+ its key)."""
        return [Path("vectorizer.joblib"), Path("vectorizer.json")]

    def fold_references(self, run_dir, fold, recipe):
        """An e5 member's encoder folder (the pruned e5 its vectorizer recorded)."""
        from comp.members.linear import encoder_files

        return encoder_files(run_dir, recipe)


@register_member("fusion")
class FusionMember(MemberKind):
    """Backbones + gensim vectors on one character grid, biLSTM/CNN head (comp.nn.trainer)."""

    def train(self, recipe, folds=None, force=False, report=None, extra=None):
        """See MemberKind.train."""
        from comp.nn.trainer import train_fusion

        return train_fusion(recipe, folds, force, report=report, extra=extra)

    def shared_state(self, recipe, comp):
        """The member's rows (grid texts, vector ids) and frozen-feature cache."""
        from comp.nn.trainer import member_state

        return member_state(recipe, comp)

    def adopt_state(self, state):
        """See MemberKind.adopt_state."""
        from comp.nn.trainer import adopt_state

        adopt_state(state)

    def state_threads(self, recipe):
        """True when the state holds frozen backbone features (torch over every text)."""
        from comp.nn.trainer import caches_frozen

        return caches_frozen(recipe)

    def load_fold(self, run_dir, fold, recipe, n_classes):
        """fold{k}/model.pt in a model built from the recipe (backbones and vectors it names)."""
        from comp.nn.serving import load_neural_fold, neural_predictor

        ckpt = Path(run_dir) / f"fold{fold}" / "model.pt"
        if not ckpt.exists():
            return None
        return neural_predictor(load_neural_fold(ckpt, recipe, n_classes), recipe)

    def fold_files(self, run_dir, fold):
        """fold{k}/model.pt and the backbone folders it trained with (backbones.json)."""
        return [Path(f"fold{fold}") / "model.pt", Path(f"fold{fold}") / "backbones.json"]

    def references(self, recipe):
        """The vectors files the recipe names (backbones: `fold_references`)."""
        return [Path(recipe.model.vectors_dir) / f"w2v-{kind}.kv"
                for kind in recipe.model.vectors]

    def fold_references(self, run_dir, fold, recipe):
        """The local backbone folders fold k trained with (a pruned e5 among them)."""
        from comp.nn.fusion import fold_backbones

        return [Path(p) for p in fold_backbones(Path(run_dir) / f"fold{fold}", recipe)
                if Path(p).exists()]


@register_member("student")
class StudentMember(FusionMember):
    """A distilled biLSTM/TextCNN taught by an ensemble (comp.members.student); served like
    fusion."""

    def train(self, recipe, folds=None, force=False, report=None, extra=None):
        """See MemberKind.train (the teacher comes from the recipe's [distill] section)."""
        from comp.members.student import train_student

        return train_student(recipe, folds, force, report=report)

    def shared_state(self, recipe, comp):
        """None: a student's rows carry its teacher's targets (built by its own training)."""
        return None
