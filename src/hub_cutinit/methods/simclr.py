"""SimCLR (Chen et al., 2020): NT-Xent between two views, negatives from every process.

Example:
    >>> import torch
    >>> from hub_cutinit import create_ssl_model
    >>> model = create_ssl_model("simclr", "resnet18")
    >>> model.cut_init_c
    3.0
"""

from __future__ import annotations

import torch

from hub_cutinit.heads import MLPHead
from hub_cutinit.losses import NTXentLoss
from hub_cutinit.methods.base import COMMON_DEFAULTS, SSLModel, SSLOutput
from hub_cutinit.registry import register_method

__all__ = ["SimCLR"]


@register_method
class SimCLR(SSLModel):
    """SimCLR with the paper's CIFAR head ``Linear(D→128) → ReLU → Linear(128→128)``, no BN."""

    name = "simclr"
    display_name = "SimCLR"
    family = "contrastive"
    paper_c = 3.0
    defaults = {
        **COMMON_DEFAULTS,
        "c": 3.0,
        "weight_decay": 1e-6,
        "optimizer": "sgd",
        "nesterov": False,  # the paper's SimCLR and MoCo v2 use plain momentum
        "base_lr": 0.3,
        "temperature": 0.5,
        "proj_hidden_dim": 128,
        "proj_dim": 128,
        "head_batch_norm": False,
    }
    presets = {
        "paper": {},
        "cpu": {},  # the paper's CIFAR head is already small
        "tiny": {"proj_hidden_dim": 32, "proj_dim": 16},
    }
    head_names = ("projector",)

    def build_heads(self, num_features: int) -> None:
        hp = self.hparams
        self.projector = MLPHead(
            [num_features, hp["proj_hidden_dim"], hp["proj_dim"]], batch_norm=hp["head_batch_norm"]
        )
        self.criterion = NTXentLoss(hp["temperature"])

    def compute(
        self, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> SSLOutput:
        feats = self.backbone(torch.cat(global_views))
        z = self.projector(feats)
        z0, z1 = z.chunk(2)
        return SSLOutput(self.criterion(z0, z1), {"backbone": feats, "projection": z})
