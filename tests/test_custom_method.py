"""A method defined outside the package trains with the recipe entry point, saves and loads back.

The method below knows everything the package asks of a method: its name and display name,
its defaults and presets, its views, its embeddings. Nothing in ``hub_cutinit`` names it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from hub_cutinit import ViewSpec, get_display_name, get_preset, register_method
from hub_cutinit.data import make_view_transform
from hub_cutinit.heads import MLPHead
from hub_cutinit.hub import load_ssl_model
from hub_cutinit.methods.base import COMMON_DEFAULTS, SSLModel, SSLOutput
from hub_cutinit.registry import list_methods, unregister_method
from hub_cutinit.training import main

NAME = "barlow-lite"


def cross_correlation_loss(z0: torch.Tensor, z1: torch.Tensor, off_diag: float) -> torch.Tensor:
    """Barlow Twins: push the batch cross-correlation of the two views towards the identity."""
    z0 = (z0 - z0.mean(0)) / (z0.std(0) + 1e-5)
    z1 = (z1 - z1.mean(0)) / (z1.std(0) + 1e-5)
    c = z0.T @ z1 / z0.shape[0]
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on + off_diag * off


class BarlowLite(SSLModel):
    """A Barlow-Twins-like method: one projector, a cross-correlation loss, two views."""

    name = NAME
    display_name = "Barlow-Lite"
    family = "redundancy-reduction"  # any lowercase identifier: the family is open
    defaults = {
        **COMMON_DEFAULTS,
        "c": 9.0,
        "weight_decay": 1e-4,
        "optimizer": "sgd",
        "base_lr": 0.05,
        "proj_hidden_dim": 256,
        "proj_dim": 256,
        "off_diagonal_weight": 5e-3,
    }
    presets = {
        "paper": {},
        "tiny": {"proj_hidden_dim": 16, "proj_dim": 8},
    }
    head_names = ("projector",)

    @classmethod
    def view_spec(cls, hparams: Mapping[str, Any] | None = None) -> ViewSpec:
        return ViewSpec(num_global=2, num_local=0, global_scale=(0.3, 1.0))

    def build_heads(self, num_features: int) -> None:
        hp = self.hparams
        self.projector = MLPHead([num_features, hp["proj_hidden_dim"], hp["proj_dim"]])

    def compute(
        self, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> SSLOutput:
        feats = self.backbone(torch.cat(global_views))
        z = self.projector(feats)
        z0, z1 = z.chunk(2)  # GradScale: the base class hooks the projector
        loss = cross_correlation_loss(z0, z1, float(self.hparams["off_diagonal_weight"]))
        return SSLOutput(loss, {"backbone": feats, "projection": z})


@pytest.fixture
def barlow_lite():
    register_method(BarlowLite)
    try:
        yield BarlowLite
    finally:
        unregister_method(NAME)
    assert NAME not in list_methods()


def test_the_package_asks_the_method(barlow_lite) -> None:
    assert get_display_name(NAME) == "Barlow-Lite"
    assert get_preset(NAME, "tiny") == {"proj_hidden_dim": 16, "proj_dim": 8}
    crop = make_view_transform(NAME, 32).global_transform.transforms[0]
    assert tuple(crop.scale) == (0.3, 1.0)


def test_a_registered_method_trains_saves_and_loads_back(barlow_lite, tmp_path: Path) -> None:
    out = tmp_path / NAME
    tiny = [f"{k}={v}" for k, v in get_preset(NAME, "tiny").items()]
    argv = [
        "--backbone", "test_resnet",
        "--dataset", "builtin",
        "--image-size", "32",
        "--batch-size", "8",
        "--max-steps", "2",
        "--eval-max-samples", "64",
        "--no-baselines",
        "--set", *tiny,
        "--output-dir", str(out),
    ]  # fmt: skip
    result = main(NAME, argv)
    assert result["steps"] == 2 and result["method"] == NAME
    block = json.loads((out / "config.json").read_text())["hub_cutinit"]
    assert block["method"] == NAME and block["c"] == 9.0
    assert "Barlow-Lite" in (out / "README.md").read_text()

    loaded = load_ssl_model(out)
    assert type(loaded) is BarlowLite and loaded.hparams["proj_dim"] == 8
    assert loaded.cut_factor == 9.0
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        emb = loaded.eval().embed(x)
    assert emb["projection"].shape == (4, 8) and torch.isfinite(emb["projection"]).all()
