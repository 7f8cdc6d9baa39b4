"""The fit loop and the fusion member: phases, cache, determinism, resume, windows, extra rows,
schedules, LR groups, FGM/PGD, EMA, accumulation, and two-process torch.distributed."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import comp.nn.trainer as train_mod
from comp.config.schema import (
    BackboneConfig,
    DataConfig,
    ModelConfig,
    PretrainConfig,
    Recipe,
    TrainConfig,
)
from comp.core.utils import CompError
from comp.kfold.extra import ExtraRows
from comp.nn.distributed import amp_setup
from comp.nn.fusion import FeatureCache, build_fusion, grid_texts
from comp.nn.optim import EMA, Adversary, lr_scheduler, param_groups
from comp.nn.rows import LengthGroupedBatchSampler, Rows, eval_batches, make_rows, train_batches
from comp.nn.trainer import fit, predict, train_fusion

POS = ["很好", "满意", "不错", "推荐", "干净", "舒服", "喜欢"]
NEG = ["太差", "失望", "很吵", "很脏", "难吃", "后悔", "糟糕"]
FILL = ["房间", "酒店", "服务", "早餐", "前台", "位置", "价格", "这次", "总之", "环境"]


def synth(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Short reviews whose label follows their sentiment words (a learnable toy task)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        y = int(rng.integers(2))
        words = POS if y else NEG
        parts = [f"{rng.choice(FILL)}{rng.choice(words)}" for _ in range(rng.integers(1, 8))]
        texts.append("，".join(parts) + "。")
        labels.append("pos" if y else "neg")
    return texts, labels


def write_comp(d: Path, n_train: int = 48, n_test: int = 12) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    texts, labels = synth(n_train + n_test, 0)
    with open(d / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        w.writerows((f"r{i}", texts[i], labels[i]) for i in range(n_train))
    with open(d / "test.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((f"t{i}", texts[n_train + i]) for i in range(n_test))
    return d


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    from comp.nn.pretrain import run_pretrain

    out = tmp_path_factory.mktemp("bb") / "bert"
    texts, _ = synth(64, 1)
    cfg = PretrainConfig(kind="bert", out=str(out), hidden=32, layers=2, heads=2, intermediate=64,
                         vocab_size=120, steps=0, max_len=64, batch_size=4, max_positions=64)
    return str(run_pretrain(cfg, texts))


@pytest.fixture(scope="module")
def comp_dir(tmp_path_factory) -> Path:
    return write_comp(tmp_path_factory.mktemp("comp") / "toy")


def recipe_for(bert_dir: str, comp_dir: Path, runs: Path, **train) -> Recipe:
    model = ModelConfig(backbones=(BackboneConfig("bert", bert_dir, 64),), hidden=8,
                        max_chars=32, dropout=0.1)
    tc = dict(epochs_frozen=1, epochs_unfrozen=1, batch_size=8, eval_batch_size=16,
              lr_head=5e-3, lr_backbone=1e-3)
    tc.update(train)
    return Recipe(name="toy_fusion", kind="fusion", runs_dir=str(runs),
                  data=DataConfig(dir=str(comp_dir), folds=3), model=model,
                  train=TrainConfig(**tc))


def toy_rows(model, n: int = 24, seed: int = 3) -> tuple[Rows, np.ndarray]:
    texts, labels = synth(n, seed)
    y = np.array([lab == "pos" for lab in labels], dtype=np.int64)
    rows = make_rows(texts, model.cfg, np.eye(2, dtype=np.float32)[y])
    rows.vec_ids = model.vector_ids(rows.texts)
    return rows, y


# ---------------------------------------------------------------------------------------------
# the member


def test_member_end_to_end_writes_files_and_resumes(bert_dir, comp_dir, tmp_path, monkeypatch):
    recipe = recipe_for(bert_dir, comp_dir, tmp_path / "runs")
    cv = train_fusion(recipe)
    run = tmp_path / "runs" / "toy_fusion"
    assert cv is not None and cv["kind"] == "fusion" and 0.0 <= cv["cv"] <= 1.0
    oof, test = np.load(run / "oof.npy"), np.load(run / "test.npy")
    assert oof.shape == (48, 2) and test.shape == (12, 2)
    np.testing.assert_allclose(oof.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(test.sum(1), 1.0, atol=1e-5)
    for f in range(3):
        state = torch.load(run / f"fold{f}" / "model.pt")
        assert any(k.startswith("classifier.") for k in state)
    curves = json.loads((run / "epochs.json").read_text())  # the report's learning curves
    n_epochs = recipe.train.epochs_frozen + recipe.train.epochs_unfrozen
    assert sorted({r["fold"] for r in curves}) == [0, 1, 2]
    assert all(1 <= r["epoch"] <= n_epochs and "accuracy" in r and "loss" in r for r in curves)

    def boom(*a, **k):
        raise AssertionError("a finished fold was retrained")

    monkeypatch.setattr(train_mod, "fit", boom)
    again = train_fusion(recipe)
    assert again["cv"] == cv["cv"]

    # asked for predictions on the training rows later: the kept fold models give them
    asked = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train,
                                                                  predict_train=True))
    assert train_fusion(asked)["cv"] == cv["cv"]
    train_k = np.load(run / "train_by_fold.npy")  # (K, n_train, C)
    from comp.data.competition import load_competition
    from comp.data.folds import load_folds

    folds = load_folds(load_competition(recipe.data), recipe.data)
    assert train_k.shape == (3, 48, 2)
    for k in range(3):  # fold k's model on its validation rows is the OOF there
        np.testing.assert_allclose(train_k[k, folds == k], oof[folds == k], atol=1e-4)
    monkeypatch.undo()
    # and a member run with the option from the start predicts the same while training
    fresh = dataclasses.replace(asked, runs_dir=str(tmp_path / "runs2"))
    train_fusion(fresh)
    np.testing.assert_allclose(np.load(fresh.run_dir / "train_by_fold.npy"), train_k, atol=1e-4)


def test_same_seed_gives_identical_oof(bert_dir, comp_dir, tmp_path):
    outs = []
    for name in ("a", "b"):
        recipe = recipe_for(bert_dir, comp_dir, tmp_path / name, adv="fgm", ema=0.5)
        train_fusion(recipe)
        outs.append(np.load(tmp_path / name / "toy_fusion" / "oof.npy"))
    assert np.array_equal(outs[0], outs[1])
    other = recipe_for(bert_dir, comp_dir, tmp_path / "c", adv="fgm", ema=0.5, seed=7)
    train_fusion(other, folds_to_run=[0])
    a = np.load(tmp_path / "a" / "toy_fusion" / "fold0" / "val_proba.npy")
    c = np.load(tmp_path / "c" / "toy_fusion" / "fold0" / "val_proba.npy")
    assert not np.array_equal(a, c)


def test_extra_rows_join_training_parts_only(bert_dir, comp_dir, tmp_path, monkeypatch):
    from comp.data.competition import load_competition

    recipe = recipe_for(bert_dir, comp_dir, tmp_path / "runs", epochs_unfrozen=0)
    comp = load_competition(recipe.data)
    new_texts, _ = synth(6, 99)
    extra_texts = new_texts + comp.train_texts[:4]  # some duplicate labelled rows
    extra = ExtraRows(extra_texts, np.full((len(extra_texts), 2), 0.5, np.float32),
                      np.full(len(extra_texts), 0.5, np.float32), "test")
    seen: list[tuple[set[str], set[str]]] = []
    real_fit = train_mod.fit

    def recording_fit(model, train, val, *a, **k):
        texts: set[str] = set()
        k["on_batch"] = texts.update
        out = real_fit(model, train, val, *a, **k)
        seen.append((texts, set(val.texts)))
        return out

    monkeypatch.setattr(train_mod, "fit", recording_fit)
    train_fusion(recipe, extra=extra)
    assert len(seen) == 3
    for texts, val_texts in seen:
        assert not texts & val_texts
        novel = {g for t in new_texts for g in grid_texts(t, recipe.model)}
        assert novel <= texts  # novel extra rows reach every fold



# ---------------------------------------------------------------------------------------------
# the fit loop


def _model(recipe: Recipe, seed: int = 0):
    torch.manual_seed(seed)
    return build_fusion(recipe, 2)


def test_cached_phase1_equals_recomputed(bert_dir, comp_dir, tmp_path):
    recipe = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=1, epochs_unfrozen=0,
                        adv="fgm")
    states = []
    for use_cache in (True, False):
        model = _model(recipe)
        before = {k: v.clone() for k, v in model.backbones.state_dict().items()}
        rows, y = toy_rows(model)
        train, val = rows.take(np.arange(16)), rows.take(np.arange(16, 24))
        cache = None
        if use_cache:
            cache = FeatureCache(model.cls_dims)
            model.freeze_backbones(True)
            cache.ensure(model, rows.texts)
        res = fit(model, train, val, y[16:], recipe.train, cache=cache)
        after = model.backbones.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
        states.append((model.state_dict(), res.val_proba))
    (a, pa), (b, pb) = states
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(pa, pb, atol=1e-5)


def test_phase2_trains_backbone_with_layer_decay(bert_dir, comp_dir, tmp_path):
    recipe = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=0, epochs_unfrozen=1,
                        layer_decay=0.5, lr_backbone=1e-2, lr_head_unfrozen=0.0)
    model = _model(recipe)
    groups = param_groups(model, recipe.train, phase=2)
    lrs = {g["tag"]: g["lr"] for g in groups}
    # embeddings, 2 layers, pooler: the top group at lr_backbone, each step down halves it
    assert lrs["bert.3"] == pytest.approx(1e-2)
    assert lrs["bert.0"] == pytest.approx(1e-2 * 0.5 ** 3)
    assert lrs["head"] == recipe.train.lr_head
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters())
    assert not any(p.ndim <= 1 and g["weight_decay"] for g in groups for p in g["params"])
    assert {g["tag"] for g in param_groups(model, recipe.train, phase=1)} == {"head"}
    before = model.backbones[0].input_embeddings().weight.detach().clone()
    rows, y = toy_rows(model)
    fit(model, rows.take(np.arange(16)), rows.take(np.arange(16, 24)), y[16:], recipe.train)
    assert not torch.equal(before, model.backbones[0].input_embeddings().weight)


def test_early_stopping_keeps_best_checkpoint(bert_dir, comp_dir, tmp_path):
    """The selection rows carry flipped labels, so their score falls as the model learns while
    the watched rows' score rises: the kept epoch, the checkpoint, the restored weights and
    phase 2's start must all be the selection's best, never the watched rows' or the last."""
    recipe = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=6, epochs_unfrozen=2,
                        patience=2, lr_head=2e-2, lr_head_unfrozen=1e-2, lr_backbone=1e-2,
                        schedule="constant", warmup=0.0)
    model = _model(recipe)
    rows, y = toy_rows(model, n=60)
    train, sel, val = rows.take(np.arange(36)), rows.take(np.arange(36, 48)), rows.take(
        np.arange(48, 60))
    states: dict[int, dict] = {}  # epoch -> weights at its end
    phase2_start: list[dict] = []

    def report(epoch, value):
        states[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    def on_batch(texts):  # phase 2's first batch, before its first step
        unfrozen = any(p.requires_grad for p in model.backbones.parameters())
        if unfrozen and not phase2_start:
            phase2_start.append({k: v.clone() for k, v in model.state_dict().items()})

    res = fit(model, train, sel, 1 - y[36:48], recipe.train, ckpt=tmp_path / "m.pt",
              report=report, on_batch=on_batch, watch=(val, y[48:]))
    hist = res.history
    p1 = [h for h in hist if h["phase"] == 1]
    sel_scores = [h["select_accuracy"] for h in hist]
    kept = int(np.argmax(sel_scores)) + 1  # the first best: a tie is no improvement
    assert res.best_epoch == kept and [h["kept"] for h in hist].count(True) == 1
    assert hist[kept - 1]["kept"] and res.best_score == max(sel_scores)
    # the choice is not the last epoch, nor the one the watched (validation) rows prefer
    assert kept < len(hist) and int(np.argmax([h["accuracy"] for h in hist])) + 1 != kept
    # early stopping: each phase stops `patience` epochs after its best selection score
    for phase in (1, 2):
        ph = [h for h in hist if h["phase"] == phase]
        best_at = int(np.argmax([h["select_accuracy"] for h in ph]))
        assert len(ph) == min(best_at + 1 + 2, recipe.train.epochs_frozen if phase == 1
                              else recipe.train.epochs_unfrozen)
    saved = torch.load(tmp_path / "m.pt")
    for k, v in model.state_dict().items():  # restored == checkpoint == the kept epoch's
        # the checkpoint leaves out backbone weights equal to the loaded ones (none here:
        # phase 2 trained the whole tiny backbone)
        assert k in saved or torch.equal(model.base_state[k], v)
        assert torch.equal(saved.get(k, v), v) and torch.equal(states[kept][k], v)
    assert not all(torch.equal(states[len(hist)][k], v) for k, v in saved.items())
    np.testing.assert_allclose(res.val_proba, predict(model, val), atol=1e-6)
    # phase 2 started from the best phase-1 weights, which were not phase 1's last
    best_p1 = int(np.argmax([h["select_accuracy"] for h in p1])) + 1
    assert phase2_start and best_p1 < len(p1)
    assert all(torch.equal(phase2_start[0][k], states[best_p1][k]) for k in saved)


def test_refit_replays_the_chosen_epochs(bert_dir, comp_dir, tmp_path):
    """A refit (stop_after = chosen_epochs) on the very rows of the choosing run lands on the
    weights that run kept, through phase 2's start from an earlier phase-1 epoch; on all of a
    fold's training rows it is that same recipe of epochs with nothing held out."""
    from comp.nn.trainer import chosen_epochs

    recipe = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=4, epochs_unfrozen=3,
                        patience=0, lr_head=5e-3, lr_head_unfrozen=5e-3, lr_backbone=1e-3)
    recipe = replace(recipe, model=replace(recipe.model, dropout=0.0))
    model = _model(recipe)
    rows, y = toy_rows(model, n=48)
    train, sel = rows.take(np.arange(36)), rows.take(np.arange(36, 48))
    res = fit(model, train, sel, y[36:], recipe.train)
    e1, e2 = chosen_epochs(res)
    assert res.best_phase == 2 and e1 < 4  # phase 2 started from an earlier phase-1 epoch
    again = _model(recipe)
    out = fit(again, train, None, None, recipe.train, stop_after=(e1, e2))
    assert [h["phase"] for h in out.history] == [1] * e1 + [2] * e2
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, atol=1e-6, rtol=1e-5)


