"""Heads, pooling and the classifier: shapes, masking, empty rows, gradients, CLS skip, MSD."""

from __future__ import annotations

import pytest
import torch

from comp.config.schema import ModelConfig
from comp.core.utils import CompError
from comp.nn.heads import (
    Classifier,
    HeadConfig,
    create_head,
    create_pool,
    head_names,
    masked_max,
    masked_mean,
    pool_names,
)

B, N, D = 4, 9, 6
LENS = [9, 5, 1, 0]  # full, partial, a single char (shorter than every kernel), empty


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g)
    mask = torch.arange(N)[None, :] < torch.tensor(LENS)[:, None]
    return x, mask


def _head(name: str, pooling: str):
    torch.manual_seed(0)
    return create_head(name, D, hidden=5, channels=4, kernel_sizes=(2, 3), pooling=pooling,
                       dropout=0.3)


def test_registry_lists_the_three_heads():
    assert head_names() == ["bilstm", "bilstm_cnn", "cnn"]
    assert pool_names() == ["maxmean", "attention"]


@pytest.mark.parametrize("pooling", ["maxmean", "attention"])
@pytest.mark.parametrize("name", head_names())
def test_shape_and_out_dim(name, pooling):
    head = _head(name, pooling).eval()
    x, mask = _batch()
    out = head(x, mask)
    assert out.shape == (B, head.out_dim)
    lstm = {"maxmean": 4 * 5, "attention": 2 * 5}[pooling]
    conv = {"maxmean": 2 * 4 * 2, "attention": 4 * 2}[pooling]
    assert head.out_dim == {"bilstm": lstm, "cnn": conv, "bilstm_cnn": lstm + conv}[name]


@pytest.mark.parametrize("pooling", ["maxmean", "attention"])
@pytest.mark.parametrize("name", head_names())
def test_padding_values_do_not_change_output(name, pooling):
    head = _head(name, pooling).eval()
    x, mask = _batch()
    noisy = torch.where(mask.unsqueeze(-1), x, 100.0 * torch.randn_like(x))
    assert not torch.equal(noisy, x)
    with torch.no_grad():
        torch.testing.assert_close(head(x, mask), head(noisy, mask))


@pytest.mark.parametrize("pooling", ["maxmean", "attention"])
@pytest.mark.parametrize("name", head_names())
def test_rows_depend_on_their_own_text(name, pooling):
    head = _head(name, pooling).eval()
    x, mask = _batch()
    changed = x.clone()
    changed[1, 2] += 5.0  # inside row 1's text
    with torch.no_grad():
        a, b = head(x, mask), head(changed, mask)
    assert not torch.allclose(a[1], b[1])
    torch.testing.assert_close(a[[0, 2, 3]], b[[0, 2, 3]])


@pytest.mark.parametrize("pooling", ["maxmean", "attention"])
@pytest.mark.parametrize("name", head_names())
def test_empty_rows_and_gradients_are_finite(name, pooling):
    head = _head(name, pooling).train()
    x, mask = _batch()
    x.requires_grad_()
    out = head(x, mask)
    assert torch.isfinite(out).all()
    assert (out[3] == 0).all()  # the empty row pools to zeros
    out.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0].abs().sum() > 0
    assert (x.grad[1, 5:] == 0).all()  # padding gets no gradient
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", head_names())
def test_all_rows_empty(name):
    head = _head(name, "attention").eval()
    x, _ = _batch()
    out = head(x, torch.zeros(B, N, dtype=torch.bool))
    assert torch.isfinite(out).all() and (out == 0).all()


@pytest.mark.parametrize("name", head_names())
def test_model_config_works_as_head_config(name):
    from comp.nn import heads

    cfg = ModelConfig(hidden=3, channels=2, kernel_sizes=(2,), pooling="maxmean")
    head = heads._HEADS[name](D, cfg)
    ref = create_head(name, D, hidden=3, channels=2, kernel_sizes=(2,))
    assert head.out_dim == ref.out_dim
    assert HeadConfig().pooling == ModelConfig().pooling


def test_unknown_names_are_recipe_errors():
    with pytest.raises(CompError, match="model.head"):
        create_head("transformer", D)
    with pytest.raises(CompError, match="model.pooling"):
        create_head("bilstm", D, pooling="sum")
    with pytest.raises(CompError, match="model.kernel_sizes"):
        create_head("cnn", D, kernel_sizes=())


