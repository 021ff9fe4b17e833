"""Registry, SSL models and their one-step API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hub_cutinit import create_ssl_model, get_method_defaults, list_methods, register_method
from hub_cutinit.methods.base import cosine_momentum
from hub_cutinit.methods.simclr import SimCLR
from hub_cutinit.registry import unregister_method

SMALL = {
    "simclr": {},
    "moco": {"queue_size": 32, "proj_hidden_dim": 32},
    "byol": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 8},
    "simsiam": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 8},
    "dino": {
        "head_out_dim": 32,
        "head_hidden_dim": 16,
        "head_bottleneck_dim": 8,
        "num_local_views": 2,
    },
}


def views_for(method: str, batch: int = 4, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(batch, 3, size, size, generator=g) for _ in range(2)]
    if method == "dino":
        views += [torch.randn(batch, 3, size // 2, size // 2, generator=g) for _ in range(2)]
    return views


def test_registry_lists_methods_with_paper_defaults() -> None:
    assert list_methods() == ["byol", "dino", "moco", "simclr", "simsiam"]
    for name in list_methods():
        d = get_method_defaults(name)
        assert d["c"] == (3.0 if d["family"] == "contrastive" else 9.0)
    assert get_method_defaults("simclr")["weight_decay"] == 1e-6
    assert get_method_defaults("byol")["weight_decay"] == 5e-4
    assert get_method_defaults("byol")["momentum"] == 0.99
    assert get_method_defaults("simclr")["temperature"] == 0.5
    d = get_method_defaults("simclr")
    d["c"] = 100
    assert get_method_defaults("simclr")["c"] == 3.0  # a copy


@pytest.mark.parametrize("method", list(SMALL))
def test_one_step_api(method: str) -> None:
    torch.manual_seed(0)
    model = create_ssl_model(method, "resnet18", **SMALL[method])
    assert model.cut_init_c == get_method_defaults(method)["c"] == model.hparams["c"]
    out = model(views_for(method))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    n_views = 4 if method == "dino" else 2
    assert out.embeddings["backbone"].shape == (4 * n_views, 512)
    expected = {"backbone", "projection"} | (
        {"prediction"} if method in ("byol", "simsiam") else set()
    )
    assert set(out.embeddings) == expected
    out.loss.backward()
    assert next(model.backbone.parameters()).grad is not None
    for head in model.head_modules().values():
        assert any(p.grad is not None for p in head.parameters())
    if model.teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())


@pytest.mark.parametrize("method", ["byol", "moco", "dino"])
def test_teacher_starts_equal_to_cut_student_and_follows_the_ema(method: str) -> None:
    model = create_ssl_model(method, "resnet18", **SMALL[method])
    part = model.teacher_parts[1]
    student = dict(getattr(model, part).named_parameters())
    for name, t in model.teacher[part].named_parameters():
        assert torch.equal(t, student[name]), name
    before = {n: t.detach().clone() for n, t in model.teacher[part].named_parameters()}
    with torch.no_grad():
        for p in getattr(model, part).parameters():
            p.add_(1.0)
    m = model.update_teacher(0.0)
    assert m == model.hparams["momentum"]
    for name, t in model.teacher[part].named_parameters():
        torch.testing.assert_close(t, m * before[name] + (1 - m) * student[name])


def test_cosine_momentum_schedule() -> None:
    assert cosine_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 2.0) == 1.0


def test_c_none_default_and_c_one_no_cut() -> None:
    torch.manual_seed(0)
    ref = create_ssl_model("simclr", "resnet18", c=1)
    assert ref.cut_init_c == 1.0
    torch.manual_seed(0)
    cut = create_ssl_model("simclr", "resnet18")
    for (n, a), (_, b) in zip(ref.named_parameters(), cut.named_parameters(), strict=True):
        torch.testing.assert_close(b, a / 3, rtol=0, atol=0, msg=n)


def test_config_rebuilds_the_same_architecture() -> None:
    model = create_ssl_model("byol", "resnet18", c=3, **SMALL["byol"])
    config = model.get_config()
    assert config == {
        "method": "byol",
        "backbone": "resnet18",
        "c": 3.0,
        "overrides": SMALL["byol"],
    }
    rebuilt = create_ssl_model(
        config["method"], config["backbone"], c=config["c"], **config["overrides"]
    )
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys and shapes
    assert rebuilt.hparams == model.hparams


def test_moco_queue_wraps_around() -> None:
    model = create_ssl_model("moco", "resnet18", queue_size=6, proj_hidden_dim=16, proj_dim=4)
    model(views_for("moco", batch=2))
    assert int(model.queue_ptr) == 4
    model(views_for("moco", batch=2))
    assert int(model.queue_ptr) == 2
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(6))


def test_bad_inputs_name_the_fix() -> None:
    with pytest.raises(
        ValueError, match=r"Unknown method 'byl'.*known methods.*Did you mean 'byol'"
    ):
        create_ssl_model("byl", "resnet18")
    with pytest.raises(ValueError, match="Unknown timm backbone 'resnet_does_not_exist'"):
        create_ssl_model("simclr", "resnet_does_not_exist")
    with pytest.raises(ValueError, match="num_features"):
        create_ssl_model("simclr", nn.Linear(3, 3))
    with pytest.raises(ValueError, match="Unknown hyper-parameter.*'temprature'"):
        create_ssl_model("simclr", "resnet18", temprature=0.1)
    with pytest.raises(ValueError, match="finite number > 0"):
        create_ssl_model("simclr", "resnet18", c=-3)
    model = create_ssl_model("simclr", "resnet18")
    with pytest.raises(ValueError, match="mismatched shapes"):
        model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)])
    with pytest.raises(ValueError, match="expects 2 global views"):
        model([torch.randn(4, 3, 32, 32)])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        model([torch.randn(3, 32, 32), torch.randn(3, 32, 32)])


def test_module_backbone_and_custom_registration() -> None:
    class Tiny(nn.Module):
        num_features = 8

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    @register_method
    class TinySimCLR(SimCLR):
        name = "tiny-simclr"

    try:
        model = create_ssl_model("tiny-simclr", Tiny(), c=2)
        out = model([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)])
        assert out.embeddings["backbone"].shape == (8, 8) and model.backbone_name is None
    finally:
        unregister_method("tiny-simclr")
    with pytest.raises(ValueError, match="family"):
        register_method(type("Bad", (SimCLR,), {"name": "bad", "family": "other"}))
