"""The ``hub-cutinit`` command.

Example:
    $ hub-cutinit --help
    $ hub-cutinit methods
    $ hub-cutinit norms --backbone resnet18 --c 1 3 9
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

import torch

from hub_cutinit._version import __version__
from hub_cutinit.factory import create_ssl_model
from hub_cutinit.registry import get_display_name, get_method_defaults, get_preset, list_methods

__all__ = ["main", "build_parser", "initial_norms"]

#: Modules that add their own subcommands through ``register_cli(subparsers)``.
_SUBCOMMAND_MODULES: tuple[str, ...] = (
    "hub_cutinit.simulate",
    "hub_cutinit.hub",
    "hub_cutinit.experiments.norm_confidence",
    "hub_cutinit.train",
    "hub_cutinit.inspect_norms",
    "hub_cutinit.eval_backbone",
)


def _small_heads(method: str) -> dict:
    """The method's ``"cpu"`` preset (small heads: the norm table builds in seconds), if any."""
    try:
        return get_preset(method, "cpu")
    except ValueError:  # a method of one's own without a "cpu" preset
        return {}


@torch.no_grad()
def initial_norms(
    method: str,
    backbone: str,
    cs: Sequence[float],
    *,
    image_size: int = 64,
    batch_size: int = 16,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Mean embedding norms at initialisation of ``method`` on ``backbone`` for each c.

    The same random weights and images are used for every c (train-mode BatchNorm), so the
    rows show the cut alone. Example:

        >>> rows = initial_norms("simclr", "resnet18", [1, 3], image_size=32, batch_size=4)
        >>> rows[0]["c"], round(rows[0]["backbone"] / rows[1]["backbone"], 1)
        (1.0, 3.0)
    """
    images = torch.randn(
        batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed)
    )
    rows = []
    for c in cs:
        torch.manual_seed(seed)
        model = create_ssl_model(method, backbone, c=c, **_small_heads(method))
        out = model([images, images.flip(-1)])
        row = {"c": float(c), "loss": float(out.loss)}
        row.update(
            {name: float(z.float().norm(dim=1).mean()) for name, z in out.embeddings.items()}
        )
        rows.append(row)
    return rows


def _cmd_methods(args: argparse.Namespace) -> int:
    for name in list_methods():
        d = get_method_defaults(name)
        print(
            f"{name:12s} {get_display_name(name):12s} family={d['family']:20s} c={d['c']:<4g} weight_decay={d['weight_decay']:<8g} "
            f"optimizer={d['optimizer']} base_lr={d['base_lr']}"
        )
        if args.verbose:
            print("  " + json.dumps(d, sort_keys=True))
    return 0


def _cmd_norms(args: argparse.Namespace) -> int:
    methods = args.methods or list_methods()
    print(
        f"Mean embedding norm ‖z‖ at initialisation: backbone={args.backbone}, "
        f"{args.batch_size} random images at {args.image_size}px, train-mode BatchNorm"
    )
    print(f"{'method':8s} {'c':>4s} {'backbone':>10s} {'projection':>11s} {'prediction':>11s}")
    for method in methods:
        for row in initial_norms(
            method, args.backbone, args.c, image_size=args.image_size, batch_size=args.batch_size
        ):
            pred = f"{row['prediction']:11.4g}" if "prediction" in row else f"{'-':>11s}"
            print(
                f"{method:8s} {row['c']:4g} {row['backbone']:10.4g} {row['projection']:11.4g} {pred}"
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hub-cutinit`` with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="hub-cutinit",
        description="Cut-initialisation for self-supervised vision models (timm + Accelerate + Hub).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("methods", help="list the registered SSL methods and their defaults")
    p.add_argument("-v", "--verbose", action="store_true", help="print every default")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("norms", help="print embedding norms at initialisation for several c")
    p.add_argument("--backbone", default="resnet18", help="any timm model name")
    p.add_argument("--methods", nargs="*", choices=list_methods(), help="default: all")
    p.add_argument("--c", nargs="+", type=float, default=[1.0, 3.0, 9.0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=_cmd_norms)

    for module_name in _SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hub-cutinit`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        print(f"hub-cutinit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
