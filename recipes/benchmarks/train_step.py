"""Images/s of hub_cutinit's training step against a hand-written loop and lightly.

Three implementations of one SimCLR / BYOL step on the same batch of random tensors, from the
same initial weights (the cut-initialised ones), with the same optimiser settings (SGD,
momentum 0.9, Nesterov as the method declares it: off for SimCLR, on for BYOL; the method's
weight decay and lr), timm backbone and heads of the same shapes:

- ``hub``: what :func:`hub_cutinit.training.train` runs per step: ``create_ssl_model`` +
  ``Accelerator(cpu=True)`` + ``build_optimizer`` + ``train_step``, then the norm statistics
  (``NormTracker.update`` and the per-step mean-norm reduce), the lr schedule and the teacher
  EMA: :meth:`HubRunner.step` calls ``Trainer.training_step`` itself;
- ``hand``: a minimal PyTorch loop: ``nn.Sequential`` heads, the loss written inline,
  ``torch.optim.SGD``, a ``torch._foreach_lerp_`` EMA;
- ``lightly``: lightly's modules (``NTXentLoss``, ``SimCLRProjectionHead``, ``ProjectionHead``
  with PAPER §7's three BYOL projector blocks (lightly's ``BYOLProjectionHead`` has two),
  ``BYOLPredictionHead``, ``NegativeCosineSimilarity``, ``update_momentum``,
  ``cosine_schedule``).

All three concatenate the two views into one backbone batch, as hub_cutinit does. Settings
that ``train()`` applies to the whole process (``tune_cpu_allocator`` when the loop has it) are
applied here too, so every implementation runs under them. The first
step's losses are compared (``first_loss``): equal values show that the three compute the same
thing. Timing: warm-up steps excluded, candidates interleaved, medians (see ``common.py``).
An A/A control (``hand_twin``, a second hand-written loop built the same way) is timed in the
same rounds: its ratio to ``hand`` should be 1, and how far it strays is the resolution of the
run (on 2 shared cores: several percent, partly per-process memory placement that more rounds
do not average away). Two ratios per pair: the paired median (the steady step; robust to this machine's noise but
blind to the convergence monitor, whose reading every ~40 steps lands in few samples) and the
all-rounds ratio ``sum(other) / sum(hub)`` (the run's images/s, the monitor amortised, noisier),
each with a 95 % bootstrap interval.

On a machine shared with other busy processes set ``OMP_WAIT_POLICY=PASSIVE`` (``make bench``
does): with libgomp's spinning default, 2 threads on 2 busy cores run up to 15x slower.

Run::

    python -m recipes.benchmarks.train_step                  # resnet18, 32 px, batch 64
    python -m recipes.benchmarks.train_step --batch-size 256 --repeats 15
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    from . import common
except ImportError:  # run as a file: python recipes/benchmarks/train_step.py
    import common

NAME = "train_step"
#: ``hand_twin`` is a second, identical hand-written loop: the A/A control (see :func:`compare`)
IMPLEMENTATIONS = ("hub", "hand", "lightly", "hand_twin")


# ------------------------------------------------------------------------------ shared bits
def make_views(
    batch_size: int,
    image_size: int,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> list[torch.Tensor]:
    """Two views of random images, ``(batch_size, 3, image_size, image_size)`` each."""
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [
        torch.randn(batch_size, 3, image_size, image_size, generator=gen)
        .to(device)
        .contiguous(memory_format=fmt)
        for _ in range(2)
    ]


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy ``src``'s parameters and buffers into ``dst`` in registration order (same shapes)."""
    src_state, dst_state = list(src.state_dict().values()), dst.state_dict()
    if len(src_state) != len(dst_state):
        raise ValueError(
            f"{type(src).__name__} has {len(src_state)} tensors, {type(dst).__name__} "
            f"{len(dst_state)}: the modules do not have the same layers"
        )
    for value, (key, target) in zip(src_state, dst_state.items(), strict=True):
        if value.shape != target.shape:
            raise ValueError(f"shape mismatch at {key}: {tuple(value.shape)} vs {target.shape}")
    dst.load_state_dict(dict(zip(dst_state, src_state, strict=True)))