def test_refit_member_keeps_the_refitted_model(bert_dir, comp_dir, tmp_path, monkeypatch):
    recipe = recipe_for(bert_dir, comp_dir, tmp_path / "runs", refit=True, inner_val=0.25)
    seen: list[int] = []
    real_fit = train_mod.fit

    def counting_fit(model, train, *a, **k):
        seen.append(len(train))
        return real_fit(model, train, *a, **k)

    monkeypatch.setattr(train_mod, "fit", counting_fit)
    cv = train_fusion(recipe, folds_to_run=[0])
    assert cv is None  # one fold of three
    # fold 0: 32 training rows; the choosing run fits 24 of them, the refit all 32
    assert seen == [24, 32]
    curves = json.loads((recipe.run_dir / "fold0" / "epochs.json").read_text())
    assert sum(c["kept"] for c in curves) == 1 and "select_accuracy" in curves[0]


def test_inner_split_is_stratified_grouped_and_survives_rare_classes():
    from comp.nn.rows import inner_split

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [120, 60, 2])  # class 2: two rows only
    texts = [f"t{i}" for i in range(len(labels))]
    # one text three times, over two classes; normalized alike (case and spaces do not count)
    texts[5], texts[7], texts[130] = "t5", "T5", " T5 "
    fit_pos, sel = inner_split(labels, texts, 0.2, seed=3)
    assert sorted(np.concatenate([fit_pos, sel]).tolist()) == list(range(len(labels)))
    assert 0.15 < len(sel) / len(labels) < 0.25
    assert abs((labels[sel] == 0).mean() - 120 / 180) < 0.08  # stratified
    assert not (labels[sel] == 2).any()  # a class of two rows stays where it is learnt
    from comp.data.folds import normalize_text

    held = {normalize_text(texts[i]) for i in sel}
    assert not held & {normalize_text(texts[i]) for i in fit_pos}  # copies on one side
    again = inner_split(labels, texts, 0.2, seed=3)
    assert np.array_equal(again[1], sel) and not np.array_equal(
        inner_split(labels, texts, 0.2, seed=4)[1], sel)
    # few-shot: 63 classes of 1-3 rows, and too few rows to stratify at all
    few = np.repeat(np.arange(63), rng.integers(1, 4, 63))
    f, s_ = inner_split(few, [str(i) for i in range(len(few))], 0.1, seed=0)
    assert len(f) + len(s_) == len(few) and len(f) > 0
    assert len(inner_split(np.array([0, 1, 0]), ["a", "b", "c"], 0.1, 0)[1]) == 0
    assert len(inner_split(labels, texts, 0.0, 0)[1]) == 0


