"""The Trainer: one SSL run under Accelerate, in small steps a reader can follow.

``Trainer(cfg).train()`` runs :meth:`~Trainer.setup` (accelerator, model, data, optimiser, the
resolved :class:`~hub_cutinit.training.record.RunRecord`), :meth:`~Trainer.resume`, the
baselines, then epochs of :meth:`~Trainer.training_step` with the convergence monitor, the kNN
monitor and checkpoints, and :meth:`~Trainer.finish` (final evaluation, save in timm's format,
optional push). Every process reads its own shard of the stream (``split_dataset_by_node`` in
:mod:`hub_cutinit.data`); the data loader is therefore *not* passed to ``accelerator.prepare``
(that would shard a second time).

Example (a few steps on the built-in dataset)::

    from hub_cutinit.training import TrainConfig, Trainer
    result = Trainer(TrainConfig(method="byol", max_steps=5, batch_size=16,
                                 output_dir="/tmp/x")).train()
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm

from hub_cutinit import data as data_lib
from hub_cutinit.distributed import is_distributed
from hub_cutinit.evaluation import extract_features, gather_rows, knn_accuracy, linear_probe
from hub_cutinit.factory import create_ssl_model
from hub_cutinit.monitor import StepAngleMonitor
from hub_cutinit.norms import NormHistory, NormTracker
from hub_cutinit.training.checkpoint import (
    OutputDirLockedError,
    RunLock,
    acquire_run_lock,
    checkpoint_layout,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    saved_loader_epoch,
)
from hub_cutinit.training.config import TrainConfig
from hub_cutinit.training.optim import bn_normalized_weights, build_optimizer, resolve_schedule
from hub_cutinit.training.record import RunRecord, TrainerState
from hub_cutinit.training.speed import (
    StepStatistics,
    enable_cuda_speedups,
    resolve_channels_last,
    resolve_checkpointing,
    resolve_mixed_precision,
)

__all__ = [
    "Trainer",
    "StepResult",
    "NonFiniteLossError",
    "LostProcessError",
    "tune_cpu_allocator",
    "PROBE_SIZE",
]

#: Images in the fixed probe batch of the convergence monitor.
PROBE_SIZE = 64
#: The automatic ``--eval-every-epochs`` keeps evaluation under about this share of the time.
EVAL_SHARE = 0.1


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


def _lost_process_message(
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


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of handing it back to the OS after each step.

    With glibc's defaults the ~90 MB of gradients that ``zero_grad(set_to_none=True)`` frees at
    the end of a BYOL resnet18 step (and other large temporaries) are trimmed from the heap or
    unmapped, then page-faulted in again by the next backward: ~22k minor faults per step, 5-8 %
    of the step time on CPU. Process-wide; returns False (and does nothing) outside Linux/glibc
    or when the user set a ``MALLOC_*`` variable. The price: the resident size no longer shrinks
    after a peak, which a training process does not need.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _all_true(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every process (a barrier-free agreement)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item() > 0)


def _nonfinite_message(step: int, loss: float, lr: float, c: float, last_ckpt: Any) -> str:
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

    Pass ``accelerator`` to reuse one (benchmarks); otherwise :meth:`setup_accelerator` builds
    it from ``cfg``. Attributes after :meth:`setup`: ``model`` (prepared), ``raw_model``,
    ``optimizer``, ``scheduler``, ``record`` (the resolved hyper-parameters), ``state``
    (:class:`TrainerState`), ``history`` (per-epoch norm records).
    """

    def __init__(self, cfg: TrainConfig, *, accelerator: Accelerator | None = None) -> None:
        self.cfg = cfg
        self.accelerator = accelerator  # None: setup_accelerator() builds one from cfg
        self.state = TrainerState()
        self.history = NormHistory()
        self.epoch_norms = NormTracker()
        self.monitor: StepAngleMonitor | None = None
        self.eval_sets: tuple[Any, Any] | None = None  # this process's share of each set
        self.eval_seconds = 0.0  # wall time spent in evaluations (baselines included)
        #: epochs between epoch-end evaluations when --eval-every-epochs is automatic
        self.eval_period = 1
        self._last_eval_epoch = 0
        self.stream: Any = None
        self.loader: Any = None
        self.loader_state: dict[str, Any] | None = None
        self.last_ckpt: Path | None = None
        self._names: list[str] | None = None
        self._micro_step = 0
        self._window = (time.perf_counter(), 0)
        self.last_log: dict[str, float] = {}
        self.stats: StepStatistics | None = None  # built on the first step
        self._checkpoint_clock = time.perf_counter()
        self._checkpoint_due = False
        self.lock: RunLock | None = None
        #: ``--augment-on device``: turns the loader's [base images, parameters] into views
        self.device_augment: data_lib.DeviceAugment | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, *, lock: bool = False) -> None:
        """Accelerator, model, data, optimiser and the run record; ``lock``: also lock
        ``--output-dir`` (:meth:`lock_output_dir`) right after the accelerator is up."""
        self.setup_accelerator()
        if lock:
            self.lock_output_dir()
        self.setup_model()
        self.setup_data()
        steps_per_epoch = self._steps_per_epoch()
        total = self.cfg.max_steps or steps_per_epoch * self.cfg.epochs  # max_steps wins
        self.setup_optimizer(total_steps=total, steps_per_epoch=steps_per_epoch)
        if self.cfg.log_with:
            config = {k: v for k, v in self.record.to_dict().items() if v is not None}
            self.accelerator.init_trackers("hub_cutinit", config=config)

    def setup_accelerator(self) -> None:
        """The Accelerator (gloo on CPU under a multi-process launch), seed, allocator."""
        cfg = self.cfg
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        self.accelerator = self.accelerator or Accelerator(
            # without CUDA, run on CPU: under `accelerate launch --multi_gpu` or torchrun this
            # gives a gloo process group (MULTI_CPU) instead of a silent single process
            cpu=device_type == "cpu",
            mixed_precision=resolve_mixed_precision(cfg.mixed_precision, device_type),
            gradient_accumulation_steps=cfg.grad_accum_steps,
            log_with=cfg.log_with,
            project_dir=cfg.output_dir,
            kwargs_handlers=[
                # a dead peer otherwise hangs the others in a collective for torch's 30 min
                InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.collective_timeout)),
                # No per-step broadcast of rank 0's buffers: no training forward reads them.
                # The MoCo queue (+ pointer) and the DINO centre are filled from all-gathered /
                # all-reduced tensors, so they are identical on every rank. BatchNorm (student
                # and teacher: the teacher has no gradients, its weights follow the student's
                # by EMA, its BN runs in training mode too) normalises with batch statistics
                # while training (SyncBN: global ones on multi-GPU, so even the running
                # statistics agree); the running statistics are read only in evaluation, from
                # rank 0's model, which is what saves and checkpoints hold, and a broadcast
                # from rank 0 never changes rank 0's own buffers. (A feature extraction split
                # over ranks should broadcast rank 0's buffers once before it, as on gloo
                # without SyncBN other ranks' running statistics differ a little.)
                DistributedDataParallelKwargs(broadcast_buffers=False),
            ],
        )
        self.tf32 = False
        if self.accelerator.device.type == "cuda":
            self.tf32 = enable_cuda_speedups()
        if self.accelerator.device.type == "cpu":
            tune_cpu_allocator()
            if self.accelerator.mixed_precision == "fp16":
                raise ValueError("fp16 autocast does nothing on CPU; use --mixed-precision bf16.")
        set_seed(cfg.seed)
        self.started = time.perf_counter()

    def setup_model(self) -> None:
        """The cut-initialised SSL model (SyncBN on multi-GPU runs)."""
        cfg = self.cfg
        model = create_ssl_model(cfg.method, cfg.backbone, c=cfg.c, **cfg.model_overrides())
        if self.accelerator.num_processes > 1 and self.accelerator.device.type == "cuda":
            from timm.layers import convert_sync_batchnorm

            model = convert_sync_batchnorm(model)
        device_type = self.accelerator.device.type
        self.channels_last = resolve_channels_last(cfg.channels_last, device_type, model.backbone)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.compile:  # in place: the parameter names (checkpoints, saves) do not change
            model.compile()
        self.model = self.raw_model = model

    def setup_data(self) -> None:
        """The evaluation the data allows, this process's shard of the training stream, the loader.

        :func:`hub_cutinit.data.plan_evaluation` decides: a test split, a held-out slice of the
        training split (then excluded from training), or no evaluation on unlabelled images
        (one notice says how to add ``--eval-dataset``).
        """
        cfg, acc = self.cfg, self.accelerator
        data_lib.check_dataset_spec(cfg.dataset)
        self.eval_plan = plan = data_lib.plan_evaluation(
            cfg.dataset,
            image_size=cfg.image_size,
            train_split=cfg.train_split,
            eval_split=cfg.eval_split,
            eval_dataset=cfg.eval_dataset,
            eval_bank_split=cfg.eval_bank_split,
            image_column=cfg.image_column,
            label_column=cfg.label_column,
            eval_image_column=cfg.eval_image_column,
            eval_label_column=cfg.eval_label_column,
            held_out_fraction=cfg.eval_held_out,
            seed=cfg.seed,
            max_samples=cfg.eval_max_samples,
            batch_size=max(64, cfg.batch_size),
        )
        self.eval_sets = plan.loaders
        if self.eval_sets is not None:  # feature extraction split across the processes
            self.eval_sets = tuple(  # type: ignore[assignment]
                data_lib.shard_eval_loader(loader, acc.process_index, acc.num_processes)
                for loader in self.eval_sets
            )
        if plan.notice:
            acc.print(plan.notice)
        self.num_workers = self._resolve_num_workers()
        self.stream = data_lib.build_train_stream(
            cfg.dataset,
            method=cfg.method,
            image_size=cfg.image_size,
            split=cfg.train_split,
            image_column=cfg.image_column,
            label_column=cfg.label_column,
            num_local_views=self.raw_model.num_views()[1],
            seed=cfg.seed,
            shuffle_buffer=cfg.shuffle_buffer,
            rank=acc.process_index,
            world_size=acc.num_processes,
            exclude=plan.held_out,
            total_examples=plan.train_examples,
            num_workers=self.num_workers,  # shards enough for every rank x worker
            uint8=True,  # views travel as uint8; training_step normalises them on the device
            augment_on=cfg.augment_on,
        )
        if cfg.augment_on == "device":  # the loader brings [base images, view parameters]
            self.device_augment = self.stream.transform.device_augment()
        self.num_examples = cfg.num_examples or data_lib.count_examples(self.stream)
        self.loader = data_lib.make_train_loader(
            self.stream,
            batch_size=cfg.batch_size,
            num_workers=self.num_workers,
            pin_memory=acc.device.type == "cuda",
            persistent_workers=self.num_workers > 0,
        )

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
        if not _all_true(error is None, acc.device):
            raise error or OutputDirLockedError(
                f"{self.cfg.output_dir} is in use by another run (see the main process's error)."
            )

    def _lost_process(self, err: BaseException) -> LostProcessError | None:
        """The error to raise when ``err`` says another process is gone, else ``None``."""
        dist = torch.distributed
        if isinstance(err, (NonFiniteLossError, LostProcessError)) or not (
            dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return None
        text = f"{err} {err.__cause__ or ''}".lower()
        if not isinstance(err, dist.DistError) and not any(s in text for s in _LOST_PEER_SIGNS):
            return None
        message = _lost_process_message(
            err,
            dist.get_rank(),
            dist.get_world_size(),
            self.state.step,
            latest_checkpoint(self.cfg.output_dir),
            self.cfg.collective_timeout,
        )
        return LostProcessError(message)

    def _resolve_num_workers(self) -> int:
        """``--num-workers``; by default the checkpoint's on ``--resume`` with the same number
        of processes (its data position needs it), else a choice from the CPUs and the device."""
        cfg, acc = self.cfg, self.accelerator
        if cfg.num_workers is not None:
            return cfg.num_workers
        last = latest_checkpoint(cfg.output_dir) if cfg.resume else None
        if last is not None:
            saved = json.loads((last / "trainer_state.json").read_text())
            processes, workers = checkpoint_layout(last, saved)
            if processes == acc.num_processes and workers is not None:
                return workers
        return data_lib.default_num_workers(
            acc.device.type,
            processes_per_node=int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes)),
        )  # the train stream is then sharded for these workers (data.shard_for_workers)

    def _steps_per_epoch(self) -> int | None:
        cfg, n = self.cfg, self.num_examples
        if n is None:
            if cfg.max_steps is None:
                raise ValueError(
                    f"Cannot tell how many training images {cfg.dataset!r} has; pass "
                    "--num-examples N or --max-steps N so the schedule knows its length."
                )
            return None
        per_step = cfg.batch_size * cfg.grad_accum_steps
        steps = n // self.accelerator.num_processes // per_step
        if steps < 1:
            raise ValueError(
                f"{n} training images are too few for batch {cfg.batch_size} × "
                f"{self.accelerator.num_processes} processes × {cfg.grad_accum_steps} "
                "accumulation steps; lower --batch-size."
            )
        return steps

    def setup_optimizer(self, *, total_steps: int, steps_per_epoch: int | None = None) -> None:
        """Resolve the run record, build the optimiser and schedule, prepare the model."""
        self.record = self.resolve_record(total_steps, steps_per_epoch)
        rec = self.record
        check_batch = getattr(self.raw_model, "check_global_batch", None)
        if check_batch is not None and self.accelerator.is_main_process:
            check_batch(rec.global_batch_size)  # MoCo: warns when its queue is too short
        normalized: list[str] = []
        if rec.normalized_lr_scale != 1:
            size = self.cfg.image_size
            normalized = bn_normalized_weights(
                self.raw_model, lambda m: m.embed(torch.randn(2, 3, size, size))
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

    def resolve_record(self, total_steps: int, steps_per_epoch: int | None) -> RunRecord:
        """Every hyper-parameter of this run, resolved once (flags over method defaults)."""
        cfg, acc, model = self.cfg, self.accelerator, self.raw_model
        hp = model.hparams
        global_batch = cfg.batch_size * acc.num_processes * cfg.grad_accum_steps
        lr = cfg.lr if cfg.lr is not None else float(hp["base_lr"]) * global_batch / 256
        optimizer = cfg.optimizer or hp["optimizer"]
        uses_momentum = optimizer in ("sgd", "lars")
        nesterov = cfg.nesterov if cfg.nesterov is not None else hp.get("nesterov")
        warmup, cosine = resolve_schedule(
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=cfg.warmup_epochs,
            cosine_epochs=cfg.cosine_epochs,
        )
        has_teacher = getattr(model, "teacher", None) is not None
        return RunRecord(
            method=cfg.method,
            family=model.family,
            backbone=cfg.backbone,
            backbone_kwargs=dict(hp.get("backbone_kwargs") or {}),
            c=model.cut_factor,
            optimizer=optimizer,
            nesterov=bool(nesterov) if uses_momentum and nesterov is not None else None,
            lr=lr,
            base_lr=lr * 256 / global_batch,
            weight_decay=cfg.weight_decay
            if cfg.weight_decay is not None
            else float(hp["weight_decay"]),
            sgd_momentum=float(hp["sgd_momentum"]) if uses_momentum else None,
            warmup_steps=warmup,
            cosine_steps=cosine,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=warmup / steps_per_epoch if steps_per_epoch else None,
            cosine_epochs=cosine / steps_per_epoch if steps_per_epoch else None,
            normalized_lr_scale=cfg.normalized_lr_scale,
            ema_momentum=float(hp["momentum"]) if has_teacher else None,
            ema_schedule=str(hp.get("momentum_schedule", "cosine")) if has_teacher else None,
            batch_size=cfg.batch_size,
            grad_accum_steps=cfg.grad_accum_steps,
            num_processes=acc.num_processes,
            global_batch_size=global_batch,
            mixed_precision=str(acc.mixed_precision),
            image_size=cfg.image_size,
            dataset=cfg.dataset,
            train_split=cfg.train_split,
            eval_split=cfg.eval_split,
            num_examples=self.num_examples if self.stream is not None else cfg.num_examples,
            knn_k=cfg.knn_k,
            knn_temperature=cfg.knn_temperature,
            eval_every=cfg.eval_every,
            eval_every_epochs=cfg.eval_every_epochs,
            log_every=cfg.log_every,
            seed=cfg.seed,
            grad_scale_power=float(hp.get("grad_scale_power") or 0.0),
            **self._data_record(),
        )

    def _data_record(self) -> dict[str, Any]:
        """The run record's speed, checkpoint, evaluation-source and data-loading fields."""
        plan = getattr(self, "eval_plan", None)
        eval_dataset = self.cfg.eval_dataset
        every, minutes = resolve_checkpointing(
            self.cfg.checkpoint_every, self.cfg.checkpoint_minutes, self.accelerator.device.type
        )
        return {
            "channels_last": bool(getattr(self, "channels_last", False)),
            "tf32": bool(getattr(self, "tf32", False)),
            "checkpoint_every": every,
            "checkpoint_minutes": minutes,
            "eval_dataset": data_lib.dataset_label(eval_dataset) if eval_dataset else None,
            "eval_source": plan.source if plan is not None else "",
            "eval_held_out_images": plan.held_out_examples if plan is not None else None,
            "num_workers": getattr(self, "num_workers", self.cfg.num_workers or 0),
            "augment_on": self.cfg.augment_on,
            "compile": self.cfg.compile,
        }

    # -- resume ---------------------------------------------------------------------------------
    def resume(self) -> None:
        """Restore the newest complete checkpoint when ``--resume`` is given."""
        cfg, acc = self.cfg, self.accelerator
        if not cfg.resume:
            return
        self.last_ckpt = latest_checkpoint(cfg.output_dir)
        if self.last_ckpt is None:
            acc.print(f"--resume: no complete checkpoint in {cfg.output_dir}; starting at step 0.")
            return
        saved, self.loader_state = load_checkpoint(
            acc, self.last_ckpt, num_workers=getattr(self, "num_workers", None)
        )
        self.state = TrainerState.from_dict(saved)
        self.history.load_state_dict(saved["history"])
        self.scheduler.step_update(self.state.step)  # this run's schedule (e.g. a new --lr)
        if acc.is_main_process:  # the saved statistics are already global
            self.epoch_norms.load_state_dict(saved["epoch_norms"])
        acc.print(
            f"Resumed from {self.last_ckpt} (step {self.state.step}, epoch {self.state.epoch})."
        )
        if self.loader_state is None:
            acc.print(self._new_layout_message(saved))

    def _new_layout_message(self, saved: dict[str, Any]) -> str:
        """The one log line of a resume on another number of processes (or data workers).

        The saved data positions belong to another sharding, so they are not used: at an
        epoch end the next epoch starts from its beginning (an exact continuation); mid-epoch,
        the current epoch's stream restarts and its images trained on so far are seen again.
        """
        state, acc = self.state, self.accelerator
        processes, workers = checkpoint_layout(self.last_ckpt, saved)
        was = f"{processes} process(es)" + (f" × {workers} data worker(s)" if workers else "")
        now = f"{acc.num_processes} process(es)" + (
            f" × {self.num_workers} data worker(s)" if self.num_workers else ""
        )
        head = f"--resume: {self.last_ckpt.name} was written by {was}, this run has {now}: "
        tail = " Model, optimiser, step and schedule continue."
        if saved_loader_epoch(self.last_ckpt) != state.epoch:
            return head + f"epoch {state.epoch} starts from its beginning (exact)." + tail
        again = state.images_seen - state.epoch_start_images
        return (
            head + f"the data position cannot be carried over, so epoch {state.epoch} restarts "
            f"from its beginning and its {again:,} images trained on so far are seen again." + tail
        )

    # -- one step -------------------------------------------------------------------------------
    def training_step(self, views: list[torch.Tensor]) -> StepResult:
        """Forward, backward, optimiser and schedule on one (micro-)batch, plus norm statistics.

        **No host sync on steps that do not log**: the loss, the mean norms and a non-finite
        flag stay on the device (:class:`~hub_cutinit.training.speed.StepStatistics`); a logged
        step (``step == 1`` or a multiple of ``--log-every``) reads them with one fused
        all-reduce and one host copy, and runs the convergence monitor.

        **Non-finite policy** (no per-step sync): a step whose loss, or any gradient after DDP's
        all-reduce, is NaN or infinite has its gradients zeroed on the device before the
        optimiser step, so no NaN reaches the weights or the optimiser state. The run then stops
        with :class:`NonFiniteLossError`, naming that step, at the next read: the next logged
        step, or before any checkpoint, evaluation or final save, whichever comes first; so no
        file holds anything trained after the bad step. (Under fp16, the grad scaler skips
        steps with non-finite gradients itself; only a non-finite loss stops the run.)
        """
        acc, state = self.accelerator, self.state
        views = self._device_views(views)
        if self.monitor is None and self.cfg.convergence_monitor:
            # a fixed probe: this process's first training images (PAPER §9's angle per step)
            self.monitor = StepAngleMonitor(views[0][:PROBE_SIZE].clone())
        self._micro_step += 1
        syncs = self._micro_step % self.cfg.grad_accum_steps == 0
        watch = syncs and self.monitor is not None and self._monitored(state.step + 1)
        snapshot = self.monitor.before_step(self.raw_model) if watch else None
        with acc.accumulate(self.model):
            out = self.model(views)
            loss = out.loss.detach().float()
            acc.backward(out.loss)
            found = self._guard_update(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        embeddings = {k: v.detach() for k, v in out.embeddings.items()}
        self._add_statistics(embeddings, loss, found, state.step + 1)
        images = views[0].shape[0] * acc.num_processes
        state.images_seen += images
        self._window = (self._window[0], self._window[1] + images)
        if not acc.sync_gradients:
            return StepResult(embeddings, False, {})
        state.step += 1
        self.scheduler.step_update(state.step)
        hook_log = self.raw_model.on_step_end(state.step / self.record.total_steps) or {}
        if not self._monitored(state.step):
            return StepResult(embeddings, True, {})
        log = self._step_log(hook_log)
        if snapshot is not None:
            angles = self.monitor.after_step(self.raw_model, snapshot)
            means = acc.reduce(torch.tensor(list(angles.values()), device=acc.device), "mean")
            angles = dict(zip(angles, means.tolist(), strict=True))  # one fused all-reduce
            log.update({f"convergence/{k}": v for k, v in angles.items()})
            state.convergence.append(
                {"step": state.step, "epoch": state.epoch, "lr": log["lr"], **angles}
            )
        self.last_log = log
        return StepResult(embeddings, True, log)

    def _device_views(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The batch's views on the device, augmented there under ``--augment-on device``,
        normalised (uint8 -> ImageNet-normalised float) and channels-last when chosen."""
        device = self.accelerator.device
        if self.device_augment is not None:  # [base images, parameters] -> the views
            views = self.device_augment([v.to(device, non_blocking=True) for v in views])
        memory = torch.channels_last if getattr(self, "channels_last", False) else None
        views = [
            v.to(device, non_blocking=True, memory_format=memory)
            if memory is not None and v.ndim == 4
            else v.to(device, non_blocking=True)
            for v in views
        ]
        return data_lib.normalize_views(views)

    def _monitored(self, step: int) -> bool:
        return step == 1 or step % max(1, self.cfg.log_every) == 0

    def _guard_update(self, loss: torch.Tensor) -> torch.Tensor:
        """The step's non-finite flag (shape ``(1,)``, 1.0 = bad) without a host sync; on a
        synchronising step it also covers the all-reduced gradients, which are then zeroed when
        it is set (so the optimiser step applies no NaN)."""
        acc = self.accelerator
        found = (~torch.isfinite(loss)).float().reshape(1)
        if not acc.sync_gradients or acc.scaler is not None:
            return found  # fp16: the grad scaler checks (and skips) the step itself
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:
            unit = torch.ones(1, device=found.device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, unit)
            bad = found.reshape(()).bool()
            for grad in grads:
                grad.masked_fill_(bad, 0.0)
        return found

    def _add_statistics(
        self,
        embeddings: dict[str, torch.Tensor],
        loss: torch.Tensor,
        found: torch.Tensor,
        step: int,
    ) -> None:
        """Add the step's norm means, loss and flag to the device-side statistics (no sync)."""
        values = self._norm_statistics(embeddings, loss)
        if self.stats is None:
            self.stats = StepStatistics(self._names, self.accelerator.device)
        self.stats.add(values[:-1], values[-1], found, step)

    def _norm_statistics(
        self, embeddings: dict[str, torch.Tensor], loss: torch.Tensor
    ) -> torch.Tensor:
        """Update the epoch's norm tracker; this process's mean ‖z‖ per embedding and the loss,
        stacked on the device (read and reduced over processes on logged steps only)."""
        self.epoch_norms.update(embeddings)
        self._names = self._names if self._names is not None else sorted(embeddings)
        means = [embeddings[k].float().norm(dim=1).mean() for k in self._names]
        return torch.stack(means + [loss.float().reshape(())])

    def _step_log(self, hook_log: dict[str, float]) -> dict[str, float]:
        """Read the step statistics (one all-reduce, also carrying the checkpoint clock), stop
        on a non-finite step, log the means since the previous read."""
        started, images = self._window
        minutes = self.record.checkpoint_minutes
        due = bool(minutes) and time.perf_counter() - self._checkpoint_clock >= 60 * minutes
        norms, loss, bad, (due_anywhere,) = self.stats.read(self.accelerator, [float(due)])
        if bad:
            self._raise_nonfinite()
        self._checkpoint_due = due_anywhere > 0  # the same on every process
        log = {
            "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": images / max(time.perf_counter() - started, 1e-9),
            **{f"norm/{k}": v for k, v in norms.items()},
            **hook_log,
        }
        self.accelerator.log(log, step=self.state.step)
        return log

    def _check_finite(self) -> None:
        """Stop if any step since the start had a non-finite loss (a collective: called before
        every checkpoint, evaluation and the final save, on every process)."""
        if self.stats is not None and self.stats.any_bad(self.accelerator):
            self._raise_nonfinite()

    def _raise_nonfinite(self) -> None:
        step, loss = self.stats.first_bad(self.accelerator)
        raise self._nonfinite(loss, step)

    # -- epochs ---------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Set up, lock the output folder, resume, train to ``total_steps``, save; return the
        run summary. A lost process raises :class:`LostProcessError` (how to resume)."""
        try:
            return self._train()
        except RuntimeError as err:  # DistBackendError, gloo's "Connection closed by peer" ...
            lost = self._lost_process(err)
            if lost is None:
                raise
            raise lost from None
        finally:
            if getattr(self, "progress", None) is not None:
                self.progress.close()  # also after an error: no stale bar at exit
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _train(self) -> dict[str, Any]:
        self.setup(lock=True)
        self.resume()
        self.run_baselines()
        self.progress = tqdm(
            total=self.record.total_steps,
            initial=self.state.step,
            disable=not self.accelerator.is_local_main_process,
            desc=f"{self.cfg.method} c={self.record.c:g}",
        )
        self.model.train()
        while self.state.step < self.record.total_steps:
            self.train_epoch()
        self.progress.close()
        return self.finish()

    def _start_epoch(self) -> bool:
        """Set the loader's epoch; restore a mid-epoch position once after a resume."""
        self.loader.set_epoch(self.state.epoch)
        saved, self.loader_state = self.loader_state, None
        if saved is None:
            self.state.epoch_start_images = self.state.images_seen  # a fresh (or restarted) epoch
            return False
        self.loader.num_corrupt = int(saved["hub_cutinit"]["num_corrupt"])  # this process
        # a position saved in an earlier epoch (an epoch-end checkpoint) is not resumed
        if saved["hub_cutinit"]["epoch"] == self.state.epoch:
            self.loader.load_state_dict(saved)
            return True
        self.state.epoch_start_images = self.state.images_seen
        return False

    def train_epoch(self) -> None:
        """Steps until the stream ends or the run does, then the end-of-epoch work."""
        state, acc, cfg = self.state, self.accelerator, self.cfg
        resumed_mid_epoch, first_step = self._start_epoch(), state.step
        batches, exhausted = iter(self.loader), False
        while state.step < self.record.total_steps:
            step_started = time.perf_counter()
            batch = next(batches, None)
            if not _all_true(batch is not None, acc.device):
                exhausted = True  # some process has no full batch left: the epoch ends for all
                break
            result = self.training_step(batch["views"])
            state.train_seconds += time.perf_counter() - step_started
            if result.synced:
                self.after_step()
        if exhausted and not resumed_mid_epoch and state.step == first_step:
            raise ValueError(
                f"Epoch {state.epoch} of {cfg.dataset!r} gave no full batch of {cfg.batch_size} "
                f"images per process ({data_lib.corrupt_count(self.loader)} corrupt images "
                "skipped so far): lower --batch-size or fix the dataset."
            )
        self.end_epoch(exhausted)

    def after_step(self) -> None:
        """Progress bar, step-cadence evaluation and checkpoints."""
        step, cfg, log = self.state.step, self.cfg, self.last_log
        self.progress.update(1)
        if self._monitored(step):
            postfix = {"loss": f"{log['loss']:.4f}", "img_s": f"{log['images_per_s']:.0f}"}
            postfix.update({f"|{k[:4]}|": f"{log[f'norm/{k}']:.3g}" for k in self._names})
            postfix.update(
                {f"∠{k.split('/')[-1][:4]}": f"{v:.2g}" for k, v in log.items() if "/angle/" in k}
            )
            self.progress.set_postfix(postfix)
            self._window = (time.perf_counter(), 0)
        if cfg.eval_every and step % cfg.eval_every == 0:
            self.evaluate()
        every = self.record.checkpoint_every
        if ((every and step % every == 0) or self._checkpoint_due) and (
            step < self.record.total_steps
        ):
            self.checkpoint()

    def end_epoch(self, exhausted: bool) -> None:
        """Count corrupt images, record the epoch's norms, evaluate and checkpoint."""
        state, acc, rec = self.state, self.accelerator, self.record
        corrupt = torch.tensor(float(data_lib.corrupt_count(self.loader)), device=acc.device)
        state.corrupt_images = int(acc.reduce(corrupt, reduction="sum").item())
        done = state.step >= rec.total_steps
        # training may stop exactly at an epoch's last batch, before the stream reports its end
        epoch_end = exhausted or bool(
            rec.steps_per_epoch and done and state.step % rec.steps_per_epoch == 0
        )
        if epoch_end:
            state.epoch += 1
        if epoch_end or done:
            # records carry the number of completed epochs, like the kNN records
            summary = self.epoch_norms.reduce_across_processes(inplace=False).summary()
            self.history.append(summary, epoch=state.epoch, step=state.step, **self._epoch_angles())
            self.epoch_norms.reset()
        if not self.cfg.eval_every and epoch_end and self._eval_epoch(state.epoch):
            self.evaluate()
        if not (rec.checkpoint_every or rec.checkpoint_minutes) or done:
            self.checkpoint()

    def _eval_epoch(self, epoch: int) -> bool:
        every = self.cfg.eval_every_epochs
        if every is None:  # automatic: see _update_eval_period
            return epoch - self._last_eval_epoch >= self.eval_period
        return bool(every) and epoch % every == 0

    def _update_eval_period(self, seconds: float) -> None:
        """The automatic epoch period: one evaluation (``seconds``) per ``eval_period`` epochs
        is at most :data:`EVAL_SHARE` of the training time; the same on every process (the
        slowest's), as evaluation is a collective."""
        state, acc = self.state, self.accelerator
        self._last_eval_epoch = state.epoch
        per_epoch = state.train_seconds / state.epoch if state.epoch else 0.0
        if self.cfg.eval_every_epochs is not None or per_epoch <= 0:
            return
        period = torch.tensor(
            float(max(1, math.ceil(seconds / (EVAL_SHARE * per_epoch)))), device=acc.device
        )
        if acc.num_processes > 1:
            torch.distributed.all_reduce(period, op=torch.distributed.ReduceOp.MAX)
        self.eval_period = int(period.item())

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
    @torch.no_grad()
    def evaluate_knn(self, backbone: torch.nn.Module, *, probe: bool = False) -> dict[str, Any]:
        """Weighted kNN (and optionally a linear probe) on l2-normalised backbone features.

        A collective: every process extracts the features of its share of the evaluation sets
        (with rank 0's BatchNorm buffers), the features are gathered (each example once) and
        every process runs the kNN on its training device, so all return the same result."""
        acc = self.accelerator
        device = acc.device
        if acc.num_processes > 1:
            for buffer in backbone.buffers():  # BN running statistics: rank 0's, as saved
                torch.distributed.broadcast(buffer.data, src=0)
        features = []
        for loader in self.eval_sets:
            feats, labels = extract_features(backbone, loader, device=device)
            features += [gather_rows(feats, acc), gather_rows(labels, acc)]
        train_feats, train_labels, test_feats, test_labels = features
        result: dict[str, Any] = {
            "knn_accuracy": knn_accuracy(
                train_feats,
                train_labels,
                test_feats,
                test_labels,
                k=self.cfg.knn_k,
                temperature=self.cfg.knn_temperature,
                device=device,
            ),
            "eval_train_samples": int(train_labels.numel()),
            "eval_test_samples": int(test_labels.numel()),
        }
        if probe:
            result["linear_probe_accuracy"] = linear_probe(
                train_feats, train_labels, test_feats, test_labels
            )
        return result

    def run_baselines(self) -> None:
        """PAPER §8: the same kNN protocol at random initialisation and on raw pixels (step 0)."""
        acc = self.accelerator
        if self.eval_sets is None or not self.cfg.baselines or self.state.step != 0:
            return
        started = time.perf_counter()
        # on every process (a collective); computed once per run: the checkpoints keep them,
        # so a --resume (step > 0) does not compute them again
        self.state.baselines = {
            "random_init_knn": self.evaluate_knn(self.raw_model.backbone)["knn_accuracy"],
            "raw_pixels_knn": self.evaluate_knn(torch.nn.Flatten())["knn_accuracy"],
        }
        self.eval_seconds += time.perf_counter() - started
        acc.print(f"baselines (kNN): {self.state.baselines}")

    def evaluate(self, probe: bool = False) -> dict[str, Any] | None:
        """The kNN monitor: features extracted by every process, recorded by the main one;
        prints the share of the wall time spent in evaluation so far."""
        acc, state = self.accelerator, self.state
        if self.eval_sets is None:
            return None
        result = None
        self._check_finite()
        state.last_eval_step = state.step  # on every process, so they agree on what runs
        started = time.perf_counter()
        result = self.evaluate_knn(self.raw_model.backbone, probe=probe)
        result.update(step=state.step, epoch=state.epoch)
        seconds = time.perf_counter() - started
        self.eval_seconds += seconds
        self._update_eval_period(seconds)
        share = self.eval_seconds / max(time.perf_counter() - self.started, 1e-9)
        if acc.is_main_process:
            state.knn.append(result)
            acc.log({"knn_accuracy": result["knn_accuracy"]}, step=state.step)
        cadence = (
            f"next after {self.eval_period} epoch(s)"
            if self.cfg.eval_every_epochs is None and not self.cfg.eval_every
            else "change the cadence with --eval-every-epochs / --eval-every"
        )
        acc.print(
            f"step {state.step}: kNN accuracy {result['knn_accuracy']:.4f} (evaluation: "
            f"{100 * share:.1f} % of the wall time so far; {cadence})"
        )
        return result

    def checkpoint_state(self) -> dict[str, Any]:
        """What ``trainer_state.json`` holds (a collective: every process calls it)."""
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
        self._check_finite()
        self._checkpoint_due, self._checkpoint_clock = False, time.perf_counter()
        self.last_ckpt = save_checkpoint(
            self.accelerator,
            self.cfg.output_dir,
            self.state.step,
            self.checkpoint_state(),
            self.loader.state_dict(),
        )

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
        message = _nonfinite_message(
            bad_step,
            loss,
            self.optimizer.param_groups[0]["lr"],
            self.record.c,
            self.last_ckpt,
        )
        if set_aside:
            message += f" Step {step}'s checkpoint was moved to {set_aside}."
        return NonFiniteLossError(message)

    # -- the end ----------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Final evaluation, the run summary, save in timm's format, optional push."""
        cfg, acc, state = self.cfg, self.accelerator, self.state
        final_eval = None
        if self.stats is not None and not self._monitored(state.step):
            self.last_log = {**self.last_log, **self._step_log({})}  # the steps since the last log
        self._check_finite()
        if self.eval_sets is not None and (cfg.linear_probe or state.last_eval_step != state.step):
            final_eval = self.evaluate(probe=cfg.linear_probe)
        result = self.summary(final_eval)
        if acc.is_main_process:
            from hub_cutinit.hub import save_pretrained

            save_pretrained(self.raw_model, cfg.output_dir, training_info=result)
        acc.wait_for_everyone()  # the last collective: a slow upload cannot time out the others
        if acc.is_main_process and cfg.push_to_hub:
            from hub_cutinit.hub import push_to_hub

            push_to_hub(cfg.output_dir, cfg.push_to_hub, private=cfg.hub_private)
        acc.end_training()
        return result

    def summary(self, final_eval: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run record plus what happened: the dict ``train`` returns and config.json keeps."""
        state, cfg = self.state, self.cfg
        return {
            **self.record.to_dict(),
            "output_dir": cfg.output_dir,
            "steps": state.step,
            "epochs": state.epoch,  # completed passes over the data
            "images_seen": state.images_seen,
            "corrupt_images": state.corrupt_images,
            "wall_time_s": time.perf_counter() - self.started,
            "train_images_per_s": state.images_seen / max(state.train_seconds, 1e-9),
            "baselines": state.baselines,
            "data_config": {
                "input_size": [3, cfg.image_size, cfg.image_size],
                "crop_pct": 1.0,
                "interpolation": "bilinear",
                "mean": list(data_lib.IMAGENET_MEAN),
                "std": list(data_lib.IMAGENET_STD),
            },
            "norm_history": self.history.state_dict(),
            "final_norms": self.history.records[-1] if len(self.history) else {},
            "convergence": state.convergence,
            "knn": state.knn,
            "knn_accuracy": state.knn[-1]["knn_accuracy"] if state.knn else None,
            "linear_probe_accuracy": (final_eval or {}).get("linear_probe_accuracy"),
            "last_step": self.last_log,
        }
