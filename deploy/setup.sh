#!/usr/bin/env bash
# Prepares a Debian host for shipper: Docker, the Python package, and with --test what the tests talk to
# (rsyslog with TLS and RELP, the busybox image). Safe to run again: it installs only what is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pkgs="docker.io"
[ $want_tests = 1 ] && pkgs="$pkgs busybox-static rsyslog rsyslog-gnutls rsyslog-relp gnutls-bin openssl logrotate"
# the status page test renders it in headless Chromium; the alert rules test loads them in promtool (prometheus)
[ $want_tests = 1 ] && pkgs="$pkgs chromium prometheus"
# the image test makes its Debian base with debootstrap; the unit file test runs systemd-analyze
[ $want_tests = 1 ] && pkgs="$pkgs debootstrap systemd"
# SHIPPER_COMPILE=1 (tests/run.sh sets it): the hot path compiled with mypyc, which needs a C compiler and
# Python's headers; 0: pure Python; unset: compiled when a compiler is there already.
compile=${SHIPPER_COMPILE:-}
[ -z "$compile" ] && { command -v cc >/dev/null 2>&1 && compile=1 || compile=0; }
if [ "$compile" = 1 ]; then
  command -v cc >/dev/null 2>&1 || pkgs="$pkgs gcc"
  [ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || pkgs="$pkgs python3-dev"
fi
missing=""
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in $pkgs; do installed "$p" || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "setup: installing$missing" >&2
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
# rsyslog's own service must not hold /dev/log or ports the tests use
if [ $want_tests = 1 ] && command -v systemctl >/dev/null 2>&1; then
  sudo_ systemctl stop rsyslog.service syslog.socket >/dev/null 2>&1 || true
fi

extras="fast"
[ $want_tests = 1 ] && extras="fast,kafka,test"
pip_() { python3 -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v -e "^WARNING: Running pip as" -e "is ignored: it is neither" >&2 || true; }
if [ "$compile" = 1 ]; then  # the per-entry hot path compiled with mypyc (setup.py)
  pip_ setuptools wheel "mypy>=1.10"
  SHIPPER_COMPILE=1 pip_ --no-build-isolation -e "$here[$extras]"
else
  pip_ -e "$here[$extras]"
fi
echo "setup: shipper installed, hot path $(cd / && python3 -c 'import shipper; print("compiled" if shipper.compiled() else "pure Python")')" >&2

# Docker: start dockerd if nothing answers on the socket (a CI machine runs no init system).
sock=/var/run/docker.sock
if ! docker version >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    sudo_ systemctl start docker
  else
    echo "setup: starting dockerd (log: /tmp/dockerd.log)" >&2
    sudo_ sh -c 'nohup dockerd >/tmp/dockerd.log 2>&1 &'
  fi
  for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
  docker version >/dev/null 2>&1 || { echo "setup: dockerd did not come up; see /tmp/dockerd.log" >&2; tail -20 /tmp/dockerd.log >&2; exit 1; }
fi
[ -S $sock ] || { echo "setup: no $sock" >&2; exit 1; }
echo "setup: docker $(docker version --format '{{.Server.Version}}') ready" >&2
