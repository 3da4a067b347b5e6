//! `flat6 vr` Router Advertisements against real peers: rdisc6, the Linux kernel's own RA handling
//! and tcpdump, on a bridge in network namespaces.

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use common::{Lan, Netns, Proc, flat6_bin, wait_for, wait_until};
use serde_json::Value;

const VR_MAC: &str = "02:f6:00:00:00:fe";
const INSTANCE_MAC: &str = "02:f6:00:00:01:01";

/// A pod link: a hypervisor bridge, a VR namespace running `flat6 vr` on `vr0`, one instance on `eth0`.
struct Pod {
    // Field order is drop order: stop the VR before its namespace goes away.
    vr: Proc,
    instance: Netns,
    vr_ns: Netns,
    _lan: Lan,
}

fn vr_config(state_dir: &str, ra: &str) -> String {
    format!(
        r#"role = "vr"
interface = "vr0"
state_dir = "{state_dir}"
addresses = ["2001:db8:1::2/48"]
metrics_listen = "[::1]:9640"
[ra]
{ra}
dns_servers = ["2001:db8::53"]
domain_search = ["pod1.example"]
[[ra.prefixes]]
prefix = "2001:db8:1::/48"
on_link = true
autonomous = false
valid_lifetime = 86400
preferred_lifetime = 14400
[dhcpv6]
enabled = false
"#
    )
}

impl Pod {
    fn start(ra: &str) -> Pod {
        let lan = Lan::new();
        let vr_ns = Netns::new();
        let instance = Netns::new();
        lan.attach(&vr_ns, "vr0", Some(VR_MAC));
        lan.attach(&instance, "eth0", Some(INSTANCE_MAC));
        // The instance behaves like a host (forwarding off); accept_ra=2 as a cloud image would set it.
        instance.sysctl("net/ipv6/conf/eth0/accept_ra", "2");
        instance.fast_ipv6("eth0");
        let state = vr_ns.work_dir().join("vr-state");
        let config = vr_ns.work_dir().join("vr.toml");
        std::fs::write(&config, vr_config(&state.to_string_lossy(), ra)).expect("write vr.toml");
        let vr = vr_ns.spawn([
            flat6_bin().to_string_lossy().as_ref(),
            "vr",
            "--config",
            config.to_string_lossy().as_ref(),
        ]);
        let pod = Pod {
            vr,
            instance,
            vr_ns,
            _lan: lan,
        };
        wait_for(
            "flat6 vr to start advertising",
            Duration::from_secs(20),
            || {
                assert!(pod.vr.is_running(), "flat6 vr exited:\n{}", pod.vr.logs());
                pod.vr.logs().contains("advertising on the link")
            },
        );
        pod
    }

    fn vr_link_local(&self) -> String {
        self.vr_ns.wait_link_local("vr0", Duration::from_secs(10))
    }

