"""cut_init: exact division, scopes, records, parametrisations and the effect on features."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from hub_cutinit import create_ssl_model, cut_init, cut_targets, get_cut_factor

FAMILIES = [
    "resnet18",
    "vit_tiny_patch16_224",
    "convnext_atto",
    "efficientnet_b0",
    "mobilenetv3_small_050",
]


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    return params, buffers


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("c", [3.0, 9.0])
def test_every_parameter_divided_exactly_and_buffers_untouched(name: str, c: float) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0)
    params, buffers = _snapshot(model)
    assert cut_init(model, c=c) is model
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), params[n] / c, rtol=0, atol=0, msg=n)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert model.cut_init_c == c and get_cut_factor(model) == c


def test_c_one_changes_nothing_and_records_one() -> None:
    model = timm.create_model("resnet18", num_classes=0)
    params, _ = _snapshot(model)
    cut_init(model, c=1)
    assert model.cut_init_c == 1.0
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


def test_second_call_raises_unless_forced_then_record_multiplies() -> None:
    model = nn.Linear(3, 3)
    w = model.weight.detach().clone()
    cut_init(model, c=3)
    with pytest.raises(ValueError, match="already cut-initialised.*force=True"):
        cut_init(model, c=3)
    torch.testing.assert_close(model.weight.detach(), w / 3)  # the failed call changed nothing
    cut_init(model, c=2, force=True)
    assert model.cut_init_c == 6.0
    torch.testing.assert_close(model.weight.detach(), w / 6)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "3", None, True])
def test_bad_c_raises_and_names_the_fix(bad: object) -> None:
    model = nn.Linear(2, 2)
    w = model.weight.detach().clone()
    with pytest.raises(ValueError, match="finite number > 0"):
        cut_init(model, c=bad)  # type: ignore[arg-type]
    assert torch.equal(model.weight, w) and not hasattr(model, "cut_init_c")


def test_no_floating_parameters_and_empty_matches_raise() -> None:
    with pytest.raises(ValueError, match="no floating-point parameters"):
        cut_init(nn.ReLU(), c=3)
    with pytest.raises(ValueError, match="matched no parameter"):
        cut_init(nn.Linear(2, 2), c=3, include="nothing.*")
    with pytest.raises(ValueError, match="Unknown scope"):
        cut_init(nn.Linear(2, 2), c=3, scope="everything")
    with pytest.raises(ValueError, match="needs an SSL model"):
        cut_init(nn.Linear(2, 2), c=3, scope="heads")


def test_include_exclude_patterns() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 2))
    params, _ = _snapshot(model)
    cut_init(model, c=4, include="*.weight", exclude="1.*")
    assert torch.equal(model[0].weight, params["0.weight"] / 4)
    assert torch.equal(model[2].weight, params["2.weight"] / 4)
    assert torch.equal(model[0].bias, params["0.bias"])
    assert torch.equal(model[1].weight, params["1.weight"])


def test_weight_norm_parametrization_cuts_the_effective_weight() -> None:
    torch.manual_seed(0)
    layer = weight_norm(nn.Linear(5, 4))
    w = layer.weight.detach().clone()
    cut_init(layer, c=3)
    assert parametrize.is_parametrized(layer, "weight")
    torch.testing.assert_close(layer.weight.detach(), w / 3)


def test_dino_last_layer_magnitude_stays_fixed() -> None:
    model = create_ssl_model(
        "dino",
        "test_vit",
        c=1,
        head_out_dim=32,
        head_hidden_dim=16,
        head_bottleneck_dim=8,
        num_local_views=0,
    )
    last = model.head.last_layer
    g = last.parametrizations.weight.original0.detach().clone()
    w = last.weight.detach().clone()
    mlp_w = model.head.mlp[0].weight.detach().clone()
    cut_init(model, c=9, force=True)
    assert torch.equal(last.parametrizations.weight.original0, g)
    assert torch.allclose(g, torch.ones_like(g))
    torch.testing.assert_close(last.weight.detach(), w)  # prototypes keep unit norm
    torch.testing.assert_close(model.head.mlp[0].weight.detach(), mlp_w / 9)
    assert "head.last_layer.weight" not in cut_targets(model)


@torch.no_grad()
def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _tiny_eps(model: nn.Module) -> nn.Module:
    """Normalisation eps is not scaled by the cut; shrink it to see the cut alone."""
    for m in model.modules():
        if hasattr(m, "eps") and isinstance(m.eps, float):
            m.eps = 1e-12
    return model


@pytest.mark.parametrize("c", [3.0, 9.0])
@pytest.mark.parametrize("eps_free", [True, False])
def test_batchnorm_resnet_features_shrink_by_one_over_c(c: float, eps_free: bool) -> None:
    """In train mode BatchNorm renormalises, so the cut gives exactly 1/c after every BN
    (and the residual adds of 1/c-scaled terms): no compounding through the network. With
    the default eps (1e-5, not scaled by the cut) the ratio drifts: ~0.2 % at c = 3, ~13 % at
    c = 9, because inputs to BN then have variance ~1/c⁴."""
    torch.manual_seed(0)
    base = timm.create_model("resnet18", num_classes=0).train()
    cut = timm.create_model("resnet18", num_classes=0).train()
    cut.load_state_dict(base.state_dict())
    if eps_free:
        _tiny_eps(base), _tiny_eps(cut)
    cut_init(cut, c=c)
    x = torch.randn(8, 3, 64, 64)
    ratio = _features(cut, x).norm(dim=1) / _features(base, x).norm(dim=1)
    rtol = 1e-4 if eps_free else 0.2
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1 / c), rtol=rtol, atol=0)


@pytest.mark.parametrize("c", [3.0, 9.0])
def test_vit_features_shrink_but_attention_becomes_uniform(c: float) -> None:
    """A ViT has no BatchNorm: the final LayerNorm's affine makes the features 1/c of a
    *different* function, because the cut shrinks q and k by c² each (c from the LayerNorm
    affine, c from the qkv weights), so attention logits shrink by c⁴ and attention becomes
    almost uniform. Documented in the README; DINO's docstring suggests scope='heads'."""
    torch.manual_seed(0)
    base = _tiny_eps(timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64).eval())
    cut = _tiny_eps(timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64).eval())
    cut.load_state_dict(base.state_dict())
    cut_init(cut, c=c)
    x = torch.randn(4, 3, 64, 64)
    ratio = _features(cut, x).norm(dim=1) / _features(base, x).norm(dim=1)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1 / c), rtol=1e-3, atol=0)
    cos = torch.nn.functional.cosine_similarity(_features(cut, x), _features(base, x)).mean()
    assert cos < 0.99  # the direction changes: a different function, unlike the ResNet

    def attention_logit_std(model: nn.Module) -> float:
        block = model.blocks[0]
        tokens = model._pos_embed(model.patch_embed(x))
        qkv = block.attn.qkv(block.norm1(tokens))
        q, k, _ = qkv.chunk(3, dim=-1)
        return float((q @ k.transpose(-1, -2)).std())

    with torch.no_grad():
        shrink = attention_logit_std(base) / attention_logit_std(cut)
    assert math.isclose(shrink, c**4, rel_tol=0.15)


