"""The training configuration shared by every recipe, and its command-line flags.

Example:
    >>> cfg = parse_args("byol", ["--max-steps", "5", "--batch-size", "8"])
    >>> cfg.method, cfg.max_steps, cfg.c is None
    ('byol', 5, True)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hub_cutinit.cli_args import parse_set
from hub_cutinit.registry import get_method_defaults, list_methods
from hub_cutinit.training.speed import check_fp16_safe

__all__ = ["TrainConfig", "build_parser", "parse_args"]


@dataclass
class TrainConfig:
    """Everything one training run needs. ``None`` means "the method's default"."""

    method: str
    backbone: str = "resnet18"
    dataset: str = "builtin"
    train_split: str = "train"
    eval_split: str | None = "test"
    image_column: str | None = None
    label_column: str | None = None
    eval_dataset: str | None = None
    eval_bank_split: str | None = None
    eval_image_column: str | None = None
    eval_label_column: str | None = None
    eval_held_out: float = 0.1
    c: float | None = None
    weight_decay: float | None = None
    lr: float | None = None
    optimizer: str | None = None
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 64
    grad_accum_steps: int = 1
    image_size: int = 32
    output_dir: str = "outputs/run"
    resume: bool = False
    eval_every: int = 0
    knn_k: int = 200
    knn_temperature: float = 0.1
    eval_max_samples: int | None = None
    linear_probe: bool = False
    baselines: bool = True
    checkpoint_every: int = 0
    seed: int = 0
    mixed_precision: str | None = None  # None: bf16 on CUDA, no on CPU
    channels_last: bool | None = None  # None: on for conv backbones on CUDA
    checkpoint_minutes: float | None = None  # None: 30 on CUDA, epoch ends on CPU
    num_workers: int | None = None
    shuffle_buffer: int = 1000
    augment_on: str = "cpu"  # "device": crops and colour on the training device, batched
    compile: bool = False  # torch.compile the model
    log_with: str | None = None
    log_every: int = 10
    push_to_hub: str | None = None
    hub_private: bool = False
    grad_scale_power: float | None = None
    num_examples: int | None = None
    warmup_epochs: float | None = None
    cosine_epochs: float | None = None
    nesterov: bool | None = None
    ema_schedule: str | None = None
    normalized_lr_scale: float = 1.0
    convergence_monitor: bool = True
    eval_every_epochs: int | None = None  # None: automatic, evaluation <= ~10 % of wall time
    collective_timeout: float = 1800.0
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in list_methods():
            raise ValueError(f"Unknown method {self.method!r}; known methods: {list_methods()}.")
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "grad_accum_steps": self.grad_accum_steps,
            "knn_k": self.knn_k,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {value!r}."
                )
        if self.batch_size < 2:
            raise ValueError(
                "--batch-size must be at least 2 (BatchNorm and contrastive losses need pairs)."
            )
        for name in ("max_steps", "eval_max_samples", "num_examples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {value!r}."
                )
        for name in ("eval_every", "eval_every_epochs", "checkpoint_every", "num_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}."
                )
        for name in ("c", "lr", "weight_decay", "knn_temperature", "collective_timeout"):
            value = getattr(self, name)
            if value is not None and (
                not math.isfinite(value) or value < 0 or (value == 0 and name != "weight_decay")
            ):
                raise ValueError(
                    f"--{name.replace('_', '-')} must be a finite number > 0, got {value!r}."
                )
        if not 0 < self.eval_held_out < 1:
            raise ValueError(
                f"--eval-held-out must be a fraction in (0, 1), got {self.eval_held_out!r}."
            )
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be an integer in [0, 2**32), got {self.seed!r}.")
        if not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 1:
            raise ValueError(f"--shuffle-buffer must be >= 1, got {self.shuffle_buffer!r}.")
        if self.image_size < 8:
            raise ValueError(f"--image-size must be >= 8, got {self.image_size}.")
        if self.grad_scale_power is not None and not math.isfinite(self.grad_scale_power):
            raise ValueError(
                f"--grad-scale-power must be a finite number, got {self.grad_scale_power!r}."
            )
        self._check_speed()
        if self.augment_on not in ("cpu", "device"):
            raise ValueError(f"--augment-on must be cpu or device, got {self.augment_on!r}.")
        if self.optimizer is not None and self.optimizer not in ("sgd", "lars", "adamw"):
            raise ValueError(f"--optimizer must be sgd, lars or adamw, got {self.optimizer!r}.")
        self._check_schedule()
        defaults = get_method_defaults(self.method)
        if self.ema_schedule is not None:
            if self.ema_schedule not in ("cosine", "constant"):
                raise ValueError(
                    f"--ema-schedule must be cosine or constant, got {self.ema_schedule!r}."
                )
            if defaults.get("momentum") is None:
                raise ValueError(
                    f"--ema-schedule: {self.method} has no EMA teacher; drop the flag."
                )
        unknown = sorted(set(self.overrides) - set(defaults) - {"family"})
        if unknown:
            raise ValueError(
                f"Unknown --set key(s) {unknown} for {self.method}; valid: {sorted(defaults)}."
            )

    def _check_speed(self) -> None:
        """Mixed precision (fp16 refused where it underflows) and the checkpoint clock."""
        if self.mixed_precision not in (None, "no", "bf16", "fp16"):
            raise ValueError(
                f"--mixed-precision must be no, bf16 or fp16, got {self.mixed_precision!r}."
            )
        c = self.c if self.c is not None else get_method_defaults(self.method).get("c")
        check_fp16_safe(self.method, float(c or 1.0), self.mixed_precision)
        minutes = self.checkpoint_minutes
        if minutes is not None and not (math.isfinite(minutes) and minutes >= 0):
            raise ValueError(f"--checkpoint-minutes must be a finite number >= 0, got {minutes!r}.")

    def _check_schedule(self) -> None:
        for name in ("warmup_epochs", "cosine_epochs"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(
                    f"--{name.replace('_', '-')} must be a finite number >= 0, got {value!r}."
                )
        if self.cosine_epochs is not None and self.cosine_epochs <= 0:
            raise ValueError(f"--cosine-epochs must be > 0, got {self.cosine_epochs!r}.")
        if (
            self.warmup_epochs is not None
            and self.cosine_epochs is not None
            and self.warmup_epochs >= self.cosine_epochs
        ):
            raise ValueError(
                f"--warmup-epochs ({self.warmup_epochs:g}) must be shorter than --cosine-epochs "
                f"({self.cosine_epochs:g}); lower the warm-up or lengthen the schedule."
            )
        if (
            self.cosine_epochs is not None
            and self.max_steps is None
            and self.cosine_epochs < self.epochs
        ):
            raise ValueError(
                f"--cosine-epochs ({self.cosine_epochs:g}) is shorter than the run (--epochs "
                f"{self.epochs}); the horizon must cover the run: raise --cosine-epochs or lower "
                "--epochs."
            )
        if not math.isfinite(self.normalized_lr_scale) or self.normalized_lr_scale <= 0:
            raise ValueError(
                f"--normalized-lr-scale must be a finite number > 0, got {self.normalized_lr_scale!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    def model_overrides(self) -> dict[str, Any]:
        """Hyper-parameters passed to :func:`hub_cutinit.create_ssl_model`."""
        overrides = dict(self.overrides)
        if self.grad_scale_power is not None:
            overrides["grad_scale_power"] = self.grad_scale_power
        if self.ema_schedule is not None:
            overrides["momentum_schedule"] = self.ema_schedule
        return overrides


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it says something (not None, not a switch's own value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, argparse.SUPPRESS):
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text
        if action.default == [] or isinstance(action, argparse.BooleanOptionalAction):
            return text
        return super()._get_help_string(action)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Where the training images come from and how they are read."""
    p = parser.add_argument_group("data")
    p.add_argument(
        "--dataset",
        default="builtin",
        metavar="SPEC",
        help="'builtin' (Fashion-MNIST subset shipped with the package), a Hub dataset id "
        "(user/name), a local image folder (labels optional) or a folder/glob of parquet or "
        "arrow files",
    )
    p.add_argument("--train-split", default="train", metavar="NAME", help="split to train on")
    p.add_argument(
        "--image-column", default=None, metavar="NAME", help="image column (default: detected)"
    )
    p.add_argument(
        "--label-column",
        default=None,
        metavar="NAME",
        help="integer label column for evaluation (default: detected; none = unlabelled)",
    )
    p.add_argument(
        "--num-examples",
        type=int,
        metavar="N",
        default=None,
        help="training-set size when the stream does not say (sets steps per epoch)",
    )
    p.add_argument(
        "--image-size", type=int, default=32, metavar="PX", help="side of the training views"
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        metavar="N",
        help="data-loading worker processes per training process (default: from the CPUs and "
        "the device: on CUDA min(8, CPUs per process - 1), on CPU 0; capped by the shards)",
    )
    p.add_argument(
        "--shuffle-buffer",
        type=int,
        default=1000,
        metavar="N",
        help="examples shuffled together (per worker)",
    )
    p.add_argument(
        "--augment-on",
        choices=["cpu", "device"],
        default="cpu",
        help="where the views are cropped, flipped and colour-jittered: 'cpu' (PIL, per image "
        "in the data workers) or 'device' (workers only decode and resize; the training device "
        "augments the batch with per-sample parameters, hub_cutinit.data.device_augment)",
    )


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Backbone, cut factor and method hyper-parameters."""
    p = parser.add_argument_group("model and cut")
    d = TrainConfig.__dataclass_fields__
    p.add_argument(
        "--backbone", default=d["backbone"].default, metavar="NAME", help="any timm model name"
    )
    p.add_argument(
        "--c", type=float, default=None, help="cut factor (default: the method's; 1 = no cut)"
    )
    p.add_argument(
        "--grad-scale-power",
        type=float,
        default=None,
        metavar="P",
        help="GradScale p (extended paper; default: the method's)",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="method hyper-parameters, e.g. --set proj_dim=256 temperature=0.2",
    )


def _add_optimisation_flags(parser: argparse.ArgumentParser) -> None:
    """Optimiser, learning-rate and EMA schedule, run length and batch."""
    p = parser.add_argument_group("optimisation and schedule")
    p.add_argument("--weight-decay", type=float, default=None, help="λ (default: the method's)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: the method's base_lr × global batch / 256)",
    )
    p.add_argument(
        "--optimizer", choices=["sgd", "lars", "adamw"], default=None, help="default: the method's"
    )
    p.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Nesterov momentum for sgd/lars (default: the method's; the paper: off for SimCLR "
        "and MoCo, on for BYOL and SimSiam)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        help="linear lr warm-up (default: min(10 epochs, a tenth of the cosine horizon); the "
        "paper warms up for 10)",
    )
    p.add_argument(
        "--cosine-epochs",
        type=float,
        default=None,
        help="horizon of the cosine decay (default: the run length); e.g. --epochs 20 "
        "--cosine-epochs 500 runs the first 20 epochs of the paper's 500-epoch schedule",
    )
    p.add_argument(
        "--ema-schedule",
        choices=["cosine", "constant"],
        default=None,
        help="teacher EMA momentum: cosine ramp to 1 or constant (the paper's BYOL); "
        "default: the method's",
    )
    p.add_argument(
        "--normalized-lr-scale",
        type=float,
        default=1.0,
        help="multiply the lr (and divide λ) of the weights that BatchNorm normalises: "
        "with --c 1 and c² this is the learning-rate control of cut-init (PAPER §9)",
    )
    p.add_argument("--epochs", type=int, default=1, metavar="N", help="passes over the data")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop after this many optimiser steps (default: --epochs passes)",
    )
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="per process")
    p.add_argument(
        "--grad-accum-steps",
        type=int,
        default=1,
        metavar="N",
        help="micro-batches per optimiser step",
    )


def _add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """Precision, memory format and compilation (none changes what is computed, beyond
    rounding)."""
    p = parser.add_argument_group("speed")
    p.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default=None,
        help="autocast precision (default: bf16 on CUDA, no on CPU; fp16 only on GPU and not "
        "for DINO at c >= 9)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory format for the model and the views (default: on for "
        "convolutional backbones on CUDA, off otherwise)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (CUDA and CPU; the first steps pay the compile time)",
    )


def _add_evaluation_flags(parser: argparse.ArgumentParser) -> None:
    """The kNN monitor's data and schedule, the baselines and the linear probe."""
    p = parser.add_argument_group("evaluation")
    p.add_argument(
        "--eval-split",
        default="test",
        metavar="NAME",
        help="labelled split the kNN monitor tests on; 'none' to skip. When the default 'test' "
        "is missing, a held-out slice of the training split (--eval-held-out) is used; "
        "unlabelled data trains without evaluation",
    )
    p.add_argument(
        "--eval-dataset",
        default=None,
        metavar="SPEC",
        help="a separate labelled dataset for the kNN monitor (any --dataset spec, e.g. "
        "builtin); default: the training data",
    )
    p.add_argument(
        "--eval-bank-split",
        default=None,
        metavar="NAME",
        help="split of the evaluation data used as the kNN bank (default: --train-split for "
        "the training data, 'train' for --eval-dataset)",
    )
    p.add_argument(
        "--eval-held-out",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="fraction of the training split held out (and not trained on) for the kNN test "
        "when the data has labels but no 'test' split",
    )
    p.add_argument(
        "--eval-image-column",
        default=None,
        metavar="NAME",
        help="image column of --eval-dataset (default: detected)",
    )
    p.add_argument(
        "--eval-label-column",
        default=None,
        metavar="NAME",
        help="label column of --eval-dataset (default: detected)",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=0,
        metavar="N",
        help="kNN monitor every N steps; 0: at epoch ends (see --eval-every-epochs)",
    )
    p.add_argument(
        "--eval-every-epochs",
        type=int,
        default=None,
        metavar="N",
        help="with --eval-every 0: kNN monitor at the end of every N-th epoch (and the last "
        "step); default: N chosen from the measured times so that evaluation takes about 10%% "
        "of the wall time at most (every epoch until the first evaluation is timed)",
    )
    p.add_argument(
        "--eval-max-samples",
        type=int,
        default=None,
        metavar="N",
        help="cap on bank/test images for kNN (default: all)",
    )
    p.add_argument("--knn-k", type=int, default=200, metavar="K", help="neighbours for kNN")
    p.add_argument("--linear-probe", action="store_true", help="fit a linear probe at the end")
    p.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the kNN baselines (random-init backbone, raw pixels) at step 0",
    )


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Output, checkpoints, seed, logging and the Hub push."""
    p = parser.add_argument_group("run, logging and Hub")
    d = TrainConfig.__dataclass_fields__
    p.add_argument(
        "--output-dir",
        default=d["output_dir"].default,
        metavar="DIR",
        help="checkpoints and the saved model",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest complete checkpoint"
    )
    p.add_argument(
        "--collective-timeout",
        type=float,
        default=d["collective_timeout"].default,
        metavar="SECONDS",
        help="multi-process runs: a process that waits this long for another in a collective "
        "stops with a message naming it (resume with --resume)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="checkpoint every N steps (wins over --checkpoint-minutes); 0: see "
        "--checkpoint-minutes",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=None,
        metavar="M",
        help="checkpoint every M minutes (checked on --log-every steps) and at the last step; "
        "0: at each epoch end (default: 30 on CUDA, epoch ends on CPU)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the model, data order and views")
    p.add_argument(
        "--log-with",
        default=None,
        metavar="TRACKER",
        help="an Accelerate tracker, e.g. tensorboard",
    )
    p.add_argument(
        "--log-every",
        type=int,
        default=10,
        metavar="N",
        help="progress and convergence statistics every N steps",
    )
    p.add_argument(
        "--no-convergence-monitor",
        dest="convergence_monitor",
        action="store_false",
        help="skip the angle-per-step monitor (two probe forwards every --log-every steps)",
    )
    p.add_argument(
        "--push-to-hub", default=None, metavar="REPO_ID", help="push the result to this Hub repo"
    )
    p.add_argument("--hub-private", action="store_true", help="make the pushed repo private")


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    """The flags every recipe shares; ``method=None`` adds a ``--method`` flag."""
    p = argparse.ArgumentParser(
        description=f"Train {method or 'an SSL method'} with cut-initialisation (hub_cutinit).",
        formatter_class=_HelpFormatter,
    )
    if method is None:
        p.add_argument("--method", required=True, choices=list_methods())
    for add_flags in (
        _add_data_flags,
        _add_model_flags,
        _add_optimisation_flags,
        _add_speed_flags,
        _add_evaluation_flags,
        _add_run_flags,
    ):
        add_flags(p)
    return p


def parse_args(method: str | None, argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse recipe flags into a validated :class:`TrainConfig`."""
    parser = build_parser(method)
    args = parser.parse_args(argv)
    values = vars(args)
    try:
        overrides = parse_set(values.pop("set"), method=values.get("method") or method)
        if values["eval_split"] in ("none", ""):
            values["eval_split"] = None
        return TrainConfig(method=values.pop("method", method), overrides=overrides, **values)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits
