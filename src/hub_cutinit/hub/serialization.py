"""Save an SSL model in timm's format (backbone) plus its heads, and load it back.

Example:
    >>> import tempfile, timm, torch
    >>> from hub_cutinit import create_ssl_model
    >>> from hub_cutinit.hub import load_ssl_model, save_pretrained
    >>> model = create_ssl_model("simclr", "resnet18", c=3).eval()
    >>> out = save_pretrained(model, tempfile.mkdtemp() + "/simclr-r18")
    >>> backbone = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> torch.equal(backbone(x), model.backbone(x))
    True
    >>> load_ssl_model(out).cut_init_c
    3.0
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hub_cutinit.atomic import atomic_path, write_text_atomic
from hub_cutinit.cut import CUT_ATTRIBUTE
from hub_cutinit.hub.format import (
    BACKBONE_WEIGHTS_NAME,
    BLOCK_KEY,
    CONFIG_NAME,
    FORMAT_VERSION,
    HEADS_WEIGHTS_NAME,
    LOAD_FILES,
    MANAGED_FILES,
    check_block,
    is_disk_full,
    read_config,
    to_jsonable,
)

if TYPE_CHECKING:
    from hub_cutinit.methods.base import SSLModel

__all__ = ["save_pretrained", "load_ssl_model", "build_timm_config", "resolve_model_dir"]

#: The attribute :func:`load_ssl_model` attaches the saved block to (training, norms, evaluation).
INFO_ATTRIBUTE = "hub_cutinit_info"

_EVAL_KEYS = (
    "knn_accuracy",
    "knn_k",
    "knn_temperature",
    "linear_probe_accuracy",
    "baselines",
    "knn_history",
)
#: pretrained_cfg fields that describe where timm's *source* weights came from; our weights
#: are new, so they are dropped (``license`` is replaced by ours).
_SOURCE_FIELDS = (
    "url",
    "file",
    "state_dict",
    "hf_hub_id",
    "hf_hub_filename",
    "source",
    "tag",
    "origin_url",
    "paper_name",
    "paper_ids",
    "notes",
    "description",
    "label_offset",
    "label_names",
    "label_descriptions",
)
_DEFAULT_LICENSE = "apache-2.0"


# -- config.json ---------------------------------------------------------------------------------
def build_timm_config(
    backbone: nn.Module,
    *,
    data_config: Mapping[str, Any] | None = None,
    license: str | None = None,
) -> dict[str, Any]:
    """timm's ``config.json`` for ``backbone``, made loadable by timm *and* transformers.

    Uses timm's own ``save_config_for_hf`` (architecture, ``model_args`` recorded by the timm
    factory, ``pretrained_cfg`` with the preprocessing), then: removes ``num_classes`` from
    ``model_args`` (transformers' ``TimmWrapperModel`` passes ``num_classes=0`` itself and fails
    on a duplicate; the top-level ``num_classes: 0`` stays), keeps only known ``PretrainedCfg``
    fields (timm raises on unknown ones) and drops the metadata of timm's source weights.

    Args:
        backbone: a timm model with ``num_classes == 0``.
        data_config: preprocessing used in training, e.g. ``{"input_size": (3, 32, 32),
            "mean": (...), "std": (...), "crop_pct": 1.0, "interpolation": "bilinear"}``.
        license: the weights' license, written into ``pretrained_cfg``.
    """
    import inspect

    from timm.models import PretrainedCfg
    from timm.models import _hub as timm_hub  # save_config_for_hf: timm has no public re-export

    if not isinstance(getattr(backbone, "pretrained_cfg", None), Mapping):
        raise ValueError(
            f"The backbone {type(backbone).__name__} is not a timm model (no pretrained_cfg); "
            "save_pretrained writes timm's format, so create the backbone with "
            "timm.create_model(name, num_classes=0) or hub_cutinit.create_backbone(name)."
        )
    if getattr(backbone, "num_classes", 0) != 0:
        raise ValueError(
            f"The backbone has a classifier (num_classes={backbone.num_classes}); save the "
            "feature extractor: create it with num_classes=0 or call backbone.reset_classifier(0)."
        )
    kwargs: dict[str, Any] = {}
    data_config = dict(data_config or {})
    if data_config and "data_config" in inspect.signature(timm_hub.save_config_for_hf).parameters:
        kwargs["data_config"] = data_config
        data_config = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFIG_NAME
        timm_hub.save_config_for_hf(backbone, str(path), **kwargs)
        config = json.loads(path.read_text(encoding="utf-8"))

    config["num_classes"] = 0
    model_args = dict(config.get("model_args") or {})
    model_args.pop("num_classes", None)
    if model_args:
        config["model_args"] = model_args
    else:
        config.pop("model_args", None)

    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    pretrained_cfg = {
        k: v
        for k, v in dict(config.get("pretrained_cfg") or {}).items()
        if k in known and k not in _SOURCE_FIELDS
    }
    for key in ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation"):
        if data_config.get(key) is not None:  # older timm without data_config support
            pretrained_cfg[key] = data_config[key]
    pretrained_cfg["num_classes"] = 0
    pretrained_cfg["license"] = license or _DEFAULT_LICENSE
    config["pretrained_cfg"] = pretrained_cfg
    return to_jsonable(config)


def _check_config_rebuilds(directory: Path, backbone: nn.Module) -> None:
    """Raise ``ValueError`` when timm, reading ``config.json``, builds another architecture."""
    import timm

    expected = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    try:
        with torch.device("meta"):
            rebuilt = timm.create_model(f"local-dir:{directory}", pretrained=False)
    except Exception:  # some models cannot be built on the meta device: build on the CPU
        rebuilt = timm.create_model(f"local-dir:{directory}", pretrained=False)
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    problems = _diff_shapes(expected, got, "backbone", "timm's rebuild from config.json")
    if problems:
        raise ValueError(
            "timm cannot rebuild this backbone from its config.json: "
            + "; ".join(problems)
            + ". The backbone was probably changed after timm.create_model (e.g. a replaced "
            "stem). Build the change with timm arguments (hparams['backbone_kwargs']) or record "
            "it with timm.models._input.update_model_args(backbone, ...)."
        )


def _diff_shapes(
    expected: Mapping[str, tuple[int, ...]],
    got: Mapping[str, tuple[int, ...]],
    expected_name: str,
    got_name: str,
    limit: int = 8,
) -> list[str]:
    def cut(keys: list[str]) -> str:
        more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{k}: {list(got[k])} in {got_name} vs {list(expected[k])} in {expected_name}"
        for k in sorted(set(expected) & set(got))
        if tuple(expected[k]) != tuple(got[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing in {got_name}: {cut(missing)}")
    if unexpected:
        problems.append(f"not in {expected_name}: {cut(unexpected)}")
    if shapes:
        problems.append("shape mismatch: " + cut(shapes))
    return problems


# -- the hub_cutinit block -----------------------------------------------------------------------
def _normalise_history(history: Any) -> list[dict[str, Any]]:
    """Per-epoch norm records as ``[{"epoch", ["step"], "norms": {name: {"mean", ...}}}]``.

    Accepts ``{"epoch": 1, "backbone": 12.3}`` (means), ``{"epoch": 1, "backbone": {"mean":
    12.3, ...}}`` or ``{"epoch": 1, "norms": {...}}``; ``epoch`` defaults to the position.
    """
    if isinstance(history, Mapping) and "records" in history:  # NormHistory.state_dict()
        history = history["records"]
    history = getattr(history, "records", history)  # a NormHistory
    rows = []
    for i, entry in enumerate(history if isinstance(history, (list, tuple)) else []):
        if not isinstance(entry, Mapping):
            continue
        entry = dict(entry)
        row: dict[str, Any] = {"epoch": entry.pop("epoch", i + 1)}
        if "step" in entry:
            row["step"] = entry.pop("step")
        if isinstance(entry.get("convergence"), Mapping):  # the epoch's mean angle per step
            row["convergence"] = dict(entry.pop("convergence"))
        norms = entry.pop("norms", entry)
        row["norms"] = {
            str(name): dict(stats) if isinstance(stats, Mapping) else {"mean": stats}
            for name, stats in dict(norms).items()
            if isinstance(stats, (Mapping, int, float)) and not isinstance(stats, bool)
        }
        rows.append(row)
    return to_jsonable(rows)


def _strip_local_paths(value: Any) -> Any:
    """Local absolute paths reduced to their last component (config.json is published)."""
    if isinstance(value, Mapping):
        return {k: _strip_local_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strip_local_paths(v) for v in value]
    if isinstance(value, os.PathLike) or (
        isinstance(value, str) and (os.path.isabs(value) or value.startswith("~"))
    ):
        return Path(os.fspath(value)).name
    return value


def _versions() -> dict[str, str]:
    import timm

    try:
        from hub_cutinit._version import __version__ as ours
    except ImportError:  # pragma: no cover - partial installs
        ours = "unknown"
    return {
        "hub_cutinit": ours,
        "torch": torch.__version__.split("+")[0],
        "timm": timm.__version__,
        "python": ".".join(map(str, sys.version_info[:3])),
    }


#: Method defaults that are training hyper-parameters, not part of the model: a run's resolved
#: values live in the ``training`` block (the run record), so ``hparams`` leaves them out.
TRAINING_HPARAMS = ("c", "weight_decay", "optimizer", "base_lr", "sgd_momentum", "nesterov")


def _build_block(ssl_model: SSLModel, training_info: Mapping[str, Any]) -> dict[str, Any]:
    info = dict(training_info)
    hparams = to_jsonable(dict(getattr(ssl_model, "hparams", {}) or {}))
    default_weight_decay = hparams.get("weight_decay")  # without a run record: the method's
    for key in TRAINING_HPARAMS:
        hparams.pop(key, None)
    c = float(getattr(ssl_model, "cut_init_c", None) or 1.0)
    config = to_jsonable(ssl_model.get_config())
    config["c"] = c
    weight_decay = info.pop("weight_decay", default_weight_decay)
    license = info.pop("license", None) or _DEFAULT_LICENSE
    model_name = info.pop("model_name", None)
    info.pop("data_config", None)
    if "knn" in info and "knn_history" not in info:
        info["knn_history"] = info.pop("knn")
    evaluation = {k: info.pop(k) for k in _EVAL_KEYS if k in info}
    history = _normalise_history(info.pop("norm_history", None))
    final = info.pop("final_norms", None)
    norms = info.pop("norms", None)
    if norms is None and isinstance(final, Mapping):
        norms = final.get("norms", final)
    if norms is None and history:
        norms = history[-1]["norms"]
    dataset = info.get("dataset")
    if isinstance(dataset, os.PathLike) or (
        isinstance(dataset, str)
        and (os.path.isabs(dataset) or dataset.startswith((".", "~")) or os.path.exists(dataset))
    ):
        info["dataset"] = Path(os.fspath(dataset)).name
        info["dataset_is_local"] = True
    info = _strip_local_paths(info)
    block: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "method": ssl_model.method,
        "family": getattr(ssl_model, "family", None),
        "c": c,
        "weight_decay": weight_decay,
        "architecture": (getattr(ssl_model.backbone, "pretrained_cfg", None) or {}).get(
            "architecture"
        ),
        "hparams": hparams,
        "config": config,
        "training": info,
        "norms": norms or {},
        "norm_history": history,
        "evaluation": evaluation,
        "components": {
            "heads": list(getattr(ssl_model, "head_names", ()) or ()),
            "teacher": getattr(ssl_model, "teacher", None) is not None,
        },
        "license": license,
        "files": {"backbone": BACKBONE_WEIGHTS_NAME, "heads": HEADS_WEIGHTS_NAME},
        "versions": _versions(),
    }
    if model_name:
        block["model_name"] = model_name
    return to_jsonable(block)


# -- tensors -------------------------------------------------------------------------------------
def _plain_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, cloning any that share storage (safetensors forbids)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen and ptr != -1:
            t = t.clone()
        seen.add(ptr)
        out[key] = t
    return out


def _split_state_dict(
    ssl_model: SSLModel,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    backbone = _plain_tensors(ssl_model.backbone.state_dict())
    heads = _plain_tensors(
        {k: v for k, v in ssl_model.state_dict().items() if not k.startswith("backbone.")}
    )
    return backbone, heads


# -- save ----------------------------------------------------------------------------------------
def _is_managed(path: Path) -> bool:
    return path.name in MANAGED_FILES


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` folder's files to ``out_dir``.

    A new folder, an empty one or an earlier save (only :data:`MANAGED_FILES`) is swapped in
    whole with directory renames. A folder holding other files too (e.g. training
    checkpoints) keeps them: each of our files is renamed into place (``config.json`` last) and
    a stale ``norms.png`` is removed.
    """
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    existing = list(out_dir.iterdir())
    if all(_is_managed(p) and p.is_file() for p in existing):
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    new_files = {p.name for p in tmp.iterdir()}
    for name in sorted(new_files - {CONFIG_NAME}) + [CONFIG_NAME]:
        os.replace(tmp / name, out_dir / name)
    for name in set(MANAGED_FILES) - new_files:
        (out_dir / name).unlink(missing_ok=True)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder; choose a folder path.")
    for name in MANAGED_FILES:
        if (out_dir / name).is_dir():
            raise ValueError(
                f"{out_dir / name} is a folder; save_pretrained needs that name for a file."
            )


