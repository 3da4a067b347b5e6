//! What our Router Advertisement says, and how another router's RA disagrees with it.
//!
//! Both are pure: [`build`] turns the `[ra]` config into the message repr, and [`compare`] lists the
//! RFC 4861 §6.2.7 inconsistencies between a received RA and ours.

use std::fmt;

use super::packet::{Dnssl, Preference, PrefixInfo, Rdnss, RouteInfo, RouterAdvert};
use crate::config::{RaConfig, RoutePreference};
use crate::model::Mac;

fn preference(p: RoutePreference) -> Preference {
    match p {
        RoutePreference::Low => Preference::Low,
        RoutePreference::Medium => Preference::Medium,
        RoutePreference::High => Preference::High,
    }
}

/// The RA this router sends, with `router_lifetime` taken from the config. `final_ra` builds the
/// §6.2.5 "ceasing to be a router" variant, whose router lifetime is 0.
pub fn build(config: &RaConfig, source_mac: Option<Mac>, final_ra: bool) -> RouterAdvert {
    let router_lifetime = if final_ra { 0 } else { config.router_lifetime };
    RouterAdvert {
        hop_limit: config.hop_limit,
        managed: config.managed,
        other: config.other,
        // RFC 4191 §2.2: a router that is not a default router sends preference medium (00).
        preference: if router_lifetime == 0 {
            Preference::Medium
        } else {
            preference(config.router_preference)
        },
        router_lifetime,
        reachable_time: config.reachable_time,
        retrans_timer: config.retrans_timer,
        source_lla: source_mac.map(|m| m.octets()),
        mtu: config.mtu,
        prefixes: config
            .prefixes
            .iter()
            .map(|p| PrefixInfo {
                prefix: p.prefix.addr(),
                prefix_len: p.prefix.len(),
                on_link: p.on_link,
                autonomous: p.autonomous,
                valid_lifetime: p.valid_lifetime,
                preferred_lifetime: p.preferred_lifetime,
            })
            .collect(),
        routes: config
            .routes
            .iter()
            .map(|r| RouteInfo {
                prefix: r.prefix.addr(),
                prefix_len: r.prefix.len(),
                preference: preference(r.preference),
                lifetime: r.lifetime,
            })
            .collect(),
        rdnss: if config.dns_servers.is_empty() {
            Vec::new()
        } else {
            vec![Rdnss {
                lifetime: config.dns_lifetime,
                servers: config.dns_servers.clone(),
            }]
        },
        dnssl: if config.domain_search.is_empty() {
            Vec::new()
        } else {
            vec![Dnssl {
                lifetime: config.dns_lifetime,
                domains: config.domain_search.clone(),
            }]
        },
        ignored_options: 0,
    }
}

/// One way another router's RA contradicts ours (RFC 4861 §6.2.7).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Inconsistency {
    /// The M flag differs.
    Managed { ours: bool, theirs: bool },
    /// The O flag differs.
    Other { ours: bool, theirs: bool },
    /// Both specify a Cur Hop Limit and they differ.
    HopLimit { ours: u8, theirs: u8 },
    /// Both specify a Reachable Time and they differ.
    ReachableTime { ours: u32, theirs: u32 },
    /// Both specify a Retrans Timer and they differ.
    RetransTimer { ours: u32, theirs: u32 },
    /// Both carry an MTU option and the values differ.
    Mtu { ours: u32, theirs: u32 },
    /// The same prefix is advertised with other lifetimes (no decrementing lifetimes here).
    PrefixLifetimes {
        prefix: String,
        ours: (u32, u32),
        theirs: (u32, u32),
    },
    /// The same prefix is advertised with the A flag set by them and clear by us (or the reverse):
    /// not a §6.2.7 item, but on a flat6 pod an A=1 prefix means instances will use SLAAC.
    Autonomous { prefix: String, theirs: bool },
}

