"""One class per task shape: what a shape means for targets, outputs, decisions, metrics, losses,
fold grouping, pseudo-labels and submissions, asked by the modules above instead of branching on
`data.task`.

  single      one label per text; softmax over the classes; argmax decides
  pair        single, over texts `a + PAIR_SEP + b`: pairs that share a sentence share a fold
  multilabel  a set of labels per text; one sigmoid per label; per-label thresholds decide

A new shape (an ordinal score, say) is a subclass registered with `@register_task` and its
tests; `data.task` names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from comp.core.utils import CompError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Task", "SingleLabel", "Pair", "MultiLabel", "register_task", "task_of",
           "task_names", "task_choices"]

TASKS: dict[str, Task] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a shape available as `data.task = cls.name`."""
    TASKS[cls.name] = cls()
    return cls


def task_names() -> tuple[str, ...]:
    """The registered shapes, for `data.task` and its error message."""
    return tuple(TASKS)


def task_choices() -> str:
    """'single, pair or multilabel': the registered shapes, for error messages."""
    names = list(TASKS)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def task_of(name: str | None) -> Task:
    """The shape named by data.task (or a cv.json's "task"; None and "" mean single)."""
    try:
        return TASKS[name or "single"]
    except KeyError:
        raise CompError(f"data.task: '{name}' is not {task_choices()}") from None


class Task:
    """The default shape: one label per text, chosen among C classes."""

    name: ClassVar[str] = "single"
    multilabel: ClassVar[bool] = False  # labels (n, L) 0/1, outputs independent per label
    pair: ClassVar[bool] = False  # texts are a + PAIR_SEP + b
    default_metric: ClassVar[str] = "accuracy"
    # scikit-learn / cleanlab / the ensemble read the label array's shape; this is the
    # name written beside a member's probabilities in cv.json ("" for the default)
    cv_tag: ClassVar[str] = ""

    def targets(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """(n, C) float32 training targets of the label array (one-hot here)."""
        return np.eye(n_classes, dtype=np.float32)[labels]

    def activate(self, logits: Tensor) -> Tensor:
        """Model outputs (B, C) -> probabilities."""
        return logits.softmax(-1)

    def decide(self, proba: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """Probabilities -> decisions: class indices (n,) here."""
        return proba.argmax(-1)

    def rows_sum_to_one(self) -> bool:
        """Whether a row of probabilities is a distribution (checked and renormalised)."""
        return not self.multilabel

    def fold_method(self, base: str) -> str:
        """The fold table's method name (folds.json) for the base grouping."""
        return base

    def entropy(self, proba: np.ndarray) -> np.ndarray:
        """(n,) predictive entropy in nats: how unsure the model is of each row."""
        p = np.clip(proba, 1e-12, 1.0)
        return -(p * np.log(p)).sum(-1)

    def describe_labels(self) -> str:
        """What one label cell holds, for error messages."""
        return "a class"


@register_task
class SingleLabel(Task):
    """One label per text (the default)."""


@register_task
class Pair(Task):
    """A label per pair of texts: the fold table keeps pairs that share a sentence together,
    so a sentence seen in training never scores a validation pair."""

    name = "pair"
    pair = True

    def fold_method(self, base: str) -> str:
        return base.replace("normalized text", "normalized text, shared pair sentences")


@register_task
class MultiLabel(Task):
    """A set of labels per text: one independent probability per label, cut at per-label
    thresholds fitted on OOF rows (comp.tasks.thresholds)."""

    name = "multilabel"
    multilabel = True
    default_metric = "micro_f1"  # exact match of a label set is too harsh a default
    cv_tag = "multilabel"

    def targets(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        return labels.astype(np.float32)  # (n, L) 0/1 already

    def activate(self, logits: Tensor) -> Tensor:
        return logits.sigmoid()

    def decide(self, proba: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        from comp.tasks.thresholds import apply_thresholds

        cut = np.full(proba.shape[-1], 0.5) if thresholds is None else thresholds
        return apply_thresholds(proba, cut)

    def fold_method(self, base: str) -> str:
        return "iterative-" + base

    def entropy(self, proba: np.ndarray) -> np.ndarray:
        p = np.clip(proba, 1e-12, 1 - 1e-12)  # each label's binary entropy, summed
        return -(p * np.log(p) + (1 - p) * np.log(1 - p)).sum(-1)

    def describe_labels(self) -> str:
        return "a label"
