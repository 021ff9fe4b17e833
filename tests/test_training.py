"""Every recipe trains a few steps, saves, and its output loads with timm; multi-process launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from hub_cutinit.hub import load_ssl_model
from hub_cutinit.training import TrainConfig, latest_checkpoint, main, parse_args

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--backbone",
    "test_resnet",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--max-steps",
    "2",
    "--eval-max-samples",
    "64",
    "--knn-k",
    "10",
    "--no-baselines",
]
METHOD_FLAGS = {
    "simclr": [],
    "moco": ["--set", "queue_size=64", "proj_hidden_dim=32"],
    "byol": ["--set", "proj_hidden_dim=32", "proj_dim=16", "pred_hidden_dim=8"],
    "simsiam": ["--set", "proj_hidden_dim=32", "proj_dim=16", "pred_hidden_dim=8"],
    "dino": [
        "--set",
        "head_out_dim=64",
        "head_hidden_dim=32",
        "head_bottleneck_dim=16",
        "num_local_views=2",
    ],
}


@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_recipe_trains_saves_and_timm_loads_the_backbone(method: str, tmp_path: Path) -> None:
    out = tmp_path / method
    result = main(method, [*TINY, *METHOD_FLAGS[method], "--output-dir", str(out)])
    assert result["steps"] == 2 and result["method"] == method
    assert 0.0 <= result["knn_accuracy"] <= 1.0
    assert set(result["final_norms"]["norms"]) >= {"backbone", "projection"}
    assert latest_checkpoint(out).name == "step_00000002"

    config = json.loads((out / "config.json").read_text())
    assert (
        config["hub_cutinit"]["c"] == result["c"] == (3.0 if method in ("simclr", "moco") else 9.0)
    )
    backbone = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    ssl_model = load_ssl_model(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), ssl_model.backbone(x), rtol=0, atol=0)
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # no pickle in the model


def test_flags_parse_into_a_config() -> None:
    cfg = parse_args(
        "byol", ["--c", "1", "--weight-decay", "0", "--set", "proj_dim=64", "momentum=0.9"]
    )
    assert (
        cfg.c == 1.0
        and cfg.weight_decay == 0.0
        and cfg.overrides == {"proj_dim": 64, "momentum": 0.9}
    )
    with pytest.raises(ValueError, match="Unknown --set key"):
        TrainConfig(method="byol", overrides={"temprature": 1})
    with pytest.raises(ValueError, match="batch-size"):
        TrainConfig(method="byol", batch_size=1)


def test_resume_without_checkpoint_starts_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "fresh"
    main(
        "simclr",
        [*TINY, "--max-steps", "1", "--eval-split", "none", "--resume", "--output-dir", str(out)],
    )
    assert "no complete checkpoint" in capsys.readouterr().out


def test_accelerate_launch_two_processes(tmp_path: Path) -> None:
    """`accelerate launch --multi_gpu --num_processes 2` runs two gloo processes on CPU."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "recipes" / "simclr.py"),
        *TINY,
        "--max-steps",
        "3",
        "--checkpoint-every",
        "2",
        "--output-dir",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 steps" in proc.stdout and "2 process(es)" in proc.stdout
    assert proc.stdout.count("== simclr on builtin") == 1  # the summary is printed once
    ckpt = latest_checkpoint(out)
    assert sorted(p.name for p in ckpt.glob("loader_rank*.pt")) == [
        "loader_rank0.pt",
        "loader_rank1.pt",
    ]
    assert (
        json.loads((out / "config.json").read_text())["hub_cutinit"]["training"]["num_processes"]
        == 2
    )
