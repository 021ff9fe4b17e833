"""MoCo v2 (Chen et al., 2020): InfoNCE against a momentum encoder and a queue of keys.

The loss is symmetrised over the two views and both views' keys, gathered from every process,
are enqueued. Shuffle-BN is not implemented: with BatchNorm backbones on several processes
use SyncBatchNorm (the trainer converts on multi-GPU runs).

Example:
    >>> import torch
    >>> from hub_cutinit import create_ssl_model
    >>> model = create_ssl_model("moco", "resnet18", queue_size=64)
    >>> model.queue.shape
    torch.Size([64, 128])
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from hub_cutinit.distributed import gather_no_grad
from hub_cutinit.heads import MLPHead
from hub_cutinit.losses import moco_infonce
from hub_cutinit.methods.base import COMMON_DEFAULTS, RunSpec, SSLModel, SSLOutput
from hub_cutinit.registry import register_method

__all__ = ["MoCo"]


@register_method
class MoCo(SSLModel):
    """MoCo v2: projector ``Linear(D→2048) → ReLU → Linear(2048→128)``, τ = 0.2, queue."""

    name = "moco"
    display_name = "MoCo"
    family = "contrastive"
    paper_c = 3.0
    defaults = {
        **COMMON_DEFAULTS,
        "c": 3.0,
        "weight_decay": 5e-4,
        "optimizer": "sgd",
        "nesterov": False,  # the paper's SimCLR and MoCo v2 use plain momentum
        "base_lr": 0.06,
        "temperature": 0.2,
        "proj_hidden_dim": 2048,
        "proj_dim": 128,
        "head_batch_norm": False,
        "momentum": 0.99,
        "momentum_schedule": "cosine",
        "queue_size": 4096,
    }
    presets = {
        "paper": {},
        "cpu": {"proj_hidden_dim": 512, "queue_size": 1024},
        "tiny": {"proj_hidden_dim": 32, "proj_dim": 16, "queue_size": 32},
    }

    # buffers registered in build_heads: the negatives' queue and its write position
    queue: torch.Tensor
    queue_ptr: torch.Tensor

    head_names = ("projector",)
    teacher_parts = ("backbone", "projector")

    def build_heads(self, num_features: int) -> None:
        hp = self.hparams
        if int(hp["queue_size"]) < 1:
            raise ValueError(f"queue_size must be >= 1, got {hp['queue_size']}.")
        self.projector = MLPHead(
            [num_features, hp["proj_hidden_dim"], hp["proj_dim"]], batch_norm=hp["head_batch_norm"]
        )
        self.register_buffer(
            "queue", F.normalize(torch.randn(int(hp["queue_size"]), int(hp["proj_dim"])), dim=1)
        )
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    #: The queue should hold at least this many optimiser steps of keys.
    MIN_QUEUE_STEPS = 4

    @classmethod
    def check_run(cls, run: RunSpec) -> list[str]:
        """Warn when the queue holds fewer than :attr:`MIN_QUEUE_STEPS` steps of keys: each
        step enqueues both views' keys from every process, ``2 × global_batch``, so at 8 × 256
        the default 4,096-key queue holds only the previous step's keys. Skips while the global
        batch is not known.

        Example:
            >>> run = RunSpec(c=3.0, global_batch_size=64, hparams={"queue_size": 64})
            >>> "queue_size=512" in MoCo.check_run(run)[0]
            True
            >>> MoCo.check_run(RunSpec(c=3.0, global_batch_size=512))  # 4096 = 4 × 2 × 512
            []
        """
        messages = super().check_run(run)
        batch = run.global_batch_size
        if batch is None:
            return messages
        size, per_step = int(cls.run_hparams(run)["queue_size"]), 2 * batch
        if size < cls.MIN_QUEUE_STEPS * per_step:
            wanted = 1 << math.ceil(math.log2(cls.MIN_QUEUE_STEPS * per_step))
            messages.append(
                f"MoCo's queue ({size:,} keys) holds {size / per_step:.2g} step(s) of keys at a "
                f"global batch of {batch:,} (2 × {batch:,} keys enqueued per step); fewer than "
                f"{cls.MIN_QUEUE_STEPS} steps makes the negatives few and correlated. Raise it, "
                f"e.g. --set queue_size={wanted}."
            )
        return messages

    def check_global_batch(self, global_batch: int) -> str | None:
        """Deprecated alias of :meth:`check_run`: warn (``UserWarning``) and return the queue
        warning for ``global_batch``, or ``None``.

        Example:
            >>> import warnings
            >>> from hub_cutinit import create_ssl_model
            >>> model = create_ssl_model("moco", "test_resnet", queue_size=64, proj_dim=8,
            ...                          proj_hidden_dim=8)
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")
            ...     "queue_size=512" in model.check_global_batch(64)
            True
        """
        hparams = {**self.hparams, "queue_size": int(self.queue.shape[0])}
        run = RunSpec(c=self.cut_factor, global_batch_size=int(global_batch), hparams=hparams)
        messages = self.check_run(run)
        for message in messages:
            warnings.warn(message, UserWarning, stacklevel=2)
        return messages[0] if messages else None

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = F.normalize(gather_no_grad(keys.float()), dim=1)[: self.queue.shape[0]]
        index = (
            self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)
        ) % self.queue.shape[0]
        self.queue[index] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.queue.shape[0])

    def compute(
        self, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> SSLOutput:
        feats = self.backbone(torch.cat(global_views))
        z = self.projector(feats)
        q0, q1 = z.chunk(2)
        assert self.teacher is not None
        with torch.no_grad():
            keys = self.teacher["projector"](self.teacher["backbone"](torch.cat(global_views)))
        k0, k1 = keys.chunk(2)
        t = float(self.hparams["temperature"])
        queue = self.queue.clone()  # the in-place enqueue below must not touch the graph
        loss = 0.5 * (moco_infonce(q0, k1, queue, t) + moco_infonce(q1, k0, queue, t))
        if self.training:
            self._enqueue(keys)
        return SSLOutput(loss, {"backbone": feats, "projection": z})
