"""The norm and angle monitor for any training loop: :class:`ConvergenceMonitor`.

One object watches a model in your own loop: every ``every`` steps it embeds a fixed probe batch
just before ``optimizer.step()`` and again just after, and records how far each embedding turned
(``angle/<name>``, radians, mean over the probe) next to its mean norm before the step
(``norm/<name>``) and the learning rate. Where the angle follows ``lr / ‖z‖²`` training is
norm-limited (PAPER §1-§2, §9; :mod:`hub_cutinit.monitor` explains the measurement and why it
changes nothing the training sees: weights, running statistics and RNG state are left exactly as
they were, so a run is bit-identical with and without the monitor).

The same object drives :class:`hub_cutinit.integrations.transformers.ConvergenceMonitorCallback`
(the ``transformers.Trainer``) and the project's own trainer.

Example (a plain PyTorch loop):
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> data = torch.utils.data.TensorDataset(torch.randn(320, 8), torch.randint(0, 3, (320,)))
    >>> loader = torch.utils.data.DataLoader(data, batch_size=32)
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> monitor = ConvergenceMonitor(model, probe=next(iter(loader))[0][:64], every=5)
    >>> for step, (x, y) in enumerate(loader, 1):
    ...     loss = nn.functional.cross_entropy(model(x), y); loss.backward()
    ...     monitor.before_step(step); opt.step(); opt.zero_grad()
    ...     reading = monitor.after_step(step, lr=opt.param_groups[0]["lr"])
    >>> [record["step"] for record in monitor.history]
    [1, 5, 10]
    >>> sorted(monitor.history[-1])
    ['angle/output', 'lr', 'norm/output', 'step']
    >>> 0 < monitor.history[-1]["angle/output"] < 0.5 and monitor.last_seconds > 0
    True
    >>> fig = monitor.figure()  # angle (with k·lr/‖z‖²), norm and lr against step
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hub_cutinit.monitor import EmbedFn, Probe, StepAngleMonitor, angle_norm_figure

__all__ = ["ConvergenceMonitor", "default_embed", "output_embeddings"]


def default_embed(model: nn.Module, inputs: Probe) -> dict[str, torch.Tensor]:
    """The embeddings :class:`ConvergenceMonitor` follows when given no ``embed``.

    ``model.embed(inputs)`` when the model (or the ``model.module`` a DDP-style wrapper holds)
    has an ``embed`` method (the SSL models: ``{"backbone", "projection", ...}``, returned as
    they are); otherwise the forward ``model(inputs)``, or ``model(**inputs)`` for a dict of
    inputs (``transformers`` models), turned into named 2-D embeddings by
    :func:`output_embeddings`.

    Example:
        >>> default_embed(nn.Linear(4, 2), torch.ones(3, 5, 4))["output"].shape  # 3-D: pooled
        torch.Size([3, 2])
    """
    embed = getattr(model, "embed", None)
    if not callable(embed):
        embed = getattr(getattr(model, "module", None), "embed", None)
    if callable(embed):
        return embed(**inputs) if isinstance(inputs, Mapping) else embed(inputs)
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return output_embeddings(out)


def output_embeddings(out: Any) -> dict[str, torch.Tensor]:
    """Named ``(N, D)`` embeddings from a forward's output.

    A tensor is ``{"output": tensor}``; a dict or a ``transformers`` ``ModelOutput`` keeps its
    floating-point tensor fields of at least 2 dimensions (``logits``, ``last_hidden_state``,
    ``pooler_output``, ...; a scalar ``loss`` and tuples such as ``hidden_states`` are dropped);
    a tuple gives ``output_0``, ``output_1``, .... A 3-D ``(N, tokens, D)`` tensor is pooled to
    ``(N, D)`` by its plain mean over tokens (padding included: pass ``embed=`` for a masked
    pooling); 4-D and larger tensors stay as they are (each row is flattened when measured).

    Example:
        >>> out = {"loss": torch.tensor(0.5), "logits": torch.ones(2, 3),
        ...        "last_hidden_state": torch.ones(2, 7, 5), "hidden_states": (torch.ones(2, 7, 5),)}
        >>> {name: tuple(z.shape) for name, z in output_embeddings(out).items()}
        {'logits': (2, 3), 'last_hidden_state': (2, 5)}
    """
    if isinstance(out, torch.Tensor):
        fields: dict[str, Any] = {"output": out}
    elif isinstance(out, Mapping):
        fields = dict(out)
    elif isinstance(out, (tuple, list)):
        fields = {f"output_{i}": value for i, value in enumerate(out)}
    else:
        raise TypeError(f"Cannot read embeddings from a {type(out).__name__}; pass embed=.")
    picked = {
        name: value.mean(dim=1) if value.ndim == 3 else value
        for name, value in fields.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim >= 2
    }
    if not picked:
        raise TypeError(
            f"The model's output ({sorted(fields)}) has no floating-point tensor of shape "
            "(N, ...); pass embed=lambda model, inputs: {'name': tensor}."
        )
    return picked


def _synchronize(model: nn.Module | None) -> None:
    """Wait for the model's accelerator (no-op on CPU), so wall times include the queued work."""
    param = next(model.parameters(), None) if model is not None else None
    if param is None or param.device.type in ("cpu", "meta"):
        return
    sync = getattr(getattr(torch, param.device.type, None), "synchronize", None)
    if callable(sync):
        sync()


