"""GPU throughput of the SSL step, both data paths: hub_cutinit vs the hand-written loop (bf16).

Images/s of SimCLR and BYOL on resnet18 at 32 px and resnet50 at 224 px, bf16 autocast
(hub_cutinit through ``Accelerator(mixed_precision="bf16")``, the hand-written loop through
``torch.autocast``), the same weights, batch and optimiser as ``train_step.py``, for both data
paths of the trainer:

- ``cpu``: the views arrive augmented (``--augment-on cpu``); the step alone is timed.
- ``device``: the batch is ``[base uint8 images, per-view parameters]`` (``--augment-on
  device``); :class:`~hub_cutinit.data.DeviceAugment` and the step are timed together on the
  device (for hub_cutinit inside ``Trainer.training_step`` itself).

hub_cutinit is :class:`train_step.HubRunner` (``Trainer.training_step``, which has no per-step
host sync). Timing brackets every sample with ``torch.cuda.synchronize()``; candidates are
interleaved, medians and paired ratios reported, plus the peak memory of one step.

Without CUDA it exits with status 1, except with ``--quick``: a CPU smoke run (resnet18 at
16 px, batch 4, fp32) that checks the script, not the numbers. On the device machine::

    python -m recipes.benchmarks.gpu_bench                    # both configs, batch 256
    python -m recipes.benchmarks.gpu_bench --configs resnet50:224 --batch-size 128
    python -m recipes.benchmarks.gpu_bench --quick            # smoke run (CPU or GPU)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

try:
    from . import common
    from . import train_step as ts
except ImportError:  # run as a file: python recipes/benchmarks/gpu_bench.py
    import common
    import train_step as ts

NAME = "gpu_bench"


def peak_step_memory(runner: Any) -> float:
    """MiB allocated at the peak of one step above what was allocated before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    runner.step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


class Fed:
    """One runner fed by one data path: ``cpu`` (ready views) or ``device`` (base images and
    view parameters, augmented by ``augment`` on the device before the step)."""

    def __init__(self, runner: Any, views: list[torch.Tensor], augment: Any = None) -> None:
        self.runner, self.views, self.augment = runner, views, augment

    @property
    def first_loss(self) -> float | None:
        return self.runner.first_loss

    def step(self) -> None:
        runner = self.runner
        if isinstance(runner, ts.HubRunner):  # the trainer's own device path
            runner.trainer.device_augment = self.augment
            runner.views = self.views
        else:
            runner.views = self.augment(self.views) if self.augment else self.views
        runner.step()


@dataclass(frozen=True)
class Config:
    """A backbone at an image size.

    Example:
        >>> Config.parse("resnet50:224")
        Config(backbone='resnet50', image_size=224)
    """

    backbone: str
    image_size: int

    @classmethod
    def parse(cls, text: str) -> Config:
        name, _, size = text.partition(":")
        if not size.isdigit():
            raise ValueError(f"--configs takes backbone:image_size (resnet18:32), got {text!r}")
        return cls(name, int(size))

    def __str__(self) -> str:
        return f"{self.backbone}:{self.image_size}"


def device_batch(method: str, image_size: int, batch_size: int, device: Any) -> tuple:
    """``([base uint8 (B, 3, S, S), params (B, V, P)], DeviceAugment)`` on ``device``."""
    from hub_cutinit.data import make_device_view_transform
    from hub_cutinit.data.device_augment import sample_view_params

    transform = make_device_view_transform(method, image_size)
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (batch_size, 3, image_size, image_size), generator=gen)
    torch.manual_seed(0)
    params = torch.stack([sample_view_params(transform.spec) for _ in range(batch_size)])
    views = [base.to(torch.uint8).to(device), params.to(device)]
    return views, transform.device_augment()


