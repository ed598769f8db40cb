#!/usr/bin/env bash
# llama.cpp's own programs (llama-server, llama-batched-bench, llama-perplexity),
# built from the llama.cpp tree vendored in the llama-cpp-python sdist (the
# llama-cpp-sys-2 crate ships no tool sources) and cached under target/.
#
#   scripts/llama-tools.sh          # build if needed, print the bin directory (variant: auto)
#   scripts/llama-tools.sh native   # the GGML_NATIVE=ON variant (bench.sh engine's second baseline)
#   scripts/llama-tools.sh portable # the GGML_NATIVE=OFF variant
#   . scripts/llama-tools.sh        # define llama_tools_build / llama_tools_bin (bench.sh, test.sh)
#
# Two variants, cached separately (they share the downloaded source); "auto"
# is the one with cotforge's own CPU flags (scripts/build.sh: native unless
# COTFORGE_NATIVE=0 or a recorded self-test failure), so the HTTP tests'
# llama-server and the in-process engine run the same kernels (greedy
# completions of AVX2 and AVX-512 kernels part after a few tokens):
#   portable (default): GGML_NATIVE=OFF (AVX2/FMA/F16C), what llama-cpp-sys-2
#     builds without `-C target-cpu=native`; llama-server, llama-batched-bench,
#     llama-perplexity in $LLAMA_TOOLS_DIR/bin.
#   native: GGML_NATIVE=ON (-march=native: AVX-512, AMX where the CPU has
#     them), the build a llama.cpp user has; the same three programs in
#     $LLAMA_TOOLS_DIR/native/bin. Where the CPU lists AMX
#     but faults on it, without AMX (scripts/build.sh's probe), as cotforge.
# One build of about 5 minutes on 2 cores each, then a no-op; concurrent
# callers (parallel test binaries) wait on a lock.
#
# Environment: LLAMA_TOOLS_DIR (default target/llama-tools).

LLAMA_TOOLS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_TOOLS_DIR="${LLAMA_TOOLS_DIR:-$LLAMA_TOOLS_ROOT/target/llama-tools}"
LCP_VERSION="0.3.36"

llama_tools_log() { printf '[llama-tools] %s\n' "$*" >&2; }

# llama_tools_variant VARIANT: set the variant's bin dir, build dir, targets,
# GGML_NATIVE value and stamp (what the cached binaries were built from and how:
# a change rebuilds them).
llama_tools_variant() {
  local v="${1:-auto}"
  if [ "$v" = auto ]; then
    # shellcheck source=scripts/build.sh
    . "$LLAMA_TOOLS_ROOT/scripts/build.sh"
    v=portable
    (cotforge_build_env && [ "$COTFORGE_BUILD_CPU" = native ]) && v=native
  fi
  case "$v" in
    portable)
      _lt_bin="$LLAMA_TOOLS_DIR/bin" _lt_build="$LLAMA_TOOLS_DIR/build" _lt_native=OFF
      _lt_targets="llama-server llama-batched-bench llama-perplexity" _lt_cflags="" ;;
    native)
      _lt_bin="$LLAMA_TOOLS_DIR/native/bin" _lt_build="$LLAMA_TOOLS_DIR/native/build" _lt_native=ON
      _lt_targets="llama-server llama-batched-bench llama-perplexity"
      # Without AMX where this machine lists AMX but faults on it, exactly as
      # scripts/build.sh builds cotforge.
      # shellcheck source=scripts/build.sh
      . "$LLAMA_TOOLS_ROOT/scripts/build.sh"
      _lt_cflags="$(cotforge_native_cflags)" ;;
    *) llama_tools_log "unknown variant '$v' (auto, portable or native)"; return 2 ;;
  esac
  _lt_stamp="llama-cpp-python==$LCP_VERSION GGML_NATIVE=$_lt_native${_lt_cflags:+ C flags: $_lt_cflags} targets: $_lt_targets"
}

# llama_tools_bin [VARIANT]: print the variant's bin directory.
llama_tools_bin() { llama_tools_variant "${1:-auto}" && echo "$_lt_bin"; }

llama_tools_ready() {
  llama_tools_variant "${1:-auto}" || return 2
  local t
  for t in $_lt_targets; do [ -x "$_lt_bin/$t" ] || return 1; done
  [ "$(cat "$_lt_bin/.stamp" 2>/dev/null)" = "$_lt_stamp" ]
}

llama_tools_build_locked() {
  llama_tools_ready "$1" && return 0
  llama_tools_variant "$1" || return 2
  local src="$LLAMA_TOOLS_DIR/src" build="$_lt_build" t0=$SECONDS
  rm -rf "$build" "$_lt_bin"
  mkdir -p "$src" "$(dirname "$build")"
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
  llama_tools_log "building $_lt_targets, GGML_NATIVE=$_lt_native (once; cached in $_lt_bin)"
  # No web UI (it would be fetched from the network), no HTTPS, no curl: the
  # server only ever listens on a local or cluster address.
  cmake -S "$src/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE="$_lt_native" \
    -DCMAKE_C_FLAGS="$_lt_cflags" -DCMAKE_CXX_FLAGS="$_lt_cflags" \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF >"$build.configure.log" 2>&1 \
    || { tail -30 "$build.configure.log" >&2; return 1; }
  # shellcheck disable=SC2086
  cmake --build "$build" --target $_lt_targets -j "$(nproc)" >"$build.log" 2>&1 \
    || { tail -30 "$build.log" >&2; return 1; }
  mkdir -p "$_lt_bin"
  for t in $_lt_targets; do cp "$build/bin/$t" "$_lt_bin/"; done
  echo "$_lt_stamp" >"$_lt_bin/.stamp"
  # The object files are not needed once the static binaries are copied out.
  rm -rf "$build"
  llama_tools_log "built in $((SECONDS - t0)) s: $_lt_bin"
}

# llama_tools_build [VARIANT]: build the variant unless its cache is current.
# Safe to call concurrently (one lock for both variants: they share the source).
llama_tools_build() {
  llama_tools_ready "${1:-auto}" && return 0
  llama_tools_variant "${1:-auto}" || return 2
  mkdir -p "$LLAMA_TOOLS_DIR"
  (
    flock 9 || exit 1
    llama_tools_build_locked "${1:-auto}"
  ) 9>"$LLAMA_TOOLS_DIR/.lock"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  llama_tools_build "${1:-auto}"
  llama_tools_bin "${1:-auto}"
fi
