#!/usr/bin/env bash
# Fetches llama.cpp's source as vendored in the PyPI sdist of llama-cpp-python (the package
# index is the only network this needs), checks the sdist against the index's sha256, and
# unpacks it under $LLAMACPP_DIR (default target/llamacpp, ignored by git). Nothing of
# llama.cpp enters the repository.
# Usage: scripts/fetch_llamacpp_source.sh     prints the llama.cpp source directory last
# Env: LLAMA_CPP_PYTHON_VERSION (default 0.3.36), LLAMACPP_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DIR="${LLAMACPP_DIR:-$PWD/target/llamacpp}"
mkdir -p "$DIR"
sdist="$DIR/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  # The sdist's URL and sha256 from the index's JSON simple API (PEP 691). (`pip download`
  # would build the package's metadata, which compiles llama.cpp.)
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
echo "$src"
