#!/usr/bin/env bash
# The GPU run in one command, under 7 minutes on one H100/H200: the compile check, the CUDA tests, the launch-shape
# sweep, the kernel and training benchmarks (against SpikingJelly when installed) and the report, in one folder.
#
#   bench/gpu.sh                     on a CUDA machine: results in bench/results/<gpu-name>/
#   bench/gpu.sh --dry-run           on a CPU: every stage that can run there, at tiny sizes (1-10 minutes: the
#                                    compile check takes most of it without a warm Triton cache)
#   bench/gpu.sh --out DIR           results in DIR: a folder this script creates, or one it created before
#   bench/gpu.sh --archive FILE.tgz  after every stage, pack the results folder into FILE.tgz (a run cut short still
#                                    leaves every finished stage in it)
#   bench/gpu.sh --commit SHA        the commit to record where .git is absent (else `git rev-parse HEAD`)
#
# Stages, each under `timeout -s INT` (pytest-benchmark still writes the cases it finished), against one deadline:
#   aot       python -m kernels.aot for this GPU's target (and sm_80, sm_90 on a CPU)
#   tests     the test files that exercise CUDA (kernels on CUDA tensors, the models' CUDA paths)
#   sweep     launch shapes: every (BLOCK, num_warps) candidate per op, dtype and layer size (CUDA only)
#   kernels   neuron ops: triton and SpikingJelly's backends x fwd, fwd+bwd, rate x N x dtype x T
#   training  CIFAR ResNet-18 steps, SpikeKD bptt / rate / blockwise and SpikingJelly BPTT x T = 1..16
#   report    python -m bench.report over every JSON in the folder
# Exit status: 0 when every stage passed; else the last failing stage's status (the report is written anyway).
set -uo pipefail

DRY_RUN=0
RESULTS=""
ARCHIVE=""
COMMIT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) RESULTS="${2:?--out needs a folder}"; shift ;;
        --out=*) RESULTS="${1#--out=}" ;;
        --archive) ARCHIVE="${2:?--archive needs a file name}"; shift ;;
        --archive=*) ARCHIVE="${1#--archive=}" ;;
        --commit) COMMIT="${2:?--commit needs a commit hash}"; shift ;;
        --commit=*) COMMIT="${1#--commit=}" ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "bench/gpu.sh: unknown argument '$1' (accepted: --dry-run, --out DIR, --archive FILE, --commit SHA)" >&2
           exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.."
