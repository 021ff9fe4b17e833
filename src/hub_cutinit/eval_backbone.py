"""Evaluate any backbone with the training monitor's protocol: ``hub-cutinit eval MODEL``.

A timm model name (random initialisation), ``local-dir:PATH`` (or a plain folder) and
``hf-hub:ID`` checkpoints (ours included) or an ``nn.Module`` are scored on a labelled dataset
with the weighted kNN and a linear probe on frozen features, next to the two baselines of the
training monitor (the same architecture at random initialisation, raw pixels). The bank and test
sets are chosen by :func:`hub_cutinit.data.plan_evaluation`, as a training run chooses them;
features come from :func:`hub_cutinit.evaluation.extract_features` (BatchNorm in eval mode, no
gradients), split over the processes of ``accelerate launch`` and gathered (each image once,
in the one-process order), so 1 and N processes give the same numbers.

Every default lives in :class:`EvalProtocol`; a result records the protocol's values and
:data:`PROTOCOL_VERSION`. Changing a default means a new version.

Example:
    >>> result = evaluate_backbone("test_resnet", "builtin", image_size=16, max_samples=32,
    ...                            k=5, linear_probe=False, baselines=False)
    >>> result["protocol_version"], result["protocol"]["k"], result["data"]["test_samples"]
    ('knn-v1', 5, 32)
    >>> result["protocol_changes"]
    {'k': 5}
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hub_cutinit.evaluation import extract_features, gather_rows, knn_accuracy, linear_probe

__all__ = [
    "PROTOCOL_VERSION",
    "PROTOCOL_RULES",
    "EvalProtocol",
    "evaluate_backbone",
    "resolve_backbone",
    "make_accelerator",
    "format_result",
    "register_cli",
    "main",
]

#: The version of the evaluation protocol. Changing any default of :class:`EvalProtocol` or any
#: rule of :data:`PROTOCOL_RULES` is a new version: every result records the version it used.
PROTOCOL_VERSION = "knn-v1"

#: What protocol ``knn-v1`` fixes beyond the tunable values of :class:`EvalProtocol`.
PROTOCOL_RULES: dict[str, str] = {
    "features": "backbone output (timm num_classes=0: pooled features), flattened, float32",
    "batchnorm": "eval mode, no gradients, train/eval mode restored after; bn='running': the "
    "saved running statistics; bn='precise': a copy whose statistics are re-estimated on the "
    "first bn_batches batches of the whole bank (the training monitor's --knn-bn precise), the "
    "same on every process",
    "knn": "l2-normalised features, cosine similarity, the k most similar bank images vote "
    "with weight exp(similarity / temperature); ties go to the lowest class; k is clamped to "
    "the bank size",
    "linear_probe": "features standardised with the bank's mean and std; zero-initialised "
    "logistic regression; loss cross-entropy + weight_decay / 2 * |W|^2 (bias not decayed)",
    "images": "shorter side resized to image_size (antialiased), centre crop image_size x "
    "image_size (crop_pct 1.0), ImageNet mean/std: the training monitor's transform",
    "image_size": "image_size argument, else the model's pretrained_cfg input_size",
    "splits": "hub_cutinit.data.plan_evaluation: bank = eval_bank_split (default 'train'), "
    "test = eval_split (default 'test'); no 'test' split: a seeded held-out 10% of the bank "
    "split; max_samples: the first N of each, in stored order",
    "baselines": "random_init_knn: the same architecture from timm.create_model(..., "
    "pretrained=False) seeded with seed (no cut); raw_pixels_knn: the normalised images, "
    "flattened",
    "distributed": "each process extracts every world_size-th image, features gathered in the "
    "one-process order; model state broadcast from rank 0",
}


@dataclass(frozen=True)
class EvalProtocol:
    """Every tunable default of the evaluation (protocol :data:`PROTOCOL_VERSION`).

    The kNN values are the training monitor's (``--knn-k``, ``knn_temperature``); the probe's
    are :func:`hub_cutinit.evaluation.linear_probe`'s defaults. ``bn="running"`` evaluates a
    checkpoint with the BatchNorm statistics it was saved with; ``bn="precise"`` re-estimates
    them first, as the training monitor's ``--knn-bn precise`` does (same number on 1 process).

    Example:
        >>> EvalProtocol().to_dict()["k"], EvalProtocol(k=20).changes()
        (200, {'k': 20})
    """

    k: int = 200
    temperature: float = 0.1
    probe_optimizer: str = "lbfgs"
    probe_epochs: int = 100
    probe_lr: float = 1.0
    probe_weight_decay: float = 1e-4
    probe_batch_size: int = 1024
    extract_batch_size: int = 256
    bn: str = "precise"  # as the training monitor (--knn-bn precise): recipes/results/bn_artefact
    bn_batches: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bn not in ("running", "precise"):
            raise ValueError(f"bn must be 'running' or 'precise', got {self.bn!r}")

    @property
    def version(self) -> str:
        """The protocol version these defaults belong to."""
        return PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The values, the version and the fixed rules, as recorded with every result."""
        return {"version": self.version, **dataclasses.asdict(self), "rules": PROTOCOL_RULES}

    def changes(self) -> dict[str, Any]:
        """The values that differ from the version's defaults (``{}``: the plain protocol)."""
        default = dataclasses.asdict(EvalProtocol())
        return {k: v for k, v in dataclasses.asdict(self).items() if default[k] != v}


