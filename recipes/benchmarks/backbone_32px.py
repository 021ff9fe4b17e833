"""Which timm ResNet-18 set-up gives the paper's 32-px backbone, and what does it cost on CPU?

The paper (PAPER §9) trains a ResNet-18 whose stem is one 3×3 stride-1 conv without max-pool,
so at 32 px its stages see 32→32→16→8→4 maps. timm's ``ResNet`` cannot build that stem: its
first conv always has stride 2 and a max-pool (or, with ``replace_stem_pool``, a stride-2 conv)
always follows, so the stem divides the input by 4 whatever the keyword arguments
(``stem_type="deep"`` only swaps the 7×7 conv for three 3×3 convs, the first still stride 2;
``stem_width`` only acts on a deep stem). What timm alone *can* load from ``config.json``:

- ``timm32``: plain ``resnet18`` at 32 px (the current set-up): maps 8→8→4→2→1;
- ``up128``: ``resnet18`` fed 128-px images (4× the 32-px size): the stages see 32→16→8→4,
  exactly the paper's maps, behind a 7×7/2 conv + max-pool on the upsampled image;
- ``up64``: ``resnet18`` at 64 px: 16→8→4→2;
- ``os8_32``: ``resnet18`` with ``output_stride=8`` at 32 px: stages 3-4 dilated instead of
  strided, maps 8→4→4→4 (a 4×4 final map but an 8×8 first stage);
- ``up128_w32`` / ``up128_w16``: ``up128`` with ``channels`` (32, 64, 128, 256) or
  (16, 32, 64, 128) (the stem stays 64 wide: timm fixes it unless the stem is deep);
- ``up112_w16``: the narrow net at 112 px = 4x Fashion-MNIST's native 28 px: maps 28→14→7→4,
  the paper's stem applied to the 28-px images themselves;
- ``os8_32_w16``: the narrow net with ``output_stride=8`` at 32 px.

For each: the final feature-map size, the parameter count, the random-init kNN accuracy on the
built-in Fashion-MNIST data (a plain timm backbone, seed 0, no cut; bank = the full built-in
train split, 10,000 images; queries = the 2,000-image test split; weighted kNN with k = 200,
T = 0.1 on l2-normalised features, as ``training/loop.py``'s ``evaluate_knn``), and the CPU
images/s of one BYOL training step (forward + backward + SGD + EMA + norm statistics, the step
of ``train_step.HubRunner``; batch 128, 2 views, cpu heads 1024/256/256, c = 9). The timings
are interleaved (rotated order, medians, ratios paired per round to ``timm32``).
``--threads`` defaults to 1 here, leaving the second core of a 2-core machine to others.

Run::

    python recipes/benchmarks/backbone_32px.py                       # about 12 min on 1 thread
    python recipes/benchmarks/backbone_32px.py --quick               # smoke run, seconds
    python recipes/benchmarks/backbone_32px.py --candidates timm32 up128_w32
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

try:
    from . import common, train_step
except ImportError:  # run as a file: python recipes/benchmarks/backbone_32px.py
    import common
    import train_step

NAME = "backbone_32px"
RESULTS = Path(__file__).resolve().parents[1] / "results" / NAME / f"{NAME}.json"

#: name -> (image size, timm keyword arguments for ``resnet18``)
CANDIDATES: dict[str, tuple[int, dict[str, Any]]] = {
    "timm32": (32, {}),
    "up128": (128, {}),
    "up64": (64, {}),
    "os8_32": (32, {"output_stride": 8}),
    "up128_w32": (128, {"channels": [32, 64, 128, 256]}),
    "up128_w16": (128, {"channels": [16, 32, 64, 128]}),
    "up112_w16": (112, {"channels": [16, 32, 64, 128]}),
    "os8_32_w16": (32, {"output_stride": 8, "channels": [16, 32, 64, 128]}),
}
#: BYOL heads of the cpu preset used for the throughput step
HEADS = {"proj_hidden_dim": 1024, "proj_dim": 256, "pred_hidden_dim": 256}


def build_backbone(kwargs: dict[str, Any], *, seed: int = 0) -> torch.nn.Module:
    """A random-init timm ``resnet18`` feature extractor with ``kwargs`` (seeded)."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model("resnet18", num_classes=0, **kwargs)


def stage_maps(backbone: torch.nn.Module, image_size: int) -> list[int]:
    """Spatial size after the stem and after each of ``layer1``..``layer4``."""
    sizes: list[int] = []
    hooks = [
        getattr(backbone, name).register_forward_hook(
            lambda _m, _i, out: sizes.append(int(out.shape[-1]))
        )
        for name in ("maxpool", "layer1", "layer2", "layer3", "layer4")
    ]
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def random_init_knn(
    backbone: torch.nn.Module, image_size: int, *, max_samples: int | None, k: int = 200
) -> dict[str, Any]:
    """Weighted-kNN accuracy of ``backbone`` on the built-in data, as ``evaluate_knn`` does."""
    from hub_cutinit.data import build_eval_loaders
    from hub_cutinit.evaluation import extract_features, knn_accuracy

    bank, test = build_eval_loaders(
        "builtin", image_size=image_size, max_samples=max_samples, batch_size=256
    )
    start = time.perf_counter()
    bank_x, bank_y = extract_features(backbone, bank)
    test_x, test_y = extract_features(backbone, test)
    acc = knn_accuracy(bank_x, bank_y, test_x, test_y, k=min(k, len(bank_y)), temperature=0.1)
    return {
        "knn_accuracy": acc,
        "bank": int(bank_y.numel()),
        "test": int(test_y.numel()),
        "seconds": time.perf_counter() - start,
    }


