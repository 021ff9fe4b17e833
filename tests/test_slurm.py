"""The SLURM template runs, against a fake ``srun`` / ``scontrol`` / ``accelerate`` on this
machine: the launch command each node would run, and the requeue after preemption."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "recipes" / "slurm" / "train.sbatch"

FAKES = {
    # `scontrol show hostnames LIST` prints the nodes; `scontrol requeue ID` is logged
    "scontrol": """#!/usr/bin/env bash
if [ "$1 $2" = "show hostnames" ]; then printf 'node-a\\nnode-b\\n'; exit 0; fi
echo "scontrol $*" >> "$FAKE_LOG"
""",
    # one task per node: SLURM_NODEID 0..N-1, in the background; SIGTERM forwarded to the tasks
    "srun": """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do
  SLURM_NODEID=$node SLURM_PROCID=$node "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || status=$?; done
exit $status
""",
    # records what would be launched; exits FAKE_EXIT, or waits for SIGTERM and exits 75
    "accelerate": """#!/usr/bin/env bash
echo "node=$SLURM_NODEID accelerate $*" >> "$FAKE_LOG"
if [ -n "${FAKE_WAIT:-}" ]; then
  trap 'echo "node=$SLURM_NODEID checkpointed" >> "$FAKE_LOG"; exit 75' TERM
  while true; do sleep 0.1; done
fi
exit "${FAKE_EXIT:-0}"
""",
}


@pytest.fixture
def fake_slurm(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(tmp_path / "log.txt"),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "cut",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NUM_NODES": "2",
        "GPUS_PER_NODE": "4",
    }


def _log(env: dict[str, str]) -> list[str]:
    return Path(env["FAKE_LOG"]).read_text().splitlines()


def _sbatch(env: dict[str, str], **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", str(TEMPLATE), "byol", "--dataset", "uoft-cs/cifar10", "--epochs", "3"],
        env={**env, **extra},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_each_node_launches_accelerate_with_its_machine_rank(fake_slurm) -> None:
    job = _sbatch(fake_slurm)
    assert job.wait(timeout=60) == 0, job.stdout.read()
    launches = sorted(line for line in _log(fake_slurm) if "accelerate" in line)
    common = (
        "accelerate launch --multi_gpu --num_machines 2 --num_processes 8 --machine_rank {r} "
        "--main_process_ip node-a --main_process_port 29500 --rdzv_backend static "
        "-m hub_cutinit.train byol --output-dir outputs/cut-4242 --resume auto "
        "--dataset uoft-cs/cifar10 --epochs 3"
    )
    assert launches == [f"node={r} " + common.format(r=r) for r in (0, 1)]
    assert not any(line.startswith("scontrol") for line in _log(fake_slurm))  # no requeue


def test_ranks_that_exit_75_requeue_the_job(fake_slurm) -> None:
    job = _sbatch(fake_slurm, FAKE_EXIT="75")
    assert job.wait(timeout=60) == 0
    assert "scontrol requeue 4242" in _log(fake_slurm)


def test_sigusr1_before_the_time_limit_checkpoints_every_rank_and_requeues(fake_slurm) -> None:
    job = _sbatch(fake_slurm, FAKE_WAIT="1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # both nodes launched
        if Path(fake_slurm["FAKE_LOG"]).exists() and len(_log(fake_slurm)) >= 2:
            break
        time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` does
    assert job.wait(timeout=60) == 0, job.stdout.read()
    log = _log(fake_slurm)
    assert {"node=0 checkpointed", "node=1 checkpointed"} <= set(log)
    assert log[-1] == "scontrol requeue 4242"
