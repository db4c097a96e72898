#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` and `llama-quantize` (CPU, this machine's ISA) from the
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
if [ -x "$BIN/llama-server" ] && [ -x "$BIN/llama-quantize" ] && [ -f "$DIR/.built-$VERSION" ]; then
  echo "llama.cpp (llama-cpp-python $VERSION) already built" >&2
  echo "$BIN"
  exit 0
fi

# 1. The sdist's URL and sha256 from the index's JSON simple API (PEP 691). (`pip download`
#    would build the package's metadata, which compiles llama.cpp once more.)
sdist="$DIR/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  index="https://pypi.org/simple/llama-cpp-python/"
  meta="$(curl -sfL --retry 3 -m 120 -H 'Accept: application/vnd.pypi.simple.v1+json' "$index")" \
    || { echo "cannot read $index" >&2; exit 1; }
  read -r url sha < <(python3 -c '
import json, sys
from urllib.parse import urljoin
want = "llama_cpp_python-%s.tar.gz" % sys.argv[2]
d = json.loads(sys.stdin.read())
f = [f for f in d["files"] if f["filename"] == want]
if not f:
    sys.exit("no %s on the index" % want)
print(urljoin(sys.argv[1], f[0]["url"]), f[0]["hashes"]["sha256"])' "$index" "$VERSION" <<<"$meta")
  echo "downloading $url" >&2
  curl -sfL --retry 3 -m 900 -o "$sdist.part" "$url"
  echo "$sha  $sdist.part" | sha256sum -c --quiet - || { echo "sha256 mismatch for $url" >&2; exit 1; }
  mv "$sdist.part" "$sdist"
fi
src="$DIR/llama_cpp_python-$VERSION/vendor/llama.cpp"
[ -d "$src" ] || tar -xzf "$sdist" -C "$DIR"

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
"$CMAKE" --build "$DIR/build" -j "$JOBS" --target llama-server llama-quantize \
  > "$DIR/build.log" 2>&1 || { tail -60 "$DIR/build.log" >&2; exit 1; }
touch "$DIR/.built-$VERSION"
echo "$BIN"
