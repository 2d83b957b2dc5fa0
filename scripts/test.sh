#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh machine.
# Usage: ./scripts/test.sh
# Installs what the tests need when it is missing (Debian packages via apt-get), then runs
# formatting, lint, doc and test checks. The same script runs in CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/env.sh
source scripts/env.sh

# The registry tests start a real etcd (Debian's etcd-server).
if ! command -v etcd >/dev/null 2>&1; then
  echo "== installing etcd-server"
  apt_install etcd-server
fi

# The metrics tests check /metrics with promtool and scrape it with a real Prometheus
# (Debian's prometheus: /usr/bin/prometheus and /usr/bin/promtool).
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "== installing prometheus"
  apt_install prometheus
fi

# The Nacos backend's tests run a real Nacos-protocol server: rnacos, a crate (no Debian or
# PyPI package has a Nacos server). Building it takes about 16 minutes on 2 cores, once per
# machine: cargo install skips it when it is installed.
if ! command -v rnacos >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/rnacos" ]; then
  echo "== installing rnacos (a Nacos-protocol server, for the Nacos tests)"
  cargo install --locked rnacos@0.8.8
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== cargo tree -d (one version each of tonic, prost, tower, hyper)"
dups=$(cargo tree --workspace --prefix none --format '{p}' 2>/dev/null \
  | sed 's/ (.*//' | sort -u | awk '{print $1}' | uniq -d \
  | grep -E '^(tonic|prost|tower|hyper)$' || true)
if [ -n "$dups" ]; then
  echo "more than one version of: $dups"; cargo tree --workspace -d; exit 1
fi

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary and doctest run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
