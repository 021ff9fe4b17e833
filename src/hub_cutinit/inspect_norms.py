"""``hub-cutinit inspect MODEL``: are my embedding norms the problem?

Measures the embedding norms ‖z‖ of any vision model on a few batches of real images, then
the norms after :func:`hub_cutinit.cut_init` with c ∈ {1, 3, 9} (on copies: the model is never
modified), and prints the paper's reading: the gradient reaching a normalised embedding is
∝ 1/‖z‖ and the angle one step turns z is ∝ lr/‖z‖², so relative to c = 1 a cut model takes
(‖z₁‖/‖z_c‖)² larger steps at the same learning rate. With ``--figure PATH`` it also plots
the numbers to a PNG (:func:`plot_report`); without it, it writes no file.

MODEL is one of

- a timm model name (``resnet18``, random init unless ``--pretrained``);
- a local folder: a timm / hub_cutinit save (``config.json`` with ``architecture``, loaded as
  ``timm.create_model("local-dir:...")``) or a transformers save (``config.json`` with
  ``model_type``, loaded with ``AutoModel``; the pooled output, else the first token);
- ``hf-hub:owner/name`` or ``owner/name``: the same two kinds from the Hub.

Normalisation layers run as in training: BatchNorm uses the batch statistics (train mode),
everything else (dropout, drop-path) is in eval mode. Under that convention a BatchNorm ResNet's
features scale exactly by 1/c, and so do a ViT's (its final LayerNorm's affine is cut), up to
the normalisation eps. For a timm ViT it also prints the attention entropy of every block at
each c (next to ``log N`` of uniform attention): the cut shrinks the attention logits by about
``c⁴``, so attention drifts towards uniform and the function changes.

Example:
    >>> report = inspect_norms("test_resnet", batches=1, batch_size=4, image_size=32, cs=(1, 3))
    >>> [row["c"] for row in report["rows"]], round(report["rows"][1]["step_x"])
    ([1.0, 3.0], 9)
    >>> print(format_table(report).splitlines()[0])  # doctest: +ELLIPSIS
    Embedding norms of test_resnet (timm, ...
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["FeatureModel", "format_table", "inspect_norms", "load_feature_model", "plot_report"]


class FeatureModel(nn.Module):
    """``images -> (B, D)`` embeddings of a timm or transformers model (``kind`` says which)."""

    def __init__(self, model: nn.Module, kind: str, output: str) -> None:
        super().__init__()
        self.model, self.kind, self.output = model, kind, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "timm":
            z = self.model(x)
            return z.flatten(1) if z.ndim > 2 else z
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        return hidden[:, 0] if hidden.ndim == 3 else hidden.mean(dim=tuple(range(2, hidden.ndim)))


def _read_config(spec: str) -> tuple[dict[str, Any], str] | None:
    """``(config.json, repo id or folder)`` of a local folder or a Hub id; ``None`` for a timm
    model name."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        file = path / "config.json"
        if not file.is_file():
            raise ValueError(
                f"{spec!r} is a folder without config.json; pass a timm / hub_cutinit save "
                "folder, a transformers save_pretrained folder, a timm model name or hf-hub:ID"
            )
        return json.loads(file.read_text()), str(path)
    repo = spec[len("hf-hub:") :] if spec.startswith("hf-hub:") else spec
    if "/" not in repo:
        return None  # a timm model name
    from huggingface_hub import hf_hub_download

    repo_id, _, revision = repo.partition("@")
    downloaded = hf_hub_download(repo_id, "config.json", revision=revision or None)
    return json.loads(Path(downloaded).read_text()), repo


