#!/usr/bin/env bash
# flat6 end-to-end demo: a whole pod in network namespaces, built, measured and torn down.
#
#   sudo netns-scripts/demo.sh                 build, measure, print the table, tear down
#   sudo netns-scripts/demo.sh --keep          ... and leave it running to explore
#   sudo netns-scripts/demo.sh --down ID       tear down a demo left running by --keep
#   sudo netns-scripts/demo.sh --break web     make the `web` group allow TCP 8080 instead of 80
#                                              after the setup: the TCP 80 cells must fail
#
# What it builds (every namespace is named <ID>-<role>, ID = f6demo<pid>):
#
#   <ID>-up ── 2001:db8:ffff::/64 ── <ID>-gw ──┐
#                                   <ID>-vr ──┤ br0 in <ID>-hv (flat6 guard on the instance ports)
#                     <ID>-i1, <ID>-i2, <ID>-i3 ─┘
#   <ID>-mgmt ── management links to <ID>-vr and <ID>-hv only
#
#   up    the upstream host, 2001:db8:ffff::2, routes the pod /48 back via the gateway
#   gw    the pod's real gateway: forwarding, 2001:db8:1::1/48 on eth0 and `flat6 vr` there in
#         gateway role (router lifetime 1800, the /48 on-link with A=0, DHCPv6 off)
#   vr    the VR: `flat6 vr` on vr0 (router lifetime 0, M+O, the /48 with A=0, DHCPv6 from the
#         reservations it follows on the controller), 2001:db8:1::2/48
#   hv    the hypervisor: bridge br0 joining all of them, `flat6 guard` following the ports of
#         host hv1 on the controller
#   i1-3  instances: i1 and i2 run ISC `dhclient -6`, i3 runs `dhcpcd`; each listens on TCP 80 and 22
#   mgmt  `flat6 controller` on SQLite, reached by the VR and the guard over 2001:db8:fe:1::/64 and
#         2001:db8:fe:2::/64; the instances have no route to it. The pod, the `web` group (TCP 80)
#         and the instances are created with the CLI (`flat6 pod|sg|instance`).
#
# Then, per instance, every cell of the table is measured: the MAC on its link, its /64 from the
# controller, the address it got by DHCPv6 (on the link and in the client's own record), the default
# route (via the gateway's link-local, not the VR's), ping6 to the upstream host, TCP 80 from
# upstream (allowed by `web`), TCP 22 from upstream (not allowed: must not connect) and the absence
# of any other global address (no SLAAC).
#
# House rules (see README.md): every packet stays inside the namespaces made here; each namespace has
# its own /etc/netns/<ns>/resolv.conf before anything runs in it, and the DHCP clients' hooks only
# record what they were told; only 2001:db8::/32 addresses; only processes started here are
# stopped; readiness is polled with deadlines. Environment: FLAT6_BIN=/path/to/flat6 skips the build.
set -Eeuo pipefail

readonly PROG=demo.sh
readonly REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly PY=/usr/bin/python3

readonly POD=pod1
readonly HOST=hv1
readonly POD_PREFIX=2001:db8:1::/48
readonly GW_ADDR=2001:db8:1::1
readonly VR_ADDR=2001:db8:1::2
readonly UP_NET_GW=2001:db8:ffff::1
readonly UP_ADDR=2001:db8:ffff::2
readonly MGMT_VR_NET=2001:db8:fe:1
readonly MGMT_HV_NET=2001:db8:fe:2
readonly API_PORT=8640
readonly GW_MAC=02:f6:de:00:00:01
readonly VR_MAC=02:f6:de:00:00:02
readonly INSTANCES=3

# Deadlines (seconds) for each kind of readiness; the whole demo should take well under a minute.
readonly T_START=20
readonly T_FOLLOW=15
readonly T_BIND=30
readonly T_ROUTE=10
readonly T_PING=5
readonly T_TCP=3

# Debian packages this script uses, as "package:command".
readonly PACKAGES=(
    iproute2:ip nftables:nft isc-dhcp-client:dhclient dhcpcd-base:dhcpcd iputils-ping:ping
    python3-minimal:python3 procps:sysctl util-linux:unshare
)

ID=""
WORK=""
KEEP=0
BREAK=""
STARTED_MS=0

# ---------------------------------------------------------------------------------------------
# Small helpers

now_ms() {
    local t=${EPOCHREALTIME/./}
    echo $((t / 1000))
}

elapsed() {
    local ms=$(($(now_ms) - STARTED_MS))
    printf '%d.%01d' $((ms / 1000)) $((ms % 1000 / 100))
}

say() {
    if ((STARTED_MS)); then
        printf '[%5ss] %s\n' "$(elapsed)" "$*"
    else
        printf '%s\n' "$*"
    fi
}

die() {
    echo "$PROG: $*" >&2
    exit 1
}

usage() {
    cat <<EOF
usage: sudo $0 [--keep] [--break web]
       sudo $0 --down ID
  --keep       leave the demo running; prints how to enter its namespaces and how to stop it
  --break web  after the setup, make the web group allow TCP 8080 instead of 80 (the TCP 80 cells fail)
  --down ID    tear down a demo left running by --keep (ID is f6demo<number>)
Environment: FLAT6_BIN=/path/to/flat6 uses that binary instead of building target/release/flat6.
EOF
}

# A failed setup step: what failed, where its log is, and the end of that log.
fail_step() {
    local what=$1 log=${2:-}
    echo >&2
    echo "$PROG: FAILED: $what" >&2
    if [[ -n $log ]]; then
        echo "$PROG: its log: $log (last lines below)" >&2
        if [[ -f $log ]]; then tail -n 15 "$log" | sed 's/^/    /' >&2; fi
    fi
    echo "$PROG: every log is in $WORK" >&2
    exit 1
}

