"""``cut_init`` is linear in the parameter count and makes no copies.

For each timm model (``num_classes=0``, random weights) a fresh Python process builds the
model, then:

- **no copies**: touches every weight once (``mul_(1)``: lazily zero-filled pages and the
  thread pool are not cut_init's doing), records the resident set size, resets the kernel's
  peak counter (``/proc/self/clear_refs``) and runs ``cut_init(model, 3)``; the peak RSS
  increase during the call should be ≈ 0 MiB (a copy of the weights would show as their size,
  a per-tensor copy as the largest tensor);
- **time**: interleaves ``cut_init`` (``force=True``, c alternating 3 and 1/3 so the weights
  keep their scale) with the bare in-place loop ``for p in model.parameters(): p.div_(c)``
  (at least ``--min-calls`` each, more until ``--budget-s`` seconds have passed); medians.
  ``cut_init / bare`` shows what the name matching and the representability check of ``c``
  cost on top of the division itself. ``cut_init / bare ≈ 1`` means the name matching and bookkeeping cost nothing next to
  the memory traffic.

The parent fits ``time = a + b · params`` over the models: time per parameter roughly constant
(``b`` in ns/param) shows the linearity.

Run::

    python -m recipes.benchmarks.cut_init_time          # resnet18 ... vit_large_patch16_224
    python -m recipes.benchmarks.cut_init_time --models resnet50 vit_huge_patch14_224
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from . import common
except ImportError:  # run as a file: python recipes/benchmarks/cut_init_time.py
    import common

NAME = "cut_init_time"
DEFAULT_MODELS = ["resnet18", "resnet50", "vit_base_patch16_224", "vit_large_patch16_224"]
QUICK_MODELS = ["test_vit", "resnet18"]


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    """Child process: build one model, measure ``cut_init``'s peak RSS increase and time."""
    import timm
    import torch

    from hub_cutinit import cut_init

    common.setup_threads(payload["threads"])
    t0 = time.perf_counter()
    model = timm.create_model(payload["model"], pretrained=False, num_classes=0)
    build_s = time.perf_counter() - t0
    params = list(model.parameters())
    num_params = sum(p.numel() for p in params)
    bytes_params = sum(p.numel() * p.element_size() for p in params)
    largest = max(p.numel() * p.element_size() for p in params)

    with torch.no_grad():  # fault in every weight page and start the thread pool: not cut_init's
        for p in params:
            p.mul_(1.0)
    base = common.rss_mb()
    reset = common.reset_peak_rss()
    start = time.perf_counter()
    cut_init(model, 3.0)
    first_s = time.perf_counter() - start
    peak = common.peak_rss_mb()

    factors = iter([1 / 3.0, 3.0] * 10_000)

    def with_cut_init() -> None:
        cut_init(model, next(factors), force=True)

    @torch.no_grad()
    def bare() -> None:
        c = next(factors)
        for p in model.parameters():
            p.div_(c)

    samples = common.interleaved(
        {"cut_init": with_cut_init, "bare_div": bare},
        repeats=payload["max_calls"],
        warmup=1,
        budget_s=payload["budget_s"],
        min_repeats=payload["min_calls"],
    )
    return {
        "model": payload["model"],
        "num_params": num_params,
        "num_tensors": len(params),
        "param_mb": bytes_params / 2**20,
        "largest_tensor_mb": largest / 2**20,
        "build_s": build_s,
        "first_cut_s": first_s,
        "rss_before_mb": base,
        "peak_reset": reset,
        "peak_increase_mb": (peak - base) if (reset and base is not None) else None,
        "cut_init_s": samples["cut_init"],
        "bare_div_s": samples["bare_div"],
        "cut_init_vs_bare": common.ratio(samples["cut_init"], samples["bare_div"]),
    }


