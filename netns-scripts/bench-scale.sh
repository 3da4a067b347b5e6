#!/usr/bin/env bash
# Scale benchmark of the incremental control plane (issue 12), on SQLite:
#  1. fill one /48 pod with one /64 per instance (--instances, default 65,536) from 4 concurrent
#     clients while a VR follows the pod: the rate overall and for the last 2,000;
#  2. at that size, --changes single changes (one address added each): bytes on the controller's
#     veth towards the VR, the VR's and the controller's CPU per change (from /proc), and the
#     time from the request to the VR's log line for that revision (p50/p99);
#  3. --watches idle host watches over --hosts hosts: the controller's CPU while they wait, its
#     resident memory per watch, the time for one host's change to reach that host's watches,
#     whether any other watch woke, and /healthz meanwhile (examples/idle_watches.rs);
#  4. --members instances in one security group that references itself, spread over
#     --group-hosts hosts, --guards real guards following the first hosts (in a namespace of
#     their own, one nft table each): for one new member on a host without a guard, the bytes
#     per guard, the controller's CPU, the time until every guard applied it, the HTTP 503/500s;
#  5. with --mariadb: a MariaDB server inside the controllers' namespace (netns-scripts/db.sh)
#     and 4 controllers on it; parts 4 and 3 again, the guards and the watches spread over the
#     4 controllers, the change made through the first (the others see it through their poller).
#
#   sudo netns-scripts/bench-scale.sh [--instances N] [--changes N] [--watches N] [--hosts N]
#                                     [--members N] [--group-hosts N] [--guards N] [--mariadb]
#                                     [--flat6 BIN] [--loadgen BIN] [--results FILE] [--no-build]
#
# --flat6 runs another build (e.g. the previous main's) through parts 1, 2 and 4; part 3 needs
# the /changes watches and is skipped for a binary without them. --guards 0 skips part 4. The controller runs in one network
# namespace, the VR in another, joined by a veth with fd00:5ca1::/64; the load generators run in
# the controller's namespace on [::1]. Every process started here is stopped by pid and both
# namespaces removed on exit. Nothing touches the host's own networking.
set -Eeuo pipefail

prog=$(basename "$0")
cd "$(dirname "$0")/.."
readonly ROOT=$PWD
# shellcheck source=netns-scripts/bench-lib.sh
source "$ROOT/netns-scripts/bench-lib.sh"

instances=65536
changes=20
watches=5000
hosts=500
members=10000
group_hosts=200
guards=20
mariadb=0
DBDIR=
flat6=
loadgen=
results_file=
build=1

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --instances) instances=$2; shift 2 ;;
        --changes) changes=$2; shift 2 ;;
        --watches) watches=$2; shift 2 ;;
        --hosts) hosts=$2; shift 2 ;;
        --members) members=$2; shift 2 ;;
        --group-hosts) group_hosts=$2; shift 2 ;;
        --guards) guards=$2; shift 2 ;;
        --mariadb) mariadb=1; shift ;;
        --flat6) flat6=$2; shift 2 ;;
        --loadgen) loadgen=$2; shift 2 ;;
        --results) results_file=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
whole --instances "$instances" 2004 65536
whole --changes "$changes" 1 1000
whole --watches "$watches" 0 20000
whole --hosts "$hosts" 1 10000
whole --members "$members" 1 100000
whole --group-hosts "$group_hosts" 2 10000
whole --guards "$guards" 0 100
((guards < group_hosts)) || die "--guards must be fewer than --group-hosts (the change lands on a host without one)"
[[ $(id -u) == 0 ]] || die "needs root for network namespaces: sudo $0"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if ((build)); then
    say "cargo build --release --locked --bin flat6 --example controller_load --example idle_watches"
    cargo build --release --locked --bin flat6 --example controller_load --example idle_watches \
        >/tmp/bench-scale-build.log 2>&1 || fail_with_log "build failed" /tmp/bench-scale-build.log
fi
FLAT6=${flat6:-$TARGET_DIR/release/flat6}
LOADGEN=${loadgen:-$TARGET_DIR/release/examples/controller_load}
WATCHERS=$TARGET_DIR/release/examples/idle_watches
for bin in "$FLAT6" "$LOADGEN"; do [[ -x $bin ]] || die "$bin does not exist"; done

