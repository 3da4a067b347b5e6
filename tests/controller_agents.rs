//! The agents follow the controller: a VR long-polls its pod's reservations and serves a new
//! instance by DHCPv6 (real ISC dhclient), and keeps serving from its persisted copy when the
//! controller is gone.

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::controller::{api, start_controller, start_guard, start_vr};
use common::dhcp::{VR_MAC, dhclient, global_addresses, hook_env};
use common::{Lan, Netns, wait_until};
use serde_json::json;

#[test]
fn a_vr_following_the_controller_serves_a_new_instance_and_survives_its_absence() {
    require_root!();
    let lan = Lan::new();
    let vr_ns = Netns::new();
    lan.attach(&vr_ns, "vr0", Some(VR_MAC));
    let controller = start_controller(&vr_ns);
    api(
        &vr_ns,
        "POST",
        "/v1/pods",
        Some(json!({"name": "pod1", "prefix": "2001:db8:1::/48"})),
    );
    let vr = start_vr(&vr_ns);

    let mac = "02:f6:00:00:60:01";
    let created = api(
        &vr_ns,
        "POST",
        "/v1/pods/pod1/instances",
        Some(json!({"name": "i-1", "mac": mac})),
    );
    let after_201 = Instant::now();
    let address = created["addresses"][0]
        .as_str()
        .expect("address")
        .to_string();
    wait_until(
        "the VR to load the new reservation",
        Duration::from_secs(10),
        || vr.logs().contains("reservations=1").then_some(()),
    );
    eprintln!(
        "reservation loaded by the VR {:?} after the 201",
        after_201.elapsed()
    );

    let inst = Netns::new();
    lan.attach(&inst, "eth0", Some(mac));
    inst.fast_ipv6("eth0");
    inst.wait_link_local("eth0", Duration::from_secs(10));
    let client = dhclient(&inst, "");
    let env = wait_until("dhclient to bind", Duration::from_secs(30), || {
        assert!(client.is_running(), "{}", client.logs());
        hook_env(&inst, "BOUND6")
    });
    assert!(env.contains(&format!("new_ip6_address={address}")), "{env}");
    drop(client);

    // The controller goes away; a restarted VR serves from the document it persisted.
    controller.stop();
    vr.stop();
    let vr = start_vr(&vr_ns);
    wait_until(
        "the restarted VR to load its persisted document",
        Duration::from_secs(10),
        || vr.logs().contains("reservations=1").then_some(()),
    );
    inst.ip(["-6", "addr", "flush", "dev", "eth0", "scope", "global"]);
    let hooks = inst.work_dir().join(format!("dhclient-{}", inst.name()));
    std::fs::remove_dir_all(&hooks).expect("fresh client state");
    let again = dhclient(&inst, "");
    let env = wait_until(
        "dhclient to bind without the controller",
        Duration::from_secs(30),
        || {
            assert!(again.is_running(), "{}", again.logs());
            hook_env(&inst, "BOUND6")
        },
    );
    assert!(env.contains(&format!("new_ip6_address={address}")), "{env}");
    assert_eq!(global_addresses(&inst), vec![(address, 128)]);
    assert!(
        vr.logs().contains("controller unreachable"),
        "the VR should say the controller is unreachable:\n{}",
        vr.logs()
    );
}

#[test]
fn a_guard_following_the_controller_programs_a_new_port_and_keeps_it_without_the_controller() {
    require_root!();
    let lan = Lan::new();
    let hv = lan.hv();
    let controller = start_controller(hv);
    let inst = Netns::new();
    let port = lan.attach(&inst, "eth0", Some("02:f6:00:00:61:01"));
    api(
        hv,
        "POST",
        "/v1/pods",
        Some(json!({"name": "pod1", "prefix": "2001:db8:1::/48"})),
    );
    api(
        hv,
        "PUT",
        "/v1/security-groups/web",
        Some(json!({"rules": [{"direction": "ingress", "protocol": "tcp", "ports": "80"}]})),
    );
    // Waits for the guard to apply the empty host document.
    let guard = start_guard(hv, "hv1", "flat6");
    let has_port = |hv: &Netns| {
        hv.exec(["nft", "list", "table", "bridge", "flat6"])
            .stdout
            .windows(port.len())
            .any(|w| w == port.as_bytes())
    };
    assert!(!has_port(hv));
    api(
        hv,
        "POST",
        "/v1/pods/pod1/instances",
        Some(
            json!({"name": "i-1", "mac": "02:f6:00:00:61:01", "host": "hv1", "port": port, "security_groups": ["web"]}),
        ),
    );
    wait_until(
        "the new port in the guard's ruleset",
        Duration::from_secs(20),
        || has_port(hv).then_some(()),
    );
    controller.stop();
    wait_until(
        "the guard to notice the controller is gone",
        Duration::from_secs(60),
        || {
            guard
                .logs()
                .contains("controller unreachable")
                .then_some(())
        },
    );
    assert!(guard.is_running(), "{}", guard.logs());
    assert!(
        has_port(hv),
        "the rules must stay in force without the controller"
    );
}
