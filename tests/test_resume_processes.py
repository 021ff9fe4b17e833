"""``--resume`` on another number of processes (issue 12): 2 → 1 and 1 → 2 on CPU (gloo).

The saved data positions belong to the old sharding, so a mid-epoch resume restarts the
epoch's stream and says, in one line naming both process counts, how many images of the epoch
are seen again; model, optimiser and step continue. Each test: ~20-40 s on one thread.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from proc_group import run_processes

from hub_cutinit.training import TrainConfig, Trainer, latest_checkpoint


def _train(rank: int, world: int, out: str, max_steps: int, resume: bool) -> tuple:
    """A tiny run; returns (steps, images seen, what the main process printed)."""
    cfg = TrainConfig(
        method="simclr",
        backbone="test_resnet",
        image_size=16,
        batch_size=8,
        max_steps=max_steps,
        checkpoint_every=2,
        eval_split=None,
        baselines=False,
        output_dir=out,
        resume=resume,
        overrides={"proj_hidden_dim": 32},
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = Trainer(cfg).train()
    return result["steps"], result["images_seen"], printed.getvalue()


def _written_by(out: Path) -> int:
    state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
    return state["num_processes"]


def test_resume_two_processes_on_one(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    (steps, seen, _), _ = run_processes(_train, 2, out, 4, False)
    assert (steps, seen, _written_by(tmp_path / "run")) == (4, 64, 2)
    steps, seen, printed = _train(0, 1, out, 6, True)
    assert steps == 6 and seen == 64 + 2 * 8  # the step count continues
    lines = [ln for ln in printed.splitlines() if "this run has" in ln]
    assert len(lines) == 1, printed
    assert "written by 2 process(es), this run has 1 process(es)" in lines[0]
    assert "epoch 0 restarts from its beginning and its 64 images" in lines[0]
    assert _written_by(tmp_path / "run") == 1


def test_resume_one_process_on_two(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    assert _train(0, 1, out, 4, False)[:2] == (4, 32)
    (steps, seen, printed), (steps_1, _, _) = run_processes(_train, 2, out, 6, True)
    assert steps == steps_1 == 6 and seen == 32 + 2 * 16
    assert "written by 1 process(es), this run has 2 process(es)" in printed
    assert "its 32 images trained on so far are seen again" in printed
    assert _written_by(tmp_path / "run") == 2
