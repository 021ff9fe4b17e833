"""Tests of hub_cutinit.data: dataset resolution, sharding, shuffling, decoding, views, resume."""

from __future__ import annotations

import doctest
import importlib
import io
import pickle
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hub_cutinit.data import (
    SSLImageStream,
    builtin_dataset_dir,
    class_names,
    decode_image,
    detect_columns,
    local_crop_size,
    make_eval_loader,
    make_eval_transform,
    make_train_loader,
    make_view_transform,
    num_examples,
    resolve_dataset,
    to_rgb,
)

ODD_MODES = ["L", "LA", "RGBA", "CMYK", "I;16", "P", "1", "I", "F", "RGB"]


def tiny(image: Image.Image) -> torch.Tensor:
    """A cheap 'transform' (module level: picklable for DataLoader workers)."""
    return torch.tensor([image.size[0]], dtype=torch.float32)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def ids_of(stream: SSLImageStream) -> list[int]:
    return [int(s["id"]) for s in stream]


def stream_of(split: str = "train", **kw) -> SSLImageStream:
    ds, image_col, label_col = resolve_dataset("builtin", split)
    return SSLImageStream(ds, tiny, image_column=image_col, label_column=label_col, **kw)


def write_parquet(folder: Path, images: list[dict], labels: list[int], name: str) -> None:
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    folder.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(folder / name))


# -- built-in dataset ---------------------------------------------------------------------------


def test_builtin_files_are_small_and_documented():
    root = builtin_dataset_dir()
    total = sum(p.stat().st_size for p in root.iterdir())
    assert total <= 10 * 1024 * 1024
    assert len(list(root.glob("train-*-of-00004.parquet"))) == 4
    assert "MIT" in (root / "README.md").read_text()
    assert "Zalando" in (root / "LICENSE").read_text()


