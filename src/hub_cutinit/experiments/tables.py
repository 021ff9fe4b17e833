"""The sweep's tables: ``sweep.csv`` rows, summaries over seeds and the markdown tables.

Everything here is a pure function of the runs' ``result.json`` payloads (see
:func:`hub_cutinit.experiments.sweep.run_one`): ``{"spec": {...}, "initial_norms": {...},
"result": {...}}``.

- :func:`epoch_rows`: one run's rows of ``sweep.csv``: epoch 0 is the model at initialisation
  (kNN: the random-init baseline of the run; norms: one training batch through the freshly
  cut model), later epochs the kNN at the end of the epoch and the norms averaged over the
  epoch's training batches;
- :func:`summarise`: final kNN, final norms and baselines per (method, c, λ, p) as
  ``(mean, std, n)`` over seeds;
- :func:`summary_markdown`, :func:`weight_decay_markdown`: the tables of ``summary.md`` and
  ``weight_decay.md``.

Example:
    >>> payload = {
    ...     "spec": {"method": "simclr", "c": 3.0, "grad_scale_power": 0.0, "seed": 0},
    ...     "initial_norms": {"backbone": 0.3},
    ...     "result": {"c": 3.0, "weight_decay": 5e-4, "steps": 10, "steps_per_epoch": 10,
    ...                "knn": [{"step": 10, "knn_accuracy": 0.6}], "knn_accuracy": 0.6},
    ... }
    >>> [(r["epoch"], r["knn_accuracy"], r["norm_backbone"]) for r in epoch_rows(payload)]
    [(0.0, nan, 0.3), (1.0, 0.6, nan)]
    >>> summarise([payload])[0]["knn"]
    (0.6, nan, 1)
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hub_cutinit.atomic import atomic_path

__all__ = [
    "EMBEDDINGS",
    "CSV_COLUMNS",
    "Stat",
    "mean_std",
    "epoch_rows",
    "write_csv",
    "summarise",
    "summary_markdown",
    "weight_decay_markdown",
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

#: ``(mean, sample std, count)`` over seeds; NaN mean with count 0, NaN std with count 1.
Stat = tuple[float, float, int]


def mean_std(values: Iterable[float | None]) -> Stat:
    """Mean, sample standard deviation and count of the finite values (None / NaN skipped).

    Example:
        >>> mean_std([1.0, 3.0, float("nan"), None])
        (2.0, 1.4142135623730951, 2)
    """
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
    return statistics.fmean(vals), std, len(vals)


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


def _csv_cell(col: str, value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, float) and col not in ("c", "weight_decay"):
        return f"{value:.6g}"
    return value


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write rows with :data:`CSV_COLUMNS` (NaN as an empty cell), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({col: _csv_cell(col, row.get(col)) for col in CSV_COLUMNS})
    return path


def _key(payload: Mapping[str, Any]) -> tuple[str, float, float, float]:
    res, spec = payload["result"], payload["spec"]
    return (
        spec["method"],
        float(res.get("c", spec["c"])),
        float(res["weight_decay"]),
        float(spec["grad_scale_power"]),
    )


def _summary_row(key: tuple[str, float, float, float], runs: Sequence[Mapping[str, Any]]) -> dict:
    method, c, wd, p = key
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
        "knn": mean_std([r.get("knn_accuracy") or float("nan") for r in res]),
    }
    for name in EMBEDDINGS:
        row[f"norm_{name}"] = mean_std([f.get(name, float("nan")) for f in finals])
        row[f"init_norm_{name}"] = mean_std(
            [(r.get("initial_norms") or {}).get(name, float("nan")) for r in runs]
        )
    base = [r.get("baselines") or {} for r in res]
    row["random_init_knn"] = mean_std([b.get("random_init_knn", float("nan")) for b in base])
    row["raw_pixels_knn"] = mean_std([b.get("raw_pixels_knn", float("nan")) for b in base])
    return row


def summarise(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, c, λ, p): final kNN, final norms and baselines as :data:`Stat` over seeds,
    sorted by method, λ, p, c."""
    groups: dict[tuple[str, float, float, float], list[Mapping[str, Any]]] = {}
    for payload in results:
        groups.setdefault(_key(payload), []).append(payload)
    out = [_summary_row(key, runs) for key, runs in groups.items()]
    out.sort(key=lambda r: (r["method"], r["weight_decay"], r["grad_scale_power"], r["c"]))
    return out


def _pm(stat: Stat, digits: int = 4, pct: bool = False) -> str:
    mean, std, n = stat
    if n == 0:
        return "–"
    if pct:
        return f"{mean * 100:.1f}" + (f" ± {std * 100:.1f}" if n > 1 else "")
    return f"{mean:.{digits}g}" + (f" ± {std:.2g}" if n > 1 else "")


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def _summary_cells(r: Mapping[str, Any], show_p: bool) -> list[str]:
    delta = r["knn"][0] - r["random_init_knn"][0]
    raw = (r["raw_pixels_knn"][0], float("nan"), min(1, r["raw_pixels_knn"][2]))
    cells = [r["method"], f"{r['c']:g}", f"{r['weight_decay']:g}"]
    cells += [f"{r['grad_scale_power']:g}"] if show_p else []
    cells += [
        ",".join(map(str, r["seeds"])),
        _pm(r["knn"], pct=True),
        _pm(r["random_init_knn"], pct=True),
        _pm(raw, pct=True),
        "–" if math.isnan(delta) else f"{delta * 100:+.1f}",
    ]
    for name in EMBEDDINGS:
        final, init = r[f"norm_{name}"], r[f"init_norm_{name}"]
        cells.append("–" if final[2] == 0 else f"{init[0]:.3g} → {_pm(final, 3)}")
    return cells


def summary_markdown(summary: Sequence[Mapping[str, Any]], note: str | None = None) -> str:
    """The markdown table of :func:`summarise` (kNN in %, mean ± std over seeds), followed by
    ``note`` (e.g. :func:`hub_cutinit.experiments.sweep.scale_note`) when given."""
    show_p = len({r["grad_scale_power"] for r in summary}) > 1
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
    text = _table(head, (_summary_cells(r, show_p) for r in summary))
    return text + (f"\n{note}\n" if note else "")


def weight_decay_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """Experiment D: final mean norms and kNN per method × λ (× c, p)."""
    head = ["method", "c", "p", "λ", "seeds", "‖backbone‖", "‖projection‖", "‖prediction‖", "kNN %"]
    ordered = sorted(
        summary, key=lambda r: (r["method"], r["c"], r["grad_scale_power"], r["weight_decay"])
    )
    rows = []
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
        rows.append(cells)
    return _table(head, rows)
