"""Fast fault battery (default run): interrupted and resumed training, bad images and columns,
NaN/inf losses, Hub failures around a training run, booby-trapped repos.

Real (tiny) training through ``train(TrainConfig(...))`` on one CPU thread: ``test_resnet`` at
16 px, batch 8, a few steps. The slow subprocess versions (SIGKILL at random points, recipes
pushing to the fake Hub) are in tests/test_faults.py (``make test-faults``).

Tests marked ``xfail(strict=True)`` document a bug found by issue 7's battery; the reason names
the bug and its fix. They turn into failures (XPASS) once it is fixed: then drop the marker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import HUB_USER
from fault_helpers import assert_same_weights, encode, write_image_parquet
from PIL import Image
from safetensors.torch import load_file

from hub_cutinit import create_ssl_model, get_preset
from hub_cutinit.hub import HubAuthError, HubError, load_ssl_model, push_to_hub, save_pretrained
from hub_cutinit.training import NonFiniteLossError, TrainConfig, Trainer, latest_checkpoint, train
from hub_cutinit.training import trainer as trainer_module

SMALL_HEADS: dict[str, dict[str, Any]] = {
    m: get_preset(m, "tiny") for m in ("simclr", "byol", "moco")
}


def tiny_config(out: Path, method: str = "simclr", **kw: Any) -> TrainConfig:
    """6 steps of ``method`` on the built-in data: ~1 s on one thread."""
    base: dict[str, Any] = dict(
        method=method,
        backbone="test_resnet",
        image_size=16,
        batch_size=8,
        max_steps=6,
        checkpoint_every=1,
        eval_split=None,
        baselines=False,
        seed=0,
        output_dir=str(out),
        overrides=dict(SMALL_HEADS.get(method, {})),
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two BLAS threads on two busy shared cores run ~20x slower than one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class _Stop(Exception):
    """Raised by a patched ``train_step``: the run stops as if the process died."""


def patch_train_step(monkeypatch: pytest.MonkeyPatch, on_call: dict[int, str]) -> list[float]:
    """Patch ``Trainer.training_step``: ``"stop"`` raises :class:`_Stop` before call N,
    ``"nan"`` feeds call N NaN views. Returns the learning rate seen by every call."""
    original = Trainer.training_step
    lrs: list[float] = []

    def patched(self: Trainer, views: list[torch.Tensor]) -> Any:
        lrs.append(self.optimizer.param_groups[0]["lr"])
        action = on_call.get(len(lrs))
        if action == "stop":
            raise _Stop
        if action == "nan":
            # float views (the loader's are uint8, normalised on the device; floats pass as is)
            views = [torch.full(v.shape, float("nan")) for v in views]
        return original(self, views)

    monkeypatch.setattr(Trainer, "training_step", patched)
    return lrs


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Uninterrupted 6-step runs, one per method, made on first use."""
    runs: dict[str, tuple[Path, dict[str, Any]]] = {}

    def get(method: str) -> tuple[Path, dict[str, Any]]:
        if method not in runs:
            out = tmp_path_factory.mktemp(f"reference-{method}")
            runs[method] = (out, train(tiny_config(out, method)))
        return runs[method]

    return get


