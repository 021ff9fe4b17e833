"""Every closed form in hub_cutinit.theory against torch.autograd (float64, several seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hub_cutinit.theory import (
    angle_from_tolerance,
    cosine_similarity_grad,
    grad_scale,
    infonce_grad,
    infonce_loss,
    norm_after_step,
    predicted_angle,
    predicted_steps,
    simclr_positives,
)

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
FAST = settings(max_examples=20, deadline=None)
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def _randn(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)


def _plain_infonce(z: torch.Tensor, positives: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE written out loop by loop: sum over anchors of L_i (PAPER §1)."""
    total = z.new_zeros(())
    rows = z.shape[0]
    for i in range(rows):
        zi = z[i] / z[i].norm()
        sims = [torch.dot(zi, z[k] / z[k].norm()) / tau for k in range(rows)]
        candidates = torch.stack([sims[k] for k in range(rows) if k != i])
        total = total - sims[int(positives[i])] + torch.logsumexp(candidates, dim=0)
    return total


# --- cosine similarity ---------------------------------------------------------------------


@FAST
@given(seed=SEEDS, dim=st.integers(2, 24), scale=st.floats(0.05, 20.0))
def test_cosine_grad_matches_autograd(seed: int, dim: int, scale: float) -> None:
    z_i = _randn(seed, 7, dim, scale=scale).requires_grad_(True)
    z_j = _randn(seed + 1, 7, dim)
    F.cosine_similarity(z_i, z_j, dim=-1, eps=0.0).sum().backward()
    torch.testing.assert_close(cosine_similarity_grad(z_i.detach(), z_j), z_i.grad, **TIGHT)


@FAST
@given(seed=SEEDS, dim=st.integers(2, 24), scale=st.floats(0.05, 20.0))
def test_cosine_grad_orthogonal_with_magnitude_sin_over_norm(seed: int, dim: int, scale: float):
    z_i, z_j = _randn(seed, 11, dim, scale=scale), _randn(seed + 7, 11, dim)
    grad = cosine_similarity_grad(z_i, z_j)
    norm_i = z_i.norm(dim=-1)
    cos = F.cosine_similarity(z_i, z_j, dim=-1)
    sin = torch.sqrt((1 - cos**2).clamp_min(0))
    torch.testing.assert_close(
        (grad * z_i).sum(-1) / norm_i, torch.zeros_like(cos), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(grad.norm(dim=-1), sin / norm_i, rtol=1e-9, atol=1e-12)


def test_cosine_grad_batches_and_broadcasts() -> None:
    z_i = _randn(0, 2, 3, 5, 4)
    z_j = _randn(1, 5, 4)  # broadcast over the leading (2, 3)
    grad = cosine_similarity_grad(z_i, z_j)
    assert grad.shape == (2, 3, 5, 4) and grad.dtype == torch.float64
    torch.testing.assert_close(grad[1, 2], cosine_similarity_grad(z_i[1, 2], z_j), **TIGHT)


def test_cosine_grad_vanishes_for_antipodal_and_large_norm() -> None:
    z = _randn(3, 6)
    assert cosine_similarity_grad(z, -z).abs().max() < 1e-15
    small = cosine_similarity_grad(z, _randn(4, 6)).norm()
    large = cosine_similarity_grad(1e3 * z, _randn(4, 6)).norm()
    assert math.isclose(float(small / large), 1e3, rel_tol=1e-9)


# --- InfoNCE -------------------------------------------------------------------------------


@FAST
@given(seed=SEEDS, n=st.integers(2, 5), dim=st.integers(2, 8), tau=st.floats(0.05, 2.0))
def test_infonce_loss_matches_plain_loop(seed: int, n: int, dim: int, tau: float) -> None:
    z = _randn(seed, 2 * n, dim, scale=3.0)
    positives = simclr_positives(2 * n)
    torch.testing.assert_close(
        infonce_loss(z, temperature=tau).sum(), _plain_infonce(z, positives, tau), **TIGHT
    )


@FAST
@given(
    seed=SEEDS,
    n=st.integers(2, 5),
    dim=st.integers(2, 8),
    tau=st.floats(0.05, 2.0),
    part=st.sampled_from(["full", "attractive", "repulsive"]),
)
def test_infonce_anchor_grad_matches_autograd(seed, n, dim, tau, part) -> None:
    z = _randn(seed, 2 * n, dim, scale=2.0)
    rows = 2 * n
    expected = torch.zeros_like(z)
    for i in range(rows):  # ∇_{z_i} L_i with every other row held fixed
        zi = z[i].clone().requires_grad_(True)
        batch = torch.cat([z[:i], zi[None], z[i + 1 :]])
        infonce_loss(batch, temperature=tau, part=part)[i].backward()
        expected[i] = zi.grad
    got = infonce_grad(z, temperature=tau, part=part, wrt="anchor")
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


@FAST
@given(seed=SEEDS, rows=st.integers(3, 9), dim=st.integers(2, 8), tau=st.floats(0.05, 2.0))
def test_infonce_total_grad_matches_autograd_plain_loss(seed, rows, dim, tau) -> None:
    # Arbitrary (non-SimCLR) positives: a random derangement-ish mapping.
    gen = torch.Generator().manual_seed(seed)
    positives = (torch.arange(rows) + torch.randint(1, rows, (rows,), generator=gen)) % rows
    z = _randn(seed, rows, dim, scale=0.5).requires_grad_(True)
    _plain_infonce(z, positives, tau).backward()
    got = infonce_grad(z.detach(), positives, temperature=tau, wrt="total")
    torch.testing.assert_close(got, z.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("wrt", ["anchor", "total"])
def test_infonce_grad_orthogonal_and_inverse_norm(seed: int, wrt: str) -> None:
    z = _randn(seed, 3, 8, 6)  # leading batch dim 3
    grad = infonce_grad(z, temperature=0.3, wrt=wrt)
    assert (grad * z).sum(-1).abs().max() < 1e-12
    # Scaling one row by s leaves every ẑ unchanged and divides that row's gradient by s.
    scaled = z.clone()
    scaled[:, 2] *= 10.0
    grad_scaled = infonce_grad(scaled, temperature=0.3, wrt=wrt)
    torch.testing.assert_close(grad_scaled[:, 2] * 10.0, grad[:, 2], **TIGHT)
    torch.testing.assert_close(grad_scaled[:, 0], grad[:, 0], **TIGHT)
    torch.testing.assert_close(grad[1], infonce_grad(z[1], temperature=0.3, wrt=wrt), **TIGHT)


def test_infonce_agrees_with_library_ntxent() -> None:
    from hub_cutinit.losses import NTXentLoss

    z0, z1 = _randn(5, 6, 8).float(), _randn(6, 6, 8).float()
    expected = NTXentLoss(0.5, gather_distributed=False)(z0, z1)
    got = infonce_loss(torch.cat([z0, z1]), temperature=0.5).mean()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"positives": torch.tensor([0, 1, 2, 3])}, "differ from i"),
        ({"positives": torch.tensor([1, 0])}, "shape"),
        ({"temperature": 0.0}, "temperature"),
        ({"part": "both"}, "part"),
    ],
)
def test_infonce_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        infonce_grad(_randn(0, 4, 3), **kwargs)


