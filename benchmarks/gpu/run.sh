#!/usr/bin/env bash
# One GPU verification run (issue 19): every CUDA path checked and measured, each stage under its
# own timeout and all of them under one budget, so one failure never hides the rest and the
# summary is always written.  See benchmarks/README.md, "GPU verification".
#
#   bash benchmarks/gpu/run.sh              # on a CUDA machine; results in
#                                           # benchmarks/results/<date>-gpu-<device>/
#   bash benchmarks/gpu/run.sh --dry-run    # the same plumbing on CPU, tiny shapes (a test runs it)
#   options: --out DIR (results directory), --archive FILE (a .tar.gz of the results directory,
#            rewritten after every stage: one file to fetch, complete even if the run is killed), -h
#   env: PYTHON (default python3, else python), GPU_KIT_BUDGET (s for the whole run, default 480;
#        dry run 300), GPU_KIT_FLASH_TIMEOUT (s, default 120), GPU_KIT_WHEELS (a directory of
#        wheels to install flash-attn from, offline), GPU_KIT_FAIL_STAGE=N (tests: stage N fails)
#
# The project runs from this checkout (its root goes first on PYTHONPATH), installed or not: a
# lent GPU machine has its own image's Python packages and no network.  Exit status 0 only when
# every stage passed.
set -u
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-$(command -v python3 || command -v python)}
DRY=0
OUT=""
ARCHIVE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out|--archive)
            [ $# -ge 2 ] || { echo "run.sh: $1 needs a path" >&2; exit 2; }
            if [ "$1" = --out ]; then OUT=$2; else ARCHIVE=$2; fi
            shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument '$1' (accepted: --dry-run, --out DIR, --archive FILE, -h)" >&2; exit 2 ;;
    esac
    shift
done
START=$(date +%s)
DEADLINE=$((START + ${GPU_KIT_BUDGET:-$([ "$DRY" = 1 ] && echo 300 || echo 480)}))

if [ "$DRY" = 1 ]; then
    DEVICE="cpu (dry run)"
    OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-kit-dry.XXXXXX")}
else
    if ! DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name())" 2>/dev/null); then
        echo "run.sh: no CUDA device visible to torch ($PY); on a machine without one use --dry-run" >&2
        exit 2
    fi
    SLUG=$(printf '%s' "$DEVICE" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
    OUT=${OUT:-benchmarks/results/$(date +%F)-gpu-$SLUG}
fi
mkdir -p "$OUT" || { echo "run.sh: cannot create results directory '$OUT'" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
if [ -n "$ARCHIVE" ]; then
    mkdir -p "$(dirname "$ARCHIVE")" || { echo "run.sh: cannot create the directory of '$ARCHIVE'" >&2; exit 2; }
    ARCHIVE=$(cd "$(dirname "$ARCHIVE")" && pwd)/$(basename "$ARCHIVE")
fi
echo "GPU verification: device '$DEVICE', python $PY, results in $OUT${ARCHIVE:+ (archived to $ARCHIVE)}"

archive() {  # the results directory as one file, replaced atomically
    [ -n "$ARCHIVE" ] || return 0
    tar -C "$(dirname "$OUT")" -czf "$ARCHIVE.tmp" "$(basename "$OUT")" && mv -f "$ARCHIVE.tmp" "$ARCHIVE"
}
left() { echo $((DEADLINE - $(date +%s))); }

# -- flash-attn: only if not importable, only within its budget, never fatal ---------------------
has_flash() { "$PY" -c "import flash_attn" >/dev/null 2>&1; }
if has_flash; then
    FLASH=present
elif [ "$DRY" = 1 ]; then
    FLASH="not installed (dry run installs nothing)"
else
    budget=${GPU_KIT_FLASH_TIMEOUT:-120}
    [ "$budget" -le "$(left)" ] || budget=$(left)
    if [ -n "${GPU_KIT_WHEELS:-}" ]; then
        source_args=(--no-index --find-links "$GPU_KIT_WHEELS")  # carried wheels: no network needed
    else
        source_args=(--retries 0 --timeout 15)  # an offline machine fails in seconds, not minutes
    fi
    echo "flash-attn: not importable; trying 'pip install flash-attn --no-build-isolation ${source_args[*]}' for at most ${budget}s"
    if timeout -k 10 "$budget" "$PY" -m pip install flash-attn --no-build-isolation "${source_args[@]}" \
            >"$OUT/0-flash-attn-install.log" 2>&1 && has_flash; then
        FLASH=installed
    else
        FLASH="unavailable (install gave up, see 0-flash-attn-install.log)"
    fi
fi
echo "flash-attn: $FLASH; the flash backend is checked only when it is importable"

# -- the stages ----------------------------------------------------------------------------------
CHECKS="$PY benchmarks/gpu/checks.py"
# every test module with a GPU-marked test: collecting only these keeps a test module that needs
# a package the machine lacks (zstandard, datasets, lm-eval, ...) from stopping the collection
GPU_TESTS=$(grep -rlE --include='test_*.py' 'mark\.gpu' tests | sort | tr '\n' ' ')
PYTEST="$PY -m pytest -m gpu -p no:cacheprovider"
# pyproject's addopts turn on jaxtyping's beartype hook; without beartype, run without that hook
"$PY" -c "import beartype" >/dev/null 2>&1 || PYTEST="$PYTEST -o addopts='-ra --strict-markers'"
if [ "$DRY" = 1 ]; then
    BACKENDS="eager sdpa"
    S0="$PY benchmarks/gpu/environment.py --device cpu"
    S1="$PYTEST --collect-only -q $GPU_TESTS"
    S2="$CHECKS attention --device cpu --heads 4 --kv-heads 2 --head-dim 16 --seq 64"
    S3="$CHECKS loss --device cpu --tokens 64 --vocab 1001 --hidden 32"
    S4="$PY benchmarks/train_step.py --quick --device cpu --variants plain,fused"
    GEN="$PY benchmarks/generate.py --quick --device cpu"
    S6="$CHECKS sampler --device cpu --positions 32 --vocab 1001 --repeats 1"
    T=(30 120 60 60 60 60 60)
else
    BACKENDS="eager sdpa"
    has_flash && BACKENDS="$BACKENDS flash"
    S0="$PY benchmarks/gpu/environment.py --device cuda; rc=\$?; nvidia-smi; exit \$rc"
    S1="$PYTEST -q $GPU_TESTS"
    S2="$CHECKS attention --device cuda"            # head_dim 128, 32/8 heads, S 2048, bf16
    S3="$CHECKS loss --device cuda"                 # 2048 tokens, hidden 4096, V 100,278
    S4="$PY benchmarks/train_step.py --device cuda --preset sumi_7b --layers 4 --micro-batch 4 --warmup 3 --steps 10"  # bf16, fused, compile, ac
    GEN="$PY benchmarks/generate.py --device cuda --preset sumi_7b --layers 4 --dtype bfloat16 --steps 64"
    S6="$CHECKS sampler --device cuda"
    T=(60 150 60 60 210 120 60)
fi
S5=""
for b in $BACKENDS; do S5="$S5 echo '== backend $b'; $GEN --backend $b || rc=1;"; done
S5="rc=0; $S5 exit \$rc"
NAMES=(environment pytest-gpu attention loss train_step generate sampler)
CMDS=("$S0" "$S1" "$S2" "$S3" "$S4" "$S5" "$S6")
STAGES=(0 1 2 3 4 5 6)

STATUS=() SECS=() LOGS=()
ALL_OK=1
for n in "${STAGES[@]}"; do
    log="$OUT/$n-${NAMES[$n]}.log"
    cmd=${CMDS[$n]}
    if [ "${GPU_KIT_FAIL_STAGE:-}" = "$n" ]; then
        cmd="echo 'stage $n: forced failure (GPU_KIT_FAIL_STAGE=$n)'; exit 1"
    fi
    limit=${T[$n]}
    [ "$limit" -le "$(left)" ] || limit=$(left)
    start=$(date +%s.%N)
    if [ "$limit" -lt 5 ]; then
        echo "== stage $n ${NAMES[$n]}: skipped, the run's budget is spent (GPU_KIT_BUDGET)" | tee "$log"
        rc=skipped
    else
        echo "== stage $n ${NAMES[$n]} (timeout ${limit}s): $cmd" | tee "$log"
        timeout -k 10 "$limit" bash -c "$cmd" >>"$log" 2>&1
        rc=$?
    fi
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=passed ;;
        skipped) status=skipped ;;
        124|137) status=timeout ;;
        *) status="failed(rc=$rc)" ;;
    esac
    [ "$rc" = 0 ] || ALL_OK=0
    echo "   -> $status in ${secs}s"
    STATUS[$n]=$status SECS[$n]=$secs LOGS[$n]=$log
    archive
