"""The from-scratch layers against torch.nn as the oracle, and the contract every configured
norm and dropout meets (parametrized over conf/model/norm and conf/model/dropout)."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import config_options
from torch import nn

from normlab.nn import GroupNorm, ScratchBatchNorm2d, ScratchDropout, SeedCNN, batchnorm
from normlab.runner.build import build_network

BN_SETTINGS = [
    {},
    {"momentum": None},
    {"momentum": 0.3, "eps": 1e-3},
    {"affine": False},
    {"track_running_stats": False},
    {"affine": False, "track_running_stats": False, "momentum": None},
]
if "bias" in inspect.signature(nn.BatchNorm2d).parameters:  # torch >= 2.14
    BN_SETTINGS.append({"bias": False})


def twin_batchnorms(channels: int, dtype=torch.float32, **kwargs) -> tuple[nn.Module, nn.Module]:
    """nn.BatchNorm2d and ScratchBatchNorm2d with identical (non-trivial) parameters."""
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(channels, dtype=dtype, **kwargs)
    scratch = ScratchBatchNorm2d(channels, dtype=dtype, **kwargs)
    if reference.affine:
        with torch.no_grad():
            reference.weight.uniform_(0.5, 1.5)
            if reference.bias is not None:
                reference.bias.uniform_(-0.5, 0.5)
    scratch.load_state_dict(reference.state_dict())
    return reference, scratch


@pytest.mark.parametrize("settings", BN_SETTINGS, ids=str)
@pytest.mark.parametrize("shape", [(8, 3, 5, 5), (2, 7, 3, 11), (1, 4, 2, 1), (5, 1, 1, 2)])
def test_scratch_batchnorm_matches_torch_over_training_then_eval(settings, shape):
    reference, scratch = twin_batchnorms(shape[1], **settings)
    # Several training steps with shifted, scaled inputs: running statistics must track.
    for step in range(4):
        x = torch.randn(shape) * (step + 1) + step
        x_ref, x_scr = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ref, y_scr = reference(x_ref), scratch(x_scr)
        torch.testing.assert_close(y_scr, y_ref, atol=1e-5, rtol=1e-5)
        grad = torch.randn_like(y_ref)
        y_ref.backward(grad)
        y_scr.backward(grad)
        torch.testing.assert_close(x_scr.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
        if reference.affine:
            torch.testing.assert_close(
                scratch.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-4
            )
            if reference.bias is not None:
                torch.testing.assert_close(
                    scratch.bias.grad, reference.bias.grad, atol=1e-4, rtol=1e-4
                )
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(
            dict(scratch.named_buffers())[name], buffer, atol=1e-5, rtol=1e-5
        )
    reference.eval()
    scratch.eval()
    x = torch.randn(shape) * 2 + 1
    torch.testing.assert_close(scratch(x), reference(x), atol=1e-5, rtol=1e-5)


def test_running_variance_is_unbiased_and_momentum_none_is_cumulative_average():
    scratch = ScratchBatchNorm2d(2, momentum=None)
    batches = [torch.randn(4, 2, 3, 3) * s for s in (1.0, 2.0, 3.0)]
    for x in batches:
        scratch(x)
    expected_mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in batches]).mean(0)
    expected_var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in batches]).mean(0)
    torch.testing.assert_close(scratch.running_mean, expected_mean)
    torch.testing.assert_close(scratch.running_var, expected_var)
    assert scratch.num_batches_tracked.item() == 3


@pytest.mark.parametrize(
    "settings", [{}, {"affine": False}, {"track_running_stats": False}], ids=str
)
def test_scratch_batchnorm_gradcheck_float64(settings):
    scratch = ScratchBatchNorm2d(3, dtype=torch.float64, **settings)
    x = torch.randn(4, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    params = [p for p in scratch.parameters()]
    assert torch.autograd.gradcheck(lambda inp, *ps: scratch(inp), (x, *params))
    # and the analytic gradients equal nn.BatchNorm2d's in float64
    reference, twin = twin_batchnorms(3, dtype=torch.float64, **settings)
    x_ref, x_scr = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    reference(x_ref).pow(2).sum().backward()
    twin(x_scr).pow(2).sum().backward()
    torch.testing.assert_close(x_scr.grad, x_ref.grad, atol=1e-10, rtol=1e-8)


def test_one_value_per_channel_in_training_raises_pytorchs_error():
    x = torch.randn(1, 3, 1, 1)
    with pytest.raises(ValueError) as reference_error:
        nn.BatchNorm2d(3)(x)
    with pytest.raises(ValueError) as scratch_error:
        ScratchBatchNorm2d(3)(x)
    assert str(scratch_error.value) == str(reference_error.value)
    # in eval mode, with running statistics, a single value is fine in both
    torch.testing.assert_close(ScratchBatchNorm2d(3).eval()(x), nn.BatchNorm2d(3).eval()(x))


def test_state_dicts_are_interchangeable():
    reference, scratch = twin_batchnorms(5)
    reference(torch.randn(6, 5, 4, 4))
    scratch.load_state_dict(reference.state_dict())
    assert reference.state_dict().keys() == scratch.state_dict().keys()
    back = nn.BatchNorm2d(5)
    back.load_state_dict(scratch.state_dict())
    assert repr(ScratchBatchNorm2d(5)).startswith("ScratchBatchNorm2d(5, eps=1e-05, momentum=0.1")


def test_functional_batchnorm_matches_batch_statistics_of_torch():
    x = torch.randn(6, 4, 5, 5) * 3 + 2
    gamma, beta = torch.rand(4) + 0.5, torch.randn(4)
    reference = nn.BatchNorm2d(4)
    with torch.no_grad():
        reference.weight.copy_(gamma)
        reference.bias.copy_(beta)
    torch.testing.assert_close(batchnorm(x, gamma, beta), reference(x), atol=1e-5, rtol=1e-5)


def test_functional_batchnorm_needs_eps_on_a_constant_channel():
    """The lesson's version (eps = 0) turns a constant channel into NaN; eps fixes it."""
    x = torch.randn(4, 2, 3, 3)
    x[:, 1] = 7.0  # e.g. a feature map that is constant over the whole batch
    gamma, beta = torch.ones(2), torch.tensor([0.0, 0.25])
    lesson = batchnorm(x, gamma, beta, eps=0.0)
    assert torch.isnan(lesson[:, 1]).all()
    fixed = batchnorm(x, gamma, beta)
    assert torch.isfinite(fixed).all()
    torch.testing.assert_close(fixed[:, 1], torch.full_like(fixed[:, 1], 0.25))


