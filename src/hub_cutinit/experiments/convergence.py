"""The convergence study: when does cut-initialisation speed up SSL training? (PAPER §9, §10)

For every method it trains variants from the same seeds (the same data order and views), in a
regime fair to the cut (PAPER §10): the paper's peak lr scaled to the batch by the linear rule
(``paper_lrs × batch / paper_batch_size``), a linear warm-up whose lr increment per step matches
the paper's, a run at least twice the warm-up, a cosine horizon ten times the run (the nearly
constant-lr start of a long schedule), the paper's Nesterov and EMA choices, full-bank kNN with
re-estimated BatchNorm statistics (``--knn-bn precise``):

- ``c1``: no cut;
- ``cut``: the method's cut factor c (3 contrastive, 9 non-contrastive), every parameter;
- ``cut-spare-bias``: the same cut, biases of linear and convolution layers left alone
  (``--cut-spare bias``): separates the norm effect from the biases dominating the cut heads;
- ``c1-lr``: no cut, but the weights that a BatchNorm normalises get ``lr × c²`` (and
  ``λ / c²``) — the learning-rate control. For those scale-invariant weights this is exactly the
  cut's dynamics, so whatever ``cut`` gains over ``c1-lr`` comes from the other parameters
  (BN affine, biases, the un-normalised last layers).

The summary pairs every variant with ``c1`` of the same seed: the mean paired difference, its
standard deviation and a paired t-test.

Each run lives in ``runs_dir/<method>_<variant>_seed<s>/`` with ``result.json`` written last
(a repeated command skips finished runs). Outputs in ``out_dir``: ``study.csv`` (one row per
run × evaluation), ``summary.csv`` / ``summary.md`` (accuracy at fixed steps, steps to a fixed
accuracy, mean ± std over seeds), ``curves.png`` (kNN, ‖z‖ and angle per step against steps).

Example (tiny; ``recipes/convergence_study.py`` is the command-line front end)::

    from hub_cutinit.experiments.convergence import StudyConfig, run_study
    run_study(StudyConfig(methods=("simclr",), seeds=(0,), epochs=1, backbone="test_resnet",
                          out_dir="/tmp/study", max_steps=2, heads="tiny"))
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub_cutinit.atomic import write_text_atomic
from hub_cutinit.plotting import colormap, new_figure, save_figure
from hub_cutinit.registry import get_method_defaults, get_preset

__all__ = ["StudyConfig", "run_study", "study_rows", "summarise", "main", "VARIANTS"]

#: The variants of every method, in plotting order.
VARIANTS = ("c1", "cut", "cut-spare-bias", "c1-lr")
#: The paper's effective peak lrs (PAPER §9: base² from its LambdaLR), at its batch size.
PAPER_LRS = {"simclr": 0.36, "moco": 0.36, "simsiam": 0.04, "byol": 0.04}
#: Embeddings whose norm and angle the CSV keeps.
EMBEDDINGS = ("backbone", "projection", "prediction")


@dataclass
class StudyConfig:
    """One study: methods × variants × seeds under one budget."""

    methods: Sequence[str] = ("simclr", "simsiam", "byol")
    seeds: Sequence[int] = (0, 1, 2)
    variants: Sequence[str] = ("c1", "cut", "cut-spare-bias")
    #: a ResNet-18 at 1/4 width with a 4×4 final map at 32 px (dilated last stages), 5,000
    #: images, 8 epochs: what a 2-core CPU trains 27 times in ~90 minutes
    backbone: str = "resnet18"
    backbone_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"channels": [16, 32, 64, 128], "output_stride": 8}
    )
    heads: str = "cpu"
    image_size: int = 32
    dataset: str = "builtin"
    #: train on the first N training images (the kNN bank is the same N); None: all of them
    max_train_examples: int | None = 5000
    #: three times the warm-up
    epochs: int = 6
    max_steps: int | None = None
    batch_size: int = 64
    #: 156 steps at batch 64: with the linearly scaled lr the lr grows by about the paper's
    #: increment per step (0.36 / ~1,000 steps for SimCLR)
    warmup_epochs: float = 2.0
    #: ten times the run: the run is the nearly-constant-lr start of a long schedule (PAPER §9)
    cosine_epochs: float | None = 60.0
    weight_decay: float = 5e-4
    #: the batch the paper's peak lrs belong to (its range is 256-1,024: the middle)
    paper_batch_size: int = 512
    #: peak lr per method at ``paper_batch_size``; a run uses ``lr × batch / paper_batch_size``
    paper_lrs: dict[str, float] = field(default_factory=lambda: dict(PAPER_LRS))
    #: peak lr per method as given, instead of the scaled paper value
    lrs: dict[str, float] = field(default_factory=dict)
    eval_every_epochs: int = 1
    #: kNN every N steps (0: every ``eval_every_epochs`` epochs instead)
    eval_every: int = 39
    knn_k: int = 200
    threads: int = 1
    #: further recipe flags for every run (e.g. ``["--mixed-precision", "bf16"]`` on a GPU)
    extra_args: Sequence[str] = ()
    out_dir: str = "recipes/results/convergence"
    runs_dir: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}.")

    def runs_path(self) -> Path:
        return Path(self.runs_dir or Path(self.out_dir) / "runs")

    def lr(self, method: str) -> float | None:
        """The run's peak lr: as given, else the paper's scaled by the linear rule."""
        if method in self.lrs:
            return self.lrs[method]
        if method in self.paper_lrs:
            return self.paper_lrs[method] * self.batch_size / self.paper_batch_size
        return None  # the method's own default (base_lr × batch / 256)


#: The cut of methods whose default is c = 1 (no paper value): VICReg is the study's control
#: for "the cut helps because the loss normalises z" (its loss does not).
CONTROL_CUTS = {"vicreg": 3.0, "barlow_twins": 3.0}


def _cut_factor(method: str) -> float:
    c = float(get_method_defaults(method)["c"])
    return CONTROL_CUTS.get(method, c) if c == 1 else c


def training_dataset(cfg: StudyConfig) -> str:
    """``cfg.dataset``, or a local copy of its first ``max_train_examples`` training images."""
    if cfg.max_train_examples is None:
        return cfg.dataset
    from hub_cutinit.experiments.sweep import SweepConfig, subset_dataset

    sweep = SweepConfig(
        dataset=cfg.dataset,
        max_train_examples=cfg.max_train_examples,
        runs_dir=str(cfg.runs_path()),
    )
    return subset_dataset(sweep)


def train_argv(cfg: StudyConfig, method: str, variant: str, seed: int, out: Path) -> list[str]:
    """The recipe flags of one run (what ``recipes/<method>.py`` would be given)."""
    c = _cut_factor(method)
    argv = ["--backbone", cfg.backbone, "--dataset", training_dataset(cfg)]
    argv += ["--image-size", str(cfg.image_size), "--batch-size", str(cfg.batch_size)]
    argv += ["--epochs", str(cfg.epochs), "--warmup-epochs", str(cfg.warmup_epochs)]
    if cfg.max_steps:
        argv += ["--max-steps", str(cfg.max_steps)]
    if cfg.cosine_epochs:
        argv += ["--cosine-epochs", str(cfg.cosine_epochs)]
    argv += ["--weight-decay", str(cfg.weight_decay), "--seed", str(seed)]
    lr = cfg.lr(method)
    if lr is not None:
        argv += ["--lr", f"{lr:g}"]
    argv += ["--c", f"{c:g}" if variant.startswith("cut") else "1"]
    if variant == "cut-spare-bias":
        argv += ["--cut-spare", "bias"]
    if variant == "c1-lr":
        argv += ["--normalized-lr-scale", f"{c * c:g}"]
    if get_method_defaults(method).get("momentum") is not None:
        argv += ["--ema-schedule", "constant"]  # the paper's BYOL (PAPER §9)
    argv += ["--knn-k", str(cfg.knn_k), "--log-every", "5", "--output-dir", str(out)]
    if cfg.eval_every:
        argv += ["--eval-every", str(cfg.eval_every)]
    else:
        argv += ["--eval-every-epochs", str(cfg.eval_every_epochs)]
    overrides = {**get_preset(method, cfg.heads)}
    if cfg.backbone_kwargs:
        overrides["backbone_kwargs"] = cfg.backbone_kwargs
    argv += list(cfg.extra_args)
    if overrides:
        argv += ["--set", *(f"{k}={json.dumps(v)}" for k, v in overrides.items())]
    return argv


def _claim(run_dir: Path) -> bool:
    """Take ``run_dir`` for this process (several study processes share one queue).

    A claim is a ``.claim`` file holding the owner's PID; the claim of a process that no longer
    runs is taken over (its run resumes from its last checkpoint).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    claim = run_dir / ".claim"
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            owner = int(claim.read_text() or 0)
            os.kill(owner, 0)
            return owner == os.getpid()
        except (ValueError, ProcessLookupError):
            claim.write_text(str(os.getpid()))
            return True
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_one(cfg: StudyConfig, method: str, variant: str, seed: int) -> dict[str, Any] | None:
    """Train one run, or read its finished ``result.json``; ``None`` if another process has it."""
    from hub_cutinit.training import parse_args, train

    run_dir = cfg.runs_path() / f"{method}_{variant}_seed{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if not _claim(run_dir):
        return None
    argv = train_argv(cfg, method, variant, seed, run_dir / "model")
    started = time.perf_counter()
    result = train(parse_args(method, [*argv, "--resume"]))
    payload = {
        "method": method,
        "variant": variant,
        "seed": seed,
        "argv": argv,
        "wall_s": time.perf_counter() - started,
        "result": result,
    }
    write_text_atomic(done, json.dumps(payload, indent=1, default=str))
    return payload


