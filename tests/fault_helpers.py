"""Helpers for the fault-injection tests (tests/test_faults.py, tests/test_bad_input.py).

Two halves:

- **a recipe wrapper**, run as a script in a subprocess, that installs one fault hook and then
  runs a recipe exactly as ``python recipes/<method>.py ...`` would::

      HUB_CUTINIT_FAULT=before_rename:5 python tests/fault_helpers.py recipes/simclr.py --max-steps 12

  ``HUB_CUTINIT_FAULT`` is ``PHASE:N``; the process SIGKILLs itself (no clean-up, no atexit, no
  flush of anything but what it already wrote), printing ``FAULT: ...`` on stderr first:

  - ``after_save_state:N``: in the checkpoint of step N, after ``accelerator.save_state`` wrote
    the model, optimiser and RNG states into ``.tmp-step_N``, before the data position and
    ``trainer_state.json``;
  - ``mid_state_json:N``: in the checkpoint of step N, half of ``trainer_state.json`` written
    and fsynced;
  - ``before_rename:N``: in the checkpoint of step N, everything written, just before
    ``os.replace`` turns ``.tmp-step_N`` into ``step_N``;
  - ``mid_step:N``: in the N-th call of ``Trainer.training_step`` *in this process*, after the optimiser
    step (an update that no checkpoint holds);
  - ``stop_step:N``: like ``mid_step`` but SIGSTOP instead of SIGKILL: the process hangs (a lost
    node that never closes its connections); the parent kills it.

  ``HUB_CUTINIT_FAULT_SLOW=SECONDS`` sleeps that long inside every checkpoint write (between
  ``save_state`` and the rename) and half as long after every training step, so that kills sent
  from outside at random times land in all phases, checkpoint writes included.

- **parent-side helpers**: :func:`run_wrapped` (the subprocess, optionally killed from outside
  at a random time), tiny recipe flags, image encoders and a small parquet dataset builder.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = Path(__file__).resolve()
FAULT_ENV = "HUB_CUTINIT_FAULT"
SLOW_ENV = "HUB_CUTINIT_FAULT_SLOW"
PHASES = ("after_save_state", "mid_state_json", "before_rename", "mid_step", "stop_step")

#: A recipe run that takes well under a second of compute per step on one CPU thread.
TINY_RECIPE_FLAGS = [
    "--backbone", "test_resnet", "--image-size", "16", "--batch-size", "8",
    "--eval-split", "none", "--num-workers", "0", "--no-baselines", "--seed", "0",
]  # fmt: skip


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a recipe subprocess: one BLAS/OpenMP thread (the machine is shared,
    and two threads on two busy cores are ~20x slower than one), offline, unbuffered."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop(FAULT_ENV, None)
    env.pop(SLOW_ENV, None)
    env.update(extra)
    return env


# -- the wrapper (runs inside the subprocess) ---------------------------------------------------
def _die(what: str) -> None:
    print(f"FAULT: SIGKILL {what}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _step_of(path: Any) -> int | None:
    name = Path(str(path)).name
    if name.startswith(".tmp-step_"):
        return int(name.removeprefix(".tmp-step_"))
    return None


def install_fault(spec: str | None, slow: float = 0.0) -> None:
    """Install the hook described by ``spec`` (``PHASE:N``) and the optional slow-down."""
    import json

    import accelerate

    from hub_cutinit.training import checkpoint as ckpt
    from hub_cutinit.training.trainer import Trainer

    phase, n = None, -1
    if spec:
        phase, _, raw = spec.partition(":")
        if phase not in PHASES or not raw.isdigit():
            raise SystemExit(f"{FAULT_ENV} must be PHASE:N with PHASE in {PHASES}, got {spec!r}")
        n = int(raw)

    original_save_state = accelerate.Accelerator.save_state

    def save_state(self, output_dir=None, *args, **kwargs):
        result = original_save_state(self, output_dir, *args, **kwargs)
        if slow:
            time.sleep(slow)
        if phase == "after_save_state" and _step_of(output_dir) == n:
            _die(f"after save_state of {output_dir}")
        return result

    accelerate.Accelerator.save_state = save_state

    class _Json:
        def __getattr__(self, name: str) -> Any:
            return getattr(json, name)

        @staticmethod
        def dump(obj: Any, fp: Any, **kwargs: Any) -> None:
            if phase == "mid_state_json" and _step_of(Path(fp.name).parent) == n:
                text = json.dumps(obj, **kwargs)
                fp.write(text[: len(text) // 2])
                fp.flush()
                os.fsync(fp.fileno())
                _die(f"in the middle of writing {fp.name}")
            json.dump(obj, fp, **kwargs)

    class _Os:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def replace(src: Any, dst: Any) -> None:
            if phase == "before_rename" and _step_of(src) == n:
                _die(f"before renaming {src}")
            os.replace(src, dst)

    ckpt.json = _Json()
    ckpt.os = _Os()

    original_write_json = ckpt.write_json_atomic

    def write_json_atomic(path: Any, payload: Any, **kwargs: Any) -> Any:
        # checkpoints write trainer_state.json through hub_cutinit.atomic: half of it lands in
        # the atomic writer's temporary file, fsynced, then the process dies
        if phase == "mid_state_json" and _step_of(Path(path).parent) == n:
            text = json.dumps(payload, indent=1, **kwargs)
            tmp = Path(path).with_name(f".{Path(path).name}.fault.tmp")
            with open(tmp, "w") as fp:
                fp.write(text[: len(text) // 2])
                fp.flush()
                os.fsync(fp.fileno())
            _die(f"in the middle of writing {path}")
        return original_write_json(path, payload, **kwargs)

    ckpt.write_json_atomic = write_json_atomic

    original_step = Trainer.training_step
    calls = [0]

    def training_step(self: Any, views: Any) -> Any:
        result = original_step(self, views)
        calls[0] += 1
        if slow:
            time.sleep(slow / 2)
        if phase == "mid_step" and calls[0] == n:
            _die(f"after the optimiser step of training_step call {n}")
        if phase == "stop_step" and calls[0] == n:
            print(f"FAULT: SIGSTOP after training_step call {n}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        return result

    Trainer.training_step = training_step


def _wrapper_main(argv: Sequence[str]) -> None:
    import runpy

    if not argv:
        raise SystemExit("usage: fault_helpers.py RECIPE.py [recipe flags]")
    install_fault(os.environ.get(FAULT_ENV), float(os.environ.get(SLOW_ENV) or 0))
    sys.argv = [str(argv[0]), *argv[1:]]
    runpy.run_path(str(argv[0]), run_name="__main__")


# -- parent side --------------------------------------------------------------------------------
@dataclass
class Run:
    """What a (possibly killed) recipe subprocess left behind."""

    returncode: int
    stdout: str
    stderr: str
    killed_from_outside: bool = False
    kill_delay: float | None = None

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def tail(self, n: int = 3000) -> str:
        return (
            f"rc={self.returncode}\n--- stdout\n{self.stdout[-n:]}\n--- stderr\n{self.stderr[-n:]}"
        )


def complete_steps(output_dir: Path) -> list[int]:
    """Steps of the complete checkpoints (``step_N`` holding ``trainer_state.json``)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(
        int(p.name.removeprefix("step_"))
        for p in root.glob("step_*")
        if (p / "trainer_state.json").is_file()
    )


