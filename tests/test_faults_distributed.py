"""Issue 14, slow half (``make test-faults``): faults across processes and on a real full disk.

- a dead rank: SIGKILL one of two gloo CPU processes mid-step; the survivor exits on its own
  within 60 s naming the lost rank and ``--resume``, no process is left behind, and ``--resume``
  ends with the weights of an uninterrupted run;
- a hung rank (SIGSTOP: a node that never closes its sockets): the survivor stops after
  ``--collective-timeout``;
- a full disk: the output folder on a size-limited tmpfs (root only, skipped otherwise);
- two runs on one folder, as real concurrent processes, then a crashed holder's stale lock.

The two processes are started directly (``RANK``/``WORLD_SIZE``/``MASTER_*``, no launcher; see
``fault_helpers.run_pair``): what each node of a 2-node job sees. Run with ``-s`` to see the
measured exit times.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import (
    ROOT,
    TINY_RECIPE_FLAGS,
    WRAPPER,
    assert_same_weights,
    complete_steps,
    partial_dirs,
    processes_mentioning,
    run_pair,
    run_wrapped,
    subprocess_env,
)
from safetensors.torch import load_file

from hub_cutinit import get_preset
from hub_cutinit.hub import load_ssl_model
from hub_cutinit.training import latest_checkpoint
from hub_cutinit.training.checkpoint import LOCK_NAME

pytestmark = pytest.mark.faults

SIMCLR = ["--set", *(f"{k}={v}" for k, v in get_preset("simclr", "tiny").items())]
PAIR_ARGV = [*TINY_RECIPE_FLAGS, *SIMCLR, "--max-steps", "8", "--checkpoint-every", "2"]


def final_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "LostProcessError:" in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def pair_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pair") / "uninterrupted"
    pair = run_pair("simclr", [*PAIR_ARGV, "--output-dir", str(out)])
    assert [r.returncode for r in pair.runs] == [0, 0], pair.tail()
    return out


# -- 1. a dead rank ------------------------------------------------------------------------------
@pytest.mark.parametrize("dead", [1, 0], ids=["rank1-dies", "rank0-dies"])
def test_dead_rank_survivor_exits_with_the_lost_rank_then_resume_equals_uninterrupted(
    dead: int, pair_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    argv = [*PAIR_ARGV, "--output-dir", str(out), "--collective-timeout", "30"]
    pair = run_pair("simclr", argv, fault_rank=dead, fault="mid_step:5")
    survivor = 1 - dead
    killed, alive = pair.runs[dead], pair.runs[survivor]
    assert killed.killed and "FAULT: SIGKILL" in killed.stderr, pair.tail()
    assert alive.returncode == 1, pair.tail()  # exited by itself, not killed after the grace
    waited = pair.exited_at[survivor] - pair.exited_at[dead]
    print(f"\nrank {dead} SIGKILLed mid-step: rank {survivor} exited {waited:.2f} s later")
    assert waited < 60, pair.tail()
    error = final_error(alive.stderr)
    assert f"Lost process rank {dead} of 2 during step 6" in error
    assert f"This process (rank {survivor}) stops too" in error
    assert "step_00000004" in error and "--resume on all 2 processes" in error
    assert not processes_mentioning(str(out))  # nothing left running (or as a zombie)
    assert complete_steps(out)[-1] == 4 and not partial_dirs(out)
    lock_left = (out / LOCK_NAME).exists()
    assert lock_left == (dead == 0)  # a dead main process leaves its (stale) lock behind

    resumed = run_pair("simclr", [*argv, "--resume"])
    assert [r.returncode for r in resumed.runs] == [0, 0], resumed.tail()
    stdout = resumed.runs[0].stdout
    assert f"Resumed from {out / 'checkpoints' / 'step_00000004'} (step 4, epoch 0)." in stdout
    assert ("Taking over the stale lock" in stdout) == lock_left
    assert not (out / LOCK_NAME).exists()
    assert_same_weights(pair_reference, out)


def test_hung_rank_survivor_stops_after_the_collective_timeout(tmp_path: Path) -> None:
    out = tmp_path / "hung"
    argv = [*PAIR_ARGV, "--output-dir", str(out), "--collective-timeout", "10"]
    started = time.monotonic()
    pair = run_pair("simclr", argv, fault_rank=1, fault="stop_step:3", grace=3)
    alive, stopped = pair.runs
    assert "FAULT: SIGSTOP" in stopped.stderr and stopped.killed, pair.tail()  # by run_pair
    assert alive.returncode == 1, pair.tail()
    error = final_error(alive.stderr)
    assert "Lost process rank 1 of 2 during step 4" in error and "--resume" in error
    total = pair.exited_at[0] - started
    print(f"\nrank 1 SIGSTOPped, --collective-timeout 10: rank 0 exited {total:.1f} s after start")
    assert total < 90
    assert not processes_mentioning(str(out))


# -- 2. a real full disk -------------------------------------------------------------------------
def _mount_tmpfs(folder: Path, size: int) -> None:
    folder.mkdir(parents=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("needs root and a kernel that allows mounting a tmpfs")


def test_full_tmpfs_keeps_the_previous_checkpoint_and_resume_completes(tmp_path: Path) -> None:
    argv = [*TINY_RECIPE_FLAGS, *SIMCLR, "--max-steps", "5", "--checkpoint-every", "1"]
    ref = tmp_path / "ref"
    assert run_wrapped("simclr", [*argv, "--output-dir", str(ref)]).returncode == 0
    ckpt = ref / "checkpoints" / "step_00000005"
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, int(2.5 * size) + 64 * 1024)  # two checkpoints fit, a third does not
    try:
        out = disk / "run"
        run = run_wrapped("simclr", [*argv, "--output-dir", str(out)])
        assert run.returncode == 1, run.tail()
        error = [ln for ln in run.stderr.splitlines() if ln.startswith("hub_cutinit.")][-1]
        assert error.startswith("hub_cutinit.training.checkpoint.DiskFullError: [Errno 28]")
        assert f"No space left on device while writing checkpoint step_00000003 in {out}" in error
        assert "step_00000002, is intact" in error and "--resume" in error
        assert complete_steps(out) == [1, 2] and not partial_dirs(out)
        assert load_file(str(latest_checkpoint(out) / "model.safetensors"))
        assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = run_wrapped("simclr", [*argv, "--output-dir", str(out), "--resume"])
        assert resumed.returncode == 0, resumed.tail()
        assert "Resumed from" in resumed.stdout and "step_00000002" in resumed.stdout
        assert_same_weights(ref, out)
        assert load_ssl_model(out).method == "simclr"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# -- 4. two runs, one folder ---------------------------------------------------------------------
def test_second_concurrent_run_fails_at_once_and_a_crashed_holder_is_taken_over(
    tmp_path: Path,
) -> None:
    out = tmp_path / "shared"
    argv = [*TINY_RECIPE_FLAGS, *SIMCLR, "--max-steps", "40", "--checkpoint-every", "5"]
    argv += ["--output-dir", str(out)]
    cmd = [sys.executable, str(WRAPPER), str(ROOT / "recipes" / "simclr.py"), *argv]
    first = subprocess.Popen(
        cmd,
        env=subprocess_env(HUB_CUTINIT_FAULT_SLOW="0.2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_NAME).exists() and time.monotonic() < deadline:
            assert first.poll() is None
            time.sleep(0.05)
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == first.pid
        started = time.monotonic()
        second = run_wrapped("simclr", argv)
        took = time.monotonic() - started
        print(f"\nsecond run on a locked folder failed after {took:.1f} s (imports included)")
        assert second.returncode == 1, second.tail()
        error = second.stderr.strip().splitlines()[-1]
        assert error.startswith("hub_cutinit.training.checkpoint.OutputDirLockedError:")
        assert f"{out} is in use by PID {first.pid} on this machine" in error
        assert first.poll() is None  # the first run goes on
        while not complete_steps(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # a crash: the lock stays behind
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert (out / LOCK_NAME).exists()
    resumed = run_wrapped("simclr", [*argv, "--resume"])
    assert resumed.returncode == 0, resumed.tail()
    assert f"Taking over the stale lock {out / LOCK_NAME} of PID {first.pid}" in resumed.stdout
    assert "Resumed from" in resumed.stdout and not (out / LOCK_NAME).exists()
