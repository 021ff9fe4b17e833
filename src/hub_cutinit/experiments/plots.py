"""The sweep's figures: ``curves.png`` (kNN and mean norms against epoch) and
``weight_decay.png`` (final norms and kNN against λ), drawn with :mod:`hub_cutinit.plotting`.

Example:
    >>> import math, tempfile
    >>> rows = [{"method": "simclr", "c": c, "weight_decay": 5e-4, "grad_scale_power": 0.0,
    ...          "seed": 0, "epoch": e, "knn_accuracy": 0.5 + 0.1 * e, "norm_backbone": c,
    ...          "norm_projection": 2 * c, "norm_prediction": math.nan}
    ...         for c in (1.0, 3.0) for e in (0, 1)]
    >>> plot_curves(rows, [], tempfile.mkdtemp() + "/curves.png").name
    'curves.png'
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hub_cutinit.experiments.tables import EMBEDDINGS, mean_std
from hub_cutinit.plotting import colormap, new_figure, save_figure

__all__ = ["plot_curves", "plot_weight_decay"]

_VARIANT_KEYS = ("c", "weight_decay", "grad_scale_power")


def _variant(row: Mapping[str, Any]) -> tuple[float, ...]:
    return tuple(row[k] for k in _VARIANT_KEYS)


def _variant_label(row: Mapping[str, Any], vary: Sequence[str]) -> str:
    names = {"c": "c", "weight_decay": "λ", "grad_scale_power": "p"}
    return ", ".join(f"{names[k]}={row[k]:g}" for k in vary) or f"c={row['c']:g}"


def _curve_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    cols = [
        ("knn_accuracy", "kNN accuracy"),
        ("norm_backbone", "mean ‖backbone‖"),
        ("norm_projection", "mean ‖projection‖"),
    ]
    if any(not math.isnan(r["norm_prediction"]) for r in rows):
        cols.append(("norm_prediction", "mean ‖prediction‖"))
    return cols


def _seed_band(
    rows: Sequence[Mapping[str, Any]], col: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per epoch: x, mean over seeds, min, max of ``col`` (epochs with no value skipped)."""
    xs, means, lo, hi = [], [], [], []
    for e in sorted({r["epoch"] for r in rows}):
        vals = [r[col] for r in rows if r["epoch"] == e and not math.isnan(r[col])]
        if vals:
            xs.append(e)
            means.append(statistics.fmean(vals))
            lo.append(min(vals))
            hi.append(max(vals))
    return xs, means, lo, hi


def _plot_method_curves(
    axes: Sequence[Any],
    rows: Sequence[Mapping[str, Any]],
    cols: Sequence[tuple[str, str]],
    vary: Sequence[str],
) -> None:
    """One line (mean over seeds) and band (min–max) per variant in each panel of a row."""
    cmap = colormap("viridis")
    variants = sorted({_variant(r) for r in rows})
    for v_idx, variant in enumerate(variants):
        vrows = [r for r in rows if _variant(r) == variant]
        color = cmap(v_idx / max(1, len(variants) - 1) * 0.85)
        label = f"{_variant_label(vrows[0], vary)} (n={len({r['seed'] for r in vrows})})"
        for ax, (col, _) in zip(axes, cols, strict=False):
            xs, means, lo, hi = _seed_band(vrows, col)
            if xs:
                ax.plot(xs, means, marker="o", ms=3, color=color, label=label)
                ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)


def _plot_baselines(ax: Any, summary: Sequence[Mapping[str, Any]]) -> None:
    if not summary:
        return
    rand = mean_std([s["random_init_knn"][0] for s in summary])[0]
    pix = mean_std([s["raw_pixels_knn"][0] for s in summary])[0]
    if not math.isnan(rand):
        ax.axhline(rand, color="gray", ls="--", lw=1, label="random init (mean)")
    if not math.isnan(pix):
        ax.axhline(pix, color="black", ls=":", lw=1, label="raw pixels")


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
    raw-pixel kNN. ``rows`` as :func:`~hub_cutinit.experiments.tables.epoch_rows`, ``summary``
    as :func:`~hub_cutinit.experiments.tables.summarise`."""
    methods = sorted({r["method"] for r in rows})
    vary = [k for k in _VARIANT_KEYS if len({r[k] for r in rows}) > 1]
    cols = _curve_columns(rows)
    fig, axes = new_figure(len(methods), len(cols), figsize=(4.2 * len(cols), 3.0 * len(methods)))
    for i, method in enumerate(methods):
        _plot_method_curves(axes[i], [r for r in rows if r["method"] == method], cols, vary)
        _plot_baselines(axes[i][0], [s for s in summary if s["method"] == method])
        for ax, (col, ylabel) in zip(axes[i], cols, strict=True):
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


def _weight_decay_lines(
    summary: Sequence[Mapping[str, Any]],
) -> dict[str, list[Mapping[str, Any]]]:
    """Summary rows grouped into one line per (method, c, p), labelled by what varies."""
    groups: dict[tuple[str, float, float], list[Mapping[str, Any]]] = {}
    for r in summary:
        groups.setdefault((r["method"], r["c"], r["grad_scale_power"]), []).append(r)
    many_c = len({k[1] for k in groups}) > 1
    many_p = len({k[2] for k in groups}) > 1
    lines = {}
    for (method, c, p), rs in sorted(groups.items()):
        label = method + (f" c={c:g}" if many_c else "") + (f" p={p:g}" if many_p else "")
        lines[label] = sorted(rs, key=lambda r: r["weight_decay"])
    return lines


def plot_weight_decay(
    summary: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Experiment D: final mean norm (backbone, projection, prediction) and kNN against λ, one
    line per method (× c, p), error bars = std over seeds; symlog x axis so λ = 0 shows."""
    panels = [(f"norm_{n}", f"final mean ‖{n}‖") for n in EMBEDDINGS] + [("knn", "final kNN acc.")]
    panels = [p for p in panels if any(r[p[0]][2] for r in summary)]
    fig, axes = new_figure(1, len(panels), figsize=(4.0 * len(panels), 3.2))
    for label, rs in _weight_decay_lines(summary).items():
        for ax, (key, _) in zip(axes[0], panels, strict=True):
            pts = [(r["weight_decay"], r[key][0], r[key][1]) for r in rs if r[key][2]]
            if not pts:
                continue
            xs, ys, errs = zip(*pts, strict=True)
            es = [0.0 if math.isnan(e) else e for e in errs]
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, label=label)
    nonzero = [r["weight_decay"] for r in summary if r["weight_decay"] > 0]
    ticks = sorted({r["weight_decay"] for r in summary})
    for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
        ax.set_xscale("symlog", linthresh=min(nonzero) if nonzero else 1e-6)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("weight decay λ")
        ax.set_title(ylabel, fontsize=10)
        ax.grid(alpha=0.3)
        if key.startswith("norm_"):
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path, title=title, title_size=10)