# The namespace of a role: ns mgmt -> f6demo123-mgmt.
ns() { echo "$ID-$1"; }

inx() {
    local n=$1
    shift
    ip netns exec "$(ns "$n")" "$@"
}

nsysctl() {
    inx "$1" sysctl -qw "$2=$3" >/dev/null
}

instance_mac() { printf '02:f6:de:00:01:%02x' "$1"; }

# A pid is gone once it does not exist or is a zombie (it exited; only the reaping is left).
pid_alive() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

# Wait until "$@" succeeds. wait_for WHAT SECONDS LOG PID CMD...: PID (or -) must keep running;
# on timeout or when PID exits, the step fails naming WHAT and LOG.
wait_for() {
    local what=$1 secs=$2 log=$3 pid=$4
    shift 4
    local deadline=$(($(now_ms) + secs * 1000))
    while true; do
        if "$@"; then return 0; fi
        if [[ $pid != - ]] && ! pid_alive "$pid"; then
            fail_step "$what: the process (pid $pid) exited" "$log"
        fi
        if (($(now_ms) >= deadline)); then
            "$@" && return 0
            fail_step "$what: not done after ${secs}s" "$log"
        fi
        sleep 0.05
    done
}

# ---------------------------------------------------------------------------------------------
# Preflight: root, packages, binary

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces need it): sudo $0 $*"
}

