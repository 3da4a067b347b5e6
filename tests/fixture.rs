//! Acceptance tests of the network-namespace fixture in `tests/common`.
//!
//! Root-only tests skip loudly without root, or fail with `FLAT6_REQUIRE_ROOT=1`.

mod common;

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Lan, MAX_IFNAME_LEN, NAME_PREFIX, Netns, netns_list, pid_alive, unique_ifname, unique_name,
    veth_with_mac, wait_for, wait_until,
};

const SECOND: Duration = Duration::from_secs(1);
/// Enough for DAD on a link-local address (1 s by default) with room for a slow machine.
const DAD_TIMEOUT: Duration = Duration::from_secs(10);

const MAC_A: &str = "02:f6:00:00:01:01";
const MAC_B: &str = "02:f6:00:00:01:02";

/// The text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "<non-string panic>".to_owned()
    }
}

/// Run `f`, require that it panics, and return the panic message.
fn panic_message(f: impl FnOnce()) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => panic!("expected a panic, but the call returned"),
        Err(payload) => panic_text(payload.as_ref()),
    }
}

fn read_host_resolv_conf() -> Vec<u8> {
    std::fs::read("/etc/resolv.conf").unwrap_or_else(|err| panic!("read /etc/resolv.conf: {err}"))
}

#[test]
fn names_are_unique_prefixed_and_short_enough() {
    let mut seen = HashSet::new();
    for _ in 0..1000 {
        let ns = unique_name('n');
        let ifname = unique_ifname('p');
        assert!(ns.starts_with(&format!("{NAME_PREFIX}{}n", std::process::id())));
        assert!(ifname.starts_with(NAME_PREFIX));
        assert!(
            ifname.len() <= MAX_IFNAME_LEN,
            "{ifname} is longer than {MAX_IFNAME_LEN}"
        );
        assert!(seen.insert(ns.clone()), "{ns} handed out twice");
        assert!(seen.insert(ifname.clone()), "{ifname} handed out twice");
    }
}

#[test]
fn wait_until_returns_the_value_or_names_what_timed_out() {
    let mut calls = 0;
    let value = wait_until("the third call", SECOND, || {
        calls += 1;
        (calls == 3).then_some(calls)
    });
    assert_eq!(value, 3);

    let msg = panic_message(|| wait_for("a condition that never holds", Duration::ZERO, || false));
    assert!(
        msg.contains("a condition that never holds") && msg.contains("0ns"),
        "unexpected message: {msg}"
    );
}

#[test]
fn namespace_has_its_own_resolv_conf_and_is_removed_on_drop() {
    require_root!();
    let ns = Netns::new();
    let name = ns.name().to_owned();
    assert!(name.starts_with(NAME_PREFIX));
    assert!(
        netns_list().contains(&name),
        "{name} not in `ip netns list`"
    );

    let ours = std::fs::read_to_string(ns.resolv_conf_path())
        .unwrap_or_else(|err| panic!("read {}: {err}", ns.resolv_conf_path().display()));
    assert_eq!(ours, format!("# flat6 test namespace {name}\n"));
    // `ip netns exec` shows the namespace's copy as /etc/resolv.conf.
    assert_eq!(ns.run(["cat", "/etc/resolv.conf"]), ours);

    let lo = ns.ip_json(["link", "show", "dev", "lo"]);
    let flags = lo[0]["flags"].as_array().cloned().unwrap_or_default();
    assert!(flags.iter().any(|f| f == "UP"), "lo is not up: {lo}");

    let other = Netns::new();
    assert_ne!(other.name(), name);

    drop(ns);
    assert!(!netns_list().contains(&name), "{name} still exists");
    assert!(!Path::new("/etc/netns").join(&name).exists());
}

