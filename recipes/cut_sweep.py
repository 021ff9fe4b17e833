"""Cut-initialisation sweep (PAPER §6 F), norm vs weight decay (§6 D) and GradScale (§5).

    # c ∈ {1, 3, 9} for SimCLR and BYOL, 2 seeds, 3 epochs of the built-in dataset on a CPU
    python recipes/cut_sweep.py --methods simclr byol --cs 1 3 9 --seeds 0 1 --epochs 3 \
        --small-heads --out recipes/results/cut_sweep
    # experiment D: final embedding norm against weight decay λ (no cut)
    python recipes/cut_sweep.py --methods simclr byol --cs 1 --weight-decays 0 1e-6 5e-4 5e-3 \
        --seeds 0 --epochs 1 --small-heads --out recipes/results/weight_decay
    # GradScale p ∈ {0, 1}
    python recipes/cut_sweep.py --methods simclr --cs 1 3 --grad-scale-powers 0 1

Repeat a command to continue an interrupted sweep (finished runs are skipped); `--no-train`
rewrites the CSV, plots and tables from the finished runs; `--dry-run` lists the runs. Every
flag: `python recipes/cut_sweep.py --help`. The code is
:mod:`hub_cutinit.experiments.sweep`.
"""

import sys

from hub_cutinit.experiments.sweep import main

if __name__ == "__main__":
    main(sys.argv[1:])
