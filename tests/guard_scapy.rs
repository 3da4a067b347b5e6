//! `flat6 guard` against hand-made frames: an attacking instance A forges what no well-behaved
//! instance sends (a spoofed IPv6 source, a spoofed Ethernet source, a Router Advertisement, DHCPv6
//! server messages, Neighbor Advertisements for other instances' addresses or the router's
//! link-local address, traffic from the router's link-local address) with scapy
//! (`tests/scapy/guard_send.py`), and the victims B and C, sniffing their own eth0
//! (`tests/scapy/guard_sniff.py`), must see none of it, while A's genuine traffic sent in the same
//! batches must arrive. Every forged frame carries a marker of its own (a UDP payload, an ICMPv6
//! echo id, a DHCPv6 transaction id, an RA prefix, an NA target and link-layer address), so a
//! failure names the attack that got through.
//!
//! The victims' security groups accept UDP 4000 from anyone, so the stateful stage 2 (inet) would
//! pass every forged UDP datagram: what is dropped is dropped by the stateless per-port stage 1
//! (bridge), which is what these tests are about (see the module docs of `src/guard/render.rs`).
//!
//! Each attack is sent three times; after all rounds A sends fence frames, and a victim that has
//! seen its fences has seen everything sent before them on the same path. Besides the sniffers,
//! the victims' kernels are checked: no neighbour entry poisoned by an NA, no route or address from
//! the forged RA.
//!
//! Besides root, the tests need `/usr/bin/python3` with scapy (Debian's `python3-scapy`); without it
//! they say so loudly and skip, or fail when `FLAT6_REQUIRE_ROOT=1`.

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::scapy::{PYTHON, require_scapy, script};
use common::{Lan, Netns, Proc, flat6_bin, wait_for, wait_until};

const MAC_A: &str = "02:f6:00:00:03:0a";
const MAC_B: &str = "02:f6:00:00:03:0b";
const MAC_C: &str = "02:f6:00:00:03:0c";
/// A MAC no port owns, for the spoofed Ethernet source and a lying link-layer address option.
const SPOOF_MAC: &str = "02:f6:de:ad:be:ef";
const ADDR_A: &str = "2001:db8:1:a::1";
const ADDR_B: &str = "2001:db8:1:b::1";
const ADDR_C: &str = "2001:db8:1:c::1";
/// Inside A's /64 but not one of its addresses.
const A_PREFIX_OTHER: &str = "2001:db8:1:a::99";
/// Inside B's /64 but not one of its addresses.
const B_PREFIX_OTHER: &str = "2001:db8:1:b::99";
/// Outside every port's prefix.
const FOREIGN: &str = "2001:db8:ffff::1";
/// The prefix of the forged Router Advertisement.
const RA_PREFIX: &str = "2001:db8:dead::/64";
const RA_PREFIX_START: &str = "2001:db8:dead:";
/// The UDP port the victims' security group accepts from anyone.
const UDP_PORT: u16 = 4000;
/// All-nodes multicast (RFC 4291 §2.7.1) and its Ethernet mapping (RFC 2464 §7).
const ALL_NODES: &str = "ff02::1";
const ALL_NODES_MAC: &str = "33:33:00:00:00:01";
/// The router's link-local address, protected by the guard's `router_link_local`.
const ROUTER_LL: &str = "fe80::1";
/// How often each frame is sent.
const ROUNDS: u64 = 3;

/// A hypervisor with three instances on one bridge: A (the attacker, in no group) and the victims B
/// and C (group `sink`: UDP 4000 from anyone), each with one address in its own /64, and
/// `flat6 guard` with the given `anti_spoofing` mode. Fields drop in order: the guard first.
struct Host {
    guard: Proc,
    a: Netns,
    b: Netns,
    c: Netns,
    /// Holds the hypervisor namespace (bridge and guard) until the instances are gone.
    _lan: Lan,
}

