"""Fault injection on real recipe runs in subprocesses (slow: ``make test-faults``).

- SIGKILL at random points (inside checkpoint writes included), then ``--resume``: always from
  the last complete checkpoint, never a partial one, and the final weights equal those of an
  uninterrupted run;
- recipes pushing to the fake Hub (tests/hub_server.py): the token never reaches a file, a log
  or the Hub; 5xx, a bad token or a dead network give a clear error and keep the local output;
- NaN in a recipe run: a non-zero exit with the message naming the step and the likely cause.

The kill points come from ``random.Random(HUB_CUTINIT_FAULT_SEED)`` (default 7); the recipe
wrapper and its hooks are in tests/fault_helpers.py. Run with ``-s`` to see the kill table.
"""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import HUB_USER
from fault_helpers import (
    TINY_RECIPE_FLAGS,
    complete_steps,
    partial_dirs,
    run_wrapped,
)
from safetensors.torch import load_file

from hub_cutinit import get_preset
from hub_cutinit.hub import load_ssl_model
from hub_cutinit.training import latest_checkpoint

pytestmark = pytest.mark.faults

MAX_STEPS = 16
METHOD_FLAGS = {
    m: ["--set", *(f"{k}={v}" for k, v in get_preset(m, "tiny").items())]
    for m in ("simclr", "byol")
}
CHECKPOINT_PHASES = ("after_save_state", "mid_state_json", "before_rename")


def weights(out: Path) -> dict[str, torch.Tensor]:
    return {
        **load_file(str(out / "model.safetensors")),
        **{f"heads.{k}": v for k, v in load_file(str(out / "ssl_heads.safetensors")).items()},
    }


def check_complete(ckpt: Path) -> int:
    """A complete checkpoint: every file there and readable; returns its step."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert ckpt.name == f"step_{state['step']:08d}"
    assert (ckpt / "loader_rank0.pt").is_file() and (ckpt / "optimizer.bin").is_file()
    assert load_file(str(ckpt / "model.safetensors"))
    return int(state["step"])


def error_line(stderr: str, prefix: str) -> str:
    """The line of the traceback's final exception (exactly one line starts with ``prefix``)."""
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def resumed_from(run_stdout: str, out: Path, step: int | None) -> bool:
    if step is None:
        return "no complete checkpoint" in run_stdout
    ckpt = out / "checkpoints" / f"step_{step:08d}"
    return f"Resumed from {ckpt} (step {step}, epoch 0)." in run_stdout


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(
    method: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("HUB_CUTINIT_FAULT_SEED", "7"))
    rng = random.Random(f"{seed}-{method}")
    argv = [*TINY_RECIPE_FLAGS, *METHOD_FLAGS[method], "--max-steps", str(MAX_STEPS)]
    argv += ["--checkpoint-every", "1"]

    ref_out = tmp_path / "uninterrupted"
    ref = run_wrapped(method, [*argv, "--output-dir", str(ref_out)])
    assert ref.returncode == 0, ref.tail()

    out = tmp_path / "killed"
    run_argv = [*argv, "--output-dir", str(out), "--resume"]
    plan = [*CHECKPOINT_PHASES, "mid_step", "external", "external"]
    rng.shuffle(plan)
    table: list[dict[str, Any]] = []
    for kind in plan:
        last = max(complete_steps(out), default=None)
        partial_before = [p.name for p in partial_dirs(out)]
        target = (last or 0) + rng.randint(1, 2)
        if kind == "external":  # a kill from outside, at a random time, any phase
            run = run_wrapped(
                method,
                run_argv,
                slow=0.2,
                kill_after_new_checkpoint=(out, 0.9),
                rng=rng,
            )
            point = f"external, {run.kill_delay:.2f} s after a new checkpoint"
        else:
            fault = f"mid_step:{target - (last or 0)}" if kind == "mid_step" else f"{kind}:{target}"
            run = run_wrapped(method, run_argv, fault=fault)
            point = fault
            assert "FAULT: SIGKILL" in run.stderr, run.tail()
        assert run.killed, run.tail()
        assert resumed_from(run.stdout, out, last), run.tail()  # the last complete one
        partial = [p.name for p in partial_dirs(out)]
        kept = latest_checkpoint(out)
        if kept is None:
            assert not complete_steps(out)
        else:
            assert check_complete(kept) == max(complete_steps(out))
        kept_name = kept.name if kept else None
        if kind != "external":  # the previous step's checkpoint (none before step 1)
            assert kept_name == (f"step_{target - 1:08d}" if target > 1 else None)
        if kind in CHECKPOINT_PHASES:  # (a checkpoint write first removes older partial ones)
            assert partial == [f".tmp-step_{target:08d}"]
        elif kind == "mid_step":  # no new partial one; an older one stays until the next write
            assert partial == ([] if target - 1 > (last or 0) else partial_before)
        table.append(
            {"fault": point, "resumed_from": last, "left_partial": partial, "latest": kept_name}
        )

    last = max(complete_steps(out))
    final = run_wrapped(method, run_argv)
    assert final.returncode == 0, final.tail()
    assert resumed_from(final.stdout, out, last), final.tail()
    report = "\n".join(str(row) for row in table)
    print(f"\nSIGKILL chain ({method}, seed {seed}):\n{report}")
    assert len(table) >= 5 and sum(bool(r["left_partial"]) for r in table) >= 1, report
    assert not partial_dirs(out)  # the next checkpoint write cleaned every partial one
    assert complete_steps(out)[-1] == MAX_STEPS

    expected, got = weights(ref_out), weights(out)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=key)
    a, b = (json.loads((d / "config.json").read_text())["hub_cutinit"] for d in (ref_out, out))
    assert a["training"]["steps"] == b["training"]["steps"] == MAX_STEPS
    assert a["training"]["images_seen"] == b["training"]["images_seen"]
    for name, stats in a["norms"].items():  # restored mergeable norm statistics
        assert b["norms"][name]["count"] == stats["count"]
        assert b["norms"][name]["mean"] == pytest.approx(stats["mean"], rel=1e-5)


