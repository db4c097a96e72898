#!/usr/bin/env bash
# The MoE GGUF fixtures (tests/fixtures/gguf/moe): three golden model fixtures converted by
# llama.cpp's own convert_hf_to_gguf.py, so that the GGUF path is tested against the
# conventions llama.cpp writes (3-D ffn_*_exps, ffn_gate_inp, exp_probs_b, q/k permutation
# for `llama`, `{arch}.expert_*` metadata), not against ours. Weights keep their storage
# type (f16 stays f16, bf16 stays bf16), so the fixtures' transformers references hold.
# Run by hand, never in CI, with the fixture venv (scripts/requirements-fixtures.txt, plus
# sentencepiece, which the converter imports):
#   /work/.venvs/fx/bin/pip install sentencepiece
#   PYTHON=/work/.venvs/fx/bin/python scripts/make_gguf_moe_fixtures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-/work/.venvs/fx/bin/python}"
src="$(scripts/fetch_llamacpp_source.sh | tail -1)"
out="$PWD/tests/fixtures/gguf/moe"
models="$PWD/tests/fixtures/models"
mkdir -p "$out"
# The fixtures' tokenizer is our own small BPE, whose pre-tokenizer hash is not in the
# converter's table of known ones: name it (its splitting is not what these files test).
wrapper="$(mktemp --suffix .py)"
trap 'rm -f "$wrapper"' EXIT
cat > "$wrapper" <<'PY'
import runpy, sys
sys.path[:0] = ["gguf-py", "."]
import conversion.base as base
for cls in [c for c in vars(base).values() if isinstance(c, type)]:
    if hasattr(cls, "get_vocab_base_pre"):
        cls.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[1:]
runpy.run_path("convert_hf_to_gguf.py", run_name="__main__")
PY
for pair in qwen3-moe-f16:f16 mixtral-f16:f16 minimax-m2-bf16:bf16; do
  name="${pair%%:*}" type="${pair##*:}"
  (cd "$src" && HF_HUB_OFFLINE=1 "$PYTHON" "$wrapper" "$models/$name" \
     --outfile "$out/$name.gguf" --outtype "$type")
done
ls -l "$out"
