"""Atomic checkpoints: a checkpoint directory either is complete or is never picked up.

Each checkpoint is written under ``OUT/checkpoints/.tmp-step_XXXXXXXX`` by every process
(``accelerator.save_state`` plus each rank's data position), then the main process writes
``trainer_state.json`` last and renames the directory to ``step_XXXXXXXX`` — a single atomic
``os.replace``. :func:`latest_checkpoint` only sees renamed directories that hold
``trainer_state.json``, so a run killed mid-write resumes from the previous checkpoint.

``trainer_state.json`` records ``num_processes``, the number of processes that wrote the
checkpoint. The data positions (``loader_rank{i}.pt``) only make sense for the same number of
processes and data workers: :func:`load_checkpoint` returns ``None`` for the loader state
otherwise, and the trainer restarts the current epoch's stream (and says so).

Example:
    >>> import tempfile
    >>> latest_checkpoint(tempfile.mkdtemp()) is None
    True
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from hub_cutinit.atomic import apply_umask, write_json_atomic

__all__ = [
    "latest_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_layout",
    "saved_loader_epoch",
    "CHECKPOINTS",
]

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d{8})$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``output_dir``, or ``None``."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    complete = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return max(complete, key=lambda p: int(_NAME.match(p.name).group(1))) if complete else None


def save_checkpoint(
    accelerator: Any,
    output_dir: str | os.PathLike,
    step: int,
    trainer_state: dict[str, Any],
    loader_state: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write a complete checkpoint for ``step`` atomically; keep the newest ``keep``."""
    root = Path(output_dir) / CHECKPOINTS
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(loader_state, tmp / f"loader_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {**trainer_state, "step": step, "num_processes": accelerator.num_processes}
        write_json_atomic(tmp / STATE_FILE, state, default=None)
        if final.exists():
            shutil.rmtree(final)
        apply_umask(tmp)  # accelerate writes its files 0600: make them a normal file's mode
        os.replace(tmp, final)
        _fsync_dir(root)
        complete = sorted(p for p in root.iterdir() if _NAME.match(p.name))
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def checkpoint_layout(checkpoint: Path, trainer_state: dict[str, Any]) -> tuple[int, int | None]:
    """``(processes, data workers per process)`` that wrote ``checkpoint`` (workers: ``None``
    when not recorded). Older checkpoints without ``num_processes``: the ``loader_rank*.pt``
    files are counted."""
    processes = trainer_state.get("num_processes")
    if processes is None:
        processes = len(list(Path(checkpoint).glob("loader_rank*.pt")))
    workers = (trainer_state.get("run") or {}).get("num_workers")
    return int(processes), None if workers is None else int(workers)


def saved_loader_epoch(checkpoint: Path) -> int | None:
    """The epoch of the data position saved in ``checkpoint`` (process 0's), if any."""
    path = Path(checkpoint) / "loader_rank0.pt"
    if not path.is_file():
        return None
    return int(torch.load(path, weights_only=True)["hub_cutinit"]["epoch"])


def load_checkpoint(
    accelerator: Any, checkpoint: Path, *, num_workers: int | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Restore model/optimiser/RNG state; return ``(trainer_state, this rank's loader state)``.

    The loader state is ``None`` when the checkpoint was written by another number of
    processes (or, when ``num_workers`` is given and recorded, of data workers): its data
    positions belong to another sharding. Model, optimiser and step are restored either way.
    """
    accelerator.load_state(str(checkpoint))
    with open(checkpoint / STATE_FILE) as f:
        trainer_state = json.load(f)
    processes, workers = checkpoint_layout(checkpoint, trainer_state)
    if processes != accelerator.num_processes or (
        num_workers is not None and workers is not None and workers != num_workers
    ):
        return trainer_state, None
    loader_file = checkpoint / f"loader_rank{accelerator.process_index}.pt"
    if not loader_file.is_file():
        raise ValueError(
            f"{checkpoint} is incomplete: it has no data position for process "
            f"{accelerator.process_index} of {processes}; resume from an earlier checkpoint "
            "(delete this one)."
        )
    return trainer_state, torch.load(loader_file, weights_only=True)
