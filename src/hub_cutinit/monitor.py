"""Convergence monitor: how far one optimiser step turns each embedding, next to its norm.

The paper's mechanism (PAPER §1-§2, §9): the gradient of a cosine-based loss at the embedding
``z`` is orthogonal to ``z`` and shrinks as ``1/‖z‖``, so one step of size ``lr`` turns ``z`` by an
angle ``∝ lr / ‖z‖²``. Large norms freeze the directions; cut-initialisation starts with small
ones. :class:`StepAngleMonitor` measures that angle on a *fixed* probe batch: embed the probe
before ``optimizer.step()``, embed it again after, and report per embedding (``backbone``,
``projection``, ``prediction``) the mean angle in radians and the mean norm before the step.
Reading ``angle`` against ``lr / norm²`` over a run tells whether training is norm-limited.

Cost: two forward passes of the probe batch (no backward, no autograd graph) per *logged* step,
plus a copy of the normalisation layers' running statistics; nothing on the other steps. With a
64-image probe that is about what a 32-image training step costs without its backward.

The probe forwards change nothing that training sees: they run under ``torch.no_grad``, keep the
model's train/eval mode (train-mode BatchNorm normalises with the probe's own batch statistics)
but restore every running mean/variance and ``num_batches_tracked`` in place afterwards, and run
inside a forked RNG (seeded identically for both forwards, so dropout or drop-path masks are the
same before and after and the angle measures the weights' change only). By default they run in
float32 with autocast disabled: a bf16 embedding's rounding (relative ``2⁻⁸``) would otherwise
hide angles below ~1e-3 rad (float32 embeddings resolve ~1e-7 rad). With ``SyncBatchNorm`` in train mode, call the monitor on every rank
(its forward is a collective).

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8))
    ...         self.head = nn.Linear(8, 3)
    ...     def embed(self, images):
    ...         h = self.body(images)
    ...         return {"backbone": h, "projection": self.head(h)}
    >>> _ = torch.manual_seed(0)
    >>> net = Net()
    >>> monitor = StepAngleMonitor(torch.randn(16, 1, 2, 2))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> loss = -net.embed(torch.randn(8, 1, 2, 2))["projection"][:, 0].mean()
    >>> loss.backward()
    >>> snapshot = monitor.before_step(net)
    >>> opt.step()
    >>> stats = monitor.after_step(net, snapshot)
    >>> sorted(stats)
    ['angle/backbone', 'angle/projection', 'norm/backbone', 'norm/projection']
    >>> 0 < stats["angle/projection"] < 0.5
    True
    >>> round(fit_loglog_slope([1, 2, 4], [1, 0.25, 0.0625]), 6)
    -2.0
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["StepAngleMonitor", "angle_between", "angle_norm_figure", "fit_loglog_slope"]

#: A probe batch: an image tensor ``(N, ...)`` or a dict of model inputs (``input_ids``, ...).
Probe = torch.Tensor | Mapping[str, Any]
#: ``embed(model, probe) -> {"name": (N, ...) tensor}`` (or one tensor, named ``"output"``).
EmbedFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor] | torch.Tensor]


def angle_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row angle in radians between ``a`` and ``b`` (shape ``(N, ...)``), in float64.

    Uses ``θ = 2·atan2(‖â − b̂‖, ‖â + b̂‖)`` with ``â = a/‖a‖``, accurate for angles near 0 and
    near π alike (``acos`` of the cosine loses everything below ~1e-8 rad). Rows are flattened;
    a row where either vector is zero or not finite gives NaN.

    Example:
        >>> a = torch.tensor([[1.0, 0.0]])
        >>> b = torch.tensor([[math.cos(1e-6), math.sin(1e-6)]], dtype=torch.float64)
        >>> f"{angle_between(a, b).item():.6e}"
        '1.000000e-06'
    """
    if a.shape != b.shape:
        raise ValueError(
            f"angle_between needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    a = a.detach().reshape(a.shape[0], -1).double()
    b = b.detach().reshape(b.shape[0], -1).double()
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua, ub = a / na, b / nb
    theta = 2.0 * torch.atan2((ua - ub).norm(dim=1), (ua + ub).norm(dim=1))
    bad = (na.squeeze(1) == 0) | (nb.squeeze(1) == 0) | ~torch.isfinite(theta)
    return theta.masked_fill(bad, float("nan"))


def fit_loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (the exponent ``k`` of ``y ∝ xᵏ``).

    Example:
        >>> fit_loglog_slope([0.01, 0.1, 1.0], [3e-4, 3e-3, 3e-2])
        1.0
    """
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"xs and ys must be 1-D and of equal length, got {x.shape} and {y.shape}.")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and (x > 0).all() and (y > 0).all()):
        raise ValueError(
            "A log-log fit needs finite, positive xs and ys; drop zero or NaN angles first."
        )
    if np.unique(x).size < 2:
        raise ValueError("A log-log fit needs at least two distinct xs.")
    slope = np.polyfit(np.log(x), np.log(y), 1)[0]
    return float(np.round(slope, 12))


#: The layers that may keep running statistics (timm's ``BatchNormAct2d`` is a ``BatchNorm2d``).
_RUNNING_STAT_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def _running_stat_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The buffers a train-mode forward updates: normalisation layers' running statistics."""
    buffers: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, _RUNNING_STAT_NORMS) and module.track_running_stats:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                buf = getattr(module, name, None)
                if isinstance(buf, torch.Tensor):
                    buffers.append(buf)
    return buffers