@pytest.mark.parametrize("split,count", [("train", 10_000), ("test", 2_000)])
def test_builtin_resolves_with_columns_and_counts(split, count):
    ds, image_col, label_col = resolve_dataset("builtin", split)
    assert (image_col, label_col) == ("image", "label")
    assert ds.features[image_col] == datasets.Image(decode=False)
    assert len(class_names(ds, label_col)) == 10
    assert num_examples(ds) == count
    labels = [ex["label"] for ex in ds.select_columns(["label"])]
    assert len(labels) == count
    assert set(Counter(labels).values()) == {count // 10}  # class-balanced


def test_missing_split_lists_splits():
    with pytest.raises(ValueError, match=r"available splits: \['test', 'train'\]"):
        resolve_dataset("builtin", "validation")


# -- sharding and shuffling ---------------------------------------------------------------------


def test_two_ranks_split_the_epoch_exactly_once():
    everything = {ex["id"] for ex in resolve_dataset("builtin", "train")[0].select_columns(["id"])}
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            stream = stream_of(rank=rank, world_size=2, seed=3)
            stream.set_epoch(epoch)
            seen.append(ids_of(stream))
        assert len(seen[0]) == len(seen[1]) == 5_000  # whole shards: balanced ranks
        assert not set(seen[0]) & set(seen[1])
        assert Counter(seen[0] + seen[1]) == Counter(everything)


def test_three_ranks_fall_back_to_examples_and_stay_exact():
    everything = [ex["id"] for ex in resolve_dataset("builtin", "test")[0].select_columns(["id"])]
    seen = [ids_of(stream_of("test", rank=r, world_size=3, seed=0)) for r in range(3)]
    assert sorted(sum(seen, [])) == sorted(everything)
    assert max(map(len, seen)) - min(map(len, seen)) <= 1


def test_epochs_and_seeds_change_the_order_deterministically():
    def order(seed: int, epoch: int) -> list[int]:
        stream = stream_of("test", seed=seed, shuffle_buffer=500)
        stream.set_epoch(epoch)
        return ids_of(stream)

    first = order(0, 0)
    assert first == order(0, 0)
    assert order(0, 1) == order(0, 1)
    assert first != order(0, 1)
    assert first != order(1, 0)
    assert sorted(first) == sorted(order(0, 1)) == sorted(order(1, 0))
    unshuffled = ids_of(stream_of("test", shuffle=False))
    assert first != unshuffled and sorted(first) == sorted(unshuffled)


def test_ranks_times_workers_see_every_sample_once_per_epoch():
    everything = sorted(
        ex["id"] for ex in resolve_dataset("builtin", "train")[0].select_columns(["id"])
    )
    loaders = []
    for rank in (0, 1):
        stream = stream_of(rank=rank, world_size=2, seed=0)
        loaders.append(make_eval_loader(stream, 500, num_workers=2, persistent_workers=True))
    orders = []
    for epoch in (0, 1):
        ids = []
        for loader in loaders:
            loader.set_epoch(epoch)
            ids.append(torch.cat([b["id"] for b in loader]).tolist())
        assert len(ids[0]) == len(ids[1]) == 5_000
        assert sorted(ids[0] + ids[1]) == everything
        orders.append(ids[0])
    assert orders[0] != orders[1]  # persistent workers see the new epoch


def test_stream_pickles_for_spawned_workers():
    stream = stream_of("test", seed=2)
    stream.set_epoch(3)
    clone = pickle.loads(pickle.dumps(stream))
    assert clone.epoch == 3
    assert ids_of(clone)[:50] == ids_of(stream)[:50]


def test_rank_validation():
    with pytest.raises(ValueError, match="rank"):
        stream_of(rank=2, world_size=2)


# -- decoding and corrupt images ----------------------------------------------------------------


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    good = png(Image.new("RGB", (12, 12), (200, 10, 10)))
    bad = [b"not an image", good[: len(good) // 2], b""]
    images, labels = [], []
    for i in range(10):
        images.append({"bytes": bad.pop() if i in (0, 3, 4) else good, "path": None})
        labels.append(i % 3)
    write_parquet(tmp_path / "data", images, labels, "train-00000-of-00001.parquet")
    ds, image_col, label_col = resolve_dataset(str(tmp_path / "data"), "train")
    stream = SSLImageStream(
        ds,
        make_view_transform("simclr", 8),
        image_column=image_col,
        label_column=label_col,
        shuffle=False,
    )
    samples = list(stream)
    assert len(samples) == 7
    assert sum(s["num_corrupt"] for s in samples) == 3
    assert [s["num_corrupt"] for s in samples[:3]] == [1, 0, 2]  # reported with the next sample
    assert [s["label"] for s in samples] == [1, 2, 2, 0, 1, 2, 0]
    loader = make_train_loader(stream, batch_size=3)
    batches = list(loader)
    assert [b["views"][0].shape[0] for b in batches] == [3, 3]  # full batches, drop_last
    assert loader.num_corrupt == 3 and sum(b["num_corrupt"] for b in batches) == 3


def test_all_corrupt_raises_a_clear_error(tmp_path):
    images = [{"bytes": b"junk", "path": None}] * 6
    write_parquet(tmp_path / "d", images, [0] * 6, "train-00000-of-00001.parquet")
    ds, image_col, label_col = resolve_dataset(str(tmp_path / "d"), "train")
    stream = SSLImageStream(ds, tiny, image_column=image_col, max_initial_failures=5)
    with pytest.raises(RuntimeError, match="--image-column"):
        list(stream)


@pytest.mark.parametrize("mode", ODD_MODES)
def test_odd_pil_modes_give_rgb_views(mode):
    image = Image.new(mode, (20, 24))
    if mode == "P":
        image.info["transparency"] = 0
    assert to_rgb(image).mode == "RGB"
    views = make_view_transform("byol", 16)(image)
    assert len(views) == 2
    for view in views:
        assert view.shape == (3, 16, 16) and view.dtype == torch.float32
        assert torch.isfinite(view).all()
    assert make_eval_transform(16)(image).shape == (3, 16, 16)


@pytest.mark.parametrize("mode", ["I;16", "LA", "RGBA", "P", "L", "1"])
def test_encoded_odd_modes_decode_to_rgb(mode):
    arr = (np.arange(6 * 5) * 2000 % 65535).reshape(6, 5)
    image = Image.fromarray(arr.astype(np.uint16)) if mode == "I;16" else Image.new(mode, (5, 6))
    decoded = to_rgb(decode_image({"bytes": png(image), "path": None}))
    assert decoded.mode == "RGB" and decoded.size == (5, 6)
    if mode == "I;16":  # scaled to 8 bits, not clipped to white
        assert len(set(np.asarray(decoded)[..., 0].ravel().tolist())) > 2


def test_cmyk_jpeg_decodes():
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, format="JPEG")
    assert to_rgb(decode_image(buf.getvalue())).mode == "RGB"


# -- views --------------------------------------------------------------------------------------


def test_dino_multi_crop_sizes():
    transform = make_view_transform("dino", 32, num_local_views=3)
    views = transform(Image.new("RGB", (40, 30)))
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert transform.num_views == (2, 3)
    assert local_crop_size(224) == 96 and local_crop_size(64) == 24 and local_crop_size(16) == 16
    ds, image_col, label_col = resolve_dataset("builtin", "test")
    stream = SSLImageStream(ds, transform, image_column=image_col, label_column=label_col)
    batch = next(iter(make_train_loader(stream, batch_size=4)))
    assert [tuple(v.shape) for v in batch["views"]] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="simclr"):
        make_view_transform("nope", 32)


# -- local sources ------------------------------------------------------------------------------


def test_local_image_folder_and_parquet_dir_share_the_path(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    for split, n in (("train", 3), ("test", 2)):
        for c, colour in (("cat", 40), ("dog", 200)):
            (folder / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (9, 7), colour).save(folder / split / c / f"{i}.png")
    (folder / "README.md").write_text("not an image")
    ds, image_col, label_col = resolve_dataset(str(folder), "train")
    assert (image_col, label_col, num_examples(ds)) == ("image", "label", 6)
    assert class_names(ds, label_col) == ["cat", "dog"]
    assert ds.num_shards == 6  # one shard per file: workers and ranks can split a folder
    stream = SSLImageStream(
        ds, make_eval_transform(8), image_column=image_col, label_column=label_col
    )
    samples = list(stream)
    assert sorted((s["id"], s["label"]) for s in samples)[0] == ("train/cat/0.png", 0)
    assert Counter(s["label"] for s in samples) == {0: 3, 1: 3}
    assert all(s["image"].shape == (3, 8, 8) for s in samples)
    with pytest.raises(ValueError, match=r"available splits: \['test', 'train'\]"):
        resolve_dataset(str(folder), "validation")
    glob_ds, _, glob_label = resolve_dataset(str(folder / "test" / "*" / "*.png"), "train")
    assert glob_label == "label" and num_examples(glob_ds) == 4

    pq = tmp_path / "pq"
    image = {"bytes": png(Image.new("RGB", (5, 5))), "path": None}
    write_parquet(pq, [image] * 4, [0, 1, 2, 0], "train-00000-of-00002.parquet")
    write_parquet(pq, [image] * 2, [1, 1], "train-00001-of-00002.parquet")
    write_parquet(pq, [image] * 3, [2, 2, 2], "test-00000-of-00001.parquet")
    for source in (str(pq), str(pq / "train-*.parquet")):
        ds, image_col, label_col = resolve_dataset(source, "train")
        assert (image_col, label_col, num_examples(ds), ds.num_shards) == ("image", "label", 6, 2)
        stream = SSLImageStream(
            ds, make_eval_transform(8), image_column=image_col, label_column=label_col
        )
        assert sorted(s["label"] for s in stream) == [0, 0, 1, 1, 1, 2]
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    eager, _, _ = resolve_dataset(str(pq), "test", streaming=False)
    assert isinstance(eager, datasets.IterableDataset) and num_examples(eager) == 3


def test_save_to_disk_folder(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.Value("int64")})
    image = {"bytes": png(Image.new("RGB", (4, 4))), "path": None}
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"img": [image] * 3, "fine_label": [0, 1, 2]}, features=features
            )
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    ds, image_col, label_col = resolve_dataset(str(tmp_path / "saved"), "train")
    assert (image_col, label_col) == ("img", "fine_label")
    assert sorted(ex["fine_label"] for ex in ds) == [0, 1, 2]
    with pytest.raises(ValueError, match="available splits"):
        resolve_dataset(str(tmp_path / "saved"), "test")