done

# -- summary: one table, one JSON line (both also saved) -----------------------------------------
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
{
    printf '%-6s %-12s %-14s %8s  %s\n' stage name status seconds "result file"
    for n in "${STAGES[@]}"; do
        printf '%-6s %-12s %-14s %8s  %s\n' "$n" "${NAMES[$n]}" "${STATUS[$n]}" "${SECS[$n]}" "${LOGS[$n]}"
    done
} | tee "$OUT/summary.txt"
stages=""
for n in "${STAGES[@]}"; do
    [ -n "$stages" ] && stages="$stages, "
    stages="$stages{\"stage\": $n, \"name\": \"${NAMES[$n]}\", \"status\": \"${STATUS[$n]}\", \"seconds\": ${SECS[$n]}, \"log\": $(json_str "${LOGS[$n]}")}"
done
passed=$([ "$ALL_OK" = 1 ] && echo true || echo false)
dry=$([ "$DRY" = 1 ] && echo true || echo false)
echo "{\"kit\": \"gpu\", \"dry_run\": $dry, \"device\": $(json_str "$DEVICE"), \"flash_attn\": $(json_str "$FLASH"), \"out\": $(json_str "$OUT"), \"seconds\": $(($(date +%s) - START)), \"passed\": $passed, \"stages\": [$stages]}" \
    | tee "$OUT/summary.json"
archive
[ "$ALL_OK" = 1 ]
