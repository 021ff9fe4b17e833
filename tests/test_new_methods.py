"""Barlow Twins, VICReg and MoCo v3: losses against independent references, distributed
semantics (2 processes = 1 at the same global batch), recipes that save, reload and card.

References: lightly's ``BarlowTwinsLoss`` / ``VICRegLoss`` (the ``bench`` extra) when installed,
and closed forms written here always (lightly has no MoCo v3 loss: a per-row log-softmax).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from proc_group import run_processes

from hub_cutinit import create_ssl_model, get_method_defaults, get_preset, list_methods
from hub_cutinit.cli import main as cli_main
from hub_cutinit.hub import load_ssl_model
from hub_cutinit.methods.base import RunSpec
from hub_cutinit.methods.mocov3 import mocov3_infonce
from hub_cutinit.redundancy_losses import BarlowTwinsLoss, VICRegLoss
from hub_cutinit.registry import check_run
from hub_cutinit.training import main

NEW = ("barlow_twins", "mocov3", "vicreg")
EIGHT = ["barlow_twins", "byol", "dino", "moco", "mocov3", "simclr", "simsiam", "vicreg"]


# -- independent references --------------------------------------------------------------------
def ref_barlow_twins(z0: torch.Tensor, z1: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 1 of arXiv:2103.03230 written out with explicit sums (BN-style standardisation)."""
    n, d = z0.shape
    a = (z0 - z0.mean(0)) / (z0.var(0, unbiased=False) + 1e-5).sqrt()
    b = (z1 - z1.mean(0)) / (z1.var(0, unbiased=False) + 1e-5).sqrt()
    c = torch.einsum("ni,nj->ij", a, b) / n
    eye = torch.eye(d, dtype=z0.dtype)
    return ((c - eye) ** 2 * (eye + lam * (1 - eye))).sum()


