"""Where the hub_cutinit step loses against the hand-written loop (issue 13 item 5).

Interleaved rounds of one resnet18 step (32 px, batch 64, CPU) for: the Trainer's step as
`train()` runs it (convergence monitor every 10 steps), the same step without the monitor,
without the monitor and without the gradient finiteness check (loss checked only), and the
hand-written loop of ``train_step.py``. Prints the per-step medians and the ratios.

    python -m recipes.benchmarks.step_overhead --out recipes/results/step_overhead/step_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from accelerate import Accelerator

from hub_cutinit.training.default_callbacks import ConvergenceMonitorCallback, NonFiniteGuard

try:
    from . import common
    from . import train_step as ts
except ImportError:  # run as a file
    import common
    import train_step as ts


def measure(method: str, *, batch_size: int, repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per step of each variant, and the ratios to the hand-written loop."""
    accelerator = Accelerator(cpu=True)
    views = ts.make_views(batch_size, 32)
    torch.manual_seed(0)
    monitored = ts.HubRunner(method, views, accelerator=accelerator)
    torch.manual_seed(0)
    plain = ts.HubRunner(method, views, accelerator=accelerator)
    plain.trainer.remove_callback(ConvergenceMonitorCallback)
    torch.manual_seed(0)
    bare = ts.HubRunner(method, views, accelerator=accelerator)
    bare.trainer.remove_callback(ConvergenceMonitorCallback)
    # the gradient finiteness check priced: only the loss is checked (no pass over the grads)
    bare.trainer.remove_callback(NonFiniteGuard)
    hand = ts.HandRunner(monitored)
    samples = common.interleaved(
        {
            "hub": monitored.step,
            "hub_no_monitor": plain.step,
            "hub_no_monitor_no_grad_check": bare.step,
            "hand": hand.step,
        },
        repeats=repeats,
        inner=inner,
    )
    med = {k: statistics.median(v) for k, v in samples.items()}  # seconds per step
    return {
        **{f"{k}_s": v for k, v in med.items()},
        "hub/hand": med["hand"] / med["hub"],
        "hub_no_monitor/hand": med["hand"] / med["hub_no_monitor"],
        "hub_no_monitor_no_grad_check/hand": med["hand"] / med["hub_no_monitor_no_grad_check"],
        "monitor share of the hub step": 1 - med["hub_no_monitor"] / med["hub"],
        "gradient check share of the hub step": (
            med["hub_no_monitor"] - med["hub_no_monitor_no_grad_check"]
        )
        / med["hub"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inner", type=int, default=10, help="steps per sample (the log cadence)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {
        m: measure(m, batch_size=args.batch_size, repeats=args.repeats, inner=args.inner)
        for m in args.methods
    }
    for method, row in result.items():
        print(method, {k: round(v, 4) for k, v in row.items()})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