#[test]
fn run_panics_with_the_command_and_its_output() {
    require_root!();
    let ns = Netns::new();
    assert_eq!(ns.run(["sh", "-c", "echo fine"]), "fine\n");
    let msg = panic_message(|| {
        ns.run(["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"]);
    });
    for needle in [
        ns.name(),
        "sh -c 'echo to-stdout; echo to-stderr >&2; exit 3'",
        "exit status: 3",
        "to-stdout",
        "to-stderr",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    // `exec` reports the failure instead.
    let out = ns.exec(["sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn lan_instances_reach_each_other_over_the_bridge() {
    require_root!();
    let lan = Lan::new();
    let a = Netns::new();
    let b = Netns::new();
    let port_a = lan.attach(&a, "eth0", Some(MAC_A));
    let port_b = lan.attach(&b, "eth0", Some(MAC_B));
    assert_ne!(port_a, port_b);
    for port in [&port_a, &port_b] {
        assert!(port.starts_with(NAME_PREFIX) && port.len() <= MAX_IFNAME_LEN);
    }

    // The bridge floods: STP off, no forward delay, no multicast snooping.
    let br = lan.hv().ip_json(["-d", "link", "show", "dev", "br0"]);
    let info = &br[0]["linkinfo"]["info_data"];
    assert_eq!(info["stp_state"], 0, "{br}");
    assert_eq!(info["forward_delay"], 0, "{br}");
    assert_eq!(info["mcast_snooping"], 0, "{br}");
    for port in [&port_a, &port_b] {
        let link = lan.hv().ip_json(["link", "show", "dev", port.as_str()]);
        assert_eq!(link[0]["master"], "br0", "{link}");
    }

    assert_eq!(a.link_mac("eth0"), MAC_A);
    assert_eq!(b.link_mac("eth0"), MAC_B);

    // EUI-64 from the MAC (the kernel default address generation mode).
    let ll_a = a.wait_link_local("eth0", DAD_TIMEOUT);
    let ll_b = b.wait_link_local("eth0", DAD_TIMEOUT);
    assert_eq!(ll_a, "fe80::f6:ff:fe00:101");
    assert_eq!(ll_b, "fe80::f6:ff:fe00:102");
    let tuples = a.addresses("eth0");
    assert!(
        tuples.iter().any(|(addr, len, flags)| addr == &ll_a
            && *len == 64
            && !flags.iter().any(|f| f == "tentative")),
        "{tuples:?}"
    );

    a.assert_ping6(&format!("{ll_b}%eth0"), 5 * SECOND);
    b.assert_ping6(&format!("{ll_a}%eth0"), 5 * SECOND);

    let routes = a.routes();
    assert!(
        routes
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["dst"] == "fe80::/64" && r["dev"] == "eth0"),
        "{routes}"
    );
}

#[test]
fn veth_with_fast_ipv6_has_usable_addresses_at_once() {
    require_root!();
    let a = Netns::new();
    let b = Netns::new();
    veth_with_mac(&a, "left", Some(MAC_A), &b, "right", Some(MAC_B));
    assert_eq!(a.link_mac("left"), MAC_A);
    assert_eq!(b.link_mac("right"), MAC_B);
    a.fast_ipv6("left");
    b.fast_ipv6("right");
    a.ip(["addr", "add", "2001:db8:f6::1/64", "dev", "left"]);
    b.ip(["addr", "add", "fd00:f6::2/64", "dev", "right"]);
    b.ip(["route", "add", "2001:db8:f6::/64", "dev", "right"]);
    a.ip(["route", "add", "fd00:f6::/64", "dev", "left"]);
    // No waiting: without DAD nothing is tentative.
    for (ns, ifname) in [(&a, "left"), (&b, "right")] {
        let addrs = ns.addrs(ifname);
        assert!(
            addrs.iter().all(|x| !x.has("tentative")),
            "{ifname}: {addrs:?}"
        );
    }
    assert!(
        a.addrs("left")
            .iter()
            .any(|x| x.addr == "2001:db8:f6::1" && x.prefixlen == 64 && x.scope == "global")
    );
    a.assert_ping6("fd00:f6::2", 5 * SECOND);
    b.assert_ping6("2001:db8:f6::1", 5 * SECOND);
}

#[test]
fn sysctl_changes_only_the_namespace() {
    require_root!();
    let host_key = "/proc/sys/net/ipv6/conf/all/forwarding";
    let host_before = std::fs::read_to_string(host_key).unwrap_or_default();
    let ns = Netns::new();
    let wanted = if host_before.trim() == "1" { "0" } else { "1" };
    ns.sysctl("net.ipv6.conf.all.forwarding", wanted);
    assert_eq!(ns.sysctl_get("net.ipv6.conf.all.forwarding"), wanted);
    assert_eq!(
        std::fs::read_to_string(host_key).unwrap_or_default(),
        host_before
    );
    let msg = panic_message(|| ns.sysctl("kernel.hostname", "nope"));
    assert!(msg.contains("not a net.* key"), "{msg}");
}

#[test]
fn spawned_processes_log_and_stop() {
    require_root!();
    let ns = Netns::new();
    let proc = ns.spawn([
        "sh",
        "-c",
        "echo hello from $(cat /etc/resolv.conf); echo oops >&2; exec sleep 600",
    ]);
    wait_for("the process's output", 5 * SECOND, || {
        proc.logs().contains("oops")
    });
    let logs = proc.logs();
    assert!(
        logs.contains(&format!("hello from # flat6 test namespace {}", ns.name())),
        "{logs}"
    );
    assert!(proc.log_path().starts_with(ns.work_dir()));
    assert!(proc.is_running());
    assert!(proc.wait_exit(Duration::from_millis(100)).is_none());
    assert!(proc.signal(libc::SIGTERM));
    let status = proc
        .wait_exit(5 * SECOND)
        .unwrap_or_else(|| panic!("{proc:?} ignored SIGTERM"));
    assert!(!status.success());
    assert!(!proc.is_running());
    assert!(!proc.signal(libc::SIGTERM), "signalled an exited process");

    // Dropping a Proc stops it.
    let second = ns.spawn(["sleep", "600"]);
    let pid = second.pid();
    assert!(pid_alive(pid));
    drop(second);
    assert!(!pid_alive(pid), "pid {pid} survived its Proc");

    // Dropping the namespace stops what it spawned, even if the test still holds the Proc.
    let third = ns.spawn(["sleep", "600"]);
    let work_dir = ns.work_dir().to_owned();
    drop(ns);
    assert!(!third.is_running());
    // The log directory lives as long as its last user.
    assert!(work_dir.exists());
    drop(third);
}

#[test]
fn dropping_a_namespace_stops_processes_left_inside() {
    require_root!();
    let ns = Netns::new();
    // A daemon that detached from the command that started it, as DHCP clients do.
    let out = ns.run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"]);
    let pid: u32 = out
        .trim()
        .parse()
        .unwrap_or_else(|err| panic!("pid {out:?}: {err}"));
    assert!(pid_alive(pid));
    drop(ns);
    assert!(!pid_alive(pid), "pid {pid} survived its namespace");
}

#[test]
fn resolv_conf_written_inside_goes_to_the_namespace_copy() {
    require_root!();
    let host_before = read_host_resolv_conf();
    let ns = Netns::new();
    ns.run([
        "sh",
        "-c",
        "echo nameserver 2001:db8::99 > /etc/resolv.conf",
    ]);
    let ours = std::fs::read_to_string(ns.resolv_conf_path()).unwrap_or_default();
    assert!(
        ours.contains("nameserver 2001:db8::99"),
        "namespace copy: {ours:?}"
    );
    let host_after = read_host_resolv_conf();
    assert!(
        host_after == host_before,
        "the host's /etc/resolv.conf changed!\n--- before ---\n{}\n--- after ---\n{}",
        String::from_utf8_lossy(&host_before),
        String::from_utf8_lossy(&host_after)
    );
}

/// Env var naming the file where [`fixture_panics_inside_namespace`] records what it created.
const NAMES_OUT_ENV: &str = "FLAT6_FIXTURE_NAMES_OUT";

/// Run only by [`cleanup_after_panic_leaves_nothing`], as a subprocess: builds a LAN, starts a
/// process, records the names and pid, and panics.
#[test]
#[ignore = "run by cleanup_after_panic_leaves_nothing as a subprocess; it panics on purpose"]
fn fixture_panics_inside_namespace() {
    require_root!();
    let Some(out) = std::env::var_os(NAMES_OUT_ENV) else {
        eprintln!("{NAMES_OUT_ENV} is not set; nothing to do");
        return;
    };
    let lan = Lan::new();
    let a = Netns::new();
    let b = Netns::new();
    let port_a = lan.attach(&a, "eth0", Some(MAC_A));
    let port_b = lan.attach(&b, "eth0", Some(MAC_B));
    let sleeper = a.spawn(["sleep", "600"]);
    let record = format!(
        "netns {}\nnetns {}\nnetns {}\nport {port_a}\nport {port_b}\npid {}\n",
        lan.hv().name(),
        a.name(),
        b.name(),
        sleeper.pid()
    );
    std::fs::write(&out, record).unwrap_or_else(|err| panic!("write {out:?}: {err}"));
    panic!("on purpose");
}

#[test]
fn cleanup_after_panic_leaves_nothing() {
    require_root!();
    let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"));
    let names_file = dir.path().join("names");
    let exe = std::env::current_exe().unwrap_or_else(|err| panic!("current_exe: {err}"));
    let child = Command::new(&exe)
        .args([
            "--exact",
            "fixture_panics_inside_namespace",
            "--include-ignored",
            "--test-threads",
            "1",
        ])
        .env(NAMES_OUT_ENV, &names_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("start {}: {err}", exe.display()));
    let child_pid = child.id();
    let out = child
        .wait_with_output()
        .unwrap_or_else(|err| panic!("wait for {}: {err}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = format!("--- child stdout ---\n{stdout}\n--- child stderr ---\n{stderr}");
    assert!(
        !out.status.success(),
        "the child test did not fail\n{shown}"
    );
    assert!(
        stdout.contains("on purpose"),
        "the child did not panic on purpose\n{shown}"
    );

    let record = std::fs::read_to_string(&names_file).unwrap_or_default();
    assert!(!record.trim().is_empty(), "no names recorded\n{shown}");
    let mut namespaces = Vec::new();
    let mut ports = Vec::new();
    let mut pids = Vec::new();
    for line in record.lines() {
        match line.split_once(' ') {
            Some(("netns", name)) => namespaces.push(name.to_owned()),
            Some(("port", name)) => ports.push(name.to_owned()),
            Some(("pid", pid)) => pids.push(
                pid.parse::<u32>()
                    .unwrap_or_else(|err| panic!("pid {pid:?}: {err}")),
            ),
            _ => panic!("unexpected line {line:?} in {}", names_file.display()),
        }
    }
    assert_eq!(
        (namespaces.len(), ports.len(), pids.len()),
        (3, 2, 1),
        "{record}"
    );

    let now = netns_list();
    for ns in &namespaces {
        assert!(
            !now.contains(ns),
            "namespace {ns} survived the panic\n{shown}"
        );
        assert!(
            !Path::new("/etc/netns").join(ns).exists(),
            "/etc/netns/{ns} survived the panic"
        );
    }
    let child_prefix = format!("{NAME_PREFIX}{child_pid}");
    let leftovers: Vec<_> = now
        .iter()
        .filter(|n| {
            n.strip_prefix(&child_prefix)
                .is_some_and(|rest| rest.starts_with(|c: char| !c.is_ascii_digit()))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "namespaces of the child left: {leftovers:?}"
    );
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !(pid_alive(pid) && cmdline == b"sleep\x00600\x00"),
            "the child's `sleep 600` (pid {pid}) still runs"
        );
    }
    // The ports lived only inside the (now deleted) hypervisor namespace; none leaked to the host.
    let host_links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for port in &ports {
        assert!(
            !host_links.contains(&format!(": {port}:"))
                && !host_links.contains(&format!(": {port}@")),
            "bridge port {port} exists in the host namespace"
        );
    }

    // The failed test's log directory was kept and its path printed; check it, then remove it.
    let kept: Option<PathBuf> = stderr
        .lines()
        .chain(stdout.lines())
        .find_map(|l| l.split_once("logs of the failed test kept in "))
        .map(|(_, path)| PathBuf::from(path.trim()));
    let kept = kept.unwrap_or_else(|| panic!("no kept log directory reported\n{shown}"));
    let entries = std::fs::read_dir(&kept)
        .unwrap_or_else(|err| panic!("read {}: {err}", kept.display()))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(
        entries.iter().any(|e| e.contains("sleep")),
        "no sleep log in {}: {entries:?}",
        kept.display()
    );
    assert!(kept.starts_with(std::env::temp_dir()));
    std::fs::remove_dir_all(&kept).unwrap_or_else(|err| panic!("remove {}: {err}", kept.display()));
}

/// The root gate, seen from an unprivileged user: a loud skip, or a failure with
/// `FLAT6_REQUIRE_ROOT=1`. Runs a root-only test of this binary as `nobody` through `setpriv`.
#[test]
fn root_gate_skips_or_fails_without_root() {
    require_root!();
    let exe = std::env::current_exe().unwrap_or_else(|err| panic!("current_exe: {err}"));
    let target = "namespace_has_its_own_resolv_conf_and_is_removed_on_drop";
    let as_nobody = |require: bool| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(&exe)
            .args(["--exact", target, "--test-threads", "1"])
            .env_remove(common::REQUIRE_ROOT_ENV)
            .env("TMPDIR", "/tmp")
            .stdin(Stdio::null());
        if require {
            cmd.env(common::REQUIRE_ROOT_ENV, "1");
        }
        cmd.output()
    };
    let relaxed = as_nobody(false).unwrap_or_else(|err| panic!("cannot run setpriv: {err}"));
    let text = |out: &std::process::Output| {
        format!(
            "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let relaxed_text = text(&relaxed);
    if relaxed_text.contains("Permission denied") {
        common::loud(&format!(
            "SKIPPED part of root_gate_skips_or_fails_without_root: nobody cannot execute {}",
            exe.display()
        ));
        return;
    }
    assert!(relaxed.status.success(), "{relaxed_text}");
    assert!(
        relaxed_text.contains(&format!(
            "SKIPPED {target}: needs root and network namespaces (running as euid 65534, not root)"
        )),
        "{relaxed_text}"
    );

    let strict = as_nobody(true).unwrap_or_else(|err| panic!("setpriv: {err}"));
    let strict_text = text(&strict);
    assert!(!strict.status.success(), "{strict_text}");
    assert!(
        strict_text.contains(&format!(
            "FLAT6_REQUIRE_ROOT=1 but {target} cannot run: running as euid 65534"
        )),
        "{strict_text}"
    );
}