def load_feature_model(
    spec: str, *, pretrained: bool = False, any_size: bool = False
) -> tuple[FeatureModel, dict]:
    """Build the embedding model for ``spec`` (see the module docstring) and describe it.

    ``any_size``: build a timm ViT named by ``spec`` with ``dynamic_img_size=True`` so it takes
    images of another size than its own (its position embedding is resampled).

    Returns ``(model, info)``; ``info`` has ``kind`` (``"timm"`` / ``"transformers"``),
    ``output`` (which tensor is the embedding), ``input_size`` (or ``None``), ``mean``, ``std``.

    Example:
        >>> model, info = load_feature_model("test_resnet")
        >>> info["kind"], info["output"], model(torch.randn(2, 3, 32, 32)).shape
        ('timm', 'pooled features (num_classes=0)', torch.Size([2, 96]))
    """
    import timm

    config, source = _read_config(spec) or (None, "")
    info: dict[str, Any]
    if config is not None and "architecture" not in config and "model_type" in config:
        from transformers import AutoModel

        net = AutoModel.from_pretrained(
            source.partition("@")[0], revision=source.partition("@")[2] or None
        )
        size = getattr(net.config, "image_size", None)
        output = "pooler_output (else the first token)"
        info = {"kind": "transformers", "output": output, "input_size": size}
        info.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        return FeatureModel(net, "transformers", output), info
    if config is not None:
        name = f"local-dir:{source}" if Path(source).is_dir() else f"hf-hub:{source}"
        net = timm.create_model(name, pretrained=True, num_classes=0)
    else:
        try:
            kwargs: dict[str, Any] = (
                {"dynamic_img_size": True} if any_size and _dynamic_size(spec) else {}
            )
            net = timm.create_model(spec, pretrained=pretrained, num_classes=0, **kwargs)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise ValueError(
                f"{spec!r} is not a timm model name, a folder or a Hub id ({err}); pass e.g. "
                "resnet18, ./my_save/, hf-hub:owner/name"
            ) from err
    data = timm.data.resolve_data_config({}, model=net)
    output = "pooled features (num_classes=0)"
    info = {"kind": "timm", "output": output}
    info.update(input_size=data["input_size"][-1], mean=data["mean"], std=data["std"])
    return FeatureModel(net, "timm", output), info


def _dynamic_size(name: str) -> bool:
    """Whether the timm model ``name`` takes ``dynamic_img_size`` (a ViT) and lacks it."""
    import timm

    from hub_cutinit.factory import supports_dynamic_img_size

    return bool(timm.is_model(name)) and supports_dynamic_img_size(name)


#: The BatchNorm layers (timm's ``BatchNormAct2d`` subclasses ``nn.BatchNorm2d``).
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _training_norm_mode(model: nn.Module) -> nn.Module:
    """Eval mode except BatchNorm, which uses batch statistics as in training."""
    model.eval()
    for module in model.modules():
        if isinstance(module, _BATCH_NORMS):
            module.train()
    return model


def _images(dataset: str, split: str, image_size: int, batches: int, batch_size: int, info):
    from hub_cutinit.data import (
        SSLImageStream,
        make_eval_loader,
        make_eval_transform,
        resolve_dataset,
    )

    ds, image_col, _ = resolve_dataset(dataset, split)
    stream = SSLImageStream(
        ds.take(batches * batch_size),
        make_eval_transform(image_size, info["mean"], info["std"]),
        image_column=image_col,
        label_column=None,
        shuffle=False,
    )
    out = [b["image"] for b in make_eval_loader(stream, batch_size)][:batches]
    if not out:
        raise ValueError(f"dataset {dataset!r} split {split!r} gave no image")
    return out


