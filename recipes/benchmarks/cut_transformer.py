"""What does the cut do to a ViT, next to a ResNet? Measured at initialisation (issue 21, item 5).

The paper's argument that the cut "barely changes the function" holds after BatchNorm: every BN
output is exactly ``1/c`` of the original. A ViT has no BatchNorm: the cut divides the patch
embedding, LayerNorm's affine weights and the query/key/value projections by ``c``, so queries
and keys shrink by about ``c²`` each and the attention logits by about ``c⁴``. This script
measures, for each network and each c in ``--c`` (default 1, 3, 9), with the weights of one
seed (the cut is a deterministic division, so every c starts from the same network):

- per block: the attention entropy (nats; uniform attention has ``log N``), the standard
  deviation of the attention logits ``q·k/√d``, and for ViTs the size of each residual
  branch relative to the residual stream it is added to (``‖block(x) − x‖ / ‖x‖``);
- the mean norms of the backbone features ``‖h‖`` and of the SimCLR projections ``‖z‖``
  (heads of :func:`hub_cutinit.create_ssl_model`), the cosine between each image's features
  at c and at c = 1 (1 = same direction: only the scale changed) and the mean cosine between
  the features (and between the projections) of different images (near 1 = every image looks
  the same);
- one SimCLR step (NT-Xent, τ = 0.5) on built-in images: the loss and the gradient norm of the
  backbone, of the heads, and the backbone's ``‖g‖/‖θ‖`` (the relative size of an SGD step).

Networks (``--nets``): ``vit32`` = ``vit_tiny_patch16_224`` with ``img_size=32, patch_size=4``
(65 tokens, 12 blocks, width 192), ``vit32-heads`` = the same with ``cut_scope="heads"`` (only
the SimCLR head is cut), ``vit224`` = the default ``vit_tiny_patch16_224`` at 224 px
(197 tokens), ``resnet18`` = timm ``resnet18`` at 32 px. Images: the built-in Fashion-MNIST
test split (the first ``--images``), normalised with the model's mean/std; the two SimCLR views
are the images and their horizontal flip plus Gaussian noise (σ = 0.1, fixed generator).
Everything runs in training mode (BatchNorm with batch statistics; the ViTs have no dropout).

Run::

    python recipes/benchmarks/cut_transformer.py                 # ~3 min on 1 thread
    python recipes/benchmarks/cut_transformer.py --quick         # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hub_cutinit import create_ssl_model
from hub_cutinit.attention import recording_attention
from hub_cutinit.data import SSLImageStream, make_eval_loader, make_eval_transform, resolve_dataset

RESULTS = Path(__file__).resolve().parents[1] / "results" / "cut_transformer"

_VIT32 = {"img_size": 32, "patch_size": 4}
#: name -> (timm model, backbone_kwargs, image size, images, other SimCLR hyper-parameters)
NETS: dict[str, tuple[str, dict[str, Any], int, int, dict[str, Any]]] = {
    "vit32": ("vit_tiny_patch16_224", _VIT32, 32, 64, {}),
    "vit32-heads": ("vit_tiny_patch16_224", _VIT32, 32, 64, {"cut_scope": "heads"}),
    "vit224": ("vit_tiny_patch16_224", {}, 224, 16, {}),
    "resnet18": ("resnet18", {}, 32, 64, {}),
}


def _builtin_images(size: int, count: int, mean: Sequence[float], std: Sequence[float]):
    """The first ``count`` built-in test images at ``size`` px, normalised (as ``inspect``)."""
    ds, image_col, _ = resolve_dataset("builtin", "test")
    stream = SSLImageStream(
        ds.take(count),
        make_eval_transform(size, mean, std),
        image_column=image_col,
        label_column=None,
        shuffle=False,
    )
    return next(iter(make_eval_loader(stream, count)))["image"]


def _views(model: nn.Module, size: int, count: int) -> list[torch.Tensor]:
    """Two views of ``count`` built-in test images: the images, and their flip plus noise."""
    cfg = model.backbone.pretrained_cfg
    x = _builtin_images(size, count, cfg["mean"], cfg["std"])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    return [x, x.flip(-1) + 0.1 * noise]


def _branch_ratios(model: nn.Module) -> tuple[list[Any], list[float]]:
    """Forward hooks on a ViT's blocks recording ``‖block(x) − x‖ / ‖x‖`` (mean over tokens)."""
    ratios: list[float] = []
    hooks = []
    for block in getattr(model.backbone, "blocks", []):

        def hook(_m: nn.Module, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
            x = inp[0].detach()
            ratios.append(float(((out.detach() - x).norm(dim=-1) / x.norm(dim=-1)).mean()))

        hooks.append(block.register_forward_hook(hook))
    return hooks, ratios


def _grad_norm(params: Sequence[nn.Parameter]) -> float:
    grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


def _pairwise_cos(h: torch.Tensor) -> float:
    """Mean cosine between the features of different images."""
    u = nn.functional.normalize(h.float(), dim=1)
    sim = u @ u.T
    n = len(u)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def measure(net: str, c: float, *, seed: int = 0, images: int | None = None) -> dict[str, Any]:
    """All the numbers of one network at one c (see the module docstring)."""
    name, kwargs, size, count, hparams = NETS[net]
    torch.manual_seed(seed)
    model = create_ssl_model("simclr", name, c=c, backbone_kwargs=kwargs, **hparams).train()
    views = _views(model, size, images or count)
    hooks, ratios = _branch_ratios(model)
    is_vit = bool(hooks)
    with recording_attention(model.backbone) if is_vit else nullcontext() as attention:
        out = model(views)
    for handle in hooks:
        handle.remove()
    out.loss.backward()
    backbone = list(model.backbone.parameters())
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    theta = float(torch.cat([p.detach().flatten() for p in backbone]).norm())
    h, z = out.embeddings["backbone"].detach(), out.embeddings["projection"].detach()
    row: dict[str, Any] = {
        "net": net, "model": name, "backbone_kwargs": kwargs, "hparams": hparams, "c": c,
        "image_size": size,
        "images": len(views[0]), "backbone_norm": float(h.norm(dim=1).mean()),
        "projection_norm": float(z.norm(dim=1).mean()), "pairwise_cos": _pairwise_cos(h),
        "pairwise_cos_projection": _pairwise_cos(z),
        "loss": float(out.loss.detach()), "grad_backbone": _grad_norm(backbone),
        "grad_heads": _grad_norm(heads), "grad_over_weight_backbone": _grad_norm(backbone) / theta,
        "features": h,
    }  # fmt: skip
    if is_vit:
        n_blocks = len(attention.names)
        calls = len(ratios) // n_blocks
        row.update(
            tokens=attention.tokens,
            uniform_entropy=math.log(attention.tokens),
            attention_entropy=attention.entropy,
            attention_logit_std=attention.logit_std,
            branch_ratio=[sum(ratios[i::n_blocks]) / calls for i in range(n_blocks)],
        )
    return row


def run(nets: Sequence[str], cs: Sequence[float], *, images: int | None = None) -> list[dict]:
    """One row per (network, c); ``cos_to_c1``: cosine of each image's features to c = 1."""
    rows = []
    for net in nets:
        reference = None
        for c in cs:
            start = time.perf_counter()
            row = measure(net, c, images=images)
            feats = row.pop("features")
            reference = feats if reference is None else reference
            row["cos_to_first_c"] = float(nn.functional.cosine_similarity(feats, reference).mean())
            row["seconds"] = round(time.perf_counter() - start, 2)
            print(f"{net} c={c:g}: {row['seconds']} s", flush=True)
            rows.append(row)
    return rows


def _f(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def markdown(rows: list[dict]) -> str:
    """The per-block attention table and the norms / gradient table, in markdown."""
    lines = ["### Attention entropy per block at initialisation (nats)", ""]
    for net in dict.fromkeys(r["net"] for r in rows if "attention_entropy" in r):
        sub = [r for r in rows if r["net"] == net]
        blocks = len(sub[0]["attention_entropy"])
        lines += [
            f"`{net}`: {sub[0]['model']} {sub[0]['backbone_kwargs'] or ''} at "
            f"{sub[0]['image_size']} px, N = {sub[0]['tokens']} tokens, uniform attention = "
            f"log N = {sub[0]['uniform_entropy']:.4f}. Rows: entropy; deficit log N − H; logit "
            "std; residual branch / stream.",
            "",
            "| c | quantity | " + " | ".join(str(i) for i in range(blocks)) + " |",
            "|---|---|" + "---|" * blocks,
        ]
        for r in sub:
            deficit = [r["uniform_entropy"] - h for h in r["attention_entropy"]]
            for label, values, fmt in (
                ("H", r["attention_entropy"], "{:.4f}"),
                ("log N − H", deficit, "{:.1e}"),
                ("logit std", r["attention_logit_std"], "{:.1e}"),
                ("branch / stream", r["branch_ratio"], "{:.1e}"),
            ):
                cells = " | ".join(fmt.format(v) for v in values)
                lines.append(f"| {r['c']:g} | {label} | {cells} |")
        lines.append("")
    lines += [
        "### Norms and the first SimCLR step",
        "",
        "| net | c | ‖h‖ backbone | ‖z‖ projection | cos(h, h at c=1) | cos between images "
        "| cos between z | loss | ‖g‖ backbone | ‖g‖ heads | ‖g‖/‖θ‖ backbone |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["backbone_norm"], r["projection_norm"], r["cos_to_first_c"], r["pairwise_cos"],
                 r["pairwise_cos_projection"],
                 r["loss"], r["grad_backbone"], r["grad_heads"], r["grad_over_weight_backbone"]]  # fmt: skip
        lines.append(f"| {r['net']} | {r['c']:g} | " + " | ".join(_f(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    parser.add_argument("--c", nargs="+", type=float, default=[1.0, 3.0, 9.0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="8 images, vit32 only")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for JSON + markdown")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nets = ["vit32"] if args.quick else args.nets
    rows = run(nets, args.c, images=8 if args.quick else None)
    table = markdown(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"torch": torch.__version__, "threads": args.threads, "seed": 0, "rows": rows}
    (args.out / "cut_transformer.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "cut_transformer.md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
