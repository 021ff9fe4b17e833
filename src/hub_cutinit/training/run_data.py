"""The data a run trains and evaluates on: the evaluation plan, this process's training shard
and loader, and the length of an epoch.

:func:`build_run_data` is what :meth:`hub_cutinit.training.Trainer.setup_data` calls; it needs
the Accelerator (process index and count, device) and the model (how many local views its
method takes).

Example:
    >>> from hub_cutinit.training import TrainConfig
    >>> steps_per_epoch(TrainConfig(method="simclr", batch_size=64), 5000, num_processes=2)
    39
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from accelerate import Accelerator
from torch import nn

from hub_cutinit import data as data_lib
from hub_cutinit.training.arguments import TrainConfig
from hub_cutinit.training.checkpoint import checkpoint_layout, latest_checkpoint
from hub_cutinit.training.knn_monitor import KnnMonitor

__all__ = ["RunData", "build_run_data", "resolve_num_workers", "steps_per_epoch"]


@dataclass
class RunData:
    """What :func:`build_run_data` returns.

    Attributes:
        eval_plan: :func:`hub_cutinit.data.plan_evaluation`'s decision (test split, held-out
            slice or none).
        knn: the kNN monitor on this process's share of the evaluation loaders (``None``: no
            labelled evaluation data).
        stream: this process's shard of the training stream.
        loader: the training loader over ``stream``.
        num_workers: data workers per process.
        num_examples: training images (all processes), ``None`` when unknown.
        device_augment: the on-device augmentation under ``--augment-on device``, else ``None``.
    """

    eval_plan: Any
    knn: KnnMonitor | None
    stream: Any
    loader: Any
    num_workers: int
    num_examples: int | None
    device_augment: data_lib.DeviceAugment | None


def build_run_data(cfg: TrainConfig, accelerator: Accelerator, model: nn.Module) -> RunData:
    """The evaluation the data allows, this process's shard of the training stream, the loader.

    :func:`hub_cutinit.data.plan_evaluation` decides: a test split, a held-out slice of the
    training split (then excluded from training), or no evaluation on unlabelled images (one
    notice says how to add ``--eval-dataset``).
    """
    acc = accelerator
    data_lib.check_dataset_spec(cfg.dataset)
    plan = data_lib.plan_evaluation(
        cfg.dataset,
        image_size=cfg.image_size,
        train_split=cfg.train_split,
        eval_split=cfg.eval_split,
        eval_dataset=cfg.eval_dataset,
        eval_bank_split=cfg.eval_bank_split,
        image_column=cfg.image_column,
        label_column=cfg.label_column,
        eval_image_column=cfg.eval_image_column,
        eval_label_column=cfg.eval_label_column,
        held_out_fraction=cfg.eval_held_out,
        seed=cfg.seed,
        max_samples=cfg.eval_max_samples,
        batch_size=max(64, cfg.batch_size),
    )
    knn = None
    if plan.loaders is not None:  # feature extraction split across the processes
        shares = [
            data_lib.shard_eval_loader(loader, acc.process_index, acc.num_processes)
            for loader in plan.loaders
        ]
        knn = KnnMonitor(
            acc,
            shares,
            k=cfg.knn_k,
            temperature=cfg.knn_temperature,
            bn=cfg.knn_bn,
            bn_batches=cfg.knn_bn_batches,
        )
    if plan.notice:
        acc.print(plan.notice)
    num_workers = resolve_num_workers(cfg, acc)
    stream = data_lib.build_train_stream(
        cfg.dataset,
        method=cfg.method,
        image_size=cfg.image_size,
        split=cfg.train_split,
        image_column=cfg.image_column,
        label_column=cfg.label_column,
        num_local_views=model.num_views()[1],  # type: ignore[operator]
        seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer,
        rank=acc.process_index,
        world_size=acc.num_processes,
        exclude=plan.held_out,
        total_examples=plan.train_examples,
        num_workers=num_workers,  # shards enough for every rank x worker
        uint8=True,  # views travel as uint8; training_step normalises them on the device
        augment_on=cfg.augment_on,
    )
    # under --augment-on device the loader brings [base images, view parameters]
    transform: Any = stream.transform  # a ViewTransform (device_augment) on this path
    augment = transform.device_augment() if cfg.augment_on == "device" else None
    loader = data_lib.make_train_loader(
        stream,
        batch_size=cfg.batch_size,
        num_workers=num_workers,
        pin_memory=acc.device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    return RunData(
        eval_plan=plan,
        knn=knn,
        stream=stream,
        loader=loader,
        num_workers=num_workers,
        num_examples=cfg.num_examples or data_lib.count_examples(stream),
        device_augment=augment,
    )


def resolve_num_workers(cfg: TrainConfig, accelerator: Accelerator) -> int:
    """``--num-workers``; by default the checkpoint's on ``--resume`` with the same number of
    processes (its data position needs it), else a choice from the CPUs and the device."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    last = latest_checkpoint(cfg.output_dir) if cfg.resume else None
    if last is not None:
        saved = json.loads((last / "trainer_state.json").read_text())
        processes, workers = checkpoint_layout(last, saved)
        if processes == accelerator.num_processes and workers is not None:
            return workers
    return data_lib.default_num_workers(
        accelerator.device.type,
        processes_per_node=int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)),
    )  # the train stream is then sharded for these workers (data.shard_for_workers)


def steps_per_epoch(cfg: TrainConfig, num_examples: int | None, num_processes: int) -> int | None:
    """Optimiser steps in one pass over a process's shard (``None``: unknown length, allowed
    only with ``--max-steps``)."""
    if num_examples is None:
        if cfg.max_steps is None:
            raise ValueError(
                f"Cannot tell how many training images {cfg.dataset!r} has; pass "
                "--num-examples N or --max-steps N so the schedule knows its length."
            )
        return None
    per_step = cfg.batch_size * cfg.grad_accum_steps
    steps = num_examples // num_processes // per_step
    if steps < 1:
        raise ValueError(
            f"{num_examples} training images are too few for batch {cfg.batch_size} × "
            f"{num_processes} processes × {cfg.grad_accum_steps} accumulation steps; lower "
            "--batch-size."
        )
    return steps
