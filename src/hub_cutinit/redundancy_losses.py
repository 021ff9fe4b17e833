"""Redundancy-reduction losses: Barlow Twins and VICReg, with global-batch statistics.

Both losses are statistics of a batch (a cross-correlation, variances, covariances), so their
value depends on which batch they see. Distributed semantics, as their papers' code does it:

* **Barlow Twins** (Zbontar et al., 2021, arXiv:2103.03230): the batch standardisation (mean,
  biased variance) and the cross-correlation matrix are computed over the **global** batch;
  every process evaluates the same loss.
* **VICReg** (Bardes et al., 2022, arXiv:2105.04906): the invariance term (mean squared error
  between the two views) is the **local** mean, the variance and covariance terms are computed
  over the **global** batch (the authors' ``FullGatherLayer``).

The embeddings are concatenated across processes with the gradient-preserving all-gather
(:func:`hub_cutinit.distributed.gather_with_grad`, the helper :mod:`hub_cutinit.losses` uses),
whose backward sums every process's gradient onto the owner's rows. Every process then holds
``W ×`` the gradient of the global terms for its own rows, and DDP's averaging over the ``W``
processes gives exactly the gradient of one process with the whole batch: a 2-process run equals
a 1-process run at the same global batch (``tests/test_new_methods.py``). Every process must
pass the same batch size.

Example:
    >>> import torch
    >>> z0, z1 = torch.randn(8, 4), torch.randn(8, 4)
    >>> bool(BarlowTwinsLoss()(z0, z0) < BarlowTwinsLoss()(z0, z1))
    True
    >>> sorted(VICRegLoss().terms(z0, z1))
    ['covariance', 'invariance', 'variance']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hub_cutinit.distributed import gather_with_grad
from hub_cutinit.losses import fp32

__all__ = ["BarlowTwinsLoss", "VICRegLoss", "off_diagonal"]


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened.

    Example:
        >>> off_diagonal(torch.arange(9.0).view(3, 3)).tolist()
        [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]
    """
    n, m = matrix.shape
    if n != m:
        raise ValueError(f"off_diagonal needs a square matrix, got {tuple(matrix.shape)}.")
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def _check_views(z0: torch.Tensor, z1: torch.Tensor) -> None:
    if z0.ndim != 2 or z0.shape != z1.shape:
        raise ValueError(
            f"z0 and z1 must be 2-D tensors of the same shape (batch, dim), got "
            f"{tuple(z0.shape)} and {tuple(z1.shape)}; pass the projections of two views of the "
            "same images."
        )


def _global(z: torch.Tensor, gather: bool) -> torch.Tensor:
    batch = gather_with_grad(z) if gather else z
    if batch.shape[0] < 2:
        raise ValueError(
            f"batch statistics need a global batch of at least 2 rows, got {batch.shape[0]}."
        )
    return batch


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins: ``Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²`` (arXiv:2103.03230, eq. 1).

    ``C = ẑ0ᵀ ẑ1 / N`` is the cross-correlation of the two views' projections, each
    standardised per feature over the global batch of ``N`` rows with the biased variance and
    ``eps`` (the paper's ``BatchNorm1d(affine=False)``; lightly's ``BarlowTwinsLoss`` too). The
    standardisation makes the loss invariant to the scale of each feature, so its gradient with
    respect to a projection scales as ``1 / ‖z‖`` like the cosine losses'.

    Args:
        lambda_param: λ, the off-diagonal weight (the paper's 5e-3).
        scale: a factor on the whole loss (solo-learn's CIFAR ``scale_loss`` 0.1; 1 = the
            paper's equation).
        eps: added to the variance before the square root.
        gather_distributed: statistics over every process's rows (the global batch).

    Example:
        >>> import torch
        >>> z = torch.randn(16, 4)
        >>> round(float(BarlowTwinsLoss(lambda_param=0.0)(z, z)), 3)  # C_ii = 1 up to eps
        0.0
    """

    def __init__(
        self,
        lambda_param: float = 5e-3,
        scale: float = 1.0,
        eps: float = 1e-5,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if lambda_param < 0 or scale <= 0 or eps < 0:
            raise ValueError(
                f"need lambda_param >= 0, scale > 0 and eps >= 0, got {lambda_param}, {scale}, "
                f"{eps}."
            )
        self.lambda_param = float(lambda_param)
        self.scale = float(scale)
        self.eps = float(eps)
        self.gather_distributed = gather_distributed

    def cross_correlation(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """``C`` (dim × dim) over the global batch, in fp32."""
        _check_views(z0, z1)
        with fp32(z0):
            a = _global(z0.float(), self.gather_distributed)
            b = _global(z1.float(), self.gather_distributed)
            a = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + self.eps)
            b = (b - b.mean(0)) / torch.sqrt(b.var(0, unbiased=False) + self.eps)
            return a.T @ b / a.shape[0]

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        c = self.cross_correlation(z0, z1)
        on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
        return self.scale * (on_diagonal + self.lambda_param * off_diagonal(c).pow(2).sum())


class VICRegLoss(nn.Module):
    """VICReg: ``λ·invariance + μ·variance + ν·covariance`` (arXiv:2105.04906, eqs. 1–6).

    * invariance: ``mean((z0 − z1)²)`` over this process's rows;
    * variance: ``½ Σ_views mean_j relu(1 − √(Var(z_j) + ε))``, unbiased variance over the
      global batch;
    * covariance: ``Σ_views Σ_{i≠j} Cov(z)_ij² / d``, ``Cov = z̄ᵀ z̄ / (N − 1)`` over the global
      batch of ``N`` rows (the authors' code; lightly's ``VICRegLoss`` too).

    Args:
        invariance_weight: λ (25 in the paper).
        variance_weight: μ (25).
        covariance_weight: ν (1).
        eps: ε inside the standard deviation (1e-4).
        gather_distributed: variance and covariance over every process's rows.

    Example:
        >>> import torch
        >>> terms = VICRegLoss().terms(torch.zeros(4, 3), torch.zeros(4, 3))
        >>> {k: round(float(v), 2) for k, v in terms.items()}  # collapse: variance hinge at 0.99
        {'invariance': 0.0, 'variance': 0.99, 'covariance': 0.0}
    """

    def __init__(
        self,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        weights = (invariance_weight, variance_weight, covariance_weight)
        if min(weights) < 0 or eps < 0:
            raise ValueError(f"VICReg's weights and eps must be >= 0, got {weights} and {eps}.")
        self.invariance_weight, self.variance_weight, self.covariance_weight = map(float, weights)
        self.eps = float(eps)
        self.gather_distributed = gather_distributed

    def terms(self, z0: torch.Tensor, z1: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three unweighted terms, in fp32."""
        _check_views(z0, z1)
        with fp32(z0):
            z0, z1 = z0.float(), z1.float()
            invariance = F.mse_loss(z0, z1)
            variance = z0.new_zeros(())
            covariance = z0.new_zeros(())
            for z in (z0, z1):
                z = _global(z, self.gather_distributed)
                z = z - z.mean(0)
                std = torch.sqrt(z.var(0) + self.eps)
                variance = variance + 0.5 * F.relu(1 - std).mean()
                cov = z.T @ z / (z.shape[0] - 1)
                covariance = covariance + off_diagonal(cov).pow(2).sum() / z.shape[1]
            return {"invariance": invariance, "variance": variance, "covariance": covariance}

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        t = self.terms(z0, z1)
        return (
            self.invariance_weight * t["invariance"]
            + self.variance_weight * t["variance"]
            + self.covariance_weight * t["covariance"]
        )