class ConvergenceMonitor:
    """Watch the angle each embedding turns per optimiser step, and its norm, every few steps.

    Args:
        model: the model to watch (unwrapped: ``accelerator.unwrap_model(model)``); settable,
            and may be ``None`` until the first measured step.
        probe: a fixed batch of model inputs, kept for the whole run: an image tensor
            ``(N, ...)`` (e.g. the first 64 images of a batch) or a dict of inputs
            (``{"input_ids": ..., "attention_mask": ...}``), at least 2 rows.
        every: measure on step 1 and every ``every``-th step (settable at run time, >= 1).
        embed: ``embed(model, probe) -> dict[str, Tensor] | Tensor``; default
            :func:`default_embed` (``model.embed``, else the forward's tensor fields).
        names: follow only these embeddings; ``None``: all that ``embed`` returns.
        full_precision, seed: as in :class:`~hub_cutinit.monitor.StepAngleMonitor`.

    Per step: call :meth:`before_step` after the backward, right before ``optimizer.step()``,
    and :meth:`after_step` right after it, with the same ``step`` (1-based). Both do nothing
    on steps that are not :meth:`due`. Readings go to :attr:`history` as
    ``{"step", "lr", "angle/<name>", "norm/<name>", ...}``; :attr:`last_seconds` is the wall time
    of the last measurement (both halves, device synchronised), :attr:`total_seconds` their sum.
    """

    def __init__(
        self,
        model: nn.Module | None,
        probe: Probe,
        *,
        every: int = 10,
        embed: EmbedFn | None = None,
        names: Sequence[str] | None = None,
        full_precision: bool = True,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.angles = StepAngleMonitor(
            probe,
            names,
            full_precision=full_precision,
            seed=seed,
            embed=embed if embed is not None else default_embed,
        )
        self.every = every
        self.history: list[dict[str, Any]] = []
        self.last_seconds: float | None = None
        self.total_seconds = 0.0
        self._pending: tuple[int, dict[str, torch.Tensor], float] | None = None

    @property
    def every(self) -> int:
        """Measure on step 1 and on every multiple of this (>= 1)."""
        return self._every

    @every.setter
    def every(self, value: int) -> None:
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"every must be a whole number >= 1, got {value!r}.")
        self._every = int(value)

    @property
    def last(self) -> dict[str, Any] | None:
        """The newest reading in :attr:`history`, or ``None``."""
        return self.history[-1] if self.history else None

    def _watched(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("ConvergenceMonitor.model is None: set it before the first step.")
        return self.model

    def due(self, step: int) -> bool:
        """Whether ``step`` (1-based) is measured: step 1 and every multiple of :attr:`every`.

        Example:
            >>> monitor = ConvergenceMonitor(nn.Linear(2, 2), torch.zeros(2, 2), every=4)
            >>> [s for s in range(1, 10) if monitor.due(s)]
            [1, 4, 8]
        """
        return step == 1 or step % self.every == 0

    def before_step(self, step: int) -> None:
        """Embed the probe before ``optimizer.step()`` if ``step`` is due.

        A snapshot left by a ``before_step`` without its ``after_step`` is replaced.
        """
        self._pending = None
        if not self.due(step):
            return
        model = self._watched()
        _synchronize(model)
        start = time.perf_counter()
        snapshot = self.angles.before_step(model)
        _synchronize(model)
        self._pending = (step, snapshot, time.perf_counter() - start)

    def after_step(self, step: int, lr: float | None = None) -> dict[str, float] | None:
        """Measure the step if :meth:`before_step` took a snapshot for it; else ``None``.

        Returns ``{"angle/<name>": radians, "norm/<name>": ‖z‖ before the step}`` and appends
        ``{"step": step, "lr": lr, **reading}`` to :attr:`history`. Raises ``ValueError`` when
        the snapshot was taken for another step.
        """
        if self._pending is None:
            return None
        taken, snapshot, seconds = self._pending
        self._pending = None
        if taken != step:
            raise ValueError(
                f"before_step({taken}) was followed by after_step({step}); pass the same step."
            )
        model = self._watched()
        _synchronize(model)
        start = time.perf_counter()
        reading = self.angles.after_step(model, snapshot)
        self.last_seconds = seconds + time.perf_counter() - start
        self.total_seconds += self.last_seconds
        self.history.append({"step": step, "lr": _as_float(lr), **reading})
        return reading

    def state_dict(self) -> dict[str, Any]:
        """``{"every", "history", "total_seconds"}`` (a copy; the probe is not included)."""
        return {
            "every": self.every,
            "history": copy.deepcopy(self.history),
            "total_seconds": self.total_seconds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s ``every`` and ``history`` (to resume a run)."""
        missing = {"every", "history"} - set(state)
        if missing:
            raise KeyError(f"Not a ConvergenceMonitor state: {sorted(missing)} missing.")
        self.every = state["every"]
        self.history = copy.deepcopy(list(state["history"]))
        self.total_seconds = float(state.get("total_seconds", 0.0))
        self._pending = None

    def figure(self) -> Any:
        """:func:`~hub_cutinit.monitor.angle_norm_figure` of :attr:`history` (a Figure)."""
        return angle_norm_figure(self.history)


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)
