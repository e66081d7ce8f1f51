#!/usr/bin/env bash
# Everything a fresh machine needs before tandem builds, runs or tests: system tools from Debian,
# a running PostgreSQL, and the npm dependencies. Idempotent and quick when all is in place.
#   --bench  also what only the benchmarks use (restic, the file-backup reference)
#   --test   also what only the test suite uses (chromium for the status pages, promtool for the alert rules)
set -euo pipefail
cd "$(dirname "$0")/.."

bench=0
tests=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    --test) tests=1 ;;
    *) printf 'setup: unknown option %s (known: --bench, --test)\n' "$arg" >&2; exit 2 ;;
  esac
done

say() { printf 'setup: %s\n' "$*" >&2; }
. scripts/apt-install.sh

# System tools: pg_dump/pg_restore (postgresql-client), zstd, age (interop tests, decrypt by hand),
# GNU tar; with --bench, restic (the file-backup reference in the benchmarks).
need=()
command -v pg_dump >/dev/null || need+=(postgresql-client)
command -v zstd >/dev/null || need+=(zstd)
command -v age >/dev/null || need+=(age)
command -v tar >/dev/null || need+=(tar)
[ "$bench" -eq 0 ] || command -v restic >/dev/null || need+=(restic)
# With --test: headless Chromium (the status page tests) and promtool, which Debian ships in the
# prometheus package (on a systemd machine that also starts a Prometheus server: disable it if unwanted).
[ "$tests" -eq 0 ] || command -v chromium >/dev/null || need+=(chromium)
[ "$tests" -eq 0 ] || command -v promtool >/dev/null || need+=(prometheus)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

# The local PostgreSQL the demo and the tests use (trust auth on 127.0.0.1:5432).
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null; then
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$ver" ]; then
      say "starting PostgreSQL $ver"
      pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    fi
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -q -h 127.0.0.1 -p 5432 || { say "PostgreSQL is not reachable on 127.0.0.1:5432"; exit 1; }
fi

# npm dependencies, when missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi
