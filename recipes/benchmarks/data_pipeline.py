"""Is the data loader the bottleneck of the demo? Stream → decoded views vs a training step.

Two measurements on the built-in dataset (Fashion-MNIST parquet, BYOL's two 32 px views):

1. **Loader alone**: images/s of ``make_train_loader(build_train_stream(...))`` with
   ``num_workers`` 0, 1 and 2 (fresh loader per sample, the first batches excluded: they include
   worker start-up and the first shuffle block). Compared with the images/s a BYOL resnet18
   step consumes (``results/train_step.json`` when present, else measured here).
2. **End to end**: the BYOL step of ``train_step.py`` fed from the loader, per ``num_workers``,
   against the same step on a fixed in-memory batch. On 2 cores the decoding competes with the
   step's threads for the same cores: ``1 - best ratio`` is the *feeding cost*, what data
   loading takes off training throughput even when the loader is not the bottleneck.

The loader is the bottleneck when it alone produces fewer images/s than the step consumes.

Run::

    python -m recipes.benchmarks.data_pipeline
    python -m recipes.benchmarks.data_pipeline --workers 0 2 --batches 30
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

try:
    from . import common
    from . import train_step as ts
except ImportError:  # run as a file: python recipes/benchmarks/data_pipeline.py
    import common
    import train_step as ts

NAME = "data_pipeline"


def make_loader(method: str, image_size: int, batch_size: int, num_workers: int, seed: int) -> Any:
    """The trainer's training loader on the built-in dataset (``training/loop.py``)."""
    from hub_cutinit.data import build_train_stream, make_train_loader

    stream = build_train_stream("builtin", method=method, image_size=image_size, seed=seed)
    stream.set_epoch(0)
    return make_train_loader(stream, batch_size=batch_size, num_workers=num_workers)


def endless_batches(
    method: str, image_size: int, batch_size: int, num_workers: int
) -> Iterator[dict[str, Any]]:
    """Batches forever: a new epoch (new loader) whenever one ends."""
    epoch = 0
    while True:
        yield from make_loader(method, image_size, batch_size, num_workers, seed=epoch)
        epoch += 1


def loader_throughput(
    *,
    method: str,
    image_size: int,
    batch_size: int,
    workers: Sequence[int],
    batches: int,
    skip: int,
    repeats: int,
    budget_s: float | None,
) -> dict[str, Any]:
    """Images/s of the loader alone per ``num_workers`` (interleaved, fresh loader per sample)."""
    startup: dict[str, list[float]] = {f"workers={w}": [] for w in workers}

    def measure(num_workers: int) -> Any:
        def run() -> float:
            start = time.perf_counter()
            it = iter(make_loader(method, image_size, batch_size, num_workers, seed=0))
            for _ in range(skip):
                next(it)
            startup[f"workers={num_workers}"].append(time.perf_counter() - start)
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            return time.perf_counter() - t0

        return run

    timed: dict[str, list[float]] = {f"workers={w}": [] for w in workers}
    fns = {}
    for w in workers:
        fn = measure(w)
        fns[f"workers={w}"] = lambda fn=fn, key=f"workers={w}": timed[key].append(fn())
    common.interleaved(fns, repeats=repeats, warmup=0, budget_s=budget_s, min_repeats=1)
    return {
        key: {
            "images_per_s": common.summarize([batches * batch_size / s for s in samples]),
            "startup_s": common.summarize(startup[key]),
            "rounds": len(samples),
        }
        for key, samples in timed.items()
    }


