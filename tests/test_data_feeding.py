"""Every rank x DataLoader worker gets data from a ONE-file dataset (issue 16, item 1).

2 processes x 2 workers read a one-file, one-row-group Parquet dataset: all four workers deliver
batches, their examples are disjoint and together the whole split, every epoch; a loader resumed
from a mid-epoch ``state_dict`` yields exactly the rest. ~15 s on one thread.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pyarrow.parquet as pq
import torch
from proc_group import run_processes

from hub_cutinit.data import make_train_loader, resolve_dataset
from hub_cutinit.data.pipeline import build_train_stream, shard_for_workers
from hub_cutinit.data.resolve import _builtin_files

ROWS, BATCH, WORKERS = 96, 4, 2


def _one_file(tmp_path: Path, row_group_size: int | None = None) -> str:
    table = pq.read_table(_builtin_files("test")[0]).slice(0, ROWS)
    path = tmp_path / "one.parquet"
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def _tag_worker(image: object) -> list[torch.Tensor]:
    """A 'view' that says which DataLoader worker made it."""
    info = torch.utils.data.get_worker_info()
    return [torch.tensor([-1 if info is None else info.id])]


def _loader(path: str, rank: int, world: int):
    stream = build_train_stream(
        path,
        method="simclr",
        image_size=8,
        rank=rank,
        world_size=world,
        num_workers=WORKERS,
        shuffle_buffer=8,
    )
    stream.transform = _tag_worker
    return make_train_loader(stream, BATCH, num_workers=WORKERS, persistent_workers=True)


def _read(rank: int, world: int, path: str) -> dict:
    """Per epoch: {worker: ids}; plus a mid-epoch resume of epoch 1 (rest vs resumed)."""
    loader, out = _loader(path, rank, world), {"shards": None}
    out["shards"] = loader.dataset.num_shards
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        by_worker: dict[int, list[int]] = {}
        state, rest = None, []
        for i, batch in enumerate(loader):
            (worker,) = set(batch["views"][0].flatten().tolist())
            by_worker.setdefault(worker, []).extend(batch["id"].tolist())
            if epoch == 1 and i == 2:
                state = loader.state_dict()
            elif state is not None:
                rest.append(batch["id"].tolist())
        out[epoch] = by_worker
    resumed = _loader(path, rank, world)
    resumed.set_epoch(1)
    resumed.load_state_dict(state)
    out["rest"], out["resumed"] = rest, [b["id"].tolist() for b in resumed]
    return out


def test_two_processes_two_workers_one_file(tmp_path: Path) -> None:
    path = _one_file(tmp_path)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    results = run_processes(_read, 2, path)
    all_ids = set(pq.read_table(path, columns=["id"])["id"].to_pylist())
    for epoch in (0, 1):
        shares = [ids for r in results for ids in r[epoch].values()]
        assert [sorted(r[epoch]) for r in results] == [[0, 1], [0, 1]]  # all 4 workers fed
        assert all(len(ids) == ROWS // 4 for ids in shares)  # 96 rows -> 24 per worker
        assert sum(len(ids) for ids in shares) == len(set().union(*shares)) == ROWS
        assert set().union(*shares) == all_ids  # disjoint and complete
    assert [r[0] for r in results] != [r[1] for r in results]  # a new order per epoch
    for r in results:
        assert r["shards"] >= WORKERS
        assert r["rest"] and r["resumed"] == r["rest"]  # exact resume


def test_reshard_by_row_group_before_reloading(tmp_path: Path) -> None:
    path = _one_file(tmp_path, row_group_size=8)
    ds, image_col, label_col = resolve_dataset(path, "train")
    assert ds.num_shards == 1
    resharded = shard_for_workers(ds, path, "train", image_col, label_col, 4)
    assert resharded.num_shards == ROWS // 8  # one shard per row group
    reloaded = shard_for_workers(ds, path, "train", image_col, label_col, 16)
    assert reloaded.num_shards == 32  # row ranges of the Arrow copy: a multiple of 16, >= 24
    assert sum(1 for _ in reloaded) == ROWS


def test_uint8_views_normalised_on_the_device_equal_the_float_views() -> None:
    """The trainer's stream sends uint8; ``normalize_views`` (in ``training_step``, before the
    convergence probe is taken) gives exactly the float transform's tensors."""
    from hub_cutinit.data import normalize_views

    kwargs = {"method": "dino", "image_size": 32, "num_local_views": 2, "shuffle_buffer": 16}
    floats = build_train_stream("builtin", **kwargs)
    uint8 = build_train_stream("builtin", uint8=True, **kwargs)
    for a, b in zip(islice(floats, 3), islice(uint8, 3), strict=True):
        assert a["id"] == b["id"] and all(v.dtype == torch.uint8 for v in b["views"])
        normalised = normalize_views([v[None] for v in b["views"]])
        for x, y in zip(a["views"], normalised, strict=True):
            assert x.dtype == y.dtype == torch.float32 and torch.equal(x, y[0])