def _data_config(info: Mapping[str, Any], backbone: nn.Module) -> dict[str, Any]:
    """timm's preprocessing fields: ``info["data_config"]``, with ``input_size`` from ``image_size``."""
    data_config = dict(info.get("data_config") or {})
    if "image_size" in info and "input_size" not in data_config:
        size = info["image_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        in_chans = int(getattr(backbone, "in_chans", 3) or 3)
        data_config["input_size"] = (in_chans, *size)
    return data_config


def _weight_files(
    ssl_model: SSLModel,
) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]:
    """The two safetensors files to write: name -> (tensors, metadata)."""
    backbone_sd, heads_sd = _split_state_dict(ssl_model)
    meta = {"format": "pt"}
    heads_meta = {
        **meta,
        "hub_cutinit_format_version": str(FORMAT_VERSION),
        "method": str(ssl_model.method),
    }
    return {BACKBONE_WEIGHTS_NAME: (backbone_sd, meta), HEADS_WEIGHTS_NAME: (heads_sd, heads_meta)}


def _write_save(
    tmp: Path,
    config: Mapping[str, Any],
    backbone: nn.Module,
    weights: Mapping[str, tuple[dict[str, torch.Tensor], dict[str, str]]],
) -> None:
    """Write config.json (checked to rebuild ``backbone``), the weight files and the card."""
    from safetensors.torch import save_file

    from hub_cutinit.hub.card import render_model_card

    text = json.dumps(config, indent=2, allow_nan=False)
    write_text_atomic(tmp / CONFIG_NAME, text + "\n")
    _check_config_rebuilds(tmp, backbone)
    # atomic_path gives safetensors' 0600 files the umask's permissions (0644 under 022)
    for name, (tensors, metadata) in weights.items():
        with atomic_path(tmp / name) as path:
            save_file(tensors, str(path), metadata=metadata)
    render_model_card(tmp)


