"""Optimiser and learning-rate schedule from a method's defaults (timm's factories).

Example:
    >>> import torch
    >>> opt, sched = build_optimizer(torch.nn.Linear(2, 2), "sgd", lr=0.1, weight_decay=5e-4,
    ...                              total_steps=100, warmup_steps=10)
    >>> sched.step_update(10); round(opt.param_groups[0]["lr"], 4)
    0.1
"""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

__all__ = ["build_optimizer"]


def build_optimizer(
    model: torch.nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float,
    total_steps: int,
    warmup_steps: int,
    momentum: float = 0.9,
) -> tuple[torch.optim.Optimizer, CosineLRScheduler]:
    """SGD / LARS / AdamW over the trainable parameters, warm-up then cosine decay per step.

    Weight decay λ applies to every trainable parameter, biases and normalisation included:
    the paper's norm equilibrium (PAPER §2) concerns all weights.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"momentum": momentum} if name in ("sgd", "lars") else {}
    optimizer = create_optimizer_v2(
        params, opt=name, lr=lr, weight_decay=weight_decay, filter_bias_and_bn=False, **kwargs
    )
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps),
        warmup_t=warmup_steps,
        warmup_lr_init=lr * 1e-3 if warmup_steps else 0.0,
        warmup_prefix=False,
        t_in_epochs=False,
    )
    return optimizer, scheduler
