"""Hub dataset streaming, end to end, against a loopback Hub (tests/hub_dataset_server.py).

The real ``datasets`` and ``huggingface_hub`` clients talk HTTP to ``127.0.0.1``: repo info,
tree / paths-info, ``resolve`` with ``Range`` requests. The dataset ``someuser/fmnist-mini`` is
cut from the built-in shards (4 train shards of 32 rows, 2 test shards of 32 rows).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from hub_dataset_server import (
    FakeDatasetHub,
    fmnist_mini_files,
    point_datasets_at,
    restore_datasets,
)
from hub_server import point_huggingface_hub_at, restore_huggingface_hub

from hub_cutinit.data import build_train_stream, builtin_dataset_dir, resolve_dataset
from hub_cutinit.data.stream import StreamReadError

REPO = "someuser/fmnist-mini"
TOKEN = "hf_fake-someuser-read-token"  # valid only for FakeDatasetHub
ROWS_PER_SHARD = 32


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDatasetHub]:
    """A fresh loopback Hub holding ``someuser/fmnist-mini``; both clients pointed at it.

    The clients' retry waits are shortened (1-8 s -> 10 ms); their retry *logic* is unchanged.
    """
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_file_system as hf_file_system

    server = FakeDatasetHub(tokens={TOKEN: "someuser"}).start()
    server.add_dataset(REPO, fmnist_mini_files(ROWS_PER_SHARD))
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(
        constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens")
    )
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds-cache")
    monkeypatch.setattr(datasets.config, "STREAMING_READ_RETRY_INTERVAL", 0.01)
    monkeypatch.setattr(datasets.config, "STREAMING_READ_SERVER_UNAVAILABLE_RETRY_INTERVAL", 0.01)
    monkeypatch.setattr(datasets.config, "STREAMING_READ_MAX_RETRIES", 3)
    fast = functools.partial(hf_file_system.http_backoff, base_wait_time=0.01, max_wait_time=0.01)
    monkeypatch.setattr(hf_file_system, "http_backoff", fast)
    for name, value in {
        "HF_HUB_CACHE": str(cache),
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "0",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    old_hub, old_ds = point_huggingface_hub_at(server.url), point_datasets_at(server.url)
    try:
        yield server
    finally:
        restore_datasets(old_ds)
        restore_huggingface_hub(old_hub)
        server.stop()


def _expected_ids(split: str) -> set[int]:
    ids: set[int] = set()
    for path in sorted(builtin_dataset_dir().glob(f"{split}-*.parquet")):
        ids |= set(pq.read_table(path, columns=["id"]).slice(0, ROWS_PER_SHARD)["id"].to_pylist())
    return ids


def test_hf_file_system_lists_infos_and_reads_ranges(hub: FakeDatasetHub) -> None:
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem(endpoint=hub.url, token=TOKEN, skip_instance_cache=True)
    root = f"datasets/{REPO}"
    files = hub.files(REPO, repo_type="dataset")
    shard = "data/test-00001-of-00002.parquet"
    info = fs.info(f"{root}/{shard}", refresh=True)  # refresh: paths-info, not the tree
    assert info["type"] == "file" and info["size"] == len(files[shard])
    assert any(r.method == "POST" and "/paths-info/" in r.path for r in hub.requests)
    listed = fs.glob(f"{root}/data/train-*.parquet")  # tree
    assert [p.rsplit("/", 1)[1] for p in listed] == [
        f"train-0000{i}-of-00004.parquet" for i in range(4)
    ]
    assert fs.isdir(f"{root}/data") and not fs.exists(f"{root}/data/nope.parquet")
    with fs.open(f"{root}/{shard}", block_size=1024) as f:
        f.seek(100)
        assert f.read(50) == files[shard][100:150]
    ranges = [r for p, r in hub.range_requests if p.endswith(shard)]
    assert ranges and all(r.startswith("bytes=") for r in ranges)


def test_load_dataset_streams_the_hub_id(hub: FakeDatasetHub) -> None:
    ds, image_col, label_col = resolve_dataset(REPO, "train")
    assert (image_col, label_col, ds.num_shards) == ("image", "label", 4)
    assert ds.info.splits["train"].num_examples == 4 * ROWS_PER_SHARD  # from the card's YAML
    ids = [row["id"] for row in ds]
    assert sorted(ids) == sorted(_expected_ids("train"))
    paths = {r.path for r in hub.requests}
    assert f"/datasets/{REPO}/resolve/main/README.md" in paths
    assert any(p.startswith(f"/api/datasets/{REPO}/tree/") for p in paths)
    assert len({p for p, _ in hub.range_requests}) == 4  # every shard read with Range GETs


def test_two_processes_read_disjoint_shards_that_cover_the_split(hub: FakeDatasetHub) -> None:
    seen = []
    for rank in (0, 1):
        stream = build_train_stream(
            REPO, method="simclr", image_size=16, rank=rank, world_size=2, seed=3
        )
        assert stream.num_shards == 2
        seen.append({int(s["id"]) for s in stream})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == _expected_ids("train")
    assert len(seen[0]) == len(seen[1]) == 2 * ROWS_PER_SHARD


def test_a_recipe_trains_from_the_hub_id(hub: FakeDatasetHub, tmp_path: Path) -> None:
    from hub_cutinit.training import main

    out = tmp_path / "run"
    result = main(
        "simclr",
        [
            "--dataset", REPO,
            "--backbone", "test_resnet",
            "--image-size", "16",
            "--batch-size", "8",
            "--max-steps", "2",
            "--eval-max-samples", "32",
            "--knn-k", "5",
            "--no-baselines",
            "--num-workers", "0",
            "--output-dir", str(out),
        ],
    )  # fmt: skip
    assert result["steps"] == 2 and 0.0 <= result["knn_accuracy"] <= 1.0
    assert (out / "model.safetensors").is_file()
    shards = {p.rsplit("/", 1)[1] for p, _ in hub.range_requests}
    assert any(s.startswith("train-") for s in shards) and any(
        s.startswith("test-") for s in shards
    )


def test_a_5xx_mid_stream_is_retried_and_the_epoch_is_complete(hub: FakeDatasetHub) -> None:
    def read_epoch() -> list[int]:
        stream = build_train_stream(REPO, method="simclr", image_size=16, shuffle_buffer=8)
        return [int(s["id"]) for s in stream]

    read_epoch()
    requests_without_failure = len(hub.range_requests)
    hub.range_requests.clear()
    hub.fail_ranges(1, 500, skip=2)  # the 3rd Range GET fails once: a shard in mid-epoch
    ids = read_epoch()
    assert sorted(ids) == sorted(_expected_ids("train"))  # nothing skipped, nothing repeated
    assert hub.range_failures[0].remaining == 0  # the failure did happen ...
    assert len(hub.range_requests) == requests_without_failure + 1  # ... and was retried


@pytest.mark.parametrize("status", [500, 503])
def test_persistent_5xx_stops_with_an_error_naming_dataset_and_file(
    hub: FakeDatasetHub, status: int
) -> None:
    hub.fail_ranges(1000, status, skip=2)
    stream = build_train_stream(REPO, method="simclr", image_size=16, shuffle_buffer=8)
    got = 0
    with pytest.raises(StreamReadError) as info:
        for _ in stream:
            got += 1
    message = str(info.value)
    assert 0 < got < 4 * ROWS_PER_SHARD  # shards were read, then the stream stopped loudly
    assert got % ROWS_PER_SHARD == 0  # at a shard boundary: no partly read shard yielded
    assert REPO in message and "data/train-0000" in message and ".parquet" in message
    assert "--resume" in message


def test_private_dataset_without_token_gives_a_401_message(
    hub: FakeDatasetHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_dataset("someuser/private-mini", fmnist_mini_files(8), private=True)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(FileNotFoundError) as info:
        resolve_dataset("someuser/private-mini", "train")
    message = str(info.value)
    assert "'someuser/private-mini'" in message and "401" in message
    assert "huggingface-cli login" in message and "HF_TOKEN" in message
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the owner's token opens it
    assert resolve_dataset("someuser/private-mini", "test")[0].num_shards == 2


def test_unknown_hub_id_says_what_to_pass_and_writes_nothing(
    hub: FakeDatasetHub, tmp_path: Path
) -> None:
    from hub_cutinit.training import main

    with pytest.raises(FileNotFoundError) as info:
        resolve_dataset("someuser/no-such-dataset", "train")
    message = str(info.value)
    assert "'someuser/no-such-dataset'" in message and "404" in message
    assert "local folder" in message and "'builtin'" in message and "Hub dataset id" in message

    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no-such-dataset"):
        main("simclr", ["--dataset", "someuser/no-such-dataset", "--backbone", "test_resnet",
                        "--max-steps", "1", "--output-dir", str(out)])  # fmt: skip
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
