#!/usr/bin/env bash
# One-shot GPU check (one H200, 16 CPU cores; < 6 minutes). Run from the repository root:
#
#     PYTHONPATH=. bash benchmarks/gpu_check.sh
#
# 1. `python -m pytest -m cuda -q` (CUDA results == CPU results); when other test modules cannot be
#    collected on that machine (e.g. hypothesis/sklearn absent), the files that hold cuda tests
#    (tests/test_cuda.py, tests/test_s17_gpu.py: every tests/test_*.py with a cuda mark) are rerun alone.
# 2. Benchmark (a) on the GPU: a ResNet-18-sized CNN (benchmarks/models.py:resnet18, 3x32x32 inputs,
#    p = 512), n = 50 000 probe inputs, 6 checkpoints, `fdl analyze --device cuda` vs the floor.
# Needs only torch, numpy, h5py, click, rich, safetensors (and pytest for step 1); installs
# nothing. Results go to $OUT/ when set (else ./gpu_check_out/): gpu_check.json, pytest*.txt,
# bench_analyze_gpu.json, environment.txt. Every step has its own time limit and a failing step does
# not stop the next one. FDL_GPU_CHECK_TINY=1 shrinks everything (n = 512, 2 checkpoints; on the CPU
# when there is no GPU) to try the script anywhere.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}"
OUT_DIR="${OUT:-./gpu_check_out}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
START=$(date +%s)

if [ "${FDL_GPU_CHECK_TINY:-0}" = "1" ]; then
  N=512; CKPTS=2; BATCH=256; PYTEST_LIMIT=300; BENCH_LIMIT=300
else
  N=50000; CKPTS=6; BATCH=1024; PYTEST_LIMIT=90; BENCH_LIMIT=170
fi
DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)

{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(hostname)"; echo "device: $DEVICE"; nproc
  $PY -c "import torch, numpy, h5py, click, rich, safetensors; print('torch', torch.__version__, 'cuda', torch.version.cuda); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no gpu')" 2>&1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
} > "$OUT_DIR/environment.txt" 2>&1
cat "$OUT_DIR/environment.txt"

echo "== 1. pytest -m cuda"
timeout "$PYTEST_LIMIT" $PY -m pytest -m cuda -q -p no:cacheprovider --continue-on-collection-errors > "$OUT_DIR/pytest.txt" 2>&1
PYTEST_RC=$?
tail -5 "$OUT_DIR/pytest.txt"
PYTEST_ALONE_RC=null
if [ "$PYTEST_RC" != "0" ]; then
  CUDA_FILES=$(grep -l "mark.cuda" tests/test_*.py | tr '\n' ' ')
  echo "== 1b. pytest -m cuda $CUDA_FILES alone (the run above exited $PYTEST_RC)"
  # shellcheck disable=SC2086  # one word per file
  timeout "$PYTEST_LIMIT" $PY -m pytest -m cuda -q -p no:cacheprovider $CUDA_FILES > "$OUT_DIR/pytest_test_cuda.txt" 2>&1
  PYTEST_ALONE_RC=$?
  tail -5 "$OUT_DIR/pytest_test_cuda.txt"
fi

echo "== 2. benchmark (a) on $DEVICE: resnet18, n=$N, $CKPTS checkpoints"
timeout "$BENCH_LIMIT" $PY benchmarks/bench_analyze.py --models resnet18 --n "$N" --checkpoints "$CKPTS" \
  --repeats 1 --device "$DEVICE" --batch-size "$BATCH" --workdir "${TMPDIR:-/tmp}/fdl-gpu-check" --spec-floor \
  --json "$OUT_DIR/bench_analyze_gpu.json" > "$OUT_DIR/bench_analyze_gpu.stdout" 2> "$OUT_DIR/bench_analyze_gpu.stderr"
BENCH_RC=$?
tail -5 "$OUT_DIR/bench_analyze_gpu.stderr"

END=$(date +%s)
cat > "$OUT_DIR/gpu_check.json" <<JSON
{"device": "$DEVICE", "n": $N, "checkpoints": $CKPTS, "pytest_cuda_rc": $PYTEST_RC,
 "pytest_test_cuda_alone_rc": $PYTEST_ALONE_RC, "bench_rc": $BENCH_RC, "seconds": $((END - START))}
JSON
cat "$OUT_DIR/gpu_check.json"
if [ -f "$OUT_DIR/bench_analyze_gpu.json" ]; then
  $PY - "$OUT_DIR/bench_analyze_gpu.json" <<'PYEOF'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"{r['model']}: analyze {r['best_seconds']['analyze']:.1f} s, floor {r['best_seconds']['floor']:.1f} s, "
          f"ratio {r['ratio_analyze_over_floor']:.3f}, peak RSS {r['peak_mib']}")
    if "spec_floor" in r["best_seconds"]:
        print(f"  SPEC floor (floor + CKA's two anchor cross products) {r['best_seconds']['spec_floor']:.1f} s: "
              f"SPEC floor / floor {r['ratio_spec_floor_over_floor']:.3f}, "
              f"analyze / SPEC floor {r['ratio_analyze_over_spec_floor']:.3f}")
PYEOF
fi
rm -rf "${TMPDIR:-/tmp}/fdl-gpu-check"