@torch.no_grad()
def inspect_norms(
    model: str,
    *,
    dataset: str = "builtin",
    split: str = "test",
    batches: int = 4,
    batch_size: int = 32,
    image_size: int | None = None,
    cs: Sequence[float] = (1.0, 3.0, 9.0),
    pretrained: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Embedding norms of ``model`` on ``batches × batch_size`` images, for each cut factor c.

    Returns a JSON-ready dict: ``model``, ``kind``, ``output``, ``dataset``, ``split``,
    ``image_size``, ``num_images`` and ``rows`` (one per c, in order): ``c``, ``mean``, ``std``,
    ``min``, ``max`` of ‖z‖, ``grad_x`` = ‖z_{c₀}‖/‖z_c‖ (gradient, ∝ 1/‖z‖) and ``step_x`` =
    its square (angle per step, ∝ lr/‖z‖²), both relative to the first c (normally 1), and
    ``cos`` (mean cosine between the cut model's and the uncut model's embeddings). The model
    is copied for every c; its weights are never changed.

    For a timm model with self-attention blocks (ViT, DeiT, EVA, …) each row also has
    ``attention_entropy`` and ``attention_logit_std`` (one value per block, see
    :mod:`hub_cutinit.attention`) and the report ``uniform_entropy`` (``log N``); other models
    get nothing new.
    """
    from hub_cutinit.attention import attention_modules, recording_attention
    from hub_cutinit.cut import cut_init
    from hub_cutinit.norms import row_norms

    net, info = load_feature_model(model, pretrained=pretrained, any_size=image_size is not None)
    size = int(image_size or info["input_size"] or 224)
    images = _images(dataset, split, size, batches, batch_size, info)
    rows: list[dict[str, Any]] = []
    tokens = 0
    reference: list[torch.Tensor] | None = None
    has_attention = info["kind"] == "timm" and bool(attention_modules(net))
    for c in cs:
        torch.manual_seed(seed)
        cut = cut_init(_training_norm_mode(copy.deepcopy(net)), c=float(c))
        with recording_attention(cut) if has_attention else nullcontext() as attention:
            z = [cut(x).float() for x in images]
        norms = torch.cat([row_norms(b) for b in z])
        reference = z if reference is None else reference
        cos = torch.cat(
            [nn.functional.cosine_similarity(a, b) for a, b in zip(z, reference, strict=True)]
        )
        rows.append({"c": float(c), "mean": float(norms.mean()), "std": float(norms.std()),
                     "min": float(norms.min()), "max": float(norms.max()), "cos": float(cos.mean())})  # fmt: skip
        if attention is not None:
            rows[-1]["attention_entropy"] = attention.entropy
            rows[-1]["attention_logit_std"] = attention.logit_std
            tokens = attention.tokens
    for row in rows:
        row["grad_x"] = rows[0]["mean"] / row["mean"]
        row["step_x"] = row["grad_x"] ** 2
    num = sum(len(x) for x in images)
    report = {"model": model, "kind": info["kind"], "output": info["output"], "dataset": dataset,
              "split": split, "image_size": size, "num_images": num, "rows": rows}  # fmt: skip
    if tokens:
        report["uniform_entropy"] = math.log(tokens)
    return report


def format_table(report: dict[str, Any]) -> str:
    """The terminal table and the paper's reading of ``report`` (from :func:`inspect_norms`)."""
    rows = report["rows"]
    c0 = rows[0]["c"]
    lines = [
        f"Embedding norms of {report['model']} ({report['kind']}, {report['output']}) on "
        f"{report['num_images']} images of {report['dataset']}:{report['split']} at "
        f"{report['image_size']}px; BatchNorm (if any) in train mode",
        f"{'c':>5s} {'mean ‖z‖':>10s} {'std':>9s} {'min':>9s} {'max':>9s} {'cos vs c=' + format(c0, 'g'):>9s}"
        f" {'gradient ×':>11s} {'step ×':>9s} {'c² law':>8s}",
    ]
    for r in rows:
        law = f"{(r['c'] / c0) ** 2:8.3g}"
        lines.append(
            f"{r['c']:5g} {r['mean']:10.4g} {r['std']:9.3g} {r['min']:9.4g} {r['max']:9.4g}"
            f" {r['cos']:9.4f} {r['grad_x']:11.3g} {r['step_x']:9.3g} {law}"
        )
    z1 = rows[0]["mean"]
    lines += [
        "",
        f"Reading (paper): the gradient reaching ẑ = z/‖z‖ is ∝ 1/‖z‖ and one step turns z by an "
        f"angle ∝ lr/‖z‖². At c={c0:g}, ‖z‖ ≈ {z1:.4g}: steps ∝ lr × {1 / z1**2:.3g}.",
    ]
    for r in rows[1:]:
        lines.append(
            f"  c={r['c']:g}: ‖z‖ is {r['grad_x']:.3g}× smaller → gradients {r['grad_x']:.3g}× and "
            f"angular steps {r['step_x']:.3g}× larger at the same lr"
            f" ('c² law' column: {(r['c'] / c0) ** 2:.3g}× if features scaled exactly by 1/c)."
        )
    lines.append(
        "Large ‖z‖ slows convergence quadratically; a cut of c (with weight decay) or a c²× "
        "larger lr on normalised weights compensates."
    )
    return "\n".join(lines + _attention_lines(report))


def _attention_lines(report: dict[str, Any]) -> list[str]:
    """The per-block attention entropy table of a ViT report (nothing for other models)."""
    if "uniform_entropy" not in report:
        return []
    rows = report["rows"]
    blocks = len(rows[0]["attention_entropy"])
    lines = [
        "",
        f"Attention entropy per block (nats, mean over images, heads and queries; uniform "
        f"attention = log N = {report['uniform_entropy']:.4f}):",
        f"{'c':>5s} " + " ".join(f"{'block ' + str(i):>9s}" for i in range(blocks)),
    ]
    for r in rows:
        lines.append(f"{r['c']:5g} " + " ".join(f"{h:9.4f}" for h in r["attention_entropy"]))
    lines.append(
        "The cut divides queries and keys by about c² each, so attention logits shrink by about "
        "c⁴ and attention tends to uniform (entropy → log N): unlike BatchNorm features, the "
        "function changes."
    )
    return lines


def plot_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a two-panel PNG: ‖z‖ vs c, and the relative gradient / step vs c (log-log)."""
    from hub_cutinit.plotting import new_figure, save_figure

    cs = [r["c"] for r in report["rows"]]
    c0, z0 = cs[0], report["rows"][0]["mean"]
    fig, axes = new_figure(1, 2, figsize=(9, 3.6))
    ax = axes[0][0]
    ax.errorbar(cs, [r["mean"] for r in report["rows"]], yerr=[r["std"] for r in report["rows"]],
                marker="o", capsize=3, label="measured mean ‖z‖ (± std)")  # fmt: skip
    ax.plot(cs, [z0 * c0 / c for c in cs], "k--", lw=1, label="‖z₁‖ / c")
    ax.set(xscale="log", yscale="log", xlabel="c", ylabel="‖z‖", title="embedding norm")
    ax = axes[0][1]
    ax.plot(cs, [r["grad_x"] for r in report["rows"]], "o-", label="gradient × (∝ 1/‖z‖)")
    ax.plot(cs, [r["step_x"] for r in report["rows"]], "s-", label="angle per step × (∝ 1/‖z‖²)")
    ax.plot(cs, [(c / c0) ** 2 for c in cs], "k:", lw=1, label="c²")
    ax.set(xscale="log", yscale="log", xlabel="c", ylabel=f"relative to c={c0:g}",
           title="what the optimiser sees")  # fmt: skip
    for ax in axes[0]:
        ax.legend(fontsize=7)
        ax.set_xticks(cs, [f"{c:g}" for c in cs])
    title = f"{report['model']}: {report['num_images']} images of {report['dataset']}"
    return save_figure(fig, path, title=title)


def _cli(args: argparse.Namespace) -> int:
    report = inspect_norms(
        args.model,
        dataset=args.dataset,
        split=args.split,
        batches=args.batches,
        batch_size=args.batch_size,
        image_size=args.image_size,
        cs=args.c,
        pretrained=args.pretrained,
    )
    if args.figure:
        report["png"] = str(plot_report(report, Path(args.figure)))
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(format_table(report))
        if args.figure:
            print(f"\nPlot: {report['png']}")
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``inspect MODEL [--dataset D] [--batches N] [--batch-size B] [--image-size S]
    [--c C ...] [--figure PNG] [--json] [--pretrained]``.

    Example:
        >>> parser = argparse.ArgumentParser(prog="hub-cutinit")
        >>> _ = register_cli(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["inspect", "resnet18", "--batches", "2"])
        >>> args.model, args.batches, args.c, args.dataset, args.figure
        ('resnet18', 2, [1.0, 3.0, 9.0], 'builtin', None)
    """
    parser = subparsers.add_parser(
        "inspect",
        help="embedding norms of any model, before and after cut_init (c = 1, 3, 9)",
        description=(
            "Measure the embedding norms of MODEL on a few batches of a dataset, then after "
            "cut_init with each c, and print the paper's reading: gradient ∝ 1/‖z‖, angle per "
            "step ∝ lr/‖z‖². --figure PATH also plots them to a PNG (no file is written "
            "without it); --json prints the numbers as JSON."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "model",
        help="timm model name (random init unless --pretrained), a local folder (timm, "
        "hub_cutinit or transformers save), or hf-hub:owner/name",
    )
    parser.add_argument("--dataset", default="builtin", help="any --dataset spec of training")
    parser.add_argument("--split", default="test", help="split of the dataset")
    parser.add_argument("--batches", type=int, default=4, help="batches to average over")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument(
        "--image-size", type=int, default=None, help="input size (default: the model's own)"
    )
    parser.add_argument("--c", nargs="+", type=float, default=[1.0, 3.0, 9.0], help="cut factors")
    parser.add_argument(
        "--figure",
        "--out",
        dest="figure",
        default=None,
        metavar="PNG",
        help="also plot the norms and relative steps to this PNG (default: no figure)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--pretrained", action="store_true", help="load a timm name's pretrained weights"
    )
    parser.set_defaults(func=_cli)
    return parser
