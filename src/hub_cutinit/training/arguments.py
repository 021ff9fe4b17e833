"""Every training setting, declared once: the command line, the config, the run record, the card.

Each field of :class:`TrainConfig` is declared with :func:`setting`, whose metadata says its
group (data / model and cut / optimisation / evaluation / runtime), its help text, its flag and
how it is checked. :func:`build_parser` turns the declarations into the recipes' grouped
``--help``; ``TrainConfig.__post_init__`` checks every value from the same metadata; the
:class:`~hub_cutinit.training.state.RunRecord` copies every field marked ``record=True``, so
``config.json``, the trackers and the model card list it without further edits. Adding a flag
is one :func:`setting` line (plus its test).

Why not ``transformers.HfArgumentParser`` (a dependency already): it needs one dataclass per
argument group, which would split the flat ``TrainConfig(method=..., lr=...)`` that users call;
it adds an underscore spelling of every flag to ``--help`` (``--eval_split`` next to
``--eval-split``); and it has no ``--no-X`` form for a three-state ``bool | None`` setting
(``--nesterov/--no-nesterov``, ``--channels-last/--no-channels-last``), which the recipes
accept today. The ~60 lines of :func:`build_parser` keep the flags exactly as they were.

Example:
    >>> cfg = parse_args("byol", ["--max-steps", "5", "--batch-size", "8"])
    >>> cfg.method, cfg.max_steps, cfg.c is None
    ('byol', 5, True)
    >>> setting_groups()["evaluation"][:3]
    ['eval_split', 'eval_dataset', 'eval_bank_split']
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hub_cutinit.cut import SPARE_KINDS
from hub_cutinit.registry import check_run, get_method_defaults, list_methods, paper_c
from hub_cutinit.set_flag import parse_set
from hub_cutinit.training.callbacks import import_callback

__all__ = [
    "GROUPS",
    "TrainConfig",
    "build_parser",
    "parse_args",
    "recorded_settings",
    "setting",
    "setting_groups",
]

#: The argument groups, in ``--help`` order.
GROUPS = ("data", "model and cut", "optimisation", "evaluation", "runtime")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


#: Value checks by name: ``(test, what the value must be)``.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive_int": (lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
    "nonneg_int": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "positive": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "nonneg": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "fraction": (lambda v: _finite(v) and 0 < v < 1, "a fraction in (0, 1)"),
    "share": (lambda v: _finite(v) and 0 < v <= 1, "a share in (0, 1]"),
    "finite": (_finite, "a finite number"),
    "seed": (lambda v: isinstance(v, int) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
}


def setting(
    default: Any = dataclasses.MISSING,
    *,
    group: str,
    help: str,
    metavar: str | None = None,
    choices: Sequence[str] | None = None,
    check: str | None = None,
    flag: str | None = None,
    record: bool = True,
    cli: bool = True,
    default_factory: Callable[[], Any] | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """Declare one setting: a dataclass field whose metadata builds its flag, check and record.

    Args:
        group: one of :data:`GROUPS` (its ``--help`` section).
        help: the flag's help text (also the setting's description in the card).
        metavar / choices: as in argparse.
        check: a value check from ``_CHECKS`` (``None`` values always pass: "the default").
        flag: the flag's spelling when it is not ``--name-with-dashes``: ``"--no-baselines"``
            for a setting that defaults to True.
        record: copied into the run record (``config.json``, trackers, card).
        cli: has a command-line flag.
        parse: converts the flag's text (default: from the field's type).
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    if check is not None and check not in _CHECKS:
        raise ValueError(f"check must be one of {sorted(_CHECKS)}, got {check!r}")
    metadata = dict(
        group=group, help=help, metavar=metavar, choices=choices, check=check, flag=flag,
        record=record, cli=cli, parse=parse,
    )  # fmt: skip
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything one training run needs. ``None`` means "the method's (or device's) default".

    Every field is declared with :func:`setting`; ``python recipes/byol.py --help`` shows them
    by group, and the run record keeps the resolved value of each one marked ``record``.
    """

    method: str = setting(group="model and cut", help="the SSL method", cli=False)
    # -- data ------------------------------------------------------------------------------------
    dataset: str = setting(
        "builtin", group="data", metavar="SPEC",
        help="'builtin' (Fashion-MNIST subset shipped with the package), a Hub dataset id "
        "(user/name), a local image folder (labels optional) or a folder/glob of parquet or "
        "arrow files",
    )  # fmt: skip
    train_split: str = setting("train", group="data", metavar="NAME", help="split to train on")
    image_column: str | None = setting(
        None, group="data", metavar="NAME", help="image column (default: detected)"
    )
    label_column: str | None = setting(
        None, group="data", metavar="NAME",
        help="integer label column for evaluation (default: detected; none = unlabelled)",
    )  # fmt: skip
    num_examples: int | None = setting(
        None, group="data", metavar="N", check="positive_int",
        help="training-set size when the stream does not say (sets steps per epoch)",
    )  # fmt: skip
    image_size: int = setting(
        32, group="data", metavar="PX", check="positive_int", help="side of the training views"
    )
    num_workers: int | None = setting(
        None, group="data", metavar="N", check="nonneg_int",
        help="data-loading worker processes per training process (default: from the CPUs and "
        "the device: on CUDA min(8, CPUs per process - 1), on CPU 0; capped by the shards)",
    )  # fmt: skip
    shuffle_buffer: int = setting(
        1000, group="data", metavar="N", check="positive_int",
        help="examples shuffled together (per worker)",
    )  # fmt: skip
    augment_on: str = setting(
        "cpu", group="data", choices=("cpu", "device"),
        help="where the views are cropped, flipped and colour-jittered: 'cpu' (PIL, per image "
        "in the data workers) or 'device' (workers only decode and resize; the training device "
        "augments the batch with per-sample parameters, hub_cutinit.data.device_augment)",
    )  # fmt: skip
    # -- model and cut ---------------------------------------------------------------------------
    backbone: str = setting(
        "resnet18", group="model and cut", metavar="NAME", help="any timm model name"
    )
    c: float | None = setting(
        None, group="model and cut", check="positive", parse=lambda v: v if v == "paper" else float(v),
        help="cut factor (default: the method's; 1 = no cut; 'paper': the paper's value for the "
        "method, 3 contrastive, 9 non-contrastive)",
    )  # fmt: skip
    cut_spare: list[str] = setting(
        group="model and cut", metavar="KIND", default_factory=list,
        help="leave these kinds of parameters uncut: bias (of linear and convolution layers), "
        "norm_shift, norm_scale (of BatchNorm/LayerNorm); default: none, the paper's cut of "
        "every parameter. --cut-spare bias is the bias-sparing cut",
    )  # fmt: skip
    grad_scale_power: float | None = setting(
        None, group="model and cut", metavar="P", check="finite",
        help="GradScale p (extended paper; default: the method's)",
    )  # fmt: skip
    overrides: dict[str, Any] = setting(
        group="model and cut", metavar="KEY=VALUE", flag="--set", record=False,
        default_factory=dict,
        help="method hyper-parameters, e.g. --set proj_dim=256 temperature=0.2",
    )  # fmt: skip
    # -- optimisation ----------------------------------------------------------------------------
    weight_decay: float | None = setting(
        None, group="optimisation", check="nonneg", help="λ (default: the method's)"
    )
    lr: float | None = setting(
        None, group="optimisation", check="positive",
        help="peak learning rate (default: the method's base_lr × global batch / 256)",
    )  # fmt: skip
    optimizer: str | None = setting(
        None, group="optimisation", choices=("sgd", "lars", "adamw"), help="default: the method's"
    )
    nesterov: bool | None = setting(
        None, group="optimisation",
        help="Nesterov momentum for sgd/lars (default: the method's; the paper: off for SimCLR "
        "and MoCo, on for BYOL and SimSiam)",
    )  # fmt: skip
    warmup_epochs: float | None = setting(
        None, group="optimisation", check="nonneg",
        help="linear lr warm-up (default: min(10 epochs, a tenth of the cosine horizon); the "
        "paper warms up for 10)",
    )  # fmt: skip
    cosine_epochs: float | None = setting(
        None, group="optimisation", check="positive",
        help="horizon of the cosine decay (default: the run length); e.g. --epochs 20 "
        "--cosine-epochs 500 runs the first 20 epochs of the paper's 500-epoch schedule",
    )  # fmt: skip
    ema_schedule: str | None = setting(
        None, group="optimisation", choices=("cosine", "constant"),
        help="teacher EMA momentum: cosine ramp to 1 or constant (the paper's BYOL); "
        "default: the method's",
    )  # fmt: skip
    normalized_lr_scale: float = setting(
        1.0, group="optimisation", check="positive",
        help="multiply the lr (and divide λ) of the weights that BatchNorm normalises: "
        "with --c 1 and c² this is the learning-rate control of cut-init (PAPER §9)",
    )  # fmt: skip
    epochs: int = setting(
        1, group="optimisation", metavar="N", check="positive_int", help="passes over the data"
    )
    max_steps: int | None = setting(
        None, group="optimisation", metavar="N", check="positive_int",
        help="stop after this many optimiser steps (default: --epochs passes)",
    )  # fmt: skip
    batch_size: int = setting(
        64, group="optimisation", metavar="N", check="positive_int", help="per process"
    )
    grad_accum_steps: int = setting(
        1, group="optimisation", metavar="N", check="positive_int",
        help="micro-batches per optimiser step",
    )  # fmt: skip
    # -- evaluation ------------------------------------------------------------------------------
    eval_split: str | None = setting(
        "test", group="evaluation", metavar="NAME",
        help="labelled split the kNN monitor tests on; 'none' to skip. When the default 'test' "
        "is missing, a held-out slice of the training split (--eval-held-out) is used; "
        "unlabelled data trains without evaluation",
    )  # fmt: skip
    eval_dataset: str | None = setting(
        None, group="evaluation", metavar="SPEC",
        help="a separate labelled dataset for the kNN monitor (any --dataset spec, e.g. "
        "builtin); default: the training data",
    )  # fmt: skip
    eval_bank_split: str | None = setting(
        None, group="evaluation", metavar="NAME",
        help="split of the evaluation data used as the kNN bank (default: --train-split for "
        "the training data, 'train' for --eval-dataset)",
    )  # fmt: skip
    eval_held_out: float = setting(
        0.1, group="evaluation", metavar="FRACTION", check="fraction",
        help="fraction of the training split held out (and not trained on) for the kNN test "
        "when the data has labels but no 'test' split",
    )  # fmt: skip
    eval_image_column: str | None = setting(
        None, group="evaluation", metavar="NAME",
        help="image column of --eval-dataset (default: detected)",
    )  # fmt: skip
    eval_label_column: str | None = setting(
        None, group="evaluation", metavar="NAME",
        help="label column of --eval-dataset (default: detected)",
    )  # fmt: skip
    eval_every: int = setting(
        0, group="evaluation", metavar="N", check="nonneg_int",
        help="kNN monitor every N steps; 0: at epoch ends (see --eval-every-epochs)",
    )  # fmt: skip
    eval_every_epochs: int | None = setting(
        None, group="evaluation", metavar="N", check="nonneg_int",
        help="with --eval-every 0: kNN monitor at the end of every N-th epoch (and the last "
        "step); default: N chosen from the measured times so that evaluation takes about 10%% "
        "of the wall time at most (every epoch until the first evaluation is timed)",
    )  # fmt: skip
    eval_max_samples: int | None = setting(
        None, group="evaluation", metavar="N", check="positive_int",
        help="cap on bank/test images for kNN (default: all)",
    )  # fmt: skip
    knn_k: int = setting(
        200, group="evaluation", metavar="K", check="positive_int", help="neighbours for kNN"
    )
    knn_bn: str = setting(
        "precise", group="evaluation", choices=("precise", "running"),
        help="BatchNorm statistics of the kNN monitor's backbone: 'precise' re-estimates them "
        "on --knn-bn-batches bank batches (a copy; training is untouched), 'running' uses the "
        "running averages as they are (a cut network's start at the wrong scale)",
    )  # fmt: skip
    knn_bn_batches: int = setting(
        8, group="evaluation", metavar="N", check="positive_int",
        help="batches of bank images that re-estimate the statistics with --knn-bn precise",
    )  # fmt: skip
    knn_temperature: float = setting(
        0.1, group="evaluation", check="positive", cli=False, help="kNN weighting temperature"
    )
    linear_probe: bool = setting(False, group="evaluation", help="fit a linear probe at the end")
    baselines: bool = setting(
        True, group="evaluation", flag="--no-baselines",
        help="skip the kNN baselines (random-init backbone, raw pixels) at step 0",
    )  # fmt: skip
    # -- runtime ---------------------------------------------------------------------------------
    output_dir: str = setting(
        "outputs/run", group="runtime", metavar="DIR", record=False,
        help="checkpoints and the saved model",
    )  # fmt: skip
    resume: bool | str = setting(
        False, group="runtime", record=False, metavar="auto",
        help="continue from the newest complete checkpoint in --output-dir, or start at step 0 "
        "when there is none; '--resume auto' says so explicitly (the same command for a first "
        "run and for a requeued one after preemption)",
    )  # fmt: skip
    collective_timeout: float = setting(
        1800.0, group="runtime", metavar="SECONDS", check="positive",
        help="multi-process runs: a process that waits this long for another in a collective "
        "stops with a message naming it (resume with --resume)",
    )  # fmt: skip
    checkpoint_every: int = setting(
        0, group="runtime", metavar="N", check="nonneg_int",
        help="checkpoint every N steps (wins over --checkpoint-minutes); 0: see "
        "--checkpoint-minutes",
    )  # fmt: skip
    checkpoint_minutes: float | None = setting(
        None, group="runtime", metavar="M", check="nonneg",
        help="checkpoint every M minutes (checked on --log-every steps) and at the last step; "
        "0: at each epoch end (default: 30 on CUDA, epoch ends on CPU)",
    )  # fmt: skip
    seed: int = setting(
        0, group="runtime", check="seed", help="seed of the model, data order and views"
    )
    mixed_precision: str | None = setting(
        None, group="runtime", choices=("no", "bf16", "fp16"),
        help="autocast precision (default: bf16 on CUDA, no on CPU; fp16 only on GPU and not "
        "for DINO at c >= 9)",
    )  # fmt: skip
    channels_last: bool | None = setting(
        None, group="runtime",
        help="channels-last memory format for the model and the views (default: on for "
        "convolutional backbones on CUDA, off otherwise)",
    )  # fmt: skip
    compile: bool = setting(
        False, group="runtime",
        help="torch.compile the model (CUDA and CPU; the first steps pay the compile time)",
    )  # fmt: skip
    log_with: str | None = setting(
        None, group="runtime", metavar="TRACKER", record=False,
        help="an Accelerate tracker, e.g. tensorboard",
    )  # fmt: skip
    log_every: int = setting(
        10, group="runtime", metavar="N", check="positive_int",
        help="progress and step statistics every N steps",
    )  # fmt: skip
    convergence_monitor: bool = setting(
        True, group="runtime", flag="--no-convergence-monitor",
        help="skip the angle-per-step monitor (two probe forwards on some logged steps, at "
        "most --monitor-budget of the training time)",
    )  # fmt: skip
    monitor_budget: float = setting(
        0.01, group="runtime", metavar="SHARE", check="share",
        help="the convergence monitor reads on step 1, then on the logged steps at which its "
        "cumulative measured cost stays within this share of the training time (1: every "
        "logged step)",
    )  # fmt: skip
    callbacks: list[str] = setting(
        group="runtime", metavar="MODULE:CLASS", flag="--callback", default_factory=list,
        help="add a TrainerCallback subclass, built without arguments (repeat the flag for "
        "several), e.g. --callback my_project.callbacks:StopAtNorm",
    )  # fmt: skip
    push_to_hub: str | None = setting(
        None, group="runtime", metavar="REPO_ID", record=False,
        help="push the result to this Hub repo",
    )  # fmt: skip
    hub_private: bool = setting(
        False, group="runtime", record=False, help="make the pushed repo private"
    )

    def __post_init__(self) -> None:
        if self.method not in list_methods():
            raise ValueError(f"Unknown method {self.method!r}; known methods: {list_methods()}.")
        if str(self.c) == "paper":  # --c paper (the flag's text; a float after this)
            self.c = paper_c(self.method)
        for f in dataclasses.fields(self):
            _check_value(f, getattr(self, f.name))
        if self.resume not in (False, True, "auto"):
            raise ValueError(f"--resume takes no value or 'auto', got {self.resume!r}.")
        if self.batch_size < 2:
            raise ValueError(
                "--batch-size must be at least 2 (BatchNorm and contrastive losses need pairs)."
            )
        if self.image_size < 8:
            raise ValueError(f"--image-size must be >= 8, got {self.image_size}.")
        self._check_schedule()
        defaults = get_method_defaults(self.method)
        if self.ema_schedule is not None and defaults.get("momentum") is None:
            raise ValueError(f"--ema-schedule: {self.method} has no EMA teacher; drop the flag.")
        unknown = sorted(set(self.overrides) - set(defaults) - {"family"})
        if unknown:
            raise ValueError(
                f"Unknown --set key(s) {unknown} for {self.method}; valid: {sorted(defaults)}."
            )
        self.check_method()
        _check_spare(self.cut_spare)
        for spec in self.callbacks:  # importable now, not after the set-up
            import_callback(spec)

    def check_method(
        self, global_batch_size: int | None = None, device_type: str | None = None
    ) -> list[str]:
        """The method's own checks on this run (:meth:`hub_cutinit.methods.SSLModel.check_run`):
        raises ``ValueError`` for a run that cannot work, returns warnings."""
        from hub_cutinit.methods.base import RunSpec

        hparams = {**get_method_defaults(self.method), **self.model_overrides()}
        c = self.c if self.c is not None else hparams.get("c")
        spec = RunSpec(
            c=float(c or 1.0),
            mixed_precision=self.mixed_precision,
            global_batch_size=global_batch_size,
            device_type=device_type,
            hparams=hparams,
        )
        return check_run(self.method, spec)

    def _check_schedule(self) -> None:
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    def model_overrides(self) -> dict[str, Any]:
        """Hyper-parameters passed to :func:`hub_cutinit.create_ssl_model`."""
        overrides = dict(self.overrides)
        if self.grad_scale_power is not None:
            overrides["grad_scale_power"] = self.grad_scale_power
        if self.cut_spare:
            overrides["cut_spare"] = list(self.cut_spare)
        if self.ema_schedule is not None:
            overrides["momentum_schedule"] = self.ema_schedule
        return overrides


def _check_spare(spare: Sequence[str]) -> None:
    unknown = sorted(set(spare) - set(SPARE_KINDS))
    if unknown:
        raise ValueError(f"--cut-spare takes {list(SPARE_KINDS)}, got {unknown}.")


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _check_value(f: dataclasses.Field, value: Any) -> None:
    """The declared check and choices of one setting; ``None`` means "the default"."""
    meta = f.metadata
    if value is None or not meta:
        return
    flag = "--" + f.name.replace("_", "-")
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ValueError(f"{flag} must be one of {list(meta['choices'])}, got {value!r}.")
    if meta["check"] is not None:
        test, what = _CHECKS[meta["check"]]
        if not test(value):
            raise ValueError(f"{flag} must be {what}, got {value!r}.")


def setting_groups() -> dict[str, list[str]]:
    """The settings of :class:`TrainConfig` by group, in declaration order."""
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    for f in dataclasses.fields(TrainConfig):
        groups[f.metadata["group"]].append(f.name)
    return groups


def recorded_settings() -> dict[str, dataclasses.Field]:
    """The settings the run record keeps (``record=True``), by name."""
    return {f.name: f for f in dataclasses.fields(TrainConfig) if f.metadata["record"]}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it says something (not None, not a switch's own value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or default is True or default is False:
            return text
        if default == argparse.SUPPRESS or default == []:
            return text
        return super()._get_help_string(action) or text


class _Group(Protocol):
    """What :func:`_add_flag` needs of an argparse argument group."""

    def add_argument(self, *names: str, **kwargs: Any) -> Any: ...


def _add_flag(group: _Group, f: dataclasses.Field) -> None:
    meta, flag = f.metadata, _flag(f)
    kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
    if f.name == "overrides":
        group.add_argument(flag, nargs="*", default=[], metavar=meta["metavar"], **kwargs)
        return
    if f.type == "list[str]" and meta["choices"] is None and f.name == "callbacks":
        group.add_argument(flag, action="append", default=[], metavar=meta["metavar"], **kwargs)
        return
    if f.type == "list[str]":
        group.add_argument(flag, nargs="+", default=[], metavar=meta["metavar"], **kwargs)
        return
    if f.name == "resume":  # --resume or --resume auto
        group.add_argument(
            flag, nargs="?", const=True, default=False, choices=["auto", True], **kwargs
        )
        return
    if f.type in ("bool", bool):
        action = "store_false" if f.default is True else "store_true"
        group.add_argument(flag, action=action, **kwargs)
        return
    if f.type == "bool | None":
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, **kwargs)
        return
    kind = str(f.type).split(" | ")[0]
    converter = meta.get("parse") or {"int": int, "float": float}.get(kind, str)
    if meta["metavar"]:
        kwargs["metavar"] = meta["metavar"]
    if meta["choices"]:
        kwargs["choices"] = list(meta["choices"])
    group.add_argument(flag, type=converter, default=f.default, **kwargs)


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    """The flags every recipe shares, grouped; ``method=None`` adds a ``--method`` flag."""
    parser = argparse.ArgumentParser(
        description=f"Train {method or 'an SSL method'} with cut-initialisation (hub_cutinit).",
        formatter_class=_HelpFormatter,
    )
    if method is None:
        parser.add_argument("--method", required=True, choices=list_methods())
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in dataclasses.fields(TrainConfig):
        if f.metadata["cli"]:
            _add_flag(groups[f.metadata["group"]], f)
    return parser


def parse_args(method: str | None, argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse recipe flags into a validated :class:`TrainConfig`."""
    parser = build_parser(method)
    values = vars(parser.parse_args(argv))
    try:
        values["overrides"] = parse_set(values["overrides"], method=values.get("method") or method)
        if values["eval_split"] in ("none", ""):
            values["eval_split"] = None
        return TrainConfig(method=values.pop("method", method), **values)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits
