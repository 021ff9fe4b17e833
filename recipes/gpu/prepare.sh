#!/usr/bin/env bash
# Run HERE (the CPU machine), once, before the device command (recipes/gpu/convergence.py).
# Writes two git-ignored folders that the device run carries (about 37 MB together):
#   data/fashion_mnist_full/  every Fashion-MNIST image as parquet (60 + 4 shards), from
#                             Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
#   .whl/                     wheels of the Python packages the device image lacks (datasets and
#                             its dill/multiprocess, torchdata), pinned to this venv's versions
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"
"$PY" scripts/build_builtin_dataset.py --full --out data/fashion_mnist_full
pins=$("$PY" - <<'PYEOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("datasets", "dill", "multiprocess", "torchdata")))
PYEOF
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $pins
du -sh data/fashion_mnist_full .whl
