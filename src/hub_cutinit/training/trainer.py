"""The Trainer: one SSL run under Accelerate: set-up, the epoch loop, one training step.

Everything else a run does is a callback (:mod:`hub_cutinit.training.default_callbacks`): the
non-finite guard, the convergence monitor, the kNN cadence, the checkpoint cadence, the
progress bar, the trackers and the Hub push. ``Trainer(cfg, callbacks=[...]).train()`` adds
yours (:class:`~hub_cutinit.training.callbacks.TrainerCallback`).

Every process reads its own shard of the stream (``split_dataset_by_node`` in
:mod:`hub_cutinit.data`); the data loader is therefore *not* passed to ``accelerator.prepare``
(that would shard a second time).

Example (a few steps on the built-in dataset)::

    from hub_cutinit.training import TrainConfig, Trainer
    result = Trainer(TrainConfig(method="byol", max_steps=5, batch_size=16,
                                 output_dir="/tmp/x")).train()
"""

from __future__ import annotations

import os
import shutil
import time
import warnings as _warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed

from hub_cutinit import data as data_lib
from hub_cutinit.data.stream import MAX_CORRUPT_EXAMPLES
from hub_cutinit.factory import create_ssl_model
from hub_cutinit.norms import NormHistory, NormTracker, row_norms
from hub_cutinit.training.arguments import TrainConfig
from hub_cutinit.training.callbacks import CallbackHandler, TrainerCallback, import_callback
from hub_cutinit.training.checkpoint import (
    OutputDirLockedError,
    RunLock,
    acquire_run_lock,
    latest_checkpoint,
    layout_change_message,
    load_checkpoint,
    save_checkpoint,
)
from hub_cutinit.training.default_callbacks import ProgressCallback, default_callbacks
from hub_cutinit.training.device_defaults import (
    build_accelerator,
    resolve_channels_last,
    tune_cpu_allocator,
)
from hub_cutinit.training.failures import (
    LostProcessError,
    NonFiniteLossError,
    all_true,
    lost_process_error,
    nonfinite_message,
)
from hub_cutinit.training.knn_monitor import KnnMonitor
from hub_cutinit.training.optim import bn_normalized_weights, build_optimizer
from hub_cutinit.training.preemption import PreemptionCallback
from hub_cutinit.training.report import format_baselines
from hub_cutinit.training.resolve import resolve_record, run_summary
from hub_cutinit.training.run_data import build_run_data, steps_per_epoch
from hub_cutinit.training.state import RunRecord, TrainerState
from hub_cutinit.training.statistics import StepStatistics

__all__ = ["LostProcessError", "NonFiniteLossError", "StepResult", "Trainer", "tune_cpu_allocator"]


@dataclass
class StepResult:
    """What :meth:`Trainer.training_step` returns for one (micro-)batch.

    ``log`` is filled only on logged steps (an optimiser step with ``step == 1`` or a multiple of
    ``--log-every``); its loss and norms are means over the steps since the previous log.
    """

    embeddings: dict[str, torch.Tensor]
    synced: bool
    log: dict[str, float]


