#!/usr/bin/env bash
# The release soak: starts `novastack serve` on 127.0.0.1 and runs scripts/soak.py's mixed
# traffic against it for a bounded time, then prints its table (requests served, errors
# by class, p50/p99 latency, memory and KV blocks over time, pass/fail checks).
#
#   scripts/soak.sh [SECONDS] [-- extra serve flags]
#   SOAK_MODEL=default scripts/soak.sh 600        # the real SmolLM2 (needs the cache)
#
# SOAK_MODEL (default: the llama-f32 test fixture), SOAK_CLIENTS (16), SOAK_MAX_TOKENS (32),
# SOAK_KV_CACHE_MB (16: small, so every KV page is touched during the warm-up third),
# NOVASTACK (the binary; default: target/release/novastack, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-300}"
shift || true
[ "${1:-}" = "--" ] && shift
MODEL="${SOAK_MODEL:-tests/fixtures/models/llama-f32}"
BIN="${NOVASTACK:-target/release/novastack}"
[ -x "$BIN" ] || cargo build --release -p novastack
LOG="$(mktemp -t novastack-soak.XXXXXX.log)"
"$BIN" serve --host 127.0.0.1 --port 0 --model "$MODEL" --served-model-name m \
  --max-waiting 64 --kv-cache-mb "${SOAK_KV_CACHE_MB:-16}" "$@" 2> "$LOG" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
PORT=""
for _ in $(seq 1 600); do
  PORT="$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG" | head -1)"
  grep -q " serving \[" "$LOG" && [ -n "$PORT" ] && break
  kill -0 $PID 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.2
done
echo "soak: server pid $PID on 127.0.0.1:$PORT for ${SECONDS_TO_RUN}s (log: $LOG)"
python3 scripts/soak.py --port "$PORT" --pid "$PID" --seconds "$SECONDS_TO_RUN" \
  --clients "${SOAK_CLIENTS:-16}" --max-tokens "${SOAK_MAX_TOKENS:-32}"