def end_to_end(
    accelerator: Any,
    *,
    method: str,
    image_size: int,
    batch_size: int,
    workers: Sequence[int],
    steps: int,
    repeats: int,
    budget_s: float | None,
) -> dict[str, Any]:
    """Images/s of the hub step fed from the loader, per ``num_workers``, vs a fixed batch."""
    views = ts.make_views(batch_size, image_size, device=accelerator.device)
    runner = ts.HubRunner(method, views, accelerator=accelerator)
    runner.step()
    fixed = list(views)
    feeds = {f"workers={w}": endless_batches(method, image_size, batch_size, w) for w in workers}
    for feed in feeds.values():  # start the workers and fill the first block, untimed
        next(feed)

    def fed_by(feed: Iterator[dict[str, Any]]) -> Any:
        def run() -> None:
            for _ in range(steps):
                runner.views = next(feed)["views"]
                runner.step()

        return run

    def synthetic() -> None:
        runner.views = fixed
        for _ in range(steps):
            runner.step()

    fns = {"in-memory batch": synthetic, **{k: fed_by(f) for k, f in feeds.items()}}
    samples = common.interleaved(fns, repeats=repeats, warmup=0, budget_s=budget_s, min_repeats=2)
    ips = {k: [steps * batch_size / s for s in v] for k, v in samples.items()}
    return {
        "images_per_s": {k: common.summarize(v) for k, v in ips.items()},
        "vs_in_memory": {
            k: common.ratio(v, ips["in-memory batch"]) for k, v in ips.items() if k in feeds
        },
        "rounds": len(samples["in-memory batch"]),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the table, write ``results/data_pipeline.json``; return the result."""
    parser = common.base_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--method", default="byol")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=None, help="timed batches per sample")
    parser.add_argument("--steps", type=int, default=None, help="end-to-end steps per sample")
    parser.add_argument("--budget-s", type=float, default=60.0, help="per measurement")
    parser.add_argument(
        "--no-end-to-end", action="store_true", help="measure the loader alone only"
    )
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)
    if args.quick:
        args.batch_size = min(args.batch_size, 16)
    repeats = args.repeats or (1 if args.quick else 3)
    batches = args.batches or (3 if args.quick else 20)
    steps = args.steps or (2 if args.quick else 5)
    skip = 2 * max(1, max(args.workers))  # the prefetched batches of the start

    result: dict[str, Any] = {
        "config": {
            "dataset": "builtin",
            "method": args.method,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "timed_batches": batches,
            "skipped_batches": skip,
            "end_to_end_steps": steps,
            "repeats": repeats,
            "threads": args.threads,
            "quick": args.quick,
        }
    }
    loader = loader_throughput(
        method=args.method,
        image_size=args.image_size,
        batch_size=args.batch_size,
        workers=args.workers,
        batches=batches,
        skip=skip,
        repeats=repeats,
        budget_s=args.budget_s,
    )
    result["loader"] = loader

    # what one training step consumes: benchmark 1's result when it matches, else measure
    stored = common.load_result("train_step")
    consumed, source = None, "measured here (in-memory batch)"
    if stored and not stored.get("config", {}).get("quick"):
        cfg = stored["config"]
        same = (cfg.get("batch_size"), cfg.get("image_size"), cfg.get("backbone")) == (
            args.batch_size,
            args.image_size,
            "resnet18",
        )
        method_res = stored.get("methods", {}).get(args.method)
        if same and method_res:
            consumed = method_res["images_per_s"]["hub"]["median"]
            source = "results/train_step.json (hub, median)"

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    if not args.no_end_to_end:
        e2e = end_to_end(
            accelerator,
            method=args.method,
            image_size=args.image_size,
            batch_size=args.batch_size,
            workers=args.workers,
            steps=steps,
            repeats=repeats + 1,
            budget_s=args.budget_s,
        )
        result["end_to_end"] = e2e
        if consumed is None:
            consumed = e2e["images_per_s"]["in-memory batch"]["median"]
    elif consumed is None:
        views = ts.make_views(args.batch_size, args.image_size)
        runner = ts.HubRunner(args.method, views, accelerator=accelerator)
        samples = common.interleaved({"hub": runner.step}, repeats=5, warmup=1)
        consumed = args.batch_size / common.summarize(samples["hub"])["median"]
    result["step_consumes_images_per_s"] = {"value": consumed, "source": source}

    rows = [common.row(NAME, f"{args.method} step consumes", consumed, unit="img/s", target=source)]
    best = 0.0
    for key, res in loader.items():
        ips = res["images_per_s"]["median"]
        best = max(best, ips)
        rows.append(common.row(NAME, f"loader {key}", ips, unit="img/s"))
        rows.append(
            common.row(
                NAME,
                f"loader {key} / step",
                ips / consumed,
                unit="x",
                target=">= 1",
                ok=ips >= consumed,
            )
        )
    # The loader is the bottleneck when it cannot produce what the step consumes. Even when it
    # can, on a small machine its CPU work slows the step: that is the feeding cost.
    verdict = best < consumed
    result["loader_is_bottleneck"] = verdict
    if "end_to_end" in result:
        for key, value in result["end_to_end"]["vs_in_memory"].items():
            rows.append(
                common.row(
                    NAME,
                    f"step fed by loader {key} / in-memory",
                    value["paired_median"],
                    unit="x",
                    target=">= 0.9",
                    ok=value["paired_median"] >= 0.9,
                )
            )
        best_e2e = max(v["paired_median"] for v in result["end_to_end"]["vs_in_memory"].values())
        result["feeding_cost"] = 1.0 - best_e2e
        rows.append(
            common.row(NAME, "feeding cost (best num_workers)", 100 * (1.0 - best_e2e), unit="%")
        )
    rows.append(common.row(NAME, "loader is the bottleneck", verdict, target="no", ok=not verdict))
    result["summary"] = rows
    print(common.format_table(rows))
    return common.save_result(NAME, result, args.out)


if __name__ == "__main__":
    main()
