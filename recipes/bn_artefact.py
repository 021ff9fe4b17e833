"""Does the kNN monitor penalise a cut model early in a run? (issue 20, item 1)

Cut-initialisation divides the weights but not BatchNorm's running variance (1 at init, while a
cut network's pre-BN variance is ~c⁻⁴). This trains c = 1 and the method's cut from the same seed
in the convergence study's regime and, at fixed early steps, measures the kNN accuracy of the
backbone three ways: with the running statistics as they are (``running``), with statistics
re-estimated on 8 bank batches (``precise``, :func:`hub_cutinit.precise_bn.precise_bn`), and at
step 0 also with the running statistics put on the cut scale (variance × c⁻⁴, mean × c⁻²: what
``cut_init`` could do at init). A callback does the measuring: the training itself is untouched.

    python recipes/bn_artefact.py --out recipes/results/bn_artefact
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hub_cutinit.experiments.convergence import StudyConfig, train_argv, training_dataset
from hub_cutinit.training import TrainerCallback, parse_args, train
from hub_cutinit.training.knn_monitor import KnnMonitor

STEPS = (0, 5, 10, 20, 39, 78, 156)


def cut_scaled_statistics(backbone: nn.Module, c: float) -> nn.Module:
    """A copy whose BN running statistics are put on the cut scale (var × c⁻⁴, mean × c⁻²)."""
    scaled = copy.deepcopy(backbone)
    for module in scaled.modules():
        if isinstance(module, nn.modules.batchnorm.BatchNorm2d | nn.BatchNorm1d):
            module.running_var.mul_(c**-4)
            module.running_mean.mul_(c**-2)
    return scaled


class MeasureBN(TrainerCallback):
    """kNN with the running and with re-estimated BN statistics at the steps in ``STEPS``."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def _measure(self, trainer: Any, step: int) -> None:
        knn = trainer.knn
        backbone = trainer.raw_model.backbone
        row: dict[str, Any] = {"step": step, "c": trainer.record.c}
        for mode in ("running", "precise"):
            monitor = KnnMonitor(
                trainer.accelerator, knn.loaders, k=knn.k, temperature=knn.temperature, bn=mode
            )
            row[mode] = monitor.evaluate(backbone)["knn_accuracy"]
        if step == 0 and trainer.record.c != 1:
            running = KnnMonitor(
                trainer.accelerator, knn.loaders, k=knn.k, temperature=knn.temperature, bn="running"
            )
            scaled = cut_scaled_statistics(backbone, trainer.record.c)
            row["cut_scaled"] = running.evaluate(scaled)["knn_accuracy"]
        bn = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
        row["first_bn_running_var"] = float(bn[1].running_var.mean())
        self.rows.append(row)
        print(row, flush=True)

    def on_train_begin(self, trainer, state, control):
        self._measure(trainer, 0)

    def on_step_end(self, trainer, state, control, *, logged):
        if state.step in STEPS:
            self._measure(trainer, state.step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="recipes/results/bn_artefact")
    parser.add_argument("--methods", nargs="+", default=["simclr", "simsiam"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    study = StudyConfig(runs_dir=str(out / "runs"))
    training_dataset(study)
    results = []
    for method in args.methods:
        for variant in ("c1", "cut"):
            argv_run = train_argv(
                study, method, variant, args.seed, out / "runs" / f"{method}_{variant}"
            )
            argv_run += ["--max-steps", str(max(STEPS)), "--no-baselines", "--eval-split", "test"]
            argv_run += ["--eval-every-epochs", "0", "--no-convergence-monitor"]
            measure = MeasureBN()
            train(parse_args(method, argv_run), callbacks=[measure])
            results += [{"method": method, "variant": variant, **r} for r in measure.rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "bn_artefact.json").write_text(json.dumps(results, indent=1))
    lines = ["| method | c | step | kNN running BN (%) | kNN precise BN (%) | running − precise |"]
    lines.append("|---|---|---|---|---|---|")
    for r in results:
        diff = 100 * (r["running"] - r["precise"])
        extra = f" (cut-scaled stats: {100 * r['cut_scaled']:.1f})" if "cut_scaled" in r else ""
        lines.append(
            f"| {r['method']} | {r['c']:g} | {r['step']} | {100 * r['running']:.1f}{extra} | "
            f"{100 * r['precise']:.1f} | {diff:+.1f} |"
        )
    (out / "bn_artefact.md").write_text("\n".join(lines) + "\n")
    (out / "command.txt").write_text("python recipes/bn_artefact.py " + " ".join(argv or []) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
