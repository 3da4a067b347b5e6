//! `flat6 vr` DHCPv6 against real clients (ISC dhclient) on a bridge in network namespaces, with
//! the RA part running too.

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::dhcp::{Pod, dhclient, global_addresses, hook_env, vr_dir, write_reservations};
use common::{flat6_bin, wait_until};

#[test]
fn dhclient_gets_its_reserved_address_dns_and_search_domain() {
    require_root!();
    let mac = "02:f6:00:00:01:01";
    let pod = Pod::start(&[(mac, &["2001:db8:1:4a2b::9c1"])]);
    let inst = pod.instance(mac);
    let client = dhclient(&inst, "");
    let env = wait_until("dhclient to bind", Duration::from_secs(30), || {
        assert!(client.is_running(), "dhclient exited:\n{}", client.logs());
        hook_env(&inst, "BOUND6")
    });
    assert!(
        env.contains("new_ip6_address=2001:db8:1:4a2b::9c1"),
        "{env}"
    );
    assert!(env.contains("new_dhcp6_name_servers=2001:db8::53"), "{env}");
    assert!(
        env.contains("new_dhcp6_domain_search=pod1.example."),
        "{env}"
    );
    assert_eq!(
        global_addresses(&inst),
        vec![("2001:db8:1:4a2b::9c1".to_string(), 128)],
        "the reserved address as a /128, and nothing from SLAAC"
    );
    // What was handed out, and when, is on disk for operators.
    let leases = vr_dir(&pod.vr_ns).join("state").join("leases.json");
    let log: serde_json::Value = wait_until("the lease log", Duration::from_secs(10), || {
        std::fs::read(&leases)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    });
    let entry = &log["handed_out"][format!("mac {mac}")];
    assert_eq!(entry["addresses"][0], "2001:db8:1:4a2b::9c1", "{log}");
    assert!(entry["at"].as_u64().unwrap_or(0) > 1_700_000_000, "{log}");
}

#[test]
fn dhclient_with_a_uuid_duid_and_a_random_link_local_is_served_by_its_mac() {
    require_root!();
    let mac = "02:f6:00:00:01:02";
    let pod = Pod::start(&[(mac, &["2001:db8:1:77::5"])]);
    let inst = pod.instance(mac);
    // A link-local that is not EUI-64 (addr_gen_mode 3: random, like RFC 7217 stable privacy).
    inst.sysctl("net/ipv6/conf/eth0/addr_gen_mode", "3");
    inst.ip(["link", "set", "dev", "eth0", "down"]);
    inst.ip(["link", "set", "dev", "eth0", "up"]);
    let ll = inst.wait_link_local("eth0", Duration::from_secs(10));
    assert!(
        !ll.contains("f6:ff:fe00:102"),
        "link-local {ll} is still EUI-64"
    );
    // RFC 6355 DUID-UUID: nothing in it says which MAC the client has.
    let client = dhclient(
        &inst,
        "default-duid \"\\000\\004\\001\\002\\003\\004\\005\\006\\007\\010\\011\\012\\013\\014\\015\\016\\017\\020\";\n",
    );
    let env = wait_until("dhclient to bind", Duration::from_secs(30), || {
        assert!(client.is_running(), "dhclient exited:\n{}", client.logs());
        hook_env(&inst, "BOUND6")
    });
    assert!(env.contains("new_ip6_address=2001:db8:1:77::5"), "{env}");
    let leases = std::fs::read_to_string(
        inst.work_dir()
            .join(format!("dhclient-{}", inst.name()))
            .join("dhclient6.leases"),
    )
    .expect("lease file");
    assert!(
        leases.contains("option dhcp6.client-id 0:4:1:2:3:4"),
        "the client did not use its DUID-UUID:\n{leases}"
    );
}

