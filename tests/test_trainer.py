"""The Trainer's run record reaches config.json and the card; the paper's schedule flags."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from hub_cutinit.training import TrainConfig, Trainer, main, parse_args
from hub_cutinit.training.optim import bn_normalized_weights, build_optimizer, resolve_schedule

TINY = [
    "--backbone",
    "test_resnet",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--eval-max-samples",
    "64",
    "--no-baselines",
]
BYOL_HEADS = ["--set", "proj_hidden_dim=32", "proj_dim=16", "pred_hidden_dim=8"]


def _occurrences(tree: Any, key: str, path: str = "") -> list[tuple[str, Any]]:
    """Every (path, value) where ``key`` appears in a JSON tree."""
    found = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key:
                found.append((f"{path}.{k}", v))
            found.extend(_occurrences(v, key, f"{path}.{k}"))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            found.extend(_occurrences(v, key, f"{path}[{i}]"))
    return found


def test_non_default_flags_are_stated_exactly_in_config_and_card(tmp_path: Path) -> None:
    out = tmp_path / "run"
    flags = ["--optimizer", "adamw", "--weight-decay", "1e-3", "--lr", "0.0123"]
    flags += ["--knn-k", "20", "--c", "2.5", "--max-steps", "2"]
    main("byol", [*TINY, *BYOL_HEADS, *flags, "--output-dir", str(out)])
    config = json.loads((out / "config.json").read_text())
    block = config["hub_cutinit"]
    expected = {"optimizer": "adamw", "weight_decay": 1e-3, "lr": 0.0123, "knn_k": 20, "c": 2.5}
    for key, value in expected.items():
        # per-step logs (the lr of a warm-up step) are readings, not hyper-parameters
        places = [
            (where, got)
            for where, got in _occurrences(block, key)
            if not where.startswith((".training.convergence", ".training.last_step"))
        ]
        assert places, f"{key} is not recorded"
        for where, got in places:
            assert got == value, f"{where} says {got!r}, the run used {value!r}"
    assert block["training"]["base_lr"] == pytest.approx(0.0123 * 256 / 8)
    card = (out / "README.md").read_text()
    assert "| optimizer | adamw |" in card
    assert "| weight decay λ | 0.001 |" in card
    assert "| cut-initialisation c | 2.5 |" in card
    assert "| peak learning rate | 0.0123 |" in card
    assert "k = 20," in card and "k=20" in card
    for stale in ("sgd", "k = 200", "k=200", "0.0005", "0.06"):
        assert stale not in card, f"the card still says {stale!r}"


def test_resolve_schedule_rules_and_errors() -> None:
    # the paper's 10-epoch warm-up on a long horizon; a tenth of a short one
    assert resolve_schedule(
        total_steps=200, steps_per_epoch=10, warmup_epochs=None, cosine_epochs=500
    ) == (100, 5000)
    assert resolve_schedule(
        total_steps=50, steps_per_epoch=10, warmup_epochs=None, cosine_epochs=None
    ) == (5, 50)
    assert resolve_schedule(
        total_steps=50, steps_per_epoch=None, warmup_epochs=None, cosine_epochs=None
    ) == (5, 50)
    with pytest.raises(ValueError, match="--warmup-epochs.*--cosine-epochs"):
        resolve_schedule(total_steps=50, steps_per_epoch=10, warmup_epochs=8, cosine_epochs=7)
    with pytest.raises(ValueError, match="--cosine-epochs.*shorter than the run"):
        resolve_schedule(total_steps=50, steps_per_epoch=10, warmup_epochs=1, cosine_epochs=2)
    with pytest.raises(ValueError, match="--num-examples"):
        resolve_schedule(total_steps=50, steps_per_epoch=None, warmup_epochs=1, cosine_epochs=None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--warmup-epochs", "20", "--cosine-epochs", "10", "--epochs", "5"], "--warmup-epochs"),
        (["--epochs", "20", "--cosine-epochs", "10"], "--cosine-epochs"),
        (["--ema-schedule", "constant"], "no EMA teacher"),
        (["--normalized-lr-scale", "0"], "--normalized-lr-scale"),
    ],
)
def test_bad_schedule_flags_name_both_flags(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args("simclr", argv)
    assert message in capsys.readouterr().err


def test_cosine_horizon_longer_than_the_run_and_constant_ema(tmp_path: Path) -> None:
    """A run that is the first steps of a longer schedule keeps a nearly constant lr."""
    argv = [*TINY, *BYOL_HEADS, "--num-examples", "64", "--epochs", "2"]
    argv += ["--cosine-epochs", "200", "--warmup-epochs", "0", "--lr", "0.1"]
    argv += ["--ema-schedule", "constant", "--no-nesterov", "--output-dir", str(tmp_path)]
    result = main("byol", argv)
    steps = result["steps"]
    assert result["cosine_steps"] == 200 * result["steps_per_epoch"]
    expected = 0.5 * 0.1 * (1 + math.cos(math.pi * steps / result["cosine_steps"]))
    assert result["last_step"]["lr"] == pytest.approx(expected, rel=1e-6)
    assert result["last_step"]["ema_momentum"] == pytest.approx(0.99)
    assert result["nesterov"] is False and result["ema_schedule"] == "constant"
    card = (tmp_path / "README.md").read_text()
    assert "sgd (no Nesterov)" in card and "0.99 (constant)" in card


def test_normalized_lr_scale_finds_bn_weights_and_scales_their_lr() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(inplace=True),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 5),
    )
    names = bn_normalized_weights(net, lambda m: m(torch.randn(2, 3, 8, 8)))
    assert names == ["0.weight"]
    opt, sched = build_optimizer(
        net,
        "sgd",
        lr=0.1,
        weight_decay=1e-3,
        cosine_steps=100,
        warmup_steps=0,
        normalized=names,
        normalized_lr_scale=9.0,
    )
    sched.step_update(0)
    lrs = sorted(group["lr"] for group in opt.param_groups)
    assert lrs == pytest.approx([0.1, 0.9])
    scaled = next(g for g in opt.param_groups if g.get("lr_scale") == 9.0)
    assert scaled["weight_decay"] == pytest.approx(1e-3 / 9)  # lr·λ per step unchanged
    assert scaled["params"][0] is net[0].weight


def test_normalized_lr_scale_equals_cut_for_a_scale_invariant_weight() -> None:
    """PAPER §9: W/c at lr η moves like W at lr ηc² (and λ/c²), up to the factor c."""
    torch.manual_seed(0)
    x, target = torch.randn(16, 6), torch.randn(16, 4)
    w0 = torch.randn(4, 6)

    def run(scale_w: float, lr_scale: float) -> torch.Tensor:
        lin = torch.nn.Linear(6, 4, bias=False)
        net = torch.nn.Sequential(lin, torch.nn.BatchNorm1d(4, affine=False))
        with torch.no_grad():
            lin.weight.copy_(w0 / scale_w)
        opt, sched = build_optimizer(
            net,
            "sgd",
            lr=0.01,
            weight_decay=5e-4,
            cosine_steps=1000,
            warmup_steps=0,
            nesterov=False,
            normalized=["0.weight"],
            normalized_lr_scale=lr_scale,
        )
        for _ in range(5):
            loss = ((net(x) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return lin.weight.detach() * scale_w

    torch.testing.assert_close(run(3.0, 1.0), run(1.0, 9.0), rtol=1e-4, atol=1e-5)


def test_trainer_steps_without_data_for_benchmarks() -> None:
    """The benchmarks drive Trainer.training_step directly (no stream, no copies of the step)."""
    cfg = TrainConfig(
        method="simclr",
        backbone="test_resnet",
        batch_size=4,
        overrides={"proj_hidden_dim": 16, "proj_dim": 8},
        convergence_monitor=True,
        log_every=1,
    )
    trainer = Trainer(cfg)
    trainer.setup_accelerator()
    trainer.setup_model()
    trainer.setup_optimizer(total_steps=10)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    result = trainer.training_step(views)
    assert result.synced and trainer.state.step == 1
    assert result.log["convergence/angle/projection"] > 0
    assert trainer.record.total_steps == 10 and trainer.record.warmup_steps == 1


FORMAT1 = Path(__file__).parent / "data" / "format1_byol"


def test_a_format_1_save_still_loads_and_renders(tmp_path: Path) -> None:
    """A save written by hub_cutinit 0.1.0 (format 1: training defaults inside hparams)."""
    import shutil

    import timm

    from hub_cutinit.hub import load_ssl_model
    from hub_cutinit.hub.card import render_model_card

    block = json.loads((FORMAT1 / "config.json").read_text())["hub_cutinit"]
    assert block["format_version"] == 1 and block["hparams"]["optimizer"] == "sgd"
    model = load_ssl_model(FORMAT1)
    assert model.method == "byol" and model.cut_factor == 9.0
    backbone = timm.create_model(f"local-dir:{FORMAT1}", pretrained=True).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(images), model.backbone(images), rtol=0, atol=0)
    copy = tmp_path / "format1"
    shutil.copytree(FORMAT1, copy)
    card = render_model_card(copy).read_text()
    # the run record of format 1 (training.optimizer) wins over the stale hparams default
    assert "| optimizer | adamw |" in card and "| weight decay λ | 0.001 |" in card


def test_the_card_plots_the_convergence_monitor(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        *TINY,
        *BYOL_HEADS,
        "--max-steps",
        "3",
        "--log-every",
        "1",
        "--monitor-budget",
        "1",
        "--output-dir",
        str(out),
    ]
    result = main("byol", argv)
    readings = result["convergence"]
    assert [r["step"] for r in readings] == [1, 2, 3]
    assert all(r["angle/projection"] > 0 and r["norm/projection"] > 0 for r in readings)
    block = json.loads((out / "config.json").read_text())["hub_cutinit"]
    assert block["format_version"] == 2
    assert block["training"]["convergence"] == readings
    assert "convergence" in block["norm_history"][-1]  # the epoch's mean angle sits beside ‖z‖
    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        "![Angle per step, norm and learning rate](convergence.png)"
        in (out / "README.md").read_text()
    )


def test_convergence_study_passes_its_backbone_and_schedule_to_every_run(tmp_path: Path) -> None:
    """The committed study's flags reach the recipe (a default lost on the way is a wrong study)."""
    from hub_cutinit.experiments.convergence import StudyConfig, build_parser, train_argv

    args = vars(build_parser().parse_args(["--out-dir", str(tmp_path), "--", "--knn-k", "50"]))
    args.pop("lr")
    assert args.pop("report_only") is False
    cfg = StudyConfig(**args)
    assert cfg.backbone_kwargs == StudyConfig().backbone_kwargs != {}
    argv = train_argv(cfg, "byol", "c1-lr", 0, tmp_path / "run")
    parsed = parse_args("byol", argv)
    assert parsed.overrides["backbone_kwargs"] == {
        "channels": [16, 32, 64, 128],
        "output_stride": 8,
    }
    assert parsed.c == 1 and parsed.normalized_lr_scale == 81
    assert parsed.ema_schedule == "constant" and parsed.cosine_epochs == 60
    # the paper's 0.04 at its batch 512, scaled to batch 64 by the linear rule
    assert parsed.lr == 0.04 * 64 / 512 and parsed.weight_decay == 5e-4
    assert parsed.warmup_epochs == 2 and parsed.epochs == 6 and parsed.eval_every == 39
    assert parsed.knn_k == 50  # flags after -- reach every run
    spare = parse_args("simsiam", train_argv(cfg, "simsiam", "cut-spare-bias", 0, tmp_path / "s"))
    assert spare.c == 9 and spare.cut_spare == ["bias"]


