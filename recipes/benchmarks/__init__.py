"""Benchmarks of hub_cutinit (``make bench``; see ``python -m recipes.benchmarks --help``).

CPU scripts, each with ``main(argv)``, ``--quick`` and a JSON result in ``results/<name>.json``:
``train_step`` (images/s vs a hand-written loop and lightly), ``overhead`` (norm tracking,
framework, kNN monitor), ``data_pipeline`` (is the loader the bottleneck), ``memory`` (peak
RSS of a step) and ``cut_init_time`` (linear in parameters, no copies). ``gpu_bench`` is the
same step comparison on one GPU in bf16. ``common`` holds the interleaved-timing helpers.
"""
