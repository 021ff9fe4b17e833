"""Run every CPU benchmark (``make bench``), each in its own process, and print one table.

Each benchmark writes ``recipes/benchmarks/results/<name>.json``; this runner then prints the
summary rows of all of them and writes ``results/summary.json``. ``train_step`` runs first:
``data_pipeline`` reads its images/s. The GPU benchmark (``gpu_bench.py``) is not part of it.

The children run with ``OMP_WAIT_POLICY=PASSIVE`` unless ``--omp-wait-policy ''`` is given:
with libgomp's default (active spinning) a 2-thread step on a 2-core machine where one other
process is busy ran 15x slower (7 s instead of 0.46 s per BYOL step) and the timings were
dominated by the scheduler. The policy applies to every candidate alike.

Run::

    python -m recipes.benchmarks                 # all, default sizes (< 10 min on 2 cores)
    python -m recipes.benchmarks --quick         # smoke run, about a minute
    python -m recipes.benchmarks --only train_step memory
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

try:
    from . import common
except ImportError:  # run as a file: python recipes/benchmarks/__main__.py
    import common

#: CPU benchmarks in the order they run.
BENCHMARKS = ("train_step", "overhead", "data_pipeline", "memory", "cut_init_time")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; return 0 when all ran (targets missed do not fail the run)."""
    parser = argparse.ArgumentParser(prog="python -m recipes.benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: print (and store in summary.json) the table of the stored results",
    )
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY for the benchmark processes ('' leaves the environment alone)",
    )
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parent
    env = dict(os.environ)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cpus and not args.table_only:
        print(
            f"warning: load average {load:.1f} on {cpus} CPUs; other processes will add noise "
            "(ratios are paired per round, absolute images/s are not comparable)",
            flush=True,
        )
    rows, failed, timings = [], [], {}
    for name in [b for b in BENCHMARKS if b in args.only]:
        out = args.results_dir / f"{name}.json"
        cmd = [sys.executable, str(here / f"{name}.py"), "--out", str(out)]
        cmd += ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
        if args.table_only:
            stored = common.load_result(name, args.results_dir)
            rows.extend(stored.get("summary", []) if stored else [common.row(name, "no result")])
            continue
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env)
        timings[name] = time.perf_counter() - start
        if proc.returncode != 0:
            failed.append(name)
            rows.append(common.row(name, "FAILED", f"exit {proc.returncode}", ok=False))
            continue
        result = json.loads(out.read_text(encoding="utf-8"))
        rows.extend(result.get("summary", []))
    print("\n== summary (medians of interleaved runs; ratios are hub_cutinit / other)")
    print(common.format_table(rows))
    if timings:
        print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    summary = {
        "quick": args.quick,
        "omp_wait_policy": args.omp_wait_policy or None,
        "wall_s": timings,
        "failed": failed,
        "summary": rows,
    }
    common.save_result("summary", summary, args.results_dir / "summary.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
