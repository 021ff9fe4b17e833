"""Closed forms behind cut-initialisation (PAPER §1-3, §5), checked against autograd in the tests.

Every loss of the cosine-similarity family sees only ``ẑ = z / ‖z‖``. Its gradient with respect
to the raw embedding is therefore ``(I − ẑẑᵀ) ∇_ẑ L / ‖z‖``: orthogonal to ``z`` and shrinking as
``1 / ‖z‖``. A gradient step then *grows* the norm (``‖z − γ∇‖² = ‖z‖² + γ²‖∇‖²``), and the steps
needed to align a pair grow quadratically with the norm.

All tensor functions work on any leading batch dimensions (the embedding dimension is the last
one) and keep the input dtype, so float64 inputs give float64 results.

Example:
    >>> import torch
    >>> z_i = torch.tensor([[2.0, 0.0]])
    >>> z_j = torch.tensor([[0.0, 1.0]])
    >>> cosine_similarity_grad(z_i, z_j)      # (ẑ_j − cos φ ẑ_i) / ‖z_i‖, cos φ = 0
    tensor([[0.0000, 0.5000]])
    >>> round(float(predicted_steps(rho=1.0, phi0=torch.pi / 2, lr=0.5, eps=0.01)), 2)
    5.3
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "cosine_similarity_grad",
    "simclr_positives",
    "infonce_loss",
    "infonce_grad",
    "norm_after_step",
    "angle_from_tolerance",
    "predicted_angle",
    "predicted_steps",
    "GradScaleFunction",
    "grad_scale",
]

INFONCE_PARTS = ("full", "attractive", "repulsive")


def _unit(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(ẑ, ‖z‖)`` along the last dimension (norm kept as a trailing size-1 dim)."""
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    return z / norm, norm


def _project(z_hat: torch.Tensor, norm: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(I − ẑẑᵀ) g / ‖z‖`` row-wise: the chain rule through ``z ↦ z / ‖z‖``."""
    return (g - (g * z_hat).sum(-1, keepdim=True) * z_hat) / norm


def cosine_similarity_grad(z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
    """Gradient of ``cos(z_i, z_j)`` with respect to ``z_i`` (PAPER §1).

    ``∇_{z_i} cos φ = (ẑ_j − cos φ · ẑ_i) / ‖z_i‖``, orthogonal to ``z_i`` and of magnitude
    ``sin φ / ‖z_i‖``. Shapes ``(..., d)`` broadcast against each other. Zero-norm rows give NaN
    (the cosine is undefined there).

    Example:
        >>> import torch
        >>> z_i, z_j = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
        >>> g = cosine_similarity_grad(z_i, z_j)
        >>> bool((g * z_i).sum(-1).abs().max() < 1e-12)
        True
    """
    z_i, z_j = torch.broadcast_tensors(z_i, z_j)
    zi_hat, zi_norm = _unit(z_i)
    zj_hat, _ = _unit(z_j)
    return _project(zi_hat, zi_norm, zj_hat)


def simclr_positives(num_rows: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Positive indices of SimCLR's batch layout ``[view 0; view 1]``: row i pairs with i ± N.

    Example:
        >>> simclr_positives(4)
        tensor([2, 3, 0, 1])
    """
    if num_rows < 2 or num_rows % 2:
        raise ValueError(
            f"SimCLR layout needs an even number of rows >= 2 (two views of N samples stacked), "
            f"got {num_rows}; pass `positives` explicitly for other layouts."
        )
    half = num_rows // 2
    return (torch.arange(num_rows, device=device) + half) % num_rows


def _check_infonce(
    z: torch.Tensor, positives: torch.Tensor | None, temperature: float, part: str
) -> torch.Tensor:
    if z.ndim < 2:
        raise ValueError(f"z must be (..., M, d) with M >= 2 rows, got shape {tuple(z.shape)}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if part not in INFONCE_PARTS:
        raise ValueError(f"part must be one of {INFONCE_PARTS}, got {part!r}.")
    rows = z.shape[-2]
    if positives is None:
        return simclr_positives(rows, device=z.device)
    positives = torch.as_tensor(positives, device=z.device)
    if positives.shape != (rows,) or positives.dtype.is_floating_point:
        raise ValueError(
            f"positives must be an integer index tensor of shape ({rows},) (the row of each "
            f"anchor's positive), got dtype {positives.dtype} and shape {tuple(positives.shape)}."
        )
    arange = torch.arange(rows, device=z.device)
    if (positives < 0).any() or (positives >= rows).any() or (positives == arange).any():
        raise ValueError(
            "positives[i] must lie in [0, M) and differ from i (a row is never its own positive)."
        )
    return positives.long()


def _infonce_parts(z: torch.Tensor, temperature: float):
    """Return ``ẑ, ‖z‖, S = ẑẑᵀ/τ`` and the softmax ``p_ik`` over candidates ``k ≠ i``."""
    z_hat, norm = _unit(z)
    logits = z_hat @ z_hat.transpose(-1, -2) / temperature
    eye = torch.eye(z.shape[-2], dtype=torch.bool, device=z.device)
    probs = torch.softmax(logits.masked_fill(eye, float("-inf")), dim=-1)
    return z_hat, norm, logits, probs


def infonce_loss(
    z: torch.Tensor,
    positives: torch.Tensor | None = None,
    temperature: float = 0.5,
    *,
    part: str = "full",
) -> torch.Tensor:
    """Per-anchor InfoNCE loss ``L_i`` (PAPER §1), returned with shape ``(..., M)``.

    Definition used throughout this module: ``z`` is a batch ``(..., M, d)`` of raw embeddings and
    *every* row is an anchor. Anchor ``i`` has the positive ``j = positives[i]`` and the
    candidates ``k ≠ i`` (all other rows, the positive included, as in SimCLR)::

        L_i = −ẑ_iᵀẑ_j/τ + log Σ_{k≠i} exp(ẑ_iᵀẑ_k/τ)
              └ attractive ┘ └──────── repulsive ────────┘

    ``positives=None`` means SimCLR's layout: the rows are ``[view 0 (N rows); view 1 (N rows)]``
    and row ``i`` pairs with row ``(i + N) mod 2N``. ``part`` keeps only one term.
    SimCLR's NT-Xent loss is ``infonce_loss(torch.cat([z0, z1])).mean()``.

    Example:
        >>> import torch
        >>> z = torch.randn(6, 4)
        >>> infonce_loss(z, temperature=0.5).shape
        torch.Size([6])
    """
    positives = _check_infonce(z, positives, temperature, part)
    z_hat, _, logits, _ = _infonce_parts(z, temperature)
    eye = torch.eye(z.shape[-2], dtype=torch.bool, device=z.device)
    index = positives.expand(*logits.shape[:-1]).unsqueeze(-1)
    attractive = -torch.gather(logits, -1, index).squeeze(-1)
    repulsive = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=-1)
    if part == "attractive":
        return attractive
    if part == "repulsive":
        return repulsive
    return attractive + repulsive


def infonce_grad(
    z: torch.Tensor,
    positives: torch.Tensor | None = None,
    temperature: float = 0.5,
    *,
    part: str = "full",
    wrt: str = "anchor",
) -> torch.Tensor:
    """Closed-form gradient of InfoNCE (see :func:`infonce_loss` for ``z``/``positives``/``part``).

    ``wrt="anchor"`` (PAPER §1): row ``i`` is ``∇_{z_i} L_i`` with every other row held fixed,
    i.e. the gradient of ``Σ_i L_i(z_i; stopgrad(z_{k≠i}))``::

        ∇_{z_i} L_i = (I − ẑ_iẑ_iᵀ) g_i / ‖z_i‖,  g_i = −(ẑ_j − Σ_{k≠i} p_ik ẑ_k) / τ,
        p_ik = softmax_{k≠i}(ẑ_iᵀẑ_k / τ)

    ``wrt="total"``: the full gradient of ``Σ_i L_i`` (every row is also a positive and a
    candidate of other anchors); row ``m`` adds ``(−Σ_{i: j(i)=m} ẑ_i + Σ_i p_im ẑ_i)/τ`` to
    ``g_m``. Divide by ``M`` for the gradient of the mean. Either way each row's gradient is
    orthogonal to that row and scales as ``1 / ‖z_m‖``.

    Example:
        >>> import torch
        >>> z = torch.randn(8, 5, dtype=torch.float64)
        >>> g = infonce_grad(z, temperature=0.2, wrt="total")
        >>> bool((g * z).sum(-1).abs().max() < 1e-10)
        True
    """
    if wrt not in ("anchor", "total"):
        raise ValueError(f"wrt must be 'anchor' or 'total', got {wrt!r}.")
    positives = _check_infonce(z, positives, temperature, part)
    z_hat, norm, _, probs = _infonce_parts(z, temperature)
    rows = z.shape[-2]
    pos_matrix = torch.zeros(rows, rows, dtype=z.dtype, device=z.device)
    pos_matrix[torch.arange(rows, device=z.device), positives] = 1.0
    # Coefficients C[i, k] of ẑ_k in g_i (anchor role): −1 at the positive, +p_ik for candidates.
    coeff = torch.zeros_like(probs)
    if part in ("full", "attractive"):
        coeff = coeff - pos_matrix
    if part in ("full", "repulsive"):
        coeff = coeff + probs
    if wrt == "total":
        coeff = coeff + coeff.transpose(-1, -2)  # row m also sees ẑ_i through anchor i's term
    g = coeff @ z_hat / temperature
    return _project(z_hat, norm, g)


def norm_after_step(
    z: torch.Tensor, grad: torch.Tensor, lr: float, *, exact: bool = False
) -> torch.Tensor:
    """Norm of ``z`` after a plain gradient step ``z − γ·grad`` (PAPER §2), shape ``(...)``.

    By default returns the growth identity ``sqrt(‖z‖² + γ²‖grad‖²)``, which is exact only when
    ``grad ⟂ z`` (true for the cosine-similarity losses on free embeddings under plain gradient
    descent); then the norm can only grow. ``exact=True`` returns ``‖z − γ·grad‖`` for any grad
    (the two agree iff ``⟨grad, z⟩ = 0``). Momentum, Adam and weight sharing break orthogonality
    of the actual update, so there the identity is only an approximation.

    Example:
        >>> import torch
        >>> z, g = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
        >>> float(norm_after_step(z, g, lr=1.0)), float(norm_after_step(z, g, lr=1.0, exact=True))
        (5.0, 5.0)
    """
    if exact:
        return torch.linalg.vector_norm(z - lr * grad, dim=-1)
    z_sq = (z * z).sum(-1)
    g_sq = (grad * grad).sum(-1)
    return torch.sqrt(z_sq + (lr**2) * g_sq)


def _is_torch(*values) -> bool:
    return any(isinstance(v, torch.Tensor) for v in values)


def _as_output(value, like_torch: bool, *inputs):
    """Return torch for torch inputs, a Python float for scalar inputs, numpy otherwise."""
    if like_torch:
        return value
    if all(np.ndim(v) == 0 for v in inputs):
        return float(value)
    return value


def angle_from_tolerance(tol):
    """Angle ``ε = arccos(1 − tol)``: cosine similarity ``1 − tol`` as an angle (radians).

    Example:
        >>> round(angle_from_tolerance(1e-3), 4)
        0.0447
    """
    if _is_torch(tol):
        return torch.arccos(1 - torch.as_tensor(tol))
    return _as_output(np.arccos(1 - np.asarray(tol, dtype=float)), False, tol)


def predicted_angle(rho, phi0, lr, steps):
    """Angle of a symmetric pair after ``steps`` plain GD steps on ``−cos`` (PAPER §3).

    Both points have norm ``ρ`` and follow ``dφ = −2γ sin φ / ρ²`` per step, whose solution is
    ``tan(φ_t/2) = tan(φ₀/2) · exp(−2γt/ρ²)``. Norm growth during training is neglected (it adds
    at most ``γ(1 − cos φ₀)/2`` to ``ρ²``). Inputs broadcast; torch in, torch out.

    Example:
        >>> round(predicted_angle(1.0, 1.0, 0.0, 10), 6)
        1.0
    """
    if _is_torch(rho, phi0, lr, steps):
        rho, phi0, lr, steps = (
            torch.as_tensor(v, dtype=torch.float64) for v in (rho, phi0, lr, steps)
        )
        return 2 * torch.arctan(torch.tan(phi0 / 2) * torch.exp(-2 * lr * steps / rho**2))
    rho, phi0, lr, steps_ = (np.asarray(v, dtype=float) for v in (rho, phi0, lr, steps))
    out = 2 * np.arctan(np.tan(phi0 / 2) * np.exp(-2 * lr * steps_ / rho**2))
    return _as_output(out, False, rho, phi0, lr, steps_)


def predicted_steps(rho, phi0, lr, eps):
    """Steps for a symmetric pair to go from angle ``φ₀`` to ``ε`` (PAPER §3).

    ``T = (ρ² / 2γ) · ln(tan(φ₀/2) / tan(ε/2))``: quadratic in the norm ``ρ``, only logarithmic
    as ``φ₀ → π``. ``γ`` is the step size acting on *one* pair's ``−cos`` (for a loss averaged
    over ``n`` pairs pass ``lr / n``). Returns 0 where ``φ₀ ≤ ε`` and a huge value (``inf`` in the
    limit) at ``φ₀ = π``. Accepts floats, numpy arrays or torch tensors and broadcasts; torch
    inputs give a float64 torch tensor, scalars a float.

    Example:
        >>> import numpy as np
        >>> t = predicted_steps(np.array([1.0, 2.0]), np.pi / 2, 0.02, 0.0447)
        >>> round(float(t[1] / t[0]), 6)
        4.0
    """
    if _is_torch(rho, phi0, lr, eps):
        rho, phi0, lr, eps = (torch.as_tensor(v, dtype=torch.float64) for v in (rho, phi0, lr, eps))
        if (lr <= 0).any() or (eps <= 0).any():
            raise ValueError("lr and eps must be > 0 (eps is the target angle in radians).")
        ratio = torch.log(torch.tan(phi0 / 2) / torch.tan(eps / 2))
        return rho**2 / (2 * lr) * ratio.clamp_min(0)
    rho, phi0, lr, eps_ = (np.asarray(v, dtype=float) for v in (rho, phi0, lr, eps))
    if (lr <= 0).any() or (eps_ <= 0).any():
        raise ValueError("lr and eps must be > 0 (eps is the target angle in radians).")
    with np.errstate(divide="ignore"):
        ratio = np.log(np.tan(phi0 / 2) / np.tan(eps_ / 2))
    out = rho**2 / (2 * lr) * np.maximum(ratio, 0.0)
    return _as_output(out, False, rho, phi0, lr, eps_)


class GradScaleFunction(torch.autograd.Function):
    """Identity forward; backward multiplies each row's gradient by ``‖z_row‖^p`` (detached)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, power: float) -> torch.Tensor:  # noqa: D102
        ctx.power = power
        ctx.save_for_backward(z)
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # noqa: D102
        (z,) = ctx.saved_tensors
        norm = torch.linalg.vector_norm(z.detach(), dim=-1, keepdim=True)
        if ctx.power < 0:
            norm = norm.clamp_min(torch.finfo(norm.dtype).tiny)
        return grad_output * norm.pow(ctx.power).to(grad_output.dtype), None


def grad_scale(z: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """GradScale (extended paper, PAPER §5): identity forward, gradient of row ``z`` × ``‖z‖^p``.

    Apply it to the raw embedding *before* normalisation. ``p = 0`` is standard training (``z`` is
    returned unchanged); ``p = 1`` cancels the ``1/‖z‖`` factor of cosine-similarity gradients.
    The norm is taken over the last dimension and is detached (no gradient flows through it).

    Example:
        >>> import torch
        >>> z = torch.tensor([[3.0, 4.0]], requires_grad=True)
        >>> grad_scale(z, 1.0).sum().backward()
        >>> z.grad
        tensor([[5., 5.]])
    """
    power = float(power)
    if not math.isfinite(power):
        raise ValueError(f"power must be a finite number (0 = off, 1 = cancel 1/‖z‖), got {power}.")
    if z.ndim < 1:
        raise ValueError("grad_scale needs a tensor with an embedding dimension, got a scalar.")
    if power == 0.0:
        return z
    return GradScaleFunction.apply(z, power)
