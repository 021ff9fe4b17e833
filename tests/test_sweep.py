"""The cut sweep (hub_cutinit.experiments.sweep, recipes/cut_sweep.py) and GradScale."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch

from hub_cutinit import create_ssl_model
from hub_cutinit.experiments.sweep import (
    RunSpec,
    SweepConfig,
    epoch_rows,
    parse_args,
    run_dir,
    run_sweep,
    summarise,
    sweep_grid,
    train_config,
    write_outputs,
)
from hub_cutinit.experiments.tables import CSV_COLUMNS
from hub_cutinit.registry import get_preset

TINY_HEADS = {"byol": get_preset("byol", "tiny")}


def _tiny(tmp_path: Path, **kw) -> SweepConfig:
    args = dict(
        methods=["simclr", "byol"],
        cs=[1.0, 3.0],
        seeds=[0],
        epochs=1,
        batch_size=8,
        max_train_examples=16,
        eval_max_samples=16,
        knn_k=5,
        backbone="test_resnet",
        image_size=32,
        overrides=TINY_HEADS,
        runs_dir=str(tmp_path / "runs"),
        out_dir=str(tmp_path / "out"),
    )
    args.update(kw)
    return SweepConfig(**args)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_tiny_sweep_writes_csv_plot_table_and_resumes(tmp_path: Path) -> None:
    cfg = _tiny(tmp_path)
    results = run_sweep(cfg, log=lambda msg: None)
    assert len(results) == 4
    out = tmp_path / "out"
    rows = _read_csv(out / "sweep.csv")
    assert tuple(rows[0]) == CSV_COLUMNS
    # 16 images / batch 8 = 2 steps per epoch; epoch 0 (init) and epoch 1 per run
    assert len(rows) == 4 * 2
    assert {(r["method"], float(r["c"])) for r in rows} == {
        (m, c) for m in ("simclr", "byol") for c in (1.0, 3.0)
    }
    assert sorted({r["epoch"] for r in rows}) == ["0", "1"]
    assert {r["step"] for r in rows if r["epoch"] == "1"} == {"2"}
    for r in rows:
        assert 0.0 <= float(r["knn_accuracy"]) <= 1.0
        assert float(r["norm_backbone"]) > 0 and float(r["norm_projection"]) > 0
        assert (r["norm_prediction"] == "") == (r["method"] == "simclr")
    # the cut shrinks the initial norms by about c (BatchNorm backbone)
    init = {
        (r["method"], float(r["c"])): float(r["norm_backbone"]) for r in rows if r["epoch"] == "0"
    }
    assert init[("simclr", 1.0)] / init[("simclr", 3.0)] == pytest.approx(3.0, rel=0.05)

    table = (out / "summary.md").read_text()
    assert "random-init kNN %" in table and "raw-pixel kNN %" in table
    assert (
        len(
            [
                ln
                for ln in table.splitlines()
                if ln.startswith("| byol") or ln.startswith("| simclr")
            ]
        )
        == 4
    )
    assert "test_resnet at 32px" in table
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 300_000
    assert not (out / "weight_decay.png").exists()  # one λ only
    for spec in sweep_grid(cfg):
        model_dir = run_dir(cfg, spec) / "model"
        assert (model_dir / "config.json").is_file()
        assert not (model_dir / "checkpoints").exists()  # removed once result.json is written

    def must_not_train(_cfg):
        raise AssertionError("a finished run was trained again")

    again = run_sweep(cfg, train_fn=must_not_train, log=lambda msg: None)
    assert [r["spec"] for r in again] == [r["spec"] for r in results]

    trained = []

    def fake_train(tcfg):
        trained.append((tcfg.method, tcfg.c, tcfg.seed))
        return copy.deepcopy(results[0]["result"]) | {"c": tcfg.c}

    more = _tiny(tmp_path, methods=["simclr"], seeds=[0, 1])
    assert len(run_sweep(more, train_fn=fake_train, log=lambda msg: None)) == 4
    assert trained == [("simclr", 1.0, 1), ("simclr", 3.0, 1)]  # seed 0 runs were reused


def _payload(method: str, c: float, wd: float, p: float, seed: int, scale: float) -> dict:
    def rec(step: int, epoch: int, norm: float) -> dict:
        return {
            "step": step,
            "epoch": epoch,
            "norms": {
                "backbone": {"count": 8, "mean": norm},
                "projection": {"count": 8, "mean": 2 * norm},
            },
        }

    history = [rec(10, 0, scale), rec(20, 1, 2 * scale)]
    return {
        "spec": {"method": method, "c": c, "weight_decay": wd, "grad_scale_power": p, "seed": seed},
        "initial_norms": {"backbone": 1.0 / c, "projection": 0.5 / c},
        "result": {
            "c": c,
            "weight_decay": wd,
            "steps": 20,
            "steps_per_epoch": 10,
            "knn": [
                {"step": 10, "epoch": 1, "knn_accuracy": 0.5 + 0.01 * seed},
                # the loop's last record carries the epoch counter of the epoch that just ended
                {"step": 20, "epoch": 1, "knn_accuracy": 0.6 + 0.01 * seed},
            ],
            "knn_accuracy": 0.6 + 0.01 * seed,
            "norm_history": {"version": 1, "records": history},
            "final_norms": history[-1],
            "baselines": {"random_init_knn": 0.55, "raw_pixels_knn": 0.7},
            "train_images_per_s": 100.0,
            "wall_time_s": 1.0,
        },
    }


def test_epoch_rows_align_knn_and_norms_by_step() -> None:
    rows = epoch_rows(_payload("simclr", 3.0, 5e-4, 0.0, 0, 1.0))
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 0), (1, 10), (2, 20)]
    assert [r["knn_accuracy"] for r in rows] == [0.55, 0.5, 0.6]
    assert [r["norm_backbone"] for r in rows] == pytest.approx([1 / 3, 1.0, 2.0])
    assert all(r["norm_prediction"] != r["norm_prediction"] for r in rows)  # NaN: no predictor


def test_weight_decay_and_grad_scale_outputs(tmp_path: Path) -> None:
    cfg = SweepConfig(
        methods=["simclr", "byol"],
        cs=[1.0],
        weight_decays=[0.0, 1e-6, 5e-4],
        grad_scale_powers=[0.0, 1.0],
        seeds=[0, 1],
        out_dir=str(tmp_path / "out"),
        runs_dir=str(tmp_path / "runs"),
    )
    results = [
        _payload(
            s.method,
            s.c,
            s.weight_decay,
            s.grad_scale_power,
            s.seed,
            10.0 / (1 + 1e4 * s.weight_decay),
        )
        for s in sweep_grid(cfg)
    ]
    paths = {p.name for p in write_outputs(cfg, results)}
    assert {"sweep.csv", "curves.png", "summary.md", "weight_decay.png", "weight_decay.md"} <= paths
    summary = summarise(results)
    assert len(summary) == 2 * 3 * 2
    row = next(r for r in summary if r["method"] == "byol" and r["weight_decay"] == 0.0)
    mean, std, n = row["knn"]
    assert n == 2 and mean == pytest.approx(0.605) and std == pytest.approx(0.00707, rel=1e-2)
    wd_md = (tmp_path / "out" / "weight_decay.md").read_text()
    assert "| simclr | 1 | 1 | 0.0005 | 0,1 |" in wd_md
    assert "| p |" in (tmp_path / "out" / "summary.md").read_text()
    assert len(_read_csv(tmp_path / "out" / "sweep.csv")) == 24 * 3


def test_flags_parse_into_a_sweep_config() -> None:
    cfg, _ = parse_args(
        [
            "--methods", "simclr", "byol", "--cs", "1", "9", "--weight-decays", "0", "default",
            "--grad-scale-powers", "0", "1", "--seeds", "3", "--small-heads",
            "--set", "byol.proj_dim=64", "temperature=0.2", "--max-train-examples", "512",
        ]
    )  # fmt: skip
    assert cfg.weight_decays == [0.0, None] and cfg.grad_scale_powers == [0.0, 1.0]
    assert len(sweep_grid(cfg)) == 2 * 2 * 2 * 2
    spec = RunSpec("byol", 9.0, None, 1.0, 3)
    tcfg = train_config(cfg, spec)
    cpu = get_preset("byol", "cpu")
    assert tcfg.overrides == {**cpu, "proj_dim": 64}  # --small-heads, then --set wins
    assert "temperature" not in tcfg.overrides  # BYOL has no temperature
    assert train_config(cfg, RunSpec("simclr", 1.0, 0.0, 0.0, 3)).overrides == {"temperature": 0.2}
    assert tcfg.grad_scale_power == 1.0 and tcfg.model_overrides()["grad_scale_power"] == 1.0
    assert tcfg.weight_decay is None and tcfg.c == 9.0 and tcfg.seed == 3 and tcfg.resume
    with pytest.raises(SystemExit):
        parse_args(["--set", "byol.temprature=1"])
    with pytest.raises(ValueError, match="smaller than one batch"):
        SweepConfig(max_train_examples=4, batch_size=8)


@pytest.mark.parametrize(
    ("method", "key", "overrides"),
    [("simclr", "projection", {}), ("byol", "prediction", TINY_HEADS["byol"])],
)
def test_grad_scale_multiplies_embedding_gradients_by_norm_power(
    method: str, key: str, overrides: dict
) -> None:
    """GradScale p=1: d loss / d z is multiplied row-wise by ‖z‖ (forward unchanged), so the
    projector's gradients change; p=0 is standard training."""
    images = torch.randn(2, 6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outs, grads = {}, {}
    for p in (0.0, 1.0):
        torch.manual_seed(0)
        model = create_ssl_model(method, "test_resnet", c=3, grad_scale_power=p, **overrides)
        out = model(list(images))
        z = out.embeddings[key]
        z.retain_grad()
        out.loss.backward()
        outs[p], grads[p] = (out.loss.detach(), z.detach()), z.grad.clone()
        grads[f"proj{p}"] = torch.cat([q.grad.flatten() for q in model.projector.parameters()])
    torch.testing.assert_close(outs[0.0][0], outs[1.0][0])  # identical forward pass
    z = outs[0.0][1]
    norms = z.norm(dim=1, keepdim=True)
    assert not torch.allclose(norms, torch.ones_like(norms), rtol=0.1)  # the test means something
    torch.testing.assert_close(grads[1.0], grads[0.0] * norms, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grads["proj0.0"], grads["proj1.0"], rtol=1e-3)
