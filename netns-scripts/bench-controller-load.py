#!/usr/bin/env python3
"""Load generator for netns-scripts/bench-controller.sh: the standard library only.

bench-controller.sh runs the allocation rows with examples/controller_load.rs instead, a compiled
port of the alloc mode below with the same arguments and output (this one costs 0.23-0.7 ms of CPU
per request itself); the alloc mode stays here for comparison.

  alloc   N client processes, each with one keep-alive HTTP/1.1 connection to one controller
          (the --url values in turn), make a fixed number of allocations between them:
            --kind address   POST /v1/pods/{pod}/instances/{name}/addresses, one address more for
                             an existing instance: each client makes its instances before the
                             clock starts and gives each --per-instance (default 4) of them
            --kind instance  POST /v1/pods/{pod}/instances, a new instance (its /64 and first
                             address) per request, with a host and a port
          Prints one JSON object: requests/s over the timed part, errors, duplicate addresses,
          per-request latency percentiles and the CPU seconds of the given processes.
  watch   One process: a thread long-polls GET /v1/pods/{pod}/reservations?after_revision=N&wait=30
          with the agent token on --watcher; once that controller's /metrics shows the watch
          waiting, and after a random pause of 0-100 ms (so the write is not in step with the
          watch's 100 ms database poll), the main thread creates an instance on --writer. The
          sample is from the arrival of the 201 to the arrival of the watch's answer, both on
          time.monotonic() in this process. Prints one JSON object with the samples' percentiles.
  sql     One-row INSERT statements for the MariaDB/PostgreSQL baseline (run by their CLIs).
  report  Markdown tables and the target verdicts from the collected JSON lines.
  sqlite  The raw-database baseline for SQLite: one-row INSERT transactions (BEGIN IMMEDIATE ...
          COMMIT, WAL, synchronous=NORMAL as the controller sets them) from N threads, each with
          its own connection.

Every request has a timeout and every mode a deadline (--deadline seconds); nothing here retries
an allocation: a failed request is counted and the run goes on.
"""

import argparse
import http.client
import json
import math
import multiprocessing
import os
import random
import resource
import socket
import sqlite3
import sys
import threading
import time
import urllib.parse

REQUEST_TIMEOUT = 30.0


def parse_url(url):
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname or not u.port:
        sys.exit("bench-controller-load: %r is not http://HOST:PORT" % url)
    return u.hostname, u.port


def read_token(path):
    with open(path) as f:
        return f.read().strip()


class Api:
    """One keep-alive connection; reconnects after a transport error."""

    def __init__(self, url, token):
        self.host, self.port = parse_url(url)
        self.headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
        self.conn = None

    def _connect(self):
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT)
        self.conn.connect()
        # Small requests: don't let Nagle hold a segment back.
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, method, path, body=None):
        """Send a request; return (status, arrival time of the status line, body bytes)."""
        if self.conn is None:
            self._connect()
        data = None if body is None else json.dumps(body).encode()
        try:
            self.conn.request(method, path, body=data, headers=self.headers)
            resp = self.conn.getresponse()
            arrived = time.monotonic()
            payload = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        return resp.status, arrived, payload

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def mac(n):
    return "02:f6:" + ":".join("%02x" % ((n >> s) & 255) for s in (24, 16, 8, 0))


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[k - 1]


def proc_cpu_seconds(pid, tree):
    """utime+stime of a process (all its threads), and of its direct children when tree is set
    (PostgreSQL's backends are children of the postmaster)."""
    tick = os.sysconf("SC_CLK_TCK")

    def one(p):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick, int(fields[1])
        except (OSError, IndexError, ValueError):
            return 0.0, -1

    total = one(pid)[0]
    if tree:
        for name in os.listdir("/proc"):
            if name.isdigit():
                cpu, ppid = one(int(name))
                if ppid == pid:
                    total += cpu
    return total


