#!/usr/bin/env bash
# How cotforge is built: the one place that picks the CPU flags. setup.sh,
# demo.sh, test.sh and bench.sh all use it, so they share one target/ dir
# (a RUSTFLAGS change rebuilds every crate, ~10 minutes on 2 cores).
#
#   scripts/build.sh [CARGO ARGS]   # cargo build --release [ARGS] + the CPU self-test
#   . scripts/build.sh              # define cotforge_build_env / cotforge_build
#
# Native by default: `-C target-cpu=native`, which is also what makes
# llama-cpp-sys-2 configure llama.cpp with GGML_NATIVE=ON (AVX-512, AMX where
# the CPU has them; without it the crate builds AVX2 kernels only). A native
# build once crashed in llama.cpp's AMX kernels on a VM that advertised AMX,
# so after every native build a self-test loads the tests' model in a
# subprocess and decodes a few tokens; if it dies of a signal (SIGILL, SIGSEGV,
# abort) or hangs, the build is redone portable (GGML_NATIVE=OFF, AVX2) with a
# message, and the failure is remembered for this CPU in target/cpu-build so
# later runs build portable straight away.
#
# Environment:
#   COTFORGE_NATIVE=0   portable build (e.g. a binary copied to other machines:
#                       Slurm nodes, container images)
#   COTFORGE_NATIVE=1   native even after a recorded self-test failure (tests again)
#   RUSTFLAGS           kept; if it already sets target-cpu, it decides alone

COTFORGE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COTFORGE_TARGET="${CARGO_TARGET_DIR:-$COTFORGE_ROOT/target}"
COTFORGE_CPU_STATE="$COTFORGE_TARGET/cpu-build"
COTFORGE_SELFTEST_MODEL="$COTFORGE_ROOT/data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
# The caller's own RUSTFLAGS, kept across nested scripts (test.sh runs setup.sh).
: "${COTFORGE_USER_RUSTFLAGS=${RUSTFLAGS-}}"
export COTFORGE_USER_RUSTFLAGS

cotforge_build_log() { printf '[build] %s\n' "$*" >&2; }

# A fingerprint of this CPU (model and feature flags): a target/ dir copied to
# another machine tests again.
cotforge_cpu_id() {
  { awk -F': *' '/^model name/ && !m {m=$2} /^flags/ && !f {f=$2} END {print m; print f}' \
      /proc/cpuinfo 2>/dev/null || uname -m; } | sha256sum | cut -c1-16
}

# The recorded self-test failure for this CPU, if any (one line), else nothing.
cotforge_native_failure() {
  [ -f "$COTFORGE_CPU_STATE" ] || return 0
  awk -v id="$(cotforge_cpu_id)" '$1 == "fail" && $2 == id {sub(/^fail [^ ]+ /, ""); print; exit}' \
    "$COTFORGE_CPU_STATE"
}

# Export RUSTFLAGS for the chosen build and COTFORGE_BUILD_CPU (native,
# portable or custom) with COTFORGE_BUILD_WHY (why, for messages).
cotforge_build_env() {
  local user="$COTFORGE_USER_RUSTFLAGS" failure
  COTFORGE_BUILD_WHY=""
  case "$user" in
    *target-cpu=*)
      COTFORGE_BUILD_CPU=custom COTFORGE_BUILD_WHY="RUSTFLAGS sets target-cpu" ;;
    *)
      case "${COTFORGE_NATIVE:-auto}" in
        0 | off | no | false)
          COTFORGE_BUILD_CPU=portable COTFORGE_BUILD_WHY="COTFORGE_NATIVE=${COTFORGE_NATIVE}" ;;
        1 | on | yes | true)
          COTFORGE_BUILD_CPU=native ;;
        auto)
          failure="$(cotforge_native_failure)"
          if [ -n "$failure" ]; then
            COTFORGE_BUILD_CPU=portable
            COTFORGE_BUILD_WHY="the native build failed its self-test on this CPU ($failure); COTFORGE_NATIVE=1 tries native again"
          else
            COTFORGE_BUILD_CPU=native
          fi ;;
        *)
          cotforge_build_log "COTFORGE_NATIVE='$COTFORGE_NATIVE': use 0 (portable) or 1 (native); unset = native with the self-test"
          return 2 ;;
      esac ;;
  esac
  local flags="$user"
  [ "$COTFORGE_BUILD_CPU" = native ] && flags="${user:+$user }-C target-cpu=native"
  if [ -n "$flags" ]; then export RUSTFLAGS="$flags"; else unset RUSTFLAGS; fi
  export COTFORGE_BUILD_CPU COTFORGE_BUILD_WHY
}

