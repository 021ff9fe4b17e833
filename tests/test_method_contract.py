"""The method contract: the base class applies GradScale, methods declare their checks on a run
(:meth:`SSLModel.check_run` with a :class:`RunSpec`), and ``family`` is an open identifier.

The method below is registered by the test and never mentions GradScale: the base class wires
it in. Its loss ``Σ z · w`` has the closed-form gradient ``w`` at ``z``, so GradScale's
``‖z‖^p`` factor can be checked exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from hub_cutinit import create_ssl_model, get_method_defaults, get_preset, list_methods
from hub_cutinit.methods.base import COMMON_DEFAULTS, RunSpec, SSLModel, SSLOutput
from hub_cutinit.methods.simclr import SimCLR
from hub_cutinit.registry import (
    KNOWN_FAMILIES,
    check_run,
    get_method_class,
    register_method,
    unregister_method,
)
from hub_cutinit.training import TrainConfig, parse_args

NAME = "dot-product"


class TinyBackbone(nn.Module):
    """8×8 images to 6 features: fast, and enough for a projector to act on."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DotProduct(SSLModel):
    """A method whose loss is ``Σ z · w`` for a fixed ``w``: d loss / d z = ``w`` by row."""

    name = NAME
    display_name = "Dot-Product"
    family = "redundancy-reduction"  # not one of the paper's two: the family is open
    defaults = {
        **COMMON_DEFAULTS,
        "c": 9.0,
        "weight_decay": 0.0,
        "optimizer": "sgd",
        "base_lr": 0.1,
        "proj_dim": 4,
    }
    presets = {"paper": {}, "tiny": {"proj_dim": 4}}
    head_names = ("projector",)

    def build_heads(self, num_features: int) -> None:
        self.projector = nn.Linear(num_features, int(self.hparams["proj_dim"]))
        self.register_buffer("w", torch.linspace(-1.0, 2.0, int(self.hparams["proj_dim"])))

    def compute(
        self, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> SSLOutput:
        feats = self.backbone(torch.cat(global_views))
        z = self.projector(feats)
        return SSLOutput((z * self.w).sum(), {"backbone": feats, "projection": z})


@pytest.fixture
def dot_product() -> Iterator[type[DotProduct]]:
    with registered(DotProduct):
        yield DotProduct


@contextlib.contextmanager
def registered(cls: type[SSLModel]) -> Iterator[str]:
    """Register ``cls`` for the block; yields its name."""
    register_method(cls)
    try:
        yield cls.name
    finally:
        unregister_method(cls.name)


def _views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, 3, 8, 8, generator=g) for _ in range(2)]