def ref_vicreg(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Eqs. 1–6 of arXiv:2105.04906 with λ, μ, ν = 25, 25, 1."""
    n, d = z0.shape
    inv = ((z0 - z1) ** 2).sum() / (n * d)
    var = sum(torch.clamp(1 - (z.var(0) + 1e-4).sqrt(), min=0).sum() / d for z in (z0, z1)) / 2
    cov = 0.0
    for z in (z0, z1):
        zc = z - z.mean(0)
        m = zc.T @ zc / (n - 1)
        cov = cov + (m**2).sum() / d - (torch.diagonal(m) ** 2).sum() / d
    return 25 * inv + 25 * var + cov


def ref_mocov3(q: torch.Tensor, k: torch.Tensor, t: float) -> torch.Tensor:
    """``2τ · mean_i −log softmax_j(cos(q_i, k_j) / τ)[i]``, one row at a time."""
    q, k = q / q.norm(dim=1, keepdim=True), (k / k.norm(dim=1, keepdim=True)).detach()
    rows = [-(q[i] @ k[i] / t) + torch.logsumexp(q[i] @ k.T / t, 0) for i in range(len(q))]
    return 2 * t * torch.stack(rows).mean()


LOSSES = {
    "barlow_twins": (BarlowTwinsLoss(5e-3), lambda a, b: ref_barlow_twins(a, b, 5e-3)),
    "vicreg": (VICRegLoss(), ref_vicreg),
    "mocov3": (lambda a, b: mocov3_infonce(a, b, 0.2), lambda a, b: ref_mocov3(a, b, 0.2)),
}


def value_and_grad(fn, z0: torch.Tensor, z1: torch.Tensor) -> tuple[torch.Tensor, ...]:
    a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    loss = fn(a, b)
    grads = torch.autograd.grad(loss, [a, b], allow_unused=True)
    return (loss.detach(), *(torch.zeros_like(z0) if g is None else g for g in grads))


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_equals_closed_form_forward_and_gradient(name: str) -> None:
    ours, ref = LOSSES[name]
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 7.0):
        z0, z1 = (scale * torch.randn(32, 12, generator=g) for _ in range(2))
        got, expected = value_and_grad(ours, z0, z1), value_and_grad(ref, z0, z1)
        for x, y in zip(got, expected, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_barlow_twins_and_vicreg_equal_lightly() -> None:
    lightly_loss = pytest.importorskip("lightly.loss", reason="lightly is in the bench extra")
    g = torch.Generator().manual_seed(1)
    z0, z1 = (torch.randn(64, 24, generator=g) for _ in range(2))
    pairs = [
        (BarlowTwinsLoss(5e-3, scale=0.1), lambda a, b: 0.1 * lightly_loss.BarlowTwinsLoss()(a, b)),
        (VICRegLoss(), lightly_loss.VICRegLoss()),
    ]
    for ours, theirs in pairs:
        got, expected = value_and_grad(ours, z0, z1), value_and_grad(theirs, z0, z1)
        for x, y in zip(got, expected, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def _rebuilt_loss(model, views: list[torch.Tensor]) -> torch.Tensor:
    """The method's loss recomputed from its own modules with the reference formulas."""
    z = [model.projector(model.backbone(v)) for v in views]
    if model.name == "barlow_twins":
        return 0.1 * ref_barlow_twins(z[0], z[1], 5e-3)
    if model.name == "vicreg":
        return ref_vicreg(z[0], z[1])
    q = [model.predictor(p) for p in z]
    with torch.no_grad():
        k = [model.teacher["projector"](model.teacher["backbone"](v)) for v in views]
    return ref_mocov3(q[0], k[1], 0.2) + ref_mocov3(q[1], k[0], 0.2)


@pytest.mark.parametrize("method", NEW)
def test_method_output_equals_reference_forward_and_gradient(method: str) -> None:
    torch.manual_seed(0)
    model = create_ssl_model(method, "test_resnet", **get_preset(method, "tiny"))
    g = torch.Generator().manual_seed(2)
    views = [torch.randn(6, 3, 32, 32, generator=g) for _ in range(2)]
    out = model(views)
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(out.loss, params, allow_unused=True)
    ref_loss = _rebuilt_loss(model, views)
    refs = torch.autograd.grad(ref_loss, params, allow_unused=True)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-6)
    zs = out.embeddings["projection"].chunk(2)
    if method != "mocov3":  # the loss of the reported embeddings is the loss
        torch.testing.assert_close(model.criterion(*zs), out.loss, rtol=1e-6, atol=1e-6)
    # float32 through a conv net: tolerances relative to the largest gradient entry (a bias
    # before the batch standardisation has a zero gradient up to rounding)
    atol = 1e-5 * max(float(b.abs().max()) for b in refs if b is not None)
    for a, b in zip(ours, refs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=atol)


# -- distributed semantics ---------------------------------------------------------------------
DIST_CASE = {"backbone_kwargs": {"img_size": 32}, "head_batch_norm": False}


def _worker(rank: int, world: int, views: list[torch.Tensor], states: dict, z: tuple) -> dict:
    """One trainer step of every new method (test_vit: no BatchNorm) and every loss's value
    and gradient on this rank's rows."""
    from hub_cutinit.training import TrainConfig, Trainer

    batch = views[0].shape[0] // world
    result: dict = {"losses": {}}
    for method, state in states.items():
        torch.manual_seed(0)
        cfg = TrainConfig(
            method=method,
            backbone="test_vit",
            batch_size=batch,
            optimizer="sgd",
            lr=0.5,
            weight_decay=1e-4,
            warmup_epochs=0,
            overrides={**get_preset(method, "tiny"), **DIST_CASE},
            convergence_monitor=False,
        )
        trainer = Trainer(cfg)
        trainer.setup_accelerator()
        assert trainer.accelerator.num_processes == world
        trainer.setup_model()
        trainer.raw_model.load_state_dict(state)
        trainer.setup_optimizer(total_steps=10)
        local = [v[rank * batch : (rank + 1) * batch] for v in views]
        log = trainer.training_step(local).log
        sd = trainer.raw_model.state_dict()
        result[method] = (log["loss"], {k: v.detach().clone() for k, v in sd.items()})
    half = z[0].shape[0] // world  # the process group exists now (the trainer started it)
    for name, (loss_fn, _) in LOSSES.items():
        rows = [t[rank * half : (rank + 1) * half] for t in z]
        result["losses"][name] = value_and_grad(loss_fn, *rows) if world > 1 else None
    return result