def cosine_ema(base: float, progress: float) -> float:
    """EMA momentum raised from ``base`` to 1 on a half cosine (BYOL)."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


def _sgd_like(optimizer: torch.optim.Optimizer, params: Any) -> torch.optim.SGD:
    """``torch.optim.SGD`` with the settings of hub_cutinit's optimiser (timm's "sgd")."""
    group = optimizer.param_groups[0]
    return torch.optim.SGD(
        params,
        lr=group["lr"],
        momentum=group["momentum"],
        weight_decay=group["weight_decay"],
        nesterov=group["nesterov"],
    )


# ------------------------------------------------------------------------------- hub_cutinit
class HubRunner:
    """hub_cutinit's training step: :meth:`hub_cutinit.training.Trainer.training_step` itself.

    Args:
        method: ``"simclr"`` or ``"byol"`` (any registered method works).
        views: the batch, reused every step.
        accelerator: an ``accelerate.Accelerator`` (``cpu=True`` here, bf16 on GPU).
        backbone: timm model name.
        track_norms: run the norm statistics and the convergence monitor (off only to measure
            their cost).
        total_steps: length of the lr / EMA schedules.
        channels_last: put the model and the views in channels-last memory format.
        overrides: hyper-parameters for ``create_ssl_model`` (e.g. smaller heads).
    """

    name = "hub"

    def __init__(
        self,
        method: str,
        views: list[torch.Tensor],
        *,
        accelerator: Any,
        backbone: str = "resnet18",
        track_norms: bool = True,
        total_steps: int = 10_000,
        channels_last: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        from hub_cutinit.training import TrainConfig, Trainer

        cfg = TrainConfig(
            method=method,
            backbone=backbone,
            batch_size=views[0].shape[0],
            warmup_epochs=0,
            overrides=dict(overrides or {}),
            convergence_monitor=track_norms,
        )
        self.trainer = trainer = Trainer(cfg, accelerator=accelerator)
        trainer.setup_accelerator()
        trainer.setup_model()
        if channels_last:
            trainer.raw_model.to(memory_format=torch.channels_last)
        trainer.setup_optimizer(total_steps=total_steps)
        if not track_norms:  # the step minus the norm statistics, to price them
            add = trainer.add_step_statistics
            trainer.add_step_statistics = lambda embeddings, *rest: add({}, *rest)  # type: ignore[method-assign]
        self.accelerator = trainer.accelerator
        self.model, self.optimizer = trainer.model, trainer.optimizer
        self.scheduler, self.raw = trainer.scheduler, trainer.raw_model
        self.model.train()
        self.views = views
        self.track_norms = track_norms
        self.total_steps = total_steps
        self.first_loss: float | None = None
        self.last_embeddings: dict[str, torch.Tensor] = {}
        self.last_log: dict[str, float] = {}

    @property
    def steps(self) -> int:
        return self.trainer.state.step

    @property
    def tracker(self) -> Any:
        return self.trainer.epoch_norms

    def norm_statistics(self, embeddings: dict[str, torch.Tensor], loss_mean: torch.Tensor) -> Any:
        """The trainer's per-step norm work: tracker update + mean norms reduced over processes."""
        flag = torch.zeros(1, device=loss_mean.device)
        self.trainer.add_step_statistics(embeddings, loss_mean, flag, self.steps + 1)
        assert self.trainer.stats is not None
        return self.trainer.stats.sums

    def step(self) -> None:
        """One :meth:`Trainer.training_step` (data loading, tqdm and evaluation excluded)."""
        result = self.trainer.training_step(self.views)
        self.last_embeddings = result.embeddings
        if result.log:  # logged steps only (the trainer reads its statistics every --log-every)
            self.last_log = result.log
            if self.first_loss is None:
                self.first_loss = result.log["loss"]


