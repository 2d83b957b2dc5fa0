#!/usr/bin/env bash
# Runs the demo on the embedded default (no external server needed).
# Usage: ./scripts/demo.sh [demo options]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh
exec cargo run --quiet -p steadfast-examples --bin demo -- "$@"