@pytest.mark.slow  # ~45 s of compilation on 2 cores: make test-all
def test_compile_trains_one_step_like_the_eager_model() -> None:
    """``--compile`` (torch.compile in place): one CPU step gives the eager loss and update, and
    the parameter names (checkpoints, saves) are unchanged. ~50 s on 2 busy cores (compile)."""

    def one_step(compile_: bool) -> tuple[Trainer, float]:
        cfg = TrainConfig(
            method="simclr",
            backbone="test_resnet",
            batch_size=4,
            overrides={"proj_hidden_dim": 16, "proj_dim": 8},
            compile=compile_,
            convergence_monitor=False,
            log_every=1,
        )
        trainer = Trainer(cfg)
        trainer.setup_accelerator()  # seeds the model
        trainer.setup_model()
        trainer.setup_optimizer(total_steps=10)
        g = torch.Generator().manual_seed(0)
        views = [torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)] * 2
        result = trainer.training_step(views)
        return trainer, result.log["loss"]

    eager, eager_loss = one_step(False)
    compiled, compiled_loss = one_step(True)
    assert compiled.record.compile and not eager.record.compile
    assert math.isfinite(compiled_loss) and compiled.state.step == 1
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    a, b = eager.raw_model.state_dict(), compiled.raw_model.state_dict()
    assert list(a) == list(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-5)
