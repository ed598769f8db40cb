#!/usr/bin/env bash
# llama.cpp's own programs (llama-server, llama-batched-bench, llama-perplexity),
# built from the llama.cpp tree vendored in the llama-cpp-python sdist (the
# llama-cpp-sys-2 crate ships no tool sources) and cached under target/.
#
#   scripts/llama-tools.sh          # build if needed, print the bin directory
#   . scripts/llama-tools.sh        # define llama_tools_build / LLAMA_TOOLS_BIN (bench.sh, test.sh)
#
# Same CPU flags as the crate's build (GGML_NATIVE=OFF: AVX2/FMA/F16C), so the
# server, the benchmarks' baselines and the in-process engine run the same
# kernels; a native build may also pick up AMX paths that crash on VMs which
# advertise AMX without supporting it. One build of about 5 minutes on 2 cores,
# then a no-op; concurrent callers (parallel test binaries) wait on a lock.
#
# Environment: LLAMA_TOOLS_DIR (default target/llama-tools).

LLAMA_TOOLS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_TOOLS_DIR="${LLAMA_TOOLS_DIR:-$LLAMA_TOOLS_ROOT/target/llama-tools}"
LLAMA_TOOLS_BIN="$LLAMA_TOOLS_DIR/bin"
LCP_VERSION="0.3.36"
LLAMA_TOOLS_TARGETS="llama-server llama-batched-bench llama-perplexity"
# What the cached binaries were built from and how: a change rebuilds them.
LLAMA_TOOLS_STAMP="llama-cpp-python==$LCP_VERSION GGML_NATIVE=OFF targets: $LLAMA_TOOLS_TARGETS"

llama_tools_log() { printf '[llama-tools] %s\n' "$*" >&2; }

llama_tools_ready() {
  local t
  for t in $LLAMA_TOOLS_TARGETS; do [ -x "$LLAMA_TOOLS_BIN/$t" ] || return 1; done
  [ "$(cat "$LLAMA_TOOLS_BIN/.stamp" 2>/dev/null)" = "$LLAMA_TOOLS_STAMP" ]
}

llama_tools_build_locked() {
  llama_tools_ready && return 0
  local src="$LLAMA_TOOLS_DIR/src" build="$LLAMA_TOOLS_DIR/build" t0=$SECONDS
  rm -rf "$build" "$LLAMA_TOOLS_BIN"
  mkdir -p "$src"
  if [ ! -d "$src/llama.cpp" ]; then
    llama_tools_log "downloading the llama-cpp-python==$LCP_VERSION sdist (vendor/llama.cpp)"
    # --no-binary for this package only: ':all:' would also build every build
    # dependency from source and take many minutes.
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --no-binary llama-cpp-python -d "$src" "llama-cpp-python==$LCP_VERSION" || return 1
    tar -xzf "$src/llama_cpp_python-$LCP_VERSION.tar.gz" -C "$src" || return 1
    mv "$src/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp" "$src/llama.cpp"
    rm -rf "$src/llama_cpp_python-$LCP_VERSION" "$src/llama_cpp_python-$LCP_VERSION.tar.gz"
  fi
  llama_tools_log "building $LLAMA_TOOLS_TARGETS (once; cached in $LLAMA_TOOLS_DIR)"
  # No web UI (it would be fetched from the network), no HTTPS, no curl: the
  # server only ever listens on a local or cluster address.
  cmake -S "$src/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF >"$LLAMA_TOOLS_DIR/configure.log" 2>&1 \
    || { tail -30 "$LLAMA_TOOLS_DIR/configure.log" >&2; return 1; }
  # shellcheck disable=SC2086
  cmake --build "$build" --target $LLAMA_TOOLS_TARGETS -j "$(nproc)" >"$LLAMA_TOOLS_DIR/build.log" 2>&1 \
    || { tail -30 "$LLAMA_TOOLS_DIR/build.log" >&2; return 1; }
  mkdir -p "$LLAMA_TOOLS_BIN"
  for t in $LLAMA_TOOLS_TARGETS; do cp "$build/bin/$t" "$LLAMA_TOOLS_BIN/"; done
  echo "$LLAMA_TOOLS_STAMP" >"$LLAMA_TOOLS_BIN/.stamp"
  # The object files are not needed once the static binaries are copied out.
  rm -rf "$build"
  llama_tools_log "built in $((SECONDS - t0)) s: $LLAMA_TOOLS_BIN"
}

# Build the tools unless the cache is current. Safe to call concurrently.
llama_tools_build() {
  llama_tools_ready && return 0
  mkdir -p "$LLAMA_TOOLS_DIR"
  (
    flock 9 || exit 1
    llama_tools_build_locked
  ) 9>"$LLAMA_TOOLS_DIR/.lock"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  llama_tools_build
  echo "$LLAMA_TOOLS_BIN"
fi
