# Shared helpers for the setup scripts (sourced, not run). Callers set LOG_PREFIX first.

log() { printf '%s: %s\n' "${LOG_PREFIX:-setup}" "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (apt, bpffs, cgroups); re-run with sudo"
    exit 1
  fi
}

# apt_install_missing BIN=PACKAGE...: installs the packages whose binary is not on PATH (or in
# /usr/sbin), with one apt-get update when anything is missing.
apt_install_missing() {
  local missing=() pair bin pkg
  for pair in "$@"; do
    bin=${pair%%=*}
    pkg=${pair#*=}
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
