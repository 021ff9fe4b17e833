"""Issue 19, item 8: what a newcomer sees. No third-party deprecation warning, baselines in a
sentence, ``inspect`` writes a figure only where asked, the corrupt-image count names the first
files, and a model card of a run shorter than an epoch states the fraction of an epoch."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
from fault_helpers import encode, write_image_parquet
from PIL import Image

from hub_cutinit.cli import main as cli_main
from hub_cutinit.data import (
    SSLImageStream,
    corrupt_count,
    corrupt_examples,
    make_eval_loader,
    make_train_loader,
    resolve_dataset,
)
from hub_cutinit.data.stream import MAX_CORRUPT_EXAMPLES
from hub_cutinit.factory import create_ssl_model
from hub_cutinit.hub import save_pretrained
from hub_cutinit.hub.card import format_epochs
from hub_cutinit.training import TrainConfig
from hub_cutinit.training.report import format_baselines, format_corrupt, print_summary

REPO_ROOT = Path(__file__).resolve().parents[1]
SET_VITAL = "'set_vital' is deprecated"


def size_of(image: Image.Image) -> torch.Tensor:
    """A cheap 'transform' (module level: picklable for DataLoader workers)."""
    return torch.tensor([image.size[0]], dtype=torch.float32)


def write_named_parquet(path: Path, rows: list[tuple[bytes, str | None]]) -> Path:
    """A one-file parquet split whose ``image`` values keep a file name (``path``)."""
    import datasets

    feats = datasets.Features({"image": datasets.Image()})
    images = [{"bytes": data, "path": name} for data, name in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({"image": images}, features=feats).to_parquet(str(path))
    return path


def stream_over(folder: Path) -> SSLImageStream:
    ds, image_col, _ = resolve_dataset(str(folder), "train")
    return SSLImageStream(ds, size_of, image_column=image_col, label_column=None, shuffle=False)


GOOD = encode(Image.new("RGB", (6, 6), (10, 200, 30)))


# -- 1. no third-party deprecation warning --------------------------------------------------------
def test_building_a_loader_raises_no_set_vital_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds, image_col, label_col = resolve_dataset("builtin", "test")
        stream = SSLImageStream(ds.take(8), size_of, image_column=image_col, shuffle=False)
        next(iter(make_eval_loader(stream, 4)))
    assert not [w for w in caught if SET_VITAL in str(w.message)]
    # the filter is scoped: torch's own warning still reaches a caller of torch.set_vital
    with pytest.warns(UserWarning, match=SET_VITAL):
        torch.set_vital("Dataloader", "enabled", "True")  # type: ignore[attr-defined]


def test_a_fresh_interpreter_prints_no_set_vital_warning() -> None:
    code = (
        "from hub_cutinit.data import build_train_stream, make_train_loader\n"
        "stream = build_train_stream('builtin', method='byol', image_size=8, split='test')\n"
        "print(len(next(iter(make_train_loader(stream, batch_size=2)))['label']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "2"
    assert SET_VITAL not in run.stderr and "deprecated" not in run.stderr


# -- 2. baselines in a sentence -------------------------------------------------------------------
def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo", REPO_ROOT / "recipes" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baselines_read_as_a_sentence() -> None:
    baselines = {"random_init_knn": 0.523, "raw_pixels_knn": 0.71}
    sentence = "Baselines (kNN, same protocol): random-init backbone 52.3 %, raw pixels 71.0 %."
    assert format_baselines(baselines) == sentence
    assert format_baselines({}) == ""
    assert format_baselines({"my_probe_knn": 0.5}).endswith("my probe 50.0 %.")
    result = {"knn_accuracy": 0.6, "c": 3.0, "steps": 10, "baselines": baselines}
    lines = load_demo().outcome_lines(result)
    assert sentence in lines
    assert not any("{" in line or "random_init_knn" in line for line in lines)


# -- 3. inspect writes a figure only where asked --------------------------------------------------
INSPECT = ["inspect", "test_resnet", "--batches", "1", "--batch-size", "4", "--image-size", "32"]


def test_inspect_writes_no_file_by_default_and_the_figure_where_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main([*INSPECT, "--c", "1", "3"]) == 0
    assert list(tmp_path.iterdir()) == []
    assert "Plot:" not in capsys.readouterr().out
    figure = tmp_path / "figs" / "norms.png"
    assert cli_main([*INSPECT, "--c", "1", "3", "--figure", str(figure)]) == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert f"Plot: {figure}" in capsys.readouterr().out


def test_inspect_help_names_the_figure_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["inspect", "--help"])
    assert "--figure" in capsys.readouterr().out


# -- 4. corrupt images named ----------------------------------------------------------------------
def test_corrupt_images_are_named_by_their_file(tmp_path: Path) -> None:
    rows = [(b"junk", "bad_0.jpg"), (GOOD, "ok_0.png"), (GOOD[:20], "bad_1.png")]
    rows += [(GOOD, f"ok_{i}.png") for i in range(1, 4)] + [(b"", "bad_2.jpg")]
    write_named_parquet(tmp_path / "d" / "train-00000-of-00001.parquet", rows)
    loader = make_train_loader(stream_over(tmp_path / "d"), batch_size=2)
    assert sum(len(b["label"]) for b in loader) == 4
    assert corrupt_count(loader) == 3
    assert corrupt_examples(loader) == ["bad_0.jpg", "bad_1.png", "bad_2.jpg"]


def test_only_the_first_few_are_named_and_rows_without_a_path_by_position(tmp_path: Path) -> None:
    rows: list[bytes | None] = [b"junk", GOOD, None] + [b"junk"] * 6 + [GOOD] * 3
    write_image_parquet(tmp_path / "d" / "train-00000-of-00001.parquet", rows)
    loader = make_train_loader(stream_over(tmp_path / "d"), batch_size=2)
    list(loader)
    assert corrupt_count(loader) == 8
    names = corrupt_examples(loader)
    assert len(names) == MAX_CORRUPT_EXAMPLES
    assert names[:3] == ["row 0", "row 2 (image missing)", "row 3"]


def test_names_cross_worker_processes_and_survive_a_resume(tmp_path: Path) -> None:
    for shard in range(2):
        rows = [(GOOD, f"s{shard}_ok_{i}.png") for i in range(3)] + [(b"x", f"s{shard}_bad.jpg")]
        write_named_parquet(tmp_path / "d" / f"train-0000{shard}-of-00002.parquet", rows)
    loader = make_train_loader(stream_over(tmp_path / "d"), batch_size=2, num_workers=2)
    list(loader)
    assert corrupt_count(loader) == 2
    assert sorted(corrupt_examples(loader)) == ["s0_bad.jpg", "s1_bad.jpg"]
    saved = loader.state_dict()
    fresh = make_train_loader(stream_over(tmp_path / "d"), batch_size=2, num_workers=2)
    fresh.load_state_dict(saved)
    assert corrupt_examples(fresh) == corrupt_examples(loader)


def test_the_summary_names_the_corrupt_images(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        format_corrupt(2, ["a.png", "b.png"]) == "corrupt images skipped: 2 (first: a.png, b.png)"
    )
    result = {
        "method": "simclr", "dataset": "builtin", "backbone": "resnet18", "c": 3.0,
        "weight_decay": 5e-4, "lr": 0.1, "steps": 4, "epochs": 0, "num_processes": 1,
        "knn_accuracy": 0.6, "baselines": {"random_init_knn": 0.5, "raw_pixels_knn": 0.7},
        "train_images_per_s": 10.0, "wall_time_s": 1.0, "corrupt_images": 7,
        "corrupt_examples": ["cats/1.jpg", "row 12"],
    }  # fmt: skip
    print_summary(result, TrainConfig(method="simclr", output_dir="out"))
    out = capsys.readouterr().out
    assert "corrupt images skipped: 7 (first: cats/1.jpg, row 12, ...)" in out
    assert "Baselines (kNN, same protocol): random-init backbone 50.0 %, raw pixels 70.0 %." in out


# -- 5. a card of a run shorter than an epoch ------------------------------------------------------
def test_format_epochs_states_the_fraction_of_an_epoch() -> None:
    assert format_epochs({"epochs": 0, "steps": 16, "steps_per_epoch": 64}) == (
        "0.25 epoch (16 of 64 steps)"
    )
    assert format_epochs({"epochs": 0, "steps": 16}) == "0"  # epoch length unknown
    assert format_epochs({"epochs": 2, "steps": 128, "steps_per_epoch": 64}) == "2"
    assert format_epochs({}) is None


def test_the_card_of_a_short_run_states_the_fraction(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_ssl_model("simclr", "test_resnet", proj_hidden_dim=32, proj_dim=16)
    info = {"epochs": 0, "steps": 16, "steps_per_epoch": 64, "dataset": "builtin"}
    text = (
        save_pretrained(model, tmp_path / "short", training_info=info) / "README.md"
    ).read_text()
    assert "| epochs | 0.25 epoch (16 of 64 steps) |" in text
    assert "0.25 epoch (16 of 64 steps), 16 steps" in text
    assert "0 epoch(s)" not in text and "| epochs | 0 |" not in text
