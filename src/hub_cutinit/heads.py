"""Projection, prediction and DINO heads.

Example:
    >>> import torch
    >>> head = MLPHead([512, 2048, 128], batch_norm=True)
    >>> head(torch.randn(4, 512)).shape
    torch.Size([4, 128])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["MLPHead", "DINOHead"]


class MLPHead(nn.Sequential):
    """A stack of ``Linear → [BatchNorm] → activation`` blocks.

    Args:
        dims: ``[in, hidden..., out]`` feature sizes; ``len(dims) - 1`` linear layers.
        batch_norm: add BatchNorm1d after every hidden linear layer.
        last_batch_norm: add BatchNorm1d after the last linear layer too (SimSiam/BYOL
            projector, PAPER §7).
        activation: the non-linearity between layers (none after the last layer).

    The SimCLR head of the paper is ``MLPHead([512, 128, 128], batch_norm=False)``; the
    BYOL/SimSiam projector ``MLPHead([512, 2048, 2048, 2048], last_batch_norm=True)`` and
    predictor ``MLPHead([2048, 512, 2048])``.

    Example:
        >>> head = MLPHead([8, 16, 4], batch_norm=False)
        >>> [type(m).__name__ for m in head]
        ['Linear', 'ReLU', 'Linear']
    """

    def __init__(
        self,
        dims: Sequence[int],
        *,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        dims = [int(d) for d in dims]
        if len(dims) < 2 or any(d < 1 for d in dims):
            raise ValueError(
                f"dims must list at least two positive sizes [in, ..., out], got {dims}."
            )
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            last = i == len(dims) - 2
            use_bn = last_batch_norm if last else batch_norm
            layers.append(nn.Linear(d_in, d_out, bias=not use_bn))
            if use_bn:
                layers.append(nn.BatchNorm1d(d_out))
            if not last:
                layers.append(activation())
        super().__init__(*layers)
        self.dims = dims


class DINOHead(nn.Module):
    """DINO's head: MLP → l2-normalised bottleneck → weight-normalised prototypes.

    The last layer's magnitude ``g`` is fixed at 1 and frozen (``norm_last_layer=True`` in
    DINO), so the logits are cosine similarities between the bottleneck and the prototypes.
    That magnitude is declared in :attr:`cut_init_fixed`, so :func:`hub_cutinit.cut_init`
    leaves it untouched; the cut acts on the MLP, whose output norm is the ``‖z‖`` of the
    paper's gradient bound.

    Example:
        >>> import torch
        >>> head = DINOHead(32, out_dim=64, hidden_dim=48, bottleneck_dim=16)
        >>> head(torch.randn(2, 32)).shape
        torch.Size([2, 64])
    """

    cut_init_fixed: tuple[str, ...] = ("last_layer.parametrizations.weight.original0",)

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        self.mlp = MLPHead(dims, batch_norm=batch_norm, activation=nn.GELU)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)
        if not norm_last_layer:
            self.cut_init_fixed = ()

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The raw (un-normalised) bottleneck embedding whose norm the paper studies."""
        return self.mlp(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.bottleneck(x), dim=-1))
