"""Shared helpers of the benchmark scripts: interleaved timing, medians, ratios, JSON, RSS.

Every comparison in these benchmarks is *interleaved*: the candidates run in rounds (A, B, A,
B, ... with the order rotated every round), each round gives one sample per candidate, and the
reported figure is the median. On a small shared machine this cancels most of the drift caused
by other processes; ratios are also given as the median of per-round (paired) ratios.

Example:
    >>> import time
    >>> samples = interleaved({"a": lambda: None, "b": lambda: time.sleep(0.001)},
    ...                       repeats=3, inner=2, warmup=1)
    >>> sorted(samples), len(samples["a"])
    (['a', 'b'], 3)
    >>> ratio(samples["a"], samples["b"])["median_ratio"] < 1   # a is faster: smaller time
    True
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

#: Resamples of the rounds behind :func:`ratio`'s bootstrap interval.
BOOTSTRAP_RESAMPLES = 2000

__all__ = [
    "RESULTS_DIR",
    "base_parser",
    "environment",
    "interleaved",
    "summarize",
    "ratio",
    "row",
    "save_result",
    "load_result",
    "format_table",
    "rss_mb",
    "peak_rss_mb",
    "reset_peak_rss",
    "run_child",
    "child_main",
    "setup_threads",
]

#: Where ``make bench`` writes ``<name>.json``.
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------------- set-up
def setup_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (the same in every benchmark and every candidate)."""
    torch.set_num_threads(int(threads))


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Flags every benchmark accepts: ``--quick``, ``--out``, ``--threads``, ``--repeats``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m recipes.benchmarks.{name}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings (smoke test, seconds, not a measurement)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / f"{name}.json",
        help="where to write the JSON result",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved rounds (default: per benchmark)"
    )
    return parser


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`):
    results from two machines are only comparable when this says which ones they were."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    """Versions and machine facts stored with every result."""
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux/macOS
        load = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "loadavg": load,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "env_vars": {
            k: os.environ[k]
            for k in (
                "OMP_WAIT_POLICY",
                "OMP_NUM_THREADS",
                "MALLOC_TRIM_THRESHOLD_",
                "MALLOC_MMAP_THRESHOLD_",
                "LD_PRELOAD",
            )
            if k in os.environ
        },
        "versions": {
            p: _version(p)
            for p in ("torch", "timm", "accelerate", "datasets", "lightly", "hub-cutinit")
        },
    }


# ----------------------------------------------------------------------------------- timing
def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    inner: int = 1,
    warmup: int = 1,
    before_sample: Callable[[str], Any] | None = None,
    after_sample: Callable[[str], Any] | None = None,
    budget_s: float | None = None,
    min_repeats: int = 3,
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` samples each, candidates interleaved.

    Every function first runs ``warmup`` times (not timed). Then each of ``repeats`` rounds
    times ``inner`` consecutive calls of every candidate; the order of the candidates is rotated
    by one every round so no candidate always runs first (cache, turbo and neighbour effects).
    ``before_sample`` / ``after_sample`` run outside the timed region (e.g. a CUDA sync).
    With ``budget_s``, rounds stop once that many seconds have passed (warm-up included) and
    at least ``min_repeats`` rounds are done, so a loaded machine shortens the run instead of
    stretching it; fewer samples are then returned.
    """
    names = list(fns)
    started = time.perf_counter()
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        over = budget_s is not None and time.perf_counter() - started > budget_s
        if over and r >= min_repeats:
            break
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            if before_sample is not None:
                before_sample(name)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            if after_sample is not None:
                after_sample(name)
            samples[name].append((time.perf_counter() - start) / inner)
    return samples


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min, max and count of ``values``.

    Example:
        >>> summarize([1.0, 2.0, 3.0])["median"]
        2.0
    """
    values = sorted(float(v) for v in values)
    if not values:
        raise ValueError("summarize() needs at least one value")
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "min": values[0],
        "max": values[-1],
        "n": len(values),
    }


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, Any]:
    """``median(numerator) / median(denominator)``, the median of the per-round ratios and its
    95 % bootstrap interval (2,000 resamples of the rounds, fixed seed).

    Pass samples of the same length taken in the same rounds (from :func:`interleaved`).

    Example:
        >>> ratio([2.0, 4.0], [1.0, 2.0])
        {'median_ratio': 2.0, 'paired_median': 2.0, 'paired_ci95': [2.0, 2.0]}
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("ratio() needs two non-empty sample lists of the same length")
    paired = [a / b for a, b in zip(numerator, denominator, strict=True)]
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(paired, k=len(paired))) for _ in range(BOOTSTRAP_RESAMPLES)
    )
    low, high = medians[int(0.025 * len(medians))], medians[int(0.975 * len(medians)) - 1]
    return {
        "median_ratio": statistics.median(numerator) / statistics.median(denominator),
        "paired_median": statistics.median(paired),
        "paired_ci95": [low, high],
    }


def total_time_ratio(seconds: Sequence[float], baseline_seconds: Sequence[float]) -> dict[str, Any]:
    """Throughput of a candidate over a baseline across *all* rounds, with its 95 % interval.

    ``sum(baseline_seconds) / sum(seconds)``: the images/s of the whole measured run. Unlike a
    median, it counts rare costs (a monitor reading every ~40 steps falls in few samples and a
    median drops them) in proportion to how often they occur. The interval is a 2,000-resample
    bootstrap of the rounds (fixed seed); pass samples taken in the same rounds.

    Example:
        >>> total_time_ratio([1.0, 1.0, 3.0], [1.0, 1.0, 1.0])  # one slow round in three
        {'total_ratio': 0.6, 'total_ci95': [0.333..., 1.0]}
    """
    if len(seconds) != len(baseline_seconds) or not seconds:
        raise ValueError("total_time_ratio() needs two non-empty sample lists of the same length")
    pairs = list(zip(seconds, baseline_seconds, strict=True))
    rng = random.Random(0)
    resampled = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        pick = rng.choices(pairs, k=len(pairs))
        resampled.append(sum(b for _, b in pick) / sum(s for s, _ in pick))
    resampled.sort()
    low = resampled[int(0.025 * len(resampled))]
    high = resampled[int(0.975 * len(resampled)) - 1]
    return {
        "total_ratio": sum(baseline_seconds) / sum(seconds),
        "total_ci95": [low, high],
    }


# --------------------------------------------------------------------------------- results
def row(
    benchmark: str,
    metric: str,
    value: float | str | None,
    *,
    unit: str = "",
    target: str = "",
    ok: bool | None = None,
) -> dict[str, Any]:
    """One line of the summary table (stored in the JSON under ``"summary"``)."""
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": value,
        "unit": unit,
        "target": target,
        "ok": ok,
    }


def save_result(name: str, result: dict[str, Any], out: Path | None) -> dict[str, Any]:
    """Add ``benchmark`` and ``env`` to ``result``, write it to ``out`` (if given), return it."""
    full = {"benchmark": name, "env": environment(), **result}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(full, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return full


def load_result(name: str, results_dir: Path = RESULTS_DIR) -> dict[str, Any] | None:
    """The stored result ``results_dir/<name>.json``, or ``None`` when there is none."""
    path = Path(results_dir) / f"{name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "NO", None: "-"}[value]
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.3g}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of summary rows.

    Example:
        >>> print(format_table([row("x", "speed", 1.234, unit="x", target=">= 1", ok=True)]))
        benchmark  metric  value  unit  target  ok
        x          speed   1.23   x     >= 1    yes
    """
    columns = list(columns or ["benchmark", "metric", "value", "unit", "target", "ok"])
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for line in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ memory
def _proc_status(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """Current resident set size in MiB (Linux ``VmRSS``; ``None`` elsewhere)."""
    return _proc_status("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size in MiB since start or the last :func:`reset_peak_rss`.

    Linux ``VmHWM``; elsewhere ``resource.getrusage(...).ru_maxrss`` (never reset).
    """
    value = _proc_status("VmHWM")
    if value is not None:
        return value
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs`` 5); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------- subprocess
_CHILD_FLAG = "--child-json"


def run_child(script: str | Path, payload: Mapping[str, Any], timeout: float = 600) -> dict:
    """Run ``script``'s :func:`child_main` in a fresh Python process; return its JSON reply.

    The child gets ``payload`` as JSON and must print its result as the last stdout line.
    """
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, str(script), _CHILD_FLAG, json.dumps(dict(payload))],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmark child {Path(script).name} {dict(payload)} failed "
            f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def child_main(argv: Sequence[str] | None, fn: Callable[[dict[str, Any]], dict]) -> bool:
    """If ``argv`` asks for child mode, run ``fn(payload)``, print its JSON and return True."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != _CHILD_FLAG:
        return False
    print(json.dumps(fn(json.loads(argv[1]))), flush=True)
    return True