@pytest.fixture(scope="module")
def distributed_runs() -> tuple[dict, list[dict], dict, tuple]:
    torch.manual_seed(0)
    states = {
        m: create_ssl_model(m, "test_vit", **get_preset(m, "tiny"), **DIST_CASE).state_dict()
        for m in NEW
    }
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]
    z = tuple(3 * torch.randn(32, 12, generator=g) for _ in range(2))
    (one,) = run_processes(_worker, 1, views, states, z)
    two = run_processes(_worker, 2, views, states, z)
    return one, two, states, z


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_over_two_processes_equals_one_process(distributed_runs, name: str) -> None:
    """Rank losses average to the global loss (Barlow Twins: every rank holds it); every rank's
    gradient on its rows is ``W ×`` the global one, which DDP's mean over W ranks undoes."""
    _, two, _, z = distributed_runs
    loss, g0, g1 = value_and_grad(LOSSES[name][0], *z)
    ranks = [r["losses"][name] for r in two]
    torch.testing.assert_close((ranks[0][0] + ranks[1][0]) / 2, loss, rtol=1e-5, atol=1e-6)
    if name == "barlow_twins":  # one global statistic: the same value on every rank
        torch.testing.assert_close(ranks[0][0], loss, rtol=1e-5, atol=1e-6)
    for i, full in ((1, g0), (2, g1)):
        torch.testing.assert_close(torch.cat([r[i] for r in ranks]) / 2, full, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", NEW)
def test_trainer_step_two_processes_equal_one(distributed_runs, method: str) -> None:
    one, two, states, _ = distributed_runs
    loss_one, params_one = one[method]
    (loss_a, params_a), (loss_b, params_b) = two[0][method], two[1][method]
    assert loss_a == loss_b  # reduced across processes
    assert loss_a == pytest.approx(loss_one, rel=1e-5)
    changed = 0
    for name, before in states[method].items():
        torch.testing.assert_close(params_a[name], params_b[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(params_a[name], params_one[name], rtol=1e-4, atol=1e-6, msg=name)
        changed += int(not torch.equal(params_one[name], before))
    assert changed > len(states[method]) // 2


# -- registry, run checks, ViT -----------------------------------------------------------------
def test_eight_methods_listed(capsys: pytest.CaptureFixture) -> None:
    assert list_methods() == EIGHT
    assert cli_main(["methods"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 8 and [r.split()[0] for r in rows] == EIGHT


def test_defaults_and_run_checks() -> None:
    expected = {
        "barlow_twins": ("redundancy-reduction", 1.0, 1e-4, "lars", 0.3),
        "vicreg": ("redundancy-reduction", 1.0, 1e-4, "lars", 0.3),
        "mocov3": ("contrastive", 3.0, 1e-6, "lars", 0.3),
    }
    for method, values in expected.items():
        d = get_method_defaults(method)
        assert (d["family"], d["c"], d["weight_decay"], d["optimizer"], d["base_lr"]) == values
        assert check_run(method, RunSpec(c=d["c"], global_batch_size=256)) == []
        with pytest.raises(ValueError, match="at least 2"):
            check_run(method, RunSpec(c=d["c"], global_batch_size=1))
    assert get_method_defaults("barlow_twins")["lambda_offdiag"] == 5e-3
    d = get_method_defaults("vicreg")
    assert (d["invariance_weight"], d["variance_weight"], d["covariance_weight"]) == (25, 25, 1)
    d = get_method_defaults("mocov3")
    assert (d["temperature"], d["momentum"], d["momentum_schedule"]) == (0.2, 0.99, "cosine")


def test_mocov3_heads_follow_the_backbone_and_a_vit_trains_two_steps() -> None:
    torch.manual_seed(0)
    resnet = create_ssl_model("mocov3", "test_resnet", **get_preset("mocov3", "tiny"))
    assert resnet.resolved_head_style() == "resnet"
    assert [type(m).__name__ for m in resnet.predictor][-1] == "Linear"  # no last BN
    model = create_ssl_model(
        "mocov3",
        "vit_tiny_patch16_224",
        backbone_kwargs={"img_size": 32, "patch_size": 4},
        **get_preset("mocov3", "tiny"),
    )
    assert model.resolved_head_style() == "vit"
    assert sum(isinstance(m, torch.nn.Linear) for m in model.projector) == 3
    for head in (model.projector, model.predictor):
        assert isinstance(head[-1], torch.nn.BatchNorm1d) and not head[-1].affine
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    teacher_before = [p.clone() for p in model.teacher.parameters()]
    g = torch.Generator().manual_seed(3)
    for step in range(2):
        out = model([torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)])
        assert torch.isfinite(out.loss)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert model.on_step_end(step / 2)["ema_momentum"] >= 0.99
    assert any(
        not torch.equal(a, b)
        for a, b in zip(teacher_before, model.teacher.parameters(), strict=True)
    )


# -- recipes: train, save, timm-only reload, card ----------------------------------------------
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


@pytest.mark.parametrize("method", NEW)
def test_recipe_trains_saves_reloads_with_timm_and_cards(method: str, tmp_path: Path) -> None:
    out = tmp_path / method
    preset = [f"{k}={v}" for k, v in get_preset(method, "tiny").items()]
    result = main(method, [*TINY, "--set", *preset, "--output-dir", str(out)])
    defaults = get_method_defaults(method)
    assert result["steps"] == 2 and result["method"] == method
    assert result["c"] == defaults["c"]
    assert set(result["final_norms"]["norms"]) >= {"backbone", "projection"}

    config = json.loads((out / "config.json").read_text())["hub_cutinit"]
    assert (config["family"], config["c"]) == (defaults["family"], defaults["c"])
    assert config["weight_decay"] == defaults["weight_decay"]
    backbone = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    ssl_model = load_ssl_model(out)
    assert (
        type(ssl_model).__name__
        == type(create_ssl_model(method, "test_resnet", **get_preset(method, "tiny"))).__name__
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), ssl_model.backbone(x), rtol=0, atol=0)

    card = (out / "README.md").read_text()
    display = {"barlow_twins": "Barlow Twins", "vicreg": "VICReg", "mocov3": "MoCo v3"}[method]
    assert f"{display} (`{method}`, {defaults['family']})" in card
    c_text = f"{defaults['c']:g}"
    assert f"| cut-initialisation c | {c_text} |" in card
    assert f"| weight decay λ | {defaults['weight_decay']:g} |" in card
    for part in ("backbone", "projection") + (("prediction",) if method == "mocov3" else ()):
        assert f"| `{part}` |" in card, part


def test_losses_run_in_fp32_under_autocast() -> None:
    z0, z1 = torch.randn(8, 6), torch.randn(8, 6)
    for name, (fn, _) in LOSSES.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(z0.bfloat16(), z1.bfloat16())
        assert loss.dtype == torch.float32, name
        torch.testing.assert_close(loss, fn(z0.bfloat16().float(), z1.bfloat16().float()))


def test_bad_shapes_name_the_fix() -> None:
    with pytest.raises(ValueError, match="same shape"):
        BarlowTwinsLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        VICRegLoss()(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="head_style"):
        create_ssl_model(
            "mocov3", "test_resnet", head_style="convnext", **get_preset("mocov3", "tiny")
        )