def save_pretrained(
    ssl_model: SSLModel,
    out_dir: str | os.PathLike[str],
    *,
    training_info: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``ssl_model`` so that timm loads the backbone and hub_cutinit loads everything.

    Writes ``config.json`` (timm's format + a ``hub_cutinit`` block), ``model.safetensors``
    (backbone only), ``ssl_heads.safetensors`` (heads, teacher, loss buffers), ``README.md``
    (model card) and, with a norm history, ``norms.png``. No pickle files. Everything is built
    in a temporary folder next to ``out_dir`` and renamed into place, so a crash never leaves a
    half-written file. A new, empty or earlier-save folder is swapped in whole; in a folder
    with other contents (e.g. training checkpoints) those are kept and only the files above
    are replaced, one rename each (``config.json`` last). Local absolute paths in
    ``training_info`` (e.g. a dataset folder) are reduced to their last component because
    ``config.json`` is meant to be published.

    Args:
        ssl_model: a model from :func:`hub_cutinit.create_ssl_model` with a timm backbone.
        out_dir: the folder to write.
        training_info: what the card should report, all keys optional: ``dataset`` (Hub id,
            local path or ``"builtin"``), ``steps``, ``epochs``, ``batch_size``,
            ``image_size``, ``num_processes``, ``hardware``, ``seeds``; ``norms`` (final
            statistics ``{name: {"mean", "std", "min", "max", "count", ...}}``, e.g.
            ``NormTracker.summary()``); ``norm_history`` (one entry per epoch:
            ``{"epoch": 1, "norms": {name: {"mean": ...}}}`` or ``{"epoch": 1, "backbone":
            12.3}``); ``knn_accuracy`` (with ``knn_k``, ``knn_temperature``, default 200 and
            0.1), ``linear_probe_accuracy``, ``baselines``
            (``{"random_init_knn": .., "raw_pixels_knn": ..}``); ``data_config`` (timm
            preprocessing: ``input_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``);
            ``license`` (default ``apache-2.0``), ``model_name``, ``weight_decay`` (default
            ``hparams["weight_decay"]``). Other JSON-serialisable keys are kept under
            ``hub_cutinit.training``.

    Returns:
        The path of the written folder.
    """
    backbone = getattr(ssl_model, "backbone", None)
    if not isinstance(ssl_model, nn.Module) or not isinstance(backbone, nn.Module):
        raise ValueError(
            "save_pretrained expects an SSLModel from hub_cutinit.create_ssl_model (an "
            f"nn.Module with a .backbone), got {type(ssl_model).__name__}."
        )
    out_dir = Path(out_dir).expanduser().absolute()
    _check_out_dir(out_dir)
    info = dict(training_info or {})
    data_config = _data_config(info, backbone)
    block = _build_block(ssl_model, info)
    config = build_timm_config(backbone, data_config=data_config, license=block["license"])
    config[BLOCK_KEY] = block
    weights = _weight_files(ssl_model)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        _write_save(tmp, config, backbone, weights)
        _install(tmp, out_dir)
    except Exception as err:  # safetensors and torch report a full disk without an errno
        if not is_disk_full(err, out_dir.parent):
            raise
        raise OSError(
            getattr(err, "errno", None) or errno.ENOSPC,
            f"No space left on device while saving the model to {out_dir} "
            f"({getattr(err, 'strerror', None) or err})."
            f" Nothing in {out_dir} was changed (no partial config.json or weights; training "
            "checkpoints are kept). Free space on that disk and save again (a training run: "
            "rerun it with --resume, which restores the last checkpoint and saves).",
        ) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# -- load ----------------------------------------------------------------------------------------
def resolve_model_dir(
    path_or_id: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """A local folder holding :data:`LOAD_FILES`: ``path_or_id`` itself, or a Hub download.

    ``"hf-hub:user/repo"`` (optionally ``"hf-hub:user/repo@revision"``) downloads only
    ``config.json`` and the two ``.safetensors`` files with ``snapshot_download``.
    """
    text = os.fspath(path_or_id)
    if text.startswith(("hf-hub:", "hf_hub:")):
        repo_id = text.split(":", 1)[1]
        if "@" in repo_id:
            repo_id, rev = repo_id.split("@", 1)
            revision = revision or rev
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=list(LOAD_FILES),
                token=token,
                cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            )
        )
    path = Path(text).expanduser()
    if not path.is_dir():
        hint = (
            f" For a Hub repository use 'hf-hub:{text}'."
            if text.count("/") == 1 and not text.startswith((".", "/"))
            else ""
        )
        raise ValueError(f"{text!r} is not a folder.{hint}")
    return path


def _rebuild_model(directory: Path, block: Mapping[str, Any]) -> SSLModel:
    """The model ``config.json`` describes, at c = 1 and with untrained weights."""
    import timm

    from hub_cutinit.factory import create_ssl_model

    saved = block.get("config") or {}
    overrides = dict(saved.get("overrides") or {})
    for key in (*TRAINING_HPARAMS, "warmup_fraction"):  # format 1 kept some of these
        overrides.pop(key, None)
    for name in (BACKBONE_WEIGHTS_NAME, HEADS_WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise ValueError(
                f"{directory / name} is missing; a hub_cutinit save has both weight files."
            )
    try:
        backbone = timm.create_model(f"local-dir:{directory}", pretrained=False)
    except RuntimeError as err:  # "Unknown model (...)": not in this timm version
        raise ValueError(
            f"{directory / CONFIG_NAME} names architecture "
            f"{json.loads((directory / CONFIG_NAME).read_text()).get('architecture')!r}, which "
            f"this timm ({timm.__version__}) cannot build ({err}). Upgrade timm "
            "(pip install -U timm) or fix 'architecture' in that file."
        ) from err
    try:
        model = create_ssl_model(block["method"], backbone, c=1, **overrides)
    except ValueError as err:
        raise ValueError(
            f"Cannot rebuild the model described by {directory / CONFIG_NAME}: {err}"
        ) from err
    if saved.get("backbone"):
        model.backbone_name = saved["backbone"]
    return model


def _read_state(directory: Path) -> dict[str, torch.Tensor]:
    """The full state dict from the two weight files (backbone keys prefixed ``backbone.``)."""
    from safetensors.torch import load_file

    def read(name: str) -> dict[str, Any]:
        try:
            return load_file(str(directory / name))
        except Exception as err:  # safetensors' SafetensorError: truncated or not safetensors
            raise ValueError(
                f"{directory / name} is not a readable safetensors file ({err}); it is truncated "
                "or corrupt: download or save the model again."
            ) from err

    state = {f"backbone.{k}": v for k, v in read(BACKBONE_WEIGHTS_NAME).items()}
    heads = read(HEADS_WEIGHTS_NAME)
    clash = sorted(k for k in heads if k.startswith("backbone."))
    if clash:
        raise ValueError(
            f"{HEADS_WEIGHTS_NAME} holds backbone tensors ({clash[:3]}); save the model again."
        )
    state.update(heads)
    return state


def load_ssl_model(
    path_or_id: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> SSLModel:
    """Rebuild a saved SSL model (backbone, heads, teacher) and restore its cut factor.

    Reads only ``config.json``, ``model.safetensors`` and ``ssl_heads.safetensors`` (from a
    folder or, with ``"hf-hub:user/repo[@revision]"``, from the Hub). The backbone is built by
    timm from ``config.json`` exactly as ``timm.create_model("local-dir:...")`` does, the model
    by :func:`hub_cutinit.create_ssl_model` with ``c=1`` (the saved weights are already cut),
    the weights are loaded strictly and ``model.cut_init_c`` is set to the saved c. Returned in
    eval mode; call ``.train()`` to continue training. The saved ``hub_cutinit`` block
    (training, norms, evaluation) is attached as ``model.hub_cutinit_info``.

    Raises:
        ValueError: the folder is not a hub_cutinit save, or the weights do not match the
            architecture described by ``config.json`` (the message names the tensors).

    Unknown fields in the ``hub_cutinit`` block (from a newer format) only warn.
    """
    directory = resolve_model_dir(path_or_id, revision=revision, token=token, cache_dir=cache_dir)
    config = read_config(directory)
    block = check_block(config[BLOCK_KEY], source=directory / CONFIG_NAME)
    c = float(block["c"])
    model = _rebuild_model(directory, block)
    state = _read_state(directory)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = _diff_shapes(expected, got, "the model built from config.json", "the weight files")
    if problems:
        raise ValueError(
            f"The weights in {directory} do not match its config.json ({block['method']}, "
            f"{config.get('architecture')}): " + "; ".join(problems) + ". The files were mixed "
            "from different saves or edited; save the model again."
        )
    model.load_state_dict(state, strict=True)
    setattr(model, CUT_ATTRIBUTE, c)  # as cut_init sets it
    hparams = getattr(model, "hparams", None)
    if isinstance(hparams, dict):
        hparams["c"] = c
    setattr(model, INFO_ATTRIBUTE, block)
    return model.eval()