def test_simclr_positives_needs_even_rows() -> None:
    with pytest.raises(ValueError, match="even"):
        infonce_loss(_randn(0, 5, 3))


# --- norm growth ---------------------------------------------------------------------------


@FAST
@given(seed=SEEDS, dim=st.integers(2, 32), scale=st.floats(0.1, 10.0), lr=st.floats(0.01, 50.0))
def test_norm_identity_matches_actual_sgd_step(seed: int, dim: int, scale: float, lr: float):
    z_i = _randn(seed, 9, dim, scale=scale).requires_grad_(True)
    z_j = _randn(seed + 3, 9, dim, scale=scale).requires_grad_(True)
    predicted = norm_after_step(
        z_i.detach(), cosine_similarity_grad(z_i.detach(), z_j.detach()), lr
    )
    optimizer = torch.optim.SGD([z_i, z_j], lr=lr)
    (-F.cosine_similarity(z_i, z_j, dim=-1).sum()).backward()
    before = z_i.detach().norm(dim=-1)
    optimizer.step()
    after = z_i.detach().norm(dim=-1)
    torch.testing.assert_close(predicted, after, rtol=1e-9, atol=1e-12)
    assert (after >= before * (1 - 1e-12)).all()


def test_norm_identity_exact_flag_differs_for_non_orthogonal_grad() -> None:
    z, g = (
        torch.tensor([3.0, 0.0], dtype=torch.float64),
        torch.tensor([1.0, 1.0], dtype=torch.float64),
    )
    assert float(norm_after_step(z, g, 1.0, exact=True)) == pytest.approx(math.sqrt(5.0))
    assert float(norm_after_step(z, g, 1.0)) == pytest.approx(math.sqrt(11.0))


# --- convergence estimate ------------------------------------------------------------------


