"""Where the hub_cutinit step loses against the hand-written loop (issue 13 item 5).

Interleaved rounds of one resnet18 step (32 px, batch 64, CPU) for: the Trainer's step as
`train()` runs it (convergence monitor within its ``--monitor-budget``), the same step without
the monitor, without the monitor and the gradient finiteness check (loss checked only), without
those and the norm statistics (the framework alone), and the hand-written loop of
``train_step.py``. Prints the per-step medians, each default's share of the hub step (paired
rounds, 95 % bootstrap interval) and the ratios to the hand-written loop.

    python -m recipes.benchmarks.step_overhead --out recipes/results/step_overhead/step_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from hub_cutinit.training.default_callbacks import ConvergenceMonitorCallback, NonFiniteGuard

try:
    from . import common
    from . import train_step as ts
except ImportError:  # run as a file
    import common
    import train_step as ts


def measure(method: str, *, batch_size: int, repeats: int, inner: int) -> dict[str, Any]:
    """Median seconds per step of each variant; each default's share of the hub step (from
    paired rounds, with a 95 % bootstrap interval); the ratios to the hand-written loop."""
    accelerator = Accelerator(cpu=True)
    views = ts.make_views(batch_size, 32)
    torch.manual_seed(0)
    monitored = ts.HubRunner(method, views, accelerator=accelerator)
    torch.manual_seed(0)
    plain = ts.HubRunner(method, views, accelerator=accelerator)
    plain.trainer.remove_callback(ConvergenceMonitorCallback)
    torch.manual_seed(0)
    unguarded = ts.HubRunner(method, views, accelerator=accelerator)
    unguarded.trainer.remove_callback(ConvergenceMonitorCallback)
    # the gradient finiteness check priced: only the loss is checked (no pass over the grads)
    unguarded.trainer.remove_callback(NonFiniteGuard)
    torch.manual_seed(0)  # ... and the norm statistics too: the framework alone
    bare = ts.HubRunner(method, views, accelerator=accelerator, track_norms=False)
    bare.trainer.remove_callback(NonFiniteGuard)
    hand = ts.HandRunner(monitored)
    samples = common.interleaved(
        {
            "hub": monitored.step,
            "hub_no_monitor": plain.step,
            "hub_no_monitor_no_grad_check": unguarded.step,
            "hub_bare": bare.step,
            "hand": hand.step,
        },
        repeats=repeats,
        inner=inner,
    )
    med = {k: statistics.median(v) for k, v in samples.items()}  # seconds per step

    def share(with_it: str, without: str) -> dict[str, Any]:
        """The share of the hub step that the difference of two variants costs (paired)."""
        r = common.ratio(samples[without], samples[with_it])  # without / with = 1 - share
        low, high = r["paired_ci95"]
        return {"share": 1 - r["paired_median"], "ci95": [1 - high, 1 - low]}

    return {
        **{f"{k}_s": v for k, v in med.items()},
        "hub/hand": common.ratio(samples["hand"], samples["hub"]),
        "hub_bare/hand": common.ratio(samples["hand"], samples["hub_bare"]),
        "monitor share of the hub step": share("hub", "hub_no_monitor"),
        "gradient check share of the hub step": share(
            "hub_no_monitor", "hub_no_monitor_no_grad_check"
        ),
        "norm statistics share of the hub step": share("hub_no_monitor_no_grad_check", "hub_bare"),
    }


def component_costs(
    method: str,
    *,
    batch_size: int,
    repeats: int,
    backbone: str = "resnet18",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Each default's own work timed alone, in milliseconds and as a share of the hub step.

    Whole-step differences of a few percent drown in the noise of a shared machine; the parts
    are small and repeatable, so they are timed on their own, interleaved with whole steps:
    the guard's pass over the gradients, the step statistics, one convergence-monitor reading
    (two probe forwards, charged at the reading rate of ``--monitor-budget``), and the fused
    optimiser step against torch's default one (a saving: negative).
    """
    accelerator = Accelerator(cpu=True)
    views = ts.make_views(batch_size, 32)
    torch.manual_seed(0)
    hub = ts.HubRunner(
        method, views, accelerator=accelerator, backbone=backbone, overrides=overrides
    )
    hand = ts.HandRunner(hub)
    trainer = hub.trainer
    for _ in range(3):
        hub.step()
        hand.step()
    # gradients for the guard and both optimisers to read (a hub step frees its gradients, so
    # they are put back before each call: 64 reference assignments)
    hub_grads = [(p, torch.randn_like(p) * 1e-3) for p in trainer.model.parameters()]
    hand_grads = [(p, torch.randn_like(p) * 1e-3) for p in hand.student.parameters()]

    def with_grads(grads: list[tuple[torch.Tensor, torch.Tensor]], fn: Any) -> Any:
        def call() -> None:
            for param, grad in grads:
                param.grad = grad
            fn()

        return call

    guard = trainer.callbacks.get(NonFiniteGuard)
    monitor = trainer.callbacks.get(ConvergenceMonitorCallback)
    assert guard is not None and monitor is not None and monitor.monitor is not None
    out = trainer.raw_model(views)
    embeddings = {k: v.detach() for k, v in out.embeddings.items()}
    loss, flag = out.loss.detach(), torch.zeros(1)

    def reading() -> None:
        monitor.monitor.before_step(1)
        monitor.monitor.after_step(1)

    parts = {
        "step": hub.step,
        "guard": with_grads(
            hub_grads,
            lambda: guard.on_pre_optimizer_step(trainer, trainer.state, None, flag=flag),
        ),
        "statistics": lambda: trainer.add_step_statistics(embeddings, loss, flag, 2),
        "reading": reading,
        "fused_sgd": with_grads(hub_grads, trainer.optimizer.step),
        "default_sgd": with_grads(hand_grads, hand.optimizer.step),
    }
    samples = common.interleaved(parts, repeats=repeats, inner=3, warmup=1)
    ms = {k: 1e3 * statistics.median(v) for k, v in samples.items()}
    step = ms["step"]
    budget = trainer.cfg.monitor_budget
    costs = {
        "guard": ms["guard"],
        "statistics": ms["statistics"],
        # at most `budget` of the time: one reading per reading / (budget * step) steps
        "monitor (amortised)": min(ms["reading"], budget * step),
        "fused optimiser (saving)": ms["fused_sgd"] - ms["default_sgd"],
    }
    return {
        "ms": ms,
        "share_of_step": {k: v / step for k, v in costs.items()},
        "monitor_reading_every_steps": ms["reading"] / (budget * step),
        "net_share": sum(costs.values()) / step,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7, help="rounds of whole steps")
    parser.add_argument("--inner", type=int, default=10, help="steps per sample (the log cadence)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--components-only",
        action="store_true",
        help="time each default's own work only (no whole-step rounds: they take minutes)",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {}
    for m in args.methods:
        result[m] = {"components": component_costs(m, batch_size=args.batch_size, repeats=20)}
        if not args.components_only:
            result[m]["whole_steps"] = measure(
                m, batch_size=args.batch_size, repeats=args.repeats, inner=args.inner
            )
    for method, row in result.items():
        print(method, json.dumps(row, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        stored = {**result, "env": common.environment()}  # which machine: the CPU model, load
        Path(args.out).write_text(json.dumps(stored, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
