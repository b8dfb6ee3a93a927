#!/usr/bin/env bash
# Idempotent installs for `cargo xtask bench` only (run as root, after scripts/setup.sh):
# the load generator oha (verifies certificates, reports latency percentiles) and the
# cross-check tools wrk and h2load (which never verify certificates; cross-checks only).
set -euo pipefail

log() { printf 'setup-bench: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (apt); re-run with sudo"
  exit 1
fi

apt_packages() {
  # binary -> package
  local -A want=(
    [wrk]=wrk
    [h2load]=nghttp2-client
    [prlimit]=util-linux
  )
  local missing=()
  for bin in "${!want[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("${want[$bin]}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_oha() {
  if command -v oha >/dev/null 2>&1 && oha --version >/dev/null 2>&1; then
    return
  fi
  # --locked: oha's newest dependencies want a newer rustc than this machine's stable.
  log "installing oha (cargo install oha --locked)"
  cargo install oha --locked
}

apt_packages
install_oha
log "ok ($(command -v oha) $(oha --version 2>/dev/null | head -n 1))"
