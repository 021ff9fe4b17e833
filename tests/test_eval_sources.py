"""Evaluation adapts to the data (issue 12): a test split, a held-out slice, or none for
unlabelled images; ``--eval-dataset``; clear errors for unusable data; flags and help."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from hub_cutinit.data import UndecodableImagesError, check_dataset_spec, default_num_workers
from hub_cutinit.training import TrainConfig, Trainer, build_parser, main

TINY = [
    "--backbone",
    "test_resnet",
    "--image-size",
    "16",
    "--batch-size",
    "8",
    "--max-steps",
    "2",
    "--no-baselines",
    "--set",
    "proj_hidden_dim=32",
]


def _png(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def unlabelled_folder(tmp_path: Path) -> Path:
    """40 small PNGs in one folder: no class sub-folders, so no labels."""
    folder = tmp_path / "my_images"
    folder.mkdir()
    for i in range(40):
        (folder / f"img_{i:03d}.png").write_bytes(_png(i))
    return folder


def _labelled_parquet(folder: Path, n: int = 100, images: list[bytes] | None = None) -> Path:
    """A parquet folder holding only a train split: image, label (3 classes), id."""
    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=["a", "b", "c"]),
            "id": datasets.Value("int64"),
        }
    )
    images = images or [_png(i) for i in range(n)]
    table = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": b, "path": None} for b in images],
            "label": [i % 3 for i in range(len(images))],
            "id": list(range(len(images))),
        },
        features=feats,
    )
    folder.mkdir(parents=True)
    table.to_parquet(str(folder / "train-00000-of-00001.parquet"))
    return folder


def _card(out: Path) -> str:
    return (out / "README.md").read_text()


def test_unlabelled_folder_trains_with_default_flags_and_says_no_evaluation(
    unlabelled_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    result = main("simclr", [*TINY, "--dataset", str(unlabelled_folder), "--output-dir", str(out)])
    assert result["steps"] == 2 and result["knn_accuracy"] is None
    assert result["eval_source"] == "no evaluation (unlabelled data)"
    assert result["final_norms"]["norms"]["backbone"]["mean"] > 0  # norms still tracked
    assert result["convergence"] and "angle/backbone" in result["convergence"][0]
    printed = capsys.readouterr().out
    assert printed.count("--eval-dataset SPEC") == 1  # ONE notice, naming the fix
    training = json.loads((out / "config.json").read_text())["hub_cutinit"]["training"]
    assert training["eval_source"] == "no evaluation (unlabelled data)"
    assert "No evaluation (unlabelled data)" in _card(out)
    assert "--eval-dataset" in _card(out)


def test_eval_dataset_gives_a_knn_accuracy_on_unlabelled_training_data(
    unlabelled_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    flags = ["--eval-dataset", "builtin", "--eval-max-samples", "64", "--knn-k", "10"]
    result = main(
        "simclr", [*TINY, *flags, "--dataset", str(unlabelled_folder), "--output-dir", str(out)]
    )
    assert 0.0 <= result["knn_accuracy"] <= 1.0
    assert result["knn"][-1]["eval_test_samples"] == 64
    assert result["eval_dataset"] == "builtin"
    assert result["eval_source"] == "kNN: bank 'train', test 'test' of builtin"
    assert "kNN accuracy" in _card(out) and "kNN: bank 'train'" in _card(out)


def _ids(loader) -> list[int]:
    return [int(i) for batch in loader for i in batch["id"]]


def test_train_only_parquet_holds_out_a_disjoint_seeded_slice(tmp_path: Path) -> None:
    data = _labelled_parquet(tmp_path / "labelled")
    cfg = TrainConfig(
        method="simclr",
        backbone="test_resnet",
        dataset=str(data),
        image_size=16,
        batch_size=8,
        max_steps=2,
        baselines=False,
        knn_k=5,
        output_dir=str(tmp_path / "run"),
        overrides={"proj_hidden_dim": 32},
    )
    trainer = Trainer(cfg)
    trainer.setup()
    held = trainer.record.eval_held_out_images
    bank_loader, test_loader = trainer.eval_sets
    test_ids, bank_ids = _ids(test_loader), _ids(bank_loader)
    trainer.loader.set_epoch(0)
    trained_ids = _ids(trainer.loader)  # everything one epoch of training reads
    assert held == len(test_ids) and 0 < held < 30  # ~10 % of 100
    assert not set(test_ids) & set(trained_ids)  # never trained on
    assert sorted(bank_ids + test_ids) == list(range(100))
    assert set(trained_ids) <= set(bank_ids) and len(trained_ids) == (100 - held) // 8 * 8
    assert trainer.num_examples == 100 - held
    assert trainer.record.eval_source == (
        f"held-out 10% of train ({held} images, seed 0), not trained on"
    )
    # the same slice in a full run, recorded in config.json, scored by kNN
    result = Trainer(cfg).train()
    assert result["knn"][-1]["eval_test_samples"] == held
    training = json.loads((tmp_path / "run" / "config.json").read_text())["hub_cutinit"]
    assert training["training"]["eval_held_out_images"] == held
    assert training["training"]["eval_source"] == trainer.record.eval_source


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))


def test_a_folder_without_images_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "empty_photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("no images here")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"'.*empty_photos'.*doesn't contain any data files") as e:
        main("simclr", [*TINY, "--dataset", str(folder), "--output-dir", str(out)])
    assert "--dataset accepts" in str(e.value) and "Hub dataset id" in str(e.value)
    _assert_nothing_written(out)


def test_an_image_column_without_a_decodable_image_is_a_clear_error(tmp_path: Path) -> None:
    data = _labelled_parquet(tmp_path / "junk_images", images=[b"not an image"] * 20)
    out = tmp_path / "run"
    with pytest.raises(UndecodableImagesError, match=r"junk_images.*'image'.*--image-column"):
        main("simclr", [*TINY, "--dataset", str(data), "--output-dir", str(out)])
    _assert_nothing_written(out)


# -- flags and help -------------------------------------------------------------------------------
def test_help_shows_only_meaningful_defaults() -> None:
    text = build_parser("byol").format_help()
    for wrong in ("(default: None)", "(default: True)", "(default: False)", "(default: [])"):
        assert wrong not in text
    assert "--eval-dataset SPEC" in text and "--num-workers N" in text
    parser = build_parser("byol")
    undocumented = [a.option_strings[0] for a in parser._actions if not a.help]
    assert undocumented == [], "every flag says what it does"


@pytest.mark.parametrize(
    "spec, error", [("./no_such_folder", FileNotFoundError), ("not a dataset!", ValueError)]
)
def test_bad_dataset_lists_what_it_accepts(spec: str, error: type[Exception], tmp_path) -> None:
    with pytest.raises(error) as e:
        check_dataset_spec(spec)
    for kind in ("'builtin'", "Hub dataset id", "folder of images", "parquet or arrow"):
        assert kind in str(e.value)
    assert spec in str(e.value)


def test_num_workers_default_follows_the_device(tmp_path: Path) -> None:
    assert default_num_workers("cuda", processes_per_node=2, cpus=16) == 7
    assert default_num_workers("cuda", processes_per_node=8, cpus=8) == 0
    assert default_num_workers("cuda", cpus=64, num_shards=3) == 3
    assert default_num_workers("cpu", cpus=64) == 0
    cfg = TrainConfig(
        method="simclr",
        backbone="test_resnet",
        image_size=16,
        batch_size=8,
        max_steps=1,
        eval_split=None,
        output_dir=str(tmp_path),
    )
    trainer = Trainer(cfg)
    trainer.setup()
    assert cfg.num_workers is None and trainer.record.num_workers == 0  # resolved, on CPU
