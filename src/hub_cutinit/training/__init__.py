"""Training shared by every recipe: config and flags, the Accelerate loop, checkpoints.

Example::

    from hub_cutinit.training import TrainConfig, train
    train(TrainConfig(method="simclr", max_steps=10, batch_size=32, output_dir="/tmp/run"))
"""

from hub_cutinit.training.checkpoint import (
    DiskFullError,
    OutputDirLockedError,
    latest_checkpoint,
)
from hub_cutinit.training.config import TrainConfig, build_parser, parse_args
from hub_cutinit.training.loop import NonFiniteLossError, main, train
from hub_cutinit.training.record import RunRecord, TrainerState
from hub_cutinit.training.trainer import LostProcessError, Trainer

__all__ = [
    "DiskFullError",
    "LostProcessError",
    "NonFiniteLossError",
    "OutputDirLockedError",
    "RunRecord",
    "TrainConfig",
    "Trainer",
    "TrainerState",
    "build_parser",
    "latest_checkpoint",
    "main",
    "parse_args",
    "train",
]