def test_report_can_stop_training(bert_dir, comp_dir, tmp_path):
    recipe = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=3, epochs_unfrozen=0)
    model = _model(recipe)
    rows, y = toy_rows(model)

    class Pruned(Exception):
        pass

    def prune(step, value):
        if step == 2:
            raise Pruned

    with pytest.raises(Pruned):
        fit(model, rows.take(np.arange(16)), rows.take(np.arange(16, 24)), y[16:],
            recipe.train, report=prune)


@pytest.mark.parametrize("n,arms", [
    (16, ((8, 1), (4, 2))),
    # 12 rows in batches of 4 with accum=2: groups of 2 batches and 1 batch, the same two
    # optimizer steps as batches of 8 and 4 (the last group divided by 1, not by accum)
    (12, ((8, 1), (4, 2))),
])
def test_grad_accumulation_matches_bigger_batch(bert_dir, comp_dir, tmp_path, n, arms):
    base = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=1, epochs_unfrozen=0,
                      bucket=False, warmup=0.0, schedule="constant")
    base = replace(base, model=replace(base.model, dropout=0.0))
    states = []
    for bs, accum in arms:
        model = _model(base)
        rows, y = toy_rows(model)
        cfg = replace(base.train, batch_size=bs, accum=accum)
        if n == 16:
            fit(model, rows.take(np.arange(16)), rows.take(np.arange(16, 24)), y[16:], cfg)
        else:
            fit(model, rows.take(np.arange(n)), None, None, cfg)
        states.append(model.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], atol=1e-5, rtol=1e-4)


