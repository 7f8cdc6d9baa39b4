"""What a vectors network (a fusion recipe without a backbone) costs on this machine, timed on a
sample of the task's own texts: the planner's calibration for such members (an e5 member's is
the e5 forward rate, comp.nn.sentence.encode_rate).

    pace = network_pace(recipe, texts, n_classes)
    pace["train_row"], pace["eval_row"]   # seconds a training row (forward, backward, AdamW
                                          # step) and a predicted row cost at the recipe's batches
    pace["setup_text"]                    # seconds a text costs before the first fold: word2vec
                                          # of each vectors kind, grid texts and vector ids

The sample's own word2vec vectors stand in for the task's (a lookup costs the same whatever the
vectors hold), so nothing is written and the member's real vectors are built later as usual.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comp.nn.vectors import corpus_tokens, load_vectors, train_vectors, vector_epochs

STEP_ROWS = 256  # rows the training steps and predictions are timed on
W2V_TEXTS = 2000  # texts word2vec is timed on (its fixed costs are small beside that)
STEPS = 6  # timed training steps (twice), after one untimed step


def _sample(texts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    idx = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[i] for i in sorted(idx)]


def network_pace(recipe: Any, texts: Sequence[str], n_classes: int) -> dict[str, float]:
    """Seconds per training row, per predicted row and per text of setup for a vectors network
    on a sample of `texts` (train + test), at the recipe's model, batch sizes and pair order."""
    from comp.nn.distributed import amp_setup
    from comp.nn.fusion import FusionModel, train_swap
    from comp.nn.losses import create_loss
    from comp.nn.optim import param_groups
    from comp.nn.rows import make_rows
    from comp.nn.trainer import make_batch, predict
    from comp.nn.vectors import GridVectors

    cfg, train = recipe.model, recipe.train
    w2v_texts = _sample(texts, W2V_TEXTS)
    vectors, w2v = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for kind in cfg.vectors:
            # the passes the whole corpus gets (more over a small one), from the sample's tokens
            # (jieba loads its dictionary here, untimed)
            n = sum(map(len, corpus_tokens(w2v_texts, kind))) * len(texts) / len(w2v_texts)
            t0 = time.perf_counter()
            path = train_vectors(w2v_texts, kind, Path(tmp) / f"{kind}.kv", min_count=1,
                                 epochs=vector_epochs(round(n)), quiet=True)
            w2v += time.perf_counter() - t0
            vectors.append(GridVectors(load_vectors(path), kind, cfg.vectors_trainable))
    model = FusionModel(cfg, n_classes, [], vectors, pair=recipe.data.shape.pair)
    step_texts = _sample(texts, STEP_ROWS, seed=1)
    y = np.eye(n_classes, dtype=np.float32)[np.arange(len(step_texts)) % n_classes]
    t0 = time.perf_counter()
    rows = make_rows(step_texts, cfg, y, both_orders=train_swap(recipe))
    rows.vec_ids = model.vector_ids(rows.texts)
    prep = (time.perf_counter() - t0) / len(rows)

    torch.manual_seed(0)
    loss_fn = create_loss("ce", n_classes)
    opt = torch.optim.AdamW(param_groups(model, train, 1))
    model.train()
    cpu = torch.device("cpu")
    autocast, _ = amp_setup(train.amp, cpu)  # the fit loop's precision
    # batches of similar lengths, as the fit loop's sampler deals them (train.bucket)
    order = np.argsort(rows.lengths, kind="stable")
    starts = np.random.default_rng(2).integers(0, max(len(rows) - train.batch_size, 0) + 1,
                                               STEPS)

    def step(start: int) -> int:
        idx = order[start:start + train.batch_size]
        batch = make_batch(model, rows, idx, None, cpu)
        with autocast():
            loss = loss_fn(model(batch), batch["targets"], batch["weights"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return len(idx)

    step(starts[0])  # the first step allocates what the others reuse
    train_row = float("inf")
    for _ in range(2):  # the faster of two passes: one pass alone varied by a third
        t0 = time.perf_counter()
        n = sum(step(s) for s in starts)
        train_row = min(train_row, (time.perf_counter() - t0) / max(n, 1))
    predict(model, rows.subset(order[:train.eval_batch_size]), train.eval_batch_size,
            amp=train.amp)
    t0 = time.perf_counter()
    predict(model, rows, train.eval_batch_size, amp=train.amp, desc="timing")
    eval_row = (time.perf_counter() - t0) / len(rows)
    return {"train_row": train_row, "eval_row": eval_row,
            "setup_text": w2v / len(w2v_texts) + prep * len(rows) / len(step_texts)}
