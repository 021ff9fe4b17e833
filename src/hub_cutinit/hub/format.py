"""The on-disk format: names, the ``hub_cutinit`` block of ``config.json``, JSON helpers.

A saved model is a folder that timm (and transformers' ``TimmWrapperModel``) can load as is::

    config.json            timm's config (architecture, num_classes 0, model_args,
                           pretrained_cfg) + a top-level "hub_cutinit" block
    model.safetensors      the backbone only: ``backbone.state_dict()``, strict-loadable by timm
    ssl_heads.safetensors  everything else of the SSL model (heads, teacher, loss buffers)
    README.md              the model card
    norms.png              mean embedding norm over training (when a history was recorded)

Example:
    >>> block = {"format_version": 1, "method": "simclr", "c": 3.0, "config": {}}
    >>> check_block(block)["method"]
    'simclr'
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The package's one atomic writer (fsync, umask permissions, rename), re-exported for the hub.
from hub_cutinit.atomic import write_bytes_atomic, write_text_atomic

__all__ = [
    "FORMAT_VERSION",
    "BLOCK_KEY",
    "CONFIG_NAME",
    "BACKBONE_WEIGHTS_NAME",
    "HEADS_WEIGHTS_NAME",
    "CARD_NAME",
    "PLOT_NAME",
    "CONVERGENCE_PLOT_NAME",
    "LOAD_FILES",
    "MANAGED_FILES",
    "KNOWN_BLOCK_KEYS",
    "to_jsonable",
    "read_config",
    "check_block",
    "write_text_atomic",
    "write_bytes_atomic",
    "is_disk_full",
]

#: Version of the ``hub_cutinit`` block; bump it when its meaning changes.
#: 2: ``training`` holds the run record (every resolved hyper-parameter, the schedule, the
#: convergence monitor's readings) and ``hparams`` only the model's; 1: the method's training
#: defaults also sat in ``hparams`` (and could contradict the run). Both load.
FORMAT_VERSION = 2
#: Key of the block in ``config.json`` (timm keeps unknown top-level keys and ignores them).
BLOCK_KEY = "hub_cutinit"
CONFIG_NAME = "config.json"
BACKBONE_WEIGHTS_NAME = "model.safetensors"
HEADS_WEIGHTS_NAME = "ssl_heads.safetensors"
CARD_NAME = "README.md"
PLOT_NAME = "norms.png"
CONVERGENCE_PLOT_NAME = "convergence.png"
#: The only files :func:`hub_cutinit.hub.load_ssl_model` reads (no pickle, no code).
LOAD_FILES = (CONFIG_NAME, BACKBONE_WEIGHTS_NAME, HEADS_WEIGHTS_NAME)
#: Every file save_pretrained writes (and the only ones push_to_hub uploads).
MANAGED_FILES = (*LOAD_FILES, CARD_NAME, PLOT_NAME, CONVERGENCE_PLOT_NAME)

#: Fields of the block written by this version (formats 1 and 2).
KNOWN_BLOCK_KEYS = frozenset(
    {
        "format_version",
        "method",
        "family",
        "c",
        "weight_decay",
        "hparams",
        "config",
        "architecture",
        "training",
        "norms",
        "norm_history",
        "evaluation",
        "components",
        "files",
        "versions",
        "license",
        "model_name",
    }
)
_REQUIRED_BLOCK_KEYS = ("format_version", "method", "c", "config")


def to_jsonable(value: Any) -> Any:
    """A strict-JSON version of ``value``: tuples to lists, numpy/torch scalars and tensors to
    Python numbers and lists, non-finite floats to ``None``, other objects to ``str``.

    Example:
        >>> to_jsonable({"a": (1, float("nan")), 2: 0.5})
        {'a': [1, None], '2': 0.5}
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays/scalars, torch tensors
    if callable(tolist):
        return to_jsonable(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return to_jsonable(item())
    return str(value)


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_disk_full(err: BaseException, folder: str | os.PathLike[str]) -> bool:
    """True when ``err``, raised while writing into ``folder``, means the disk (or quota) is full.

    ``OSError`` carries ``ENOSPC``/``EDQUOT``/``EFBIG``, but ``torch.save`` raises a bare
    ``RuntimeError`` ("unexpected pos ...") and safetensors its own error ("No space left
    on device" / "StorageFull"): those count when the folder's filesystem has under 4 MiB free.

    Example:
        >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device"), ".")
        True
        >>> is_disk_full(RuntimeError("shape mismatch"), ".")
        False
    """
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in _DISK_FULL_ERRNOS
    text = str(err)
    if "No space left on device" in text or "StorageFull" in text:
        return True
    if not isinstance(err, RuntimeError) or "unexpected pos" not in text and "write" not in text:
        return False
    try:
        return shutil.disk_usage(folder).free < 4 << 20
    except OSError:
        return False


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a saved model; ``ValueError`` when it is missing or not ours."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist: pass a folder written by hub_cutinit.hub.save_pretrained."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); save the model again.") from err
    if not isinstance(config, dict) or not isinstance(config.get(BLOCK_KEY), dict):
        raise ValueError(
            f"{path} has no '{BLOCK_KEY}' block: it is a plain timm checkpoint, not one written "
            "by hub_cutinit.hub.save_pretrained. Load it with timm.create_model instead."
        )
    return config


def check_block(
    block: Mapping[str, Any], *, source: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Validate the ``hub_cutinit`` block; warn about fields this version does not know.

    Raises ``ValueError`` (naming ``source``, the config.json, when given) when a required
    field is missing, ``format_version`` is not a positive integer, or it is newer than this
    version reads (the fix: upgrade hub_cutinit). Unknown fields of a readable format only
    warn (``UserWarning`` naming the file and the fields ignored).

    Example:
        >>> check_block({"format_version": 2, "c": 3.0, "config": {}}, source="m/config.json")
        Traceback (most recent call last):
        ...
        ValueError: m/config.json: its 'hub_cutinit' block lacks ['method']; ...
    """
    where = f"{os.fspath(source)}: its" if source is not None else "config.json's"
    missing = [key for key in _REQUIRED_BLOCK_KEYS if key not in block]
    if missing:
        raise ValueError(
            f"{where} '{BLOCK_KEY}' block lacks {missing}; it was not written by "
            "hub_cutinit.hub.save_pretrained (or was edited by hand): save the model again."
        )
    version = block["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(
            f"{where} '{BLOCK_KEY}.format_version' must be a positive integer, got "
            f"{version!r}; save the model again."
        )
    if version > FORMAT_VERSION:
        # format 2 changed what `hparams` means: a newer format may change meanings again, so
        # reading it with this version's rules could silently misstate the model
        raise ValueError(
            f"{where} '{BLOCK_KEY}' block was written by a newer hub_cutinit (format version "
            f"{version} > {FORMAT_VERSION}, the newest this version reads); upgrade hub_cutinit "
            "(pip install -U hub-cutinit) to load it."
        )
    unknown = sorted(set(block) - KNOWN_BLOCK_KEYS)
    if unknown:
        warnings.warn(
            f"{where} '{BLOCK_KEY}' block (format version {version}) has fields this version "
            f"of hub_cutinit does not know: {unknown}. They are ignored; upgrade hub_cutinit "
            "(pip install -U hub-cutinit) to use them.",
            UserWarning,
            stacklevel=3,
        )
    return dict(block)
