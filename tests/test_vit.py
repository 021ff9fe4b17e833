"""timm ViTs in every method (issue 21, items 4 and 5).

Multi-crop methods build timm ViTs with ``dynamic_img_size=True`` (DINO's local crops are
smaller than its global ones), record it in ``backbone_kwargs`` and so in ``config.json``; timm
alone reloads the trained ViT with bit-identical features. :mod:`hub_cutinit.attention`
measures the attention entropy without changing the model's output, and ``hub-cutinit
inspect`` reports it for ViTs only.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from hub_cutinit import create_ssl_model, cut_init, get_preset
from hub_cutinit.attention import attention_entropy, attention_stats, uniform_entropy
from hub_cutinit.inspect_norms import format_table, inspect_norms
from hub_cutinit.training import TrainConfig, Trainer

#: vit_tiny_patch16_224 at 32 px with 4-px patches, narrowed to stay fast on one CPU thread.
SMALL_VIT: dict[str, Any] = {
    "img_size": 32,
    "patch_size": 4,
    "depth": 2,
    "embed_dim": 48,
    "num_heads": 3,
}


def test_multi_crop_method_builds_a_dynamic_size_vit() -> None:
    model = create_ssl_model(
        "dino", "vit_tiny_patch16_224", backbone_kwargs=SMALL_VIT, **get_preset("dino", "tiny")
    )
    assert model.backbone.dynamic_img_size is True
    assert model.hparams["backbone_kwargs"] == {**SMALL_VIT, "dynamic_img_size": True}
    views = [torch.randn(2, 3, 32, 32)] * 2 + [torch.randn(2, 3, 16, 16)] * 2
    assert torch.isfinite(model(views).loss)


def test_user_setting_and_two_view_methods_are_left_alone() -> None:
    kwargs = {**SMALL_VIT, "dynamic_img_size": False}
    dino = create_ssl_model(
        "dino", "vit_tiny_patch16_224", backbone_kwargs=kwargs, **get_preset("dino", "tiny")
    )
    assert dino.backbone.dynamic_img_size is False
    simclr = create_ssl_model("simclr", "vit_tiny_patch16_224", backbone_kwargs=SMALL_VIT)
    assert simclr.backbone.dynamic_img_size is False
    assert "dynamic_img_size" not in simclr.hparams["backbone_kwargs"]
    assert "dynamic_img_size" not in create_ssl_model("dino", "resnet18").hparams["backbone_kwargs"]


@pytest.fixture(scope="module")
def trained_dino_vit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """2 DINO steps (2 global 32-px + 2 local 16-px crops) of the small ViT, saved."""
    out = tmp_path_factory.mktemp("vit") / "dino-vit"
    cfg = TrainConfig(
        method="dino",
        backbone="vit_tiny_patch16_224",
        image_size=32,
        batch_size=8,
        max_steps=2,
        eval_split=None,
        baselines=False,
        seed=0,
        output_dir=str(out),
        overrides={**get_preset("dino", "tiny"), "backbone_kwargs": SMALL_VIT},
    )
    trainer = Trainer(cfg)
    trainer.train()
    return out, trainer.raw_model.backbone.eval()


def test_config_json_records_dynamic_img_size(trained_dino_vit) -> None:
    out, _ = trained_dino_vit
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["architecture"] == "vit_tiny_patch16_224"
    args = config["model_args"]
    assert args["dynamic_img_size"] is True
    assert args["patch_size"] == 4 and args["depth"] == 2 and args["img_size"] in (32, [32, 32])


def test_timm_alone_reloads_the_trained_vit_bit_identically(trained_dino_vit, tmp_path) -> None:
    """A fresh process that never imports hub_cutinit gets the same features, at 32 and 16 px."""
    out, backbone = trained_dino_vit
    xs = [torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(s)) for s in (32, 16)]
    with torch.no_grad():
        feats = [backbone(x) for x in xs]
    torch.save(xs, tmp_path / "x.pt")
    code = (
        "import sys, torch, timm\n"
        f"m = timm.create_model('local-dir:{out}', pretrained=True).eval()\n"
        "assert 'hub_cutinit' not in sys.modules\n"
        f"xs = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save([m(x) for x in xs], {str(tmp_path / 'f.pt')!r})\n"
        "print(m.num_features, m.dynamic_img_size)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["48", "True"]
    for got, want in zip(torch.load(tmp_path / "f.pt"), feats, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def _vit(**kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, **{**SMALL_VIT, **kwargs})


def test_entropy_matches_the_explicit_softmax_and_leaves_the_output_alone() -> None:
    """The hook's entropy equals the one of timm's own non-fused softmax (read at attn_drop)."""
    vit = _vit().eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = vit(x)
    entropy = attention_entropy(vit, x)
    explicit: list[float] = []
    for block in vit.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(
            lambda _m, inp, _o: explicit.append(float(-(inp[0] * inp[0].log()).sum(-1).mean()))
        )
    with torch.no_grad():
        after = vit(x)
    assert entropy == pytest.approx(explicit, abs=1e-5)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert uniform_entropy(vit, x) == pytest.approx(math.log(65))


def test_the_cut_shrinks_the_first_blocks_logits_by_c_to_the_fourth() -> None:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    vit = _vit().eval()
    base = attention_stats(vit, x)
    cut = attention_stats(cut_init(vit, c=3), x)
    assert base.logit_std[0] / cut.logit_std[0] == pytest.approx(81, rel=1e-3)
    assert all(h <= math.log(65) + 1e-6 for h in cut.entropy)
    assert all(hc >= hb for hc, hb in zip(cut.entropy, base.entropy, strict=True))


def test_inspect_reports_attention_entropy_for_vits_only() -> None:
    kwargs: dict[str, Any] = dict(batches=1, batch_size=4, image_size=32, cs=(1, 9))
    vit_report = inspect_norms("test_vit", **kwargs)  # 160-px ViT, resized to 32: 2x2 + cls
    assert vit_report["uniform_entropy"] == pytest.approx(math.log(5))
    entropies = [r["attention_entropy"] for r in vit_report["rows"]]
    assert [len(h) for h in entropies] == [6, 6]
    assert all(h9 >= h1 for h1, h9 in zip(*entropies, strict=True))
    assert "Attention entropy per block" in format_table(vit_report)
    cnn_report = inspect_norms("test_resnet", **kwargs)
    assert "uniform_entropy" not in cnn_report
    assert all("attention_entropy" not in r for r in cnn_report["rows"])
    assert "Attention" not in format_table(cnn_report)