impl Host {
    fn new(anti_spoofing: &str) -> Host {
        let lan = Lan::new();
        let (a, b, c) = (Netns::new(), Netns::new(), Netns::new());
        let mut ports = Vec::new();
        for (name, ns, mac, addr, prefix) in [
            ("a", &a, MAC_A, ADDR_A, "2001:db8:1:a::/64"),
            ("b", &b, MAC_B, ADDR_B, "2001:db8:1:b::/64"),
            ("c", &c, MAC_C, ADDR_C, "2001:db8:1:c::/64"),
        ] {
            let port = lan.attach(ns, "eth0", Some(mac));
            ns.fast_ipv6("eth0");
            ns.ip(["addr", "add", &format!("{addr}/48"), "dev", "eth0", "nodad"]);
            let groups: Vec<&str> = if name == "a" { vec![] } else { vec!["sink"] };
            ports.push(json!({
                "name": name, "interface": port, "mac": mac, "addresses": [addr],
                "prefix": prefix,
                "security_groups": groups,
            }));
        }
        let document = json!({
            "revision": 1,
            "ports": ports,
            "security_groups": [
                {"name": "sink", "members": [ADDR_B, ADDR_C], "rules": [
                    {"direction": "ingress", "protocol": "udp", "ports": UDP_PORT.to_string(),
                     "remote_prefix": "::/0"}
                ]}
            ]
        });
        let dir = lan.hv().work_dir().to_path_buf();
        let ports_file = dir.join("ports.json");
        std::fs::write(&ports_file, document.to_string()).expect("ports file");
        let config = dir.join("guard.toml");
        std::fs::write(
            &config,
            format!(
                "role = \"guard\"\ntable = \"flat6\"\nanti_spoofing = \"{anti_spoofing}\"\n\
                 router_link_local = [\"{ROUTER_LL}\"]\n\
                 state_dir = \"{}\"\n[source]\nfile = \"{}\"\n",
                dir.join("state").display(),
                ports_file.display()
            ),
        )
        .expect("config");
        let guard = lan.hv().spawn([
            flat6_bin().to_string_lossy().as_ref(),
            "guard",
            "--config",
            config.to_string_lossy().as_ref(),
        ]);
        wait_for(
            "the guard to apply its first ruleset",
            Duration::from_secs(20),
            || {
                assert!(guard.is_running(), "flat6 guard exited:\n{}", guard.logs());
                guard.logs().contains("applied ruleset") || guard.logs().contains("already applied")
            },
        );
        Host {
            guard,
            a,
            b,
            c,
            _lan: lan,
        }
    }
}

/// The IPv6 neighbour entries on `ns`'s eth0 as `(address, lladdr)`; entries without a link-layer
/// address (INCOMPLETE, FAILED) are left out.
fn neighbours(ns: &Netns) -> Vec<(String, String)> {
    ns.ip_json(["-6", "neigh", "show", "dev", "eth0"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                n.get("dst")?.as_str()?.to_owned(),
                n.get("lladdr")?.as_str()?.to_ascii_lowercase(),
            ))
        })
        .collect()
}

/// The link-layer address `ns` has for `addr`, if any.
fn lladdr_of(ns: &Netns, addr: &str) -> Option<String> {
    neighbours(ns)
        .into_iter()
        .find(|(dst, _)| dst == addr)
        .map(|(_, lladdr)| lladdr)
}

/// A sniffer (`tests/scapy/guard_sniff.py`) on a victim's eth0.
struct Sniffer<'a> {
    name: &'static str,
    mac: &'static str,
    ns: &'a Netns,
    proc: Proc,
}

impl<'a> Sniffer<'a> {
    /// Start it and wait until its capture socket is open.
    fn start(name: &'static str, ns: &'a Netns, mac: &'static str) -> Sniffer<'a> {
        let sniff_py = script("guard_sniff.py");
        let proc = ns.spawn([PYTHON, sniff_py.as_str(), "--iface", "eth0"]);
        wait_for(
            &format!("the sniffer on {name} to be ready"),
            Duration::from_secs(20),
            || {
                assert!(
                    proc.is_running(),
                    "sniffer on {name} exited:\n{}",
                    proc.logs()
                );
                proc.logs().lines().any(|l| l.trim() == "ready")
            },
        );
        Sniffer {
            name,
            mac,
            ns,
            proc,
        }
    }

    /// Everything reported so far, one JSON object per received frame.
    fn records(&self) -> Vec<Value> {
        self.proc
            .logs()
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|err| {
                    panic!("sniffer on {} printed bad JSON ({err}): {l}", self.name)
                })
            })
            .collect()
    }

    /// Whether a frame is addressed to this victim: to its MAC, or multicast.
    fn receives(&self, frame: &Value) -> bool {
        let dst = frame["eth_dst"].as_str().unwrap_or_default();
        dst == self.mac || dst.starts_with("33:33:")
    }
}

