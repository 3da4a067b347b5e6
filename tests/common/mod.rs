//! The network-namespace fixture shared by every integration test (`mod common;` in each test file).
//!
//! Everything a test builds lives in network namespaces it created: namespaces are named
//! `f6t<pid>n<counter>` (see [`NAME_PREFIX`]), interfaces are created directly inside namespaces (never
//! in the host's), and each namespace gets its own `/etc/netns/<ns>/resolv.conf` before anything runs
//! in it, so a DHCPv6 client hook under `ip netns exec` rewrites that copy and not the host's.
//! Everything is removed on drop, also while a failing test unwinds.
//!
//! Root-only tests start with [`require_root!`]: without root they print a loud `SKIPPED` line, or
//! fail when `FLAT6_REQUIRE_ROOT=1` (as `netns-scripts/test.sh` and CI set it).
//!
//! Each test binary uses a subset of this module, hence the blanket `dead_code` allowance.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod controller;
pub mod dhcp;
mod lan;
mod netns;
mod proc;
pub mod scapy;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use lan::{BRIDGE, Lan, veth, veth_with_mac};
pub use netns::{Addr, Netns};
pub use proc::Proc;

/// Every namespace, link and bridge port name the fixture makes starts with this, so leftovers are
/// easy to find (`ip netns list | grep ^f6t`) and `tests/zz_host_unchanged.rs` can check for them.
pub const NAME_PREFIX: &str = "f6t";

/// Linux `IFNAMSIZ - 1`: the longest interface name the kernel accepts.
pub const MAX_IFNAME_LEN: usize = 15;

/// Environment variable that turns "skip without root" into a failure.
pub const REQUIRE_ROOT_ENV: &str = "FLAT6_REQUIRE_ROOT";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_counter() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A process-unique namespace-style name: `f6t<pid><tag><counter>`, e.g. `f6t4711n3`.
///
/// The pid keeps concurrent test binaries apart, the counter keeps the threads of one binary apart.
pub fn unique_name(tag: char) -> String {
    format!("{NAME_PREFIX}{}{tag}{}", std::process::id(), next_counter())
}

/// A short unique interface name, `f6t<tag><counter>` (at most 15 bytes), for links whose name only
/// has to be unique inside the namespace they live in (bridge ports in a [`Lan`]'s hypervisor).
pub fn unique_ifname(tag: char) -> String {
    let name = format!("{NAME_PREFIX}{tag}{}", next_counter());
    assert!(
        name.len() <= MAX_IFNAME_LEN,
        "interface name {name} is longer than {MAX_IFNAME_LEN} bytes"
    );
    name
}

/// Write a line straight to the process's stderr, past the test harness's output capture, so that a
/// skip or a cleanup problem is seen even when the test passes.
pub fn loud(msg: &str) {
    let mut err = std::io::stderr().lock();
    // Nothing useful can be done if stderr itself is gone.
    let _ = writeln!(err, "{msg}");
}

/// Why root-only tests cannot run here, or `None` when they can (checked once per process).
pub fn root_unavailable_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let euid = unsafe { libc::geteuid() };
            if euid != 0 {
                return Some(format!("running as euid {euid}, not root"));
            }
            match Command::new("ip").args(["netns", "list"]).output() {
                Err(err) => Some(format!("cannot run `ip netns list`: {err}")),
                Ok(out) if !out.status.success() => Some(format!(
                    "`ip netns list` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Ok(_) => None,
            }
        })
        .clone()
}

/// The root gate: true when this process is root and `ip netns` works.
///
/// Otherwise, with `FLAT6_REQUIRE_ROOT=1` it panics; without, it prints
/// `SKIPPED <test>: needs root and network namespaces (<reason>)` to stderr and returns false.
/// Prefer the [`require_root!`] macro, which also returns from the test.
pub fn require_root(test: &str) -> bool {
    let Some(reason) = root_unavailable_reason() else {
        return true;
    };
    if std::env::var(REQUIRE_ROOT_ENV).as_deref() == Ok("1") {
        panic!("{REQUIRE_ROOT_ENV}=1 but {test} cannot run: {reason}");
    }
    loud(&format!(
        "SKIPPED {test}: needs root and network namespaces ({reason})"
    ));
    false
}

/// The name of the enclosing function, without the crate name (`my_test` or `module::my_test`).
#[macro_export]
macro_rules! test_name {
    () => {{
        fn here() {}
        fn type_name_of<T>(_: T) -> &'static str {
            std::any::type_name::<T>()
        }
        let path = type_name_of(here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        match path.split_once("::") {
            Some((_crate, rest)) => rest,
            None => path,
        }
    }};
}

/// Return early from a test that needs root (see [`require_root`]); the test's own name is used in
/// the message unless one is given: `require_root!();` or `require_root!("name")`.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::require_root($crate::test_name!()) {
            return;
        }
    };
    ($name:expr) => {
        if !$crate::common::require_root($name) {
            return;
        }
    };
}

/// Poll `f` every 25 ms until it returns `Some`, and return that value; panic naming `what` when
/// `timeout` passes first. `f` is called at least once, and once more at the deadline.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        let now = Instant::now();
        if now >= deadline {
            // One last look: the condition may have become true while we slept.
            if let Some(value) = f() {
                return value;
            }
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// [`wait_until`] for a plain condition.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    wait_until(what, timeout, || f().then_some(()))
}

/// A point in time to wait until: an `Instant`, or a `Duration` counted from now.
pub trait Deadline {
    /// The instant this stands for.
    fn deadline(self) -> Instant;
}

impl Deadline for Instant {
    fn deadline(self) -> Instant {
        self
    }
}

impl Deadline for Duration {
    fn deadline(self) -> Instant {
        Instant::now() + self
    }
}

/// How often [`wait_until`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The `flat6` binary cargo built for this test run.
pub fn flat6_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flat6"))
}

/// True when a process with this pid exists and is not a zombie (a zombie has exited; only its parent
/// has not collected it yet).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state letter follows the parenthesised command name, which may itself contain ")".
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
    }
}

/// The names of all named network namespaces (`ip netns list`), without their ids.
pub fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap_or_else(|err| panic!("cannot run `ip netns list`: {err}"));
    assert!(
        out.status.success(),
        "`ip netns list` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_netns_list(&String::from_utf8_lossy(&out.stdout))
}

/// Parse the output of `ip netns list` (`name` or `name (id: 3)` per line).
pub fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}
