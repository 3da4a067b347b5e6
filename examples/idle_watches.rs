//! Idle-watch load for `netns-scripts/bench-scale.sh`: `--watches` long polls on
//! `GET /v1/hosts/{host}/changes` spread over `--hosts` hosts (`hv0`, `hv1`, …), each waiting
//! from the host's current revision, all on one tokio thread (raw HTTP/1.1, one connection per
//! watch). With several `--addr` (controllers on one database), the watches of each host are
//! spread over them. Once they wait, it measures the controllers (`--pid`, one per controller):
//! CPU over `--idle` seconds and resident memory against `--rss-before` (kB, their sum), then
//! makes one change to host `hv0` (a new instance with a port there, through the admin API of
//! the first controller) and records when each watch answers and for which host, and how long
//! `/healthz` of each controller took before and during. Prints one JSON object.
//!
//! ```text
//! cargo build --release --example idle_watches
//! target/release/examples/idle_watches --addr [::1]:8640 --agent-token-file agent.token \
//!     --admin-token-file admin.token --pod pod1 --watches 5000 --hosts 500 --pid 1234
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle watches against one flat6 controller.
#[derive(Debug, Parser)]
struct Args {
    /// A controller, HOST:PORT; repeat for several on one database.
    #[arg(long = "addr", required = true)]
    addrs: Vec<SocketAddr>,
    /// File with the agent token (the watches).
    #[arg(long)]
    agent_token_file: std::path::PathBuf,
    /// File with the admin token (the one change).
    #[arg(long)]
    admin_token_file: std::path::PathBuf,
    /// The pod the changed instance is made in (it must exist).
    #[arg(long)]
    pod: String,
    /// How many watches.
    #[arg(long, default_value_t = 5000)]
    watches: usize,
    /// Over how many hosts.
    #[arg(long, default_value_t = 500)]
    hosts: usize,
    /// A controller's pid (CPU and RSS from /proc); repeat for each.
    #[arg(long = "pid", required = true)]
    pids: Vec<u32>,
    /// The controllers' resident memory before the watches, kB, summed.
    #[arg(long, default_value_t = 0)]
    rss_before: u64,
    /// Seconds of idle measurement.
    #[arg(long, default_value_t = 10)]
    idle: u64,
}

fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    (ticks(11) + ticks(12)) / 100.0
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

fn rss_of(pids: &[u32]) -> u64 {
    pids.iter().map(|p| rss_kb(*p)).sum()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One HTTP/1.1 request on a new connection; the status and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: flat6\r\nAuthorization: Bearer {token}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn field(json: &str, key: &str) -> Option<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()?
        .get(key)
        .cloned()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let agent = std::fs::read_to_string(&args.agent_token_file)?
        .trim()
        .to_string();
    let admin = std::fs::read_to_string(&args.admin_token_file)?
        .trim()
        .to_string();
    // Where each host is now.
    let mut cursors = Vec::with_capacity(args.hosts);
    for h in 0..args.hosts {
        let (_, body) = request(
            args.addrs[0],
            "GET",
            &format!("/v1/hosts/hv{h}/changes"),
            &agent,
            None,
        )
        .await?;
        let revision = field(&body, "revision")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let cluster = field(&body, "cluster")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        cursors.push((revision, cluster));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant, u16)>();
    let mut opened = 0;
    for w in 0..args.watches {
        let host = w % args.hosts;
        let (revision, cluster) = cursors[host].clone();
        let path = format!(
            "/v1/hosts/hv{host}/changes?after_revision={revision}&cluster={cluster}&wait=120"
        );
        let addr = args.addrs[(w / args.hosts) % args.addrs.len()];
        let (token, tx) = (agent.clone(), tx.clone());
        tokio::spawn(async move {
            let status = match request(addr, "GET", &path, &token, None).await {
                Ok((status, _)) => status,
                Err(_) => 0,
            };
            let _ = tx.send((host, Instant::now(), status));
        });
        opened += 1;
        if opened % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Let them all reach the controller and wait there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let healthz = |addr| async move {
        let t = Instant::now();
        let ok = request(addr, "GET", "/healthz", "", None)
            .await
            .map(|r| r.0)
            .ok()
            == Some(200);
        (ok, t.elapsed().as_secs_f64() * 1000.0)
    };
    let early: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    let rss_waiting = rss_of(&args.pids);
    let cpu0 = cpu_of(&args.pids);
    let t0 = Instant::now();
    let mut healthz_ms: Vec<f64> = Vec::new();
    let mut healthz_failed = 0;
    while t0.elapsed() < Duration::from_secs(args.idle) {
        for addr in &args.addrs {
            let (ok, ms) = healthz(*addr).await;
            healthz_failed += usize::from(!ok);
            healthz_ms.push(ms);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let idle_cpu = (cpu_of(&args.pids) - cpu0) / t0.elapsed().as_secs_f64();
    // One change, to host hv0.
    let name = format!("watch-probe-{}", std::process::id());
    let body = format!(
        r#"{{"name":"{name}","mac":"02:5c:{:02x}:{:02x}:00:01","host":"hv0","port":"probe0"}}"#,
        (std::process::id() >> 8) & 0xff,
        std::process::id() & 0xff
    );
    let changed = Instant::now();
    let (status, _) = request(
        args.addrs[0],
        "POST",
        &format!("/v1/pods/{}/instances", args.pod),
        &admin,
        Some(&body),
    )
    .await?;
    for addr in &args.addrs {
        let (ok, ms) = healthz(*addr).await;
        healthz_failed += usize::from(!ok);
        healthz_ms.push(ms);
    }
    let expected = (0..args.watches).filter(|w| w % args.hosts == 0).count();
    let mut woke_hv0 = Vec::new();
    let mut others = 0;
    let mut failed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while woke_hv0.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((host, at, status))) => {
                if status != 200 {
                    failed += 1;
                }
                if host == 0 {
                    woke_hv0.push(at.saturating_duration_since(changed).as_secs_f64() * 1000.0);
                } else {
                    others += 1;
                }
            }
            _ => break,
        }
    }
    // Anything else that answered within another second is a watch that should not have woken.
    let settle = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some((_, _, _))) = tokio::time::timeout_at(settle, rx.recv()).await {
        others += 1;
    }
    woke_hv0.sort_by(f64::total_cmp);
    healthz_ms.sort_by(f64::total_cmp);
    let p = |v: &[f64], q: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
    };
    let report = serde_json::json!({
        "watches": args.watches,
        "controllers": args.addrs.len(),
        "hosts": args.hosts,
        "answered_before_the_change": early.len(),
        "idle_cpu_fraction_of_a_core": idle_cpu,
        "rss_kb_before": args.rss_before,
        "rss_kb_waiting": rss_waiting,
        "rss_bytes_per_watch": if args.watches > 0 { (rss_waiting.saturating_sub(args.rss_before) as f64 * 1024.0) / args.watches as f64 } else { 0.0 },
        "change_status": status,
        "hv0_watches": expected,
        "hv0_woken": woke_hv0.len(),
        "hv0_latency_ms_p50": p(&woke_hv0, 0.5),
        "hv0_latency_ms_p99": p(&woke_hv0, 0.99),
        "other_watches_woken": others,
        "failed_answers": failed,
        "healthz_ms_max": healthz_ms.last().copied().unwrap_or(f64::NAN),
        "healthz_failed": healthz_failed,
    });
    println!("{report}");
    Ok(())
}
