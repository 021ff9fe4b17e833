"""Preemption: on SIGTERM or SIGUSR1, checkpoint at an agreed step boundary and exit 75.

Schedulers stop jobs with a signal before they kill them: SLURM sends SIGTERM (or, with
``#SBATCH --signal=USR1@120``, SIGUSR1 two minutes ahead); ``torchrun`` / ``accelerate launch``
forward a SIGTERM they receive to every worker and SIGKILL them 30 s later. The
:class:`PreemptionCallback` (a default callback) turns the first such signal into a clean stop:

1. the handler only records the signal (nothing else is safe inside a handler);
2. the flag travels in the next logged step's one statistics read (``--log-every``; no extra
   host sync), so every process learns on the same step that *some* process was signalled;
3. that step is checkpointed (atomically, as always) and every process returns; the recipes
   exit with :data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``: "try again").

A requeued job runs the *same* command: ``--resume auto`` continues from the newest complete
checkpoint when there is one and starts fresh otherwise, so the requeued run ends with the
weights an uninterrupted run would have. A second signal while the first is being handled gets
the signal's default action (the process ends at once).

Example:
    >>> import signal
    >>> callback = PreemptionCallback()
    >>> callback.install()
    >>> signal.raise_signal(signal.SIGUSR1)  # what `scancel --signal=USR1 JOB` does
    >>> callback.signalled
    'SIGUSR1'
    >>> callback.uninstall()
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from hub_cutinit.training.callbacks import TrainerCallback, TrainerControl

__all__ = ["EXIT_PREEMPTED", "PREEMPTION_SIGNALS", "PreemptionCallback"]

#: The exit code of a run stopped by a scheduler's signal after its checkpoint (``EX_TEMPFAIL``).
EXIT_PREEMPTED = 75
#: The signals that ask for a checkpoint and a clean stop.
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCallback(TrainerCallback):
    """Checkpoint and stop at the first logged step after SIGTERM or SIGUSR1 (any process)."""

    order = 5

    def __init__(self) -> None:
        self.signalled: str | None = None  # the name of the first signal received
        self.signalled_at: float | None = None  # time.monotonic() of it
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signalled is not None:  # a second signal: its default action, now
            self.uninstall()
            signal.raise_signal(signum)
            return
        self.signalled = signal.Signals(signum).name
        self.signalled_at = time.monotonic()

    def install(self) -> None:
        """Catch the preemption signals (main thread only; elsewhere this does nothing)."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Give the signals back to their previous handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_begin(self, trainer: Any, state: Any, control: TrainerControl) -> None:
        self.install()

    def on_step_end(
        self, trainer: Any, state: Any, control: TrainerControl, *, logged: bool
    ) -> None:
        if logged:  # agreed in the statistics read: > 0 when any process was signalled
            trainer.log_values({"_preempt": 1.0 if self.signalled else 0.0})

    def on_log(
        self, trainer: Any, state: Any, control: TrainerControl, *, logs: dict[str, float]
    ) -> None:
        if logs.get("_preempt", 0.0) > 0:
            control.should_save = control.should_stop = True
            trainer.preempted = True
            where = f"received {self.signalled}" if self.signalled else "another process was"
            trainer.accelerator.print(
                f"Preempted ({where} signalled): checkpointing step {state.step} and stopping "
                f"(exit code {EXIT_PREEMPTED}); rerun the same command with --resume auto."
            )

    def on_train_end(
        self, trainer: Any, state: Any, control: TrainerControl, *, summary: dict[str, Any]
    ) -> None:
        self.uninstall()
