#!/usr/bin/env bash
# flat6 lab: the topology the integration tests build, made by hand so people can explore it.
#
#   lab.sh up [N]   build it with N instances (default 2, at most 50)
#   lab.sh down     remove every f6lab-* namespace and its /etc/netns directory
#
# Everything lives in network namespaces named f6lab-*; the host's own links, routes, sysctls and
# /etc/resolv.conf are never touched. See docs/lab.md.
set -Eeuo pipefail

readonly PREFIX=f6lab-
readonly HV=f6lab-hv
readonly VR=f6lab-vr
readonly BRIDGE=br0
readonly VR_IF=vr0
readonly VR_MAC=02:f6:00:00:00:fe
readonly VR_ADDR=2001:db8:1::2/48
readonly MAX_INSTANCES=50
readonly DAD_WAIT_SECONDS=5

prog=$(basename "$0")

usage() {
    cat <<EOF
usage: $prog up [N]    build the lab with N instance namespaces (default 2, 1..$MAX_INSTANCES)
       $prog down      remove the lab (every ${PREFIX}* namespace and /etc/netns/${PREFIX}*)
EOF
}

die() {
    echo "$prog: $*" >&2
    exit 1
}

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        die "must run as root (network namespaces need it): sudo $0 $*"
    fi
    command -v ip >/dev/null || die "ip (iproute2) is not installed"
}

# Names of existing lab namespaces, one a line.
lab_namespaces() {
    ip netns list | awk '{print $1}' | { grep "^${PREFIX}" || true; }
}

instance_ns() { echo "${PREFIX}i$1"; }
instance_mac() { printf '02:f6:00:00:01:%02x' "$1"; }

# A namespace with its own resolv.conf (written first, so nothing run inside under `ip netns exec`
# can ever rewrite the host's /etc/resolv.conf) and lo up.
make_ns() {
    local ns=$1
    mkdir -p "/etc/netns/$ns"
    printf '# flat6 lab namespace %s\n' "$ns" >"/etc/netns/$ns/resolv.conf"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
}

# attach NS IFNAME MAC PORT: a veth from bridge port PORT (in the hypervisor) to IFNAME in NS.
# The peer is created directly in NS, so no end ever exists in the host's namespace.
attach() {
    local ns=$1 ifname=$2 mac=$3 port=$4
    ip -n "$HV" link add "$port" type veth peer name "$ifname" netns "$ns"
    # Bridge ports are layer 2 only: no link-local, no RS/DAD/MLD of their own on the segment.
    ip netns exec "$HV" sysctl -qw "net/ipv6/conf/$port/disable_ipv6=1"
    ip -n "$HV" link set dev "$port" master "$BRIDGE" up
    ip -n "$ns" link set dev "$ifname" address "$mac"
    ip -n "$ns" link set dev "$ifname" up
}

# Link-local address of IFNAME in NS once DAD is done (empty if none yet).
link_local() {
    ip -n "$1" -6 -o addr show dev "$2" scope link -tentative 2>/dev/null |
        awk '{sub("/.*", "", $4); print $4}' | head -n 1
}

