"""Norms as confidence (hub_cutinit.experiments.norm_confidence, `hub-cutinit analyze`)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest
import torch

from hub_cutinit import create_ssl_model
from hub_cutinit.evaluation import norm_confidence
from hub_cutinit.experiments.norm_confidence import BUCKET_COLUMNS, embed, register_cli
from hub_cutinit.hub import save_pretrained


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    # c=1: an untrained cut model in eval mode (running statistics still at their init values)
    # compounds the 1/c of every BatchNorm layer, giving near-constant, ~1e-12 norms
    model = create_ssl_model(
        "byol", "test_resnet", c=1, proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8
    )
    out = tmp_path_factory.mktemp("analysis") / "byol"
    return save_pretrained(model, out, training_info={"image_size": 32, "dataset": "builtin"})


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hub-cutinit")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_analyze_writes_bucket_csv_with_correct_edges(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "an"
    argv = ["analyze", str(tiny_model_dir), "--dataset", "builtin", "--max-samples", "64"]
    argv += ["--k", "10", "--min-count", "1", "--embeddings", "backbone", "projection"]
    argv += ["prediction", "--out", str(out)]
    assert _cli(argv) == 0
    printed = capsys.readouterr().out
    assert "backbone: kNN on backbone, overall accuracy" in printed
    with (out / "norm_buckets.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == BUCKET_COLUMNS
    assert {r["embedding"] for r in rows} == {"backbone", "projection", "prediction"}
    for name in ("backbone", "projection", "prediction"):
        mine = [r for r in rows if r["embedding"] == name]
        assert sum(int(r["count"]) for r in mine) == 64  # min_count=1 keeps every sample
        lows = [float(r["bucket_low"]) for r in mine]
        assert lows == sorted(lows) and lows[0] == 0.0  # the smallest norm rescales to 0
        assert float(mine[-1]["bucket_high"]) == 1.0  # ... and the largest to 1
        for r in mine:
            lo, hi = float(r["bucket_low"]), float(r["bucket_high"])
            assert hi - lo == pytest.approx(0.05)
            assert round(lo / 0.05, 6) == int(round(lo / 0.05))  # edges on the 0.05 grid
            assert float(r["norm_low"]) <= float(r["norm_high"])
            assert 0.0 <= float(r["accuracy"]) <= 1.0
    assert (out / "norm_buckets.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "norm_buckets.md").read_text().startswith("**backbone")

    # the paper's default: buckets with fewer than 10 samples are left out
    assert _cli([*argv[:-2], "--min-count", "10", "--out", str(tmp_path / "m10"), "--no-plot"]) == 0
    with (tmp_path / "m10" / "norm_buckets.csv").open() as fh:
        assert all(int(r["count"]) >= 10 for r in csv.DictReader(fh))


def test_embed_halves_trick_matches_the_backbone(tiny_model_dir: Path) -> None:
    from hub_cutinit.hub import load_ssl_model

    model = load_ssl_model(tiny_model_dir)
    images = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batches = [
        {"image": images[:5], "label": torch.arange(5)},
        {"image": images[5:], "label": torch.arange(2)},
    ]
    emb, labels = embed(model, batches, ("backbone", "projection", "prediction"))
    assert labels.tolist() == [0, 1, 2, 3, 4, 0, 1]
    with torch.no_grad():
        feats = model.backbone(images)
        proj = model.projector(feats)
        torch.testing.assert_close(emb["backbone"], feats, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(emb["projection"], proj, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(emb["prediction"], model.predictor(proj), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no \\['teacher'\\] embedding"):
        embed(model, batches, ("teacher",))


def test_norm_confidence_finds_low_norm_samples_less_accurate() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 2
    centers = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    norms = torch.linspace(0.5, 5.0, 400)
    noise = torch.randn(400, 2, generator=g) * torch.linspace(2.0, 0.05, 400)[:, None]
    test = (centers[labels] + noise) * norms[:, None]  # small norm <-> noisy direction
    bank = centers[torch.arange(200) % 2] + 0.05 * torch.randn(200, 2, generator=g)
    res = norm_confidence(
        {"backbone": bank}, torch.arange(200) % 2, {"backbone": test}, labels, k=5
    )["backbone"]
    rows = res["buckets"]
    assert rows[0]["bucket_low"] == 0.0 and all(r["count"] >= 10 for r in rows)
    assert rows[0]["accuracy"] < 0.8 and rows[-1]["accuracy"] == 1.0
    assert res["mean_norm_correct"] > res["mean_norm_wrong"]
    with pytest.raises(ValueError, match="knn_on"):
        norm_confidence({"backbone": bank}, labels[:200], {"backbone": test}, labels, knn_on="x")


def test_analyze_knn_on_backbone_reports_only_the_asked_embeddings(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from hub_cutinit.experiments.norm_confidence import analyze

    res = analyze(
        tiny_model_dir,
        max_samples=32,
        k=5,
        min_count=1,
        embeddings=["projection"],
        knn_on="backbone",
        plot=False,
        out_dir=tmp_path,
    )
    assert list(res["results"]) == ["projection"]
    assert res["results"]["projection"]["knn_on"] == "backbone"
    assert sum(r["count"] for r in res["buckets"]["projection"]) == 32
    assert sorted(p.name for p in res["files"]) == ["norm_buckets.csv", "norm_buckets.md"]
