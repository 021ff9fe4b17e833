"""Typed run state: the resolved hyper-parameters of a run, and the counters that move.

:class:`RunRecord` holds every hyper-parameter of a run once, resolved (the method's default
replaced by the flag where one was given, the learning rate scaled by the global batch, the
schedule in steps). ``config.json``, the model card, the trackers, the end-of-run summary and the
sweep tables all read it, so they cannot disagree. :class:`TrainerState` holds what changes
while training (step, epoch, evaluations, counters) and is what a checkpoint stores, like the
HF Trainer's ``TrainerState``.

Example:
    >>> state = TrainerState(step=3, epoch=1)
    >>> TrainerState.from_dict(state.to_dict()) == state
    True
    >>> sorted(RunRecord.__dataclass_fields__)[:3]
    ['backbone', 'backbone_kwargs', 'base_lr']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunRecord", "TrainerState"]


@dataclass(frozen=True)
class RunRecord:
    """Every resolved hyper-parameter of one training run (read-only once built).

    Attributes:
        lr: the peak learning rate actually used (after batch scaling).
        base_lr: ``lr`` per 256 images of global batch (``lr × 256 / global_batch_size``).
        warmup_steps / cosine_steps: the linear warm-up and the cosine horizon, in optimiser
            steps; ``cosine_steps >= total_steps`` (a run may be the start of a longer schedule).
        normalized_lr_scale: the learning-rate factor of the weights that a BatchNorm
            normalises (1 = none; the "c = 1 with c² × lr" control of PAPER §9).
        ema_momentum / ema_schedule: the teacher's EMA (``None`` for methods without one).
        eval_dataset: the separate ``--eval-dataset`` (``None``: the training data).
        eval_source: where the kNN numbers come from, in words: ``"kNN: bank 'train', test
            'test' of builtin"``, ``"held-out 10% of train (1,000 images, seed 0), not trained
            on"`` or ``"no evaluation (unlabelled data)"``.
        eval_held_out_images: the size of that held-out slice (``None`` when there is none).
        num_workers: data-loading workers per process (``--num-workers`` or the automatic choice).
        mixed_precision: the autocast precision used (``--mixed-precision``, by default bf16 on
            CUDA and no on CPU).
        channels_last / tf32: channels-last model and views; TF32 matmuls and
            ``cudnn.benchmark`` (both CUDA only, see :mod:`hub_cutinit.training.speed`).
        checkpoint_every / checkpoint_minutes: checkpoints every N steps, or every M minutes
            (0 and 0: at epoch ends); the last step is always saved.
        augment_on: where the views are augmented (``cpu``: PIL in the data workers;
            ``device``: batched on the training device, :mod:`hub_cutinit.data.device_augment`).
        compile: the model runs under ``torch.compile``.
    """

    method: str
    family: str
    backbone: str | None
    backbone_kwargs: dict[str, Any]
    c: float
    optimizer: str
    nesterov: bool | None
    lr: float
    base_lr: float
    weight_decay: float
    sgd_momentum: float | None
    warmup_steps: int
    cosine_steps: int
    total_steps: int
    steps_per_epoch: int | None
    warmup_epochs: float | None
    cosine_epochs: float | None
    normalized_lr_scale: float
    ema_momentum: float | None
    ema_schedule: str | None
    batch_size: int
    grad_accum_steps: int
    num_processes: int
    global_batch_size: int
    mixed_precision: str
    image_size: int
    dataset: str
    train_split: str
    eval_split: str | None
    num_examples: int | None
    knn_k: int
    knn_temperature: float
    eval_every: int
    eval_every_epochs: int | None  # None: automatic (Trainer.eval_period)
    log_every: int
    seed: int
    grad_scale_power: float
    eval_dataset: str | None = None
    eval_source: str = ""
    eval_held_out_images: int | None = None
    num_workers: int = 0
    channels_last: bool = False
    tf32: bool = False
    checkpoint_every: int = 0
    checkpoint_minutes: float = 0.0
    augment_on: str = "cpu"
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunRecord:
        """Rebuild from :meth:`to_dict` (unknown keys are ignored, for newer writers)."""
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass
class TrainerState:
    """What changes during training; saved in every checkpoint's ``trainer_state.json``."""

    step: int = 0
    epoch: int = 0
    images_seen: int = 0
    corrupt_images: int = 0
    train_seconds: float = 0.0
    last_eval_step: int = -1
    epoch_start_images: int = 0  # images_seen when the current epoch's stream (re)started
    knn: list[dict[str, Any]] = field(default_factory=list)
    baselines: dict[str, float] = field(default_factory=dict)
    convergence: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainerState:
        """Rebuild from a checkpoint's state (keys of other versions are ignored)."""
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})
