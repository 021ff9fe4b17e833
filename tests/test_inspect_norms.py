"""``hub-cutinit inspect``: embedding norms of any model before / after cut_init, measured."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import HUB_USER

from hub_cutinit import create_ssl_model
from hub_cutinit.cli import main as cli_main
from hub_cutinit.hub import load_ssl_model, push_to_hub, save_pretrained
from hub_cutinit.inspect_norms import (
    _images,
    _training_norm_mode,
    format_table,
    inspect_norms,
    load_feature_model,
)

SMALL = {"batches": 2, "batch_size": 4}


def test_resnet_features_scale_by_1_over_c_and_steps_by_c_squared() -> None:
    """Train-mode BatchNorm: each BN output is (γ/c)·x̂ + β/c, so a ResNet's features are the
    uncut ones divided by c (up to BN's eps): same direction, gradient ×c, step ×c²."""
    report = inspect_norms("test_resnet", image_size=32, cs=(1, 3), **SMALL)
    one, three = report["rows"]
    assert report["num_images"] == 8 and report["kind"] == "timm"
    assert math.isclose(three["grad_x"], 3.0, rel_tol=0.01)
    assert math.isclose(three["step_x"], 9.0, rel_tol=0.02)
    assert three["cos"] > 0.999  # only the scale changed
    assert math.isclose(three["mean"] * three["grad_x"], one["mean"], rel_tol=1e-9)


def test_vit_features_follow_the_final_layernorm_closed_form() -> None:
    """test_vit pools the class token after a LayerNorm with γ = 1, β = 0 at init: every
    embedding has norm √D·√(var/(var + eps)) = √D (to 1e-3) at c = 1. The cut divides γ by c
    and shrinks the residual stream, so at c > 1 the norm is √D/c times that eps factor, which
    can only lower it: √D/c is an upper bound (reached to 1% at c = 3, 11% at c = 9)."""
    model, _ = load_feature_model("test_vit")
    dim = model.model.num_features
    report = inspect_norms("test_vit", cs=(1, 3, 9), batches=1, batch_size=4)
    one = report["rows"][0]
    assert math.isclose(one["mean"], math.sqrt(dim), rel_tol=1e-3)
    assert math.isclose(one["max"], one["min"], rel_tol=1e-3)
    for row in report["rows"][1:]:
        bound = math.sqrt(dim) / row["c"]
        assert 0.8 * bound < row["mean"] <= bound * (1 + 1e-5)
        assert row["cos"] > 0.0  # a different function: not a pure rescaling (see test_cut)
    assert report["rows"][2]["step_x"] >= 81.0 * (1 - 1e-4)


def test_cli_prints_the_table_and_writes_png_and_json(tmp_path: Path, capsys) -> None:
    png = tmp_path / "plots" / "norms.png"
    args = ["inspect", "test_resnet", "--batches", "1", "--batch-size", "4", "--image-size", "32"]
    assert cli_main([*args, "--out", str(png)]) == 0
    table = capsys.readouterr().out
    assert "gradient ×" in table and "step ×" in table and "‖z‖" in table
    assert "c=3:" in table and "c=9:" in table and "lr/‖z‖²" in table
    assert png.read_bytes()[:4] == b"\x89PNG"

    assert cli_main([*args, "--c", "1", "3", "--out", str(tmp_path / "b.png"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["c"] for r in report["rows"]] == [1.0, 3.0]
    assert report["png"] == str(tmp_path / "b.png") and Path(report["png"]).is_file()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_ssl_model("simclr", "test_resnet", proj_hidden_dim=32, proj_dim=16)
    return save_pretrained(model, tmp_path / "simclr")


def test_a_hub_cutinit_save_is_inspected_with_its_own_weights(saved: Path) -> None:
    report = inspect_norms(str(saved), image_size=32, cs=(1, 3), **SMALL)
    assert report["kind"] == "timm"
    backbone = _training_norm_mode(load_ssl_model(saved).backbone)
    _, info = load_feature_model(str(saved))  # the save's own mean / std (config.json)
    with torch.no_grad():
        norms = torch.cat(
            [backbone(x).norm(dim=1) for x in _images("builtin", "test", 32, 2, 4, info)]
        )
    assert math.isclose(report["rows"][0]["mean"], float(norms.mean()), rel_tol=1e-5)
    # The save is already cut (SimCLR's default c = 3): pre-BN variances are c² smaller, BN's eps
    # starts to count, and a further cut by 3 shrinks the features by at least (here: more than) 3.
    assert report["rows"][1]["grad_x"] >= 3.0 * (1 - 1e-3)
    assert "pooled features" in format_table(report)


def test_an_hf_hub_id_is_inspected_through_the_hub(fake_hub, saved: Path) -> None:
    repo = f"{HUB_USER}/inspect-me"
    push_to_hub(saved, repo, base_delay=0.01)
    remote = inspect_norms(f"hf-hub:{repo}", image_size=32, cs=(1, 3), **SMALL)
    local = inspect_norms(str(saved), image_size=32, cs=(1, 3), **SMALL)
    assert remote["rows"] == local["rows"]
    assert any(r.path.endswith("/model.safetensors") for r in fake_hub.requests)


def test_a_transformers_vit_folder_uses_the_pooled_output(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(tmp_path / "vit")
    model, info = load_feature_model(str(tmp_path / "vit"))
    assert info["kind"] == "transformers" and info["input_size"] == 32
    report = inspect_norms(str(tmp_path / "vit"), cs=(1, 3, 9), **SMALL)
    means = [r["mean"] for r in report["rows"]]
    assert report["image_size"] == 32 and means[0] > means[1] > means[2] > 0
    # pooler = tanh(W h + b) on the final-LayerNorm class token: both cut, so ≈ 1/c² while small
    assert report["rows"][1]["grad_x"] > 3.0
