"""Cut-initialisation sweeps (PAPER §6 F), norm vs weight decay (§6 D) and GradScale (§5).

One sweep trains every combination of ``methods × cs × weight_decays × grad_scale_powers ×
seeds`` with :func:`hub_cutinit.training.train` under one budget, then writes

- ``sweep.csv``: one row per (method, c, λ, p, seed, epoch) with the kNN accuracy and the mean
  embedding norms (backbone, projection, prediction). Epoch 0 is the model at initialisation:
  its kNN accuracy is the random-init baseline of that run, its norms come from one training
  batch through the freshly cut model (train-mode BatchNorm). Later epochs: kNN at the end of
  the epoch, norms averaged over the epoch's training batches (augmented views, train mode);
- ``curves.png``: kNN accuracy and mean norms against epoch, one line per c (and λ, p when
  those vary): the mean over seeds, with a band from the lowest to the highest seed; one
  panel row per method;
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

    from hub_cutinit.sweep import SweepConfig, run_sweep
    cfg = SweepConfig(methods=["simclr"], cs=[1, 3], seeds=[0], epochs=1,
                      max_train_examples=64, batch_size=16, eval_max_samples=64, knn_k=10,
                      backbone="test_resnet", runs_dir="/tmp/sweep/runs", out_dir="/tmp/sweep")
    results = run_sweep(cfg)          # trains 2 runs, writes /tmp/sweep/sweep.csv, ...
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub_cutinit.plotting import save_figure

__all__ = [
    "CPU_HEADS",
    "EMBEDDINGS",
    "CSV_COLUMNS",
    "SweepConfig",
    "RunSpec",
    "sweep_grid",
    "method_overrides",
    "run_dir",
    "train_config",
    "subset_dataset",
    "run_one",
    "run_sweep",
    "load_results",
    "epoch_rows",
    "write_csv",
    "summarise",
    "summary_markdown",
    "weight_decay_markdown",
    "plot_curves",
    "plot_weight_decay",
    "write_outputs",
    "build_parser",
    "parse_args",
    "main",
]

#: Embeddings whose mean norm is reported (``prediction`` only for BYOL / SimSiam).
EMBEDDINGS: tuple[str, ...] = ("backbone", "projection", "prediction")

#: Columns of ``sweep.csv``.
CSV_COLUMNS: tuple[str, ...] = (
    "method",
    "c",
    "weight_decay",
    "grad_scale_power",
    "seed",
    "epoch",
    "step",
    "knn_accuracy",
    "norm_backbone",
    "norm_projection",
    "norm_prediction",
)

#: Smaller heads for CPU runs (``--small-heads``): BYOL / SimSiam 2048-d heads are most of the
#: step time on a CPU; SimCLR's paper head is already small.
CPU_HEADS: dict[str, dict[str, Any]] = {
    "byol": {"proj_hidden_dim": 1024, "proj_dim": 256, "pred_hidden_dim": 256},
    "simsiam": {"proj_hidden_dim": 1024, "proj_dim": 256, "pred_hidden_dim": 256},
    "moco": {"proj_hidden_dim": 512, "queue_size": 1024},
    "dino": {"head_out_dim": 4096, "head_hidden_dim": 1024, "num_local_views": 2},
}

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
        from hub_cutinit.registry import list_methods

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
        unknown = sorted(set(self.overrides) - set(known) - {"*"})
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


def method_overrides(cfg: SweepConfig, method: str) -> dict[str, Any]:
    """Hyper-parameter overrides for ``method``: ``CPU_HEADS`` (with ``small_heads``), then
    ``overrides["*"]`` (keys the method has), then ``overrides[method]``.

    Example:
        >>> cfg = SweepConfig(small_heads=True, overrides={"*": {"proj_dim": 64}})
        >>> method_overrides(cfg, "byol")["proj_dim"], method_overrides(cfg, "simclr")
        (64, {'proj_dim': 64})
    """
    from hub_cutinit.registry import get_method_defaults

    defaults = get_method_defaults(method)
    out: dict[str, Any] = dict(CPU_HEADS.get(method, {})) if cfg.small_heads else {}
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
    from hub_cutinit.registry import create_ssl_model

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


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=True, default=str) + "\n")
    os.replace(tmp, path)


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
    _write_json_atomic(directory / RESULT_NAME, payload)
    return payload


def load_results(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The ``result.json`` payloads of the sweep's finished runs, in grid order."""
    out = []
    for spec in sweep_grid(cfg):
        path = run_dir(cfg, spec) / RESULT_NAME
        if path.is_file():
            out.append(json.loads(path.read_text()))
    return out


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
        took = time.perf_counter() - t0
        elapsed = time.perf_counter() - started
        eta = elapsed / i * (len(todo) - i)
        res = payload["result"]
        knn = res.get("knn_accuracy")
        log(
            f"[{i}/{len(todo)}] {spec.name}: kNN {'-' if knn is None else f'{knn:.4f}'}, "
            f"{res.get('steps')} steps in {took:.0f} s "
            f"({res.get('train_images_per_s', 0):.0f} img/s); ETA {eta / 60:.1f} min"
        )
    results = load_results(cfg)
    if write:
        for path in write_outputs(cfg, results):
            log(f"wrote {path}")
    return results


