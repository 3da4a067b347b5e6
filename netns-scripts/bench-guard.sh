#!/usr/bin/env bash
# Guard benchmark: how long `flat6 guard` takes to apply a large ports document and to add or
# remove one port, the same one-port change done the iptables way (an ip6tables-restore of the
# whole equivalent ruleset, laid out like Neutron's iptables firewall driver: one chain per port
# and direction, physdev dispatch, ipsets for remote groups), and the TCP throughput between two
# instances with the large ruleset loaded against none. Every figure comes from this run.
#
#   sudo netns-scripts/bench-guard.sh [--ports N] [--small N] [--reps R] [--large-reps R]
#                                     [--scaling "N N ..."] [--timeout S] [--iperf-seconds S]
#                                     [--iperf-runs R] [--no-iptables] [--no-iperf] [--no-build]
#                                     [--flat6 BIN]
#
# --flat6 measures another build (implies --no-build), e.g. to compare two in one session.
#
# Everything runs in network namespaces made for this run: f6g<pid>hv (the hypervisor: bridge
# br0 with ports vp0 and vp1, where flat6 guard runs), f6g<pid>a and f6g<pid>b (two instances
# behind vp0 and vp1), f6g<pid>ctl with f6g<pid>ca and f6g<pid>cb (the same again, never given a
# ruleset: the control for throughput, measured alternately with the guarded pair so that both see
# the same machine load), f6g<pid>ipn and f6g<pid>ipl (empty namespaces for the ip6tables-nft and
# ip6tables-legacy baselines). Each has its own /etc/netns/<ns>/resolv.conf. The namespaces,
# those files and every process started here are removed on exit, also on error or Ctrl-C. The
# host's nftables, iptables, links and sysctls are never touched; only 2001:db8::/32 is used.
# Every command that can run long is bounded by --timeout. See docs/benchmarks.md.
set -Eeuo pipefail

prog=$(basename "$0")
cd "$(dirname "$0")/.."
readonly ROOT=$PWD
# shellcheck source=netns-scripts/bench-lib.sh
source "$ROOT/netns-scripts/bench-lib.sh"

readonly HV=f6g$$hv
readonly NSA=f6g$$a
readonly NSB=f6g$$b
readonly IPN=f6g$$ipn
readonly IPL=f6g$$ipl
readonly CTL=f6g$$ctl
readonly CTA=f6g$$ca
readonly CTB=f6g$$cb
readonly TABLE=flat6

ports=10000
small=100
reps=7
large_reps=5
scaling="1000 2000"
cmd_timeout=7200
iperf_seconds=5
iperf_runs=3
iptables=1
iperf=1
build=1
flat6_bin=

usage() {
    cat <<EOF
usage: $prog [options]

  --ports N          size of the large document (default $ports)
  --small N          size of the small document (default $small)
  --reps R           one-port add+remove repetitions at the small size, and ip6tables-restore
                     repetitions at both sizes (default $reps)
  --large-reps R     one-port add+remove repetitions at the large size (default $large_reps)
  --scaling "N ..."  also time a full apply at these sizes, to show how it grows
                     (default "$scaling"; "" to skip)
  --timeout S        limit for any one apply, restore or listing (default $cmd_timeout s)
  --iperf-seconds S  length of each iperf3 run (default $iperf_seconds)
  --iperf-runs R     iperf3 runs of each kind (default $iperf_runs)
  --no-iptables      skip the ip6tables-restore baseline
  --no-iperf         skip the throughput test
  --no-build         use the existing target/release/flat6 instead of running cargo build

Every port has one /128, a /64 and 20 security-group rules (TCP and UDP ports and ranges, remote
prefixes, remote groups). Ports vp0 and vp1 are real bridge ports with an instance behind each;
the others exist only in the document (nft accepts iifname matches for absent interfaces).
Needs root, iproute2, nft, jq, python3, iperf3, ip6tables-restore and ipset (apt-get install
iptables ipset).
EOF
}

while (($#)); do
    case $1 in
        --ports) ports=${2-}; shift 2 || die "--ports needs a value" ;;
        --small) small=${2-}; shift 2 || die "--small needs a value" ;;
        --reps) reps=${2-}; shift 2 || die "--reps needs a value" ;;
        --large-reps) large_reps=${2-}; shift 2 || die "--large-reps needs a value" ;;
        --scaling) scaling=${2-}; shift 2 || die "--scaling needs a value" ;;
        --timeout) cmd_timeout=${2-}; shift 2 || die "--timeout needs a value" ;;
        --iperf-seconds) iperf_seconds=${2-}; shift 2 || die "--iperf-seconds needs a value" ;;
        --iperf-runs) iperf_runs=${2-}; shift 2 || die "--iperf-runs needs a value" ;;
        --no-iptables) iptables=0; shift ;;
        --no-iperf) iperf=0; shift ;;
        --no-build) build=0; shift ;;
        --flat6) flat6_bin=$2; build=0; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
# Port i is 2001:db8:1:<i>::1 in 2001:db8:1:<i>::/64, so i must fit in 16 bits (the extra port is
# number N).
whole --ports "$ports" 2 65534
whole --small "$small" 2 65534
whole --reps "$reps" 1 100
whole --large-reps "$large_reps" 1 100
whole --timeout "$cmd_timeout" 10 86400
whole --iperf-seconds "$iperf_seconds" 1 60
whole --iperf-runs "$iperf_runs" 1 20
for n in $scaling; do whole "--scaling element" "$n" 2 65534; done

