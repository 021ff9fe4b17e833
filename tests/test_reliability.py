"""Issue 14, fast half: one run per folder, a full disk, a dropped upload, every corrupt row
counted, bad checkpoints on load, the lost-process message.

Real (tiny) training in this process on one CPU thread; the multi-process and real-filesystem
versions (a SIGKILLed or hung rank, a full tmpfs, two concurrent runs) are in
tests/test_faults_distributed.py (``make test-faults``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import accelerate
import pytest
import safetensors.torch
import torch
from conftest import HUB_USER
from fault_helpers import assert_same_weights, encode, write_image_parquet
from PIL import Image
from safetensors.torch import load_file, save_file

from hub_cutinit import create_ssl_model, get_preset
from hub_cutinit.data import SSLImageStream, make_train_loader, make_view_transform, resolve_dataset
from hub_cutinit.hub import HubError, load_ssl_model, push_to_hub, save_pretrained
from hub_cutinit.hub.format import FORMAT_VERSION, check_block
from hub_cutinit.training import TrainConfig, latest_checkpoint, parse_args, train
from hub_cutinit.training.checkpoint import (
    LOCK_NAME,
    DiskFullError,
    OutputDirLockedError,
    acquire_run_lock,
)
from hub_cutinit.training.failures import lost_process_message as _lost_process_message

TINY_HEADS = get_preset("simclr", "tiny")


def tiny(out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        method="simclr",
        backbone="test_resnet",
        image_size=16,
        batch_size=8,
        max_steps=4,
        checkpoint_every=1,
        eval_split=None,
        baselines=False,
        seed=0,
        output_dir=str(out),
        overrides=dict(TINY_HEADS),
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def assert_complete(ckpt: Path) -> int:
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert ckpt.name == f"step_{state['step']:08d}"
    assert load_file(str(ckpt / "model.safetensors"))  # loadable
    assert (ckpt / "optimizer.bin").is_file() and (ckpt / "loader_rank0.pt").is_file()
    return int(state["step"])


def no_partial_files(out: Path) -> None:
    assert not list((out / "checkpoints").glob(".tmp-step_*"))
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]


# -- 4. two runs, one folder ---------------------------------------------------------------------
def test_second_run_on_a_locked_folder_fails_at_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    lock, notice = acquire_run_lock(out)  # a live run: this very process
    assert notice is None
    holder = json.loads((out / LOCK_NAME).read_text())
    assert holder["pid"] > 0 and holder["host"] == socket.gethostname() and holder["started"]
    started = time.perf_counter()
    with pytest.raises(OutputDirLockedError) as info:
        train(tiny(out))
    assert time.perf_counter() - started < 10  # before any data or model work
    message = str(info.value)
    assert str(out) in message and f"PID {holder['pid']}" in message
    assert "this machine" in message and "another --output-dir" in message
    assert not (out / "checkpoints").exists()  # nothing written
    assert (out / LOCK_NAME).is_file()  # the holder's lock is left alone
    lock.release()
    assert not (out / LOCK_NAME).exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_of_a_crashed_run_is_taken_over_and_released(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "yesterday"}
    (out / LOCK_NAME).write_text(json.dumps(stale))
    result = train(tiny(out, max_steps=2))
    assert result["steps"] == 2
    printed = capsys.readouterr().out
    assert f"Taking over the stale lock {out / LOCK_NAME} of PID {stale['pid']}" in printed
    assert not (out / LOCK_NAME).exists()  # released at the end
    assert not list(out.glob(f"{LOCK_NAME}*"))


def test_reused_pid_is_stale_and_another_host_is_not(tmp_path: Path) -> None:
    import os

    out = tmp_path / "run"
    out.mkdir()
    # this PID is alive, but it is not the process that wrote the lock (another start time)
    reused = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": "1"}
    (out / LOCK_NAME).write_text(json.dumps(reused))
    lock, notice = acquire_run_lock(out)
    assert notice and "no longer running" in notice
    lock.release()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "started": "t"}))
    with pytest.raises(OutputDirLockedError, match="host gpu-node-7") as info:
        acquire_run_lock(out)
    assert f"delete {out / LOCK_NAME}" in str(info.value)


def test_lock_is_released_when_a_run_fails(tmp_path: Path) -> None:
    out = tmp_path / "nan"
    with pytest.raises(RuntimeError, match="Non-finite loss"):
        train(tiny(out, lr=1e30, max_steps=6))
    assert not (out / LOCK_NAME).exists()
    train(tiny(out, max_steps=2, resume=True))  # the folder is free again


# -- 2. a full disk (injected ENOSPC; a real full tmpfs: test_faults_distributed.py) -------------
def _enospc(path: Any) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = tmp_path / "ref"
    train(tiny(ref))
    out = tmp_path / "full"
    original = accelerate.Accelerator.save_state

    def save_state(self: Any, output_dir: Any = None, *args: Any, **kwargs: Any) -> Any:
        if Path(str(output_dir)).name == ".tmp-step_00000003":
            (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 100)  # half a file
            raise _enospc(Path(output_dir) / "optimizer.bin")
        return original(self, output_dir, *args, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "save_state", save_state)
    with pytest.raises(DiskFullError) as info:
        train(tiny(out))
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and "No space left on device" in message
    assert str(out / "checkpoints") in message and "--resume" in message
    assert "step_00000002, is intact" in message
    assert assert_complete(latest_checkpoint(out)) == 2  # the previous one, loadable
    no_partial_files(out)  # the partial one is removed, no final files
    assert not (out / LOCK_NAME).exists()

    monkeypatch.setattr(accelerate.Accelerator, "save_state", original)  # space freed
    result = train(tiny(out, resume=True))
    assert result["steps"] == 4
    assert_same_weights(ref, out)


def test_full_disk_during_the_final_save_leaves_no_half_written_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "full"
    original = safetensors.torch.save_file

    def save_file_half(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        original(tensors, filename, *args, **kwargs)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise _enospc(filename)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file_half)
    with pytest.raises(OSError) as info:
        train(tiny(out, max_steps=2))
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert f"No space left on device while saving the model to {out}" in message
    assert "Nothing in" in message and "--resume" in message
    no_partial_files(out)
    assert assert_complete(latest_checkpoint(out)) == 2  # the run's last checkpoint is kept

    monkeypatch.setattr(safetensors.torch, "save_file", original)
    result = train(tiny(out, max_steps=2, resume=True))  # restores step 2 and only saves
    assert result["steps"] == 2
    assert load_ssl_model(out).method == "simclr"


# -- 3. a dropped upload -------------------------------------------------------------------------
def _saved(tmp_path: Path, name: str, seed: int) -> tuple[Path, dict[str, str]]:
    torch.manual_seed(seed)
    out = save_pretrained(create_ssl_model("simclr", "test_resnet", **TINY_HEADS), tmp_path / name)
    return out, _digests(out)


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()
    }


def _consistent(files: dict[str, bytes], local: Path) -> None:
    """config.json and both weight files on the Hub are exactly the local save's."""
    for name in ("config.json", "model.safetensors", "ssl_heads.safetensors"):
        assert files[name] == (local / name).read_bytes(), name


