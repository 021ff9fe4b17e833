#!/usr/bin/env bash
# The device command (see recipes/gpu/convergence.py for what it trains and how to call it):
#   run(command="bash recipes/gpu/run.sh", carry=["data/fashion_mnist_full", ".whl"], timeout_s=600)
# Extra arguments go to convergence.py (e.g. --budget full on a longer lease).
# Assumes the device's python3 holds torch, torchvision, timm, accelerate, huggingface_hub,
# pyarrow, pandas, matplotlib (its image does); installs any of datasets, dill, multiprocess,
# torchdata that it lacks from the carried .whl/ (no internet there); runs hub_cutinit from src/
# (no pip install: no build step, nothing to fetch). Outputs go to $OUT (they come back) and,
# when $OUT is unset, to recipes/results/gpu_convergence/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-python3}"
OUTDIR="${OUT:-recipes/results/gpu_convergence}"
mkdir -p "$OUTDIR"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
missing=$("$PY" - <<'PYEOF'
import importlib.util
print(" ".join(m for m in ("datasets", "dill", "multiprocess", "torchdata")
               if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then
    wheels=""
    for name in $missing; do
        wheel=$(ls .whl/"$name"-*.whl 2>/dev/null | head -1) || true
        [ -n "$wheel" ] || { echo "missing $name and no .whl/$name-*.whl: run recipes/gpu/prepare.sh here and carry .whl" >&2; exit 2; }
        wheels="$wheels $wheel"
    done
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $wheels
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF' | tee "$OUTDIR/environment.txt"
import importlib.metadata as m, os, torch
print("gpu:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "cpus:", os.cpu_count())
for n in ("torch", "torchvision", "timm", "accelerate", "datasets", "torchdata", "pyarrow", "huggingface_hub"):
    try:
        print(n, m.version(n))
    except m.PackageNotFoundError:
        print(n, "MISSING")
PYEOF
[ -d data/fashion_mnist_full ] || [[ " $* " == *" --data "* ]] || {
    echo "data/fashion_mnist_full missing: run recipes/gpu/prepare.sh here and carry it" >&2; exit 2; }
set -o pipefail
"$PY" recipes/gpu/convergence.py --out-dir "$OUTDIR" "$@" 2>&1 | tee "$OUTDIR/log.txt"
