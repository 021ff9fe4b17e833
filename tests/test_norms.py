"""Tests of hub_cutinit.norms: streaming norm statistics, merging, multi-process reduction."""

from __future__ import annotations

import json
import math
import os
import socket
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hub_cutinit.norms import NormHistory, NormTracker, row_norms

BIN_LOG_WIDTH = 1 / 100  # default bins_per_decade = 100


def _data(seed: int, n: int, d: int = 16, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Log-normal spread of norms over about two decades.
    directions = torch.randn(n, d, generator=g)
    radii = torch.exp(torch.randn(n, 1, generator=g)) * scale
    return directions / directions.norm(dim=1, keepdim=True) * radii


def _check_against_numpy(summary: dict, norms: np.ndarray, *, rtol: float = 1e-12) -> None:
    norms = norms.astype(np.float64)
    assert summary["count"] == len(norms)
    assert summary["nonfinite"] == 0
    np.testing.assert_allclose(summary["mean"], norms.mean(), rtol=rtol)
    np.testing.assert_allclose(summary["std"], norms.std(), rtol=max(rtol, 1e-10))
    assert summary["min"] == norms.min()
    assert summary["max"] == norms.max()
    for key, q in (("p05", 0.05), ("p50", 0.5), ("p95", 0.95)):
        true = np.quantile(norms, q)
        # The estimate lies in the bin of the target rank; np.quantile interpolates between
        # neighbouring order statistics, so allow one bin width (log10 units) plus rounding.
        assert abs(math.log10(summary[key]) - math.log10(true)) <= BIN_LOG_WIDTH * 1.001, key


def test_row_norms_match_numpy_and_flatten_leading_dims():
    z = _data(0, 50)
    np.testing.assert_allclose(
        row_norms(z).numpy(), np.linalg.norm(z.numpy().astype(np.float64), axis=1), rtol=1e-6
    )
    tokens = torch.randn(3, 5, 4)
    assert row_norms(tokens).shape == (15,)
    assert row_norms(z.half()).dtype == torch.float32
    z.requires_grad_(True)
    assert not row_norms(z * 2).requires_grad


def test_summary_matches_numpy_on_random_data():
    tracker = NormTracker()
    chunks = [_data(s, n) for s, n in [(1, 100), (2, 37), (3, 1), (4, 400)]]
    for z in chunks:
        tracker.update({"projection": z, "backbone": z[:, :8]})
    all_z = torch.cat(chunks)
    summary = tracker.summary()
    _check_against_numpy(summary["projection"], row_norms(all_z).numpy(), rtol=1e-12)
    _check_against_numpy(summary["backbone"], row_norms(all_z[:, :8]).numpy(), rtol=1e-12)
    assert tracker.names == ["projection", "backbone"]


def test_merge_equals_one_tracker_on_concatenation():
    a, b = _data(10, 300), _data(11, 123, scale=50.0)
    one = NormTracker()
    one.update({"z": torch.cat([a, b])})
    left, right = NormTracker(), NormTracker()
    left.update({"z": a})
    right.update({"z": b, "only_right": b})
    merged = left.merge(right).summary()
    expected = one.summary()["z"]
    for key in ("count", "min", "max", "nonfinite"):
        assert merged["z"][key] == expected[key]
    for key in ("mean", "std"):
        np.testing.assert_allclose(merged["z"][key], expected[key], rtol=1e-12)
    for key in ("p05", "p50", "p95"):
        assert abs(math.log10(merged["z"][key]) - math.log10(expected[key])) <= 1e-9
    assert merged["only_right"]["count"] == 123
    # `right` is not modified by the merge.
    assert right.summary()["z"]["count"] == 123


def test_deferred_updates_equal_one_fold_per_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """update() only stores norms; the statistics a read folds in equal reading after every
    update, and the pending norms are folded in once they reach the row limit."""
    import hub_cutinit.norms as norms_module

    chunks = [_data(s, n, scale=10.0 ** (s % 3)) for s, n in [(1, 64), (2, 64), (3, 5), (4, 200)]]
    deferred, eager = NormTracker(), NormTracker()
    for z in chunks:
        deferred.update({"z": z})
        eager.update({"z": z})
        eager.summary()  # a read folds every pending batch in
    assert len(deferred._pending["z"]) == len(chunks) and not eager._pending
    got, want = deferred.summary()["z"], eager.summary()["z"]
    assert not deferred._pending
    for key in ("count", "min", "max", "nonfinite", "p05", "p50", "p95"):
        assert got[key] == want[key], key
    for key in ("mean", "std"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12)
    all_norms = row_norms(torch.cat(chunks)).double().numpy()
    assert got["count"] == len(all_norms) and got["max"] == all_norms.max()
    np.testing.assert_allclose(got["mean"], all_norms.mean(), rtol=1e-12)

    monkeypatch.setattr(norms_module, "_MAX_PENDING_ROWS", 100)
    bounded = NormTracker()
    bounded.update_norms({"z": torch.ones(60)})
    assert bounded._pending_rows == 60
    bounded.update_norms({"z": torch.ones(60)})  # 120 >= 100: folded in
    assert bounded._pending_rows == 0 and not bounded._pending
    assert bounded.summary()["z"]["count"] == 120


def test_merge_rejects_other_histogram_settings():
    with pytest.raises(ValueError, match="same arguments"):
        NormTracker().merge(NormTracker(bins_per_decade=10))


def test_numerically_stable_for_large_offsets():
    # Norms near 1e3 with a spread of 1e-3: a naive sum-of-squares formula loses every digit.
    n = 10_000
    g = torch.Generator().manual_seed(0)
    z = torch.zeros(n, 2, dtype=torch.float64)
    z[:, 0] = 1e3 + 1e-3 * torch.randn(n, generator=g, dtype=torch.float64)
    tracker = NormTracker()
    for chunk in z.split(7):
        tracker.update({"z": chunk})
    s = tracker.summary()["z"]
    np.testing.assert_allclose(s["std"], z[:, 0].numpy().std(), rtol=1e-6)


def test_nonfinite_rows_are_counted_not_averaged():
    z = torch.tensor([[3.0, 4.0], [float("nan"), 1.0], [float("inf"), 0.0], [0.0, 1.0]])
    tracker = NormTracker()
    tracker.update({"z": z})
    s = tracker.summary()["z"]
    assert s["count"] == 2 and s["nonfinite"] == 2
    assert s["mean"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0
    json.dumps(tracker.summary(), allow_nan=False)


def test_underflow_overflow_and_zero_norms():
    tracker = NormTracker(low=1e-2, high=1e2, bins_per_decade=10)
    z = torch.tensor([[0.0], [1e-5], [1e-3], [1.0], [1e3], [1e6]])
    tracker.update({"z": z})
    hist = tracker.histogram("z")
    assert hist["underflow"] == 3 and hist["overflow"] == 2 and sum(hist["counts"]) == 1
    assert len(hist["edges"]) == len(hist["counts"]) + 1 == 41
    s = tracker.summary(quantiles=(0.0, 0.5, 1.0))["z"]
    assert s["p00"] == 0.0 and s["p100"] == 1e6
    assert s["min"] <= s["p50"] <= s["max"]


def test_empty_batches_and_empty_tracker():
    tracker = NormTracker()
    assert tracker.summary() == {}
    tracker.update({"z": torch.empty(0, 4)})
    s = tracker.summary()["z"]
    assert s["count"] == 0 and s["mean"] is None and s["p50"] is None
    json.dumps(tracker.summary(), allow_nan=False)
    tracker.update({"z": torch.ones(1, 4)})
    assert tracker.summary()["z"]["std"] == 0.0


def test_bad_inputs_raise_value_error():
    tracker = NormTracker()
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        tracker.update({"z": torch.ones(3)})
    with pytest.raises(ValueError, match="dict"):
        tracker.update(torch.ones(3, 2))
    with pytest.raises(ValueError, match="low"):
        NormTracker(low=0.0)
    with pytest.raises(ValueError, match="quantiles"):
        tracker.summary(quantiles=(1.5,))
    with pytest.raises(ValueError, match="state_dict"):
        tracker.load_state_dict({"stats": {}})


def test_state_dict_round_trip_and_resume(tmp_path):
    a, b = _data(20, 64), _data(21, 64)
    tracker = NormTracker(bins_per_decade=50)
    tracker.update({"z": a})
    path = tmp_path / "norms.pt"
    torch.save(tracker.state_dict(), path)
    resumed = NormTracker()
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.bins_per_decade == 50
    assert resumed.summary() == tracker.summary()
    # Resuming and continuing gives the same as never stopping.
    resumed.update({"z": b})
    tracker.update({"z": b})
    assert resumed.summary() == tracker.summary()
    # The JSON form loads back too.
    text = json.dumps(tracker.to_dict())
    assert NormTracker.from_state_dict(json.loads(text)).summary() == tracker.summary()


def test_summary_is_json_serialisable_and_reset_clears():
    tracker = NormTracker()
    tracker.update({"backbone": _data(5, 10), "projection": _data(6, 10)})
    parsed = json.loads(json.dumps(tracker.summary(), allow_nan=False))
    assert set(parsed["backbone"]) >= {"count", "mean", "std", "min", "max", "p05", "p50", "p95"}
    assert all(isinstance(v, (int, float)) for v in parsed["backbone"].values())
    tracker.reset()
    assert tracker.summary() == {}


def test_update_does_not_track_gradients():
    z = torch.randn(8, 4, requires_grad=True)
    tracker = NormTracker()
    tracker.update({"z": z * 2})
    assert all(not t.requires_grad for t in tracker.state_dict()["stats"].values())


def test_reduce_is_noop_without_distributed():
    tracker = NormTracker()
    tracker.update({"z": _data(0, 5)})
    before = tracker.summary()
    assert tracker.reduce_across_processes() is tracker
    copy = tracker.reduce_across_processes(inplace=False)
    assert copy is not tracker and copy.summary() == before == tracker.summary()


def test_norm_history_json_round_trip(tmp_path):
    history = NormHistory()
    for epoch in range(3):
        tracker = NormTracker()
        tracker.update({"z": _data(epoch, 20, scale=epoch + 1.0)})
        history.append(tracker.summary(), epoch=epoch, step=10 * epoch)
    path = tmp_path / "norms.json"
    history.to_json(path)
    loaded = NormHistory.from_json(path)
    assert loaded.records == history.records
    assert loaded.series("z", "count") == [20, 20, 20]
    assert [r["epoch"] for r in loaded.records] == [0, 1, 2]
    restored = NormHistory()
    restored.load_state_dict(json.loads(json.dumps(history.state_dict())))
    assert restored.records == history.records
    with pytest.raises(ValueError, match="JSON"):
        history.append({}, epoch=object())


# ----------------------------------------------------------------- two real processes (gloo)


def _rank_data(rank: int) -> dict[str, list[torch.Tensor]]:
    batches = {
        "backbone": [_data(100 + rank * 10 + i, 30 + 17 * rank, scale=1 + rank) for i in range(3)]
    }
    if rank == 1:  # a name only one rank has seen
        batches["prediction"] = [_data(999, 11)]
    return batches


def _feed(tracker: NormTracker, rank: int) -> None:
    for name, chunks in _rank_data(rank).items():
        for chunk in chunks:
            tracker.update({name: chunk})


def _reduce_and_record(rank: int, out_dir: str, tag: str) -> None:
    tracker = NormTracker()
    _feed(tracker, rank)
    local_before = tracker.summary()
    copy = tracker.reduce_across_processes(inplace=False)
    assert tracker.summary() == local_before  # inplace=False leaves the local state alone
    tracker.reduce_across_processes()
    assert tracker.summary() == copy.summary()
    torch.save(
        {"summary": tracker.summary(), "local": local_before},
        os.path.join(out_dir, f"{tag}-rank{rank}.pt"),
    )


def _worker(rank: int, world: int, init: str, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # 1) plain torch.distributed, file:// rendezvous (no port at all)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    _reduce_and_record(rank, out_dir, "torch")
    dist.destroy_process_group()
    # 2) the process group that accelerate creates (gloo on CPU), on a free port
    from accelerate import PartialState

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = PartialState(cpu=True)
    assert state.num_processes == world and dist.is_initialized()
    _reduce_and_record(rank, out_dir, "accelerate")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reduce_across_two_gloo_processes(tmp_path):
    """Two real processes (spawned, so they pay the import once): torch and accelerate groups."""
    world = 2
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(world, init, _free_port(), str(tmp_path)), nprocs=world, join=True)

    expected = NormTracker()
    for rank in range(world):
        _feed(expected, rank)
    want = expected.summary()
    for tag in ("torch", "accelerate"):
        results = [
            torch.load(tmp_path / f"{tag}-rank{r}.pt", weights_only=True) for r in range(world)
        ]
        assert results[0]["summary"] == results[1]["summary"], tag  # every rank ends identical
        got = results[0]["summary"]
        assert set(got) == {"backbone", "prediction"}, tag
        for name in want:
            for key in ("count", "min", "max", "nonfinite"):
                assert got[name][key] == want[name][key], (tag, name, key)
            for key in ("mean", "std", "p05", "p50", "p95"):
                np.testing.assert_allclose(got[name][key], want[name][key], rtol=1e-12)
        assert results[0]["local"]["backbone"]["count"] == 90
        assert "prediction" not in results[0]["local"]