def test_dropped_upload_is_retried_as_one_commit(fake_hub, tmp_path: Path) -> None:
    out, before = _saved(tmp_path, "a", 0)
    repo = f"{HUB_USER}/dropped"
    fake_hub.drop_next(2, path_contains="/commit/", method="POST")
    push_to_hub(out, repo, base_delay=0.01, max_attempts=3)
    commits = fake_hub.commits(repo)
    assert len(commits) == 2  # the repo's initial commit + exactly one upload
    _consistent(fake_hub.files(repo), out)
    posts = [r.status for r in fake_hub.requests if "/commit/" in r.path and r.method == "POST"]
    assert posts == [0, 0, 200]  # two cut connections, then the retry that made the commit
    assert _digests(out) == before  # the local folder is untouched


def test_dropped_upload_after_all_retries_is_clear_and_changes_nothing(
    fake_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.utils._http as hf_http

    waits: list[float] = []  # huggingface_hub's own back-off (1, 2, 4, 8, 8 s per request)
    monkeypatch.setattr(hf_http, "time", types.SimpleNamespace(sleep=waits.append))
    first, _ = _saved(tmp_path, "a", 0)
    repo = f"{HUB_USER}/flaky"
    push_to_hub(first, repo, base_delay=0.01)
    second, before = _saved(tmp_path, "b", 1)
    assert (second / "model.safetensors").read_bytes() != (first / "model.safetensors").read_bytes()
    fake_hub.drop_next(100, path_contains="/commit/", method="POST")
    with pytest.raises(HubError, match=r"uploading to .*after 3 attempt\(s\)") as info:
        push_to_hub(second, repo, base_delay=0.01, max_attempts=3)
    assert "hf_" not in str(info.value)
    assert len(fake_hub.commits(repo)) == 2  # nothing of the failed push landed
    _consistent(fake_hub.files(repo), first)  # config.json and weights of the same save
    assert _digests(second) == before
    assert waits  # the dropped connections went through huggingface_hub's retries too
    fake_hub.drops.clear()
    push_to_hub(second, repo, base_delay=0.01)
    _consistent(fake_hub.files(repo), second)


def test_push_is_one_commit_per_push(fake_hub, tmp_path: Path) -> None:
    out, _ = _saved(tmp_path, "a", 0)
    repo = f"{HUB_USER}/atomic"
    push_to_hub(out, repo, base_delay=0.01)
    last = fake_hub.commits(repo)[-1]
    assert {"config.json", "model.safetensors", "ssl_heads.safetensors", "README.md"} <= set(
        last.files
    )
    posts = [r for r in fake_hub.requests if "/commit/" in r.path and r.method == "POST"]
    assert len(posts) == 1


# -- 5. every corrupt row counted (the training case: test_bad_input.py) --------------------------
def test_loader_counts_corrupt_rows_of_the_partial_batch_and_the_stream_end(tmp_path: Path) -> None:
    good = encode(Image.new("RGB", (12, 12), (0, 90, 200)))
    rows: list[bytes | None] = [b"junk"] + [good] * 4 + [b"junk", good, b"junk", None]
    write_image_parquet(tmp_path / "d" / "train-00000-of-00001.parquet", rows, [0] * len(rows))
    ds, image_col, label_col = resolve_dataset(str(tmp_path / "d"), "train")
    make = lambda: SSLImageStream(  # noqa: E731
        ds, make_view_transform("simclr", 8), image_column=image_col, label_column=label_col,
        shuffle=False,
    )  # fmt: skip
    stream = make()
    assert len(list(stream)) == 5  # iterated directly: samples only, no marker
    loader = make_train_loader(make(), batch_size=4)
    batches = list(loader)
    assert [b["views"][0].shape[0] for b in batches] == [4]  # the partial batch is dropped
    assert loader.num_corrupt == 4  # 1 in the batch, 1 in the dropped one, 2 at the end


# -- 6. bad checkpoints on load -------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_ssl_model("simclr", "test_resnet", **TINY_HEADS)
    return save_pretrained(model, tmp_path_factory.mktemp("m") / "simclr")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _edit_config(folder: Path, edit: Any) -> Path:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "config.json"


def test_config_without_the_block_names_the_file_and_the_fix(saved_model, tmp_path) -> None:
    copy = _copy(saved_model, tmp_path / "plain")
    path = _edit_config(copy, lambda c: c.pop("hub_cutinit"))
    with pytest.raises(ValueError, match="has no 'hub_cutinit' block") as info:
        load_ssl_model(copy)
    assert str(path) in str(info.value) and "timm.create_model" in str(info.value)


def test_future_or_broken_format_version(saved_model, tmp_path) -> None:
    copy = _copy(saved_model, tmp_path / "future")
    path = _edit_config(
        copy, lambda c: c["hub_cutinit"].update(format_version=FORMAT_VERSION + 1, new_field=1)
    )
    # a newer format may change meanings (format 2 did): refuse, naming the file and the fix
    with pytest.raises(ValueError) as info:
        load_ssl_model(copy)
    text = str(info.value)
    assert str(path) in text and f"format version {FORMAT_VERSION + 1} > {FORMAT_VERSION}" in text
    assert "pip install -U hub-cutinit" in text
    for bad in (0, "2", None):
        _edit_config(copy, lambda c, bad=bad: c["hub_cutinit"].update(format_version=bad))
        with pytest.raises(ValueError, match="format_version' must be a positive integer") as info:
            load_ssl_model(copy)
        assert str(path) in str(info.value) and "save the model again" in str(info.value)
    with pytest.raises(ValueError, match=r"m/config.json: its 'hub_cutinit' block lacks \['c'\]"):
        check_block({"format_version": 2, "method": "simclr", "config": {}}, source="m/config.json")


def test_unknown_architecture_names_the_file_and_the_fix(saved_model, tmp_path) -> None:
    copy = _copy(saved_model, tmp_path / "arch")
    path = _edit_config(copy, lambda c: c.update(architecture="resnet_from_the_future_v9"))
    with pytest.raises(ValueError, match="resnet_from_the_future_v9") as info:
        load_ssl_model(copy)
    assert str(path) in str(info.value) and "pip install -U timm" in str(info.value)


def test_weights_with_other_shapes_name_the_folder_and_the_fix(saved_model, tmp_path) -> None:
    copy = _copy(saved_model, tmp_path / "shapes")
    heads = load_file(str(copy / "ssl_heads.safetensors"))
    key = sorted(heads)[0]
    heads[key] = torch.zeros(*[s + 1 for s in heads[key].shape])
    save_file(heads, str(copy / "ssl_heads.safetensors"))
    with pytest.raises(ValueError, match=rf"shape mismatch: {key}") as info:
        load_ssl_model(copy)
    assert str(copy) in str(info.value) and "save the model again" in str(info.value)


# -- 1. a lost process: the message and the flag (the real thing: test_faults_distributed.py) ----
def test_lost_process_message_names_the_rank_and_how_to_resume() -> None:
    err = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1")
    text = _lost_process_message(err, 0, 2, 5, Path("/o/checkpoints/step_00000004"), 30)
    assert text.startswith("Lost process rank 1 of 2 during step 6")
    assert "--resume on all 2 processes" in text and "step_00000004" in text
    assert "Connection closed by peer" in text
    assert "one of ranks [0, 2, 3]" in _lost_process_message(err, 1, 4, 0, None, 30)
    assert parse_args("simclr", ["--collective-timeout", "45"]).collective_timeout == 45.0
    assert parse_args("simclr", []).collective_timeout == 1800.0
    with pytest.raises(ValueError, match="--collective-timeout"):
        TrainConfig(method="simclr", collective_timeout=0)