[[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces need it): sudo $0"
needed=(ip nft jq python3 nsenter timeout awk)
((iperf)) && needed+=(iperf3)
((iptables)) && needed+=(ipset ip6tables-restore)
for cmd in "${needed[@]}"; do
    command -v "$cmd" >/dev/null || die "$cmd is not installed (Debian: iproute2 nftables jq python3 util-linux coreutils iperf3 iptables ipset)"
done
for ns in "$HV" "$NSA" "$NSB" "$CTL" "$CTA" "$CTB" "$IPN" "$IPL"; do
    [[ ! -e /run/netns/$ns && ! -e /etc/netns/$ns ]] || die "namespace $ns already exists; not touching it"
done

WORK=$(mktemp -d /tmp/flat6-bench-guard.XXXXXX)
readonly WORK
started=() # pids of background processes this script started and has not reaped yet
made_ns=() # namespaces this script created

cleanup() {
    local rc=$? ns
    trap - EXIT INT TERM ERR
    stop_all
    # Deleting a namespace also frees its nftables tables, iptables rules and ipsets.
    for ns in "${made_ns[@]}"; do
        ip netns delete "$ns" 2>/dev/null || echo "$prog: could not delete namespace $ns" >&2
        rm -rf "/etc/netns/${ns:?}"
    done
    # The generated documents and rulesets are large and reproducible; logs and results stay.
    rm -f "$WORK/flat6" "$WORK"/ports-*.json "$WORK"/ipt-*.rules "$WORK"/ipset-*.txt "$WORK"/ports.json "$WORK"/ports.tmp
    if ((rc != 0)); then
        echo "$prog: FAILED (exit $rc); logs are in $WORK" >&2
    else
        echo "logs and raw results: $WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "$prog: command failed at line $LINENO: $BASH_COMMAND" >&2' ERR

# Start a command in the background, remember its pid in $last_pid.
spawn() { # LOGFILE CMD...
    local out=$1
    shift
    : >"$out"
    "$@" >"$out" 2>&1 &
    last_pid=$!
    started+=("$last_pid")
}

now() { echo "$EPOCHREALTIME"; }
ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }

# Median of numbers given as arguments ("-" when none).
median() {
    (($#)) || { echo -; return; }
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
minmax() {
    (($#)) || { echo -; return; }
    printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'
}

# Results, one "key value" per line, also kept in $WORK/results.txt.
declare -A R
record() { # KEY VALUE
    R[$1]=$2
    printf '%s %s\n' "$1" "$2" >>"$WORK/results.txt"
}

# ---------------------------------------------------------------------------------------------
# Build

for dir in "$HOME/.cargo/bin" /root/.cargo/bin ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin"}; do
    if ! command -v cargo >/dev/null 2>&1 && [[ -x $dir/cargo ]]; then
        export PATH="$dir:$PATH"
    fi
done
FLAT6=${flat6_bin:-$ROOT/target/release/flat6}
if ((build)); then
    command -v cargo >/dev/null || die "cargo not found; install a Rust toolchain or pass --no-build"
    say "cargo build --release --locked (log: $WORK/build.log)"
    cargo build --release --locked >"$WORK/build.log" 2>&1 ||
        fail_with_log "cargo build --release failed (pass --no-build to use an existing binary)" "$WORK/build.log"
fi
[[ -x $FLAT6 ]] || die "$FLAT6 does not exist; build it with cargo build --release"
# A private copy: a rebuild in the work tree during the run must not change the binary under test.
cp "$FLAT6" "$WORK/flat6"
FLAT6=$WORK/flat6

# ---------------------------------------------------------------------------------------------
# Generators: the ports document and the equivalent ip6tables ruleset and ipsets.

cat >"$WORK/gen.py" <<'PY'
"""Ports documents for flat6 guard, and the equivalent ip6tables-restore input and ipsets.

Every port is in the groups "default" and "web", 20 rules in all (16 ingress, 4 egress); the
remote group "default" has every port's address as a member, "admin" 8 outside addresses.
"""
import json
import sys

# (direction, protocol, ports, (remote kind, value))
GROUPS = {
    "default": [
        ("ingress", "tcp", "2049", ("group", "default")),
        ("ingress", "tcp", "22", ("group", "admin")),
        ("ingress", "icmpv6", None, ("prefix", "2001:db8:ff00::/40")),
        ("ingress", "udp", "4789", ("group", "default")),
        ("ingress", "tcp", "9100", ("prefix", "2001:db8:fe::/48")),
        ("egress", "tcp", "1-65535", ("group", "default")),
        ("egress", "udp", "53", ("prefix", "::/0")),
        ("egress", "udp", "123", ("prefix", "::/0")),
        ("egress", "tcp", "443", ("prefix", "::/0")),
        ("ingress", "tcp", "3306", ("group", "default")),
    ],
    "web": [
        ("ingress", "tcp", "80", ("prefix", "::/0")),
        ("ingress", "tcp", "443", ("prefix", "::/0")),
        ("ingress", "tcp", "8000-8100", ("prefix", "2001:db8:100::/48")),
        ("ingress", "udp", "5000-5100", ("prefix", "2001:db8:200::/48")),
        ("ingress", "udp", "33434-33534", ("prefix", "::/0")),
        ("ingress", "tcp", "5432", ("prefix", "2001:db8:300::/56")),
        ("ingress", "tcp", "6379", ("group", "admin")),
        ("ingress", "tcp", "11211", ("group", "default")),
        ("egress", "udp", "10000-10100", ("prefix", "2001:db8:400::/48")),
        # iperf3's port, last so that a new connection walks every ingress rule first.
        ("ingress", "tcp", "5201", ("prefix", "::/0")),
    ],
}
ADMINS = ["2001:db8:ff:%x::1" % k for k in range(1, 9)]
CHAIN = "neutron-openvswi-"


def port(i):
    mac = [0x02, 0xF6, (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255]
    # EUI-64 link-local address of the MAC (RFC 4291 appendix A).
    eui = [mac[0] ^ 2] + mac[1:3] + [0xFF, 0xFE] + mac[3:]
    lla = "fe80::" + ":".join("%x" % (eui[k] << 8 | eui[k + 1]) for k in range(0, 8, 2))
    return {
        "ifname": "vp%d" % i,
        "mac": ":".join("%02x" % b for b in mac),
        "addr": "2001:db8:1:%x::1" % i,
        "prefix": "2001:db8:1:%x::/64" % i,
        "lla": lla,
    }


def doc(n):
    ports = [port(i) for i in range(n)]
    groups = []
    for name, rules in GROUPS.items():
        wire = []
        for direction, proto, dports, (kind, value) in rules:
            r = {"direction": direction, "protocol": proto}
            if dports:
                r["ports"] = dports
            r["remote_group" if kind == "group" else "remote_prefix"] = value
            wire.append(r)
        members = [p["addr"] for p in ports] if name == "default" else []
        groups.append({"name": name, "members": members, "rules": wire})
    groups.append({"name": "admin", "members": ADMINS, "rules": []})
    return {
        "revision": n,
        "ports": [
            {"name": "i%d" % i, "interface": p["ifname"], "mac": p["mac"], "addresses": [p["addr"]],
             "prefix": p["prefix"], "security_groups": ["default", "web"]}
            for i, p in enumerate(ports)
        ],
        "security_groups": groups,
    }


def ipt_rule(direction, proto, dports, remote):
    """One security-group rule as Neutron's iptables driver writes it (RETURN = allowed)."""
    words = []
    kind, value = remote
    if kind == "prefix" and value != "::/0":
        words += ["-s" if direction == "ingress" else "-d", value]
    if proto == "icmpv6":
        words += ["-p", "ipv6-icmp"]
    elif proto in ("tcp", "udp"):
        words += ["-p", proto, "-m", proto]
        if dports:
            words += ["--dport", dports.replace("-", ":")]
    if kind == "group":
        words += ["-m", "set", "--match-set", "NIPv6" + value, "src" if direction == "ingress" else "dst"]
    return " ".join(words + ["-j", "RETURN"])


def ipt(n, out):
    """The whole filter table for n ports, laid out like Neutron's hybrid iptables firewall:
    physdev dispatch to one ingress (i), egress (o) and anti-spoofing (s) chain per port."""
    ports = [port(i) for i in range(n)]
    w = out.write
    w("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
    for c in ("INPUT", "FORWARD", "sg-chain", "sg-fallback"):
        w(":%s%s - [0:0]\n" % (CHAIN, c))
    for p in ports:
        for k in "ios":
            w(":%s%s%s - [0:0]\n" % (CHAIN, k, p["ifname"]))
    w("-A INPUT -j %sINPUT\n-A FORWARD -j %sFORWARD\n" % (CHAIN, CHAIN))
    rules = [r for g in GROUPS.values() for r in g]
    for p in ports:
        i, o, s = (CHAIN + k + p["ifname"] for k in "ios")
        dev = p["ifname"]
        w("-A %sFORWARD -m physdev --physdev-out %s --physdev-is-bridged -j %ssg-chain\n" % (CHAIN, dev, CHAIN))
        w("-A %sFORWARD -m physdev --physdev-in %s --physdev-is-bridged -j %ssg-chain\n" % (CHAIN, dev, CHAIN))
        w("-A %sINPUT -m physdev --physdev-in %s --physdev-is-bridged -j %s\n" % (CHAIN, dev, o))
        w("-A %ssg-chain -m physdev --physdev-out %s --physdev-is-bridged -j %s\n" % (CHAIN, dev, i))
        w("-A %ssg-chain -m physdev --physdev-in %s --physdev-is-bridged -j %s\n" % (CHAIN, dev, o))
        # Ingress: established, the ICMPv6 Neutron always lets in, DHCPv6 replies, the rules.
        w("-A %s -m state --state RELATED,ESTABLISHED -j RETURN\n" % i)
        for t in (130, 131, 132, 135, 136):
            w("-A %s -p ipv6-icmp -m icmp6 --icmpv6-type %d -j RETURN\n" % (i, t))
        w("-A %s -s fe80::/64 -p ipv6-icmp -m icmp6 --icmpv6-type 134 -j RETURN\n" % i)
        w("-A %s -p udp -m udp --sport 547 --dport 546 -j RETURN\n" % i)
        for direction, proto, dports, remote in rules:
            if direction == "ingress":
                w("-A %s %s\n" % (i, ipt_rule(direction, proto, dports, remote)))
        w("-A %s -m state --state INVALID -j DROP\n-A %s -j %ssg-fallback\n" % (i, i, CHAIN))
        # Egress: DAD and MLD from ::, RA guard, anti-spoofing, DHCPv6 shield, the rules.
        for t in (131, 135, 143):
            w("-A %s -s ::/128 -d ff02::/16 -p ipv6-icmp -m icmp6 --icmpv6-type %d -j RETURN\n" % (o, t))
        w("-A %s -j %s\n" % (o, s))
        for t in (134, 137):
            w("-A %s -p ipv6-icmp -m icmp6 --icmpv6-type %d -j DROP\n" % (o, t))
        w("-A %s -p ipv6-icmp -j RETURN\n" % o)
        w("-A %s -p udp -m udp --sport 546 --dport 547 -j RETURN\n" % o)
        w("-A %s -p udp -m udp --sport 547 --dport 546 -j DROP\n" % o)
        w("-A %s -m state --state RELATED,ESTABLISHED -j RETURN\n" % o)
        for direction, proto, dports, remote in rules:
            if direction == "egress":
                w("-A %s %s\n" % (o, ipt_rule(direction, proto, dports, remote)))
        w("-A %s -m state --state INVALID -j DROP\n-A %s -j %ssg-fallback\n" % (o, o, CHAIN))
        for src in (p["addr"], p["lla"]):
            w("-A %s -s %s/128 -m mac --mac-source %s -j RETURN\n" % (s, src, p["mac"]))
        w("-A %s -j DROP\n" % s)
    w("-A %ssg-chain -j ACCEPT\n-A %ssg-fallback -j DROP\nCOMMIT\n" % (CHAIN, CHAIN))


def ipset(n, out):
    out.write("create NIPv6default hash:net family inet6 hashsize 16384 maxelem 131072\n")
    for i in range(n):
        out.write("add NIPv6default %s\n" % port(i)["addr"])
    out.write("create NIPv6admin hash:net family inet6\n")
    for a in ADMINS:
        out.write("add NIPv6admin %s\n" % a)


if __name__ == "__main__":
    what, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(path, "w") as f:
        if what == "doc":
            json.dump(doc(n), f, separators=(",", ":"))
        elif what == "ipt":
            ipt(n, f)
        elif what == "ipset":
            ipset(n, f)
        elif what == "port":
            json.dump(port(n), f)
        else:
            sys.exit("unknown kind " + what)
PY
gen() { python3 "$WORK/gen.py" "$@"; }

# ---------------------------------------------------------------------------------------------
# Topology

make_ns() {
    mkdir -p "/etc/netns/$1"
    printf '# flat6 guard benchmark namespace %s\n' "$1" >"/etc/netns/$1/resolv.conf"
    ip netns add "$1"
    made_ns+=("$1")
    ip -n "$1" link set lo up
}
# Run inside a namespace with only the network namespace switched: less start-up work than
# `ip netns exec` (no mount namespace, no /sys remount), so the timings are the program's own.
in_ns() { # NS CMD...
    local ns=$1
    shift
    nsenter --net="/run/netns/$ns" "$@"
}
sysctl_ns() { # NS KEY VALUE
    ip netns exec "$1" sh -c "echo $3 >/proc/sys/$2"
}

# A hypervisor namespace with bridge br0 and two instances behind ports vp0 and vp1, with the
# MACs and addresses of ports 0 and 1 of the documents.
make_pair() { # HV INSTANCE0 INSTANCE1
    local hv=$1 k inst mac addr
    make_ns "$hv"
    make_ns "$2"
    make_ns "$3"
    ip -n "$hv" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
    sysctl_ns "$hv" net/ipv6/conf/br0/disable_ipv6 1
    ip -n "$hv" link set br0 up
    # The guard sets this too; set it on both pairs so that they differ only in the ruleset.
    sysctl_ns "$hv" net/bridge/bridge-nf-call-ip6tables 1
    for k in 0 1; do
        inst=$2
        ((k == 1)) && inst=$3
        [[ -s $WORK/port$k.json ]] || gen port "$k" "$WORK/port$k.json"
        mac=$(jq -r .mac "$WORK/port$k.json")
        addr=$(jq -r .addr "$WORK/port$k.json")
        ip -n "$hv" link add "vp$k" type veth peer name eth0 netns "$inst"
        sysctl_ns "$hv" "net/ipv6/conf/vp$k/disable_ipv6" 1
        ip -n "$hv" link set "vp$k" master br0 up
        ip -n "$inst" link set eth0 address "$mac"
        sysctl_ns "$inst" net/ipv6/conf/eth0/accept_dad 0
        ip -n "$inst" link set eth0 up
        ip -n "$inst" addr add "$addr/48" dev eth0 nodad
    done
}

say "namespaces $HV (bridge br0), $NSA (behind vp0), $NSB (behind vp1)"
make_pair "$HV" "$NSA" "$NSB"
if ((iperf)); then
    say "control namespaces $CTL, $CTA, $CTB (the same, never given a ruleset)"
    make_pair "$CTL" "$CTA" "$CTB"
fi
ADDR_B=$(jq -r .addr "$WORK/port1.json")

# Whether a TCP connection from NS to ADDR:PORT completes within 2 s (a dropped SYN times out).
tcp_ok() { # NS ADDR PORT
    ip netns exec "$1" python3 -c 'import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError:
    sys.exit(1)' "$2" "$3"
}
# Start iperf3 -s on ADDR_B:PORT in NS and wait until it listens; the pid is in $last_pid.
iperf_server() { # NS PORT LOG
    local k
    spawn "$3" ip netns exec "$1" iperf3 -s -B "$ADDR_B" -p "$2"
    for ((k = 0; k < 100; k++)); do
        [[ -n $(ip netns exec "$1" ss -Hltn "sport = :$2") ]] && return 0
        sleep 0.1
    done
    fail_with_log "iperf3 -s on port $2 in $1 did not start listening" "$3"
}

# ---------------------------------------------------------------------------------------------
# flat6 guard

mkdir -p "$WORK/state"
cat >"$WORK/guard.toml" <<EOF
role = "guard"
table = "$TABLE"
anti_spoofing = "address"
# Like the security groups of Neutron and CloudStack: egress that no rule allows is dropped.
egress = "deny"
state_dir = "$WORK/state"
[source]
file = "$WORK/ports.json"
EOF

# The document flat6 follows is replaced atomically, as the controller's agent would.
use_doc() { # FILE
    cp "$1" "$WORK/ports.tmp"
    mv "$WORK/ports.tmp" "$WORK/ports.json"
}
doc_for() { # N: path of the document with ports 0..N-1 (generated once)
    local f="$WORK/ports-$1.json"
    [[ -s $f ]] || gen doc "$1" "$f"
    echo "$f"
}

runs=0
soft=0 # 1: a failed apply returns 1 instead of ending the run
# `flat6 guard apply`, timed. Sets $wall_ms (the whole command) and $nft_ms and $kind (from the
# "applied ruleset" log line: elapsed_ms is the nft transaction alone).
guard_apply() { # LABEL
    local log="$WORK/apply-$((++runs))-$1.log" t0 rc=0
    kind=
    nft_ms=
    t0=$(now)
    RUST_LOG=info timeout --kill-after=10 "$cmd_timeout" \
        nsenter --net="/run/netns/$HV" "$FLAT6" --log-format json guard apply --config "$WORK/guard.toml" \
        2>"$log" || rc=$?
    wall_ms=$(ms_since "$t0")
    if ((rc != 0)); then
        if ((soft)); then
            echo "$prog: flat6 guard apply ($1) failed with exit $rc after ${wall_ms} ms; last lines of $log:" >&2
            tail -n 5 "$log" | cut -c1-2000 | sed 's/^/    /' >&2
            return 1
        fi
        fail_with_log "flat6 guard apply ($1) failed with exit $rc after ${wall_ms} ms" "$log"
    fi
    read -r kind nft_ms parse_ms plan_ms < <(jq -r 'select(.message == "applied ruleset") | "\(.kind) \(if .elapsed_us then (.elapsed_us / 100 | round) / 10 else .elapsed_ms end) \((.parse_us // 0) / 1000) \((.plan_us // 0) / 1000)"' "$log" | tail -n 1) || true
    [[ -n ${nft_ms-} ]] || fail_with_log "flat6 guard apply ($1) logged no \"applied ruleset\" line" "$log"
    # Time from the start to "kernel rules match ...; converging by diff": reading the marker
    # (two nft list set), parsing and rendering the persisted document. A running daemon does this
    # once at start, not per change. parse_ms + plan_ms: what a running daemon does per change
    # besides the nft transaction (decode and validate the new document, render it, diff).
    local ts
    ts=$(jq -r 'select(.message | startswith("kernel rules match")) | .timestamp' "$log" | tail -n 1)
    recover_ms=-
    [[ -z $ts ]] || recover_ms=$(awk -v a="$t0" -v b="$(date -d "$ts" +%s.%N)" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
}
# Back to a namespace without the guard's tables. `flat6 guard teardown` is not used here: it
# runs `nft list tables` first, which gets slow with a large ruleset (see docs/benchmarks.md).
guard_reset() {
    local fam
    for fam in bridge inet; do
        timeout --kill-after=10 "$cmd_timeout" nsenter --net="/run/netns/$HV" nft delete table "$fam" "$TABLE" 2>/dev/null || true
    done
    rm -f "$WORK/state/applied.json"
    [[ -z $(in_ns "$HV" nft list tables) ]] || die "tables left in $HV after the reset"
}

# One-port add and remove, REPS times, with `flat6 guard apply`. Records <label>_{add,del}_{wall,nft}.
one_port() { # N REPS LABEL
    local n=$1 reps=$2 label=$3 k base more
    local aw=() an=() dw=() dn=() ar=() dr=() ap=() dp=()
    base=$(doc_for "$n")
    more=$(doc_for $((n + 1)))
    for ((k = 1; k <= reps; k++)); do
        use_doc "$more"
        guard_apply "$label-add"
        [[ $kind == incremental ]] || die "adding one port at $n was a $kind apply, not incremental (see $WORK)"
        aw+=("$wall_ms")
        an+=("$nft_ms")
        ar+=("$recover_ms")
        ap+=("$(awk -v a="$parse_ms" -v b="$plan_ms" 'BEGIN { printf "%.1f", a + b }')")
        use_doc "$base"
        guard_apply "$label-remove"
        [[ $kind == incremental ]] || die "removing one port at $n was a $kind apply, not incremental"
        dw+=("$wall_ms")
        dn+=("$nft_ms")
        dr+=("$recover_ms")
        dp+=("$(awk -v a="$parse_ms" -v b="$plan_ms" 'BEGIN { printf "%.1f", a + b }')")
        note "rep $k: add ${aw[-1]} ms wall / ${an[-1]} ms nft / ${ap[-1]} ms parse+plan (${ar[-1]} ms start-up and recovery); remove ${dw[-1]} / ${dn[-1]} / ${dp[-1]} ms (${dr[-1]} ms)"
    done
    record "${label}_add_wall" "$(median "${aw[@]}")"
    record "${label}_add_nft" "$(median "${an[@]}")"
    record "${label}_del_wall" "$(median "${dw[@]}")"
    record "${label}_del_nft" "$(median "${dn[@]}")"
    record "${label}_add_recover" "$(median "${ar[@]}")"
    record "${label}_add_plan" "$(median "${ap[@]}")"
    record "${label}_del_plan" "$(median "${dp[@]}")"
    record "${label}_del_recover" "$(median "${dr[@]}")"
    record "${label}_add_wall_range" "$(minmax "${aw[@]}")"
    record "${label}_del_wall_range" "$(minmax "${dw[@]}")"
    record "${label}_reps" "$reps"
}

# Lines of a daemon log with "applied ruleset" or "already applied".
applied_lines() { grep -c -E '"(applied ruleset|already applied[^"]*)"' "$1" || true; }

# Wait (bounded by --timeout) until the daemon logging to LOG has more than COUNT such lines.
wait_applied() { # LOG COUNT PID
    local deadline=$((SECONDS + cmd_timeout))
    while (($(applied_lines "$1") <= $2)); do
        kill -0 "$3" 2>/dev/null || fail_with_log "flat6 guard (the daemon) exited" "$1"
        ((SECONDS < deadline)) || fail_with_log "flat6 guard did not apply a new document within $cmd_timeout s" "$1"
        sleep 0.005
    done
}

# One-port add and remove, REPS times, through a running daemon: `flat6 guard` follows the
# document and is sent SIGHUP after each replacement, so that it reads it at once. What a change
# costs it is in its "applied ruleset" line: parse_us (decode and validate the document), plan_us
# (plan the batch from the applied state) and elapsed_us (the nft transaction). Records
# <label>_dmn_{add,del}_{nft,parse,plan,total} and <label>_dmn_plans (how the batches were planned).
one_port_daemon() { # N REPS LABEL
    local n=$1 reps=$2 label=$3 k f m base more log pid c line way nft parse plan how total
    local -A vals=() last=()
    local plans=()
    base=$(doc_for "$n")
    more=$(doc_for $((n + 1)))
    use_doc "$base"
    log="$WORK/daemon-$label.log"
    spawn "$log" env RUST_LOG=info nsenter --net="/run/netns/$HV" "$FLAT6" --log-format json guard --config "$WORK/guard.toml"
    pid=$last_pid
    # It starts from the tables in force (the marker matches the persisted document): no change.
    wait_applied "$log" 0 "$pid"
    for ((k = 1; k <= reps; k++)); do
        for f in add del; do
            c=$(applied_lines "$log")
            if [[ $f == add ]]; then use_doc "$more"; else use_doc "$base"; fi
            kill -HUP "$pid"
            wait_applied "$log" "$c" "$pid"
            line=$(grep -E '"(applied ruleset|already applied[^"]*)"' "$log" | tail -n 1)
            read -r way nft parse plan how < <(jq -r '"\(.kind // "none") \((.elapsed_us // 0) / 1000) \((.parse_us // 0) / 1000) \((.plan_us // 0) / 1000) \(.plan // "-")"' <<<"$line")
            [[ $way == incremental ]] || fail_with_log "the daemon's one-port change ($f at $n ports) was '$way', not incremental" "$log"
            total=$(awk -v a="$nft" -v b="$parse" -v c="$plan" 'BEGIN { printf "%.3f", a + b + c }')
            vals[${f}_nft]+=" $nft"
            vals[${f}_parse]+=" $parse"
            vals[${f}_plan]+=" $plan"
            vals[${f}_total]+=" $total"
            last[$f]="$total ms (nft $nft)"
            plans+=("$how")
        done
        note "rep $k: add ${last[add]}, remove ${last[del]}"
    done
    stop "$pid"
    for f in add del; do
        for m in nft parse plan total; do
            # shellcheck disable=SC2086 # the value list is split into arguments on purpose
            record "${label}_dmn_${f}_${m}" "$(median ${vals[${f}_$m]})"
        done
    done
    record "${label}_dmn_plans" "$(printf '%s\n' "${plans[@]}" | sort | uniq -c | awk '{ printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1 }')"
    note "daemon at $n ports (medians, ms): add ${R[${label}_dmn_add_total]} = nft ${R[${label}_dmn_add_nft]} + parse ${R[${label}_dmn_add_parse]} + plan ${R[${label}_dmn_add_plan]}; remove ${R[${label}_dmn_del_total]} = ${R[${label}_dmn_del_nft]} + ${R[${label}_dmn_del_parse]} + ${R[${label}_dmn_del_plan]}; planned: ${R[${label}_dmn_plans]}"
}

# Full apply of N ports on a namespace without the guard's tables. Records full_<N>_{wall,nft}.
full_apply() { # N
    guard_reset
    use_doc "$(doc_for "$1")"
    guard_apply "full-$1" || return 1
    [[ $kind == full ]] || die "the apply of $1 ports on an empty namespace was $kind, not full"
    record "full_$1_wall" "$wall_ms"
    record "full_$1_nft" "$nft_ms"
    note "$1 ports: ${wall_ms} ms wall, ${nft_ms} ms nft transaction"
}

# ---------------------------------------------------------------------------------------------
# iperf3

# iperf_runs runs over the guarded pair (A -> B) and as many over the control pair (CA -> CB),
# alternately. Records iperf_<label> and iperf_<control label> (median Gbit/s) and their ranges.
iperf_round() { # LABEL CONTROL_LABEL
    local label=$1 ctl_label=$2 k servers=() pair client server out bps lab
    local -A vals=()
    for pair in "$NSB" "$CTB"; do
        iperf_server "$pair" 5201 "$WORK/iperf3-server-$label-$pair.log"
        servers+=("$last_pid")
    done
    for pair in "$NSA" "$CTA"; do
        for ((k = 0; k < 10; k++)); do
            tcp_ok "$pair" "$ADDR_B" 5201 && break
        done
        tcp_ok "$pair" "$ADDR_B" 5201 || die "$pair cannot reach $ADDR_B port 5201 over its bridge ($label)"
    done
    for ((k = 1; k <= iperf_runs; k++)); do
        for pair in "$NSA:$label" "$CTA:$ctl_label"; do
            client=${pair%%:*}
            lab=${pair#*:}
            out="$WORK/iperf3-$lab-$k.json"
            timeout --kill-after=5 $((iperf_seconds + 30)) \
                ip netns exec "$client" iperf3 -J -c "$ADDR_B" -t "$iperf_seconds" >"$out" 2>&1 ||
                fail_with_log "iperf3 ($lab, run $k) failed" "$out"
            bps=$(jq -r '.end.sum_received.bits_per_second' "$out")
            vals[$lab]+=" $(awk -v b="$bps" 'BEGIN { printf "%.2f", b / 1e9 }')"
        done
        note "run $k: $label ${vals[$label]##* } Gbit/s, $ctl_label ${vals[$ctl_label]##* } Gbit/s"
    done
    for server in "${servers[@]}"; do
        stop "$server"
    done
    for lab in "$label" "$ctl_label"; do
        # shellcheck disable=SC2086 # the values are numbers separated by spaces
        record "iperf_$lab" "$(median ${vals[$lab]})"
        # shellcheck disable=SC2086
        record "iperf_${lab}_range" "$(minmax ${vals[$lab]})"
    done
}

# ---------------------------------------------------------------------------------------------
# ip6tables-restore baseline

# Load N ports, then REPS times restore N+1 and N again (each the whole table, as the agents do).
ipt_variant() { # NS RESTORE_CMD LABEL N
    local ns=$1 restore=$2 label=$3 n=$4 k t0 rc=0 add=() del=() log
    log="$WORK/$label-$n.log"
    [[ -s $WORK/ipt-$n.rules ]] || gen ipt "$n" "$WORK/ipt-$n.rules"
    [[ -s $WORK/ipt-$((n + 1)).rules ]] || gen ipt $((n + 1)) "$WORK/ipt-$((n + 1)).rules"
    t0=$(now)
    timeout --kill-after=10 "$cmd_timeout" nsenter --net="/run/netns/$ns" "$restore" <"$WORK/ipt-$n.rules" >"$log" 2>&1 || rc=$?
    ((rc == 0)) || fail_with_log "$restore of $n ports failed with exit $rc" "$log"
    record "${label}_${n}_load" "$(ms_since "$t0")"
    for ((k = 1; k <= reps; k++)); do
        t0=$(now)
        timeout --kill-after=10 "$cmd_timeout" nsenter --net="/run/netns/$ns" "$restore" <"$WORK/ipt-$((n + 1)).rules" >>"$log" 2>&1 || rc=$?
        add+=("$(ms_since "$t0")")
        t0=$(now)
        timeout --kill-after=10 "$cmd_timeout" nsenter --net="/run/netns/$ns" "$restore" <"$WORK/ipt-$n.rules" >>"$log" 2>&1 || rc=$?
        del+=("$(ms_since "$t0")")
        ((rc == 0)) || fail_with_log "$restore at $n ports failed with exit $rc" "$log"
        note "$label $n ports, rep $k: restore with one more port ${add[-1]} ms, back ${del[-1]} ms"
    done
    record "${label}_${n}_add" "$(median "${add[@]}")"
    record "${label}_${n}_del" "$(median "${del[@]}")"
}

ipt_baseline() {
    local variants=() n
    variants+=("$IPN ip6tables-nft-restore ipt_nft")
    command -v ip6tables-legacy-restore >/dev/null && variants+=("$IPL ip6tables-legacy-restore ipt_legacy")
    command -v ip6tables-nft-restore >/dev/null || die "ip6tables-nft-restore is not installed (apt-get install iptables)"
    make_ns "$IPN"
    make_ns "$IPL"
    for n in "$small" "$ports"; do
        [[ -s $WORK/ipset-$((n + 1)).txt ]] || gen ipset $((n + 1)) "$WORK/ipset-$((n + 1)).txt"
    done
    for v in "${variants[@]}"; do
        read -r ns restore label <<<"$v"
        # The remote-group ipsets must exist before a rule can refer to them (they hold N+1
        # members throughout: Neutron changes ipset members separately, with ipset, not restore).
        for n in "$small" "$ports"; do
            ip netns exec "$ns" ipset destroy 2>/dev/null || true
            ip netns exec "$ns" ipset restore <"$WORK/ipset-$((n + 1)).txt"
            ipt_variant "$ns" "$restore" "$label" "$n"
            in_ns "$ns" "${restore%-restore}" -F
            in_ns "$ns" "${restore%-restore}" -X
        done
    done
    record ipt_rules_large "$(grep -c '^-A' "$WORK/ipt-$ports.rules")"
    record ipt_chains_large "$(grep -c '^:' "$WORK/ipt-$ports.rules")"
}

# ---------------------------------------------------------------------------------------------
# Run

: >"$WORK/results.txt"
record cpus "$(nproc)"
record kernel "$(uname -r)"
record nft_version "$(nft --version | awk '{print $2}')"
record flat6_version "$("$FLAT6" --version | awk '{print $2}') (sha256 $(sha256sum "$FLAT6" | cut -c1-12))"
record load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
record ports "$ports"
record small "$small"
say "machine: $(nproc) cores, kernel $(uname -r), nft ${R[nft_version]}, load average ${R[load_start]}"
note "(other work on this machine shares the cores; the load average is printed at the start and end)"

say "generating documents ($small, $((small + 1)), $ports, $((ports + 1)) ports)"
for n in "$small" $((small + 1)) "$ports" $((ports + 1)); do doc_for "$n" >/dev/null; done
record rules_per_port "$(jq '[.security_groups[] | select(.name == "default" or .name == "web") | .rules | length] | add' "$(doc_for "$small")")"

if ((iperf)); then
    say "iperf3 TCP ${iperf_seconds} s x $iperf_runs, no ruleset: $NSA -> $NSB, alternating with $CTA -> $CTB"
    iperf_round none control_before
fi

say "full apply of $small ports on an empty namespace, x3"
vals_w=()
vals_n=()
for k in 1 2 3; do
    full_apply "$small"
    vals_w+=("$wall_ms")
    vals_n+=("$nft_ms")
done
record "full_${small}_wall" "$(median "${vals_w[@]}")"
record "full_${small}_nft" "$(median "${vals_n[@]}")"

say "one port added and removed at $small ports, x$reps (flat6 guard apply)"
one_port "$small" "$reps" small
say "one port added and removed at $small ports, x$reps (a running flat6 guard)"
one_port_daemon "$small" "$reps" small

for n in $scaling; do
    ((n == small || n == ports)) && continue
    say "full apply of $n ports on an empty namespace"
    full_apply "$n"
    t0=$(now)
    timeout --kill-after=10 "$cmd_timeout" nsenter --net="/run/netns/$HV" nft -j list tables >/dev/null
    record "list_tables_$n" "$(ms_since "$t0")"
    note "nft -j list tables (what flat6 guard apply runs first to find the marker) at $n ports: ${R[list_tables_$n]} ms"
done

say "full apply of $ports ports on an empty namespace (timeout ${cmd_timeout} s)"
# Without this ruleset the rest of the flat6 part cannot run; the ip6tables part still can.
large_ok=1
soft=1
full_apply "$ports" || large_ok=0
soft=0
if ((!large_ok)); then
    record "full_${ports}_wall" ">$wall_ms (failed, see $WORK)"
    record "full_${ports}_nft" "-"
    echo "$prog: the full apply of $ports ports failed after $wall_ms ms; skipping what needs it" >&2
fi

if ((iperf && large_ok)); then
    say "iperf3 $NSA -> $NSB with the $ports-port ruleset (vp0, vp1 among them), alternating with $CTA -> $CTB"
    # vp1's address jumps to its groups' ingress chain, which must open tcp 5201.
    # vp1's address maps to the mark of its groups, the mark to their ingress chain.
    vp1_mark=$(in_ns "$HV" nft list map inet "$TABLE" port_groups | grep -o "2001:db8:1:1::1 : 0x[0-9a-f]*" | awk '{print $3}') || true
    [[ -n $vp1_mark ]] || die "vp1's address is not in the port_groups map"
    vp1_chain=$(in_ns "$HV" nft list map inet "$TABLE" ingress | grep -o "$vp1_mark : jump [a-z0-9_]*" | awk '{print $4}') || true
    [[ -n $vp1_chain ]] || die "the mark of vp1's groups ($vp1_mark) is not in the ingress map"
    [[ $(in_ns "$HV" nft list chain inet "$TABLE" "$vp1_chain") == *"dport 5201 accept"* ]] || die "the ruleset does not allow tcp 5201 to vp1"
    iperf_round ruleset control_during
    # Prove the ruleset is in the path: a listening port that the groups do not open is closed.
    iperf_server "$NSB" 5999 "$WORK/iperf3-server-5999.log"
    closed=$last_pid
    if tcp_ok "$NSA" "$ADDR_B" 5999; then
        record iperf_enforced no
    else
        record iperf_enforced yes
    fi
    stop "$closed"
    note "tcp 5999 (listening, not allowed by the groups) blocked while the ruleset was loaded: ${R[iperf_enforced]}"
fi

if ((large_ok)); then
    say "one port added and removed at $ports ports, x$large_reps (flat6 guard apply)"
    one_port "$ports" "$large_reps" large
    say "one port added and removed at $ports ports, x$reps (a running flat6 guard)"
    one_port_daemon "$ports" "$reps" large
fi

if ((iptables)); then
    say "ip6tables-restore of the whole equivalent ruleset with one port more and back, x$reps"
    ipt_baseline
fi
record load_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# Summary

num='^[0-9]+([.][0-9]+)?$'
ratio() { awk -v a="$1" -v b="$2" -v re="$num" 'BEGIN { if (a !~ re || b !~ re || b + 0 == 0) print "-"; else printf "%.3f", a / b }'; }
verdict() { awk -v v="$1" -v op="$2" -v t="$3" -v re="$num" 'BEGIN { if (v !~ re) print "n/a"; else if ((op == "<=" && v + 0 <= t + 0) || (op == ">=" && v + 0 >= t + 0)) print "met"; else print "MISSED" }'; }

S=$small
L=$ports
full_w=${R[full_${L}_wall]:--}
full_n=${R[full_${L}_nft]:--}
# The mean of the add and the remove median of one measurement, R[<prefix>_add_<what>] and
# R[<prefix>_del_<what>], with DIGITS decimals ("-" when either is missing). The running daemon's
# figures keep three: at 100 ports its nft transaction is well under a millisecond.
add_del_mean() { # PREFIX WHAT DIGITS
    awk -v a="${R[${1}_add_${2}]:--}" -v b="${R[${1}_del_${2}]:--}" -v fmt="%.${3}f" -v re="$num" \
        'BEGIN { if (a !~ re || b !~ re) print "-"; else printf fmt "\n", (a + b) / 2 }'
}
one_w=$(add_del_mean large wall 1)
one_n=$(add_del_mean large nft 1)
one_ws=$(add_del_mean small wall 1)
one_ns=$(add_del_mean small nft 1)
# What a running daemon spends per change (parse + plan of the new document, then nft), and nft
# alone.
one_d=$(add_del_mean large_dmn total 3)
one_ds=$(add_del_mean small_dmn total 3)
one_dn=$(add_del_mean large_dmn nft 3)
one_dns=$(add_del_mean small_dmn nft 3)
growth_d=$(ratio "$one_d" "$one_ds")
growth_dn=$(ratio "$one_dn" "$one_dns")
growth_w=$(ratio "$one_w" "$one_ws")
growth_n=$(ratio "$one_n" "$one_ns")
ipt_nft=${R[ipt_nft_${L}_add]:--}
ipt_leg=${R[ipt_legacy_${L}_add]:--}
vs_nft_w=$(ratio "$ipt_nft" "$one_w")
vs_leg_w=$(ratio "$ipt_leg" "$one_w")
vs_nft_n=$(ratio "$ipt_nft" "$one_n")
vs_leg_n=$(ratio "$ipt_leg" "$one_n")
tput=$(ratio "${R[iperf_ruleset]:--}" "${R[iperf_none]:--}")
tput_ctl=$(ratio "${R[iperf_ruleset]:--}" "${R[iperf_control_during]:--}")
pair_eq=$(ratio "${R[iperf_none]:--}" "${R[iperf_control_before]:--}")

{
    echo
    echo "flat6 guard benchmark: ${R[cpus]:--} cores, kernel ${R[kernel]:--}, nft ${R[nft_version]:--}, flat6 ${R[flat6_version]:--}"
    echo "load average at start ${R[load_start]:--}, at end ${R[load_end]:--}; every port has ${R[rules_per_port]:--} rules"
    echo "wall = the whole 'flat6 guard apply'; nft = elapsed_ms of its 'applied ruleset' log line (the nft transaction)"
    echo
    printf '%-58s %14s %14s\n' "measurement" "wall ms" "nft ms"
    printf '%-58s %14s %14s\n' "full apply, $S ports (median of 3)" "${R[full_${S}_wall]:--}" "${R[full_${S}_nft]:--}"
    for n in $scaling; do
        ((n == S || n == L)) && continue
        printf '%-58s %14s %14s\n' "full apply, $n ports" "${R[full_${n}_wall]:--}" "${R[full_${n}_nft]:--}"
    done
    printf '%-58s %14s %14s\n' "full apply, $L ports" "$full_w" "$full_n"
    printf '%-58s %14s %14s\n' "add one port at $S (median of ${R[small_reps]:--})" "${R[small_add_wall]:--}" "${R[small_add_nft]:--}"
    printf '%-58s %14s %14s\n' "remove one port at $S (median of ${R[small_reps]:--})" "${R[small_del_wall]:--}" "${R[small_del_nft]:--}"
    printf '%-58s %14s %14s\n' "add one port at $L (median of ${R[large_reps]:--})" "${R[large_add_wall]:--}" "${R[large_add_nft]:--}"
    printf '%-58s %14s %14s\n' "remove one port at $L (median of ${R[large_reps]:--})" "${R[large_del_wall]:--}" "${R[large_del_nft]:--}"
    printf '%-58s %14s %14s\n' "  of which start-up + recovery, add/remove at $S" "${R[small_add_recover]:--}/${R[small_del_recover]:--}" ""
    printf '%-58s %14s %14s\n' "  of which start-up + recovery, add/remove at $L" "${R[large_add_recover]:--}/${R[large_del_recover]:--}" ""
    printf '%-58s %14s %14s\n' "  of which parse + plan of the new document, add/remove at $S" "${R[small_add_plan]:--}/${R[small_del_plan]:--}" ""
    printf '%-58s %14s %14s\n' "  of which parse + plan of the new document, add/remove at $L" "${R[large_add_plan]:--}/${R[large_del_plan]:--}" ""
    echo
    echo "a running daemon (flat6 guard, sent SIGHUP after each replacement), medians in ms:"
    printf '%-58s %10s %8s %8s %8s\n' "one-port change" "total" "nft" "parse" "plan"
    for l in small large; do
        n=$S
        [[ $l == large ]] && n=$L
        for f in add del; do
            [[ -n ${R[${l}_dmn_${f}_total]-} ]] || continue
            what="add one port at $n"
            [[ $f == del ]] && what="remove one port at $n"
            printf '%-58s %10s %8s %8s %8s\n' "$what (median of $reps)" "${R[${l}_dmn_${f}_total]}" "${R[${l}_dmn_${f}_nft]}" "${R[${l}_dmn_${f}_parse]}" "${R[${l}_dmn_${f}_plan]}"
        done
        [[ -n ${R[${l}_dmn_plans]-} ]] && echo "  batches at $n ports planned by: ${R[${l}_dmn_plans]}"
    done
    echo
    for n in $scaling; do
        [[ -n ${R[list_tables_$n]-} ]] && printf '%-58s %14s %14s\n' "nft -j list tables at $n ports (part of every apply)" "${R[list_tables_$n]:--}" ""
    done
    if ((iptables)); then
        for v in ipt_nft ipt_legacy; do
            name="ip6tables-nft-restore"
            [[ $v == ipt_legacy ]] && name="ip6tables-legacy-restore"
            for n in "$S" "$L"; do
                [[ -n ${R[${v}_${n}_add]-} ]] || continue
                printf '%-58s %14s %14s\n' "$name, first load of $n ports" "${R[${v}_${n}_load]:--}" ""
                printf '%-58s %14s %14s\n' "$name, $n ports + 1 (median of $reps)" "${R[${v}_${n}_add]:--}" ""
                printf '%-58s %14s %14s\n' "$name, back to $n ports (median of $reps)" "${R[${v}_${n}_del]:--}" ""
            done
        done
        echo "(the ip6tables ruleset at $L ports: ${R[ipt_rules_large]:--} rules in ${R[ipt_chains_large]:--} chains, plus 2 ipsets)"
    fi
    if ((iperf)); then
        printf '%-58s %14s\n' "iperf3 TCP Gbit/s (median, range), no ruleset" "${R[iperf_none]:--} (${R[iperf_none_range]:--})"
        printf '%-58s %14s\n' "  control pair at the same time" "${R[iperf_control_before]:--} (${R[iperf_control_before_range]:--})"
        printf '%-58s %14s\n' "iperf3 TCP Gbit/s (median, range), $L-port ruleset" "${R[iperf_ruleset]:--} (${R[iperf_ruleset_range]:--})"
        printf '%-58s %14s\n' "  control pair at the same time" "${R[iperf_control_during]:--} (${R[iperf_control_during_range]:--})"
    fi
    echo
    printf '%-58s %16s %10s\n' "target" "measured" "verdict"
    printf '%-58s %16s %10s\n' "full apply of $L ports <= 2000 ms (wall)" "$full_w" "$(verdict "$full_w" "<=" 2000)"
    printf '%-58s %16s %10s\n' "full apply of $L ports <= 2000 ms (nft)" "$full_n" "$(verdict "$full_n" "<=" 2000)"
    printf '%-58s %16s %10s\n' "one-port change at $L <= 20 ms (wall)" "$one_w" "$(verdict "$one_w" "<=" 20)"
    printf '%-58s %16s %10s\n' "one-port change at $L <= 20 ms (nft)" "$one_n" "$(verdict "$one_n" "<=" 20)"
    printf '%-58s %16s %10s\n' "one-port change $L/$S <= 1.5 (wall)" "$growth_w" "$(verdict "$growth_w" "<=" 1.5)"
    printf '%-58s %16s %10s\n' "one-port change $L/$S <= 1.5 (nft)" "$growth_n" "$(verdict "$growth_n" "<=" 1.5)"
    printf '%-58s %16s %10s\n' "one-port change at $L <= 20 ms (daemon: parse+plan+nft)" "$one_d" "$(verdict "$one_d" "<=" 20)"
    printf '%-58s %16s %10s\n' "one-port change at $L <= 20 ms (daemon: nft)" "$one_dn" "$(verdict "$one_dn" "<=" 20)"
    printf '%-58s %16s %10s\n' "one-port change $L/$S <= 1.5 (daemon: nft)" "$growth_dn" "$(verdict "$growth_dn" "<=" 1.5)"
    printf '%-58s %16s %10s\n' "one-port change $L/$S <= 1.5 (daemon: parse+plan+nft)" "$growth_d" "$(verdict "$growth_d" "<=" 1.5)"
    if ((iptables)); then
        printf '%-58s %16s %10s\n' ">= 20x faster than ip6tables-nft-restore (wall)" "$vs_nft_w" "$(verdict "$vs_nft_w" ">=" 20)"
        printf '%-58s %16s %10s\n' ">= 20x faster than ip6tables-nft-restore (nft)" "$vs_nft_n" "$(verdict "$vs_nft_n" ">=" 20)"
        printf '%-58s %16s %10s\n' ">= 20x faster than ip6tables-legacy-restore (wall)" "$vs_leg_w" "$(verdict "$vs_leg_w" ">=" 20)"
        printf '%-58s %16s %10s\n' ">= 20x faster than ip6tables-legacy-restore (nft)" "$vs_leg_n" "$(verdict "$vs_leg_n" ">=" 20)"
    fi
    if ((iperf)); then
        printf '%-58s %16s %10s\n' "throughput with ruleset >= 0.90 of none (same pair, before)" "$tput" "$(verdict "$tput" ">=" 0.90)"
        printf '%-58s %16s %10s\n' "throughput with ruleset >= 0.90 of control (same time)" "$tput_ctl" "$(verdict "$tput_ctl" ">=" 0.90)"
        printf '%-58s %16s %10s\n' "  (pair vs control without ruleset, should be ~1)" "$pair_eq" ""
    fi
} | tee "$WORK/summary.txt"