def test_window_mode_averages_per_text(bert_dir, comp_dir, tmp_path):
    recipe = recipe_for(bert_dir, comp_dir, tmp_path)
    recipe = replace(recipe, model=replace(recipe.model, max_chars=12, truncation="window",
                                           window_stride=6))
    model = _model(recipe)
    model.eval()
    texts, _ = synth(5, 4)
    texts[0] = "短评"
    rows = make_rows(texts, recipe.model, np.zeros((5, 2), np.float32))
    assert len(rows) > len(texts) and rows.source.tolist() == sorted(rows.source.tolist())
    got = predict(model, rows, batch_size=3)
    assert got.shape == (5, 2)
    for i, t in enumerate(texts):
        wins = grid_texts(t, recipe.model)
        with torch.no_grad():
            p = torch.softmax(model(model.prepare(wins)), -1).mean(0).numpy()
        np.testing.assert_allclose(got[i], p, atol=1e-5)


def test_ema_evaluates_averaged_weights():
    lin = torch.nn.Linear(2, 1)
    ema = EMA(lin, decay=0.5)
    start = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)  # warm-up decay min(0.5, 2/11)
    d = 2 / 11
    expect = start * d + (start + 1.0) * (1 - d)
    with ema.applied(lin):
        torch.testing.assert_close(lin.weight, expect)
    torch.testing.assert_close(lin.weight, start + 1.0)  # restored afterwards