REPO=$(pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
if [ -z "$PYTHON" ]; then
    echo "bench/gpu.sh: neither python nor python3 is on the PATH (or set PYTHON)" >&2
    exit 2
fi
START=$SECONDS
BUDGET=${BENCH_BUDGET_S:-380}  # + 20 s for the report and the start: under 7 minutes in all

if [ "$DRY_RUN" = 1 ]; then
    MACHINE=dry-run
    AOT_TARGETS=sm_80,sm_90
    AOT_CAP=200  # x CAP_SCALE = 600 s: a CPU without a warm Triton cache compiles about a thousand specialisations
    CAP_SCALE=3  # a shared CPU runs the stages' tiny sizes at any speed: only the pipeline is checked
    BUDGET=${BENCH_BUDGET_S:-900}
    SCALE=(--bench-scale=tiny)
    ROUNDS=(--benchmark-max-time=0.001 --benchmark-min-rounds=1 --benchmark-warmup=off)
    PROVIDERS=reference,sj-torch
else
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "bench/gpu.sh: no CUDA device here; use --dry-run to check the pipeline on a CPU" >&2
        exit 2
    fi
    MACHINE=$("$PYTHON" -c "import torch; from bench.config import machine_slug; print(machine_slug(torch.cuda.get_device_name()))")
    AOT_TARGETS=$("$PYTHON" -c "import torch; print('sm_%d%d' % torch.cuda.get_device_capability())")
    AOT_CAP=45
    CAP_SCALE=1
    SCALE=(--bench-scale=large)
    ROUNDS=(--benchmark-max-time=0.05 --benchmark-min-rounds=5)
    PROVIDERS=triton,sj-triton,sj-auto
fi
RESULTS=${RESULTS:-bench/results/$MACHINE}

# The results folder is ours: created here (with a marker), or created by an earlier run of this script. A folder
# someone else made is used only while empty; nothing outside the folder is written, and inside it only our files.
MARKER=.spikekd-gpu-results
if [ -e "$RESULTS" ] && [ ! -d "$RESULTS" ]; then
    echo "bench/gpu.sh: --out $RESULTS exists and is not a folder" >&2
    exit 2
fi
if [ -d "$RESULTS" ] && [ ! -e "$RESULTS/$MARKER" ] && [ -n "$(ls -A "$RESULTS")" ]; then
    echo "bench/gpu.sh: --out $RESULTS is a folder this script did not create and is not empty; give a new folder" >&2
    exit 2
fi
mkdir -p "$RESULTS" && touch "$RESULTS/$MARKER"
RESULTS=$(cd "$RESULTS" && pwd)
OUR_FILES=(env.log aot.log tests.log tests.xml sweep.log launch_sweep.json launch_sweep.md kernels.log kernels.json
           training.log training.json report.log report.md training_time.png training_memory.png kernels_gbps.png)
for name in "${OUR_FILES[@]}"; do rm -f "$RESULTS/$name"; done
echo "bench/gpu.sh: results and logs in $RESULTS"

pack() {
    [ -n "$ARCHIVE" ] || return 0
    tar czf "$ARCHIVE.tmp" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")" && mv "$ARCHIVE.tmp" "$ARCHIVE"
}

STATUS=0
# run_stage NAME CAP_SECONDS COMMAND...: runs COMMAND for at most the smaller of CAP (x CAP_SCALE) and what is left of
# the budget (less the 10 s a command gets to write its results after SIGINT), then packs the folder.
run_stage() {
    local name=$1 cap=$(($2 * CAP_SCALE))
    shift 2
    local left=$((BUDGET - (SECONDS - START) - 10))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 5 ]; then
        echo "[$name] skipped: the ${BUDGET}s budget is spent" | tee "$RESULTS/$name.log"
        return
    fi
    echo "[$name] up to ${limit}s: $*"
    local t0=$SECONDS rc=0
    timeout -s INT -k 10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1 || rc=$?
    # pytest: 5 = nothing collected/selected (all skipped on this machine) is not a failure.
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        STATUS=$rc
        echo "[$name] exit $rc after $((SECONDS - t0))s (124/130: cut at the time limit); see $RESULTS/$name.log"
    else
        echo "[$name] done in $((SECONDS - t0))s"
    fi
    tail -n 3 "$RESULTS/$name.log" | sed "s/^/[$name]   /"
    pack
}

{
    date -u
    echo "commit ${COMMIT:-$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)}"
    "$PYTHON" - <<'EOF'
import importlib.metadata as md
import torch
for name in ("torch", "triton", "spikingjelly", "pytest-benchmark"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
print("cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
EOF
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} >"$RESULTS/env.log" 2>&1
pack

CUDA_TESTS=(tests/test_kernels_layouts.py tests/test_kernels_lif.py tests/test_kernels_ops.py tests/test_models_cuda.py
            tests/test_kernels_peers.py tests/test_models_rate.py)
BENCH=(-p no:cacheprovider --benchmark-only "${SCALE[@]}" "${ROUNDS[@]}" -q -rs)
run_stage aot "$AOT_CAP" env -u TRITON_INTERPRET "$PYTHON" -m kernels.aot --target "$AOT_TARGETS"
if [ "$DRY_RUN" = 1 ]; then
    run_stage tests 60 "$PYTHON" -m pytest "${CUDA_TESTS[@]}" -m cuda -q -rs -p no:cacheprovider --junitxml="$RESULTS/tests.xml"
else
    run_stage tests 150 "$PYTHON" -m pytest "${CUDA_TESTS[@]}" -k "not aot" -q -rs -p no:cacheprovider \
        --junitxml="$RESULTS/tests.xml"
    run_stage sweep 40 "$PYTHON" -m bench.launch_sweep --out "$RESULTS"
fi
run_stage kernels 100 "$PYTHON" -m pytest bench/test_kernels_bench.py "${BENCH[@]}" \
    --bench-providers="$PROVIDERS" --benchmark-json="$RESULTS/kernels.json"
run_stage training 90 "$PYTHON" -m pytest bench/test_training_bench.py "${BENCH[@]}" --benchmark-json="$RESULTS/training.json"
BUDGET=$((BUDGET + 20))  # the report always gets its time
run_stage report 20 "$PYTHON" -m bench.report "$RESULTS" --out "$RESULTS" --machine "$MACHINE"

echo "bench/gpu.sh: finished in $((SECONDS - START))s with status $STATUS; report: $RESULTS/report.md"
exit "$STATUS"
