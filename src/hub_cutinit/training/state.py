"""Typed run state: the resolved settings of a run, and everything that moves while it trains.

:class:`RunRecord` holds every setting of a run once, resolved: each
:class:`~hub_cutinit.training.arguments.TrainConfig` field declared with ``record=True`` (the
method's or the device's default replaced by the value used, the learning rate scaled by the
global batch), plus the quantities the run derives (family, schedule in steps, global batch).
``config.json``, the model card, the trackers, the end-of-run summary and the sweep tables all
read it, so they cannot disagree; a new setting reaches all of them without an edit here.

:class:`TrainerState` holds *all* the run's moving state: step, epoch, counters, evaluation
results, and the ``state_dict`` of every callback that keeps one (evaluation cadence,
monitor cadence, ...). It is what a checkpoint's ``trainer_state.json`` stores, so a resumed run
evaluates and checkpoints on the same steps as an uninterrupted one.

Example:
    >>> state = TrainerState(step=3, epoch=1)
    >>> TrainerState.from_dict(state.to_dict()) == state
    True
    >>> record = RunRecord(settings={"method": "byol", "c": 9.0}, family="non-contrastive")
    >>> record.c, record.to_dict()["family"]
    (9.0, 'non-contrastive')
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunRecord", "TrainerState"]


@dataclass(frozen=True)
class RunRecord:
    """Every resolved setting of one training run, plus what the run derives (read-only).

    ``record.lr`` (and any other setting) reads ``settings``; :meth:`to_dict` is the flat dict
    ``config.json`` and the card keep. The derived fields:

    Attributes:
        family: the method's family (contrastive, non-contrastive, redundancy-reduction, ...).
        backbone_kwargs: keyword arguments of the timm backbone (from the method's settings).
        base_lr: ``lr`` per 256 images of global batch (``lr × 256 / global_batch_size``).
        sgd_momentum: the optimiser's momentum (``None`` for adamw).
        warmup_steps / cosine_steps / total_steps: the schedule in optimiser steps;
            ``cosine_steps >= total_steps`` (a run may be the start of a longer schedule).
        steps_per_epoch: optimiser steps in one pass over this process's shard.
        ema_momentum: the teacher's EMA momentum (``None`` for methods without one).
        num_processes / global_batch_size: the launch (``batch × processes × accumulation``).
        num_machines: machines the processes ran on (``num_processes / LOCAL_WORLD_SIZE``).
        tf32: TF32 matmuls and ``cudnn.benchmark`` (CUDA only).
        eval_source: where the kNN numbers come from, in words.
        eval_held_out_images: the size of the held-out slice (``None`` when there is none).
    """

    settings: Mapping[str, Any] = field(default_factory=dict)
    family: str = ""
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    base_lr: float | None = None
    sgd_momentum: float | None = None
    warmup_steps: int = 0
    cosine_steps: int = 0
    total_steps: int = 0
    steps_per_epoch: int | None = None
    ema_momentum: float | None = None
    num_processes: int = 1
    num_machines: int = 1
    global_batch_size: int = 0
    tf32: bool = False
    eval_source: str = ""
    eval_held_out_images: int | None = None

    def __getattr__(self, name: str) -> Any:
        """A setting: ``record.lr``, ``record.c``, ``record.mixed_precision`` ..."""
        settings = self.__dict__.get("settings")
        if settings is not None and name in settings:
            return settings[name]
        raise AttributeError(f"{type(self).__name__} has no field or setting {name!r}")

    @classmethod
    def derived_names(cls) -> list[str]:
        """The derived fields (everything but ``settings``)."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "settings"]

    def to_dict(self) -> dict[str, Any]:
        """A flat, JSON-serialisable copy: the settings, then the derived fields."""
        derived = {name: getattr(self, name) for name in self.derived_names()}
        return copy.deepcopy({**dict(self.settings), **derived})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], settings: set[str] | None = None) -> RunRecord:
        """Rebuild from :meth:`to_dict`; ``settings``: the names that are settings (default:
        every key that is not a derived field)."""
        derived = set(cls.derived_names())
        kept = {k: v for k, v in values.items() if k not in derived}
        if settings is not None:
            kept = {k: v for k, v in kept.items() if k in settings}
        return cls(settings=kept, **{k: v for k, v in values.items() if k in derived})


@dataclass
class TrainerState:
    """All the state that changes during training; saved in every checkpoint.

    ``callbacks`` holds the ``state_dict()`` of every callback that has one, by callback name.
    """

    step: int = 0
    epoch: int = 0
    images_seen: int = 0
    corrupt_images: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    last_eval_step: int = -1
    epoch_start_images: int = 0  # images_seen when the current epoch's stream (re)started
    knn: list[dict[str, Any]] = field(default_factory=list)
    baselines: dict[str, float] = field(default_factory=dict)
    convergence: list[dict[str, Any]] = field(default_factory=list)
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainerState:
        """Rebuild from a checkpoint's state (keys of other versions are ignored)."""
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})
