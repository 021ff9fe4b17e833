"""Peak memory of a training step: hub_cutinit vs the hand-written loop vs lightly.

Each configuration runs in a fresh Python process (``tracemalloc`` does not see torch's
allocations). On CPU the child records its resident set size after building the model and
optimiser, resets the kernel's peak counter (``/proc/self/clear_refs``; without it the peak
includes start-up), runs a few steps and reads the peak (``VmHWM``, or ``ru_maxrss``). Reported:
the absolute peak and the increase over the post-build RSS (activations, gradients, optimiser
state, temporaries). The increase is the figure to compare: the hand / lightly children also
hold the hub_cutinit model their weights were copied from, which raises their absolute peak. With ``--device cuda`` the child reports
``torch.cuda.max_memory_allocated`` instead. Configurations run in interleaved rounds; medians.

Run::

    python -m recipes.benchmarks.memory
    python -m recipes.benchmarks.memory --batch-sizes 64 256 --implementations hub hand
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from . import common
except ImportError:  # run as a file: python recipes/benchmarks/memory.py
    import common

NAME = "memory"


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    """Child process: build one runner, run steps, return its memory figures (MiB)."""
    import torch

    try:
        from . import train_step as ts
    except ImportError:
        import train_step as ts

    common.setup_threads(payload["threads"])
    device = payload.get("device", "cpu")
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device == "cpu")
    impl = payload["implementation"]
    runners = ts.build_runners(
        payload["method"],
        accelerator=accelerator,
        batch_size=payload["batch_size"],
        image_size=payload["image_size"],
        backbone=payload["backbone"],
        implementations=("hub",) if impl == "hub" else ("hub", impl),
    )
    # For hand / lightly the hub runner (the source of their weights) stays alive: freeing it
    # would let the measured steps reuse its pages and hide part of their RSS increase.
    runner = runners[impl]
    gc.collect()
    out: dict[str, Any] = {"device": device}
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(payload["steps"]):
            runner.step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        out.update(base_mb=base / 2**20, peak_mb=peak / 2**20, increase_mb=(peak - base) / 2**20)
        return out
    base = common.rss_mb()
    out["peak_reset"] = common.reset_peak_rss()
    out["build_peak_mb"] = None if out["peak_reset"] else common.peak_rss_mb()
    for _ in range(payload["steps"]):
        runner.step()
    peak = common.peak_rss_mb()
    out.update(base_mb=base, peak_mb=peak, increase_mb=peak - base if base else None)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the table, write ``results/memory.json``; return the result."""
    parser = common.base_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument("--implementations", nargs="+", default=["hub", "hand", "lightly"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    if args.quick:
        args.methods = ["simclr"]
        args.implementations = [i for i in args.implementations if i != "lightly"]
        args.batch_sizes = [8]
        args.steps = 2
    repeats = args.repeats or (1 if args.quick else 2)
    implementations = list(args.implementations)
    skipped = {}
    if "lightly" in implementations:
        try:
            from . import train_step as ts
        except ImportError:
            import train_step as ts
        if reason := ts.lightly_available():
            implementations.remove("lightly")
            skipped["lightly"] = reason

    configs = [
        {
            "method": method,
            "implementation": impl,
            "batch_size": batch,
            "image_size": args.image_size,
            "backbone": args.backbone,
            "steps": args.steps,
            "threads": args.threads,
            "device": args.device,
        }
        for batch in args.batch_sizes
        for method in args.methods
        for impl in implementations
    ]
    key = "{method} {implementation} batch {batch_size}".format
    samples: dict[str, list[dict[str, Any]]] = {key(**c): [] for c in configs}
    script = Path(__file__).resolve()
    common.interleaved(
        {
            key(**c): (lambda c=c: samples[key(**c)].append(common.run_child(script, c)))
            for c in configs
        },
        repeats=repeats,
        warmup=0,
    )
    table: dict[str, Any] = {}
    for name, runs in samples.items():
        table[name] = {
            field: common.summarize([r[field] for r in runs])["median"]
            for field in ("base_mb", "peak_mb", "increase_mb")
            if all(r.get(field) is not None for r in runs)
        }
        table[name]["runs"] = runs
    rows = []
    for batch in args.batch_sizes:
        for method in args.methods:
            hub = table.get(key(method=method, implementation="hub", batch_size=batch))
            for impl in implementations:
                entry = table[key(method=method, implementation=impl, batch_size=batch)]
                label = f"{method} {impl} b{batch}"
                rows.append(common.row(NAME, f"{label} peak", entry["peak_mb"], unit="MiB"))
                rows.append(
                    common.row(NAME, f"{label} step increase", entry.get("increase_mb"), unit="MiB")
                )
                if hub and impl != "hub" and entry.get("increase_mb"):
                    value = hub["increase_mb"] / entry["increase_mb"]
                    rows.append(
                        common.row(
                            NAME,
                            f"{method} b{batch} step increase hub/{impl}",
                            value,
                            unit="x",
                            target="<= 1.05",
                            ok=value <= 1.05,
                        )
                    )
    result = {
        "config": {
            "methods": args.methods,
            "implementations": implementations,
            "batch_sizes": args.batch_sizes,
            "backbone": args.backbone,
            "image_size": args.image_size,
            "steps": args.steps,
            "repeats": repeats,
            "device": args.device,
            "quick": args.quick,
            "measure": "torch.cuda.max_memory_allocated"
            if args.device == "cuda"
            else "VmHWM after clear_refs (RSS, MiB)",
        },
        "skipped": skipped,
        "configs": table,
        "summary": rows,
    }
    print(common.format_table(rows))
    return common.save_result(NAME, result, args.out)


if __name__ == "__main__":
    if not common.child_main(None, measure):
        main()