# -------------------------------------------------------------------------------- hand-written
def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent on ``z = cat(z0, z1)``: positives are the other view of each image."""
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    labels = (torch.arange(n, device=z.device) + n // 2) % n
    return F.cross_entropy(logits, labels)


def neg_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``-mean cos(p, stopgrad(z))``."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def mlp(dims: Sequence[int], *, batch_norm: bool, last_batch_norm: bool = False) -> nn.Sequential:
    """``Linear → [BN] → ReLU`` blocks, written out by hand (same layout as the paper's heads)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        last = i == len(dims) - 2
        bn = last_batch_norm if last else batch_norm
        layers.append(nn.Linear(d_in, d_out, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm1d(d_out))
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class HandRunner:
    """A minimal hand-written PyTorch loop with the same model, loss and optimiser."""

    name = "hand"

    def __init__(
        self,
        hub: HubRunner,
        *,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        src, hp = hub.raw, hub.raw.hparams
        self.method = src.method
        self.backbone = copy.deepcopy(src.backbone)  # same timm model, same (cut) weights
        dim = src.backbone.num_features
        if self.method == "simclr":
            self.projector = mlp([dim, hp["proj_hidden_dim"], hp["proj_dim"]], batch_norm=False)
            self.temperature = float(hp["temperature"])
            self.predictor = None
        elif self.method == "byol":
            hidden, out = hp["proj_hidden_dim"], hp["proj_dim"]
            self.projector = mlp([dim, hidden, hidden, out], batch_norm=True, last_batch_norm=True)
            self.predictor = mlp([out, hp["pred_hidden_dim"], out], batch_norm=True)
            copy_weights(src.predictor, self.predictor)
        else:
            raise ValueError(f"the hand-written loop has simclr and byol, not {self.method!r}")
        copy_weights(src.projector, self.projector)
        parts = [self.backbone, self.projector] + [self.predictor] * (self.predictor is not None)
        self.student = nn.ModuleList(parts)
        device = hub.accelerator.device
        self.student.to(device)
        if channels_last:
            self.student.to(memory_format=torch.channels_last)
        self.teacher: nn.ModuleList | None = None
        if self.method == "byol":
            self.teacher = copy.deepcopy(nn.ModuleList([self.backbone, self.projector]))
            self.teacher.requires_grad_(False)
            self.teacher_params = list(self.teacher.parameters())
            self.ema_params = list(nn.ModuleList([self.backbone, self.projector]).parameters())
            self.base_momentum = float(hp["momentum"])
        self.optimizer = _sgd_like(hub.optimizer, self.student.parameters())
        self.views = hub.views
        self.device_type = torch.device(device).type
        self.autocast_dtype = autocast_dtype
        self.total_steps = hub.total_steps
        self.steps = 0
        self.first_loss: float | None = None

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views)
        z = self.projector(self.backbone(x))
        if self.method == "simclr":
            return nt_xent(z.float(), self.temperature)
        p0, p1 = self.predictor(z).float().chunk(2)
        with torch.no_grad():
            t0, t1 = self.teacher[1](self.teacher[0](x)).float().chunk(2)
        return 0.5 * (neg_cosine(p0, t1) + neg_cosine(p1, t0))

    def step(self) -> None:
        """Forward, backward, SGD step, EMA."""
        if self.autocast_dtype is not None:
            with torch.autocast(self.device_type, dtype=self.autocast_dtype):
                loss = self.loss(self.views)
        else:
            loss = self.loss(self.views)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        if self.teacher is not None:
            m = cosine_ema(self.base_momentum, self.steps / self.total_steps)
            with torch.no_grad():
                torch._foreach_lerp_(self.teacher_params, self.ema_params, 1.0 - m)
        if self.first_loss is None:
            self.first_loss = float(loss.detach())


# ------------------------------------------------------------------------------------ lightly
def lightly_available() -> str | None:
    """``None`` when lightly can be imported, else the reason it cannot."""
    try:
        import lightly  # noqa: F401
        from lightly.models.modules import heads  # noqa: F401
    except Exception as err:  # ImportError, or a broken dependency
        return f"{type(err).__name__}: {err}"
    return None


class LightlyRunner:
    """The same step written with lightly's modules (the way lightly's examples are)."""

    name = "lightly"

    def __init__(
        self,
        hub: HubRunner,
        *,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        from lightly.loss import NegativeCosineSimilarity, NTXentLoss
        from lightly.models.modules import BYOLPredictionHead, SimCLRProjectionHead
        from lightly.models.modules.heads import ProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        src, hp = hub.raw, hub.raw.hparams
        self.method = src.method
        self.backbone = copy.deepcopy(src.backbone)
        dim = src.backbone.num_features
        self.predictor = None
        if self.method == "simclr":
            self.projector = SimCLRProjectionHead(
                dim, hp["proj_hidden_dim"], hp["proj_dim"], batch_norm=False
            )
            self.criterion = NTXentLoss(temperature=float(hp["temperature"]))
        elif self.method == "byol":
            hidden, out = hp["proj_hidden_dim"], hp["proj_dim"]
            self.projector = ProjectionHead(
                [
                    (dim, hidden, nn.BatchNorm1d(hidden), nn.ReLU()),
                    (hidden, hidden, nn.BatchNorm1d(hidden), nn.ReLU()),
                    (hidden, out, nn.BatchNorm1d(out), None),
                ]
            )
            self.predictor = BYOLPredictionHead(out, hp["pred_hidden_dim"], out)
            copy_weights(src.predictor, self.predictor)
            self.criterion = NegativeCosineSimilarity()
        else:
            raise ValueError(f"the lightly loop has simclr and byol, not {self.method!r}")
        copy_weights(src.projector, self.projector)
        parts = [self.backbone, self.projector] + [self.predictor] * (self.predictor is not None)
        self.student = nn.ModuleList(parts)
        self.student.to(hub.accelerator.device)
        if channels_last:
            self.student.to(memory_format=torch.channels_last)
        if self.method == "byol":
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projector_momentum = copy.deepcopy(self.projector)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projector_momentum)
            self.base_momentum = float(hp["momentum"])
        self.optimizer = _sgd_like(hub.optimizer, self.student.parameters())
        self.views = hub.views
        self.device_type = torch.device(hub.accelerator.device).type
        self.autocast_dtype = autocast_dtype
        self.total_steps = hub.total_steps
        self.steps = 0
        self.first_loss: float | None = None

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views)
        z = self.projector(self.backbone(x))
        if self.method == "simclr":
            z0, z1 = z.float().chunk(2)
            return self.criterion(z0, z1)
        p0, p1 = self.predictor(z).float().chunk(2)
        with torch.no_grad():
            t0, t1 = self.projector_momentum(self.backbone_momentum(x)).float().chunk(2)
        return 0.5 * (self.criterion(p0, t1.detach()) + self.criterion(p1, t0.detach()))

    def step(self) -> None:
        """Forward, backward, SGD step, ``update_momentum``."""
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        if self.autocast_dtype is not None:
            with torch.autocast(self.device_type, dtype=self.autocast_dtype):
                loss = self.loss(self.views)
        else:
            loss = self.loss(self.views)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        if self.method == "byol":
            m = cosine_schedule(self.steps, self.total_steps, self.base_momentum, 1.0)
            update_momentum(self.backbone, self.backbone_momentum, m=m)
            update_momentum(self.projector, self.projector_momentum, m=m)
        if self.first_loss is None:
            self.first_loss = float(loss.detach())


# ---------------------------------------------------------------------------------- harness
def build_runners(
    method: str,
    *,
    accelerator: Any,
    batch_size: int,
    image_size: int,
    backbone: str = "resnet18",
    implementations: Sequence[str] = IMPLEMENTATIONS,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    seed: int = 0,
    track_norms: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The runners of ``implementations`` for one method, sharing weights and batch."""
    torch.manual_seed(seed)
    views = make_views(
        batch_size, image_size, seed=seed, device=accelerator.device, channels_last=channels_last
    )
    hub = HubRunner(
        method,
        views,
        accelerator=accelerator,
        backbone=backbone,
        channels_last=channels_last,
        track_norms=track_norms,
        overrides=overrides,
    )
    runners: dict[str, Any] = {}
    kwargs = {"autocast_dtype": autocast_dtype, "channels_last": channels_last}
    for impl in implementations:
        if impl == "hub":
            runners["hub"] = hub
        elif impl in ("hand", "hand_twin"):
            runners[impl] = HandRunner(hub, **kwargs)
        elif impl == "lightly":
            runners["lightly"] = LightlyRunner(hub, **kwargs)
        else:
            raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLEMENTATIONS}")
    return runners


def compare(
    runners: dict[str, Any],
    *,
    batch_size: int,
    repeats: int,
    inner: int,
    warmup: int,
    sync: Any = None,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Interleaved timing of the runners; images/s summaries and ratios against ``hub``."""
    samples = interleaved_steps(
        runners, repeats=repeats, inner=inner, warmup=warmup, sync=sync, budget_s=budget_s
    )
    ips = {k: [batch_size / s for s in v] for k, v in samples.items()}
    result: dict[str, Any] = {
        "step_s": samples,
        "images_per_s": {k: common.summarize(v) for k, v in ips.items()},
        "ratios": {},
        "first_loss": {k: r.first_loss for k, r in runners.items()},
    }
    for other in runners:
        if other not in ("hub", "hand_twin") and "hub" in runners:
            result["ratios"][f"hub_vs_{other}"] = {
                **common.ratio(ips["hub"], ips[other]),
                **common.total_time_ratio(samples["hub"], samples[other]),
            }
    if {"hand", "hand_twin"} <= set(runners):  # two identical loops: the noise floor
        result["control"] = {
            **common.ratio(ips["hand_twin"], ips["hand"]),
            **common.total_time_ratio(samples["hand_twin"], samples["hand"]),
        }
    losses = [v for v in result["first_loss"].values() if v is not None]
    if losses:
        spread = max(losses) - min(losses)
        result["first_loss_spread"] = spread
        result["same_computation"] = bool(spread <= 1e-4 * max(1.0, abs(statistics.mean(losses))))
    return result


def interleaved_steps(
    runners: dict[str, Any],
    *,
    repeats: int,
    inner: int,
    warmup: int,
    sync: Any = None,
    budget_s: float | None = None,
) -> dict[str, list[float]]:
    """Seconds per step of each runner (:func:`common.interleaved`; ``sync`` e.g. CUDA)."""
    hook = (lambda _name: sync()) if sync is not None else None
    return common.interleaved(
        {k: r.step for k, r in runners.items()},
        repeats=repeats,
        inner=inner,
        warmup=warmup,
        before_sample=hook,
        after_sample=hook,
        budget_s=budget_s,
    )


def ratio_rows(
    metric: str, value: float, interval: Sequence[float], target: float | None
) -> list[dict[str, Any]]:
    """Two summary rows: the ratio (against ``target`` when given; ``None``: the A/A control,
    whose target is the noise floor) and its 95 % interval."""
    low, high = interval
    checked = (
        {"target": f">= {target:g}", "ok": value >= target}
        if target is not None
        else {"target": "the noise floor"}
    )
    return [
        common.row(NAME, metric, value, unit="x", **checked),
        common.row(NAME, f"{metric} 95% interval", f"{low:.3f}-{high:.3f}", unit="x"),
    ]


def summary_rows(method: str, res: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary rows of one method's result (:func:`compare`'s dict plus ``rounds``)."""
    rows: list[dict[str, Any]] = []
    for impl, summary in res["images_per_s"].items():
        rows.append(common.row(NAME, f"{method} {impl} images/s", summary["median"]))
    targets = {"hub_vs_hand": 0.98, "hub_vs_lightly": 1.0}
    for key, value in res["ratios"].items():
        pair, target = key.replace("_vs_", "/"), targets.get(key, 0.0)
        rows += ratio_rows(
            f"{method} {pair} images/s", value["paired_median"], value["paired_ci95"], target
        )
        rows += ratio_rows(
            f"{method} {pair} all rounds (monitor amortised)",
            value["total_ratio"],
            value["total_ci95"],
            target,
        )
    if "control" in res:
        control = res["control"]
        rows += ratio_rows(
            f"{method} A/A control: hand_twin/hand (identical loops)",
            control["paired_median"],
            control["paired_ci95"],
            None,
        )
    if "same_computation" in res:
        rows.append(
            common.row(
                NAME,
                f"{method} first-step loss spread",
                res["first_loss_spread"],
                target="<= 1e-4",
                ok=res["same_computation"],
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the table, write ``results/train_step.json``; return the result."""
    parser = common.base_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--inner", type=int, default=None, help="steps per timed sample")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per runner")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=150.0,
        help="per method: stop adding rounds after this many seconds (at least 3 rounds)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size = min(args.batch_size, 16)
    repeats = args.repeats or (2 if args.quick else 30)
    inner = args.inner or (1 if args.quick else 2)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    common.setup_threads(args.threads)

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    implementations = list(args.implementations)
    skipped = {}
    if "lightly" in implementations and (reason := lightly_available()):
        implementations.remove("lightly")
        skipped["lightly"] = reason
        print(f"train_step: lightly skipped ({reason}); install it with pip install -e '.[bench]'")

    result: dict[str, Any] = {
        "config": {
            "backbone": args.backbone,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "repeats": repeats,
            "inner": inner,
            "warmup": warmup,
            "budget_s": args.budget_s,
            "implementations": implementations,
            "quick": args.quick,
        },
        "skipped": skipped,
        "methods": {},
    }
    rows = []
    for method in args.methods:
        runners = build_runners(
            method,
            accelerator=accelerator,
            batch_size=args.batch_size,
            image_size=args.image_size,
            backbone=args.backbone,
            implementations=implementations,
        )
        res = compare(
            runners,
            batch_size=args.batch_size,
            repeats=repeats,
            inner=inner,
            warmup=warmup,
            budget_s=args.budget_s,
        )
        res["rounds"] = len(res["step_s"]["hub"])
        result["methods"][method] = res
        rows += summary_rows(method, res)
        del runners
    result["summary"] = rows
    print(common.format_table(rows))
    return common.save_result(NAME, result, args.out)


if __name__ == "__main__":
    main()