def test_masked_max_and_mean_values():
    x = torch.tensor([[[1.0], [3.0], [-7.0]], [[-2.0], [-4.0], [9.0]]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    assert masked_max(x, mask).flatten().tolist() == [3.0, -2.0]
    assert masked_mean(x, mask).flatten().tolist() == [2.0, -3.0]
    pool = create_pool("maxmean", 1)
    assert pool.out_dim == 2 and pool(x, mask).tolist() == [[3.0, 2.0], [-2.0, -3.0]]


def test_attention_pool_is_a_convex_combination():
    pool = create_pool("attention", 2)
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [50.0, 50.0]]])
    out = pool(x, torch.tensor([[True, True, False]]))[0]
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert (out >= 0).all() and (out <= 1).all()


# ---------------------------------------------------------------------------------------------
# classifier


@pytest.mark.parametrize("cls_skip", [True, False])
def test_classifier_cls_skip(cls_skip):
    clf = Classifier(8, [5, 3], n_classes=3, cls_skip=cls_skip)
    assert clf.in_dim == (8 + 5 + 3 if cls_skip else 8)
    pooled, cls = torch.randn(2, 8), [torch.randn(2, 5), torch.randn(2, 3)]
    logits = clf.eval()(pooled, cls)
    assert logits.shape == (2, 3)
    other = clf(pooled, [torch.randn(2, 5), torch.randn(2, 3)])
    # with the skip the CLS vectors reach the logits; without it they are ignored
    assert torch.allclose(logits, other) is (not cls_skip)


def test_classifier_without_backbones_and_arity_check():
    clf = Classifier(4, [], n_classes=2)
    assert clf.in_dim == 4 and clf(torch.randn(3, 4), []).shape == (3, 2)
    with pytest.raises(ValueError, match="CLS"):
        Classifier(4, [2], n_classes=2)(torch.randn(3, 4), [])


@pytest.mark.parametrize("msd", [0, 1, 4])
def test_classifier_multi_sample_dropout(msd):
    torch.manual_seed(0)
    clf = Classifier(16, [8], n_classes=5, dropout=0.5, msd=msd)
    pooled, cls = torch.randn(3, 16), [torch.randn(3, 8)]
    train_out = clf.train()(pooled, cls)
    assert train_out.shape == (3, 5)
    train_out.sum().backward()
    assert clf.fc.weight.grad is not None
    clf.eval()
    a, b = clf(pooled, cls), clf(pooled, cls)
    assert a.shape == (3, 5) and torch.equal(a, b)
    expected = clf.fc(torch.cat([pooled, cls[0]], dim=-1))
    torch.testing.assert_close(a, expected)


def test_msd_averages_several_masks():
    torch.manual_seed(0)
    clf = Classifier(64, [], n_classes=2, dropout=0.5, msd=8).train()
    pooled = torch.randn(256, 64)
    eval_logits = clf.fc(pooled)
    single = Classifier(64, [], n_classes=2, dropout=0.5, msd=0).train()
    single.fc.load_state_dict(clf.fc.state_dict())
    # averaging 8 masks stays closer to the dropout-free logits than one mask does
    err_msd = (clf(pooled, []) - eval_logits).pow(2).mean()
    err_one = (single(pooled, []) - eval_logits).pow(2).mean()
    assert err_msd < err_one


def test_reverse_index_reverses_each_text_and_is_an_involution():
    from comp.nn.heads import reverse_index

    _, mask = _batch()
    idx = reverse_index(mask)
    assert idx[0].tolist() == list(range(8, -1, -1))
    assert idx[1].tolist() == [4, 3, 2, 1, 0, 5, 6, 7, 8]
    assert idx[2].tolist() == list(range(N)) and idx[3].tolist() == list(range(N))
    assert torch.equal(idx.gather(1, idx), torch.arange(N).expand(B, N))


