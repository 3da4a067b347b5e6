//! `flat6 guard` with real traffic between instance namespaces on a hypervisor bridge.

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::{Ipv6Addr, SocketAddrV6, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use common::{Lan, Netns, Proc, flat6_bin, wait_for, wait_until};

const MAC_A: &str = "02:f6:00:00:02:0a";
const MAC_B: &str = "02:f6:00:00:02:0b";
const ADDR_A: &str = "2001:db8:1:a::1";
const ADDR_B: &str = "2001:db8:1:b::1";

/// A hypervisor with two instances, A (no groups) and B (group `web`: TCP 80 from anyone, TCP 22
/// from group `admin`), and `flat6 guard` following a ports file.
struct Host {
    guard: Option<Proc>,
    a: Netns,
    b: Netns,
    lan: Lan,
    port_a: String,
    port_b: String,
    config: PathBuf,
    ports_file: PathBuf,
}

fn document(port_a: &str, port_b: &str, admin_members: &[&str], web_ports: &str) -> String {
    serde_json::json!({
        "revision": 1,
        "ports": [
            {"name": "a", "interface": port_a, "mac": MAC_A, "addresses": [ADDR_A],
             "prefix": "2001:db8:1:a::/64", "security_groups": []},
            {"name": "b", "interface": port_b, "mac": MAC_B, "addresses": [ADDR_B],
             "prefix": "2001:db8:1:b::/64", "security_groups": ["web"]}
        ],
        "security_groups": [
            {"name": "web", "members": [ADDR_B], "rules": [
                {"direction": "ingress", "protocol": "tcp", "ports": web_ports, "remote_prefix": "::/0"},
                {"direction": "ingress", "protocol": "tcp", "ports": "22", "remote_group": "admin"}
            ]},
            {"name": "admin", "members": admin_members, "rules": []}
        ]
    })
    .to_string()
}

fn write_atomically(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

impl Host {
    fn new() -> Host {
        let lan = Lan::new();
        let a = Netns::new();
        let b = Netns::new();
        let port_a = lan.attach(&a, "eth0", Some(MAC_A));
        let port_b = lan.attach(&b, "eth0", Some(MAC_B));
        for (ns, addr) in [(&a, ADDR_A), (&b, ADDR_B)] {
            ns.fast_ipv6("eth0");
            ns.ip(["addr", "add", &format!("{addr}/48"), "dev", "eth0", "nodad"]);
        }
        let dir = lan.hv().work_dir().to_path_buf();
        let ports_file = dir.join("ports.json");
        write_atomically(&ports_file, &document(&port_a, &port_b, &[], "80"));
        let config = dir.join("guard.toml");
        std::fs::write(
            &config,
            format!(
                "role = \"guard\"\ntable = \"flat6\"\nstate_dir = \"{}\"\nmetrics_listen = \"[::1]:9641\"\n[source]\nfile = \"{}\"\n",
                dir.join("state").display(),
                ports_file.display()
            ),
        )
        .expect("config");
        let mut host = Host {
            guard: None,
            a,
            b,
            lan,
            port_a,
            port_b,
            config,
            ports_file,
        };
        host.start_guard();
        host
    }

    fn start_guard(&mut self) {
        let guard = self.lan.hv().spawn([
            flat6_bin().to_string_lossy().as_ref(),
            "guard",
            "--config",
            self.config.to_string_lossy().as_ref(),
        ]);
        wait_for(
            "the guard to apply its first ruleset",
            Duration::from_secs(20),
            || {
                assert!(guard.is_running(), "flat6 guard exited:\n{}", guard.logs());
                guard.logs().contains("applied ruleset") || guard.logs().contains("already applied")
            },
        );
        self.guard = Some(guard);
    }

    fn guard(&self) -> &Proc {
        self.guard.as_ref().expect("guard running")
    }

    fn flat6(&self, action: &str) -> String {
        self.lan.hv().run([
            flat6_bin().to_string_lossy().as_ref(),
            "guard",
            action,
            "--config",
            self.config.to_string_lossy().as_ref(),
        ])
    }
}

/// Listen on TCP `port` on every address inside `ns` (the listener keeps its namespace).
fn listen(ns: &Netns, port: u16) -> TcpListener {
    ns.enter(move || {
        TcpListener::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)).expect("listen")
    })
}

/// Whether a TCP connection from `ns` to `addr`:`port` completes (a dropped SYN times out).
fn connects(ns: &Netns, addr: &str, port: u16) -> bool {
    let target = SocketAddrV6::new(addr.parse().expect("addr"), port, 0, 0);
    ns.enter(move || TcpStream::connect_timeout(&target.into(), Duration::from_secs(2)).is_ok())
}

#[test]
fn icmpv6_by_default_tcp_80_allowed_22_only_after_admin_membership() {
    require_root!();
    let host = Host::new();
    host.a.assert_ping6(ADDR_B, Duration::from_secs(5));
    host.b.assert_ping6(ADDR_A, Duration::from_secs(5));
    let _web = listen(&host.b, 80);
    let _ssh = listen(&host.b, 22);
    let _a_ssh = listen(&host.a, 22);
    assert!(
        connects(&host.a, ADDR_B, 80),
        "TCP 80 to a web instance must pass"
    );
    assert!(
        !connects(&host.a, ADDR_B, 22),
        "TCP 22 from a non-admin must be dropped"
    );
    assert!(
        !connects(&host.b, ADDR_A, 22),
        "an instance in no group accepts no new inbound TCP"
    );
    // A joins admin (as the controller would write it): 22 opens without a restart.
    write_atomically(
        &host.ports_file,
        &document(&host.port_a, &host.port_b, &[ADDR_A], "80"),
    );
    wait_for(
        "TCP 22 to open for the admin member",
        Duration::from_secs(20),
        || connects(&host.a, ADDR_B, 22),
    );
    assert!(
        host.guard().logs().contains("incremental"),
        "{}",
        host.guard().logs()
    );
}

