"""The GPU run script (recipes/gpu/run.sh, issue 20 item 5) end to end on CPU: a tiny budget,
a tiny parquet folder, the test backbone; what comes back fits the device's 8 files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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


def test_driver_pieces() -> None:
    """The fast part: flag split, probe rate, epoch sizing, packing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_driver", ROOT / "recipes/gpu/convergence.py")
    assert spec is not None and spec.loader is not None
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    assert gpu.split_argv(["--method", "simclr", "--", "--augment-on", "device"]) == (
        ["--method", "simclr"],
        ["--augment-on", "device"],
    )
    assert gpu.probe_rate({"steps": [[1, 1.0], [2, 1.5], [3, 2.0]]}, skip=1) == (2.0, 1.0)
    epochs, every = gpu.size_epochs(200, 2.0, 10, 30, 5, 5, 100)  # 5 s an epoch
    assert 5 * epochs + 30 + (epochs // every + 1) * 5 <= 200 and epochs > 20
    args = gpu.build_parser().parse_args(["--method", "byol", "--variant", "c1", "--epochs", "3"])
    argv = gpu.recipe_argv(args, ["--augment-on", "device"])
    assert argv[-2:] == ["--augment-on", "device"] and "--no-baselines" in argv
    assert argv[argv.index("--c") + 1] == "1" and "--ema-schedule" in argv


@pytest.mark.slow
def test_run_sh_end_to_end(tiny_parquet: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PY=sys.executable, OMP_NUM_THREADS="1",
               SITE=str(tmp_path / "site"))  # fmt: skip
    argv = [
        "bash", str(ROOT / "recipes/gpu/run.sh"), "--budget-seconds", "120",
        "--device-check", "no", "--data", str(tiny_parquet), "--backbone", "test_resnet",
        "--image-size", "16", "--batch-size", "8", "--heads", "tiny", "--probe-steps", "3",
        "--probe-skip", "1", "--max-epochs", "2", "--evals", "2",
        "--runs-dir", str(tmp_path / "runs"),
        "--", "--num-workers", "0", "--mixed-precision", "no",
    ]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8, files
    assert {"environment.json", "summary.json", "summary.md", "runs.tar.gz", "log.txt"} <= set(
        files
    )
    env_record = json.loads((out / "environment.json").read_text())
    assert env_record["packages"]["torch"] and "cuda_available" in env_record
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe_flags"] == ["--num-workers", "0", "--mixed-precision", "no"]
    assert summary["epochs"] >= 1 and summary["warmup_epochs"] < summary["epochs"]
    steps = [run["steps"] for run in summary["runs"]]
    assert summary["same_steps"] and steps == [summary["epochs"] * 8] * 2
    assert [run["c"] for run in summary["runs"]] == [1.0, 9.0]  # byol: c1, then its cut
    assert all(run["knn"] and run["knn"][-1]["step"] == steps[0] for run in summary["runs"])
    assert 0 <= summary["baselines"]["raw_pixels_knn"] <= 1
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
        results = [n for n in names if n.endswith("/result.json")]
        assert len(results) == 4  # two probes, two runs
        assert names.count("baselines/baselines.json") == 1  # computed once
        for name in results:
            handle = tar.extractfile(name)
            assert handle is not None
            result = json.loads(handle.read())
            assert not result.get("baselines")  # the runs skip them (--no-baselines)
    assert "unrecognized arguments" not in (out / "log.txt").read_text()