def machine_busy_seconds():
    """CPU time spent by everything on the machine (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8)) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(specs):
    out = {"machine": machine_busy_seconds()}
    for spec in specs:
        label, pid, tree = spec
        out[label] = out.get(label, 0.0) + proc_cpu_seconds(pid, tree)
    return out


def parse_cpu_specs(values):
    specs = []
    for v in values or []:
        parts = v.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            sys.exit("bench-controller-load: --cpu LABEL:PID[:tree], not %r" % v)
        specs.append((parts[0], int(parts[1]), len(parts) == 3 and parts[2] == "tree"))
    return specs


# ----------------------------------------------------------------------------- alloc


def alloc_worker(k, args, barrier, results):
    url = args.url[k % len(args.url)]
    api = Api(url, read_token(args.admin_token_file))
    n = args.requests // args.clients + (1 if k < args.requests % args.clients else 0)
    host = "%s-hv%d" % (args.tag, k)
    errors = []
    addresses = []
    latencies = []
    ok = 0
    # "address": the requests go to instances made now, before the clock starts: the first
    # per_instance requests to the first, and so on; none ends with more than per_instance + 1.
    owners = []
    try:
        if args.kind == "address":
            for j in range((n + args.per_instance - 1) // args.per_instance):
                own = "%s-c%d-%d" % (args.tag, k, j)
                status, _, body = api.send(
                    "POST",
                    "/v1/pods/%s/instances" % args.pod,
                    {"name": own, "mac": mac(((k + 1) << 24) + j), "host": host, "port": "vp%d" % j},
                )
                if status != 201:
                    raise RuntimeError("setup: create %s: %d %s" % (own, status, body[:200]))
                addresses.append(json.loads(body)["addresses"][0])
                owners.append(own)
    except Exception as exc:  # reported, and this client does no timed work
        results.put({"k": k, "setup_error": str(exc)})
        barrier.abort()
        return
    try:
        barrier.wait(timeout=args.deadline)
    except threading.BrokenBarrierError:
        results.put({"k": k, "setup_error": "another client failed its setup"})
        return
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    deadline = start + args.deadline
    for i in range(n):
        if time.monotonic() > deadline:
            errors.append("deadline of %ds passed after %d requests" % (args.deadline, i))
            break
        if args.kind == "address":
            own = owners[i // args.per_instance]
            path, body = "/v1/pods/%s/instances/%s/addresses" % (args.pod, own), None
        else:
            name = "%s-c%d-%d" % (args.tag, k, i)
            path = "/v1/pods/%s/instances" % args.pod
            body = {"name": name, "mac": mac(((k + 1) << 24) + i + 1), "host": host,
                    "port": "vp%d" % (i + 1)}
        t0 = time.monotonic()
        try:
            status, _, payload = api.send("POST", path, body)
        except Exception as exc:
            errors.append("request %d: %s: %s" % (i, type(exc).__name__, exc))
            continue
        latencies.append(time.monotonic() - t0)
        if status != 201:
            errors.append("request %d: HTTP %d %s" % (i, status, payload[:200].decode(errors="replace")))
            continue
        doc = json.loads(payload)
        addresses.append(doc["address"] if args.kind == "address" else doc["addresses"][0])
        ok += 1
    end = time.monotonic()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    api.close()
    results.put({
        "k": k, "start": start, "end": end, "ok": ok,
        "errors": errors, "addresses": addresses, "latencies": latencies,
        "cpu": (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime),
    })


def run_alloc(args):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(args.clients + 1)
    results = ctx.Queue()
    specs = parse_cpu_specs(args.cpu)
    procs = [ctx.Process(target=alloc_worker, args=(k, args, barrier, results))
             for k in range(args.clients)]
    for p in procs:
        p.start()
    cpu0 = None
    try:
        barrier.wait(timeout=args.deadline)
        cpu0 = cpu_snapshot(specs)
    except threading.BrokenBarrierError:
        pass
    got = []
    give_up = time.monotonic() + 2 * args.deadline + 60
    while len(got) < args.clients and time.monotonic() < give_up:
        try:
            got.append(results.get(timeout=1))
        except Exception:
            if not any(p.is_alive() for p in procs) and results.empty():
                break
    cpu1 = cpu_snapshot(specs)
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
    out = {"kind": args.kind, "clients": args.clients, "controllers": len(args.url),
           "requests": args.requests}
    if args.kind == "address":
        out["per_instance"] = args.per_instance
    setup = [r["setup_error"] for r in got if "setup_error" in r]
    timed = [r for r in got if "setup_error" not in r]
    if setup or len(timed) != args.clients:
        out["failed"] = setup or ["only %d of %d clients reported" % (len(timed), args.clients)]
        print(json.dumps(out))
        return 1
    start = min(r["start"] for r in timed)
    end = max(r["end"] for r in timed)
    ok = sum(r["ok"] for r in timed)
    errors = [e for r in timed for e in r["errors"]]
    addresses = [a for r in timed for a in r["addresses"]]
    lat = sorted(x for r in timed for x in r["latencies"])
    wall = end - start
    out.update({
        "ok": ok,
        "errors": len(errors),
        "first_errors": errors[:5],
        "duplicates": len(addresses) - len(set(addresses)),
        "seconds": round(wall, 3),
        "per_second": round(ok / wall, 1) if wall > 0 else None,
        "latency_ms": {p: round(percentile(lat, q) * 1000, 2) if lat else None
                       for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "cpu_seconds": {"load generator": round(sum(r["cpu"] for r in timed), 2)},
    })
    if cpu0 is not None:
        for label in cpu1:
            out["cpu_seconds"][label] = round(cpu1[label] - cpu0.get(label, 0.0), 2)
        ours = sum(v for label, v in out["cpu_seconds"].items() if label != "machine")
        out["cpu_seconds"]["other processes"] = round(max(0.0, out["cpu_seconds"]["machine"] - ours), 2)
    print(json.dumps(out))
    return 0 if not errors and out["duplicates"] == 0 else 1


# ----------------------------------------------------------------------------- watch


def watch_gauge(metrics_api):
    status, _, body = metrics_api.send("GET", "/metrics")
    if status != 200:
        raise RuntimeError("GET /metrics: HTTP %d" % status)
    for line in body.decode().splitlines():
        if line.startswith("flat6_controller_watch_clients "):
            return int(line.split()[1])
    raise RuntimeError("no flat6_controller_watch_clients in /metrics")


def run_watch(args):
    admin = read_token(args.admin_token_file)
    agent_token = read_token(args.agent_token_file)
    writer = Api(args.writer, admin)
    watcher = Api(args.watcher, agent_token)
    metrics = Api(args.watcher, agent_token)
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.deadline
    base = "/v1/pods/%s/reservations" % args.pod
    status, _, body = watcher.send("GET", base)
    if status != 200:
        print(json.dumps({"failed": ["GET %s: HTTP %d %s" % (base, status, body[:200])]}))
        return 1
    revision = json.loads(body)["revision"]
    samples = []
    errors = []
    negatives = 0
    for i in range(args.samples):
        if time.monotonic() > deadline:
            errors.append("deadline of %ds passed after %d samples" % (args.deadline, i))
            break
        answer = {}

        def wait_for_change(after=revision, answer=answer):
            try:
                st, arrived, payload = watcher.send(
                    "GET", "%s?after_revision=%d&wait=30" % (base, after))
                answer.update(status=st, arrived=arrived, body=payload)
            except Exception as exc:
                answer.update(error="%s: %s" % (type(exc).__name__, exc))

        thread = threading.Thread(target=wait_for_change, daemon=True)
        thread.start()
        # Readiness: the watch is registered once the controller's gauge counts it.
        ready_by = time.monotonic() + 5
        while watch_gauge(metrics) < 1:
            if time.monotonic() > ready_by or not thread.is_alive():
                break
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.1))
        new_mac = mac(0x0A000000 + i)
        st, created, payload = writer.send(
            "POST", "/v1/pods/%s/instances" % args.pod,
            {"name": "%s-w%d" % (args.tag, i), "mac": new_mac})
        if st != 201:
            errors.append("sample %d: create: HTTP %d %s" % (i, st, payload[:200]))
        thread.join(timeout=35)
        if thread.is_alive() or "error" in answer or answer.get("status") != 200:
            errors.append("sample %d: watch: %s" % (i, answer.get("error") or answer.get("status")
                                                    or "no answer in 35 s"))
            watcher.close()
            status, _, body = watcher.send("GET", base)
            revision = json.loads(body)["revision"]
            continue
        doc = json.loads(answer["body"])
        if doc["revision"] <= revision or new_mac not in answer["body"].decode():
            errors.append("sample %d: the watch answered without the new instance "
                          "(revision %d after %d)" % (i, doc["revision"], revision))
        revision = doc["revision"]
        latency = answer["arrived"] - created
        if latency < 0:
            negatives += 1
        samples.append(latency)
    writer.close()
    watcher.close()
    metrics.close()
    s = sorted(samples)
    out = {
        "samples": len(s),
        "errors": len(errors),
        "first_errors": errors[:5],
        "answered_before_the_201": negatives,
        "ms": {p: round(percentile(s, q) * 1000, 2) if s else None
               for p, q in (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
    }
    print(json.dumps(out))
    return 0 if not errors else 1


# ----------------------------------------------------------------------------- sqlite baseline


def run_sqlite(args):
    path = args.file

    def setup(conn):
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")

    conn = sqlite3.connect(path, isolation_level=None)
    setup(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS raw (pod VARCHAR(64) NOT NULL, address VARCHAR(32) "
                 "NOT NULL, instance VARCHAR(64) NOT NULL, PRIMARY KEY (pod, address))")
    conn.close()
    barrier = threading.Barrier(args.clients + 1)
    counts = [0] * args.clients
    errors = []

    def client(k):
        c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        setup(c)
        rng = random.Random(k)
        n = args.requests // args.clients + (1 if k < args.requests % args.clients else 0)
        barrier.wait()
        for _ in range(n):
            try:
                c.execute("BEGIN IMMEDIATE")
                c.execute("INSERT INTO raw (pod, address, instance) VALUES (?, ?, ?)",
                          ("bench", "%032x" % rng.getrandbits(128), "i%d" % k))
                c.execute("COMMIT")
                counts[k] += 1
            except sqlite3.Error as exc:
                errors.append(str(exc))
                try:
                    c.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.monotonic()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    ok = sum(counts)
    print(json.dumps({"clients": args.clients, "ok": ok, "errors": len(errors),
                      "first_errors": errors[:5], "seconds": round(wall, 3),
                      "per_second": round(ok / wall, 1)}))
    return 0 if not errors else 1


# ----------------------------------------------------------------------------- report

TARGETS = {"sqlite": 2000.0, "mariadb": 1000.0}
WATCH_P99_TARGET_MS = 1000.0


def kind_label(r):
    if r["kind"] == "instance":
        return "new instance"
    if r.get("per_instance", 0) >= r["requests"]:
        return "address, all to 1 instance"
    return "address"


def run_report(args):
    """Markdown tables and the target verdicts from the JSON lines the script collected."""
    rows = []
    with open(args.file) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    allocs = [r for r in rows if r.get("test") == "alloc"]
    raws = [r for r in rows if r.get("test") == "raw"]
    watches = [r for r in rows if r.get("test") == "watch"]
    w = sys.stdout.write
    if allocs:
        w("| database | allocation | controllers | clients | requests | errors | allocations/s "
          "| latency p50 / p99 (ms) | CPU ms per allocation: controllers / database / load generator "
          "| CPU-bound ceiling, idle machine (estimate) | other processes (cores busy) "
          "| /64 collisions retried |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        for r in allocs:
            if "failed" in r:
                w("| %s | %s | %d | %d | %d | FAILED: %s | | | | | | |\n" % (
                    r["db"], r["kind"], r["controllers"], r["clients"], r["requests"],
                    "; ".join(r["failed"])[:200]))
                continue
            cpu = r.get("cpu_seconds", {})
            n = max(1, r["ok"])

            def per(label, cpu=cpu, n=n):
                v = cpu.get(label)
                return "-" if v is None else "%.2f" % (v * 1000.0 / n)

            other = cpu.get("other processes")
            ours = sum(v for k, v in cpu.items() if k not in ("machine", "other processes"))
            # CPU-bound estimate with nothing else on the machine: one client's requests run one
            # after the other (1 / CPU per request); more clients can use both cores.
            cores = min(r["clients"], os.cpu_count() or 1)
            ceiling = "%.0f/s" % (cores * n / ours) if ours > 0 else "-"
            w("| %s | %s | %d | %d | %d | %d%s | **%.0f** | %.1f / %.1f | %s / %s / %s | %s | %s | %s |\n" % (
                r["db"], kind_label(r),
                r["controllers"], r["clients"], r["ok"] + r["errors"], r["errors"],
                " (%d duplicate)" % r["duplicates"] if r["duplicates"] else "",
                r["per_second"], r["latency_ms"]["p50"], r["latency_ms"]["p99"],
                per("controllers"), per(r["db"]), per("load generator"), ceiling,
                "-" if other is None or not r["seconds"] else "%.2f" % (other / r["seconds"]),
                # Address runs: the counter also covers the untimed setup, which makes instances.
                r.get("conflicts_retried", "-") if r["kind"] == "instance" else "-"))
        w("\n")
    if raws:
        w("| raw database baseline | clients | one-row INSERT transactions | errors | per second |"
          "\n|---|---|---|---|---|\n")
        for r in raws:
            w("| %s | %d | %d | %d | **%.0f** |\n" % (r["db"], r["clients"], r["ok"], r["errors"],
                                                     r["per_second"]))
        w("\n")
    if watches:
        w("| database | watch on | samples | errors | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) "
          "| answered before the 201 |\n|---|---|---|---|---|---|---|---|---|\n")
        for r in watches:
            ms = r.get("ms", {})
            w("| %s | %s | %d | %d | %s | %s | **%s** | %s | %d |\n" % (
                r["db"], r["where"], r.get("samples", 0), r.get("errors", 0), ms.get("p50"),
                ms.get("p90"), ms.get("p99"), ms.get("max"), r.get("answered_before_the_201", 0)))
        w("\n")
    verdicts = []
    for r in allocs:
        target = TARGETS.get(r["db"])
        if target is None or "failed" in r:
            continue
        if r["db"] == "mariadb" and r["controllers"] != 4:
            continue
        if kind_label(r) == "address, all to 1 instance":
            continue
        ok = r["per_second"] >= target and r["errors"] == 0 and r["duplicates"] == 0
        verdicts.append("%s: %s, %d controller(s), %d client(s): %.0f/s against >= %.0f/s, %d errors: %s" % (
            r["db"], kind_label(r), r["controllers"], r["clients"], r["per_second"], target,
            r["errors"], "MET" if ok else "MISSED"))
    for r in watches:
        p99 = r.get("ms", {}).get("p99")
        ok = p99 is not None and p99 <= WATCH_P99_TARGET_MS and r.get("errors", 1) == 0
        verdicts.append("watch %s (%s): p99 %s ms against <= %.0f ms, %d errors: %s" % (
            r["db"], r["where"], p99, WATCH_P99_TARGET_MS, r.get("errors", 0),
            "MET" if ok else "MISSED"))
    for v in verdicts:
        w("- %s\n" % v)
    return 0


def run_sql(args):
    """One-row INSERT statements for the mariadb/psql CLI baseline, one transaction each in
    autocommit mode; random addresses like the controller's, in the same key shape."""
    rng = random.Random(args.seed)
    out = sys.stdout
    for _ in range(args.rows):
        out.write("INSERT INTO %s (pod, address, instance) VALUES ('bench', '%032x', 'i%d');\n"
                  % (args.table, rng.getrandbits(128), args.seed))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("alloc")
    a.add_argument("--url", action="append", required=True)
    a.add_argument("--admin-token-file", required=True)
    a.add_argument("--pod", required=True)
    a.add_argument("--kind", choices=("address", "instance"), required=True)
    a.add_argument("--clients", type=int, required=True)
    a.add_argument("--requests", type=int, required=True)
    a.add_argument("--tag", required=True, help="prefix of instance and host names")
    a.add_argument("--per-instance", type=int, default=4,
                   help="address: requests per instance made before the clock starts")
    a.add_argument("--cpu", action="append", help="LABEL:PID[:tree], repeatable")
    a.add_argument("--deadline", type=int, default=600)
    w = sub.add_parser("watch")
    w.add_argument("--writer", required=True)
    w.add_argument("--watcher", required=True)
    w.add_argument("--admin-token-file", required=True)
    w.add_argument("--agent-token-file", required=True)
    w.add_argument("--pod", required=True)
    w.add_argument("--samples", type=int, default=200)
    w.add_argument("--tag", required=True)
    w.add_argument("--seed", type=int, default=1)
    w.add_argument("--deadline", type=int, default=600)
    s = sub.add_parser("sqlite")
    s.add_argument("--file", required=True)
    s.add_argument("--clients", type=int, required=True)
    s.add_argument("--requests", type=int, required=True)
    q = sub.add_parser("sql")
    q.add_argument("--table", required=True)
    q.add_argument("--rows", type=int, required=True)
    q.add_argument("--seed", type=int, required=True)
    r = sub.add_parser("report")
    r.add_argument("--file", required=True)
    args = p.parse_args()
    if args.mode == "report":
        return run_report(args)
    if args.mode == "sql":
        return run_sql(args)
    if args.mode == "alloc":
        if not (1 <= args.clients <= 64 and args.clients <= args.requests):
            sys.exit("bench-controller-load: --clients must be 1-64 and at most --requests")
        if args.per_instance < 1:
            sys.exit("bench-controller-load: --per-instance must be at least 1")
        return run_alloc(args)
    if args.mode == "watch":
        return run_watch(args)
    return run_sqlite(args)


if __name__ == "__main__":
    sys.exit(main())