@pytest.mark.parametrize("c", [3.0, 9.0])
def test_resnet_direction_is_unchanged_by_the_cut(c: float) -> None:
    torch.manual_seed(0)
    base = _tiny_eps(timm.create_model("resnet18", num_classes=0).train())
    cut = _tiny_eps(timm.create_model("resnet18", num_classes=0).train())
    cut.load_state_dict(base.state_dict())
    cut_init(cut, c=c)
    x = torch.randn(8, 3, 64, 64)
    cos = torch.nn.functional.cosine_similarity(_features(cut, x), _features(base, x))
    assert cos.min() > 0.9999


def test_transformers_model_is_cut() -> None:
    from transformers import BertConfig, BertModel

    model = BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
        )
    )
    params, _ = _snapshot(model)
    cut_init(model, c=3)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), params[n] / 3, rtol=0, atol=0)


def test_ssl_model_scopes_and_teacher_copied_after_cut() -> None:
    torch.manual_seed(0)
    ref = create_ssl_model(
        "byol", "test_resnet", c=1, proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8
    )
    state = {k: v.clone() for k, v in ref.state_dict().items()}

    def fresh() -> nn.Module:
        m = create_ssl_model(
            "byol", "test_resnet", c=1, proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8
        )
        m.load_state_dict(state)
        del m.cut_init_c
        return m

    heads = cut_init(fresh(), c=3, scope="heads")
    assert torch.equal(
        heads.backbone.stem[0].weight
        if hasattr(heads.backbone, "stem")
        else next(heads.backbone.parameters()),
        next(ref.backbone.parameters()),
    )
    torch.testing.assert_close(heads.projector[0].weight, ref.projector[0].weight / 3)
    torch.testing.assert_close(heads.predictor[-1].weight, ref.predictor[-1].weight / 3)
    # the teacher is re-copied from the cut student
    torch.testing.assert_close(heads.teacher["projector"][0].weight, heads.projector[0].weight)

    last = cut_init(fresh(), c=3, scope="last")
    assert cut_targets(last, scope="last") == [
        "projector.6.weight",
        "predictor.3.weight",
        "predictor.3.bias",
    ]
    torch.testing.assert_close(last.projector[6].weight, ref.projector[6].weight / 3)
    torch.testing.assert_close(last.projector[0].weight, ref.projector[0].weight)

    full = cut_init(fresh(), c=9)
    assert full.hparams["c"] == 9.0
    for (n, t), (_, s) in zip(
        full.teacher["backbone"].named_parameters(), full.backbone.named_parameters(), strict=True
    ):
        assert torch.equal(t, s), n