def test_predicted_steps_quadratic_in_rho_and_types() -> None:
    rhos = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    steps = predicted_steps(rhos, 1.2, 0.02, 0.05)
    np.testing.assert_allclose(steps[1:] / steps[:-1], 4.0, rtol=1e-12)
    assert isinstance(predicted_steps(1.0, 1.2, 0.02, 0.05), float)
    t = predicted_steps(torch.tensor([1.0, 2.0]), 1.2, 0.02, 0.05)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), predicted_steps(np.array([1.0, 2.0]), 1.2, 0.02, 0.05))
    assert predicted_steps(1.0, 0.01, 0.02, 0.05) == 0.0  # already converged
    grid = predicted_steps(np.ones((3, 1)), np.array([0.5, 1.0, 2.0]), 0.1, 0.05)
    assert grid.shape == (3, 3)
    with pytest.raises(ValueError, match="lr"):
        predicted_steps(1.0, 1.0, 0.0, 0.05)


def test_predicted_steps_only_logarithmic_toward_pi() -> None:
    angles = np.array([math.pi / 2, math.pi - 0.1, math.pi - 0.01, math.pi - 0.001])
    steps = predicted_steps(1.0, angles, 0.02, 0.05)
    assert np.all(np.diff(steps) > 0)
    # Each 10x step toward π adds the same ≈ (ρ²/2γ)·ln 10: logarithmic, not a blow-up.
    np.testing.assert_allclose(np.diff(steps[1:]), math.log(10) / (2 * 0.02), rtol=1e-3)


def test_angle_from_tolerance() -> None:
    assert math.cos(angle_from_tolerance(1e-3)) == pytest.approx(1 - 1e-3)
    assert float(angle_from_tolerance(torch.tensor(0.5))) == pytest.approx(math.acos(0.5))


@pytest.mark.parametrize(("rho", "phi0"), [(1.0, 1.5), (2.0, 2.5), (0.7, 0.8), (1.5, 3.0)])
def test_predicted_steps_matches_symmetric_pair_simulation(rho: float, phi0: float) -> None:
    lr, eps = 0.002 * rho**2, 0.02  # small steps: the ODE regime
    z_i = torch.tensor([rho, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    z_j = torch.tensor([rho * math.cos(phi0), rho * math.sin(phi0), 0.0], dtype=torch.float64)
    z_j.requires_grad_(True)
    optimizer = torch.optim.SGD([z_i, z_j], lr=lr)
    steps, cos_eps = 0, math.cos(eps)
    while float(F.cosine_similarity(z_i.detach(), z_j.detach(), dim=0)) < cos_eps:
        optimizer.zero_grad()
        (-F.cosine_similarity(z_i, z_j, dim=0)).backward()
        optimizer.step()
        steps += 1
    expected = predicted_steps(rho, phi0, lr, eps)
    assert steps == pytest.approx(expected, rel=0.03, abs=2)
    mid = steps // 2  # the closed-form trajectory as well
    assert 0 < predicted_angle(rho, phi0, lr, mid) < phi0


# --- GradScale -----------------------------------------------------------------------------


@FAST
@given(seed=SEEDS, power=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]))
def test_grad_scale_backward_is_norm_power_times_grad(seed: int, power: float) -> None:
    z = _randn(seed, 2, 5, 7, scale=3.0).requires_grad_(True)
    upstream = _randn(seed + 1, 2, 5, 7)
    out = grad_scale(z, power)
    torch.testing.assert_close(out, z.detach(), rtol=0, atol=0)
    (out * upstream).sum().backward()
    expected = upstream * z.detach().norm(dim=-1, keepdim=True) ** power
    torch.testing.assert_close(z.grad, expected, **TIGHT)


def test_grad_scale_p1_cancels_inverse_norm_of_cosine_grad() -> None:
    z = _randn(0, 16, 8, scale=5.0).requires_grad_(True)
    target = _randn(1, 16, 8)
    F.cosine_similarity(grad_scale(z, 1.0), target, dim=-1).sum().backward()
    cos = F.cosine_similarity(z.detach(), target, dim=-1)
    torch.testing.assert_close(z.grad.norm(dim=-1), torch.sqrt(1 - cos**2), rtol=1e-9, atol=1e-12)


def test_grad_scale_p0_is_identity_and_validation() -> None:
    z = _randn(0, 3, 4)
    assert grad_scale(z, 0.0) is z
    with pytest.raises(ValueError, match="finite"):
        grad_scale(z, float("nan"))
    with pytest.raises(ValueError, match="scalar"):
        grad_scale(torch.tensor(1.0), 1.0)
