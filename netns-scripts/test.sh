#!/usr/bin/env bash
# Run every flat6 test, as root: installs the Debian packages the tests use when they are missing,
# then `cargo test --locked` with FLAT6_REQUIRE_ROOT=1 so that no namespace test can skip silently.
# Extra arguments go to `cargo test` (e.g. `netns-scripts/test.sh --test vr_ra`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: the tests build network namespaces and need root: run  sudo $0" >&2
  exit 2
fi
# Under sudo, root's PATH may not have the invoking user's rustup toolchain.
for dir in "$HOME/.cargo/bin" "/root/.cargo/bin" ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin"}; do
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$dir/cargo" ]; then
    export PATH="$dir:$PATH"
  fi
done
command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo not found; install a Rust toolchain (rustup)" >&2; exit 2; }

# Debian packages the tests use, by the command they provide.
packages=(
  iproute2 nftables isc-dhcp-client dhcpcd-base ndisc6 tcpdump python3-scapy
  kea-admin kea-dhcp6-server radvd mariadb-server postgresql iperf3 procps iputils-ping curl
)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# What the last test (tests/zz_host_unchanged.rs) compares the host against.
snapshots=$(mktemp -d /tmp/flat6-test-snapshot.XXXXXX)
# Private MariaDB and PostgreSQL servers for the controller's tests (never the system instances).
dbdir=$(mktemp -d /tmp/flat6-test-db.XXXXXX)
cleanup() {
  netns-scripts/db.sh stop "$dbdir" >/dev/null 2>&1 || echo "test.sh: stopping the test databases failed; see $dbdir" >&2
  rm -rf "$snapshots"
}
trap cleanup EXIT
echo "== starting test databases in $dbdir"
netns-scripts/db.sh start "$dbdir"
eval "$(netns-scripts/db.sh env "$dbdir")"
cp --preserve=all /etc/resolv.conf "$snapshots/resolv.conf" 2>/dev/null || : > "$snapshots/resolv.conf"
ip netns list > "$snapshots/netns" 2>/dev/null || :
export FLAT6_RESOLV_SNAPSHOT="$snapshots/resolv.conf"
export FLAT6_NETNS_SNAPSHOT="$snapshots/netns"
export FLAT6_REQUIRE_ROOT=1

echo "== cargo test --locked $*"
cargo test --locked "$@"

if ! cmp -s /etc/resolv.conf "$FLAT6_RESOLV_SNAPSHOT"; then
  echo "test.sh: /etc/resolv.conf changed during the tests" >&2
  exit 1
fi