# -- the model ---------------------------------------------------------------------------------
def _timm_spec(spec: str) -> tuple[str, str]:
    """``(timm name, source kind)``: a folder becomes ``local-dir:``; ``hf_hub:`` is accepted."""
    if spec.startswith(("hf-hub:", "hf_hub:")):
        return "hf-hub:" + spec.split(":", 1)[1], "hf-hub"
    if spec.startswith("local-dir:"):
        return spec, "local-dir"
    if os.path.isdir(os.path.expanduser(spec)):
        return "local-dir:" + os.path.expanduser(spec), "local-dir"
    return spec, "timm"


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run the block with the CPU RNG seeded, and the caller's RNG state restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def resolve_backbone(spec: str, *, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """A feature backbone (``num_classes=0``) for ``spec`` and a description of it.

    ``spec``: a timm model name (random initialisation, seeded), ``local-dir:PATH`` or a folder
    (a timm save, ours included), ``hf-hub:OWNER/NAME`` (``pretrained=True``).

    Example:
        >>> net, info = resolve_backbone("test_resnet")
        >>> info["source"], info["architecture"], net.num_classes
        ('timm', 'test_resnet', 0)
    """
    import timm

    name, source = _timm_spec(spec)
    pretrained = source != "timm"
    try:
        with _seeded(seed):
            model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except RuntimeError as err:
        if "Unknown model" not in str(err):
            raise
        raise ValueError(
            f"{spec!r} is not a timm model name, a folder, local-dir:PATH or hf-hub:OWNER/NAME "
            "(e.g. resnet18, ./runs/simclr, hf-hub:timm/resnet18.a1_in1k)"
        ) from err
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    info = {
        "spec": spec if source != "local-dir" else f"local-dir:{Path(name[10:]).name}",
        "source": source,
        "architecture": cfg.get("architecture") or name,
        "pretrained": pretrained,
        "timm_name": name,
    }
    if source == "local-dir":
        info["local_dir"] = name[len("local-dir:") :]
    return model, info


def _module_info(model: nn.Module) -> dict[str, Any]:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    return {
        "spec": type(model).__name__,
        "source": "module",
        "architecture": cfg.get("architecture") or type(model).__name__,
        "pretrained": None,
    }


def _random_init(info: dict[str, Any], seed: int) -> nn.Module | None:
    """The random-init baseline: the same architecture from timm, seeded; ``None`` if unknown."""
    import timm

    name = info.get("timm_name") or info["architecture"]
    try:
        with _seeded(seed):
            return timm.create_model(name, pretrained=False, num_classes=0)
    except (RuntimeError, ValueError, TypeError):
        return None  # an nn.Module that timm cannot rebuild


def resolve_image_size(model: nn.Module, image_size: int | None) -> tuple[int, str]:
    """``(side, where it came from)``: ``image_size``, else ``pretrained_cfg["input_size"]``.

    Example:
        >>> import timm
        >>> resolve_image_size(timm.create_model("test_resnet"), None)
        (160, 'pretrained_cfg')
    """
    if image_size is not None:
        if int(image_size) != image_size or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        return int(image_size), "argument"
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if not size or len(size) != 3 or size[1] != size[2]:
        raise ValueError(
            f"the model has no square pretrained_cfg input_size ({size!r}); pass --image-size PX"
        )
    return int(size[-1]), "pretrained_cfg"


# -- data and features --------------------------------------------------------------------------
def _eval_shares(
    dataset: str, accelerator: Any, image_size: int, batch_size: int, data: dict[str, Any]
) -> tuple[Any, tuple[Any, Any]]:
    """The evaluation plan (as training makes it) and this process's share of bank and test."""
    from hub_cutinit.data import plan_evaluation, shard_eval_loader

    plan = plan_evaluation(
        dataset,
        image_size=image_size,
        eval_dataset=dataset,  # labels are required: a missing column raises naming the flag
        eval_split=data["eval_split"],
        eval_bank_split=data["eval_bank_split"],
        eval_image_column=data["image_column"],
        eval_label_column=data["label_column"],
        held_out_fraction=data["held_out_fraction"],
        seed=data["held_out_seed"],
        max_samples=data["max_samples"],
        batch_size=batch_size,
    )
    if plan.loaders is None:
        raise ValueError(f"{dataset!r}: {plan.notice or plan.source}")
    rank, world = accelerator.process_index, accelerator.num_processes
    bank, test = (shard_eval_loader(loader, rank, world) for loader in plan.loaders)
    return plan, (bank, test)


