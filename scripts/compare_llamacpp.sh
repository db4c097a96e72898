#!/usr/bin/env bash
# novastack side by side with llama.cpp's llama-server, in one run, on this machine:
#   - builds llama-server from the llama.cpp source inside the PyPI sdist of
#     llama-cpp-python (scripts/build_llamacpp.sh; built and run, never committed);
#   - serves the same GGUF with both (the default SmolLM2-135M-Instruct Q4_1, and an F32
#     copy made with llama-quantize so both compute in f32: novastack's CPU backend
#     dequantizes any GGUF to f32);
#   - replays the same Azure conversation trace (lengths scaled to fit the model) with the
#     same `novastack bench serve` command line at each concurrency, one server at a time;
#   - prints `bench compare` ratios and writes plots; then the same novastack run with
#     context-length buckets off.
# Both servers get the same threads (all cores), the same slot count (16) and the same
# per-request context; both listen on 127.0.0.1 over HTTP.
#
# Usage: scripts/compare_llamacpp.sh
# Env: OUT (default target/compare-llamacpp), PRECISIONS (default "f32 q4_1"),
#      CONCURRENCY (default "1 16"), NUM_PROMPTS_1 / NUM_PROMPTS_16 (default 12 / 64),
#      LENGTH_SCALE (default 0.25), MAX_MODEL_LEN (default 2048), TRACE, BUCKETS_ON,
#      SKIP_BUCKETS=1, REPEAT (default 1), REQUEST_RATE (Poisson arrivals at this many
#      requests/s instead of the trace's own times), GOODPUT (default "ttft:2000 tpot:100"),
#      NS_FLAGS (extra `novastack serve` flags, e.g. "--scheduling-policy fcfs-tokens").
# Tail latencies on a shared 2-core machine move by +-30% from run to run (llama.cpp's
# own TTFT p99 has ranged 5.4-8.0 s on the same workload). REPEAT=N runs each pair N
# times, alternating the servers, and adds a table of per-run ratios and their median.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-$PWD/target/compare-llamacpp}"
PRECISIONS="${PRECISIONS:-f32 q4_1}"
CONCURRENCY="${CONCURRENCY:-1 16}"
LENGTH_SCALE="${LENGTH_SCALE:-0.25}"
MAX_MODEL_LEN="${MAX_MODEL_LEN:-2048}"
TRACE="${TRACE:-$(scripts/fetch_traces.sh | tail -1)/AzureLLMInferenceTrace_conv.csv}"
SLOTS=16
REPEAT="${REPEAT:-1}"
THREADS="$(nproc)"
NS_PORT="${NS_PORT:-8391}"
LL_PORT="${LL_PORT:-8392}"
mkdir -p "$OUT"

bin="$(scripts/build_llamacpp.sh | tail -1)"
# novastack for this machine's ISA, like llama.cpp's GGML_NATIVE build.
CARGO_TARGET_DIR="$PWD/target/native" RUSTFLAGS="-C target-cpu=native" \
  cargo build --release -q -p novastack
NS="$PWD/target/native/release/novastack"

