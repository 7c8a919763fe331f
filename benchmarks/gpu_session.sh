#!/usr/bin/env bash
# The prepared GPU check of issue 4 (fused log-prob kernels), for a session that is lent a GPU:
#   run(command="bash benchmarks/gpu_session.sh", timeout_s=540)
# The device image has jax (CUDA), chex and the rest preinstalled; the kernels need nothing else.
# 1. kernels_on_device.py: compile pallas_gpu for the GPU and compare values and gradients with the
#    naive reference and the chunked path (small shapes, extreme logits, Qwen2.5-0.5B head in bf16).
# 2. logprob_core.py: time and device peak memory of matmul / naive / chunked / pallas_gpu.
# Results land in $OUT (JSON lines); copy them into benchmarks/RESULTS.md with the date.
set -u
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/jaxrl-llm-gpu}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 240 python benchmarks/kernels_on_device.py 2>"$OUT/kernels_on_device.err" \
  | tee "$OUT/kernels_on_device.jsonl"
echo "kernels_on_device exit: ${PIPESTATUS[0]}"
timeout 280 python benchmarks/logprob_core.py --n 1024 4096 16384 \
  --impls matmul naive chunked pallas_gpu --repeats 3 2>"$OUT/logprob_core.err" \
  | tee "$OUT/logprob_core_gpu.jsonl"
echo "logprob_core exit: ${PIPESTATUS[0]}"