def make_runner(
    kwargs: dict[str, Any], image_size: int, batch_size: int, accelerator: Any
) -> train_step.HubRunner:
    """hub_cutinit's BYOL training step (c = 9, cpu heads) on a fixed random batch."""
    torch.manual_seed(0)
    views = train_step.make_views(batch_size, image_size)
    return train_step.HubRunner(
        "byol",
        views,
        accelerator=accelerator,
        overrides={**HEADS, "backbone_kwargs": dict(kwargs)},
    )


def measure(
    names: Sequence[str],
    *,
    batch_size: int,
    repeats: int,
    max_samples: int | None,
    budget_s: float,
) -> dict[str, Any]:
    """Static facts and random-init kNN per candidate, then the interleaved step timing."""
    from accelerate import Accelerator

    per: dict[str, dict[str, Any]] = {}
    for name in names:
        size, kwargs = CANDIDATES[name]
        backbone = build_backbone(kwargs)
        maps = stage_maps(backbone, size)
        per[name] = {
            "image_size": size,
            "backbone_kwargs": kwargs,
            "stem_and_stage_maps": maps,
            "final_map": maps[-1],
            "num_features": int(backbone.num_features),
            "params": sum(p.numel() for p in backbone.parameters()),
            "random_init_knn": random_init_knn(backbone, size, max_samples=max_samples),
        }
        print(f"{name}: {per[name]}", flush=True)
    accelerator = Accelerator(cpu=True)
    runners = {
        n: make_runner(CANDIDATES[n][1], CANDIDATES[n][0], batch_size, accelerator) for n in names
    }
    samples = common.interleaved(
        {n: r.step for n, r in runners.items()}, repeats=repeats, warmup=1, budget_s=budget_s
    )
    base = names[0]
    for name in names:
        images = 2 * batch_size  # two views per image go through the student
        per[name]["step_s"] = common.summarize(samples[name])
        per[name]["images_per_s"] = batch_size / per[name]["step_s"]["median"]
        per[name]["backbone_images_per_s"] = images / per[name]["step_s"]["median"]
        # paired per-round ratio of throughputs = base time / candidate time
        per[name]["throughput_ratio_to_" + base] = common.ratio(samples[base], samples[name])
    return per


def summary_rows(per: dict[str, dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """One table row per candidate metric."""
    rows = []
    for name, r in per.items():
        knn = r["random_init_knn"]["knn_accuracy"]
        speed = r["throughput_ratio_to_" + base]["paired_median"]
        rows += [
            common.row(NAME, f"{name} final map", f"{r['final_map']}x{r['final_map']}"),
            common.row(NAME, f"{name} random-init kNN", 100 * knn, unit="%"),
            common.row(NAME, f"{name} BYOL images/s", r["images_per_s"], unit="img/s"),
            common.row(NAME, f"{name} speed vs {base}", speed, unit="x"),
        ]
    return rows


def markdown_table(per: dict[str, dict[str, Any]], base: str) -> str:
    """The README table of the result."""
    lines = [
        "| candidate | input | timm kwargs | stem→stage maps | params | random-init kNN | "
        f"BYOL images/s | speed vs {base} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in per.items():
        lines.append(
            f"| {name} | {r['image_size']} px | `{r['backbone_kwargs'] or '{}'}` | "
            f"{'→'.join(map(str, r['stem_and_stage_maps']))} | {r['params'] / 1e6:.2f} M | "
            f"{100 * r['random_init_knn']['knn_accuracy']:.1f} % | {r['images_per_s']:.1f} | "
            f"{r['throughput_ratio_to_' + base]['paired_median']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.base_parser(NAME, __doc__.split("\n\n")[0])
    parser.set_defaults(threads=1, out=RESULTS)
    parser.add_argument(
        "--candidates",
        nargs="+",
        choices=list(CANDIDATES),
        default=list(CANDIDATES),
        help="the first is the ratio baseline",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="stop the timing rounds after this long (at least 3 rounds)",
    )
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)
    if args.quick:
        batch, repeats, max_samples = 8, 2, 256
    else:
        batch, repeats, max_samples = args.batch_size, args.repeats or 7, None
    per = measure(
        args.candidates,
        batch_size=batch,
        repeats=repeats,
        max_samples=max_samples,
        budget_s=args.budget_s,
    )
    base = args.candidates[0]
    rows = summary_rows(per, base)
    print(common.format_table(rows))
    print(markdown_table(per, base))
    settings = {
        "quick": args.quick,
        "threads": args.threads,
        "batch_size": batch,
        "repeats": repeats,
        "eval_max_samples": max_samples,
        "heads": HEADS,
        "method": "byol",
        "c": 9.0,
        "knn": {"k": 200, "temperature": 0.1},
    }
    common.save_result(NAME, {"settings": settings, "candidates": per, "summary": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
