"""Registry, SSL models and their one-step API.

Every test that is about methods in general runs over :func:`list_methods` with each method's
``"tiny"`` preset, so a newly registered method is covered without editing this file; what is
genuinely one method's own (MoCo's queue, DINO's centre and temperature) has its own test.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hub_cutinit import (
    create_ssl_model,
    get_method_defaults,
    get_preset,
    list_methods,
    register_method,
)
from hub_cutinit.data import make_view_transform
from hub_cutinit.losses import DINOLoss
from hub_cutinit.methods.base import ViewSpec, cosine_momentum
from hub_cutinit.methods.simclr import SimCLR
from hub_cutinit.registry import get_display_name, get_method_class, unregister_method

#: Every registered method (built-ins and any registered before collection).
METHODS = list_methods()
#: Methods with a momentum teacher.
TEACHER_METHODS = [m for m in METHODS if get_method_class(m).teacher_parts]
BUILTINS = {"byol", "dino", "moco", "simclr", "simsiam"}
#: The paper's c by family (PAPER: 3 contrastive, 9 non-contrastive); other families: any c.
PAPER_C = {"contrastive": 3.0, "non-contrastive": 9.0}


def tiny(method: str) -> dict:
    """The method's test-size preset; every registered method must have one."""
    return get_preset(method, "tiny")


