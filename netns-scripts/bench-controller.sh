#!/usr/bin/env bash
# Controller benchmark: allocations per second on SQLite, MariaDB and PostgreSQL with 1 and 4
# clients (and 4 controllers sharing one MariaDB or PostgreSQL database), the time from a 201 to
# the new document at a waiting watch, and in the same run the raw database's rate of one-row
# INSERT transactions as the peer to compare against. Every figure comes from this run.
#
#   sudo netns-scripts/bench-controller.sh [--requests N] [--per-instance N] [--samples N]
#                                          [--databases "..."] [--wait-idle S] [--deadline S]
#                                          [--results FILE] [--no-baseline] [--no-one-instance]
#                                          [--no-build]
#
# Everything is on loopback: the controllers listen on [::1] (free ports), MariaDB and PostgreSQL
# are private servers started by netns-scripts/db.sh under this run's temporary directory on
# 127.0.0.1 (never the system instances), SQLite is a file in that directory. Every process
# started here is stopped by pid, and the directory removed, on exit, also on error or Ctrl-C.
# The allocation load comes from examples/controller_load.rs (compiled, one thread and one
# keep-alive connection per client); the watch latency, the SQLite baseline and the report from
# netns-scripts/bench-controller-load.py (Python standard library only). See docs/benchmarks.md.
# Binaries are built into (and taken from) $CARGO_TARGET_DIR, default target/.
set -Eeuo pipefail

prog=$(basename "$0")
cd "$(dirname "$0")/.."
readonly ROOT=$PWD
# shellcheck source=netns-scripts/bench-lib.sh
source "$ROOT/netns-scripts/bench-lib.sh"
readonly LOAD=$ROOT/netns-scripts/bench-controller-load.py
readonly DBSH=$ROOT/netns-scripts/db.sh
readonly READY_TIMEOUT=60

requests=4000
per_instance=4
one_instance=1
samples=200
databases="sqlite mariadb postgresql"
wait_idle=20
deadline=600
results_file=
baseline=1
build=1

usage() {
    cat <<EOF
usage: $prog [options]

  --requests N        allocations per run, split evenly between the clients (default $requests)
  --per-instance N    "address" runs: addresses added to each instance (default $per_instance)
  --samples N         watch-latency samples per case (default $samples)
  --databases "..."   any of: sqlite mariadb postgresql (default "$databases")
  --wait-idle S       before each run wait up to S seconds for the CPUs to be at least 80% idle
                      (default $wait_idle, 0 = don't wait); the run goes ahead anyway and the
                      report shows how much CPU other processes took during it
  --deadline S        limit for any one run (default $deadline s)
  --results FILE      also write the report (Markdown) to FILE, and the raw results (one JSON
                      object per run) to FILE.jsonl
  --no-baseline       skip the raw-database INSERT baseline
  --no-one-instance   skip the SQLite run that adds every address to one instance
  --no-build          use the existing release binaries (flat6 and examples/controller_load
                      under \$CARGO_TARGET_DIR, default target/) instead of running cargo build

Runs, per database: "address" = POST /v1/pods/P/instances/I/addresses (one more address for an
existing instance: each client makes its instances before the clock starts and adds
--per-instance addresses to each, one after the other); "new instance" = POST
/v1/pods/P/instances (its /64 in a /48 pod and its first address; with a host and a port). Each
with 1 controller and 1 client, 1 controller and 4 clients, and on MariaDB and PostgreSQL 4
controllers (4 processes on the same database) with one client each. Every run uses a new pod.
On SQLite also "address, all to 1 instance": one client adds every address to one instance.
Watch latency: 1 controller (write and watch on it), and on MariaDB and PostgreSQL also the watch
on a second controller, which only learns of the change from its 100 ms database poll.
The allocation load generator is examples/controller_load.rs (built here with cargo build
--release --example controller_load); the watch latency, the SQLite baseline and the report use
netns-scripts/bench-controller-load.py.
Needs root (db.sh), python3 >= 3.8, curl, MariaDB 10.11 and PostgreSQL 15 server packages.
EOF
}

while (($#)); do
    case $1 in
        --requests) requests=${2-}; shift 2 || die "--requests needs a value" ;;
        --per-instance) per_instance=${2-}; shift 2 || die "--per-instance needs a value" ;;
        --samples) samples=${2-}; shift 2 || die "--samples needs a value" ;;
        --databases) databases=${2-}; shift 2 || die "--databases needs a value" ;;
        --wait-idle) wait_idle=${2-}; shift 2 || die "--wait-idle needs a value" ;;
        --deadline) deadline=${2-}; shift 2 || die "--deadline needs a value" ;;
        --results) results_file=${2-}; shift 2 || die "--results needs a value" ;;
        --no-baseline) baseline=0; shift ;;
        --no-one-instance) one_instance=0; shift ;;
        --no-build) build=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
