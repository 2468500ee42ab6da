#!/usr/bin/env bash
# Install what the tests need on a fresh Debian machine (Python 3.11+), then lint, type-check and test.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v dig >/dev/null 2>&1 || missing+=(bind9-dnsutils)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
# For bench/dns_server, not the tests: dnsperf asks, BIND answers beside the embedded server.
command -v dnsperf >/dev/null 2>&1 || missing+=(dnsperf)
command -v named >/dev/null 2>&1 || [ -x /usr/sbin/named ] || missing+=(bind9)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v pdns_server >/dev/null 2>&1 || missing+=(pdns-server pdns-backend-sqlite3)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The package's own pdns would hold port 53; the tests start pdns_server on free ports of their own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now pdns >/dev/null 2>&1 || true; fi
  else
    echo "note: ${missing[*]} not installed; tests needing them will be skipped (sudo apt-get install ${missing[*]})" >&2
  fi
fi
python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
# moto_server (a console script of moto[server]) lands beside this python3, or in the user base when pip
# installs as a user: on PATH either way, or the Route 53 tests skip (fail under CI=true).
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(python3 -m site --user-base)/bin"
export PATH
command -v moto_server >/dev/null 2>&1 || echo "note: moto_server not found after installing .[dev]" >&2
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
python3 -m pytest -q "$@"
