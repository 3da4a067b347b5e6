//! `flat6 vr` DHCPv6 against hand-made packets: scapy scripts (`tests/scapy/`) run inside instance
//! namespaces of a pod (see `common::dhcp`), send what no ordinary client sends, and report what
//! came back as one JSON line that these tests parse.
//!
//! Besides root, the tests need `/usr/bin/python3` with scapy (Debian's `python3-scapy`); without it
//! they say so loudly and skip, or fail when `FLAT6_REQUIRE_ROOT=1`.

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use common::dhcp::{Pod, VR_MAC, dhclient, global_addresses, hook_env};
use common::scapy::{PYTHON, require_scapy, script};
use common::{Netns, wait_until};

/// RFC 8415 §21.13 status codes.
const SUCCESS: u64 = 0;
const NOT_ON_LINK: u64 = 4;

/// The JSON object on the last line of a script's output.
fn last_json_line(output: &str, what: &str) -> Value {
    let line = output
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line from {what}:\n{output}"));
    serde_json::from_str(line)
        .unwrap_or_else(|err| panic!("{what} printed bad JSON ({err}): {line}"))
}

/// The server DUID the pod's VR persisted (the `server-duid` file in its state directory,
/// somewhere under the test's work directory), as colon-separated hex.
fn server_duid(pod: &Pod) -> String {
    fn find(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && depth > 0 {
                find(&path, depth - 1, found);
            } else if path.file_name().is_some_and(|n| n == "server-duid") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    find(pod.vr_ns.work_dir(), 3, &mut found);
    let [path] = found.as_slice() else {
        panic!(
            "expected one server-duid file under {}, found {found:?}",
            pod.vr_ns.work_dir().display()
        );
    };
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
        .trim()
        .to_ascii_lowercase()
}

/// Send a Confirm for `addresses` from `inst` (whose eth0 has `mac`) and return the Reply's summary
/// (see `tests/scapy/dhcp6_confirm.py`).
fn confirm(inst: &Netns, mac: &str, addresses: &[&str]) -> Value {
    let mut extra = Vec::new();
    for address in addresses {
        extra.extend(["--address", address]);
    }
    exchange(inst, mac, &extra)
}

/// Run `tests/scapy/dhcp6_confirm.py` from `inst` (whose eth0 has `mac`) with `extra` arguments.
fn exchange(inst: &Netns, mac: &str, extra: &[&str]) -> Value {
    run_scapy(inst, mac, "dhcp6_confirm.py", extra)
}

/// Run the scapy script `name` from `inst` with frames from `mac`, its link-local as the source,
/// and `extra` arguments; its last JSON line.
fn run_scapy(inst: &Netns, mac: &str, name: &str, extra: &[&str]) -> Value {
    let link_local = inst.wait_link_local("eth0", Duration::from_secs(10));
    let path = script(name);
    let mut argv = vec![
        PYTHON,
        path.as_str(),
        "--iface",
        "eth0",
        "--mac",
        mac,
        "--src",
        link_local.as_str(),
    ];
    argv.extend_from_slice(extra);
    let out = inst.run(&argv);
    last_json_line(&out, name)
}

/// WIDE `dhcp6c -i` sends an Information-request with a Client Identifier and an Elapsed Time
/// only: no Option Request option. It still learns the DNS servers and the domain list.
#[test]
fn an_information_request_without_an_option_request_gets_dns_and_the_domain_list() {
    require_root!();
    if !require_scapy(test_name!()) {
        return;
    }
    let mac = "02:f6:00:00:02:31";
    let pod = Pod::start(&[(mac, &["2001:db8:1:31::1"])]);
    let inst = pod.instance(mac);
    let reply = exchange(&inst, mac, &["--information-request"]);
    assert_reply_from_the_vr(&reply, &pod);
    assert_eq!(reply["status"], 0, "{reply}");
    assert_eq!(
        reply["dns_servers"],
        serde_json::json!(["2001:db8::53"]),
        "{reply}"
    );
    let domains = reply["domains"].to_string();
    assert!(domains.contains("pod1.example"), "{reply}");
    assert!(pod.vr.is_running(), "{}", pod.vr.logs());
}

/// What every Reply from the VR must look like, whatever its status.
fn assert_reply_from_the_vr(reply: &Value, pod: &Pod) {
    assert_eq!(reply["eth_src"], VR_MAC, "{reply}");
    assert_eq!(reply["udp_sport"], 547, "{reply}");
    assert_eq!(reply["server_duid"], server_duid(pod).as_str(), "{reply}");
    assert_eq!(reply["client_id_echoed"], true, "{reply}");
}

#[test]
fn confirm_for_a_foreign_address_gets_not_on_link() {
    require_root!();
    if !require_scapy(test_name!()) {
        return;
    }
    let mac = "02:f6:00:00:02:01";
    let other = "02:f6:00:00:02:02";
    let pod = Pod::start(&[(mac, &["2001:db8:1:21::1"]), (other, &["2001:db8:1:22::2"])]);
    let inst = pod.instance(mac);

    for (why, addresses) in [
        (
            "another client's reserved address",
            &["2001:db8:1:22::2"][..],
        ),
        ("an address no reservation has", &["2001:db8:ffff::1"][..]),
        (
            "its own address together with another client's",
            &["2001:db8:1:21::1", "2001:db8:1:22::2"][..],
        ),
    ] {
        let reply = confirm(&inst, mac, addresses);
        assert_eq!(
            reply["status"], NOT_ON_LINK,
            "Confirm of {why} ({addresses:?}) must get NotOnLink (RFC 8415 §18.3.3): {reply}"
        );
        assert_reply_from_the_vr(&reply, &pod);
    }
    assert!(pod.vr.is_running(), "{}", pod.vr.logs());
}

#[test]
fn confirm_for_its_own_address_gets_success() {
    require_root!();
    if !require_scapy(test_name!()) {
        return;
    }
    let mac = "02:f6:00:00:02:03";
    let pod = Pod::start(&[
        (mac, &["2001:db8:1:23::1", "2001:db8:1:23::2"]),
        ("02:f6:00:00:02:04", &["2001:db8:1:24::1"]),
    ]);
    let inst = pod.instance(mac);

    for addresses in [
        &["2001:db8:1:23::1"][..],
        &["2001:db8:1:23::2", "2001:db8:1:23::1"][..],
    ] {
        let reply = confirm(&inst, mac, addresses);
        assert_eq!(
            reply["status"], SUCCESS,
            "Confirm of its own reserved {addresses:?} must get Success (RFC 8415 §18.3.3): {reply}"
        );
        assert_reply_from_the_vr(&reply, &pod);
    }
    assert!(pod.vr.is_running(), "{}", pod.vr.logs());
}

/// Run dhclient in `inst` and wait until it has bound `address` and put it on eth0 as a /128.
fn assert_dhclient_binds(inst: &Netns, address: &str, while_running: Option<&common::Proc>) {
    let client = dhclient(inst, "");
    let env = wait_until(
        &format!("dhclient in {} to bind {address}", inst.name()),
        Duration::from_secs(30),
        || {
            assert!(client.is_running(), "dhclient exited:\n{}", client.logs());
            if let Some(storm) = while_running {
                assert!(
                    storm.is_running(),
                    "the storm ended before dhclient bound:\n{}\ndhclient:\n{}",
                    storm.logs(),
                    client.logs()
                );
            }
            // The hook creates the file before `sort` writes it, all at once; `reason=` sorts
            // last, so with it the file is complete.
            hook_env(inst, "BOUND6").filter(|env| env.contains("reason=BOUND6"))
        },
    );
    assert!(env.contains(&format!("new_ip6_address={address}")), "{env}");
    wait_until(
        &format!("{address}/128 on eth0 in {}", inst.name()),
        Duration::from_secs(10),
        || (global_addresses(inst) == vec![(address.to_string(), 128)]).then_some(()),
    );
}

#[test]
fn a_storm_of_malformed_packets_does_not_stop_service() {
    require_root!();
    if !require_scapy(test_name!()) {
        return;
    }
    let attacker_mac = "02:f6:00:00:03:01";
    let victim_mac = "02:f6:00:00:03:02";
    let late_mac = "02:f6:00:00:03:03";
    let pod = Pod::start(&[
        (attacker_mac, &["2001:db8:1:31::1"]),
        (victim_mac, &["2001:db8:1:32::1"]),
        (late_mac, &["2001:db8:1:33::1"]),
    ]);
    let attacker = pod.instance(attacker_mac);
    let victim = pod.instance(victim_mac);
    let link_local = attacker.wait_link_local("eth0", Duration::from_secs(10));
    let stop = attacker.work_dir().join("storm.stop");
    let pcap = attacker.work_dir().join("storm-pool.pcap");
    let storm_py = script("dhcp6_storm.py");
    // Half the frames from the attacker's own MAC (mostly rate-limited: one client must not
    // starve the others), half from random MACs the bridge lets through (there is no guard
    // here), so the parser itself takes the storm.
    let storm = attacker.spawn([
        PYTHON,
        storm_py.as_str(),
        "--iface",
        "eth0",
        "--mac",
        attacker_mac,
        "--src",
        link_local.as_str(),
        "--stop-file",
        stop.to_str().unwrap(),
        "--pcap",
        pcap.to_str().unwrap(),
        "--rate",
        "2000",
        "--spoof",
        "0.5",
        "--min-frames",
        "6000",
        "--max-seconds",
        "50",
    ]);
    wait_until(
        "the storm to send every kind of frame",
        Duration::from_secs(20),
        || {
            assert!(storm.is_running(), "the storm exited:\n{}", storm.logs());
            storm.logs().contains("storm: sending").then_some(())
        },
    );

    // Another client is served while the storm goes on...
    assert_dhclient_binds(&victim, "2001:db8:1:32::1", Some(&storm));
    // ...and so are Information-requests from MACs the rate limiter has never seen.
    wait_until(
        "a Reply to a canary Information-request during the storm",
        Duration::from_secs(20),
        || {
            assert!(storm.is_running(), "the storm exited:\n{}", storm.logs());
            storm
                .logs()
                .contains("storm: canary answered")
                .then_some(())
        },
    );

    std::fs::write(&stop, b"").expect("write the stop file");
    let status = storm
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the storm did not stop:\n{}", storm.logs()));
    let logs = storm.logs();
    assert!(status.success(), "the storm failed ({status}):\n{logs}");
    let stats = last_json_line(&logs, "dhcp6_storm.py");
    println!("storm statistics: {stats}");
    assert_eq!(stats["stopped_by"], "file", "{stats}");
    for (kind, count) in stats["by_kind"].as_object().expect("by_kind") {
        assert!(
            count.as_u64() > Some(0),
            "no {kind} frame was sent: {stats}"
        );
    }
    assert!(stats["spoofed"].as_u64() > Some(0), "{stats}");
    assert!(stats["canary_replies"].as_u64() > Some(0), "{stats}");

    let vr_logs = pod.vr.logs();
    assert!(pod.vr.is_running(), "flat6 vr exited:\n{vr_logs}");
    assert!(
        !vr_logs.contains("panicked"),
        "flat6 vr panicked during the storm ({stats}):\n{vr_logs}"
    );

    // After the storm: a fresh client is served, and the attacker itself is not shut out.
    let late = pod.instance(late_mac);
    assert_dhclient_binds(&late, "2001:db8:1:33::1", None);
    let reply = confirm(&attacker, attacker_mac, &["2001:db8:1:31::1"]);
    assert_eq!(reply["status"], SUCCESS, "{reply}");
    assert_reply_from_the_vr(&reply, &pod);
    assert!(pod.vr.is_running(), "{}", pod.vr.logs());
    assert!(!pod.vr.logs().contains("panicked"), "{}", pod.vr.logs());
}

/// Run `tests/scapy/dhcp6_impersonate.py` from `inst` (frames from `mac`) with `args`.
fn impersonate(inst: &Netns, mac: &str, args: &[&str]) -> Value {
    run_scapy(inst, mac, "dhcp6_impersonate.py", args)
}

/// The frame decides (default `mac_sources`): A's Solicit naming B's MAC in its DUID gets A's
/// own address, never B's; A's Decline of B's address, in B's name, leaves B served; and 300
/// Solicits in 3 s from A's frame with a new DUID each are limited like one client.
#[test]
fn a_client_cannot_take_or_decline_another_clients_reservation_through_its_duid() {
    require_root!();
    if !require_scapy(test_name!()) {
        return;
    }
    let a_mac = "02:f6:00:00:04:01";
    let b_mac = "02:f6:00:00:04:02";
    let a_address = "2001:db8:1:41::1";
    let b_address = "2001:db8:1:42::1";
    let pod = Pod::start(&[(a_mac, &[a_address]), (b_mac, &[b_address])]);
    let a = pod.instance(a_mac);
    let b = pod.instance(b_mac);

    // Control: A's Solicit in its own name gets its own address.
    let own = impersonate(&a, a_mac, &["solicit", "--duid-mac", a_mac]);
    assert_eq!(own["answered"], true, "{own}");
    assert_eq!(own["addresses"], serde_json::json!([a_address]), "{own}");
    // The attack: the same frame, B's MAC in the DUID.
    let taken = impersonate(&a, a_mac, &["solicit", "--duid-mac", b_mac]);
    assert!(
        !taken["addresses"].to_string().contains(b_address),
        "A got B's address through a DUID: {taken}"
    );

    // A declines B's address in B's name; B is still served it.
    let declined = impersonate(
        &a,
        a_mac,
        &[
            "decline",
            "--duid-mac",
            b_mac,
            "--address",
            b_address,
            "--server-duid",
            &server_duid(&pod),
        ],
    );
    assert_eq!(declined["answered"], true, "{declined}");
    let served = impersonate(&b, b_mac, &["solicit", "--duid-mac", b_mac]);
    assert_eq!(
        served["addresses"],
        serde_json::json!([b_address]),
        "{served}"
    );

    // 300 Solicits in 3 s, each with a fresh DUID MAC, from A's frame: the per-MAC limit (20/s,
    // so at most about 20 + 3 × 20 answers) holds as for one client.
    let burst = impersonate(&a, a_mac, &["burst", "--count", "300", "--seconds", "3"]);
    assert_eq!(burst["sent"], 300, "{burst}");
    let answered = burst["answered"].as_u64().expect("answered");
    assert!(answered <= 100, "the limit did not hold: {burst}");
    // Control: B, a client of its own, is still answered.
    let b_after = impersonate(&b, b_mac, &["solicit", "--duid-mac", b_mac]);
    assert_eq!(
        b_after["addresses"],
        serde_json::json!([b_address]),
        "{b_after}"
    );
    assert!(pod.vr.is_running(), "{}", pod.vr.logs());
}

/// Even where the DUID identifies clients (`mac_sources = ["duid", "frame"]`, for trusted links),
/// a Decline changes state only for the reservation of the frame's own MAC.
#[test]
fn a_decline_in_another_clients_name_is_ignored_even_when_duids_identify_clients() {
    require_root!();
    if !require_scapy(test_name!()) {
        return;
    }
    let a_mac = "02:f6:00:00:04:11";
    let b_mac = "02:f6:00:00:04:12";
    let b_address = "2001:db8:1:52::1";
    let pod = Pod::start_with(
        &[(a_mac, &["2001:db8:1:51::1"]), (b_mac, &[b_address])],
        "mac_sources = [\"duid\", \"frame\"]\n",
    );
    let a = pod.instance(a_mac);
    let b = pod.instance(b_mac);
    let decline_b = |from: &Netns, frame_mac: &str| {
        impersonate(
            from,
            frame_mac,
            &[
                "decline",
                "--duid-mac",
                b_mac,
                "--address",
                b_address,
                "--server-duid",
                &server_duid(&pod),
            ],
        )
    };
    let declined = decline_b(&a, a_mac);
    assert_eq!(declined["answered"], true, "{declined}");
    wait_until(
        "the ignored Decline in the VR's log",
        Duration::from_secs(10),
        || {
            pod.vr
                .logs()
                .contains("ignored a Decline for a reservation the frame's MAC does not own")
                .then_some(())
        },
    );
    // B still gets its address; and a Decline B sends itself is taken (the control).
    let served = impersonate(&b, b_mac, &["solicit", "--duid-mac", b_mac]);
    assert_eq!(
        served["addresses"],
        serde_json::json!([b_address]),
        "{served}"
    );
    let own = decline_b(&b, b_mac);
    assert_eq!(own["answered"], true, "{own}");
    wait_until(
        "B's own Decline in the VR's log",
        Duration::from_secs(10),
        || {
            pod.vr
                .logs()
                .contains("client declined addresses")
                .then_some(())
        },
    );
    let after = impersonate(&b, b_mac, &["solicit", "--duid-mac", b_mac]);
    assert!(
        !after["addresses"].to_string().contains(b_address),
        "B's own Decline was not taken: {after}"
    );
    assert!(pod.vr.is_running(), "{}", pod.vr.logs());
}
