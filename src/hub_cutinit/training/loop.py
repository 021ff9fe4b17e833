"""The Accelerate training loop shared by every recipe.

Read top to bottom: set-up (model, data, optimiser), optional resume, the step loop (forward,
backward, optimiser, teacher EMA, logging, kNN monitor, checkpoints), then the final save in
timm's format. Every process reads its own shard of the stream (``split_dataset_by_node`` in
:mod:`hub_cutinit.data`); the data loader is therefore *not* passed to
``accelerator.prepare`` (that would shard a second time).

Example (a few steps on the built-in dataset)::

    from hub_cutinit.training import TrainConfig, train
    result = train(TrainConfig(method="byol", max_steps=5, batch_size=16, output_dir="/tmp/x"))
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import time
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from hub_cutinit import data as data_lib
from hub_cutinit.distributed import is_distributed
from hub_cutinit.evaluation import extract_features, knn_accuracy, linear_probe
from hub_cutinit.norms import NormHistory, NormTracker
from hub_cutinit.registry import create_ssl_model
from hub_cutinit.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from hub_cutinit.training.config import TrainConfig
from hub_cutinit.training.optim import build_optimizer

__all__ = ["train", "train_step", "tune_cpu_allocator", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before applying the bad update."""


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


def train_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    views: list[torch.Tensor],
) -> tuple[Any, torch.Tensor]:
    """Forward, backward and optimiser step on one (micro-)batch of views.

    Returns the model output and the loss averaged over processes. Raises
    :class:`NonFiniteLossError` (with the loss value as its argument) *before* the backward
    pass if the loss is NaN or infinite on any process, so no bad update is applied.
    """
    with accelerator.accumulate(model):
        out = model(views)
        loss_mean = accelerator.reduce(out.loss.detach().float(), reduction="mean")
        if not torch.isfinite(loss_mean):
            raise NonFiniteLossError(float(loss_mean))
        accelerator.backward(out.loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return out, loss_mean


@torch.no_grad()
def evaluate_knn(
    backbone: torch.nn.Module,
    cfg: TrainConfig,
    eval_sets: tuple[Any, Any],
    device: torch.device,
    *,
    probe: bool = False,
) -> dict[str, float]:
    """Weighted kNN (and optionally a linear probe) on l2-normalised backbone features."""
    bank_loader, test_loader = eval_sets
    train_feats, train_labels = extract_features(backbone, bank_loader, device=device)
    test_feats, test_labels = extract_features(backbone, test_loader, device=device)
    result = {
        "knn_accuracy": knn_accuracy(
            train_feats,
            train_labels,
            test_feats,
            test_labels,
            k=cfg.knn_k,
            temperature=cfg.knn_temperature,
        ),
        "eval_train_samples": int(train_labels.numel()),
        "eval_test_samples": int(test_labels.numel()),
    }
    if probe:
        result["linear_probe_accuracy"] = linear_probe(
            train_feats, train_labels, test_feats, test_labels
        )
    return result


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.method`` with cut-initialisation; return the run summary.

    Writes checkpoints under ``cfg.output_dir/checkpoints`` and the final model in timm's
    format (``config.json``, ``model.safetensors``, heads, card) in ``cfg.output_dir``.
    """
    accelerator = Accelerator(
        # without CUDA, run on CPU: under `accelerate launch --multi_gpu` or torchrun this gives
        # a gloo process group (DistributedType.MULTI_CPU) instead of a silent single process
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        log_with=cfg.log_with,
        project_dir=cfg.output_dir,
    )
    if accelerator.device.type == "cpu":
        tune_cpu_allocator()
    if cfg.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("fp16 autocast does nothing on CPU; use --mixed-precision bf16 there.")
    set_seed(cfg.seed)
    started = time.perf_counter()

    # -- model ------------------------------------------------------------------------------
    model = create_ssl_model(cfg.method, cfg.backbone, c=cfg.c, **cfg.model_overrides())
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    hp = model.hparams
    n_global, n_local = model.num_views()

    # -- data -------------------------------------------------------------------------------
    stream = data_lib.build_train_stream(
        cfg.dataset,
        method=cfg.method,
        image_size=cfg.image_size,
        split=cfg.train_split,
        image_column=cfg.image_column,
        label_column=cfg.label_column,
        num_local_views=n_local,
        seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    num_examples = cfg.num_examples or data_lib.count_examples(stream)
    if num_examples is None and cfg.max_steps is None:
        raise ValueError(
            f"Cannot tell how many training images {cfg.dataset!r} has; pass --num-examples N "
            "or --max-steps N so the schedule knows its length."
        )
    steps_per_epoch = None
    if num_examples is not None:
        per_rank = num_examples // accelerator.num_processes
        steps_per_epoch = per_rank // (cfg.batch_size * cfg.grad_accum_steps)
        if steps_per_epoch < 1:
            raise ValueError(
                f"{num_examples} training images are too few for batch {cfg.batch_size} × "
                f"{accelerator.num_processes} processes × {cfg.grad_accum_steps} accumulation "
                "steps; lower --batch-size."
            )
    # --max-steps overrides --epochs (the stream is re-read as often as needed)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    eval_sets = None
    if cfg.eval_split:
        eval_sets = data_lib.build_eval_loaders(
            cfg.dataset,
            image_size=cfg.image_size,
            train_split=cfg.train_split,
            eval_split=cfg.eval_split,
            image_column=cfg.image_column,
            label_column=cfg.label_column,
            max_samples=cfg.eval_max_samples,
            batch_size=max(64, cfg.batch_size),
        )

    # -- optimiser, schedule ----------------------------------------------------------------
    global_batch = cfg.batch_size * accelerator.num_processes * cfg.grad_accum_steps
    lr = cfg.lr if cfg.lr is not None else float(hp["base_lr"]) * global_batch / 256
    weight_decay = cfg.weight_decay if cfg.weight_decay is not None else float(hp["weight_decay"])
    optimizer_name = cfg.optimizer or hp["optimizer"]
    optimizer, scheduler = build_optimizer(
        model,
        optimizer_name,
        lr=lr,
        weight_decay=weight_decay,
        total_steps=total_steps,
        warmup_steps=int(round(float(hp["warmup_fraction"]) * total_steps)),
        momentum=float(hp["sgd_momentum"]),
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    run_info = {
        "method": cfg.method,
        "family": raw_model.family,
        "backbone": cfg.backbone,
        "c": raw_model.cut_factor,
        "weight_decay": weight_decay,
        "lr": lr,
        "optimizer": optimizer_name,
        "global_batch_size": global_batch,
        "num_processes": accelerator.num_processes,
        "mixed_precision": cfg.mixed_precision,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "num_examples": num_examples,
    }
    if cfg.log_with:
        accelerator.init_trackers(
            "hub_cutinit", config={k: v for k, v in run_info.items() if v is not None}
        )

    # -- state, resume ----------------------------------------------------------------------
    state: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "knn": [],
        "corrupt_images": 0,
        "images_seen": 0,
        "last_eval_step": -1,
        "train_seconds": 0.0,
        "baselines": {},
    }
    history = NormHistory()
    epoch_norms = NormTracker()
    loader_state = None
    last_ckpt = None
    if cfg.resume:
        last_ckpt = latest_checkpoint(cfg.output_dir)
        if last_ckpt is None:
            accelerator.print(
                f"--resume: no complete checkpoint in {cfg.output_dir}; starting from step 0."
            )
        else:
            trainer_state, loader_state = load_checkpoint(accelerator, last_ckpt)
            state.update({k: trainer_state[k] for k in state})
            history.load_state_dict(trainer_state["history"])
            scheduler.step_update(state["step"])  # this run's schedule (e.g. a new --lr) from now
            if accelerator.is_main_process:  # the saved statistics are already global
                epoch_norms.load_state_dict(trainer_state["epoch_norms"])
            accelerator.print(
                f"Resumed from {last_ckpt} (step {state['step']}, epoch {state['epoch']})."
            )

    def trainer_state() -> dict[str, Any]:
        # a collective: every process calls it; the main process keeps the global statistics
        reduced = epoch_norms.reduce_across_processes(inplace=False)
        return {
            **state,
            "history": history.state_dict(),
            "epoch_norms": reduced.to_dict(),
            "config": cfg.to_dict(),
            "run": run_info,
        }

    def checkpoint(loader: Any) -> None:
        nonlocal last_ckpt
        last_ckpt = save_checkpoint(
            accelerator, cfg.output_dir, state["step"], trainer_state(), loader.state_dict()
        )

    def run_eval(probe: bool = False) -> dict[str, float] | None:
        if eval_sets is None:
            return None
        result = None
        state["last_eval_step"] = state["step"]  # on every process, so they agree on what runs
        if accelerator.is_main_process:
            result = evaluate_knn(
                raw_model.backbone, cfg, eval_sets, accelerator.device, probe=probe
            )
            result.update(step=state["step"], epoch=state["epoch"])
            state["knn"].append(result)
            accelerator.print(f"step {state['step']}: kNN accuracy {result['knn_accuracy']:.4f}")
            accelerator.log({"knn_accuracy": result["knn_accuracy"]}, step=state["step"])
        accelerator.wait_for_everyone()
        return result

    if eval_sets is not None and cfg.baselines and state["step"] == 0:
        if accelerator.is_main_process:  # PAPER §8: the same kNN protocol at random init, on pixels
            state["baselines"] = {
                "random_init_knn": evaluate_knn(
                    raw_model.backbone, cfg, eval_sets, accelerator.device
                )["knn_accuracy"],
                "raw_pixels_knn": evaluate_knn(
                    torch.nn.Flatten(), cfg, eval_sets, accelerator.device
                )["knn_accuracy"],
            }
            accelerator.print(f"baselines (kNN): {state['baselines']}")
        accelerator.wait_for_everyone()

    # -- training ---------------------------------------------------------------------------
    progress = tqdm(
        total=total_steps,
        initial=state["step"],
        disable=not accelerator.is_local_main_process,
        desc=f"{cfg.method} c={raw_model.cut_factor:g}",
    )
    names: list[str] | None = None
    window_start, window_images = time.perf_counter(), 0
    step_log: dict[str, float] = {}
    model.train()
    loader = data_lib.make_train_loader(
        stream, batch_size=cfg.batch_size, num_workers=cfg.num_workers
    )
    while state["step"] < total_steps:
        loader.set_epoch(state["epoch"])
        epoch_first_step, resumed_mid_epoch = state["step"], False
        if loader_state is not None:
            # a position saved in an earlier epoch (an epoch-end checkpoint) is not resumed
            if loader_state["hub_cutinit"]["epoch"] == state["epoch"]:
                loader.load_state_dict(loader_state)
                resumed_mid_epoch = True
            loader.num_corrupt = int(
                loader_state["hub_cutinit"]["num_corrupt"]
            )  # whole run, this process
            loader_state = None
        batches, exhausted = iter(loader), False
        while state["step"] < total_steps:
            step_started = time.perf_counter()
            batch = next(batches, None)
            if not _all_true(batch is not None, accelerator.device):
                exhausted = True  # some process has no full batch left: the epoch ends for all
                break
            views = [v.to(accelerator.device, non_blocking=True) for v in batch["views"]]
            try:
                out, loss_mean = train_step(accelerator, model, optimizer, views)
            except NonFiniteLossError as err:
                set_aside = None
                if last_ckpt is not None and last_ckpt.name == f"step_{state['step']:08d}":
                    # it holds the weights this loss came from (the previous step's update):
                    # --resume must not pick it up again
                    set_aside = last_ckpt.with_name(f".nonfinite-{last_ckpt.name}")
                    if accelerator.is_main_process:
                        shutil.rmtree(set_aside, ignore_errors=True)
                        os.replace(last_ckpt, set_aside)
                    accelerator.wait_for_everyone()
                    last_ckpt = latest_checkpoint(cfg.output_dir)
                moved = f" Step {state['step']}'s checkpoint was moved to {set_aside}."
                raise NonFiniteLossError(
                    _nonfinite_message(
                        state["step"] + 1,
                        float(err.args[0]),
                        optimizer.param_groups[0]["lr"],
                        raw_model.cut_factor,
                        last_ckpt,
                    )
                    + (moved if set_aside else "")
                ) from None
            embeddings = {k: v.detach() for k, v in out.embeddings.items()}
            epoch_norms.update(embeddings)
            names = names or sorted(embeddings)
            means = torch.stack(
                [embeddings[k].float().norm(dim=1).mean() for k in names] + [loss_mean]
            )
            means = accelerator.reduce(means, reduction="mean")
            window_images += views[0].shape[0] * accelerator.num_processes
            state["train_seconds"] += time.perf_counter() - step_started
            state["images_seen"] += views[0].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            scheduler.step_update(state["step"])
            raw_model.update_teacher(state["step"] / total_steps)
            elapsed = time.perf_counter() - window_start
            step_log = {
                "loss": float(means[-1]),
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": window_images / max(elapsed, 1e-9),
            }
            step_log.update({f"norm/{k}": float(v) for k, v in zip(names, means[:-1], strict=True)})
            accelerator.log(step_log, step=state["step"])
            progress.update(1)
            if state["step"] % max(1, cfg.log_every) == 0 or state["step"] == 1:
                progress.set_postfix(
                    loss=f"{step_log['loss']:.4f}",
                    img_s=f"{step_log['images_per_s']:.0f}",
                    **{f"|{k[:4]}|": f"{step_log[f'norm/{k}']:.3g}" for k in names},
                )
                window_start, window_images = time.perf_counter(), 0
            if cfg.eval_every and state["step"] % cfg.eval_every == 0:
                run_eval()
            if (
                cfg.checkpoint_every
                and state["step"] % cfg.checkpoint_every == 0
                and state["step"] < total_steps
            ):
                checkpoint(loader)
        if exhausted and not resumed_mid_epoch and state["step"] == epoch_first_step:
            raise ValueError(
                f"Epoch {state['epoch']} of {cfg.dataset!r} gave no full batch of "
                f"{cfg.batch_size} images per process ({data_lib.corrupt_count(loader)} corrupt "
                "images skipped so far): lower --batch-size or fix the dataset."
            )
        # the epoch ended (stream exhausted) or training did (total_steps reached)
        corrupt = torch.tensor(float(data_lib.corrupt_count(loader)), device=accelerator.device)
        state["corrupt_images"] = int(accelerator.reduce(corrupt, reduction="sum").item())
        # training may stop exactly at an epoch's last batch, before the stream reports its end
        epoch_end = exhausted or bool(
            steps_per_epoch
            and state["step"] >= total_steps
            and state["step"] % steps_per_epoch == 0
        )
        if epoch_end:
            state["epoch"] += 1
        if epoch_end or state["step"] >= total_steps:
            # records carry the number of completed epochs, like the kNN records
            summary = epoch_norms.reduce_across_processes(inplace=False).summary()
            history.append(summary, epoch=state["epoch"], step=state["step"])
            epoch_norms.reset()
        if not cfg.eval_every and epoch_end:
            run_eval()
        if not cfg.checkpoint_every or state["step"] >= total_steps:
            checkpoint(loader)
    progress.close()

    # -- final evaluation and save ----------------------------------------------------------
    final_eval = None
    if eval_sets is not None and (cfg.linear_probe or state["last_eval_step"] != state["step"]):
        final_eval = run_eval(probe=cfg.linear_probe)
    wall = time.perf_counter() - started
    result = {
        **run_info,
        "dataset": cfg.dataset,
        "output_dir": cfg.output_dir,
        "image_size": cfg.image_size,
        "seed": cfg.seed,
        "steps": state["step"],
        "epochs": state["epoch"],  # completed passes over the data
        "images_seen": state["images_seen"],
        "corrupt_images": state["corrupt_images"],
        "wall_time_s": wall,
        "train_images_per_s": state["images_seen"] / max(state["train_seconds"], 1e-9),
        "baselines": state["baselines"],
        "data_config": {
            "input_size": [3, cfg.image_size, cfg.image_size],
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "mean": list(data_lib.IMAGENET_MEAN),
            "std": list(data_lib.IMAGENET_STD),
        },
        "norm_history": history.state_dict(),
        "final_norms": history.records[-1] if len(history) else {},
        "knn": state["knn"],
        "knn_accuracy": state["knn"][-1]["knn_accuracy"] if state["knn"] else None,
        "linear_probe_accuracy": (final_eval or {}).get("linear_probe_accuracy"),
        "last_step": step_log,
    }
    if accelerator.is_main_process:
        from hub_cutinit.hub import save_pretrained

        save_pretrained(raw_model, cfg.output_dir, training_info=result)
        if cfg.push_to_hub:
            from hub_cutinit.hub import push_to_hub

            push_to_hub(cfg.output_dir, cfg.push_to_hub, private=cfg.hub_private)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def main(method: str | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``recipes/<method>.py``: parse flags, train, print the summary."""
    from hub_cutinit.training.config import parse_args
    from hub_cutinit.training.report import print_summary

    cfg = parse_args(method, argv)
    os.makedirs(cfg.output_dir, exist_ok=True)
    result = train(cfg)
    if PartialState().is_main_process:
        print_summary(result, cfg)
    return result
