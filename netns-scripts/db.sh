#!/usr/bin/env bash
# Private MariaDB and PostgreSQL servers for flat6's store tests, as root, never the system instances.
#
#   netns-scripts/db.sh start DIR       init (first time) and start both servers, data under DIR
#   netns-scripts/db.sh env DIR         print the exports the tests read:
#                                         FLAT6_TEST_MYSQL_URL, FLAT6_TEST_POSTGRES_URL, FLAT6_TEST_DB_DIR
#   netns-scripts/db.sh stop DIR        stop both (by pid) and remove DIR
#   netns-scripts/db.sh stop-mysql DIR | start-mysql DIR          outage simulation: same DIR, same port
#   netns-scripts/db.sh stop-postgres DIR | start-postgres DIR    the same for PostgreSQL
#
# Typical use:
#   dir=$(mktemp -d /tmp/flat6-db-XXXXXX)
#   netns-scripts/db.sh start "$dir" && eval "$(netns-scripts/db.sh env "$dir")"
#   cargo test --lib controller::store
#   netns-scripts/db.sh stop "$dir"
#
# Both servers listen on 127.0.0.1 only, on free high ports chosen at the first start and kept in
# DIR, plus unix sockets inside DIR. Nothing here touches systemd, /etc or /var/lib. The data is
# disposable, so durability settings are relaxed for speed. Readiness is polled, never slept for.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin # /usr/local/bin/postgres may be something else: use Debian's.
MARKER=.flat6-test-databases      # `stop` removes only a DIR that carries this file.
WAIT_SECONDS=60

