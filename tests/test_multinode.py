"""Two "machines" on localhost (``accelerate launch --num_machines 2``, one gloo process each,
launched concurrently) train to the weights of a 2-process single-machine run; the launch, the
global batch and the lr scaling are recorded in config.json and the card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fault_helpers import ROOT, TINY_RECIPE_FLAGS, assert_same_weights, free_port, saved_weights

FLAGS = [*TINY_RECIPE_FLAGS, "--set", "proj_hidden_dim=16", "proj_dim=8", "--max-steps", "4"]
FLAGS += ["--no-convergence-monitor"]


def _launch(out: Path, machines: int, rank: int, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", str(machines), "--machine_rank", str(rank),
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(ROOT / "recipes" / "simclr.py"), *FLAGS, "--output-dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-3000:]


@pytest.mark.faults  # four launches of accelerate: `make test-faults`
def test_two_machines_on_localhost_equal_two_processes_on_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one_machine", tmp_path / "two_machines"
    _finish([_launch(one, 1, 0, free_port())])
    port = free_port()
    _finish([_launch(two, 2, rank, port) for rank in (0, 1)])  # concurrently, as two nodes
    assert_same_weights(one, two, atol=1e-6)
    a, b = saved_weights(one), saved_weights(two)
    largest = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    print(f"\ntwo machines vs one: largest weight difference {largest:.3g}")
    records = {
        name: json.loads((out / "config.json").read_text())["hub_cutinit"]["training"]
        for name, out in (("one", one), ("two", two))
    }
    assert records["one"]["num_machines"] == 1 and records["two"]["num_machines"] == 2
    for record in records.values():
        assert record["num_processes"] == 2 and record["global_batch_size"] == 2 * 8
        assert record["lr"] == record["base_lr"] * 16 / 256  # the lr scaled by the world size
    card = (two / "README.md").read_text()
    assert "2 machine(s) × 1 process(es) × batch 8 = global batch 16" in card
    # every machine's process read its own shard: both checkpoints hold one data position each
    ckpt = sorted((two / "checkpoints").glob("step_*"))[-1]
    assert sorted(p.name for p in ckpt.glob("loader_rank*.pt")) == [
        "loader_rank0.pt",
        "loader_rank1.pt",
    ]