#[test]
fn a_bad_document_is_rejected_and_the_rules_stay() {
    require_root!();
    let host = Host::new();
    let _web = listen(&host.b, 80);
    assert!(connects(&host.a, ADDR_B, 80));
    write_atomically(
        &host.ports_file,
        &document(&host.port_a, &host.port_b, &[], "90-80"),
    );
    wait_for(
        "the guard to reject the document",
        Duration::from_secs(20),
        || host.guard().logs().contains("rejected ports document"),
    );
    assert!(
        host.guard().logs().contains("90-80 is an empty range"),
        "{}",
        host.guard().logs()
    );
    assert!(
        connects(&host.a, ADDR_B, 80),
        "the previous rules must stay in force"
    );
    assert!(!connects(&host.a, ADDR_B, 22));
}

#[test]
fn kill_9_loses_no_ping_and_render_is_stable() {
    require_root!();
    let mut host = Host::new();
    let first = host.flat6("render");
    assert!(first.contains("flat6"), "{first}");
    assert_eq!(host.flat6("render"), first, "render must be stable");

    let guard = host.guard.take().expect("guard");
    // Ping before, across and after the kill and restart; every one must be answered.
    let mut lost = Vec::new();
    for i in 0..60 {
        if i == 20 {
            assert!(guard.signal(libc::SIGKILL));
            guard.wait_exit(Duration::from_secs(5)).expect("killed");
        }
        if i == 40 {
            host.start_guard();
        }
        if let Err(why) = host.a.ping6(ADDR_B, Duration::from_secs(2)) {
            lost.push((i, why));
        }
        // Pace the flow (this is not a readiness wait): about 1.2 s of pings in all.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lost.is_empty(), "lost pings: {lost:?}");
    let logs = host.guard().logs();
    assert!(
        logs.contains("already applied") || logs.contains("converging by diff"),
        "a restart with the same document must not rebuild:\n{logs}"
    );
    assert_eq!(host.flat6("render"), first);
    drop(guard);
}

#[test]
fn teardown_removes_its_tables_and_nothing_else() {
    require_root!();
    let host = Host::new();
    let hv = host.lan.hv();
    hv.run(["nft", "add", "table", "inet", "bystander"]);
    hv.run(["nft", "add", "table", "bridge", "bystander"]);
    let tables = |hv: &Netns| -> Vec<(String, String)> {
        let json = hv.json(["nft", "-j", "list", "tables"]);
        json["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("table"))
            .map(|t| {
                (
                    t["family"].as_str().unwrap_or_default().to_string(),
                    t["name"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let before = tables(hv);
    assert!(
        before.contains(&("bridge".into(), "flat6".into())),
        "{before:?}"
    );
    assert!(
        before.contains(&("inet".into(), "flat6".into())),
        "{before:?}"
    );
    host.guard().stop();
    host.flat6("teardown");
    let after = tables(hv);
    assert!(!after.iter().any(|(_, name)| name == "flat6"), "{after:?}");
    assert!(
        after.contains(&("inet".into(), "bystander".into())),
        "{after:?}"
    );
    assert!(
        after.contains(&("bridge".into(), "bystander".into())),
        "{after:?}"
    );
}

#[test]
fn packet_too_big_from_a_router_reaches_the_instance() {
    require_root!();
    let host = Host::new();
    // A router on the pod link, and behind it a 1280-MTU link to a far host.
    let router = Netns::new();
    let far = Netns::new();
    host.lan.attach(&router, "eth0", Some("02:f6:00:00:02:01"));
    router.fast_ipv6("eth0");
    router.ip(["addr", "add", "2001:db8:1::1/48", "dev", "eth0", "nodad"]);
    common::veth(&router, "narrow", &far, "eth0");
    for ns in [&router, &far] {
        let ifname = if std::ptr::eq(ns, &router) {
            "narrow"
        } else {
            "eth0"
        };
        ns.fast_ipv6(ifname);
        ns.ip(["link", "set", "dev", ifname, "mtu", "1280"]);
    }
    router.ip(["addr", "add", "2001:db8:2::1/64", "dev", "narrow", "nodad"]);
    far.ip(["addr", "add", "2001:db8:2::2/64", "dev", "eth0", "nodad"]);
    far.ip(["route", "add", "default", "via", "2001:db8:2::1"]);
    router.sysctl("net/ipv6/conf/all/forwarding", "1");
    host.a
        .ip(["route", "add", "2001:db8:2::/64", "via", "2001:db8:1::1"]);
    host.a.assert_ping6("2001:db8:2::2", Duration::from_secs(5));
    // A 1400-byte datagram does not fit the 1280 link: the router answers Packet Too Big.
    let send_big = || {
        host.a.enter(|| {
            let sock = std::net::UdpSocket::bind("[::]:0").expect("udp");
            let _ = sock.send_to(&[0u8; 1400], "[2001:db8:2::2]:9");
        })
    };
    let route_mtu = |ns: &Netns| -> Option<u64> {
        let json = ns.ip_json(["-6", "route", "get", "2001:db8:2::2"]);
        json.get(0).and_then(|r| r.get("metrics")).and_then(|m| {
            m.as_array()?
                .iter()
                .find_map(|x| x.get("mtu").and_then(serde_json::Value::as_u64))
        })
    };
    let mtu = wait_until("the PMTU to drop to 1280", Duration::from_secs(20), || {
        send_big();
        route_mtu(&host.a).filter(|m| *m == 1280)
    });
    assert_eq!(mtu, 1280);
}
