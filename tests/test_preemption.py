"""Preemption and requeue: a real SIGTERM / SIGUSR1 mid-epoch checkpoints at an agreed step and
exits 75; the same command with ``--resume auto`` continues to the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fault_helpers import (
    ROOT,
    SLOW_ENV,
    TINY_RECIPE_FLAGS,
    WRAPPER,
    assert_same_weights,
    complete_steps,
    free_port,
    subprocess_env,
)

from hub_cutinit.training.preemption import EXIT_PREEMPTED

RECIPE = str(ROOT / "recipes" / "simclr.py")
FLAGS = [*TINY_RECIPE_FLAGS, "--set", "proj_hidden_dim=16", "proj_dim=8", "--log-every", "2"]
FLAGS += ["--no-convergence-monitor", "--checkpoint-every", "1000"]  # saves: preemption, end


def _start(out: Path, steps: int, *, rank: int | None = None, port: int = 0) -> subprocess.Popen:
    """One recipe process (``rank``: one of 2 gloo ranks started directly, as on 2 nodes),
    through the fault wrapper's slow-down (a 40 ms pause after every step), so that a signal
    sent once training runs lands mid-epoch; its stderr (the progress bar) goes to a file."""
    extra = {SLOW_ENV: "0.08"}
    if rank is not None:
        extra = {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
        }  # fmt: skip
    argv = [*FLAGS, "--max-steps", str(steps), "--output-dir", str(out), "--resume", "auto"]
    err = tempfile.NamedTemporaryFile("w+", suffix=".err", delete=False)
    proc = subprocess.Popen(
        [sys.executable, str(WRAPPER), RECIPE, *argv],
        stdin=subprocess.DEVNULL,
        stdout=tempfile.TemporaryFile("w+"),
        stderr=err,
        text=True,
        env=subprocess_env(OMP_NUM_THREADS="1", **extra),
        cwd=ROOT,
    )
    proc.err_path = Path(err.name)  # type: ignore[attr-defined]
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    return proc.err_path.read_text()  # type: ignore[attr-defined]


def _wait_for_progress(proc: subprocess.Popen, out: Path, timeout: float = 240) -> None:
    """Until the progress bar shows a few steps done: training runs, mid-epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        done = [int(n) for n in re.findall(r"\| *(\d+)/\d+ \[", _stderr(proc))]
        if max(done, default=0) >= 3:
            return
        time.sleep(0.05)
    raise AssertionError(f"no progress (exit {proc.poll()}): {_stderr(proc)[-2000:]}")


@pytest.mark.faults
def test_sigusr1_checkpoints_at_a_logged_step_exits_75_and_auto_resume_completes(
    tmp_path: Path,
) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    reference = _start(whole, 40)
    assert reference.wait(timeout=600) == 0, _stderr(reference)[-2000:]
    run = _start(parts, 40)
    _wait_for_progress(run, parts)
    sent = time.monotonic()
    run.send_signal(signal.SIGUSR1)
    code = run.wait(timeout=120)
    seconds = time.monotonic() - sent
    assert code == EXIT_PREEMPTED, _stderr(run)[-2000:]
    (step,) = complete_steps(parts)
    assert 0 < step < 40 and (step == 1 or step % 2 == 0)  # a logged step: all processes agree
    print(f"SIGUSR1 to exit: {seconds:.1f} s, checkpoint at step {step}")
    assert not (parts / "model.safetensors").exists()  # stopped, not finished
    again = _start(parts, 40)  # the requeued job: the same command
    assert again.wait(timeout=600) == 0, _stderr(again)[-2000:]
    assert_same_weights(whole, parts)
    fresh = _start(tmp_path / "fresh", 2)  # --resume auto with nothing to resume: starts at 0
    assert fresh.wait(timeout=300) == 0
    assert json.loads((tmp_path / "fresh" / "config.json").read_text())


@pytest.mark.faults
def test_sigterm_to_one_of_two_ranks_stops_both_at_the_same_step_then_requeue_equals_whole(
    tmp_path: Path,
) -> None:
    """Two gloo ranks (as on two nodes); only rank 1 is signalled, mid-epoch."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    port = free_port()
    reference = [_start(whole, 30, rank=r, port=port) for r in (0, 1)]
    assert [p.wait(timeout=900) for p in reference] == [0, 0]
    port = free_port()
    ranks = [_start(parts, 30, rank=r, port=port) for r in (0, 1)]
    _wait_for_progress(ranks[0], parts)
    sent = time.monotonic()
    ranks[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=300) for p in ranks]
    seconds = time.monotonic() - sent
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], [_stderr(p)[-1500:] for p in ranks]
    (step,) = complete_steps(parts)
    assert 0 < step < 30
    print(f"SIGTERM (rank 1 only) to both exited: {seconds:.1f} s, checkpoint at step {step}")
    port = free_port()
    requeued = [_start(parts, 30, rank=r, port=port) for r in (0, 1)]
    assert [p.wait(timeout=900) for p in requeued] == [0, 0]
    assert_same_weights(whole, parts)
    assert os.path.exists(parts / "README.md")
