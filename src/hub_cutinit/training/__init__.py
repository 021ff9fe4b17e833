"""Training shared by every recipe: settings and flags, the Trainer and its callbacks.

Public surface (everything else in :mod:`hub_cutinit.training` is internal):

- :class:`TrainConfig`, :func:`parse_args`, :func:`build_parser`: the settings, declared once
  (``arguments.py``).
- :func:`train`, :func:`main`: one call to train (``entry_points.py``).
- :class:`Trainer` and :class:`TrainerCallback` / :class:`TrainerControl`: extend a run
  without subclassing (``trainer.py``, ``callbacks.py``, ``default_callbacks.py``).
- :class:`RunRecord`, :class:`TrainerState`: the resolved settings and the moving state
  (``state.py``).

Example::

    from hub_cutinit.training import TrainConfig, train
    train(TrainConfig(method="simclr", max_steps=10, batch_size=32, output_dir="/tmp/run"))
"""

from hub_cutinit.training.arguments import TrainConfig, build_parser, parse_args
from hub_cutinit.training.callbacks import TrainerCallback, TrainerControl
from hub_cutinit.training.checkpoint import (
    DiskFullError,
    OutputDirLockedError,
    latest_checkpoint,
)
from hub_cutinit.training.entry_points import main, train
from hub_cutinit.training.failures import LostProcessError, NonFiniteLossError
from hub_cutinit.training.state import RunRecord, TrainerState
from hub_cutinit.training.trainer import Trainer

__all__ = [
    "DiskFullError",
    "LostProcessError",
    "NonFiniteLossError",
    "OutputDirLockedError",
    "RunRecord",
    "TrainConfig",
    "Trainer",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
    "build_parser",
    "latest_checkpoint",
    "main",
    "parse_args",
    "train",
]