def partial_dirs(output_dir: Path) -> list[Path]:
    """Checkpoint directories that were never completed (``.tmp-step_*``)."""
    root = Path(output_dir) / "checkpoints"
    return sorted(root.glob(".tmp-step_*")) if root.is_dir() else []


def run_wrapped(
    recipe: str,
    argv: Sequence[str],
    *,
    fault: str | None = None,
    slow: float = 0.0,
    kill_after_new_checkpoint: tuple[Path, float] | None = None,
    rng: random.Random | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
) -> Run:
    """Run ``recipes/<recipe>.py argv`` through the wrapper.

    ``kill_after_new_checkpoint=(output_dir, max_delay)``: once the subprocess has written a new
    complete checkpoint (one more than existed at start), wait a random time in
    ``[0, max_delay]`` (from ``rng``) and SIGKILL it from outside.
    """
    extra = {}
    if fault:
        extra[FAULT_ENV] = fault
    if slow:
        extra[SLOW_ENV] = str(slow)
    cmd = [sys.executable, str(WRAPPER), str(ROOT / "recipes" / f"{recipe}.py"), *argv]
    full_env = {**subprocess_env(**extra), **(env or {})}
    killed, delay = False, None
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out_f,
            stderr=err_f,
            text=True,
            env=full_env,
            cwd=cwd or ROOT,
        )
        try:
            if kill_after_new_checkpoint is not None:
                out, max_delay = kill_after_new_checkpoint
                before = max(complete_steps(out), default=0)
                deadline = time.monotonic() + timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    if max(complete_steps(out), default=0) > before:
                        delay = (rng or random).uniform(0.0, max_delay)
                        time.sleep(delay)
                        if proc.poll() is None:
                            proc.send_signal(signal.SIGKILL)
                            killed = True
                        break
                    time.sleep(0.01)
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out_f.seek(0)
        err_f.seek(0)
        return Run(proc.returncode, out_f.read(), err_f.read(), killed, delay)


