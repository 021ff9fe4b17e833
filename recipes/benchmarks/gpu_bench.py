"""GPU throughput of the training step: hub_cutinit vs hand-written loop vs lightly (bf16).

One process, one GPU, bf16 autocast (hub_cutinit through ``Accelerator(mixed_precision=
"bf16")``, the others through ``torch.autocast``), resnet50 at 96 px (``--image-size 224`` for
ImageNet size), SimCLR and BYOL, the same weights, batch and optimiser as ``train_step.py``.
Timing brackets every sample with ``torch.cuda.synchronize()``; candidates are interleaved,
medians reported. Also reported:

- ``hub_async``: hub_cutinit's step without its two host synchronisations per step (the
  ``torch.isfinite(loss)`` guard in ``train_step`` and the ``float(means[-1])`` logging read in
  the loop). The gap ``hub_async / hub`` is what removing those syncs could gain on a GPU.
- peak memory per implementation (``torch.cuda.max_memory_allocated`` over one step).

Needs a CUDA device; without one it prints why and exits with status 1. Run on the device
machine from the repository root, with the package and its ``bench`` extra installed::

    python -m recipes.benchmarks.gpu_bench                        # resnet50, 96 px, batch 256
    python -m recipes.benchmarks.gpu_bench --image-size 224 --batch-size 128 --channels-last
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

try:
    from . import common
    from . import train_step as ts
except ImportError:  # run as a file: python recipes/benchmarks/gpu_bench.py
    import common
    import train_step as ts

NAME = "gpu_bench"


class HubAsyncRunner(ts.HubRunner):
    """:class:`train_step.HubRunner` minus the per-step host syncs (to price them)."""

    name = "hub_async"

    def step(self) -> None:
        accelerator, model = self.accelerator, self.model
        views = [v.to(accelerator.device, non_blocking=True) for v in self.views]
        with accelerator.accumulate(model):
            out = model(views)
            loss_mean = accelerator.reduce(out.loss.detach().float(), reduction="mean")
            accelerator.backward(out.loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        embeddings = {k: v.detach() for k, v in out.embeddings.items()}
        self.pending = self.norm_statistics(embeddings, loss_mean)  # read only when logging
        self.steps += 1
        self.scheduler.step_update(self.steps)
        self.raw.update_teacher(self.steps / self.total_steps)


def peak_step_memory(runner: Any) -> float:
    """MiB allocated at the peak of one step above what was allocated before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    runner.step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure on the GPU, print the table, write ``results/gpu_bench.json``."""
    parser = common.base_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument(
        "--implementations", nargs="+", default=["hub", "hub_async", "hand", "lightly"]
    )
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--inner", type=int, default=5, help="steps per timed sample")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per runner")
    parser.add_argument("--budget-s", type=float, default=120.0, help="per method")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="no autocast (default: bf16)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "gpu_bench: no CUDA device visible (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}). Run it on a GPU machine; "
            "the CPU benchmarks are `make bench`.",
            file=sys.stderr,
        )
        raise SystemExit(1)
    if args.quick:
        args.batch_size, args.inner, args.warmup = min(args.batch_size, 32), 1, 1
    repeats = args.repeats or (2 if args.quick else 10)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="no" if args.fp32 else "bf16")
    autocast = None if args.fp32 else torch.bfloat16
    implementations = list(args.implementations)
    skipped = {}
    if "lightly" in implementations and (reason := ts.lightly_available()):
        implementations.remove("lightly")
        skipped["lightly"] = reason
    result: dict[str, Any] = {
        "config": {
            "backbone": args.backbone,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "precision": "fp32" if args.fp32 else "bf16",
            "channels_last": args.channels_last,
            "repeats": repeats,
            "inner": args.inner,
            "warmup": args.warmup,
            "implementations": implementations,
            "device": torch.cuda.get_device_name(0),
            "quick": args.quick,
        },
        "skipped": skipped,
        "methods": {},
    }
    rows = []
    for method in args.methods:
        base = [i for i in implementations if i != "hub_async"]
        if "hub" not in base:
            base.insert(0, "hub")
        runners = ts.build_runners(
            method,
            accelerator=accelerator,
            batch_size=args.batch_size,
            image_size=args.image_size,
            backbone=args.backbone,
            implementations=base,
            autocast_dtype=autocast,
            channels_last=args.channels_last,
        )
        if "hub_async" in implementations:
            runners["hub_async"] = HubAsyncRunner(
                method,
                runners["hub"].views,
                accelerator=accelerator,
                backbone=args.backbone,
                channels_last=args.channels_last,
            )
        runners = {k: runners[k] for k in implementations if k in runners}
        res = ts.compare(
            runners,
            batch_size=args.batch_size,
            repeats=repeats,
            inner=args.inner,
            warmup=args.warmup,
            sync=torch.cuda.synchronize,
            budget_s=args.budget_s,
        )
        res["peak_step_memory_mb"] = {k: peak_step_memory(r) for k, r in runners.items()}
        result["methods"][method] = res
        for impl, summary in res["images_per_s"].items():
            rows.append(common.row(NAME, f"{method} {impl} images/s", summary["median"]))
            rows.append(
                common.row(
                    NAME, f"{method} {impl} step peak", res["peak_step_memory_mb"][impl], unit="MiB"
                )
            )
        targets = {"hub_vs_hand": 0.95, "hub_vs_lightly": 1.0}
        for key, value in res["ratios"].items():
            paired = value["paired_median"]
            target = targets.get(key)
            rows.append(
                common.row(
                    NAME,
                    f"{method} {key.replace('_vs_', '/')} images/s",
                    paired,
                    unit="x",
                    target=f">= {target:g}" if target else "",
                    ok=paired >= target if target else None,
                )
            )
        del runners
        torch.cuda.empty_cache()
    result["summary"] = rows
    print(common.format_table(rows))
    return common.save_result(NAME, result, args.out)


if __name__ == "__main__":
    main()