def test_ema_averages_trained_parameters_with_the_warm_up_decay():
    """torch's AveragedModel behind EMA gives the hand-written average bit for bit: trained
    parameters lerp toward the weights with min(decay, (1 + n) / (10 + n)), frozen ones keep
    their value, buffers stay the model's own, and reset starts again from the weights."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    m[0].requires_grad_(False)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    ema = EMA(m, decay=0.9)
    shadow = [p.detach().clone() for p in m.parameters()]
    for n in range(1, 16):
        if n == 8:  # reset mid-way, as phase 2 does
            ema.reset(m)
            shadow = [p.detach().clone() for p in m.parameters()]
            k = n - 1
        m(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(m)
        step = n if n < 8 else n - k
        d = min(0.9, (1 + step) / (10 + step))
        for s, p in zip(shadow, m.parameters()):
            if p.requires_grad:
                s.lerp_(p.detach(), 1 - d)
    weights = [p.detach().clone() for p in m.parameters()]
    running = m[1].running_mean.clone()
    with ema.applied(m):
        for s, p in zip(shadow, m.parameters()):
            assert torch.equal(p, s)
        assert torch.equal(m[1].running_mean, running)
    for w, p in zip(weights, m.parameters()):
        assert torch.equal(p, w)


@pytest.mark.parametrize("kind", ["fgm", "pgd"])
def test_adversary_adds_gradients_of_a_bounded_perturbation(kind):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 1)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])

    def loss_fn():
        return head(torch.tanh(emb(ids))).pow(2).mean()

    clean = torch.autograd.grad(loss_fn(), [head.weight])[0]
    adv = Adversary([emb], kind, eps=0.5, steps=3)
    norms = []
    real_step = adv._step

    def spy(grads, size):
        ok = real_step(grads, size)
        norms.extend(float(r.norm()) for r in adv.delta.values())
        return ok

    adv._step = spy
    with adv.recording():
        loss_fn().backward()
    adv.attack(loss_fn, lambda loss: loss.backward(), [emb.weight, head.weight])
    assert norms and max(norms) <= 0.5 + 1e-5
    assert not torch.allclose(head.weight.grad, clean)  # clean + adversarial
    adv.remove()
    head.weight.grad = None
    loss_fn().backward()  # hooks gone: plain gradients again
    torch.testing.assert_close(head.weight.grad, clean)


# ---------------------------------------------------------------------------------------------
# parts


def test_no_epochs_is_an_error_and_cpu_runs_without_amp(bert_dir, comp_dir, tmp_path):
    recipe = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=0, epochs_unfrozen=0)
    model = _model(recipe)
    rows, y = toy_rows(model, n=4)
    with pytest.raises(CompError, match="epochs"):
        fit(model, rows, rows, y, recipe.train)
    autocast, scaler = amp_setup("fp16", torch.device("cpu"))
    assert scaler is None
    with autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def _old_schedule(kind: str, warmup: float, total: int):
    """The hand-written schedule transformers' replaced (kept here as the reference)."""
    warm = int(round(warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 1.0 - t if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def _lrs(sched: torch.optim.lr_scheduler.LRScheduler, total: int) -> list[float]:
    out = []
    for _ in range(total):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_schedules_are_the_hand_written_ones_one_warmup_step_later(kind):
    """transformers' schedules against the old hand-written ones, LR per optimizer step: after
    the warm-up identical (to 1e-12); warm-up step s gets s / w where the old gave (s + 1) / w,
    so the first step of a phase with warm-up has LR 0. Without warm-up, identical throughout."""
    for warmup, total in ((0.0, 50), (0.06, 100), (0.1, 37), (0.5, 7), (0.06, 5)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        got = _lrs(lr_scheduler(opt, kind, warmup, total), total)
        old = _old_schedule(kind, warmup, total)
        warm = int(round(warmup * total))
        want = [s / warm if s < warm else old(s) for s in range(total)]
        assert got == pytest.approx(want, abs=1e-12, rel=0)
        assert got[warm:] == pytest.approx([old(s) for s in range(warm, total)], abs=1e-12)
        assert got[1:warm] == pytest.approx([old(s - 1) for s in range(1, warm)], abs=1e-12)
    lin = _lrs(lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                            kind, 0.1, 100), 100)
    assert lin[0] == 0.0 and lin[10] == 1.0
    assert lin[55] == {"constant": 1.0, "linear": pytest.approx(0.5),
                       "cosine": pytest.approx(0.5)}[kind]


def test_bucketed_batches_cover_rows_once_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000)
    bucketed = train_batches(lengths, 16, np.random.default_rng(1), bucket=True)
    plain = train_batches(lengths, 16, np.random.default_rng(1), bucket=False)
    for batches in (bucketed, plain):
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))

    def padded(bs):
        return sum(len(b) * lengths[b].max() for b in bs)

    assert padded(bucketed) < 0.7 * padded(plain)
    again = train_batches(lengths, 16, np.random.default_rng(2), bucket=True)
    assert [b.tolist() for b in again] != [b.tolist() for b in bucketed]
    ev = eval_batches(lengths, 64)
    flat = np.concatenate(ev)
    assert np.all(np.diff(lengths[flat]) >= 0)