WORK=$(mktemp -d /tmp/flat6-bench-scale.XXXXXX)
NS_C=f6sc$$c
NS_V=f6sc$$v
NS_G=f6sc$$g
started=()
cleanup() {
    stop_all
    [[ -z $DBDIR ]] || "$ROOT/netns-scripts/db.sh" stop "$DBDIR" >/dev/null 2>&1 || true
    ip netns del "$NS_C" 2>/dev/null || true
    ip netns del "$NS_V" 2>/dev/null || true
    ip netns del "$NS_G" 2>/dev/null || true
    rm -rf "/etc/netns/$NS_C" "/etc/netns/$NS_V" "/etc/netns/$NS_G"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "namespaces $NS_C (controller) and $NS_V (VR); work dir $WORK"
for ns in "$NS_C" "$NS_V"; do
    mkdir -p "/etc/netns/$ns" && : >"/etc/netns/$ns/resolv.conf"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip -n "$NS_C" link add cv0 type veth peer name vv0 netns "$NS_V"
ip -n "$NS_C" addr add fd00:5ca1::1/64 dev cv0 nodad
ip -n "$NS_V" addr add fd00:5ca1::2/64 dev vv0 nodad
ip -n "$NS_C" link set cv0 up
ip -n "$NS_V" link set vv0 up
# The VR's pod link: a veth pair inside its namespace (no dummy driver on every kernel).
ip -n "$NS_V" link add vr0 address 02:5c:00:00:00:fe type veth peer name vr0p
ip -n "$NS_V" link set vr0p up
ip -n "$NS_V" link set vr0 up

head -c 24 /dev/urandom | base64 >"$WORK/admin.token"
head -c 24 /dev/urandom | base64 >"$WORK/agent.token"
chmod 600 "$WORK/admin.token" "$WORK/agent.token"
AUTH="Authorization: Bearer $(cat "$WORK/admin.token")"

cat >"$WORK/controller.toml" <<EOF
role = "controller"
listen = "[::]:8640"
database = "sqlite://$WORK/controller.db"
admin_token_file = "$WORK/admin.token"
agent_token_file = "$WORK/agent.token"
EOF
# A binary from before max_watches and feed_history takes this config as it is.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= watches + 200 )) || { note "open-file limit $(ulimit -n): watches lowered"; watches=$(( $(ulimit -n) - 200 )); }
ip netns exec "$NS_C" "$FLAT6" controller --config "$WORK/controller.toml" </dev/null >"$WORK/controller.log" 2>&1 &
CTL=$!
started+=("$CTL")
api_on() { # PORT METHOD PATH [BODY]
    ip netns exec "$NS_C" curl -sf -g --max-time 30 -X "$2" -H "$AUTH" -H 'Content-Type: application/json' \
        ${4:+--data "$4"} "http://[::1]:$1$3"
}
api() { api_on 8640 "$@"; } # METHOD PATH [BODY], to the SQLite controller
for ((i = 0; i < 300; i++)); do
    kill -0 "$CTL" 2>/dev/null || fail_with_log "the controller exited" "$WORK/controller.log"
    ip netns exec "$NS_C" curl -sf -g --max-time 2 "http://[::1]:8640/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
api POST /v1/pods '{"name": "pod1", "prefix": "2001:db8:100::/48"}' >/dev/null

cat >"$WORK/vr.toml" <<EOF
role = "vr"
interface = "vr0"
state_dir = "$WORK/vr-state"
[ra]
router_lifetime = 0
[[ra.prefixes]]
prefix = "2001:db8:100::/48"
[dhcpv6]
dns_servers = ["2001:db8::53"]
[source]
controller = "http://[fd00:5ca1::1]:8640"
pod = "pod1"
token_file = "$WORK/agent.token"
EOF
ip netns exec "$NS_V" "$FLAT6" vr --config "$WORK/vr.toml" </dev/null >"$WORK/vr.log" 2>&1 &
VR=$!
started+=("$VR")

pod_revision() { api GET /v1/pods/pod1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])'; }
# The timestamp (epoch seconds) of the VR's first log line that reached revision $1 or later.
vr_reached() {
    python3 - "$WORK/vr.log" "$1" <<'EOF'
import re, sys, datetime
want = int(sys.argv[2])
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"revision=(\d+)", line)
    if m and int(m.group(1)) >= want and ("reservation" in line):
        ts = line.split()[0].rstrip("Z")
        print(datetime.datetime.fromisoformat(ts).replace(tzinfo=datetime.timezone.utc).timestamp())
        break