q4="$("$NS" fetch default)"
f32="$OUT/SmolLM2-135M-Instruct.F32.gguf"
if [ ! -f "$f32" ]; then
  "$bin/llama-quantize" --allow-requantize "$q4" "$f32" F32 > "$OUT/quantize.log" 2>&1 \
    || { tail -20 "$OUT/quantize.log"; exit 1; }
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_ready() { # url name log
  for _ in $(seq 1 300); do
    curl -sf "$1" > /dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "$2 did not become ready; last lines of $3:"; tail -30 "$3"; exit 1
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

start_llama() { # model log
  "$bin/llama-server" -m "$1" --host 127.0.0.1 --port "$LL_PORT" -t "$THREADS" -tb "$THREADS" \
    -np "$SLOTS" -c $((SLOTS * MAX_MODEL_LEN)) --no-webui > "$2" 2>&1 &
  LL_PID=$!
  pids+=("$LL_PID")
  wait_ready "http://127.0.0.1:$LL_PORT/health" llama-server "$2"
}

start_ns() { # model log [extra flags]
  local m="$1" log="$2"
  shift 2
  # shellcheck disable=SC2086
  "$NS" serve --model "$m" --served-model-name default --host 127.0.0.1 --port "$NS_PORT" \
    --max-num-seqs "$SLOTS" ${NS_FLAGS:-} "$@" > "$log" 2>&1 &
  NS_PID=$!
  pids+=("$NS_PID")
  wait_ready "http://127.0.0.1:$NS_PORT/ready" novastack "$log"
}

bench() { # port label tokenizer conc json [plot dir]
  local n_var="NUM_PROMPTS_$4"
  local n="${!n_var:-$([ "$4" = 1 ] && echo 12 || echo 64)}"
  "$NS" bench serve --base-url "http://127.0.0.1:$1" --model default --tokenizer "$3" \
    --dataset "trace:$TRACE" --length-scale "$LENGTH_SCALE" --max-model-len "$MAX_MODEL_LEN" \
    --num-prompts "$n" --max-concurrency "$4" --label "$2" --result-json "$5" \
    ${REQUEST_RATE:+--request-rate "$REQUEST_RATE"} --goodput ${GOODPUT:-ttft:2000 tpot:100}
}

summary="$OUT/summary.md"
{
  echo "# novastack vs llama.cpp: $(date -u +%FT%TZ), $(git rev-parse --short HEAD), $THREADS threads"
  echo "llama.cpp from llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION:-0.3.36}; trace $(basename "$TRACE"), lengths x$LENGTH_SCALE, max model len $MAX_MODEL_LEN"
  echo
  echo "| model | conc | server | out tok/s | goodput req/s | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 | failed |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} > "$summary"

row() { # model conc json
  python3 - "$@" >> "$summary" <<'PY'
import json, sys
m, c, p = sys.argv[1:4]
r = json.load(open(p))
f = lambda v: "-" if v is None else f"{v:.1f}"
g = lambda v: "-" if v is None else f"{v:.3f}"
print(f"| {m} | {c} | {r['label']} | {f(r['output_throughput'])} | {g(r.get('goodput'))} | {f(r['ttft_ms']['median'])} | "
      f"{f(r['ttft_ms']['p99'])} | {f(r['tpot_ms']['median'])} | {f(r['tpot_ms']['p99'])} | {r['failed']} |")
PY
}

# Result file suffix of repeat r (none when there is one run).
sfx() { [ "$REPEAT" = 1 ] || echo "-r$1"; }

for prec in $PRECISIONS; do
  model="$q4"
  [ "$prec" = f32 ] && model="$f32"
  for r in $(seq 1 "$REPEAT"); do
    start_llama "$model" "$OUT/llama-server-$prec.log"
    for c in $CONCURRENCY; do
      bench "$LL_PORT" "llama.cpp-$prec" "$model" "$c" "$OUT/llamacpp-$prec-c$c$(sfx "$r").json"
    done
    stop "$LL_PID"
    start_ns "$model" "$OUT/novastack-$prec.log"
    for c in $CONCURRENCY; do
      bench "$NS_PORT" "novastack-$prec" "$model" "$c" "$OUT/novastack-$prec-c$c$(sfx "$r").json"
    done
    stop "$NS_PID"
  done
  for c in $CONCURRENCY; do
    for r in $(seq 1 "$REPEAT"); do
      echo "== $prec, concurrency $c$(sfx "$r"): novastack / llama.cpp =="
      "$NS" bench compare "$OUT/llamacpp-$prec-c$c$(sfx "$r").json" \
        "$OUT/novastack-$prec-c$c$(sfx "$r").json" \
        --plot-dir "$OUT/plots-$prec-c$c$(sfx "$r")" | tee "$OUT/compare-$prec-c$c$(sfx "$r").md"
      row "$prec" "$c" "$OUT/llamacpp-$prec-c$c$(sfx "$r").json"
      row "$prec" "$c" "$OUT/novastack-$prec-c$c$(sfx "$r").json"
    done
  done
done

if [ "$REPEAT" != 1 ]; then
  python3 - "$OUT" "$REPEAT" "$PRECISIONS" "$CONCURRENCY" >> "$summary" <<'PY'
import json, statistics, sys
out, n, precs, concs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
print("\n## novastack / llama.cpp per run, and the median over runs\n")
print("| model | conc | metric | " + " | ".join(f"run {r}" for r in range(1, n + 1)) + " | median |")
print("| --- | --- | --- | " + " | ".join("---" for _ in range(n)) + " | --- |")
for p in precs:
    for c in concs:
        runs = [(json.load(open(f"{out}/llamacpp-{p}-c{c}-r{r}.json")),
                 json.load(open(f"{out}/novastack-{p}-c{c}-r{r}.json"))) for r in range(1, n + 1)]
        for name, get in [("out tok/s", lambda d: d["output_throughput"]),
                          ("goodput", lambda d: d.get("goodput") or 0.0),
                          ("TTFT p50", lambda d: d["ttft_ms"]["median"]),
                          ("TTFT p99", lambda d: d["ttft_ms"]["p99"]),
                          ("TPOT p50", lambda d: d["tpot_ms"]["median"]),
                          ("TPOT p99", lambda d: d["tpot_ms"]["p99"])]:
            ratios = [get(b) / get(a) if get(a) else float("nan") for a, b in runs]
            cells = " | ".join(f"{x:.2f}" for x in ratios)
            print(f"| {p} | {c} | {name} | {cells} | {statistics.median(ratios):.2f} |")
PY
fi

if [ -z "${SKIP_BUCKETS:-}" ]; then
  # Bucketing effect: the same workload at the highest concurrency, novastack with
  # context-length buckets on (the GPU default boundaries, BUCKETS_ON) and off (what
  # `--buckets auto` picks on the CPU).
  prec="${PRECISIONS%% *}"
  model="$q4"
  [ "$prec" = f32 ] && model="$f32"
  c="${CONCURRENCY##* }"
  for b in on off; do
    flags=(--buckets "${BUCKETS_ON:-512,2048,8192,32768,131072}")
    [ "$b" = off ] && flags=(--buckets off)
    start_ns "$model" "$OUT/novastack-buckets-$b.log" "${flags[@]}"
    bench "$NS_PORT" "buckets-$b" "$model" "$c" "$OUT/buckets-$b.json"
    stop "$NS_PID"
    row "$prec buckets $b" "$c" "$OUT/buckets-$b.json"
  done
  echo "== buckets off / on ==" >> "$summary"
  "$NS" bench compare "$OUT/buckets-on.json" "$OUT/buckets-off.json" \
    --plot-dir "$OUT/plots-buckets" | tee -a "$summary"
fi
echo
cat "$summary"
