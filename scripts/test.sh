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

# The Nacos TLS test builds nacos-sdk's TLS, whose HTTP login links the system's OpenSSL.
if ! pkg-config --exists openssl 2>/dev/null; then
  echo "== installing libssl-dev pkg-config"
  apt_install libssl-dev pkg-config
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# The Nacos TLS build (a feature that switches nacos-sdk to TLS for the whole build).
cargo clippy -p steadfast-tests --features nacos-tls --tests -- -D warnings

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
tls_dir=$(mktemp -d)
trap 'rm -rf "$log" "$tls_dir"' EXIT
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# nacos-sdk turns TLS on for a whole build: the Nacos TLS test is built on its own, with the
# feature. Its CA goes where both variables point; the file must exist when the process
# starts (OpenSSL's probe replaces an SSL_CERT_FILE that names no file).
echo "== cargo test: the Nacos backend over TLS (feature nacos-tls)"
: > "$tls_dir/ca.pem"
NACOS_CLIENT_TLS_CA_CERT="$tls_dir/ca.pem" SSL_CERT_FILE="$tls_dir/ca.pem" \
  cargo test -p steadfast-tests --features nacos-tls --test nacos_tls 2>&1 | tee -a "$log"
tls_status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && status=$tls_status
set -e
# One closing line for the whole run, summed over every test binary and doctest run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
