"""VICReg (Bardes, Ponce & LeCun, 2022, arXiv:2105.04906): variance, invariance, covariance.

Defaults and where they come from:

* loss: invariance λ = 25, variance μ = 25, covariance ν = 1, ε = 1e-4 (the paper, §4.2 and
  its code ``facebookresearch/vicreg``; solo-learn's CIFAR config ``vicreg.yaml`` keeps them);
* projector (the paper calls it expander): three linear layers, the first two followed by
  BatchNorm and ReLU (the paper); 2048-2048 at CIFAR scale (solo-learn ``vicreg.yaml``; the
  paper's ImageNet width is 8192);
* optimiser: LARS, base lr 0.3 per 256 images, weight decay λ = 1e-4, no Nesterov (solo-learn
  ``vicreg.yaml``; the paper uses LARS with 1e-6 at ImageNet scale). The trainer's LARS is
  timm's (trust coefficient 1e-3, no clipping), not solo-learn's (η = 0.02, clipped).
* c = 1 (no cut): the paper's cut-initialisation recipe has no value for redundancy
  reduction. VICReg's loss is not scale-invariant (the variance hinge asks for a standard
  deviation of 1), so the ``1 / ‖z‖`` argument behind c = 3 and 9 does not carry over as is;
  whether a cut helps is what the convergence study's VICReg control measures.

Each view goes through the backbone and projector on its own (BatchNorm statistics per view, as
the authors' code does). Distributed: the invariance term is the local mean, variance and
covariance use the global batch (:mod:`hub_cutinit.redundancy_losses`), so 2 processes equal 1 at
the same global batch (the projector's BatchNorm needs SyncBatchNorm for that).

Example:
    >>> import torch
    >>> from hub_cutinit import create_ssl_model
    >>> from hub_cutinit.registry import get_preset
    >>> model = create_ssl_model("vicreg", "test_resnet", **get_preset("vicreg", "tiny"))
    >>> out = model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    >>> model.cut_init_c, bool(out.loss > 0)
    (1.0, True)
"""

from __future__ import annotations

import torch

from hub_cutinit.methods.barlow_twins import RedundancyReductionModel
from hub_cutinit.methods.base import COMMON_DEFAULTS
from hub_cutinit.redundancy_losses import VICRegLoss
from hub_cutinit.registry import register_method

__all__ = ["VICReg"]


@register_method
class VICReg(RedundancyReductionModel):
    """VICReg with a BatchNorm expander ``D→2048→2048→2048`` and weights 25 / 25 / 1."""

    name = "vicreg"
    display_name = "VICReg"
    defaults = {
        **COMMON_DEFAULTS,
        "c": 1.0,
        "weight_decay": 1e-4,
        "optimizer": "lars",
        "nesterov": False,
        "base_lr": 0.3,
        "invariance_weight": 25.0,
        "variance_weight": 25.0,
        "covariance_weight": 1.0,
        "proj_hidden_dim": 2048,
        "proj_dim": 2048,
        "head_batch_norm": True,
    }

    def build_criterion(self) -> torch.nn.Module:
        hp = self.hparams
        return VICRegLoss(hp["invariance_weight"], hp["variance_weight"], hp["covariance_weight"])
