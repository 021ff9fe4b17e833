"""The convergence monitor (hub_cutinit.monitor): angle per step ∝ lr/‖z‖², and no side effects."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hub_cutinit import cut_init
from hub_cutinit.monitor import (
    StepAngleMonitor,
    angle_between,
    angle_norm_figure,
    fit_loglog_slope,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class MLP(nn.Module):
    """x → Linear → BatchNorm1d → ReLU → [Dropout] → Linear → z, with the SSLModel embed API.

    With ``affine=False`` the embedding is 1-homogeneous in the parameters (the first layer's
    scale is normalised away), so cutting every weight by ``c`` scales ‖z‖ by exactly ``1/c``.
    """

    def __init__(self, affine: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.bn = nn.BatchNorm1d(64, affine=affine)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(64, 8)

    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.drop(F.relu(self.bn(self.fc1(images.flatten(1)))))
        return {"backbone": h, "projection": self.fc2(h)}


def _views() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g)
    v1 = x + 0.3 * torch.randn(x.shape, generator=g)
    v2 = x + 0.3 * torch.randn(x.shape, generator=g)
    probe = torch.randn(64, 1, 4, 4, generator=g)
    return v1, v2, probe


def _one_step_angle(c: float, lr: float) -> tuple[float, float]:
    """Cut a fresh MLP by ``c``, take one SGD step on a negative-cosine loss, measure it."""
    v1, v2, probe = _views()
    torch.manual_seed(1)
    model = cut_init(MLP(), c=c)
    monitor = StepAngleMonitor(probe)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss = -F.cosine_similarity(model.embed(v1)["projection"], model.embed(v2)["projection"])
    loss.mean().backward()
    snapshot = monitor.before_step(model)
    opt.step()
    stats = monitor.after_step(model, snapshot)
    return stats["angle/projection"], stats["norm/projection"]


def test_angle_per_step_scales_as_lr_over_norm_squared() -> None:
    # cut_init with c < 1 grows the weights: ‖z‖ spans 0.5x .. 8x of the c=1 norm (16x range)
    cs = [2.0, 1.0, 0.5, 0.25, 0.125]
    angles, norms = zip(*(_one_step_angle(c, lr=0.01) for c in cs), strict=True)
    slope_norm = fit_loglog_slope(norms, angles)
    assert norms[-1] / norms[0] == pytest.approx(16.0, rel=1e-4)  # ‖z‖ ∝ 1/c exactly
    lrs = [1e-3, 3e-3, 1e-2, 3e-2]
    slope_lr = fit_loglog_slope(lrs, [_one_step_angle(1.0, lr)[0] for lr in lrs])
    print(f"\nlog-log slope of angle/step vs ‖z‖: {slope_norm:.4f}; vs lr: {slope_lr:.4f}")
    assert slope_norm == pytest.approx(-2.0, abs=0.3)
    assert slope_lr == pytest.approx(1.0, abs=0.1)
    assert all(0 < a < 0.1 for a in angles)


def test_free_embedding_turns_by_lr_over_norm_squared_closed_form() -> None:
    # z itself is the parameter: one SGD step on -cos(z, t) turns z by lr·sinφ/‖z‖² to first order
    t = torch.tensor([[1.0, 0.0, 0.0]])
    phi, lr = 1.0, 1e-2  # angles >= 1e-4 rad: far above float32 resolution (~1e-7)
    for rho in (0.5, 2.0, 8.0):
        z = nn.Parameter(rho * torch.tensor([[math.cos(phi), math.sin(phi), 0.0]]))
        holder = nn.Module()
        holder.z = z
        holder.embed = lambda images, z=z: {"projection": z.expand(len(images), -1)}
        monitor = StepAngleMonitor(torch.zeros(2, 1, 1, 1))
        F.cosine_similarity(z, t).neg().sum().backward()
        snapshot = monitor.before_step(holder)
        torch.optim.SGD([z], lr=lr).step()
        stats = monitor.after_step(holder, snapshot)
        assert stats["norm/projection"] == pytest.approx(rho, rel=1e-6)
        assert stats["angle/projection"] == pytest.approx(lr * math.sin(phi) / rho**2, rel=1e-3)


def _train(steps: int, with_monitor: bool) -> tuple[dict, dict, torch.Tensor]:
    torch.manual_seed(3)
    model = MLP(affine=True, dropout=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    monitor = StepAngleMonitor(torch.randn(32, 1, 4, 4))
    for _ in range(steps):
        x = torch.randn(16, 16)  # consumes the global RNG, like augmentations do
        z1, z2 = model.embed(x + 0.1 * torch.randn_like(x)), model.embed(x)
        loss = -F.cosine_similarity(z1["projection"], z2["projection"]).mean()
        opt.zero_grad()
        loss.backward()
        snapshot = monitor.before_step(model) if with_monitor else None
        opt.step()
        if with_monitor:
            stats = monitor.after_step(model, snapshot)
            assert stats["angle/projection"] > 0 and stats["angle/backbone"] > 0
    return model.state_dict(), opt.state_dict(), torch.get_rng_state()


def test_monitor_leaves_training_bit_identical() -> None:
    state_a, opt_a, rng_a = _train(4, with_monitor=False)
    state_b, opt_b, rng_b = _train(4, with_monitor=True)
    assert state_a.keys() == state_b.keys()
    for key in state_a:  # weights and BN running_mean / running_var / num_batches_tracked
        assert torch.equal(state_a[key], state_b[key]), key
    assert int(state_b["bn.num_batches_tracked"]) == 8
    for i, buf in opt_a["state"].items():
        assert torch.equal(buf["momentum_buffer"], opt_b["state"][i]["momentum_buffer"])
    assert torch.equal(rng_a, rng_b)


def test_no_step_gives_exactly_zero_angle_with_dropout_and_train_bn() -> None:
    torch.manual_seed(0)
    model = MLP(affine=True, dropout=0.5).train()
    monitor = StepAngleMonitor(torch.randn(8, 1, 4, 4))
    stats = monitor.after_step(model, monitor.before_step(model))
    assert stats["angle/projection"] == 0.0 and stats["angle/backbone"] == 0.0
    assert model.training


def test_ssl_model_monitor_keeps_buffers_and_reports_prediction() -> None:
    from hub_cutinit import create_ssl_model

    torch.manual_seed(0)
    model = create_ssl_model(
        "byol", "test_resnet", c=1, proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8
    ).train()
    if not callable(getattr(model, "embed", None)):
        pytest.skip("SSLModel.embed is not available")
    monitor = StepAngleMonitor(torch.randn(4, 3, 16, 16))
    before = copy.deepcopy(model.state_dict())
    snapshot = monitor.before_step(model)
    for key, value in model.state_dict().items():  # BN statistics, teacher: all untouched
        assert torch.equal(value, before[key]), key
    last = model.projector[-1]  # Linear or BatchNorm1d: scaling weight and bias scales z
    with torch.no_grad():
        last.weight.mul_(1.01)
        if last.bias is not None:
            last.bias.mul_(1.01)
    stats = monitor.after_step(model, snapshot)
    assert {"backbone", "projection", "prediction"} == set(snapshot)
    assert set(stats) == {f"{k}/{n}" for k in ("angle", "norm") for n in snapshot}
    assert stats["angle/backbone"] == 0.0  # the backbone did not change
    assert stats["angle/projection"] < 1e-6  # a pure rescale of z turns nothing
    assert math.isfinite(stats["angle/prediction"]) and stats["norm/prediction"] > 0
    assert model.training


def test_bf16_autocast_does_not_blur_small_angles() -> None:
    v1, v2, probe = _views()
    torch.manual_seed(1)
    model = MLP()
    z1, z2 = model.embed(v1)["projection"], model.embed(v2)["projection"]
    F.cosine_similarity(z1, z2).neg().mean().backward()
    exact, bf16 = StepAngleMonitor(probe), StepAngleMonitor(probe, full_precision=False)
    reference = exact.before_step(model)  # float32, outside autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        snaps = exact.before_step(model), bf16.before_step(model)
    torch.optim.SGD(model.parameters(), lr=1e-5).step()  # a ~1e-5 rad turn
    truth = exact.after_step(model, reference)["angle/projection"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, blurred = exact.after_step(model, snaps[0]), bf16.after_step(model, snaps[1])
    assert 1e-6 < truth < 1e-4
    assert got["angle/projection"] == truth
    # bf16 embeddings round at 2^-8 relative: a 1e-5 rad turn is lost (here measured as 0)
    assert abs(blurred["angle/projection"] - truth) > 0.5 * truth


def test_unwrapped_model_is_required_with_a_clear_error() -> None:
    monitor = StepAngleMonitor(torch.randn(4, 1, 4, 4))
    wrapper = nn.Module()
    wrapper.module = MLP()
    with pytest.raises(TypeError, match="unwrap_model"):
        monitor.before_step(wrapper)
    with pytest.raises(ValueError, match="at least 2"):
        StepAngleMonitor(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("theta", [1e-6, 1e-3, 0.7, math.pi / 2, 3.0, math.pi - 1e-6])
def test_angle_between_matches_closed_form(theta: float) -> None:
    a = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
    b = 5.0 * torch.tensor([[math.cos(theta), math.sin(theta), 0.0]], dtype=torch.float64)
    assert angle_between(a, b).item() == pytest.approx(theta, rel=1e-9)
    # float32 inputs: still exact to float32 rounding of the inputs, down to 1e-6 rad
    got = angle_between(a.float(), b.float()).item()
    assert got == pytest.approx(theta, rel=1e-3 if theta < 1e-3 else 1e-6)


def test_angle_between_zero_vector_is_nan_and_shapes_checked() -> None:
    out = angle_between(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0]] * 2))
    assert math.isnan(out[0].item()) and out[1].item() == 0.0
    with pytest.raises(ValueError, match="equal shapes"):
        angle_between(torch.ones(2, 3), torch.ones(2, 4))


def test_fit_loglog_slope_recovers_power_and_rejects_bad_input() -> None:
    xs = [0.5, 1.0, 3.0, 10.0]
    assert fit_loglog_slope(xs, [7.0 * x**-2 for x in xs]) == pytest.approx(-2.0, abs=1e-9)
    with pytest.raises(ValueError, match="positive"):
        fit_loglog_slope([1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="two distinct"):
        fit_loglog_slope([1.0, 1.0], [1.0, 2.0])


def test_angle_norm_figure_has_three_panels_with_the_data(tmp_path) -> None:
    history = [
        {"step": s, "lr": 0.1, "angle/projection": 0.1 / (1 + s) ** 2, "norm/projection": 1.0 + s}
        for s in range(6)
    ]
    history.append({"step": 6, "lr": 0.1})  # a record without monitor stats is skipped
    fig = angle_norm_figure(history)
    ax_angle, ax_norm, ax_lr = fig.axes
    assert ax_angle.get_yscale() == "log" and ax_norm.get_yscale() == "log"
    measured, reference = ax_angle.lines
    assert list(measured.get_ydata()) == pytest.approx([0.1 / (1 + s) ** 2 for s in range(6)])
    # the data follow lr/‖z‖² exactly, so the scaled reference coincides with them
    assert list(reference.get_ydata()) == pytest.approx(list(measured.get_ydata()))
    assert list(ax_lr.lines[0].get_xdata()) == list(range(7))
    fig.savefig(tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 1000