# -- stop after k steps, resume -----------------------------------------------------------------
@pytest.mark.parametrize("method", ["simclr", "byol", "moco"])
def test_stopped_after_3_of_6_steps_and_resumed_equals_uninterrupted(
    method: str, reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    ref_out, ref_result = reference(method)
    out = tmp_path / "run"
    patch_train_step(monkeypatch, {4: "stop"})
    with pytest.raises(_Stop):
        train(tiny_config(out, method))
    monkeypatch.undo()
    ckpts = out / "checkpoints"
    assert latest_checkpoint(out) == ckpts / "step_00000003"
    # decoys a crash can leave (or a user can make): none of them may be picked up
    shutil.copytree(ckpts / "step_00000003", ckpts / ".tmp-step_00000004")  # killed before rename
    state = json.loads((ckpts / ".tmp-step_00000004" / "trainer_state.json").read_text())
    (ckpts / ".tmp-step_00000004" / "trainer_state.json").write_text(
        json.dumps({**state, "step": 4})
    )
    (ckpts / "step_00000009").mkdir()  # a step directory without trainer_state.json
    shutil.copy(ckpts / "step_00000003" / "model.safetensors", ckpts / "step_00000009")
    assert latest_checkpoint(out) == ckpts / "step_00000003"
    capsys.readouterr()

    result = train(tiny_config(out, method, resume=True))
    assert f"Resumed from {ckpts / 'step_00000003'} (step 3, epoch 0)" in capsys.readouterr().out
    assert result["steps"] == 6 and result["images_seen"] == ref_result["images_seen"] == 48
    assert_same_weights(ref_out, out)
    for name, stats in ref_result["final_norms"]["norms"].items():  # restored statistics
        assert result["final_norms"]["norms"][name]["count"] == stats["count"]
        assert result["final_norms"]["norms"][name]["mean"] == pytest.approx(stats["mean"])
    assert not list(ckpts.glob(".tmp-step_*"))  # the stale partial write was cleaned up


def test_resume_with_a_new_lr_uses_it_from_the_first_resumed_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fixed in loop.py (issue 7): the first resumed step used the lr saved in the optimiser."""
    expected = patch_train_step(monkeypatch, {})
    train(tiny_config(tmp_path / "new-lr", lr=0.02))
    monkeypatch.undo()
    patch_train_step(monkeypatch, {4: "stop"})
    with pytest.raises(_Stop):
        train(tiny_config(tmp_path / "run", lr=0.05))
    monkeypatch.undo()
    seen = patch_train_step(monkeypatch, {})
    train(tiny_config(tmp_path / "run", lr=0.02, resume=True))
    assert seen == pytest.approx(expected[3:])


# -- NaN / inf ------------------------------------------------------------------------------------
def test_injected_nan_stops_names_the_step_and_keeps_a_good_checkpoint(
    reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref_out, _ = reference("simclr")
    out = tmp_path / "nan"
    patch_train_step(monkeypatch, {3: "nan"})
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny_config(out))
    monkeypatch.undo()
    message = str(info.value)
    assert "Non-finite loss (nan) at step 3." in message
    assert "learning rate" in message and "lr=" in message and "c=3" in message
    kept = latest_checkpoint(out)  # step 2 (or step 1 once the step-2 weights are set aside)
    assert kept is not None and kept.name in ("step_00000002", "step_00000001")
    assert f"The last good checkpoint is kept: {kept}." in message
    assert not (out / "model.safetensors").exists()  # nothing half-trained saved as final
    assert not list((out / "checkpoints").glob(".tmp-*"))
    result = train(tiny_config(out, resume=True))  # the kept checkpoint is good: resume works
    assert result["steps"] == 6
    assert_same_weights(ref_out, out)


def test_huge_lr_stops_with_a_message_naming_step_and_lr(tmp_path: Path) -> None:
    out = tmp_path / "lr"
    with pytest.raises(
        NonFiniteLossError, match=r"at step 2\. Likely causes: the learning rate"
    ) as info:
        train(tiny_config(out, lr=1e30))
    assert "lr=" in str(info.value) and not (out / "model.safetensors").exists()
    kept = latest_checkpoint(out)  # step 1, which holds the blown-up update: see the next test
    if kept is not None:
        assert f"The last good checkpoint is kept: {kept}." in str(info.value)
        assert json.loads((kept / "trainer_state.json").read_text())["step"] == 1
        tensors = load_file(str(kept / "model.safetensors"))  # it loads
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_resume_after_a_blow_up_with_a_smaller_lr_recovers(tmp_path: Path) -> None:
    out = tmp_path / "recover"
    with pytest.raises(NonFiniteLossError):
        train(tiny_config(out, lr=1e30))
    result = train(tiny_config(out, lr=0.01, resume=True))
    assert result["steps"] == 6 and np.isfinite(result["last_step"]["loss"])


def test_tiny_c_gives_a_non_finite_loss_at_step_1_naming_c(tmp_path: Path) -> None:
    out = tmp_path / "c"
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny_config(out, c=1e-30))
    message = str(info.value)
    assert "at step 1." in message and "c=1e-30 is too large or too small" in message
    assert "No checkpoint was written yet" in message
    assert latest_checkpoint(out) is None


# -- bad images, odd modes, missing columns -------------------------------------------------------
def _odd_images() -> list[bytes]:
    """32 decodable images: every PIL mode a dataset may hold, tiny and thin sizes."""
    gradient = (np.arange(7 * 9, dtype=np.uint32).reshape(7, 9) * 1000) % 65535
    rgba = Image.new("RGBA", (10, 8), (10, 200, 30, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    p_transparent = Image.new("P", (9, 9), 1)
    p_transparent.info["transparency"] = 1
    images = [
        encode(Image.new("RGB", (12, 12), (200, 10, 10))),
        encode(Image.new("L", (11, 13), 90)),
        encode(Image.new("LA", (9, 9), (90, 128))),
        encode(rgba),
        encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"),
        encode(Image.fromarray(gradient.astype(np.uint16))),  # I;16
        encode(Image.new("P", (10, 10), 3)),
        encode(p_transparent),
        encode(Image.new("1", (10, 10), 1)),
        encode(Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)), "TIFF"),
        encode(Image.fromarray((gradient * 70000).astype(np.int32)), "TIFF"),  # 32-bit I
        encode(Image.new("RGB", (1, 1), (0, 255, 0))),
        encode(Image.new("L", (3, 5), 200)),
        encode(Image.new("RGB", (5, 3), (1, 2, 3))),
        encode(Image.new("RGB", (1, 40), (9, 9, 9))),
        encode(Image.new("RGBA", (2, 2), (0, 0, 0, 0))),
        encode(Image.new("P", (6, 6)), "GIF"),
        encode(Image.new("RGB", (7, 7), (50, 60, 70)), "BMP"),
    ]
    return [images[i % len(images)] for i in range(32)]


def _corrupt_images() -> list[bytes | None]:
    png = encode(Image.new("RGB", (12, 12), (200, 10, 10)))
    return [
        b"this is not an image",
        png[: len(png) // 2],  # truncated
        b"",  # empty
        None,  # missing
        png[:16] + bytes(200),  # a PNG header, then zeros
        b"\xff\xd8\xff\xe0" + bytes(50),  # a JPEG header, then zeros
    ]


@pytest.fixture(scope="module")
def messy_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """38 rows: 32 decodable (odd modes and sizes), 6 corrupt ones spread inside, the last row
    decodable (so every corrupt row is reported with a sample of a full batch)."""
    rows: list[bytes | None] = list(_odd_images())
    for i, bad in enumerate(_corrupt_images()):
        rows.insert(3 + 5 * i, bad)
    assert rows[-1] is not None and len(rows) == 38
    folder = tmp_path_factory.mktemp("messy") / "data"
    write_image_parquet(folder / "train-00000-of-00001.parquet", rows, [i % 3 for i in range(38)])
    return folder, 6


def test_odd_modes_tiny_and_corrupt_images_train_and_are_counted(
    messy_dataset, tmp_path: Path
) -> None:
    folder, n_corrupt = messy_dataset
    # shuffle_buffer=1 keeps the file order: 32 good images = exactly 4 full batches per epoch
    cfg = tiny_config(
        tmp_path / "messy",
        dataset=str(folder),
        max_steps=None,
        epochs=2,
        checkpoint_every=0,
        shuffle_buffer=1,
    )
    result = train(cfg)
    assert (result["steps"], result["images_seen"]) == (8, 64)  # epochs: see the next test
    assert result["num_examples"] == 38
    assert result["corrupt_images"] == 2 * n_corrupt
    assert np.isfinite(result["last_step"]["loss"])
    config = json.loads((tmp_path / "messy" / "config.json").read_text())
    assert config["hub_cutinit"]["training"]["corrupt_images"] == 2 * n_corrupt
    assert load_ssl_model(tmp_path / "messy").method == "simclr"


def test_two_full_epochs_are_reported_as_two(messy_dataset, tmp_path: Path) -> None:
    folder, _ = messy_dataset
    cfg = tiny_config(
        tmp_path / "e", dataset=str(folder), max_steps=None, epochs=2, checkpoint_every=0
    )
    result = train(cfg)
    assert result["steps"] == 8 and result["epochs"] == 2


def test_shuffled_messy_stream_trains_and_never_overcounts(messy_dataset, tmp_path: Path) -> None:
    folder, n_corrupt = messy_dataset
    result = train(tiny_config(tmp_path / "shuffled", dataset=str(folder), max_steps=8))
    assert result["steps"] == 8
    assert result["corrupt_images"] <= 2 * n_corrupt  # trailing ones can be lost: see below


def test_corrupt_images_before_the_dropped_partial_batch_are_counted(tmp_path: Path) -> None:
    good = encode(Image.new("RGB", (12, 12), (200, 10, 10)))
    rows: list[bytes | None] = [good] * 8 + [b"junk", b"junk"] + [good] * 3 + [b"junk"]
    folder = tmp_path / "data"
    write_image_parquet(folder / "train-00000-of-00001.parquet", rows, [0] * len(rows))
    # epoch 0: 1 full batch, then a partial one (2 corrupt before it) and 1 trailing corrupt;
    # epoch 1 stops after its first batch, before the corrupt rows (14 rows // batch 8 = one
    # step per epoch, so step 2 also completes epoch 1: two epochs)
    result = train(tiny_config(tmp_path / "o", dataset=str(folder), max_steps=2, shuffle_buffer=1))
    assert result["epochs"] == 2 and result["corrupt_images"] == 3


def _guard_endless_epochs(monkeypatch: pytest.MonkeyPatch, limit: int = 4) -> None:
    """Make a loop that would start epoch after empty epoch fail instead of hanging."""
    original = trainer_module.data_lib.make_train_loader

    def make(*args: Any, **kwargs: Any) -> Any:
        loader = original(*args, **kwargs)
        set_epoch = loader.set_epoch

        def guarded(epoch: int) -> None:
            if epoch >= limit:
                raise AssertionError(f"HANG: epoch {epoch} started and no step was ever made")
            set_epoch(epoch)

        loader.set_epoch = guarded
        return loader

    monkeypatch.setattr(trainer_module.data_lib, "make_train_loader", make)


@pytest.mark.parametrize("n_good", [0, 6], ids=["all-corrupt", "fewer-good-than-batch"])
def test_too_few_decodable_images_stop_with_a_message(
    n_good: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = encode(Image.new("RGB", (12, 12), (200, 10, 10)))
    rows = [good if i < n_good else b"junk" for i in range(16)]
    rows = rows[::2] + rows[1::2]  # the good ones spread out
    folder = tmp_path / "data"
    write_image_parquet(folder / "train-00000-of-00001.parquet", rows, [0] * 16)
    _guard_endless_epochs(monkeypatch)
    with pytest.raises(ValueError, match="--batch-size"):
        train(tiny_config(tmp_path / "o", dataset=str(folder), max_steps=2, checkpoint_every=0))


def test_wrong_image_column_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"all failed to decode.*is --image-column right\?"):
        train(tiny_config(tmp_path / "o", image_column="label"))  # ints, not images
    with pytest.raises(ValueError, match=r"image column 'pixels' not found.*--image-column"):
        train(tiny_config(tmp_path / "o", image_column="pixels"))
    assert latest_checkpoint(tmp_path / "o") is None


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("missing-folder", FileNotFoundError, "Couldn't find any data file at"),
        ("empty-folder", Exception, "doesn't contain any data files"),
        ("no-image-column", ValueError, r"no image column found.*\['caption', 'label'\].*--image"),
    ],
)
def test_unusable_datasets_are_clear_errors(
    case: str, error: type[Exception], message: str, tmp_path: Path
) -> None:
    import datasets

    folder = tmp_path / case
    if case == "empty-folder":
        folder.mkdir()
    elif case == "no-image-column":
        folder.mkdir()
        table = datasets.Dataset.from_dict({"caption": ["a"] * 16, "label": [0] * 16})
        table.to_parquet(str(folder / "train-00000-of-00001.parquet"))
    with pytest.raises(error, match=message):
        train(tiny_config(tmp_path / "o", dataset=str(folder)))
    assert latest_checkpoint(tmp_path / "o") is None


def test_missing_label_column(tmp_path: Path) -> None:
    good = encode(Image.new("L", (10, 10), 100))
    folder = tmp_path / "unlabelled"
    write_image_parquet(folder / "train-00000-of-00001.parquet", [good] * 16, labels=None)
    result = train(tiny_config(tmp_path / "ssl", dataset=str(folder), max_steps=2))
    assert result["steps"] == 2  # SSL needs no labels
    for kwargs in ({"eval_split": "train"}, {"label_column": "label"}):  # kNN does
        with pytest.raises(ValueError, match="--label-column"):
            train(tiny_config(tmp_path / "knn", dataset=str(folder), max_steps=2, **kwargs))
    assert not (tmp_path / "knn").exists() or not any((tmp_path / "knn").iterdir())


def test_some_missing_labels_do_not_crash_the_knn_monitor(tmp_path: Path) -> None:
    rows = [encode(Image.new("RGB", (12, 12), (i * 10, 10, 10))) for i in range(16)]
    folder = tmp_path / "data"
    labels = [None if i % 4 == 0 else i % 3 for i in range(16)]
    write_image_parquet(folder / "train-00000-of-00001.parquet", rows, labels)  # type: ignore[arg-type]
    out = tmp_path / "o"
    cfg = tiny_config(out, dataset=str(folder), max_steps=2, eval_split="train", knn_k=3)
    train(cfg)
    assert (out / "model.safetensors").exists()


# -- Hub around a training run ---------------------------------------------------------------------
SECRET = "hf_fake-issue7-secret-never-written-0042"


def test_training_run_pushes_with_retries_and_never_leaks_the_token(
    fake_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, capfd
) -> None:
    fake_hub.tokens[SECRET] = HUB_USER
    try:
        monkeypatch.setenv("HF_TOKEN", SECRET)
        monkeypatch.setenv("HUB_CUTINIT_PUSH_BACKOFF", "0.01")
        repo = f"{HUB_USER}/issue7-run"
        fake_hub.fail_next(1, 503, path_contains="/api/repos/create")
        fake_hub.fail_next(1, 500, path_contains="/commit/")
        out = tmp_path / "run"
        with caplog.at_level(logging.DEBUG):
            result = train(tiny_config(out, max_steps=2, push_to_hub=repo))
        captured = capfd.readouterr()
    finally:
        fake_hub.tokens.pop(SECRET, None)
    statuses = [r.status for r in fake_hub.requests if r.path == "/api/repos/create"]
    assert statuses == [503, 200]  # retried
    assert "retrying" in caplog.text
    assert {"config.json", "model.safetensors", "ssl_heads.safetensors"} <= set(
        fake_hub.files(repo)
    )
    haystacks = {
        "logs": caplog.text.encode(),
        "stdout/stderr": (captured.out + captured.err).encode(),
        "result": json.dumps(result, default=str).encode(),
        **{f"hub:{k}": v for k, v in fake_hub.files(repo).items()},
        **{f"out:{p}": p.read_bytes() for p in out.rglob("*") if p.is_file()},
        **{f"tmp:{p}": p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()},
    }
    leaks = [where for where, data in haystacks.items() if SECRET.encode() in data]
    assert not leaks
    assert len(haystacks) > 10 and any(r.authorized for r in fake_hub.requests)


@pytest.fixture
def saved_model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_ssl_model("simclr", "test_resnet", **SMALL_HEADS["simclr"])
    return save_pretrained(model, tmp_path / "saved")


def test_push_without_any_token_is_explained(fake_hub, saved_model, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN")  # and the fixture hides the user's token file
    before = digest(saved_model)
    with pytest.raises(HubAuthError) as info:
        push_to_hub(saved_model, f"{HUB_USER}/no-token", base_delay=0.001)
    message = str(info.value)
    assert "401" in message and "hf auth login" in message and "HF_TOKEN" in message
    assert digest(saved_model) == before
    assert ("model", f"{HUB_USER}/no-token") not in fake_hub.repos


def test_5xx_and_network_down_leave_the_output_untouched(fake_hub, saved_model) -> None:
    import socket

    from hub_server import point_huggingface_hub_at

    before = digest(saved_model)
    # (huggingface_hub itself retries 5xx on uploads with 1-8 s sleeps: fail the repo creation)
    fake_hub.fail_next(10, 502, path_contains="/api/repos/create")
    with pytest.raises(HubError, match=r"creating the repository .* after 2 attempt\(s\).*502"):
        push_to_hub(saved_model, f"{HUB_USER}/flaky", max_attempts=2, base_delay=0.001)
    assert digest(saved_model) == before
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    point_huggingface_hub_at(dead)  # restored by the fake_hub fixture
    with pytest.raises(HubError, match="after 2 attempt"):
        push_to_hub(saved_model, f"{HUB_USER}/offline", max_attempts=2, base_delay=0.001)
    assert digest(saved_model) == before


class _Trap:
    """Unpickling this writes a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


def _no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something tried to unpickle a file")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_loading_never_touches_pickle_files_of_a_repo(
    fake_hub, saved_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import HfApi

    marker = tmp_path / "UNPICKLED"
    trap = pickle.dumps({"state_dict": _Trap(marker)})
    repo = f"{HUB_USER}/booby-trapped"
    push_to_hub(saved_model, repo, base_delay=0.001)
    api = HfApi()
    for name in ("pytorch_model.bin", "ssl_heads.bin", "training_args.bin", "optimizer.pt"):
        api.upload_file(path_or_fileobj=trap, path_in_repo=name, repo_id=repo)
    local = tmp_path / "local"
    shutil.copytree(saved_model, local)
    (local / "pytorch_model.bin").write_bytes(trap)
    (local / "ssl_heads.pt").write_bytes(trap)
    fake_hub.requests.clear()
    _no_unpickling(monkeypatch)

    from_hub = load_ssl_model(f"hf-hub:{repo}")
    from_dir = load_ssl_model(local)
    import timm

    timm.create_model(f"hf-hub:{repo}", pretrained=True)
    downloaded = {r.path.rsplit("/", 1)[-1] for r in fake_hub.requests if "/resolve/" in r.path}
    assert downloaded and all(n.endswith((".json", ".safetensors")) for n in downloaded)
    assert not marker.exists()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(from_hub.backbone.eval()(x), from_dir.backbone.eval()(x))


@pytest.mark.parametrize("name", ["model.safetensors", "ssl_heads.safetensors"])
def test_corrupt_weight_file_error_names_the_file(name: str, saved_model, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken)
    data = (broken / name).read_bytes()
    (broken / name).write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=name):
        load_ssl_model(broken)
