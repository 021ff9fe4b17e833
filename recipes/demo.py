"""The main job of `make demo`: BYOL with cut-initialisation on the built-in dataset, then load
the result back with timm alone and check that it gives the trained backbone's features.

    python recipes/demo.py                    # a few minutes on 2 CPU cores
    python recipes/demo.py --epochs 1 --c 1   # any recipe flag works

The backbone is the convergence study's: timm's ResNet-18 at 1/4 width with dilated last
stages (a 4×4 final map at 32 px; README "A 32-px backbone faithful to the paper").
"""

from __future__ import annotations

import sys

import timm
import torch

from hub_cutinit import get_preset
from hub_cutinit.hub import load_ssl_model
from hub_cutinit.training import main
from hub_cutinit.training.report import format_baselines

DEMO_FLAGS = [
    "--backbone",
    "resnet18",
    "--dataset",
    "builtin",
    "--image-size",
    "32",
    "--epochs",
    "5",
    "--batch-size",
    "128",
    "--output-dir",
    "outputs/demo",
    "--ema-schedule",
    "constant",  # the paper's BYOL
    # the "cpu" preset: smaller heads than the paper's 2048-d ones
    "--set",
    'backbone_kwargs={"channels": [16, 32, 64, 128], "output_stride": 8}',
    *(f"{key}={value}" for key, value in get_preset("byol", "cpu").items()),
]


def verdict(result: dict) -> str:
    """What the run's numbers mean, in one sentence (kNN against both baselines)."""
    knn, base = result.get("knn_accuracy"), result.get("baselines") or {}
    random, pixels = base.get("random_init_knn"), base.get("raw_pixels_knn")
    if knn is None or random is None or pixels is None:
        return "No kNN evaluation ran, so there is nothing to compare."
    gain = (knn - random) * 100
    than_pixels = "and beats" if knn > pixels else "but stays below"
    return (
        f"At this budget ({result['steps']} steps) self-supervised training moved the "
        f"backbone's kNN accuracy {gain:+.1f} points from its random initialisation, "
        f"{than_pixels} kNN on raw pixels ({pixels * 100:.1f} %)."
    )


def run(argv: list[str]) -> None:
    result = main("byol", [*DEMO_FLAGS, *argv])
    out = result["output_dir"]
    backbone = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    trained = load_ssl_model(out).backbone
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (backbone(images) - trained(images)).abs().max().item()
    print(
        f"timm.create_model('local-dir:{out}', pretrained=True): {type(backbone).__name__}, "
        f"{backbone.num_features} features, max |difference| to the trained backbone = {diff:.1e}"
    )
    if diff != 0.0:
        sys.exit("the timm reload does not reproduce the trained backbone")
    for line in outcome_lines(result):
        print(line)


def outcome_lines(result: dict) -> list[str]:
    """The run's outcome in sentences: kNN accuracy and norms, the baselines, the verdict."""
    norms = (result.get("final_norms") or {}).get("norms") or {}
    knn = result.get("knn_accuracy")
    means = ", ".join(f"‖{k}‖ {v['mean']:.3g}" for k, v in sorted(norms.items()))
    head = (
        f"kNN accuracy of the trained backbone: {knn * 100:.1f} %" if knn is not None else "Trained"
    )
    lines = [f"{head} (c = {result['c']:g}{', mean ' + means if means else ''})."]
    baselines = format_baselines(result.get("baselines") or {})
    return [*lines, *([baselines] if baselines else []), verdict(result)]


if __name__ == "__main__":
    run(sys.argv[1:])
