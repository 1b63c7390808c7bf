#!/usr/bin/env bash
# On a machine with CUDA: the test suite (tests/test_cuda.py among it), the benchmarks with
# --device cuda in fp32, bf16 and fp16, and a short training run per precision; one report.
#
#     benchmarks/gpu.sh [OUT]            # OUT defaults to runs/gpu; the report is OUT/report.md
#     QUICK=1 benchmarks/gpu.sh OUT      # tests of the model and precision only, 2 rounds per benchmark
#
# Python: $PYTHON, else .venv/bin/python, else python3 (a machine's own PyTorch will do); the
# package is taken from src/. Every step runs whatever the previous ones did, and the report says
# each one's exit status, seconds and the end of its output (the whole output is OUT/logs.tar.gz).
set -u
OUT=${1:-runs/gpu}
mkdir -p "$OUT/logs"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
REPORT="$OUT/report.md"
ROUNDS=$([ -n "${QUICK:-}" ] && echo 2 || echo 10)
PRECISIONS="fp32 bf16 fp16"
failed=0

step() {  # step NAME COMMAND...: run it, log it, add its status and the end of its output to the report
    local name=$1 start rc
    shift
    start=$(date +%s)
    "$@" >"$OUT/logs/$name.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || failed=$((failed + 1))
    {
        echo "## $name: exit $rc, $(($(date +%s) - start)) s"
        echo '```'
        echo "\$ $*"
        tail -n 40 "$OUT/logs/$name.log"
        echo '```'
        echo
    } >>"$REPORT"
    echo "$name: exit $rc"
}

echo "# frcnn on CUDA, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" >"$REPORT"
echo >>"$REPORT"
step environment "$PY" -c "import torch, torchvision, frcnn.precision as p; d = torch.device('cuda'); \
print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0), 'native bf16:', p.native_bf16(d))"
if [ -n "${QUICK:-}" ]; then
    step tests "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_precision.py tests/test_model.py
else
    step tests "$PY" -m pytest -q -p no:cacheprovider tests
fi
for precision in $PRECISIONS; do
    step "train_step_$precision" "$PY" benchmarks/train_step.py --device cuda --precision "$precision" \
        --rounds "$ROUNDS" --threads 8 --profile
    step "inference_$precision" "$PY" benchmarks/inference.py --device cuda --precision "$precision" \
        --rounds "$ROUNDS" --threads 8
    step "pretrained_$precision" "$PY" benchmarks/pretrained.py --device cuda --precision "$precision" \
        --rounds "$ROUNDS" --threads 8
    step "train_$precision" "$PY" -m frcnn train --device cuda --out "$OUT/train_$precision" \
        --max-minutes "${TRAIN_MINUTES:-2}" --set "train.precision=$precision" train.num_workers=4
done
{
    echo "## The training runs' final metrics (voc07_map, coco_ap)"
    for precision in $PRECISIONS; do
        metrics="$OUT/train_$precision/metrics.json"
        [ -f "$metrics" ] && echo "- $precision: $("$PY" -c "import json, sys; m = json.load(open(sys.argv[1])); \
print(round(m['voc07_map'], 4), round(m['coco_ap'], 4))" "$metrics")" || echo "- $precision: no metrics.json"
    done
} >>"$REPORT"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs
echo "$failed steps failed; the report is $REPORT"
exit $((failed > 0))
