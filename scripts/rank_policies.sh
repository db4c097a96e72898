#!/usr/bin/env bash
# Does the scheduler simulator rank scheduling policies as real runs do?
# For each policy: serves the model with `novastack serve --scheduling-policy P`, replays
# the workload with `bench serve`, and reads the step cost the server learned from its
# /metrics. Then replays the same workload with `bench sim` on the mean learned cost and
# prints, per metric, the real and the simulated values and each side's ranking, and how
# many pairs of policies that the real runs separate by more than 10% the simulator
# orders alike (closer pairs are within run-to-run noise).
#
# Usage: scripts/rank_policies.sh [bench workload flags...]
#   default workload: the Azure conversation trace, 64 requests, lengths x0.25, 16 at a time
# Env: NS (default target/release/novastack), MODEL (default: `default`, SmolLM2 GGUF),
#      POLICIES (default "fcfs-tokens srpf-time srpf-time:2:inf"), OUT (default
#      target/rank-policies), PORT (default 8393), GOODPUT (default "ttft:5000 tpot:500").
set -euo pipefail
cd "$(dirname "$0")/.."

NS="${NS:-$PWD/target/release/novastack}"
MODEL="${MODEL:-default}"
POLICIES="${POLICIES:-fcfs-tokens srpf-time srpf-time:2:inf}"
OUT="${OUT:-$PWD/target/rank-policies}"
PORT="${PORT:-8393}"
GOODPUT="${GOODPUT:-ttft:5000 tpot:500}"
mkdir -p "$OUT"
if [ $# -eq 0 ]; then
  trace="$(scripts/fetch_traces.sh | tail -1)/AzureLLMInferenceTrace_conv.csv"
  set -- --dataset "trace:$trace" --num-prompts 64 --length-scale 0.25 --max-model-len 2048 \
    --max-concurrency 16
fi
# shellcheck disable=SC2206
goodput=($GOODPUT)

pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

costs="$OUT/costs.txt"
: > "$costs"
for p in $POLICIES; do
  log="$OUT/serve-$p.log"
  "$NS" serve --model "$MODEL" --served-model-name default --host 127.0.0.1 --port "$PORT" \
    --max-num-seqs 16 --scheduling-policy "$p" > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null 2>&1 && break
    sleep 0.5
  done
  curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null || { tail -20 "$log"; exit 1; }
  "$NS" bench serve --base-url "http://127.0.0.1:$PORT" --model default --tokenizer "$MODEL" \
    "$@" --goodput "${goodput[@]}" --label "$p" --result-json "$OUT/real-$p.json" > "$OUT/real-$p.txt"
  # The cost model the server learned: step, prefill token, decode token, attention pair.
  curl -sf "http://127.0.0.1:$PORT/metrics" \
    | awk -F'[ {}]' '/^novastack_step_cost_seconds\{/ { v[$0 ~ /term="step"/ ? 0 : $0 ~ /prefill/ ? 1 : $0 ~ /decode/ ? 2 : 3] = $NF }
                     END { print v[0], v[1], v[2], v[3] }' >> "$costs"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
cost="$(awk '{ for (i = 1; i <= 4; i++) s[i] += $i } END { printf "%.6g,%.6g,%.6g,%.6g", s[1]/NR, s[2]/NR, s[3]/NR, s[4]/NR }' "$costs")"
echo "learned step cost (mean over runs): $cost"
"$NS" bench sim "$@" --goodput "${goodput[@]}" --step-cost "$cost" \
  --policies "$(echo "$POLICIES" | tr ' ' ',')" --result-json "$OUT/sim.json" > "$OUT/sim.txt"

python3 - "$OUT" $POLICIES <<'PY'
import json, sys
out, pols = sys.argv[1], sys.argv[2:]
sim = {r["policy"]: r for r in json.load(open(f"{out}/sim.json"))}
simk = list(sim)  # bench sim prints the policy in its canonical spelling, in order
rows = []
metrics = [("TTFT p99 s", lambda r: r["ttft_ms"]["p99"] / 1e3, lambda s: s["ttft_s"]["p99"], False),
           ("TPOT p99 ms", lambda r: r["tpot_ms"]["p99"], lambda s: s["tpot_s"]["p99"] * 1e3, False),
           ("TTFT p50 s", lambda r: r["ttft_ms"]["median"] / 1e3, lambda s: s["ttft_s"]["p50"], False),
           ("out tok/s", lambda r: r["output_throughput"], lambda s: s["output_throughput"], True),
           ("goodput req/s", lambda r: r["goodput"] or 0.0, lambda s: s["goodput"], True)]
real = [json.load(open(f"{out}/real-{p}.json")) for p in pols]
sims = [sim[k] for k in simk]
agree = 0
pairs = clear = 0
print(f"\n| metric | " + " | ".join(f"{p} real / sim" for p in pols) + " | real ranking | sim ranking | same |")
print("| --- | " + " | ".join("---" for _ in pols) + " | --- | --- | --- |")
for name, rget, sget, higher in metrics:
    rv = [rget(r) for r in real]
    sv = [sget(s) for s in sims]
    rank = lambda v: [pols[i] for i in sorted(range(len(v)), key=lambda i: -v[i] if higher else v[i])]
    rr, sr = rank(rv), rank(sv)
    agree += rr == sr
    # Pairs the real runs separate by more than 10%: does the simulator order them alike?
    for i in range(len(pols)):
        for j in range(i + 1, len(pols)):
            a, b = rv[i], rv[j]
            if max(a, b) > 1.1 * min(a, b):
                pairs += 1
                clear += (a < b) == (sv[i] < sv[j])
    cells = " | ".join(f"{a:.3g} / {b:.3g}" for a, b in zip(rv, sv))
    print(f"| {name} | {cells} | {' < '.join(rr) if not higher else ' > '.join(rr)} | "
          f"{' < '.join(sr) if not higher else ' > '.join(sr)} | {'yes' if rr == sr else 'no'} |")
print(f"\nrankings agree on {agree} of {len(metrics)} metrics; on {clear} of {pairs} pairs of "
      "policies that the real runs separate by more than 10%")
PY