usage() {
  echo "usage: $0 start|stop|env|start-mysql|stop-mysql|start-postgres|stop-postgres DIR" >&2
  exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
dir=$2
case "$dir" in
  /*) ;;
  *) dir="$(pwd)/$dir" ;;
esac
dir=${dir%/}
[ -n "$dir" ] && [ "$dir" != / ] || { echo "db.sh: refusing DIR '$2'" >&2; exit 2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "db.sh: run as root (MariaDB runs as root here, PostgreSQL as the postgres user)" >&2
    exit 2
  fi
}

# A TCP port nobody listens on, 20000-60999.
free_port() {
  local port tries=0
  while [ $tries -lt 200 ]; do
    port=$((20000 + RANDOM % 41000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      if ! command -v ss >/dev/null 2>&1 || [ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]; then
        echo "$port"
        return 0
      fi
    fi
    tries=$((tries + 1))
  done
  echo "db.sh: no free port found" >&2
  return 1
}

port_of() { # name → the port chosen at the first start, chosen now if there is none
  local file="$dir/$1.port"
  [ -s "$file" ] || free_port >"$file"
  cat "$file"
}

alive() { [ -s "$1" ] && kill -0 "$(head -n1 "$1")" 2>/dev/null; }

# Stop the process whose pid is the first line of $1 with signal $2 and wait until it is gone.
stop_pid() {
  local pidfile=$1 sig=$2 pid i
  [ -s "$pidfile" ] || return 0
  pid=$(head -n1 "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < WAIT_SECONDS * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "db.sh: pid $pid did not stop on SIG$sig; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

prepare_dir() {
  mkdir -p "$dir"
  touch "$dir/$MARKER"
  chmod 755 "$dir" # the postgres user must reach its socket and data below
}

# ---------------------------------------------------------------- MariaDB
mysql_args() {
  echo --no-defaults --user=root --datadir="$dir/mysql" --socket="$dir/mysql.sock" \
    --port="$(port_of mysql)" --bind-address=127.0.0.1 --skip-networking=0 \
    --pid-file="$dir/mysql.pid" --log-error="$dir/mysql.log" --skip-log-bin \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_bin \
    --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=2 --max-connections=300
}

start_mysql() {
  need_root
  prepare_dir
  if alive "$dir/mysql.pid"; then
    echo "db.sh: MariaDB already running (pid $(head -n1 "$dir/mysql.pid"))" >&2
    return 0
  fi
  local fresh=0
  if [ ! -d "$dir/mysql/mysql" ]; then
    fresh=1
    mkdir -p "$dir/mysql"
    mariadb-install-db --no-defaults --user=root --datadir="$dir/mysql" \
      --auth-root-authentication-method=socket --skip-test-db >"$dir/mysql-install.log" 2>&1 || {
      cat "$dir/mysql-install.log" >&2
      return 1
    }
  fi
  # shellcheck disable=SC2046 # the arguments contain no spaces: $dir is checked below
  setsid mariadbd $(mysql_args) </dev/null >>"$dir/mysql.log" 2>&1 &
  local i
  for ((i = 0; i < WAIT_SECONDS * 10; i++)); do
    if mysqladmin --no-defaults --socket="$dir/mysql.sock" -uroot ping >/dev/null 2>&1; then
      break
    fi
    sleep 0.1
  done
  mysqladmin --no-defaults --socket="$dir/mysql.sock" -uroot ping >/dev/null 2>&1 || {
    echo "db.sh: MariaDB did not come up; its log:" >&2
    tail -n 30 "$dir/mysql.log" >&2
    return 1
  }
  if [ $fresh = 1 ]; then
    mariadb --no-defaults --socket="$dir/mysql.sock" -uroot <<'SQL'
CREATE DATABASE IF NOT EXISTS flat6 CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER IF NOT EXISTS 'flat6'@'127.0.0.1' IDENTIFIED BY 'flat6';
-- All databases: each test makes a fresh database of its own.
GRANT ALL PRIVILEGES ON *.* TO 'flat6'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
  fi
  echo "db.sh: MariaDB on 127.0.0.1:$(port_of mysql) (pid $(head -n1 "$dir/mysql.pid"))" >&2
}

stop_mysql() {
  need_root
  stop_pid "$dir/mysql.pid" TERM
}

# ---------------------------------------------------------------- PostgreSQL
pg() { runuser -u postgres -- "$PG_BIN/$1" "${@:2}"; }

start_postgres() {
  need_root
  prepare_dir
  id postgres >/dev/null 2>&1 || {
    echo "db.sh: no postgres user: apt-get install postgresql" >&2
    return 1
  }
  if alive "$dir/pg/data/postmaster.pid"; then
    echo "db.sh: PostgreSQL already running" >&2
    return 0
  fi
  local fresh=0 port
  port=$(port_of pg)
  if [ ! -s "$dir/pg/data/PG_VERSION" ]; then
    fresh=1
    mkdir -p "$dir/pg"
    chown postgres: "$dir/pg"
    chmod 700 "$dir/pg"
    pg initdb -D "$dir/pg/data" -U postgres -E UTF8 --locale=C.UTF-8 --no-sync \
      --auth-local=trust --auth-host=scram-sha-256 >"$dir/pg-initdb.log" 2>&1 || {
      cat "$dir/pg-initdb.log" >&2
      return 1
    }
  fi
  pg pg_ctl -D "$dir/pg/data" -l "$dir/pg/log" -w -t "$WAIT_SECONDS" \
    -o "-p $port -k $dir/pg -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || {
    echo "db.sh: PostgreSQL did not come up; its log:" >&2
    tail -n 30 "$dir/pg/log" >&2
    return 1
  }
  local i
  for ((i = 0; i < WAIT_SECONDS * 10; i++)); do
    pg pg_isready -q -h "$dir/pg" -p "$port" && break
    sleep 0.1
  done
  pg pg_isready -q -h "$dir/pg" -p "$port" || {
    echo "db.sh: PostgreSQL is not ready" >&2
    return 1
  }
  if [ $fresh = 1 ]; then
    pg psql -q -h "$dir/pg" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
      -c "CREATE ROLE flat6 LOGIN PASSWORD 'flat6' CREATEDB" \
      -c "CREATE DATABASE flat6 OWNER flat6"
  fi
  echo "db.sh: PostgreSQL on 127.0.0.1:$port (pid $(head -n1 "$dir/pg/data/postmaster.pid"))" >&2
}

stop_postgres() {
  need_root
  stop_pid "$dir/pg/data/postmaster.pid" INT # SIGINT: PostgreSQL's fast shutdown
}

print_env() {
  [ -s "$dir/mysql.port" ] && [ -s "$dir/pg.port" ] || {
    echo "db.sh: nothing started in $dir" >&2
    exit 1
  }
  echo "export FLAT6_TEST_MYSQL_URL=mysql://flat6:flat6@127.0.0.1:$(cat "$dir/mysql.port")/flat6"
  echo "export FLAT6_TEST_POSTGRES_URL=postgres://flat6:flat6@127.0.0.1:$(cat "$dir/pg.port")/flat6"
  echo "export FLAT6_TEST_DB_DIR=$dir"
}

case "$dir" in
  *[[:space:]]*) echo "db.sh: DIR must not contain spaces" >&2; exit 2 ;;
esac

case "$cmd" in
  start)
    start_mysql
    start_postgres || { stop_mysql; exit 1; }
    ;;
  stop)
    rc=0
    stop_mysql || rc=1
    stop_postgres || rc=1
    if [ -e "$dir/$MARKER" ]; then
      rm -rf "$dir"
    elif [ -e "$dir" ]; then
      echo "db.sh: $dir was not made by db.sh start; not removing it" >&2
      rc=1
    fi
    exit $rc
    ;;
  env) print_env ;;
  start-mysql) start_mysql ;;
  stop-mysql) stop_mysql ;;
  start-postgres) start_postgres ;;
  stop-postgres) stop_postgres ;;
  *) usage ;;
esac