def test_bilstm_equals_a_packed_bidirectional_lstm_on_text_positions():
    """Reversing rows in place gives the packed biLSTM's outputs, values and gradients."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    head = _head("bilstm", "maxmean").eval()
    ref = torch.nn.LSTM(D, 5, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l0").copy_(getattr(head.fwd, f"{name}_l0"))
            getattr(ref, f"{name}_l0_reverse").copy_(getattr(head.bwd, f"{name}_l0"))
    x, mask = _batch(3)
    x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # the head zeroes padding too
    lens = torch.tensor(LENS).clamp(min=1)
    out, _ = ref(pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False))
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=N)
    want = head.pool(out, mask)
    got = head(x, mask)
    assert torch.allclose(got, want, atol=1e-6)
    want.sum().backward()
    got.sum().backward()
    assert torch.allclose(head.bwd.weight_hh_l0.grad, ref.weight_hh_l0_reverse.grad, atol=1e-5)
    assert torch.allclose(head.fwd.weight_ih_l0.grad, ref.weight_ih_l0.grad, atol=1e-5)


def test_spatial_input_dropout_drops_whole_channels_per_text():
    from comp.nn.heads import InputDropout

    torch.manual_seed(0)
    drop = InputDropout(0.5, "spatial").train()
    x = torch.ones(8, 7, 16)
    out = drop(x)
    # every channel of a text is either all zero or all scaled by 1 / (1 - p)
    col = out[:, 0:1, :]
    assert torch.equal(out, col.expand_as(out))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    elem = InputDropout(0.5, "element").train()(x)
    assert not torch.equal(elem, elem[:, 0:1, :].expand_as(elem))  # elements drop one by one
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(CompError, match="model.input_dropout"):
        InputDropout(0.1, "gaussian")


def test_bilstm_cnn_applies_one_input_dropout_for_both_parts():
    head = create_head("bilstm_cnn", D, hidden=5, channels=4, kernel_sizes=(2, 3), dropout=0.3)
    assert head.drop.p == 0.3 and head.lstm.drop.p == 0.0 and head.cnn.drop.p == 0.0
    x, mask = _batch()
    head.eval()
    want = torch.cat([head.lstm(x, mask), head.cnn(x, mask)], dim=-1)
    assert torch.allclose(head(x, mask), want)


# ---------------------------------------------------------------------------------------------
# the TextCNN's pooling in the conv layout


def _reference_cnn_encode(head, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The CNN head as it was before pooling moved into the conv layout: transpose the
    concatenated maps to (B, N, C), copy, then masked_fill pooling."""
    import torch.nn.functional as F

    n = x.shape[1]
    x = F.pad(x.transpose(1, 2), (0, max(head.kernel_sizes) - 1))
    maps = [F.relu(conv(x[:, :, :n + k - 1])) for conv, k in zip(head.convs, head.kernel_sizes)]
    feats = torch.cat(maps, dim=1).transpose(1, 2).contiguous()  # (B, N, C)
    if not isinstance(head.pool, type(create_pool("maxmean", 1))):
        return head.pool(feats, mask)
    m = mask.unsqueeze(-1)
    mx = feats.masked_fill(~m, torch.finfo(feats.dtype).min).max(dim=1).values
    mx = torch.where(mask.any(dim=1, keepdim=True), mx, torch.zeros_like(mx))
    mean = feats.masked_fill(~m, 0.0).sum(dim=1) / m.sum(dim=1).clamp(min=1).to(feats.dtype)
    return torch.cat([mx, mean], dim=-1)


@pytest.mark.parametrize("pooling", pool_names())
def test_cnn_pooling_in_conv_layout_equals_the_transposed_reference(pooling):
    torch.manual_seed(1)
    head = create_head("cnn", D, channels=7, kernel_sizes=(1, 2, 3), pooling=pooling,
                       dropout=0.0).eval()
    x, mask = _batch(5)
    x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # what Head.forward hands to encode
    # repeated characters give tied maxima at positive values, as real texts do
    x[0, 4:8] = x[0, 3]
    got_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = head.encode(got_x, mask)
    want = _reference_cnn_encode(head, ref_x, mask)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert (got[3] == 0).all()  # the empty row still pools to zeros
    # gradients reach the same parameters with the same values
    weights = torch.randn_like(got)
    g_new = torch.autograd.grad((got * weights).sum(), [got_x, *head.parameters()])
    g_ref = torch.autograd.grad((want * weights).sum(), [ref_x, *head.parameters()])
    for a, b in zip(g_new, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_masked_pooling_layouts_and_nonnegative_shortcut_agree():
    x, mask = _batch(2)
    relu = x.relu()
    cf = relu.transpose(1, 2)  # (B, D, N) view
    ref_max, ref_mean = masked_max(relu, mask), masked_mean(relu, mask)
    assert torch.equal(masked_max(cf, mask, channels_first=True), ref_max)
    assert torch.equal(masked_max(cf, mask, channels_first=True, nonnegative=True), ref_max)
    assert torch.equal(masked_max(relu, mask, nonnegative=True), ref_max)
    torch.testing.assert_close(masked_mean(cf, mask, channels_first=True), ref_mean)
    assert (ref_max[3] == 0).all() and (ref_mean[3] == 0).all()
    pool = create_pool("maxmean", D)
    torch.testing.assert_close(pool(cf, mask, channels_first=True, nonnegative=True),
                               pool(relu, mask))
    # the shortcut is only valid for x >= 0: a padded row of negatives pools to its padding's 0
    neg = -relu - 1.0
    assert (masked_max(neg, mask)[:3] < 0).all()
    assert (masked_max(neg, mask, nonnegative=True)[1] == 0).all()
