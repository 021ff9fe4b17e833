"""MoCo v3 (Chen, Xie & He, 2021, arXiv:2104.02057): symmetric InfoNCE against a momentum encoder.

The query is the student's prediction ``q = predictor(projector(backbone(x)))``, the key the
momentum encoder's projection ``k = projector_m(backbone_m(x'))``; the negatives are the other
images' keys of the **global** batch (no queue). The loss is the paper's
``ctr(q1, k2) + ctr(q2, k1)`` with ``ctr(q, k) = 2τ · CE(q·kᵀ / τ, positives)`` on l2-normalised
vectors (the authors' ``builder.py``).

Defaults and where they come from:

* heads (the authors' code, ``facebookresearch/moco-v3`` ``builder.py``; solo-learn's
  ``mocov3.py`` does the same): every linear layer without bias, BatchNorm and ReLU after each
  hidden layer; the projector ends with ``BatchNorm1d(affine=False)``. On a ResNet the projector
  has 2 layers and the predictor 2 without a last BatchNorm; on a ViT the projector has 3 layers
  and the predictor 2, ending with ``BatchNorm1d(affine=False)`` too. ``head_style="auto"``
  picks ``"vit"`` for a backbone with a ``patch_embed`` (timm's transformers), else
  ``"resnet"``. Widths 4096 hidden, 256 out, predictor hidden 4096 (the paper, §4; solo-learn's
  CIFAR config ``mocov3.yaml``). The ViT trick of a frozen random patch projection is not
  applied.
* τ = 0.2 (the paper's ViT value; solo-learn's CIFAR ResNet config), EMA momentum 0.99 raised to
  1 on a cosine (the paper; solo-learn ``mocov3.yaml`` base_tau 0.99, final_tau 1.0);
* optimiser: LARS, base lr 0.3 per 256 images, weight decay λ = 1e-6, no Nesterov (solo-learn
  ``mocov3.yaml``; the paper's ResNet-50 uses LARS with 1.5e-6, its ViTs AdamW with 0.1). The
  trainer's LARS is timm's (trust coefficient 1e-3, no clipping), not solo-learn's.
* c = 3: MoCo v3 is contrastive and its loss sees only l2-normalised vectors, the setting of the
  paper's c = 3 for contrastive methods.

Distributed: each process's queries are scored against the keys of every process (gathered
without gradient: they come from the momentum encoder); the loss is the mean over this
process's queries, so DDP's averaging gives the 1-process gradient at the same global batch.

Example:
    >>> import torch
    >>> from hub_cutinit import create_ssl_model
    >>> from hub_cutinit.registry import get_preset
    >>> model = create_ssl_model("mocov3", "test_resnet", **get_preset("mocov3", "tiny"))
    >>> out = model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    >>> model.cut_init_c, sorted(out.embeddings), len(model.projector)
    (3.0, ['backbone', 'prediction', 'projection'], 5)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hub_cutinit.distributed import gather_no_grad, rank
from hub_cutinit.losses import fp32
from hub_cutinit.methods.barlow_twins import check_batch_statistics
from hub_cutinit.methods.base import COMMON_DEFAULTS, RunSpec, SSLModel, SSLOutput
from hub_cutinit.registry import register_method

__all__ = ["MoCoV3", "mocov3_infonce", "mocov3_mlp"]

HEAD_STYLES = ("auto", "resnet", "vit")


def mocov3_infonce(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """``2τ · CE(q · k_allᵀ / τ)``: each query's positive is its own image's key, the negatives
    every other key of the global batch (gathered from all processes, without gradient).

    Example:
        >>> import torch
        >>> q = torch.randn(4, 8)
        >>> bool(mocov3_infonce(q, q, 0.2) < mocov3_infonce(q, torch.randn(4, 8), 0.2))
        True
    """
    if query.ndim != 2 or query.shape != key.shape:
        raise ValueError(
            f"query and key must be 2-D of one shape, got {tuple(query.shape)} and "
            f"{tuple(key.shape)}."
        )
    with fp32(query):
        q = F.normalize(query.float(), dim=1)
        keys = F.normalize(gather_no_grad(key.detach().float()), dim=1)
        labels = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
        return F.cross_entropy(q @ keys.T / temperature, labels) * (2 * temperature)


def mocov3_mlp(
    num_layers: int,
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    *,
    batch_norm: bool = True,
    last_batch_norm: bool = True,
) -> nn.Sequential:
    """MoCo v3's MLP: bias-free linear layers, BN + ReLU after the hidden ones and an optional
    ``BatchNorm1d(affine=False)`` at the end.

    Example:
        >>> [type(m).__name__ for m in mocov3_mlp(2, 8, 16, 4)]
        ['Linear', 'BatchNorm1d', 'ReLU', 'Linear', 'BatchNorm1d']
    """
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if i == num_layers - 1 else hidden_dim
        layers.append(nn.Linear(d_in, d_out, bias=not batch_norm))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU()] if batch_norm else [nn.ReLU()]
        elif batch_norm and last_batch_norm:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


@register_method
class MoCoV3(SSLModel):
    """MoCo v3: projector + predictor, momentum encoder, τ = 0.2, negatives from the batch."""

    name = "mocov3"
    display_name = "MoCo v3"
    family = "contrastive"
    paper_c = 3.0
    defaults = {
        **COMMON_DEFAULTS,
        "c": 3.0,
        "weight_decay": 1e-6,
        "optimizer": "lars",
        "nesterov": False,
        "base_lr": 0.3,
        "temperature": 0.2,
        "proj_hidden_dim": 4096,
        "proj_dim": 256,
        "pred_hidden_dim": 4096,
        "head_batch_norm": True,
        "head_style": "auto",
        "momentum": 0.99,
        "momentum_schedule": "cosine",
    }
    presets = {
        "paper": {},
        "cpu": {"proj_hidden_dim": 1024, "pred_hidden_dim": 1024},
        "tiny": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32},
    }
    head_names = ("projector", "predictor")
    teacher_parts = ("backbone", "projector")

    @classmethod
    def check_run(cls, run: RunSpec) -> list[str]:
        """A global batch of at least 2 (each query needs a negative key).

        Example:
            >>> MoCoV3.check_run(RunSpec(c=3.0, global_batch_size=256))
            []
        """
        return super().check_run(run) + check_batch_statistics(cls.name, run)

    def validate_hparams(self) -> None:
        super().validate_hparams()
        if self.hparams.get("head_style") not in HEAD_STYLES:
            raise ValueError(
                f"head_style must be one of {list(HEAD_STYLES)}, got "
                f"{self.hparams.get('head_style')!r}."
            )
        if not float(self.hparams["temperature"]) > 0:
            raise ValueError(f"temperature must be > 0, got {self.hparams['temperature']}.")

    def resolved_head_style(self) -> str:
        """``"vit"`` or ``"resnet"``: the heads' layout (``head_style``, or guessed)."""
        style = str(self.hparams.get("head_style", "auto"))
        if style == "auto":
            return "vit" if hasattr(self.backbone, "patch_embed") else "resnet"
        return style

    def build_heads(self, num_features: int) -> None:
        hp = self.hparams
        vit = self.resolved_head_style() == "vit"
        bn = bool(hp["head_batch_norm"])
        self.projector = mocov3_mlp(
            3 if vit else 2, num_features, hp["proj_hidden_dim"], hp["proj_dim"], batch_norm=bn
        )
        self.predictor = mocov3_mlp(
            2,
            hp["proj_dim"],
            hp["pred_hidden_dim"],
            hp["proj_dim"],
            batch_norm=bn,
            last_batch_norm=vit,
        )

    def compute(
        self, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> SSLOutput:
        feats = [self.backbone(v) for v in global_views]
        z = [self.projector(f) for f in feats]
        q = [self.predictor(p) for p in z]  # GradScale sits on the predictor's output
        assert self.teacher is not None
        with torch.no_grad():
            k = [self.teacher["projector"](self.teacher["backbone"](v)) for v in global_views]
        t = float(self.hparams["temperature"])
        loss = mocov3_infonce(q[0], k[1], t) + mocov3_infonce(q[1], k[0], t)
        embeddings = {"backbone": torch.cat(feats), "projection": torch.cat(z)}
        return SSLOutput(loss, {**embeddings, "prediction": torch.cat(q)})
