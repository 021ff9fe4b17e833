"""The paper's 32-px ResNet-18 maps with timm alone: ``resnet18`` at 4x the image size, narrowed
with ``backbone_kwargs``, saved by hub_cutinit and rebuilt by timm from ``config.json``.

See ``recipes/benchmarks/backbone_32px.py`` and ``recipes/results/backbone_32px/README.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from hub_cutinit import create_ssl_model
from hub_cutinit.hub import save_pretrained
from hub_cutinit.set_flag import parse_set

NARROW = {"channels": [16, 32, 64, 128]}
SET_ITEM = 'backbone_kwargs={"channels":[16,32,64,128]}'


def _stage_sizes(model: torch.nn.Module, image_size: int) -> list[int]:
    sizes: list[int] = []
    hooks = [
        getattr(model, name).register_forward_hook(lambda _m, _i, o: sizes.append(o.shape[-1]))
        for name in ("layer1", "layer2", "layer3", "layer4")
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return sizes


def test_resnet18_at_4x_the_image_size_has_the_cifar_stem_maps() -> None:
    """timm's 7x7/2 stem + max-pool at 128 px leaves the stages the paper's 32/16/8/4 maps."""
    net = timm.create_model("resnet18", num_classes=0, **NARROW)
    assert _stage_sizes(net, 128) == [32, 16, 8, 4]
    assert _stage_sizes(net, 32) == [8, 4, 2, 1]  # the plain 32-px set-up: a 1x1 final map
    assert net.num_features == 128


def test_set_item_gives_backbone_kwargs() -> None:
    """The recipes' --set string of the README selects the narrow backbone."""
    assert parse_set([SET_ITEM], method="byol") == {"backbone_kwargs": NARROW}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = create_ssl_model(
        "byol",
        "resnet18",
        c=9,
        backbone_kwargs=NARROW,
        proj_hidden_dim=32,
        proj_dim=16,
        pred_hidden_dim=16,
    ).eval()
    out = save_pretrained(
        model,
        tmp_path_factory.mktemp("bb32") / "byol-r18-narrow",
        training_info={"data_config": {"input_size": [3, 128, 128], "crop_pct": 1.0}},
    )
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = model.backbone(x)
    return out, x, feats


def test_config_json_carries_the_kwargs_and_input_size(saved) -> None:
    out, _, _ = saved
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["architecture"] == "resnet18"
    assert config["model_args"]["channels"] == NARROW["channels"]
    assert "num_classes" not in config["model_args"]
    assert config["pretrained_cfg"]["input_size"] == [3, 128, 128]


def test_timm_alone_rebuilds_the_narrow_backbone(saved, tmp_path: Path) -> None:
    """A fresh process that never imports hub_cutinit gets the same features from timm."""
    out, x, feats = saved
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, timm\n"
        f"m = timm.create_model('local-dir:{out}', pretrained=True).eval()\n"
        "assert 'hub_cutinit' not in sys.modules\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(x), {str(tmp_path / 'f.pt')!r})\n"
        "print(m.num_features, tuple(m.pretrained_cfg['input_size']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "128"
    assert "(3, 128, 128)" in result.stdout
    torch.testing.assert_close(torch.load(tmp_path / "f.pt"), feats, rtol=0, atol=0)