# -- Hub around recipe runs ----------------------------------------------------------------------
SECRET = "hf_fake-issue7-recipe-secret-token-077"


def hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_CACHE": str(tmp_path / "hf-home" / "hub"),
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "1",
        "HUB_CUTINIT_PUSH_BACKOFF": "0.01",
        "HF_TOKEN": SECRET,
    }
    env.update(extra)
    return env


def test_recipe_push_never_writes_the_token_anywhere(fake_hub, tmp_path: Path) -> None:
    fake_hub.tokens[SECRET] = HUB_USER
    try:
        repo = f"{HUB_USER}/recipe-push"
        out = tmp_path / "run"
        fake_hub.fail_next(1, 503, path_contains="/api/repos/create")
        run = run_wrapped(
            "simclr",
            [*TINY_RECIPE_FLAGS, "--max-steps", "2", "--checkpoint-every", "1"]
            + ["--output-dir", str(out), "--push-to-hub", repo],
            env=hub_env(tmp_path),
            cwd=tmp_path,
        )
    finally:
        fake_hub.tokens.pop(SECRET, None)
    assert run.returncode == 0, run.tail()
    assert "retrying" in run.stderr  # the 503 was retried
    uploaded = fake_hub.files(repo)
    assert {"config.json", "model.safetensors", "ssl_heads.safetensors", "README.md"} <= set(
        uploaded
    )
    assert not any("checkpoints" in name for name in uploaded)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # output, HF_HOME, cache ...
    assert len(files) > 10
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    leaks += [name for name, data in uploaded.items() if SECRET.encode() in data]
    leaks += [s for s in ("stdout", "stderr") if SECRET in getattr(run, s)]
    assert not leaks


@pytest.mark.parametrize("failure", ["5xx", "bad-token", "network-down"])
def test_recipe_push_failure_is_clear_and_keeps_the_trained_model(
    failure: str, fake_hub, tmp_path: Path
) -> None:
    env = hub_env(tmp_path, HUB_CUTINIT_PUSH_ATTEMPTS="3")
    if failure == "5xx":
        fake_hub.tokens[SECRET] = HUB_USER
        fake_hub.fail_next(100, 503, path_contains="/api/repos/create")
        expected = "after 3 attempt(s)"
    elif failure == "bad-token":
        expected = "hf auth login"
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            env["HF_ENDPOINT"] = f"http://127.0.0.1:{s.getsockname()[1]}"
        expected = "after 3 attempt(s)"
    out = tmp_path / "run"
    try:
        run = run_wrapped(
            "simclr",
            [*TINY_RECIPE_FLAGS, "--max-steps", "2", "--checkpoint-every", "1"]
            + ["--output-dir", str(out), "--push-to-hub", f"{HUB_USER}/failing"],
            env=env,
            cwd=tmp_path,
        )
    finally:
        fake_hub.tokens.pop(SECRET, None)
    assert run.returncode not in (0, -9), run.tail()
    error = error_line(run.stderr, "hub_cutinit.hub.push.Hub")
    assert error.split(":")[0] in (
        "hub_cutinit.hub.push.HubError",
        "hub_cutinit.hub.push.HubAuthError",
    ), run.tail()
    assert expected in run.stderr and SECRET not in run.stderr + run.stdout
    if failure != "bad-token":
        assert run.stderr.count("retrying in") == 2  # backoff between 3 attempts
    # the trained model and the checkpoints are all there and load
    assert load_ssl_model(out).method == "simclr"
    assert check_complete(latest_checkpoint(out)) == 2
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["README.md", "checkpoints", "config.json", "model.safetensors", "norms.png"]
        + ["convergence.png", "ssl_heads.safetensors"]
    )
    assert ("model", f"{HUB_USER}/failing") not in fake_hub.repos or failure == "5xx"


def test_recipe_nan_exits_non_zero_naming_the_step_and_cause(tmp_path: Path) -> None:
    out = tmp_path / "nan"
    run = run_wrapped(
        "simclr",
        [*TINY_RECIPE_FLAGS, "--max-steps", "6", "--checkpoint-every", "1", "--lr", "1e30"]
        + ["--output-dir", str(out)],
    )
    assert run.returncode == 1, run.tail()
    error = error_line(run.stderr, "hub_cutinit.training.failures.NonFiniteLossError:")
    assert error.startswith("hub_cutinit.training.failures.NonFiniteLossError: Non-finite loss")
    assert "at step 2." in error and "learning rate" in error and "c=3" in error
    assert latest_checkpoint(out) is None or check_complete(latest_checkpoint(out)) == 1
    assert not partial_dirs(out) and not (out / "model.safetensors").exists()