EOF
}
wait_vr() { # REVISION TIMEOUT
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        kill -0 "$VR" 2>/dev/null || fail_with_log "the VR exited" "$WORK/vr.log"
        [[ -n $(vr_reached "$1") ]] && return 0
        sleep 0.05
    done
    fail_with_log "the VR did not reach revision $1 within $2 s" "$WORK/vr.log"
}
wait_vr 1 30

cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; } # clock ticks
tx_bytes() { ip -n "$NS_C" -s -j link show "${1:-cv0}" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["bytes"])'; }
hz=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------
say "1. fill: $instances instances into one /48 (one /64 each), 4 clients, a VR following"
first=$((instances - 2000))
ip netns exec "$NS_C" "$LOADGEN" --url 'http://[::1]:8640' --admin-token-file "$WORK/admin.token" \
    --pod pod1 --kind instance --clients 4 --requests "$first" --tag a --deadline 3000 \
    --cpu "controller:$CTL" --cpu "vr:$VR" >"$WORK/fill-a.json" 2>"$WORK/fill-a.err" || true
ip netns exec "$NS_C" "$LOADGEN" --url 'http://[::1]:8640' --admin-token-file "$WORK/admin.token" \
    --pod pod1 --kind instance --clients 4 --requests 2000 --tag b --mac-base 1048576 --deadline 3000 \
    --cpu "controller:$CTL" --cpu "vr:$VR" >"$WORK/fill-b.json" 2>"$WORK/fill-b.err" || true
for part in a b; do
    [[ -s $WORK/fill-$part.json ]] || fail_with_log "the load generator failed" "$WORK/fill-$part.err"
done
read -r ok_a sec_a err_a < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("ok",0), d.get("seconds",0), d.get("errors",0))' "$WORK/fill-a.json" 2>/dev/null || echo "0 0 0")
read -r ok_b sec_b err_b < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("ok",0), d.get("seconds",0), d.get("errors",0))' "$WORK/fill-b.json" 2>/dev/null || echo "0 0 0")
overall=$(python3 -c "print(round(($ok_a + $ok_b) / max($sec_a + $sec_b, 1e-9)))")
last=$(python3 -c "print(round($ok_b / max($sec_b, 1e-9)))")
note "first $first: $ok_a ok, $err_a errors in $sec_a s; last 2000: $ok_b ok, $err_b errors in $sec_b s"
note "overall $overall/s, last 2,000 $last/s"
rev=$(pod_revision)
wait_vr "$rev" 120
note "VR at revision $rev"

# ---------------------------------------------------------------------------------------------
say "2. $changes single changes at $((ok_a + ok_b)) instances"
name=$(api GET /v1/pods/pod1/instances | python3 -c 'import json,sys; print(json.load(sys.stdin)["instances"][0]["name"])')
bytes0=$(tx_bytes); vr0=$(cpu_of "$VR"); ctl0=$(cpu_of "$CTL")
: >"$WORK/latency.txt"
for ((k = 0; k < changes; k++)); do
    t0=$(date +%s.%N)
    api POST "/v1/pods/pod1/instances/$name/addresses" >/dev/null
    rev=$(pod_revision)
    wait_vr "$rev" 30
    python3 -c "print(($(vr_reached "$rev") - $t0) * 1000)" >>"$WORK/latency.txt"
done
sleep 1
bytes1=$(tx_bytes); vr1=$(cpu_of "$VR"); ctl1=$(cpu_of "$CTL")
read -r per_bytes per_vr per_ctl p50 p99 < <(python3 - "$WORK/latency.txt" <<EOF
import sys
l = sorted(float(x) for x in open(sys.argv[1]))
q = lambda p: l[max(0, min(len(l) - 1, int(len(l) * p + 0.999999) - 1))]
n = $changes
print(round(($bytes1 - $bytes0) / n), round(($vr1 - $vr0) / $hz / n * 1000, 2), round(($ctl1 - $ctl0) / $hz / n * 1000, 2), round(q(0.5), 1), round(q(0.99), 1))
EOF
)
note "per change: $per_bytes bytes to the VR, VR CPU $per_vr ms, controller CPU $per_ctl ms; VR serving it after p50 $p50 ms, p99 $p99 ms"

