//! `role = "vr"`: the virtual router (RA + DHCPv6) on one pod link.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv6Net;
use serde::Deserialize;

use super::problems::{Checker, domain_problem};
use super::source::{SourceConfig, SourceWire};
use crate::model::{Mac, Prefix, parse_interface_address};

/// RFC 4861 §6.2.1 bounds on the RA intervals, seconds.
const MIN_RTR_ADV_INTERVAL_FLOOR: i64 = 3;
const MAX_RTR_ADV_INTERVAL_RANGE: (i64, i64) = (4, 1800);
/// RFC 4861 §6.2.1: AdvDefaultLifetime is 0 or between MaxRtrAdvInterval and 9000 s.
const MAX_ROUTER_LIFETIME: u16 = 9000;
/// The IPv6 minimum link MTU (RFC 8200 §5).
const IPV6_MIN_MTU: u32 = 1280;
/// RFC 4861 §6.2.1 AdvReachableTime upper bound, milliseconds.
const MAX_REACHABLE_TIME_MS: u32 = 3_600_000;

/// A validated VR config.
#[derive(Debug, Clone, PartialEq)]
pub struct VrConfig {
    /// The one pod link this process serves.
    pub interface: String,
    /// Where persistent state lives (server DUID, leases, the last document); created if missing.
    pub state_dir: PathBuf,
    /// Static addresses put on the interface through netlink.
    pub addresses: Vec<Ipv6Net>,
    /// If set, this MAC is put on the interface before it is brought up (a VR whose MAC the
    /// orchestrator assigns and the guard enforces).
    pub mac: Option<Mac>,
    /// Where `/metrics` and `/status` are served; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Router Advertisements.
    pub ra: RaConfig,
    /// The DHCPv6 server.
    pub dhcpv6: Dhcpv6Config,
    /// Where reservations come from (required when DHCPv6 is enabled).
    pub source: Option<SourceConfig>,
}

/// The `[ra]` section: what goes into each Router Advertisement (RFC 4861 §6.2.1) and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct RaConfig {
    /// Send RAs at all.
    pub enabled: bool,
    /// M flag: addresses come from DHCPv6.
    pub managed: bool,
    /// O flag: other configuration comes from DHCPv6.
    pub other: bool,
    /// Router lifetime; 0 means "not a default router".
    pub router_lifetime: u16,
    /// Default router preference (RFC 4191 §2.2).
    pub router_preference: RoutePreference,
    /// MinRtrAdvInterval.
    pub min_interval: Duration,
    /// MaxRtrAdvInterval.
    pub max_interval: Duration,
    /// Cur Hop Limit advertised (0 = unspecified).
    pub hop_limit: u8,
    /// Reachable Time, milliseconds (0 = unspecified).
    pub reachable_time: u32,
    /// Retrans Timer, milliseconds (0 = unspecified).
    pub retrans_timer: u32,
    /// MTU option, if any.
    pub mtu: Option<u32>,
    /// RDNSS servers (RFC 8106).
    pub dns_servers: Vec<Ipv6Addr>,
    /// DNSSL domains (RFC 8106), without trailing dots.
    pub domain_search: Vec<String>,
    /// Lifetime of the RDNSS and DNSSL options, seconds.
    pub dns_lifetime: u32,
    /// Prefix Information options.
    pub prefixes: Vec<RaPrefix>,
    /// Route Information options (RFC 4191).
    pub routes: Vec<RaRoute>,
}

/// One `[[ra.prefixes]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct RaPrefix {
    /// The prefix.
    pub prefix: Prefix,
    /// L flag.
    pub on_link: bool,
    /// A flag (SLAAC); false on a flat6 pod.
    pub autonomous: bool,
    /// Valid lifetime, seconds (0xffffffff = infinity).
    pub valid_lifetime: u32,
    /// Preferred lifetime, seconds; never above the valid lifetime.
    pub preferred_lifetime: u32,
}

/// One `[[ra.routes]]` entry (RFC 4191 Route Information).
#[derive(Debug, Clone, PartialEq)]
pub struct RaRoute {
    /// The destination prefix.
    pub prefix: Prefix,
    /// Route preference.
    pub preference: RoutePreference,
    /// Route lifetime, seconds.
    pub lifetime: u32,
}