def test_rows_take_concat_and_average():
    cfg = ModelConfig(max_chars=4, truncation="window", window_stride=2)
    rows = make_rows(["abcdefgh", "xy", "1234567"], cfg, np.eye(3, dtype=np.float32))
    assert rows.source.tolist() == [0, 0, 0, 1, 2, 2, 2]
    sub = rows.take(np.array([2, 1]))
    assert sub.n_source == 2 and sub.source.tolist() == [1, 0, 0, 0]
    assert sub.texts[0] == "xy"
    both = sub.concat(rows.take(np.array([0])))
    assert both.n_source == 3 and both.source.max() == 2
    p = np.arange(len(rows) * 2, dtype=np.float32).reshape(-1, 2)
    avg = rows.average(p)
    np.testing.assert_allclose(avg[1], p[3])
    np.testing.assert_allclose(avg[0], p[:3].mean(0))


def test_the_batch_sampler_deals_every_rank_a_new_share_every_epoch():
    """DistributedSampler under the length grouping: two ranks together cover every row each
    epoch with the same number of batches, the shares change between epochs, an epoch replays
    exactly, and one rank sees every row once."""
    lengths = np.random.default_rng(0).integers(1, 100, size=101)

    def epoch(rank, world, e, bucket=True):
        s = LengthGroupedBatchSampler(lengths, 8, seed=3, bucket=bucket, rank=rank, world=world)
        s.set_epoch(e)
        return [list(b) for b in s], len(s)

    (a, na), (b, nb) = epoch(0, 2, 0), epoch(1, 2, 0)
    assert len(a) == na == len(b) == nb == 7  # 51 rows each (101 padded to 102)
    assert set(sum(a, [])) | set(sum(b, [])) == set(range(101))
    assert set(sum(epoch(0, 2, 1)[0], [])) != set(sum(a, []))  # dealt anew
    assert epoch(0, 2, 0)[0] == a
    one, n = epoch(0, 1, 0)
    assert sorted(sum(one, [])) == list(range(101)) and n == len(one) == 13
    plain, _ = epoch(0, 1, 0, bucket=False)
    spread = [np.ptp(lengths[x]) for x in one]
    assert np.mean(spread) < np.mean([np.ptp(lengths[x]) for x in plain])


# ---------------------------------------------------------------------------------------------
# torch.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_child(rank: int, world: int, port: int, recipe: Recipe, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), COMP_QUIET="1",
                      GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    import torch.distributed as dist

    import comp.nn.trainer as tm

    record: list[dict] = []
    real_fit = tm.fit

    def spy(model, train, *a, **k):
        res = real_fit(model, train, *a, **k)
        record.append({"rows": res.train_rows,
                       "sum": float(sum(p.double().sum() for p in model.state_dict().values()))})
        return res

    tm.fit = spy
    try:
        cv = tm.train_fusion(recipe)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"cv": cv, "folds": record}))
    # Everything is written; skip interpreter teardown, where a gloo thread's destructor once
    # aborted a finished child ("terminate called without an active exception", 1 run in ~6
    # under a loaded full suite), which failed the test after the work had succeeded.
    os._exit(0)


