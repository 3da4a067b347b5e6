//! The incremental control plane with real agents: a VR follows its pod's change feed through
//! a thousand other changes and serves a new instance to ISC dhclient; restarted, it resumes
//! from the revision it persisted; fallen out of the history, it gets a snapshot and converges.
//! Guards follow their hosts: one membership change reaches the nft set of every guard whose
//! ports reference the group, and a guard whose host does not is not woken at all. Watchers of
//! one pod woken by one change get one answer, built once.

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::controller::{PORT, api, start_controller_with, start_guard, start_vr};
use common::dhcp::{VR_MAC, dhclient, hook_env};
use common::{Lan, Netns, Proc, wait_until};
use flat6::controller::client::Client;
use serde_json::json;

/// The revision the last "applied reservation changes" / "reservation snapshot" line of the VR
/// reached, and whether any snapshot came from the controller (not replayed from disk).
fn vr_revision(vr: &Proc) -> (u64, bool) {
    let logs = vr.logs();
    let mut revision = 0;
    let mut controller_snapshot = false;
    for line in logs.lines() {
        let snapshot = line.contains("reservation snapshot");
        if !(snapshot || line.contains("applied reservation changes")) {
            continue;
        }
        if snapshot && line.contains("replayed=false") {
            controller_snapshot = true;
        }
        if let Some(rest) = line.split("revision=").nth(1)
            && let Some(n) = rest.split(|c: char| !c.is_ascii_digit()).next()
            && let Ok(n) = n.parse()
        {
            revision = n;
        }
    }
    (revision, controller_snapshot)
}

/// A controller in `ns` with one pod, `pod1`, of `prefix`.
fn controller_with_pod(ns: &Netns, prefix: &str) -> Proc {
    let controller = start_controller_with(ns, "");
    api(
        ns,
        "POST",
        "/v1/pods",
        Some(json!({"name": "pod1", "prefix": prefix})),
    );
    controller
}

fn pod_revision(ns: &Netns) -> u64 {
    api(ns, "GET", "/v1/pods/pod1", None)["revision"]
        .as_u64()
        .expect("revision")
}

/// `n` changes to the pod from another thread's view: instances created and an address added to
/// each, through a client of its own.
fn churn(ns: &Netns, first: u32, n: u32) {
    ns.enter(|| {
        let client = Client::new(
            &format!("http://[::1]:{PORT}"),
            common::controller::ADMIN,
            Duration::from_secs(10),
        );
        for i in first..first + n {
            let name = format!("churn-{i}");
            let mac = format!(
                "02:f6:01:{:02x}:{:02x}:{:02x}",
                i >> 16,
                (i >> 8) & 0xff,
                i & 0xff
            );
            if i % 2 == 0 {
                client
                    .request(
                        "POST",
                        "/v1/pods/pod1/instances",
                        Some(&json!({"name": name, "mac": mac})),
                    )
                    .expect("create");
            } else {
                client
                    .request(
                        "POST",
                        &format!("/v1/pods/pod1/instances/churn-{}/addresses", i - 1),
                        None,
                    )
                    .expect("add address");
            }
        }
    });
}