def measure(method: str, cfg: Config, args: Any, accelerator: Any, repeats: int) -> dict:
    """Both data paths x (hub, hand) for one method and config, interleaved."""
    autocast = None if args.fp32 else torch.bfloat16
    runners = ts.build_runners(
        method,
        accelerator=accelerator,
        batch_size=args.batch_size,
        image_size=cfg.image_size,
        backbone=cfg.backbone,
        implementations=args.implementations,
        autocast_dtype=autocast,
        channels_last=args.channels_last,
    )
    cpu_views = runners["hub"].views
    dev_views, augment = device_batch(method, cfg.image_size, args.batch_size, accelerator.device)
    fed = {}
    for path in args.paths:
        for impl, runner in runners.items():
            views, aug = (cpu_views, None) if path == "cpu" else (dev_views, augment)
            fed[f"{impl} {path}"] = Fed(runner, views, aug)
    cuda = torch.cuda.is_available()
    res = ts.compare(
        fed,
        batch_size=args.batch_size,
        repeats=repeats,
        inner=args.inner,
        warmup=args.warmup,
        sync=torch.cuda.synchronize if cuda else None,
        budget_s=args.budget_s,
    )
    del res["ratios"]  # compare()'s ratios need a "hub" key: the pairs are formed here
    ips = {k: [args.batch_size / s for s in v] for k, v in res["step_s"].items()}
    for path in args.paths:
        for impl in runners:
            if impl != "hub":
                res["ratios"] = res.get("ratios", {})
                res["ratios"][f"hub/{impl} {path}"] = common.ratio(
                    ips[f"hub {path}"], ips[f"{impl} {path}"]
                )
    if set(args.paths) == {"cpu", "device"}:
        res.setdefault("ratios", {})
        for impl in runners:
            res["ratios"][f"{impl} device/cpu"] = common.ratio(
                ips[f"{impl} device"], ips[f"{impl} cpu"]
            )
    if cuda:
        res["peak_step_memory_mb"] = {k: peak_step_memory(r) for k, r in fed.items()}
    del runners, fed
    return res


def summary_rows(key: str, res: dict, quick: bool = False) -> list[dict[str, Any]]:
    """Table rows of one method and config (no verdicts in a smoke run)."""
    rows = [
        common.row(NAME, f"{key} {cand} images/s", s["median"], unit="img/s")
        for cand, s in res["images_per_s"].items()
    ]
    for name, value in res.get("ratios", {}).items():
        ok = value["paired_median"] >= 0.95 if name.startswith("hub/") and not quick else None
        target = ">= 0.95" if name.startswith("hub/") else ""
        rows.append(
            common.row(
                NAME, f"{key} {name}", value["paired_median"], unit="x", target=target, ok=ok
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the table, write ``results/gpu_bench.json``; return the result."""
    parser = common.base_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument(
        "--configs", nargs="+", type=Config.parse, default=["resnet18:32", "resnet50:224"]
    )
    parser.add_argument("--paths", nargs="+", choices=["cpu", "device"], default=["cpu", "device"])
    parser.add_argument(
        "--implementations", nargs="+", choices=["hub", "hand"], default=["hub", "hand"]
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--inner", type=int, default=5, help="steps per timed sample")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per candidate")
    parser.add_argument("--budget-s", type=float, default=120.0, help="per method and config")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="no autocast (default: bf16)")
    args = parser.parse_args(argv)
    args.configs = [c if isinstance(c, Config) else Config.parse(c) for c in args.configs]
    if "hub" not in args.implementations:
        args.implementations = ["hub", *args.implementations]
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print(
            "gpu_bench: no CUDA device visible (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}). Run it on a GPU machine, "
            "or add --quick for a CPU smoke run; the CPU benchmarks are `make bench`.",
            file=sys.stderr,
        )
        raise SystemExit(1)
    if args.quick:
        args.batch_size, args.inner, args.warmup = min(args.batch_size, 4 if not cuda else 32), 1, 1
        if not cuda:  # a smoke run of the script, not a measurement
            args.configs, args.fp32 = [Config("resnet18", 16)], True
    repeats = args.repeats or (2 if args.quick else 10)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not cuda, mixed_precision="no" if args.fp32 else "bf16")
    result: dict[str, Any] = {
        "config": {
            "configs": [str(c) for c in args.configs],
            "methods": args.methods,
            "paths": args.paths,
            "implementations": args.implementations,
            "batch_size": args.batch_size,
            "precision": "fp32" if args.fp32 else "bf16",
            "channels_last": args.channels_last,
            "repeats": repeats,
            "inner": args.inner,
            "warmup": args.warmup,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "quick": args.quick,
        },
        "results": {},
    }
    rows = []
    for cfg in args.configs:
        for method in args.methods:
            key = f"{method} {cfg}"
            res = measure(method, cfg, args, accelerator, repeats)
            result["results"][key] = res
            rows += summary_rows(key, res, args.quick)
            if cuda:
                torch.cuda.empty_cache()
    result["summary"] = rows
    print(common.format_table(rows))
    return common.save_result(NAME, result, args.out)


if __name__ == "__main__":
    main()
