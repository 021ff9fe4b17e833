"""What ``tune_cpu_allocator``'s ``M_MMAP_MAX=0`` buys a CPU training step, in one process.

glibc serves blocks above its mmap threshold (at most 32 MiB) with ``mmap`` and unmaps them on
``free``: a convolution backward's im2col buffers (38-76 MB on a resnet18 at 32 px, batch 128)
are then mapped again and page-faulted in on every step. ``tune_cpu_allocator`` sets
``M_MMAP_MAX=0`` so they stay in the heap. This script builds the hub_cutinit step and the
hand-written one (:mod:`train_step`), then alternates blocks of steps with mmap allowed
(glibc's ``M_MMAP_MAX`` default, ``malloc_trim(0)`` to hand the heap's free memory back) and
with mmap off, counting minor page faults (``ru_minflt``) and timing each step. The ratio
``off / on`` is the paired median over blocks (same process, same weights, same batch).

Run::

    OMP_WAIT_POLICY=PASSIVE python -m recipes.benchmarks.allocator \
        --out recipes/results/allocator/allocator.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

try:
    from . import common
    from . import train_step as ts
except ImportError:  # run as a file
    import common
    import train_step as ts

M_MMAP_MAX = -4  # glibc's malloc.h
GLIBC_MMAP_MAX_DEFAULT = 65536


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _allow_mmap(libc: Any, allowed: bool) -> None:
    if allowed:
        libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX_DEFAULT)
        libc.malloc_trim(0)  # hand the heap's free blocks back: large ones get mmapped again
    else:
        libc.mallopt(M_MMAP_MAX, 0)


def measure(method: str, *, blocks: int, steps: int, batch_size: int = 64) -> dict[str, Any]:
    """Page faults and seconds per step of the hub and hand loops, mmap allowed vs off."""
    from accelerate import Accelerator

    libc = ctypes.CDLL("libc.so.6")
    runners = ts.build_runners(
        method,
        accelerator=Accelerator(cpu=True),  # applies tune_cpu_allocator (M_MMAP_MAX=0)
        batch_size=batch_size,
        image_size=32,
        implementations=("hub", "hand"),
    )
    for runner in runners.values():
        for _ in range(2):
            runner.step()
    keys = [(name, allowed) for name in runners for allowed in (True, False)]
    seconds: dict[tuple[str, bool], list[float]] = {k: [] for k in keys}
    faults: dict[tuple[str, bool], list[int]] = {k: [] for k in keys}
    for block in range(blocks):
        for allowed in (True, False) if block % 2 == 0 else (False, True):
            _allow_mmap(libc, allowed)
            for name, runner in runners.items():
                runner.step()  # the first step after a switch settles the heap
                for _ in range(steps):
                    before = _minor_faults()
                    start = time.perf_counter()
                    runner.step()
                    seconds[(name, allowed)].append(time.perf_counter() - start)
                    faults[(name, allowed)].append(_minor_faults() - before)
    _allow_mmap(libc, False)
    result = {}
    for name in runners:
        on, off = seconds[(name, True)], seconds[(name, False)]
        ratio = common.ratio(on, off)  # time on / time off: the speed-up of mmap off
        result[name] = {
            "ms_mmap_on": 1e3 * statistics.median(on),
            "ms_mmap_off": 1e3 * statistics.median(off),
            "faults_mmap_on": statistics.median(faults[(name, True)]),
            "faults_mmap_off": statistics.median(faults[(name, False)]),
            "speedup_paired_median": ratio["paired_median"],
            "speedup_ci95": ratio["paired_ci95"],
        }
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument("--blocks", type=int, default=8, help="blocks per setting (alternated)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per block and loop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("allocator.py measures glibc's mallopt: Linux only.")
    common.setup_threads(args.threads)
    result = {m: measure(m, blocks=args.blocks, steps=args.steps) for m in args.methods}
    for method, rows in result.items():
        for name, row in rows.items():
            low, high = row["speedup_ci95"]
            print(
                f"{method:7s} {name:5s} faults/step {row['faults_mmap_on']:>7.0f} -> "
                f"{row['faults_mmap_off']:>4.0f}   ms {row['ms_mmap_on']:6.0f} -> "
                f"{row['ms_mmap_off']:6.0f}   speed-up {row['speedup_paired_median']:.3f} "
                f"({low:.3f}-{high:.3f})"
            )
    stored = {
        "config": vars(args) | {"batch_size": 64, "backbone": "resnet18", "image_size": 32},
        "methods": result,
        "env": common.environment(),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(stored, indent=1) + "\n")
    return stored


if __name__ == "__main__":
    main()
