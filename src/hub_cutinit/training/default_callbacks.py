"""The Trainer's built-in callbacks: what a run does besides stepping the optimiser.

Each owns one job and its state (saved in checkpoints through ``state_dict``):

- :class:`NonFiniteGuard`: zero a step's update on the device when its loss or a gradient is
  NaN/inf (no host sync; the step's statistics read then stops the run).
- :class:`ConvergenceMonitorCallback`: the angle-per-step monitor of PAPER §9 on a fixed probe,
  on logged steps, at most ``--monitor-budget`` of the training time.
- :class:`EvaluationCallback`: the kNN baselines at step 0 and the kNN cadence (``--eval-every``,
  ``--eval-every-epochs`` or automatic: about 10 % of the wall time).
- :class:`CheckpointCallback`: the checkpoint cadence (steps, minutes, or epoch ends).
- :class:`ProgressCallback`: the progress bar.
- :class:`TrackerCallback`: Accelerate's trackers (``--log-with``).
- :class:`HubPushCallback`: the push to the Hub after the final save.
- :class:`~hub_cutinit.training.preemption.PreemptionCallback`: on SIGTERM / SIGUSR1, a
  checkpoint at the next logged step on every process, then exit code 75.

:func:`default_callbacks` builds them from a config; ``train(cfg, callbacks=[...])`` adds yours.

Example:
    >>> from hub_cutinit.training import TrainConfig
    >>> [c.name for c in default_callbacks(TrainConfig(method="simclr"))][:3]
    ['NonFiniteGuard', 'PreemptionCallback', 'ConvergenceMonitorCallback']
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from hub_cutinit.convergence_monitor import ConvergenceMonitor
from hub_cutinit.training.callbacks import TrainerCallback, TrainerControl
from hub_cutinit.training.preemption import PreemptionCallback

__all__ = [
    "EVAL_SHARE",
    "PROBE_SIZE",
    "CheckpointCallback",
    "ConvergenceMonitorCallback",
    "EvaluationCallback",
    "HubPushCallback",
    "NonFiniteGuard",
    "ProgressCallback",
    "TrackerCallback",
    "default_callbacks",
]

#: Images in the fixed probe batch of the convergence monitor.
PROBE_SIZE = 64
#: The automatic ``--eval-every-epochs`` keeps evaluation under about this share of the time.
EVAL_SHARE = 0.1


class NonFiniteGuard(TrainerCallback):
    """A NaN or infinite loss or gradient never reaches the weights.

    On each optimiser step (after DDP's all-reduce) one fused, read-only pass
    (``torch.nn.utils.get_total_norm``) checks every gradient. When the step's flag is set,
    the gradients are zeroed before the optimiser step. On CUDA that is done on the device,
    without a host sync (a masked fill of every gradient); on CPU, where reading a value costs
    no sync, the flag is read and the gradients are zeroed only when it is set (the masked fill
    would cost ~4 % of a CPU step). The Trainer reads the flag with the step statistics on
    logged steps and stops the run naming the step (and before any checkpoint, evaluation or
    the final save). Under fp16 the grad scaler checks and skips such steps itself.
    """

    order = 0

    def __init__(self, device_side: bool | None = None) -> None:
        #: None: on the device (no host read) on CUDA, a plain read on CPU
        self.device_side = device_side
        self._params: tuple[Any, list[torch.Tensor]] | None = None  # (model, its parameters)

    def _parameters(self, model: torch.nn.Module) -> list[torch.Tensor]:
        """The model's parameters, listed once per model (walking the modules every step
        costs ~0.7 ms on a resnet18)."""
        if self._params is None or self._params[0] is not model:
            self._params = (model, list(model.parameters()))
        return self._params[1]

    def on_pre_optimizer_step(
        self, trainer: Any, state: Any, control: TrainerControl, *, flag: torch.Tensor
    ) -> None:
        if trainer.accelerator.scaler is not None:
            return  # fp16: the grad scaler checks (and skips) the step itself
        grads = [p.grad for p in self._parameters(trainer.model) if p.grad is not None]
        if not grads:
            return
        total = torch.nn.utils.get_total_norm(grads, foreach=True)
        flag.add_((~torch.isfinite(total)).float()).clamp_(max=1.0)
        device_side = self.device_side
        if device_side is None:
            device_side = flag.device.type != "cpu"
        if not device_side:
            if flag.item() > 0:  # no device to wait for: a plain read
                for grad in grads:
                    grad.zero_()
            return
        bad = flag.reshape(()).bool()
        for grad in grads:
            grad.masked_fill_(bad, 0.0)


class ConvergenceMonitorCallback(TrainerCallback):
    """The angle each probe embedding turns per optimiser step, next to its norm and the lr.

    Built on :class:`hub_cutinit.convergence_monitor.ConvergenceMonitor` (the same object a
    plain PyTorch loop or the HF Trainer uses). The probe is this process's first
    :data:`PROBE_SIZE` training images. It reads on step 1 and then on the first logged step
    at which its cumulative cost, the next reading included, stays within ``budget`` of the
    cumulative training time: a running budget, so the early readings are paid for by the
    steps that follow them instead of being repeated while the cost is still unknown. The
    costs and the step times are averaged over processes in the step statistics read, so every
    process schedules the same steps. Time spent in evaluation and checkpoints is not counted
    as training time.

    Example:
        >>> monitor = ConvergenceMonitorCallback(budget=0.01)
        >>> monitor.schedule(step=10, spent=0.5, cost=0.5, elapsed=5.0, step_seconds=0.5)
        200
    """

    order = 10

    def __init__(self, budget: float = 0.01) -> None:
        self.budget = budget
        self.next_step = 0  # the first logged step that may read (step 1 always reads)
        self.spent = 0.0  # monitor seconds so far (averaged over processes)
        self.elapsed = 0.0  # training seconds so far, monitor included
        self.last_cost = 0.0  # seconds of the newest reading
        self.monitor: ConvergenceMonitor | None = None
        self._window_started = time.perf_counter()
        self._window_steps = 0

    def schedule(
        self, *, step: int, spent: float, cost: float, elapsed: float, step_seconds: float
    ) -> int:
        """The first step after ``step`` at which ``spent + cost <= budget * elapsed`` holds,
        with ``step_seconds`` of training per step from here on."""
        if self.budget >= 1 or cost <= 0:
            return step + 1
        missing = (spent + cost) / self.budget - elapsed  # training seconds still to come
        return step + max(1, math.ceil(missing / max(step_seconds, 1e-9)))

    def _due(self, trainer: Any, step: int) -> bool:
        return step == 1 or (trainer.logged(step) and step >= self.next_step)

    def on_train_begin(self, trainer: Any, state: Any, control: TrainerControl) -> None:
        self._restart_clock()

    def _restart_clock(self) -> None:
        self._window_started = time.perf_counter()

    def on_pre_optimizer_step(
        self, trainer: Any, state: Any, control: TrainerControl, *, flag: torch.Tensor
    ) -> None:
        if self.monitor is None:
            probe = trainer.views[0][:PROBE_SIZE].clone()
            self.monitor = ConvergenceMonitor(trainer.raw_model, probe, every=1)
        if self._due(trainer, state.step + 1):
            self.monitor.before_step(state.step + 1)

    def on_step_end(
        self, trainer: Any, state: Any, control: TrainerControl, *, logged: bool
    ) -> None:
        self._window_steps += 1
        if self.monitor is None or not logged:
            return
        reading = None
        if self._due(trainer, state.step):
            reading = self.monitor.after_step(state.step)
        if reading:  # averaged over processes in the step statistics read
            trainer.log_values({f"convergence/{k}": v for k, v in reading.items()})
        cost = self.monitor.last_seconds if reading else 0.0
        window = time.perf_counter() - self._window_started
        trainer.log_values(
            {
                "_monitor_seconds": cost,
                "_window_seconds": window,
                "_window_steps": self._window_steps,
            }
        )

    def on_log(
        self, trainer: Any, state: Any, control: TrainerControl, *, logs: dict[str, float]
    ) -> None:
        """Record the reading; schedule the next one from the costs averaged over processes
        (identical on every process)."""
        angles = {k.removeprefix("convergence/"): v for k, v in logs.items() if "convergence/" in k}
        if angles:
            state.convergence.append(
                {"step": state.step, "epoch": state.epoch, "lr": logs["lr"], **angles}
            )
        window, steps = logs.get("_window_seconds", 0.0), logs.get("_window_steps", 0.0)
        if steps > 0:
            cost = logs.get("_monitor_seconds", 0.0)
            self.spent += cost
            self.elapsed += window
            self.last_cost = cost or self.last_cost
            self.next_step = self.schedule(
                step=state.step,
                spent=self.spent,
                cost=self.last_cost,
                elapsed=self.elapsed,
                step_seconds=max(window - cost, 0.0) / steps,
            )
        self._restart_clock()
        self._window_steps = 0

    def on_evaluate(
        self, trainer: Any, state: Any, control: TrainerControl, *, metrics: dict[str, Any]
    ) -> None:
        self._restart_clock()  # evaluation is not training time

    def on_save(
        self, trainer: Any, state: Any, control: TrainerControl, *, checkpoint: Any
    ) -> None:
        self._restart_clock()  # nor is writing a checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {
            "next_step": self.next_step,
            "spent": self.spent,
            "elapsed": self.elapsed,
            "last_cost": self.last_cost,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_step = int(state.get("next_step", 0))
        self.spent = float(state.get("spent", 0.0))
        self.elapsed = float(state.get("elapsed", 0.0))
        self.last_cost = float(state.get("last_cost", 0.0))


class EvaluationCallback(TrainerCallback):
    """The kNN baselines at step 0 and when the kNN monitor runs.

    ``--eval-every N``: every N steps. Else at epoch ends: every ``--eval-every-epochs`` epochs,
    or automatically every ``period`` epochs, with ``period`` chosen after each evaluation so
    that evaluation takes at most :data:`EVAL_SHARE` of the training time (the slowest
    process's choice, so all agree). The period is saved in checkpoints: a resumed run keeps
    evaluating on the steps an uninterrupted one would.
    """

    order = 20

    def __init__(self) -> None:
        self.period = 1
        self.last_epoch = 0

    def on_train_begin(self, trainer: Any, state: Any, control: TrainerControl) -> None:
        trainer.run_baselines()

    def on_step_end(
        self, trainer: Any, state: Any, control: TrainerControl, *, logged: bool
    ) -> None:
        every = trainer.cfg.eval_every
        if every and state.step % every == 0:
            control.should_evaluate = True

    def on_epoch_end(self, trainer: Any, state: Any, control: TrainerControl) -> None:
        if not trainer.cfg.eval_every and self.due_at_epoch(trainer.cfg, state.epoch):
            control.should_evaluate = True

    def due_at_epoch(self, cfg: Any, epoch: int) -> bool:
        """Whether the kNN monitor runs at the end of ``epoch`` (with ``--eval-every 0``)."""
        every = cfg.eval_every_epochs
        if every is None:  # automatic
            return epoch - self.last_epoch >= self.period
        return bool(every) and epoch % every == 0

    def on_evaluate(
        self, trainer: Any, state: Any, control: TrainerControl, *, metrics: dict[str, Any]
    ) -> None:
        self.last_epoch = state.epoch
        if trainer.cfg.eval_every_epochs is None and state.epoch:
            period = automatic_period(metrics["seconds"], state.train_seconds / state.epoch)
            self.period = int(trainer.agree_max(period))

    def state_dict(self) -> dict[str, Any]:
        return {"period": self.period, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.period, self.last_epoch = int(state["period"]), int(state["last_epoch"])


def automatic_period(eval_seconds: float, epoch_seconds: float) -> int:
    """Epochs between evaluations so that one (``eval_seconds``) is at most
    :data:`EVAL_SHARE` of the training time.

    Example:
        >>> automatic_period(2.0, 5.0)  # 2 / (4 × 5) = 10 %
        4
    """
    if epoch_seconds <= 0:
        return 1
    return max(1, math.ceil(eval_seconds / (EVAL_SHARE * epoch_seconds)))


class CheckpointCallback(TrainerCallback):
    """When to checkpoint: every ``--checkpoint-every`` steps, every ``--checkpoint-minutes``
    (the clock is read on logged steps and agreed on by all processes), else at epoch ends.
    The last step is always saved by the Trainer."""

    order = 30

    def __init__(self) -> None:
        self._clock = time.perf_counter()

    def on_step_end(
        self, trainer: Any, state: Any, control: TrainerControl, *, logged: bool
    ) -> None:
        rec = trainer.record
        if rec.checkpoint_every and state.step % rec.checkpoint_every == 0:
            control.should_save = True
        if logged and rec.checkpoint_minutes:
            due = time.perf_counter() - self._clock >= 60 * rec.checkpoint_minutes
            trainer.log_values({"_checkpoint_due": float(due)})

    def on_log(
        self, trainer: Any, state: Any, control: TrainerControl, *, logs: dict[str, float]
    ) -> None:
        if logs.get("_checkpoint_due", 0.0) > 0:  # due on some process: the same everywhere
            control.should_save = True

    def on_epoch_end(self, trainer: Any, state: Any, control: TrainerControl) -> None:
        rec = trainer.record
        if not (rec.checkpoint_every or rec.checkpoint_minutes):
            control.should_save = True

    def on_save(
        self, trainer: Any, state: Any, control: TrainerControl, *, checkpoint: Any
    ) -> None:
        self._clock = time.perf_counter()


class ProgressCallback(TrainerCallback):
    """The progress bar (main process only): loss, images/s, mean norms, angles per step."""

    order = 90

    def __init__(self) -> None:
        self.bar: Any = None

    def on_train_begin(self, trainer: Any, state: Any, control: TrainerControl) -> None:
        self.bar = tqdm(
            total=trainer.record.total_steps,
            initial=state.step,
            disable=not trainer.accelerator.is_local_main_process,
            desc=f"{trainer.cfg.method} c={trainer.record.c:g}",
        )

    def on_step_end(
        self, trainer: Any, state: Any, control: TrainerControl, *, logged: bool
    ) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_log(
        self, trainer: Any, state: Any, control: TrainerControl, *, logs: dict[str, float]
    ) -> None:
        if self.bar is None:
            return
        postfix = {"loss": f"{logs['loss']:.4f}", "img_s": f"{logs['images_per_s']:.0f}"}
        norms = {k.removeprefix("norm/"): v for k, v in logs.items() if k.startswith("norm/")}
        postfix.update({f"|{k[:4]}|": f"{v:.3g}" for k, v in norms.items()})
        angles = {k.split("/")[-1][:4]: v for k, v in logs.items() if "/angle/" in k}
        postfix.update({f"∠{k}": f"{v:.2g}" for k, v in angles.items()})
        self.bar.set_postfix(postfix)

    def on_train_end(
        self, trainer: Any, state: Any, control: TrainerControl, *, summary: dict[str, Any]
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar (also after an error: no stale bar at exit)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TrackerCallback(TrainerCallback):
    """Accelerate's trackers (``--log-with``): the step logs and the kNN accuracy."""

    order = 95

    def on_log(
        self, trainer: Any, state: Any, control: TrainerControl, *, logs: dict[str, float]
    ) -> None:
        public = {k: v for k, v in logs.items() if not k.startswith("_")}
        trainer.accelerator.log(public, step=state.step)

    def on_evaluate(
        self, trainer: Any, state: Any, control: TrainerControl, *, metrics: dict[str, Any]
    ) -> None:
        trainer.accelerator.log({"knn_accuracy": metrics["knn_accuracy"]}, step=state.step)


class HubPushCallback(TrainerCallback):
    """Push the saved model to ``--push-to-hub`` (main process, after the last barrier)."""

    order = 99

    def on_train_end(
        self, trainer: Any, state: Any, control: TrainerControl, *, summary: dict[str, Any]
    ) -> None:
        cfg = trainer.cfg
        if trainer.accelerator.is_main_process and cfg.push_to_hub:
            from hub_cutinit.hub import push_to_hub

            push_to_hub(cfg.output_dir, cfg.push_to_hub, private=cfg.hub_private)


def default_callbacks(cfg: Any) -> list[TrainerCallback]:
    """The built-in callbacks a run with ``cfg`` uses, in order."""
    callbacks: list[TrainerCallback] = [NonFiniteGuard(), PreemptionCallback()]
    if cfg.convergence_monitor:
        callbacks.append(ConvergenceMonitorCallback(budget=cfg.monitor_budget))
    callbacks += [
        EvaluationCallback(),
        CheckpointCallback(),
        ProgressCallback(),
        TrackerCallback(),
        HubPushCallback(),
    ]
    return callbacks