#[test]
fn a_vr_follows_the_feed_through_a_thousand_changes_resumes_and_recovers_from_compaction() {
    require_root!();
    let lan = Lan::new();
    let vr_ns = Netns::new();
    lan.attach(&vr_ns, "vr0", Some(VR_MAC));
    // A short history, so that a follower can fall out of it.
    let controller = start_controller_with(&vr_ns, "feed_history = 100");
    api(
        &vr_ns,
        "POST",
        "/v1/pods",
        Some(json!({"name": "pod1", "prefix": "2001:db8:1::/48"})),
    );
    let vr = start_vr(&vr_ns);
    wait_until("the VR's first snapshot", Duration::from_secs(20), || {
        assert!(vr.is_running(), "{}", vr.logs());
        (vr_revision(&vr).0 >= 1).then_some(())
    });

    // The instance under test is created in the middle of 1,000 other changes.
    let mac = "02:f6:00:00:70:01";
    std::thread::scope(|scope| {
        let background = scope.spawn(|| churn(&vr_ns, 0, 1000));
        churn(&vr_ns, 5000, 10);
        let created = api(
            &vr_ns,
            "POST",
            "/v1/pods/pod1/instances",
            Some(json!({"name": "target", "mac": mac})),
        );
        let address = created["addresses"][0]
            .as_str()
            .expect("address")
            .to_string();
        let inst = Netns::new();
        lan.attach(&inst, "eth0", Some(mac));
        inst.fast_ipv6("eth0");
        inst.wait_link_local("eth0", Duration::from_secs(10));
        let client = dhclient(&inst, "");
        let env = wait_until("dhclient to bind", Duration::from_secs(60), || {
            assert!(client.is_running(), "{}", client.logs());
            hook_env(&inst, "BOUND6")
        });
        assert!(env.contains(&format!("new_ip6_address={address}")), "{env}");
        background.join().expect("churn");
    });
    let final_revision = pod_revision(&vr_ns);
    wait_until(
        "the VR to reach the pod's revision",
        Duration::from_secs(30),
        || (vr_revision(&vr).0 == final_revision).then_some(()),
    );
    let (_, snapshot_from_controller) = vr_revision(&vr);
    let applied = vr.logs().matches("applied reservation changes").count();
    assert!(applied >= 1, "{}", vr.logs());
    // Only the first answer was a snapshot: everything after came as changes.
    assert_eq!(
        vr.logs().matches("reservation snapshot").count(),
        1,
        "{}",
        vr.logs()
    );
    assert!(snapshot_from_controller);
    assert!(vr.logs().contains("reservations=506 "), "{}", vr.logs());

    // Restarted mid-stream: it replays what it persisted and asks for the changes since.
    vr.stop();
    churn(&vr_ns, 7000, 20);
    let revision = pod_revision(&vr_ns);
    let vr = start_vr(&vr_ns);
    wait_until(
        "the restarted VR to catch up",
        Duration::from_secs(30),
        || {
            assert!(vr.is_running(), "{}", vr.logs());
            (vr_revision(&vr).0 == revision).then_some(())
        },
    );
    let (_, snapshot_from_controller) = vr_revision(&vr);
    assert!(
        !snapshot_from_controller,
        "a restart within the history resumes, without a snapshot:\n{}",
        vr.logs()
    );
    assert!(vr.logs().contains("replayed=true"), "{}", vr.logs());

    // Fallen out of the history: a snapshot, and the same table as the controller's.
    vr.stop();
    let compactions = || {
        controller
            .logs()
            .matches("compacted the change feed")
            .count()
    };
    churn(&vr_ns, 9000, 300);
    let before = compactions();
    // A compaction after all these changes (one every 10 s) leaves the VR's revision behind.
    wait_until(
        "the controller to compact its feed",
        Duration::from_secs(30),
        || (compactions() > before).then_some(()),
    );
    let revision = pod_revision(&vr_ns);
    let vr = start_vr(&vr_ns);
    wait_until("the VR to get a snapshot", Duration::from_secs(30), || {
        assert!(vr.is_running(), "{}", vr.logs());
        let (at, from_controller) = vr_revision(&vr);
        (at == revision && from_controller).then_some(())
    });
    let instances = api(&vr_ns, "GET", "/v1/pods/pod1/instances", None)["instances"]
        .as_array()
        .expect("instances")
        .len();
    assert!(
        vr.logs().contains(&format!("reservations={instances}")),
        "{instances} instances:\n{}",
        vr.logs()
    );
}

/// The elements of the inet member set of `group` in the guard table `table`.
fn member_set(ns: &Netns, table: &str, group: &str) -> Vec<String> {
    let out = ns.exec([
        "nft",
        "-j",
        "list",
        "set",
        "inet",
        table,
        &format!("sg_{group}"),
    ]);
    if !out.status.success() {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft json");
    json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["set"]["elem"].as_array())
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect()
}