/// One frame for `guard_send.py`, with what it is for the failure messages.
struct Probe {
    what: &'static str,
    frame: Value,
}

fn probe(what: &'static str, frame: Value) -> Probe {
    Probe { what, frame }
}

/// A UDP datagram to port [`UDP_PORT`] carrying `payload` as its marker.
fn udp(eth_src: &str, eth_dst: &str, ip_src: &str, ip_dst: &str, payload: &str) -> Value {
    json!({"kind": "udp", "eth_src": eth_src, "eth_dst": eth_dst, "ip_src": ip_src,
           "ip_dst": ip_dst, "sport": UDP_PORT, "dport": UDP_PORT, "payload": payload})
}

/// An ICMPv6 Echo Request whose identifier is the marker.
fn echo(ip_src: &str, ip_dst: &str, id: u16) -> Value {
    json!({"kind": "echo", "eth_src": MAC_A, "eth_dst": MAC_B, "ip_src": ip_src,
           "ip_dst": ip_dst, "id": id})
}

/// An unsolicited Neighbor Advertisement with the override flag, to all nodes; the marker is the
/// pair (target, target link-layer address).
fn na(ip_src: &str, target: &str, tlla: &str) -> Value {
    json!({"kind": "na", "eth_src": MAC_A, "eth_dst": ALL_NODES_MAC, "ip_src": ip_src,
           "ip_dst": ALL_NODES, "target": target, "tlla": tlla, "override": true})
}

/// A DHCPv6 server message (UDP 547 → 546); the transaction id is the marker.
fn dhcp6(ip_src: &str, eth_dst: &str, ip_dst: &str, msgtype: u8, trid: u32) -> Value {
    json!({"kind": "dhcp6", "eth_src": MAC_A, "eth_dst": eth_dst, "ip_src": ip_src,
           "ip_dst": ip_dst, "sport": 547, "dport": 546, "msgtype": msgtype, "trid": trid})
}

/// Whether a sniffer record is (a copy of) `frame`, judged by its marker alone (which no other
/// traffic carries), and with `exact` also by its Ethernet source and IPv6 addresses (so that a
/// control cannot be stood in for by the kernel's own traffic, such as A's NA answering B's NS).
fn is_copy_of(record: &Value, frame: &Value, exact: bool) -> bool {
    if record["kind"] != frame["kind"] {
        return false;
    }
    if exact
        && ["eth_src", "ip_src", "ip_dst"]
            .iter()
            .any(|k| record[*k] != frame[*k])
    {
        return false;
    }
    match frame["kind"].as_str() {
        Some("udp") => record["payload"] == frame["payload"],
        Some("echo") => record["id"] == frame["id"],
        Some("dhcp6") => record["trid"] == frame["trid"],
        Some("na") => record["target"] == frame["target"] && record["tlla"] == frame["tlla"],
        Some("ra") => record["prefixes"]
            .as_array()
            .is_some_and(|p| p.contains(&frame["prefix"])),
        other => panic!("unknown frame kind {other:?}"),
    }
}

/// How many records are copies of `frame` (see [`is_copy_of`]).
fn copies(records: &[Value], frame: &Value, exact: bool) -> usize {
    records
        .iter()
        .filter(|r| is_copy_of(r, frame, exact))
        .count()
}

/// What the victims saw of one run of `guard_send.py` in A.
struct Outcome<'a> {
    sniffers: Vec<(Sniffer<'a>, Vec<Value>)>,
}