/// RFC 4191 §2.1 preference values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutePreference {
    /// 11
    Low,
    /// 00
    Medium,
    /// 01
    High,
}

/// The `[dhcpv6]` section (RFC 8415 server).
#[derive(Debug, Clone, PartialEq)]
pub struct Dhcpv6Config {
    /// Serve DHCPv6 at all.
    pub enabled: bool,
    /// DNS recursive name servers (option 23).
    pub dns_servers: Vec<Ipv6Addr>,
    /// Domain search list (option 24).
    pub domain_search: Vec<String>,
    /// NTP servers (option 56, server-address suboption; also SNTP option 31).
    pub ntp_servers: Vec<Ipv6Addr>,
    /// Preferred lifetime of handed-out addresses, seconds.
    pub preferred_lifetime: u32,
    /// Valid lifetime of handed-out addresses, seconds.
    pub valid_lifetime: u32,
    /// T1, seconds.
    pub t1: u32,
    /// T2, seconds.
    pub t2: u32,
    /// Honour Rapid Commit (RFC 8415 §18.3.1).
    pub rapid_commit: bool,
    /// Preference option value in Advertise.
    pub preference: u8,
    /// Where the client MAC comes from, in order of trust.
    pub mac_sources: Vec<MacSource>,
    /// Messages per second per client MAC.
    pub rate_limit: u32,
}

/// Where the DHCPv6 server learns a client's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacSource {
    /// The Ethernet source of the received frame (enforced by the hypervisor).
    Frame,
    /// The MAC inside a DUID-LL or DUID-LLT (what load generators and relays show).
    Duid,
}

