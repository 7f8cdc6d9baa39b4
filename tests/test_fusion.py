"""FusionModel: every head x every backbone kind, vectors, CLS skip, freezing, feature cache."""

from __future__ import annotations

import pytest
import torch

from comp.config.schema import BackboneConfig, ModelConfig, PretrainConfig, Recipe
from comp.core.utils import CompError
from comp.nn.backbones import backbone_kinds, load_backbone
from comp.nn.fusion import FeatureCache, FusionModel, TokenMemo, build_fusion, describe, grid_texts
from comp.nn.heads import head_names

TEXTS = ["这个酒店很好，服务周到。", "房间太小了，不推荐", "价格便宜 but 质量差!", "总之，不错。",
         "很差劲的体验，再也不来了", "非常满意😀", "",
         "前台态度冷漠，早餐也很一般，下次不会再住。"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """One tiny pretrained dir per registered backbone kind (1 layer, hidden 32, one step)."""
    from comp.nn.pretrain import run_pretrain

    root = tmp_path_factory.mktemp("backbones")
    dirs = {}
    for kind in backbone_kinds():
        cfg = PretrainConfig(kind=kind, out=str(root / kind), hidden=32, layers=1, heads=2,
                             intermediate=64, vocab_size=200, steps=0, max_len=64, batch_size=4,
                             max_positions=64)
        dirs[kind] = str(run_pretrain(cfg, TEXTS * 8))
    return dirs


@pytest.fixture(scope="module")
def kv_path(tmp_path_factory):
    from comp.nn.vectors import train_vectors

    root = tmp_path_factory.mktemp("vectors")
    for kind in ("char", "word"):
        train_vectors(TEXTS * 8, kind, root / f"w2v-{kind}.kv", dim=8, epochs=1, min_count=1)
    return root


def make_model(tiny_dirs, kinds=("bert",), head="bilstm", cls_skip=True, max_chars=24,
               n_classes=3, seed=0) -> FusionModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(backbones=tuple(BackboneConfig(k, tiny_dirs[k], 64) for k in kinds),
                      head=head, hidden=8, channels=4, kernel_sizes=(2, 3), cls_skip=cls_skip,
                      max_chars=max_chars)
    return FusionModel(cfg, n_classes, [load_backbone(k, tiny_dirs[k]) for k in kinds])


def grid(texts, cfg):
    return [g for t in texts for g in grid_texts(t, cfg)]


@pytest.mark.parametrize("kind", backbone_kinds())
@pytest.mark.parametrize("head", head_names())
def test_every_head_and_backbone_gives_logits(tiny_dirs, kind, head):
    model = make_model(tiny_dirs, (kind,), head)
    model.eval()
    texts = grid(TEXTS, model.cfg)
    logits = model(model.prepare(texts))
    assert logits.shape == (len(TEXTS), 3)
    assert torch.isfinite(logits).all()


def test_all_backbones_and_vectors_share_one_grid(tiny_dirs, kv_path):
    kinds = backbone_kinds()
    cfg = ModelConfig(backbones=tuple(BackboneConfig(k, tiny_dirs[k], 64) for k in kinds),
                      vectors=("char", "word"), vectors_dir=str(kv_path), head="bilstm_cnn",
                      hidden=8, channels=4, max_chars=24)
    model = build_fusion(Recipe(kind="fusion", model=cfg), 2)
    batch = model.prepare(grid(TEXTS, cfg))
    g, cls = model.features(batch)
    n = max(len(t) for t in grid(TEXTS, cfg))
    assert g.shape == (len(TEXTS), n, 32 * len(kinds) + 16)
    assert [c.shape for c in cls] == [(len(TEXTS), 32)] * len(kinds)
    assert model.classifier.in_dim == model.head.out_dim + 32 * len(kinds)
    # grid cells past a text's end carry nothing from any backbone
    empty = TEXTS.index("")
    assert torch.all(g[empty] == 0)
    assert model(batch).shape == (len(TEXTS), 2)


def test_vectors_only_model(kv_path):
    cfg = ModelConfig(vectors=("char",), vectors_dir=str(kv_path), head="cnn", channels=4,
                      max_chars=16)
    model = build_fusion(Recipe(kind="fusion", model=cfg), 2)
    assert not len(model.backbones)
    assert model.classifier.in_dim == model.head.out_dim  # nothing to skip
    out = model(model.prepare(grid(TEXTS, cfg)))
    assert out.shape == (len(TEXTS), 2)


def test_missing_vectors_file_names_it(tmp_path):
    cfg = ModelConfig(vectors=("bigram",), vectors_dir=str(tmp_path))
    with pytest.raises(CompError, match="w2v-bigram.kv"):
        build_fusion(Recipe(kind="fusion", model=cfg), 2)


def test_no_feature_source_is_an_error():
    with pytest.raises(CompError, match="model"):
        FusionModel(ModelConfig(), 2)


def test_cls_skip_changes_classifier_width(tiny_dirs):
    on = make_model(tiny_dirs, ("bert", "xlnet"), cls_skip=True)
    off = make_model(tiny_dirs, ("bert", "xlnet"), cls_skip=False)
    assert on.classifier.in_dim == off.classifier.in_dim + 64
    assert on.classifier.fc.in_features == on.classifier.in_dim
    off.eval()
    assert off(off.prepare(TEXTS[:3])).shape == (3, 3)


@pytest.mark.parametrize("head", head_names())
def test_projection_narrows_the_head_input_and_keeps_padding_inert(tiny_dirs, head):
    """model.proj_dim maps the (B, N, 64) two-backbone grid to (B, N, 16) before the head; a
    text's logits do not depend on the longer texts it is padded with."""
    torch.manual_seed(0)
    kinds = ("bert", "xlnet")
    cfg = ModelConfig(backbones=tuple(BackboneConfig(k, tiny_dirs[k], 64) for k in kinds),
                      head=head, hidden=8, channels=4, kernel_sizes=(2, 3), max_chars=24,
                      proj_dim=16)
    model = FusionModel(cfg, 3, [load_backbone(k, tiny_dirs[k]) for k in kinds]).eval()
    assert model.proj.in_features == 64 and model.proj.out_features == 16
    assert "proj 16" in describe(model)
    texts = grid(TEXTS, cfg)
    batched = model(model.prepare(texts))
    alone = torch.cat([model(model.prepare([t])) for t in texts])
    assert batched.shape == (len(texts), 3)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    with pytest.raises(CompError, match="model.proj_dim"):
        ModelConfig(proj_dim=-1)


def _grads(model, texts):
    model.zero_grad(set_to_none=True)
    model(model.prepare(texts)).sum().backward()
    bb = [p.grad for p in model.backbones.parameters()]
    head = [p.grad for p in model.head_parameters()]
    return bb, head


def test_gradients_reach_only_head_when_frozen(tiny_dirs):
    model = make_model(tiny_dirs, ("bert",))
    model.freeze_backbones(True)
    model.train()
    assert not model.backbones[0].training  # frozen backbones stay in eval mode
    bb, head = _grads(model, TEXTS[:4])
    assert all(g is None for g in bb)
    assert head and all(g is not None for g in head)
    model.freeze_backbones(False)
    assert model.backbones[0].training
    bb, head = _grads(model, TEXTS[:4])
    emb = model.backbones[0].input_embeddings().weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert sum(g is not None and g.abs().sum() > 0 for g in bb) > len(bb) // 2


def test_cache_lookup_matches_live_features(tiny_dirs):
    model = make_model(tiny_dirs, ("bert", "wobert", "xlnet"), max_chars=12)
    model.freeze_backbones(True)
    texts = grid(TEXTS, model.cfg)
    cache = FeatureCache(model.cls_dims)
    cache.ensure(model, texts[:5], batch_size=2)
    cache.ensure(model, texts, batch_size=3)  # extends with the missing ones only
    assert len(cache) == len(set(texts))
    with torch.no_grad():
        live, live_cls = model.backbone_features(model.prepare(texts))
    cached, cached_cls = cache.lookup(texts)
    assert cached.shape == live.shape
    torch.testing.assert_close(cached, live, atol=1e-5, rtol=1e-4)
    for a, b in zip(cached_cls, live_cls):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # a cached batch gives the model the same logits as a live one
    model.eval()
    batch = model.prepare(texts, backbones=False)
    batch["cached"] = cache.lookup(texts, batch["mask"].shape[1])
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(model.prepare(texts)), atol=1e-5,
                                   rtol=1e-4)


