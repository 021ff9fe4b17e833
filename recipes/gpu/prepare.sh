#!/usr/bin/env bash
# Run HERE (the CPU machine), once, before the device command (recipes/gpu/run.sh). Works on a
# fresh machine with only python3: it makes .venv (pip install -e .) when there is none,
# installs Debian's dataset-fashion-mnist when /usr/share/datasets/fashion-mnist is missing,
# and writes three git-ignored folders:
#   data/fashion_mnist_full/  every Fashion-MNIST image as parquet (60,000 train in 60 shards,
#                             10,000 test in 4), about 36 MB          (carried)
#   .whl/                     wheels the device image lacks: datasets, dill, multiprocess,
#                             torchdata, pinned to this venv's versions, about 1 MB (carried)
#   .whl-pyarrow/             the pyarrow wheel datasets needs (about 55 MB): carried only
#                             when run.sh exits 3 (the device's pyarrow is too old); it does
#                             not fit in one call's 64 MiB beside the full data
# Environment: PY (default .venv/bin/python), SOURCE (the idx files), SKIP_PYARROW=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
SOURCE="${SOURCE:-/usr/share/datasets/fashion-mnist}"
if [ -z "${PY:-}" ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "prepare: no .venv: creating it (python3 -m venv .venv; pip install -e .)" >&2
        python3 -m venv .venv
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e .
    fi
    PY=.venv/bin/python
fi
if [ ! -e "$SOURCE/train-images-idx3-ubyte.gz" ] && [ ! -e "$SOURCE/train-images-idx3-ubyte" ]; then
    echo "prepare: $SOURCE missing: installing Debian's dataset-fashion-mnist" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist
fi
"$PY" scripts/build_builtin_dataset.py --full --source "$SOURCE" --out data/fashion_mnist_full
pins=$("$PY" - <<'PYEOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("datasets", "dill", "multiprocess", "torchdata")))
PYEOF
)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
download() {  # download DEST SPEC...
    local dest="$1"
    shift
    mkdir -p "$dest"
    # shellcheck disable=SC2068  # the specs are words
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d "$dest" $@
}
download .whl "$pins"
if [ "${SKIP_PYARROW:-0}" != 1 ]; then
    download .whl-pyarrow "pyarrow==$("$PY" -c 'import pyarrow; print(pyarrow.__version__)')"
fi
du -sh data/fashion_mnist_full .whl .whl-pyarrow 2>/dev/null || true
