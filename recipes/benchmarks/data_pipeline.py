"""Is the data loader the bottleneck of the demo? Stream → decoded views vs a training step.

Two measurements on the built-in dataset (Fashion-MNIST parquet, BYOL's two 32 px views), then
one per CPU core:

1. **Loader alone**: images/s of ``make_train_loader(build_train_stream(...))`` with
   ``num_workers`` 0, 1 and 2 (fresh loader per sample, the first batches excluded: they include
   worker start-up and the first shuffle block). Compared with the images/s a BYOL resnet18
   step consumes (``results/train_step.json`` when present, else measured here).
2. **End to end**: the BYOL step of ``train_step.py`` fed from the loader, per ``num_workers``,
   against the same step on a fixed in-memory batch. On 2 cores the decoding competes with the
   step's threads for the same cores: ``1 - best ratio`` is the *feeding cost*, what data
   loading takes off training throughput even when the loader is not the bottleneck.

The loader is the bottleneck when it alone produces fewer images/s than the step consumes.

3. **Per CPU core** (one thread, interleaved), for SimCLR (2 views) and DINO (2 + 6 views) at
   32 px (the built-in dataset's PNGs) and 224 px (synthetic 320x240 JPEGs): images/s of
   *decode* (decode + resize to the image size, uint8), the *PIL* path (``--augment-on cpu``:
   decode + every view), the on-device path's *worker* half (decode + resize + parameter draw)
   and its *device* half (:class:`~hub_cutinit.data.DeviceAugment` on this machine's device:
   labelled ``cpu`` without a GPU). From them, the cores each path needs to feed a GPU step of
   N images/s: N measured (``results/gpu_bench.json``, hub, cpu views) when stored, else
   derived from a cited public benchmark (:data:`CITED_STEP`, labelled as such).

Run::

    python -m recipes.benchmarks.data_pipeline
    python -m recipes.benchmarks.data_pipeline --workers 0 2 --batches 30
    python -m recipes.benchmarks.data_pipeline --quick --per-core-only
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

try:
    from . import common
    from . import train_step as ts
except ImportError:  # run as a file: python recipes/benchmarks/data_pipeline.py
    import common
    import train_step as ts

NAME = "data_pipeline"

#: The GPU step throughput used when no GPU measurement is stored: a cited public benchmark.
CITED_STEP: dict[str, Any] = {
    "images_per_s": 2470.0,
    "image_size": 224,
    "what": (
        "ResNet-50 v1.5 supervised training, 1x A100 80GB (DGX A100), mixed precision (AMP), "
        "224 px, one view per image, NGC pytorch-21.03 container"
    ),
    "source": (
        "NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "
        "'Training performance: NVIDIA DGX A100 (8x A100 80GB)', 1 GPU, mixed precision"
    ),
    "url": (
        "https://github.com/NVIDIA/DeepLearningExamples/blob/master/PyTorch/Classification/"
        "ConvNets/resnet50v1.5/README.md#training-performance-nvidia-dgx-a100-8x-a100-80gb"
    ),
}


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


# ------------------------------------------------------------------------- per CPU core
def encoded_images(image_size: int, count: int, seed: int = 0) -> list[bytes]:
    """``count`` encoded images: the built-in dataset's PNGs up to 64 px, else synthetic
    320x240 JPEGs (smooth colour fields plus noise, quality 90; made with PIL)."""
    import numpy as np
    from PIL import Image

    if image_size <= 64:
        from itertools import islice

        from hub_cutinit.data import resolve_dataset

        ds, column, _ = resolve_dataset("builtin", "train")
        return [ex[column]["bytes"] for ex in islice(iter(ds), count)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((320, 240), Image.BICUBIC), dtype=np.int16)
        noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def view_cost(spec: Any, size: int) -> float:
    """The step's work per image in ``size``-px views (pixels of all views / size^2).

    Example:
        >>> from hub_cutinit.data.device_augment import make_device_view_transform
        >>> round(view_cost(make_device_view_transform("dino", 224, num_local_views=6).spec, 224), 2)
        3.1
    """
    return sum(g.count * (g.size / size) ** 2 for g in spec.groups)


def step_images_per_s(method: str, image_size: int, spec: Any) -> dict[str, Any]:
    """N: the images/s a GPU step consumes, measured (gpu_bench.json) or from CITED_STEP."""
    stored = common.load_result("gpu_bench")
    if stored and not stored["config"].get("quick") and stored["config"]["device"] != "cpu":
        for key, res in stored.get("results", {}).items():
            name, cfg = key.split(" ", 1)
            if name == method and cfg.endswith(f":{image_size}"):
                ips = res["images_per_s"]["hub cpu"]["median"]
                return {"value": ips, "source": f"measured: results/gpu_bench.json {key}"}
    if image_size == CITED_STEP["image_size"]:
        cost = view_cost(spec, image_size)
        return {
            "value": CITED_STEP["images_per_s"] / cost,
            "source": (
                f"cited, not measured: {CITED_STEP['images_per_s']:.0f} img/s / {cost:.2f} "
                f"224-px view equivalents per image ({CITED_STEP['url']})"
            ),
        }
    return {"value": None, "source": f"no GPU measurement and no cited figure at {image_size} px"}


def per_core(method: str, image_size: int, count: int, repeats: int) -> dict[str, Any]:
    """Images/s on one core of decode, the PIL path, the worker half and the device half."""
    from hub_cutinit.data import decode_image, make_view_transform
    from hub_cutinit.data.device_augment import make_device_view_transform
    from hub_cutinit.data.transforms import to_rgb

    local = {"num_local_views": 6} if method == "dino" else {}
    pil = make_view_transform(method, image_size, uint8=True, **local)
    worker = make_device_view_transform(method, image_size, **local)
    augment = worker.device_augment()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    values = encoded_images(image_size, count)
    torch.manual_seed(0)
    halves = [worker(decode_image(v)) for v in values]
    batch = [torch.stack([h[i] for h in halves]).to(device) for i in (0, 1)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def device_half() -> None:
        augment(batch)
        sync()

    fns = {
        "decode": lambda: [worker.resize(to_rgb(decode_image(v))) for v in values],
        "pil": lambda: [pil(decode_image(v)) for v in values],
        "worker": lambda: [worker(decode_image(v)) for v in values],
        f"device ({device.type})": device_half,
    }
    samples = common.interleaved(fns, repeats=repeats, warmup=1)
    ips = {k: common.summarize([count / s for s in v]) for k, v in samples.items()}
    n = step_images_per_s(method, image_size, worker.spec)
    out: dict[str, Any] = {"images_per_s_per_core": ips, "step": n, "cores_needed": {}}
    if n["value"] is not None:
        for path, key in (("decode only", "decode"), ("pil", "pil"), ("device", "worker")):
            out["cores_needed"][path] = n["value"] / ips[key]["median"]
    return out


def per_core_table(results: dict[str, Any]) -> str:
    """The markdown table of the per-core section."""
    head = (
        "| method | px | decode | PIL path | device path: workers | device half | N (img/s) "
        "| cores: decode / PIL / device path |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for key, res in results.items():
        method, size = key.split()
        ips = {k.split()[0]: v["median"] for k, v in res["images_per_s_per_core"].items()}
        dev = next(k for k in res["images_per_s_per_core"] if k.startswith("device"))
        n, cores = res["step"], res["cores_needed"]
        label = "-" if n["value"] is None else f"{n['value']:.0f} ({n['source'].split(':')[0]})"
        need = " / ".join(f"{cores[k]:.1f}" for k in ("decode only", "pil", "device") if k in cores)
        lines.append(
            f"| {method} | {size} | {ips['decode']:.0f} | {ips['pil']:.0f} | {ips['worker']:.0f} "
            f"| {ips['device']:.0f} {dev[len('device ') :]} | {label} | {need or '-'} |"
        )
    return "\n".join(lines) + "\n(images/s per CPU core, one thread; device half on its device)"


def per_core_all(
    methods: Sequence[str], sizes: Sequence[int], count: int, repeats: int
) -> dict[str, Any]:
    """:func:`per_core` for every method and size, on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {f"{m} {s}": per_core(m, s, count, repeats) for s in sizes for m in methods}
    finally:
        torch.set_num_threads(threads)


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
    parser.add_argument("--per-core-methods", nargs="+", default=["simclr", "dino"])
    parser.add_argument("--per-core-sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument(
        "--per-core-images", type=int, default=None, help="images per timed per-core sample"
    )
    parser.add_argument(
        "--per-core-only", action="store_true", help="measure the per-core section only"
    )
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)
    if args.quick:
        args.batch_size = min(args.batch_size, 16)
    if args.per_core_only:
        return per_core_main(args)
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
    table = add_per_core(result, rows, args)
    result["summary"] = rows
    print(common.format_table(rows))
    print(table)
    return common.save_result(NAME, result, args.out)


