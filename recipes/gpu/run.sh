#!/usr/bin/env bash
# The GPU run (issue 20 item 5): c = 1 against the cut on full Fashion-MNIST, ≤ 9 min of wall
# time, ≤ 8 files in $OUT. Prepare HERE first (bash recipes/gpu/prepare.sh), then on the device:
#   run(command="bash recipes/gpu/run.sh", carry=["data/fashion_mnist_full", ".whl"], timeout_s=600)
# Usage: run.sh [--budget-seconds S] [study flags] [-- recipe flags]
#   study flags go to recipes/gpu/convergence.py (e.g. --method simclr); the recipe flags after
#   -- go to every training run (e.g. -- --augment-on device).
# Steps: installs the wheels the device lacks from .whl/ (no internet there; pyarrow from
# .whl-pyarrow/ when the device's is older than datasets needs), records the environment, runs
# the study (baselines once, a throughput probe, epochs sized to the budget, c1 and cut
# concurrently) and leaves in $OUT (default recipes/results/gpu_convergence): environment.json,
# summary.json, summary.md, curves.png, runs.tar.gz and log.txt.
set -euo pipefail
started=$(date +%s)
cd "$(dirname "$0")/../.."
PY="${PY:-python3}"
OUTDIR="${OUT:-recipes/results/gpu_convergence}"
BUDGET=540  # seconds for the whole script: 9 minutes
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --budget-seconds) BUDGET="$2"; shift 2 ;;
        --) args+=("$@"); break ;;
        *) args+=("$1"); shift ;;
    esac
done
mkdir -p "$OUTDIR"
LOG="$OUTDIR/log.txt"
: >"$LOG"
say() { echo "[run.sh $(($(date +%s) - started))s] $*" | tee -a "$LOG" >&2; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
SITE="${SITE:-/tmp/site}"

# 1. wheels the device lacks (datasets and its dill/multiprocess, torchdata), from .whl/
missing=$("$PY" - <<'PYEOF'
import importlib.util
print(" ".join(m for m in ("datasets", "dill", "multiprocess", "torchdata")
               if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then
    wheels=()
    for name in $missing; do
        wheel=$(find .whl -maxdepth 1 -name "${name}-*.whl" 2>/dev/null | head -1)
        if [ -z "$wheel" ]; then
            say "missing $name and no .whl/$name-*.whl: run recipes/gpu/prepare.sh here and carry .whl"
            exit 2
        fi
        wheels+=("$wheel")
    done
    say "installing ${wheels[*]} into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
        "${wheels[@]}" 2>&1 | tee -a "$LOG"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# 2. the pyarrow fallback: datasets needs a minimum pyarrow; the device's may be older
need=$("$PY" - <<'PYEOF'
import importlib.metadata as m, re
try:
    req = next((r for r in m.requires("datasets") or [] if r.startswith("pyarrow")), "")
except m.PackageNotFoundError:
    req = ""
low = re.search(r">=\s*([0-9.]+)", req)
have = m.version("pyarrow") if low else "0"
key = lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3])
print(f"{have} {low.group(1)}" if low and key(have) < key(low.group(1)) else "")
PYEOF
)
if [ -n "$need" ]; then
    wheel=$(find .whl-pyarrow .whl -maxdepth 1 -name "pyarrow-*.whl" 2>/dev/null | head -1)
    if [ -z "$wheel" ]; then
        say "pyarrow ${need% *} is older than datasets needs (>= ${need#* }) and no pyarrow wheel was carried: carry .whl-pyarrow (recipes/gpu/prepare.sh)"
        exit 3
    fi
    say "pyarrow ${need% *} < ${need#* }: installing $wheel into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$wheel" 2>&1 | tee -a "$LOG"
    case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" ;; esac
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import datasets, torchdata, hub_cutinit" 2>&1 | tee -a "$LOG"

# 3. the data (built here by prepare.sh), unless --data names another
if [ ! -d data/fashion_mnist_full ] && [[ " ${args[*]:-} " != *" --data "* ]]; then
    say "data/fashion_mnist_full missing: run recipes/gpu/prepare.sh here and carry it"
    exit 2
fi

# 4. the study; what it leaves beyond its 5 files is in runs.tar.gz
left=$((BUDGET - ($(date +%s) - started) - 5))
say "study with $left s of the $BUDGET s budget: ${args[*]:-}"
set +e
"$PY" recipes/gpu/convergence.py --out-dir "$OUTDIR" --budget-seconds "$left" "${args[@]}" \
    2>&1 | tee -a "$LOG"
code=${PIPESTATUS[0]}
set -e
say "done (exit $code); files in $OUTDIR: $(find "$OUTDIR" -type f | wc -l)"
exit "$code"
