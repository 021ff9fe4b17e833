"""GPU-fast defaults and the host-sync-free step statistics of the Trainer.

**Defaults by device** (CPU behaviour is unchanged; every choice is resolved into the
:class:`~hub_cutinit.training.record.RunRecord`):

- ``--mixed-precision``: ``bf16`` on CUDA, ``no`` on CPU.
- TF32 matmuls and convolutions and ``cudnn.benchmark``: on with CUDA.
- ``--channels-last``: on for convolutional backbones on CUDA, off otherwise.
- checkpoints: every ``--checkpoint-minutes 30`` on CUDA, at every epoch end on CPU.

``--checkpoint-every N`` (steps) wins over ``--checkpoint-minutes``; ``--checkpoint-minutes 0``
means "at epoch ends". The clock is read on logged steps only (``--log-every``), so a
time-based checkpoint comes at most ``log_every - 1`` steps late; the last step is always saved.

**Step statistics without host syncs** (:class:`StepStatistics`): each step adds its norm
means, its loss and a non-finite flag to tensors on the device; nothing is copied to the host
and no collective runs until a logged step reads them with *one* fused all-reduce.

Example:
    >>> resolve_mixed_precision(None, "cuda"), resolve_mixed_precision(None, "cpu")
    ('bf16', 'no')
    >>> resolve_checkpointing(0, None, "cuda"), resolve_checkpointing(0, None, "cpu")
    ((0, 30.0), (0, 0.0))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_CHECKPOINT_MINUTES",
    "StepStatistics",
    "check_fp16_safe",
    "enable_cuda_speedups",
    "is_conv_backbone",
    "resolve_channels_last",
    "resolve_checkpointing",
    "resolve_mixed_precision",
]

#: Minutes between time-based checkpoints on CUDA when neither checkpoint flag is given.
DEFAULT_CHECKPOINT_MINUTES = 30.0


def resolve_mixed_precision(requested: str | None, device_type: str) -> str:
    """``--mixed-precision``: the flag, else ``bf16`` on CUDA and ``no`` elsewhere."""
    if requested is not None:
        return requested
    return "bf16" if device_type == "cuda" else "no"


def is_conv_backbone(module: nn.Module) -> bool:
    """True for convolutional networks (more than one ``Conv2d``: a ViT's patch embedding alone
    does not count), which run faster in channels-last memory format on CUDA."""
    return sum(isinstance(m, nn.Conv2d) for m in module.modules()) > 1


def resolve_channels_last(requested: bool | None, device_type: str, backbone: nn.Module) -> bool:
    """``--channels-last``: the flag, else on for convolutional backbones on CUDA."""
    if requested is not None:
        return requested
    return device_type == "cuda" and is_conv_backbone(backbone)


def resolve_checkpointing(every: int, minutes: float | None, device_type: str) -> tuple[int, float]:
    """``(checkpoint_every, checkpoint_minutes)``: steps win; no flag: 30 min on CUDA, epoch
    ends on CPU (``(0, 0.0)``)."""
    if every:
        return every, 0.0
    if minutes is not None:
        return 0, float(minutes)
    return 0, DEFAULT_CHECKPOINT_MINUTES if device_type == "cuda" else 0.0


def enable_cuda_speedups() -> bool:
    """TF32 matmuls and convolutions, and cudnn's autotuner (fixed input sizes). Returns
    whether they were switched on (only with CUDA)."""
    if not torch.cuda.is_available():
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return True


def check_fp16_safe(method: str, c: float, mixed_precision: str | None) -> None:
    """Refuse a precision the method cannot train in (DINO: fp16 at ``c >= 9``, its bottleneck
    norm underflows). Kept for callers of old: the method's :meth:`check_run` decides, and its
    warnings are dropped here (call :func:`hub_cutinit.registry.check_run` to get them)."""
    from hub_cutinit.methods.base import RunSpec
    from hub_cutinit.registry import check_run

    check_run(method, RunSpec(c=float(c), mixed_precision=mixed_precision))


class StepStatistics:
    """Loss, mean norms and the non-finite flag of every step, summed on the device.

    :meth:`add` queues only device kernels (no host sync, no collective); :meth:`read` sums
    them over processes with one all-reduce and reads them with one host copy; :meth:`first_bad`
    (a collective) says which step first had a non-finite loss or gradient.

    Example:
        >>> stats = StepStatistics(["z"], torch.device("cpu"))
        >>> stats.add(torch.tensor([2.0]), torch.tensor(1.0), torch.tensor(0.0), step=1)
        >>> stats.add(torch.tensor([4.0]), torch.tensor(3.0), torch.tensor(0.0), step=2)
        >>> stats.read(None)[:2]
        ({'z': 3.0}, 2.0)
    """

    def __init__(self, names: Sequence[str], device: torch.device) -> None:
        self.names = list(names)
        self.device = device
        self.sums = torch.zeros(len(self.names) + 2, device=device)  # norms, loss, count
        self.bad = torch.zeros(3, device=device)  # count, first bad step, its loss
        self._one = torch.ones(1, device=device)

    def add(self, means: torch.Tensor, loss: torch.Tensor, found: torch.Tensor, step: int) -> None:
        """Add one step's norm means, loss and non-finite flag (0-d, 1 = bad)."""
        self.sums.add_(torch.cat([means.float(), loss.float().reshape(1), self._one]))
        found = found.reshape(())
        first = (self.bad[0] == 0) & (found > 0)
        step_t = torch.full((), float(step), device=self.device)
        self.bad.copy_(
            torch.stack(
                [
                    self.bad[0] + found,
                    torch.where(first, step_t, self.bad[1]),
                    torch.where(first, loss.float().reshape(()), self.bad[2]),
                ]
            )
        )

    def read(
        self, accelerator: Any, extra: Sequence[float] = ()
    ) -> tuple[dict[str, float], float, float, list[float]]:
        """``(mean norms, mean loss, non-finite steps, extra summed)`` over processes and the
        steps since the last read (one all-reduce, one host copy); resets the sums."""
        packed = torch.cat(
            [self.sums, self.bad[:1], torch.tensor(list(extra), device=self.device).float()]
        )
        if accelerator is not None:
            packed = accelerator.reduce(packed, reduction="sum")
        values = packed.tolist()  # the one host sync of a logged step
        n = len(self.names)
        count = max(values[n + 1], 1.0)
        norms = {k: v / count for k, v in zip(self.names, values[:n], strict=True)}
        self.sums.zero_()
        return norms, values[n] / count, values[n + 2], values[n + 3 :]

    def any_bad(self, accelerator: Any) -> bool:
        """Whether any process saw a non-finite step (a collective and a host sync)."""
        flag = self.bad[:1].clone()
        if accelerator is not None:
            flag = accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    def first_bad(self, accelerator: Any) -> tuple[int, float]:
        """The first non-finite step over processes and its loss (a collective)."""
        mine = torch.stack([torch.where(self.bad[0] > 0, self.bad[1], math.inf), self.bad[2]])
        rows = accelerator.gather(mine.reshape(1, 2)) if accelerator is not None else mine[None]
        step, loss = min(rows.tolist(), key=lambda r: r[0])
        return int(step), loss