def test_half_precision_cache_is_close(tiny_dirs):
    model = make_model(tiny_dirs, ("bert",), max_chars=12)
    model.freeze_backbones(True)
    full, half = FeatureCache(model.cls_dims), FeatureCache(model.cls_dims, torch.float16)
    full.ensure(model, TEXTS)
    half.ensure(model, TEXTS)
    assert half.nbytes * 2 == full.nbytes
    torch.testing.assert_close(half.lookup(TEXTS)[0], full.lookup(TEXTS)[0], atol=2e-2,
                               rtol=1e-2)


def test_grid_texts_truncates_or_windows():
    long = "".join(chr(0x4E00 + i) for i in range(50))
    head_tail = ModelConfig(max_chars=10)
    assert grid_texts(long, head_tail) == [long[:5] + long[-5:]]
    win = ModelConfig(max_chars=20, truncation="window", window_stride=10)
    parts = grid_texts(long, win)
    assert len(parts) == 4 and all(len(p) == 20 for p in parts)
    assert parts[0] == long[:20] and parts[-1] == long[-20:]
    assert grid_texts("短", win) == ["短"]


def test_prepare_pads_to_fixed_width(tiny_dirs):
    model = make_model(tiny_dirs, ("bert",), max_chars=24)
    b = model.prepare(TEXTS[:3], pad_to=24)
    assert b["mask"].shape == (3, 24)
    assert b["mask"].sum(1).tolist() == [len(t) for t in TEXTS[:3]]
    assert b["bb"][0]["index"].shape == (3, 24)


