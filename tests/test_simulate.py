"""The paper's simulations at reduced settings: the qualitative claims, files and CLI."""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import pytest

from hub_cutinit.simulate import (
    fit_loglog_slope,
    register_cli,
    simulate_angle_sweep,
    simulate_infonce_norm_growth,
    simulate_norm_sweep,
    simulate_opposite_halves,
    write_csv,
)


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _assert_outputs(out: Path, name: str, rows: list[dict]) -> None:
    header, read = _read_csv(out / f"{name}.csv")
    assert header == list(rows[0])
    assert len(read) == len(rows)
    png = (out / f"{name}.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def _rank_correlation(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def test_norm_sweep_steps_quadratic_in_rho(tmp_path: Path) -> None:
    # γ = lr / n_pairs = 0.05 per pair keeps the test fast; the paper uses 10 / 500 = 0.02.
    rows = simulate_norm_sweep(rhos=(0.5, 1.0, 2.0, 3.0, 5.0), n_pairs=40, lr=2.0, out_dir=tmp_path)
    assert all(r["converged"] for r in rows)
    big = [r for r in rows if r["rho"] >= 1]
    slope = fit_loglog_slope([r["rho"] for r in big], [r["steps"] for r in big])
    assert 1.7 < slope < 2.3
    for r in big:
        assert r["steps"] == pytest.approx(r["predicted_steps"], rel=0.1)
    # Plain SGD only grows the norms.
    assert all(r["final_mean_norm"] >= r["rho"] for r in rows)
    _assert_outputs(tmp_path, "norm_sweep", rows)


def test_norm_sweep_reduction_sum_is_per_pair_step() -> None:
    mean = simulate_norm_sweep(rhos=(1.0,), n_pairs=20, lr=1.0, seed=3)
    total = simulate_norm_sweep(rhos=(1.0,), n_pairs=20, lr=1.0 / 20, seed=3, reduction="sum")
    assert mean[0]["steps"] == total[0]["steps"]
    assert mean[0]["predicted_steps"] == total[0]["predicted_steps"]
    with pytest.raises(ValueError, match="reduction"):
        simulate_norm_sweep(rhos=(1.0,), n_pairs=4, reduction="max")


def test_norm_sweep_stops_at_max_steps() -> None:
    rows = simulate_norm_sweep(rhos=(5.0,), n_pairs=10, lr=0.1, max_steps=5)
    assert rows[0]["steps"] == 5 and rows[0]["converged"] is False


def test_angle_sweep_rises_slowly_toward_pi(tmp_path: Path) -> None:
    angles = (0.3, 0.9, math.pi / 2, 2.2, 2.8, math.pi - 0.02)
    rows = simulate_angle_sweep(angles=angles, n_pairs=40, lr=2.0, out_dir=tmp_path)
    steps = np.array([r["steps"] for r in rows])
    assert all(r["converged"] for r in rows)
    assert np.all(np.diff(steps) > 0)
    # Log-like: from π/2 to π − 0.02 costs only about twice the steps, not a blow-up.
    assert steps[-1] < 3 * steps[2]
    for r in rows:
        assert r["steps"] == pytest.approx(r["predicted_steps"], rel=0.1, abs=2)
    _assert_outputs(tmp_path, "angle_sweep", rows)


def test_angle_sweep_jitter_controls_the_mean() -> None:
    rows = simulate_angle_sweep(angles=(1.0, 2.5), n_pairs=30, lr=1.5, jitter=0.2, seed=1)
    assert rows[0]["steps"] < rows[1]["steps"]


def test_infonce_norms_grow_for_every_term(tmp_path: Path) -> None:
    rows = simulate_infonce_norm_growth(n_samples=128, epochs=4, batch_size=64, out_dir=tmp_path)
    for variant in ("attractive", "repulsive", "full"):
        norms = [r["mean_norm"] for r in rows if r["variant"] == variant]
        assert len(norms) == 5
        assert norms[-1] > 1.5 * norms[0], variant
    _assert_outputs(tmp_path, "infonce_norm_growth", rows)


def test_infonce_free_embeddings_never_shrink() -> None:
    # PAPER §2: plain SGD on free embeddings can only grow each norm, for every InfoNCE term.
    rows = simulate_infonce_norm_growth(model="free", n_samples=64, epochs=3, batch_size=32)
    for variant in ("attractive", "repulsive", "full"):
        norms = np.array([r["mean_norm"] for r in rows if r["variant"] == variant])
        assert np.all(np.diff(norms) >= -1e-6) and norms[-1] > norms[0], variant


def test_infonce_validation() -> None:
    with pytest.raises(ValueError, match="model"):
        simulate_infonce_norm_growth(model="resnet")
    with pytest.raises(ValueError, match="variants"):
        simulate_infonce_norm_growth(variants=("uniformity",))


def test_opposite_halves_antipodal_pairs_are_slowest(tmp_path: Path) -> None:
    rows = simulate_opposite_halves(n_pairs=12, steps=200, snapshots=(0, 50, 200), out_dir=tmp_path)
    assert {"cos_step0", "cos_step50", "cos_step200"} <= set(rows[0])
    angles = [r["start_angle"] for r in rows]
    steps = [r["steps_to_converge"] for r in rows]
    assert min(steps) >= 0  # every pair aligned within 200 steps
    slowest = max(rows, key=lambda r: r["start_angle"])
    assert slowest["steps_to_converge"] == max(steps)
    assert _rank_correlation(angles, steps) > 0.95
    for r in rows:
        assert r["cos_step0"] == pytest.approx(math.cos(r["start_angle"]), abs=1e-6)
    _assert_outputs(tmp_path, "opposite_halves", rows)


def test_fit_and_write_helpers(tmp_path: Path) -> None:
    assert fit_loglog_slope([1, 2, 4, 8], [5, 40, 320, 2560]) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="two"):
        fit_loglog_slope([1.0], [2.0])
    with pytest.raises(ValueError, match="rows"):
        write_csv([], tmp_path / "empty.csv")


def test_cli_simulate_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="hub-cutinit")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", "norm", "--out", str(tmp_path), "--seed", "1", "--quick"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "predicted_steps" in printed and "fitted exponent" in printed
    header, rows = _read_csv(tmp_path / "norm_sweep.csv")
    assert header[:3] == ["rho", "steps", "predicted_steps"] and len(rows) == 5
    assert (tmp_path / "norm_sweep.png").exists()
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "nonsense", "--out", str(tmp_path)])
