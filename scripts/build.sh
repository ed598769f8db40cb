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
# the CPU has them; without it the crate builds AVX2 kernels only).
# Two guards, because VMs advertise instructions they do not run (this
# project's own Firecracker VMs list amx_tile, and llama.cpp's AMX kernels die
# of SIGSEGV on the first tile instruction):
#   1. before building, a 10-line C probe runs one AMX tile instruction in a
#      subprocess when the CPU lists AMX; if it faults, the native build leaves
#      AMX out (-mno-amx-*: AVX-512 kernels, no tiles);
#   2. after every native build, a self-test loads the tests' model in a
#      subprocess and decodes a few tokens; if it dies of a signal (SIGILL,
#      SIGSEGV, abort) or hangs, the build is redone portable (GGML_NATIVE=OFF,
#      AVX2) with a message, and the failure is remembered for this CPU in
#      target/cpu-build so later runs build portable straight away.
#
# Environment:
#   COTFORGE_NATIVE=0   portable build (e.g. a binary copied to other machines:
#                       Slurm nodes, container images)
#   COTFORGE_NATIVE=1   a native attempt even after a recorded self-test failure
#                       (tested again; on a crash it falls back again)
#   RUSTFLAGS           kept; if it already sets target-cpu, it decides alone
#   COTFORGE_SELFTEST_MODEL  the GGUF the self-test loads (default: the tests' model)

COTFORGE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COTFORGE_TARGET="${CARGO_TARGET_DIR:-$COTFORGE_ROOT/target}"
COTFORGE_CPU_STATE="$COTFORGE_TARGET/cpu-build"
COTFORGE_SELFTEST_MODEL="${COTFORGE_SELFTEST_MODEL:-$COTFORGE_ROOT/data/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
# The caller's own flags, kept across nested scripts (test.sh runs setup.sh).
: "${COTFORGE_USER_RUSTFLAGS=${RUSTFLAGS-}}" "${COTFORGE_USER_CFLAGS=${CFLAGS-}}" "${COTFORGE_USER_CXXFLAGS=${CXXFLAGS-}}"
export COTFORGE_USER_RUSTFLAGS COTFORGE_USER_CFLAGS COTFORGE_USER_CXXFLAGS
# GCC drops AMX whatever the order against -march=native (explicit -m wins).
COTFORGE_NO_AMX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

cotforge_build_log() { printf '[build] %s\n' "$*" >&2; }

# A fingerprint of this CPU (model and feature flags): a target/ dir copied to
# another machine tests again.
cotforge_cpu_id() {
  { awk -F': *' '/^model name/ && !m {m=$2} /^flags/ && !f {f=$2} END {print m; print f}' \
      /proc/cpuinfo 2>/dev/null || uname -m; } | sha256sum | cut -c1-16
}

# AMX on this machine: "none" (not listed, or a compiler without AMX: nothing
# to leave out), "ok", or "faults" (listed, but a tile instruction dies).
# Probed once per process tree (exported).
cotforge_amx_state() {
  if [ -z "${COTFORGE_AMX_STATE:-}" ]; then
    if ! grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
      COTFORGE_AMX_STATE=none
    else
      local d
      d="$(mktemp -d)"
      cat >"$d/probe.c" <<'C'
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
/* What llama.cpp's AMX kernels do first: ask Linux for the tile state, load a
   tile configuration (palette 1, tile 0: 16 rows of 64 bytes), use a tile. */
int main(void) {
    unsigned char cfg[64] __attribute__((aligned(64)));
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) return 3;
    memset(cfg, 0, sizeof cfg);
    cfg[0] = 1;
    cfg[16] = 64;
    cfg[48] = 16;
    _tile_loadconfig(cfg);
    _tile_zero(0);
    _tile_release();
    return 0;
}
C
      if ! "${CC:-cc}" -O1 -mamx-tile "$d/probe.c" -o "$d/probe" 2>/dev/null; then
        COTFORGE_AMX_STATE=none
      elif { (ulimit -c 0; "$d/probe"); } 2>/dev/null; then
        COTFORGE_AMX_STATE=ok
      else
        COTFORGE_AMX_STATE=faults
      fi
      rm -rf "$d"
    fi
    export COTFORGE_AMX_STATE
  fi
  echo "$COTFORGE_AMX_STATE"
}