def views_for(method: str, batch: int = 4, size: int = 32) -> list[torch.Tensor]:
    """The global and local views the method's tiny preset asks for (its ViewSpec)."""
    spec = get_method_class(method).view_spec(tiny(method))
    g = torch.Generator().manual_seed(0)
    local = max(8, size // 2)
    views = [torch.randn(batch, 3, size, size, generator=g) for _ in range(spec.num_global)]
    return views + [torch.randn(batch, 3, local, local, generator=g) for _ in range(spec.num_local)]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_a_tiny_preset(method: str) -> None:
    presets = getattr(get_method_class(method), "presets", None) or {}
    assert "tiny" in presets, (
        f"method {method!r} has no 'tiny' preset: add test-size heads to its class's presets "
        "(the test suite runs every registered method with it)"
    )


def test_registry_lists_methods_with_paper_defaults() -> None:
    assert BUILTINS <= set(list_methods())  # importing the package registers the built-ins
    for name in list_methods():
        d = get_method_defaults(name)
        assert d["c"] == PAPER_C.get(d["family"], d["c"]), name
    assert get_method_defaults("simclr")["weight_decay"] == 1e-6
    assert get_method_defaults("byol")["weight_decay"] == 5e-4
    assert get_method_defaults("byol")["momentum"] == 0.99
    assert get_method_defaults("simclr")["temperature"] == 0.5
    d = get_method_defaults("simclr")
    d["c"] = 100
    assert get_method_defaults("simclr")["c"] == 3.0  # a copy


@pytest.mark.parametrize("method", METHODS)
def test_one_step_api(method: str) -> None:
    torch.manual_seed(0)
    model = create_ssl_model(method, "resnet18", **tiny(method))
    assert model.cut_init_c == get_method_defaults(method)["c"] == model.hparams["c"]
    views = views_for(method)
    out = model(views)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.embeddings["backbone"].shape == (4 * len(views), 512)
    assert {"backbone", "projection"} <= set(out.embeddings)
    out.loss.backward()
    assert next(model.backbone.parameters()).grad is not None
    for head in model.head_modules().values():
        assert any(p.grad is not None for p in head.parameters())
    if model.teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    with torch.no_grad():
        assert set(out.embeddings) == set(model.embed(views[0]))  # forward and embed agree


@pytest.mark.parametrize("method", TEACHER_METHODS)
def test_teacher_starts_equal_to_cut_student_and_follows_the_ema(method: str) -> None:
    model = create_ssl_model(method, "resnet18", **tiny(method))
    part = model.teacher_parts[-1]
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
    model = create_ssl_model("byol", "resnet18", c=3, **tiny("byol"))
    config = model.get_config()
    assert config == {
        "method": "byol",
        "backbone": "resnet18",
        "c": 3.0,
        "overrides": tiny("byol"),
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
    with pytest.raises(ValueError, match="family must be a non-empty lowercase identifier"):
        register_method(type("Bad", (SimCLR,), {"name": "bad", "family": "Other Family"}))


# -- what the methods own: presets, display names, views, per-step hooks, embed() ---------------

#: The built-ins' CPU heads, pinned: the recorded sweeps used them (not a list of methods to
#: cover: every registered method is checked below).
BUILTIN_CPU_PRESETS = {
    "simclr": {},
    "byol": {"proj_hidden_dim": 1024, "proj_dim": 256, "pred_hidden_dim": 256},
    "simsiam": {"proj_hidden_dim": 1024, "proj_dim": 256, "pred_hidden_dim": 256},
    "moco": {"proj_hidden_dim": 512, "queue_size": 1024},
    "dino": {"head_out_dim": 4096, "head_hidden_dim": 1024, "num_local_views": 2},
}


def test_presets_are_copies_and_bad_names_list_the_valid_ones() -> None:
    for method in list_methods():
        assert get_preset(method, "paper") == {}
        for preset in get_method_class(method).presets:
            assert set(get_preset(method, preset)) <= set(get_method_defaults(method))
    for method, preset in BUILTIN_CPU_PRESETS.items():
        assert get_preset(method, "cpu") == preset
    preset = get_preset("byol", "tiny")
    preset["proj_dim"] = 999
    assert get_preset("byol", "tiny")["proj_dim"] == 16
    with pytest.raises(ValueError, match=r"Unknown preset 'small'.*\['cpu', 'paper', 'tiny'\]"):
        get_preset("byol", "small")
    with pytest.raises(ValueError, match="Unknown method 'byl'"):
        get_preset("byl", "cpu")
    bad = type("BadPreset", (SimCLR,), {"name": "bad-preset", "presets": {"x": {"nope": 1}}})
    with pytest.raises(ValueError, match=r"presets\['x'\] sets \['nope'\]"):
        register_method(bad)
    assert "bad-preset" not in list_methods()


def test_display_names_come_from_the_classes() -> None:
    for method in list_methods():
        display = get_method_class(method).display_name
        assert display and get_display_name(method) == display, method
    builtins = {
        "byol": "BYOL",
        "dino": "DINO",
        "moco": "MoCo",
        "simclr": "SimCLR",
        "simsiam": "SimSiam",
    }
    assert {m: get_display_name(m) for m in builtins} == builtins
    assert get_display_name("someone-elses-method") == "someone-elses-method"


def test_view_spec_drives_the_transform() -> None:
    from PIL import Image

    assert get_method_class("byol").view_spec() == ViewSpec(2, 0, (0.2, 1.0))
    dino = get_method_class("dino").view_spec({"num_local_views": 3})
    assert (dino.num_global, dino.num_local, dino.global_scale) == (2, 3, (0.4, 1.0))
    crop = make_view_transform("dino", 32).global_transform.transforms[0]
    assert tuple(crop.scale) == (0.4, 1.0)
    assert tuple(make_view_transform("moco", 32).global_transform.transforms[0].scale) == (
        0.2,
        1.0,
    )

    class HalfLocal(SimCLR):  # a two-view method turned multi-crop through its spec alone
        name = "half-local"

        @classmethod
        def view_spec(cls, hparams=None) -> ViewSpec:
            return ViewSpec(num_global=2, num_local=1, local_size_fraction=0.5)

    views = make_view_transform(HalfLocal, 64, num_local_views=2)(Image.new("RGB", (70, 70)))
    assert [tuple(v.shape[-2:]) for v in views] == [(64, 64)] * 2 + [(32, 32)] * 2
    with pytest.raises(ValueError, match="num_global >= 1"):
        ViewSpec(num_global=0)


def test_momentum_schedule_constant_and_cosine() -> None:
    cosine = create_ssl_model("byol", "test_resnet", **tiny("byol"))
    constant = create_ssl_model("byol", "test_resnet", momentum_schedule="constant", **tiny("byol"))
    assert cosine.momentum_at(0.5) == pytest.approx(0.995)
    assert constant.momentum_at(0.0) == constant.momentum_at(0.5) == 0.99
    assert create_ssl_model("simsiam", "test_resnet", **tiny("simsiam")).momentum_at(0.5) is None
    with pytest.raises(
        ValueError, match=r"momentum_schedule must be one of \['cosine', 'constant'\]"
    ):
        create_ssl_model("moco", "test_resnet", momentum_schedule="linear", **tiny("moco"))
    with pytest.raises(ValueError, match="Unknown hyper-parameter.*momentum_schedule"):
        create_ssl_model("simclr", "test_resnet", momentum_schedule="constant")


@pytest.mark.parametrize("method", METHODS)
def test_on_step_end_updates_the_teacher_and_reports(method: str) -> None:
    model = create_ssl_model(method, "test_resnet", **tiny(method))
    if model.teacher is None:
        assert "ema_momentum" not in model.on_step_end(0.5)
        return
    part = model.teacher_parts[-1]
    with torch.no_grad():
        for p in getattr(model, part).parameters():
            p.add_(1.0)
    before = [t.detach().clone() for t in model.teacher[part].parameters()]
    logs = model.on_step_end(0.25)
    m = cosine_momentum(model.hparams["momentum"], 0.25)
    assert logs["ema_momentum"] == pytest.approx(m)
    for t, b, s in zip(
        model.teacher[part].parameters(), before, getattr(model, part).parameters(), strict=True
    ):
        torch.testing.assert_close(t, m * b + (1 - m) * s)


def test_dino_on_step_end_reports_the_teacher_temperature_warm_up() -> None:
    model = create_ssl_model("dino", "test_resnet", **tiny("dino"))
    reference = DINOLoss(8, teacher_temp=0.07, warmup_teacher_temp=0.04)
    model.criterion.teacher_temp = 0.07  # a real warm-up: 0.04 -> 0.07 over 30 % of training
    logs = model.on_step_end(0.15)
    reference.progress = 0.15
    assert logs["teacher_temp"] == pytest.approx(reference.current_teacher_temp()) == 0.055


@pytest.mark.parametrize("method", METHODS)
def test_embed_matches_forward_and_has_no_side_effects(method: str) -> None:
    torch.manual_seed(0)
    model = create_ssl_model(method, "test_resnet", **tiny(method)).eval()
    image = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        emb = model.embed(image)
    after = model.state_dict()
    for key, value in state.items():  # the queue, the DINO centre and the teacher included
        assert torch.equal(after[key], value), key
    assert {"backbone", "projection"} <= set(emb)
    n_global = get_method_class(method).view_spec(model.hparams).num_global
    with torch.no_grad():
        out = model([image] * n_global)  # eval mode: the forward's first view is this batch
    assert set(out.embeddings) == set(emb)
    for key in emb:
        torch.testing.assert_close(emb[key], out.embeddings[key][:4], msg=key)


def test_moco_queue_and_dino_centre_move_in_training_but_not_in_embed() -> None:
    moco = create_ssl_model("moco", "test_resnet", **tiny("moco"))
    dino = create_ssl_model("dino", "test_resnet", **tiny("dino"))
    image = torch.randn(4, 3, 32, 32)
    for model, buffer in ((moco, "queue"), (dino, "criterion.center")):
        before = model.get_buffer(buffer).clone()
        model.embed(image)  # train mode, with grad: still no side effect on the buffer
        assert torch.equal(model.get_buffer(buffer), before)
        model(views_for(model.name))
        assert not torch.equal(model.get_buffer(buffer), before)  # the check can fail