impl VrConfig {
    /// See [`super::Config::warnings`].
    pub fn warnings(&self) -> Vec<String> {
        let sources = &self.dhcpv6.mac_sources;
        let duid = sources.iter().position(|s| *s == MacSource::Duid);
        let frame = sources.iter().position(|s| *s == MacSource::Frame);
        match (duid, frame) {
            (Some(d), f) if f.is_none_or(|f| d < f) => vec![format!(
                "dhcpv6.mac_sources: \"duid\" before \"frame\" lets a client choose whose \
                 reservation it gets (the DUID is whatever the client sends, and Solicits are \
                 multicast, so DUIDs can be sniffed): use it on trusted links only (a load \
                 generator); on a pod link of tenants keep [\"frame\"]"
            )],
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VrFile {
    #[allow(dead_code)]
    role: String,
    interface: Option<String>,
    state_dir: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    mac: Option<String>,
    metrics_listen: Option<String>,
    #[serde(default)]
    ra: RaWire,
    #[serde(default)]
    dhcpv6: Dhcpv6Wire,
    source: Option<SourceWire>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RaWire {
    enabled: Option<bool>,
    managed: Option<bool>,
    other: Option<bool>,
    router_lifetime: Option<i64>,
    router_preference: Option<String>,
    min_interval: Option<i64>,
    max_interval: Option<i64>,
    hop_limit: Option<i64>,
    reachable_time: Option<i64>,
    retrans_timer: Option<i64>,
    mtu: Option<i64>,
    #[serde(default)]
    dns_servers: Vec<String>,
    #[serde(default)]
    domain_search: Vec<String>,
    dns_lifetime: Option<i64>,
    #[serde(default)]
    prefixes: Vec<RaPrefixWire>,
    #[serde(default)]
    routes: Vec<RaRouteWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RaPrefixWire {
    prefix: Option<String>,
    on_link: Option<bool>,
    autonomous: Option<bool>,
    valid_lifetime: Option<i64>,
    preferred_lifetime: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RaRouteWire {
    prefix: Option<String>,
    preference: Option<String>,
    lifetime: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Dhcpv6Wire {
    enabled: Option<bool>,
    #[serde(default)]
    dns_servers: Vec<String>,
    #[serde(default)]
    domain_search: Vec<String>,
    #[serde(default)]
    ntp_servers: Vec<String>,
    preferred_lifetime: Option<i64>,
    valid_lifetime: Option<i64>,
    t1: Option<i64>,
    t2: Option<i64>,
    rapid_commit: Option<bool>,
    preference: Option<i64>,
    mac_sources: Option<Vec<String>>,
    rate_limit: Option<i64>,
}

/// Linux `IFNAMSIZ - 1`.
const MAX_IFNAME: usize = 15;

pub(crate) fn interface_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("empty interface name".to_string())
    } else if name.len() > MAX_IFNAME {
        Some(format!("{name:?} is longer than {MAX_IFNAME} bytes"))
    } else if name.contains(['/', ':', '*', '\\', '"', '\''])
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
        || name == "."
        || name == ".."
    {
        Some(format!("{name:?} is not a valid interface name"))
    } else {
        None
    }
}

fn preference(check: &mut Checker, path: &str, text: Option<String>) -> Option<RoutePreference> {
    match text.as_deref() {
        None | Some("medium") => Some(RoutePreference::Medium),
        Some("low") => Some(RoutePreference::Low),
        Some("high") => Some(RoutePreference::High),
        Some(other) => {
            check.problem(
                path,
                format!("{other:?} is not a preference; expected \"low\", \"medium\" or \"high\""),
            );
            None
        }
    }
}

fn ipv6_list(check: &mut Checker, path: &str, texts: &[String]) -> Vec<Ipv6Addr> {
    let mut out = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let item = format!("{path}[{i}]");
        if let Some(addr) = check.ipv6(&item, text) {
            if addr.is_unspecified() || addr.is_multicast() {
                check.problem(&item, format!("{addr} is not a unicast address"));
            } else if out.contains(&addr) {
                check.problem(&item, format!("{addr} is listed twice"));
            } else {
                out.push(addr);
            }
        }
    }
    out
}

fn domain_list(check: &mut Checker, path: &str, texts: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let item = format!("{path}[{i}]");
        match domain_problem(text) {
            Some(problem) => check.problem(&item, problem),
            None => {
                let name = text.trim_end_matches('.').to_ascii_lowercase();
                if out.contains(&name) {
                    check.problem(&item, format!("{text:?} is listed twice"));
                } else {
                    out.push(name);
                }
            }
        }
    }
    out
}

impl VrFile {
    pub(crate) fn validate(self, check: &mut Checker) -> Option<VrConfig> {
        let interface = check.required("interface", self.interface);
        if let Some(name) = &interface
            && let Some(problem) = interface_name_problem(name)
        {
            check.problem("interface", problem);
        }
        let state_dir = PathBuf::from(self.state_dir.unwrap_or_else(|| "/var/lib/flat6/vr".into()));
        let mut addresses = Vec::new();
        for (i, text) in self.addresses.iter().enumerate() {
            let path = format!("addresses[{i}]");
            match parse_interface_address(text) {
                Ok(net) if net.addr().is_multicast() || net.addr().is_unspecified() => {
                    check.problem(&path, format!("{text:?} is not a unicast address"))
                }
                Ok(net) if addresses.iter().any(|a: &Ipv6Net| a.addr() == net.addr()) => {
                    check.problem(&path, format!("{} is listed twice", net.addr()))
                }
                Ok(net) => addresses.push(net),
                Err(_) => check.problem(
                    &path,
                    format!("{text:?} is not an IPv6 address with a prefix length, like 2001:db8:1::2/48"),
                ),
            }
        }
        let mac = match self.mac {
            None => None,
            Some(text) => match check.parse::<Mac>("mac", &text) {
                Some(mac) if !mac.is_unicast() => {
                    check.problem("mac", format!("{mac} is not a unicast MAC"));
                    None
                }
                other => other,
            },
        };
        let metrics_listen = self
            .metrics_listen
            .and_then(|text| check.parse::<SocketAddr>("metrics_listen", &text));
        let ra = self.ra.validate(check);
        let dhcpv6 = self.dhcpv6.validate(check);
        let source = self.source.and_then(|s| s.validate(check, "pod"));
        if let Some(d) = &dhcpv6
            && d.enabled
            && source.is_none()
            && !check.reported("source")
        {
            check.problem(
                "source",
                "required when dhcpv6.enabled = true: set [source] file = \"…\" or controller = \"http://…\"",
            );
        }
        Some(VrConfig {
            interface: interface?,
            state_dir,
            addresses,
            mac,
            metrics_listen,
            ra: ra?,
            dhcpv6: dhcpv6?,
            source,
        })
    }
}

impl RaWire {
    fn validate(self, check: &mut Checker) -> Option<RaConfig> {
        let max_secs = match self.max_interval {
            None => Some(600),
            Some(v) => check.range::<u32>(
                "ra.max_interval",
                v,
                MAX_RTR_ADV_INTERVAL_RANGE.0 as u32,
                MAX_RTR_ADV_INTERVAL_RANGE.1 as u32,
            ),
        };
        // RFC 4861 §6.2.1: MinRtrAdvInterval defaults to 0.33 * MaxRtrAdvInterval (if that is ≥ 9 s,
        // else to MaxRtrAdvInterval) and must be between 3 s and 0.75 * MaxRtrAdvInterval.
        let min_secs = match (self.min_interval, max_secs) {
            (None, Some(max)) => Some(
                if max >= 9 {
                    max * 33 / 100
                } else {
                    max * 3 / 4
                }
                .max(3),
            ),
            (None, None) => None,
            (Some(v), max) => {
                let upper = max.map_or(1350, |m| m * 3 / 4);
                if v < MIN_RTR_ADV_INTERVAL_FLOOR || v > i64::from(upper) {
                    let why = match max {
                        Some(m) => format!(
                            "must be between 3 and 0.75 × max_interval ({m}) = {upper} seconds (RFC 4861 §6.2.1)"
                        ),
                        None => "must be at least 3 seconds (RFC 4861 §6.2.1)".to_string(),
                    };
                    check.problem("ra.min_interval", format!("{v} {why}"));
                    None
                } else {
                    u32::try_from(v).ok()
                }
            }
        };
        let router_lifetime = match self.router_lifetime {
            None => Some(0),
            Some(v) => check
                .range::<u16>("ra.router_lifetime", v, 0, MAX_ROUTER_LIFETIME)
                .and_then(|lifetime| match max_secs {
                    Some(max) if lifetime != 0 && u32::from(lifetime) < max => {
                        check.problem(
                            "ra.router_lifetime",
                            format!("{lifetime} must be 0 or at least max_interval ({max}) (RFC 4861 §6.2.1)"),
                        );
                        None
                    }
                    _ => Some(lifetime),
                }),
        };
        let router_preference = preference(check, "ra.router_preference", self.router_preference);
        let hop_limit = self
            .hop_limit
            .map_or(Some(64), |v| check.range::<u8>("ra.hop_limit", v, 0, 255));
        let reachable_time = self.reachable_time.map_or(Some(0), |v| {
            check.range::<u32>("ra.reachable_time", v, 0, MAX_REACHABLE_TIME_MS)
        });
        let retrans_timer = self.retrans_timer.map_or(Some(0), |v| {
            check.range::<u32>("ra.retrans_timer", v, 0, u32::MAX)
        });
        let mtu = match self.mtu {
            None => Some(None),
            Some(v) => check
                .range::<u32>("ra.mtu", v, IPV6_MIN_MTU, 65535)
                .map(Some),
        };
        let dns_servers = ipv6_list(check, "ra.dns_servers", &self.dns_servers);
        let domain_search = domain_list(check, "ra.domain_search", &self.domain_search);
        // RFC 8106 §5.1: the lifetime SHOULD be at least 3 × MaxRtrAdvInterval.
        let dns_lifetime = match self.dns_lifetime {
            None => max_secs.map(|m| m * 3),
            Some(v) => check.range::<u32>("ra.dns_lifetime", v, 0, u32::MAX),
        };

        let mut prefixes: Vec<RaPrefix> = Vec::new();
        for (i, wire) in self.prefixes.into_iter().enumerate() {
            let base = format!("ra.prefixes[{i}]");
            let path = format!("{base}.prefix");
            let prefix = check
                .required(&path, wire.prefix)
                .and_then(|text| check.parse::<Prefix>(&path, &text));
            if let Some(p) = &prefix
                && prefixes.iter().any(|q| q.prefix == *p)
            {
                check.problem(&path, format!("{p} is listed twice"));
            }
            let valid = wire.valid_lifetime.map_or(Some(2_592_000), |v| {
                check.range::<u32>(&format!("{base}.valid_lifetime"), v, 0, u32::MAX)
            });
            let preferred = wire.preferred_lifetime.map_or(Some(604_800), |v| {
                check.range::<u32>(&format!("{base}.preferred_lifetime"), v, 0, u32::MAX)
            });
            if let (Some(v), Some(p)) = (valid, preferred)
                && p > v
            {
                check.problem(
                    &format!("{base}.preferred_lifetime"),
                    format!("{p} is greater than valid_lifetime ({v})"),
                );
            }
            let autonomous = wire.autonomous.unwrap_or(false);
            if autonomous && prefix.is_some_and(|p| p.len() != 64) {
                check.problem(
                    &format!("{base}.autonomous"),
                    "SLAAC (autonomous = true) only works with a /64 prefix",
                );
            }
            if let (Some(prefix), Some(valid_lifetime), Some(preferred_lifetime)) =
                (prefix, valid, preferred)
            {
                prefixes.push(RaPrefix {
                    prefix,
                    on_link: wire.on_link.unwrap_or(true),
                    autonomous,
                    valid_lifetime,
                    preferred_lifetime,
                });
            }
        }

        let mut routes: Vec<RaRoute> = Vec::new();
        for (i, wire) in self.routes.into_iter().enumerate() {
            let base = format!("ra.routes[{i}]");
            let path = format!("{base}.prefix");
            let prefix = check
                .required(&path, wire.prefix)
                .and_then(|text| check.parse::<Prefix>(&path, &text));
            if let Some(p) = &prefix
                && routes.iter().any(|q| q.prefix == *p)
            {
                check.problem(&path, format!("{p} is listed twice"));
            }
            let pref = preference(check, &format!("{base}.preference"), wire.preference);
            let lifetime = wire.lifetime.map_or(Some(1800), |v| {
                check.range::<u32>(&format!("{base}.lifetime"), v, 0, u32::MAX)
            });
            if let (Some(prefix), Some(preference), Some(lifetime)) = (prefix, pref, lifetime) {
                routes.push(RaRoute {
                    prefix,
                    preference,
                    lifetime,
                });
            }
        }

        Some(RaConfig {
            enabled: self.enabled.unwrap_or(true),
            managed: self.managed.unwrap_or(true),
            other: self.other.unwrap_or(true),
            router_lifetime: router_lifetime?,
            router_preference: router_preference?,
            min_interval: Duration::from_secs(u64::from(min_secs?)),
            max_interval: Duration::from_secs(u64::from(max_secs?)),
            hop_limit: hop_limit?,
            reachable_time: reachable_time?,
            retrans_timer: retrans_timer?,
            mtu: mtu?,
            dns_servers,
            domain_search,
            dns_lifetime: dns_lifetime?,
            prefixes,
            routes,
        })
    }
}

impl Dhcpv6Wire {
    fn validate(self, check: &mut Checker) -> Option<Dhcpv6Config> {
        let dns_servers = ipv6_list(check, "dhcpv6.dns_servers", &self.dns_servers);
        let domain_search = domain_list(check, "dhcpv6.domain_search", &self.domain_search);
        let ntp_servers = ipv6_list(check, "dhcpv6.ntp_servers", &self.ntp_servers);
        let preferred = self.preferred_lifetime.map_or(Some(3600), |v| {
            check.range::<u32>("dhcpv6.preferred_lifetime", v, 0, u32::MAX)
        });
        let valid = self.valid_lifetime.map_or(Some(7200), |v| {
            check.range::<u32>("dhcpv6.valid_lifetime", v, 0, u32::MAX)
        });
        if let (Some(p), Some(v)) = (preferred, valid)
            && p > v
        {
            check.problem(
                "dhcpv6.preferred_lifetime",
                format!("{p} is greater than valid_lifetime ({v})"),
            );
        }
        // RFC 8415 §21.4: recommended T1 = 0.5 and T2 = 0.8 of the shortest preferred lifetime.
        let t1 = match self.t1 {
            None => preferred.map(|p| p / 2),
            Some(v) => check.range::<u32>("dhcpv6.t1", v, 0, u32::MAX),
        };
        let t2 = match self.t2 {
            None => preferred.map(|p| (u64::from(p) * 4 / 5) as u32),
            Some(v) => check.range::<u32>("dhcpv6.t2", v, 0, u32::MAX),
        };
        if let (Some(a), Some(b)) = (t1, t2)
            && a > b
        {
            check.problem(
                "dhcpv6.t1",
                format!("{a} is greater than t2 ({b}) (RFC 8415 §21.4)"),
            );
        }
        if let (Some(b), Some(p)) = (t2, preferred)
            && b > p
        {
            check.problem(
                "dhcpv6.t2",
                format!("{b} is greater than preferred_lifetime ({p}); clients would let addresses deprecate before rebinding"),
            );
        }
        let preference = self.preference.map_or(Some(255), |v| {
            check.range::<u8>("dhcpv6.preference", v, 0, 255)
        });
        let mut mac_sources = Vec::new();
        for (i, text) in self
            .mac_sources
            .unwrap_or_else(|| vec!["frame".into()])
            .iter()
            .enumerate()
        {
            let path = format!("dhcpv6.mac_sources[{i}]");
            let source = match text.as_str() {
                "frame" => MacSource::Frame,
                "duid" => MacSource::Duid,
                other => {
                    check.problem(
                        &path,
                        format!("{other:?} is not a MAC source; expected \"frame\" or \"duid\""),
                    );
                    continue;
                }
            };
            if mac_sources.contains(&source) {
                check.problem(&path, format!("{text:?} is listed twice"));
            } else {
                mac_sources.push(source);
            }
        }
        if mac_sources.is_empty() && !check.reported("dhcpv6.mac_sources") {
            check.problem(
                "dhcpv6.mac_sources",
                "needs at least one of \"frame\", \"duid\"",
            );
        }
        let rate_limit = self.rate_limit.map_or(Some(20), |v| {
            check.range::<u32>("dhcpv6.rate_limit", v, 1, 1_000_000)
        });
        Some(Dhcpv6Config {
            enabled: self.enabled.unwrap_or(true),
            dns_servers,
            domain_search,
            ntp_servers,
            preferred_lifetime: preferred?,
            valid_lifetime: valid?,
            t1: t1?,
            t2: t2?,
            rapid_commit: self.rapid_commit.unwrap_or(true),
            preference: preference?,
            mac_sources,
            rate_limit: rate_limit?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, parse};
    use super::*;

    fn vr(text: &str) -> VrConfig {
        match parse(text) {
            Ok(Config::Vr(c)) => *c,
            other => panic!("expected a vr config, got {other:?}"),
        }
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(problems) => problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    const MINIMAL: &str = "role = \"vr\"\ninterface = \"vr0\"\n[dhcpv6]\nenabled = false\n";

    #[test]
    fn minimal_config_gets_rfc_defaults() {
        let c = vr(MINIMAL);
        assert_eq!(c.interface, "vr0");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/flat6/vr"));
        assert!(c.ra.enabled && c.ra.managed && c.ra.other);
        assert_eq!(c.ra.router_lifetime, 0);
        assert_eq!(c.ra.max_interval, Duration::from_secs(600));
        assert_eq!(c.ra.min_interval, Duration::from_secs(198));
        assert_eq!(c.ra.hop_limit, 64);
        assert_eq!(c.ra.dns_lifetime, 1800);
        assert!(!c.dhcpv6.enabled);
        assert_eq!(c.dhcpv6.t1, 1800);
        assert_eq!(c.dhcpv6.t2, 2880);
        assert_eq!(c.dhcpv6.mac_sources, vec![MacSource::Frame]);
    }

    #[test]
    fn a_duid_before_the_frame_is_valid_but_warned_about() {
        assert!(vr(MINIMAL).warnings().is_empty());
        let with = |sources: &str| {
            vr(&format!(
                "role = \"vr\"\ninterface = \"vr0\"\n[dhcpv6]\nenabled = false\nmac_sources = {sources}\n"
            ))
            .warnings()
        };
        assert!(with(r#"["frame", "duid"]"#).is_empty());
        for sources in [r#"["duid", "frame"]"#, r#"["duid"]"#] {
            let warnings = with(sources);
            assert_eq!(warnings.len(), 1, "{sources}");
            assert!(
                warnings[0].starts_with("dhcpv6.mac_sources:") && warnings[0].contains("trusted"),
                "{warnings:?}"
            );
        }
    }

    #[test]
    fn the_issue_example_is_valid() {
        let c = vr(r#"
role = "vr"
interface = "vr0"
state_dir = "/var/lib/flat6/vr"
addresses = ["2001:db8:1::2/48"]
[ra]
enabled = true
managed = true
other = true
router_lifetime = 0
min_interval = 200
max_interval = 600
hop_limit = 64
mtu = 1500
dns_servers = ["2001:db8::53"]
domain_search = ["pod1.example"]
[[ra.prefixes]]
prefix = "2001:db8:1::/48"
on_link = true
autonomous = false
valid_lifetime = 86400
preferred_lifetime = 14400
[[ra.routes]]
prefix = "2001:db8:ffff::/48"
preference = "medium"
lifetime = 1800
[dhcpv6]
dns_servers = ["2001:db8::53"]
domain_search = ["pod1.example"]
ntp_servers = ["2001:db8::123"]
[source]
file = "/var/lib/flat6/vr/reservations.json"
"#);
        assert_eq!(c.ra.prefixes.len(), 1);
        assert!(!c.ra.prefixes[0].autonomous && c.ra.prefixes[0].on_link);
        assert_eq!(c.ra.routes[0].preference, RoutePreference::Medium);
        assert_eq!(c.ra.mtu, Some(1500));
        assert!(c.dhcpv6.enabled);
        assert_eq!(
            c.source,
            Some(SourceConfig::File(
                "/var/lib/flat6/vr/reservations.json".into()
            ))
        );
    }

    #[test]
    fn unknown_key_bad_prefix_and_bad_mac_in_one_run() {
        let got = problems(
            r#"
role = "vr"
interface = "vr0"
mac = "02:00:00:00:00:zz"
typo = 1
[[ra.prefixes]]
prefix = "2001:db8:1::/48"
[[ra.prefixes]]
prefix = "2001:db8::/129"
[dhcpv6]
enabled = false
"#,
        );
        assert_eq!(
            got,
            vec![
                "typo: unknown key".to_string(),
                "mac: \"02:00:00:00:00:zz\" is not a MAC address (a group is not hex); expected six hex pairs like 02:00:00:00:00:01".to_string(),
                "ra.prefixes[1].prefix: \"2001:db8::/129\" is not an IPv6 prefix".to_string(),
            ]
        );
    }

    #[test]
    fn ra_section_negative_cases() {
        let cases: &[(&str, &str)] = &[
            (
                "[ra]\nmin_interval = 2\n",
                "ra.min_interval: 2 must be between 3 and 0.75",
            ),
            (
                "[ra]\nmin_interval = 500\nmax_interval = 600\n",
                "ra.min_interval: 500 must be between 3 and 0.75",
            ),
            (
                "[ra]\nmax_interval = 1801\n",
                "ra.max_interval: 1801 is out of range 4..=1800",
            ),
            (
                "[ra]\nmax_interval = 3\n",
                "ra.max_interval: 3 is out of range 4..=1800",
            ),
            (
                "[ra]\nrouter_lifetime = 9001\n",
                "ra.router_lifetime: 9001 is out of range 0..=9000",
            ),
            (
                "[ra]\nrouter_lifetime = 100\n",
                "ra.router_lifetime: 100 must be 0 or at least max_interval (600)",
            ),
            (
                "[ra]\nhop_limit = 256\n",
                "ra.hop_limit: 256 is out of range 0..=255",
            ),
            (
                "[ra]\nmtu = 1000\n",
                "ra.mtu: 1000 is out of range 1280..=65535",
            ),
            (
                "[ra]\ndns_servers = [\"10.0.0.1\"]\n",
                "ra.dns_servers[0]: \"10.0.0.1\" is not an IPv6 address",
            ),
            (
                "[ra]\ndomain_search = [\"a..b\"]\n",
                "ra.domain_search[0]: \"a..b\" has an empty label",
            ),
            (
                "[ra]\nrouter_preference = \"top\"\n",
                "ra.router_preference: \"top\" is not a preference",
            ),
            (
                "[[ra.prefixes]]\nprefix = \"2001:db8::1/64\"\n",
                "ra.prefixes[0].prefix: \"2001:db8::1/64\" has bits set beyond /64",
            ),
            (
                "[[ra.prefixes]]\non_link = true\n",
                "ra.prefixes[0].prefix: missing (required)",
            ),
            (
                "[[ra.prefixes]]\nprefix = \"2001:db8::/64\"\nvalid_lifetime = 10\npreferred_lifetime = 20\n",
                "ra.prefixes[0].preferred_lifetime: 20 is greater than valid_lifetime (10)",
            ),
            (
                "[[ra.prefixes]]\nprefix = \"2001:db8::/64\"\n[[ra.prefixes]]\nprefix = \"2001:db8::/64\"\n",
                "ra.prefixes[1].prefix: 2001:db8::/64 is listed twice",
            ),
            (
                "[[ra.prefixes]]\nprefix = \"2001:db8::/48\"\nautonomous = true\n",
                "ra.prefixes[0].autonomous: SLAAC",
            ),
            (
                "[[ra.routes]]\nprefix = \"2001:db8:ffff::/48\"\npreference = \"best\"\n",
                "ra.routes[0].preference: \"best\" is not a preference",
            ),
            (
                "[[ra.routes]]\nprefix = \"2001:db8:ffff::/200\"\n",
                "ra.routes[0].prefix: \"2001:db8:ffff::/200\" is not an IPv6 prefix",
            ),
        ];
        for (section, want) in cases {
            let text =
                format!("role = \"vr\"\ninterface = \"vr0\"\n[dhcpv6]\nenabled = false\n{section}");
            let got = problems(&text);
            assert!(
                got.iter().any(|p| p.starts_with(want)),
                "for\n{section}\nwanted a problem starting {want:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn top_level_and_dhcpv6_negative_cases() {
        let cases: &[(&str, &str)] = &[
            (
                "role = \"vr\"\n[dhcpv6]\nenabled = false\n",
                "interface: missing (required)",
            ),
            (
                "role = \"vr\"\ninterface = \"a-very-long-interface-name\"\n[dhcpv6]\nenabled = false\n",
                "interface: \"a-very-long-interface-name\" is longer than 15 bytes",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\naddresses = [\"2001:db8::2\"]\n[dhcpv6]\nenabled = false\n",
                "addresses[0]: \"2001:db8::2\" is not an IPv6 address with a prefix length",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\nmac = \"01:00:5e:00:00:01\"\n[dhcpv6]\nenabled = false\n",
                "mac: 01:00:5e:00:00:01 is not a unicast MAC",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n",
                "source: required when dhcpv6.enabled = true",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n[source]\nfile = \"/x\"\ncontroller = \"http://[::1]:8640\"\n",
                "source: set either file or controller, not both",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n[source]\ncontroller = \"http://[::1]:8640\"\n",
                "source.pod: missing (required)",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n[source]\ncontroller = \"ftp://x\"\npod = \"p\"\ntoken_file = \"/t\"\n",
                "source.controller: \"ftp://x\" is not an http:// or https:// URL",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n[source]\ncontroller = \"http://x\"\npod = \"p\"\ntoken_file = \"/t\"\nca_file = \"/ca.pem\"\n",
                "source.ca_file: only used with an https:// source.controller",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n[source]\nfile = \"/x\"\nca_file = \"/ca.pem\"\n",
                "source.ca_file: only used with source.controller",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n[source]\nfile = \"/x\"\nhost = \"h\"\n",
                "source.host: not used by this role",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n[source]\nfile = \"/x\"\n[dhcpv6]\nt1 = 3000\nt2 = 2000\n",
                "dhcpv6.t1: 3000 is greater than t2 (2000)",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n[source]\nfile = \"/x\"\n[dhcpv6]\nmac_sources = [\"guess\"]\n",
                "dhcpv6.mac_sources[0]: \"guess\" is not a MAC source",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n[source]\nfile = \"/x\"\n[dhcpv6]\nmac_sources = []\n",
                "dhcpv6.mac_sources: needs at least one",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n[source]\nfile = \"/x\"\n[dhcpv6]\nrate_limit = 0\n",
                "dhcpv6.rate_limit: 0 is out of range",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\n[source]\nfile = \"/x\"\n[dhcpv6]\nntp_servers = [\"ff02::1\"]\n",
                "dhcpv6.ntp_servers[0]: ff02::1 is not a unicast address",
            ),
            (
                "role = \"vr\"\ninterface = \"vr0\"\nmetrics_listen = \"nowhere\"\n[dhcpv6]\nenabled = false\n",
                "metrics_listen: invalid socket address",
            ),
        ];
        for (text, want) in cases {
            let got = problems(text);
            assert!(
                got.iter().any(|p| p.starts_with(want)),
                "for\n{text}\nwanted a problem starting {want:?}, got {got:?}"
            );
        }
    }
}
