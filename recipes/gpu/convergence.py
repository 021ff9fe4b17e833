"""The convergence study on one GPU: full Fashion-MNIST, the faithful backbone, c = 1 against cut.

Issue 10 item 5. It reuses :mod:`hub_cutinit.experiments.convergence` (its run queue,
``study.csv``, ``summary.md``, ``curves.png``) with GPU settings: timm ``resnet18`` at 128 px
(an ImageNet-stem ResNet at 4x the image size has the CIFAR stem's feature maps 32→32→16→8→4),
the paper's heads, batch 512, bf16, the paper's effective peak lrs (SimCLR 0.36, BYOL 0.04),
a 10-epoch warm-up inside a 500-epoch cosine horizon (the run is the start of the paper's
schedule), Nesterov per method (the recipes' default), constant EMA for BYOL, λ = 5e-4 and
full-bank kNN (60,000 images, k = 200) every ``--eval-every-epochs``. It adds
``throughput.json``: wall time, steps, images and images/s of every run (``run_report.json``
adds the command, the settings and the environment).

Two budgets (``--budget``): ``fit`` (default) is what one 10-minute device command holds
(see ``recipes/results/gpu_convergence/ESTIMATE.md``); ``full`` is the issue's 100-epoch run,
which needs about 1.2–2.3 h of one H200 machine (the 16-core data loader is the bottleneck).

Prepare HERE (CPU machine, once; writes git-ignored folders)::

    bash recipes/gpu/prepare.sh      # data/fashion_mnist_full (36 MB) + .whl (datasets & co, 1 MB)

Then on the device, one command (≤ 10 min, ~12 min of device time with the start)::

    run(command="bash recipes/gpu/run.sh", carry=["data/fashion_mnist_full", ".whl"],
        timeout_s=600)

and commit ``recipes/results/gpu_convergence/`` (the files come back under $OUT; run.sh copies
them there). Tiny CPU smoke (what ``tests/test_gpu_convergence.py`` runs)::

    python recipes/gpu/convergence.py --device-check no --backbone test_resnet --image-size 32 \\
        --batch-size 8 --max-steps 2 --heads tiny --num-workers 0 --mixed-precision no \\
        --data builtin --out-dir /tmp/gpu_smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT / "data/fashion_mnist_full"
DEFAULT_OUT = ROOT / "recipes/results/gpu_convergence"
#: what each budget trains: (methods, epochs, eval every N epochs). ``fit``: ESTIMATE.md.
BUDGETS: dict[str, tuple[tuple[str, ...], int, int]] = {
    "fit": (("byol", "simclr"), 4, 1),
    "full": (("byol", "simclr"), 100, 10),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="fit")
    p.add_argument("--methods", nargs="+", default=None, help="default: the budget's")
    p.add_argument("--epochs", type=int, default=None, help="default: the budget's")
    p.add_argument("--eval-every-epochs", type=int, default=None, help="default: the budget's")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--variants", nargs="+", default=["c1", "cut"])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="parquet folder, or 'builtin'")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--heads", default="paper", help="paper, cpu or tiny")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--max-steps", type=int, default=None, help="cut every run short (smoke)")
    p.add_argument("--warmup-epochs", type=float, default=10.0)
    p.add_argument("--cosine-epochs", type=float, default=500.0)
    p.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16", "fp16"])
    #: 60 train shards split evenly over 12 workers (14 would leave 4 of them a 5th shard)
    p.add_argument("--num-workers", type=int, default=12)
    p.add_argument("--threads", type=int, default=4, help="torch intra-op threads (main process)")
    p.add_argument("--out-dir", default=str(DEFAULT_OUT))
    p.add_argument("--runs-dir", default=None, help="default: /tmp/gpu_convergence_runs")
    p.add_argument(
        "--device-check",
        choices=["cuda", "no"],
        default="cuda",
        help="'cuda': refuse to start without a GPU (a CPU run of the default would take days)",
    )
    return p


def study_config(args: argparse.Namespace) -> Any:
    """The :class:`StudyConfig` of these flags (budget defaults filled in)."""
    from hub_cutinit.experiments.convergence import StudyConfig

    methods, epochs, every = BUDGETS[args.budget]
    return StudyConfig(
        methods=tuple(args.methods or methods),
        seeds=tuple(args.seeds),
        variants=tuple(args.variants),
        backbone=args.backbone,
        backbone_kwargs={},  # the plain timm model: timm alone loads the result
        heads=args.heads,
        image_size=args.image_size,
        dataset=args.data,
        max_train_examples=None,  # every training image; the kNN bank is all of them
        epochs=args.epochs or epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        warmup_epochs=args.warmup_epochs,
        cosine_epochs=args.cosine_epochs,
        eval_every_epochs=args.eval_every_epochs or every,
        threads=args.threads,
        out_dir=args.out_dir,
        runs_dir=args.runs_dir or "/tmp/gpu_convergence_runs",
    )


def extra_argv(args: argparse.Namespace) -> list[str]:
    """Recipe flags that :class:`StudyConfig` does not carry (mixed precision, loader workers)."""
    return ["--mixed-precision", args.mixed_precision, "--num-workers", str(args.num_workers)]


def step_flops(
    method: str,
    *,
    backbone: str = "resnet18",
    image_size: int = 128,
    batch_size: int = 8,
    heads: str = "paper",
) -> dict[str, float]:
    """FLOPs of one training step (forward + backward of both views, the loss, the BYOL
    teacher), counted by ``torch.utils.flop_counter.FlopCounterMode`` on CPU.

    Matrix products and convolutions only (what the counter counts; BatchNorm, activations and
    the optimiser are memory-bound and small in FLOPs). Linear in the batch except the NT-Xent
    similarity matrix (2B×2B×d, < 0.1 % here), so a small batch scales to 512.
    """
    import torch
    from accelerate import Accelerator
    from torch.utils.flop_counter import FlopCounterMode

    from hub_cutinit.registry import get_preset
    from hub_cutinit.training import TrainConfig, Trainer

    cfg = TrainConfig(
        method=method,
        backbone=backbone,
        batch_size=batch_size,
        warmup_epochs=0,
        overrides=dict(get_preset(method, heads)),
        convergence_monitor=False,
    )
    trainer = Trainer(cfg, accelerator=Accelerator(cpu=True))
    trainer.setup_accelerator()
    trainer.setup_model()
    trainer.setup_optimizer(total_steps=10)
    views = [torch.randn(batch_size, 3, image_size, image_size) for _ in range(2)]
    trainer.training_step(views)  # lazy state (optimizer buffers) outside the count
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.training_step(views)
    total = float(counter.get_total_flops())
    return {"flops_per_step": total, "flops_per_image": total / batch_size}


def environment() -> dict[str, Any]:
    """Device and versions, stored beside the numbers."""
    import torch

    env: dict[str, Any] = {"torch": torch.__version__, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; write its outputs and ``run_report.json`` to ``--out-dir``."""
    args = build_parser().parse_args(argv)
    import torch

    if args.device_check == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device: this study is sized for a GPU; pass --device-check no (and tiny "
            "settings, see the module docstring) to run it on a CPU."
        )
    from hub_cutinit.experiments.convergence import run_study, throughput

    cfg = study_config(args)
    report: dict[str, Any] = {
        "command": [sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
        "budget": args.budget,
        "config": dict(vars(args)),
        "environment": environment(),
    }
    started = time.perf_counter()
    payloads = run_study(dataclasses.replace(cfg, extra_args=extra_argv(args)))
    report["total_wall_s"] = round(time.perf_counter() - started, 2)
    report["runs"] = throughput(payloads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["runs"], indent=1))
    return report


if __name__ == "__main__":
    main()
