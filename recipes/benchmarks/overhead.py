"""What hub_cutinit's trainer adds around the model: norm tracking, framework, kNN monitor.

Three measurements, each interleaved with the training steps it is compared to:

1. **Norm tracking** (target ≤ 2 % of the step): the per-step work of ``training/loop.py`` —
   ``NormTracker.update`` of the backbone / projection / prediction embeddings plus the stacked
   mean norms reduced over processes — timed on its own (many calls, median) and divided by
   the median step time of the same run (resnet18, 32 px, batch 64). An A/B of whole steps
   with and without tracking is reported too; its noise is larger than the effect.
2. **Framework overhead per step**: the same hub-vs-hand comparison as ``train_step.py`` on a
   tiny model (``test_resnet``, small heads) whose compute is close to zero, so the difference
   is what Accelerate, the loop and the norm statistics cost per step, in milliseconds.
3. **kNN monitor**: ``extract_features`` of the built-in train (10k) and test (2k) images at
   32 px plus ``knn_accuracy(k=200)``, relative to one epoch of training steps (10k images /
   batch 64 = 156 steps at the median step time; data loading not included).

Run::

    python -m recipes.benchmarks.overhead
    python -m recipes.benchmarks.overhead --quick
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from hub_cutinit import get_preset

try:
    from . import common
    from . import train_step as ts
except ImportError:  # run as a file: python recipes/benchmarks/overhead.py
    import common
    import train_step as ts

NAME = "overhead"
TINY_OVERRIDES = {method: get_preset(method, "tiny") for method in ("byol", "simclr")}


def norm_tracking(
    accelerator: Any,
    *,
    method: str,
    batch_size: int,
    image_size: int,
    repeats: int,
    calls: int,
    budget_s: float | None,
) -> dict[str, Any]:
    """Cost of the per-step norm statistics against the step time (resnet18)."""
    views = ts.make_views(batch_size, image_size, device=accelerator.device)
    torch.manual_seed(0)
    tracked = ts.HubRunner(method, views, accelerator=accelerator, track_norms=True)
    torch.manual_seed(0)
    untracked = ts.HubRunner(method, views, accelerator=accelerator, track_norms=False)
    tracked.step()
    embeddings = tracked.last_embeddings
    loss = torch.tensor(1.0, device=accelerator.device)

    def norms_only() -> None:
        for _ in range(calls):
            means = tracked.norm_statistics(embeddings, loss)
            float(means[-1])  # the trainer reads the values every step

    samples = common.interleaved(
        {"step_tracked": tracked.step, "step_untracked": untracked.step, "norms": norms_only},
        repeats=repeats,
        warmup=1,
        budget_s=budget_s,
    )
    norm_s = [s / calls for s in samples.pop("norms")]
    step = common.summarize(samples["step_tracked"])["median"]
    norm = common.summarize(norm_s)["median"]
    ab = common.ratio(samples["step_tracked"], samples["step_untracked"])
    return {
        "method": method,
        "embedding_shapes": {k: list(v.shape) for k, v in embeddings.items()},
        "norm_stats_s": common.summarize(norm_s),
        "step_s": {k: common.summarize(v) for k, v in samples.items()},
        "share_of_step": norm / step,
        "ab_step_time_ratio_tracked_vs_untracked": ab,
        "rounds": len(samples["step_tracked"]),
    }


def framework_overhead(
    accelerator: Any,
    *,
    method: str,
    batch_size: int,
    repeats: int,
    budget_s: float | None,
) -> dict[str, Any]:
    """Per-step time of hub minus hand on a near-zero-compute model, in seconds."""
    runners = ts.build_runners(
        method,
        accelerator=accelerator,
        batch_size=batch_size,
        image_size=32,
        backbone="test_resnet",
        implementations=("hub", "hand"),
        overrides=TINY_OVERRIDES[method],
    )
    samples = ts.interleaved_steps(runners, repeats=repeats, inner=5, warmup=3, budget_s=budget_s)
    diffs = [a - b for a, b in zip(samples["hub"], samples["hand"], strict=True)]
    return {
        "method": method,
        "backbone": "test_resnet",
        "batch_size": batch_size,
        "step_s": {k: common.summarize(v) for k, v in samples.items()},
        "overhead_s": common.summarize(diffs),
        "rounds": len(diffs),
    }


def knn_monitor(
    accelerator: Any,
    *,
    batch_size: int,
    image_size: int,
    max_samples: int | None,
    repeats: int,
    train_steps: int,
    k: int,
) -> dict[str, Any]:
    """Time of one kNN evaluation (as the trainer runs it) against one epoch of steps."""
    from hub_cutinit.data import build_eval_loaders
    from hub_cutinit.evaluation import extract_features, knn_accuracy

    views = ts.make_views(batch_size, image_size, device=accelerator.device)
    runner = ts.HubRunner("byol", views, accelerator=accelerator)
    backbone = runner.raw.backbone
    bank_loader, test_loader = build_eval_loaders(
        "builtin", image_size=image_size, max_samples=max_samples, batch_size=max(64, batch_size)
    )
    parts: dict[str, list[float]] = {"extract_s": [], "knn_s": [], "total_s": []}
    counts: dict[str, int] = {}
    accuracy = None

    def evaluate() -> None:
        nonlocal accuracy
        start = time.perf_counter()
        train_feats, train_labels = extract_features(backbone, bank_loader, accelerator.device)
        test_feats, test_labels = extract_features(backbone, test_loader, accelerator.device)
        mid = time.perf_counter()
        accuracy = knn_accuracy(train_feats, train_labels, test_feats, test_labels, k=k)
        end = time.perf_counter()
        parts["extract_s"].append(mid - start)
        parts["knn_s"].append(end - mid)
        counts.update(bank=len(train_labels), test=len(test_labels))

    def train_block() -> None:
        for _ in range(train_steps):
            runner.step()

    runner.step()  # warm-up
    samples = common.interleaved(
        {"train_block": train_block, "knn_eval": evaluate}, repeats=repeats, warmup=0
    )
    parts["total_s"] = samples["knn_eval"]
    step_s = common.summarize(samples["train_block"])["median"] / train_steps
    from hub_cutinit.data import num_examples, resolve_dataset

    train_examples = num_examples(resolve_dataset("builtin", "train")[0]) or 10_000
    steps_per_epoch = train_examples // batch_size
    epoch_s = steps_per_epoch * step_s
    total = common.summarize(parts["total_s"])["median"]
    return {
        "bank_images": counts.get("bank"),
        "test_images": counts.get("test"),
        "k": k,
        "knn_accuracy_random_init": accuracy,
        "eval_s": {name: common.summarize(v) for name, v in parts.items()},
        "train_step_s": step_s,
        "steps_per_epoch": steps_per_epoch,
        "epoch_train_s": epoch_s,
        "knn_share_of_epoch": total / epoch_s,
        "rounds": len(parts["total_s"]),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the table, write ``results/overhead.json``; return the result."""
    parser = common.base_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["byol", "simclr"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--knn-max-samples", type=int, default=None, help="images per split (default: all)"
    )
    parser.add_argument("--knn-repeats", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=40.0, help="per timing loop")
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)
    if args.quick:
        args.batch_size = min(args.batch_size, 16)
        args.knn_max_samples = args.knn_max_samples or 128
    repeats = args.repeats or (2 if args.quick else 9)
    knn_repeats = args.knn_repeats or (1 if args.quick else 2)

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    result: dict[str, Any] = {
        "config": {
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "threads": args.threads,
            "repeats": repeats,
            "knn_repeats": knn_repeats,
            "knn_max_samples": args.knn_max_samples,
            "quick": args.quick,
        },
        "norm_tracking": {},
        "framework": {},
    }
    rows = []
    for method in args.methods:
        res = norm_tracking(
            accelerator,
            method=method,
            batch_size=args.batch_size,
            image_size=args.image_size,
            repeats=repeats,
            calls=5 if args.quick else 20,
            budget_s=args.budget_s,
        )
        result["norm_tracking"][method] = res
        share = res["share_of_step"] * 100
        rows.append(
            common.row(
                NAME,
                f"{method} norm tracking / step",
                share,
                unit="%",
                target="<= 2",
                ok=share <= 2,
            )
        )
        rows.append(
            common.row(
                NAME,
                f"{method} norm tracking per step",
                res["norm_stats_s"]["median"] * 1e3,
                unit="ms",
            )
        )
        fw = framework_overhead(
            accelerator,
            method=method,
            batch_size=args.batch_size,
            repeats=repeats,
            budget_s=args.budget_s,
        )
        result["framework"][method] = fw
        over_ms = fw["overhead_s"]["median"] * 1e3
        step_ms = res["step_s"]["step_tracked"]["median"] * 1e3
        rows.append(
            common.row(NAME, f"{method} hub-hand per step (tiny model)", over_ms, unit="ms")
        )
        rows.append(
            common.row(
                NAME,
                f"{method} framework overhead / resnet18 step",
                100 * over_ms / step_ms,
                unit="%",
                target="<= 5",
                ok=over_ms / step_ms <= 0.05,
            )
        )
    knn = knn_monitor(
        accelerator,
        batch_size=args.batch_size,
        image_size=args.image_size,
        max_samples=args.knn_max_samples,
        repeats=knn_repeats,
        train_steps=2 if args.quick else 10,
        k=200,
    )
    result["knn"] = knn
    rows.append(
        common.row(
            NAME,
            f"kNN eval ({knn['bank_images']}+{knn['test_images']} images)",
            knn["eval_s"]["total_s"]["median"],
            unit="s",
        )
    )
    rows.append(common.row(NAME, "one epoch of train steps", knn["epoch_train_s"], unit="s"))
    rows.append(common.row(NAME, "kNN eval / epoch", knn["knn_share_of_epoch"], unit="x"))
    result["summary"] = rows
    print(common.format_table(rows))
    return common.save_result(NAME, result, args.out)


if __name__ == "__main__":
    main()
