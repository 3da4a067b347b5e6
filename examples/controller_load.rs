//! Load generator for the allocation rows of `netns-scripts/bench-controller.sh`: the `alloc` mode
//! of `netns-scripts/bench-controller-load.py`, compiled, so that the client's own CPU per request
//! is small next to the controller's (the Python one used 0.23-0.7 ms per request).
//!
//! N client threads, each with its own keep-alive HTTP/1.1 connection (one ureq agent, used by one
//! thread only) to one controller (the `--url` values in turn), make `--requests` allocations
//! between them:
//! - `--kind address`: `POST /v1/pods/{pod}/instances/{name}/addresses`, one address more for an
//!   existing instance. Each client makes its instances (with a host and a port) before the clock
//!   starts and adds `--per-instance` addresses to each, one instance after the other.
//! - `--kind instance`: `POST /v1/pods/{pod}/instances`, a new instance (its /64 and first
//!   address) per request, with a host and a port.
//!
//! Prints one JSON object, in the same shape as the Python generator: allocations per second over
//! the timed part, errors, duplicate addresses (among every address handed out in the run,
//! including the setup's), per-request latency percentiles (nearest rank), and the CPU seconds of
//! this process and of the `--cpu` processes during the timed part. Nothing is retried: a failed
//! request is counted and the run goes on. Exit status 0 when there was no error and no duplicate,
//! 1 otherwise, 2 for bad arguments.
//!
//! ```text
//! cargo build --release --example controller_load
//! target/release/examples/controller_load --url http://[::1]:8640 --admin-token-file admin.token \
//!     --pod p1 --kind address --clients 4 --requests 4000 --tag r1 --cpu controllers:1234
//! ```

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{Map, Value, json};

/// Bounds each whole request, as in the Python generator.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// One more address for an existing instance.
    Address,
    /// A new instance with its /64 and first address.
    Instance,
}

/// Allocation load for the flat6 controller (the "alloc" mode of bench-controller-load.py).
#[derive(Debug, Parser)]
struct Args {
    /// Controller base URL, http://HOST:PORT; repeat for several controllers (client k uses the
    /// k-th, in turn).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// File holding the admin token.
    #[arg(long)]
    admin_token_file: std::path::PathBuf,
    /// The pod to allocate in (it must exist).
    #[arg(long)]
    pod: String,
    /// What one request allocates.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Client threads, each with its own connection (1-64, at most --requests).
    #[arg(long)]
    clients: usize,
    /// Allocations in the timed part, split evenly between the clients.
    #[arg(long)]
    requests: usize,
    /// Prefix of instance and host names.
    #[arg(long)]
    tag: String,
    /// address: requests per instance made before the clock starts.
    #[arg(long, default_value_t = 4)]
    per_instance: usize,
    /// LABEL:PID[:tree]: report the CPU seconds of PID (with its direct children for "tree")
    /// during the timed part under LABEL; repeatable, labels add up.
    #[arg(long = "cpu")]
    cpu: Vec<String>,
    /// Added to every MAC's number, so that runs into the same pod use distinct MACs.
    #[arg(long, default_value_t = 0)]
    mac_base: u64,
    /// instance: spread the new instances over this many hosts, `{tag}-hv0` to
    /// `{tag}-hv{N-1}`, in turn (0: one host per client, `{tag}-hv{k}`).
    #[arg(long, default_value_t = 0)]
    hosts: usize,
    /// instance: put every new instance in this security group (it must exist).
    #[arg(long)]
    security_group: Option<String>,
    /// Limit in seconds for the setup and for the timed part of each client.
    #[arg(long, default_value_t = 600)]
    deadline: u64,
}

/// One process whose CPU time is reported.
struct CpuSpec {
    label: String,
    pid: u32,
    tree: bool,
}

/// What one client did in the timed part.
#[derive(Default)]
struct ClientResult {
    start: Option<Instant>,
    end: Option<Instant>,
    ok: usize,
    errors: Vec<String>,
    /// Every address handed to this client, setup included.
    addresses: Vec<String>,
    latencies: Vec<Duration>,
    setup_error: Option<String>,
}

