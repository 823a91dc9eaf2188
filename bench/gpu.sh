#!/usr/bin/env bash
# The GPU run of issue 5 in one command: CUDA correctness tests, the benchmarks, the report; under 8 minutes on
# one H100/H200, everything (JSON, logs, report.md, plots) in one folder.
#
#   bench/gpu.sh                 on a CUDA machine: bench/results/<gpu-name>/
#   bench/gpu.sh --dry-run       on a CPU: the same pipeline at tiny sizes in under a minute: only the tests
#                                marked cuda (they skip), --bench-scale=tiny, no compile stage; bench/results/dry-run/
#   bench/gpu.sh --out DIR       results in DIR instead
#
# Stages, each under `timeout -s INT` (pytest-benchmark still writes the cases it finished), against one deadline:
#   tests     pytest -m "not slow": first the files that run on the GPU (kernels, the models' CUDA paths), then the rest
#   kernels   neuron ops: triton, reference, SpikingJelly (torch / triton / cuda backends) x fwd, fwd+bwd, rate x T
#   training  ResNet-18 training steps, bptt / rate / blockwise x T = 1..16, time and peak memory
#   compile   torch.compile of the reference twins (slow to build: last, up to T=8, cut at the deadline)
#   report    python -m bench.report over every JSON in the folder
# Exit status: 0 when every stage passed; else the last failing stage's status (the report is written anyway).
set -uo pipefail

DRY_RUN=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="${2:?--out needs a folder}"; shift ;;
        --out=*) OUT="${1#--out=}" ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "bench/gpu.sh: unknown argument '$1' (accepted: --dry-run, --out DIR)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.."
REPO=$(pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
START=$SECONDS
BUDGET=${BENCH_BUDGET_S:-430}  # + 30 s for the report + start-up: under 8 minutes in all

if [ "$DRY_RUN" = 1 ]; then
    MACHINE=dry-run
    TESTS=(tests -m cuda)
    SCALE=(--bench-scale=tiny)
    ROUNDS=(--benchmark-max-time=0.001 --benchmark-min-rounds=1 --benchmark-warmup=off)
    COMPILE_MAX_STEPS=0  # no compile cases: building the graphs takes most of a minute on a CPU
else
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "bench/gpu.sh: no CUDA device here; use --dry-run to check the pipeline on a CPU" >&2
        exit 2
    fi
    MACHINE=$("$PYTHON" -c "import torch; from bench.config import machine_slug; print(machine_slug(torch.cuda.get_device_name()))")
    # The files that run on the GPU first (kernels on CUDA tensors, the models' CUDA paths), then the rest of the
    # suite, so that a cut at the stage's cap leaves the device checks done. The slow tests are CPU training runs
    # (default job, DDP, resume), not device checks.
    ON_GPU=(tests/test_kernels_lif.py tests/test_kernels_ops.py tests/test_kernels_peers.py tests/test_models_cuda.py
            tests/test_models_rate.py)
    mapfile -t REST < <(ls tests/test_*.py | grep -vxF -f <(printf '%s\n' "${ON_GPU[@]}"))
    TESTS=("${ON_GPU[@]}" "${REST[@]}" -m "not slow")
    SCALE=(--bench-scale=large)
    ROUNDS=(--benchmark-max-time=0.25 --benchmark-min-rounds=5)
    COMPILE_MAX_STEPS=8
fi
OUT=${OUT:-bench/results/$MACHINE}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/*.json "$OUT"/*.log
echo "bench/gpu.sh: results and logs in $OUT"

STATUS=0
# run_stage NAME CAP_SECONDS COMMAND...: runs COMMAND for at most the smaller of CAP and what is left of the budget
# (less the 10 s a command gets to write its results after SIGINT).
run_stage() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START) - 10))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 5 ]; then
        echo "[$name] skipped: the ${BUDGET}s budget is spent" | tee "$OUT/$name.log"
        return
    fi
    echo "[$name] up to ${limit}s: $*"
    local t0=$SECONDS rc=0
    timeout -s INT -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    # pytest: 5 = nothing collected/selected (all skipped on this machine) is not a failure.
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        STATUS=$rc
        echo "[$name] exit $rc after $((SECONDS - t0))s (124/130: cut at the time limit); see $OUT/$name.log"
    else
        echo "[$name] done in $((SECONDS - t0))s"
    fi
    tail -n 3 "$OUT/$name.log" | sed "s/^/[$name]   /"
}

{
    date -u
    git -C "$REPO" rev-parse HEAD 2>/dev/null
    "$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    "$PYTHON" -c "import spikingjelly; print('spikingjelly', spikingjelly.__version__)" 2>/dev/null || echo "spikingjelly not installed"
    command -v nvidia-smi >/dev/null && nvidia-smi
} >"$OUT/env.log" 2>&1

BENCH=(-p no:cacheprovider --benchmark-only "${SCALE[@]}" "${ROUNDS[@]}" -q -rs)
run_stage tests 150 "$PYTHON" -m pytest "${TESTS[@]}" -q -rs -p no:cacheprovider --junitxml="$OUT/tests.xml"
run_stage kernels 150 "$PYTHON" -m pytest bench/test_kernels_bench.py "${BENCH[@]}" \
    --bench-providers=triton,reference,sj-torch,sj-triton,sj-cuda --benchmark-json="$OUT/kernels.json"
run_stage training 120 "$PYTHON" -m pytest bench/test_training_bench.py "${BENCH[@]}" --benchmark-json="$OUT/training.json"
if [ "$COMPILE_MAX_STEPS" -gt 0 ]; then
    run_stage compile 150 "$PYTHON" -m pytest bench/test_kernels_bench.py "${BENCH[@]}" -k "not copy" \
        --bench-providers=compile --bench-compile-max-steps="$COMPILE_MAX_STEPS" --benchmark-json="$OUT/compile.json"
fi
BUDGET=$((BUDGET + 30))  # the report always gets its time
run_stage report 30 "$PYTHON" -m bench.report "$OUT" --out "$OUT" --machine "$MACHINE"

echo "bench/gpu.sh: finished in $((SECONDS - START))s with status $STATUS; report: $OUT/report.md"
exit "$STATUS"
