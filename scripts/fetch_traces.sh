#!/usr/bin/env bash
# Fetches the public request-length traces that `bench offline` and `bench serve` replay
# (`--dataset trace:PATH`) into target/traces/ (or $1), and prints that folder.
#
#   AzureLLMInferenceTrace_conv.csv / _code.csv  Azure/AzurePublicDataset (CC-BY-4.0):
#       one hour of production traffic, 2023-11-16, with arrival times
#       (TIMESTAMP, ContextTokens, GeneratedTokens).
#   sharegpt_8k_filtered_stats_llama2_tokenizer.csv  microsoft/sarathi-serve (Apache-2.0)
#   arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv  microsoft/vidur (MIT)
#       prompt/output lengths only (num_prefill_tokens, num_decode_tokens, ...).
#
# They are not committed (several MB, with their own licenses). Without internet access,
# NOVASTACK_TRACES_FROM=DIR copies files of the same names from DIR instead.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-$PWD/target/traces}"
mkdir -p "$DEST"

fetch() { # name url expected-header-prefix
  local name="$1" url="$2" header="$3" out="$DEST/$1"
  if [ ! -s "$out" ]; then
    if [ -n "${NOVASTACK_TRACES_FROM:-}" ] && [ -f "$NOVASTACK_TRACES_FROM/$name" ]; then
      cp "$NOVASTACK_TRACES_FROM/$name" "$out.tmp"
    else
      curl -fsSL --retry 3 -o "$out.tmp" "$url" || { echo "cannot fetch $url" >&2; rm -f "$out.tmp"; return 1; }
    fi
    if ! head -1 "$out.tmp" | grep -q "^$header"; then
      echo "$name: unexpected header $(head -1 "$out.tmp" | cut -c1-80)" >&2
      rm -f "$out.tmp"
      return 1
    fi
    mv "$out.tmp" "$out"
  fi
}

AZ=https://raw.githubusercontent.com/Azure/AzurePublicDataset/master/data
fetch AzureLLMInferenceTrace_conv.csv "$AZ/AzureLLMInferenceTrace_conv.csv" TIMESTAMP,ContextTokens,GeneratedTokens
fetch AzureLLMInferenceTrace_code.csv "$AZ/AzureLLMInferenceTrace_code.csv" TIMESTAMP,ContextTokens,GeneratedTokens
fetch sharegpt_8k_filtered_stats_llama2_tokenizer.csv \
  https://raw.githubusercontent.com/microsoft/sarathi-serve/main/data/processed_traces/sharegpt_8k_filtered_stats_llama2_tokenizer.csv \
  num_prefill_tokens,num_decode_tokens
fetch arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv \
  https://raw.githubusercontent.com/microsoft/vidur/main/data/processed_traces/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv \
  num_prefill_tokens,num_decode_tokens
echo "$DEST"
