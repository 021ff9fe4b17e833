"""Train any registered SSL method from an installed package: ``python -m hub_cutinit.train``.

The first argument is the method; every other flag is a recipe flag, passed to
:func:`hub_cutinit.training.main` (the entry ``recipes/<method>.py`` call too). The same
command is ``hub-cutinit train METHOD [flags]``, and ``accelerate launch -m`` starts it on one
or many processes (each process runs ``python -m hub_cutinit.train ...``)::

    python -m hub_cutinit.train byol --backbone resnet18 --dataset builtin --epochs 1
    hub-cutinit train simclr --dataset uoft-cs/cifar10 --image-size 32
    accelerate launch -m hub_cutinit.train byol --dataset uoft-cs/cifar10 --image-size 32
    python -m hub_cutinit.train byol --help      # every flag of one method

Example:
    >>> import argparse
    >>> from hub_cutinit.train import register_cli
    >>> sub = argparse.ArgumentParser(prog="hub-cutinit").add_subparsers(dest="command")
    >>> register_cli(sub)
    >>> args = sub.choices["train"].parse_args(["byol", "--max-steps", "2", "--set", "proj_dim=16"])
    >>> args.method, args.flags
    ('byol', ['--max-steps', '2', '--set', 'proj_dim=16'])
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from hub_cutinit.registry import list_methods

__all__ = ["main", "register_cli", "run", "usage"]

_MODULE_PROG = "python -m hub_cutinit.train"


def usage(prog: str = _MODULE_PROG) -> str:
    """The help text shown without a method: the methods and how to see one method's flags.

    Example:
        >>> "byol" in usage()
        True
    """
    return f"usage: {prog} METHOD [FLAGS ...]\n\n" + _about(prog)


def _about(prog: str) -> str:
    return (
        "Train a self-supervised model with cut-initialisation (hub_cutinit).\n\n"
        f"METHOD is one of: {', '.join(list_methods())}\n\n"
        f"Every flag of a method:   {prog} METHOD --help\n"
        f"Example:                  {prog} byol --dataset builtin --epochs 1\n"
        f"On several processes:     accelerate launch -m hub_cutinit.train METHOD [FLAGS ...]\n"
    )


def check_method(method: str) -> str:
    """``method`` if it is registered, else a ``ValueError`` that lists the registered ones.

    Example:
        >>> check_method("byol")
        'byol'
        >>> check_method("bayol")
        Traceback (most recent call last):
        ...
        ValueError: unknown method 'bayol'; choose one of: barlow_twins, byol, dino, moco, mocov3, simclr, simsiam, vicreg
    """
    methods = list_methods()
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(methods)}")
    return method


@contextlib.contextmanager
def _program_name(prog: str) -> Iterator[None]:
    """Make argparse's default ``prog`` (read from ``sys.argv[0]``) show ``prog`` in usage lines."""
    saved = sys.argv[0] if sys.argv else None
    if sys.argv:
        sys.argv[0] = prog
    else:
        sys.argv.append(prog)
    try:
        yield
    finally:
        if saved is None:
            sys.argv.pop(0)
        else:
            sys.argv[0] = saved


def run(method: str, argv: Sequence[str] = (), *, prog: str = _MODULE_PROG) -> dict[str, Any]:
    """Validate ``method`` and train it with the recipe flags ``argv``; returns the run summary.

    ``--help`` in ``argv`` prints the method's flags under the usage line ``prog METHOD``.
    Example (``output_dir`` is where the model is saved in timm's format)::

        run("simsiam", ["--max-steps", "2", "--batch-size", "8", "--output-dir", "/tmp/s"])
    """
    check_method(method)
    from hub_cutinit.training import main as train_main  # heavy: only when training

    with _program_name(f"{prog} {method}"):
        return train_main(method, list(argv))


def main(argv: Sequence[str] | None = None, *, prog: str = _MODULE_PROG) -> int:
    """Entry point of ``python -m hub_cutinit.train METHOD [flags]``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(prog), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0].startswith("-"):
        print(usage(prog), file=sys.stderr)
        print(f"{prog}: error: the first argument must be METHOD, got {args[0]!r}", file=sys.stderr)
        return 2
    try:
        check_method(args[0])
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    run(args[0], args[1:], prog=prog)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    run(args.method, args.flags, prog="hub-cutinit train")  # ValueError → exit 2 in cli.main
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``hub-cutinit train METHOD [flags]``; every flag after METHOD goes to the recipe.

    ``hub-cutinit train METHOD --help`` prints the method's flags.
    """
    p = subparsers.add_parser(
        "train",
        help="train a method (every recipe flag; see `hub-cutinit train METHOD --help`)",
        description=_about("hub-cutinit train"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="hub-cutinit train METHOD [FLAGS ...]",
    )
    p.add_argument("method", metavar="METHOD", choices=list_methods(), help="the SSL method")
    # REMAINDER keeps every flag after METHOD, `--help` included, for the method's own parser.
    p.add_argument("flags", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_train)


if __name__ == "__main__":
    sys.exit(main())
