#!/usr/bin/env bash
# The one prepared GPU check, for the NVIDIA test machine (no Rust, no internet there).
#
# Here (the build machine), first:
#   cargo build --release --features cuda
#   mkdir -p target/gpu && cp target/release/novastack target/gpu/ && strip target/gpu/novastack
# then run this script there with target/gpu carried (the device tool's `carry`), e.g.
#   run(command="scripts/gpu_check.sh", carry=["target/gpu"], timeout_s=600)
#
# It runs `novastack gpu-check`: every GPU op against the CPU oracle (f32 and bf16
# storage, several shapes, outputs poisoned with NaN first), the golden fixtures end to
# end on the GPU (greedy tokens must equal the golden ones), then decode of a
# Llama-3-8B-shaped model with random bf16 weights (512-token prompts) against the
# weight-bandwidth bound, timing the engine's greedy step (ids come back, not logits),
# and decode of a Qwen3-30B-A3B-shaped MoE model (random bf16 weights) three ways:
# graphs, eager with the router's choices grouped on the device, and eager with them
# grouped on the host and one vendor GEMM per expert, each against the bound of the
# expert bytes its steps read. The table comes last.
#
# Size: by default 8 layers at batch 1 and 64, so that the whole check fits one
# 10-minute run (the random weights are generated on the host). `--full` (or FULL=1)
# runs the real 32 layers at batch 1, 16, 64, 256. The MoE run has 4 of its 48 layers
# at batch 1, 16, 64 (12 layers with --full). Other flags go to gpu-check as they are;
# an explicit --layers, --batch or --moe-layers replaces the default one.
#
# Libraries: the test machine has cuBLAS and NVRTC as pip packages in a Python
# environment (`site-packages/nvidia/cu13/lib`, or per-library `nvidia/cublas/lib`,
# `nvidia/cuda_nvrtc/lib` on CUDA 12), not in /usr/local/cuda. The script adds
# /usr/local/cuda's lib folders, then every `nvidia/*/lib` of the first Python
# environment that holds libcublas (searched in $VIRTUAL_ENV, /opt/*/.venv, /opt/*/venv
# and the site-packages of `python3` on PATH), to LD_LIBRARY_PATH, and points
# NOVASTACK_CUDA_INCLUDE at a folder with cuda_fp16.h (/usr/local/cuda/include, else
# that environment's nvidia/cu13/include or nvidia/cuda_runtime/include). It prints
# what it chose.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
BIN="${NOVASTACK_BIN:-target/gpu/novastack}"
[ -x "$BIN" ] || BIN=target/release/novastack
[ -x "$BIN" ] || { echo "no novastack binary: build with --features cuda and carry target/gpu"; exit 1; }

# --- the benchmark's size -------------------------------------------------------------
full="${FULL:-0}"
args=()
for a in "$@"; do
  if [ "$a" = "--full" ]; then full=1; else args+=("$a"); fi
done
has_flag() { # has_flag --name: whether the caller passed --name or --name=...
  local f="$1" a
  for a in "${args[@]+"${args[@]}"}"; do
    case "$a" in "$f" | "$f"=*) return 0 ;; esac
  done
  return 1
}
if [ "$full" = 1 ]; then
  layers=32 batch=1,16,64,256 moe_layers=12
else
  layers=8 batch=1,64 moe_layers=4
fi
has_flag --layers || args+=(--layers "$layers")
has_flag --moe-layers || args+=(--moe-layers "$moe_layers")
has_flag --batch || args+=(--batch "$batch")

# --- CUDA libraries and headers -------------------------------------------------------
has_lib() { # has_lib DIR NAME: DIR holds NAME.so or a versioned NAME.so.*
  local f
  for f in "$1/$2".so "$1/$2".so.*; do [ -e "$f" ] && return 0; done
  return 1
}
lib_dirs=()
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && lib_dirs+=("$d")
done

site_dirs=()
[ -n "${VIRTUAL_ENV:-}" ] && site_dirs+=("$VIRTUAL_ENV"/lib/python3*/site-packages)
site_dirs+=(/opt/*/.venv/lib/python3*/site-packages /opt/*/venv/lib/python3*/site-packages)
if command -v python3 >/dev/null 2>&1; then
  while IFS= read -r d; do
    [ -n "$d" ] && site_dirs+=("$d")
  done < <(timeout 20 python3 -c 'import site, sys
for d in site.getsitepackages() + [site.getusersitepackages()]: print(d)' 2>/dev/null || true)
fi

venv_site=""
for s in "${site_dirs[@]+"${site_dirs[@]}"}"; do
  for d in "$s"/nvidia/*/lib; do
    if has_lib "$d" libcublas; then venv_site="$s"; break 2; fi
  done
done
if [ -n "$venv_site" ]; then
  echo "gpu_check: CUDA libraries from the Python environment $venv_site"
  for d in "$venv_site"/nvidia/*/lib; do lib_dirs+=("$d"); done
elif [ "${#site_dirs[@]}" -gt 0 ]; then
  echo "gpu_check: no nvidia/*/lib with libcublas in: ${site_dirs[*]}"
fi
for d in "${lib_dirs[@]+"${lib_dirs[@]}"}"; do
  LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
for lib in libcublas libcublasLt libnvrtc; do
  found=""
  IFS=: read -r -a path_dirs <<<"$LD_LIBRARY_PATH"
  for d in "${path_dirs[@]+"${path_dirs[@]}"}"; do
    if [ -n "$d" ] && has_lib "$d" "$lib"; then found="$d"; break; fi
  done
  if [ -n "$found" ]; then
    echo "gpu_check: $lib from $found"
  else
    echo "gpu_check: $lib not on LD_LIBRARY_PATH (the system's loader paths may still have it)"
  fi
done

include="${NOVASTACK_CUDA_INCLUDE:-}"
if [ -z "$include" ] || [ ! -e "$include/cuda_fp16.h" ]; then
  include=""
  inc_dirs=(/usr/local/cuda/include /usr/local/cuda/targets/x86_64-linux/include)
  if [ -n "$venv_site" ]; then
    inc_dirs+=("$venv_site"/nvidia/cu13/include "$venv_site"/nvidia/cuda_runtime/include)
    inc_dirs+=("$venv_site"/nvidia/*/include)
  fi
  for d in "${inc_dirs[@]}"; do
    if [ -e "$d/cuda_fp16.h" ]; then include="$d"; break; fi
  done
fi
if [ -n "$include" ]; then
  export NOVASTACK_CUDA_INCLUDE="$include"
  echo "gpu_check: NOVASTACK_CUDA_INCLUDE=$include"
else
  echo "gpu_check: no folder with cuda_fp16.h found; NVRTC will fail (set NOVASTACK_CUDA_INCLUDE)"
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
echo "gpu_check: $BIN gpu-check ${args[*]}"
exec "$BIN" gpu-check --fixtures tests/fixtures/models "${args[@]}"
