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

A full disk (``ENOSPC``, or a quota) while writing a checkpoint raises :class:`DiskFullError`
naming the folder: the partial ``.tmp-step_*`` directory is removed (it frees the space it
took) and the previous checkpoint is untouched.

**One run per folder**: :func:`acquire_run_lock` creates ``OUT/.hub_cutinit.lock`` (PID, host,
start time) with ``O_EXCL``; a second run on the same folder gets :class:`OutputDirLockedError`
at once. A lock whose process is gone (same host, PID not running or reused) is stale: it is
taken over with a notice, so a crashed run never blocks ``--resume``.

Example:
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> latest_checkpoint(out) is None
    True
    >>> lock, notice = acquire_run_lock(out)
    >>> try:
    ...     acquire_run_lock(out)
    ... except OutputDirLockedError as err:
    ...     "is in use by PID" in str(err)
    True
    >>> lock.release(); lock.path.exists()
    False
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hub_cutinit.atomic import apply_umask, write_json_atomic
from hub_cutinit.hub.format import is_disk_full

__all__ = [
    "latest_checkpoint",
    "layout_change_message",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_layout",
    "saved_loader_epoch",
    "CHECKPOINTS",
    "LOCK_NAME",
    "DiskFullError",
    "OutputDirLockedError",
    "RunLock",
    "acquire_run_lock",
    "disk_full_error",
]

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d{8})$")
LOCK_NAME = ".hub_cutinit.lock"


class DiskFullError(OSError):
    """The disk (or quota) filled up while writing; the message names the folder and the fix."""


class OutputDirLockedError(RuntimeError):
    """Another run (PID, host in the message) is using this ``--output-dir``."""


def disk_full_error(err: BaseException, what: str, folder: Path, kept: str) -> BaseException:
    """``err`` as a :class:`DiskFullError` naming ``folder`` when it means a full disk
    (:func:`hub_cutinit.hub.format.is_disk_full`); other errors are returned unchanged.

    Example:
        >>> e = disk_full_error(OSError(errno.ENOSPC, "No space left on device"), "writing x",
        ...                     Path("/out"), "Nothing else was changed.")
        >>> isinstance(e, DiskFullError) and e.errno == errno.ENOSPC, str(e)[:52]
        (True, '[Errno 28] No space left on device while writing x i')
    """
    if not is_disk_full(err, folder):
        return err
    code = getattr(err, "errno", None) or errno.ENOSPC
    detail = getattr(err, "strerror", None) or f"{type(err).__name__}: {err}"
    filename = getattr(err, "filename", None)
    return DiskFullError(
        code,
        f"No space left on device while {what} in {folder} ({detail}"
        f"{f': {filename}' if filename else ''}). {kept} Free space on that disk (or pass "
        "another --output-dir) and rerun with --resume.",
    )


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
    complete: list[tuple[int, Path]] = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and (p / STATE_FILE).is_file():
            complete.append((int(m.group(1)), p))
    return max(complete, key=lambda sp: sp[0])[1] if complete else None


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
    try:
        accelerator.save_state(str(tmp))
        torch.save(loader_state, tmp / f"loader_rank{accelerator.process_index}.pt")
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        raise _checkpoint_write_error(err, tmp, root) from err
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {**trainer_state, "step": step, "num_processes": accelerator.num_processes}
        try:
            write_json_atomic(tmp / STATE_FILE, state, default=None)
        except (OSError, RuntimeError) as err:
            raise _checkpoint_write_error(err, tmp, root) from err
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


def _checkpoint_write_error(err: BaseException, tmp: Path, root: Path) -> BaseException:
    """A full disk while writing ``tmp``: remove the partial checkpoint, say what is kept."""
    if not is_disk_full(err, root):
        return err
    shutil.rmtree(tmp, ignore_errors=True)  # never picked up anyway; this frees its space
    previous = latest_checkpoint(root.parent)
    kept = (
        f"The partial checkpoint was removed; the previous one, {previous}, is intact and "
        "--resume continues from it."
        if previous
        else "The partial checkpoint was removed; no complete checkpoint was written yet."
    )
    return disk_full_error(err, f"writing checkpoint {tmp.name.removeprefix('.tmp-')}", root, kept)


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