class Trainer:
    """One SSL training run; ``train(cfg)`` is ``Trainer(cfg).train()``.

    Pass ``accelerator`` to reuse one (benchmarks); ``callbacks`` are added to the defaults.
    After :meth:`setup`: ``model`` (prepared), ``raw_model``, ``optimizer``, ``scheduler``,
    ``record`` (the resolved settings), ``state`` (all the moving state), ``history``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        accelerator: Accelerator | None = None,
        callbacks: Iterable[TrainerCallback] = (),
    ) -> None:
        self.cfg = cfg
        self.accelerator: Accelerator = accelerator  # set in setup_accelerator when None
        named = [import_callback(spec) for spec in cfg.callbacks]  # --callback MODULE:CLASS
        self.callbacks = CallbackHandler([*default_callbacks(cfg), *named, *callbacks])
        self.state = TrainerState()
        self.history = NormHistory()
        self.epoch_norms = NormTracker()
        self.record: RunRecord = RunRecord()
        self.model: Any = None
        self.raw_model: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.stream: Any = None
        self.loader: Any = None
        self.eval_plan: Any = None
        self.knn: KnnMonitor | None = None  # None: no labelled evaluation data
        self.device_augment: data_lib.DeviceAugment | None = None
        self.num_examples: int | None = cfg.num_examples
        self.num_workers = cfg.num_workers or 0
        self.channels_last = False
        self.tf32 = False
        self.views: list[torch.Tensor] = []  # the current step's views, on the device
        self.last_log: dict[str, float] = {}
        self.corrupt_examples: list[str] = []  # the first few skipped images, all processes
        self.last_ckpt: Path | None = None
        self.lock: RunLock | None = None
        self.stats: StepStatistics | None = None  # built on the first step
        self._loader_state: dict[str, Any] | None = None
        self._log_values: dict[str, float] = {}
        self._micro_step = 0
        self._saved_step = -1
        self._window = (time.perf_counter(), 0)
        self.started = time.perf_counter()
        self.preempted = False  # set by PreemptionCallback: checkpoint, stop, exit 75

    def add_callback(self, callback: TrainerCallback) -> None:
        """Add a callback (as ``callbacks=`` does), as in the HF Trainer."""
        self.callbacks.add(callback)

    def remove_callback(self, kind: type) -> list[TrainerCallback]:
        """Remove the callbacks of type ``kind`` (e.g. a built-in one); returns them."""
        return self.callbacks.remove(kind)

    @property
    def eval_sets(self) -> tuple[Any, ...] | None:
        """This process's share of the (bank, test) evaluation loaders, or ``None``."""
        return self.knn.loaders if self.knn is not None else None

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, *, lock: bool = False) -> None:
        """Accelerator, model, data, optimiser and the run record; ``lock``: also lock
        ``--output-dir`` (:meth:`lock_output_dir`) right after the accelerator is up."""
        self.setup_accelerator()
        if lock:
            self.lock_output_dir()
        self.setup_model()
        self.setup_data()
        steps_per_epoch = self.steps_per_epoch()  # None only with --max-steps
        total = self.cfg.max_steps or (steps_per_epoch or 0) * self.cfg.epochs  # max_steps wins
        self.setup_optimizer(total_steps=total, steps_per_epoch=steps_per_epoch)
        if self.cfg.log_with:
            config = {k: v for k, v in self.record.to_dict().items() if v is not None}
            self.accelerator.init_trackers("hub_cutinit", config=config)

    def setup_accelerator(self) -> None:
        """The Accelerator (gloo on CPU under a multi-process launch), seed, allocator."""
        self.accelerator, self.tf32 = build_accelerator(self.cfg, self.accelerator)
        set_seed(self.cfg.seed)
        self.started = time.perf_counter()

    def setup_model(self) -> None:
        """The cut-initialised SSL model (SyncBN on multi-GPU runs)."""
        cfg, device_type = self.cfg, self.accelerator.device.type
        model = create_ssl_model(cfg.method, cfg.backbone, c=cfg.c, **cfg.model_overrides())
        if self.accelerator.num_processes > 1 and device_type == "cuda":
            from timm.layers import convert_sync_batchnorm

            model = convert_sync_batchnorm(model)
        self.channels_last = resolve_channels_last(cfg.channels_last, device_type, model.backbone)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.compile:  # in place: the parameter names (checkpoints, saves) do not change
            model.compile()
        self.model = self.raw_model = model

    def setup_data(self) -> None:
        """The evaluation plan, the kNN monitor, this process's training stream and loader
        (:func:`hub_cutinit.training.run_data.build_run_data`)."""
        run_data = build_run_data(self.cfg, self.accelerator, self.raw_model)
        self.eval_plan, self.knn = run_data.eval_plan, run_data.knn
        self.stream, self.loader = run_data.stream, run_data.loader
        self.num_workers, self.num_examples = run_data.num_workers, run_data.num_examples
        self.device_augment = run_data.device_augment

    def lock_output_dir(self) -> None:
        """One run per ``--output-dir``: the main process takes the folder's lock file, and
        every process stops at once (:class:`OutputDirLockedError`) when it is held."""
        acc, error = self.accelerator, None
        if acc.is_main_process:
            try:
                self.lock, notice = acquire_run_lock(self.cfg.output_dir)
            except OutputDirLockedError as err:
                error = err
            else:
                if notice:
                    acc.print(notice)
        if not all_true(error is None, acc.device):
            raise error or OutputDirLockedError(
                f"{self.cfg.output_dir} is in use by another run (see the main process's error)."
            )

    def steps_per_epoch(self) -> int | None:
        """Optimiser steps in one pass over this process's shard (``None``: unknown length)."""
        return steps_per_epoch(self.cfg, self.num_examples, self.accelerator.num_processes)

    def setup_optimizer(self, *, total_steps: int, steps_per_epoch: int | None = None) -> None:
        """Resolve the run record, run the method's checks, build the optimiser and schedule,
        prepare the model."""
        self.record = rec = resolve_record(self, total_steps, steps_per_epoch)
        warnings = self.cfg.check_method(rec.global_batch_size, self.accelerator.device.type)
        for message in warnings if self.accelerator.is_main_process else []:
            _warnings.warn(message, UserWarning, stacklevel=2)
        normalized: list[str] = []
        if rec.normalized_lr_scale != 1:
            size = self.cfg.image_size
            normalized = bn_normalized_weights(
                self.raw_model,
                lambda m: m.embed(torch.randn(2, 3, size, size)),  # type: ignore[operator]
            )
        self.optimizer, self.scheduler = build_optimizer(
            self.raw_model,
            rec.optimizer,
            lr=rec.lr,
            weight_decay=rec.weight_decay,
            cosine_steps=rec.cosine_steps,
            warmup_steps=rec.warmup_steps,
            momentum=rec.sgd_momentum if rec.sgd_momentum is not None else 0.9,
            nesterov=rec.nesterov,
            normalized=normalized,
            normalized_lr_scale=rec.normalized_lr_scale,
        )
        self.model, self.optimizer = self.accelerator.prepare(self.raw_model, self.optimizer)
        self.raw_model = self.accelerator.unwrap_model(self.model)

    # -- resume ---------------------------------------------------------------------------------
    def resume(self) -> None:
        """Restore the newest complete checkpoint when ``--resume`` is given: weights, optimiser,
        schedule, data position, the state and every callback's state."""
        cfg, acc = self.cfg, self.accelerator
        if not cfg.resume:
            return
        self.last_ckpt = latest_checkpoint(cfg.output_dir)
        if self.last_ckpt is None:
            acc.print(f"--resume: no complete checkpoint in {cfg.output_dir}; starting at step 0.")
            return
        saved, self._loader_state = load_checkpoint(
            acc, self.last_ckpt, num_workers=self.num_workers
        )
        self.state = TrainerState.from_dict(saved)
        self.callbacks.load_state_dict(self.state.callbacks)
        self.history.load_state_dict(saved["history"])
        self.scheduler.step_update(self.state.step)  # this run's schedule (e.g. a new --lr)
        if acc.is_main_process:  # the saved statistics are already global
            self.epoch_norms.load_state_dict(saved["epoch_norms"])
        acc.print(
            f"Resumed from {self.last_ckpt} (step {self.state.step}, epoch {self.state.epoch})."
        )
        if self._loader_state is None:
            acc.print(
                layout_change_message(
                    self.last_ckpt, saved, self.state, acc.num_processes, self.num_workers
                )
            )

    # -- one step -------------------------------------------------------------------------------
    def training_step(self, views: list[torch.Tensor]) -> StepResult:
        """Forward, backward, optimiser and schedule on one (micro-)batch, plus norm statistics.

        **No host sync on steps that do not log**: the loss, the mean norms and a non-finite
        flag stay on the device (:class:`~hub_cutinit.training.statistics.StepStatistics`); a
        logged step (``step == 1`` or a multiple of ``--log-every``) reads them, with whatever
        the callbacks added (:meth:`log_values`), in one fused all-reduce and one host copy.

        **Non-finite policy**: the :class:`~hub_cutinit.training.default_callbacks.NonFiniteGuard`
        zeroes the gradients of a step whose loss or any gradient is NaN or infinite before the
        optimiser step; the run then stops with :class:`NonFiniteLossError`, naming that step,
        at the next read: the next logged step, or before any checkpoint, evaluation or final
        save, whichever comes first; so no file holds anything trained after the bad step.
        """
        acc, state = self.accelerator, self.state
        self.views = views = self._device_views(views)
        self._micro_step += 1
        with acc.accumulate(self.model):
            out = self.model(views)
            loss = out.loss.detach().float()
            acc.backward(out.loss)
            flag = (~torch.isfinite(loss)).float().reshape(1)
            if acc.sync_gradients:
                self.callbacks.call("on_pre_optimizer_step", self, state, flag=flag)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        embeddings = {k: v.detach() for k, v in out.embeddings.items()}
        self.add_step_statistics(embeddings, loss, flag, state.step + 1)
        images = views[0].shape[0] * acc.num_processes
        state.images_seen += images
        self._window = (self._window[0], self._window[1] + images)
        if not acc.sync_gradients:
            return StepResult(embeddings, False, {})
        state.step += 1
        self.scheduler.step_update(state.step)
        hook_log = self.raw_model.on_step_end(state.step / self.record.total_steps) or {}
        logged = self.logged(state.step)
        self.callbacks.call("on_step_end", self, state, logged=logged)
        if not logged:
            return StepResult(embeddings, True, {})
        log = self._read_statistics(hook_log)
        self.callbacks.call("on_log", self, state, logs=log)
        self.last_log = {k: v for k, v in log.items() if not k.startswith("_")}
        return StepResult(embeddings, True, self.last_log)

    def _device_views(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The batch's views on the device, augmented there under ``--augment-on device``,
        normalised (uint8 -> ImageNet-normalised float) and channels-last when chosen."""
        device = self.accelerator.device
        if self.device_augment is not None:  # [base images, parameters] -> the views
            views = self.device_augment([v.to(device, non_blocking=True) for v in views])
        memory = torch.channels_last if self.channels_last else torch.preserve_format
        views = [
            v.to(device, non_blocking=True, memory_format=memory if v.ndim == 4 else None)
            if self.channels_last
            else v.to(device, non_blocking=True)
            for v in views
        ]
        return data_lib.normalize_views(views)

    def logged(self, step: int) -> bool:
        """Whether optimiser step ``step`` reads the statistics (``1`` and every --log-every)."""
        return step == 1 or step % max(1, self.cfg.log_every) == 0

    def log_values(self, values: dict[str, float]) -> None:
        """Add values to this logged step's statistics read (averaged over processes; a
        callback calls it from ``on_step_end``; keys starting with ``_`` are not tracked)."""
        self._log_values.update(values)

    def add_step_statistics(
        self, embeddings: dict[str, torch.Tensor], loss: torch.Tensor, flag: torch.Tensor, step: int
    ) -> None:
        """Add the step's norm means (and the epoch's norm tracker), loss and non-finite flag
        to the device-side statistics (no sync)."""
        norms = {name: row_norms(z) for name, z in embeddings.items()}
        self.epoch_norms.update_norms(norms)  # folded into the statistics at the next read
        if self.stats is None:
            self.stats = StepStatistics(sorted(embeddings), self.accelerator.device)
        means = [norms[k].mean() for k in self.stats.names]
        stacked = torch.stack(means) if means else loss.new_zeros(0)
        self.stats.add(stacked, loss, flag, step)

    def _read_statistics(self, hook_log: dict[str, float]) -> dict[str, float]:
        """The one read of a logged step: norms, loss, non-finite count and the callbacks'
        values, summed over processes in one all-reduce; stops on a non-finite step."""
        assert self.stats is not None
        names, values = list(self._log_values), list(self._log_values.values())
        self._log_values = {}
        norms, loss, bad, extra = self.stats.read(self.accelerator, values)
        if bad:
            self._raise_nonfinite()
        started, images = self._window
        self._window = (time.perf_counter(), 0)
        processes = self.accelerator.num_processes
        return {
            "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": images / max(time.perf_counter() - started, 1e-9),
            **{f"norm/{k}": v for k, v in norms.items()},
            **hook_log,
            **{k: v / processes for k, v in zip(names, extra, strict=True)},
        }

    def check_finite(self) -> None:
        """Stop if any step since the start had a non-finite loss (a collective: called before
        every checkpoint, evaluation and the final save, on every process)."""
        if self.stats is not None and self.stats.any_bad(self.accelerator):
            self._raise_nonfinite()

    def _raise_nonfinite(self) -> None:
        assert self.stats is not None
        step, loss = self.stats.first_bad(self.accelerator)
        raise self._nonfinite(loss, step)

    def agree_max(self, value: float) -> float:
        """The largest ``value`` over processes (a collective)."""
        if self.accelerator.num_processes == 1:
            return value
        tensor = torch.tensor(float(value), device=self.accelerator.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return float(tensor.item())

    # -- epochs ---------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Set up, lock the output folder, resume, train to ``total_steps``, save; return the
        run summary. A lost process raises :class:`LostProcessError` (how to resume)."""
        preemption = self.callbacks.get(PreemptionCallback)
        if preemption is not None:  # from the start: a signal during the set-up counts too
            preemption.install()
        try:
            return self._train()
        except RuntimeError as err:  # DistBackendError, gloo's "Connection closed by peer" ...
            last = latest_checkpoint(self.cfg.output_dir)
            lost = lost_process_error(err, self.state.step, last, self.cfg.collective_timeout)
            if lost is None:
                raise
            raise lost from None
        finally:
            preemption = self.callbacks.get(PreemptionCallback)
            if preemption is not None:
                preemption.uninstall()
            progress = self.callbacks.get(ProgressCallback)
            if progress is not None:
                progress.close()  # also after an error: no stale bar at exit
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _train(self) -> dict[str, Any]:
        self.setup(lock=True)
        self.resume()
        self.callbacks.call("on_train_begin", self, self.state)
        self.model.train()
        while self.state.step < self.record.total_steps and not self.callbacks.control.should_stop:
            self.train_epoch()
        if self.preempted:
            return self._preempted_summary()
        return self.finish()

    def _preempted_summary(self) -> dict[str, Any]:
        """What a preempted run returns: where it stopped and how to continue (no final save)."""
        self.accelerator.wait_for_everyone()
        self.callbacks.call("on_train_end", self, self.state, summary={"steps": self.state.step})
        self.accelerator.end_training()
        return {
            "preempted": True,
            "steps": self.state.step,
            "checkpoint": str(self.last_ckpt) if self.last_ckpt else None,
            "output_dir": self.cfg.output_dir,
            "total_steps": self.record.total_steps,
        }

    def _start_epoch(self) -> bool:
        """Set the loader's epoch; restore a mid-epoch position once after a resume."""
        self.loader.set_epoch(self.state.epoch)
        saved, self._loader_state = self._loader_state, None
        if saved is None:
            self.state.epoch_start_images = self.state.images_seen  # a fresh (or restarted) epoch
            return False
        self.loader.num_corrupt = int(saved["hub_cutinit"]["num_corrupt"])  # this process
        self.loader.corrupt_examples = list(saved["hub_cutinit"].get("corrupt_examples", []))
        # a position saved in an earlier epoch (an epoch-end checkpoint) is not resumed
        if saved["hub_cutinit"]["epoch"] == self.state.epoch:
            self.loader.load_state_dict(saved)
            return True
        self.state.epoch_start_images = self.state.images_seen
        return False

    def train_epoch(self) -> None:
        """Steps until the stream ends, the run does or a callback stops it; then the
        end-of-epoch work."""
        state, acc, cfg = self.state, self.accelerator, self.cfg
        resumed_mid_epoch, first_step = self._start_epoch(), state.step
        batches, exhausted = iter(self.loader), False
        while state.step < self.record.total_steps:
            step_started = time.perf_counter()
            batch = next(batches, None)
            everyone_has_one = all_true(batch is not None, acc.device)  # a collective
            if batch is None or not everyone_has_one:
                exhausted = True  # some process has no full batch left: the epoch ends for all
                break
            result = self.training_step(batch["views"])
            state.train_seconds += time.perf_counter() - step_started
            if result.synced and self._act_on_control():
                break
        if exhausted and not resumed_mid_epoch and state.step == first_step:
            raise ValueError(
                f"Epoch {state.epoch} of {cfg.dataset!r} gave no full batch of {cfg.batch_size} "
                f"images per process ({data_lib.corrupt_count(self.loader)} corrupt images "
                "skipped so far): lower --batch-size or fix the dataset."
            )
        self.end_epoch(exhausted)

    def _act_on_control(self) -> bool:
        """Evaluate and checkpoint when a callback asked; True when one asked to stop."""
        control, done = self.callbacks.control, self.state.step >= self.record.total_steps
        if control.should_evaluate:
            control.should_evaluate = False
            self.evaluate()
        if control.should_save:
            control.should_save = False
            if not done:  # the last step is saved by end_epoch / finish
                self.checkpoint()
        return control.should_stop

    def end_epoch(self, exhausted: bool) -> None:
        """Count corrupt images, record the epoch's norms; at a pass's end the callbacks'
        ``on_epoch_end`` (evaluation, checkpoint cadence); the last step is always saved."""
        state, acc, rec = self.state, self.accelerator, self.record
        corrupt = torch.tensor(float(data_lib.corrupt_count(self.loader)), device=acc.device)
        state.corrupt_images = int(acc.reduce(corrupt, reduction="sum").item())
        named = gather_object(data_lib.corrupt_examples(self.loader))  # every process's names
        self.corrupt_examples = list(named)[:MAX_CORRUPT_EXAMPLES]
        done = state.step >= rec.total_steps or self.callbacks.control.should_stop
        # training may stop exactly at an epoch's last batch, before the stream reports its end
        epoch_end = exhausted or bool(
            rec.steps_per_epoch
            and state.step >= rec.total_steps
            and state.step % rec.steps_per_epoch == 0
        )
        if epoch_end:
            state.epoch += 1
        if epoch_end or done:
            # records carry the number of completed epochs, like the kNN records
            summary = self.epoch_norms.reduce_across_processes(inplace=False).summary()
            self.history.append(summary, epoch=state.epoch, step=state.step, **self._epoch_angles())
            self.epoch_norms.reset()
        if epoch_end:
            self.callbacks.call("on_epoch_end", self, state)
            self._act_on_control()
        if done and self.state.step != self._saved_step:
            self.checkpoint()

    def _epoch_angles(self) -> dict[str, Any]:
        """Mean convergence statistics of the epoch's monitored steps (for the norm history)."""
        last = self.history.records[-1]["step"] if len(self.history) else 0
        rows = [r for r in self.state.convergence if r["step"] > last]
        keys = sorted({k for r in rows for k in r if k.startswith(("angle/", "norm/"))})
        if not rows:
            return {}
        return {
            "convergence": {
                k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys
            }
        }

    # -- evaluation, checkpoints ----------------------------------------------------------------
    def evaluate_knn(self, backbone: torch.nn.Module, *, probe: bool = False) -> dict[str, Any]:
        """Weighted kNN (and optionally a linear probe) of ``backbone`` (a collective)."""
        if self.knn is None:
            raise ValueError("This run has no labelled evaluation data (see --eval-dataset).")
        return self.knn.evaluate(backbone, probe=probe)

    def run_baselines(self) -> None:
        """PAPER §8: the same kNN protocol at random initialisation and on raw pixels (step 0;
        the checkpoints keep them, so a resumed run does not compute them again)."""
        if self.knn is None or not self.cfg.baselines or self.state.step != 0:
            return
        started = time.perf_counter()
        self.state.baselines = self.knn.baselines(self.raw_model.backbone)
        self.state.eval_seconds += time.perf_counter() - started
        self.accelerator.print(format_baselines(self.state.baselines))

    def evaluate(self, probe: bool = False) -> dict[str, Any] | None:
        """The kNN monitor: features extracted by every process, recorded by the main one."""
        acc, state = self.accelerator, self.state
        if self.knn is None:
            return None
        self.check_finite()
        state.last_eval_step = state.step  # on every process, so they agree on what runs
        started = time.perf_counter()
        result = self.knn.evaluate(self.raw_model.backbone, probe=probe)
        result.update(step=state.step, epoch=state.epoch)
        seconds = time.perf_counter() - started
        state.eval_seconds += seconds
        if acc.is_main_process:
            state.knn.append(result)
        self.callbacks.call("on_evaluate", self, state, metrics={**result, "seconds": seconds})
        share = state.eval_seconds / max(time.perf_counter() - self.started, 1e-9)
        acc.print(
            f"step {state.step}: kNN accuracy {result['knn_accuracy']:.4f} (evaluation: "
            f"{100 * share:.1f} % of the wall time so far; --eval-every / --eval-every-epochs "
            "change the cadence)"
        )
        return result

    def checkpoint_state(self) -> dict[str, Any]:
        """What ``trainer_state.json`` holds (a collective: every process calls it)."""
        self.state.callbacks = self.callbacks.state_dict()
        reduced = self.epoch_norms.reduce_across_processes(inplace=False)
        return {
            **self.state.to_dict(),
            "history": self.history.state_dict(),
            "epoch_norms": reduced.to_dict(),
            "config": self.cfg.to_dict(),
            "run": self.record.to_dict(),
        }

    def checkpoint(self) -> None:
        """An atomic checkpoint of everything a resume needs (after the finiteness check)."""
        self.check_finite()
        self._saved_step = self.state.step
        self.last_ckpt = save_checkpoint(
            self.accelerator,
            self.cfg.output_dir,
            self.state.step,
            self.checkpoint_state(),
            self.loader.state_dict(),
        )
        self.callbacks.call("on_save", self, self.state, checkpoint=self.last_ckpt)

    def _nonfinite(self, loss: float, bad_step: int) -> NonFiniteLossError:
        """The error to raise for a non-finite loss at ``bad_step``; the checkpoint holding the
        weights it came from is set aside first."""
        acc, step = self.accelerator, bad_step - 1
        set_aside = None
        if self.last_ckpt is not None and self.last_ckpt.name == f"step_{step:08d}":
            # it holds the weights this loss came from: --resume must not pick it up again
            set_aside = self.last_ckpt.with_name(f".nonfinite-{self.last_ckpt.name}")
            if acc.is_main_process:
                shutil.rmtree(set_aside, ignore_errors=True)
                os.replace(self.last_ckpt, set_aside)
            acc.wait_for_everyone()
            self.last_ckpt = latest_checkpoint(self.cfg.output_dir)
        lr = self.optimizer.param_groups[0]["lr"]
        message = nonfinite_message(bad_step, loss, lr, self.record.c, self.last_ckpt)
        if set_aside:
            message += f" Step {step}'s checkpoint was moved to {set_aside}."
        return NonFiniteLossError(message)

    # -- the end ----------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Final evaluation, the run summary, save in timm's format, ``on_train_end`` (push)."""
        cfg, acc, state = self.cfg, self.accelerator, self.state
        final_eval = None
        if self.stats is not None and not self.logged(state.step):
            tail = self._read_statistics({})  # the steps since the last log
            self.last_log.update({k: v for k, v in tail.items() if not k.startswith("_")})
        self.check_finite()
        if self.knn is not None and (cfg.linear_probe or state.last_eval_step != state.step):
            final_eval = self.evaluate(probe=cfg.linear_probe)
        result = run_summary(self, final_eval)
        if acc.is_main_process:
            from hub_cutinit.hub import save_pretrained

            save_pretrained(self.raw_model, cfg.output_dir, training_info=result)
        acc.wait_for_everyone()  # the last collective: a slow upload cannot time out the others
        self.callbacks.call("on_train_end", self, state, summary=result)
        acc.end_training()
        return result