/// Send `attacks` then `controls` from A, [`ROUNDS`] times, then fences (UDP with payload `fence`
/// to B and to all nodes); wait until every sniffer has seen the fences addressed to it, and return
/// what each saw.
fn run_attack<'a>(
    host: &Host,
    sniffers: Vec<Sniffer<'a>>,
    attacks: &[Probe],
    controls: &[Probe],
) -> Outcome<'a> {
    let fences = [
        udp(MAC_A, MAC_B, ADDR_A, ADDR_B, "fence"),
        udp(MAC_A, ALL_NODES_MAC, ADDR_A, ALL_NODES, "fence-all"),
    ];
    let frames: Vec<&Value> = attacks.iter().chain(controls).map(|p| &p.frame).collect();
    let plan = json!({"rounds": ROUNDS, "frames": frames, "fence": fences});
    let plan_path = host.a.work_dir().join("plan.json");
    std::fs::write(&plan_path, plan.to_string()).expect("plan");
    let send_py = script("guard_send.py");
    host.a.run([
        PYTHON,
        send_py.as_str(),
        "--iface",
        "eth0",
        "--plan",
        plan_path.to_string_lossy().as_ref(),
    ]);
    let sniffers = sniffers
        .into_iter()
        .map(|sniffer| {
            let records = wait_until(
                &format!("the fences to reach {}", sniffer.name),
                Duration::from_secs(20),
                || {
                    let records = sniffer.records();
                    fences
                        .iter()
                        .filter(|f| sniffer.receives(f))
                        .all(|f| copies(&records, f, true) > 0)
                        .then_some(records)
                },
            );
            (sniffer, records)
        })
        .collect();
    Outcome { sniffers }
}

impl Outcome<'_> {
    /// Panic unless no victim the attacks were addressed to saw any of them, and each saw every
    /// control addressed to it; all failures in one message.
    fn assert_dropped_and_passed(&self, attacks: &[Probe], controls: &[Probe], guard: &Proc) {
        let mut failures = Vec::new();
        for (sniffer, records) in &self.sniffers {
            for attack in attacks.iter().filter(|p| sniffer.receives(&p.frame)) {
                let n = copies(records, &attack.frame, false);
                if n > 0 {
                    failures.push(format!(
                        "ATTACK NOT DROPPED: {} saw {n} of {ROUNDS} copies of {}: {}",
                        sniffer.name, attack.what, attack.frame
                    ));
                }
            }
            for control in controls.iter().filter(|p| sniffer.receives(&p.frame)) {
                if copies(records, &control.frame, true) == 0 {
                    failures.push(format!(
                        "GENUINE TRAFFIC LOST: {} saw none of {ROUNDS} copies of {}: {}",
                        sniffer.name, control.what, control.frame
                    ));
                }
            }
        }
        if !failures.is_empty() {
            let seen: Vec<String> = self
                .sniffers
                .iter()
                .map(|(s, records)| {
                    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
                    format!("--- {} received ---\n{}", s.name, lines.join("\n"))
                })
                .collect();
            panic!(
                "{}\n{}\n--- guard log ---\n{}",
                failures.join("\n"),
                seen.join("\n"),
                guard.logs()
            );
        }
    }

    /// The namespaces of the victims.
    fn victims(&self) -> impl Iterator<Item = (&'static str, &Netns)> {
        self.sniffers.iter().map(|(s, _)| (s.name, s.ns))
    }
}

/// Make B and C resolve each other, so each has a neighbour entry a forged NA could overwrite.
fn seed_neighbour_caches(host: &Host) {
    host.b.assert_ping6(ADDR_C, Duration::from_secs(10));
    host.c.assert_ping6(ADDR_B, Duration::from_secs(10));
    assert_eq!(lladdr_of(&host.b, ADDR_C).as_deref(), Some(MAC_C));
    assert_eq!(lladdr_of(&host.c, ADDR_B).as_deref(), Some(MAC_B));
}

