#!/usr/bin/env bash
# Decode speed side by side with llama.cpp, on the same GGUF at each precision, on this
# machine: `novastack bench decode --model FILE` against llama.cpp's `llama-bench`
# (batch 1) and `llama-batched-bench` (batch 16), both built by scripts/build_llamacpp.sh
# (from the PyPI sdist of llama-cpp-python; built and run here, never committed).
#   - The GGUFs: the default SmolLM2-135M-Instruct (Q4_1), and copies made from it with
#     llama-quantize --allow-requantize at each precision in PRECISIONS (F32 is its exact
#     dequantization; Q4_K_M quantizes the 576-wide rows that are not whole 256-blocks
#     to Q5_0, as llama.cpp does).
#   - Each (precision, run) alternates the two programs; the table shows the median over
#     REPEAT runs of decode tokens/s after a CONTEXT-token prompt, the ratio, and
#     novastack's fraction of the memory-bandwidth bound it measures in the same run
#     (bytes per step from the actual weight storage).
# Usage: scripts/compare_llamacpp_decode.sh
# Env: OUT (default target/compare-decode), PRECISIONS (default "F32 BF16 Q8_0 Q4_K_M
#      Q4_1"), REPEAT (default 3), STEPS (default 32), CONTEXT (default 128),
#      NS (a novastack binary; default: built here with target-cpu=native, as llama.cpp is).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-$PWD/target/compare-decode}"
PRECISIONS="${PRECISIONS:-F32 BF16 Q8_0 Q4_K_M Q4_1}"
REPEAT="${REPEAT:-3}"
STEPS="${STEPS:-32}"
CONTEXT="${CONTEXT:-128}"
THREADS="$(nproc)"
mkdir -p "$OUT"

bin="$(scripts/build_llamacpp.sh | tail -1)"
if [ -z "${NS:-}" ]; then
  CARGO_TARGET_DIR="$PWD/target/native" RUSTFLAGS="-C target-cpu=native" \
    cargo build --release -q -p novastack
  NS="$PWD/target/native/release/novastack"
fi

src="$("$NS" fetch default | tail -1)"
model_of() { # precision -> path
  if [ "$1" = Q4_1 ]; then echo "$src"; return; fi
  local f="$OUT/SmolLM2-135M-Instruct.$1.gguf"
  if [ ! -f "$f" ]; then
    "$bin/llama-quantize" --allow-requantize "$src" "$f" "$1" > "$OUT/quantize-$1.log" 2>&1 \
      || { tail -20 "$OUT/quantize-$1.log" >&2; exit 1; }
  fi
  echo "$f"
}

results="$OUT/runs.tsv"
: > "$results"
for prec in $PRECISIONS; do
  m="$(model_of "$prec")"
  for r in $(seq 1 "$REPEAT"); do
    # novastack: one line per batch size: batch ms/step tok/s MB/step bound ratio.
    "$NS" bench decode --model "$m" --batch 1,16 --steps "$STEPS" --context "$CONTEXT" \
      2> "$OUT/novastack-$prec-r$r.log" | tee "$OUT/novastack-$prec-r$r.txt" \
      | awk -v p="$prec" -v r="$r" '$1 ~ /^[0-9]+$/ && NF == 6 {print p "\tnovastack\t" $1 "\t" r "\t" $3 "\t" $6}' >> "$results"
    # llama.cpp batch 1: llama-bench's tg after a CONTEXT-token depth.
    "$bin/llama-bench" -m "$m" -t "$THREADS" -p 0 -n "$STEPS" -d "$CONTEXT" -r 1 -o csv \
      2> "$OUT/llama-bench-$prec-r$r.log" > "$OUT/llama-bench-$prec-r$r.csv"
    python3 - "$OUT/llama-bench-$prec-r$r.csv" "$prec" "$r" >> "$results" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"{sys.argv[2]}\tllama.cpp\t1\t{sys.argv[3]}\t{float(rows[-1]['avg_ts']):.1f}\t")
PY
    # llama.cpp batch 16: llama-batched-bench, 16 sequences after CONTEXT-token prompts.
    "$bin/llama-batched-bench" -m "$m" -t "$THREADS" -tb "$THREADS" -c $((16 * (CONTEXT + STEPS + 16))) \
      -b 2048 -ub 512 -npp "$CONTEXT" -ntg "$STEPS" -npl 16 --output-format jsonl \
      > "$OUT/llama-batched-$prec-r$r.jsonl" 2> "$OUT/llama-batched-$prec-r$r.log"
    python3 - "$OUT/llama-batched-$prec-r$r.jsonl" "$prec" "$r" >> "$results" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        d = json.loads(line)
        if "speed_tg" in d:
            print(f"{sys.argv[2]}\tllama.cpp\t{d['pl']}\t{sys.argv[3]}\t{d['speed_tg']:.1f}\t")
PY
  done
done

python3 - "$results" "$REPEAT" "$(git rev-parse --short HEAD)" "$THREADS" <<'PY' | tee "$OUT/summary.md"
import collections, statistics, sys
runs = collections.defaultdict(list)
bound = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p, who, b, r, tps, ratio = line.rstrip("\n").split("\t")
    runs[(p, who, int(b))].append(float(tps))
    if ratio:
        bound[(p, int(b))].append(float(ratio))
print(f"# decode tokens/s, novastack {sys.argv[3]} vs llama.cpp, {sys.argv[4]} threads, median of {sys.argv[2]} alternating runs\n")
print("| weights | batch | novastack tok/s | llama.cpp tok/s | ratio | novastack / bound |")
print("| --- | --- | --- | --- | --- | --- |")
for p in dict.fromkeys(k[0] for k in runs):
    for b in (1, 16):
        ns, ll = runs.get((p, "novastack", b)), runs.get((p, "llama.cpp", b))
        if not ns or not ll:
            continue
        a, c = statistics.median(ns), statistics.median(ll)
        print(f"| {p} | {b} | {a:.1f} | {c:.1f} | {a / c:.2f} | {statistics.median(bound[(p, b)]):.2f} |")
PY
