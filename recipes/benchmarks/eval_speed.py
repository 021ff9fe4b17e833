"""Images/s of one evaluation pass: float images in one process (before) against uint8 images
decoded in DataLoader workers and normalised by ``extract_features`` (after). Issue 20 item 6.

One pass = the kNN bank (built-in train, 10,000 images) and test (2,000) of ``plan_evaluation``
at ``--image-size`` (128: the GPU study's), through ``extract_features`` of the raw-pixel
baseline (``nn.Flatten``: the model costs nothing, so the loader is what is timed) and, with
``--backbone``, of a timm backbone. "before" rebuilds the old loaders (``make_eval_transform``,
float32 normalised in the loading process, no workers); "after" is ``plan_evaluation`` with
``--workers`` workers. Each setting runs ``--repeats`` passes, interleaved; the median counts.

Run::

    python recipes/benchmarks/eval_speed.py --out recipes/results/eval_speed/eval_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hub_cutinit.data import SSLImageStream, make_eval_loader, make_eval_transform, resolve_dataset
from hub_cutinit.data.pipeline import plan_evaluation
from hub_cutinit.evaluation import extract_features


def old_loaders(image_size: int, batch_size: int, max_samples: int | None) -> list[Any]:
    """The loaders as they were: float32 normalised in the loading process, no workers."""
    loaders = []
    for split in ("train", "test"):
        ds, image_col, label_col = resolve_dataset("builtin", split, require_label=True)
        if max_samples is not None:
            ds = ds.take(max_samples)
        stream = SSLImageStream(
            ds,
            make_eval_transform(image_size),
            image_column=image_col,
            label_column=label_col,
            shuffle=False,
        )
        loaders.append(make_eval_loader(stream, batch_size))
    return loaders


def new_loaders(
    image_size: int, batch_size: int, max_samples: int | None, workers: int
) -> list[Any]:
    """``plan_evaluation``'s loaders: uint8, ``workers`` decoding processes."""
    plan = plan_evaluation(
        "builtin",
        image_size=image_size,
        max_samples=max_samples,
        batch_size=batch_size,
        num_workers=workers,
    )
    assert plan.loaders is not None
    return list(plan.loaders)


def one_pass(model: torch.nn.Module, loaders: Sequence[Any]) -> tuple[float, int, float]:
    """(seconds, images, feature MB) of extracting bank and test features."""
    start = time.perf_counter()
    images, megabytes = 0, 0.0
    for loader in loaders:
        feats, labels = extract_features(model, loader)
        images += len(labels)
        megabytes += feats.numel() * feats.element_size() / 1e6
    return time.perf_counter() - start, images, megabytes


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Time both loaders; print and write the JSON result."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-samples", type=int, default=None, help="per split (default: all)")
    p.add_argument("--backbone", default=None, help="also time a timm backbone (e.g. resnet18)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models: dict[str, torch.nn.Module] = {"raw_pixels": torch.nn.Flatten()}
    if args.backbone:
        import timm

        models[args.backbone] = timm.create_model(args.backbone, num_classes=0).eval()
    settings = {
        "before": lambda: old_loaders(args.image_size, args.batch_size, args.max_samples),
        "after": lambda: new_loaders(
            args.image_size, args.batch_size, args.max_samples, args.workers
        ),
    }
    times: dict[str, dict[str, list[float]]] = {m: {s: [] for s in settings} for m in models}
    info: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        for _ in range(args.repeats):
            for setting, build in settings.items():  # interleaved: load drifts hit both
                seconds, images, megabytes = one_pass(model, build())
                times[name][setting].append(seconds)
                info[f"{name}/{setting}"] = {"images": images, "feature_mb": round(megabytes, 1)}
    result: dict[str, Any] = {
        "config": vars(args),
        "environment": {
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "load_average": os.getloadavg(),
            "machine": platform.machine(),
        },
        "passes": {},
    }
    for name in models:
        for setting in settings:
            runs = times[name][setting]
            images = info[f"{name}/{setting}"]["images"]
            result["passes"][f"{name}/{setting}"] = {
                **info[f"{name}/{setting}"],
                "seconds": [round(t, 2) for t in runs],
                "median_s": round(statistics.median(runs), 2),
                "images_per_s": round(images / statistics.median(runs), 1),
            }
        before = result["passes"][f"{name}/before"]["images_per_s"]
        after = result["passes"][f"{name}/after"]["images_per_s"]
        result["passes"][f"{name}/speedup"] = round(after / before, 2)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
