# Sourced by the other scripts: makes sure the build has what it needs on a fresh machine.
# - protoc: our build scripts use a vendored protoc; any other crate that runs protoc finds
#   it through PROTOC, which points at Debian's protobuf-compiler when installed, or else at
#   the vendored binary once it has been built.

apt_install() {
  # apt_install PACKAGE... : installs Debian packages when apt-get is there and we are root.
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    if [ -z "${STEADFAST_APT_UPDATED:-}" ]; then
      apt-get update -qq >/dev/null
      export STEADFAST_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing: $* (install them, e.g. apt-get install -y $*)" >&2
    return 1
  fi
}

if [ -z "${PROTOC:-}" ]; then
  if ! command -v protoc >/dev/null 2>&1; then
    apt_install protobuf-compiler || true
  fi
  if command -v protoc >/dev/null 2>&1; then
    PROTOC=$(command -v protoc)
  else
    # No apt: fall back to the protoc that the protoc-bin-vendored crate ships.
    cargo fetch --quiet
    PROTOC=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*protoc-bin-vendored-linux-*/bin/protoc' 2>/dev/null | sort | tail -n 1)
  fi
  [ -n "$PROTOC" ] && export PROTOC
fi
