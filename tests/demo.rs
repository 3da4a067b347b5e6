//! `netns-scripts/demo.sh`, the README's first command, end to end: it builds a pod in namespaces
//! (controller, gateway, VR, guard, three instances), measures every cell of its table and tears
//! everything down. Run once as is (every cell ok, exit 0) and once with `--break web` (the `web`
//! group allows TCP 8080 instead of 80: every instance's "TCP 80" cell fails, exit non-zero).

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{flat6_bin, netns_list};

/// The cells of each row, as the demo's header names them.
const CELLS: [&str; 8] = [
    "MAC",
    "/64",
    "DHCPv6 address",
    "default route",
    "ping6 upstream",
    "TCP 80",
    "TCP 22",
    "SLAAC absent",
];
const INSTANCES: [&str; 3] = ["i-1", "i-2", "i-3"];

/// What one run of the demo printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The demo's id (`f6demo<n>`), from its first line.
    fn id(&self) -> String {
        let at = self
            .stdout
            .find("flat6 demo f6demo")
            .unwrap_or_else(|| panic!("no demo id in the output:\n{}", self.show()));
        self.stdout[at + "flat6 demo ".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    /// Each instance's cells, `(status, value)` by header name, read at the header's columns.
    fn table(&self) -> Vec<(String, Vec<(String, String)>)> {
        let lines: Vec<&str> = self.stdout.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("instance ") && l.contains("SLAAC absent"))
            .unwrap_or_else(|| panic!("no table in the output:\n{}", self.show()));
        let columns: Vec<usize> = CELLS
            .iter()
            .map(|c| lines[header].find(c).expect("header cell"))
            .collect();
        INSTANCES
            .iter()
            .map(|name| {
                let row = lines[header + 1..]
                    .iter()
                    .find(|l| l.split_whitespace().next() == Some(name))
                    .unwrap_or_else(|| panic!("no row for {name}:\n{}", self.show()));
                let cells = columns
                    .iter()
                    .map(|&at| {
                        let mut words = row.get(at..).unwrap_or("").split_whitespace();
                        let status = words.next().unwrap_or("").to_string();
                        let value = if status == "ok" || status == "FAIL" {
                            words.next().unwrap_or("").to_string()
                        } else {
                            String::new()
                        };
                        (status, value)
                    })
                    .collect();
                (name.to_string(), cells)
            })
            .collect()
    }
}

fn run_demo(args: &[&str]) -> Run {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("netns-scripts/demo.sh");
    let out = Command::new(&script)
        .args(args)
        .env("FLAT6_BIN", flat6_bin())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Nothing of the demo may be left: no namespace, no /etc/netns directory, and the host's
/// /etc/resolv.conf as it was.
fn assert_gone(run: &Run, resolv_before: &Option<Vec<u8>>) {
    let id = run.id();
    let prefix = format!("{id}-");
    let left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}\n{}", run.show());
    let etc: Vec<String> = std::fs::read_dir("/etc/netns")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(etc.is_empty(), "/etc/netns entries left: {etc:?}");
    assert_eq!(
        &std::fs::read("/etc/resolv.conf").ok(),
        resolv_before,
        "the host's /etc/resolv.conf changed"
    );
}

/// The seconds the demo says it took after the build.
fn duration(run: &Run) -> Option<f64> {
    let at = run.stdout.find("the demo took ")?;
    let rest = &run.stdout[at + "the demo took ".len()..];
    rest.split('s').next()?.parse().ok()
}

#[test]
fn the_demo_measures_every_cell_ok_and_tears_down() {
    require_root!();
    let resolv = std::fs::read("/etc/resolv.conf").ok();
    let run = run_demo(&[]);
    assert_eq!(run.code, Some(0), "{}", run.show());
    for (name, cells) in run.table() {
        for (cell, (status, value)) in CELLS.iter().zip(&cells) {
            assert_eq!(
                status,
                "ok",
                "{name} {cell}: {status} {value}\n{}",
                run.show()
            );
        }
        // The values are the measured ones, not placeholders.
        assert!(
            cells[0].1.starts_with("02:f6:de:"),
            "{name} MAC {:?}",
            cells[0]
        );
        assert!(cells[1].1.ends_with("::/64"), "{name} /64 {:?}", cells[1]);
        assert!(
            cells[2].1.starts_with("2001:db8:1:"),
            "{name} address {:?}",
            cells[2]
        );
        assert!(
            cells[3].1.starts_with("fe80::"),
            "{name} route {:?}",
            cells[3]
        );
    }
    let took = duration(&run).unwrap_or_else(|| panic!("no duration:\n{}", run.show()));
    assert!(took < 60.0, "the demo took {took} s after the build");
    assert_gone(&run, &resolv);
}

#[test]
fn breaking_the_web_group_fails_the_tcp_80_cell_of_every_instance() {
    require_root!();
    let resolv = std::fs::read("/etc/resolv.conf").ok();
    let run = run_demo(&["--break", "web"]);
    assert!(
        matches!(run.code, Some(c) if c != 0),
        "a broken group must fail the demo\n{}",
        run.show()
    );
    for (name, cells) in run.table() {
        for (cell, (status, value)) in CELLS.iter().zip(&cells) {
            let want = if *cell == "TCP 80" { "FAIL" } else { "ok" };
            assert_eq!(
                status,
                want,
                "{name} {cell}: {status} {value}\n{}",
                run.show()
            );
        }
        let says = format!("FAIL {name}, cell \"TCP 80\"");
        assert!(
            run.stdout.contains(&says),
            "the demo must say which instance and cell failed ({says}):\n{}",
            run.show()
        );
    }
    assert_gone(&run, &resolv);
    // A failed run keeps its logs for a reader; this failure was the point, so remove them.
    if let Some(at) = run.stdout.find("logs: /tmp/flat6-demo-") {
        let dir = run.stdout[at + "logs: ".len()..]
            .split([')', ' ', '\n'])
            .next()
            .unwrap_or("");
        if dir.starts_with("/tmp/flat6-demo-f6demo") && Path::new(dir).is_dir() {
            std::fs::remove_dir_all(dir).expect("remove the demo's logs");
        }
    }
}
