#!/usr/bin/env bash
# One GPU verification run (issue 19): every CUDA path checked and measured, each stage under its
# own timeout so one failure never hides the rest.  See benchmarks/README.md, "GPU verification".
#
#   bash benchmarks/gpu/run.sh              # on a CUDA machine; results in
#                                           # benchmarks/results/<date>-gpu-<device>/
#   bash benchmarks/gpu/run.sh --dry-run    # the same plumbing on CPU, tiny shapes (a test runs it)
#   options: --out DIR (results directory), -h
#   env: PYTHON (default python), GPU_KIT_FLASH_TIMEOUT (s, default 180),
#        GPU_KIT_FAIL_STAGE=N (tests: stage N fails on purpose)
#
# Exit status 0 only when every stage passed.
set -u
cd "$(dirname "$0")/../.." || exit 2
PY=${PYTHON:-python}
DRY=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) [ $# -ge 2 ] || { echo "run.sh: --out needs a directory" >&2; exit 2; }; OUT=$2; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument '$1' (accepted: --dry-run, --out DIR, -h)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$DRY" = 1 ]; then
    DEVICE="cpu (dry run)"
    OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-kit-dry.XXXXXX")}
else
    if ! DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name())" 2>/dev/null); then
        echo "run.sh: no CUDA device visible to torch; on a machine without one use --dry-run" >&2
        exit 2
    fi
    SLUG=$(printf '%s' "$DEVICE" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
    OUT=${OUT:-benchmarks/results/$(date +%F)-gpu-$SLUG}
fi
mkdir -p "$OUT" || { echo "run.sh: cannot create results directory '$OUT'" >&2; exit 2; }
echo "GPU verification: device '$DEVICE', results in $OUT"

# -- flash-attn: only if not importable, only within its budget, never fatal ---------------------
has_flash() { "$PY" -c "import flash_attn" >/dev/null 2>&1; }
if has_flash; then
    FLASH=present
elif [ "$DRY" = 1 ]; then
    FLASH="not installed (dry run installs nothing)"
else
    budget=${GPU_KIT_FLASH_TIMEOUT:-180}
    echo "flash-attn: not importable; trying 'pip install flash-attn --no-build-isolation' for at most ${budget}s"
    if timeout -k 10 "$budget" "$PY" -m pip install flash-attn --no-build-isolation >"$OUT/0-flash-attn-install.log" 2>&1 \
        && has_flash; then
        FLASH=installed
    else
        FLASH="unavailable (install gave up, see 0-flash-attn-install.log)"
    fi
fi
echo "flash-attn: $FLASH; the flash backend is checked only when it is importable"

# -- the stages ----------------------------------------------------------------------------------
CHECKS="$PY benchmarks/gpu/checks.py"
if [ "$DRY" = 1 ]; then
    BACKENDS="eager sdpa"
    S1="$PY -m pytest -m gpu --collect-only -q -p no:cacheprovider"
    S2="$CHECKS attention --device cpu --heads 4 --kv-heads 2 --head-dim 16 --seq 64"
    S3="$CHECKS loss --device cpu --tokens 64 --vocab 1001 --hidden 32"
    S4="$PY benchmarks/train_step.py --quick --device cpu --variants plain,fused"
    GEN="$PY benchmarks/generate.py --quick --device cpu"
    S6="$CHECKS sampler --device cpu --positions 32 --vocab 1001 --repeats 1"
    T=(0 120 60 60 60 60 60)
else
    BACKENDS="eager sdpa"
    has_flash && BACKENDS="$BACKENDS flash"
    S1="$PY -m pytest -m gpu -q -p no:cacheprovider"
    S2="$CHECKS attention --device cuda"            # head_dim 128, 32/8 heads, S 2048, bf16
    S3="$CHECKS loss --device cuda"                 # 2048 tokens, hidden 4096, V 100,278
    S4="$PY benchmarks/train_step.py --device cuda --preset sumi_7b --layers 4 --micro-batch 4"  # bf16, fused, compile, ac
    GEN="$PY benchmarks/generate.py --device cuda --preset sumi_7b --layers 4 --dtype bfloat16 --steps 64"
    S6="$CHECKS sampler --device cuda"
    T=(0 150 60 60 180 120 60)
    nvidia-smi >"$OUT/0-nvidia-smi.log" 2>&1
fi
S5=""
for b in $BACKENDS; do S5="$S5 echo '== backend $b'; $GEN --backend $b || rc=1;"; done
S5="rc=0; $S5 exit \$rc"
NAMES=(- pytest-gpu attention loss train_step generate sampler)
CMDS=(- "$S1" "$S2" "$S3" "$S4" "$S5" "$S6")

STATUS=() SECS=() LOGS=()
ALL_OK=1
for n in 1 2 3 4 5 6; do
    log="$OUT/$n-${NAMES[$n]}.log"
    cmd=${CMDS[$n]}
    if [ "${GPU_KIT_FAIL_STAGE:-}" = "$n" ]; then
        cmd="echo 'stage $n: forced failure (GPU_KIT_FAIL_STAGE=$n)'; exit 1"
    fi
    echo "== stage $n ${NAMES[$n]} (timeout ${T[$n]}s): $cmd" | tee "$log"
    start=$(date +%s.%N)
    timeout -k 10 "${T[$n]}" bash -c "$cmd" >>"$log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=passed ;;
        124|137) status=timeout ;;
        *) status="failed(rc=$rc)" ;;
    esac
    [ "$rc" = 0 ] || ALL_OK=0
    echo "   -> $status in ${secs}s"
    STATUS[$n]=$status SECS[$n]=$secs LOGS[$n]=$log
done

# -- summary: one table, one JSON line (both also saved) -----------------------------------------
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
{
    printf '%-6s %-12s %-14s %8s  %s\n' stage name status seconds "result file"
    for n in 1 2 3 4 5 6; do
        printf '%-6s %-12s %-14s %8s  %s\n' "$n" "${NAMES[$n]}" "${STATUS[$n]}" "${SECS[$n]}" "${LOGS[$n]}"
    done
} | tee "$OUT/summary.txt"
stages=""
for n in 1 2 3 4 5 6; do
    [ -n "$stages" ] && stages="$stages, "
    stages="$stages{\"stage\": $n, \"name\": \"${NAMES[$n]}\", \"status\": \"${STATUS[$n]}\", \"seconds\": ${SECS[$n]}, \"log\": $(json_str "${LOGS[$n]}")}"
done
passed=$([ "$ALL_OK" = 1 ] && echo true || echo false)
dry=$([ "$DRY" = 1 ] && echo true || echo false)
echo "{\"kit\": \"gpu\", \"dry_run\": $dry, \"device\": $(json_str "$DEVICE"), \"flash_attn\": $(json_str "$FLASH"), \"out\": $(json_str "$OUT"), \"passed\": $passed, \"stages\": [$stages]}" \
    | tee "$OUT/summary.json"
[ "$ALL_OK" = 1 ]
