"""Push a saved model to the Hugging Face Hub, with retries and a token that never leaks.

Example (needs a Hub token with write access)::

    from hub_cutinit.hub import push_to_hub, save_pretrained
    save_pretrained(model, "out/byol-r18", training_info=info)
    url = push_to_hub("out/byol-r18", "me/byol-resnet18-cut9")
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from torch import nn

from hub_cutinit.hub.format import CARD_NAME, MANAGED_FILES, read_config

if TYPE_CHECKING:
    from hub_cutinit.methods.base import SSLModel

__all__ = [
    "push_to_hub",
    "HubError",
    "HubAuthError",
    "PUSH_MAX_ATTEMPTS",
    "PUSH_BASE_DELAY",
    "scrub",
    "is_transient_error",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Attempts per Hub call (1 = no retry); ``HUB_CUTINIT_PUSH_ATTEMPTS`` overrides it.
PUSH_MAX_ATTEMPTS = 5
#: First back-off delay in seconds, doubled after each failure (with up to 10 % jitter);
#: ``HUB_CUTINIT_PUSH_BACKOFF`` overrides it.
PUSH_BASE_DELAY = 2.0
PUSH_MAX_DELAY = 60.0
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


class HubError(RuntimeError):
    """A Hub operation failed (after retries, for transient errors)."""


class HubAuthError(HubError, PermissionError):
    """The Hub refused the token (401/403); local files are untouched."""


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every secret and anything shaped like a Hub token replaced by ``***``.

    Example:
        >>> scrub("token hf_abcdefghijkl and s3cret", ["s3cret"])
        'token *** and ***'
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _TOKEN_PATTERN.sub("***", text)


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError", "TimeoutException")),
        ("httpx", ("TransportError", "TimeoutException")),
        ("requests.exceptions", ("ConnectionError", "Timeout", "ChunkedEncodingError")),
    ):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        errors.extend(getattr(mod, name) for name in names if hasattr(mod, name))
    return tuple(errors)


def is_transient_error(err: BaseException) -> bool:
    """Worth retrying: a 408/429/5xx answer, or a connection/timeout error."""
    status = _status(err)
    if status is not None:
        return status in _TRANSIENT_STATUS or status >= 500
    return isinstance(err, _transport_errors())


def _auth_message(action: str, status: int, detail: str) -> str:
    return (
        f"The Hugging Face Hub refused the credentials while {action} ({status}"
        f"{' Unauthorized' if status == 401 else ' Forbidden'}): {detail}\n"
        "Log in with `hf auth login` (or `huggingface-cli login`), or pass token=... "
        "(CLI: --token) or set the HF_TOKEN environment variable, with a token that has write "
        "access to this namespace. Your local files were not changed."
    )


def _call_with_retries(
    fn: Callable[[], T],
    *,
    action: str,
    attempts: int,
    base_delay: float,
    secrets: list[str | None],
) -> T:
    attempts = max(1, int(attempts))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:
            status = _status(err)
            detail = scrub(
                str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__,
                secrets,
            )
            if status in (401, 403):
                raise HubAuthError(_auth_message(action, status, detail)) from None
            if type(err).__name__ == "OfflineModeIsEnabled":  # a ConnectionError: do not retry
                raise HubError(
                    f"Cannot push while offline mode is on ({detail}); unset HF_HUB_OFFLINE."
                ) from None
            if not is_transient_error(err):
                if scrub(str(err), secrets) != str(err):
                    raise HubError(f"Failed while {action}: {scrub(str(err), secrets)}") from None
                raise
            if attempt == attempts:
                raise HubError(
                    f"Failed while {action} after {attempts} attempt(s): {type(err).__name__}: {detail}"
                ) from None
            delay = min(PUSH_MAX_DELAY, base_delay * 2 ** (attempt - 1))
            delay += random.uniform(0, 0.1 * delay)
            logger.warning(
                "Transient Hub error while %s (attempt %d/%d): %s: %s; retrying in %.2f s",
                action,
                attempt,
                attempts,
                type(err).__name__,
                detail,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _stage(src: Path, dst: Path) -> None:
    """Hard-link (or copy) the files save_pretrained wrote, and nothing else, into ``dst``."""
    for name in MANAGED_FILES:
        if name == CARD_NAME or not (src / name).is_file():
            continue
        try:
            os.link(src / name, dst / name)
        except OSError:
            shutil.copy2(src / name, dst / name)


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number.") from None


def _retry_settings(max_attempts: int | None, base_delay: float | None) -> tuple[int, float]:
    """Attempts per Hub call and the first back-off delay, from the arguments or the environment."""
    attempts = int(max_attempts or _env_number("HUB_CUTINIT_PUSH_ATTEMPTS", PUSH_MAX_ATTEMPTS))
    delay = float(
        base_delay
        if base_delay is not None
        else _env_number("HUB_CUTINIT_PUSH_BACKOFF", PUSH_BASE_DELAY)
    )
    return attempts, delay


def _known_secrets(token: str | None) -> list[str | None]:
    """Every token the push might use, so that :func:`scrub` keeps them out of messages."""
    from huggingface_hub.utils import get_token

    secrets = [token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        secrets.append(get_token())
    except Exception:  # a broken token file must not break the push: the client reports it
        pass
    return secrets


def _saved_folder(
    out_dir_or_model: str | os.PathLike[str] | nn.Module,
    tmp: Path,
    training_info: dict[str, Any] | None,
) -> Path:
    """The save_pretrained folder to push: the given one, or the model saved under ``tmp``."""
    from hub_cutinit.hub.serialization import save_pretrained

    if isinstance(out_dir_or_model, nn.Module):  # save_pretrained checks it is an SSL model
        model = cast("SSLModel", out_dir_or_model)
        return save_pretrained(model, tmp / "model", training_info=training_info)
    if training_info is not None:
        raise ValueError(
            "training_info is only used when pushing a model; save_pretrained takes it."
        )
    return Path(out_dir_or_model)


def _staged_upload(
    out_dir: Path, tmp: Path, repo_id: str, commit_message: str | None
) -> tuple[Path, str]:
    """Stage the managed files with a card for ``repo_id``; return the folder and commit message."""
    from hub_cutinit.hub.card import render_model_card

    config = read_config(out_dir)  # ValueError when not ours
    block = config["hub_cutinit"]
    staging = tmp / "staging"
    staging.mkdir()
    _stage(out_dir, staging)
    render_model_card(staging, repo_id=repo_id)
    message = commit_message or (
        f"Upload {block.get('method')} {config.get('architecture')} "
        f"(c={block.get('c'):g}) with hub_cutinit"
    )
    return staging, message


def push_to_hub(
    out_dir_or_model: str | os.PathLike[str] | nn.Module,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    training_info: dict[str, Any] | None = None,
    max_attempts: int | None = None,
    base_delay: float | None = None,
) -> str:
    """Create the repo if needed and upload a saved model; return the commit URL.

    Only the files save_pretrained writes are uploaded (never checkpoints or other files in
    the folder). The card is re-rendered with ``repo_id`` in its usage snippets in a staging
    copy (hard links), so the local folder is never modified. Pushing again uploads a new
    commit with the changed files (an unchanged folder makes no commit and returns the latest
    one); files deleted locally are not deleted on the Hub.

    Args:
        out_dir_or_model: a folder from :func:`hub_cutinit.hub.save_pretrained`, or an SSL model
            (saved to a temporary folder first, with ``training_info``).
        repo_id: ``"user/name"`` or ``"org/name"``.
        private: create the repo private (an existing repo keeps its visibility).
        token: a Hub token with write access; default: ``HF_TOKEN`` or the ``hf auth login``
            token. It is never written to disk, logged, or put in an exception message.
        commit_message: default ``"Upload <method> <architecture> (c=<c>) with hub_cutinit"``.
        training_info: only with a model, see :func:`hub_cutinit.hub.save_pretrained`.
        max_attempts: attempts per Hub call for transient errors (5xx, 429, connection
            errors), default :data:`PUSH_MAX_ATTEMPTS`; the delay starts at ``base_delay``
            seconds (default :data:`PUSH_BASE_DELAY`) and doubles.

    Raises:
        HubAuthError: 401/403 from the Hub (log in or pass a token with write access).
        HubError: the push failed after all retries.
        ValueError: ``out_dir`` is not a hub_cutinit save.
    """
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"repo_id must look like 'user/name', got {repo_id!r}.")
    attempts, delay = _retry_settings(max_attempts, base_delay)
    secrets = _known_secrets(token)

    with tempfile.TemporaryDirectory(prefix="hub_cutinit_push_") as tmp:
        out_dir = _saved_folder(out_dir_or_model, Path(tmp), training_info)
        staging, message = _staged_upload(out_dir, Path(tmp), repo_id, commit_message)
        api = HfApi()
        _call_with_retries(
            lambda: api.create_repo(repo_id, private=private, exist_ok=True, token=token),
            action=f"creating the repository {repo_id}",
            attempts=attempts,
            base_delay=delay,
            secrets=secrets,
        )
        info = _call_with_retries(
            lambda: api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                commit_message=message,
                token=token,
            ),
            action=f"uploading to {repo_id}",
            attempts=attempts,
            base_delay=delay,
            secrets=secrets,
        )
    url = str(getattr(info, "commit_url", None) or info)
    logger.info("Pushed to %s", url)
    return url
