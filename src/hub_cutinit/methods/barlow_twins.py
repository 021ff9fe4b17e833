"""Barlow Twins (Zbontar et al., 2021, arXiv:2103.03230): decorrelate the two views' features.

Defaults and where they come from:

* loss: λ = 5e-3 off-diagonal weight (the paper, §2 and Appendix "implementation details"),
  the whole loss × 0.1 (``scale_loss``, solo-learn's CIFAR config ``barlow.yaml``);
* projector: three linear layers, the first two followed by BatchNorm and ReLU (the paper);
  2048-2048 at CIFAR scale (solo-learn ``barlow.yaml``; the paper's ImageNet width is 8192);
* optimiser: LARS, base lr 0.3 per 256 images, weight decay λ = 1e-4, no Nesterov (solo-learn
  ``barlow.yaml``; the paper uses LARS too). The trainer's LARS is timm's (trust coefficient
  1e-3, no clipping), not solo-learn's (η = 0.02 with clipping), so the same lr moves the
  weights less; pass ``--lr`` or ``--optimizer sgd`` to compare at equal step sizes.
* c = 1 (no cut): the paper's cut-initialisation recipe gives c = 3 for contrastive and c = 9
  for non-contrastive methods and nothing for redundancy reduction. The loss standardises each
  feature over the batch, so like the cosine losses it is scale-invariant and its gradient
  scales as ``1 / ‖z‖`` — the cut can act on it — but its value is not measured: it is what the
  convergence study's redundancy-reduction (VICReg) control measures. Pass ``--c`` to try one.

Each view goes through the backbone and projector on its own (BatchNorm statistics per view, as
the authors' code does). Distributed: the standardisation and the cross-correlation use the
global batch (:mod:`hub_cutinit.redundancy_losses`), so 2 processes equal 1 at the same global
batch; the projector's BatchNorm needs SyncBatchNorm for that (the trainer converts on
multi-GPU runs).

Example:
    >>> import torch
    >>> from hub_cutinit import create_ssl_model
    >>> from hub_cutinit.registry import get_preset
    >>> model = create_ssl_model("barlow_twins", "test_resnet", **get_preset("barlow_twins", "tiny"))
    >>> out = model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    >>> model.cut_init_c, tuple(out.embeddings["projection"].shape)
    (1.0, (8, 16))
"""

from __future__ import annotations

import torch

from hub_cutinit.heads import MLPHead
from hub_cutinit.methods.base import COMMON_DEFAULTS, RunSpec, SSLModel, SSLOutput
from hub_cutinit.redundancy_losses import BarlowTwinsLoss
from hub_cutinit.registry import register_method

__all__ = ["BarlowTwins", "RedundancyReductionModel", "check_batch_statistics"]


def check_batch_statistics(method: str, run: RunSpec) -> list[str]:
    """Refuse a global batch of one image: the loss's batch statistics need two rows.

    Example:
        >>> check_batch_statistics("vicreg", RunSpec(c=1.0, global_batch_size=256))
        []
    """
    if run.global_batch_size is not None and run.global_batch_size < 2:
        raise ValueError(
            f"{method} computes statistics over the global batch (variance, correlation), "
            f"which need at least 2 images; got a global batch of {run.global_batch_size}. "
            "Raise --batch-size."
        )
    return []


class RedundancyReductionModel(SSLModel):
    """The shared part of Barlow Twins and VICReg: a BatchNorm projector, views forwarded one
    at a time (per-view BatchNorm statistics), a loss over the two views' projections, and a
    global batch of at least 2. Subclasses set ``defaults`` and :meth:`build_criterion`."""

    family = "redundancy-reduction"
    presets = {
        "paper": {},
        "cpu": {"proj_hidden_dim": 512, "proj_dim": 512},
        "tiny": {"proj_hidden_dim": 32, "proj_dim": 16},
    }
    head_names = ("projector",)

    @classmethod
    def check_run(cls, run: RunSpec) -> list[str]:
        """A global batch of at least 2 (the loss's statistics over the batch)."""
        return super().check_run(run) + check_batch_statistics(cls.name, run)

    def build_criterion(self) -> torch.nn.Module:
        """The loss module, from ``self.hparams``."""
        raise NotImplementedError

    def build_heads(self, num_features: int) -> None:
        hp = self.hparams
        hidden = hp["proj_hidden_dim"]
        self.projector = MLPHead(
            [num_features, hidden, hidden, hp["proj_dim"]], batch_norm=hp["head_batch_norm"]
        )
        self.criterion = self.build_criterion()

    def compute(
        self, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> SSLOutput:
        feats = [self.backbone(v) for v in global_views]
        z = [self.projector(f) for f in feats]
        loss = self.criterion(z[0], z[1])
        return SSLOutput(loss, {"backbone": torch.cat(feats), "projection": torch.cat(z)})


@register_method
class BarlowTwins(RedundancyReductionModel):
    """Barlow Twins with a BatchNorm projector ``D→2048→2048→2048`` and λ = 5e-3."""

    name = "barlow_twins"
    display_name = "Barlow Twins"
    defaults = {
        **COMMON_DEFAULTS,
        "c": 1.0,
        "weight_decay": 1e-4,
        "optimizer": "lars",
        "nesterov": False,
        "base_lr": 0.3,
        "lambda_offdiag": 5e-3,
        "scale_loss": 0.1,
        "proj_hidden_dim": 2048,
        "proj_dim": 2048,
        "head_batch_norm": True,
    }

    def build_criterion(self) -> torch.nn.Module:
        hp = self.hparams
        return BarlowTwinsLoss(hp["lambda_offdiag"], scale=hp["scale_loss"])
