"""The chaos run: 2 processes trained by a relaunch loop (``--resume auto``), hit at random
points by SIGKILL of one rank and by SIGTERM of the job, end with the uninterrupted run's weights;
no complete checkpoint is ever lost or half-written. ``make test-faults`` runs it."""

from __future__ import annotations

import json
import random
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

STEPS = 40
ARGV = [*TINY_RECIPE_FLAGS, "--set", "proj_hidden_dim=16", "proj_dim=8", "--max-steps", str(STEPS)]
ARGV += ["--checkpoint-every", "4", "--log-every", "2", "--no-convergence-monitor"]
ARGV += ["--collective-timeout", "20", "--resume", "auto"]


def _launch_pair(out: Path, slow: float) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = subprocess_env(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
            WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", **({SLOW_ENV: str(slow)} if slow else {}),
        )  # fmt: skip
        cmd = [sys.executable, str(WRAPPER), str(ROOT / "recipes" / "simclr.py"), *ARGV]
        procs.append(
            subprocess.Popen(
                [*cmd, "--output-dir", str(out)],
                stdin=subprocess.DEVNULL,
                stdout=tempfile.TemporaryFile("w+"),
                stderr=tempfile.TemporaryFile("w+"),
                env=env,
                cwd=ROOT,
            )
        )
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return [proc.returncode for proc in procs]


def _wait_for_new_checkpoint(out: Path, procs: list, after: int, timeout: float = 300) -> None:
    """Until a complete checkpoint newer than ``after`` exists: the run is training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if max(complete_steps(out), default=0) > after:
            return
        time.sleep(0.05)


def _relaunch_loop(out: Path, faults: list[str], rng: random.Random) -> dict:
    """Relaunch until the run finishes; each launch but the last is hit by the next fault."""
    report: dict = {"launches": [], "faults": len(faults)}
    started = time.monotonic()
    last_complete = 0
    while True:
        fault = faults.pop(0) if faults else None
        procs = _launch_pair(out, slow=0.05 if fault else 0.0)
        launched = time.monotonic()
        if fault is not None:
            _wait_for_new_checkpoint(out, procs, after=last_complete)
            time.sleep(rng.uniform(0.0, 3.0))  # mid-step, or inside the next checkpoint write
            if fault == "sigkill-rank":
                victim = rng.choice([0, 1])
                if procs[victim].poll() is None:
                    procs[victim].send_signal(signal.SIGKILL)
            else:  # the scheduler's SIGTERM to the job: every process
                for proc in procs:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
        codes = _wait(procs, timeout=600)
        steps = complete_steps(out)
        for step_dir in (out / "checkpoints").glob("step_*"):  # every visible one is complete
            assert (step_dir / "trainer_state.json").is_file(), step_dir
        assert max(steps, default=0) >= last_complete, "a complete checkpoint was lost"
        last_complete = max(steps, default=0)
        report["launches"].append(
            {"fault": fault, "exit_codes": codes, "seconds": round(time.monotonic() - launched, 1),
             "newest_checkpoint": last_complete}
        )  # fmt: skip
        if codes == [0, 0]:
            break
        if fault == "sigterm-job":
            assert set(codes) <= {EXIT_PREEMPTED, 0}, codes  # both checkpoint and exit 75
        assert len(report["launches"]) < 12, report
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    return report


@pytest.mark.faults
def test_chaos_relaunch_loop_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    reference_started = time.monotonic()
    assert _wait(_launch_pair(whole, slow=0.0), timeout=900) == [0, 0]
    reference_seconds = time.monotonic() - reference_started
    rng = random.Random(20261203)
    faults = ["sigkill-rank", "sigterm-job", "sigkill-rank", "sigterm-job"]
    chaos = tmp_path / "chaos"
    report = _relaunch_loop(chaos, faults, rng)
    assert_same_weights(whole, chaos)
    report["uninterrupted_seconds"] = round(reference_seconds, 1)
    report["time_lost_seconds"] = round(report["wall_seconds"] - reference_seconds, 1)
    print("\nchaos run:", json.dumps(report, indent=1))
    assert report["faults"] == 4 and len(report["launches"]) >= 2
