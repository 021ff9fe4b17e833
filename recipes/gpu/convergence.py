"""The convergence study on one GPU, sized to its budget: c = 1 against the method's cut.

Issue 20 item 5. One call (``recipes/gpu/run.sh`` calls it) does, in order:

1. **baselines** (once per GPU run): the kNN of the randomly initialised backbone and of raw
   pixels, with the training runs' own protocol (``Trainer.setup`` + its kNN monitor; the
   training runs get ``--no-baselines``). The time of one kNN pass is kept for the sizing;
2. **probe**: both variants train ``--probe-steps`` steps *concurrently* (as in step 3); the
   slower one's steps/s after ``--probe-skip`` steps is the throughput, the time from launch
   to the first step the start-up;
3. **sizing**: the most whole epochs E that fit in what is left of ``--budget-seconds``
   (start-up, E epochs at the probed rate, the kNN passes at the cadence, ``--reserve-seconds``
   for the summary), at most ``--max-epochs``; warm-up ``min(--warmup-epochs, E / 2)`` epochs,
   so the runs end past it; kNN every ``max(1, E // --evals)`` epochs and at the end;
4. **runs**: ``c1`` (``--c 1``) and ``cut`` (the method's default c) as two processes on the one
   GPU, the same seed (the same data order and views) and E epochs, so both end at the same
   step; each through the public API (``hub_cutinit.training.parse_args`` + ``train``) with a
   callback that records the kNN curve and the step times;
5. **outputs** in ``--out-dir`` (≤ 8 files: ``environment.json``, ``summary.json``,
   ``summary.md``, ``curves.png``, ``runs.tar.gz``; ``run.sh`` adds ``log.txt``): the archive
   holds every run's ``result.json``, ``curve.json``, ``log.txt``, ``config.json`` and the
   probe's and baselines' records (no weights).

Recipe flags after ``--`` go to every training run (probe, baselines and runs), after the
study's own, so they win (e.g. ``-- --augment-on device``). Settings: timm ``resnet18`` at
128 px, the paper's heads, batch 512, bf16, the paper's peak lr scaled linearly from batch 512
(SimCLR 0.36, BYOL 0.04), λ = 5e-4, cosine horizon 500 epochs, constant EMA for BYOL,
full-bank kNN (k = 200). Prepare the data and wheels with ``recipes/gpu/prepare.sh``.

Tiny CPU run (what ``tests/test_gpu_script.py`` does through ``run.sh``)::

    python recipes/gpu/convergence.py --device-check no --data builtin --backbone test_resnet \\
        --image-size 16 --batch-size 8 --heads tiny --budget-seconds 60 --max-epochs 2 \\
        --out-dir /tmp/gpu_smoke -- --num-workers 0 --mixed-precision no --eval-max-samples 64
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT / "data/fashion_mnist_full"
DEFAULT_OUT = ROOT / "recipes/results/gpu_convergence"
#: the paper's effective peak lrs at batch 512 (PAPER §9), scaled linearly to the batch
PAPER_LRS = {"simclr": 0.36, "moco": 0.36, "simsiam": 0.04, "byol": 0.04}
PAPER_BATCH = 512
VARIANTS = ("c1", "cut")
#: packages whose versions environment.json records
PACKAGES = (
    "torch", "torchvision", "timm", "accelerate", "datasets", "torchdata", "pyarrow",
    "huggingface_hub", "numpy", "pillow", "dill", "multiprocess", "hub_cutinit",
)  # fmt: skip
#: files of a run folder that go into the archive (weights and checkpoints stay out)
ARCHIVED_SUFFIXES = (".json", ".txt", ".md", ".csv")


def build_parser() -> argparse.ArgumentParser:
    """The driver's flags (recipe flags go after ``--``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=["study", "run", "baselines"], default="study",
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--method", default="byol", choices=sorted(PAPER_LRS))
    p.add_argument("--variant", choices=VARIANTS, default="c1", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="parquet folder, or 'builtin'")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--heads", default="paper", help="preset: paper, cpu or tiny")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--budget-seconds", type=float, default=500.0,
                   help="wall time of the whole study (run.sh's ≤ 9 min less its own)")  # fmt: skip
    p.add_argument("--started", type=float, default=None, help="unix time the budget counts from")
    p.add_argument("--reserve-seconds", type=float, default=20.0, help="kept for the outputs")
    p.add_argument("--probe-steps", type=int, default=30)
    p.add_argument("--probe-skip", type=int, default=10, help="probe steps not timed (warm-up)")
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--warmup-epochs", type=float, default=10.0)
    p.add_argument("--cosine-epochs", type=float, default=500.0)
    p.add_argument("--evals", type=int, default=5, help="kNN evaluations per run (about)")
    p.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--eval-every-epochs", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default=str(DEFAULT_OUT))
    p.add_argument("--runs-dir", default=None, help="default: a fresh /tmp folder")
    p.add_argument("--device-check", choices=["cuda", "no"], default="cuda",
                   help="'cuda': refuse to start without a GPU")  # fmt: skip
    return p


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(driver flags, recipe flags)``: everything after the first ``--`` is a recipe flag.

    Example:
        >>> split_argv(["--method", "byol", "--", "--augment-on", "device"])
        (['--method', 'byol'], ['--augment-on', 'device'])
    """
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def recipe_argv(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The recipe flags of one training run of ``args.role`` / ``args.variant``."""
    lr = PAPER_LRS[args.method] * args.batch_size / PAPER_BATCH
    argv = ["--backbone", args.backbone, "--dataset", args.data, "--seed", str(args.seed)]
    argv += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
    argv += ["--lr", f"{lr:g}", "--weight-decay", "5e-4", "--knn-k", "200"]
    argv += ["--cosine-epochs", str(args.cosine_epochs), "--log-every", "10"]
    argv += ["--mixed-precision", "bf16", "--no-baselines"]
    if args.method in ("byol", "moco"):
        argv += ["--ema-schedule", "constant"]  # the paper's BYOL (PAPER §9)
    if args.variant == "c1":
        argv += ["--c", "1"]  # "cut": the method's default c
    argv += ["--warmup-epochs", f"{args.warmup_epochs:g}", "--epochs", str(args.epochs or 1)]
    if args.max_steps:
        argv += ["--max-steps", str(args.max_steps), "--eval-split", "none"]
    elif args.eval_every_epochs:
        argv += ["--eval-every-epochs", str(args.eval_every_epochs)]
    from hub_cutinit.registry import get_preset

    preset = get_preset(args.method, args.heads)
    if preset:
        argv += ["--set", *(f"{k}={json.dumps(v)}" for k, v in preset.items())]
    return argv + list(extra)


