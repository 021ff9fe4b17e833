"""Streaming statistics of embedding norms ``‖z‖``, mergeable across steps, trackers and ranks.

The paper's central quantity is the norm of the raw (un-normalised) embedding: the gradient of
every cosine-based loss shrinks as ``1/‖z‖`` and training makes ``‖z‖`` grow (PAPER §1-§2).
:class:`NormTracker` follows it during training with O(1) memory per embedding name: count,
mean and standard deviation (Chan et al.'s parallel merge, numerically stable), minimum,
maximum, and a fixed log-spaced histogram from which quantiles are estimated.

The per-step cost is a handful of reductions per tensor, all on the tensor's own device and
without host synchronisation; Python numbers appear only in :meth:`NormTracker.summary`.

Example:
    >>> import torch
    >>> tracker = NormTracker()
    >>> tracker.update({"projection": torch.full((4, 3), 2.0)})   # every row has norm sqrt(12)
    >>> s = tracker.summary()["projection"]
    >>> s["count"], round(s["mean"], 4), s["std"]
    (4, 3.4641, 0.0)
    >>> history = NormHistory()
    >>> _ = history.append(tracker.summary(), epoch=0)
    >>> history.series("projection", "count")
    [4]
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["NormTracker", "NormHistory", "row_norms"]

_STATE_VERSION = 1

# Layout of the packed per-name state vector.
_COUNT, _MEAN, _M2, _MIN, _MAX, _NONFINITE = range(6)
_HIST = (
    6  # hist[0] = underflow (< low), hist[1:-1] = log-spaced bins, hist[-1] = overflow (>= high)
)

DEFAULT_QUANTILES = (0.05, 0.5, 0.95)
#: :meth:`NormTracker.update_norms` folds its pending norms in once it holds this many rows.
_MAX_PENDING_ROWS = 1 << 16


def row_norms(z: torch.Tensor) -> torch.Tensor:
    """Row-wise l2 norms of ``z`` (shape ``(N, d)`` or ``(..., d)``), in float32, without grad.

    Float64 inputs keep float64. Leading dimensions are flattened, so ``(N, T, d)`` token
    embeddings give ``N * T`` norms.

    Example:
        >>> row_norms(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        tensor([5., 1.])
    """
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of shape (N, d), got {type(z).__name__}")
    if z.ndim < 2:
        raise ValueError(
            f"expected embeddings of shape (N, d), got shape {tuple(z.shape)}; "
            "add a feature dimension with z.unsqueeze(-1) or pass the 2-D batch"
        )
    with torch.no_grad():
        x = z.detach()
        if x.dtype != torch.float64:
            x = x.float()
        return torch.linalg.vector_norm(x.reshape(-1, x.shape[-1]), dim=1)


def _acc_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everywhere else the accumulators are float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _merge_packed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Merge two packed state vectors (any matching leading shape); Chan's parallel update."""
    na, nb = a[..., _COUNT], b[..., _COUNT]
    n = na + nb
    safe_n = n.clamp_min(1)
    delta = b[..., _MEAN] - a[..., _MEAN]
    out = torch.empty_like(a)
    out[..., _COUNT] = n
    out[..., _MEAN] = a[..., _MEAN] + delta * (nb / safe_n)
    out[..., _M2] = a[..., _M2] + b[..., _M2] + delta * delta * (na * nb / safe_n)
    out[..., _MIN] = torch.minimum(a[..., _MIN], b[..., _MIN])
    out[..., _MAX] = torch.maximum(a[..., _MAX], b[..., _MAX])
    out[..., _NONFINITE] = a[..., _NONFINITE] + b[..., _NONFINITE]
    out[..., _HIST:] = a[..., _HIST:] + b[..., _HIST:]
    return out


def _quantile_key(q: float) -> str:
    pct = q * 100
    if abs(pct - round(pct)) < 1e-9:
        return f"p{int(round(pct)):02d}"
    return "p" + f"{pct:g}".replace(".", "_")


def _comm_device(group: Any = None) -> torch.device:
    """The device that the process group's backend can all-gather on."""
    backend = str(dist.get_backend(group))
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "xccl":
        return torch.device("xpu", torch.xpu.current_device())
    return torch.device("cpu")  # gloo, mpi and mixed "cpu:gloo,cuda:nccl" backends


class NormTracker:
    """Running statistics of row-wise embedding norms ``‖z‖``, one entry per embedding name.

    Args:
        low: lower edge of the log-spaced histogram (norms below fall in an underflow bin).
        high: upper edge of the histogram (norms at or above fall in an overflow bin).
        bins_per_decade: histogram resolution; the default 100 gives bins about 2.3 % wide,
            which bounds the error of the quantile estimates.

    Statistics per name: ``count`` (finite norms), ``mean``, ``std`` (population, ddof = 0),
    ``min``, ``max``, quantiles ``p05``, ``p50``, ``p95`` (from the histogram, within one bin)
    and ``nonfinite`` (rows whose norm was inf/NaN; they are excluded from every other statistic
    so one diverged row shows up as a count instead of turning everything into NaN).

    Distributed use: every rank calls :meth:`update` on its own batches; at the end of an epoch
    :meth:`reduce_across_processes` (same call on every rank) leaves the global statistics on
    every rank. Call :meth:`reset` afterwards, or the next reduce counts the data again.

    Resume: :meth:`state_dict` is the local state. To checkpoint mid-epoch under several
    processes, save ``tracker.reduce_across_processes(inplace=False).state_dict()`` once and, on
    resume, load it on rank 0 only (other ranks start empty): the next reduce then adds the
    resumed part exactly once.

    Example:
        >>> import torch
        >>> t = NormTracker()
        >>> t.update({"backbone": torch.randn(64, 8), "projection": torch.randn(64, 4)})
        >>> sorted(t.summary()["backbone"])
        ['count', 'max', 'mean', 'min', 'nonfinite', 'p05', 'p50', 'p95', 'std']
        >>> other = NormTracker()
        >>> other.update({"backbone": torch.randn(32, 8)})
        >>> t.merge(other).summary()["backbone"]["count"]
        96
    """

    def __init__(self, low: float = 1e-4, high: float = 1e4, bins_per_decade: int = 100) -> None:
        if not (low > 0 and high > low and math.isfinite(high)):
            raise ValueError(
                f"need 0 < low < high < inf for the log-spaced histogram, got low={low}, "
                f"high={high}; e.g. NormTracker(low=1e-4, high=1e4)"
            )
        if int(bins_per_decade) != bins_per_decade or bins_per_decade < 1:
            raise ValueError(
                f"bins_per_decade must be a positive integer, got {bins_per_decade!r}; "
                "e.g. bins_per_decade=100"
            )
        self.low = float(low)
        self.high = float(high)
        self.bins_per_decade = int(bins_per_decade)
        self.num_bins = int(
            math.ceil(math.log10(self.high / self.low) * self.bins_per_decade - 1e-9)
        )
        self._log_low = math.log10(self.low)
        self._state: dict[str, torch.Tensor] = {}
        #: row norms added since the last read, folded into ``_state`` in one batch per name
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._pending_rows = 0

    # ------------------------------------------------------------------ state
    @property
    def _stats(self) -> dict[str, torch.Tensor]:
        """The packed statistics per name, with every pending batch folded in."""
        if self._pending:
            self._flush()
        return self._state

    @_stats.setter
    def _stats(self, value: dict[str, torch.Tensor]) -> None:
        self._pending.clear()
        self._pending_rows = 0
        self._state = value

    @torch.no_grad()
    def _flush(self) -> None:
        """Fold the pending norms into the statistics: one batch per name, however many
        updates were made (the per-step cost of :meth:`update` is then one norm per name)."""
        pending, self._pending, self._pending_rows = self._pending, {}, 0
        for name, parts in pending.items():
            state = self._state[name]
            norms = torch.cat(parts) if len(parts) > 1 else parts[0]
            if state.device != norms.device:
                state = state.to(norms.device, _acc_dtype(norms.device))
            self._state[name] = _merge_packed(state, self._batch_state(norms).to(state.dtype))

    @property
    def names(self) -> list[str]:
        """Embedding names seen so far, in insertion order."""
        return list(self._state)

    @property
    def _length(self) -> int:
        return _HIST + self.num_bins + 2

    def _config(self) -> tuple[float, float, int]:
        return (self.low, self.high, self.bins_per_decade)

    def _empty(
        self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        device = torch.device(device)
        state = torch.zeros(self._length, dtype=dtype or _acc_dtype(device), device=device)
        state[_MIN] = math.inf
        state[_MAX] = -math.inf
        return state

    def reset(self) -> None:
        """Forget every statistic and every name."""
        self._stats = {}

    def copy(self) -> NormTracker:
        """An independent copy."""
        new = NormTracker(self.low, self.high, self.bins_per_decade)
        new._stats = {k: v.clone() for k, v in self._stats.items()}
        return new

    def __repr__(self) -> str:
        return (
            f"NormTracker(names={self.names}, low={self.low:g}, high={self.high:g}, "
            f"bins_per_decade={self.bins_per_decade})"
        )

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def _batch_state(self, norms: torch.Tensor) -> torch.Tensor:
        dtype = _acc_dtype(norms.device)
        v = norms.to(dtype)
        finite = torch.isfinite(v)
        w = finite.to(dtype)
        n = w.sum()
        zero = v.new_zeros(())
        v_fin = torch.where(finite, v, zero)
        mean = v_fin.sum() / n.clamp_min(1)
        m2 = torch.where(finite, v - mean, zero).square().sum()
        inf = v.new_full((), math.inf)
        mn = torch.where(finite, v, inf).amin()
        mx = torch.where(finite, v, -inf).amax()
        # Histogram: bin index floor((log10 v - log10 low) * bins_per_decade), with under/overflow.
        logv = torch.log10(torch.where(finite, v, v.new_ones(())))
        pos = torch.floor((logv - self._log_low) * self.bins_per_decade)
        idx = (pos.clamp(-1, self.num_bins) + 1).long()
        hist = torch.zeros(self.num_bins + 2, dtype=dtype, device=v.device).index_add_(0, idx, w)
        head = torch.stack([n, mean, m2, mn, mx, v.numel() - n])
        return torch.cat([head, hist])

    @torch.no_grad()
    def update(self, embeddings: Mapping[str, torch.Tensor]) -> None:
        """Add the row norms of each ``(N, d)`` tensor to the statistics of its name.

        Tensors may live on any device and carry gradients (they are detached); the state of a
        name lives on the device of its tensors. Empty batches only register the name.

        Example:
            >>> t = NormTracker()
            >>> t.update({"z": torch.tensor([[3.0, 4.0]])})
            >>> t.summary()["z"]["mean"]
            5.0
        """
        if not isinstance(embeddings, Mapping):
            raise ValueError(
                f"update() takes a dict name -> (N, d) tensor, got {type(embeddings).__name__}; "
                'e.g. tracker.update({"projection": z}) or tracker.update(output.embeddings)'
            )
        self.update_norms({name: row_norms(z) for name, z in embeddings.items()})  # checks names

    @torch.no_grad()
    def update_norms(self, norms: Mapping[str, torch.Tensor]) -> None:
        """Add precomputed row norms (1-D, e.g. :func:`row_norms`) to the statistics of each name.

        The work is deferred: the norms are kept on their device and folded into the
        statistics in one batch per name at the next read (:meth:`summary`, :meth:`merge`,
        :meth:`state_dict`, ...) or every 65,536 rows, with the same result as one update per
        batch (up to float rounding). No host sync.

        Example:
            >>> t = NormTracker()
            >>> t.update_norms({"z": torch.tensor([1.0, 3.0])})
            >>> t.update_norms({"z": torch.tensor([5.0])})
            >>> t.summary()["z"]["mean"], t.summary()["z"]["count"]
            (3.0, 3)
        """
        for name, values in norms.items():
            if not isinstance(name, str):
                raise ValueError(f"embedding names must be strings, got {name!r}")
            values = values.detach().reshape(-1)
            if name not in self._state:
                self._state[name] = self._empty(values.device)
            if values.numel() > 0:
                self._pending.setdefault(name, []).append(values)
                self._pending_rows += values.numel()
        if self._pending_rows >= _MAX_PENDING_ROWS:
            self._flush()

    def _check_compatible(self, other: NormTracker) -> None:
        if not isinstance(other, NormTracker):
            raise ValueError(f"can only merge a NormTracker, got {type(other).__name__}")
        if other._config() != self._config():
            raise ValueError(
                f"histogram settings differ: {other._config()} vs {self._config()} "
                "(low, high, bins_per_decade); create both trackers with the same arguments"
            )

    @torch.no_grad()
    def merge(self, other: NormTracker) -> NormTracker:
        """Add ``other``'s statistics to this tracker (in place) and return ``self``.

        The result equals one tracker fed with both data streams (up to float rounding).
        """
        self._check_compatible(other)
        for name, theirs in other._stats.items():
            mine = self._stats.get(name)
            if mine is None:
                self._stats[name] = theirs.clone()
            else:
                self._stats[name] = _merge_packed(mine, theirs.to(mine.device, mine.dtype))
        return self

    # ------------------------------------------------------------ distributed
    @torch.no_grad()
    def reduce_across_processes(self, *, inplace: bool = True, group: Any = None) -> NormTracker:
        """Combine the statistics of every process; a no-op outside ``torch.distributed``.

        Every rank of ``group`` must call it (it is a collective). Two collectives are used: an
        ``all_gather_object`` of the names and settings (ranks may have seen different names),
        then one ``all_gather`` of all packed states, merged in rank order so every rank ends
        with bit-identical results. Works under ``accelerate`` (which initialises
        ``torch.distributed``): gloo gathers on CPU, NCCL on the current CUDA device.

        Args:
            inplace: replace this tracker's state by the global one and return ``self``
                (default); with ``False`` return a new tracker and leave this one untouched.
            group: the process group (default: the world).

        Example:
            >>> t = NormTracker()
            >>> t.update({"z": torch.ones(2, 3)})
            >>> t.reduce_across_processes() is t   # one process: nothing to do
            True
        """
        target = self if inplace else self.copy()
        if not (dist.is_available() and dist.is_initialized()):
            return target
        world = dist.get_world_size(group)
        if world <= 1:
            return target
        meta: list[Any] = [None] * world  # each rank's (config, names), filled in by the gather
        dist.all_gather_object(meta, (self._config(), sorted(self._stats)), group=group)
        configs = {m[0] for m in meta}
        if len(configs) != 1:
            raise ValueError(
                f"ranks use different histogram settings {sorted(configs)}; create the tracker "
                "with the same (low, high, bins_per_decade) on every rank"
            )
        names = sorted(set().union(*(m[1] for m in meta)))
        if not names:
            return target
        device = _comm_device(group)
        local = torch.stack(
            [
                self._stats[n].to(device, torch.float64)
                if n in self._stats
                else self._empty(device, torch.float64)
                for n in names
            ]
        )
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local, group=group)
        total = parts[0]
        for part in parts[1:]:
            total = _merge_packed(total, part)
        new_stats = {}
        for i, name in enumerate(names):
            old = self._stats.get(name)
            dev = old.device if old is not None else torch.device("cpu")
            new_stats[name] = total[i].to(dev, _acc_dtype(dev))
        target._stats = new_stats
        return target

    # ---------------------------------------------------------------- reading
    def _bin_edges(self) -> np.ndarray:
        """Edges of the regular bins (length ``num_bins + 1``), the last one clipped to ``high``."""
        edges = self.low * 10.0 ** (np.arange(self.num_bins + 1) / self.bins_per_decade)
        edges[-1] = self.high
        return edges

    def _quantiles(self, state: np.ndarray, quantiles: Iterable[float]) -> list[float | None]:
        n = state[_COUNT]
        mn, mx = float(state[_MIN]), float(state[_MAX])
        hist = state[_HIST:]
        cum = np.cumsum(hist)
        edges = self._bin_edges()
        out: list[float | None] = []
        for q in quantiles:
            if n <= 0:
                out.append(None)
                continue
            target = q * n
            i = int(np.searchsorted(cum, target, side="left"))
            i = min(max(i, 0), len(hist) - 1)
            while hist[i] == 0 and i < len(hist) - 1:  # q = 0 lands before the first sample
                i += 1
            before = cum[i - 1] if i > 0 else 0.0
            frac = float(np.clip((target - before) / hist[i], 0.0, 1.0))
            if i == 0:  # underflow: linear between the observed minimum and `low`
                value = mn + frac * (min(self.low, mx) - mn)
            elif i == len(hist) - 1:  # overflow: linear between `high` and the observed maximum
                start = max(self.high, mn)
                value = start + frac * (mx - start)
            else:  # geometric interpolation inside a log-spaced bin
                lo, hi = edges[i - 1], edges[i]
                value = float(lo * (hi / lo) ** frac)
            out.append(float(min(max(value, mn), mx)))
        return out

    def summary(self, quantiles: Iterable[float] = DEFAULT_QUANTILES) -> dict[str, dict[str, Any]]:
        """Plain-Python statistics: ``{name: {count, mean, std, min, max, p05, p50, p95, nonfinite}}``.

        ``count``/``nonfinite`` are ints, the rest floats (``None`` for a name with no finite
        norm yet). The result is JSON-serialisable. This is the only method that synchronises
        with the device.

        Example:
            >>> t = NormTracker()
            >>> t.update({"z": torch.tensor([[1.0], [2.0], [3.0]])})
            >>> s = t.summary(quantiles=(0.5,))["z"]
            >>> s["mean"], s["min"], s["max"], round(s["p50"], 1)
            (2.0, 1.0, 3.0, 2.0)
        """
        quantiles = tuple(float(q) for q in quantiles)
        for q in quantiles:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantiles must lie in [0, 1], got {q}; e.g. (0.05, 0.5, 0.95)")
        result: dict[str, dict[str, Any]] = {}
        for name, state_t in self._stats.items():
            state = state_t.detach().to("cpu", torch.float64).numpy()
            n = int(round(state[_COUNT]))
            entry: dict[str, Any] = {"count": n}
            if n > 0:
                entry["mean"] = float(state[_MEAN])
                entry["std"] = float(math.sqrt(max(state[_M2], 0.0) / n))
                entry["min"] = float(state[_MIN])
                entry["max"] = float(state[_MAX])
            else:
                entry.update(mean=None, std=None, min=None, max=None)
            for q, value in zip(quantiles, self._quantiles(state, quantiles), strict=True):
                entry[_quantile_key(q)] = value
            entry["nonfinite"] = int(round(state[_NONFINITE]))
            result[name] = entry
        return result

    def histogram(self, name: str) -> dict[str, Any]:
        """The histogram of one name as plain lists (e.g. for plotting).

        Returns ``{"edges": [...num_bins + 1], "counts": [...num_bins], "underflow": int,
        "overflow": int}``; bin ``i`` covers ``[edges[i], edges[i + 1])``.
        """
        if name not in self._stats:
            raise ValueError(f"no statistics for {name!r}; known names: {self.names}")
        hist = self._stats[name][_HIST:].to("cpu", torch.float64).numpy()
        return {
            "edges": self._bin_edges().tolist(),
            "counts": [int(round(c)) for c in hist[1:-1]],
            "underflow": int(round(hist[0])),
            "overflow": int(round(hist[-1])),
        }

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """The local state: settings plus one packed float64 CPU tensor per name."""
        return {
            "version": _STATE_VERSION,
            "low": self.low,
            "high": self.high,
            "bins_per_decade": self.bins_per_decade,
            "stats": {
                k: v.detach().to("cpu", torch.float64).clone() for k, v in self._stats.items()
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """Like :meth:`state_dict` but with plain lists: JSON-serialisable, loadable back."""
        state = self.state_dict()
        state["stats"] = {k: v.tolist() for k, v in state["stats"].items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this tracker's settings and statistics by ``state`` (from :meth:`state_dict`
        or :meth:`to_dict`).

        Example:
            >>> t = NormTracker()
            >>> t.update({"z": torch.ones(3, 2)})
            >>> u = NormTracker()
            >>> u.load_state_dict(t.state_dict())
            >>> u.summary() == t.summary()
            True
        """
        try:
            version = int(state["version"])
            low, high, bpd = (
                float(state["low"]),
                float(state["high"]),
                int(state["bins_per_decade"]),
            )
            stats = state["stats"]
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"not a NormTracker state ({err!r}); pass the dict from NormTracker.state_dict()"
            ) from None
        if version != _STATE_VERSION:
            raise ValueError(
                f"unsupported NormTracker state version {version} (expected {_STATE_VERSION})"
            )
        fresh = NormTracker(low, high, bpd)
        loaded = {}
        for name, vec in stats.items():
            t = torch.as_tensor(vec, dtype=torch.float64).detach().clone().cpu()
            if t.shape != (fresh._length,):
                raise ValueError(
                    f"state for {name!r} has shape {tuple(t.shape)}, expected ({fresh._length},) "
                    "for these histogram settings; the state is corrupt or from another version"
                )
            loaded[name] = t
        self.__dict__.update(fresh.__dict__)
        self._stats = loaded

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> NormTracker:
        """Build a tracker from :meth:`state_dict` or :meth:`to_dict` output."""
        tracker = cls()
        tracker.load_state_dict(state)
        return tracker


class NormHistory:
    """Per-epoch (or per-evaluation) norm summaries, JSON-serialisable.

    Each record is ``{**meta, "norms": summary}``, e.g. ``{"epoch": 3, "norms": {...}}``.

    Example:
        >>> import torch
        >>> h = NormHistory()
        >>> for epoch in range(2):
        ...     t = NormTracker()
        ...     t.update({"z": torch.full((2, 1), float(epoch + 1))})
        ...     _ = h.append(t.summary(), epoch=epoch)
        >>> h.series("z", "mean")
        [1.0, 2.0]
        >>> NormHistory.from_json(h.to_json()).records == h.records
        True
    """

    def __init__(self, records: Iterable[Mapping[str, Any]] = ()) -> None:
        self.records: list[dict[str, Any]] = [copy.deepcopy(dict(r)) for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def append(self, summary: Mapping[str, Mapping[str, Any]], **meta: Any) -> dict[str, Any]:
        """Store a :meth:`NormTracker.summary` with metadata (``epoch=``, ``step=``...).

        Raises ValueError if the record is not JSON-serialisable or ``meta`` uses ``"norms"``.
        """
        if "norms" in meta:
            raise ValueError("'norms' is reserved for the summary; rename that metadata key")
        record = {**meta, "norms": copy.deepcopy(dict(summary))}
        try:
            json.dumps(record, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"norm history records must be JSON-serialisable ({err}); pass plain numbers and "
                "strings as metadata, e.g. append(summary, epoch=3)"
            ) from None
        self.records.append(record)
        return record

    def series(self, name: str, stat: str = "mean") -> list[Any]:
        """One statistic of one embedding over the records (``None`` where absent)."""
        return [r["norms"].get(name, {}).get(stat) for r in self.records]

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable state (for checkpoints)."""
        return {"version": _STATE_VERSION, "records": copy.deepcopy(self.records)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        if "records" not in state:
            raise ValueError("not a NormHistory state; pass the dict from NormHistory.state_dict()")
        self.records = copy.deepcopy(list(state["records"]))

    def to_json(self, path: str | Path | None = None, *, indent: int | None = 2) -> str:
        """The records as a JSON string; also written to ``path`` when given."""
        text = json.dumps(self.records, indent=indent, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> NormHistory:
        """Load records from a JSON string or from a file written by :meth:`to_json`."""
        text = str(text_or_path)
        if not text.lstrip().startswith("["):
            text = Path(text_or_path).read_text(encoding="utf-8")
        records = json.loads(text)
        if not isinstance(records, list):
            raise ValueError("expected a JSON list of records, as written by NormHistory.to_json()")
        return cls(records)