    fn routes(&self) -> Vec<Value> {
        self.instance
            .routes()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn route(&self, dst: &str) -> Option<Value> {
        self.routes()
            .into_iter()
            .find(|r| r["dst"].as_str() == Some(dst) && r["dev"].as_str() == Some("eth0"))
    }
}

/// `rdisc6` output as (label, value) pairs, e.g. ("Stateful address conf.", "Yes").
fn rdisc6_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], label: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(k, _)| k == label)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn rdisc6_sees_managed_other_lifetime_0_prefix_without_autonomous_and_dns() {
    require_root!();
    let pod = Pod::start("router_lifetime = 0\nmtu = 1500");
    let out = wait_until("rdisc6 to get an answer", Duration::from_secs(20), || {
        let out = pod
            .instance
            .exec(["rdisc6", "-1", "-r", "3", "-w", "1500", "eth0"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    let fields = rdisc6_fields(&out);
    assert_eq!(field(&fields, "Stateful address conf."), ["Yes"], "{out}");
    assert_eq!(field(&fields, "Stateful other conf."), ["Yes"], "{out}");
    assert_eq!(
        field(&fields, "Router lifetime"),
        ["0 (0x00000000) seconds"],
        "{out}"
    );
    assert_eq!(field(&fields, "Prefix"), ["2001:db8:1::/48"], "{out}");
    assert_eq!(field(&fields, "On-link"), ["Yes"], "{out}");
    assert_eq!(field(&fields, "Autonomous address conf."), ["No"], "{out}");
    assert_eq!(
        field(&fields, "Recursive DNS server"),
        ["2001:db8::53"],
        "{out}"
    );
    assert_eq!(field(&fields, "DNS search list"), ["pod1.example"], "{out}");
    assert_eq!(field(&fields, "MTU"), ["1500 bytes (valid)"], "{out}");
    let from = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("from "))
        .expect("rdisc6 names the sender");
    assert_eq!(from, pod.vr_link_local(), "{out}");
}

#[test]
fn kernel_installs_the_on_link_route_and_forms_no_slaac_address() {
    require_root!();
    let pod = Pod::start("router_lifetime = 0");
    let route = wait_until(
        "the on-link 2001:db8:1::/48 route from the RA",
        Duration::from_secs(20),
        || pod.route("2001:db8:1::/48"),
    );
    // The kernel files PIO routes under protocol "kernel"; the expiry shows it came from the RA's
    // valid lifetime (86400 s), not from an address on the interface.
    let expires = route["expires"].as_u64().unwrap_or(0);
    assert!(expires > 86_000 && expires <= 86_400, "{route}");
    // The same RA processing that installed the route would have formed a SLAAC address.
    let globals: Vec<_> = pod
        .instance
        .addrs("eth0")
        .into_iter()
        .filter(|a| a.scope == "global")
        .collect();
    assert!(globals.is_empty(), "SLAAC formed {globals:?}");
    assert!(
        pod.route("default").is_none(),
        "router lifetime 0 must not make the VR a default router: {:?}",
        pod.routes()
    );
}

#[test]
fn default_route_via_the_vr_and_gone_after_sigterm() {
    require_root!();
    let pod = Pod::start("router_lifetime = 1800");
    let vr_ll = pod.vr_link_local();
    let route = wait_until(
        "a default route learned from the RA",
        Duration::from_secs(20),
        || pod.route("default"),
    );
    assert_eq!(route["gateway"].as_str(), Some(vr_ll.as_str()), "{route}");
    assert_eq!(route["protocol"], "ra", "{route}");

    let stopped = Instant::now();
    assert!(pod.vr.signal(libc::SIGTERM), "flat6 vr had already exited");
    let status = pod
        .vr
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("flat6 vr did not exit on SIGTERM:\n{}", pod.vr.logs()));
    assert!(status.success(), "exit {status}:\n{}", pod.vr.logs());
    // The route's own lifetime is 1800 s: it can only go this early because of the final RAs.
    // (How fast it goes is measured in docs/benchmarks.md, not asserted here.)
    wait_for(
        "the default route to be withdrawn by the final RAs",
        Duration::from_secs(30),
        || pod.route("default").is_none(),
    );
    eprintln!("default route gone {:?} after SIGTERM", stopped.elapsed());
    assert!(
        pod.vr.logs().contains("sent final router advertisements"),
        "{}",
        pod.vr.logs()
    );
}

/// Count router advertisements in a pcap file written by tcpdump.
fn count_ras(ns: &Netns, pcap: &str) -> usize {
    let out = ns.run(["tcpdump", "-nn", "-r", pcap, "icmp6 and ip6[40] == 134"]);
    out.lines()
        .filter(|l| l.contains("router advertisement"))
        .count()
}

fn capture(ns: &Netns, pcap: &str, filter: &str) -> Proc {
    let tcpdump = ns.spawn([
        "tcpdump",
        "-i",
        "eth0",
        "-nn",
        "-U",
        "--immediate-mode",
        "-w",
        pcap,
        filter,
    ]);
    wait_for("tcpdump to listen", Duration::from_secs(10), || {
        tcpdump.logs().contains("listening on")
    });
    tcpdump
}

/// Send `count` Router Solicitations from `ns`'s eth0 to ff02::2, one every `gap`.
fn send_rs_flood(ns: &Netns, count: usize, gap: Duration) {
    ns.enter(move || {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let index = nix_if_index("eth0");
        let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).expect("socket");
        sock.set_multicast_hops_v6(255).expect("hops");
        sock.set_multicast_if_v6(index).expect("multicast if");
        let all_routers: Ipv6Addr = "ff02::2".parse().expect("addr");
        let dest = SockAddr::from(std::net::SocketAddrV6::new(all_routers, 0, 0, index));
        // RFC 4861 §4.1: type 133, code 0, checksum (kernel), reserved.
        let rs = [133u8, 0, 0, 0, 0, 0, 0, 0];
        let start = Instant::now();
        for i in 0..count {
            sock.send_to(&rs, &dest).expect("send RS");
            let due = start + gap * (i as u32 + 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });
}

fn nix_if_index(name: &str) -> u32 {
    let name = std::ffi::CString::new(name).expect("name");
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {name:?}");
    index
}

#[test]
fn a_flood_of_10000_rs_yields_only_rate_limited_ras() {
    require_root!();
    let pod = Pod::start("router_lifetime = 0");
    // Let the first unsolicited RA go out, so the capture sees only what the flood causes.
    wait_until(
        "the first RA at the instance",
        Duration::from_secs(20),
        || pod.route("2001:db8:1::/48"),
    );
    let pcap = pod.instance.work_dir().join("flood.pcap");
    let pcap = pcap.to_string_lossy().into_owned();
    let tcpdump = capture(&pod.instance, &pcap, "icmp6");
    let started = Instant::now();
    send_rs_flood(&pod.instance, 10_000, Duration::from_micros(500));
    // Give a response scheduled at the end of the flood time to go out (≤ 3 s + 500 ms).
    std::thread::sleep(Duration::from_millis(3600));
    let elapsed = started.elapsed();
    tcpdump.stop();

    let ras = count_ras(&pod.instance, &pcap);
    let rs_seen = pod
        .instance
        .run(["tcpdump", "-nn", "-r", &pcap, "icmp6 and ip6[40] == 133"])
        .lines()
        .count();
    // At most one multicast RA per MIN_DELAY_BETWEEN_RAS (3 s) over the whole capture, plus one.
    let bound = (elapsed.as_secs_f64() / 3.0).floor() as usize + 1;
    eprintln!("{rs_seen} RS on the wire in {elapsed:?} produced {ras} RAs (bound {bound})");
    assert!(
        rs_seen >= 9_000,
        "the flood did not reach the wire: {rs_seen} RS"
    );
    assert!(ras >= 1, "no RA answered the flood at all");
    assert!(
        ras <= bound,
        "{ras} RAs for a flood from one host; bound {bound}"
    );
    assert!(
        pod.vr.logs().contains("per-source limit dropped"),
        "the VR did not log the dropped RSs:\n{}",
        pod.vr.logs()
    );
}

#[test]
fn link_down_and_up_restarts_advertising() {
    require_root!();
    let pod = Pod::start("router_lifetime = 0");
    wait_until(
        "the first RA at the instance",
        Duration::from_secs(20),
        || pod.route("2001:db8:1::/48"),
    );
    pod.vr_ns.ip(["link", "set", "dev", "vr0", "down"]);
    wait_for(
        "the VR to notice link down",
        Duration::from_secs(10),
        || pod.vr.logs().contains("stopped advertising"),
    );
    let pcap = pod.instance.work_dir().join("flap.pcap");
    let pcap = pcap.to_string_lossy().into_owned();
    let tcpdump = capture(&pod.instance, &pcap, "icmp6 and ip6[40] == 134");
    let up = Instant::now();
    pod.vr_ns.ip(["link", "set", "dev", "vr0", "up"]);
    // With RAs every 200-600 s otherwise, only the restart's fast initial RA can arrive this soon.
    wait_for("an RA after link up", Duration::from_secs(30), || {
        tcpdump.logs().contains("listening on") && {
            std::fs::metadata(&pcap)
                .map(|m| m.len() > 24)
                .unwrap_or(false)
                && count_ras(&pod.instance, &pcap) >= 1
        }
    });
    eprintln!("first RA after link up arrived within {:?}", up.elapsed());
    tcpdump.stop();
    assert!(pod.vr.is_running(), "{}", pod.vr.logs());
    assert_eq!(
        pod.vr.logs().matches("advertising on the link").count(),
        2,
        "{}",
        pod.vr.logs()
    );
}

/// `GET path` on `[::1]:port` from inside `ns`.
fn http_get(ns: &Netns, port: u16, path: &str) -> String {
    let path = path.to_string();
    ns.enter(move || {
        flat6::controller::client::Client::new(
            &format!("http://[::1]:{port}"),
            "unused",
            Duration::from_secs(5),
        )
        .request("GET", &path, None)
        .map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    })
}

#[test]
fn metrics_and_status_show_what_the_vr_does() {
    require_root!();
    let pod = Pod::start("router_lifetime = 0");
    pod.instance
        .exec(["rdisc6", "-1", "-r", "3", "-w", "1500", "eth0"]);
    let metrics = wait_until("RAs counted", Duration::from_secs(10), || {
        let m = http_get(&pod.vr_ns, 9640, "/metrics");
        let sent = m
            .lines()
            .find_map(|l| l.strip_prefix("flat6_vr_ras_sent_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        (sent >= 1).then_some(m)
    });
    assert!(
        metrics.contains("# TYPE flat6_vr_rs_received_total counter"),
        "{metrics}"
    );
    let status: Value = serde_json::from_str(&http_get(&pod.vr_ns, 9640, "/status")).expect("json");
    assert_eq!(status["interface"], "vr0", "{status}");
    assert_eq!(status["link_up"], true, "{status}");
    assert_eq!(status["advertising"], true, "{status}");
    assert_eq!(
        status["link_local"].as_str(),
        Some(pod.vr_link_local().as_str()),
        "{status}"
    );
}
