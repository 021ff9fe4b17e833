"""Integrations of the convergence monitor with other training loops.

:mod:`hub_cutinit.integrations.transformers`: ``ConvergenceMonitorCallback``, a
``transformers.TrainerCallback`` built on :class:`hub_cutinit.convergence_monitor.ConvergenceMonitor`.
Each integration imports its framework only when imported itself.
"""

__all__: list[str] = []  # the submodules are the API