def _one_process_order(rows: torch.Tensor, world: int) -> torch.Tensor:
    """Rows gathered rank by rank (rank ``r`` held images ``r, r + world, ...``) put back in
    the order one process reads them.

    Example:
        >>> _one_process_order(torch.tensor([0, 2, 4, 1, 3]), 2).tolist()
        [0, 1, 2, 3, 4]
    """
    n = len(rows)
    counts = [(n - r + world - 1) // world for r in range(world)]
    offsets = [0, *itertools.accumulate(counts)]
    return rows[[offsets[i % world] + i // world for i in range(n)]]


def _bn_ready(model: nn.Module, plan: Any, protocol: EvalProtocol) -> nn.Module:
    """``model`` itself (``bn="running"``), or a copy with BatchNorm statistics re-estimated
    on the first ``bn_batches`` batches of the whole bank (the same on every process)."""
    if protocol.bn == "running":
        return model
    from hub_cutinit.precise_bn import precise_bn

    return precise_bn(model, plan.loaders[0], num_batches=protocol.bn_batches)


def _broadcast_state(model: nn.Module, accelerator: Any) -> None:
    """Every process gets rank 0's parameters and buffers (BatchNorm statistics included)."""
    if accelerator.num_processes > 1:
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            torch.distributed.broadcast(tensor.data, src=0)


def _features(model: nn.Module, shares: Sequence[Any], accelerator: Any) -> list[torch.Tensor]:
    """``[bank feats, bank labels, test feats, test labels]`` of all processes, on every one."""
    device, world = accelerator.device, accelerator.num_processes
    _broadcast_state(model, accelerator)
    out: list[torch.Tensor] = []
    for loader in shares:
        feats, labels = extract_features(model, loader, device=device)  # model.eval() inside
        for part in (feats, labels):
            out.append(_one_process_order(gather_rows(part, accelerator), world))
    return out


def _scores(
    feats: list[torch.Tensor], protocol: EvalProtocol, device: torch.device, probe: bool
) -> dict[str, float]:
    """kNN (and the linear probe) accuracy of gathered features, with the protocol's values."""
    bank, bank_y, test, test_y = feats
    scores = {
        "knn_accuracy": knn_accuracy(
            bank,
            bank_y,
            test,
            test_y,
            k=protocol.k,
            temperature=protocol.temperature,
            device=device,
        )  # fmt: skip
    }
    if probe:
        scores["linear_probe_accuracy"] = linear_probe(
            bank,
            bank_y,
            test,
            test_y,
            epochs=protocol.probe_epochs,
            lr=protocol.probe_lr,
            weight_decay=protocol.probe_weight_decay,
            seed=protocol.seed,
            optimizer=protocol.probe_optimizer,
            batch_size=protocol.probe_batch_size,
        )
    return scores


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` moved to ``device`` for the block, and back to where it was after."""
    before = next(itertools.chain(model.parameters(), model.buffers()), None)
    model.to(device)
    try:
        yield model
    finally:
        if before is not None:
            model.to(before.device)


def make_accelerator() -> Any:
    """An ``Accelerator`` on CUDA when there is one, else on CPU: under ``accelerate launch
    --multi_gpu`` or torchrun a CPU-only machine then gets a gloo group, not N lone processes."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def _versions() -> dict[str, str]:
    import timm

    from hub_cutinit._version import __version__

    return {"hub_cutinit": __version__, "torch": torch.__version__, "timm": timm.__version__}


def _data_record(dataset: str, plan: Any, feats: list[torch.Tensor], data: dict) -> dict:
    from hub_cutinit.data.pipeline import dataset_label

    return {
        "dataset": dataset_label(dataset),
        "source": plan.source,
        **{k: v for k, v in data.items() if k not in ("image_column", "label_column")},
        "bank_samples": int(feats[1].numel()),
        "test_samples": int(feats[3].numel()),
        "num_classes": int(max(feats[1].max(), feats[3].max())) + 1,
    }


def evaluate_backbone(
    model: str | nn.Module,
    dataset: str = "builtin",
    *,
    k: int | None = None,
    temperature: float | None = None,
    linear_probe: bool = True,
    baselines: bool = True,
    image_size: int | None = None,
    eval_split: str = "test",
    eval_bank_split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    held_out_fraction: float = 0.1,
    held_out_seed: int = 0,
    protocol: EvalProtocol | None = None,
    accelerator: Any = None,
) -> dict[str, Any]:
    """kNN and linear-probe accuracy of a frozen backbone, with the protocol recorded.

    Args:
        model: a timm name (random init, seeded), ``local-dir:PATH`` / a folder, ``hf-hub:ID``,
            or a feature-extracting ``nn.Module`` (its train/eval mode and device are restored).
        dataset: any ``--dataset`` spec with labels (``builtin``, a Hub id, a folder, parquet).
        k, temperature: the kNN's; default ``protocol``'s (200 and 0.1 in ``knn-v1``).
        linear_probe, baselines: also fit the probe / measure the random-init and raw-pixel kNN.
        image_size: the evaluation side; default the model's ``pretrained_cfg`` input size.
        eval_split, eval_bank_split, image_column, label_column, held_out_fraction,
            held_out_seed, max_samples: the data, as :func:`hub_cutinit.data.plan_evaluation`.
        protocol: every other default (:class:`EvalProtocol`).
        accelerator: an ``accelerate.Accelerator``; default a new one (``accelerate launch``
            gives every process its share). A collective: call it on every process.

    Returns:
        ``{"protocol_version", "protocol", "protocol_changes", "model", "data",
        "knn_accuracy", "linear_probe_accuracy", "baselines", "num_processes", "seconds",
        "versions"}`` (strict JSON), the same on every process.

    Example:
        >>> r = evaluate_backbone("test_resnet", image_size=16, max_samples=32, k=5)
        >>> sorted(r["baselines"]), 0 <= r["linear_probe_accuracy"] <= 1
        (['random_init_knn', 'raw_pixels_knn'], True)
    """
    started = time.perf_counter()
    protocol = _with_knn(protocol or EvalProtocol(), k, temperature)
    accelerator = accelerator or make_accelerator()
    if isinstance(model, nn.Module):
        net, info = model, _module_info(model)
    else:
        net, info = resolve_backbone(str(model), seed=protocol.seed)
    size, size_source = resolve_image_size(net, image_size)
    data: dict[str, Any] = dict(eval_split=eval_split, eval_bank_split=eval_bank_split)
    data.update(image_column=image_column, label_column=label_column, max_samples=max_samples)
    data.update(held_out_fraction=held_out_fraction, held_out_seed=held_out_seed)
    plan, shares = _eval_shares(dataset, accelerator, size, protocol.extract_batch_size, data)
    device = accelerator.device
    with _on_device(net, device):
        feats = _features(_bn_ready(net, plan, protocol), shares, accelerator)
    result: dict[str, Any] = {
        "protocol_version": protocol.version,
        "protocol": protocol.to_dict(),
        "protocol_changes": protocol.changes(),
        "model": {**info, "image_size": size, "image_size_source": size_source},
        "data": _data_record(dataset, plan, feats, data),
        **_scores(feats, protocol, device, linear_probe),
    }
    result["model"] = _model_record(result["model"], feats)
    if baselines:
        result["baselines"] = _baselines(info, plan, shares, accelerator, protocol)
    result.update(
        num_processes=accelerator.num_processes,
        seconds=round(time.perf_counter() - started, 3),
        versions=_versions(),
    )
    from hub_cutinit.hub.format import to_jsonable

    return to_jsonable(result)


def _with_knn(protocol: EvalProtocol, k: int | None, temperature: float | None) -> EvalProtocol:
    """``protocol`` with the kNN values given (``None``: keep the protocol's)."""
    return dataclasses.replace(
        protocol,
        k=protocol.k if k is None else k,
        temperature=protocol.temperature if temperature is None else temperature,
    )


def _model_record(model: dict[str, Any], feats: list[torch.Tensor]) -> dict[str, Any]:
    """The result's model description: no local path, the feature width."""
    hidden = ("timm_name", "local_dir")
    return {
        **{k: v for k, v in model.items() if k not in hidden},
        "num_features": feats[0].shape[1],
    }


def _baselines(
    info: dict[str, Any],
    plan: Any,
    shares: Sequence[Any],
    accelerator: Any,
    protocol: EvalProtocol,
) -> dict[str, float | None]:
    """The training monitor's baselines with the same protocol: random init, raw pixels."""
    device = accelerator.device
    out: dict[str, float | None] = {}
    random_net = _random_init(info, protocol.seed)
    if random_net is not None:
        random_net = _bn_ready(random_net.to(device), plan, protocol)
        feats = _features(random_net, shares, accelerator)
        out["random_init_knn"] = _scores(feats, protocol, device, probe=False)["knn_accuracy"]
    else:
        out["random_init_knn"] = None  # an nn.Module timm cannot rebuild
    feats = _features(nn.Flatten(), shares, accelerator)
    out["raw_pixels_knn"] = _scores(feats, protocol, device, probe=False)["knn_accuracy"]
    return out


# -- output --------------------------------------------------------------------------------------
def _percent(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def format_result(result: dict[str, Any]) -> str:
    """The result in a few lines for a terminal.

    Example:
        >>> print(format_result({"protocol_version": "knn-v1", "protocol": {"k": 200,
        ...     "temperature": 0.1}, "model": {"spec": "resnet18", "image_size": 32},
        ...     "data": {"source": "kNN: bank 'train', test 'test' of builtin",
        ...              "bank_samples": 10, "test_samples": 5}, "knn_accuracy": 0.5}))
        resnet18: bank 'train', test 'test' of builtin (10 bank / 5 test images, 32 px), protocol knn-v1
          kNN accuracy (k = 200, τ = 0.1): 50.00 %
    """
    model, data, protocol = result["model"], result["data"], result["protocol"]
    lines = [
        f"{model['spec']}: {data['source'].removeprefix('kNN: ')} ({data['bank_samples']} bank / "
        f"{data['test_samples']} test images, {model['image_size']} px), protocol "
        f"{result['protocol_version']}",
        f"  kNN accuracy (k = {protocol['k']}, τ = {protocol['temperature']}): "
        + _percent(result["knn_accuracy"]),
    ]
    if "linear_probe_accuracy" in result:
        lines.append(f"  linear probe accuracy: {_percent(result['linear_probe_accuracy'])}")
    for key, label in (("random_init_knn", "random init"), ("raw_pixels_knn", "raw pixels")):
        if key in (result.get("baselines") or {}):
            lines.append(f"  baseline kNN, {label}: {_percent(result['baselines'][key])}")
    if result.get("protocol_changes"):
        lines.append(f"  changed from {result['protocol_version']}: {result['protocol_changes']}")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------
def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="timm name (random init), a folder / local-dir:PATH, hf-hub:ID")
    p.add_argument("--dataset", default="builtin", help="labelled dataset (any --dataset spec)")
    p.add_argument("--k", type=int, default=EvalProtocol.k, help="kNN neighbours")
    p.add_argument("--temperature", type=float, default=EvalProtocol.temperature, help="kNN τ")
    p.add_argument("--no-linear-probe", dest="linear_probe", action="store_false")
    p.add_argument("--no-baselines", dest="baselines", action="store_false")
    p.add_argument(
        "--bn",
        choices=("running", "precise"),
        default=EvalProtocol.bn,
        help="BatchNorm statistics: re-estimated on bank batches (default, as the training "
        "monitor) or as saved (running)",
    )
    p.add_argument("--image-size", type=int, help="default: the model's pretrained_cfg size")
    p.add_argument("--eval-split", default="test", help="test split (default: test)")
    p.add_argument("--eval-bank-split", help="kNN bank split (default: train)")
    p.add_argument("--image-column")
    p.add_argument("--label-column")
    p.add_argument("--max-samples", type=int, help="first N images of bank and test")
    p.add_argument("--held-out-fraction", type=float, default=0.1)
    p.add_argument("--held-out-seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write the result as JSON ('-': stdout)")
    p.add_argument(
        "--update-card",
        action="store_true",
        help="add the result to a saved model's config.json and card (model-index)",
    )


def _cli(args: argparse.Namespace) -> int:
    if args.update_card and _timm_spec(args.model)[1] != "local-dir":
        raise ValueError("--update-card needs a saved model folder (local-dir:PATH or a folder)")
    accelerator = make_accelerator()
    result = evaluate_backbone(
        args.model,
        args.dataset,
        k=args.k,
        temperature=args.temperature,
        linear_probe=args.linear_probe,
        baselines=args.baselines,
        image_size=args.image_size,
        eval_split=args.eval_split,
        eval_bank_split=args.eval_bank_split,
        image_column=args.image_column,
        label_column=args.label_column,
        max_samples=args.max_samples,
        held_out_fraction=args.held_out_fraction,
        held_out_seed=args.held_out_seed,
        protocol=EvalProtocol(bn=args.bn),
        accelerator=accelerator,
    )
    if accelerator.is_main_process:
        _report(args, result)
    accelerator.wait_for_everyone()
    return 0


def _report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Print / write the result, update the card (main process only)."""
    text = json.dumps(result, indent=2)
    if args.json == "-":
        print(text)
    else:
        print(format_result(result))
    if args.json and args.json != "-":
        from hub_cutinit.atomic import write_text_atomic

        print(f"wrote {write_text_atomic(args.json, text + chr(10))}")
    if args.update_card:
        from hub_cutinit.hub.card import add_evaluation_result

        directory = _timm_spec(args.model)[0][len("local-dir:") :]
        print(f"updated {add_evaluation_result(directory, result)}")


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``hub-cutinit eval`` to the ``hub-cutinit`` parser."""
    p = subparsers.add_parser(
        "eval",
        help="kNN + linear probe of any backbone with the training monitor's protocol",
        description=f"kNN (k, τ) and a linear probe on frozen features (protocol "
        f"{PROTOCOL_VERSION}), with the random-init and raw-pixel baselines. Distributed "
        "under `accelerate launch -m hub_cutinit.cli eval ...`.",
    )
    _add_arguments(p)
    p.set_defaults(func=_cli)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hub_cutinit.eval_backbone MODEL ...`` (the same as ``hub-cutinit eval``)."""
    parser = argparse.ArgumentParser(prog="hub-cutinit eval")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _cli(args)
    except ValueError as err:
        print(f"hub-cutinit eval: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
