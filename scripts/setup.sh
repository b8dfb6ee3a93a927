#!/usr/bin/env bash
# Idempotent machine setup for building and testing gateway (run as root).
# Installs only what is missing: apt packages, nightly rust-src, bpf-linker, bpffs mount.
set -euo pipefail

LOG_PREFIX=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

apt_packages() {
  apt_install_missing bpftool=bpftool curl=curl openssl=openssl ip=iproute2 python3=python3 nginx=nginx
}

rust_src() {
  if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    log "adding rust-src to the nightly toolchain"
    rustup component add rust-src --toolchain nightly
  fi
}

bpf_linker() {
  if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version 2>/dev/null | grep -q '0\.13\.'; then
    return
  fi
  # Build bpf-linker against the LLVM shipped inside the nightly toolchain: the default build
  # wants a system libLLVM of the newest major, which Debian does not have.
  local sysroot major lib prefix
  sysroot=$(rustc +nightly --print sysroot)
  major=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  lib=$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM*.so*' | head -n 1)
  if [ -z "$major" ] || [ -z "$lib" ]; then
    log "cannot find the nightly toolchain's LLVM (major='$major', lib='$lib')"
    exit 1
  fi
  prefix=$(mktemp -d /tmp/gateway-llvm.XXXXXX)
  mkdir -p "$prefix/lib"
  ln -sf "$lib" "$prefix/lib/libLLVM.so"
  log "building bpf-linker 0.13 against LLVM $major ($lib)"
  # The rpath lets the installed binary find the toolchain's libLLVM at run time.
  LLVM_PREFIX="$prefix" LD_LIBRARY_PATH="$sysroot/lib" \
    RUSTFLAGS="-C link-arg=-Wl,-rpath,$sysroot/lib" \
    cargo install --force bpf-linker@0.13.0 --locked --no-default-features --features "llvm-$major"
  rm -rf "$prefix"
}

bpffs() {
  if ! awk '$3 == "bpf" && $2 == "/sys/fs/bpf" { found = 1 } END { exit !found }' /proc/self/mounts; then
    log "mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
  fi
}

need_root
apt_packages
rust_src
bpf_linker
bpffs
log "ok"
