"""Callbacks: add behaviour to the Trainer without subclassing it, as in the HF Trainer.

A :class:`TrainerCallback` implements any of the hooks below; each receives the trainer (its
``cfg``, ``record``, ``model``, ``raw_model``, ``optimizer``, ``accelerator``), the
:class:`~hub_cutinit.training.state.TrainerState` and the :class:`TrainerControl`, and may set
``control.should_stop`` / ``should_save`` / ``should_evaluate``: the loop acts on them right
after the hook (save, evaluate, then stop at the step boundary). A callback with state gives
``state_dict()`` / ``load_state_dict()``: the checkpoint keeps it in ``TrainerState.callbacks``.

Hooks, in the order a step calls them:

- ``on_train_begin``: after set-up and resume, before the baselines and the first step.
- ``on_pre_optimizer_step``: gradients are ready (after DDP's all-reduce), the weights not yet
  changed (``flag``: a device tensor a guard may set to 1 for a bad step; no host sync).
- ``on_step_end``: after each optimiser step (``logged``: this step read the statistics).
- ``on_log``: on logged steps, with the step's statistics (one host read shared by all).
- ``on_evaluate``: after each kNN evaluation, with its metrics.
- ``on_save``: after each checkpoint, with its folder.
- ``on_epoch_end``: after a pass over the data.
- ``on_train_end``: after the final save, with the run summary.

Example (stop when the projection norm passes a threshold; 15 lines)::

    from hub_cutinit.training import TrainConfig, TrainerCallback, train

    class StopAtNorm(TrainerCallback):
        def __init__(self, limit: float):
            self.limit = limit

        def on_log(self, trainer, state, control, logs):
            if logs["norm/projection"] > self.limit:
                print(f"step {state.step}: ‖z‖ = {logs['norm/projection']:.2f}, stopping")
                control.should_save = True
                control.should_stop = True

    train(TrainConfig(method="simclr", max_steps=50, output_dir="out/stop"),
          callbacks=[StopAtNorm(limit=5.0)])
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["CallbackHandler", "TrainerCallback", "TrainerControl", "import_callback"]


@dataclass
class TrainerControl:
    """What the callbacks ask the loop to do next; reset once the loop has done it."""

    should_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False


class TrainerCallback:
    """Base class of the Trainer's callbacks: every hook does nothing.

    ``name`` keys the callback's saved state (default: the class name); ``order`` sorts the
    callbacks (lower first; user callbacks default to 50, after the built-in ones that fill
    the logs).

    Example:
        >>> class CountLogs(TrainerCallback):
        ...     def __init__(self):
        ...         self.count = 0
        ...     def on_log(self, trainer, state, control, logs):
        ...         self.count += 1
        ...     def state_dict(self):
        ...         return {"count": self.count}
        ...     def load_state_dict(self, state):
        ...         self.count = state["count"]
        >>> handler = CallbackHandler([CountLogs()])
        >>> _ = handler.call("on_log", None, None, logs={})
        >>> handler.state_dict()
        {'CountLogs': {'count': 1}}
    """

    order: int = 50

    @property
    def name(self) -> str:
        """The key of this callback's state in checkpoints."""
        return type(self).__name__

    def on_train_begin(self, trainer: Any, state: Any, control: TrainerControl) -> None:
        """After set-up and resume, before the first step."""

    def on_pre_optimizer_step(
        self, trainer: Any, state: Any, control: TrainerControl, *, flag: Any
    ) -> None:
        """Gradients ready, weights unchanged (no host sync here: keep it on the device)."""

    def on_step_end(
        self, trainer: Any, state: Any, control: TrainerControl, *, logged: bool
    ) -> None:
        """After each optimiser step; ``logged``: the statistics were read on this step."""

    def on_log(
        self, trainer: Any, state: Any, control: TrainerControl, *, logs: dict[str, float]
    ) -> None:
        """On logged steps: loss, lr, images/s, mean norms, and what other callbacks added."""

    def on_evaluate(
        self, trainer: Any, state: Any, control: TrainerControl, *, metrics: dict[str, Any]
    ) -> None:
        """After a kNN evaluation."""

    def on_save(
        self, trainer: Any, state: Any, control: TrainerControl, *, checkpoint: Any
    ) -> None:
        """After a checkpoint was written."""

    def on_epoch_end(self, trainer: Any, state: Any, control: TrainerControl) -> None:
        """After a pass over the data."""

    def on_train_end(
        self, trainer: Any, state: Any, control: TrainerControl, *, summary: dict[str, Any]
    ) -> None:
        """After the final save (and push)."""

    def state_dict(self) -> dict[str, Any] | None:
        """State to keep in checkpoints (``None``: nothing)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class CallbackHandler:
    """Calls the callbacks' hooks in ``order`` and collects their state.

    Example:
        >>> handler = CallbackHandler([])
        >>> handler.call("on_epoch_end", None, None).should_stop
        False
    """

    def __init__(self, callbacks: Iterable[TrainerCallback]) -> None:
        self.callbacks: list[TrainerCallback] = []
        self.control = TrainerControl()
        for callback in callbacks:
            self.add(callback)

    def add(self, callback: TrainerCallback) -> None:
        """Add a callback (an instance, or a class to instantiate)."""
        if isinstance(callback, type):
            callback = callback()
        if not isinstance(callback, TrainerCallback):
            raise TypeError(
                f"callbacks must be TrainerCallback instances, got {type(callback).__name__}: "
                "subclass hub_cutinit.training.TrainerCallback and override its hooks."
            )
        names = {c.name for c in self.callbacks}
        if callback.name in names:
            raise ValueError(
                f"Two callbacks are named {callback.name!r}; give one a distinct `name` property "
                "(their checkpoint state is kept by name)."
            )
        self.callbacks.append(callback)
        self.callbacks.sort(key=lambda c: c.order)

    def remove(self, kind: type) -> list[TrainerCallback]:
        """Remove (and return) the callbacks of type ``kind``, e.g. a built-in one."""
        removed = [c for c in self.callbacks if isinstance(c, kind)]
        self.callbacks = [c for c in self.callbacks if not isinstance(c, kind)]
        return removed

    def get(self, kind: type) -> Any:
        """The first callback of type ``kind`` (``None`` when there is none)."""
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    def call(self, hook: str, trainer: Any, state: Any, **kwargs: Any) -> TrainerControl:
        """Call ``hook`` on every callback, in order; return the shared control."""
        for callback in self.callbacks:
            getattr(callback, hook)(trainer, state, self.control, **kwargs)
        return self.control

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Every callback's state, by name (callbacks without state are left out)."""
        states = {c.name: c.state_dict() for c in self.callbacks}
        return {name: state for name, state in states.items() if state is not None}

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> None:
        """Give each callback its saved state (a callback new to this run keeps its own)."""
        for callback in self.callbacks:
            if callback.name in states:
                callback.load_state_dict(states[callback.name])


def import_callback(spec: str) -> TrainerCallback:
    """Build the callback ``"package.module:ClassName"`` names (``--callback``), without arguments.

    Example:
        >>> type(import_callback("hub_cutinit.training.default_callbacks:CheckpointCallback"))
        <class 'hub_cutinit.training.default_callbacks.CheckpointCallback'>
    """
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(
            f"--callback expects MODULE:CLASS (e.g. my_project.cbs:StopAtNorm), got {spec!r}."
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"--callback {spec}: cannot import {class_name} from {module_name} ({err}); the "
            "module must be importable from this process (installed, or on PYTHONPATH)."
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, TrainerCallback)) or cls is TrainerCallback:
        raise ValueError(f"--callback {spec} is not a TrainerCallback subclass.")
    return cls()
