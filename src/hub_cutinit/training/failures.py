"""How a run fails: a non-finite loss, a lost process; the errors and their messages.

Example:
    >>> print(nonfinite_message(7, float("nan"), 0.3, 9.0, None)[:40])
    Non-finite loss (nan) at step 7. Likely
"""

from __future__ import annotations

from typing import Any

import torch

from hub_cutinit.distributed import is_distributed

__all__ = [
    "LostProcessError",
    "NonFiniteLossError",
    "all_true",
    "lost_process_error",
    "lost_process_message",
    "nonfinite_message",
]


class NonFiniteLossError(RuntimeError):
    """The loss (or a gradient) became NaN or infinite; the run stopped, nothing trained after
    that step was saved, and the step's update was zeroed (see :meth:`Trainer.training_step`)."""


class LostProcessError(RuntimeError):
    """Another process of a multi-process run died or stopped answering; this one stopped too.

    The message names the lost rank (when it can be known) and says how to resume.
    """


#: Lower-case fragments of the errors gloo / NCCL / the store raise when a peer is gone.
_LOST_PEER_SIGNS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "timeout",
    "connection refused",
    "socket",
    "gloo",
    "nccl",
)


def lost_process_message(
    err: BaseException, rank: int, world: int, step: int, last_ckpt: Any, timeout: float
) -> str:
    others = [r for r in range(world) if r != rank]
    lost = f"rank {others[0]}" if len(others) == 1 else f"one of ranks {others}"
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    kept = (
        f"the last complete checkpoint is {last_ckpt}"
        if last_ckpt
        else "no checkpoint was written yet (the run restarts from step 0)"
    )
    return (
        f"Lost process {lost} of {world} during step {step + 1}: it died (killed, out of "
        f"memory, node lost) or did not answer within --collective-timeout {timeout:g} s. "
        f"This process (rank {rank}) stops too; {kept}. To continue, start the same command "
        f"again with --resume on all {world} processes. [{type(err).__name__}: {first}]"
    )


def all_true(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every process (a barrier-free agreement)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item() > 0)


def nonfinite_message(step: int, loss: float, lr: float, c: float, last_ckpt: Any) -> str:
    hint = (
        f"Likely causes: the learning rate is too high (lr={lr:.3g}; try a smaller --lr or a "
        f"longer warm-up), or c={c:g} is too large or too small for this model (try --c 3 or "
        "--c 1), or --mixed-precision fp16 overflowed."
    )
    kept = (
        f" The last good checkpoint is kept: {last_ckpt}."
        if last_ckpt
        else " No checkpoint was written yet."
    )
    return f"Non-finite loss ({loss}) at step {step}. {hint}{kept}"


def lost_process_error(
    err: BaseException, step: int, last_ckpt: Any, timeout: float
) -> LostProcessError | None:
    """The error to raise when ``err`` says another process is gone, else ``None``."""
    dist = torch.distributed
    if isinstance(err, (NonFiniteLossError, LostProcessError)) or not (
        dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    ):
        return None
    text = f"{err} {err.__cause__ or ''}".lower()
    if not isinstance(err, dist.DistError) and not any(s in text for s in _LOST_PEER_SIGNS):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    return LostProcessError(lost_process_message(err, rank, world, step, last_ckpt, timeout))