wait_dad() {
    local ns=$1 ifname=$2 i
    for ((i = 0; i < DAD_WAIT_SECONDS * 10; i++)); do
        if [[ -n $(link_local "$ns" "$ifname") ]] &&
            [[ -z $(ip -n "$ns" -6 -o addr show dev "$ifname" tentative) ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "$prog: warning: $ns/$ifname still has tentative addresses after ${DAD_WAIT_SECONDS}s" >&2
}

on_up_error() {
    local rc=$?
    trap - ERR
    echo "$prog: up failed (exit $rc); removing the partial lab" >&2
    do_down || true
    exit "$rc"
}

do_up() {
    local n=$1
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= MAX_INSTANCES)) ||
        die "N must be a number from 1 to $MAX_INSTANCES, not '$n'"
    local existing
    existing=$(lab_namespaces)
    if [[ -n $existing ]] || compgen -G "/etc/netns/${PREFIX}*" >/dev/null; then
        die "a lab already exists (${existing//$'\n'/ }); run '$0 down' first"
    fi

    trap on_up_error ERR
    make_ns "$HV"
    ip -n "$HV" link add "$BRIDGE" type bridge stp_state 0 forward_delay 0 mcast_snooping 0
    ip -n "$HV" link set dev "$BRIDGE" up

    make_ns "$VR"
    attach "$VR" "$VR_IF" "$VR_MAC" vr-p
    ip -n "$VR" addr add "$VR_ADDR" dev "$VR_IF"

    local k
    for ((k = 1; k <= n; k++)); do
        make_ns "$(instance_ns "$k")"
        attach "$(instance_ns "$k")" eth0 "$(instance_mac "$k")" "i$k-p"
    done

    wait_dad "$VR" "$VR_IF"
    for ((k = 1; k <= n; k++)); do
        wait_dad "$(instance_ns "$k")" eth0
    done
    trap - ERR

    echo "flat6 lab is up: bridge $BRIDGE in $HV, the virtual router namespace $VR, $n instance(s)."
    echo
    printf '%-12s %-10s %-6s %-18s %-26s %s\n' NAMESPACE INTERFACE PORT MAC LINK-LOCAL ADDRESS
    printf '%-12s %-10s %-6s %-18s %-26s %s\n' "$HV" "$BRIDGE" - \
        "$(ip -n "$HV" -br link show dev "$BRIDGE" | awk '{print $3}')" - -
    printf '%-12s %-10s %-6s %-18s %-26s %s\n' "$VR" "$VR_IF" vr-p "$VR_MAC" \
        "$(link_local "$VR" "$VR_IF")" "$VR_ADDR"
    for ((k = 1; k <= n; k++)); do
        printf '%-12s %-10s %-6s %-18s %-26s %s\n' "$(instance_ns "$k")" eth0 "i$k-p" \
            "$(instance_mac "$k")" "$(link_local "$(instance_ns "$k")" eth0)" -
    done
    local ll2=""
    if ((n >= 2)); then
        ll2=$(link_local "$(instance_ns 2)" eth0)
    fi
    cat <<EOF

Enter a namespace:          sudo ip netns exec ${PREFIX}i1 bash
Look around:                sudo ip -n ${PREFIX}i1 addr; sudo ip -n $HV link show master $BRIDGE
Reach a neighbour:          sudo ip netns exec ${PREFIX}i1 ndisc6 ${ll2:-<link-local of another instance>} eth0
                            (or ping -6 ${ll2:-<link-local>}%eth0 if iputils-ping is installed)
Run a virtual router:       sudo ip netns exec $VR ./target/release/flat6 vr --config vr.toml
Then, from an instance:     sudo ip netns exec ${PREFIX}i1 rdisc6 eth0
Watch the segment:          sudo ip netns exec $HV tcpdump -ni $BRIDGE icmp6 or udp port 546 or udp port 547
Tear down:                  sudo $0 down
EOF
}

# Stop whatever still runs inside NS (a flat6 vr, a DHCP client...): the namespace is only
# really gone once its last process has exited.
stop_processes_in() {
    local ns=$1 pids pid i
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -z $pids ]] && return 0
    echo "stopping processes in $ns: $(echo $pids)"
    # shellcheck disable=SC2086 # word splitting of the pid list is intended
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -z $pids ]] && return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
}

do_down() {
    local failed=0 ns dir
    for ns in $(lab_namespaces); do
        stop_processes_in "$ns" || failed=1
        if ip netns del "$ns"; then
            echo "deleted namespace $ns"
        else
            echo "$prog: could not delete namespace $ns" >&2
            failed=1
        fi
    done
    for dir in /etc/netns/"${PREFIX}"*; do
        [[ -e $dir ]] || continue
        rm -rf -- "$dir" || {
            echo "$prog: could not remove $dir" >&2
            failed=1
        }
    done
    local left
    left=$(lab_namespaces)
    if [[ -n $left ]]; then
        echo "$prog: still present: ${left//$'\n'/ }" >&2
        failed=1
    fi
    if ((failed)); then
        echo "$prog: down finished with errors" >&2
        return 1
    fi
    echo "flat6 lab is down."
}

main() {
    local cmd=${1:-}
    case $cmd in
    up)
        (($# <= 2)) || {
            usage >&2
            exit 2
        }
        need_root "$@"
        do_up "${2:-2}"
        ;;
    down)
        (($# == 1)) || {
            usage >&2
            exit 2
        }
        need_root "$@"
        do_down
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
