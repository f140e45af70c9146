#!/usr/bin/env bash
# The GPU proof of plugins_trt (H100, H200) (run from the repo root on the GPU machine; $OUT collects results):
# kernel tests against fq_export's PyTorch reference (random and real MiniLM layers), whole-model
# MiniLM and ViT-B/16 forward passes through the kernels, benchmarks/kernels.py, the FQFrameLinear plugin
# glue check (where FQ_TRT_INCLUDE points at TensorRT's headers), the split and gemv kernels' traces and,
# where ncu is installed, the side-rows pass's Nsight Compute profile by function.
set -u
OUT=${OUT:-/tmp/fq-gpu-proof}; mkdir -p "$OUT"
export PYTHONPATH=$PWD
python -c "import pytest" 2>/dev/null || pip install -q --no-index --find-links .whl pytest pluggy iniconfig
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
start=$(date +%s)
python -c "from plugins_trt import harness; harness.load_extension()" > "$OUT/build.txt" 2>&1; echo "build rc=$? $(( $(date +%s) - start ))s"
FQ_MINILM_LAYERS=.proof/minilm/layers.safetensors timeout ${TEST_TIMEOUT:-200} python -m pytest -q -p no:cacheprovider \
  tests/test_plugins_kernels.py > "$OUT/pytest_kernels.txt" 2>&1; echo "tests rc=$? $(( $(date +%s) - start ))s"; tail -15 "$OUT/pytest_kernels.txt"
timeout ${WHOLE_TIMEOUT:-150} python plugins_trt/tools/whole_model.py run --minilm .proof/minilm --vit --json "$OUT/whole_model.json" > "$OUT/whole_model.txt" 2>&1
echo "whole-model rc=$? $(( $(date +%s) - start ))s"; tail -30 "$OUT/whole_model.txt"
timeout ${BENCH_TIMEOUT:-200} python benchmarks/kernels.py --json "$OUT/kernels_h100.json" > "$OUT/kernels.txt" 2>&1
echo "bench rc=$? $(( $(date +%s) - start ))s"; tail -40 "$OUT/kernels.txt"
# The FQFrameLinear plugin through TensorRT's calling sequence (needs TensorRT's headers only).
if [ -f "${FQ_TRT_INCLUDE:-}/NvInferRuntime.h" ]; then
  timeout ${GLUE_TIMEOUT:-300} python plugins_trt/tools/plugin_glue_check.py run --trt-include "$FQ_TRT_INCLUDE" \
    > "$OUT/plugin_glue_check.txt" 2>&1
  echo "glue rc=$? $(( $(date +%s) - start ))s"; grep "^case\|^ok\|FAILED" "$OUT/plugin_glue_check.txt"
  # A width without an odd factor: the one-row case goes through the gemv kernel.
  timeout ${GLUE_TIMEOUT:-300} python plugins_trt/tools/plugin_glue_check.py run --size 1024 --trt-include "$FQ_TRT_INCLUDE" \
    > "$OUT/plugin_glue_check_1024.txt" 2>&1
  echo "glue 1024 rc=$? $(( $(date +%s) - start ))s"; grep "^case\|^ok\|FAILED" "$OUT/plugin_glue_check_1024.txt"
fi
# Where the M = 1 time goes (a profiling build with %globaltimer stamps; TRACE_TIMEOUT=0 skips it).
if [ "${TRACE_TIMEOUT:-150}" != 0 ]; then
  FQ_TRACE=1 timeout ${TRACE_TIMEOUT:-150} python plugins_trt/tools/trace_decode.py --path split \
    --shapes 4096x4096,11008x4096 > "$OUT/trace_split.txt" 2>&1
  echo "trace rc=$? $(( $(date +%s) - start ))s"; cat "$OUT/trace_split.txt"
  FQ_TRACE=1 timeout ${TRACE_TIMEOUT:-150} python plugins_trt/tools/trace_decode.py --path gemv \
    --shapes 4096x4096,1024x2048 > "$OUT/trace_gemv.txt" 2>&1
  echo "trace gemv rc=$? $(( $(date +%s) - start ))s"; cat "$OUT/trace_gemv.txt"
fi
# Where the 11008-wide side-rows pass of the dense build spends its time: Nsight Compute's source page
# summed by function (benchmarks/results/h200/side_rows_phases.txt; PROFILE_TIMEOUT=0 skips it).
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
if [ "${PROFILE_TIMEOUT:-200}" != 0 ] && [ -x "$NCU" ]; then
  for shape in 4096x11008 11008x4096; do
    timeout ${PROFILE_TIMEOUT:-200} "$NCU" --set full --import-source yes --clock-control none -k regex:side_rows_kernel \
      --launch-count 1 -f -o "$OUT/side_rows_$shape" \
      python plugins_trt/tools/profile_kernels.py --shape $shape --rows 12608 --path dense > "$OUT/side_rows_ncu_$shape.txt" 2>&1
    echo "ncu $shape rc=$? $(( $(date +%s) - start ))s"
    "$NCU" --import "$OUT/side_rows_$shape.ncu-rep" --page source --csv --print-source cuda,sass > "$OUT/side_rows_source_$shape.csv"
    python plugins_trt/tools/ncu_phases.py "$OUT/side_rows_source_$shape.csv" --lines 15 \
      --function gather=dense/side_rows.cu:warp_gather --function dft=dense/side_rows.cu:warp_dft_in_place+mma_tile_ldsm \
      --function odd_mix=dense/side_rows.cu:warp_odd_mix --function wht=dense/side_rows.cu:wht_pass16+wht_pass_scalar \
      --function decode=dense/side_rows.cu:rows_decode --function kernel_body=dense/side_rows.cu:side_rows_kernel \
      | tee "$OUT/side_rows_phases_$shape.txt"
  done
fi
