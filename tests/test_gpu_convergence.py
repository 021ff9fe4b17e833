"""CPU smoke of the GPU convergence study (recipes/gpu/convergence.py): two variants, two steps
each, on a tiny parquet folder cut from the built-in dataset; the outputs load back."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location(
        "gpu_convergence", ROOT / "recipes/gpu/convergence.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 train and 32 test images of the built-in dataset, laid out like the full build."""
    import datasets

    from hub_cutinit.data.resolve import _builtin_files

    out = tmp_path_factory.mktemp("fm_tiny")
    for split, n in (("train", 64), ("test", 32)):
        ds = datasets.load_dataset("parquet", data_files=_builtin_files(split)[:1], split="train")
        ds.select(range(n)).to_parquet(str(out / f"{split}-00000-of-00001.parquet"))
    return out


def test_smoke_writes_study_and_throughput(tiny_parquet: Path, tmp_path: Path) -> None:
    gpu = _module()
    out = tmp_path / "out"
    report = gpu.main(
        [
            "--device-check", "no", "--data", str(tiny_parquet), "--methods", "simclr",
            "--backbone", "test_resnet", "--image-size", "16", "--batch-size", "8",
            "--heads", "tiny", "--max-steps", "2", "--num-workers", "0",
            "--mixed-precision", "no", "--threads", "1", "--warmup-epochs", "0",
            "--out-dir", str(out), "--runs-dir", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    runs = json.loads((out / "throughput.json").read_text())
    assert json.loads((out / "run_report.json").read_text())["runs"] == runs
    assert [r["run"] for r in runs] == ["simclr_c1_seed0", "simclr_cut_seed0"]
    assert [r["c"] for r in runs] == [1.0, 3.0]
    assert all(r["steps"] == 2 and r["images"] == 16 for r in runs)
    assert report["runs"] == runs
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert {r["variant"] for r in rows} == {"c1", "cut"}
    assert (out / "summary.md").read_text().count("| simclr |") == 2
    assert (out / "curves.png").stat().st_size > 0
    # the GPU flags (StudyConfig.extra_args) reached every run
    argv = json.loads((tmp_path / "runs/simclr_cut_seed0/result.json").read_text())["argv"]
    at = argv.index("--mixed-precision")
    assert argv[at : at + 4] == ["--mixed-precision", "no", "--num-workers", "0"]


def test_refuses_to_start_without_a_gpu_unless_told() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="--device-check no"):
        _module().main(["--max-steps", "1"])
