#!/usr/bin/env bash
# Builds llama.cpp's `llama-server`, `llama-quantize`, `llama-bench` and `llama-batched-bench`
# (CPU, this machine's ISA) from the
# source vendored in the PyPI sdist of llama-cpp-python: the package index is the only
# network this needs. The sdist is checked against the index's sha256. Nothing of
# llama.cpp enters the repository: everything lives under $LLAMACPP_DIR (default
# target/llamacpp, ignored by git).
# Usage: scripts/build_llamacpp.sh            prints the bin directory on its last line
# Env: LLAMA_CPP_PYTHON_VERSION (default 0.3.36), LLAMACPP_DIR, CMAKE (default: pip's cmake
#      in $LLAMACPP_DIR/venv when none is on PATH), JOBS (default nproc).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DIR="${LLAMACPP_DIR:-$PWD/target/llamacpp}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$DIR"
BIN="$DIR/build/bin"
TARGETS=(llama-server llama-quantize llama-bench llama-batched-bench)
built=1
for t in "${TARGETS[@]}"; do [ -x "$BIN/$t" ] || built=0; done
if [ "$built" = 1 ] && [ -f "$DIR/.built-$VERSION" ]; then
  echo "llama.cpp (llama-cpp-python $VERSION) already built" >&2
  echo "$BIN"
  exit 0
fi

# 1. The source (scripts/fetch_llamacpp_source.sh: the PyPI sdist, sha256-checked).
src="$(LLAMACPP_DIR="$DIR" LLAMA_CPP_PYTHON_VERSION="$VERSION" scripts/fetch_llamacpp_source.sh | tail -1)"

# 2. cmake: the machine's, or pip's in a venv.
CMAKE="${CMAKE:-$(command -v cmake || true)}"
if [ -z "$CMAKE" ]; then
  if [ ! -x "$DIR/venv/bin/cmake" ]; then
    python3 -m venv "$DIR/venv"
    "$DIR/venv/bin/pip" install -q cmake ninja
  fi
  CMAKE="$DIR/venv/bin/cmake"
  export PATH="$DIR/venv/bin:$PATH"
fi
gen=()
command -v ninja > /dev/null && gen=(-G Ninja)

# 3. Configure and build: Release, this machine's ISA (compare_llamacpp.sh builds novastack
#    with target-cpu=native too), no curl/OpenSSL, no web UI download, no tests/examples.
"$CMAKE" -S "$src" -B "$DIR/build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF > "$DIR/configure.log" 2>&1 \
  || { tail -40 "$DIR/configure.log" >&2; exit 1; }
"$CMAKE" --build "$DIR/build" -j "$JOBS" --target "${TARGETS[@]}" \
  > "$DIR/build.log" 2>&1 || { tail -60 "$DIR/build.log" >&2; exit 1; }
touch "$DIR/.built-$VERSION"
echo "$BIN"
