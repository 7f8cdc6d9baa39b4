"""Loss registry: finiteness, direction, hard vs soft targets, weights, special cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comp.core.utils import CompError
from comp.nn.losses import create_loss, inverse_frequency_weights, loss_names

C = 3
COUNTS = np.array([60, 30, 10])


def _data(seed: int = 0, b: int = 8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, C, generator=g) * 2
    target = torch.randint(0, C, (b,), generator=g)
    return logits, target


def _variants():
    return [dict(), dict(label_smoothing=0.1), dict(class_weights=True),
            dict(label_smoothing=0.2, class_weights=True)]


def test_registry_names():
    assert loss_names() == ["ce", "dice", "focal", "ghm", "logit_adjusted"]
    with pytest.raises(CompError, match="train.loss"):
        create_loss("hinge", C)


@pytest.mark.parametrize("kw", _variants())
@pytest.mark.parametrize("name", loss_names())
def test_finite_non_negative_with_finite_gradients(name, kw):
    loss_fn = create_loss(name, C, class_counts=COUNTS, **kw)
    logits, target = _data()
    soft = torch.softmax(torch.randn(8, C), dim=-1)
    for tgt in (target, soft):
        x = logits.clone().requires_grad_()
        loss = loss_fn(x, tgt)
        assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() >= 0
        loss.backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    extreme = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], requires_grad=True)
    loss = loss_fn(extreme, torch.tensor([1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(extreme.grad).all()


@pytest.mark.parametrize("name", loss_names())
def test_decreases_as_logits_move_toward_the_target(name):
    loss_fn = create_loss(name, C, class_counts=COUNTS, class_weights=True)
    _, target = _data(b=12)
    direction = 2 * F.one_hot(target, C).float() - 1  # (B, C): up on the target, down elsewhere
    base = 0.3 * torch.randn(12, C, generator=torch.Generator().manual_seed(1))
    losses = [loss_fn(base + t * direction, target).item() for t in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    wrong = loss_fn(base - 4.0 * direction, target).item()
    assert wrong > losses[0]


@pytest.mark.parametrize("kw", _variants())
@pytest.mark.parametrize("name", loss_names())
def test_hard_target_equals_one_hot_soft_target(name, kw):
    loss_fn = create_loss(name, C, class_counts=COUNTS, **kw)
    logits, target = _data()
    weight = torch.rand(8, generator=torch.Generator().manual_seed(2))
    one_hot = F.one_hot(target, C).float()
    torch.testing.assert_close(loss_fn(logits, target), loss_fn(logits, one_hot))
    torch.testing.assert_close(loss_fn(logits, target, weight), loss_fn(logits, one_hot, weight))


@pytest.mark.parametrize("kw", _variants())
@pytest.mark.parametrize("name", loss_names())
def test_zero_weight_removes_a_row(name, kw):
    loss_fn = create_loss(name, C, class_counts=COUNTS, **kw)
    logits, target = _data(b=10)
    weight = torch.rand(10, generator=torch.Generator().manual_seed(3)) + 0.5
    weight[[2, 7]] = 0.0
    keep = weight > 0
    full = loss_fn(logits, target, weight)
    torch.testing.assert_close(full, loss_fn(logits[keep], target[keep], weight[keep]))
    # and the dropped rows' logits get no gradient
    x = logits.clone().requires_grad_()
    loss_fn(x, target, weight).backward()
    assert (x.grad[~keep] == 0).all() and x.grad[keep].abs().sum() > 0


@pytest.mark.parametrize("name", loss_names())
def test_all_zero_weights_give_zero(name):
    loss_fn = create_loss(name, C)
    logits, target = _data()
    loss = loss_fn(logits, target, torch.zeros(8))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", loss_names())
def test_input_validation(name):
    loss_fn = create_loss(name, C)
    logits, target = _data()
    with pytest.raises(ValueError, match="labels"):
        loss_fn(logits, torch.full((8,), C))
    with pytest.raises(ValueError, match="soft targets"):
        loss_fn(logits, torch.rand(8, C + 1))
    with pytest.raises(ValueError, match="logits"):
        loss_fn(torch.randn(8, C + 1), target)
    with pytest.raises(ValueError, match="weight"):
        loss_fn(logits, target, torch.ones(3))


def test_ce_matches_torch():
    logits, target = _data()
    torch.testing.assert_close(create_loss("ce", C)(logits, target),
                               F.cross_entropy(logits, target))
    torch.testing.assert_close(create_loss("ce", C, label_smoothing=0.1)(logits, target),
                               F.cross_entropy(logits, target, label_smoothing=0.1))
    weighted = create_loss("ce", C, class_counts=COUNTS, class_weights=True)
    w = torch.tensor(inverse_frequency_weights(COUNTS), dtype=torch.float32)
    torch.testing.assert_close(weighted(logits, target),
                               F.cross_entropy(logits, target, weight=w))


def test_soft_ce_is_cross_entropy_of_distributions():
    logits, _ = _data()
    q = torch.softmax(torch.randn(8, C), dim=-1)
    expected = -(q * torch.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(create_loss("ce", C)(logits, q), expected)


def _hand_written(name: str, loss_fn, logits, q, q_raw, w):
    """The losses as they were before torch's F.cross_entropy: -sum q log softmax."""
    r = w * (q_raw @ loss_fn.class_weight)
    logp = torch.log_softmax(logits + (loss_fn.log_prior if name == "logit_adjusted" else 0), -1)
    ce = -(q * logp).sum(-1)
    if name != "ghm":
        return (r * ce).sum() / r.sum()
    g = 0.5 * (logp.exp() - q).abs().sum(-1).detach()
    which = (g * 10).long().clamp(0, 9)
    density = torch.zeros(10).index_add_(0, which, r)
    beta = r.sum() / density[which] / (density > 0).sum()
    return (r * beta * ce).sum() / r.sum()


