"""The one-call entry points: ``train(cfg)`` and the recipes' ``main(method, argv)``.

The work is done by :class:`hub_cutinit.training.trainer.Trainer`; both accept callbacks.

Example (a few steps on the built-in dataset)::

    from hub_cutinit.training import TrainConfig, train
    result = train(TrainConfig(method="byol", max_steps=5, batch_size=16, output_dir="/tmp/x"))
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from accelerate import PartialState

from hub_cutinit.training.arguments import TrainConfig, parse_args
from hub_cutinit.training.callbacks import TrainerCallback
from hub_cutinit.training.preemption import EXIT_PREEMPTED
from hub_cutinit.training.report import print_summary
from hub_cutinit.training.trainer import Trainer

__all__ = ["main", "train"]


def train(cfg: TrainConfig, callbacks: Iterable[TrainerCallback] = ()) -> dict[str, Any]:
    """Train ``cfg.method`` with cut-initialisation; return the run summary.

    Writes checkpoints under ``cfg.output_dir/checkpoints`` and the final model in timm's
    format (``config.json``, ``model.safetensors``, heads, card) in ``cfg.output_dir``.
    ``callbacks`` (:class:`~hub_cutinit.training.TrainerCallback`) run after the built-in ones.
    """
    return Trainer(cfg, callbacks=callbacks).train()


def main(
    method: str | None = None,
    argv: Sequence[str] | None = None,
    callbacks: Iterable[TrainerCallback] = (),
) -> dict[str, Any]:
    """Entry point of ``recipes/<method>.py``: parse flags, train (with ``callbacks``), print
    the summary. A run preempted by SIGTERM / SIGUSR1 exits with code 75 after its checkpoint
    (:mod:`hub_cutinit.training.preemption`): rerun the same command with ``--resume auto``."""
    cfg = parse_args(method, argv)
    os.makedirs(cfg.output_dir, exist_ok=True)
    result = train(cfg, callbacks)
    if result.get("preempted"):
        sys.exit(EXIT_PREEMPTED)
    if PartialState().is_main_process:
        print_summary(result, cfg)
    return result
