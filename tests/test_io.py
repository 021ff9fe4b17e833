"""Atomic files with a normal file's permissions (hub_cutinit.atomic), the one figure writer
(hub_cutinit.plotting) and the --set grammar (hub_cutinit.set_flag)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hub_cutinit.atomic import (
    apply_umask,
    atomic_path,
    current_umask,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from hub_cutinit.plotting import new_figure, save_figure
from hub_cutinit.set_flag import parse_set


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """Set the process umask for one test; the old one comes back afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_umask_permissions(umask, tmp_path: Path, mask, expected) -> None:
    umask(mask)
    assert current_umask() == mask
    old = tmp_path / "old.txt"
    old.write_text("x")
    old.chmod(0o600)  # an existing file's mode does not stick: the new file is a new file
    paths = [
        write_text_atomic(old, "new"),
        write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01"),
        write_json_atomic(tmp_path / "sub" / "r.json", {"knn": float("nan")}, allow_nan=True),
    ]
    fig, axes = new_figure()
    axes[0][0].plot([0, 1], [0, 1])
    paths.append(save_figure(fig, tmp_path / "fig.png"))
    for path in paths:
        assert _mode(path) == expected, path
    assert old.read_text() == "new" and (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "sub" / "r.json").read_text(), parse_constant=str) == {
        "knn": "NaN"
    }
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.tmp"))


def test_failed_write_leaves_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = write_text_atomic(tmp_path / "result.json", "old")
    with pytest.raises(RuntimeError, match="writer died"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]

    def no_rename(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="rename refused"):
        write_bytes_atomic(target, b"new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    monkeypatch.undo()

    with pytest.raises(FileNotFoundError, match="write to the path that atomic_path yields"):
        with atomic_path(target):
            pass  # nothing written: an error, and the old file stays
    assert target.read_text() == "old"


def test_apply_umask_fixes_private_files(umask, tmp_path: Path) -> None:
    umask(0o022)
    (tmp_path / "d").mkdir()
    for name in ("a", "d/b"):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name).chmod(0o600)
    apply_umask(tmp_path)
    assert _mode(tmp_path / "a") == _mode(tmp_path / "d" / "b") == 0o644


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600)])
def test_save_pretrained_files_are_readable_by_the_group(
    umask, tmp_path: Path, mask, expected
) -> None:
    """Issue 15: every file save_pretrained installs has the umask's permissions, both when
    the folder is swapped in whole and when files are renamed into a folder with others."""
    import torch

    from hub_cutinit import create_ssl_model
    from hub_cutinit.hub import save_pretrained

    umask(mask)
    torch.manual_seed(0)
    model = create_ssl_model(
        "byol", "test_resnet", c=3, proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8
    )
    records = [
        {"epoch": e, "step": 10 * (e + 1), "norms": {"backbone": {"mean": 1.0 + e}}} for e in (0, 1)
    ]
    history = {"version": 1, "records": records}  # as NormHistory.state_dict() gives it
    info = {"image_size": 32, "norm_history": history}
    names = ["README.md", "config.json", "model.safetensors", "norms.png", "ssl_heads.safetensors"]
    fresh = save_pretrained(model, tmp_path / "fresh", training_info=info)
    mixed = tmp_path / "run"
    (mixed / "checkpoints").mkdir(parents=True)  # other contents: files renamed one by one
    save_pretrained(model, mixed, training_info=info)
    for out in (fresh, mixed):
        assert sorted(p.name for p in out.iterdir() if p.is_file()) == names
        assert {name: oct(_mode(out / name)) for name in names} == dict.fromkeys(
            names, oct(expected)
        )
    assert _mode(fresh) == 0o777 & ~mask


def test_no_module_switches_the_matplotlib_backend_or_loads_pyplot() -> None:
    code = """
import sys, tempfile, matplotlib
matplotlib.use("svg")
import hub_cutinit.experiments.sweep, hub_cutinit.experiments.norm_confidence
import hub_cutinit.simulate, hub_cutinit.hub.card
from hub_cutinit.hub.card import plot_norm_history
from hub_cutinit.experiments.plots import plot_weight_decay
from hub_cutinit.simulate import simulate_norm_sweep
out = tempfile.mkdtemp()
plot_norm_history([{"epoch": 1, "norms": {"backbone": 2.0}}], out + "/n.png")
simulate_norm_sweep(rhos=(1.0, 2.0), n_pairs=5, lr=0.4, out_dir=out)
row = {"method": "simclr", "c": 1.0, "grad_scale_power": 0.0, "weight_decay": 0.0,
       "knn": (0.5, 0.0, 1), "norm_backbone": (1.0, 0.0, 1), "norm_projection": (0, 0, 0),
       "norm_prediction": (0, 0, 0)}
plot_weight_decay([row, {**row, "weight_decay": 1e-4}], out + "/wd.png")
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
print("ok")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_one_set_grammar_for_recipes_and_sweep() -> None:
    items = ["proj_dim=256", "byol.pred_hidden_dim=128", "name=abc", "flag=true", "ks=[1, 2]"]
    assert parse_set(items) == {
        "*": {"proj_dim": 256, "name": "abc", "flag": True, "ks": [1, 2]},
        "byol": {"pred_hidden_dim": 128},
    }
    # one method: its own items win over the unprefixed ones
    assert parse_set(["proj_dim=1", "byol.proj_dim=2", "t=0.5"], method="byol") == {
        "proj_dim": 2,
        "t": 0.5,
    }
    with pytest.raises(ValueError, match="names method 'byol', but this run trains 'simclr'"):
        parse_set(["byol.proj_dim=2"], method="simclr")
    for bad in ("proj_dim", "=3", ".x=1", "byol.=1"):
        with pytest.raises(ValueError, match="KEY=VALUE or METHOD.KEY=VALUE"):
            parse_set([bad])