/// Panic if B's entry for C or C's entry for B no longer holds the genuine MAC, or if any entry
/// on a victim points at the spoofed MAC, or at A's MAC for an address not in `a_owns`.
fn assert_no_poisoned_neighbours(host: &Host, a_owns: &[&str]) {
    assert_eq!(
        lladdr_of(&host.b, ADDR_C).as_deref(),
        Some(MAC_C),
        "B's neighbour entry for C was overwritten: {:?}",
        neighbours(&host.b)
    );
    assert_eq!(
        lladdr_of(&host.c, ADDR_B).as_deref(),
        Some(MAC_B),
        "C's neighbour entry for B was overwritten: {:?}",
        neighbours(&host.c)
    );
    for (name, ns) in [("B", &host.b), ("C", &host.c)] {
        let entries = neighbours(ns);
        let bad: Vec<&(String, String)> = entries
            .iter()
            .filter(|(dst, lladdr)| {
                lladdr == SPOOF_MAC || (lladdr == MAC_A && !a_owns.contains(&dst.as_str()))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{name} maps addresses that are not A's to A's or a spoofed MAC: {bad:?} \
             (all: {entries:?})"
        );
    }
}

#[test]
fn forged_identity_ra_dhcpv6_and_na_from_an_instance_are_dropped_its_own_traffic_passes() {
    require_root!();
    if !require_scapy(test_name!()) {
        return;
    }
    let host = Host::new("address");
    let a_ll = host.a.wait_link_local("eth0", Duration::from_secs(10));
    let b_ll = host.b.wait_link_local("eth0", Duration::from_secs(10));
    host.c.wait_link_local("eth0", Duration::from_secs(10));
    seed_neighbour_caches(&host);

    let attacks = [
        probe(
            "a spoofed IPv6 source outside every prefix",
            udp(MAC_A, MAC_B, FOREIGN, ADDR_B, "spoof-src-foreign"),
        ),
        probe(
            "a spoofed IPv6 source: C's address",
            udp(MAC_A, MAC_B, ADDR_C, ADDR_B, "spoof-src-peer"),
        ),
        probe(
            "a spoofed IPv6 source: B's own address",
            udp(MAC_A, MAC_B, ADDR_B, ADDR_B, "spoof-src-victim"),
        ),
        probe(
            "an IPv6 source in A's /64 that is not A's address (anti_spoofing = address)",
            udp(MAC_A, MAC_B, A_PREFIX_OTHER, ADDR_B, "spoof-src-own-prefix"),
        ),
        probe(
            "a spoofed Ethernet source with A's genuine IPv6 source",
            udp(SPOOF_MAC, MAC_B, ADDR_A, ADDR_B, "spoof-mac"),
        ),
        probe(
            "an echo request from a spoofed IPv6 source",
            echo(FOREIGN, ADDR_B, 0xdead),
        ),
        probe(
            "a Router Advertisement for 2001:db8:dead::/64 to all nodes",
            json!({"kind": "ra", "eth_src": MAC_A, "eth_dst": ALL_NODES_MAC, "ip_src": a_ll,
                   "ip_dst": ALL_NODES, "prefix": RA_PREFIX, "slla": MAC_A}),
        ),
        probe(
            "a DHCPv6 Advertise to B's link-local address",
            dhcp6(&a_ll, MAC_B, &b_ll, 2, 0x00de_ad02),
        ),
        probe(
            "a DHCPv6 Advertise to all nodes",
            dhcp6(&a_ll, ALL_NODES_MAC, ALL_NODES, 2, 0x00de_ad03),
        ),
        probe(
            "a DHCPv6 Reply to B's link-local address",
            dhcp6(&a_ll, MAC_B, &b_ll, 7, 0x00de_ad07),
        ),
        probe(
            "an NA claiming B's address for A's MAC",
            na(ADDR_A, ADDR_B, MAC_A),
        ),
        probe(
            "an NA claiming C's address for A's MAC",
            na(ADDR_A, ADDR_C, MAC_A),
        ),
        probe(
            "an NA claiming an unused address in B's /64",
            na(&a_ll, B_PREFIX_OTHER, MAC_A),
        ),
        probe(
            "an NA for A's own address with a spoofed target link-layer address",
            na(ADDR_A, ADDR_A, SPOOF_MAC),
        ),
        probe(
            "an NA claiming the router's link-local address (router_link_local) for A's MAC",
            na(&a_ll, ROUTER_LL, MAC_A),
        ),
        probe(
            "UDP from the router's link-local address (router_link_local)",
            udp(MAC_A, MAC_B, ROUTER_LL, ADDR_B, "spoof-router-ll"),
        ),
    ];
    let controls = [
        probe(
            "UDP from A's genuine address and MAC",
            udp(MAC_A, MAC_B, ADDR_A, ADDR_B, "valid"),
        ),
        probe(
            "an echo request from A's genuine address",
            echo(ADDR_A, ADDR_B, 0xbeef),
        ),
        probe(
            "an NA for A's own address with A's MAC",
            na(ADDR_A, ADDR_A, MAC_A),
        ),
        probe(
            "an NA for A's link-local address with A's MAC",
            na(&a_ll, &a_ll, MAC_A),
        ),
        probe(
            "UDP from A's own link-local address",
            udp(MAC_A, MAC_B, &a_ll, ADDR_B, "valid-ll"),
        ),
    ];

    let sniffers = vec![
        Sniffer::start("B", &host.b, MAC_B),
        Sniffer::start("C", &host.c, MAC_C),
    ];
    let outcome = run_attack(&host, sniffers, &attacks, &controls);
    outcome.assert_dropped_and_passed(&attacks, &controls, &host.guard);

    assert_no_poisoned_neighbours(&host, &[ADDR_A, &a_ll]);
    for (name, ns) in outcome.victims() {
        let routes = ns.routes();
        let from_ra: Vec<&Value> = routes
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                let dst = r["dst"].as_str().unwrap_or_default();
                dst == "default" || dst.starts_with(RA_PREFIX_START)
            })
            .collect();
        assert!(
            from_ra.is_empty(),
            "{name} has routes from the forged RA: {from_ra:?}"
        );
        let addrs: Vec<String> = ns
            .addrs("eth0")
            .into_iter()
            .map(|a| a.addr)
            .filter(|a| a.starts_with(RA_PREFIX_START))
            .collect();
        assert!(
            addrs.is_empty(),
            "{name} autoconfigured addresses from the forged RA: {addrs:?}"
        );
    }
}