def test_seeded_heads_are_identical(tiny_dirs):
    a = make_model(tiny_dirs, ("albert",), seed=3)
    b = make_model(tiny_dirs, ("albert",), seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    c = make_model(tiny_dirs, ("albert",), seed=4)
    assert not torch.equal(a.classifier.fc.weight, c.classifier.fc.weight)


@pytest.mark.parametrize("kind", backbone_kinds())
def test_token_memo_repads_like_the_tokenizer(tiny_dirs, kind):
    b = load_backbone(kind, tiny_dirs[kind])
    memo = TokenMemo(chunk=3)
    memo.encode(0, b, TEXTS[2:], 64)  # other batch shapes first
    for texts in (TEXTS, TEXTS[:2], [TEXTS[-1], TEXTS[0]]):
        want = b.encode(texts, 64)
        got = memo.encode(0, b, texts, 64)
        assert set(got["inputs"]) == set(want["inputs"])
        for k, v in want["inputs"].items():
            assert torch.equal(got["inputs"][k], v), k
        assert torch.equal(got["offsets"], want["offsets"])
    assert len(memo) == len(set(TEXTS))


def test_backbone_dropout_and_attention_knobs(tiny_dirs):
    """model.backbone_dropout reaches every dropout inside the backbone (train mode turns
    deterministic at 0); model.backbone_attention swaps the kernel without changing outputs."""
    import dataclasses

    base = make_model(tiny_dirs, ("bert",))
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in base.backbones.modules())
    cfg = dataclasses.replace(base.cfg, backbone_dropout=0.0, backbone_attention="eager")
    torch.manual_seed(0)
    model = FusionModel(cfg, 3, [load_backbone("bert", tiny_dirs["bert"])])
    assert all(m.p == 0.0 for m in model.backbones.modules() if isinstance(m, torch.nn.Dropout))
    assert model.backbones[0].model.config._attn_implementation == "eager"
    model.train()
    model.head.eval()  # the head keeps its own dropout: compare backbone features only
    batch = model.prepare(TEXTS[:4])
    with torch.no_grad():
        a, _ = model.backbone_features(batch)
        b, _ = model.backbone_features(batch)
    torch.testing.assert_close(a, b)  # no dropout noise left in training mode
    model.eval()
    with torch.no_grad():
        sdpa_model = FusionModel(base.cfg, 3, [load_backbone("bert", tiny_dirs["bert"])])
        sdpa_model.load_state_dict(model.state_dict())
        sdpa_model.eval()
        torch.testing.assert_close(model(batch), sdpa_model(batch), atol=1e-5, rtol=1e-4)
    with pytest.raises(CompError, match="model.backbone_dropout"):
        dataclasses.replace(base.cfg, backbone_dropout=1.5)
    with pytest.raises(CompError, match="model.backbone_attention"):
        dataclasses.replace(base.cfg, backbone_attention="flash")


def test_cpu_bf16_autocast_only_when_asked_and_supported(tiny_dirs):
    """train.amp = bf16 on a CPU runs the backbone in bf16 where oneDNN has bf16 kernels (the
    cached features stay close to full precision); auto and off stay in full precision."""
    from comp.nn.distributed import amp_setup

    cpu = torch.device("cpu")
    for amp in ("auto", "off", "fp16"):
        ctx, scaler = amp_setup(amp, cpu)
        with ctx():
            assert not torch.is_autocast_enabled("cpu")
        assert scaler is None
    ctx, scaler = amp_setup("bf16", cpu)
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    with ctx():
        assert torch.is_autocast_enabled("cpu") == native
    if not native:
        pytest.skip("this CPU has no native bf16: train.amp=bf16 stays in full precision")
    model = make_model(tiny_dirs, ("bert",), max_chars=12)
    model.freeze_backbones(True)
    full, half = FeatureCache(model.cls_dims), FeatureCache(model.cls_dims)
    full.ensure(model, TEXTS)
    half.ensure(model, TEXTS, autocast=ctx)
    a, b = full.lookup(TEXTS)[0], half.lookup(TEXTS)[0]
    assert not torch.equal(a, b)  # bf16 really ran
    torch.testing.assert_close(b, a, atol=0.1, rtol=0.05)