@contextlib.contextmanager
def _seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Fork the CPU RNG (and ``device``'s) and seed both: the caller's RNG state is untouched."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
        return
    backend = torch.get_device_module(device.type)
    index = device.index if device.index is not None else backend.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.default_generator.manual_seed(seed)
        pick = getattr(backend, "device", None)
        with pick(index) if pick is not None else contextlib.nullcontext():
            backend.manual_seed(seed)
        yield


class StepAngleMonitor:
    """Mean angle each embedding of a fixed probe batch turns in one optimiser step.

    Args:
        probe_images: a fixed ``(N, C, H, W)`` batch (e.g. 64 images; at least 2 for train-mode
            BatchNorm), or a dict of model inputs with a common batch dimension (e.g.
            ``{"input_ids": ..., "attention_mask": ...}``; needs ``embed``). It is moved to the
            model's device on first use; floating-point tensors also to its dtype.
        names: the embeddings to follow (keys of ``model.embed``); ``None`` follows all of them.
        full_precision: run the probe forwards in the model's parameter dtype with autocast
            disabled (default); ``False`` runs them under the caller's autocast.
        seed: the RNG seed of both probe forwards (dropout masks are the same before and after).
        embed: ``embed(model, probe) -> dict[str, Tensor] | Tensor`` (a tensor is named
            ``"output"``); ``None`` (default) calls ``model.embed(probe)``.
            :func:`hub_cutinit.convergence_monitor.default_embed` also handles plain
            ``nn.Module`` and ``transformers`` models.

    Call :meth:`before_step` after the backward and before ``optimizer.step()``, and
    :meth:`after_step` right after it, only on logged steps. Without ``embed``, ``model`` must
    have ``embed(images) -> dict[str, Tensor]`` (an :class:`~hub_cutinit.methods.base.SSLModel`);
    pass the unwrapped model (``accelerator.unwrap_model(model)``).
    """

    def __init__(
        self,
        probe_images: Probe,
        names: Sequence[str] | None = None,
        *,
        full_precision: bool = True,
        seed: int = 0,
        embed: EmbedFn | None = None,
    ) -> None:
        if _probe_rows(probe_images) < 2:
            raise ValueError("probe_images needs at least 2 images (train-mode BatchNorm).")
        self.probe: Probe = _detached(probe_images)
        self.names = tuple(names) if names is not None else None
        self.full_precision = bool(full_precision)
        self.seed = int(seed)
        self.embed_fn = embed

    def _probe_on(self, model: nn.Module) -> Probe:
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        if param is None:
            return self.probe
        dtype = param.dtype if self.full_precision else None
        self.probe = _moved(self.probe, param.device, dtype)
        return self.probe

    def _forward(self, model: nn.Module) -> Callable[[Probe], Any]:
        """The probe forward: ``model.embed`` or, when given, ``embed_fn`` bound to ``model``."""
        if self.embed_fn is not None:
            fn = self.embed_fn
            return lambda inputs: fn(model, inputs)
        embed = getattr(model, "embed", None)
        if not callable(embed):
            inner = getattr(model, "module", None)
            hint = (
                " It looks wrapped: pass accelerator.unwrap_model(model) (or model.module)."
                if callable(getattr(inner, "embed", None))
                else " Add a side-effect-free embed(images) -> {'projection': z, ...} method."
            )
            raise TypeError(f"{type(model).__name__} has no embed(images) method.{hint}")
        return embed

    @torch.no_grad()
    def embed(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The probe's embeddings, leaving weights, buffers and RNG state exactly as they were."""
        forward = self._forward(model)
        inputs = self._probe_on(model)
        device = _probe_device(inputs)
        saved = [(buf, buf.clone()) for buf in _running_stat_buffers(model)]
        precision = (
            torch.autocast(device.type, enabled=False)
            if self.full_precision and device.type in ("cpu", "cuda", "xpu", "mps")
            else contextlib.nullcontext()
        )
        try:
            with _seeded_rng(device, self.seed), precision:
                out = forward(inputs)
        finally:
            for buf, value in saved:
                buf.copy_(value)
        if isinstance(out, torch.Tensor) and self.embed_fn is not None:
            out = {"output": out}
        if not isinstance(out, Mapping):
            source = "embed" if self.embed_fn is not None else "model.embed"
            raise TypeError(f"{source} must return a dict of tensors, got {type(out).__name__}.")
        names = self.names if self.names is not None else tuple(out)
        missing = [n for n in names if n not in out]
        if missing:
            raise KeyError(f"model.embed returned {sorted(out)}, not {missing}; fix `names`.")
        return {
            n: out[n].detach().to(torch.promote_types(out[n].dtype, torch.float32)).clone()
            for n in names
        }

    def before_step(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Embed the probe before ``optimizer.step()``; pass the result to :meth:`after_step`."""
        return self.embed(model)

    def after_step(
        self, model: nn.Module, snapshot: Mapping[str, torch.Tensor]
    ) -> dict[str, float]:
        """``{"angle/<name>": mean radians turned, "norm/<name>": mean ‖z‖ before the step}``."""
        after = self.embed(model)
        stats: dict[str, float] = {}
        for name, before in snapshot.items():
            if name not in after:
                continue
            angle = torch.nanmean(angle_between(before, after[name]))
            norm = before.reshape(before.shape[0], -1).double().norm(dim=1).mean()
            stats[f"angle/{name}"] = float(angle)
            stats[f"norm/{name}"] = float(norm)
        return stats


def _probe_tensors(probe: Probe) -> list[torch.Tensor]:
    if isinstance(probe, torch.Tensor):
        return [probe]
    if isinstance(probe, Mapping):
        return [v for v in probe.values() if isinstance(v, torch.Tensor)]
    return []


def _probe_rows(probe: Probe) -> int:
    """The probe's batch size; ``ValueError`` for anything but a batch tensor or a dict of them."""
    tensors = [t for t in _probe_tensors(probe) if t.ndim >= 1]
    if (isinstance(probe, torch.Tensor) and probe.ndim < 2) or not tensors:
        raise ValueError(
            "probe_images must be a batch tensor (N, C, H, W) or a dict of batched model "
            f"inputs, got {getattr(probe, 'shape', type(probe).__name__)}; take e.g. the "
            "first 64 images of the evaluation set once and keep them fixed."
        )
    rows = {t.shape[0] for t in tensors}
    if len(rows) != 1:
        raise ValueError(f"The probe's tensors disagree on the batch size: {sorted(rows)}.")
    return rows.pop()


def _detached(probe: Probe) -> Probe:
    if isinstance(probe, torch.Tensor):
        return probe.detach()
    return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in probe.items()}


def _moved(probe: Probe, device: torch.device, dtype: torch.dtype | None) -> Probe:
    """``probe`` on ``device``, floating-point tensors in ``dtype`` (``None``: unchanged)."""

    def move(t: torch.Tensor) -> torch.Tensor:
        cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
        return t if t.device == device and t.dtype == cast else t.to(device=device, dtype=cast)

    if isinstance(probe, torch.Tensor):
        return move(probe)
    return {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in probe.items()}


def _probe_device(probe: Probe) -> torch.device:
    tensors = _probe_tensors(probe)
    return tensors[0].device if tensors else torch.device("cpu")


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps, values = [], []
    for record in history:
        value = record.get(key)
        if value is not None and "step" in record and math.isfinite(float(value)):
            steps.append(float(record["step"]))
            values.append(float(value))
    return np.asarray(steps), np.asarray(values)


def angle_norm_figure(history: Sequence[Mapping[str, Any]]) -> Any:
    """Per-step angle (log), mean norm (log) and lr against step, one panel each.

    ``history`` holds records like ``{"step": 10, "lr": 0.05, "angle/projection": 3e-3,
    "norm/projection": 4.2}``. The angle panel also draws ``k · lr / ‖z‖²`` (dashed, ``k`` the
    median ratio) per embedding: where the measured angle follows it, training is norm-limited.
    Returns a ``matplotlib.figure.Figure`` (Agg canvas, no pyplot); save it with
    :func:`hub_cutinit.plotting.save_figure` or ``fig.savefig``.

    Example:
        >>> fig = angle_norm_figure([{"step": s, "lr": 0.1, "angle/projection": 0.1 / (1 + s) ** 2,
        ...                           "norm/projection": 1.0 + s} for s in range(5)])
        >>> [ax.get_ylabel() for ax in fig.axes]
        ['angle per step (rad)', 'mean ‖z‖', 'lr']
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = sorted({k.split("/", 1)[1] for r in history for k in r if k.startswith("angle/")})
    fig = Figure(figsize=(6.0, 7.0))
    FigureCanvasAgg(fig)
    ax_angle, ax_norm, ax_lr = fig.subplots(3, 1, sharex=True)
    lr_steps, lrs = _series(history, "lr")
    for i, name in enumerate(names):
        color = f"C{i}"
        s_a, angle = _series(history, f"angle/{name}")
        s_n, norm = _series(history, f"norm/{name}")
        keep = angle > 0
        ax_angle.plot(s_a[keep], angle[keep], color=color, label=name)
        ax_norm.plot(s_n[norm > 0], norm[norm > 0], color=color, label=name)
        ref = _lr_over_norm2(history, name)
        if ref is not None:
            ax_angle.plot(ref[0], ref[1], color=color, ls="--", lw=1, label=f"∝ lr/‖z‖² ({name})")
    ax_lr.plot(lr_steps, lrs, color="k")
    for ax, label in ((ax_angle, "angle per step (rad)"), (ax_norm, "mean ‖z‖"), (ax_lr, "lr")):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if ax_angle.lines:
        ax_angle.set_yscale("log")
        ax_angle.legend(fontsize=7)
    if ax_norm.lines:
        ax_norm.set_yscale("log")
    ax_lr.set_xlabel("step")
    return fig


def _lr_over_norm2(
    history: Sequence[Mapping[str, Any]], name: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(steps, k·lr/‖z‖²)`` with ``k`` the median of ``angle·‖z‖²/lr``, or None without data."""
    rows = [
        (float(r["step"]), float(r["lr"]), float(r[f"angle/{name}"]), float(r[f"norm/{name}"]))
        for r in history
        if all(r.get(k) is not None for k in ("step", "lr", f"angle/{name}", f"norm/{name}"))
    ]
    arr = np.asarray([row for row in rows if all(math.isfinite(v) for v in row)]).reshape(-1, 4)
    arr = arr[(arr[:, 1] > 0) & (arr[:, 2] > 0) & (arr[:, 3] > 0)]
    if len(arr) == 0:
        return None
    pred = arr[:, 1] / arr[:, 3] ** 2
    return arr[:, 0], pred * float(np.median(arr[:, 2] / pred))
