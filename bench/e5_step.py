"""Seconds per full fine-tuning step of the e5 fusion member: full precision vs CPU bf16.

Four arms on the same seeded batches of the embedded competition (batch 32, length-bucketed as
in training, every e5 layer trainable, the recipe --preset best runs: char vectors, 128
characters): full precision with e5's own dropout and sdpa attention (the checkpoint as loaded),
bf16 autocast with dropout, full precision without dropout, and bf16 without dropout inside e5
with eager attention (what fusion_e5_fast / fusion_e5_full run). Each arm runs `--steps` steps
after two untimed ones; the median step is reported. bf16 needs a CPU with native bf16 (AMX /
AVX512-BF16); elsewhere that arm runs in full precision and the line says so. Last line:
    fp32_s=<s> bf16_nodrop_s=<s> speedup=<x>

    .venv/bin/python bench/e5_step.py [--steps 12]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("COMP_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from comp.workflows.pipeline import Layout, member_recipe, stage_vectors  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()

    from comp.data.competition import load_competition
    from comp.nn.backbones.e5 import prepare_backbone
    from comp.nn.distributed import amp_setup
    from comp.nn.fusion import build_fusion
    from comp.nn.rows import make_rows, train_batches
    from comp.nn.trainer import make_batch

    os.chdir(ROOT)
    layout = Layout(None)
    base = member_recipe(layout, "fusion_e5_full")
    comp = load_competition(base.data)
    prepare_backbone(base.model.backbones[0].path, base.data)
    stage_vectors(layout, ["char"])  # `comp run`'s vectors stage (skipped when present)
    rng = np.random.default_rng(0)
    rows_idx = rng.permutation(len(comp.train_texts))[:32 * (args.steps + 2)]
    y = np.eye(comp.n_classes, dtype=np.float32)[comp.labels[rows_idx]]
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    arms = {"fp32, dropout, sdpa": ("off", -1.0, ""), "bf16, dropout, sdpa": ("bf16", -1.0, ""),
            "fp32, no dropout, eager": ("off", 0.0, "eager"),
            "bf16, no dropout, eager": ("bf16", 0.0, "eager")}
    out = {}
    for name, (amp, drop, attn) in arms.items():
        model_cfg = dataclasses.replace(base.model, backbone_dropout=drop,
                                        backbone_attention=attn)
        recipe = dataclasses.replace(base, model=model_cfg,
                                     train=dataclasses.replace(base.train, amp=amp))
        torch.manual_seed(0)
        model = build_fusion(recipe, comp.n_classes)
        model.set_phase(2, recipe.train)  # every layer trains (unfreeze_top = 0)
        rows = make_rows([comp.train_texts[i] for i in rows_idx], recipe.model, y)
        rows.vec_ids = model.vector_ids(rows.texts)
        batches = train_batches(rows.lengths, 32, np.random.default_rng(1), True)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        autocast, _ = amp_setup(amp, torch.device("cpu"))
        model.train()
        times = []
        for i, idx in enumerate(batches):
            t0 = time.perf_counter()
            batch = make_batch(model, rows, idx, None, torch.device("cpu"))
            with autocast():
                logits = model(batch)
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["targets"].argmax(1))
            loss.backward()
            opt.step()
            opt.zero_grad()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
        note = "" if amp == "off" or native else " (no native bf16 here: ran in fp32)"
        print(f"{name:<26}{out[name]:>7.3f} s/step{note}", flush=True)
    fp32, fast = out["fp32, dropout, sdpa"], out["bf16, no dropout, eager"]
    print(f"fp32_s={fp32:.3f} bf16_nodrop_s={fast:.3f} speedup={fp32 / fast:.2f} "
          f"steps={args.steps} threads={torch.get_num_threads()} native_bf16={native}")


if __name__ == "__main__":
    main()