# -- images and datasets ------------------------------------------------------------------------
def encode(image: Any, fmt: str = "PNG") -> bytes:
    """``image`` (a PIL image) encoded as ``fmt``."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def write_image_parquet(
    path: Path,
    images: list[bytes | None],
    labels: list[int] | None = None,
    *,
    num_classes: int = 3,
) -> Path:
    """A one-file parquet split: ``image`` = ``{"bytes": ..., "path": None}`` (``None`` for a
    missing image) and, when ``labels`` is given, a ``ClassLabel`` ``label`` column."""
    import datasets

    feats: dict[str, Any] = {"image": datasets.Image()}
    columns: dict[str, Any] = {
        "image": [None if b is None else {"bytes": b, "path": None} for b in images]
    }
    if labels is not None:
        feats["label"] = datasets.ClassLabel(names=[f"c{i}" for i in range(num_classes)])
        columns["label"] = labels
    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(feats))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


if __name__ == "__main__":
    _wrapper_main(sys.argv[1:])


# -- two processes without a launcher (issue 14: a dead rank) -----------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PairRun:
    """Two ranks of one gloo run: their :class:`Run` and when each exited (monotonic seconds)."""

    runs: list[Run]
    exited_at: list[float]

    def tail(self, n: int = 2500) -> str:
        return "\n".join(f"=== rank {r}\n{run.tail(n)}" for r, run in enumerate(self.runs))


def run_pair(
    recipe: str,
    argv: Sequence[str],
    *,
    fault_rank: int | None = None,
    fault: str | None = None,
    timeout: float = 300,
    grace: float = 90,
) -> PairRun:
    """Run ``recipes/<recipe>.py argv`` as ranks 0 and 1 of a gloo group on this machine, each
    process started directly (``RANK``/``WORLD_SIZE``/``MASTER_*`` set, as torchrun would, but
    with no launcher that could stop the survivor): what each node of a 2-node job sees.
    ``fault`` (``PHASE:N``, see :func:`install_fault`) is installed in ``fault_rank`` only.
    Once one process has exited, the other gets ``grace`` seconds before it is SIGKILLed (a
    SIGSTOPped one never exits by itself).
    """
    port = free_port()
    procs, files = [], []
    for rank in range(2):
        extra = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
        }
        if fault and rank == fault_rank:
            extra[FAULT_ENV] = fault
        out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        files.append((out_f, err_f))
        cmd = [sys.executable, str(WRAPPER), str(ROOT / "recipes" / f"{recipe}.py"), *argv]
        procs.append(
            subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out_f,
                stderr=err_f,
                text=True,
                env=subprocess_env(**extra),
                cwd=ROOT,
            )
        )
    exited = [0.0, 0.0]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not all(exited):
            for rank, proc in enumerate(procs):
                if not exited[rank] and proc.poll() is not None:
                    exited[rank] = time.monotonic()
                    deadline = min(deadline, exited[rank] + grace)
            time.sleep(0.02)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    runs = []
    for proc, (out_f, err_f) in zip(procs, files, strict=True):
        out_f.seek(0)
        err_f.seek(0)
        runs.append(Run(proc.returncode, out_f.read(), err_f.read()))
        out_f.close()
        err_f.close()
    return PairRun(runs, [t or float("inf") for t in exited])


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes (zombies included) whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def saved_weights(out: Path) -> dict[str, Any]:
    """Every tensor of a hub_cutinit save: the backbone and the heads (prefixed ``heads.``)."""
    from safetensors.torch import load_file

    return {
        **load_file(str(out / "model.safetensors")),
        **{f"heads.{k}": v for k, v in load_file(str(out / "ssl_heads.safetensors")).items()},
    }


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    """Two saves hold the same tensors, equal within ``atol``."""
    import torch

    wa, wb = saved_weights(a), saved_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=atol, msg=key)
