"""BYOL (Grill et al., 2020) and SimSiam (Chen & He, 2021): predict one view from the other.

Both use the paper's heads (PAPER §7): projector ``3 × [Linear → BN]`` 512→2048→2048→2048
with ReLU between, predictor ``Linear(2048→512) → BN → ReLU → Linear(512→2048)`` and the
symmetric negative cosine with stop-gradient. BYOL's targets come from an EMA teacher,
SimSiam's from the student itself.

Example:
    >>> import torch
    >>> from hub_cutinit import create_ssl_model
    >>> model = create_ssl_model("byol", "resnet18", proj_hidden_dim=64, proj_dim=32,
    ...                          pred_hidden_dim=16)
    >>> model.cut_init_c, model.teacher is not None
    (9.0, True)
"""

from __future__ import annotations

import torch

from hub_cutinit.heads import MLPHead
from hub_cutinit.losses import symmetric_negative_cosine
from hub_cutinit.methods.base import COMMON_DEFAULTS, SSLModel, SSLOutput
from hub_cutinit.registry import register_method

__all__ = ["BYOL", "SimSiam"]


_PREDICTIVE_DEFAULTS = {
    **COMMON_DEFAULTS,
    "c": 9.0,
    "weight_decay": 5e-4,
    "optimizer": "sgd",
    "base_lr": 0.06,
    "proj_hidden_dim": 2048,
    "proj_dim": 2048,
    "pred_hidden_dim": 512,
    "head_batch_norm": True,
}
_PREDICTIVE_PRESETS = {
    "paper": {},
    "cpu": {"proj_hidden_dim": 1024, "proj_dim": 256, "pred_hidden_dim": 256},
    "tiny": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 8},
}


class _PredictiveMethod(SSLModel):
    family = "non-contrastive"
    paper_c = 9.0
    presets = _PREDICTIVE_PRESETS
    head_names = ("projector", "predictor")

    def build_heads(self, num_features: int) -> None:
        hp = self.hparams
        bn = bool(hp["head_batch_norm"])
        hidden, out = hp["proj_hidden_dim"], hp["proj_dim"]
        self.projector = MLPHead(
            [num_features, hidden, hidden, out], batch_norm=bn, last_batch_norm=bn
        )
        self.predictor = MLPHead([out, hp["pred_hidden_dim"], out], batch_norm=bn)

    def targets(self, views: torch.Tensor, student_projection: torch.Tensor) -> torch.Tensor:
        """The stop-gradient targets of both views, concatenated."""
        raise NotImplementedError

    def compute(
        self, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> SSLOutput:
        views = torch.cat(global_views)
        feats = self.backbone(views)
        z = self.projector(feats)
        p = self.predictor(z)
        p0, p1 = p.chunk(2)  # GradScale sits on the predictor's output
        t0, t1 = self.targets(views, z).chunk(2)
        loss = symmetric_negative_cosine(p0, p1, t0, t1)
        return SSLOutput(loss, {"backbone": feats, "projection": z, "prediction": p})


@register_method
class BYOL(_PredictiveMethod):
    """BYOL: targets from an EMA teacher (backbone + projector), momentum 0.99 → 1.

    ``momentum_schedule="constant"`` keeps the momentum at 0.99, as the paper's runs do.
    """

    name = "byol"
    display_name = "BYOL"
    defaults = {**_PREDICTIVE_DEFAULTS, "momentum": 0.99, "momentum_schedule": "cosine"}
    teacher_parts = ("backbone", "projector")

    @torch.no_grad()
    def targets(self, views: torch.Tensor, student_projection: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        return self.teacher["projector"](self.teacher["backbone"](views))


@register_method
class SimSiam(_PredictiveMethod):
    """SimSiam: targets are the student's own projections under stop-gradient."""

    name = "simsiam"
    display_name = "SimSiam"
    defaults = dict(_PREDICTIVE_DEFAULTS)

    def targets(self, views: torch.Tensor, student_projection: torch.Tensor) -> torch.Tensor:
        return student_projection.detach()
