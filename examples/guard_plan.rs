//! Times what `flat6 guard` does per change besides the nft transaction: decoding and validating
//! a ports document, and planning the batch from the applied state (see `docs/benchmarks.md`).
//!
//! Given two documents (e.g. N ports and N + 1 ports), it alternates between them like a daemon
//! that is sent one and then the other, and prints the median of each step in microseconds as one
//! JSON object. Runs no nft and needs no privileges.
//!
//! ```text
//! cargo build --release --example guard_plan
//! target/release/examples/guard_plan BASE.json MORE.json [REPS]
//! ```

use std::process::ExitCode;
use std::time::Instant;

use flat6::config::{AntiSpoofing, EgressDefault};
use flat6::guard::document::PortsDoc;
use flat6::guard::render::{PlanKind, Planner, Settings};

/// The allocator of the `flat6` binary, so that the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<u128>) -> u128 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(base), Some(more)) = (args.first(), args.get(1)) else {
        eprintln!("usage: guard_plan BASE.json MORE.json [REPS]");
        return ExitCode::from(2);
    };
    let reps: usize = match args.get(2).map(|r| r.parse()) {
        None => 10,
        Some(Ok(r)) if r > 0 => r,
        Some(_) => {
            eprintln!("REPS must be a positive number");
            return ExitCode::from(2);
        }
    };
    let mut texts = Vec::new();
    for path in [base, more] {
        match std::fs::read(path) {
            Ok(bytes) => texts.push(bytes),
            Err(err) => {
                eprintln!("{path}: {err}");
                return ExitCode::from(2);
            }
        }
    }
    let settings = Settings {
        table: "flat6".into(),
        anti_spoofing: AntiSpoofing::Address,
        egress: EgressDefault::Deny,
        router_link_local: Vec::new(),
    };
    let parse = |bytes: &[u8]| PortsDoc::parse(bytes).map_err(|p| p.to_string());
    let first = match parse(&texts[0]) {
        Ok(doc) => doc,
        Err(err) => {
            eprintln!("{base}: {err}");
            return ExitCode::from(1);
        }
    };
    let full = Instant::now();
    let mut planner = Planner::new(&settings, first);
    let full_us = full.elapsed().as_micros();
    let (mut parse_us, mut plan_us, mut commands, mut ports_plans) = (Vec::new(), Vec::new(), 0, 0);
    for k in 0..reps * 2 {
        let bytes = &texts[(k + 1) % 2];
        let t = Instant::now();
        let doc = match parse(bytes) {
            Ok(doc) => doc,
            Err(err) => {
                eprintln!("document {}: {err}", (k + 1) % 2);
                return ExitCode::from(1);
            }
        };
        parse_us.push(t.elapsed().as_micros());
        let t = Instant::now();
        let (batch, how) = planner.update(&settings, doc);
        plan_us.push(t.elapsed().as_micros());
        commands = batch.len();
        ports_plans += usize::from(how == PlanKind::Ports);
    }
    println!(
        "{}",
        serde_json::json!({
            "first_render_us": full_us,
            "parse_us": median(parse_us),
            "plan_us": median(plan_us),
            "commands": commands,
            "planned_port_by_port": ports_plans,
            "updates": reps * 2,
        })
    );
    ExitCode::SUCCESS
}