# -- the child processes ------------------------------------------------------------------------
def _curve_callback(path: Path) -> Any:
    """A TrainerCallback writing ``{"steps": [[step, time]], "knn": [...]}`` to ``path``."""
    from hub_cutinit.training import TrainerCallback

    class Curve(TrainerCallback):
        """Step times and the kNN curve of this run."""

        def __init__(self) -> None:
            self.started = time.time()
            self.record: dict[str, Any] = {"launched": self.started, "steps": [], "knn": []}

        def on_step_end(self, trainer: Any, state: Any, control: Any, *, logged: bool) -> None:
            self.record["steps"].append([state.step, round(time.time() - self.started, 4)])

        def on_evaluate(
            self, trainer: Any, state: Any, control: Any, *, metrics: dict[str, Any]
        ) -> None:
            keep = ("step", "epoch", "knn_accuracy", "seconds")
            self.record["knn"].append({k: metrics.get(k) for k in keep})
            self.write()

        def on_train_end(
            self, trainer: Any, state: Any, control: Any, *, summary: dict[str, Any]
        ) -> None:
            self.write()

        def write(self) -> None:
            path.write_text(json.dumps(self.record) + "\n")

    return Curve()


def run_child(args: argparse.Namespace, extra: Sequence[str]) -> None:
    """``--role run``: one training run; ``--role baselines``: the kNN baselines, timed."""
    from hub_cutinit.training import parse_args, train

    run_dir = Path(args.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = recipe_argv(args, extra) + ["--output-dir", str(run_dir / "model")]
    cfg = parse_args(args.method, argv)
    if args.role == "run":
        result = train(cfg, callbacks=[_curve_callback(run_dir / "curve.json")])
        result = {k: v for k, v in result.items() if k != "norm_history"}
        (run_dir / "result.json").write_text(json.dumps(result, default=str) + "\n")
        return
    import torch

    from hub_cutinit.training import Trainer

    started = time.time()
    trainer = Trainer(cfg)
    trainer.setup()
    if trainer.knn is None:
        raise SystemExit(f"{args.data}: no labelled evaluation data, no baselines")
    setup_s = time.time() - started
    out: dict[str, Any] = {"setup_s": round(setup_s, 2)}
    for name, model in (("random_init_knn", trainer.raw_model.backbone),
                        ("raw_pixels_knn", torch.nn.Flatten())):  # fmt: skip
        t0 = time.time()
        metrics = trainer.knn.evaluate(model)  # the monitor's protocol (KnnMonitor.baselines)
        out[name] = metrics["knn_accuracy"]
        out[name.replace("_knn", "_seconds")] = round(time.time() - t0, 2)
        out["eval_train_samples"] = metrics["eval_train_samples"]
        out["eval_test_samples"] = metrics["eval_test_samples"]
    out["eval_source"] = trainer.eval_plan.source
    (run_dir / "baselines.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


# -- the study ----------------------------------------------------------------------------------
def _child_argv(args: argparse.Namespace, role: str, out: Path, **flags: Any) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--out-dir", str(out)]
    for name in ("method", "seed", "data", "backbone", "heads", "image_size", "batch_size",
                 "cosine_epochs", "warmup_epochs"):  # fmt: skip
        argv += [f"--{name.replace('_', '-')}", str(flags.pop(name, getattr(args, name)))]
    for name, value in flags.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def launch(argvs: Sequence[Sequence[str]], logs: Sequence[Path]) -> list[int]:
    """Run the processes concurrently (output to ``logs``); their exit codes."""
    procs = []
    for argv, log in zip(argvs, logs, strict=True):
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:
            procs.append(subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT))
    return [p.wait() for p in procs]


def _check(codes: Sequence[int], logs: Sequence[Path], what: str) -> None:
    for code, log in zip(codes, logs, strict=True):
        if code != 0:
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise SystemExit(f"{what} failed (exit {code}, {log}):\n{tail}")


def probe_rate(curve: dict[str, Any], skip: int) -> tuple[float, float]:
    """``(steps/s after step skip, seconds from launch to the first step)`` of a probe curve.

    Example:
        >>> probe_rate({"steps": [[1, 5.0], [2, 5.5], [3, 6.0], [4, 6.5]]}, skip=2)
        (2.0, 5.0)
    """
    steps = curve["steps"]
    first = steps[min(skip, len(steps) - 1) - 1] if skip else [0, steps[0][1]]
    last = steps[-1]
    span = last[1] - first[1]
    rate = (last[0] - first[0]) / span if span > 0 else float("inf")
    return rate, float(steps[0][1])


def size_epochs(
    seconds_left: float,
    steps_per_s: float,
    steps_per_epoch: int,
    startup_s: float,
    eval_s: float,
    evals: int,
    max_epochs: int,
) -> tuple[int, int]:
    """``(epochs, eval every N epochs)``: the most epochs (≥ 1) whose training, start-up and kNN
    passes (``eval_s`` each, at the cadence plus one at the end) fit in ``seconds_left``.

    Example:
        >>> size_epochs(300, 10.0, 100, 20.0, 10.0, 5, 100)  # 10 s an epoch
        (22, 4)
    """
    for epochs in range(max_epochs, 0, -1):
        every = max(1, epochs // max(1, evals))
        cost = startup_s + epochs * steps_per_epoch / steps_per_s
        cost += (epochs // every + 1) * eval_s
        if cost <= seconds_left:
            return epochs, every
    return 1, 1


def environment() -> dict[str, Any]:
    """GPU, driver, CPUs, Python and the versions of :data:`PACKAGES`."""
    import torch

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
        done = subprocess.run([smi, query, "--format=csv,noheader"], capture_output=True,
                              text=True, check=False)  # fmt: skip
        env["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    env["packages"] = versions
    env["pythonpath"] = os.environ.get("PYTHONPATH", "")
    return env


def steps_per_epoch(data: str, batch_size: int) -> int:
    """Full batches in one pass over the training split of ``data`` (one process)."""
    from hub_cutinit.data import count_examples, resolve_dataset

    ds, _, _ = resolve_dataset(data, "train")
    total = count_examples(ds)
    if not total:
        raise SystemExit(f"{data}: the number of training examples is unknown")
    return max(1, total // batch_size)


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """``summary.json``, ``summary.md`` and, when matplotlib is there, ``curves.png``."""
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    b = summary["baselines"]
    lines = [
        f"# {summary['method']}: c = 1 against the cut on one GPU",
        "",
        f"{summary['epochs']} epochs ({summary['steps_per_epoch']} steps each), warm-up "
        f"{summary['warmup_epochs']:g} epochs, kNN every {summary['eval_every_epochs']} epoch(s); "
        f"probe {summary['probe']['steps_per_s']:.2f} steps/s per run (both concurrent); "
        f"whole study {summary['wall_s']:.0f} s.",
        "",
        f"Baselines (once, same protocol): random-init {100 * b['random_init_knn']:.2f} %, "
        f"raw pixels {100 * b['raw_pixels_knn']:.2f} %.",
        "",
        "| variant | c | steps | final kNN (%) | kNN curve (step: %) | train images/s | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        curve = ", ".join(f"{p['step']}: {100 * p['knn_accuracy']:.1f}" for p in run["knn"])
        final = run.get("knn_accuracy")
        lines.append(
            f"| {run['variant']} | {run['c']:g} | {run['steps']} | "
            f"{'-' if final is None else f'{100 * final:.2f}'} | {curve} | "
            f"{run['train_images_per_s']:.0f} | {run['wall_time_s']:.0f} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in summary["runs"]:
        pts = [(p["step"], 100 * p["knn_accuracy"]) for p in run["knn"]]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{run['variant']} (c={run['c']:g})")
    ax.axhline(100 * b["random_init_knn"], ls=":", c="grey", label="random init")
    ax.axhline(100 * b["raw_pixels_knn"], ls="--", c="grey", label="raw pixels")
    ax.set(xlabel="step", ylabel="kNN accuracy (%)", title=summary["method"])
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def pack(runs_dir: Path, archive: Path) -> list[str]:
    """Every small text file under ``runs_dir`` (no weights) into ``archive``; their names."""
    names = []
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(runs_dir.rglob("*")):
            if path.is_file() and path.suffix in ARCHIVED_SUFFIXES:
                name = str(path.relative_to(runs_dir))
                tar.add(path, arcname=name)
                names.append(name)
    return names


def run_study(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    """Baselines, probe, sizing, the concurrent runs, the outputs (see the module docstring)."""
    started = args.started or time.time()
    deadline = started + args.budget_seconds
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs_dir or f"/tmp/gpu_convergence_{os.getpid()}")
    if runs.exists():
        shutil.rmtree(runs)
    runs.mkdir(parents=True)
    env = environment()
    (out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")
    print(json.dumps(env), flush=True)

    t0 = time.time()
    log = runs / "baselines/log.txt"
    base_argv = _child_argv(args, "baselines", runs / "baselines")
    _check(launch([[*base_argv, "--", *extra]], [log]), [log], "baselines")
    baselines = json.loads((runs / "baselines/baselines.json").read_text())
    baselines["wall_s"] = round(time.time() - t0, 2)
    print("baselines:", json.dumps(baselines), flush=True)

    t0 = time.time()
    probe_argv = [
        [*_child_argv(args, "run", runs / f"probe_{v}", variant=v,
                      max_steps=args.probe_steps, epochs=1), "--", *extra]
        for v in VARIANTS
    ]  # fmt: skip
    logs = [runs / f"probe_{v}/log.txt" for v in VARIANTS]
    _check(launch(probe_argv, logs), logs, "probe")
    curves = [json.loads((runs / f"probe_{v}/curve.json").read_text()) for v in VARIANTS]
    rates = [
        (probe_rate(c, args.probe_skip)[0], c["launched"] + c["steps"][0][1] - t0) for c in curves
    ]  # start-up: from the launch (imports included) to the first step
    probe = {
        "steps_per_s": min(r for r, _ in rates),
        "startup_s": max(s for _, s in rates),
        "per_variant": {
            v: {"steps_per_s": r, "startup_s": s} for v, (r, s) in zip(VARIANTS, rates, strict=True)
        },  # fmt: skip
        "wall_s": round(time.time() - t0, 2),
    }
    print("probe:", json.dumps(probe), flush=True)

    spe = steps_per_epoch(args.data, args.batch_size)
    eval_s = 2 * baselines["random_init_seconds"]  # two runs evaluate at the same time
    left = deadline - time.time() - args.reserve_seconds
    epochs, every = size_epochs(left, probe["steps_per_s"], spe, probe["startup_s"] + 5.0,
                                eval_s, args.evals, args.max_epochs)  # fmt: skip
    warmup = min(args.warmup_epochs, epochs / 2)
    print(f"sizing: {left:.0f} s left -> {epochs} epochs of {spe} steps, warm-up {warmup:g}, "
          f"kNN every {every}", flush=True)  # fmt: skip

    t0 = time.time()
    run_argv = [
        [*_child_argv(args, "run", runs / f"{args.method}_{v}_seed{args.seed}", variant=v,
                      epochs=epochs, warmup_epochs=warmup, eval_every_epochs=every),
         "--", *extra]
        for v in VARIANTS
    ]  # fmt: skip
    logs = [runs / f"{args.method}_{v}_seed{args.seed}/log.txt" for v in VARIANTS]
    _check(launch(run_argv, logs), logs, "training")
    train_wall = time.time() - t0
    results = []
    for v in VARIANTS:
        run_dir = runs / f"{args.method}_{v}_seed{args.seed}"
        res = json.loads((run_dir / "result.json").read_text())
        curve = json.loads((run_dir / "curve.json").read_text())
        config = run_dir / "model/config.json"
        if config.exists():
            shutil.copy(config, run_dir / "config.json")
        results.append({
            "variant": v, "c": res["c"], "steps": res["steps"], "epochs": res["epochs"],
            "knn_accuracy": res.get("knn_accuracy"), "knn": curve["knn"],
            "train_images_per_s": res["train_images_per_s"], "wall_time_s": res["wall_time_s"],
            "lr": res["lr"], "warmup_steps": res.get("warmup_steps"),
        })  # fmt: skip
    summary = {
        "method": args.method, "seed": args.seed, "budget_seconds": args.budget_seconds,
        "epochs": epochs, "steps_per_epoch": spe, "warmup_epochs": warmup,
        "eval_every_epochs": every, "recipe_flags": list(extra), "probe": probe,
        "baselines": baselines, "train_wall_s": round(train_wall, 2), "runs": results,
        "same_steps": len({r["steps"] for r in results}) == 1,
        "environment": {"gpu": env.get("gpu"), "torch": env["packages"].get("torch")},
    }  # fmt: skip
    summary["wall_s"] = round(time.time() - started, 2)
    write_summary(out, summary)
    summary["archived"] = pack(runs, out / "runs.tar.gz")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("epochs", "same_steps", "wall_s")}), flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Parse; run the study (or, as a child, one run / the baselines)."""
    own, extra = split_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    if args.role != "study":
        run_child(args, extra)
        return None
    import torch

    if args.device_check == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --device-check no (and tiny settings) on a CPU.")
    return run_study(args, extra)


if __name__ == "__main__":
    main()