# ------------------------------------------------------------------------------ tabulation
def _norm_means(record: Mapping[str, Any]) -> dict[str, float]:
    norms = record.get("norms", record)
    return {
        k: float(v["mean"])
        for k, v in norms.items()
        if isinstance(v, Mapping) and v.get("mean") is not None and v.get("count", 1)
    }


def _records(history: Any) -> list[dict[str, Any]]:
    if isinstance(history, Mapping):
        return list(history.get("records", []))
    return list(history or [])


def epoch_rows(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One run's rows of ``sweep.csv``: epoch 0 (init) then one row per evaluated epoch.

    The epoch is ``step / steps_per_epoch`` (rounded to 2 decimals), so the kNN record of the
    final evaluation and the last epoch's norms line up even when the training loop's epoch
    counter has not advanced at the very end.
    """
    spec, res = payload["spec"], payload["result"]
    spe = max(1, int(res.get("steps_per_epoch") or 1))
    base = {
        "method": spec["method"],
        "c": float(res.get("c", spec["c"])),
        "weight_decay": float(res["weight_decay"]),
        "grad_scale_power": float(spec["grad_scale_power"]),
        "seed": int(spec["seed"]),
    }
    by_step: dict[int, dict[str, Any]] = {}
    init = {"knn_accuracy": (res.get("baselines") or {}).get("random_init_knn")}
    init.update({f"norm_{k}": v for k, v in (payload.get("initial_norms") or {}).items()})
    by_step[0] = init
    for rec in res.get("knn", []):
        by_step.setdefault(int(rec["step"]), {})["knn_accuracy"] = float(rec["knn_accuracy"])
    for rec in _records(res.get("norm_history")):
        row = by_step.setdefault(int(rec["step"]), {})
        row.update({f"norm_{k}": v for k, v in _norm_means(rec).items()})
    rows = []
    for step in sorted(by_step):
        row = {**base, "epoch": round(step / spe, 2), "step": step}
        for col in CSV_COLUMNS[7:]:
            value = by_step[step].get(col)
            row[col] = float("nan") if value is None else float(value)
        rows.append(row)
    return rows


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write rows with :data:`CSV_COLUMNS` (NaN as an empty cell)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for row in rows:
            out = {}
            for col in CSV_COLUMNS:
                value = row.get(col)
                if isinstance(value, float) and math.isnan(value):
                    value = ""
                elif isinstance(value, float) and col not in ("c", "weight_decay"):
                    value = f"{value:.6g}"
                out[col] = value
            writer.writerow(out)
    return path


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
    return statistics.fmean(vals), std, len(vals)


def _key(payload: Mapping[str, Any]) -> tuple[str, float, float, float]:
    res, spec = payload["result"], payload["spec"]
    return (
        spec["method"],
        float(res.get("c", spec["c"])),
        float(res["weight_decay"]),
        float(spec["grad_scale_power"]),
    )


def summarise(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, c, λ, p): final kNN, final norms and baselines as mean/std over seeds."""
    groups: dict[tuple[str, float, float, float], list[Mapping[str, Any]]] = {}
    for payload in results:
        groups.setdefault(_key(payload), []).append(payload)
    out = []
    for (method, c, wd, p), runs in groups.items():
        res = [r["result"] for r in runs]
        finals = [_norm_means(r.get("final_norms") or {}) for r in res]
        row: dict[str, Any] = {
            "method": method,
            "c": c,
            "weight_decay": wd,
            "grad_scale_power": p,
            "seeds": sorted(int(r["spec"]["seed"]) for r in runs),
            "epochs": statistics.fmean(
                [r["steps"] / max(1, r.get("steps_per_epoch") or 1) for r in res]
            ),
            "steps": res[0].get("steps"),
            "images_per_s": statistics.fmean([r.get("train_images_per_s") or 0 for r in res]),
            "wall_time_s": sum(r.get("wall_time_s") or 0 for r in res),
        }
        row["knn"] = _mean_std([r.get("knn_accuracy") or float("nan") for r in res])
        for name in EMBEDDINGS:
            row[f"norm_{name}"] = _mean_std([f.get(name, float("nan")) for f in finals])
            row[f"init_norm_{name}"] = _mean_std(
                [(r.get("initial_norms") or {}).get(name, float("nan")) for r in runs]
            )
        base = [r.get("baselines") or {} for r in res]
        row["random_init_knn"] = _mean_std([b.get("random_init_knn", float("nan")) for b in base])
        row["raw_pixels_knn"] = _mean_std([b.get("raw_pixels_knn", float("nan")) for b in base])
        out.append(row)
    out.sort(key=lambda r: (r["method"], r["weight_decay"], r["grad_scale_power"], r["c"]))
    return out


def _pm(stat: tuple[float, float, int], digits: int = 4, pct: bool = False) -> str:
    mean, std, n = stat
    if n == 0:
        return "–"
    scale = 100.0 if pct else 1.0
    if pct:
        text = f"{mean * scale:.1f}"
        return text + (f" ± {std * scale:.1f}" if n > 1 else "")
    text = f"{mean:.{digits}g}"
    return text + (f" ± {std:.2g}" if n > 1 else "")


def _varies(summary: Sequence[Mapping[str, Any]], key: str) -> bool:
    return len({r[key] for r in summary}) > 1


def summary_markdown(summary: Sequence[Mapping[str, Any]], cfg: SweepConfig | None = None) -> str:
    """The markdown table of :func:`summarise` (kNN in %, mean ± std over seeds)."""
    show_p = _varies(summary, "grad_scale_power")
    head = ["method", "c", "λ"] + (["p"] if show_p else [])
    head += [
        "seeds",
        "kNN acc. % (final)",
        "random-init kNN %",
        "raw-pixel kNN %",
        "Δ vs random init",
        "‖backbone‖ init → final",
        "‖projection‖ init → final",
        "‖prediction‖ init → final",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        delta = r["knn"][0] - r["random_init_knn"][0]
        cells = [r["method"], f"{r['c']:g}", f"{r['weight_decay']:g}"]
        cells += [f"{r['grad_scale_power']:g}"] if show_p else []
        cells += [
            ",".join(map(str, r["seeds"])),
            _pm(r["knn"], pct=True),
            _pm(r["random_init_knn"], pct=True),
            _pm((r["raw_pixels_knn"][0], float("nan"), min(1, r["raw_pixels_knn"][2])), pct=True),
            "–" if math.isnan(delta) else f"{delta * 100:+.1f}",
        ]
        for name in EMBEDDINGS:
            final, init = r[f"norm_{name}"], r[f"init_norm_{name}"]
            cells.append("–" if final[2] == 0 else f"{init[0]:.3g} → {_pm(final, 3)}")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if cfg is not None:
        text += "\n" + _scale_note(cfg, summary) + "\n"
    return text


def _scale_note(cfg: SweepConfig, summary: Sequence[Mapping[str, Any]]) -> str:
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


def weight_decay_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """Experiment D: final mean norms and kNN per method × λ (× c, p)."""
    head = ["method", "c", "p", "λ", "seeds", "‖backbone‖", "‖projection‖", "‖prediction‖", "kNN %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ordered = sorted(
        summary, key=lambda r: (r["method"], r["c"], r["grad_scale_power"], r["weight_decay"])
    )
    for r in ordered:
        cells = [
            r["method"],
            f"{r['c']:g}",
            f"{r['grad_scale_power']:g}",
            f"{r['weight_decay']:g}",
            ",".join(map(str, r["seeds"])),
        ]
        cells += ["–" if r[f"norm_{n}"][2] == 0 else _pm(r[f"norm_{n}"], 3) for n in EMBEDDINGS]
        cells.append(_pm(r["knn"], pct=True))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- plots
def _variant_label(row: Mapping[str, Any], vary: Sequence[str]) -> str:
    names = {"c": "c", "weight_decay": "λ", "grad_scale_power": "p"}
    return ", ".join(f"{names[k]}={row[k]:g}" for k in vary) or f"c={row['c']:g}"


def plot_curves(
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """kNN accuracy and mean norms (backbone, projection, prediction) against epoch; one line
    (the mean over seeds) per variant (c, λ, p: whichever vary), the band spans the seeds
    (min to max); one row of panels per method; dashed lines: random-init (mean over runs) and
    raw-pixel kNN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in rows})
    vary = [k for k in ("c", "weight_decay", "grad_scale_power") if len({r[k] for r in rows}) > 1]
    cols = [
        ("knn_accuracy", "kNN accuracy"),
        ("norm_backbone", "mean ‖backbone‖"),
        ("norm_projection", "mean ‖projection‖"),
    ]
    if any(not math.isnan(r["norm_prediction"]) for r in rows):
        cols.append(("norm_prediction", "mean ‖prediction‖"))
    fig, axes = plt.subplots(
        len(methods), len(cols), figsize=(4.2 * len(cols), 3.0 * len(methods)), squeeze=False
    )
    cmap = plt.get_cmap("viridis")
    for i, method in enumerate(methods):
        mrows = [r for r in rows if r["method"] == method]
        variants = sorted(
            {tuple(r[k] for k in ("c", "weight_decay", "grad_scale_power")) for r in mrows}
        )
        for v_idx, variant in enumerate(variants):
            vrows = [
                r
                for r in mrows
                if tuple(r[k] for k in ("c", "weight_decay", "grad_scale_power")) == variant
            ]
            color = cmap(v_idx / max(1, len(variants) - 1) * 0.85)
            label = _variant_label(vrows[0], vary)
            epochs = sorted({r["epoch"] for r in vrows})
            n_seeds = len({r["seed"] for r in vrows})
            for j, (col, _) in enumerate(cols):
                xs, means, lo, hi = [], [], [], []
                for e in epochs:
                    vals = [r[col] for r in vrows if r["epoch"] == e and not math.isnan(r[col])]
                    if vals:
                        xs.append(e)
                        means.append(statistics.fmean(vals))
                        lo.append(min(vals))
                        hi.append(max(vals))
                if not xs:
                    continue
                ax = axes[i][j]
                ax.plot(xs, means, marker="o", ms=3, color=color, label=f"{label} (n={n_seeds})")
                ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)
        base = [s for s in summary if s["method"] == method]
        ax = axes[i][0]
        if base:
            rand = _mean_std([s["random_init_knn"][0] for s in base])[0]
            pix = _mean_std([s["raw_pixels_knn"][0] for s in base])[0]
            if not math.isnan(rand):
                ax.axhline(rand, color="gray", ls="--", lw=1, label="random init (mean)")
            if not math.isnan(pix):
                ax.axhline(pix, color="black", ls=":", lw=1, label="raw pixels")
        for j, (col, ylabel) in enumerate(cols):
            ax = axes[i][j]
            if not ax.has_data():
                ax.axis("off")
                continue
            ax.set_title(f"{method}: {ylabel}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if col.startswith("norm_"):
                ax.set_yscale("log")
        axes[i][0].legend(fontsize=7)
    return save_figure(fig, path, title=title, title_size=10)


def plot_weight_decay(
    summary: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Experiment D: final mean norm (backbone, projection, prediction) and kNN against λ, one
    line per method (× c, p), error bars = std over seeds; symlog x axis so λ = 0 shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"norm_{n}", f"final mean ‖{n}‖") for n in EMBEDDINGS] + [("knn", "final kNN acc.")]
    panels = [p for p in panels if any(r[p[0]][2] for r in summary)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.2), squeeze=False)
    lines: dict[tuple[str, float, float], list[Mapping[str, Any]]] = {}
    for r in summary:
        lines.setdefault((r["method"], r["c"], r["grad_scale_power"]), []).append(r)
    nonzero = [r["weight_decay"] for r in summary if r["weight_decay"] > 0]
    linthresh = min(nonzero) if nonzero else 1e-6
    for (method, c, p), rs in sorted(lines.items()):
        rs = sorted(rs, key=lambda r: r["weight_decay"])
        label = method + (f" c={c:g}" if len({k[1] for k in lines}) > 1 else "")
        label += f" p={p:g}" if len({k[2] for k in lines}) > 1 else ""
        for ax, (key, _) in zip(axes[0], panels, strict=True):
            pts = [(r["weight_decay"], r[key][0], r[key][1]) for r in rs if r[key][2]]
            if not pts:
                continue
            xs, ys, es = zip(*pts, strict=True)
            es = [0.0 if math.isnan(e) else e for e in es]
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, label=label)
    ticks = sorted({r["weight_decay"] for r in summary})
    for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("weight decay λ")
        ax.set_title(ylabel, fontsize=10)
        ax.grid(alpha=0.3)
        if key.startswith("norm_"):
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path, title=title, title_size=10)


def write_outputs(cfg: SweepConfig, results: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write ``sweep.csv``, ``curves.png``, ``summary.md`` (and, with several λ,
    ``weight_decay.png`` / ``weight_decay.md``) into ``cfg.out_dir``."""
    if not results:
        return []
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for payload in results for row in epoch_rows(payload)]
    summary = summarise(results)
    paths = [write_csv(rows, out / "sweep.csv")]
    title = (
        f"{cfg.backbone} {cfg.image_size}px on {cfg.dataset} "
        f"({cfg.max_train_examples or 'all'} train images), {cfg.epochs} epochs, "
        f"batch {cfg.batch_size}; "
    )
    paths.append(
        plot_curves(
            rows,
            summary,
            out / "curves.png",
            title=title + "line: mean over seeds, band: min–max over seeds",
        )
    )
    md = out / "summary.md"
    md.write_text(summary_markdown(summary, cfg))
    paths.append(md)
    if len({r["weight_decay"] for r in summary}) > 1:
        paths.append(
            plot_weight_decay(
                summary,
                out / "weight_decay.png",
                title=title + "error bars: ± std over seeds (with more than one seed)",
            )
        )
        wd_md = out / "weight_decay.md"
        wd_md.write_text(weight_decay_markdown(summary) + "\n" + _scale_note(cfg, summary) + "\n")
        paths.append(wd_md)
    _write_json_atomic(out / "sweep_config.json", cfg.to_dict())
    paths.append(out / "sweep_config.json")
    return paths


# ------------------------------------------------------------------------------------ CLI
def _parse_set(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(
                f"--set expects [METHOD.]KEY=VALUE (e.g. byol.proj_dim=256), got {item!r}."
            )
        method, dot, name = key.rpartition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(method if dot else "*", {})[name] = value
    return out


def _wd(text: str) -> float | None:
    return None if text.lower() in ("default", "none") else float(text)


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``recipes/cut_sweep.py``."""
    from hub_cutinit.registry import list_methods

    d = SweepConfig()
    p = argparse.ArgumentParser(
        description="Cut-init sweep (PAPER §6 F), norm vs weight decay (§6 D), GradScale (§5): "
        "train every method × c × λ × p × seed, write CSV, plots and markdown tables.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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
    p.add_argument(
        "--small-heads",
        action="store_true",
        help=f"smaller heads for CPU runs: {json.dumps(CPU_HEADS)}",
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
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[SweepConfig, argparse.Namespace]:
    """Flags → a validated :class:`SweepConfig` (and the namespace, for the action flags)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = SweepConfig(
            methods=list(args.methods),
            cs=list(args.cs),
            weight_decays=list(args.weight_decays),
            grad_scale_powers=list(args.grad_scale_powers),
            seeds=list(args.seeds),
            backbone=args.backbone,
            dataset=args.dataset,
            train_split=args.train_split,
            eval_split=args.eval_split,
            epochs=args.epochs,
            batch_size=args.batch_size,
            image_size=args.image_size,
            max_train_examples=args.max_train_examples,
            eval_max_samples=args.eval_max_samples,
            knn_k=args.knn_k,
            lr=args.lr,
            small_heads=args.small_heads,
            overrides=_parse_set(args.set),
            baselines=args.baselines,
            mixed_precision=args.mixed_precision,
            num_workers=args.num_workers,
            runs_dir=args.runs_dir,
            out_dir=args.out,
            keep_checkpoints=args.keep_checkpoints,
        )
        for method in cfg.methods:
            method_overrides(cfg, method)
    except ValueError as err:
        parser.error(str(err))
        raise
    return cfg, args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Entry point of ``recipes/cut_sweep.py``."""
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
        print(summary_markdown(summary, cfg))
    return results


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