def test_missing_columns_name_the_flag(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"label column 'fine_label' not found.*\['image', 'label', 'id'\].*--label-column",
    ):
        resolve_dataset("builtin", "test", label_column="fine_label")
    with pytest.raises(ValueError, match="--image-column"):
        resolve_dataset("builtin", "test", image_column="pixels")
    text_labels = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    with pytest.raises(ValueError, match="not integer class ids"):
        detect_columns(text_labels)
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (4, 4)).save(folder / f"{i}.png")
    ds, _, label_col = resolve_dataset(str(folder), "train")
    assert label_col is None  # unlabelled is fine for SSL ...
    assert {s["label"] for s in SSLImageStream(ds, tiny, label_column=None)} == {-1}
    with pytest.raises(ValueError, match="--label-column"):  # ... but not for evaluation
        resolve_dataset(str(folder), "train", require_label=True)


# -- resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stateful_loader_resumes_exactly(num_workers):
    def loader_at(epoch: int):
        stream = stream_of("test", seed=5, shuffle_buffer=300)
        loader = make_train_loader(stream, batch_size=64, num_workers=num_workers)
        loader.set_epoch(epoch)
        return loader

    loader = loader_at(1)
    it = iter(loader)
    before = [next(it)["id"] for _ in range(13)]  # past the first block of every worker
    state = loader.state_dict()
    rest = [b["id"] for b in it]
    resumed = loader_at(1)
    resumed.load_state_dict(state)
    again = [b["id"] for b in resumed]
    assert torch.equal(torch.cat(again), torch.cat(rest))
    seen = torch.cat(before + rest).tolist()
    # drop_last drops each worker's partial batch (the test split has 2 shards of 1,000)
    expected = (2_000 // 64) * 64 if num_workers == 0 else 2 * (1_000 // 64) * 64
    assert len(seen) == len(set(seen)) == expected
    finished = resumed.state_dict()
    assert finished["hub_cutinit"]["epoch_finished"]
    next_epoch = loader_at(2)  # a state of another epoch is ignored: a fresh epoch 2
    next_epoch.load_state_dict(finished)
    fresh = loader_at(2)
    assert torch.equal(next(iter(next_epoch))["id"], next(iter(fresh))["id"])


def test_stream_state_dict_round_trip_mid_block():
    stream = stream_of("test", seed=1, shuffle_buffer=128)
    it = iter(stream)
    head = [next(it)["id"] for _ in range(300)]
    state = stream.state_dict()
    tail = [s["id"] for s in it]
    fresh = stream_of("test", seed=1, shuffle_buffer=128)
    fresh.load_state_dict(state)
    assert [s["id"] for s in fresh] == tail
    assert sorted(head + tail) == sorted(ids_of(stream_of("test", shuffle=False)))


@pytest.mark.parametrize("module", ["__init__", "resolve", "transforms", "stream", "pipeline"])
def test_docstring_examples_run(module):
    name = "hub_cutinit.data" + ("" if module == "__init__" else f".{module}")
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
