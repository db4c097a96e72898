#!/usr/bin/env bash
# The gateway benchmark side by side with the LiteLLM proxy, in one run:
#   novastack's gateway and LiteLLM (pip, one worker) in front of the same instant mock
#   upstream on 127.0.0.1, measured by the same load generator: added latency p50/p99 at
#   fixed rates (open loop) and the maximum request rate (closed loop).
# Usage: scripts/bench_gateway.sh [extra `novastack bench gateway` flags]
# Env: NOVASTACK_LITELLM_VENV (default target/py-litellm), LITELLM_VERSION (default 1.108.7).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${NOVASTACK_LITELLM_VENV:-$PWD/target/py-litellm}"
MOCK_PORT="${MOCK_PORT:-9100}"
LITELLM_PORT="${LITELLM_PORT:-4000}"
if [ ! -x "$VENV/bin/litellm" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "litellm[proxy]==${LITELLM_VERSION:-1.108.7}"
fi
cargo build --release -q

work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/litellm.yaml" <<YAML
model_list:
  - model_name: mock
    litellm_params:
      model: openai/mock
      api_base: http://127.0.0.1:${MOCK_PORT}/v1
      api_key: sk-none
litellm_settings:
  telemetry: false
YAML
# Offline: the bundled cost map, no telemetry, no update checks.
export LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False LITELLM_LOG=ERROR
# No client auth on either gateway (LiteLLM at its leanest; a benchmark on 127.0.0.1 only).
export LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true
"$VENV/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$LITELLM_PORT" \
  --num_workers 1 > "$work/litellm.log" 2>&1 &
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$LITELLM_PORT/health/liveliness" > /dev/null && break
  sleep 1
done
curl -sf "http://127.0.0.1:$LITELLM_PORT/health/liveliness" > /dev/null || {
  echo "LiteLLM did not start:"; tail -30 "$work/litellm.log"; exit 1; }

./target/release/novastack bench gateway --mock-port "$MOCK_PORT" \
  --compare-url "http://127.0.0.1:$LITELLM_PORT/v1" --compare-model mock --compare-name litellm "$@"
