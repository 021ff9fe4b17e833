"""Experiments built on the library: applications, not part of the training or Hub API.

- :mod:`hub_cutinit.experiments.sweep`: the cut / weight-decay / GradScale sweep (PAPER §6 D, F;
  §5): its grid, configuration, running and resuming, and its command line
  (``recipes/cut_sweep.py``);
- :mod:`hub_cutinit.experiments.tables`: the sweep's CSV rows, summaries over seeds and
  markdown tables;
- :mod:`hub_cutinit.experiments.plots`: the sweep's curves and weight-decay figures;
- :mod:`hub_cutinit.experiments.norm_confidence`: "norms encode confidence" (PAPER §5) on a
  saved model, ``hub-cutinit analyze``.

The library side (training, evaluation, the Hub format, figures and atomic files) never
imports this package.

Example:
    >>> from hub_cutinit.experiments.sweep import SweepConfig, sweep_grid
    >>> len(sweep_grid(SweepConfig(methods=["simclr"], cs=[1, 3], seeds=[0, 1])))
    4
"""

__all__: list[str] = []  # the submodules are the API