#[test]
fn an_unknown_mac_gets_no_address_and_a_new_reservation_is_served_without_restart() {
    require_root!();
    let known = "02:f6:00:00:01:03";
    let unknown = "02:f6:00:00:01:04";
    let pod = Pod::start(&[(known, &["2001:db8:1:3::3"])]);
    let inst = pod.instance(unknown);
    let client = dhclient(&inst, "");
    wait_until(
        "the VR to refuse the unknown client",
        Duration::from_secs(30),
        || {
            pod.vr
                .logs()
                .contains("no reservation for this client")
                .then_some(())
        },
    );
    assert!(hook_env(&inst, "BOUND6").is_none());
    assert!(global_addresses(&inst).is_empty());

    // A broken document is rejected and the old table keeps serving...
    std::fs::write(
        &pod.reservations,
        b"{\"revision\": 2, \"reservations\": [{\"mac\": \"nope\"}]}",
    )
    .expect("write");
    wait_until(
        "the VR to reject the broken document",
        Duration::from_secs(10),
        || {
            pod.vr
                .logs()
                .contains("rejected reservations document")
                .then_some(())
        },
    );
    // ...and a good one serves the waiting client (dhclient keeps soliciting) without restart.
    write_reservations(
        &pod.reservations,
        3,
        &[
            (known, &["2001:db8:1:3::3"]),
            (unknown, &["2001:db8:1:4::4"]),
        ],
    );
    let env = wait_until(
        "dhclient to bind after the reload",
        Duration::from_secs(60),
        || hook_env(&inst, "BOUND6"),
    );
    assert!(env.contains("new_ip6_address=2001:db8:1:4::4"), "{env}");
    drop(client);
    assert!(pod.vr.is_running(), "{}", pod.vr.logs());
}

#[test]
fn server_duid_survives_kill_9_and_renew_is_answered_after_restart() {
    require_root!();
    let mac = "02:f6:00:00:01:05";
    // Short timers so the client renews (T1) a few seconds after binding.
    let pod = Pod::start_with(
        &[(mac, &["2001:db8:1:5::5"])],
        "preferred_lifetime = 30\nvalid_lifetime = 60\nt1 = 3\nt2 = 20",
    );
    let duid_file = vr_dir(&pod.vr_ns).join("state").join("server-duid");
    let duid_before = std::fs::read_to_string(&duid_file).expect("server-duid written");
    let inst = pod.instance(mac);
    let client = dhclient(&inst, "");
    wait_until("dhclient to bind", Duration::from_secs(30), || {
        hook_env(&inst, "BOUND6")
    });

    assert!(pod.vr.signal(libc::SIGKILL));
    pod.vr
        .wait_exit(Duration::from_secs(5))
        .expect("flat6 vr killed");
    let hooks = inst.work_dir().join(format!("dhclient-{}", inst.name()));
    let _ = std::fs::remove_file(hooks.join("hook-RENEW6.env"));
    let config = vr_dir(&pod.vr_ns).join("vr.toml");
    let vr2 = pod.vr_ns.spawn([
        flat6_bin().to_string_lossy().as_ref(),
        "vr",
        "--config",
        config.to_string_lossy().as_ref(),
    ]);
    wait_until(
        "the restarted VR to load its DUID",
        Duration::from_secs(20),
        || {
            assert!(vr2.is_running(), "{}", vr2.logs());
            vr2.logs().contains("loaded server DUID").then_some(())
        },
    );
    assert_eq!(
        std::fs::read_to_string(&duid_file).expect("duid"),
        duid_before
    );
    // A Renew names the server by its DUID: only a server with the same DUID answers it, and
    // only a server that serves renewals from the reservations keeps the address (no NoBinding).
    let env = wait_until(
        "a Renew answered by the restarted VR",
        Duration::from_secs(30),
        || {
            assert!(client.is_running(), "{}", client.logs());
            hook_env(&inst, "RENEW6")
        },
    );
    assert!(env.contains("new_ip6_address=2001:db8:1:5::5"), "{env}");
    assert_eq!(
        global_addresses(&inst),
        vec![("2001:db8:1:5::5".to_string(), 128)]
    );
}

/// dhcpcd's own config for the test: IPv6 only, DHCPv6 addresses, DNS options, no hooks.
const DHCPCD_CONF: &str = "noipv4\nipv6rs\nia_na 1\noption dhcp6_name_servers, dhcp6_domain_search\nnohook resolv.conf, hostname, ntp.conf, timesyncd.conf, chrony.conf, openntpd.conf\n";

/// dhcpcd's script: only record what it was told (dhcpcd configures addresses itself).
const DHCPCD_HOOK: &str = "#!/bin/sh\nout=\"$(dirname \"$0\")/hook-$reason.env\"\nenv | grep -E '^(reason|new_|interface)' | sort > \"$out.tmp\" && mv \"$out.tmp\" \"$out\"\nexit 0\n";