@pytest.mark.parametrize("kw", _variants())
@pytest.mark.parametrize("name", ["ce", "focal", "logit_adjusted", "ghm"])
def test_torch_cross_entropy_equals_the_hand_written_sum(name, kw):
    """Swapping -sum q log p for F.cross_entropy(probability targets) moves nothing: values
    and gradients agree to 1e-6, hard and soft targets, smoothing and class/sample weights."""
    loss_fn = create_loss(name, C, class_counts=COUNTS, focal_gamma=0.0, **kw)
    eps = kw.get("label_smoothing", 0.0)
    logits, target = _data(b=16)
    soft = torch.softmax(torch.randn(16, C, generator=torch.Generator().manual_seed(3)), -1)
    w = torch.rand(16, generator=torch.Generator().manual_seed(4))
    for q_raw in (F.one_hot(target, C).float(), soft):
        q = q_raw * (1 - eps) + eps / C
        x, y = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        got = loss_fn(x, q_raw if q_raw is soft else target, w)
        want = _hand_written(name, loss_fn, y, q, q_raw, w)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        got.backward()
        want.backward()
        torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=1e-6)


def test_focal_gamma_zero_is_ce_and_gamma_two_is_smaller():
    logits, target = _data()
    for kw in _variants():
        ce = create_loss("ce", C, class_counts=COUNTS, **kw)(logits, target)
        f0 = create_loss("focal", C, class_counts=COUNTS, focal_gamma=0.0, **kw)(logits, target)
        f2 = create_loss("focal", C, class_counts=COUNTS, focal_gamma=2.0, **kw)(logits, target)
        torch.testing.assert_close(f0, ce)
        assert f2 < ce
    soft = torch.softmax(torch.randn(8, C), dim=-1)
    torch.testing.assert_close(create_loss("focal", C, focal_gamma=0.0)(logits, soft),
                               create_loss("ce", C)(logits, soft))


def test_logit_adjusted_shifts_by_log_priors():
    logits, target = _data()
    la = create_loss("logit_adjusted", C, class_counts=COUNTS)
    log_prior = torch.log(torch.tensor(COUNTS / COUNTS.sum(), dtype=torch.float32))
    ce = create_loss("ce", C)
    torch.testing.assert_close(la(logits, target), ce(logits + log_prior, target))
    # uniform priors: a constant shift, so plain CE
    torch.testing.assert_close(create_loss("logit_adjusted", C)(logits, target),
                               ce(logits, target))
    # a rare-class row costs more than under CE, a frequent-class row less
    zero = torch.zeros(1, C)
    assert la(zero, torch.tensor([2])) > ce(zero, torch.tensor([2]))
    assert la(zero, torch.tensor([0])) < ce(zero, torch.tensor([0]))


def test_class_weights_inverse_frequency_mean_one():
    w = inverse_frequency_weights(COUNTS)
    assert w.mean() == pytest.approx(1.0)
    assert w[2] > w[1] > w[0]
    assert w[2] / w[0] == pytest.approx(6.0)
    assert np.isfinite(inverse_frequency_weights(np.array([5, 0]))).all()
    with pytest.raises(ValueError, match="class_counts"):
        create_loss("ce", C, class_weights=True)
    with pytest.raises(ValueError, match="class_counts"):
        create_loss("ce", C, class_counts=np.array([1, 2]))
    with pytest.raises(CompError, match="label_smoothing"):
        create_loss("ce", C, label_smoothing=1.0)


def test_class_weights_raise_the_rare_class_share():
    logits = torch.zeros(2, C)
    target = torch.tensor([0, 2])
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    # make the rare-class row worse so weighting is visible
    logits[1, 2] = -2.0
    plain = create_loss("ce", C)(logits, target)
    weighted = create_loss("ce", C, class_counts=COUNTS, class_weights=True)(logits, q)
    assert weighted > plain


def test_ghm_equals_ce_when_all_rows_share_a_bin_and_reweights_otherwise():
    ghm, ce = create_loss("ghm", C), create_loss("ce", C)
    target = torch.tensor([0, 1, 2, 0])
    same = 3.0 * F.one_hot(target, C).float()  # every row equally confident
    torch.testing.assert_close(ghm(same, target), ce(same, target))
    # nine easy rows and one hard row: bins hold 9 and 1, so beta = 10/9/2 and 10/1/2
    logits = torch.cat([8.0 * F.one_hot(torch.zeros(9, dtype=torch.long), C).float(),
                        torch.tensor([[4.0, -4.0, 0.0]])])
    target = torch.tensor([0] * 9 + [1])
    row_ce = F.cross_entropy(logits, target, reduction="none")
    expected = (9 * (10 / 9 / 2) * row_ce[0] + (10 / 1 / 2) * row_ce[9]) / 10
    torch.testing.assert_close(ghm(logits, target), expected)


def test_dice_bounds_and_perfect_prediction():
    dice = create_loss("dice", C)
    logits, target = _data(b=30)
    loss = dice(logits, target)
    assert 0.0 <= loss.item() <= 1.0
    perfect = 50.0 * F.one_hot(target, C).float()
    assert dice(perfect, target).item() < 0.05
