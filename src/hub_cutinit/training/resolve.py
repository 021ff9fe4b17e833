"""Resolve a run: its :class:`~hub_cutinit.training.state.RunRecord`, and its summary.

:func:`resolve_record` starts from every recorded setting of the
:class:`~hub_cutinit.training.arguments.TrainConfig` (declared once, with ``record=True``)
and replaces each "default" (``None``) by the value used: the method's hyper-parameter, the
device's choice, the checkpoint's data layout. :func:`run_summary` is the record plus what
happened: the dict ``train`` returns and ``config.json`` keeps.
"""

from __future__ import annotations

import os
import time
from typing import Any

from hub_cutinit import data as data_lib
from hub_cutinit.training.arguments import recorded_settings, setting_groups
from hub_cutinit.training.device_defaults import resolve_checkpointing
from hub_cutinit.training.optim import resolve_schedule
from hub_cutinit.training.state import RunRecord

__all__ = ["resolve_record", "run_summary"]


def _resolved_settings(trainer: Any, lr: float, steps: tuple[int, int, int | None]) -> dict:
    """The recorded settings with every default replaced by the value used."""
    cfg, acc, hp = trainer.cfg, trainer.accelerator, trainer.raw_model.hparams
    warmup, cosine, per_epoch = steps
    optimizer = cfg.optimizer or hp["optimizer"]
    nesterov = cfg.nesterov if cfg.nesterov is not None else hp.get("nesterov")
    has_teacher = getattr(trainer.raw_model, "teacher", None) is not None
    every, minutes = resolve_checkpointing(
        cfg.checkpoint_every, cfg.checkpoint_minutes, acc.device.type
    )
    resolved = {
        "c": trainer.raw_model.cut_factor,
        "optimizer": optimizer,
        "nesterov": bool(nesterov)
        if optimizer in ("sgd", "lars") and nesterov is not None
        else None,
        "lr": lr,
        "weight_decay": cfg.weight_decay
        if cfg.weight_decay is not None
        else float(hp["weight_decay"]),
        "warmup_epochs": warmup / per_epoch if per_epoch else None,
        "cosine_epochs": cosine / per_epoch if per_epoch else None,
        "ema_schedule": str(hp.get("momentum_schedule", "cosine")) if has_teacher else None,
        "grad_scale_power": float(hp.get("grad_scale_power") or 0.0),
        "mixed_precision": str(acc.mixed_precision),
        "num_examples": trainer.num_examples,
        "num_workers": trainer.num_workers,
        "channels_last": bool(trainer.channels_last),
        "checkpoint_every": every,
        "checkpoint_minutes": minutes,
        "eval_dataset": data_lib.dataset_label(cfg.eval_dataset) if cfg.eval_dataset else None,
    }
    return {name: resolved.get(name, getattr(cfg, name)) for name in recorded_settings()}


def _local_world_size(num_processes: int) -> int:
    """Processes on this machine (``LOCAL_WORLD_SIZE``, set by torchrun / accelerate launch)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))


def resolve_record(trainer: Any, total_steps: int, steps_per_epoch: int | None) -> RunRecord:
    """Every setting of this run, resolved once (flags over method and device defaults)."""
    cfg, acc, model = trainer.cfg, trainer.accelerator, trainer.raw_model
    hp = model.hparams
    global_batch = cfg.batch_size * acc.num_processes * cfg.grad_accum_steps
    lr = cfg.lr if cfg.lr is not None else float(hp["base_lr"]) * global_batch / 256
    warmup, cosine = resolve_schedule(
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=cfg.warmup_epochs,
        cosine_epochs=cfg.cosine_epochs,
    )
    settings = _resolved_settings(trainer, lr, (warmup, cosine, steps_per_epoch))
    uses_momentum = settings["optimizer"] in ("sgd", "lars")
    plan = trainer.eval_plan
    return RunRecord(
        settings=settings,
        family=model.family,
        backbone_kwargs=dict(hp.get("backbone_kwargs") or {}),
        base_lr=lr * 256 / global_batch,
        sgd_momentum=float(hp["sgd_momentum"]) if uses_momentum else None,
        warmup_steps=warmup,
        cosine_steps=cosine,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        ema_momentum=float(hp["momentum"]) if settings["ema_schedule"] else None,
        num_processes=acc.num_processes,
        num_machines=max(1, acc.num_processes // _local_world_size(acc.num_processes)),
        global_batch_size=global_batch,
        tf32=bool(trainer.tf32),
        eval_source=plan.source if plan is not None else "",
        eval_held_out_images=plan.held_out_examples if plan is not None else None,
    )


def run_summary(trainer: Any, final_eval: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run record plus what happened: the dict ``train`` returns and config.json keeps."""
    state, cfg = trainer.state, trainer.cfg
    history = trainer.history
    return {
        **trainer.record.to_dict(),
        "output_dir": cfg.output_dir,
        "steps": state.step,
        "epochs": state.epoch,  # completed passes over the data
        "images_seen": state.images_seen,
        "corrupt_images": state.corrupt_images,
        "corrupt_examples": trainer.corrupt_examples,
        "wall_time_s": time.perf_counter() - trainer.started,
        "train_images_per_s": state.images_seen / max(state.train_seconds, 1e-9),
        "baselines": state.baselines,
        # the recorded settings by group, as declared (the card lists them so)
        "setting_groups": {
            group: [name for name in names if name in recorded_settings()]
            for group, names in setting_groups().items()
        },
        "data_config": {
            "input_size": [3, cfg.image_size, cfg.image_size],
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "mean": list(data_lib.IMAGENET_MEAN),
            "std": list(data_lib.IMAGENET_STD),
        },
        "norm_history": history.state_dict(),
        "final_norms": history.records[-1] if len(history) else {},
        "convergence": state.convergence,
        "knn": state.knn,
        "knn_accuracy": state.knn[-1]["knn_accuracy"] if state.knn else None,
        "linear_probe_accuracy": (final_eval or {}).get("linear_probe_accuracy"),
        "last_step": trainer.last_log,
    }
