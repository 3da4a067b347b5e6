//! Runs last (cargo runs integration test binaries in name order): proves the whole test run left
//! the host as it found it.
//!
//! `netns-scripts/test.sh` snapshots the host before `cargo test` and exports
//! `FLAT6_RESOLV_SNAPSHOT` (a copy of /etc/resolv.conf) and `FLAT6_NETNS_SNAPSHOT` (the output of
//! `ip netns list`). Without the resolv.conf snapshot that check is skipped loudly, or fails with
//! `FLAT6_REQUIRE_ROOT=1`.

mod common;

use std::path::Path;

use common::{NAME_PREFIX, REQUIRE_ROOT_ENV, loud, netns_list, parse_netns_list, pid_alive};

const RESOLV_SNAPSHOT_ENV: &str = "FLAT6_RESOLV_SNAPSHOT";
const NETNS_SNAPSHOT_ENV: &str = "FLAT6_NETNS_SNAPSHOT";

/// The snapshot file named by `var`, or `None` after the loud skip (or the failure under
/// `FLAT6_REQUIRE_ROOT=1`) when it is not set.
fn snapshot(var: &str, test: &str) -> Option<Vec<u8>> {
    let Some(path) = std::env::var_os(var) else {
        let reason = format!("{var} is not set; run the tests through netns-scripts/test.sh");
        if std::env::var(REQUIRE_ROOT_ENV).as_deref() == Ok("1") {
            panic!("{REQUIRE_ROOT_ENV}=1 but {test} cannot run: {reason}");
        }
        loud(&format!("SKIPPED {test}: {reason}"));
        return None;
    };
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|err| panic!("{var}={} cannot be read: {err}", Path::new(&path).display()));
    Some(bytes)
}

#[test]
fn host_resolv_conf_is_byte_identical_to_the_snapshot() {
    let Some(before) = snapshot(
        RESOLV_SNAPSHOT_ENV,
        "host_resolv_conf_is_byte_identical_to_the_snapshot",
    ) else {
        return;
    };
    // test.sh snapshots a missing file as an empty one.
    let now = match std::fs::read("/etc/resolv.conf") {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => panic!("read /etc/resolv.conf: {err}"),
    };
    assert!(
        now == before,
        "the host's /etc/resolv.conf changed during the test run (a DHCPv6 client hook run without \
         /etc/netns/<ns>/resolv.conf?)\n--- before ({} bytes) ---\n{}\n--- now ({} bytes) ---\n{}\n\
         --- end ---\nRestore it from ${RESOLV_SNAPSHOT_ENV}.",
        before.len(),
        String::from_utf8_lossy(&before),
        now.len(),
        String::from_utf8_lossy(&now)
    );
}

/// The pid encoded in a fixture namespace name, `f6t<pid><letter><counter>`.
fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether `pid` is a live cargo-built binary (another test binary running right now, e.g. a second
/// `cargo test` on the same machine), whose namespaces are not leftovers.
fn is_running_test_binary(pid: u32) -> bool {
    pid != std::process::id()
        && pid_alive(pid)
        && std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe.components().any(|c| c.as_os_str() == "target"))
}

#[test]
fn no_test_namespaces_are_left() {
    let now = netns_list();
    let before = std::env::var_os(NETNS_SNAPSHOT_ENV)
        .and_then(|path| std::fs::read(path).ok())
        .map(|bytes| parse_netns_list(&String::from_utf8_lossy(&bytes)));

    let mut leftovers = Vec::new();
    let mut busy = Vec::new();
    for name in now.iter().filter(|n| n.starts_with(NAME_PREFIX)) {
        match creator_pid(name) {
            Some(pid) if is_running_test_binary(pid) => busy.push(name.clone()),
            _ => leftovers.push(name.clone()),
        }
    }
    // /etc/netns/<ns> directories are host files: none of ours may outlive its namespace.
    let etc_leftovers: Vec<String> = std::fs::read_dir("/etc/netns")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(NAME_PREFIX) && !busy.contains(n) && !now.contains(n))
        .collect();
    if !busy.is_empty() {
        loud(&format!(
            "note: namespaces of another running test binary are not counted: {busy:?}"
        ));
    }
    if let Some(before) = &before {
        let appeared: Vec<&String> = now
            .iter()
            .filter(|n| !before.contains(n) && !n.starts_with(NAME_PREFIX))
            .collect();
        if !appeared.is_empty() {
            loud(&format!(
                "note: namespaces that appeared during the run without the {NAME_PREFIX} prefix \
                 (not made by the fixture; check they are expected): {appeared:?}"
            ));
        }
    }

    let mut report = String::new();
    for name in &leftovers {
        let old = before.as_ref().is_some_and(|b| b.contains(name));
        report.push_str(&format!(
            "  {name}{}\n",
            if old {
                " (already there before this run: left by an earlier, killed run)"
            } else {
                ""
            }
        ));
    }
    for name in &etc_leftovers {
        report.push_str(&format!(
            "  /etc/netns/{name} (directory without its namespace)\n"
        ));
    }
    assert!(
        report.is_empty(),
        "test namespaces were left behind:\n{report}remove them with:\n  \
         for ns in $(ip netns list | awk '/^{NAME_PREFIX}/ {{print $1}}'); do ip netns del $ns; done; \
         rm -rf /etc/netns/{NAME_PREFIX}*"
    );
}