#[test]
fn one_membership_change_reaches_only_the_guards_whose_hosts_reference_the_group() {
    require_root!();
    let lan = Lan::new();
    let hv = lan.hv();
    let controller = controller_with_pod(hv, "2001:db8:1::/48");
    api(
        hv,
        "PUT",
        "/v1/security-groups/web",
        Some(
            json!({"rules": [{"direction": "ingress", "protocol": "tcp", "ports": "80", "remote_group": "web"}]}),
        ),
    );
    api(
        hv,
        "PUT",
        "/v1/security-groups/other",
        Some(json!({"rules": []})),
    );
    for (i, (host, group)) in [("hva", "web"), ("hvb", "web"), ("hvc", "other")]
        .into_iter()
        .enumerate()
    {
        api(
            hv,
            "POST",
            "/v1/pods/pod1/instances",
            Some(
                json!({"name": format!("on-{host}"), "mac": format!("02:f6:00:00:71:0{i}"), "host": host, "port": format!("vnet{i}"), "security_groups": [group]}),
            ),
        );
    }
    let guards: Vec<(&str, Proc)> = ["hva", "hvb", "hvc"]
        .into_iter()
        .map(|h| (h, start_guard(hv, h, &format!("f6{h}"))))
        .collect();
    for (host, _) in &guards[..2] {
        assert_eq!(
            member_set(hv, &format!("f6{host}"), "web").len(),
            2,
            "{host}"
        );
    }
    let applies_of_c = guards[2].1.logs().matches("applied ruleset").count();

    // A new member of web, on a host without a guard.
    let created = api(
        hv,
        "POST",
        "/v1/pods/pod1/instances",
        Some(
            json!({"name": "newcomer", "mac": "02:f6:00:00:71:09", "host": "hvz", "port": "vnet9", "security_groups": ["web"]}),
        ),
    );
    let address = created["addresses"][0]
        .as_str()
        .expect("address")
        .to_string();
    for (host, guard) in &guards[..2] {
        wait_until(
            &format!("the new member in {host}'s set"),
            Duration::from_secs(20),
            || {
                assert!(guard.is_running(), "{}", guard.logs());
                member_set(hv, &format!("f6{host}"), "web")
                    .contains(&address)
                    .then_some(())
            },
        );
    }
    // The guard of hvc references no group of the change: nothing reached it. A change of its
    // own host afterwards is its next apply, and its only one.
    api(
        hv,
        "POST",
        "/v1/pods/pod1/instances",
        Some(
            json!({"name": "later", "mac": "02:f6:00:00:71:0a", "host": "hvc", "port": "vnet8", "security_groups": ["other"]}),
        ),
    );
    wait_until("hvc's new port", Duration::from_secs(20), || {
        let out = hv.exec(["nft", "list", "set", "bridge", "f6hvc", "ports"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("vnet8")
            .then_some(())
    });
    wait_until("hvc's apply to be logged", Duration::from_secs(10), || {
        (guards[2].1.logs().matches("applied ruleset").count() > applies_of_c).then_some(())
    });
    assert_eq!(
        guards[2].1.logs().matches("applied ruleset").count(),
        applies_of_c + 1,
        "{}",
        guards[2].1.logs()
    );
    assert!(member_set(hv, "f6hvc", "web").is_empty());
    assert!(controller.is_running());
}

/// The value of a counter or gauge on the controller's `/metrics`.
fn metric(ns: &Netns, name: &str) -> u64 {
    let text = ns.enter(|| {
        let client = Client::new(
            &format!("http://[::1]:{PORT}"),
            common::controller::ADMIN,
            Duration::from_secs(10),
        );
        String::from_utf8(client.get_bytes("/metrics").expect("/metrics")).expect("utf-8")
    });
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[test]
fn watchers_of_one_pod_woken_by_one_change_get_one_answer_built_once() {
    require_root!();
    let lan = Lan::new();
    let hv = lan.hv();
    let controller = controller_with_pod(hv, "2001:db8:7::/64");
    let revision = pod_revision(hv);
    let built_before = metric(hv, "flat6_controller_watch_answers_built_total");
    let path = format!("/v1/pods/pod1/reservations/changes?after_revision={revision}&wait=60");
    let answers: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let watchers: Vec<_> = (0..3)
            .map(|_| {
                let path = path.as_str();
                scope.spawn(move || {
                    hv.enter(|| {
                        let client = Client::new(
                            &format!("http://[::1]:{PORT}"),
                            common::controller::AGENT,
                            Duration::from_secs(90),
                        );
                        client.get_bytes(path).expect("watch")
                    })
                })
            })
            .collect();
        wait_until("three waiting watches", Duration::from_secs(20), || {
            (metric(hv, "flat6_controller_watch_clients") == 3).then_some(())
        });
        api(
            hv,
            "POST",
            "/v1/pods/pod1/instances",
            Some(json!({"name": "new", "mac": "02:f6:00:00:72:01"})),
        );
        watchers
            .into_iter()
            .map(|w| w.join().expect("watcher"))
            .collect()
    });
    let first: serde_json::Value = serde_json::from_slice(&answers[0]).expect("json");
    assert_eq!(first["snapshot"], false, "{first}");
    assert!(
        first["revision"].as_u64().expect("revision") > revision,
        "{first}"
    );
    assert_eq!(
        first["reservations"][0]["mac"], "02:f6:00:00:72:01",
        "{first}"
    );
    assert!(answers.iter().all(|a| *a == answers[0]), "the same bytes");
    assert_eq!(
        metric(hv, "flat6_controller_watch_answers_built_total") - built_before,
        1
    );
    assert_eq!(metric(hv, "flat6_controller_watch_answers_shared_total"), 2);
    // A follower that is behind is answered from the database, not from what was shared.
    let behind: serde_json::Value = api(hv, "GET", &path.replace("&wait=60", ""), None);
    assert_eq!(behind["reservations"], first["reservations"]);
    assert_eq!(metric(hv, "flat6_controller_watch_answers_shared_total"), 2);
    assert!(controller.is_running());
}