def run_study(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Every run of the study (seeds outermost, so a cut-short study still has whole seeds)."""
    import torch

    torch.set_num_threads(cfg.threads)
    for seed in cfg.seeds:
        for method in cfg.methods:
            for variant in cfg.variants:
                if run_one(cfg, method, variant, seed) is not None:
                    write_outputs(cfg, finished_runs(cfg))
    return finished_runs(cfg)


def finished_runs(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Every finished run of the study's grid (by any process), in grid order."""
    payloads = []
    for seed in cfg.seeds:
        for method in cfg.methods:
            for variant in cfg.variants:
                done = cfg.runs_path() / f"{method}_{variant}_seed{seed}" / "result.json"
                if done.is_file():
                    payloads.append(json.loads(done.read_text()))
    return payloads


# -- tables ---------------------------------------------------------------------------------------
def study_rows(payloads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run × evaluation: kNN, and the norms/angle of the nearest monitored step."""
    rows = []
    for p in payloads:
        res = p["result"]
        convergence = res.get("convergence") or []
        knn = [{"step": 0, "knn_accuracy": (res.get("baselines") or {}).get("random_init_knn")}]
        for record in [*knn, *(res.get("knn") or [])]:
            if record.get("knn_accuracy") is None:
                continue
            step = int(record["step"])
            near: Mapping[str, Any] = min(
                convergence, key=lambda r: abs(r["step"] - step), default={}
            )
            row = {
                "method": p["method"],
                "variant": p["variant"],
                "c": res["c"],
                "normalized_lr_scale": res.get("normalized_lr_scale", 1.0),
                "seed": p["seed"],
                "step": step,
                "epoch": step / res["steps_per_epoch"] if res.get("steps_per_epoch") else None,
                "knn_accuracy": record["knn_accuracy"],
                "decay": res["weight_decay"] * lr_sum(res),
            }
            for name in EMBEDDINGS:
                row[f"norm_{name}"] = near.get(f"norm/{name}")
                row[f"angle_{name}"] = near.get(f"angle/{name}")
            rows.append(row)
    return rows


def lr_sum(result: Mapping[str, Any]) -> float:
    """Σ lr over the run's steps (timm's linear warm-up, then the cosine over its horizon).

    ``weight_decay × lr_sum`` is how far weight decay alone shrinks the weights (a factor
    ``≈ exp(−λ·Σlr)``): the paper's "cut + λ keeps norms small" regime needs it large.

    Example:
        >>> round(lr_sum({"lr": 0.1, "warmup_steps": 0, "cosine_steps": 10**9, "steps": 100}), 6)
        10.0
    """
    lr, warmup, horizon = result["lr"], result["warmup_steps"], result["cosine_steps"]
    start = lr * 1e-3 if warmup else 0.0
    total = 0.0
    for t in range(result["steps"]):
        if t < warmup:
            total += start + t * (lr - start) / warmup
        else:
            total += 0.5 * lr * (1 + math.cos(math.pi * t / horizon))
    return total


def _interpolate_step(points: Sequence[tuple[int, float]], target: float) -> float | None:
    """First step where the piecewise-linear kNN curve reaches ``target`` (None: never)."""
    for (s0, a0), (s1, a1) in zip(points, points[1:], strict=False):
        if a0 >= target:
            return float(s0)
        if a1 >= target:
            return s0 + (s1 - s0) * (target - a0) / (a1 - a0)
    return float(points[-1][0]) if points and points[-1][1] >= target else None


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan, 0
    return (
        statistics.fmean(values),
        statistics.stdev(values) if len(values) > 1 else 0.0,
        len(values),
    )


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per method × variant: kNN at 1/4, 1/2 and all of the run, and steps to a fixed accuracy.

    The fixed accuracy of a method is 90 % of the way from its random-init kNN to the best
    final mean kNN among its variants; ``steps_to_target`` averages the seeds that reach it
    and ``reached`` counts them.
    """
    curves: dict[tuple[str, str], dict[int, list[tuple[int, float]]]] = {}
    for r in rows:
        curves.setdefault((r["method"], r["variant"]), {}).setdefault(r["seed"], []).append(
            (r["step"], r["knn_accuracy"])
        )
    for seeds in curves.values():
        for points in seeds.values():
            points.sort()
    finals = {
        key: statistics.fmean(points[-1][1] for points in seeds.values())
        for key, seeds in curves.items()
    }
    out = []
    for (method, variant), seeds in sorted(
        curves.items(), key=lambda kv: (kv[0][0], VARIANTS.index(kv[0][1]))
    ):
        target = _target(method, finals, curves)
        last = max(points[-1][0] for points in seeds.values())
        row: dict[str, Any] = {"method": method, "variant": variant, "seeds": len(seeds)}
        row["steps"] = last
        for label, fraction in (("q1", 0.25), ("half", 0.5), ("final", 1.0)):
            at = [_accuracy_at(points, fraction * last) for points in seeds.values()]
            row[f"knn_{label}"] = _mean_std(at)
        row.update(_norm_movement(rows, method, variant))
        row["target"] = target
        reached = [_interpolate_step(points, target) for points in seeds.values()]
        row["steps_to_target"] = _mean_std([s for s in reached if s is not None])
        row["reached"] = sum(s is not None for s in reached)
        out.append(row)
    return out


def t_test_p(t: float, dof: int) -> float:
    """Two-sided p-value of Student's t with ``dof`` degrees of freedom (numerical integral).

    Example:
        >>> round(t_test_p(4.303, 2), 3)  # the 95 % critical value at 2 degrees of freedom
        0.05
    """
    if dof < 1 or math.isnan(t):
        return math.nan
    import numpy as np

    x = np.linspace(0.0, abs(t), 20001)
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    pdf = np.exp(log_c - (dof + 1) / 2 * np.log1p(x * x / dof))
    inner = float(np.sum((pdf[1:] + pdf[:-1]) / 2 * np.diff(x)))
    return max(0.0, 1.0 - 2.0 * inner)


def _curve_mean(points: Sequence[tuple[int, float]]) -> float:
    """The kNN curve's mean over the run (area under it / steps): faster convergence is higher."""
    area = sum(
        (s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in zip(points, points[1:], strict=False)
    )
    return area / max(points[-1][0] - points[0][0], 1)


def paired_differences(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every variant against ``c1`` of the same seed (same data order and views).

    Per metric (final kNN, kNN at ½ run, the curve's mean over the run): the mean paired
    difference, its sample standard deviation, ``n`` pairs, and a two-sided paired t-test.
    """
    curves: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
    for r in rows:
        key = (r["method"], r["variant"], r["seed"])
        curves.setdefault(key, []).append((r["step"], r["knn_accuracy"]))
    for points in curves.values():
        points.sort()
    metrics = {
        "final": lambda pts: pts[-1][1],
        "half": lambda pts: _accuracy_at(pts, pts[-1][0] / 2),
        "curve_mean": _curve_mean,
    }
    out = []
    pairs = sorted(
        {(m, v) for m, v, _ in curves if v != "c1"}, key=lambda k: (k[0], VARIANTS.index(k[1]))
    )
    for method, variant in pairs:
        seeds = [s for m, v, s in curves if (m, v) == (method, variant) and (m, "c1", s) in curves]
        row: dict[str, Any] = {"method": method, "variant": variant, "pairs": len(seeds)}
        for name, metric in metrics.items():
            diffs = [
                metric(curves[(method, variant, s)]) - metric(curves[(method, "c1", s)])
                for s in sorted(seeds)
            ]
            mean, std, n = _mean_std(diffs)
            t = mean / (std / math.sqrt(n)) if n > 1 and std > 0 else math.nan
            row[name] = {
                "mean": mean,
                "std": std,
                "n": n,
                "t": t,
                "p": t_test_p(t, n - 1),
                "diffs": diffs,
            }
        out.append(row)
    return out


def paired_markdown(paired: Sequence[Mapping[str, Any]]) -> str:
    """The paired differences (variant − c1, percentage points) in Markdown."""
    lines = [
        "| method | variant − c1 | final kNN (pp) | kNN at ½ run (pp) | curve mean (pp) | pairs |",
        "|---|---|---|---|---|---|",
    ]

    def cell(stat: Mapping[str, Any]) -> str:
        if stat["n"] == 0:
            return "–"
        p = f", p = {stat['p']:.2f}" if not math.isnan(stat["p"]) else ""
        return f"{100 * stat['mean']:+.1f} ± {100 * stat['std']:.1f}{p}"

    for r in paired:
        lines.append(
            f"| {r['method']} | {r['variant']} | {cell(r['final'])} | {cell(r['half'])} | "
            f"{cell(r['curve_mean'])} | {r['pairs']} |"
        )
    lines.append("")
    lines.append(
        "Mean ± sample std of the per-seed differences; p: two-sided paired t-test "
        "(n − 1 degrees of freedom). Curve mean: the kNN curve's average over the run "
        "(area under it per step), a convergence-speed measure."
    )
    return "\n".join(lines) + "\n"


def loss_embedding(rows: Sequence[Mapping[str, Any]]) -> str:
    """The embedding the loss sees: ``prediction`` for BYOL/SimSiam, else ``projection``."""
    return "prediction" if any(r.get("norm_prediction") for r in rows) else "projection"


def _norm_movement(rows: Sequence[Mapping[str, Any]], method: str, variant: str) -> dict:
    """Mean ‖z‖ (the loss's embedding) at the first and last evaluation, and λ·Σlr, over seeds."""
    mine = [r for r in rows if r["method"] == method and r["variant"] == variant]
    first = min(r["step"] for r in mine)
    last = max(r["step"] for r in mine)
    key = f"norm_{loss_embedding(mine)}"

    def norms_at(step: int) -> list[float]:
        return [r[key] for r in mine if r["step"] == step and r[key]]

    return {
        "embedding": loss_embedding(mine),
        "norm_start": _mean_std(norms_at(first)),
        "norm_end": _mean_std(norms_at(last)),
        "decay": statistics.fmean(r["decay"] for r in mine),
    }


def _target(method: str, finals: Mapping[tuple[str, str], float], curves: Mapping) -> float:
    best = max(v for (m, _), v in finals.items() if m == method)
    starts = [
        points[0][1]
        for (m, _), seeds in curves.items()
        if m == method
        for points in seeds.values()
        if points[0][0] == 0
    ]
    start = statistics.fmean(starts) if starts else 0.0
    return start + 0.9 * (best - start) if best > start else best


def _accuracy_at(points: Sequence[tuple[float, float]], step: float) -> float:
    """kNN accuracy at ``step``, linearly interpolated between evaluations."""
    for (s0, a0), (s1, a1) in zip(points, points[1:], strict=False):
        if s0 <= step <= s1:
            return a0 + (a1 - a0) * (step - s0) / max(s1 - s0, 1)
    return points[-1][1]


def _pm(stat: tuple[float, float, int], pct: bool = True) -> str:
    mean, std, n = stat
    if n == 0:
        return "never"
    scale = 100 if pct else 1
    digits = 1 if pct else 0
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" + (f" (n={n})" if n < 3 else "")


def summary_markdown(
    summary: Sequence[Mapping[str, Any]], baselines: Mapping[str, tuple[float, float, int]]
) -> str:
    """The study's table in Markdown."""
    lines = [
        "| method | variant | kNN at ¼ run (%) | kNN at ½ run (%) | final kNN (%) | "
        "target (%) | steps to target | ‖z‖ start → end | λ·Σlr |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        norms = f"{r['norm_start'][0]:.3g} → {r['norm_end'][0]:.3g} ({r['embedding'][:4]}.)"
        lines.append(
            f"| {r['method']} | {r['variant']} | {_pm(r['knn_q1'])} | {_pm(r['knn_half'])} | "
            f"{_pm(r['knn_final'])} | {r['target'] * 100:.1f} | "
            f"{_pm(r['steps_to_target'], pct=False)} ({r['reached']}/{r['seeds']} seeds) | "
            f"{norms} | {r['decay']:.3f} |"
        )
    if baselines:
        lines.append("")
        lines.append(
            "Baselines (same kNN protocol, mean ± std over seeds): "
            + ", ".join(
                f"{k.replace('_knn', '').replace('_', ' ')} {_pm(v)} %"
                for k, v in baselines.items()
            )
            + "."
        )
    return "\n".join(lines) + "\n"


def seed_baselines(payloads: Sequence[Mapping[str, Any]]) -> dict[str, tuple[float, float, int]]:
    """Each baseline's mean ± std over seeds (every variant of a seed shares its random init)."""
    per_seed: dict[str, dict[int, float]] = {}
    for p in payloads:
        for name, value in (p["result"].get("baselines") or {}).items():
            per_seed.setdefault(name, {}).setdefault(p["seed"], value)
    return {name: _mean_std(list(values.values())) for name, values in per_seed.items()}


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    if not rows:
        return
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: (f"{v[0]:.6g}±{v[1]:.3g}" if isinstance(v, tuple) else v) for k, v in row.items()}
        )
    write_text_atomic(path, buffer.getvalue())


def write_outputs(cfg: StudyConfig, payloads: Sequence[Mapping[str, Any]]) -> list[Path]:
    """``study.csv``, ``summary.csv``, ``summary.md`` and ``curves.png`` in ``cfg.out_dir``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = study_rows(payloads)
    summary = summarise(rows)
    baselines = seed_baselines(payloads)
    _write_csv(rows, out / "study.csv")
    _write_csv(summary, out / "summary.csv")
    write_text_atomic(out / "throughput.json", json.dumps(throughput(payloads), indent=1) + "\n")
    paired = paired_differences(rows)
    write_text_atomic(
        out / "summary.md", summary_markdown(summary, baselines) + "\n" + paired_markdown(paired)
    )
    write_text_atomic(out / "paired.json", json.dumps(paired, indent=1) + "\n")
    write_text_atomic(out / "runs.json", json.dumps(run_flags(payloads), indent=1) + "\n")
    paths = [out / "study.csv", out / "summary.csv", out / "summary.md", out / "throughput.json"]
    paths += [out / "paired.json", out / "runs.json"]
    if rows:
        paths.append(save_figure(convergence_figure(payloads), out / "curves.png"))
    return paths


#: Result entries that are measurements, not settings (left out of ``runs.json``).
_MEASUREMENTS = ("knn", "convergence", "norm_history", "final_norms", "last_step", "baselines")


def run_flags(payloads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per run: the recipe flags it was given and every setting as resolved (its run record)."""
    return [
        {
            "run": f"{p['method']}_{p['variant']}_seed{p['seed']}",
            "argv": list(p["argv"]),
            "resolved": {k: v for k, v in p["result"].items() if k not in _MEASUREMENTS},
        }
        for p in payloads
    ]


def throughput(payloads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per run: wall time (evaluation included), steps, images and training images/s."""
    rows = []
    for p in payloads:
        res = p["result"]
        wall = float(p["wall_s"])
        rows.append(
            {
                "run": f"{p['method']}_{p['variant']}_seed{p['seed']}",
                "c": res.get("c"),
                "wall_s": round(wall, 2),
                "train_wall_s": res.get("wall_time_s"),
                "steps": res.get("steps"),
                "images": res.get("images_seen"),
                "train_images_per_s": res.get("train_images_per_s"),
                "images_per_s_with_eval": (
                    round(res["images_seen"] / wall, 1)
                    if wall > 0 and res.get("images_seen")
                    else None
                ),
                "final_knn": res.get("knn_accuracy"),
            }
        )
    return rows


def _series(records: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in records if r.get(key)]


def _band(ax: Any, series: list[list[tuple[float, float]]], label: str, color: Any) -> None:
    """Mean over seeds (on the first seed's x) with a min–max band."""
    series = [s for s in series if s]
    if not series:
        return
    xs = [x for x, _ in series[0]]
    ys = [[_accuracy_at(s, x) for s in series] for x in xs]
    ax.plot(xs, [statistics.fmean(y) for y in ys], label=label, color=color)
    ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], color=color, alpha=0.2)


def convergence_figure(payloads: Sequence[Mapping[str, Any]]) -> Any:
    """One row per method: kNN accuracy, mean ‖projection‖ and its angle per step, per variant."""
    methods = sorted({p["method"] for p in payloads})
    fig, axes = new_figure(len(methods), 3, figsize=(13, 3.4 * len(methods)))
    colors = {v: colormap("tab10")(i) for i, v in enumerate(VARIANTS)}
    for row, method in zip(axes, methods, strict=True):
        for variant in VARIANTS:
            runs = [
                p["result"] for p in payloads if p["method"] == method and p["variant"] == variant
            ]
            if not runs:
                continue
            knn = [
                [(0.0, r["baselines"]["random_init_knn"])] * bool(r.get("baselines"))
                + [(k["step"], k["knn_accuracy"]) for k in r.get("knn") or []]
                for r in runs
            ]
            conv = [r.get("convergence") or [] for r in runs]
            name = "prediction" if any(c.get("norm/prediction") for c in conv[0]) else "projection"
            norm = [_series(rows, f"norm/{name}") for rows in conv]
            angle = [_series(rows, f"angle/{name}") for rows in conv]
            label = f"{variant} (c={runs[0]['c']:g}" + (
                f", lr×{runs[0]['normalized_lr_scale']:g} on BN weights)"
                if runs[0].get("normalized_lr_scale", 1) != 1
                else ")"
            )
            _band(row[0], knn, label, colors[variant])
            _band(row[1], norm, label, colors[variant])
            _band(row[2], angle, label, colors[variant])
        row[0].set_ylabel(f"{method}: kNN accuracy")
        row[1].set_ylabel(f"mean ‖{name}‖")
        row[2].set_ylabel(f"{name} angle per step (rad)")
        for ax in row:
            ax.set_xlabel("optimiser step")
            ax.grid(alpha=0.3)
        row[1].set_yscale("log")
        row[2].set_yscale("log")
        row[0].legend(fontsize=8)
    return fig


# -- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d = StudyConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(d.methods))
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--variants", nargs="+", default=list(d.variants), choices=VARIANTS)
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument(
        "--backbone-kwargs",
        type=json.loads,
        default=d.backbone_kwargs,
        help=f"timm keyword arguments as JSON (default: {json.dumps(d.backbone_kwargs)})",
    )
    p.add_argument("--heads", default=d.heads, help="the methods' head preset: paper, cpu or tiny")
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument(
        "--max-train-examples",
        type=lambda v: None if v == "all" else int(v),
        default=d.max_train_examples,
        help="train on the first N images ('all': every one)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--cosine-epochs", type=float, default=d.cosine_epochs)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--lr", nargs="*", default=[], metavar="METHOD=LR", help="peak lr per method")
    p.add_argument("--eval-every-epochs", type=int, default=d.eval_every_epochs)
    p.add_argument(
        "--eval-every", type=int, default=d.eval_every, help="kNN every N steps (0: per epoch)"
    )
    p.add_argument(
        "--paper-batch-size",
        type=int,
        default=d.paper_batch_size,
        help="the batch of the paper's peak lrs; runs use lr × batch / this (linear rule)",
    )
    p.add_argument(
        "extra_args",
        nargs="*",
        metavar="-- RECIPE_FLAGS",
        help="flags passed to every training run (after --), e.g. -- --mixed-precision bf16",
    )
    p.add_argument("--knn-k", type=int, default=d.knn_k)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--out-dir", default=d.out_dir)
    p.add_argument("--runs-dir", default=None)
    p.add_argument(
        "--report-only",
        action="store_true",
        help="only rewrite the tables and figures from the finished runs (no training)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """``python recipes/convergence_study.py [flags]``."""
    args = vars(build_parser().parse_args(argv))
    lrs: dict[str, float] = {}
    for item in args.pop("lr"):
        method, _, value = item.partition("=")
        lrs[method] = float(value)
    report_only = args.pop("report_only")
    cfg = StudyConfig(lrs=lrs, **args)
    if report_only:
        payloads = finished_runs(cfg)
        write_outputs(cfg, payloads)
        return payloads
    return run_study(cfg)
