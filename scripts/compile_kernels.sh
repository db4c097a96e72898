#!/usr/bin/env bash
# Compiles every kernel in kernels/hip/ for AMD (gfx90a, MI250) with hipcc and prints
# each kernel's resources from the compiler (VGPRs, SGPRs, scratch = spills, LDS,
# occupancy). Fails on any compile error or warning. With NVCC set (or nvcc on PATH),
# also compiles the same sources for NVIDIA (sm_90) and prints registers and spills.
#   scripts/compile_kernels.sh [OUT_DIR]    (code objects go to OUT_DIR, default target/kernels)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/kernels}"
ARCH="${NOVASTACK_HIP_ARCH:-gfx90a}"
mkdir -p "$OUT"
command -v hipcc > /dev/null || { echo "hipcc not found (apt-get install hipcc libamdhip64-dev rocm-device-libs)"; exit 1; }

echo "## HIP kernels for $ARCH (wavefront $( [ "$ARCH" = gfx90a ] && echo 64 || echo '?'))"
printf '| %-34s | %5s | %5s | %13s | %9s | %9s |\n' kernel VGPRs SGPRs "scratch B/lane" "LDS B" occupancy
printf '| %s | %s | %s | %s | %s | %s |\n' --- --- --- --- --- ---
status=0
for src in kernels/hip/*.hip; do
  name="$(basename "$src" .hip)"
  log="$OUT/$name.$ARCH.log"
  if ! hipcc --offload-arch="$ARCH" -std=c++17 -O3 -Werror -Wall --genco \
      -Rpass-analysis=kernel-resource-usage -o "$OUT/$name.$ARCH.co" "$src" > "$log" 2>&1; then
    echo "FAILED: $src"; grep -v "remark:" "$log" | head -40; status=1; continue
  fi
  awk '
    /Function Name:/ { sub(/.*Function Name: /, ""); sub(/ \[.*/, ""); k = $0 }
    /VGPRs:/ && !/AGPR/ { sub(/.*VGPRs: /, ""); sub(/ \[.*/, ""); v[k] = $0 }
    /SGPRs:/ { sub(/.*SGPRs: /, ""); sub(/ \[.*/, ""); s[k] = $0 }
    /ScratchSize/ { sub(/.*: /, ""); sub(/ \[.*/, ""); sc[k] = $0 }
    /LDS Size/ { sub(/.*: /, ""); sub(/ \[.*/, ""); l[k] = $0 }
    /Occupancy/ { sub(/.*: /, ""); sub(/ \[.*/, ""); o[k] = $0; order[n++] = k }
    END { for (i = 0; i < n; i++) { k = order[i]; printf "| %-34s | %5s | %5s | %13s | %9s | %9s |\n", k, v[k], s[k], sc[k], l[k], o[k] } }
  ' "$log"
  if grep -q "ScratchSize \[bytes/lane\]: [1-9]" "$log"; then
    echo "note: $name spills to scratch (see above)"
  fi
done

NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -n "$NVCC" ]; then
  echo
  echo "## the same sources for NVIDIA sm_90 ($NVCC)"
  for src in kernels/hip/*.hip; do
    name="$(basename "$src" .hip)"
    if ! "$NVCC" -x cu -arch=sm_90 -std=c++17 -O3 -cubin -Werror all-warnings -Xptxas -v \
        -o "$OUT/$name.sm_90.cubin" "$src" > "$OUT/$name.sm_90.log" 2>&1; then
      echo "FAILED (sm_90): $src"; head -40 "$OUT/$name.sm_90.log"; status=1; continue
    fi
    awk '/Compiling entry function/ { gsub(/.*function .|. for .*/, ""); k = $0 }
         /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); r = substr($0, RSTART + 5, RLENGTH - 15);
                                   printf "| %-34s | %4s regs |\n", k, r }
         /bytes spill stores/ && !/ 0 bytes spill stores/ { print "  spills: " $0 }' "$OUT/$name.sm_90.log"
  done
fi
exit $status
