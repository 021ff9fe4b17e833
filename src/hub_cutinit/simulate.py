"""The paper's simulations (PAPER §6, experiments A, B, C and E) as CSV + PNG.

Each ``simulate_*`` function is seeded, runs on the CPU in seconds, returns its rows (a list of
plain dicts) and, given ``out_dir``, writes ``<name>.csv`` (header row, one row per setting) and
``<name>.png`` there. ``register_cli`` adds the ``hub-cutinit simulate`` sub-command.

Step sizes. Experiments A and B follow the paper: plain SGD with ``lr = 10`` on the loss
``−mean cos`` over 500 pairs of free embeddings. Because the loss is a *mean*, each pair's own
``−cos`` sees the step ``γ = lr / n_pairs = 0.02``; that is the ``γ`` of the closed form
``T ≈ (ρ²/2γ) ln(tan(φ₀/2)/tan(ε/2))`` (:func:`hub_cutinit.theory.predicted_steps`), and the
reason the runs stay in the smooth regime (a per-pair step of 10 would blow the norms up in one
step). Pass ``reduction="sum"`` to apply ``lr`` to every pair directly.

Example:
    >>> rows = simulate_norm_sweep(rhos=(1.0, 2.0), n_pairs=20, lr=0.4, seed=0)
    >>> [row["rho"] for row in rows], rows[1]["steps"] > 3 * rows[0]["steps"]
    ([1.0, 2.0], True)
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from hub_cutinit.plotting import new_figure, save_figure
from hub_cutinit.theory import angle_from_tolerance, infonce_loss, predicted_steps

__all__ = [
    "DEFAULT_RHOS",
    "DEFAULT_ANGLES",
    "simulate_norm_sweep",
    "simulate_angle_sweep",
    "simulate_infonce_norm_growth",
    "simulate_opposite_halves",
    "fit_loglog_slope",
    "write_csv",
    "register_cli",
]

#: Experiment A's norms: 0.25, 0.5, 0.75, 1, 2, ..., 10 (PAPER §6 A).
DEFAULT_RHOS: tuple[float, ...] = (0.25, 0.5, 0.75) + tuple(float(r) for r in range(1, 11))
#: Experiment B's starting angles (radians), from about 0 to about π.
DEFAULT_ANGLES: tuple[float, ...] = tuple(
    float(a) for a in np.round(np.linspace(0.05, math.pi - 0.02, 16), 4)
)
INFONCE_VARIANTS = ("attractive", "repulsive", "full")
Rows = list[dict]


# --- shared helpers ------------------------------------------------------------------------


def write_csv(rows: Rows, path: str | Path) -> Path:
    """Write ``rows`` (dicts with the same keys) to ``path`` with a header row; return the path.

    Example:
        >>> import tempfile, pathlib
        >>> p = write_csv([{"a": 1, "b": 2.5}], pathlib.Path(tempfile.mkdtemp()) / "x.csv")
        >>> p.read_text().splitlines()
        ['a,b', '1,2.5']
    """
    if not rows:
        raise ValueError("No rows to write; run the simulation with at least one setting.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def fit_loglog_slope(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (the exponent of ``y ∝ x^k``).

    Example:
        >>> round(fit_loglog_slope([1, 2, 4], [3, 12, 48]), 6)
        2.0
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = (xs > 0) & (ys > 0) & np.isfinite(ys)
    if keep.sum() < 2:
        raise ValueError("Need at least two positive, finite points to fit a log-log slope.")
    return float(np.polyfit(np.log(xs[keep]), np.log(ys[keep]), 1)[0])


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 4.0)):
    """A pyplot-free Agg figure (:func:`hub_cutinit.plotting.new_figure`), constrained layout."""
    figsize = (size[0] * ncols, size[1] * nrows)
    return new_figure(nrows, ncols, figsize=figsize, layout="constrained")


def _save(rows: Rows, fig, out_dir: str | Path | None, name: str) -> None:
    if out_dir is None:
        return
    out = Path(out_dir)
    write_csv(rows, out / f"{name}.csv")
    save_figure(fig, out / f"{name}.png", dpi=120)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def _pair_cos(z: torch.Tensor) -> torch.Tensor:
    """Cosine of each pair in ``z`` of shape ``(n_pairs, 2, d)``."""
    return (_unit_rows(z[:, 0]) * _unit_rows(z[:, 1])).sum(-1)


def _population_angle(cos0: torch.Tensor) -> float:
    """One starting angle that predicts when the *mean* cosine of many pairs reaches ``1 − tol``.

    Every pair follows ``tan(φ_t/2) = tan(φ₀/2) e^{−2γt/ρ²}`` and ``1 − cos φ ≈ 2 tan²(φ/2)``
    near 0, so ``mean(1 − cos φ_t)`` behaves like a single pair started at
    ``φ_eff = 2 arctan sqrt(mean tan²(φ₀/2))``.
    """
    half_tan_sq = (1 - cos0) / (1 + cos0)  # tan²(φ/2)
    return float(2 * torch.arctan(torch.sqrt(half_tan_sq.mean())))


def _align_pairs(
    z: torch.Tensor,
    lr: float,
    *,
    tol: float,
    max_steps: int,
    reduction: str,
    stop_at_tol: bool = True,
    record: bool = False,
    keep: Sequence[int] = (),
) -> dict:
    """Plain SGD on free pair embeddings ``z (n_pairs, 2, d)`` with loss ``−mean/sum cos``.

    Returns ``steps`` (SGD steps taken before the mean cosine first reached ``1 − tol``),
    ``converged``, the final ``z``, with ``record`` the per-pair cosines before the first and
    after every step (``history``), and ``kept``: the embeddings after each step listed in ``keep``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' (the paper) or 'sum', got {reduction!r}.")
    z = z.detach().clone()
    history = [_pair_cos(z)] if record else []
    kept = {0: z.clone()} if 0 in keep else {}
    steps = 0
    while steps < max_steps:
        if stop_at_tol and float(_pair_cos(z).mean()) >= 1 - tol:
            break
        z.requires_grad_(True)
        cos = F.cosine_similarity(z[:, 0], z[:, 1], dim=-1)
        loss = -(cos.mean() if reduction == "mean" else cos.sum())
        (grad,) = torch.autograd.grad(loss, z)
        z = (z - lr * grad).detach()
        steps += 1
        if record:
            history.append(_pair_cos(z))
        if steps in keep:
            kept[steps] = z.clone()
    converged = float(_pair_cos(z).mean()) >= 1 - tol
    return {"steps": steps, "converged": converged, "z": z, "history": history, "kept": kept}


