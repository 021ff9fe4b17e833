"""The convergence study of PAPER §9: c = 1, the method's cut, and the learning-rate control.

    python recipes/convergence_study.py --help
    python recipes/convergence_study.py --methods simclr byol simsiam --seeds 0 1 2 \
        --out-dir recipes/results/convergence        # the command of the committed results

A repeated command skips finished runs. The study lives in
:mod:`hub_cutinit.experiments.convergence`.
"""

from hub_cutinit.experiments.convergence import main

if __name__ == "__main__":
    main()
