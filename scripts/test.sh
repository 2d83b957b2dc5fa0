#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh machine.
# Usage: ./scripts/test.sh
# Installs what the tests need when it is missing (Debian packages via apt-get), then runs
# formatting, lint, doc and test checks. The same script runs in CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/env.sh
source scripts/env.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== cargo tree -d (one version each of tonic, prost, tower, hyper)"
dups=$(cargo tree --workspace -d -e normal --prefix none --format '{p}' 2>/dev/null \
  | grep -E '^(tonic|prost|tower|hyper) v' | sort -u || true)
if [ -n "$dups" ]; then
  echo "duplicate versions of core crates:"; echo "$dups"; exit 1
fi

echo "== cargo test"
cargo test --workspace
