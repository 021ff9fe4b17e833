"""``hub-cutinit card`` and ``hub-cutinit push``: the Hub subcommands of the CLI.

Example:
    $ hub-cutinit card out/byol-r18
    $ HF_TOKEN=hf_... hub-cutinit push out/byol-r18 me/byol-resnet18-cut9 --private
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register_cli"]


def _cmd_card(args: argparse.Namespace) -> int:
    from hub_cutinit.hub.card import render_model_card

    print(render_model_card(args.out_dir, repo_id=args.repo_id))
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from hub_cutinit.hub.push import HubError, push_to_hub

    try:
        url = push_to_hub(
            args.out_dir,
            args.repo_id,
            private=args.private,
            token=args.token,
            commit_message=args.message,
            max_attempts=args.retries,
        )
    except HubError as err:
        print(f"hub-cutinit push: error: {err}", file=sys.stderr)
        return 1
    print(url)
    return 0


def register_cli(subparsers: Any) -> None:
    """Add the ``card`` and ``push`` subcommands to an ``argparse`` subparsers object.

    Each subcommand sets ``func``; dispatch with ``args.func(args)`` (returns an exit code).

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser()
        >>> register_cli(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["push", "out", "me/repo", "--private"]).private
        True
    """
    p = subparsers.add_parser(
        "card",
        help="re-render README.md (and norms.png) of a saved model from its config.json",
        description="Re-render the model card of a folder written by save_pretrained.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder written by save_pretrained")
    p.add_argument("--repo-id", default=None, help="Hub repo shown in the usage snippets")
    p.set_defaults(func=_cmd_card)

    p = subparsers.add_parser(
        "push",
        help="upload a saved model to the Hugging Face Hub (creates the repo if needed)",
        description=(
            "Upload a folder written by save_pretrained. Authenticate with `hf auth login` or "
            "the HF_TOKEN environment variable (preferred: --token is visible to other local "
            "users in the process list)."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder written by save_pretrained")
    p.add_argument("repo_id", metavar="REPO_ID", help="user/name or org/name")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument(
        "--token", default=None, help="Hub token with write access (default: HF_TOKEN / login)"
    )
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument(
        "--retries", type=int, default=None, help="attempts per Hub call on transient errors"
    )
    p.set_defaults(func=_cmd_push)
