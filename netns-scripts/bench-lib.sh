# Helpers shared by the bench-*.sh scripts; sourced, not run. The caller sets `prog` (its name,
# for messages) and keeps `started` (the pids of the processes it started and has not reaped).

die() {
    echo "$prog: error: $*" >&2
    exit 1
}

whole() { # NAME VALUE MIN MAX
    [[ $2 =~ ^[0-9]+$ ]] && (($2 >= $3 && $2 <= $4)) || die "$1 must be a whole number from $3 to $4, not '$2'"
}

say() { printf '== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }

# Stop a process we started (SIGTERM, then SIGKILL after 5 s) and reap it.
stop() { # PID
    local pid=$1 i keep=()
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for i in "${started[@]}"; do
        [[ $i == "$pid" ]] || keep+=("$i")
    done
    started=("${keep[@]}")
}

# Stop every process we started: SIGTERM to all first, then as `stop` for each.
stop_all() {
    local pid
    for pid in "${started[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${started[@]}"; do
        stop "$pid"
    done
}

fail_with_log() { # MESSAGE LOGFILE
    echo "$prog: error: $1; last lines of $2:" >&2
    tail -n 15 "$2" | sed 's/^/    /' >&2
    exit 1
}

# Percentage of CPU time spent idle over the next second, all CPUs together.
cpu_idle_percent() {
    local a b
    read -r -a a < <(head -n 1 /proc/stat)
    sleep 1
    read -r -a b < <(head -n 1 /proc/stat)
    awk -v a="${a[*]:1:8}" -v b="${b[*]:1:8}" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (k = 1; k <= n; k++) total += y[k] - x[k]
        idle = (y[4] - x[4]) + (y[5] - x[5])
        printf "%d", (total > 0 ? 100 * idle / total : 0)
    }'
}