def _pairs_at_angles(angles: torch.Tensor, dim: int, gen: torch.Generator) -> torch.Tensor:
    """Unit pairs ``(n, 2, dim)`` whose two points are exactly ``angles`` apart (random plane)."""
    u = _unit_rows(torch.randn(len(angles), dim, generator=gen, dtype=torch.float64))
    v = torch.randn(len(angles), dim, generator=gen, dtype=torch.float64)
    v = _unit_rows(v - (v * u).sum(-1, keepdim=True) * u)
    second = torch.cos(angles)[:, None] * u + torch.sin(angles)[:, None] * v
    return torch.stack([u, second], dim=1)


def _effective_lr(lr: float, n_pairs: int, reduction: str) -> float:
    return lr / n_pairs if reduction == "mean" else lr


# --- A: norm sweep -------------------------------------------------------------------------


def simulate_norm_sweep(
    rhos: Sequence[float] = DEFAULT_RHOS,
    n_pairs: int = 500,
    dim: int = 20,
    lr: float = 10.0,
    tol: float = 1e-3,
    max_steps: int = 200_000,
    seed: int = 0,
    *,
    reduction: str = "mean",
    out_dir: str | Path | None = None,
) -> Rows:
    """Experiment A (paper Fig. 2 left): steps to align positive pairs grow as ``ρ²``.

    ``n_pairs`` pairs of free embeddings in ``R^dim`` with random Gaussian directions (the same
    directions for every ``ρ``), both points scaled to norm ``ρ``; plain SGD with ``lr`` on
    ``−mean cos`` until the mean cosine reaches ``1 − tol``. Each row holds the measured
    ``steps`` and ``predicted_steps`` = :func:`~hub_cutinit.theory.predicted_steps` with
    ``γ = lr / n_pairs`` (see the module docstring), ``ε = arccos(1 − tol)`` and the population
    angle ``φ_eff = 2 arctan sqrt(mean tan²(φ₀/2))``. The estimate ignores the norm growth
    during training, so it is a slight underestimate at small ``ρ``.
    Writes ``norm_sweep.csv`` / ``.png`` into ``out_dir`` when given.

    Example:
        >>> rows = simulate_norm_sweep(rhos=(1.0,), n_pairs=10, lr=0.2)
        >>> sorted(rows[0])[:4]
        ['converged', 'final_mean_cos', 'final_mean_norm', 'phi0_eff']
    """
    gen = torch.Generator().manual_seed(seed)
    directions = _unit_rows(torch.randn(n_pairs, 2, dim, generator=gen, dtype=torch.float64))
    gamma = _effective_lr(lr, n_pairs, reduction)
    eps = angle_from_tolerance(tol)
    phi_eff = _population_angle(_pair_cos(directions))
    rows: Rows = []
    for rho in rhos:
        start = time.perf_counter()
        result = _align_pairs(
            float(rho) * directions, lr, tol=tol, max_steps=max_steps, reduction=reduction
        )
        z = result["z"]
        rows.append(
            {
                "rho": float(rho),
                "steps": result["steps"],
                "predicted_steps": round(predicted_steps(float(rho), phi_eff, gamma, eps), 2),
                "converged": result["converged"],
                "phi0_eff": round(phi_eff, 6),
                "final_mean_cos": float(_pair_cos(z).mean()),
                "final_mean_norm": float(torch.linalg.vector_norm(z, dim=-1).mean()),
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
    if out_dir is not None:
        _save(rows, _plot_norm_sweep(rows, n_pairs, dim, lr), out_dir, "norm_sweep")
    return rows


def _plot_norm_sweep(rows: Rows, n_pairs: int, dim: int, lr: float):
    fig, axes = _figure()
    ax = axes[0, 0]
    rho = np.array([r["rho"] for r in rows])
    steps = np.array([r["steps"] for r in rows], dtype=float)
    ax.loglog(rho, steps, "o-", label="measured")
    ax.loglog(
        rho, [r["predicted_steps"] for r in rows], "k--", label="(ρ²/2γ) ln(tan φ₀/2 / tan ε/2)"
    )
    title = f"{n_pairs} pairs, d={dim}, lr={lr} on −mean cos"
    big = rho >= 1
    if big.sum() >= 2:
        title += f"\nfitted exponent (ρ ≥ 1): {fit_loglog_slope(rho[big], steps[big]):.2f}"
    ax.set(xlabel="embedding norm ρ", ylabel="steps to mean cos ≥ 1 − tol", title=title)
    ax.legend()
    return fig


# --- B: angle sweep ------------------------------------------------------------------------


def simulate_angle_sweep(
    angles: Sequence[float] = DEFAULT_ANGLES,
    n_pairs: int = 500,
    dim: int = 20,
    lr: float = 10.0,
    tol: float = 1e-3,
    max_steps: int = 200_000,
    seed: int = 0,
    *,
    jitter: float = 0.0,
    reduction: str = "mean",
    out_dir: str | Path | None = None,
) -> Rows:
    """Experiment B (paper Fig. 2 right): steps rise only slowly (log-like) as ``φ₀ → π``.

    Unit-norm pairs whose two points start ``angle`` apart (each pair in its own random plane;
    ``jitter`` adds Gaussian noise of that std to every pair's angle, clipped to ``[0, π]``, so
    ``angle`` is the mean). Same optimiser and stopping rule as :func:`simulate_norm_sweep`.
    Exactly antipodal pairs never move (zero gradient), so keep the angles below π.
    Writes ``angle_sweep.csv`` / ``.png``.

    Example:
        >>> rows = simulate_angle_sweep(angles=(0.5, 3.0), n_pairs=10, lr=0.2)
        >>> rows[0]["steps"] < rows[1]["steps"]
        True
    """
    gen = torch.Generator().manual_seed(seed)
    gamma = _effective_lr(lr, n_pairs, reduction)
    eps = angle_from_tolerance(tol)
    rows: Rows = []
    for angle in angles:
        start = time.perf_counter()
        per_pair = torch.full((n_pairs,), float(angle), dtype=torch.float64)
        if jitter:
            per_pair = per_pair + jitter * torch.randn(n_pairs, generator=gen, dtype=torch.float64)
            per_pair = per_pair.clamp(0.0, math.pi)
        z0 = _pairs_at_angles(per_pair, dim, gen)
        phi_eff = _population_angle(_pair_cos(z0))
        result = _align_pairs(z0, lr, tol=tol, max_steps=max_steps, reduction=reduction)
        z = result["z"]
        rows.append(
            {
                "angle": float(angle),
                "angle_deg": round(math.degrees(float(angle)), 3),
                "steps": result["steps"],
                "predicted_steps": round(predicted_steps(1.0, phi_eff, gamma, eps), 2),
                "converged": result["converged"],
                "final_mean_cos": float(_pair_cos(z).mean()),
                "final_mean_norm": float(torch.linalg.vector_norm(z, dim=-1).mean()),
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
    if out_dir is not None:
        _save(rows, _plot_angle_sweep(rows, n_pairs, dim, lr), out_dir, "angle_sweep")
    return rows


def _plot_angle_sweep(rows: Rows, n_pairs: int, dim: int, lr: float):
    fig, axes = _figure()
    ax = axes[0, 0]
    deg = [r["angle_deg"] for r in rows]
    ax.plot(deg, [r["steps"] for r in rows], "o-", label="measured")
    ax.plot(deg, [r["predicted_steps"] for r in rows], "k--", label="predicted (ρ = 1)")
    ax.set(
        xlabel="starting angle between positives (degrees)",
        ylabel="steps to mean cos ≥ 1 − tol",
        title=f"unit norms, {n_pairs} pairs, d={dim}, lr={lr} on −mean cos",
    )
    ax.legend()
    return fig


# --- C: norm growth under InfoNCE subsets --------------------------------------------------


def _synthetic_views(
    n_samples: int, input_dim: int, n_clusters: int, gen: torch.Generator
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Clustered Gaussian data and a random 'augmentation' (feature dropout + noise)."""
    centers = 2.0 * torch.randn(n_clusters, input_dim, generator=gen)
    labels = torch.randint(0, n_clusters, (n_samples,), generator=gen)
    data = centers[labels] + torch.randn(n_samples, input_dim, generator=gen)

    def augment(x: torch.Tensor) -> torch.Tensor:
        keep = (torch.rand(x.shape, generator=gen) > 0.2).to(x.dtype)
        return (x + 0.5 * torch.randn(x.shape, generator=gen)) * keep

    return data, augment


class _FreeEmbeddings(nn.Module):
    """One free embedding per (sample, view): the 'model' of the theory (PAPER §2)."""

    def __init__(self, n_samples: int, dim: int, gen: torch.Generator) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(2, n_samples, dim, generator=gen) / math.sqrt(dim))


def _embed_all(net: nn.Module, data: torch.Tensor) -> torch.Tensor:
    """Embeddings of every sample (both views for free embeddings), without gradient."""
    with torch.no_grad():
        if isinstance(net, _FreeEmbeddings):
            return net.table.detach().reshape(-1, net.table.shape[-1])
        return net(data)


def _infonce_net(
    model: str,
    n_samples: int,
    dims: tuple[int, int, int],
    seed: int,
    gen: torch.Generator,
) -> nn.Module:
    """Experiment C's model: a seeded 3-layer MLP (``dims`` = input, hidden, out) or free embeddings."""
    input_dim, hidden_dim, out_dim = dims
    if model == "mlp":
        with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG untouched
            torch.manual_seed(seed)
            return nn.Sequential(
                nn.Linear(input_dim, hidden_dim),
                nn.ReLU(),
                nn.Linear(hidden_dim, hidden_dim),
                nn.ReLU(),
                nn.Linear(hidden_dim, out_dim),
            )
    return _FreeEmbeddings(n_samples, out_dim, gen)


def _infonce_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: torch.Tensor,
    augment: Callable[[torch.Tensor], torch.Tensor],
    gen: torch.Generator,
    *,
    batch_size: int,
    temperature: float,
    variant: str,
) -> list[float]:
    """One shuffled pass of SGD on the InfoNCE ``variant``; returns the batch losses."""
    n_samples = len(data)
    losses: list[float] = []
    order = torch.randperm(n_samples, generator=gen)
    for begin in range(0, n_samples - 1, batch_size):
        idx = order[begin : begin + batch_size]
        if len(idx) < 2:
            continue
        if isinstance(net, _FreeEmbeddings):
            z = torch.cat([net.table[0, idx], net.table[1, idx]])
        else:
            z = net(torch.cat([augment(data[idx]), augment(data[idx])]))
        loss = infonce_loss(z, temperature=temperature, part=variant).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def simulate_infonce_norm_growth(
    variants: Sequence[str] = INFONCE_VARIANTS,
    model: str = "mlp",
    n_samples: int = 1024,
    input_dim: int = 32,
    hidden_dim: int = 64,
    out_dim: int = 16,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    temperature: float = 0.5,
    seed: int = 0,
    *,
    out_dir: str | Path | None = None,
) -> Rows:
    """Experiment C (paper Fig. 3 left): InfoNCE's terms each grow the embedding norms.

    A tiny SimCLR without images: ``model="mlp"`` trains a 3-layer MLP
    (``input_dim → hidden → hidden → out_dim``) on clustered Gaussian data, the two views being
    random feature dropout + noise; ``model="free"`` trains one free embedding per sample and view
    (where PAPER §2's identity makes growth certain under plain SGD). Loss:
    :func:`~hub_cutinit.theory.infonce_loss` averaged over the ``2B`` anchors of each batch with
    ``part`` = each of ``variants`` (``"attractive"``: ``−ẑ_iᵀẑ_j/τ`` only, ``"repulsive"``: the
    log-sum-exp only, ``"full"``). SGD with ``lr`` (default 0.5 for the MLP, 50 for free
    embeddings), ``momentum`` and ``weight_decay`` (0: the norms grow; raise it to see the
    equilibrium). Rows: ``variant, epoch, mean_norm, std_norm, loss`` with epoch 0 the
    initialisation; the norm is the mean ``‖z‖`` over both views of every sample (for the MLP,
    of un-augmented inputs). Writes ``infonce_norm_growth.csv`` / ``.png``.

    Example:
        >>> rows = simulate_infonce_norm_growth(("full",), n_samples=64, epochs=2, batch_size=32)
        >>> [r["epoch"] for r in rows], rows[-1]["mean_norm"] > rows[0]["mean_norm"]
        ([0, 1, 2], True)
    """
    if model not in ("mlp", "free"):
        raise ValueError(f"model must be 'mlp' or 'free', got {model!r}.")
    unknown = set(variants) - set(INFONCE_VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {INFONCE_VARIANTS}.")
    if lr is None:
        lr = 0.5 if model == "mlp" else 50.0
    rows: Rows = []
    for variant in variants:
        gen = torch.Generator().manual_seed(seed)  # same data, init and batches for each variant
        data, augment = _synthetic_views(n_samples, input_dim, 10, gen)
        net = _infonce_net(model, n_samples, (input_dim, hidden_dim, out_dim), seed, gen)
        optimizer = torch.optim.SGD(
            net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        losses: list[float] = []
        for epoch in range(epochs + 1):
            norms = torch.linalg.vector_norm(_embed_all(net, data), dim=-1)
            rows.append(
                {
                    "variant": variant,
                    "epoch": epoch,
                    "mean_norm": float(norms.mean()),
                    "std_norm": float(norms.std()),
                    "loss": float(np.mean(losses)) if losses else float("nan"),
                }
            )
            if epoch == epochs:
                break
            losses = _infonce_epoch(
                net,
                optimizer,
                data,
                augment,
                gen,
                batch_size=batch_size,
                temperature=temperature,
                variant=variant,
            )
    if out_dir is not None:
        fig = _plot_infonce(rows, model, lr, momentum, weight_decay)
        _save(rows, fig, out_dir, "infonce_norm_growth")
    return rows


def _plot_infonce(rows: Rows, model: str, lr: float, momentum: float, weight_decay: float):
    fig, axes = _figure()
    ax = axes[0, 0]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        ax.plot(
            [r["epoch"] for r in mine], [r["mean_norm"] for r in mine], "o-", ms=3, label=variant
        )
    ax.set(
        xlabel="epoch",
        ylabel="mean embedding norm ‖z‖",
        title=f"InfoNCE terms ({model}), SGD lr={lr}, momentum={momentum}, wd={weight_decay}",
    )
    ax.legend(title="loss")
    return fig


# --- E: opposite halves in 2-D -------------------------------------------------------------


def simulate_opposite_halves(
    n_pairs: int = 32,
    steps: int = 300,
    lr: float = 1.0,
    tol: float = 1e-3,
    snapshots: Sequence[int] = (0, 10, 40, 100, 300),
    seed: int = 0,
    *,
    out_dir: str | Path | None = None,
) -> Rows:
    """Experiment E (paper Fig. 4): in 2-D, nearly antipodal positives align last.

    ``n_pairs`` positive pairs on the unit circle; the first point of each pair at a random
    angle, its positive ``Δ`` away (random side) with ``Δ`` spread evenly over ``(0, π)`` up to
    almost antipodal. Plain SGD with ``lr`` on ``−mean cos`` (per-pair step ``lr / n_pairs``) for
    ``steps`` steps, recording every pair's cosine after every step. Rows, one per pair:
    ``start_angle`` (Δ), ``steps_to_converge`` (first step with ``cos ≥ 1 − tol``, -1 if never),
    ``predicted_steps``, ``final_cos``, ``final_norm`` and ``cos_step<s>`` for each snapshot.
    The PNG shows the points with lines between positives coloured by their cosine at each
    snapshot, and every pair's cosine over training. Writes ``opposite_halves.csv`` / ``.png``.

    Example:
        >>> rows = simulate_opposite_halves(n_pairs=8, steps=50, snapshots=(0, 50))
        >>> slowest = max(rows, key=lambda r: r["start_angle"])
        >>> slowest["final_cos"] == min(r["final_cos"] for r in rows)
        True
    """
    snapshots = sorted({int(s) for s in snapshots if 0 <= int(s) <= steps})
    gen = torch.Generator().manual_seed(seed)
    delta = torch.linspace(0.05, math.pi - 0.02, n_pairs, dtype=torch.float64)
    delta = delta[torch.randperm(n_pairs, generator=gen)]
    base = 2 * math.pi * torch.rand(n_pairs, generator=gen, dtype=torch.float64)
    side = torch.where(torch.rand(n_pairs, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
    other = base + side * delta
    z0 = torch.stack(
        [
            torch.stack([torch.cos(base), torch.sin(base)], -1),
            torch.stack([torch.cos(other), torch.sin(other)], -1),
        ],
        dim=1,
    )
    result = _align_pairs(
        z0,
        lr,
        tol=tol,
        max_steps=steps,
        reduction="mean",
        stop_at_tol=False,
        record=True,
        keep=snapshots,
    )
    trajectory = result["kept"]
    history = torch.stack(result["history"])  # (steps + 1, n_pairs)
    reached = history >= 1 - tol
    first = torch.where(reached.any(0), reached.to(torch.int64).argmax(0), torch.tensor(-1))
    gamma = lr / n_pairs
    eps = angle_from_tolerance(tol)
    z = result["z"]
    rows: Rows = []
    for k in range(n_pairs):
        row = {
            "pair": k,
            "start_angle": round(float(delta[k]), 6),
            "start_angle_deg": round(math.degrees(float(delta[k])), 3),
            "steps_to_converge": int(first[k]),
            "predicted_steps": round(predicted_steps(1.0, float(delta[k]), gamma, eps), 2),
            "final_cos": float(history[-1, k]),
            "final_norm": float(torch.linalg.vector_norm(z[k], dim=-1).mean()),
        }
        row.update({f"cos_step{s}": round(float(history[s, k]), 6) for s in snapshots})
        rows.append(row)
    if out_dir is not None:
        fig = _plot_opposite_halves(trajectory, history, delta, snapshots, lr)
        _save(rows, fig, out_dir, "opposite_halves")
    return rows


def _plot_opposite_halves(trajectory: dict, history, delta, snapshots, lr: float):
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    fig, axes = _figure(len(snapshots) + 1, 1, size=(3.4, 3.4))
    cmap, norm = colormaps["viridis"], Normalize(-1.0, 1.0)
    limit = 1.05 * max(float(z.abs().max()) for z in trajectory.values())
    for ax, s in zip(axes[0], snapshots, strict=False):
        z = trajectory[s].numpy()
        cos = history[s].numpy()
        lines = LineCollection(z, colors=cmap(norm(cos)), linewidths=1.5)
        ax.add_collection(lines)
        ax.scatter(z[:, 0, 0], z[:, 0, 1], s=10, c="k")
        ax.scatter(z[:, 1, 0], z[:, 1, 1], s=10, facecolors="none", edgecolors="k")
        ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", title=f"step {s}")
    fig.colorbar(
        ScalarMappable(norm, cmap),
        ax=list(axes[0][:-1]),
        location="bottom",
        shrink=0.5,
        label="cosine similarity of the pair (line colour)",
    )
    ax = axes[0][-1]
    angle_norm = Normalize(0, math.pi)
    for k in range(history.shape[1]):
        ax.plot(history[:, k].numpy(), color=colormaps["plasma"](angle_norm(float(delta[k]))), lw=1)
    ax.set(xlabel="step", ylabel="cos of each pair", title=f"colour: start angle 0 → π, lr={lr}")
    return fig


# --- CLI -----------------------------------------------------------------------------------

EXPERIMENTS = ("norm", "angle", "infonce", "opposite-halves")


def _table(rows: Rows, columns: Sequence[str]) -> str:
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += [
        "  ".join(_fmt(r[c]).rjust(w) for c, w in zip(columns, widths, strict=True)) for r in rows
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_simulation(
    experiment: str, out_dir: str | Path, seed: int = 0, quick: bool = False
) -> Rows:
    """Run one experiment by its CLI name, print a summary table and return the rows.

    Example:
        >>> import tempfile
        >>> rows = run_simulation("angle", tempfile.mkdtemp(), quick=True)  # doctest: +ELLIPSIS
        angle ...
    """
    start = time.perf_counter()
    kwargs: dict[str, Any]
    if experiment == "norm":
        kwargs = {"rhos": (0.5, 1.0, 2.0, 3.0, 4.0), "n_pairs": 100, "lr": 2.0} if quick else {}
        rows = simulate_norm_sweep(seed=seed, out_dir=out_dir, **kwargs)
        print(_table(rows, ["rho", "steps", "predicted_steps", "converged", "final_mean_norm"]))
        big = [r for r in rows if r["rho"] >= 1]
        if len(big) >= 2:
            slope = fit_loglog_slope([r["rho"] for r in big], [r["steps"] for r in big])
            print(f"fitted exponent steps ∝ rho^k for rho >= 1: k = {slope:.3f}")
    elif experiment == "angle":
        kwargs = (
            {"angles": (0.1, 0.8, 1.57, 2.4, 3.0, 3.12), "n_pairs": 100, "lr": 2.0} if quick else {}
        )
        rows = simulate_angle_sweep(seed=seed, out_dir=out_dir, **kwargs)
        print(_table(rows, ["angle", "angle_deg", "steps", "predicted_steps", "converged"]))
    elif experiment == "infonce":
        kwargs = {"n_samples": 256, "epochs": 8} if quick else {}
        rows = simulate_infonce_norm_growth(seed=seed, out_dir=out_dir, **kwargs)
        last = {r["variant"]: r for r in rows}
        first = {r["variant"]: r for r in reversed(rows)}
        summary = [
            {
                "variant": v,
                "norm_at_init": first[v]["mean_norm"],
                "norm_at_end": last[v]["mean_norm"],
            }
            for v in last
        ]
        print(_table(summary, ["variant", "norm_at_init", "norm_at_end"]))
    elif experiment == "opposite-halves":
        kwargs = (
            {"n_pairs": 16, "steps": 150, "lr": 0.5, "snapshots": (0, 20, 60, 150)} if quick else {}
        )
        rows = simulate_opposite_halves(seed=seed, out_dir=out_dir, **kwargs)
        ordered = sorted(rows, key=lambda r: r["start_angle"])
        print(
            _table(
                ordered, ["start_angle_deg", "steps_to_converge", "predicted_steps", "final_cos"]
            )
        )
    else:
        raise ValueError(f"unknown experiment {experiment!r}; choose from {EXPERIMENTS}.")
    print(f"{experiment} done in {time.perf_counter() - start:.1f}s; CSV and PNG in {out_dir}")
    return rows


def _cli(args: argparse.Namespace) -> int:
    run_simulation(args.experiment, args.out, seed=args.seed, quick=args.quick)
    return 0


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``simulate {norm,angle,infonce,opposite-halves} --out DIR [--seed N] [--quick]``.

    ``subparsers`` is what ``ArgumentParser.add_subparsers()`` returns; the command is run by
    ``args.func(args)``.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="hub-cutinit")
        >>> _ = register_cli(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["simulate", "norm", "--out", "sim", "--quick"])
        >>> args.experiment, args.quick, args.seed, args.func.__name__
        ('norm', True, 0, '_cli')
    """
    parser = subparsers.add_parser(
        "simulate",
        help="run the paper's simulations (CSV + PNG)",
        description=(
            "The paper's simulations: norm (Fig. 2 left, steps ~ rho^2), angle (Fig. 2 right), "
            "infonce (Fig. 3 left, norm growth under InfoNCE terms), opposite-halves (Fig. 4)."
        ),
    )
    parser.add_argument("experiment", choices=EXPERIMENTS, help="which simulation to run")
    parser.add_argument("--out", required=True, help="directory for <name>.csv and <name>.png")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="reduced settings (seconds)")
    parser.set_defaults(func=_cli)
    return parser