whole --requests "$requests" 4 1000000
whole --samples "$samples" 1 100000
whole --per-instance "$per_instance" 1 1000000
whole --wait-idle "$wait_idle" 0 3600
whole --deadline "$deadline" 10 86400
shared=0
for db in $databases; do
    case $db in
        sqlite) ;;
        mariadb | postgresql) shared=1 ;;
        *) die "unknown database '$db' in --databases (sqlite, mariadb, postgresql)" ;;
    esac
done
[[ -n ${databases// /} ]] || die "--databases is empty"
if [[ -n $results_file ]]; then
    : >"$results_file" || die "cannot write $results_file"
    results_file=$(realpath "$results_file")
fi

needed=(python3 curl awk getconf timeout)
((shared)) && needed+=(mariadb mariadbd mariadb-install-db mysqladmin psql runuser)
for cmd in "${needed[@]}"; do
    command -v "$cmd" >/dev/null || die "$cmd is not installed (Debian: python3 curl gawk coreutils mariadb-server postgresql)"
done
if ((shared)); then
    [[ $(id -u) -eq 0 ]] || die "must run as root (db.sh starts private MariaDB/PostgreSQL servers): sudo $0"
fi

WORK=$(mktemp -d /tmp/flat6-bench-controller.XXXXXX)
readonly WORK
readonly DBDIR=$WORK/db
chmod 755 "$WORK" # the postgres user must reach its data under $DBDIR
started=()        # pids of background processes this script started and has not reaped yet
db_started=0

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM ERR
    stop_all
    if ((db_started)); then
        "$DBSH" stop "$DBDIR" >/dev/null 2>&1 || echo "$prog: db.sh stop $DBDIR failed" >&2
    fi
    if ((rc != 0)); then
        echo "$prog: FAILED (exit $rc)" >&2
        for i in "$WORK"/*.log; do
            [[ -s $i ]] || continue
            echo "--- last lines of $(basename "$i"):" >&2
            tail -n 8 "$i" | sed 's/^/    /' >&2
        done
    fi
    rm -rf "${WORK:?}"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "$prog: command failed at line $LINENO: $BASH_COMMAND" >&2' ERR

# Wait (bounded by --wait-idle) for a quiet machine; sets $idle to the last reading.
settle() {
    local waited=0
    idle=$(cpu_idle_percent)
    while ((idle < 80 && waited < wait_idle)); do
        ((waited > 0)) || note "waiting up to ${wait_idle}s for the CPUs to be 80% idle (now ${idle}%)"
        idle=$(cpu_idle_percent)
        waited=$((waited + 1))
    done
}

# The report's raw material: one JSON object per line.
readonly RESULTS=$WORK/results.jsonl
: >"$RESULTS"
add_result() { # JSON FIELDS-TO-ADD (a JSON object body without braces)
    python3 -c 'import json, sys; d = json.loads(sys.argv[1]); d.update(json.loads("{" + sys.argv[2] + "}")); print(json.dumps(d))' \
        "$1" "$2" >>"$RESULTS"
}

# ---------------------------------------------------------------------------------------------
# Build

for dir in "$HOME/.cargo/bin" /root/.cargo/bin ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin"}; do
    if ! command -v cargo >/dev/null 2>&1 && [[ -x $dir/cargo ]]; then
        export PATH="$dir:$PATH"
    fi
done
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
FLAT6=$TARGET_DIR/release/flat6
LOADGEN=$TARGET_DIR/release/examples/controller_load
if ((build)); then
    command -v cargo >/dev/null || die "cargo not found; install a Rust toolchain or pass --no-build"
    say "cargo build --release --locked --bin flat6 --example controller_load (log: build.log)"
    timeout "$deadline" cargo build --release --locked --bin flat6 --example controller_load \
        >"$WORK/build.log" 2>&1 ||
        fail_with_log "cargo build --release failed (pass --no-build to use existing binaries)" "$WORK/build.log"
fi
[[ -x $FLAT6 ]] || die "$FLAT6 does not exist; build it with cargo build --release"
[[ -x $LOADGEN ]] || die "$LOADGEN does not exist; build it with cargo build --release --example controller_load"

# Tokens (at least 16 characters) and the curl header file that carries the admin one.
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/admin.token"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/agent.token"
chmod 600 "$WORK/admin.token" "$WORK/agent.token"
printf 'Authorization: Bearer %s\n' "$(cat "$WORK/admin.token")" >"$WORK/admin.header"
chmod 600 "$WORK/admin.header"

free_port() {
    python3 -c 'import socket; s = socket.socket(socket.AF_INET6); s.bind(("::1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------------------------
# Controllers

declare -A ctl_url ctl_pid
controllers_running=()

start_controller() { # NAME DATABASE-URL
    local name=$1 database=$2 port pid i
    port=$(free_port)
    cat >"$WORK/$name.toml" <<EOF
role = "controller"
listen = "[::1]:$port"
database = "$database"
admin_token_file = "$WORK/admin.token"
agent_token_file = "$WORK/agent.token"
EOF
    "$FLAT6" controller --config "$WORK/$name.toml" </dev/null >"$WORK/$name.log" 2>&1 &
    pid=$!
    started+=("$pid")
    ctl_pid[$name]=$pid
    ctl_url[$name]="http://[::1]:$port"
    controllers_running+=("$name")
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || fail_with_log "controller $name exited at start" "$WORK/$name.log"
        if curl -sf -g --max-time 2 "${ctl_url[$name]}/healthz" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    fail_with_log "controller $name not ready after ${READY_TIMEOUT}s" "$WORK/$name.log"
}

stop_controllers() {
    local name
    for name in "${controllers_running[@]}"; do
        kill -0 "${ctl_pid[$name]}" 2>/dev/null || fail_with_log "controller $name died during the benchmark" "$WORK/$name.log"
        stop "${ctl_pid[$name]}"
    done
    controllers_running=()
}

# POST a new per-instance (/64) pod with the /48 number N.
pod_number=0
new_pod() { # NAME → prints nothing; fails loudly
    local name=$1 code
    pod_number=$((pod_number + 1))
    code=$(curl -sS -g --max-time 10 -o "$WORK/pod.json" -w '%{http_code}' -X POST \
        -H @"$WORK/admin.header" -H 'Content-Type: application/json' \
        --data "{\"name\": \"$name\", \"prefix\": \"2001:db8:$(printf '%x' "$pod_number")::/48\"}" \
        "${ctl_url[c1]}/v1/pods")
    [[ $code == 201 ]] || die "create pod $name: HTTP $code $(cat "$WORK/pod.json")"
}

metric() { # CONTROLLER NAME
    curl -sf -g --max-time 5 "${ctl_url[$1]}/metrics" | awk -v m="$2" '$1 == m { print $2 }'
}

# ---------------------------------------------------------------------------------------------
# Runs

run=0
alloc_run() { # DB KIND CONTROLLERS CLIENTS [ADDRESSES-PER-INSTANCE]
    local db=$1 kind=$2 nctl=$3 clients=$4 per=${5:-$per_instance} pod urls=() cpu=() k out rc=0 name conflicts=0 c what
    run=$((run + 1))
    pod=b$run-$db-$kind
    new_pod "$pod"
    for ((k = 1; k <= nctl; k++)); do
        urls+=(--url "${ctl_url[c$k]}")
        cpu+=(--cpu "controllers:${ctl_pid[c$k]}")
    done
    case $db in
        mariadb) cpu+=(--cpu "mariadb:$(head -n1 "$DBDIR/mysql.pid")") ;;
        postgresql) cpu+=(--cpu "postgresql:$(head -n1 "$DBDIR/pg/data/postmaster.pid"):tree") ;;
    esac
    for c in "${controllers_running[@]}"; do
        conflicts=$((conflicts - $(metric "$c" flat6_controller_allocation_conflicts_retried_total)))
    done
    settle
    what=$kind
    [[ $kind == instance ]] || what="address ($per per instance, the instances made before the clock starts)"
    say "$db: $requests x $what, $nctl controller(s), $clients client(s) (CPUs ${idle}% idle before)"
    out=$(timeout -k 5 $((2 * deadline + 90)) "$LOADGEN" "${urls[@]}" \
        --admin-token-file "$WORK/admin.token" --pod "$pod" --kind "$kind" --clients "$clients" \
        --requests "$requests" --per-instance "$per" --tag "r$run" --deadline "$deadline" "${cpu[@]}") || rc=$?
    for c in "${controllers_running[@]}"; do
        conflicts=$((conflicts + $(metric "$c" flat6_controller_allocation_conflicts_retried_total)))
    done
    [[ -n $out ]] || die "the load generator printed nothing (exit $rc)"
    note "$out"
    add_result "$out" "\"db\": \"$db\", \"test\": \"alloc\", \"idle_before\": $idle, \"conflicts_retried\": $conflicts"
    if ((rc != 0)); then
        echo "$prog: errors in this run (see above); controller logs:" >&2
        for name in "${controllers_running[@]}"; do
            grep -E 'WARN|ERROR' "$WORK/$name.log" | tail -n 5 | sed "s/^/    $name: /" >&2 || true
        done
        failures=$((failures + 1))
    fi
}

watch_run() { # DB WHERE WRITER WATCHER
    local db=$1 where=$2 writer=$3 watcher=$4 pod out rc=0
    run=$((run + 1))
    pod=b$run-$db-watch
    new_pod "$pod"
    settle
    say "$db: watch latency, $samples samples, watch on $where (CPUs ${idle}% idle before)"
    out=$(timeout -k 5 $((deadline + 90)) python3 "$LOAD" watch --writer "${ctl_url[$writer]}" \
        --watcher "${ctl_url[$watcher]}" --admin-token-file "$WORK/admin.token" \
        --agent-token-file "$WORK/agent.token" --pod "$pod" --samples "$samples" --tag "r$run" \
        --deadline "$deadline") || rc=$?
    [[ -n $out ]] || die "the watch load generator printed nothing (exit $rc)"
    note "$out"
    add_result "$out" "\"db\": \"$db\", \"test\": \"watch\", \"where\": \"$where\", \"idle_before\": $idle"
    ((rc == 0)) || failures=$((failures + 1))
}

# The peer: one-row INSERT transactions straight into the database, from N clients at once.
raw_run() { # DB CLIENTS
    local db=$1 clients=$2 k n t0 t1 pids=() errors=0 count rate port
    case $db in
        sqlite)
            settle
            say "sqlite: raw baseline, $requests one-row INSERT transactions from $clients thread(s)"
            out=$(timeout -k 5 "$deadline" python3 "$LOAD" sqlite --file "$WORK/raw-$clients.db" \
                --clients "$clients" --requests "$requests") || failures=$((failures + 1))
            note "$out"
            add_result "$out" "\"db\": \"sqlite\", \"test\": \"raw\""
            return
            ;;
    esac
    for ((k = 0; k < clients; k++)); do
        n=$((requests / clients + (k < requests % clients ? 1 : 0)))
        python3 "$LOAD" sql --table "raw_$clients" --rows "$n" --seed "$k" >"$WORK/raw-$db-$clients-$k.sql"
    done
    settle
    say "$db: raw baseline, $requests one-row INSERT transactions (autocommit) from $clients client process(es) (CPUs ${idle}% idle before)"
    case $db in
        mariadb)
            port=$(cat "$DBDIR/mysql.port")
            MYSQL_PWD=flat6 mariadb --no-defaults -h 127.0.0.1 -P "$port" -u flat6 flat6 -e \
                "CREATE TABLE raw_$clients (pod VARCHAR(64) NOT NULL, address VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, instance VARCHAR(64) NOT NULL, PRIMARY KEY (pod, address)) ENGINE=InnoDB"
            t0=$EPOCHREALTIME
            for ((k = 0; k < clients; k++)); do
                MYSQL_PWD=flat6 timeout -k 5 "$deadline" mariadb --no-defaults -h 127.0.0.1 -P "$port" \
                    -u flat6 flat6 <"$WORK/raw-$db-$clients-$k.sql" >>"$WORK/raw.log" 2>&1 &
                pids+=($!)
                started+=($!)
            done
            ;;
        postgresql)
            port=$(cat "$DBDIR/pg.port")
            PGPASSWORD=flat6 psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U flat6 -d flat6 -c \
                "CREATE TABLE raw_$clients (pod VARCHAR(64) NOT NULL, address VARCHAR(32) COLLATE \"C\" NOT NULL, instance VARCHAR(64) NOT NULL, PRIMARY KEY (pod, address))"
            t0=$EPOCHREALTIME
            for ((k = 0; k < clients; k++)); do
                PGPASSWORD=flat6 timeout -k 5 "$deadline" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 \
                    -p "$port" -U flat6 -d flat6 -f "$WORK/raw-$db-$clients-$k.sql" >>"$WORK/raw.log" 2>&1 &
                pids+=($!)
                started+=($!)
            done
            ;;
    esac
    for k in "${pids[@]}"; do
        wait "$k" || errors=$((errors + 1))
    done
    t1=$EPOCHREALTIME
    local keep=() p
    for p in "${started[@]}"; do
        [[ " ${pids[*]} " == *" $p "* ]] || keep+=("$p")
    done
    started=("${keep[@]}")
    case $db in
        mariadb) count=$(MYSQL_PWD=flat6 mariadb --no-defaults -h 127.0.0.1 -P "$port" -u flat6 flat6 -N -B -e "SELECT COUNT(*) FROM raw_$clients") ;;
        postgresql) count=$(PGPASSWORD=flat6 psql -X -q -t -A -h 127.0.0.1 -p "$port" -U flat6 -d flat6 -c "SELECT COUNT(*) FROM raw_$clients") ;;
    esac
    rate=$(awk -v n="$count" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }')
    errors=$((errors + requests - count))
    out="{\"clients\": $clients, \"ok\": $count, \"errors\": $errors, \"seconds\": $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'), \"per_second\": $rate}"
    note "$out"
    add_result "$out" "\"db\": \"$db\", \"test\": \"raw\""
    ((errors == 0)) || failures=$((failures + 1))
}

db_url() { # DB
    case $1 in
        sqlite) echo "sqlite://$WORK/controller.db" ;;
        mariadb) echo "mysql://flat6:flat6@127.0.0.1:$(cat "$DBDIR/mysql.port")/flat6" ;;
        postgresql) echo "postgres://flat6:flat6@127.0.0.1:$(cat "$DBDIR/pg.port")/flat6" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# Main

failures=0
say "machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr); $(python3 --version)"
say "flat6: $("$FLAT6" --version 2>/dev/null || echo "$FLAT6")"
if ((shared)); then
    say "starting private MariaDB and PostgreSQL servers (netns-scripts/db.sh start)"
    db_started=1
    timeout -k 5 300 "$DBSH" start "$DBDIR" >"$WORK/db.log" 2>&1 || fail_with_log "db.sh start failed" "$WORK/db.log"
    note "$(mariadbd --version 2>/dev/null | head -n1)"
    note "$(/usr/lib/postgresql/15/bin/postgres --version 2>/dev/null)"
fi
for db in $databases; do
    url=$(db_url "$db")
    if [[ $db == sqlite ]]; then
        start_controller c1 "$url"
        for kind in address instance; do
            alloc_run sqlite "$kind" 1 1
            alloc_run sqlite "$kind" 1 4
        done
        # What one instance with thousands of addresses costs (each request reads them all).
        if ((one_instance)); then alloc_run sqlite address 1 1 "$requests"; fi
        watch_run sqlite "the writing controller" c1 c1
    else
        # One first, so the schema exists; then three more on the same database.
        start_controller c1 "$url"
        for k in 2 3 4; do start_controller "c$k" "$url"; done
        for kind in address instance; do
            alloc_run "$db" "$kind" 1 1
            alloc_run "$db" "$kind" 1 4
            alloc_run "$db" "$kind" 4 4
        done
        watch_run "$db" "the writing controller" c1 c1
        watch_run "$db" "another controller" c1 c2
    fi
    for name in "${controllers_running[@]}"; do
        if grep -qE 'ERROR|WARN' "$WORK/$name.log"; then
            note "warnings/errors in the log of $db controller $name:"
            grep -E 'ERROR|WARN' "$WORK/$name.log" | tail -n 5 | sed 's/^/      /'
        fi
    done
    stop_controllers
    if ((baseline)); then
        raw_run "$db" 1
        raw_run "$db" 4
    fi
done

say "report"
python3 "$LOAD" report --file "$RESULTS" | tee -a "${results_file:-/dev/null}"
[[ -z $results_file ]] || cp "$RESULTS" "$results_file.jsonl"
if ((failures)); then
    die "$failures run(s) had errors (see above)"
fi