def no_copy_limit_mb(param_mb: float) -> float:
    """Peak RSS increase allowed for "no copies": fixed scratch space, not a share of the model.

    16 MiB plus 2 % of the weights (allocator noise); a copy of the weights, or of each tensor
    in turn, exceeds it on every model above a few million parameters.
    """
    return 16.0 + 0.02 * param_mb


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares ``y = a + b x`` with its R².

    Example:
        >>> linear_fit([1, 2, 3], [3, 5, 7])
        {'intercept': 1.0, 'slope': 2.0, 'r2': 1.0}
    """
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return {
        "intercept": intercept,
        "slope": slope,
        "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the table, write ``results/cut_init_time.json``; return the result."""
    parser = common.base_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--min-calls", type=int, default=None, help="timed calls per model")
    parser.add_argument("--max-calls", type=int, default=41)
    parser.add_argument(
        "--budget-s", type=float, default=4.0, help="per model: time calls for this long"
    )
    args = parser.parse_args(argv)
    models = args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS)
    calls = args.min_calls or (3 if args.quick else 9)
    budget = 0.0 if args.quick else args.budget_s
    rounds = args.repeats or 1
    script = Path(__file__).resolve()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    common.interleaved(
        {
            m: (
                lambda m=m: runs[m].append(
                    common.run_child(
                        script,
                        {
                            "model": m,
                            "min_calls": calls,
                            "max_calls": max(calls, args.max_calls),
                            "budget_s": budget,
                            "threads": args.threads,
                        },
                    )
                )
            )
            for m in models
        },
        repeats=rounds,
        warmup=0,
    )
    per_model = {}
    for m, rs in runs.items():
        cut_s = [t for r in rs for t in r["cut_init_s"]]
        bare_s = [t for r in rs for t in r["bare_div_s"]]
        increases = [r["peak_increase_mb"] for r in rs if r["peak_increase_mb"] is not None]
        first = rs[0]
        median = common.summarize(cut_s)["median"]
        per_model[m] = {
            "num_params": first["num_params"],
            "num_tensors": first["num_tensors"],
            "param_mb": first["param_mb"],
            "largest_tensor_mb": first["largest_tensor_mb"],
            "cut_init_s": common.summarize(cut_s),
            "bare_div_s": common.summarize(bare_s),
            "cut_init_vs_bare": common.ratio(cut_s, bare_s),
            "ns_per_param": 1e9 * median / first["num_params"],
            "peak_increase_mb": max(increases) if increases else None,
            "runs": rs,
        }
    fit = linear_fit(
        [v["num_params"] for v in per_model.values()],
        [v["cut_init_s"]["median"] for v in per_model.values()],
    )
    rows = []
    for m, v in per_model.items():
        label = f"{m} ({v['num_params'] / 1e6:.1f}M)"
        rows.append(common.row(NAME, f"{label} time", v["cut_init_s"]["median"] * 1e3, unit="ms"))
        rows.append(common.row(NAME, f"{label} time/param", v["ns_per_param"], unit="ns"))
        rows.append(
            common.row(
                NAME,
                f"{label} cut_init/bare div_",
                v["cut_init_vs_bare"]["paired_median"],
                unit="x",
            )
        )
        inc = v["peak_increase_mb"]
        rows.append(
            common.row(
                NAME,
                f"{label} peak RSS increase",
                inc,
                unit="MiB",
                target=f"<= {no_copy_limit_mb(v['param_mb']):.0f} (weights {v['param_mb']:.0f})",
                ok=None if inc is None else inc <= no_copy_limit_mb(v["param_mb"]),
            )
        )
    rows.append(common.row(NAME, "fit time = a + b*params: b", fit["slope"] * 1e9, unit="ns/param"))
    rows.append(common.row(NAME, "fit R^2", fit["r2"], target=">= 0.95", ok=fit["r2"] >= 0.95))
    result = {
        "config": {
            "models": models,
            "min_calls": calls,
            "budget_s": budget,
            "rounds": rounds,
            "threads": args.threads,
            "quick": args.quick,
        },
        "models": per_model,
        "fit": fit,
        "summary": rows,
    }
    print(common.format_table(rows))
    return common.save_result(NAME, result, args.out)


if __name__ == "__main__":
    if not common.child_main(None, measure):
        main()
