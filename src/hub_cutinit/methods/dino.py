"""DINO (Caron et al., 2021): self-distillation with a centred, sharpened EMA teacher.

Default c = 9. DINO has no negatives: like BYOL it pulls a student towards an EMA teacher and
avoids collapse by other means (centering and sharpening), so it belongs to the
non-contrastive family, for which the paper recommends c = 9. Its cosine geometry sits in the
head's l2-normalised bottleneck: the logits are cosines between the bottleneck ``z`` and the
prototypes, so the gradient reaching ``z`` carries the ``1/‖z‖`` factor of PAPER §1, and cutting
the MLP (and backbone) shrinks ``‖z‖``. The prototypes' magnitude is fixed at 1 by design and
is left untouched by the cut (see :class:`hub_cutinit.heads.DINOHead`). On ViT backbones the
cut also shrinks attention logits by about ``c⁴`` (see :func:`hub_cutinit.cut_init`'s notes);
``cut_scope="heads"`` or c = 3 are the conservative choices there.

Example:
    >>> import torch
    >>> from hub_cutinit import create_ssl_model
    >>> model = create_ssl_model("dino", "resnet18", head_out_dim=64, head_hidden_dim=32,
    ...                          head_bottleneck_dim=16, num_local_views=2)
    >>> views = [torch.randn(2, 3, 32, 32)] * 2 + [torch.randn(2, 3, 16, 16)] * 2
    >>> sorted(model(views).embeddings)
    ['backbone', 'projection']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from hub_cutinit.heads import DINOHead
from hub_cutinit.losses import DINOLoss
from hub_cutinit.methods.base import COMMON_DEFAULTS, RunSpec, SSLModel, SSLOutput, ViewSpec
from hub_cutinit.registry import register_method

__all__ = ["DINO"]


@register_method
class DINO(SSLModel):
    """DINO with a 3-layer GELU head, bottleneck 256 and 65536 weight-normalised prototypes."""

    name = "dino"
    display_name = "DINO"
    family = "non-contrastive"
    paper_c = 9.0
    defaults = {
        **COMMON_DEFAULTS,
        "c": 9.0,
        "weight_decay": 0.04,
        "optimizer": "adamw",
        "base_lr": 5e-4,
        "head_hidden_dim": 2048,
        "head_bottleneck_dim": 256,
        "head_out_dim": 65536,
        "head_batch_norm": False,
        "momentum": 0.996,
        "momentum_schedule": "cosine",
        "teacher_temp": 0.04,
        "warmup_teacher_temp": 0.04,
        "student_temp": 0.1,
        "center_momentum": 0.9,
        "num_local_views": 6,
    }
    presets = {
        "paper": {},
        "cpu": {"head_out_dim": 4096, "head_hidden_dim": 1024, "num_local_views": 2},
        "tiny": {
            "head_out_dim": 32,
            "head_hidden_dim": 16,
            "head_bottleneck_dim": 8,
            "num_local_views": 2,
        },
    }
    head_names = ("head",)
    teacher_parts = ("backbone", "head")
    grad_scale_at = "head.mlp"  # the raw bottleneck, before the l2 normalisation

    #: fp16 is refused from this c on: the bottleneck norm (~1e-4 at c = 9) underflows.
    FP16_MAX_C = 9.0

    @classmethod
    def check_run(cls, run: RunSpec) -> list[str]:
        """Refuse fp16 at ``c >= 9``: the l2-normalised bottleneck has a norm near 1e-4 there,
        whose squares underflow fp16 (smallest normal 6e-5).

        Example:
            >>> DINO.check_run(RunSpec(c=9.0, mixed_precision="fp16"))
            Traceback (most recent call last):
            ...
            ValueError: --mixed-precision fp16 with DINO at c=9: the head's bottleneck norm (~1e-4) underflows in fp16. Use --mixed-precision bf16 (the CUDA default) or a smaller --c.
            >>> DINO.check_run(RunSpec(c=3.0, mixed_precision="fp16"))
            []
        """
        messages = super().check_run(run)
        if run.mixed_precision == "fp16" and run.c >= cls.FP16_MAX_C:
            raise ValueError(
                f"--mixed-precision fp16 with DINO at c={run.c:g}: the head's bottleneck norm "
                "(~1e-4) underflows in fp16. Use --mixed-precision bf16 (the CUDA default) or a "
                "smaller --c."
            )
        return messages

    def build_heads(self, num_features: int) -> None:
        hp = self.hparams
        self.head = DINOHead(
            num_features,
            out_dim=hp["head_out_dim"],
            hidden_dim=hp["head_hidden_dim"],
            bottleneck_dim=hp["head_bottleneck_dim"],
            batch_norm=hp["head_batch_norm"],
        )
        self.criterion = DINOLoss(
            hp["head_out_dim"],
            teacher_temp=hp["teacher_temp"],
            warmup_teacher_temp=hp["warmup_teacher_temp"],
            student_temp=hp["student_temp"],
            center_momentum=hp["center_momentum"],
        )

    @classmethod
    def view_spec(cls, hparams: Mapping[str, Any] | None = None) -> ViewSpec:
        """Multi-crop: global crops of scale (0.4, 1), local crops of scale (0.05, 0.4)."""
        return dataclasses.replace(super().view_spec(hparams), global_scale=(0.4, 1.0))

    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features and the head's bottleneck (the ``"projection"``), no prototypes."""
        feats = self.backbone(images)
        return {"backbone": feats, "projection": self.head.bottleneck(feats)}

    def _student(
        self, views: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.backbone(torch.cat(views))
        z = self.head.bottleneck(feats)
        logits = self.head.last_layer(torch.nn.functional.normalize(z, dim=-1))
        return feats, z, logits

    def compute(
        self, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> SSLOutput:
        feats_g, z_g, out_g = self._student(global_views)
        feats, zs, outs = [feats_g], [z_g], list(out_g.chunk(len(global_views)))
        if local_views:
            feats_l, z_l, out_l = self._student(local_views)
            feats.append(feats_l)
            zs.append(z_l)
            outs.extend(out_l.chunk(len(local_views)))
        assert self.teacher is not None
        with torch.no_grad():
            teacher_out = self.teacher["head"](self.teacher["backbone"](torch.cat(global_views)))
        loss = self.criterion(outs, list(teacher_out.chunk(len(global_views))))
        return SSLOutput(loss, {"backbone": torch.cat(feats), "projection": torch.cat(zs)})

    def update_teacher(self, progress: float) -> float | None:
        """EMA update of the teacher; also advances the teacher-temperature warm-up."""
        self.criterion.progress = float(progress)
        return super().update_teacher(progress)

    def on_step_end(self, progress: float) -> dict[str, float]:
        """The EMA update and the teacher-temperature schedule; logs both."""
        logs = super().on_step_end(progress)  # calls update_teacher, which sets the progress
        return {**logs, "teacher_temp": float(self.criterion.current_teacher_temp())}
