"""Device defaults: the Accelerator, precision, memory format, TF32 and the checkpoint clock.

**Defaults by device** (CPU behaviour is unchanged; every choice is resolved into the
:class:`~hub_cutinit.training.state.RunRecord`):

- ``--mixed-precision``: ``bf16`` on CUDA, ``no`` on CPU.
- TF32 matmuls and convolutions and ``cudnn.benchmark``: on with CUDA.
- ``--channels-last``: on for convolutional backbones on CUDA, off otherwise.
- checkpoints: every ``--checkpoint-minutes 30`` on CUDA, at every epoch end on CPU.

``--checkpoint-every N`` (steps) wins over ``--checkpoint-minutes``; ``--checkpoint-minutes 0``
means "at epoch ends". The clock is read on logged steps only (``--log-every``), so a
time-based checkpoint comes at most ``log_every - 1`` steps late; the last step is always saved.

Example:
    >>> resolve_mixed_precision(None, "cuda"), resolve_mixed_precision(None, "cpu")
    ('bf16', 'no')
    >>> resolve_checkpointing(0, None, "cuda"), resolve_checkpointing(0, None, "cpu")
    ((0, 30.0), (0, 0.0))
"""

from __future__ import annotations

import ctypes
import os
import sys
from datetime import timedelta
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs
from torch import nn

__all__ = [
    "DEFAULT_CHECKPOINT_MINUTES",
    "build_accelerator",
    "enable_cuda_speedups",
    "is_conv_backbone",
    "resolve_channels_last",
    "resolve_checkpointing",
    "resolve_mixed_precision",
    "tune_cpu_allocator",
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


def build_accelerator(cfg: Any, accelerator: Accelerator | None = None) -> tuple[Accelerator, bool]:
    """The run's Accelerator (``accelerator`` when given) and whether TF32 was switched on.

    Without CUDA it runs on CPU: under ``accelerate launch --multi_gpu`` or torchrun this gives
    a gloo process group (MULTI_CPU) instead of a silent single process.
    """
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    accelerator = accelerator or Accelerator(
        cpu=device_type == "cpu",
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision, device_type),
        gradient_accumulation_steps=cfg.grad_accum_steps,
        log_with=cfg.log_with,
        project_dir=cfg.output_dir,
        kwargs_handlers=[
            # a dead peer otherwise hangs the others in a collective for torch's 30 min
            InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.collective_timeout)),
            # No per-step broadcast of rank 0's buffers: no training forward reads them.
            # The MoCo queue (+ pointer) and the DINO centre are filled from all-gathered /
            # all-reduced tensors, so they are identical on every rank. BatchNorm (student and
            # teacher) normalises with batch statistics while training (SyncBN: global ones on
            # multi-GPU, so even the running statistics agree); the running statistics are read
            # only in evaluation, from rank 0's model (broadcast before a split extraction),
            # which is what saves and checkpoints hold.
            DistributedDataParallelKwargs(broadcast_buffers=False),
        ],
    )
    tf32 = accelerator.device.type == "cuda" and enable_cuda_speedups()
    if accelerator.device.type == "cpu":
        tune_cpu_allocator()
        if accelerator.mixed_precision == "fp16":
            raise ValueError("fp16 autocast does nothing on CPU; use --mixed-precision bf16.")
    return accelerator, tf32


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of handing it back to the OS after each step.

    With glibc's defaults the ~90 MB of gradients that ``zero_grad(set_to_none=True)`` frees at
    the end of a BYOL resnet18 step (and other large temporaries) are trimmed from the heap or
    unmapped, then page-faulted in again by the next backward: ~22k minor faults per step, 5-8 %
    of the step time on CPU. Three settings stop it: no trimming of the heap below 1 GiB free,
    the largest mmap threshold glibc allows (32 MiB), and no mmap at all (``M_MMAP_MAX=0``):
    blocks above 32 MiB (the convolution backward's im2col buffers, 38-76 MB each on a resnet18
    at 32 px, batch 128) were otherwise mapped and unmapped on every step, 16-17k page faults
    that cost a SimCLR / BYOL resnet18 step 3-6 % on a 2-core AMD EPYC VM. Process-wide; returns
    False (and does nothing) outside Linux/glibc or when the user set a ``MALLOC_*`` variable.
    The price: the resident size no longer shrinks after a peak, which a training process does
    not need.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl)
        return False
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4  # from glibc's malloc.h
    return (
        bool(mallopt(m_mmap_threshold, 32 << 20))
        and bool(mallopt(m_trim_threshold, 1 << 30))
        and bool(mallopt(m_mmap_max, 0))
    )