# Load the tests' model and decode a few tokens of 4 sequences after a prompt
# long enough for the batched (AMX) matmul paths, in a subprocess.
# 0: passed; 1: a CPU fault (its description on stdout); 2: failed otherwise.
cotforge_selftest() {
  local bin="$COTFORGE_TARGET/release/cotforge" out rc
  out="$(mktemp)"
  OMP_WAIT_POLICY=PASSIVE timeout 600 "$bin" generate --model "$COTFORGE_SELFTEST_MODEL" \
    --threads 2 --n-parallel 4 --n-ctx 1024 -n 4 --max-tokens 8 --temperature 0 \
    --prompt "Self-test of the CPU kernels. A farmer has 17 rows of apple trees with 23 trees in \
each row; 48 trees are cut down and 5 new rows of 12 are planted. How many trees are there now? \
Explain each step of the arithmetic carefully, then give the final answer on its own line." \
    >"$out" 2>&1 && rc=0 || rc=$?
  if [ "$rc" = 0 ]; then rm -f "$out"; return 0; fi
  local what
  case "$rc" in
    124) what="hung (no result in 600 s)" ;;
    132) what="SIGILL (illegal instruction)" ;;
    134) what="SIGABRT (abort)" ;;
    135) what="SIGBUS" ;;
    136) what="SIGFPE" ;;
    139) what="SIGSEGV (segmentation fault)" ;;
    *) if [ "$rc" -gt 128 ]; then what="signal $((rc - 128))"; else what=""; fi ;;
  esac
  if [ -z "$what" ]; then
    cotforge_build_log "self-test failed (exit $rc), not a CPU fault:"
    tail -20 "$out" >&2
    rm -f "$out"
    return 2
  fi
  tail -5 "$out" >&2
  rm -f "$out"
  echo "$what"
  return 1
}

# cotforge_build [CARGO ARGS]: cargo build --release [ARGS] with the chosen
# flags; after a native build, the self-test (once per binary) and the fallback.
cotforge_build() {
  cotforge_build_env || return
  cotforge_build_log "cotforge release build, ${COTFORGE_BUILD_CPU} CPU kernels${COTFORGE_BUILD_WHY:+ ($COTFORGE_BUILD_WHY)}"
  cargo build --release --quiet "$@" || return
  [ "$COTFORGE_BUILD_CPU" = native ] || return 0
  if [ ! -f "$COTFORGE_SELFTEST_MODEL" ]; then
    cotforge_build_log "self-test skipped: no $COTFORGE_SELFTEST_MODEL (scripts/setup.sh fetches it)"
    return 0
  fi
  local id stamp fault rc
  id="$(cotforge_cpu_id)"
  stamp="$(stat -c %Y.%s "$COTFORGE_TARGET/release/cotforge")"
  grep -qx "ok $id $stamp" "$COTFORGE_CPU_STATE" 2>/dev/null && return 0
  fault="$(cotforge_selftest)" && rc=0 || rc=$?
  case "$rc" in
    0)
      # Keep earlier lines of other CPUs; one line per CPU.
      { grep -v " $id " "$COTFORGE_CPU_STATE" 2>/dev/null || true; echo "ok $id $stamp"; } >"$COTFORGE_CPU_STATE.tmp"
      mv "$COTFORGE_CPU_STATE.tmp" "$COTFORGE_CPU_STATE"
      cotforge_build_log "native build passed its CPU self-test"
      return 0 ;;
    1)
      { grep -v " $id " "$COTFORGE_CPU_STATE" 2>/dev/null || true
        echo "fail $id $fault, $(date -u +%Y-%m-%dT%H:%MZ)"; } >"$COTFORGE_CPU_STATE.tmp"
      mv "$COTFORGE_CPU_STATE.tmp" "$COTFORGE_CPU_STATE"
      cotforge_build_log "THE NATIVE BUILD CRASHED ON THIS CPU: $fault while decoding a few tokens"
      cotforge_build_log "(llama.cpp's AVX-512/AMX kernels on a CPU or VM that advertises more than it runs)."
      cotforge_build_log "Rebuilding portable (AVX2 kernels, GGML_NATIVE=OFF, ~10 min); recorded in $COTFORGE_CPU_STATE."
      cotforge_build_log "COTFORGE_NATIVE=0 skips the native attempt; COTFORGE_NATIVE=1 tries native again."
      cotforge_build_env || return
      cargo build --release --quiet "$@" || return
      fault="$(cotforge_selftest)" && rc=0 || rc=$?
      [ "$rc" = 0 ] && return 0
      cotforge_build_log "the portable build fails its self-test too${fault:+ ($fault)}: not a CPU-flag problem"
      return 1 ;;
    *) return 1 ;;
  esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  cd "$COTFORGE_ROOT"
  cotforge_build "$@"
fi
