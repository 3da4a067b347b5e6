//! `flat6 vr` DHCPv6 against real clients (ISC dhclient) on a bridge in network namespaces, with
//! the RA part running too.

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Lan, Netns, Proc, flat6_bin, wait_until};

const VR_MAC: &str = "02:f6:00:00:00:fe";

/// dhclient's hook: put the address on the interface itself (as /128, like dhclient-script does)
/// and record what the server sent, without touching any resolv.conf.
const HOOK: &str = r#"#!/bin/sh
env | grep -E '^(reason|new_|old_|interface)' | sort > "$(dirname "$0")/hook-$reason.env"
case "$reason" in
  BOUND6|RENEW6|REBIND6|REBOOT6)
    [ -n "$new_ip6_address" ] && ip -6 addr replace "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" valid_lft "${new_max_life:-forever}" preferred_lft "${new_preferred_life:-forever}" 2>/dev/null || ip -6 addr replace "$new_ip6_address/$new_ip6_prefixlen" dev "$interface"
    ;;
esac
exit 0
"#;

struct Pod {
    vr: Proc,
    vr_ns: Netns,
    lan: Lan,
    reservations: PathBuf,
}

fn write_reservations(path: &Path, revision: u64, entries: &[(&str, &[&str])]) {
    let reservations: Vec<serde_json::Value> = entries
        .iter()
        .map(|(mac, addrs)| serde_json::json!({"mac": mac, "addresses": addrs}))
        .collect();
    let doc = serde_json::json!({"revision": revision, "reservations": reservations});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

impl Pod {
    fn start(entries: &[(&str, &[&str])]) -> Pod {
        Pod::start_with(entries, "")
    }

    fn start_with(entries: &[(&str, &[&str])], dhcpv6_extra: &str) -> Pod {
        let lan = Lan::new();
        let vr_ns = Netns::new();
        lan.attach(&vr_ns, "vr0", Some(VR_MAC));
        let dir = vr_ns.work_dir().to_path_buf();
        let reservations = dir.join("reservations.json");
        write_reservations(&reservations, 1, entries);
        let config = dir.join("vr.toml");
        std::fs::write(
            &config,
            format!(
                r#"role = "vr"
interface = "vr0"
state_dir = "{state}"
[ra]
router_lifetime = 0
[[ra.prefixes]]
prefix = "2001:db8:1::/48"
[dhcpv6]
dns_servers = ["2001:db8::53"]
domain_search = ["pod1.example"]
ntp_servers = ["2001:db8::123"]
{dhcpv6_extra}
[source]
file = "{file}"
"#,
                state = dir.join("state").display(),
                file = reservations.display()
            ),
        )
        .expect("write vr.toml");
        let vr = vr_ns.spawn([
            flat6_bin().to_string_lossy().as_ref(),
            "vr",
            "--config",
            config.to_string_lossy().as_ref(),
        ]);
        wait_until("flat6 vr to serve", Duration::from_secs(20), || {
            assert!(vr.is_running(), "flat6 vr exited:\n{}", vr.logs());
            vr.logs().contains("advertising on the link").then_some(())
        });
        Pod {
            vr,
            vr_ns,
            lan,
            reservations,
        }
    }

    fn instance(&self, mac: &str) -> Netns {
        let ns = Netns::new();
        self.lan.attach(&ns, "eth0", Some(mac));
        ns.fast_ipv6("eth0");
        ns.wait_link_local("eth0", Duration::from_secs(10));
        ns
    }
}

/// Run `dhclient -6` in the foreground in `ns`, with the hook above and its own lease file.
fn dhclient(ns: &Netns, extra_lease: &str) -> Proc {
    let dir = ns.work_dir().join(format!("dhclient-{}", ns.name()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let hook = dir.join("hook.sh");
    std::fs::write(&hook, HOOK).expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let lease = dir.join("dhclient6.leases");
    if !extra_lease.is_empty() || !lease.exists() {
        std::fs::write(&lease, extra_lease).expect("lease file");
    }
    ns.spawn([
        "dhclient",
        "-6",
        "-d",
        "-v",
        "-sf",
        hook.to_str().expect("utf-8"),
        "-lf",
        lease.to_str().expect("utf-8"),
        "-pf",
        dir.join("dhclient6.pid").to_str().expect("utf-8"),
        "eth0",
    ])
}

fn hook_env(ns: &Netns, reason: &str) -> Option<String> {
    let path = ns
        .work_dir()
        .join(format!("dhclient-{}", ns.name()))
        .join(format!("hook-{reason}.env"));
    std::fs::read_to_string(path).ok()
}

fn global_addresses(ns: &Netns) -> Vec<(String, u8)> {
    ns.addrs("eth0")
        .into_iter()
        .filter(|a| a.scope == "global")
        .map(|a| (a.addr, a.prefixlen))
        .collect()
}

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
    let duid_file = pod.vr_ns.work_dir().join("state").join("server-duid");
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
    let config = pod.vr_ns.work_dir().join("vr.toml");
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