# --- dropout -----------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_scratch_dropout_draws_the_same_mask_as_torch(p):
    x = torch.randn(32, 50)
    torch.manual_seed(123)
    expected = nn.Dropout(p)(x)
    torch.manual_seed(123)
    assert torch.equal(ScratchDropout(p)(x), expected)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_scratch_dropout_statistics_agree_with_torch(p):
    x = torch.rand(400, 500) + 0.5  # strictly positive, so zeros mean "dropped"
    torch.manual_seed(1)
    ours = ScratchDropout(p)(x)
    torch.manual_seed(2)
    theirs = nn.Dropout(p)(x)
    n = x.numel()
    tolerance = 4 * (p * (1 - p) / n) ** 0.5  # 4 standard errors of a Bernoulli fraction
    for out in (ours, theirs):
        dropped = (out == 0).float().mean().item()
        assert abs(dropped - p) < tolerance
        kept = out != 0
        torch.testing.assert_close(out[kept], x[kept] / (1 - p))  # survivors scaled by 1/(1-p)
        assert abs(out.mean().item() - x.mean().item()) < 0.02  # expectation preserved


def test_scratch_dropout_edges():
    x = torch.randn(10, 10, requires_grad=True)
    assert torch.equal(ScratchDropout(0.7).eval()(x), x)  # identity in eval
    assert torch.equal(ScratchDropout(0.0)(x), x)
    zeros = ScratchDropout(1.0)(x)
    assert torch.equal(zeros, torch.zeros_like(x)) and torch.equal(zeros, nn.Dropout(1.0)(x))
    zeros.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "half", True])
def test_scratch_dropout_rejects_bad_probability(p):
    with pytest.raises(ValueError, match="between 0 and 1"):
        ScratchDropout(p)


# --- every configured norm and dropout: the contract a network relies on -----------------


def network_with(compose_cfg, choice: str) -> tuple[nn.Module, object]:
    cfg = compose_cfg(["model=cnn", choice])
    torch.manual_seed(0)
    return build_network(cfg.model), cfg


def train_one_step(net: nn.Module) -> None:
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    nn.functional.cross_entropy(net.train()(images), labels).backward()
    optimizer.step()


@pytest.mark.parametrize("norm", config_options("model/norm"))
def test_every_norm_trains_round_trips_its_state_and_evaluates_one_image(compose_cfg, norm):
    net, cfg = network_with(compose_cfg, f"model/norm={norm}")
    train_one_step(net)
    fresh = build_network(cfg.model)
    fresh.load_state_dict(net.state_dict())  # strict: same names, same shapes
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        batch = net.eval()(images)
        torch.testing.assert_close(fresh.eval()(images), batch)
        single = net(images[:1])  # evaluation must not depend on the rest of the batch
    assert torch.isfinite(single).all()
    torch.testing.assert_close(single, batch[:1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dropout", config_options("model/dropout"))
def test_every_dropout_trains_and_is_the_identity_in_evaluation(compose_cfg, dropout):
    net, cfg = network_with(compose_cfg, f"model/dropout={dropout}")
    train_one_step(net)
    fresh = build_network(cfg.model)
    fresh.load_state_dict(net.state_dict())
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images), net.eval()(images))
    placement = cfg.model.dropout.placement
    slots = [name for name, _ in net.named_modules() if name.endswith(".dropout")]
    assert all(s.startswith("head." if placement == "head" else "features.") for s in slots)


def test_group_norm_takes_the_channel_count_first_and_names_indivisible_groups():
    x = torch.randn(3, 6, 4, 4) * torch.tensor([1.0, 5.0, 20.0]).view(3, 1, 1, 1)
    torch.testing.assert_close(
        GroupNorm(6, num_groups=1)(x),
        nn.functional.layer_norm(x, x.shape[1:]),
        atol=1e-5,
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="num_groups=4 does not divide the 6 channels"):
        GroupNorm(6, num_groups=4)
    with pytest.raises(ValueError, match="num_groups=0 must be a positive number"):
        GroupNorm(6, num_groups=0)


def test_channel_dropout_is_refused_in_the_fully_connected_head():
    with pytest.raises(ValueError, match="placement=conv"):
        SeedCNN(dropout=nn.Dropout2d, dropout_placement="head")
    with pytest.raises(ValueError, match="placement='sideways'"):
        SeedCNN(dropout_placement="sideways")
