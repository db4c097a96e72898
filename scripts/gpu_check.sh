#!/usr/bin/env bash
# The one prepared GPU check, for the NVIDIA test machine (no Rust, no internet there).
#
# Here (the build machine), first:
#   cargo build --release --features cuda
#   mkdir -p target/gpu && cp target/release/novastack target/gpu/ && strip target/gpu/novastack
# then run this script there with target/gpu carried (the device tool's `carry`), e.g.
#   run(command="scripts/gpu_check.sh", carry=["target/gpu"])
#
# It runs `novastack gpu-check`: every GPU op against the CPU oracle (f32 and bf16
# storage, several shapes, outputs poisoned with NaN first), the golden fixtures end to
# end on the GPU (greedy tokens must equal the golden ones), then decode of a
# Llama-3-8B-shaped model with random bf16 weights at batch 1, 16, 64, 256 (512-token
# prompts) against the weight-bandwidth bound. The table comes last.
# Extra flags go to gpu-check (e.g. --layers 8 --batch 1,64 for a quicker run).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${NOVASTACK_BIN:-target/gpu/novastack}"
[ -x "$BIN" ] || BIN=target/release/novastack
[ -x "$BIN" ] || { echo "no novastack binary: build with --features cuda and carry target/gpu"; exit 1; }
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export NOVASTACK_CUDA_INCLUDE="${NOVASTACK_CUDA_INCLUDE:-/usr/local/cuda/include}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$BIN" gpu-check --fixtures tests/fixtures/models "$@"