def test_two_process_ddp_trains_shards_and_rank0_writes(bert_dir, comp_dir, tmp_path):
    import torch.multiprocessing as mp

    small = write_comp(tmp_path / "toy2", n_train=24, n_test=6)
    recipe = recipe_for(bert_dir, small, tmp_path / "runs", epochs_unfrozen=1)
    recipe = replace(recipe, data=replace(recipe.data, folds=2))
    mp.spawn(_ddp_child, args=(2, _free_port(), recipe, str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["cv"] is not None and r1["cv"] is None
    assert len(r0["folds"]) == len(r1["folds"]) == 2
    for a, b in zip(r0["folds"], r1["folds"]):
        assert a["sum"] == b["sum"]  # averaged gradients keep the ranks in lockstep
        # a fold's 12 training rows, 2 held out to choose the epoch; the batch sampler deals
        # each rank half of the other 10 every epoch
        assert a["rows"] == b["rows"] == 10
    run = tmp_path / "runs" / "toy_fusion"
    assert np.load(run / "oof.npy").shape == (24, 2)
    assert np.load(run / "test.npy").shape == (6, 2)


class FakeClock:
    """time.time for comp.nn.optim: one second passes at every reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        self.now += 1.0
        return self.now


def test_a_time_slice_cuts_at_a_step_boundary_with_the_decay_brought_forward(
        bert_dir, comp_dir, tmp_path, monkeypatch):
    """A member given a slice far shorter than its schedule: a phase ends early at an optimizer
    step, its LR decaying from where it was towards 0 over the steps that fit (on a constant
    schedule nothing else lowers it), the fold keeps a finished model that predicts, and
    cv.json says what was cut."""
    import comp.nn.optim as optim_mod

    monkeypatch.setattr(optim_mod, "time", FakeClock())
    lrs: list[float] = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    recipe = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=4, epochs_unfrozen=4,
                        time_limit=40.0, warmup=0.0, schedule="constant", inner_val=0.0)
    cv = train_fusion(recipe)
    assert cv["cut"], "the slice cut nothing"
    assert {c["fold"] for c in cv["cut"]} == {0, 1, 2}
    for c in cv["cut"]:
        assert c["steps"] < c["planned_steps"] and c["time_limit"] == 40.0
    # 32 training rows in batches of 8: 4 steps an epoch, 16 a phase when nothing is cut
    assert len(lrs) == 3 * 32 - sum(c["planned_steps"] - c["steps"] for c in cv["cut"])
    assert min(lrs) < 0.2 * max(lrs)  # the brought-forward decay (constant otherwise)
    oof = np.load(Path(recipe.run_dir) / "oof.npy")
    assert np.isfinite(oof).all() and np.allclose(oof.sum(1), 1.0, atol=1e-5)
    epochs = json.loads((Path(recipe.run_dir) / "epochs.json").read_text())
    assert sum("cut" in e for e in epochs) == len(cv["cut"])
    assert all((Path(recipe.run_dir) / f"fold{k}" / "model.pt").exists() for k in range(3))


def test_no_time_slice_cuts_nothing(bert_dir, comp_dir, tmp_path):
    recipe = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=1, epochs_unfrozen=1)
    cv = train_fusion(recipe)
    assert "cut" not in cv


def test_a_fusion_member_weights_its_suspect_training_rows(bert_dir, comp_dir, tmp_path,
                                                           monkeypatch):
    """data.suspects = "weight": the fit's training rows carry the suspects' label quality as
    loss weights (the others 1), and the fold trains as usual."""
    recipe = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=1, epochs_unfrozen=0)
    recipe = replace(recipe, data=replace(recipe.data, suspects="weight", suspect_frac=0.25))
    seen = []
    real = train_mod.fit

    def spy(model, train, *a, **kw):
        seen.append(train.weights.copy())
        return real(model, train, *a, **kw)

    monkeypatch.setattr(train_mod, "fit", spy)
    cv = train_fusion(recipe)
    assert cv is not None and len(seen) == 3
    for w in seen:
        assert (w < 1).any() and (w == 1).mean() > 0.6 and (w >= 0).all()


def test_a_slice_counts_from_the_folds_start_and_keeps_time_for_its_predictions(monkeypatch):
    """TimeSlice: time spent before the fit (model build, caches) leaves fewer steps, and the
    rows the fold still predicts take their share of the last phase (a third of a trained
    row's cost each); phase 1 gets its share of what is left when it starts."""
    import comp.nn.optim as optim_mod

    clock = FakeClock()  # a second at every reading
    monkeypatch.setattr(optim_mod, "time", clock)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    def steps_run(start_offset: float, reserve_rows: int) -> int:
        clock.now = 1000.0
        s = optim_mod.TimeSlice(100.0, False, start=1000.0 - start_offset,
                                reserve_rows=reserve_rows, step_rows=8)
        s.begin(1, 1000)
        while not s.over:
            s.step(opt, None)
        return s.cuts[0]["steps"]

    fresh, late, reserved = steps_run(0, 0), steps_run(40, 0), steps_run(0, 240)
    assert late < fresh and reserved < fresh
    # the pace is judged after 3 steps over one second: 1/3 s a step of 8 rows; 240 rows at a
    # third of that a row keep back 240 / 8 / 9 s, 10 steps
    assert fresh - reserved == pytest.approx(10, abs=1)
    two = optim_mod.TimeSlice(100.0, True, start=0.0)
    clock.now = 60.0  # 40 s left when phase 1 starts: it may use a quarter of them
    two.begin(1, 1000)
    assert two.end == pytest.approx(61.0 + 0.25 * 39.0)


def test_class_prototypes_start_the_classifier_as_a_nearest_mean_rule(bert_dir, comp_dir,
                                                                      tmp_path):
    """Twenty classes of a few rows each: before any step, the classifier built from the
    class means of its inputs already sorts its training rows far above chance (1 in 20),
    and "auto" chooses it there but not on two classes with many rows."""
    from comp.nn.trainer import init_prototypes, predict, wants_prototypes

    recipe = recipe_for(bert_dir, comp_dir, tmp_path, prototypes="on")
    torch.manual_seed(0)
    model = build_fusion(recipe, 20)
    chars = sorted(set("".join(synth(64, 1)[0])) - set("，。"))  # the backbone's vocabulary
    assert len(chars) >= 24
    texts = [chars[c] * 3 + chars[20 + i] for c in range(20) for i in range(4)]
    y = np.repeat(np.arange(20), 4)
    rows = make_rows(texts, model.cfg, np.eye(20, dtype=np.float32)[y])
    rows.vec_ids = model.vector_ids(rows.texts)
    before = (predict(model, rows).argmax(1) == y).mean()
    init_prototypes(model, rows, recipe.train)
    p = predict(model, rows)
    after = (p.argmax(1) == y).mean()
    assert after >= 0.6 > before + 0.3, (before, after)
    # its temperature fitted leave-one-out: no overconfident start (uniform is log 20)
    assert -np.log(p[np.arange(len(y)), y]).mean() < np.log(20)
    auto = dataclasses.replace(recipe.train, prototypes="auto")
    assert wants_prototypes(auto, model, rows)  # 20 classes, 4 rows a class
    assert not wants_prototypes(auto, build_fusion(recipe, 2), rows)  # 2 classes
    assert not wants_prototypes(dataclasses.replace(auto, prototypes="off"), model, rows)


def test_a_second_call_for_more_folds_reuses_the_members_frozen_feature_cache(
        bert_dir, comp_dir, tmp_path, monkeypatch):
    """The leftover budget (or a Ray worker) trains a member's next fold in a second call of the
    same process: its frozen features and its rows (grid texts, vector ids) are the first
    call's (no text computed twice), while another model config starts its own."""
    import comp.nn.trainer as trainer

    computed: list[str] = []
    real = FeatureCache.ensure
    made: list[int] = []
    real_rows = trainer.make_rows

    def spy(self, model, texts, *a, **kw):
        computed.extend(t for t in texts if t not in self.row)
        return real(self, model, texts, *a, **kw)

    def spy_rows(texts, *a, **kw):
        made.append(len(texts))
        return real_rows(texts, *a, **kw)

    monkeypatch.setattr(FeatureCache, "ensure", spy)
    monkeypatch.setattr(trainer, "make_rows", spy_rows)
    recipe = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=1, epochs_unfrozen=0)
    # a model config no other test trains: the process's kept cache is not this one's
    recipe = replace(recipe, model=replace(recipe.model, hidden=10))
    train_fusion(replace(recipe, data=replace(recipe.data, use_folds=(0,))))
    first, rows_made = len(computed), len(made)
    assert first > 0 and rows_made > 0
    train_fusion(replace(recipe, data=replace(recipe.data, use_folds=(0, 1))))
    assert len(computed) == first  # fold 1 read the cache fold 0 filled
    assert len(made) == rows_made  # and the rows fold 0 made
    other = replace(recipe, name="toy_other", model=replace(recipe.model, hidden=12))
    train_fusion(replace(other, data=replace(other.data, use_folds=(0,))))
    assert len(computed) > first and len(made) > rows_made


def test_a_fold_trains_from_the_members_state_another_process_built(
        bert_dir, comp_dir, tmp_path, monkeypatch):
    """A Ray fold task adopts the rows and frozen-feature cache one task built for the member
    (pickled through the object store): its fold builds neither, and predicts what a fold that
    built its own predicts."""
    import pickle

    import comp.nn.trainer as trainer
    from comp.data.competition import load_competition

    recipe = recipe_for(bert_dir, comp_dir, tmp_path, epochs_frozen=1, epochs_unfrozen=0)
    recipe = replace(recipe, model=replace(recipe.model, hidden=11))  # no other test's memo
    state = trainer.member_state(recipe, load_competition(recipe.data))
    assert state is not None and len(state.rows) == 1 and len(state.caches) == 1

    def fold0(runs: Path) -> np.ndarray:
        r = replace(recipe, runs_dir=str(runs), data=replace(recipe.data, use_folds=(0,)))
        train_fusion(r)
        return np.load(runs / r.name / "fold0" / "val_proba.npy")

    trainer._LAST_ROWS.clear()  # a fresh worker process
    trainer._LAST_CACHES.clear()
    own = fold0(tmp_path / "own")
    trainer._LAST_ROWS.clear()
    trainer._LAST_CACHES.clear()
    trainer.adopt_state(pickle.loads(pickle.dumps(state)))
    computed: list[str] = []
    real = FeatureCache.ensure

    def spy(self, model, texts, *a, **kw):
        computed.extend(t for t in texts if t not in self.row)
        return real(self, model, texts, *a, **kw)

    def no_rows(*a, **kw):
        raise AssertionError("rows built again")

    monkeypatch.setattr(FeatureCache, "ensure", spy)
    monkeypatch.setattr(trainer, "make_rows", no_rows)
    adopted = fold0(tmp_path / "adopted")
    assert computed == []  # every text's frozen features came with the state
    np.testing.assert_allclose(adopted, own, atol=1e-6)