# The C/C++ flags a native llama.cpp build needs here: the no-AMX flags when
# AMX faults, else nothing (llama-tools.sh's native variant uses it too).
cotforge_native_cflags() {
  [ "$(cotforge_amx_state)" = faults ] && echo "$COTFORGE_NO_AMX_FLAGS"
  return 0
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
  local flags="$user" cflags="$COTFORGE_USER_CFLAGS" cxxflags="$COTFORGE_USER_CXXFLAGS" no_amx=""
  if [ "$COTFORGE_BUILD_CPU" = native ]; then
    flags="${user:+$user }-C target-cpu=native"
    cotforge_amx_state >/dev/null # probe in this shell: exported for the next calls
    no_amx="$(cotforge_native_cflags)"
  fi
  if [ -n "$no_amx" ]; then
    COTFORGE_BUILD_WHY="this CPU lists AMX but a tile instruction faults: AVX-512 kernels without AMX"
    cflags="${cflags:+$cflags }$no_amx" cxxflags="${cxxflags:+$cxxflags }$no_amx"
    # cmake-rs does not tell cargo to rerun llama-cpp-sys-2's build script
    # when CFLAGS change; a RUSTFLAGS change does (an inert --cfg).
    flags="$flags --cfg cotforge_no_amx"
  fi
  if [ -n "$flags" ]; then export RUSTFLAGS="$flags"; else unset RUSTFLAGS; fi
  if [ -n "$cflags" ]; then export CFLAGS="$cflags"; else unset CFLAGS; fi
  if [ -n "$cxxflags" ]; then export CXXFLAGS="$cxxflags"; else unset CXXFLAGS; fi
  export COTFORGE_BUILD_CPU COTFORGE_BUILD_WHY
}

# Load the tests' model and decode a few tokens of 4 sequences after a prompt
# long enough for the batched (AMX) matmul paths, in a subprocess.
# 0: passed; 1: a CPU fault (its description on stdout); 2: failed otherwise.
cotforge_selftest() {
  local bin="$COTFORGE_TARGET/release/cotforge" out rc
  out="$(mktemp)"
  # In a subshell that waits (not execs), so the shell's own "Segmentation
  # fault" line goes to $out too.
  ( OMP_WAIT_POLICY=PASSIVE timeout 600 "$bin" generate --model "$COTFORGE_SELFTEST_MODEL" \
    --threads 2 --n-parallel 4 --n-ctx 1024 -n 4 --max-tokens 8 --temperature 0 \
    --prompt "Self-test of the CPU kernels. A farmer has 17 rows of apple trees with 23 trees in \
each row; 48 trees are cut down and 5 new rows of 12 are planted. How many trees are there now? \
Explain each step of the arithmetic carefully, then give the final answer on its own line."
    st=$?
    exit "$st"
  ) >"$out" 2>&1 && rc=0 || rc=$?
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
  stamp="$(sha256sum "$COTFORGE_TARGET/release/cotforge" | cut -c1-16)"
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
      cotforge_build_log "(llama.cpp's AVX-512/AMX kernels on a CPU or VM that lists more than it runs)."
      cotforge_build_log "Rebuilding portable (AVX2 kernels, GGML_NATIVE=OFF, ~10 min); recorded in $COTFORGE_CPU_STATE."
      cotforge_build_log "COTFORGE_NATIVE=0 skips the native attempt; COTFORGE_NATIVE=1 tries native again."
      # The record now decides (also over COTFORGE_NATIVE=1, for this process).
      COTFORGE_NATIVE=auto
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