impl fmt::Display for Inconsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Managed { ours, theirs } => write!(f, "M flag {theirs}, ours {ours}"),
            Self::Other { ours, theirs } => write!(f, "O flag {theirs}, ours {ours}"),
            Self::HopLimit { ours, theirs } => write!(f, "hop limit {theirs}, ours {ours}"),
            Self::ReachableTime { ours, theirs } => {
                write!(f, "reachable time {theirs} ms, ours {ours} ms")
            }
            Self::RetransTimer { ours, theirs } => {
                write!(f, "retrans timer {theirs} ms, ours {ours} ms")
            }
            Self::Mtu { ours, theirs } => write!(f, "MTU {theirs}, ours {ours}"),
            Self::PrefixLifetimes {
                prefix,
                ours,
                theirs,
            } => write!(
                f,
                "prefix {prefix} lifetimes valid/preferred {}/{}, ours {}/{}",
                theirs.0, theirs.1, ours.0, ours.1
            ),
            Self::Autonomous { prefix, theirs } => {
                write!(
                    f,
                    "prefix {prefix} autonomous flag {theirs}, ours {}",
                    !theirs
                )
            }
        }
    }
}

/// Everything in `theirs` that contradicts `ours`, in a stable order (RFC 4861 §6.2.7: "SHOULD
/// inspect ... and log" — the caller logs each new set once).
pub fn compare(ours: &RouterAdvert, theirs: &RouterAdvert) -> Vec<Inconsistency> {
    let mut out = Vec::new();
    if ours.managed != theirs.managed {
        out.push(Inconsistency::Managed {
            ours: ours.managed,
            theirs: theirs.managed,
        });
    }
    if ours.other != theirs.other {
        out.push(Inconsistency::Other {
            ours: ours.other,
            theirs: theirs.other,
        });
    }
    if ours.hop_limit != 0 && theirs.hop_limit != 0 && ours.hop_limit != theirs.hop_limit {
        out.push(Inconsistency::HopLimit {
            ours: ours.hop_limit,
            theirs: theirs.hop_limit,
        });
    }
    if ours.reachable_time != 0
        && theirs.reachable_time != 0
        && ours.reachable_time != theirs.reachable_time
    {
        out.push(Inconsistency::ReachableTime {
            ours: ours.reachable_time,
            theirs: theirs.reachable_time,
        });
    }
    if ours.retrans_timer != 0
        && theirs.retrans_timer != 0
        && ours.retrans_timer != theirs.retrans_timer
    {
        out.push(Inconsistency::RetransTimer {
            ours: ours.retrans_timer,
            theirs: theirs.retrans_timer,
        });
    }
    if let (Some(a), Some(b)) = (ours.mtu, theirs.mtu)
        && a != b
    {
        out.push(Inconsistency::Mtu { ours: a, theirs: b });
    }
    for theirs_p in &theirs.prefixes {
        let Some(ours_p) = ours
            .prefixes
            .iter()
            .find(|p| p.prefix == theirs_p.prefix && p.prefix_len == theirs_p.prefix_len)
        else {
            continue;
        };
        let name = format!("{}/{}", theirs_p.prefix, theirs_p.prefix_len);
        if (ours_p.valid_lifetime, ours_p.preferred_lifetime)
            != (theirs_p.valid_lifetime, theirs_p.preferred_lifetime)
        {
            out.push(Inconsistency::PrefixLifetimes {
                prefix: name.clone(),
                ours: (ours_p.valid_lifetime, ours_p.preferred_lifetime),
                theirs: (theirs_p.valid_lifetime, theirs_p.preferred_lifetime),
            });
        }
        if ours_p.autonomous != theirs_p.autonomous {
            out.push(Inconsistency::Autonomous {
                prefix: name,
                theirs: theirs_p.autonomous,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, parse};

    fn ra_config(extra: &str) -> RaConfig {
        let text = format!(
            "role = \"vr\"\ninterface = \"vr0\"\n[dhcpv6]\nenabled = false\n[ra]\n{extra}\n[[ra.prefixes]]\nprefix = \"2001:db8:1::/48\"\nvalid_lifetime = 86400\npreferred_lifetime = 14400\n"
        );
        match parse(&text) {
            Ok(Config::Vr(vr)) => vr.ra,
            other => panic!("bad test config: {other:?}"),
        }
    }

    #[test]
    fn build_carries_the_config() {
        let mac: Mac = "02:00:00:00:00:fe".parse().expect("mac");
        let cfg = ra_config(
            "router_lifetime = 1800\nmtu = 1500\ndns_servers = [\"2001:db8::53\"]\ndomain_search = [\"pod1.example\"]",
        );
        let ra = build(&cfg, Some(mac), false);
        assert!(ra.managed && ra.other);
        assert_eq!(ra.router_lifetime, 1800);
        assert_eq!(ra.source_lla, Some(mac.octets()));
        assert_eq!(ra.mtu, Some(1500));
        assert_eq!(ra.prefixes.len(), 1);
        assert!(ra.prefixes[0].on_link && !ra.prefixes[0].autonomous);
        assert_eq!(ra.prefixes[0].prefix_len, 48);
        assert_eq!(
            ra.rdnss[0].servers,
            vec!["2001:db8::53".parse::<std::net::Ipv6Addr>().expect("a")]
        );
        assert_eq!(ra.rdnss[0].lifetime, 1800);
        assert_eq!(ra.dnssl[0].domains, vec!["pod1.example".to_string()]);
        assert_eq!(build(&cfg, Some(mac), true).router_lifetime, 0);
    }

    #[test]
    fn final_and_non_default_router_adverts_use_medium_preference_and_encode() {
        let cfg = ra_config("router_lifetime = 1800\nrouter_preference = \"high\"");
        assert_eq!(build(&cfg, None, false).preference, Preference::High);
        let last = build(&cfg, None, true);
        assert_eq!(last.preference, Preference::Medium);
        assert!(super::super::packet::emit_ra(&last).is_ok());
        let not_default = build(&ra_config("router_preference = \"low\""), None, false);
        assert_eq!(not_default.preference, Preference::Medium);
    }

    #[test]
    fn no_dns_options_without_servers() {
        let ra = build(&ra_config(""), None, false);
        assert!(ra.rdnss.is_empty() && ra.dnssl.is_empty() && ra.source_lla.is_none());
    }

    #[test]
    fn identical_adverts_agree_even_with_other_router_lifetimes() {
        let ours = build(&ra_config(""), None, false);
        let mut theirs = ours.clone();
        theirs.router_lifetime = 1800;
        theirs.hop_limit = 0;
        assert_eq!(compare(&ours, &theirs), vec![]);
    }

    #[test]
    fn each_inconsistency_is_found() {
        let ours = build(
            &ra_config("mtu = 1500\nreachable_time = 30000\nretrans_timer = 1000"),
            None,
            false,
        );
        let mut theirs = ours.clone();
        theirs.managed = false;
        theirs.other = false;
        theirs.hop_limit = 255;
        theirs.reachable_time = 1;
        theirs.retrans_timer = 2;
        theirs.mtu = Some(9000);
        theirs.prefixes[0].valid_lifetime = 5;
        theirs.prefixes[0].autonomous = true;
        let got: Vec<String> = compare(&ours, &theirs)
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            got,
            vec![
                "M flag false, ours true",
                "O flag false, ours true",
                "hop limit 255, ours 64",
                "reachable time 1 ms, ours 30000 ms",
                "retrans timer 2 ms, ours 1000 ms",
                "MTU 9000, ours 1500",
                "prefix 2001:db8:1::/48 lifetimes valid/preferred 5/14400, ours 86400/14400",
                "prefix 2001:db8:1::/48 autonomous flag true, ours false",
            ]
        );
    }
}