def layout_change_message(
    checkpoint: Path,
    saved: dict[str, Any],
    state: Any,
    num_processes: int,
    num_workers: int,
) -> str:
    """The one log line of a resume on another number of processes (or data workers).

    The saved data positions belong to another sharding, so they are not used: at an epoch
    end the next epoch starts from its beginning (an exact continuation); mid-epoch, the
    current epoch's stream restarts and its images trained on so far are seen again.
    ``state`` is the restored :class:`~hub_cutinit.training.state.TrainerState`.
    """
    processes, workers = checkpoint_layout(checkpoint, saved)
    was = f"{processes} process(es)" + (f" × {workers} data worker(s)" if workers else "")
    now = f"{num_processes} process(es)" + (
        f" × {num_workers} data worker(s)" if num_workers else ""
    )
    head = f"--resume: {checkpoint.name} was written by {was}, this run has {now}: "
    tail = " Model, optimiser, step and schedule continue."
    if saved_loader_epoch(checkpoint) != state.epoch:
        return head + f"epoch {state.epoch} starts from its beginning (exact)." + tail
    again = state.images_seen - state.epoch_start_images
    return (
        head + f"the data position cannot be carried over, so epoch {state.epoch} restarts "
        f"from its beginning and its {again:,} images trained on so far are seen again." + tail
    )


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


# -- one run per output folder ------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), to tell a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@dataclass
class RunLock:
    """The lock file of one run on an output folder; :meth:`release` removes it (if still ours)."""

    path: Path
    token: str

    def release(self) -> None:
        """Remove the lock file if it is still this run's (never another run's)."""
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)


def _read_holder(path: Path) -> dict[str, Any] | None:
    """The lock's content; ``None`` when unreadable (a writer killed mid-write, or one writing
    right now: a file younger than 10 s counts as held)."""
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) else None
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        try:
            young = time.time() - path.stat().st_mtime < 10
        except OSError:
            young = False
        return {"pid": -1, "host": "?", "started": "just now"} if young else None


def _is_stale(holder: dict[str, Any] | None) -> bool:
    """A lock nobody holds any more: unreadable, or its PID is gone (or reused) on this host."""
    if holder is None:
        return True
    if holder.get("host") != socket.gethostname() or int(holder.get("pid", -1)) < 0:
        return False  # another machine: cannot tell
    pid = int(holder["pid"])
    if not _pid_alive(pid):
        return True
    started = holder.get("process_start")
    return started is not None and _process_start(pid) not in (None, started)


def _locked_message(path: Path, holder: dict[str, Any]) -> str:
    where = (
        "this machine"
        if holder.get("host") == socket.gethostname()
        else f"host {holder.get('host')}"
    )
    return (
        f"{path.parent} is in use by PID {holder.get('pid')} on {where} (a run started "
        f"{holder.get('started')}; lock file {path}). Two runs writing one --output-dir would "
        "overwrite each other's checkpoints: wait for it to finish, or choose another "
        "--output-dir. If no run uses this folder any more (e.g. it crashed on another "
        f"machine), delete {path} and rerun (with --resume to continue it)."
    )


def acquire_run_lock(output_dir: str | os.PathLike) -> tuple[RunLock, str | None]:
    """Lock ``output_dir`` for this process; return ``(lock, notice)``.

    ``notice`` is a message to print when a stale lock of a crashed run was taken over, else
    ``None``. Raises :class:`OutputDirLockedError` (naming the folder, PID and host) when a live
    run holds it. Call it on the main process only; release with ``lock.release()``.
    """
    path = Path(output_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "process_start": _process_start(os.getpid()),
        "token": token,
    }
    notice = None
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_holder(path)
            if holder == {}:  # released meanwhile
                continue
            if holder is not None and not _is_stale(holder):
                raise OutputDirLockedError(_locked_message(path, holder)) from None
            notice = _take_over(path, holder)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(mine))
            fh.flush()
            os.fsync(fh.fileno())
        return RunLock(path, token), notice
    raise OutputDirLockedError(_locked_message(path, _read_holder(path) or {}))


def _take_over(path: Path, holder: dict[str, Any] | None) -> str:
    """Move a stale lock aside (one atomic rename: of two runs doing it, one wins)."""
    aside = path.with_name(f"{LOCK_NAME}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return "a stale lock was removed by another run"
    aside.unlink(missing_ok=True)
    who = (
        f"PID {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"
        if holder
        else "an unreadable lock file"
    )
    return (
        f"Taking over the stale lock {path} of {who}: that process is no longer running (a "
        "crashed run?)."
    )
