"""The one way files are written atomically, with a normal file's permissions.

Every writer of the package (``save_pretrained``, the model card, figures, the sweep's
``result.json``, checkpoints) goes through :func:`atomic_path`: the content is written to a
temporary file in the target's folder, flushed to disk (``fsync``), given the permissions a
plain ``open(path, "w")`` would give (``0o666 & ~umask``: 0644 under umask 022, so teammates on
a shared filesystem can read it) and renamed over the target with one ``os.replace``. A reader
sees the old file or the new one, never half of one; a failed write leaves the old file and
no temporary file behind.

Example:
    >>> import json, tempfile
    >>> path = write_json_atomic(tempfile.mkdtemp() + "/run/result.json", {"knn": 0.5})
    >>> json.loads(path.read_text())["knn"], oct(path.stat().st_mode & 0o777) == oct(file_mode())
    (0.5, True)
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "current_umask",
    "file_mode",
    "atomic_path",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "apply_umask",
]


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status`` on Linux; elsewhere
    set-and-restore, which briefly sets it to 022).

    Example:
        >>> 0 <= current_umask() <= 0o777
        True
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions of a newly created plain file: ``0o666 & ~umask``.

    Example:
        >>> file_mode() & 0o600   # the owner can always read and write
        384
    """
    return 0o666 & ~current_umask()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, some network filesystems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, install it at ``path``.

    Write the content to the yielded path with any writer (``fig.savefig``,
    ``safetensors.torch.save_file``, ``open``). On success the file is fsynced, chmodded to
    :func:`file_mode` and renamed over ``path``; on an exception it is removed and ``path`` is
    untouched. ``path``'s folder is created when missing.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("hello")
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('hello', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(
                f"nothing was written to the temporary file {tmp}; write to the path that "
                "atomic_path yields, not to the final path"
            )
        _fsync_file(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(
    path: str | os.PathLike[str], payload: Any, *, indent: int | None = 1, **dumps_kwargs: Any
) -> Path:
    """``json.dumps(payload)`` plus a newline, written atomically; ``dumps_kwargs`` go to
    :func:`json.dumps` (default ``default=str``, so paths and other objects become strings)."""
    dumps_kwargs.setdefault("default", str)
    return write_text_atomic(path, json.dumps(payload, indent=indent, **dumps_kwargs) + "\n")


def apply_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a file, or every file under a folder) :func:`file_mode` permissions.

    For files written by libraries that create them 0600 (``safetensors`` writes through a
    private temporary file); call it before the atomic rename of a folder of such files.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()); (folder / "w.bin").write_bytes(b"")
        0
        >>> (folder / "w.bin").chmod(0o600); apply_umask(folder)
        >>> (folder / "w.bin").stat().st_mode & 0o777 == file_mode()
        True
    """
    path = Path(path)
    mode = file_mode()
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for file in files:
        if not file.is_symlink():
            os.chmod(file, mode)
