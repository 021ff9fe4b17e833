"""Step statistics without host syncs: loss, mean norms and the non-finite flag of each step.

Each step adds its norm means, its loss and a non-finite flag to tensors on the device; nothing
is copied to the host and no collective runs until a logged step reads them with *one* fused
all-reduce (which also carries the values the callbacks add).

Example:
    >>> stats = StepStatistics(["z"], torch.device("cpu"))
    >>> stats.add(torch.tensor([2.0]), torch.tensor(1.0), torch.tensor(0.0), step=1)
    >>> stats.read(None)[:2]
    ({'z': 2.0}, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["StepStatistics"]


class StepStatistics:
    """Loss, mean norms and the non-finite flag of every step, summed on the device.

    :meth:`add` queues only device kernels (no host sync, no collective); :meth:`read` sums
    them over processes with one all-reduce and reads them with one host copy; :meth:`first_bad`
    (a collective) says which step first had a non-finite loss or gradient.

    Example:
        >>> stats = StepStatistics(["z"], torch.device("cpu"))
        >>> stats.add(torch.tensor([2.0]), torch.tensor(1.0), torch.tensor(0.0), step=1)
        >>> stats.add(torch.tensor([4.0]), torch.tensor(3.0), torch.tensor(0.0), step=2)
        >>> stats.read(None)[:2]
        ({'z': 3.0}, 2.0)
    """

    def __init__(self, names: Sequence[str], device: torch.device) -> None:
        self.names = list(names)
        self.device = device
        self.sums = torch.zeros(len(self.names) + 2, device=device)  # norms, loss, count
        self.bad = torch.zeros(3, device=device)  # count, first bad step, its loss
        self._one = torch.ones(1, device=device)

    def add(self, means: torch.Tensor, loss: torch.Tensor, found: torch.Tensor, step: int) -> None:
        """Add one step's norm means, loss and non-finite flag (0-d, 1 = bad)."""
        self.sums.add_(torch.cat([means.float(), loss.float().reshape(1), self._one]))
        found = found.reshape(())
        first = (self.bad[0] == 0) & (found > 0)
        step_t = torch.full((), float(step), device=self.device)
        self.bad.copy_(
            torch.stack(
                [
                    self.bad[0] + found,
                    torch.where(first, step_t, self.bad[1]),
                    torch.where(first, loss.float().reshape(()), self.bad[2]),
                ]
            )
        )

    def read(
        self, accelerator: Any, extra: Sequence[float] = ()
    ) -> tuple[dict[str, float], float, float, list[float]]:
        """``(mean norms, mean loss, non-finite steps, extra summed)`` over processes and the
        steps since the last read (one all-reduce, one host copy); resets the sums."""
        packed = torch.cat(
            [self.sums, self.bad[:1], torch.tensor(list(extra), device=self.device).float()]
        )
        if accelerator is not None:
            packed = accelerator.reduce(packed, reduction="sum")
        values = packed.tolist()  # the one host sync of a logged step
        n = len(self.names)
        count = max(values[n + 1], 1.0)
        norms = {k: v / count for k, v in zip(self.names, values[:n], strict=True)}
        self.sums.zero_()
        return norms, values[n] / count, values[n + 2], values[n + 3 :]

    def any_bad(self, accelerator: Any) -> bool:
        """Whether any process saw a non-finite step (a collective and a host sync)."""
        flag = self.bad[:1].clone()
        if accelerator is not None:
            flag = accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    def first_bad(self, accelerator: Any) -> tuple[int, float]:
        """The first non-finite step over processes and its loss (a collective)."""
        mine = torch.stack([torch.where(self.bad[0] > 0, self.bad[1], math.inf), self.bad[2]])
        rows = accelerator.gather(mine.reshape(1, 2)) if accelerator is not None else mine[None]
        step, loss = min(rows.tolist(), key=lambda r: r[0])
        return int(step), loss