#[test]
fn prefix_mode_lets_an_instance_use_its_whole_64_and_nothing_outside() {
    require_root!();
    if !require_scapy(test_name!()) {
        return;
    }
    let host = Host::new("prefix");
    let a_ll = host.a.wait_link_local("eth0", Duration::from_secs(10));
    host.b.wait_link_local("eth0", Duration::from_secs(10));
    host.c.wait_link_local("eth0", Duration::from_secs(10));
    seed_neighbour_caches(&host);

    let attacks = [
        probe(
            "a source in B's /64",
            udp(
                MAC_A,
                MAC_B,
                B_PREFIX_OTHER,
                ADDR_B,
                "spoof-src-peer-prefix",
            ),
        ),
        probe(
            "a source outside every prefix",
            udp(MAC_A, MAC_B, FOREIGN, ADDR_B, "spoof-src-foreign"),
        ),
        probe(
            "a source in A's /64 from a spoofed Ethernet source",
            udp(
                SPOOF_MAC,
                MAC_B,
                A_PREFIX_OTHER,
                ADDR_B,
                "spoof-mac-in-prefix",
            ),
        ),
        probe(
            "an NA claiming C's address for A's MAC",
            na(A_PREFIX_OTHER, ADDR_C, MAC_A),
        ),
        probe(
            "an NA claiming an unused address in B's /64",
            na(ADDR_A, B_PREFIX_OTHER, MAC_A),
        ),
    ];
    let controls = [
        probe(
            "UDP from another address in A's /64",
            udp(MAC_A, MAC_B, A_PREFIX_OTHER, ADDR_B, "in-prefix"),
        ),
        probe(
            "UDP from A's configured address",
            udp(MAC_A, MAC_B, ADDR_A, ADDR_B, "valid"),
        ),
        probe(
            "an echo request from another address in A's /64",
            echo(A_PREFIX_OTHER, ADDR_B, 0xbeef),
        ),
        probe(
            "an NA for another address in A's /64 with A's MAC",
            na(A_PREFIX_OTHER, A_PREFIX_OTHER, MAC_A),
        ),
    ];

    let sniffers = vec![
        Sniffer::start("B", &host.b, MAC_B),
        Sniffer::start("C", &host.c, MAC_C),
    ];
    let outcome = run_attack(&host, sniffers, &attacks, &controls);
    outcome.assert_dropped_and_passed(&attacks, &controls, &host.guard);
    assert_no_poisoned_neighbours(&host, &[ADDR_A, A_PREFIX_OTHER, &a_ll]);
}