#[test]
fn dhcpcd_gets_its_reserved_address_and_dns() {
    require_root!();
    let mac = "02:f6:00:00:01:06";
    let pod = Pod::start(&[(mac, &["2001:db8:1:6::6"])]);
    let inst = pod.instance(mac);
    let dir = inst.work_dir().join(format!("dhcpcd-{}", inst.name()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let conf = dir.join("dhcpcd.conf");
    std::fs::write(&conf, DHCPCD_CONF).expect("conf");
    let hook = dir.join("hook.sh");
    std::fs::write(&hook, DHCPCD_HOOK).expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    // dhcpcd keeps pid, control socket and leases under /run and /var/lib/dhcpcd by interface name:
    // give it private copies (a new mount namespace with tmpfs there) so runs cannot collide.
    let script = format!(
        "mount -t tmpfs flat6-test /run && mount -t tmpfs flat6-test /var/lib/dhcpcd && exec dhcpcd -B -d -6 -f {} -c {} eth0",
        conf.display(),
        hook.display()
    );
    let client = inst.spawn([
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]);
    let env = wait_until("dhcpcd to bind", Duration::from_secs(40), || {
        assert!(client.is_running(), "dhcpcd exited:\n{}", client.logs());
        std::fs::read_to_string(dir.join("hook-BOUND6.env")).ok()
    });
    assert!(env.contains("2001:db8:1:6::6"), "{env}");
    assert!(env.contains("new_dhcp6_name_servers=2001:db8::53"), "{env}");
    assert!(
        env.contains("new_dhcp6_domain_search=pod1.example"),
        "{env}"
    );
    wait_until("the address on eth0", Duration::from_secs(10), || {
        global_addresses(&inst)
            .contains(&("2001:db8:1:6::6".to_string(), 128))
            .then_some(())
    });
}

#[test]
fn two_vrs_when_the_bound_one_dies_rebind_is_answered_by_the_other() {
    require_root!();
    let mac = "02:f6:00:00:01:07";
    // Short T1/T2 so the client gives up renewing with the dead server quickly and rebinds.
    let timers = "preferred_lifetime = 60\nvalid_lifetime = 120\nt1 = 2\nt2 = 5";
    let pod = Pod::start_with(&[(mac, &["2001:db8:1:7::7"])], timers);
    let (vr2_ns, vr2) = pod.second_vr("02:f6:00:00:00:fd", timers);
    let inst = pod.instance(mac);
    let client = dhclient(&inst, "");
    let env = wait_until("dhclient to bind", Duration::from_secs(30), || {
        hook_env(&inst, "BOUND6")
    });
    // dhclient writes DUIDs without leading zeros (0:1:...), flat6 with them (00:01:...).
    let octets = |text: &str| -> Vec<u8> {
        text.trim()
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).expect("hex"))
            .collect()
    };
    let server_of = |env: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix("new_dhcp6_server_id="))
            .map(octets)
            .unwrap_or_else(|| panic!("no server id in {env}"))
    };
    let bound_to = server_of(&env);
    let duid_of = |ns: &common::Netns| {
        octets(
            &std::fs::read_to_string(vr_dir(ns).join("state").join("server-duid"))
                .expect("server-duid"),
        )
    };
    let (first, second) = (duid_of(&pod.vr_ns), duid_of(&vr2_ns));
    assert_ne!(first, second, "two VRs must have their own DUIDs");
    assert!(
        bound_to == first || bound_to == second,
        "bound to an unknown server"
    );
    // Kill the one the client is bound to.
    let (victim, survivor_duid) = if bound_to == first {
        (&pod.vr, second)
    } else {
        (&vr2, first)
    };
    assert!(victim.signal(libc::SIGKILL));
    victim.wait_exit(Duration::from_secs(5)).expect("killed");
    let env = wait_until(
        "a Rebind answered by the other VR",
        Duration::from_secs(60),
        || {
            assert!(client.is_running(), "{}", client.logs());
            hook_env(&inst, "REBIND6")
        },
    );
    assert!(env.contains("new_ip6_address=2001:db8:1:7::7"), "{env}");
    let rebound_to = server_of(&env);
    assert_eq!(rebound_to, survivor_duid, "rebound to the surviving VR");
    assert_eq!(
        global_addresses(&inst),
        vec![("2001:db8:1:7::7".to_string(), 128)]
    );
}
