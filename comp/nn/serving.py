"""Trained neural folds as predictors: loading a fold from the folders it recorded, the fastest
serving form, texts -> probabilities.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from comp.config.schema import Recipe
from comp.core.utils import CompError
from comp.nn.fusion import FusionModel, grid_len, load_fold_model, log_unknown

# texts -> (n, C) probabilities
Predictor = Callable[[Sequence[str]], np.ndarray]


# ---------------------------------------------------------------------------------------------
# inference


class TextCNNTables:
    """A trained vectors-only TextCNN student folded into lookup tables for serving.

    A convolution over looked-up vectors is linear in them: for kernel size k, the output at
    position t is bias + sum_j W_j . E[id(t + j)], j < k. Every product W_j . E[v] is computed
    once per vocabulary entry v and tap j, so a window's output becomes a sum of k table rows
    (one `embedding_bag`) instead of k (D x C) matrix products: the same outputs (up to float
    rounding) for a fraction of the work. Positions past a text's end read zero rows, as the
    head's zero padding does, and the bias sits in the tap-0 rows of ids (unknown included), not
    in that block's zero row: a position outside the text sums to 0, so after ReLU (outputs
    >= 0) max and mean pooling over every position equal the head's masked pooling.

    Built from a model in its final state (eval mode); training the model afterwards leaves the
    tables stale. `predict_texts` serves either form.

    Args:
        model: a FusionModel without backbones, with a CNN head and max/mean pooling.
    """

    def __init__(self, model: FusionModel) -> None:
        why = _tables_unsupported(model)
        if why:
            raise CompError(f"model.head: cannot fold this student into lookup tables ({why})")
        head = model.head
        self.cfg = model.cfg
        self.n_classes = model.n_classes
        self.task = model.task
        self.vectors = list(model.vectors)  # only their ids(): texts -> vocabulary ids
        self.kmax = max(head.kernel_sizes)
        self.classifier = copy.deepcopy(model.classifier).cpu().eval()  # tables serve on CPU
        ch = head.convs[0].out_channels
        width = ch * len(head.kernel_sizes)
        blocks, self.bases, self.pads = [], [], []  # one block per (vector kind, tap)
        base = 0
        with torch.no_grad():
            dim0 = 0
            for v in self.vectors:
                emb = v.embedding.weight.detach().float().cpu()  # (V + 1, D_v); 0 = unknown
                for j in range(self.kmax):
                    block = emb.new_zeros(len(emb) + 1, width)  # last row: outside the text
                    for i, (conv, k) in enumerate(zip(head.convs, head.kernel_sizes)):
                        if j < k:
                            w = conv.weight[:, dim0:dim0 + v.dim, j].float().cpu()  # (C, D_v)
                            block[:-1, i * ch:(i + 1) * ch] = emb @ w.t()
                    blocks.append(block)
                    self.bases.append(base)
                    self.pads.append(len(emb))
                    base += len(block)
                dim0 += v.dim
            bias = torch.cat([conv.bias.float().cpu() for conv in head.convs])  # (width,)
            blocks[0][:-1] += bias  # once per position inside a text, never outside
            self.table = torch.cat(blocks)  # (rows, width)

    def bag_index(self, texts: Sequence[str], n: int) -> Tensor:
        """(B, n, kinds * kmax) table rows read at each of the first n positions of B grid
        texts: row base + id of position t + j for each vector kind and tap j, or that block's
        zero row where t + j lies outside the text."""
        lens = torch.tensor([grid_len(t) for t in texts])  # (B,)
        inside = torch.arange(n + self.kmax - 1)[None, :] < lens[:, None]  # (B, n + kmax - 1)
        cols, b = [], 0
        for v in self.vectors:
            ids = F.pad(v.ids(list(texts), n).long(), (0, self.kmax - 1))  # (B, n + kmax - 1)
            for j in range(self.kmax):
                rows = torch.where(inside, ids, self.pads[b])[:, j:j + n]  # (B, n)
                cols.append(rows + self.bases[b])
                b += 1
        return torch.stack(cols, dim=-1)  # (B, n, kinds * kmax)

    @torch.inference_mode()
    def predict_rows(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Grid texts -> (n, C) probabilities, in length-sorted batches as `predict` cuts them."""
        from comp.nn.rows import eval_batches

        lens = np.fromiter((grid_len(t) for t in texts), dtype=np.int64, count=len(texts))
        proba = np.zeros((len(texts), self.n_classes), dtype=np.float32)
        for idx in eval_batches(lens, batch_size):
            n = int(lens[idx].max())
            bag = self.bag_index([texts[i] for i in idx], n)  # (B, n, K)
            h = F.embedding_bag(bag.reshape(-1, bag.shape[-1]), self.table, mode="sum")
            h = h.view(len(idx), n, -1).relu_()  # (B, n, width): conv outputs, 0 outside
            count = torch.from_numpy(lens[idx]).to(h.dtype)[:, None]  # (B, 1)
            pooled = torch.cat([h.amax(dim=1), h.sum(dim=1) / count], dim=-1)  # (B, 2 width)
            logits = self.classifier(pooled, [])
            proba[idx] = self.task.activate(logits).numpy()
        return proba


def _tables_unsupported(model: FusionModel) -> str:
    """Why a model cannot be folded into TextCNNTables ('' when it can)."""
    from comp.nn.heads import CNNHead, MaxMeanPool
    from comp.nn.vectors import GridVectors

    if len(model.backbones):
        return "it has backbones"
    if model.pair:
        return "it reads text pairs (segments or sides)"
    if not isinstance(model.head, CNNHead) or not isinstance(model.head.pool, MaxMeanPool):
        return "only a CNN head with maxmean pooling folds"
    if not len(model.vectors) or not all(isinstance(v, GridVectors) for v in model.vectors):
        return "its inputs are not gensim vectors"
    if model.classifier.cls_dims:
        return "it has CLS inputs"
    if model.proj is not None:
        return "it projects its inputs (model.proj_dim)"
    return ""


def load_student(run_dir: str | Path, fold: int, n_classes: int,
                 recipe: Recipe | None = None) -> FusionModel:
    """A trained fold's model from runs/<name>/fold{k}/model.pt (for serving and benchmarks)."""
    from comp.data.recipes import load_recipe

    run_dir = Path(run_dir)
    recipe = recipe or load_recipe(run_dir / "recipe.toml")
    return load_neural_fold(run_dir / f"fold{fold}" / "model.pt", recipe, n_classes)


# ---------------------------------------------------------------------------------------------
# neural fold models (fusion members and students)


def load_neural_fold(ckpt: Path, recipe: Recipe, n_classes: int) -> Any:
    """A fusion/student fold's model.pt in the network its recipe builds, in eval mode."""
    if not ckpt.exists():
        raise CompError(f"{ckpt}: no checkpoint (fold not trained?)")
    return load_fold_model(ckpt, recipe, n_classes).eval()


def serving_model(model: Any) -> Any:
    """What serves a trained network fastest: a vectors-only TextCNN's lookup tables when it
    folds into them (comp.nn.serving.TextCNNTables), else the network itself."""
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
    from comp.nn.rows import make_rows
    from comp.nn.trainer import predict

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