/// One keep-alive connection to one controller.
struct Api {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Api {
    fn new(base: &str, token: &str) -> Api {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .max_idle_connections_per_host(1)
            .build()
            .into();
        Api {
            agent,
            base: base.trim_end_matches('/').to_string(),
            auth: format!("Bearer {token}"),
        }
    }

    /// POST; the status and the body.
    fn post(&self, path: &str, body: Option<&Value>) -> Result<(u16, Vec<u8>), String> {
        let url = format!("{}{path}", self.base);
        let request = self
            .agent
            .post(&url)
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json");
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.send_empty(),
        };
        let mut response = response.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let payload = response
            .body_mut()
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok((status, payload))
    }
}

fn mac(n: u64) -> String {
    format!(
        "02:f6:{:02x}:{:02x}:{:02x}:{:02x}",
        (n >> 24) & 255,
        (n >> 16) & 255,
        (n >> 8) & 255,
        n & 255
    )
}

/// The first 200 bytes of a body, for an error message.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

/// A string field of a JSON body: `address` or `addresses[0]`.
fn address_in(body: &[u8], kind: Kind) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let value = match kind {
        Kind::Address => doc.get("address"),
        Kind::Instance => doc.get("addresses").and_then(|a| a.get(0)),
    };
    value.and_then(Value::as_str).map(str::to_string)
}

/// Nearest-rank percentile of an ascending list.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    // At most a few million samples: exact in f64.
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime of a process (all its threads) in seconds, and its parent pid.
fn proc_cpu(pid: u32, tick: f64) -> Option<(f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(((utime + stime) / tick, ppid))
}

/// A process's CPU seconds, with those of its direct children when `tree` is set (PostgreSQL's
/// backends are children of the postmaster).
fn process_cpu_seconds(pid: u32, tree: bool, tick: f64) -> f64 {
    let mut total = proc_cpu(pid, tick).map_or(0.0, |(cpu, _)| cpu);
    if tree && let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some((cpu, ppid)) = proc_cpu(child, tick)
                && ppid == pid
            {
                total += cpu;
            }
        }
    }
    total
}

/// CPU seconds spent by everything on the machine (user, nice, system, irq, softirq, steal).
fn machine_busy_seconds(tick: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| fields.get(i).copied().unwrap_or(0.0))
        .sum::<f64>()
        / tick
}

/// This process's user + system CPU seconds, all threads.
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only into the struct it is given, which is plain data.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Label → CPU seconds, "machine" included.
fn cpu_snapshot(specs: &[CpuSpec], tick: f64) -> Vec<(String, f64)> {
    let mut out = vec![("machine".to_string(), machine_busy_seconds(tick))];
    for spec in specs {
        let cpu = process_cpu_seconds(spec.pid, spec.tree, tick);
        match out.iter_mut().find(|(label, _)| *label == spec.label) {
            Some((_, total)) => *total += cpu,
            None => out.push((spec.label.clone(), cpu)),
        }
    }
    out
}

fn parse_cpu_specs(values: &[String]) -> Result<Vec<CpuSpec>, String> {
    values
        .iter()
        .map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            let pid = parts.get(1).and_then(|p| p.parse().ok());
            match (parts.len(), pid) {
                (2 | 3, Some(pid)) => Ok(CpuSpec {
                    label: parts[0].to_string(),
                    pid,
                    tree: parts.get(2) == Some(&"tree"),
                }),
                _ => Err(format!("--cpu LABEL:PID[:tree], not {v:?}")),
            }
        })
        .collect()
}

