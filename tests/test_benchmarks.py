"""Smoke tests of the benchmark scripts (recipes/benchmarks): each runs with ``--quick`` and
writes a JSON result with the expected keys. They check that the scripts work, not the
numbers (tiny settings measure nothing). About a minute on an idle 2-core machine."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], ModuleType]]:
    """Import ``recipes.benchmarks.<name>`` with the repository root on ``sys.path``.

    Afterwards the torch thread count and Accelerate's process-wide state are restored, so the
    benchmarks' ``set_num_threads`` and ``Accelerator(cpu=True)`` do not leak into other tests.
    """
    import torch
    from accelerate.state import AcceleratorState

    monkeypatch.syspath_prepend(str(REPO))
    threads = torch.get_num_threads()

    def load(name: str) -> ModuleType:
        return importlib.import_module(f"recipes.benchmarks.{name}")

    yield load
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(reset_partial_state=True)


def run(bench, name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    # one thread: a smoke test, and 2 threads on 2 busy cores can be 15x slower (OMP spinning)
    returned = bench(name).main(["--quick", "--threads", "1", "--out", str(out), *extra])
    stored = json.loads(out.read_text(encoding="utf-8"))
    assert stored["benchmark"] == name
    assert {"env", "config", "summary"} <= set(stored)
    assert stored["summary"] and all(
        {"benchmark", "metric", "value", "unit", "target", "ok"} <= set(r)
        for r in stored["summary"]
    )
    assert returned["summary"] == stored["summary"]
    return stored


def test_common_helpers(bench) -> None:
    common = bench("common")
    samples = common.interleaved({"a": lambda: None, "b": lambda: None}, repeats=4, warmup=0)
    assert [len(v) for v in samples.values()] == [4, 4]
    assert common.ratio([2.0, 4.0], [1.0, 2.0]) == {
        "median_ratio": 2.0,
        "paired_median": 2.0,
        "paired_ci95": [2.0, 2.0],
    }
    # the interval covers the spread of the paired ratios and holds their median
    spread = common.ratio([1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0], [1.0] * 7)
    low, high = spread["paired_ci95"]
    assert 0.8 <= low <= spread["paired_median"] == 1.0 <= high <= 1.2 and high - low > 0
    # a cost in one round of ten (a monitor reading) is dropped by the median, kept by the total
    slow_once = [1.0] * 9 + [2.0]
    assert common.ratio([1.0] * 10, slow_once)["paired_median"] == 1.0
    total = common.total_time_ratio(slow_once, [1.0] * 10)
    assert total["total_ratio"] == 10 / 11
    low, high = total["total_ci95"]
    assert 10 / 14 <= low < 10 / 11 <= high == 1.0  # resampling draws the slow round 0-3 times
    budgeted = common.interleaved({"a": lambda: None}, repeats=100, budget_s=0.0, min_repeats=3)
    assert len(budgeted["a"]) == 3
    assert "ok" in common.format_table([common.row("x", "y", 1.0, ok=True)])


def test_train_step(bench, tmp_path: Path) -> None:
    res = run(bench, "train_step", tmp_path, "--methods", "simclr", "byol")
    for method in ("simclr", "byol"):
        entry = res["methods"][method]
        assert {"hub", "hand"} <= set(entry["images_per_s"])
        assert "hub_vs_hand" in entry["ratios"] and "hub_vs_hand_twin" not in entry["ratios"]
        ratio = entry["ratios"]["hub_vs_hand"]
        low, high = ratio["total_ci95"]
        assert low <= ratio["total_ratio"] <= high
        # the A/A control: a second, identical hand-written loop timed in the same rounds
        assert set(entry["control"]) == {
            "median_ratio",
            "paired_median",
            "paired_ci95",
            "total_ratio",
            "total_ci95",
        }
        assert entry["first_loss"]["hand_twin"] == entry["first_loss"]["hand"]
        assert entry["same_computation"], entry["first_loss"]  # same weights, same loss
        assert all(v["median"] > 0 for v in entry["images_per_s"].values())


def test_step_overhead_components(bench) -> None:
    """Each default's own work is timed and priced as a share of the step; the fused
    optimiser is a saving (negative share) and the monitor is charged at its budget."""
    so = bench("step_overhead")
    small = {"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 16}
    result = so.component_costs(
        "byol", batch_size=8, repeats=2, backbone="test_resnet", overrides=small
    )
    ms, shares = result["ms"], result["share_of_step"]
    assert set(ms) == {"step", "guard", "statistics", "reading", "fused_sgd", "default_sgd"}
    assert all(v > 0 for v in ms.values())
    assert shares["monitor (amortised)"] <= 0.01 + 1e-12  # --monitor-budget's default
    assert shares["guard"] == pytest.approx(ms["guard"] / ms["step"])
    assert result["net_share"] == pytest.approx(sum(shares.values()))


def test_overhead(bench, tmp_path: Path) -> None:
    res = run(bench, "overhead", tmp_path, "--methods", "simclr")
    assert 0 < res["norm_tracking"]["simclr"]["share_of_step"] < 1
    assert "overhead_s" in res["framework"]["simclr"]
    knn = res["knn"]
    assert knn["bank_images"] == 128 and knn["test_images"] == 128
    assert knn["knn_share_of_epoch"] > 0


def test_data_pipeline(bench, tmp_path: Path) -> None:
    res = run(bench, "data_pipeline", tmp_path, "--workers", "0", "1")
    assert set(res["loader"]) == {"workers=0", "workers=1"}
    assert res["loader"]["workers=0"]["images_per_s"]["median"] > 0
    assert set(res["end_to_end"]["vs_in_memory"]) == {"workers=0", "workers=1"}
    assert isinstance(res["loader_is_bottleneck"], bool)
    per_core = res["per_core"]["results"]
    assert set(per_core) == {"simclr 32", "dino 32", "simclr 224", "dino 224"}
    for key, entry in per_core.items():
        ips = entry["images_per_s_per_core"]
        assert {"decode", "pil", "worker"} < set(ips) and all(v["median"] > 0 for v in ips.values())
        if key.endswith("224"):  # N from the cited benchmark (or a stored GPU measurement)
            n = entry["step"]["value"]
            assert n > 0 and set(entry["cores_needed"]) == {"decode only", "pil", "device"}
            assert entry["cores_needed"]["pil"] == pytest.approx(n / ips["pil"]["median"])
    if "cited" in per_core["simclr 224"]["step"]["source"]:  # 2 views of 224 px per image
        assert per_core["simclr 224"]["step"]["value"] == pytest.approx(2470 / 2)
    assert "| simclr | 224 |" in res["per_core"]["markdown"]


def test_data_pipeline_inputs(bench) -> None:
    dp = bench("data_pipeline")
    from PIL import Image

    jpegs = dp.encoded_images(224, 2)
    assert len(jpegs) == 2 and jpegs[0] != jpegs[1]
    image = Image.open(__import__("io").BytesIO(jpegs[0]))
    assert (image.format, image.size) == ("JPEG", (320, 240))
    from hub_cutinit.data.device_augment import make_device_view_transform

    spec = make_device_view_transform("dino", 224, num_local_views=6).spec
    assert dp.view_cost(spec, 224) == pytest.approx(2 + 6 * (96 / 224) ** 2)


def test_memory(bench, tmp_path: Path) -> None:
    res = run(bench, "memory", tmp_path, "--implementations", "hub", "hand")
    assert set(res["configs"]) == {"simclr hub batch 8", "simclr hand batch 8"}
    for entry in res["configs"].values():
        assert entry["peak_mb"] > 0


def test_cut_init_time(bench, tmp_path: Path) -> None:
    res = run(bench, "cut_init_time", tmp_path)
    assert set(res["models"]) == {"test_vit", "resnet18"}
    for entry in res["models"].values():
        assert entry["num_params"] > 0 and entry["cut_init_s"]["median"] > 0
        if entry["peak_increase_mb"] is not None:  # Linux: no copy of the weights
            limit = bench("cut_init_time").no_copy_limit_mb(entry["param_mb"])
            assert entry["peak_increase_mb"] <= limit, entry


def test_gpu_bench_without_cuda(bench, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: gpu_bench would run for real")
    with pytest.raises(SystemExit) as exit_info:
        bench("gpu_bench").main(["--out", str(REPO / "never-written.json")])
    assert exit_info.value.code == 1
    assert "no CUDA device" in capsys.readouterr().err
    assert sys.modules.get("recipes.benchmarks.gpu_bench") is not None


def test_gpu_bench_quick(bench, tmp_path: Path) -> None:
    """The smoke mode (CPU without a GPU): both data paths, hub and hand, both methods."""
    res = run(bench, "gpu_bench", tmp_path)
    assert not hasattr(bench("gpu_bench"), "HubAsyncRunner")
    cfg = res["config"]
    assert cfg["paths"] == ["cpu", "device"] and cfg["implementations"] == ["hub", "hand"]
    for method in ("simclr", "byol"):
        (entry,) = [v for k, v in res["results"].items() if k.startswith(method + " ")]
        assert set(entry["images_per_s"]) == {"hub cpu", "hand cpu", "hub device", "hand device"}
        assert all(v["median"] > 0 for v in entry["images_per_s"].values())
        assert {"hub/hand cpu", "hub/hand device", "hub device/cpu"} <= set(entry["ratios"])
        assert entry["same_computation"], entry["first_loss"]  # same weights, same first loss


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")
def test_allocator_toggle(bench) -> None:
    """Both loops are timed with mmap allowed and off; with it off (the tuning's setting, left on
    afterwards) a step takes next to no page faults."""
    result = bench("allocator").measure("simclr", blocks=2, steps=1, batch_size=8)
    assert set(result) == {"hub", "hand"}
    for row in result.values():
        assert row["ms_mmap_on"] > 0 and row["ms_mmap_off"] > 0
        assert row["faults_mmap_off"] < 1_000
        low, high = row["speedup_ci95"]
        assert low <= row["speedup_paired_median"] <= high