def add_per_core(result: dict[str, Any], rows: list[dict[str, Any]], args: Any) -> str:
    """Measure the per-core section into ``result`` and ``rows``; return its markdown table."""
    count = args.per_core_images or (4 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 3)
    res = per_core_all(args.per_core_methods, args.per_core_sizes, count, repeats)
    result["per_core"] = {
        "config": {"images_per_sample": count, "repeats": repeats, "threads": 1},
        "cited_step": CITED_STEP,
        "results": res,
    }
    for key, entry in res.items():
        for path, summary in entry["images_per_s_per_core"].items():
            unit = "img/s" if path.startswith("device (cuda") else "img/s/core"
            rows.append(common.row(NAME, f"{key} px {path}", summary["median"], unit=unit))
        for path, cores in entry["cores_needed"].items():
            source = entry["step"]["source"].split(":")[0]
            rows.append(
                common.row(
                    NAME,
                    f"{key} px cores for N={entry['step']['value']:.0f} img/s, {path}",
                    cores,
                    unit="cores",
                    target=source,
                )
            )
    table = per_core_table(res)
    result["per_core"]["markdown"] = table
    return table


def per_core_main(args: Any) -> dict[str, Any]:
    """``--per-core-only``: the per-core section alone."""
    result: dict[str, Any] = {"config": {"per_core_only": True, "quick": args.quick}}
    rows: list[dict[str, Any]] = []
    table = add_per_core(result, rows, args)
    result["summary"] = rows
    print(common.format_table(rows))
    print(table)
    return common.save_result(NAME, result, args.out)


if __name__ == "__main__":
    main()
