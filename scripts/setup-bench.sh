#!/usr/bin/env bash
# Idempotent installs for `cargo xtask bench` only (run as root, after scripts/setup.sh):
# the load generator oha (verifies certificates, reports latency percentiles) and the
# cross-check tools wrk and h2load (which never verify certificates; cross-checks only).
set -euo pipefail

LOG_PREFIX=setup-bench
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
need_root

apt_packages() {
  apt_install_missing wrk=wrk h2load=nghttp2-client prlimit=util-linux
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