ensure_packages() {
    local missing=() entry pkg cmd
    for entry in "${PACKAGES[@]}"; do
        pkg=${entry%%:*}
        cmd=${entry#*:}
        if command -v dpkg-query >/dev/null 2>&1; then
            dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
                missing+=("$pkg")
        elif ! command -v "$cmd" >/dev/null 2>&1; then
            die "$cmd is missing (Debian package $pkg); install it and run again"
        fi
    done
    if ((${#missing[@]})); then
        echo "== installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    [[ -x $PY ]] || die "$PY is missing (Debian package python3-minimal)"
}

find_binary() {
    if [[ -n ${FLAT6_BIN:-} ]]; then
        [[ -x $FLAT6_BIN ]] || die "FLAT6_BIN=$FLAT6_BIN is not an executable"
        FLAT6=$FLAT6_BIN
        return
    fi
    # Under sudo, root's PATH may not have the invoking user's rustup toolchain.
    local dir
    for dir in "$HOME/.cargo/bin" /root/.cargo/bin ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin"}; do
        if ! command -v cargo >/dev/null 2>&1 && [[ -x $dir/cargo ]]; then
            export PATH="$dir:$PATH"
        fi
    done
    FLAT6=$REPO/target/release/flat6
    if command -v cargo >/dev/null 2>&1; then
        echo "== cargo build --release (does nothing when the binary is up to date)"
        (cd "$REPO" && cargo build --release --locked --bin flat6) ||
            die "cargo build --release failed"
    elif [[ -x $FLAT6 ]]; then
        echo "== cargo not found; using the existing $FLAT6"
    else
        die "cargo not found and no $FLAT6: install a Rust toolchain (rustup) or set FLAT6_BIN"
    fi
}

# ---------------------------------------------------------------------------------------------
# Namespaces, links and processes

# A namespace with its own resolv.conf (written before anything can run in it) and lo up; IPv6
# DAD off so addresses are usable at once (everything here is made by this script).
make_ns() {
    local n=$1 name
    name=$(ns "$n")
    echo "$name" >>"$WORK/namespaces"
    mkdir -p "/etc/netns/$name"
    printf '# flat6 demo namespace %s\n' "$name" >"/etc/netns/$name/resolv.conf"
    ip netns add "$name"
    ip -n "$name" link set lo up
    nsysctl "$n" net.ipv6.conf.all.accept_dad 0
    nsysctl "$n" net.ipv6.conf.default.accept_dad 0
}

# veth A_NS A_IF B_NS B_IF: a pair made inside A with its peer created directly in B.
veth() {
    ip -n "$(ns "$1")" link add "$2" type veth peer name "$4" netns "$(ns "$3")"
    ip -n "$(ns "$1")" link set dev "$2" up
    ip -n "$(ns "$3")" link set dev "$4" up
}

# attach NS IFNAME MAC PORT: NS joins the hypervisor's bridge through bridge port PORT.
attach() {
    local n=$1 ifname=$2 mac=$3 port=$4
    ip -n "$(ns hv)" link add "$port" type veth peer name "$ifname" netns "$(ns "$n")"
    # Bridge ports are layer 2 only.
    nsysctl hv "net.ipv6.conf.$port.disable_ipv6" 1
    ip -n "$(ns hv)" link set dev "$port" master br0 up
    ip -n "$(ns "$n")" link set dev "$ifname" address "$mac"
    ip -n "$(ns "$n")" link set dev "$ifname" up
}

# spawn NAME NS CMD...: run CMD in NS in the background, output to $WORK/NAME.log; sets SPAWNED.
# setsid keeps a Ctrl-C at the terminal for this script (whose trap tears down) and lets --keep
# leave the processes running; neither setsid nor `ip netns exec` forks, so $! is CMD's pid.
spawn() {
    local name=$1 n=$2
    shift 2
    setsid ip netns exec "$(ns "$n")" "$@" >"$WORK/$name.log" 2>&1 </dev/null &
    SPAWNED=$!
    disown "$SPAWNED"
    echo "$SPAWNED $(ns "$n") $name" >>"$WORK/pids"
}

log_has() { grep -q -- "$2" "$WORK/$1.log" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# Teardown (also used by --down): stop our processes, delete our namespaces and their /etc/netns.

# Which of our namespaces a pid is in (empty if none).
pid_netns() {
    ip netns identify "$1" 2>/dev/null || true
}

# Whether any process runs in one of the namespaces given.
namespaces_busy() {
    local nsname
    for nsname in "$@"; do
        [[ -z $(ip netns pids "$nsname" 2>/dev/null) ]] || return 0
    done
    return 1
}

# stop_recorded WORK PHASE: SIGTERM to the recorded processes of one phase ("instances": the
# instances' clients and listeners; "network": everything else), then up to 3 s for them and their
# children to exit. A pid is signalled only while it is still inside the namespace it was started
# in, so a recycled pid is never touched. Adds to the caller's `what` map.
stop_recorded() {
    local work=$1 phase=$2 pid nsname name alive t deadline
    local -a pids=() spaces=()
    [[ -f $work/pids ]] || return 0
    while read -r nsname; do
        if [[ $nsname =~ -i[0-9]+$ ]]; then
            [[ $phase == instances ]] && spaces+=("$nsname")
        else
            [[ $phase == network ]] && spaces+=("$nsname")
        fi
    done <"$work/namespaces"
    while read -r pid nsname name; do
        [[ -n $pid ]] || continue
        if [[ $nsname =~ -i[0-9]+$ ]]; then
            [[ $phase == instances ]] || continue
        else
            [[ $phase == network ]] || continue
        fi
        pid_alive "$pid" || continue
        [[ $(pid_netns "$pid") == "$nsname" ]] || continue
        what[$pid]="$name in $nsname"
        kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    done <"$work/pids"
    t=${EPOCHREALTIME/./}
    deadline=$((t + 3000000))
    while ((t < deadline)); do
        alive=0
        for pid in "${pids[@]}"; do
            if pid_alive "$pid"; then
                alive=1
                break
            fi
        done
        if ((!alive)) && ! namespaces_busy "${spaces[@]}"; then return 0; fi
        sleep 0.05
        t=${EPOCHREALTIME/./}
    done
}

teardown() {
    local work=$1 failed=0 pid nsname
    local -a namespaces=() killed=()
    local -A what=()
    [[ -f $work/namespaces ]] && mapfile -t namespaces <"$work/namespaces"
    # The instances first (their DHCP clients exit cleanly while the network is still there), then
    # the gateway, the agents and the controller.
    stop_recorded "$work" instances
    stop_recorded "$work" network
    # Whatever is still inside our namespaces now was started by us too: kill it.
    for nsname in "${namespaces[@]}"; do
        for pid in $(ip netns pids "$nsname" 2>/dev/null || true); do
            what[$pid]=${what[$pid]:-$(cat "/proc/$pid/comm" 2>/dev/null || echo '?') in $nsname}
            killed+=("${what[$pid]} (pid $pid)")
            kill -KILL "$pid" 2>/dev/null || true
        done
    done
    if ((${#killed[@]})); then
        echo "$PROG: still running 3 s after SIGTERM, so killed: $(printf '%s, ' "${killed[@]}" | sed 's/, $//')" >&2
    fi
    for nsname in "${namespaces[@]}"; do
        if [[ -e /run/netns/$nsname ]] && ! ip netns del "$nsname"; then
            echo "$PROG: could not delete namespace $nsname" >&2
            failed=1
        fi
        if [[ -d /etc/netns/$nsname ]] && ! rm -rf -- "/etc/netns/$nsname"; then
            echo "$PROG: could not remove /etc/netns/$nsname" >&2
            failed=1
        fi
    done
    return "$failed"
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM ERR
    [[ -n $WORK && -d $WORK ]] || exit "$rc"
    if ((KEEP)); then
        print_keep
        exit "$rc"
    fi
    local t0
    t0=$(now_ms)
    say "tearing down"
    if teardown "$WORK"; then
        say "torn down in $(( ($(now_ms) - t0) / 1000 )).$(( ($(now_ms) - t0) % 1000 / 100 ))s"
        if ((rc == 0)); then
            rm -rf -- "$WORK"
        else
            echo "$PROG: torn down; the logs stay in $WORK" >&2
        fi
    else
        echo "$PROG: teardown finished with errors; logs in $WORK" >&2
        ((rc)) || rc=1
    fi
    exit "$rc"
}

on_err() {
    local rc=$? line=$1 cmd=$2
    trap - ERR
    echo "$PROG: FAILED (exit $rc) at line $line: $cmd" >&2
    [[ -n $WORK ]] && echo "$PROG: every log is in $WORK" >&2
    exit "$rc"
}

print_keep() {
    local k
    echo
    echo "The demo $ID is still running (--keep). Logs, configs and state: $WORK"
    echo "Enter a namespace:"
    for k in mgmt hv gw vr up; do
        printf '  sudo ip netns exec %-16s bash\n' "$(ns "$k")"
    done
    for ((k = 1; k <= INSTANCES; k++)); do
        printf '  sudo ip netns exec %-16s bash     # instance i-%d\n' "$(ns "i$k")" "$k"
    done
    cat <<EOF
Ask the controller:     sudo ip netns exec $(ns mgmt) env FLAT6_TOKEN_FILE=$WORK/admin.token $FLAT6 instance show $POD i-1
See the guard's rules:  sudo ip netns exec $(ns hv) nft list ruleset
Stop it:                sudo $REPO/netns-scripts/demo.sh --down $ID
EOF
}

do_down() {
    local id=$1 work found=0
    [[ $id =~ ^f6demo[0-9]+$ ]] || die "'$id' is not a demo id (f6demo<number>)"
    for work in /tmp/flat6-demo-"$id".*; do
        [[ -d $work ]] || continue
        found=1
        if teardown "$work"; then
            rm -rf -- "$work"
            echo "demo $id is down."
        else
            die "teardown of $id finished with errors (state in $work)"
        fi
    done
    if ((!found)); then
        local left
        left=$(ip netns list | awk '{print $1}' | grep "^$id-" || true)
        [[ -z $left ]] || die "no state directory for $id, but its namespaces exist: ${left//$'\n'/ }"
        die "no demo $id is running"
    fi
}

# ---------------------------------------------------------------------------------------------
# Configs and helper programs

write_files() {
    printf '%s' "demo-admin-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" >"$WORK/admin.token"
    printf '%s' "demo-agent-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" >"$WORK/agent.token"
    chmod 600 "$WORK/admin.token" "$WORK/agent.token"

    cat >"$WORK/controller.toml" <<EOF
role = "controller"
listen = "[::]:$API_PORT"
database = "sqlite://$WORK/controller.db"
admin_token_file = "$WORK/admin.token"
agent_token_file = "$WORK/agent.token"
EOF
    cat >"$WORK/gateway.toml" <<EOF
# The pod's real gateway: a default router (router lifetime 1800) with the pod /48 on-link, A=0.
role = "vr"
interface = "eth0"
state_dir = "$WORK/gateway-state"
addresses = ["$GW_ADDR/48"]
[ra]
router_lifetime = 1800
[[ra.prefixes]]
prefix = "$POD_PREFIX"
[dhcpv6]
enabled = false
EOF
    cat >"$WORK/vr.toml" <<EOF
# The VR: never a default router (router lifetime 0); DHCPv6 from the controller's reservations.
role = "vr"
interface = "vr0"
state_dir = "$WORK/vr-state"
addresses = ["$VR_ADDR/48"]
[ra]
router_lifetime = 0
[[ra.prefixes]]
prefix = "$POD_PREFIX"
[dhcpv6]
[source]
controller = "http://[$MGMT_VR_NET::1]:$API_PORT"
pod = "$POD"
token_file = "$WORK/agent.token"
EOF
    cat >"$WORK/guard.toml" <<EOF
role = "guard"
state_dir = "$WORK/guard-state"
[source]
controller = "http://[$MGMT_HV_NET::1]:$API_PORT"
host = "$HOST"
token_file = "$WORK/agent.token"
EOF

    # dhclient's hook: put the address on the link (a /128, as dhclient-script does) and record
    # what the server sent. It never touches any resolv.conf.
    cat >"$WORK/dhclient-hook.sh" <<'EOF'
#!/bin/sh
case "$reason" in
  BOUND6|RENEW6|REBIND6|REBOOT6)
    [ -n "$new_ip6_address" ] && ip -6 addr replace "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" valid_lft "${new_max_life:-forever}" preferred_lft "${new_preferred_life:-forever}" 2>/dev/null || ip -6 addr replace "$new_ip6_address/$new_ip6_prefixlen" dev "$interface"
    ;;
esac
out="$(dirname "$0")/hook-$reason.env"
env | grep -E '^(reason|new_|old_|interface)' | sort > "$out.tmp" && mv "$out.tmp" "$out"
exit 0
EOF
    # dhcpcd's hook: only record (dhcpcd configures addresses and routes itself).
    cat >"$WORK/dhcpcd-hook.sh" <<'EOF'
#!/bin/sh
out="$(dirname "$0")/hook-$reason.env"
env | grep -E '^(reason|new_|interface)' | sort > "$out.tmp" && mv "$out.tmp" "$out"
exit 0
EOF
    chmod 755 "$WORK/dhclient-hook.sh" "$WORK/dhcpcd-hook.sh"
    cat >"$WORK/dhcpcd.conf" <<'EOF'
noipv4
ipv6rs
ia_na 1
nohook resolv.conf, hostname, ntp.conf, timesyncd.conf, chrony.conf, openntpd.conf
EOF

    # An instance's services: TCP 80 answers HTTP with the instance's name, TCP 22 accepts too
    # (only the guard can keep a connection to it from succeeding).
    cat >"$WORK/listen.py" <<'EOF'
import os, socket, sys, threading
name, ready = sys.argv[1], sys.argv[2]
def serve(sock, port):
    while True:
        conn, _ = sock.accept()
        try:
            conn.settimeout(1)
            try:
                conn.recv(1024)
            except OSError:
                pass
            conn.sendall(f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{name} port {port}\n".encode())
        except OSError:
            pass
        finally:
            conn.close()
threads = []
for port in (80, 22):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(16)
    threads.append(threading.Thread(target=serve, args=(s, port), daemon=True))
for t in threads:
    t.start()
with open(ready + ".tmp", "w") as f:
    f.write("listening\n")
os.rename(ready + ".tmp", ready)
for t in threads:
    t.join()
EOF
    # probe.py ADDR PORT TIMEOUT: connect, send an HTTP request, print what happened.
    cat >"$WORK/probe.py" <<'EOF'
import socket, sys
addr, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(timeout)
try:
    s.connect((addr, port))
except socket.timeout:
    print(f"dropped (no answer within {timeout:g}s)")
    sys.exit(1)
except ConnectionRefusedError:
    print("refused")
    sys.exit(1)
except OSError as e:
    print(f"error: {e.strerror}")
    sys.exit(1)
try:
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = s.recv(4096).decode(errors="replace")
    print("connected: " + data.split("\r\n\r\n", 1)[-1].strip())
except OSError as e:
    print(f"connected, then: {e.strerror}")
EOF
    # tool.py: small JSON readers for `ip -j`, the controller's answers and the guard's state.
    cat >"$WORK/tool.py" <<'EOF'
import ipaddress, json, sys
cmd, args = sys.argv[1], sys.argv[2:]
def load(text):
    text = text.strip()
    return json.loads(text) if text else []
if cmd == "field":            # field KEY [INDEX] < json
    v = load(sys.stdin.read())[args[0]]
    if len(args) > 1:
        v = v[int(args[1])] if len(v) > int(args[1]) else ""
    print(v if v is not None else "")
elif cmd == "link-local":     # < ip -j addr: the first link-local that finished DAD
    for link in load(sys.stdin.read()):
        for a in link.get("addr_info", []):
            if a.get("scope") == "link" and a.get("family") == "inet6" and not a.get("tentative"):
                print(a["local"]); sys.exit(0)
    sys.exit(1)
elif cmd == "globals":        # < ip -j addr: every global IPv6 address as addr/len
    for link in load(sys.stdin.read()):
        for a in link.get("addr_info", []):
            if a.get("scope") == "global" and a.get("family") == "inet6":
                print(f'{a["local"]}/{a["prefixlen"]}' + (" tentative" if a.get("tentative") else ""))
elif cmd == "default-gateways":   # < ip -j -6 route show default: "gateway dev" lines
    for r in load(sys.stdin.read()):
        hops = r.get("nexthops") or [r]
        for h in hops:
            print(h.get("gateway", "-"), h.get("dev", r.get("dev", "-")))
elif cmd == "in-prefix":      # in-prefix ADDR PREFIX
    ok = ipaddress.IPv6Address(args[0]) in ipaddress.IPv6Network(args[1])
    sys.exit(0 if ok else 1)
elif cmd == "guard-has":      # guard-has APPLIED_JSON GROUP PORTS IFNAME...: all ports, group allows PORTS
    try:
        doc = json.load(open(args[0]))
    except (OSError, ValueError):
        sys.exit(1)
    have = {p.get("interface") for p in doc.get("ports", [])}
    if not set(args[3:]) <= have:
        sys.exit(1)
    groups = {g.get("name"): g for g in doc.get("security_groups", [])}
    rules = groups.get(args[1], {}).get("rules", [])
    sys.exit(0 if any(r.get("ports") == args[2] for r in rules) else 1)
else:
    sys.exit(f"tool.py: unknown command {cmd}")
EOF
}

tool() { "$PY" "$WORK/tool.py" "$@"; }

flat6_cli() {
    inx mgmt env FLAT6_SERVER="http://[::1]:$API_PORT" FLAT6_TOKEN_FILE="$WORK/admin.token" \
        "$FLAT6" "$@"
}

# cli LOGNAME ARGS...: a CLI call whose output goes to $WORK/LOGNAME.log; the step fails with it.
cli() {
    local name=$1
    shift
    echo "\$ flat6 $*" >>"$WORK/$name.log"
    flat6_cli "$@" >>"$WORK/$name.log" 2>&1 || fail_step "flat6 $*" "$WORK/$name.log"
}

# ---------------------------------------------------------------------------------------------
# Setup

build_infrastructure() {
    local n
    for n in mgmt hv gw vr up; do make_ns "$n"; done
    ip -n "$(ns hv)" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
    ip -n "$(ns hv)" link set dev br0 up

    # Management links: only the VR and the hypervisor reach the controller.
    veth mgmt to-vr vr mgmt0
    ip -n "$(ns mgmt)" addr add "$MGMT_VR_NET::1/64" dev to-vr
    ip -n "$(ns vr)" addr add "$MGMT_VR_NET::2/64" dev mgmt0
    veth mgmt to-hv hv mgmt0
    ip -n "$(ns mgmt)" addr add "$MGMT_HV_NET::1/64" dev to-hv
    ip -n "$(ns hv)" addr add "$MGMT_HV_NET::2/64" dev mgmt0

    # The gateway: forwarding between the pod link and the upstream link.
    nsysctl gw net.ipv6.conf.all.forwarding 1
    attach gw eth0 "$GW_MAC" gw-p
    veth gw up0 up eth0
    ip -n "$(ns gw)" addr add "$UP_NET_GW/64" dev up0
    ip -n "$(ns up)" addr add "$UP_ADDR/64" dev eth0
    ip -n "$(ns up)" route add "$POD_PREFIX" via "$UP_NET_GW"

    attach vr vr0 "$VR_MAC" vr-p
}

start_controller() {
    spawn controller mgmt "$FLAT6" controller --config "$WORK/controller.toml"
    local pid=$SPAWNED
    wait_for "flat6 controller to listen (namespace $(ns mgmt))" "$T_START" "$WORK/controller.log" \
        "$pid" log_has controller "controller API listening"
    say "controller listening on [::]:$API_PORT in $(ns mgmt) (SQLite: $WORK/controller.db)"
    cli cli pod create "$POD" --prefix "$POD_PREFIX" --instance-prefix-length 64 \
        --exclude "$GW_ADDR" --exclude "$VR_ADDR"
    cli cli sg set web --rule "ingress tcp 80 ::/0"
    say "pod $POD ($POD_PREFIX, one /64 per instance, excluding $GW_ADDR and $VR_ADDR) and group web (TCP 80) created"
}

start_agents() {
    local guard_pid vr_pid gw_pid
    spawn guard hv "$FLAT6" guard --config "$WORK/guard.toml"
    guard_pid=$SPAWNED
    spawn vr vr "$FLAT6" vr --config "$WORK/vr.toml"
    vr_pid=$SPAWNED
    spawn gateway gw "$FLAT6" vr --config "$WORK/gateway.toml"
    gw_pid=$SPAWNED
    wait_for "flat6 vr (gateway role, $(ns gw)) to advertise" "$T_START" "$WORK/gateway.log" \
        "$gw_pid" log_has gateway "advertising on the link"
    wait_for "flat6 vr ($(ns vr)) to advertise" "$T_START" "$WORK/vr.log" \
        "$vr_pid" log_has vr "advertising on the link"
    wait_for "flat6 vr ($(ns vr)) to load the pod's reservations from the controller" "$T_START" \
        "$WORK/vr.log" "$vr_pid" log_has vr "loaded reservations"
    wait_for "flat6 guard ($(ns hv)) to apply the host's ports from the controller" "$T_START" \
        "$WORK/guard.log" "$guard_pid" test -f "$WORK/guard-state/applied.json"
    say "gateway, VR and guard running; the VR and the guard follow the controller"
    GUARD_PID=$guard_pid
    VR_PID=$vr_pid
}

create_instances() {
    local k out
    for ((k = 1; k <= INSTANCES; k++)); do
        make_ns "i$k"
        attach "i$k" eth0 "$(instance_mac "$k")" "i$k-p"
        PORTS+=("i$k-p")
    done
    for ((k = 1; k <= INSTANCES; k++)); do
        out=$WORK/instance-i-$k.json
        echo "\$ flat6 instance create $POD i-$k --mac $(instance_mac "$k") --host $HOST --port i$k-p --sg web --json" >>"$WORK/cli.log"
        flat6_cli instance create "$POD" "i-$k" --mac "$(instance_mac "$k")" --host "$HOST" \
            --port "i$k-p" --sg web --json >"$out" 2>>"$WORK/cli.log" ||
            fail_step "flat6 instance create $POD i-$k" "$WORK/cli.log"
        cat "$out" >>"$WORK/cli.log"
        PREFIX_OF[k]=$(tool field prefix <"$out")
        ADDR_OF[k]=$(tool field addresses 0 <"$out")
        MAC_OF[k]=$(tool field mac <"$out")
    done
    say "instances i-1..i-$INSTANCES created through the CLI (host $HOST, ports i1-p..i$INSTANCES-p, group web)"
    wait_for "flat6 vr ($(ns vr)) to load the $INSTANCES reservations" "$T_FOLLOW" "$WORK/vr.log" \
        "$VR_PID" log_has vr "reservations=$INSTANCES "
    wait_for "flat6 guard ($(ns hv)) to apply the $INSTANCES ports" "$T_FOLLOW" "$WORK/guard.log" \
        "$GUARD_PID" tool guard-has "$WORK/guard-state/applied.json" web 80 "${PORTS[@]}"
    say "the VR serves $INSTANCES reservations and the guard enforces $INSTANCES ports"
}

start_instances() {
    local k dir
    for ((k = 1; k <= INSTANCES; k++)); do
        spawn "listen-i$k" "i$k" "$PY" "$WORK/listen.py" "i-$k" "$WORK/listen-i$k.ready"
        LISTEN_PID[k]=$SPAWNED
        dir=$WORK/client-i$k
        mkdir -p "$dir"
        if ((k < INSTANCES)); then
            cp "$WORK/dhclient-hook.sh" "$dir/hook.sh"
            : >"$dir/dhclient6.leases"
            spawn "dhclient-i$k" "i$k" dhclient -6 -d -v -sf "$dir/hook.sh" \
                -lf "$dir/dhclient6.leases" -pf "$dir/dhclient6.pid" eth0
            CLIENT_NAME[k]=dhclient
        else
            cp "$WORK/dhcpcd-hook.sh" "$dir/hook.sh"
            # dhcpcd keeps pid, socket and leases under /run and /var/lib/dhcpcd by interface
            # name: a private mount namespace with tmpfs there keeps it off the host's.
            spawn "dhcpcd-i$k" "i$k" unshare -m --propagation private sh -c \
                "mount -t tmpfs flat6-demo /run && mount -t tmpfs flat6-demo /var/lib/dhcpcd && exec dhcpcd -B -d -6 -f $WORK/dhcpcd.conf -c $dir/hook.sh eth0"
            CLIENT_NAME[k]=dhcpcd
        fi
        CLIENT_PID[k]=$SPAWNED
    done
    for ((k = 1; k <= INSTANCES; k++)); do
        wait_for "the TCP 80/22 listener in $(ns "i$k")" "$T_START" "$WORK/listen-i$k.log" \
            "${LISTEN_PID[k]}" test -f "$WORK/listen-i$k.ready"
    done
    say "instances: listeners on TCP 80 and 22; dhclient -6 on i-1, i-2; dhcpcd on i-3"
}

# Whether instance K has a global address (that it came from DHCPv6 is measured later).
bound() {
    local k=$1
    [[ -n $(ip -n "$(ns "i$k")" -j -6 addr show dev eth0 scope global -tentative 2>/dev/null | tool globals) ]]
}

wait_bound() {
    local k deadline
    deadline=$(($(now_ms) + T_BIND * 1000))
    for ((k = 1; k <= INSTANCES; k++)); do
        while ! bound "$k" && (($(now_ms) < deadline)) && pid_alive "${CLIENT_PID[k]}"; do
            sleep 0.05
        done
        if bound "$k"; then
            say "i-$k bound by DHCPv6 (${CLIENT_NAME[k]})"
        else
            say "i-$k has no address from DHCPv6 yet (${CLIENT_NAME[k]}, log $WORK/${CLIENT_NAME[k]}-i$k.log); measuring anyway"
        fi
    done
}

break_web() {
    cli cli sg set web --rule "ingress tcp 8080 ::/0"
    wait_for "flat6 guard ($(ns hv)) to apply the broken web group (TCP 8080)" "$T_FOLLOW" \
        "$WORK/guard.log" "$GUARD_PID" \
        tool guard-has "$WORK/guard-state/applied.json" web 8080 "${PORTS[@]}"
    say "--break web: group web now allows TCP 8080 instead of 80 (applied by the guard)"
}

# ---------------------------------------------------------------------------------------------
# Measurement: one background job per instance writes "CELL|ok-or-FAIL|value|detail" lines.

cell() { printf '%s|%s|%s|%s\n' "$1" "$2" "$3" "$4"; }

measure_instance() {
    local k=$1 n="i$k" ns_name got_mac globals addr others gws want ping_out rtt
    local deadline probe80 probe22 client_log hookenv
    ns_name=$(ns "$n")
    client_log=$WORK/${CLIENT_NAME[k]}-i$k.log
    want=${ADDR_OF[k]}

    # MAC: what the instance's link really has, against what the controller holds.
    got_mac=$(ip -n "$ns_name" -br link show dev eth0 | awk '{print $3}')
    if [[ $got_mac == "${MAC_OF[k]}" ]]; then
        cell MAC ok "$got_mac" ""
    else
        cell MAC FAIL "${got_mac:-none}" "eth0 in $ns_name has MAC ${got_mac:-none}; the controller has ${MAC_OF[k]}"
    fi

    # The address on the link, and that it came from the DHCPv6 client (its own record).
    globals=$(ip -n "$ns_name" -j -6 addr show dev eth0 scope global | tool globals)
    hookenv=$(cat "$WORK/client-i$k/hook-BOUND6.env" 2>/dev/null || true)
    addr=""
    if grep -qx "$want/128" <<<"$globals" && grep -q -- "$want" <<<"$hookenv"; then
        addr=$want
        cell "DHCPv6 address" ok "$want" ""
    elif grep -qx "$want/128" <<<"$globals"; then
        cell "DHCPv6 address" FAIL "$want" "$want is on eth0 but ${CLIENT_NAME[k]} recorded no such binding ($WORK/client-i$k); log $client_log"
    else
        cell "DHCPv6 address" FAIL "${globals%%$'\n'*}" "eth0 in $ns_name lacks $want/128 (reserved by the controller); has: ${globals//$'\n'/ }; see $client_log and $WORK/vr.log"
    fi

    # TCP from the upstream host, through the gateway and the guard, to the instance's address:
    # both probes run in the background while the other cells are measured.
    local target=${addr:-$want} p80 p22
    # An allowed port may still be waiting for neighbour discovery on a busy machine: try up to
    # three times. A port the rules block stays blocked however often it is tried.
    (
        for attempt in 1 2 3; do
            if inx up "$PY" "$WORK/probe.py" "$target" 80 "$T_TCP" >"$WORK/probe-i$k-80" 2>&1; then
                break
            fi
        done
    ) &
    p80=$!
    inx up "$PY" "$WORK/probe.py" "$target" 22 "$T_TCP" >"$WORK/probe-i$k-22" 2>&1 &
    p22=$!

    # The /64: the controller's, and the address on the link lies in it.
    if [[ -n $addr ]] && tool in-prefix "$addr" "${PREFIX_OF[k]}"; then
        cell /64 ok "${PREFIX_OF[k]}" ""
    else
        cell /64 FAIL "${PREFIX_OF[k]:-none}" "no DHCPv6 address inside ${PREFIX_OF[k]:-the instance /64} on eth0"
    fi

    # Default route: via the gateway's link-local only (the VR, router lifetime 0, is never one).
    deadline=$(($(now_ms) + T_ROUTE * 1000))
    while true; do
        gws=$(ip -n "$ns_name" -j -6 route show default | tool default-gateways)
        [[ $gws == "$GW_LL eth0" ]] && break
        (($(now_ms) >= deadline)) && break
        sleep 0.05
    done
    if [[ $gws == "$GW_LL eth0" ]]; then
        cell "default route" ok "$GW_LL" ""
    else
        cell "default route" FAIL "${gws%% *}" "default routes in $ns_name: ${gws//$'\n'/; } (want only via the gateway $GW_LL dev eth0; the VR is $VR_LL); see $WORK/gateway.log"
    fi

    # ping6 to the upstream host, through the gateway.
    deadline=$(($(now_ms) + T_PING * 1000))
    while true; do
        if ping_out=$(inx "$n" ping -6 -n -c 1 -W 1 "$UP_ADDR" 2>&1); then
            rtt=$(sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' <<<"$ping_out")
            cell "ping6 upstream" ok "${rtt}ms" ""
            break
        fi
        if (($(now_ms) >= deadline)); then
            cell "ping6 upstream" FAIL "none" "ping -6 $UP_ADDR from $ns_name: no reply within ${T_PING}s ($(tail -n 1 <<<"$ping_out"))"
            break
        fi
        sleep 0.1
    done

    wait "$p80" "$p22"
    probe80=$(<"$WORK/probe-i$k-80")
    probe22=$(<"$WORK/probe-i$k-22")
    if [[ $probe80 == "connected: i-$k port 80" ]]; then
        cell "TCP 80" ok "allowed" ""
    else
        cell "TCP 80" FAIL "blocked" "TCP [$target]:80 from $(ns up): $probe80 (${BREAK:+--break web changed group web to TCP 8080; }group web must allow TCP 80; guard log $WORK/guard.log)"
    fi
    if [[ -z $addr ]]; then
        cell "TCP 22" FAIL "untested" "i-$k has no DHCPv6 address, so a refused TCP 22 proves nothing"
    elif [[ $probe22 == connected* ]]; then
        cell "TCP 22" FAIL "open" "TCP [$target]:22 from $(ns up): $probe22 (no group allows it; guard log $WORK/guard.log)"
    elif [[ $probe22 == refused || $probe22 == dropped* ]]; then
        cell "TCP 22" ok "${probe22%% *}" ""
    else
        cell "TCP 22" FAIL "untested" "TCP [$target]:22 from $(ns up): $probe22 (expected the guard to drop it)"
    fi

    # No SLAAC: no global address on the link except the DHCPv6 one.
    others=$(grep -vx "$want/128" <<<"$globals" || true)
    if [[ -z $others ]]; then
        cell "SLAAC absent" ok "" ""
    else
        cell "SLAAC absent" FAIL "${others%%$'\n'*}" "other global addresses on eth0 in $ns_name: ${others//$'\n'/ }"
    fi
}

readonly CELLS=("MAC" "/64" "DHCPv6 address" "default route" "ping6 upstream" "TCP 80" "TCP 22" "SLAAC absent")

measure_all() {
    local k
    local -a jobs=()
    GW_LL=$(ip -n "$(ns gw)" -j -6 addr show dev eth0 scope link | tool link-local || true)
    VR_LL=$(ip -n "$(ns vr)" -j -6 addr show dev vr0 scope link | tool link-local || true)
    for ((k = 1; k <= INSTANCES; k++)); do
        (
            set +eE
            trap - ERR
            measure_instance "$k" >"$WORK/result-i$k.tmp" 2>"$WORK/result-i$k.err"
            mv "$WORK/result-i$k.tmp" "$WORK/result-i$k"
        ) &
        jobs+=($!)
    done
    wait "${jobs[@]}" || true
}

# Print the table; returns the number of failed cells.
print_table() {
    local k c line name status value detail failures=0
    local -a widths header details=()
    header=(instance "${CELLS[@]}")
    declare -A table=()
    for ((c = 0; c < ${#header[@]}; c++)); do widths[c]=${#header[c]}; done
    for ((k = 1; k <= INSTANCES; k++)); do
        table[$k,0]="i-$k"
        for ((c = 1; c < ${#header[@]}; c++)); do table[$k,$c]="FAIL not-measured"; done
        if [[ ! -f $WORK/result-i$k ]]; then
            details+=("FAIL i-$k: the measurement did not finish; see $WORK/result-i$k.err")
        fi
        while IFS='|' read -r name status value detail; do
            for ((c = 1; c < ${#header[@]}; c++)); do
                [[ ${header[c]} == "$name" ]] || continue
                table[$k,$c]="$status${value:+ $value}"
                if [[ $status != ok ]]; then
                    details+=("FAIL i-$k, cell \"$name\": $detail")
                fi
            done
        done <"$WORK/result-i$k" 2>/dev/null
        for ((c = 0; c < ${#header[@]}; c++)); do
            if ((${#table[$k,$c]} > widths[c])); then widths[c]=${#table[$k,$c]}; fi
            if [[ ${table[$k,$c]} == FAIL* ]]; then failures=$((failures + 1)); fi
        done
    done
    echo
    line=""
    for ((c = 0; c < ${#header[@]}; c++)); do line+=$(printf '%-*s  ' "${widths[c]}" "${header[c]}"); done
    echo "${line%"${line##*[! ]}"}"
    for ((k = 1; k <= INSTANCES; k++)); do
        line=""
        for ((c = 0; c < ${#header[@]}; c++)); do line+=$(printf '%-*s  ' "${widths[c]}" "${table[$k,$c]}"); done
        echo "${line%"${line##*[! ]}"}"
    done
    echo
    if ((${#details[@]})); then
        printf '%s\n' "${details[@]}"
        echo
    fi
    return "$failures"
}

# ---------------------------------------------------------------------------------------------

main() {
    local down=""
    while (($#)); do
        case $1 in
        --keep) KEEP=1 ;;
        --break)
            [[ ${2:-} == web ]] || {
                usage >&2
                exit 2
            }
            BREAK=web
            shift
            ;;
        --down)
            [[ -n ${2:-} ]] || {
                usage >&2
                exit 2
            }
            down=$2
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            exit 2
            ;;
        esac
        shift
    done
    need_root "$@"
    if [[ -n $down ]]; then
        do_down "$down"
        return
    fi

    ensure_packages
    find_binary
    ID=f6demo$$
    while [[ -n $(ip netns list | awk '{print $1}' | grep "^$ID-" || true) ]] ||
        compgen -G "/etc/netns/$ID-*" >/dev/null; do
        ID=f6demo$$$RANDOM
    done
    WORK=$(mktemp -d "/tmp/flat6-demo-$ID.XXXXXX")
    : >"$WORK/namespaces"
    : >"$WORK/pids"
    trap on_exit EXIT
    trap 'echo "$PROG: interrupted" >&2; exit 130' INT
    trap 'echo "$PROG: terminated" >&2; exit 143' TERM
    trap 'on_err $LINENO "$BASH_COMMAND"' ERR

    STARTED_MS=$(now_ms)
    say "flat6 demo $ID with $FLAT6; logs, configs and state in $WORK"
    write_files
    local f
    for f in controller gateway vr guard; do
        "$FLAT6" check --config "$WORK/$f.toml" >>"$WORK/check.log" 2>&1 ||
            fail_step "flat6 check --config $WORK/$f.toml" "$WORK/check.log"
    done

    declare -ga PREFIX_OF=() ADDR_OF=() MAC_OF=() LISTEN_PID=() CLIENT_PID=() CLIENT_NAME=() PORTS=()
    build_infrastructure
    say "namespaces: $(ns mgmt) $(ns hv) $(ns gw) $(ns vr) $(ns up) (bridge br0 in $(ns hv))"
    start_controller
    start_agents
    create_instances
    start_instances
    wait_bound
    if [[ $BREAK == web ]]; then break_web; fi
    say "measuring every cell"
    measure_all
    local ready
    ready=$(elapsed)
    local failures=0
    print_table || failures=$?
    if ((failures)); then
        say "$failures cell(s) FAILED in ${ready}s (logs: $WORK)"
        return 1
    fi
    say "every cell ok: the demo took ${ready}s after the build"
}

main "$@"
