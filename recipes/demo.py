"""The main job of `make demo`: BYOL with cut-initialisation on the built-in dataset, then load
the result back with timm alone and check that it gives the trained backbone's features.

    python recipes/demo.py                    # ~5 minutes on 2 CPU cores
    python recipes/demo.py --epochs 1 --c 1   # any recipe flag works
"""

from __future__ import annotations

import sys

import timm
import torch

from hub_cutinit import get_preset
from hub_cutinit.hub import load_ssl_model
from hub_cutinit.training import main

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
    # the "cpu" preset: smaller heads than the paper's 2048-d ones, so that 5 epochs fit in
    # ~5 CPU minutes
    "--set",
    *(f"{key}={value}" for key, value in get_preset("byol", "cpu").items()),
]


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


if __name__ == "__main__":
    run(sys.argv[1:])