/// One client: its setup, the barrier, its share of the timed requests.
fn client(
    k: usize,
    args: &Args,
    token: &str,
    barrier: &Barrier,
    setup_failed: &AtomicBool,
) -> ClientResult {
    let api = Api::new(&args.urls[k % args.urls.len()], token);
    let n = args.requests / args.clients + usize::from(k < args.requests % args.clients);
    let host = format!("{}-hv{k}", args.tag);
    let client_base = (((k as u64) + 1) << 24) + args.mac_base;
    let mut result = ClientResult::default();
    // "address": the requests go to instances made now, before the clock starts: the first
    // per_instance requests to the first, and so on.
    let mut owners = Vec::new();
    if args.kind == Kind::Address {
        let setup_deadline = Instant::now() + Duration::from_secs(args.deadline);
        for j in 0..n.div_ceil(args.per_instance) {
            let own = format!("{}-c{k}-{j}", args.tag);
            let body = json!({"name": own, "mac": mac(client_base + j as u64), "host": host,
                              "port": format!("vp{j}")});
            let created = api.post(&format!("/v1/pods/{}/instances", args.pod), Some(&body));
            let address = match &created {
                Ok((201, payload)) => address_in(payload, Kind::Instance),
                _ => None,
            };
            match (created, address) {
                (_, Some(address)) => result.addresses.push(address),
                (Ok((status, payload)), None) => {
                    result.setup_error = Some(format!(
                        "setup: create {own}: {status} {}",
                        excerpt(&payload)
                    ));
                    break;
                }
                (Err(e), None) => {
                    result.setup_error = Some(format!("setup: create {own}: {e}"));
                    break;
                }
            }
            owners.push(own);
            if Instant::now() > setup_deadline {
                result.setup_error = Some(format!("setup: deadline of {}s", args.deadline));
                break;
            }
        }
    }
    if result.setup_error.is_some() {
        setup_failed.store(true, Ordering::SeqCst);
    }
    barrier.wait();
    if setup_failed.load(Ordering::SeqCst) {
        if result.setup_error.is_none() {
            result.setup_error = Some("another client failed its setup".into());
        }
        return result;
    }
    let instances_path = format!("/v1/pods/{}/instances", args.pod);
    let address_paths: Vec<String> = owners
        .iter()
        .map(|own| format!("/v1/pods/{}/instances/{own}/addresses", args.pod))
        .collect();
    result.latencies.reserve(n);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.deadline);
    for i in 0..n {
        if Instant::now() > deadline {
            result.errors.push(format!(
                "deadline of {}s passed after {i} requests",
                args.deadline
            ));
            break;
        }
        let (path, body) = match args.kind {
            Kind::Address => (&address_paths[i / args.per_instance], None),
            Kind::Instance => {
                let host = match args.hosts {
                    0 => host.clone(),
                    hosts => format!("{}-hv{}", args.tag, (i * args.clients + k) % hosts),
                };
                let mut body = json!({"name": format!("{}-c{k}-{i}", args.tag),
                                      "mac": mac(client_base + i as u64 + 1), "host": host,
                                      "port": format!("vp{k}x{}", i + 1)});
                if let Some(group) = &args.security_group {
                    body["security_groups"] = json!([group]);
                }
                (&instances_path, Some(body))
            }
        };
        let t0 = Instant::now();
        let sent = api.post(path, body.as_ref());
        let took = t0.elapsed();
        let (status, payload) = match sent {
            Ok(answer) => answer,
            Err(e) => {
                result.errors.push(format!("request {i}: {e}"));
                continue;
            }
        };
        result.latencies.push(took);
        if status != 201 {
            result
                .errors
                .push(format!("request {i}: HTTP {status} {}", excerpt(&payload)));
            continue;
        }
        match address_in(&payload, args.kind) {
            Some(address) => {
                result.addresses.push(address);
                result.ok += 1;
            }
            None => result.errors.push(format!(
                "request {i}: 201 without an address: {}",
                excerpt(&payload)
            )),
        }
    }
    result.start = Some(start);
    result.end = Some(Instant::now());
    result
}