# ---------------------------------------------------------------------------------------------
# Part 3 against the controllers listening on the ports given, pids in CTLS: idle_watches' JSON
# into $result.
idle_watches() { # PORT...
    local port args=() pids=() rss_before=0 pid
    for port in "$@"; do args+=(--addr "[::1]:$port"); done
    for pid in "${CTLS[@]}"; do
        pids+=(--pid "$pid")
        rss_before=$((rss_before + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")))
    done
    # The probe instance goes into a pod of its own: pod1 may be full.
    api_on "$1" POST /v1/pods '{"name": "probe", "prefix": "2001:db8:200::/48"}' >/dev/null
    ip netns exec "$NS_C" "$WATCHERS" "${args[@]}" --agent-token-file "$WORK/agent.token" \
        --admin-token-file "$WORK/admin.token" --pod probe --watches "$watches" --hosts "$hosts" \
        "${pids[@]}" --rss-before "$rss_before" >"$WORK/watches-$1.json" 2>"$WORK/watches-$1.err" ||
        fail_with_log "idle_watches failed" "$WORK/watches-$1.err"
    result=$(cat "$WORK/watches-$1.json")
}

# The guards' namespace, joined to the controllers' by a veth (fd00:5ca2::/64), made once.
guard_namespace() {
    ip netns list | grep -qw "$NS_G" && return 0
    mkdir -p "/etc/netns/$NS_G" && : >"/etc/netns/$NS_G/resolv.conf"
    ip netns add "$NS_G"
    ip -n "$NS_G" link set lo up
    ip -n "$NS_C" link add cg0 type veth peer name gg0 netns "$NS_G"
    ip -n "$NS_C" addr add fd00:5ca2::1/64 dev cg0 nodad
    ip -n "$NS_G" addr add fd00:5ca2::2/64 dev gg0 nodad
    ip -n "$NS_C" link set cg0 up
    ip -n "$NS_G" link set gg0 up
}

# Part 4 against the controllers on the ports given (pids in CTLS, logs in CTL_LOGS): $members
# members of group web in pod $1 (a /64 $2, hosts named $3-hv*), $guards guards, guard g
# following the g-th port in turn; one new member on a host without a guard. The report goes into
# $result; the guards are stopped after.
group_change() { # POD PREFIX TAG PORT...
    local pod=$1 prefix=$2 tag=$3 g i
    shift 3
    local ports=("$@") urls=()
    for i in "${ports[@]}"; do urls+=(--url "http://[::1]:$i"); done
    guard_namespace
    api_on "${ports[0]}" POST /v1/pods "{\"name\": \"$pod\", \"prefix\": \"$prefix\"}" >/dev/null
    api_on "${ports[0]}" PUT /v1/security-groups/web \
        '{"rules": [{"direction": "ingress", "protocol": "tcp", "ports": "80", "remote_group": "web"}]}' >/dev/null
    ip netns exec "$NS_C" "$LOADGEN" "${urls[@]}" --admin-token-file "$WORK/admin.token" \
        --pod "$pod" --kind instance --clients 4 --requests "$members" --tag "$tag" --hosts "$group_hosts" \
        --security-group web --mac-base 4194304 --deadline 3000 >"$WORK/group-$tag.json" 2>"$WORK/group-$tag.err" ||
        fail_with_log "creating the group's members failed" "$WORK/group-$tag.err"
    local guard_pids=()
    for ((g = 0; g < guards; g++)); do
        local dir=$WORK/guard-$tag$g
        mkdir -p "$dir"
        cat >"$dir/guard.toml" <<EOF
role = "guard"
table = "f6$tag$g"
state_dir = "$dir/state"
[source]
controller = "http://[fd00:5ca2::1]:${ports[g % ${#ports[@]}]}"
host = "$tag-hv$g"
token_file = "$WORK/agent.token"
EOF
        ip netns exec "$NS_G" "$FLAT6" guard --config "$dir/guard.toml" </dev/null >"$dir/guard.log" 2>&1 &
        guard_pids+=("$!")
        started+=("$!")
    done
    applies() { grep -c "applied ruleset" "$WORK/guard-$tag$1/guard.log" 2>/dev/null || true; }
    for ((g = 0; g < guards; g++)); do
        for ((i = 0; i < 1200; i++)); do
            kill -0 "${guard_pids[g]}" 2>/dev/null || fail_with_log "guard $g exited" "$WORK/guard-$tag$g/guard.log"
            (($(applies "$g") >= 1)) && break
            sleep 0.1
        done
        (($(applies "$g") >= 1)) || fail_with_log "guard $g applied nothing within 120 s" "$WORK/guard-$tag$g/guard.log"
    done
    # A listing is cut short ("Interrupted system call") while another table commits: again.
    list_web() { # GUARD FILE [-j]
        local i
        for ((i = 0; i < 50; i++)); do
            ip netns exec "$NS_G" nft ${3:-} list set inet "f6$tag$1" sg_web >"$2" 2>&1 && return 0
            sleep 0.1
        done
    }
    for ((g = 0; g < guards; g++)); do
        list_web "$g" "$WORK/guard-$tag$g/sg_web.json" -j
        local size
        size=$(python3 -c '
import json, sys
print(sum(len(i.get("set", {}).get("elem", [])) for i in json.load(sys.stdin)["nftables"]))' \
            <"$WORK/guard-$tag$g/sg_web.json" 2>/dev/null || echo 0)
        ((size == members)) || fail_with_log "guard $g holds $size members of web, not $members" "$WORK/guard-$tag$g/guard.log"
    done
    note "$guards guards hold the $members members"
    errors() { cat "${CTL_LOGS[@]}" | grep -cE "database unavailable|internal error|refused a watch" || true; }
    local errors_before before_applies=()
    errors_before=$(errors)
    for ((g = 0; g < guards; g++)); do before_applies[g]=$(applies "$g"); done
    guard_cpu() { local p t=0; for p in "${guard_pids[@]}"; do t=$((t + $(cpu_of "$p"))); done; echo "$t"; }
    ctl_cpu() { local p t=0; for p in "${CTLS[@]}"; do t=$((t + $(cpu_of "$p"))); done; echo "$t"; }
    local b0 c0 gc0 t0 newcomer
    b0=$(tx_bytes cg0); c0=$(ctl_cpu); gc0=$(guard_cpu)
    t0=$(date +%s.%N)
    newcomer=$(api_on "${ports[0]}" POST "/v1/pods/$pod/instances" \
        "{\"name\": \"newcomer\", \"mac\": \"02:5c:ff:00:00:01\", \"host\": \"$tag-hv$((group_hosts - 1))\", \"port\": \"vnew\", \"security_groups\": [\"web\"]}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["addresses"][0])')
    for ((g = 0; g < guards; g++)); do
        for ((i = 0; i < 600; i++)); do
            (($(applies "$g") > before_applies[g])) && break
            sleep 0.02
        done
        (($(applies "$g") > before_applies[g])) || fail_with_log "guard $g did not apply the change within 12 s" "$WORK/guard-$tag$g/guard.log"
    done
    # From the request to the last guard's first apply after it, by the guards' log timestamps.
    local converged
    converged=$(python3 - "$t0" "$WORK/guard-$tag" "$guards" <<'EOF'
import datetime, sys
t0, prefix, n = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
worst = 0.0
for g in range(n):
    for line in open(f"{prefix}{g}/guard.log", errors="replace"):
        if "applied ruleset" not in line:
            continue
        ts = datetime.datetime.fromisoformat(line.split()[0].rstrip("Z")).replace(tzinfo=datetime.timezone.utc).timestamp()
        if ts >= t0:
            worst = max(worst, ts - t0)
            break
print(round(worst * 1000))
EOF
)
    sleep 1
    local b1 c1 gc1
    b1=$(tx_bytes cg0); c1=$(ctl_cpu); gc1=$(guard_cpu)
    for ((g = 0; g < guards; g++)); do
        list_web "$g" "$WORK/guard-$tag$g/sg_web.txt"
        grep -qw "$newcomer" "$WORK/guard-$tag$g/sg_web.txt" ||
            fail_with_log "guard $g's sg_web lacks $newcomer" "$WORK/guard-$tag$g/guard.log"
    done
    local errors_after agent_errors
    errors_after=$(errors)
    agent_errors=$(cat "$WORK"/guard-"$tag"*/guard.log | grep -cE "HTTP 50[0-9]| 50[0-9] " || true)
    for g in "${guard_pids[@]}"; do stop "$g"; done
    result="one new member ($newcomer): $(((b1 - b0) / guards)) bytes per guard, controller CPU $(python3 -c "print(round(($c1 - $c0) / $hz * 1000))") ms, all $guards guards' CPU $(python3 -c "print(round(($gc1 - $gc0) / $hz * 1000))") ms, every guard applied it within $converged ms; controller 503/500s $((errors_after - errors_before)) (whole run $errors_after), in the guards' logs $agent_errors"
}

CTLS=("$CTL")
CTL_LOGS=("$WORK/controller.log")
watch_report="skipped"
if ((watches > 0)) && [[ -x $WATCHERS ]] && api GET "/v1/hosts/hv0/changes" >/dev/null 2>&1; then
    say "3. $watches idle watches over $hosts hosts"
    idle_watches 8640
    watch_report=$result
    note "$watch_report"
fi

# ---------------------------------------------------------------------------------------------
group_report="skipped"
if ((guards > 0)); then
    say "4. $members members of one self-referencing group over $group_hosts hosts, $guards guards"
    group_change grp 2001:db8:300::/64 sg 8640
    group_report=$result
    note "$group_report"
fi

# ---------------------------------------------------------------------------------------------
maria_watch_report="skipped"
maria_group_report="skipped"
if ((mariadb)); then
    say "5. MariaDB with 4 controllers: parts 3 and 4 spread over them"
    # Its own directory: PostgreSQL (db.sh starts both) runs as postgres, which cannot enter $WORK.
    DBDIR=$(mktemp -d /tmp/flat6-bench-db.XXXXXX)
    ip netns exec "$NS_C" "$ROOT/netns-scripts/db.sh" start "$DBDIR" >"$WORK/db.log" 2>&1 ||
        fail_with_log "the database servers did not start" "$WORK/db.log"
    mysql_url=$(ip netns exec "$NS_C" "$ROOT/netns-scripts/db.sh" env "$DBDIR" | sed -n 's/^export FLAT6_TEST_MYSQL_URL=//p')
    CTLS=()
    CTL_LOGS=()
    for k in 1 2 3 4; do
        sed -e "s|^listen = .*|listen = \"[::]:865$k\"|" -e "s|^database = .*|database = \"$mysql_url\"|" \
            "$WORK/controller.toml" >"$WORK/controller-m$k.toml"
        ip netns exec "$NS_C" "$FLAT6" controller --config "$WORK/controller-m$k.toml" </dev/null \
            >"$WORK/controller-m$k.log" 2>&1 &
        CTLS+=("$!")
        started+=("$!")
        CTL_LOGS+=("$WORK/controller-m$k.log")
        for ((i = 0; i < 300; i++)); do
            kill -0 "${CTLS[-1]}" 2>/dev/null || fail_with_log "controller m$k exited" "$WORK/controller-m$k.log"
            ip netns exec "$NS_C" curl -sf -g --max-time 2 "http://[::1]:865$k/healthz" >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
    if ((guards > 0)); then
        group_change mgrp 2001:db8:400::/64 mg 8651 8652 8653 8654
        maria_group_report=$result
        note "group change: $maria_group_report"
    fi
    if ((watches > 0)); then
        idle_watches 8651 8652 8653 8654
        maria_watch_report=$result
        note "idle watches: $maria_watch_report"
    fi
fi

report=$(cat <<EOF
### bench-scale ($(date -u +%F), $("$FLAT6" --version 2>/dev/null | head -n 1))

| what | value |
| --- | --- |
| fill: instances created (errors) | $((ok_a + ok_b)) of $instances ($((err_a + err_b))) |
| fill: overall rate | $overall/s |
| fill: rate of the last 2,000 | $last/s |
| one change at that size: bytes to the VR | $per_bytes |
| one change: VR CPU | $per_vr ms |
| one change: controller CPU | $per_ctl ms |
| one change: request to VR serving it, p50 / p99 | $p50 / $p99 ms |
| idle watches | $watch_report |
| group change | $group_report |
| MariaDB, 4 controllers: group change | $maria_group_report |
| MariaDB, 4 controllers: idle watches | $maria_watch_report |
EOF
)
echo "$report"
if [[ -n $results_file ]]; then
    echo "$report" >"$results_file"
fi
kill -0 "$CTL" 2>/dev/null || fail_with_log "the controller died during the benchmark" "$WORK/controller.log"
kill -0 "$VR" 2>/dev/null || fail_with_log "the VR died during the benchmark" "$WORK/vr.log"
