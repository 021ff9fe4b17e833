"""The convergence monitor inside the ``transformers.Trainer``: :class:`ConvergenceMonitorCallback`.

The callback runs a :class:`~hub_cutinit.convergence_monitor.ConvergenceMonitor` on the Trainer's
model: it embeds the probe in ``on_pre_optimizer_step`` (after the backward and the gradient
clipping) and again in ``on_optimizer_step`` (right after ``optimizer.step()``, before the
scheduler), for the step being made, ``state.global_step + 1``. Its newest reading goes into the
next log as ``convergence/angle/<name>`` and ``convergence/norm/<name>`` (so into
``trainer.state.log_history`` and the printed logs), and every reading stays in
:attr:`ConvergenceMonitorCallback.history` with its step and learning rate.

Example:
    >>> import tempfile
    >>> import torch
    >>> from torch import nn
    >>> from transformers import PrinterCallback, Trainer, TrainingArguments
    >>> class Net(nn.Module):  # any model that returns a loss: a PreTrainedModel works the same
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body, self.head = nn.Linear(8, 16), nn.Linear(16, 2)
    ...     def forward(self, x, labels=None):
    ...         logits = self.head(torch.relu(self.body(x)))
    ...         loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
    ...         return {"loss": loss, "logits": logits}
    >>> _ = torch.manual_seed(0)
    >>> xs, ys = torch.randn(64, 8), torch.randint(0, 2, (64,))
    >>> data = [{"x": x, "labels": y} for x, y in zip(xs, ys)]
    >>> args = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=4, logging_steps=2,
    ...                          per_device_train_batch_size=16, report_to=[], use_cpu=True,
    ...                          save_strategy="no", disable_tqdm=True)
    >>> callback = ConvergenceMonitorCallback(probe={"x": xs[:32]})  # every: logging_steps
    >>> trainer = Trainer(model=Net(), args=args, train_dataset=data, callbacks=[callback])
    >>> trainer.remove_callback(PrinterCallback)  # (keeps this example's output quiet)
    >>> _ = trainer.train()
    >>> [record["step"] for record in callback.history]
    [1, 2, 4]
    >>> [sorted(k for k in log if k.startswith("convergence/")) for log in trainer.state.log_history
    ...  if "loss" in log]
    [['convergence/angle/logits', 'convergence/norm/logits'], ['convergence/angle/logits', 'convergence/norm/logits']]

With a reporting integration (``report_to=["wandb"]``, TensorBoard, ...), let it see the readings
by running this callback first: ``callback.attach(trainer)`` instead of ``callbacks=[callback]``
(the Trainer puts ``callbacks=`` after its reporters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hub_cutinit.convergence_monitor import ConvergenceMonitor
from hub_cutinit.monitor import EmbedFn, Probe

__all__ = ["ConvergenceMonitorCallback"]


class ConvergenceMonitorCallback(TrainerCallback):
    """A ``TrainerCallback`` that measures the angle per step and the norm of the embeddings.

    Args:
        probe: a fixed batch of model inputs as the model takes them: a dict of tensors
            (``{"input_ids": ..., "attention_mask": ...}``, ``{"pixel_values": ...}``; the model
            is called as ``model(**probe)``; leave ``labels`` out) or one tensor (``model(probe)``).
            At least 2 rows; moved to the model's device on first use.
        every: measure on step 1 and every ``every``-th optimiser step; ``None`` (default): the
            Trainer's ``logging_steps``, so that each training log carries the reading of its step.
        embed, names, full_precision, seed: as in
            :class:`~hub_cutinit.convergence_monitor.ConvergenceMonitor`; by default the model's
            floating-point outputs of shape ``(N, ...)`` are followed (``logits``,
            ``last_hidden_state`` mean-pooled over tokens, ...), or ``model.embed`` if it has one.
        prefix: the prefix of the logged keys.

    :attr:`monitor` is the underlying :class:`ConvergenceMonitor` (its ``history``,
    ``last_seconds``, ``figure()``). The readings are the Trainer's model's, ``kwargs["model"]``
    (the unwrapped model, as with DDP). A probe forward runs in the model's train/eval mode under a
    fixed RNG seed and restores BatchNorm statistics and the RNG: training is unchanged by it. The
    history is not saved in checkpoints; the logged readings are, in ``log_history``.
    """

    def __init__(
        self,
        probe: Probe,
        every: int | None = None,
        *,
        embed: EmbedFn | None = None,
        names: Sequence[str] | None = None,
        full_precision: bool = True,
        seed: int = 0,
        prefix: str = "convergence/",
    ) -> None:
        self.every = every
        self.prefix = prefix
        self.monitor = ConvergenceMonitor(
            None,
            probe,
            every=every if every is not None else 1,
            embed=embed,
            names=names,
            full_precision=full_precision,
            seed=seed,
        )
        self._logged_step = 0

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every reading: ``{"step", "lr", "angle/<name>", "norm/<name>", ...}``."""
        return self.monitor.history

    def attach(self, trainer: Any) -> ConvergenceMonitorCallback:
        """Put this callback first in ``trainer``'s callbacks (before its reporters); ``self``."""
        callbacks = trainer.callback_handler.callbacks
        callbacks[:] = [cb for cb in callbacks if cb is not self]
        callbacks.insert(0, self)
        return self

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        self.monitor.model = model
        self.monitor.every = self.every if self.every is not None else max(1, state.logging_steps)
        self._logged_step = state.global_step

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is not None:
            self.monitor.model = model
        self.monitor.before_step(state.global_step + 1)

    def on_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        self.monitor.after_step(state.global_step + 1, lr=lr)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the newest reading not logged yet to ``logs`` and to its ``log_history`` entry."""
        reading = self.monitor.last
        if logs is None or reading is None or reading["step"] <= self._logged_step:
            return
        added = {f"{self.prefix}{key}": value for key, value in reading.items() if "/" in key}
        entry = state.log_history[-1] if state.log_history else None
        if entry is not None and _is_entry_of(entry, logs, state.global_step):
            entry.update(added)
        logs.update(added)
        self._logged_step = reading["step"]


def _is_entry_of(entry: dict[str, Any], logs: dict[str, Any], step: int) -> bool:
    """Whether ``entry`` is the ``{**logs, "step": step}`` the Trainer appended for ``logs``."""
    return entry.get("step") == step and all(
        key in logs and logs[key] is value for key, value in entry.items() if key != "step"
    )