fn run(args: &Args) -> Result<(Value, bool), String> {
    if !(1..=64).contains(&args.clients) || args.clients > args.requests {
        return Err("--clients must be 1-64 and at most --requests".into());
    }
    if args.per_instance < 1 {
        return Err("--per-instance must be at least 1".into());
    }
    if let Some(bad) = args.urls.iter().find(|u| !u.starts_with("http://")) {
        return Err(format!("{bad:?} is not http://HOST:PORT"));
    }
    let specs = parse_cpu_specs(&args.cpu)?;
    let token = std::fs::read_to_string(&args.admin_token_file)
        .map_err(|e| format!("read {}: {e}", args.admin_token_file.display()))?
        .trim()
        .to_string();
    let tick = clock_ticks();
    let barrier = Arc::new(Barrier::new(args.clients + 1));
    let setup_failed = Arc::new(AtomicBool::new(false));
    let (before, own_before, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.clients)
            .map(|k| {
                let (barrier, setup_failed, token) = (&barrier, &setup_failed, token.as_str());
                scope.spawn(move || client(k, args, token, barrier, setup_failed))
            })
            .collect();
        barrier.wait();
        let before = cpu_snapshot(&specs, tick);
        let own_before = own_cpu_seconds();
        let results: Vec<ClientResult> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| ClientResult {
                    setup_error: Some("a client thread panicked".into()),
                    ..ClientResult::default()
                })
            })
            .collect();
        (before, own_before, results)
    });
    let own = own_cpu_seconds() - own_before;
    let after = cpu_snapshot(&specs, tick);

    let mut out = Map::new();
    out.insert(
        "kind".into(),
        json!(match args.kind {
            Kind::Address => "address",
            Kind::Instance => "instance",
        }),
    );
    out.insert("clients".into(), json!(args.clients));
    out.insert("controllers".into(), json!(args.urls.len()));
    out.insert("requests".into(), json!(args.requests));
    if args.kind == Kind::Address {
        out.insert("per_instance".into(), json!(args.per_instance));
    }
    let setup: Vec<String> = results
        .iter()
        .filter_map(|r| r.setup_error.clone())
        .collect();
    if !setup.is_empty() {
        out.insert("failed".into(), json!(setup));
        return Ok((Value::Object(out), false));
    }
    let start = results.iter().filter_map(|r| r.start).min();
    let end = results.iter().filter_map(|r| r.end).max();
    let wall = match (start, end) {
        (Some(start), Some(end)) => (end - start).as_secs_f64(),
        _ => 0.0,
    };
    let ok: usize = results.iter().map(|r| r.ok).sum();
    let errors: Vec<&String> = results.iter().flat_map(|r| &r.errors).collect();
    let addresses: Vec<&String> = results.iter().flat_map(|r| &r.addresses).collect();
    let distinct: HashSet<&String> = addresses.iter().copied().collect();
    let duplicates = addresses.len() - distinct.len();
    let mut latencies: Vec<Duration> = results
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    latencies.sort_unstable();
    let ms = |p: f64| percentile(&latencies, p).map(|d| round(d.as_secs_f64() * 1000.0, 2));
    out.insert("ok".into(), json!(ok));
    out.insert("errors".into(), json!(errors.len()));
    out.insert(
        "first_errors".into(),
        json!(errors.iter().take(5).collect::<Vec<_>>()),
    );
    out.insert("duplicates".into(), json!(duplicates));
    out.insert("seconds".into(), json!(round(wall, 3)));
    out.insert(
        "per_second".into(),
        if wall > 0.0 {
            json!(round(ok as f64 / wall, 1))
        } else {
            Value::Null
        },
    );
    out.insert(
        "latency_ms".into(),
        json!({"p50": ms(50.0), "p90": ms(90.0), "p99": ms(99.0), "max": ms(100.0)}),
    );
    let mut cpu = Map::new();
    cpu.insert("load generator".into(), json!(round(own, 2)));
    let mut ours = own;
    let mut machine = 0.0;
    for (label, value) in &after {
        let before = before
            .iter()
            .find(|(l, _)| l == label)
            .map_or(0.0, |(_, v)| *v);
        let delta = round(value - before, 2);
        if label == "machine" {
            machine = delta;
        } else {
            ours += delta;
        }
        cpu.insert(label.clone(), json!(delta));
    }
    cpu.insert(
        "other processes".into(),
        json!(round((machine - ours).max(0.0), 2)),
    );
    out.insert("cpu_seconds".into(), Value::Object(cpu));
    let clean = errors.is_empty() && duplicates == 0;
    Ok((Value::Object(out), clean))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok((out, clean)) => {
            println!("{out}");
            if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("controller_load: {message}");
            ExitCode::from(2)
        }
    }
}