def _z_and_grads(power: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``z``, its gradient, the projector's weight gradient and its input, at GradScale ``power``."""
    torch.manual_seed(0)
    model = create_ssl_model(NAME, TinyBackbone(), c=1, grad_scale_power=power)
    out = model(_views())
    z = out.embeddings["projection"]
    z.retain_grad()
    out.loss.backward()
    feats = out.embeddings["backbone"].detach()
    return z.detach(), z.grad, model.projector.weight.grad, feats


# -- GradScale, applied by the base class ---------------------------------------------------------
@pytest.mark.parametrize("power", [1.0, 0.5, -1.0, 2.0])
def test_a_new_method_gets_grad_scale_without_asking(dot_product, power: float) -> None:
    z0, grad0, weight0, feats = _z_and_grads(0.0)
    z, grad, weight, _ = _z_and_grads(power)
    torch.testing.assert_close(z, z0, rtol=0, atol=0)  # the forward is untouched
    w = torch.linspace(-1.0, 2.0, 4)  # DotProduct.w
    torch.testing.assert_close(grad0, w.expand_as(z0))  # p = 0: the plain gradient, w
    norm_p = torch.linalg.vector_norm(z0, dim=-1, keepdim=True).pow(power)
    assert not torch.allclose(norm_p, torch.ones_like(norm_p), rtol=0.05)  # a real test
    torch.testing.assert_close(grad, w * norm_p)  # closed form: w × ‖z‖^p
    torch.testing.assert_close(grad, grad0 * norm_p)  # against autograd at p = 0
    torch.testing.assert_close(weight, (w * norm_p).T @ feats)  # and it reaches the head
    assert not torch.allclose(weight, weight0)


def test_grad_scale_is_hooked_on_the_student_only() -> None:
    preset = get_preset("byol", "tiny")
    plain = create_ssl_model("byol", "test_resnet", **preset)
    scaled = create_ssl_model("byol", "test_resnet", grad_scale_power=1.0, **preset)
    assert not plain.predictor._forward_hooks  # p = 0: nothing is registered
    assert scaled.grad_scale_module() is scaled.predictor and scaled.predictor._forward_hooks
    assert scaled.teacher is not None
    assert not any(m._forward_hooks for m in scaled.teacher.modules())
    dino = create_ssl_model(
        "dino", "test_resnet", grad_scale_power=1.0, **get_preset("dino", "tiny")
    )
    assert dino.grad_scale_module() is dino.head.mlp  # the raw bottleneck, before normalising


def test_a_method_without_a_grad_scale_point_says_how_to_declare_one() -> None:
    class Headless(DotProduct):
        name = "headless"

        def build_heads(self, num_features: int) -> None:
            self.head = nn.Linear(num_features, 4)
            self.register_buffer("w", torch.ones(4))

    with registered(Headless) as name, pytest.raises(ValueError, match=r"grad_scale_at.*None"):
        create_ssl_model(name, TinyBackbone(), c=1)
    declared = type("Declared", (Headless,), {"name": "declared", "grad_scale_at": "head"})
    with registered(declared) as name:
        model = create_ssl_model(name, TinyBackbone(), c=1, grad_scale_power=1.0)
        assert model.grad_scale_module() is model.head
    wrong = type("Wrong", (Headless,), {"name": "wrong", "grad_scale_at": "nope"})
    with registered(wrong) as name, pytest.raises(ValueError, match="'nope' names no submodule"):
        create_ssl_model(name, TinyBackbone(), c=1)
    opted_out = type("OptedOut", (Headless,), {"name": "opted-out", "grad_scale_at": None})
    with registered(opted_out) as name:
        assert create_ssl_model(name, TinyBackbone(), c=1).grad_scale_module() is None
        with pytest.raises(ValueError, match="does not support GradScale"):
            create_ssl_model(name, TinyBackbone(), c=1, grad_scale_power=1.0)


# -- check_run ------------------------------------------------------------------------------------
def test_base_check_run_has_no_checks() -> None:
    run = RunSpec(c=9.0, mixed_precision="fp16", global_batch_size=8, device_type="cuda")
    assert SSLModel.check_run(run) == []
    assert check_run("simclr", run) == []


def test_dino_refuses_fp16_at_c_9_through_check_run() -> None:
    with pytest.raises(ValueError, match=r"fp16 with DINO at c=9.*--mixed-precision bf16"):
        check_run("dino", RunSpec(c=9.0, mixed_precision="fp16"))
    assert check_run("dino", RunSpec(c=3.0, mixed_precision="fp16")) == []
    assert check_run("dino", RunSpec(c=9.0, mixed_precision="bf16")) == []
    with pytest.raises(SystemExit):  # refused when the recipe's flags are parsed
        parse_args("dino", ["--c", "12", "--mixed-precision", "fp16"])
    assert parse_args("simclr", ["--c", "9", "--mixed-precision", "fp16"]).c == 9.0


def test_moco_warns_for_a_queue_short_for_the_global_batch() -> None:
    assert check_run("moco", RunSpec(c=3.0)) == []  # global batch not known yet: skipped
    (message,) = check_run("moco", RunSpec(c=3.0, global_batch_size=2048))
    assert "holds 1 step(s)" in message and "--set queue_size=16384" in message
    assert check_run("moco", RunSpec(c=3.0, global_batch_size=512)) == []  # 4 steps of 2 × 512
    small_queue = RunSpec(c=3.0, global_batch_size=512, hparams={"queue_size": 64})
    assert "queue_size=4096" in check_run("moco", small_queue)[0]
    model = create_ssl_model("moco", "test_resnet", **get_preset("moco", "tiny"))  # 32 keys
    with pytest.warns(UserWarning, match="queue_size=64"):
        assert "(32 keys)" in model.check_global_batch(8)  # the deprecated alias still warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.check_global_batch(4) is None


def test_a_new_method_declares_its_own_checks(dot_product) -> None:
    class Picky(DotProduct):
        name = "picky"

        @classmethod
        def check_run(cls, run: RunSpec) -> list[str]:
            if run.mixed_precision == "fp16":
                raise ValueError("picky cannot train in fp16; use --mixed-precision bf16.")
            big = (run.global_batch_size or 0) > 1024
            return [*super().check_run(run), *(["a big batch"] if big else [])]

    with registered(Picky):
        with pytest.raises(ValueError, match="picky cannot train in fp16"):
            TrainConfig(method="picky", mixed_precision="fp16")  # the config asks the method
        assert check_run("picky", RunSpec(c=1.0, global_batch_size=4096)) == ["a big batch"]


@pytest.mark.parametrize("method", list_methods())
def test_every_method_accepts_its_default_run(method: str) -> None:
    for batch in (None, 8):
        run = RunSpec(
            c=get_method_defaults(method)["c"],
            global_batch_size=batch,
            hparams=get_preset(method, "tiny"),
        )
        messages = check_run(method, run)
        assert isinstance(messages, list) and all(isinstance(m, str) for m in messages)


def test_run_spec_is_frozen_and_checks_the_batch() -> None:
    run = RunSpec(c=3.0)
    assert (run.mixed_precision, run.global_batch_size, run.device_type) == (None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.c = 9.0  # type: ignore[misc]
    for bad in (0, -8, 2.5, True):
        with pytest.raises(ValueError, match="global_batch_size must be an int >= 1"):
            RunSpec(c=3.0, global_batch_size=bad)  # type: ignore[arg-type]


# -- family ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", [*KNOWN_FAMILIES, "my_family2", "self-distillation"])
def test_any_lowercase_identifier_is_a_family(family: str) -> None:
    cls = type("Fam", (SimCLR,), {"name": "fam", "family": family})
    with registered(cls):
        assert get_method_defaults("fam")["family"] == family
        assert get_method_class("fam").family == family


@pytest.mark.parametrize("family", ["", "Contrastive", "non contrastive", "-x", "2x", None, 3])
def test_a_family_that_is_not_an_identifier_is_refused_naming_the_rule(family: object) -> None:
    cls = type("Fam", (SimCLR,), {"name": "fam", "family": family})
    with pytest.raises(ValueError, match=r"family must be a non-empty lowercase identifier"):
        register_method(cls)
    assert "fam" not in list_methods()
