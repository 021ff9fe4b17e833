"""Cut-initialisation sweeps (PAPER §6 F), norm vs weight decay (§6 D) and GradScale (§5).

One sweep trains every combination of ``methods × cs × weight_decays × grad_scale_powers ×
seeds`` with :func:`hub_cutinit.training.train` under one budget, then writes

- ``sweep.csv``: one row per (method, c, λ, p, seed, epoch) with the kNN accuracy and the mean
  embedding norms (backbone, projection, prediction); see
  :func:`hub_cutinit.experiments.tables.epoch_rows`;
- ``curves.png``: kNN accuracy and mean norms against epoch, one line per c (and λ, p when
  those vary): the mean over seeds, with a band from the lowest to the highest seed; one
  panel row per method (:func:`hub_cutinit.experiments.plots.plot_curves`);
- ``summary.md``: final kNN mean ± std over seeds per method × c (× λ × p), final mean norms,
  and the baselines of PAPER §8 (same backbone at random init, raw pixels);
- with several λ: ``weight_decay.png`` (final mean norm against λ per method) and
  ``weight_decay.md``.

Every run lives in ``runs_dir/<method>_c<c>_wd<λ>_gs<p>_seed<s>-<budget hash>/`` with its
``result.json`` (written last, atomically) and the saved model (``model/``, loadable with
:func:`hub_cutinit.hub.load_ssl_model`). A sweep started again skips the runs whose
``result.json`` exists and resumes an interrupted run from its last epoch checkpoint, so the
same command can be repeated until it finishes; runs of two sweeps with the same budget are
shared (e.g. the λ = 5e-4, c = 1 runs of a cut sweep and of a weight-decay sweep).

Example (a tiny sweep; ``recipes/cut_sweep.py`` is the command-line front end)::

    from hub_cutinit.experiments.sweep import SweepConfig, run_sweep
    cfg = SweepConfig(methods=["simclr"], cs=[1, 3], seeds=[0], epochs=1,
                      max_train_examples=64, batch_size=16, eval_max_samples=64, knn_k=10,
                      backbone="test_resnet", runs_dir="/tmp/sweep/runs", out_dir="/tmp/sweep")
    results = run_sweep(cfg)          # trains 2 runs, writes /tmp/sweep/sweep.csv, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub_cutinit.atomic import write_json_atomic, write_text_atomic
from hub_cutinit.experiments.plots import plot_curves, plot_weight_decay
from hub_cutinit.experiments.tables import (
    epoch_rows,
    summarise,
    summary_markdown,
    weight_decay_markdown,
    write_csv,
)
from hub_cutinit.registry import get_method_defaults, get_preset, list_methods
from hub_cutinit.set_flag import ALL_METHODS, parse_set

__all__ = [
    "RESULT_NAME",
    "SweepConfig",
    "RunSpec",
    "sweep_grid",
    "small_heads",
    "method_overrides",
    "run_dir",
    "train_config",
    "subset_dataset",
    "initial_norms",
    "run_one",
    "run_sweep",
    "load_results",
    "scale_note",
    "write_outputs",
    "build_parser",
    "parse_args",
    "main",
]

#: Written last (atomically) into a run's folder: the run is finished when it exists.
RESULT_NAME = "result.json"


@dataclass
class SweepConfig:
    """A sweep: the grid (methods × cs × weight_decays × grad_scale_powers × seeds), the budget
    of every run, and where results go. ``None`` in ``weight_decays`` means the method's λ."""

    methods: list[str] = field(default_factory=lambda: ["simclr", "byol"])
    cs: list[float] = field(default_factory=lambda: [1.0, 3.0, 9.0])
    weight_decays: list[float | None] = field(default_factory=lambda: [5e-4])
    grad_scale_powers: list[float] = field(default_factory=lambda: [0.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    backbone: str = "resnet18"
    dataset: str = "builtin"
    train_split: str = "train"
    eval_split: str = "test"
    epochs: int = 3
    batch_size: int = 128
    image_size: int = 32
    max_train_examples: int | None = None
    eval_max_samples: int | None = None
    knn_k: int = 200
    lr: float | None = None
    small_heads: bool = False
    #: per-method hyper-parameters: {"byol": {"proj_dim": 256}}; "*" applies to every method
    #: whose defaults have the key
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: bool = True
    mixed_precision: str = "no"
    num_workers: int = 0
    runs_dir: str = "outputs/cut_sweep"
    out_dir: str = "recipes/results/cut_sweep"
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        known = list_methods()
        for name, values in (
            ("methods", self.methods),
            ("cs", self.cs),
            ("weight-decays", self.weight_decays),
            ("grad-scale-powers", self.grad_scale_powers),
            ("seeds", self.seeds),
        ):
            if not values:
                raise ValueError(f"--{name} needs at least one value.")
            if len(set(values)) != len(values):
                raise ValueError(f"--{name} lists a value twice: {list(values)}.")
        bad = [m for m in self.methods if m not in known]
        if bad:
            raise ValueError(f"Unknown method(s) {bad}; pick from {known}.")
        if any(not (math.isfinite(c) and c > 0) for c in self.cs):
            raise ValueError(f"--cs must be finite numbers > 0 (1 = no cut), got {self.cs}.")
        if any(wd is not None and not (math.isfinite(wd) and wd >= 0) for wd in self.weight_decays):
            raise ValueError(f"--weight-decays must be numbers >= 0, got {self.weight_decays}.")
        if any(not math.isfinite(p) for p in self.grad_scale_powers):
            raise ValueError(f"--grad-scale-powers must be finite, got {self.grad_scale_powers}.")
        for name in ("epochs", "batch_size", "image_size", "knn_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer.")
        for name in ("max_train_examples", "eval_max_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer.")
        if self.max_train_examples is not None and self.max_train_examples < self.batch_size:
            raise ValueError(
                f"--max-train-examples {self.max_train_examples} is smaller than one batch "
                f"({self.batch_size}); raise it or lower --batch-size."
            )
        unknown = sorted(set(self.overrides) - set(known) - {ALL_METHODS})
        if unknown:
            raise ValueError(f"--set names unknown method(s) {unknown}; use METHOD.KEY=VALUE.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    def budget(self, method: str) -> dict[str, Any]:
        """The settings shared by every run of ``method`` (they name the run directories)."""
        return {
            "backbone": self.backbone,
            "dataset": self.dataset,
            "train_split": self.train_split,
            "eval_split": self.eval_split,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "max_train_examples": self.max_train_examples,
            "eval_max_samples": self.eval_max_samples,
            "knn_k": self.knn_k,
            "lr": self.lr,
            "baselines": self.baselines,
            "mixed_precision": self.mixed_precision,
            "overrides": method_overrides(self, method),
        }


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid."""

    method: str
    c: float
    weight_decay: float | None
    grad_scale_power: float
    seed: int

    @property
    def name(self) -> str:
        wd = "default" if self.weight_decay is None else f"{self.weight_decay:g}"
        return f"{self.method}_c{self.c:g}_wd{wd}_gs{self.grad_scale_power:g}_seed{self.seed}"


def sweep_grid(cfg: SweepConfig) -> list[RunSpec]:
    """Every run of the sweep; seeds outermost, so that a sweep stopped half-way already has
    one complete seed of every configuration.

    Example:
        >>> grid = sweep_grid(SweepConfig(methods=["byol"], cs=[1, 9], seeds=[0, 1]))
        >>> [s.name for s in grid][:2]
        ['byol_c1_wd0.0005_gs0_seed0', 'byol_c9_wd0.0005_gs0_seed0']
    """
    return [
        RunSpec(method, float(c), None if wd is None else float(wd), float(p), int(seed))
        for seed in cfg.seeds
        for method in cfg.methods
        for wd in cfg.weight_decays
        for p in cfg.grad_scale_powers
        for c in cfg.cs
    ]


def small_heads(method: str) -> dict[str, Any]:
    """The method's ``"cpu"`` preset (:func:`hub_cutinit.registry.get_preset`), or ``{}``
    (its paper heads) for a method that defines none.

    Example:
        >>> small_heads("simclr"), sorted(small_heads("byol"))
        ({}, ['pred_hidden_dim', 'proj_dim', 'proj_hidden_dim'])
    """
    try:
        return get_preset(method, "cpu")
    except ValueError:  # a registered method without a "cpu" preset
        return {}


def method_overrides(cfg: SweepConfig, method: str) -> dict[str, Any]:
    """Hyper-parameter overrides for ``method``: :func:`small_heads` (with ``small_heads``),
    then ``overrides["*"]`` (keys the method has), then ``overrides[method]``.

    Example:
        >>> cfg = SweepConfig(small_heads=True, overrides={"*": {"proj_dim": 64}})
        >>> method_overrides(cfg, "byol")["proj_dim"], method_overrides(cfg, "simclr")
        (64, {'proj_dim': 64})
    """
    defaults = get_method_defaults(method)
    out: dict[str, Any] = small_heads(method) if cfg.small_heads else {}
    out.update({k: v for k, v in cfg.overrides.get("*", {}).items() if k in defaults})
    own = cfg.overrides.get(method, {})
    bad = sorted(set(own) - set(defaults))
    if bad:
        raise ValueError(
            f"--set {method}.{bad[0]}: {method} has no hyper-parameter {bad[0]!r}; valid: "
            f"{sorted(k for k in defaults if k != 'family')}."
        )
    out.update(own)
    return out


def _budget_hash(cfg: SweepConfig, method: str) -> str:
    text = json.dumps(cfg.budget(method), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def run_dir(cfg: SweepConfig, spec: RunSpec) -> Path:
    """``runs_dir/<spec.name>-<hash of the budget>``: same budget, same directory."""
    return Path(cfg.runs_dir) / f"{spec.name}-{_budget_hash(cfg, spec.method)}"


def subset_dataset(cfg: SweepConfig) -> str:
    """The dataset the runs train on: ``cfg.dataset`` or, with ``max_train_examples``, a local
    parquet copy of its first N training rows (stored order) and its whole eval split, written
    once under ``runs_dir/data/``. Epochs are then real passes over the N images, and the kNN
    bank is the same N images."""
    if cfg.max_train_examples is None:
        return cfg.dataset
    from datasets import Dataset

    from hub_cutinit.data import resolve_dataset

    tag = hashlib.sha1(f"{cfg.dataset}|{cfg.train_split}|{cfg.eval_split}".encode()).hexdigest()[:8]
    target = Path(cfg.runs_dir) / "data" / f"subset-{tag}-n{cfg.max_train_examples}"
    done = target / "COMPLETE"
    if done.is_file():
        return str(target)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    splits = [("train", cfg.train_split, cfg.max_train_examples), ("test", cfg.eval_split, None)]
    for file_split, split, limit in splits:
        ds, _, _ = resolve_dataset(cfg.dataset, split)
        if limit is not None:
            ds = ds.take(limit)
        rows = list(ds)
        if limit is not None and len(rows) < limit:
            raise ValueError(
                f"--max-train-examples {limit} exceeds the {len(rows)} images of "
                f"{cfg.dataset!r} split {split!r}; lower it."
            )
        Dataset.from_list(rows, features=ds.features).to_parquet(
            str(tmp / f"{file_split}-00000-of-00001.parquet")
        )
    (tmp / "COMPLETE").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return str(target)


def train_config(cfg: SweepConfig, spec: RunSpec, dataset: str | None = None) -> Any:
    """The :class:`~hub_cutinit.training.TrainConfig` of one run (saved model in ``model/``)."""
    from hub_cutinit.training import TrainConfig

    subset = cfg.max_train_examples is not None
    return TrainConfig(
        method=spec.method,
        backbone=cfg.backbone,
        dataset=dataset or cfg.dataset,
        train_split="train" if subset else cfg.train_split,
        eval_split="test" if subset else cfg.eval_split,
        c=spec.c,
        weight_decay=spec.weight_decay,
        lr=cfg.lr,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        image_size=cfg.image_size,
        output_dir=str(run_dir(cfg, spec) / "model"),
        resume=True,
        eval_every=0,
        knn_k=cfg.knn_k,
        eval_max_samples=cfg.eval_max_samples,
        baselines=cfg.baselines,
        checkpoint_every=0,
        seed=spec.seed,
        mixed_precision=cfg.mixed_precision,
        num_workers=cfg.num_workers,
        log_every=10,
        grad_scale_power=spec.grad_scale_power,
        overrides=method_overrides(cfg, spec.method),
    )


def initial_norms(train_cfg: Any) -> dict[str, float]:
    """Mean embedding norms of the freshly cut model (seeded like the run) on its first
    training batch, train-mode BatchNorm, no update."""
    import torch
    from accelerate.utils import set_seed

    from hub_cutinit import data as data_lib
    from hub_cutinit.factory import create_ssl_model

    set_seed(train_cfg.seed)
    model = create_ssl_model(
        train_cfg.method, train_cfg.backbone, c=train_cfg.c, **train_cfg.model_overrides()
    )
    stream = data_lib.build_train_stream(
        train_cfg.dataset,
        method=train_cfg.method,
        image_size=train_cfg.image_size,
        split=train_cfg.train_split,
        num_local_views=model.num_views()[1],
        seed=train_cfg.seed,
        shuffle_buffer=train_cfg.shuffle_buffer,
    )
    loader = data_lib.make_train_loader(stream, batch_size=train_cfg.batch_size, num_workers=0)
    batch = next(iter(loader))
    model.train()
    with torch.no_grad():
        out = model(batch["views"])
    return {k: float(v.float().norm(dim=1).mean()) for k, v in out.embeddings.items()}


def run_one(
    cfg: SweepConfig,
    spec: RunSpec,
    *,
    dataset: str | None = None,
    train_fn: Callable[[Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train one run (resuming its checkpoint if any) and write its ``result.json``."""
    from hub_cutinit.training import train

    directory = run_dir(cfg, spec)
    directory.mkdir(parents=True, exist_ok=True)
    tcfg = train_config(cfg, spec, dataset)
    init = initial_norms(tcfg)
    result = (train_fn or train)(tcfg)
    payload = {
        "spec": dataclasses.asdict(spec),
        "budget": cfg.budget(spec.method),
        "initial_norms": init,
        "result": {k: v for k, v in result.items() if k != "data_config"},
    }
    if not cfg.keep_checkpoints:
        shutil.rmtree(Path(tcfg.output_dir) / "checkpoints", ignore_errors=True)
    write_json_atomic(directory / RESULT_NAME, payload, allow_nan=True)
    return payload


def load_results(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The ``result.json`` payloads of the sweep's finished runs, in grid order."""
    out = []
    for spec in sweep_grid(cfg):
        path = run_dir(cfg, spec) / RESULT_NAME
        if path.is_file():
            out.append(json.loads(path.read_text()))
    return out


def _progress(i: int, total: int, spec: RunSpec, payload: Mapping[str, Any], took: float) -> str:
    res = payload["result"]
    knn = res.get("knn_accuracy")
    return (
        f"[{i}/{total}] {spec.name}: kNN {'-' if knn is None else f'{knn:.4f}'}, "
        f"{res.get('steps')} steps in {took:.0f} s "
        f"({res.get('train_images_per_s', 0):.0f} img/s)"
    )


def run_sweep(
    cfg: SweepConfig,
    *,
    train_fn: Callable[[Any], dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
    write: bool = True,
) -> list[dict[str, Any]]:
    """Train the runs of ``cfg`` that have no ``result.json`` yet, then write the CSV, plots and
    tables into ``cfg.out_dir`` (unless ``write=False``). Returns every run's payload."""
    grid = sweep_grid(cfg)
    todo = [s for s in grid if not (run_dir(cfg, s) / RESULT_NAME).is_file()]
    log(
        f"sweep: {len(grid)} runs, {len(grid) - len(todo)} already done, {len(todo)} to train "
        f"(runs in {cfg.runs_dir})"
    )
    dataset = subset_dataset(cfg) if todo else None
    started = time.perf_counter()
    for i, spec in enumerate(todo, start=1):
        t0 = time.perf_counter()
        payload = run_one(cfg, spec, dataset=dataset, train_fn=train_fn)
        eta = (time.perf_counter() - started) / i * (len(todo) - i)
        took = time.perf_counter() - t0
        log(f"{_progress(i, len(todo), spec, payload, took)}; ETA {eta / 60:.1f} min")
    results = load_results(cfg)
    if write:
        for path in write_outputs(cfg, results):
            log(f"wrote {path}")
    return results


# --------------------------------------------------------------------------------- outputs
def scale_note(cfg: SweepConfig, summary: Sequence[Mapping[str, Any]]) -> str:
    """The paragraph under the tables: backbone, data, epochs, heads, kNN protocol, speed."""
    n_train = f"first {cfg.max_train_examples}" if cfg.max_train_examples else "all"
    ev = f"first {cfg.eval_max_samples}" if cfg.eval_max_samples else "all"
    epochs = {round(r["epochs"], 2) for r in summary}
    ips = statistics.fmean([r["images_per_s"] for r in summary]) if summary else float("nan")
    heads = ", ".join(
        f"{m} {json.dumps(method_overrides(cfg, m)) if method_overrides(cfg, m) else 'paper'}"
        for m in cfg.methods
    )
    return (
        f"Scale: {cfg.backbone} at {cfg.image_size}px, dataset `{cfg.dataset}` "
        f"({n_train} images of split `{cfg.train_split}`), {'/'.join(map(str, sorted(epochs)))} "
        f"epoch(s), batch {cfg.batch_size}, "
        f"heads: {heads}; "
        f"kNN (k={cfg.knn_k}, T=0.1) on the {ev} images of `{cfg.eval_split}` against a bank of "
        f"the {ev} training images; mean ± sample std over seeds; "
        f"mean training throughput {ips:.0f} images/s. Norms: mean ‖z‖ over the last epoch's "
        "training batches (train mode); init: one batch at initialisation."
    )


def write_outputs(cfg: SweepConfig, results: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write ``sweep.csv``, ``curves.png``, ``summary.md`` (and, with several λ,
    ``weight_decay.png`` / ``weight_decay.md``) and ``sweep_config.json`` into
    ``cfg.out_dir``, each atomically."""
    if not results:
        return []
    out = Path(cfg.out_dir)
    rows = [row for payload in results for row in epoch_rows(payload)]
    summary = summarise(results)
    note = scale_note(cfg, summary)
    title = (
        f"{cfg.backbone} {cfg.image_size}px on {cfg.dataset} "
        f"({cfg.max_train_examples or 'all'} train images), {cfg.epochs} epochs, "
        f"batch {cfg.batch_size}; "
    )
    paths = [
        write_csv(rows, out / "sweep.csv"),
        plot_curves(
            rows,
            summary,
            out / "curves.png",
            title=title + "line: mean over seeds, band: min–max over seeds",
        ),
        write_text_atomic(out / "summary.md", summary_markdown(summary, note)),
    ]
    if len({r["weight_decay"] for r in summary}) > 1:
        bars = "error bars: ± std over seeds (with more than one seed)"
        paths.append(plot_weight_decay(summary, out / "weight_decay.png", title=title + bars))
        text = weight_decay_markdown(summary) + "\n" + note + "\n"
        paths.append(write_text_atomic(out / "weight_decay.md", text))
    paths.append(write_json_atomic(out / "sweep_config.json", cfg.to_dict()))
    return paths


# ------------------------------------------------------------------------------------ CLI
def _wd(text: str) -> float | None:
    return None if text.lower() in ("default", "none") else float(text)


def _add_grid_flags(p: argparse.ArgumentParser, d: SweepConfig) -> None:
    p.add_argument("--methods", nargs="+", default=d.methods, choices=list_methods())
    p.add_argument("--cs", nargs="+", type=float, default=d.cs, help="cut factors (1 = no cut)")
    p.add_argument(
        "--weight-decays",
        nargs="+",
        type=_wd,
        default=d.weight_decays,
        help="λ values ('default' = the method's); several values make the weight-decay plot",
    )
    p.add_argument(
        "--grad-scale-powers",
        nargs="+",
        type=float,
        default=d.grad_scale_powers,
        help="GradScale p values (0 = standard training, 1 = no 1/‖z‖ factor)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=d.seeds)


def _add_budget_flags(p: argparse.ArgumentParser, d: SweepConfig) -> None:
    p.add_argument("--backbone", default=d.backbone, help="any timm model name")
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--train-split", default=d.train_split)
    p.add_argument("--eval-split", default=d.eval_split)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument(
        "--max-train-examples",
        type=int,
        default=None,
        help="train (and build the kNN bank) on the first N training images only",
    )
    p.add_argument(
        "--eval-max-samples",
        type=int,
        default=None,
        help="kNN on the first N images of the bank and of the eval split",
    )
    p.add_argument("--knn-k", type=int, default=d.knn_k)
    p.add_argument("--lr", type=float, default=None, help="default: base_lr × batch / 256")
    heads = {m: small_heads(m) for m in list_methods()}
    p.add_argument(
        "--small-heads",
        action="store_true",
        help=f"each method's 'cpu' preset (smaller heads for CPU runs): {json.dumps(heads)}",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="[METHOD.]KEY=VALUE",
        help="hyper-parameters, e.g. byol.proj_dim=256; without METHOD: every method having KEY",
    )
    p.add_argument("--no-baselines", dest="baselines", action="store_false")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    p.add_argument("--num-workers", type=int, default=0)


def _add_action_flags(p: argparse.ArgumentParser, d: SweepConfig) -> None:
    p.add_argument("--runs-dir", default=d.runs_dir, help="per-run models and result.json")
    p.add_argument("--out", default=d.out_dir, help="CSV, PNG and markdown go here")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument(
        "--no-train",
        action="store_true",
        help="only (re)write CSV/plots/tables from the finished runs",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (torch.set_num_threads); 1 is faster on a machine whose cores "
        "are busy with other jobs",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``recipes/cut_sweep.py``.

    Example:
        >>> args = build_parser().parse_args(["--cs", "1", "9", "--weight-decays", "default"])
        >>> args.cs, args.weight_decays, args.methods
        ([1.0, 9.0], [None], ['simclr', 'byol'])
    """
    d = SweepConfig()
    p = argparse.ArgumentParser(
        description="Cut-init sweep (PAPER §6 F), norm vs weight decay (§6 D), GradScale (§5): "
        "train every method × c × λ × p × seed, write CSV, plots and markdown tables.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_grid_flags(p, d)
    _add_budget_flags(p, d)
    _add_action_flags(p, d)
    return p


_ACTION_FLAGS = ("set", "out", "no_train", "threads", "dry_run")


def parse_args(argv: Sequence[str] | None = None) -> tuple[SweepConfig, argparse.Namespace]:
    """Flags → a validated :class:`SweepConfig` (and the namespace, for the action flags)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k not in _ACTION_FLAGS}
    try:
        cfg = SweepConfig(**values, out_dir=args.out, overrides=parse_set(args.set))
        for method in cfg.methods:
            method_overrides(cfg, method)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits
    return cfg, args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Entry point of ``recipes/cut_sweep.py`` (``python -m hub_cutinit.experiments.sweep``)."""
    cfg, args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.dry_run:
        for spec in sweep_grid(cfg):
            done = (run_dir(cfg, spec) / RESULT_NAME).is_file()
            print(f"{'done ' if done else 'todo '} {run_dir(cfg, spec)}")
        return []
    if args.no_train:
        results = load_results(cfg)
        for path in write_outputs(cfg, results):
            print(f"wrote {path}")
    else:
        results = run_sweep(cfg)
    summary = summarise(results)
    if summary:
        print(summary_markdown(summary, scale_note(cfg, summary)))
    return results


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
